"""The edge lists the end offsets of every raw partition after each batch, through a broker
hiccup, and names the cause once the broker has been out of reach for as long as a record may
wait to be delivered (``producer_request_timeout``)."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError
from mode import Service

from kpistream.observability.logs import RateLimitedLog
from kpistream.settings import Settings
from kpistream.stages.edge import EdgeError, EdgeReader


class ListingConsumer:
    """end_offsets fails ``failures`` times (the broker out of reach), then answers."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.asked: list[list[TopicPartition]] = []

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0, 1} if topic == "orders" else {0}

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        self.asked.append(partitions)
        if self.failures:
            self.failures -= 1
            raise KafkaConnectionError("no broker")
        return {tp: 10 * tp.partition + len(tp.topic) for tp in partitions}


def reader(consumer: ListingConsumer, grace: str) -> EdgeReader:
    edge = EdgeReader.__new__(EdgeReader)
    Service.__init__(edge)
    edge.runtime = SimpleNamespace(  # type: ignore[assignment]
        settings=Settings(producer_request_timeout=grace))
    edge.consumer = consumer
    edge.topics = ["orders", "ad-spend"]
    edge.rate_log = RateLimitedLog(logging.getLogger(__name__), 0.0)
    return edge


def test_every_raw_partition_is_listed_through_a_hiccup() -> None:
    consumer = ListingConsumer(failures=1)
    ends = asyncio.run(reader(consumer, "30s")._list_ends())
    assert ends == {("orders", 0): 6, ("orders", 1): 16, ("ad-spend", 0): 8}
    assert len(consumer.asked) == 2  # failed once, then asked again


def test_a_broker_out_of_reach_longer_than_a_delivery_may_wait_is_named() -> None:
    consumer: Any = ListingConsumer(failures=1_000)
    with pytest.raises(EdgeError, match=r"cannot list the input topics' end offsets.*no broker"):
        asyncio.run(reader(consumer, "1s")._list_ends())
    assert 2 <= len(consumer.asked) <= 3  # retried each second for the grace, then gave up

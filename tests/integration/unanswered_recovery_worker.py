"""``kpistream worker`` in which faust's recovery seeks of changelog partitions go unanswered,
as they do when a delivery still in flight raises faust's read offset past the seek (see
kpistream.stages.recovery): the read offset is set past every record, so faust drops what the
seek fetches. ``UNANSWERED_SEEKS``: how many seeks of each changelog partition go unanswered
("all" for every one)."""

from __future__ import annotations

import os
import sys
from collections import Counter
from typing import Any

from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from kpistream.cli import main

BEYOND_EVERY_RECORD = 2**62
answered_after = os.environ.get("UNANSWERED_SEEKS", "1")
seeks: Counter[Any] = Counter()
original_seek_wait = AIOKafkaConsumerThread._seek_wait


async def seek_wait_unanswered(self: Any, consumer: Any, partitions: Any) -> None:
    await original_seek_wait(self, consumer, partitions)
    for tp in partitions:
        if tp.topic.endswith("-changelog"):
            seeks[tp] += 1
            if answered_after == "all" or seeks[tp] <= int(answered_after):
                self.consumer._read_offset[tp] = BEYOND_EVERY_RECORD


AIOKafkaConsumerThread._seek_wait = seek_wait_unanswered  # type: ignore[method-assign]
sys.exit(main(["worker"]))

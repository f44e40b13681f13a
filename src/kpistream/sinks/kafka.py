"""Kafka sink: row changes to the compacted ``kpi-updates`` (a deletion is a tombstone), alert
transitions to ``kpi-alerts`` and customer profiles to the compacted ``customer-profiles``
(key customer_id, a deleted profile is a tombstone) (SPEC.md §5, §6, §8), through the
worker's outbox: a flush returns once the brokers acknowledged every record. A failed flush
keeps its records and sends them again (at-least-once: a row update is idempotent by its key
on the compacted topic; an alert message may repeat and carries its episode's identity)."""

from __future__ import annotations

from kpistream.encoding import json_bytes
from kpistream.exceptions import DeliveryError
from kpistream.outbox import Outbox
from kpistream.settings import Settings
from kpistream.sinks.base import Backoff, Publication, SinkUnavailable

BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 5.0


class KafkaOutputSink:
    name = "kafka"

    def __init__(self, settings: Settings, outbox: Outbox) -> None:
        self.rows_topic = settings.topic_kpi_updates
        self.alerts_topic = settings.topic_alerts
        self.profiles_topic = settings.topic_customer_profiles
        self.outbox = outbox
        self.pending: list[tuple[str, bytes, bytes | None]] = []
        self.backoff = Backoff(BACKOFF_INITIAL_S, BACKOFF_MAX_S)

    async def start(self) -> None:
        return None  # faust's producer is started (and checked) by the worker

    def write(self, publication: Publication) -> None:
        for change in publication.rows:
            key = f"{change.window}|{change.dimension}|{change.group}".encode()
            value = json_bytes(change.message) if change.message is not None else None
            self.pending.append((self.rows_topic, key, value))
        for message in publication.alerts:
            key = f"{message['dimension']}|{message['group']}".encode()
            self.pending.append((self.alerts_topic, key, json_bytes(message)))
        for profile in publication.profiles:
            value = None if profile.message is None else json_bytes(profile.message)
            self.pending.append((self.profiles_topic, profile.customer_id.encode(), value))

    async def flush(self) -> None:
        batch = list(self.pending)
        for topic, key, value in batch:
            self.outbox.send(topic, key, value)
        try:
            await self.outbox.flush()
        except DeliveryError as exc:
            # A stopping worker's producer may be closed after a timer's publish began: the
            # batch stays, and is published by the partitions' next owner. (Any other failed
            # delivery stops the worker: Outbox.)
            raise SinkUnavailable(self.name, repr(exc), self.backoff.next()) from exc
        del self.pending[:len(batch)]
        self.backoff.reset()

    def idle(self) -> bool:
        """Everything written to this sink is acknowledged."""
        return not self.pending

    async def close(self) -> None:
        """The producer is faust's."""

"""Everything an agent batch or a timer tick produces, sent in order and awaited as a unit.

Agents flush their outbox before returning a batch (and so before faust acks its events), so
an offset is never committed ahead of the changelog records and messages it caused. This
replaces faust's ``send_soon`` buffer, whose pre-commit flush can return early
(``ProducerBuffer.flush_atmost`` stops after a 0.1 s wait, faust/transport/producer.py) and
which hands messages to the producer one task switch at a time.
"""

from __future__ import annotations

import asyncio
from typing import Any


class Outbox:
    """One per worker. A flush waits for everything queued before it, including records
    another coroutine's flush is still sending, so "flushed" always means "acknowledged"."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.items: list[tuple[str, bytes | None, bytes | None, int | None]] = []
        self.inflight: list[asyncio.Future[Any]] = []
        self.tracked: set[str] = set()

    def send(self, topic: str, key: bytes | None, value: bytes | None,
             partition: int | None = None) -> None:
        """Queue one record; ``partition=None`` lets the producer hash the key."""
        self.items.append((topic, key, value, partition))

    async def flush(self) -> None:
        """Send everything queued and wait until the brokers acknowledged it."""
        items, self.items = self.items, []
        producer = self.app.producer
        for topic, key, value, partition in items:
            if topic not in self.tracked:
                self._track(producer, topic)
            self.inflight.append(await producer.send(topic, key, value, partition, None, None))
        waiting = list(self.inflight)
        if waiting:
            await asyncio.gather(*waiting)
            self.inflight = [f for f in self.inflight if not f.done()]

    def _track(self, producer: Any, topic: str) -> None:
        """Make the producer's metadata follow ``topic`` for good.

        aiokafka's client refreshes metadata only for the topics it tracks, or for all of
        them while it tracks none, and its send tracks a topic only if the metadata lacks
        it (``AIOKafkaClient._wait_on_metadata``). faust refreshes the metadata after
        declaring its topics, while none is tracked, so the topics that existed then are
        sent to untracked; the first send to a topic made later (a changelog) tracks that
        one alone, and the next refresh drops every other topic from the metadata. Records
        already queued for those have no leader any more: their batches wait out the
        producer request timeout and every agent writing to them stalls (a worker stuck
        for minutes in faust's revocation, three CI failures)."""
        producer._ensure_producer().client.add_topic(topic)
        self.tracked.add(topic)


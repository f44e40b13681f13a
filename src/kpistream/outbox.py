"""Everything an agent batch or a timer tick produces, sent in order and awaited as a unit.

Agents flush their outbox before returning a batch (and so before faust acks its events), so
an offset is never committed ahead of the changelog records and messages it caused. This
replaces faust's ``send_soon`` buffer, whose pre-commit flush can return early
(``ProducerBuffer.flush_atmost`` stops after a 0.1 s wait, faust/transport/producer.py) and
which hands messages to the producer one task switch at a time.

A record that cannot be delivered for good (the producer's delivery timeout passed, or the
broker refused it: a record larger than the topic allows) stops the worker, naming the cause:
the batch that queued it has changed the worker's state, and another coroutine's records may
have gone in the same flush, so carrying on could publish state the changelogs do not hold.
A restart rebuilds from the changelogs and replays the uncommitted input (at-least-once), as
Kafka Streams does when its producer fails. The stop is faust's crash, then an exit: faust's
stop waits for every event being processed to be acknowledged, and the failed batch's never
will be (acknowledging them would commit input whose effects were not delivered).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from kpistream.exceptions import DeliveryError

logger = logging.getLogger(__name__)
# How long faust's stop may take after a failed delivery before the process exits: enough to
# leave the consumer groups (so the partitions move at once), not to wait for the batch.
FAILED_STOP_S = 10.0
FAILED_EXIT_CODE = 3


class Outbox:
    """One per worker. A flush waits for everything queued before it, including records
    another coroutine's flush is still sending, so "flushed" always means "acknowledged"."""

    def __init__(self, app: Any,
                 stop_worker: Callable[[DeliveryError], Awaitable[None]] | None = None) -> None:
        self.app = app
        self.stop_worker = stop_worker or partial(crash_worker, app)
        self.items: list[tuple[str, bytes | None, bytes | None, int | None]] = []
        self.inflight: list[asyncio.Future[Any]] = []
        self.tracked: set[str] = set()
        self.failed: DeliveryError | None = None

    def send(self, topic: str, key: bytes | None, value: bytes | None,
             partition: int | None = None) -> None:
        """Queue one record; ``partition=None`` lets the producer hash the key."""
        self.items.append((topic, key, value, partition))

    async def flush(self) -> None:
        """Send everything queued and wait until the brokers acknowledged it. Raises
        :class:`DeliveryError` (and stops the worker) if a record cannot be delivered, and
        from then on at every call."""
        if self.failed is not None:
            raise self.failed
        items, self.items = self.items, []
        producer = self.app.producer
        sent = 0
        try:
            for topic, key, value, partition in items:
                if topic not in self.tracked:
                    self._track(producer, topic)
                future = await producer.send(topic, key, value, partition, None, None)
                # Appended after the await: another flush may replace the list meanwhile, and
                # a future appended to the old one would never be awaited (a refused dead
                # letter left the worker running).
                self.inflight.append(future)
                sent += 1
            waiting = list(self.inflight)
            if waiting:
                await asyncio.gather(*waiting)
                self.inflight = [f for f in self.inflight if not f.done()]
        except asyncio.CancelledError:
            # Cancelled (a stopping agent): what was not handed to the producer goes back,
            # as it may be another coroutine's, whose own flush must still send it.
            self.items[:0] = items[sent:]
            raise
        except Exception as exc:
            raise await self._fail(exc) from exc

    async def _fail(self, cause: Exception) -> DeliveryError:
        failed = self.failed = DeliveryError(
            f"records could not be delivered to Kafka: {cause!r}")
        self.inflight.clear()
        # A stopping worker's producer may be closed already: that is no crash.
        if not getattr(self.app, "should_stop", False):
            logger.critical("outbox_delivery_failed cause=%r", cause)
            await self.stop_worker(failed)
        return failed

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



async def crash_worker(app: Any, failed: DeliveryError) -> None:
    """faust's crash (the worker stops, leaving its consumer groups), then an exit if the stop
    has not ended within :data:`FAILED_STOP_S`."""
    asyncio.get_running_loop().call_later(FAILED_STOP_S, _exit, failed)
    await app.crash(failed)


def _exit(failed: DeliveryError) -> None:
    logger.critical("worker_exits cause=%r", failed)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(FAILED_EXIT_CODE)

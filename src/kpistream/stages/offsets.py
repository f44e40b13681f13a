"""The offset-gap guard every faust stage applies to a batch, written once.

faust can mark a fetched record as read without delivering it around a rebalance (see
:mod:`kpistream.state.offsets`); a stage applies the contiguous head of each partition's
records and seeks back to the first missing offset.

A partition the stage has never applied anything of expects its log start offset: faust acks
the records it skips (``Stream.__aiter__`` acks a message fetched in an older generation or
while flow is suspended), so around the rebalances of a starting deployment the first
committed offset of a partition can lie beyond records no agent ever saw.

A seek can go unanswered. faust delivers a fetched record only if its offset is at or past
the partition's read offset, and drops it otherwise (``Consumer._drain_messages``,
faust/transport/consumer.py, faust-streaming 0.15.3). The seek sets the read offset back, but
records fetched before it and still being delivered raise it again; the records fetched
from the seek position are then dropped, and if nothing newer comes the partition is never
delivered again (its commits stall). So the guard remembers each seek until the stage
applies records of that partition, and seeks again after ``seek_retry``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from faust.types import TP

from kpistream.observability.logs import RateLimitedLog
from kpistream.state.offsets import split_contiguous

logger = logging.getLogger(__name__)


class GapGuard:
    def __init__(self, app: Any, topic: str, log: RateLimitedLog, retry_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.app = app
        self.topic = topic
        self.log = log
        self.retry_s = retry_s
        self.clock = clock
        self.seeks: list[tuple[TP, int]] = []
        # seeks whose partition has not delivered a record the stage applied since: offset
        # and when the seek was made
        self.unanswered: dict[TP, tuple[int, float]] = {}

    async def split(self, events: Iterable[Any], expected: Callable[[int], int | None],
                    loading: Callable[[int], Iterator[None]] | None = None,
                    ) -> dict[int, list[tuple[int, bytes]]]:
        """Group a faust batch by partition; keep each partition's contiguous head and
        remember where to seek back for the rest. ``expected`` gives the next offset the
        stage's state expects, None when it holds nothing of the partition yet.
        ``loading(p)`` gives the steps of rebuilding partition p's state when it is not held
        yet: they run here, letting the event loop in between, so a long rebuild never
        starves heartbeats, timers or the other stages."""
        by_partition: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
        for event in events:
            by_partition[event.message.partition].append((event.message.offset,
                                                          event.message.value))
        if loading is not None:
            for partition in by_partition:
                for _ in loading(partition):
                    await asyncio.sleep(0)
        nexts = {partition: expected(partition) for partition in by_partition}
        unknown = [TP(self.topic, p) for p, offset in nexts.items() if offset is None]
        if unknown:
            starts = await self.app.consumer.earliest_offsets(*unknown)
            for tp in unknown:
                nexts[tp.partition] = starts.get(tp)
        out = {}
        for partition, items in by_partition.items():
            count, seek_to = split_contiguous([o for o, _ in items], nexts[partition])
            if seek_to is not None:
                self.log.warning("input_gap_seek_back", topic=self.topic, partition=partition,
                                 offset=seek_to)
                self.seeks.append((TP(self.topic, partition), seek_to))
            if count:
                out[partition] = items[:count]
                self.unanswered.pop(TP(self.topic, partition), None)
        return out

    async def seek_back(self) -> None:
        """Seek inside faust's consumer thread (``seek_wait``, as faust's own recovery
        does): ``Consumer.seek`` runs aiokafka's seek on the caller's thread, which races
        the thread's fetcher (``KeyError`` in ``fetched_records``, the fetcher crashes)."""
        seeks, self.seeks = self.seeks, []
        if seeks:
            await self.app.consumer._thread.seek_wait(dict(seeks))
            now = self.clock()
            for tp, offset in seeks:
                self.unanswered[tp] = (offset, now)

    async def retry(self) -> None:
        """Seek again where a seek has gone unanswered for ``retry_s`` (module docstring);
        forget the seeks of partitions this worker no longer holds."""
        if not self.unanswered:
            return  # (and the consumer is not asked, which may not have started yet)
        assigned = self.app.consumer.assignment()
        now = self.clock()
        for tp, (offset, since) in list(self.unanswered.items()):
            if tp not in assigned:
                del self.unanswered[tp]
            elif now - since >= self.retry_s:
                self.log.warning("input_gap_seek_retry", topic=self.topic,
                                 partition=tp.partition, offset=offset)
                self.seeks.append((tp, offset))
        await self.seek_back()


def gap_guard(app: Any, topic: str, log: RateLimitedLog, retry_s: float) -> GapGuard:
    """A stage's guard, with the timer that retries its unanswered seeks."""
    guard = GapGuard(app, topic, log, retry_s)

    @app.timer(retry_s)  # type: ignore[untyped-decorator]
    async def retry_unanswered_seeks() -> None:
        await guard.retry()

    return guard

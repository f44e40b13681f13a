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

A record faust drops the same way at the tail of a partition, with nothing after it, shows
no gap to any batch: the stage waits for it and faust's commit stalls behind it, for good
when the input has ended. So does a dropped record the stage does not need (a replay of
what it applied before a crash or rebalance): faust never acknowledges it, and commits only
up to the first offset it has not acknowledged. So when the stage has been idle for
``seek_retry`` while faust flows, and a partition it holds has had records beyond the next
offset the stage expects, or beyond faust's committed offset, for another half of
``seek_retry`` without a batch coming, the guard seeks it back to the lower of the two. (A
record fetched a moment ago is on its way to the stage: seen idle like this, such records
came within 60 ms in every instance, so one sighting is not enough.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

from faust.exceptions import ConsumerNotStarted
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.types import TP
from faust.utils.functional import consecutive_numbers

from kpistream.observability.logs import RateLimitedLog
from kpistream.state.offsets import split_contiguous

logger = logging.getLogger(__name__)
# The retry timer looks this many times per ``retry_s``, so an unanswered seek is made again
# at most ``retry_s * (1 + 1/RETRY_CHECKS)`` after it (with one look per ``retry_s``, up to
# twice ``retry_s``: a CI run found a partition's commit still stalled 10 s after the rest).
RETRY_CHECKS = 4


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
        # per partition the stage applied records of: the next offset it expects
        self.next_offsets: dict[int, int] = {}
        # partitions seen with records beyond next_offsets while the stage was idle (and
        # has been since): the offset expected and when first seen
        self.stalled: dict[int, tuple[int, float]] = {}
        self.in_batch = False
        self.idle_since = clock()

    async def split(self, events: Iterable[Any], expected: Callable[[int], int | None],
                    loading: Callable[[int], Iterator[None]] | None = None,
                    ) -> dict[int, list[tuple[int, bytes]]]:
        """Group a faust batch by partition; keep each partition's contiguous head and
        remember where to seek back for the rest. ``expected`` gives the next offset the
        stage's state expects, None when it holds nothing of the partition yet.
        ``loading(p)`` gives the steps of rebuilding partition p's state when it is not held
        yet: they run here, letting the event loop in between, so a long rebuild never
        starves heartbeats, timers or the other stages."""
        self.in_batch = True
        self.stalled.clear()
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
                after = max(o for o, _ in items[:count]) + 1
                expected_next = nexts[partition]
                self.next_offsets[partition] = (after if expected_next is None
                                                else max(after, expected_next))
        return out

    async def seek_back(self) -> None:
        """Seek inside faust's consumer thread (``seek_wait``, as faust's own recovery
        does): ``Consumer.seek`` runs aiokafka's seek on the caller's thread, which races
        the thread's fetcher (``KeyError`` in ``fetched_records``, the fetcher crashes)."""
        self.in_batch = False
        self.idle_since = self.clock()
        seeks, self.seeks = self.seeks, []
        if seeks:
            await self.app.consumer._thread.seek_wait(dict(seeks))
            now = self.clock()
            for tp, offset in seeks:
                self.unanswered[tp] = (offset, now)

    def forget(self, partitions: set[int]) -> None:
        """Partitions revoked: what the stage expected of them is no longer known here."""
        for p in partitions:
            self.next_offsets.pop(p, None)
            self.stalled.pop(p, None)
            self.unanswered.pop(TP(self.topic, p), None)

    async def retry(self) -> None:
        """Seek again where a seek has gone unanswered for ``retry_s``, and where an idle
        stage waits for records faust read (module docstring); forget partitions this
        worker no longer holds."""
        consumer = self.app.consumer
        try:
            assigned = consumer.assignment()
        except ConsumerNotStarted:
            return
        now = self.clock()
        for p in [p for p in self.next_offsets if TP(self.topic, p) not in assigned]:
            del self.next_offsets[p]
        for tp, (offset, since) in list(self.unanswered.items()):
            if tp not in assigned:
                del self.unanswered[tp]
            elif now - since >= self.retry_s:
                self.log.warning("input_gap_seek_retry", topic=self.topic,
                                 partition=tp.partition, offset=offset)
                self.seeks.append((tp, offset))
        if (not self.in_batch and now - self.idle_since >= self.retry_s
                and consumer.flow_active):
            committed = consumer._committed_offset
            for tp in assigned:
                if (tp.topic != self.topic or tp in self.unanswered
                        or tp in consumer._paused_partitions):
                    continue
                p, end = tp.partition, consumer.highwater(tp)
                stalled_at = stall_offset(self.next_offsets.get(p), committed.get(tp), end)
                if stalled_at is None:
                    self.stalled.pop(p, None)
                    continue
                seen = self.stalled.get(p)
                if seen is None or seen[0] != stalled_at:
                    self.stalled[p] = (stalled_at, now)
                elif now - seen[1] >= self.retry_s / 2:
                    self.log.warning("input_stall_seek", topic=self.topic, partition=p,
                                     offset=stalled_at, end=end,
                                     expected=self.next_offsets.get(p),
                                     committed=committed.get(tp))
                    self.seeks.append((tp, stalled_at))
                    del self.stalled[p]
        else:
            self.stalled.clear()  # a sighting counts only while the stage stays idle
        if self.seeks:
            await self.seek_back()


def stall_offset(expected: int | None, committed: int | None, end: int | None) -> int | None:
    """Where an idle stage's partition must be read again from, if anywhere: the next offset
    the stage expects, if records lie beyond it; and faust's committed offset, if records lie
    beyond that. The second covers records faust dropped (never delivered, never acked)
    that the stage does not need, being replays of what it applied before a crash or
    rebalance: faust commits only up to its first unacknowledged offset
    (``Consumer._new_offset``), so without a read of them its commit stays behind for good
    (a CI run: rows exact, a roll-up partition 51 records uncommitted)."""
    if end is None:
        return None
    behind = [offset for offset in (expected, committed) if offset is not None and offset < end]
    return min(behind, default=None)


def gap_guard(app: Any, topic: str, log: RateLimitedLog, retry_s: float) -> GapGuard:
    """A stage's guard, with the timer that retries its unanswered seeks and the hook that
    forgets revoked partitions."""
    guard = GapGuard(app, topic, log, retry_s)

    @app.on_partitions_revoked.connect  # type: ignore[untyped-decorator]
    async def forget_revoked(sender: Any, revoked: set[Any], **_: Any) -> None:
        guard.forget({tp.partition for tp in revoked if tp.topic == topic})

    @app.timer(retry_s / RETRY_CHECKS)  # type: ignore[untyped-decorator]
    async def retry_unanswered_seeks() -> None:
        await guard.retry()

    return guard


def new_offset(consumer: Any, tp: TP) -> int | None:
    """faust's ``Consumer._new_offset`` (faust/transport/consumer.py, faust-streaming 0.15.3)
    with each acknowledged offset counted once.

    faust fills an offset jump it sees while fetching with a "gap" of offsets it treats as
    acknowledged, from the read offset up to and including the record that jumped. A seek
    back (the guard's) delivers those records again and they are acknowledged too, so the
    list holds them twice. faust then takes the first run of consecutive numbers of a list
    like ``24 24 25 25 26 26 ...``: ``[24]``, and its commit creeps forward one offset per
    commit interval (a CI run: a roll-up partition 47 records uncommitted 10 s after the
    rest; the same stall as robinhood/faust#625, "Offsets not commited due to duplicate in
    _acked")."""
    acked: list[int] = consumer._acked[tp]
    if not acked:
        return None
    max_offset = max(acked)
    gap = consumer._gap[tp]
    if gap:
        candidates = sorted(gap.overlap(0, max_offset), key=lambda interval: interval.begin)
        if candidates:
            filled = [o for interval in candidates for o in range(interval.begin, interval.end)]
            acked.extend(filled)
            gap.chop(0, max(filled[-1], max_offset + 1))
    acked[:] = sorted(set(acked))
    committed = consumer._committed_offset[tp]
    # faust's own test: the head of the list may lie one past the committed offset
    if committed and acked[0] - committed > 1:
        return None
    batch = next(consecutive_numbers(acked))
    del acked[:len(batch)]
    consumer._acked_index[tp].difference_update(batch)
    return int(batch[-1]) + 1


class CommittingConsumer(AIOKafkaConsumer):
    """faust's aiokafka consumer with :func:`new_offset`, fetching with ``fetch_max_wait_ms``
    (:func:`worker_consumer` makes one for the settings; ``create_app`` installs it)."""

    fetch_max_wait_ms: int | None = None

    def _new_offset(self, tp: TP) -> int | None:
        return new_offset(self, tp)

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _ConsumerThread(AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        """faust's worker consumer, but for the fetch wait it hard-codes (1,500 ms,
        faust/transport/drivers/aiokafka.py, faust-streaming 0.11+): the broker holds a
        fetch that long for partitions with nothing new, and a record that came meanwhile
        for a partition outside it waited for it (a stage's share of a row's freshness)."""
        consumer = super()._create_worker_consumer(transport)
        wait = cast(CommittingConsumer, self.consumer).fetch_max_wait_ms
        if wait is not None:
            consumer._fetch_max_wait_ms = wait  # read by AIOKafkaConsumer.start()
        return consumer


def worker_consumer(fetch_max_wait_ms: int) -> type[CommittingConsumer]:
    return type("WorkerConsumer", (CommittingConsumer,),
                {"fetch_max_wait_ms": fetch_max_wait_ms})

"""The watchdog on faust's table recovery.

After each rebalance faust restores its tables from their changelogs and holds every agent
until the active changelog partitions are read up to their high-water marks
(``Recovery._restart_recovery``, faust/tables/recovery.py, faust-streaming 0.15.3). It seeks
them once (``_seek_offsets``, through ``seek_wait``) and waits; it never seeks again.

faust drops a fetched record below the partition's read offset
(``Consumer._drain_messages``, faust/transport/consumer.py), and when a second rebalance comes
in the middle of a recovery, a delivery of the first recovery still in flight can raise the
read offset past the second recovery's seek: the re-fetched records are dropped, nothing newer
comes (no one writes a changelog partition while its owner recovers it), and the worker waits
for good, logging "No event received for active tp ... since recovery start" every 5 s (a CI
run: 2 of 6 changelog partitions, for 3 minutes until the test gave up; the class of
robinhood/faust#218 and faust-streaming#155). It is the unanswered seek the stages' offset
guard retries (:mod:`kpistream.stages.offsets`), on the partitions faust reads itself.

So a changelog partition recovery still needs that has delivered nothing for
``recovery_retry`` is sought again where recovery stands, as faust's own ``_seek_offsets``
does (the offset of its last applied record, which recovery then skips: a retry reads nothing
twice that it would apply). One still without progress after ``recovery_timeout`` makes the
worker exit non-zero, naming it: its group then hands the partitions to a worker that can read
them, and a supervisor starts this one again, instead of a worker that looks alive and
processes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from faust.exceptions import ConsumerNotStarted
from faust.types import TP
from mode import Service
from prometheus_client import Counter

from kpistream.observability.logs import RateLimitedLog
from kpistream.runtime import Runtime

logger = logging.getLogger(__name__)
# The watchdog looks this many times per ``recovery_retry``, so it seeks again at most a
# quarter of it late.
CHECKS_PER_RETRY = 4


class RecoveryStalled(RuntimeError):
    """faust's table recovery cannot go on; the worker exits with this message."""


@dataclass
class PartitionWatch:
    offset: int  # recovery's last applied offset when last seen moving
    since: float  # when it was first seen at that offset
    sought: float  # when it was last sought (or first seen, before any seek)


@dataclass
class Verdict:
    seek: dict[TP, int] = field(default_factory=dict)  # partition -> offset to seek to
    stalled: dict[TP, float] = field(default_factory=dict)  # given up: seconds without progress


class RecoveryWatch:
    """Which changelog partitions to seek again, and which to give up on: pure, fed by what
    faust's recovery reports at each look."""

    def __init__(self, retry_s: float, timeout_s: float) -> None:
        self.retry_s = retry_s
        self.timeout_s = timeout_s
        self.attempt: float | None = None
        self.partitions: dict[TP, PartitionWatch] = {}

    def look(self, now: float, attempt: float | None, highwaters: Mapping[TP, int | None],
             offsets: Mapping[TP, int | None]) -> Verdict:
        """``attempt`` identifies the recovery under way (None when none is: nothing is
        watched); ``highwaters`` and ``offsets`` are recovery's per active partition: the
        last offset it must apply and the last it has applied."""
        verdict = Verdict()
        if attempt != self.attempt:
            self.attempt = attempt
            self.partitions.clear()
        if attempt is None:
            return verdict
        needed = {tp: offset for tp, offset in offsets.items()
                  if offset is not None and (highwater := highwaters.get(tp)) is not None
                  and highwater > offset}
        for tp in [tp for tp in self.partitions if tp not in needed]:
            del self.partitions[tp]
        for tp, offset in needed.items():
            watch = self.partitions.get(tp)
            if watch is None or watch.offset != offset:
                self.partitions[tp] = PartitionWatch(offset, now, now)
                continue
            if now - watch.since >= self.timeout_s:
                verdict.stalled[tp] = now - watch.since
            elif now - watch.sought >= self.retry_s:
                verdict.seek[tp] = max(offset, 0)  # recovery's -1 is "before the first"
                watch.sought = now
        return verdict


class RecoveryWatchdog(Service):
    """Applies :class:`RecoveryWatch` to the app's recovery: seeks in faust's consumer thread
    and crashes the app on a partition given up.

    A service the app depends on, not an ``app.timer``: faust starts its timers and its
    services only once the first recovery has completed (``App.on_started``), and the first
    recovery is one this must watch."""

    def __init__(self, app: Any, watch: RecoveryWatch, log: RateLimitedLog,
                 interval_s: float, seeks: Counter | None = None,
                 clock: Callable[[], float] = time.monotonic, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.watch = watch
        self.events = log
        self.seeks = seeks  # kpistream_recovery_seeks_total{topic}
        self.interval_s = interval_s
        self.clock = clock

    @Service.task
    async def _watch(self) -> None:
        while not self.should_stop:
            await self.sleep(self.interval_s)
            await self.check()

    async def check(self) -> None:
        recovery = cast(Any, self.app.tables).recovery
        in_recovery = recovery.in_recovery and not self.app.should_stop
        attempt = recovery._recovery_started_at if in_recovery else None
        verdict = self.watch.look(self.clock(), attempt, dict(recovery.active_highwaters),
                                  dict(recovery.active_offsets))
        if verdict.stalled:
            names = ", ".join(f"{tp.topic}[{tp.partition}] ({seconds:.0f} s)"
                              for tp, seconds in sorted(verdict.stalled.items()))
            await self.app.crash(RecoveryStalled(
                f"table recovery received nothing from changelog partitions it still needs, "
                f"seeks included: {names}; exiting so that the consumer group reassigns "
                "them (see kpistream.stages.recovery)"))
            return
        if not verdict.seek:
            return
        consumer = self.app.consumer
        try:
            assigned = consumer.assignment()
        except ConsumerNotStarted:
            return
        seeks = {tp: offset for tp, offset in verdict.seek.items() if tp in assigned}
        for tp, offset in seeks.items():
            self.events.warning("recovery_seek_retry", limit_key=f"{tp.topic}:{tp.partition}",
                                topic=tp.topic, partition=tp.partition, offset=offset,
                                highwater=recovery.active_highwaters.get(tp))
            if self.seeks is not None:
                self.seeks.labels(topic=tp.topic).inc()
        if not seeks:
            return
        try:
            await consumer.seek_wait(seeks)
            consumer.resume_partitions(set(seeks))
        except Exception as exc:
            # a rebalance can take a partition between the look and the seek (aiokafka's
            # IllegalStateError), or the broker not answer the position in time: the next
            # look seeks again, and recovery_timeout still ends a wait that never ends
            self.events.warning("recovery_seek_failed", error=repr(exc))


def register(app: Any, runtime: Runtime) -> RecoveryWatchdog:
    settings = runtime.settings
    watchdog = RecoveryWatchdog(
        app, RecoveryWatch(settings.recovery_retry_s, settings.recovery_timeout_s),
        RateLimitedLog(logger, settings.log_interval_s),
        settings.recovery_retry_s / CHECKS_PER_RETRY, runtime.metrics.recovery_seeks)
    app.add_dependency(watchdog)
    return watchdog

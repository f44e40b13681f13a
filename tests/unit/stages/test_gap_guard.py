"""The gap guard on a faust batch: a partition the stage never applied anything of expects
its log start offset, so records faust skipped (and acked) before the first delivery are
read again instead of being lost; a seek that goes unanswered is made again; an idle stage
waiting for records faust dropped at a partition's tail seeks back to them, and so does one
whose partition faust's commit is stuck behind (records dropped that the stage did not need)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from faust.types import TP

from kpistream.observability.logs import RateLimitedLog
from kpistream.stages.offsets import GapGuard, stall_offset

TOPIC = "kpistream-events"


@dataclass
class Message:
    partition: int
    offset: int
    value: bytes = b""


@dataclass
class Event:
    message: Message


@dataclass
class ConsumerThread:
    seeks: list[dict[TP, int]] = field(default_factory=list)

    async def seek_wait(self, offsets: dict[TP, int]) -> None:
        self.seeks.append(offsets)


@dataclass
class Consumer:
    starts: dict[int, int]
    asked: list[TP] = field(default_factory=list)
    _thread: ConsumerThread = field(default_factory=ConsumerThread)
    assigned: set[TP] = field(default_factory=set)
    ends: dict[int, int] = field(default_factory=dict)
    flow_active: bool = True
    _paused_partitions: set[TP] = field(default_factory=set)
    _committed_offset: dict[TP, int] = field(default_factory=dict)

    def assignment(self) -> set[TP]:
        return self.assigned

    def highwater(self, tp: TP) -> int | None:
        return self.ends.get(tp.partition)

    async def earliest_offsets(self, *partitions: TP) -> dict[TP, int]:
        self.asked.extend(partitions)
        return {tp: self.starts[tp.partition] for tp in partitions}


@dataclass
class App:
    consumer: Consumer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


RETRY_S = 5.0


def guard(starts: dict[int, int], clock: Clock | None = None) -> tuple[GapGuard, App]:
    app = App(Consumer(starts, assigned={TP(TOPIC, p) for p in range(3)}))
    return GapGuard(app, TOPIC, RateLimitedLog(logging.getLogger("test"), 10), RETRY_S,
                    clock or Clock()), app


def batch(*coords: tuple[int, int]) -> list[Any]:
    return [Event(Message(p, o)) for p, o in coords]


def run(gap_guard: GapGuard, events: list[Any], expected: dict[int, int | None]
        ) -> dict[int, list[int]]:
    parts = asyncio.run(gap_guard.split(events, expected.__getitem__))
    asyncio.run(gap_guard.seek_back())
    return {p: [o for o, _ in items] for p, items in parts.items()}


def test_a_partition_without_state_expects_its_log_start() -> None:
    gap_guard, app = guard({0: 0, 1: 40})
    # faust skipped offsets 0-2 of partition 0 around a rebalance and committed past them;
    # partition 1 starts where its retained log starts.
    parts = run(gap_guard, batch((0, 3), (0, 4), (1, 40), (1, 41)), {0: None, 1: None})
    assert parts == {1: [40, 41]}
    assert app.consumer._thread.seeks == [{TP(TOPIC, 0): 0}]
    assert sorted(app.consumer.asked) == [TP(TOPIC, 0), TP(TOPIC, 1)]


def test_known_state_is_not_asked_for_log_start() -> None:
    gap_guard, app = guard({0: 0})
    parts = run(gap_guard, batch((0, 7), (0, 8), (0, 10)), {0: 7})
    assert parts == {0: [7, 8]}
    assert app.consumer.asked == []
    assert app.consumer._thread.seeks == [{TP(TOPIC, 0): 9}]


def test_contiguous_batches_pass_whole() -> None:
    gap_guard, app = guard({0: 0, 2: 0})
    parts = run(gap_guard, batch((0, 0), (2, 5), (0, 1), (2, 6)), {0: None, 2: 5})
    assert parts == {0: [0, 1], 2: [5, 6]}
    assert app.consumer._thread.seeks == []


def test_an_unanswered_seek_is_made_again_until_the_partition_delivers() -> None:
    clock = Clock()
    gap_guard, app = guard({0: 0}, clock)
    seeks = app.consumer._thread.seeks
    assert run(gap_guard, batch((0, 9), (0, 10)), {0: 7}) == {}
    assert seeks == [{TP(TOPIC, 0): 7}]
    # faust dropped the re-fetched records 7-10 (its read offset was raised past them by
    # records still in flight) and nothing newer comes: no batch, so only the timer acts
    clock.now += RETRY_S - 1
    asyncio.run(gap_guard.retry())
    assert len(seeks) == 1  # not yet
    clock.now += 1
    asyncio.run(gap_guard.retry())
    assert seeks[1:] == [{TP(TOPIC, 0): 7}]
    clock.now += RETRY_S
    asyncio.run(gap_guard.retry())
    assert seeks[2:] == [{TP(TOPIC, 0): 7}]  # still unanswered: again
    # the partition delivers from 7: answered, no more seeks
    assert run(gap_guard, batch((0, 7), (0, 8)), {0: 7}) == {0: [7, 8]}
    clock.now += 10 * RETRY_S
    asyncio.run(gap_guard.retry())
    assert len(seeks) == 3


def test_a_seek_of_a_partition_no_longer_held_is_forgotten() -> None:
    clock = Clock()
    gap_guard, app = guard({0: 0, 1: 0}, clock)
    run(gap_guard, batch((0, 9), (1, 4)), {0: 7, 1: 2})
    assert app.consumer._thread.seeks == [{TP(TOPIC, 0): 7, TP(TOPIC, 1): 2}]
    app.consumer.assigned.discard(TP(TOPIC, 1))  # revoked meanwhile
    clock.now += RETRY_S
    asyncio.run(gap_guard.retry())
    assert app.consumer._thread.seeks[1:] == [{TP(TOPIC, 0): 7}]
    app.consumer.assigned.add(TP(TOPIC, 1))  # back, with state rebuilt: no stale seek
    clock.now += RETRY_S
    asyncio.run(gap_guard.retry())
    assert app.consumer._thread.seeks[2:] == [{TP(TOPIC, 0): 7}]


def test_an_idle_stage_seeks_back_to_records_dropped_at_a_partitions_tail() -> None:
    clock = Clock()
    gap_guard, app = guard({0: 0, 1: 0}, clock)
    seeks = app.consumer._thread.seeks
    assert run(gap_guard, batch((0, 7), (0, 8), (1, 3)), {0: 7, 1: 3}) == {0: [7, 8], 1: [3]}
    # faust read partition 0 to its end (offset 12) but dropped 9-11: no batch shows a gap
    app.consumer.ends = {0: 12, 1: 4}
    clock.now += RETRY_S - 1
    asyncio.run(gap_guard.retry())
    assert seeks == []  # idle, but not for long enough
    clock.now += 1
    asyncio.run(gap_guard.retry())
    assert seeks == []  # seen once: a record fetched a moment ago may be on its way
    clock.now += RETRY_S / 2
    asyncio.run(gap_guard.retry())
    assert seeks == [{TP(TOPIC, 0): 9}]  # partition 1 is applied to its end: left alone
    # the re-read records come: nothing more to seek
    assert run(gap_guard, batch((0, 9), (0, 10), (0, 11)), {0: 9}) == {0: [9, 10, 11]}
    clock.now += 10 * RETRY_S
    asyncio.run(gap_guard.retry())
    assert len(seeks) == 1


def test_a_busy_paused_or_suspended_stage_does_not_seek_for_the_tail() -> None:
    clock = Clock()
    gap_guard, app = guard({0: 0}, clock)
    seeks = app.consumer._thread.seeks
    run(gap_guard, batch((0, 7),), {0: 7})
    app.consumer.ends = {0: 20}
    # a batch in progress for longer than the wait (a long rebuild): its records may still
    # be buffered, not dropped
    asyncio.run(gap_guard.split(batch((0, 8),), {0: 8}.__getitem__))
    clock.now += 3 * RETRY_S
    asyncio.run(gap_guard.retry())
    assert seeks == []
    asyncio.run(gap_guard.seek_back())  # the batch ends
    clock.now += RETRY_S
    app.consumer._paused_partitions = {TP(TOPIC, 0)}  # faust recovers tables
    asyncio.run(gap_guard.retry())
    app.consumer._paused_partitions = set()
    app.consumer.flow_active = False  # a rebalance
    asyncio.run(gap_guard.retry())
    assert seeks == []
    app.consumer.flow_active = True
    asyncio.run(gap_guard.retry())
    clock.now += RETRY_S / 2
    asyncio.run(gap_guard.retry())
    assert seeks == [{TP(TOPIC, 0): 9}]


def test_records_that_come_soon_after_being_seen_are_not_sought() -> None:
    clock = Clock()
    gap_guard, app = guard({0: 0}, clock)
    seeks = app.consumer._thread.seeks
    run(gap_guard, batch((0, 7),), {0: 7})
    clock.now += 2 * RETRY_S
    app.consumer.ends = {0: 10}  # records 8 and 9 produced while the stage idles
    asyncio.run(gap_guard.retry())
    clock.now += 0.5  # (exact in binary: the test compares sums of these)
    assert run(gap_guard, batch((0, 8),), {0: 8}) == {0: [8]}  # one of them came
    clock.now += RETRY_S / 2
    asyncio.run(gap_guard.retry())
    assert seeks == []  # the batch broke the idle spell: seen again from the start
    clock.now += RETRY_S
    asyncio.run(gap_guard.retry())
    assert seeks == []
    clock.now += RETRY_S / 2
    asyncio.run(gap_guard.retry())
    assert seeks == [{TP(TOPIC, 0): 9}]  # 9 never came


def test_a_revoked_partition_is_forgotten() -> None:
    clock = Clock()
    gap_guard, app = guard({0: 0, 1: 0}, clock)
    run(gap_guard, batch((0, 7), (1, 9)), {0: 7, 1: 2})  # 1: a gap, sought back to 2
    gap_guard.forget({0, 1})
    app.consumer.ends = {0: 20, 1: 20}
    clock.now += 3 * RETRY_S
    asyncio.run(gap_guard.retry())
    assert app.consumer._thread.seeks == [{TP(TOPIC, 1): 2}]  # the first seek only


def test_an_idle_stage_seeks_back_to_where_fausts_commit_is_stuck() -> None:
    """A worker taking over after a crash: the records 40-49 were applied before the crash
    (the rebuilt state expects 50) and faust dropped them (never delivered, never acked), so
    it commits nothing past 40 although the stage applied 50-59: read them again. The same
    for a partition the stage never got a record of."""
    clock = Clock()
    gap_guard, app = guard({0: 0, 1: 0, 2: 0}, clock)
    seeks = app.consumer._thread.seeks
    assert run(gap_guard, batch((0, 50), (0, 59)), {0: 50}) == {0: [50]}
    run(gap_guard, batch((0, 51), *((0, o) for o in range(52, 60))), {0: 51})
    seeks.clear()
    app.consumer.ends = {0: 60, 1: 30, 2: 5}
    app.consumer._committed_offset = {TP(TOPIC, 0): 40, TP(TOPIC, 1): 20, TP(TOPIC, 2): 5}
    clock.now += RETRY_S
    asyncio.run(gap_guard.retry())
    assert seeks == []  # seen once
    clock.now += RETRY_S / 2
    asyncio.run(gap_guard.retry())
    # partition 2 is committed to its end: left alone
    assert seeks == [{TP(TOPIC, 0): 40, TP(TOPIC, 1): 20}]
    # faust reads them again: replays, which the stage skips (and faust acknowledges, so
    # it commits to the end); the seeks are answered
    assert run(gap_guard, batch(*((0, o) for o in range(40, 60))), {0: 60}) == {
        0: list(range(40, 60))}
    assert run(gap_guard, batch(*((1, o) for o in range(20, 30))), {1: 30}) == {
        1: list(range(20, 30))}
    app.consumer._committed_offset = {TP(TOPIC, 0): 60, TP(TOPIC, 1): 30, TP(TOPIC, 2): 5}
    clock.now += 10 * RETRY_S
    asyncio.run(gap_guard.retry())
    clock.now += RETRY_S
    asyncio.run(gap_guard.retry())
    assert len(seeks) == 1


def test_stall_offset_is_the_lower_of_what_the_stage_and_fausts_commit_miss() -> None:
    assert stall_offset(None, None, 10) is None
    assert stall_offset(10, 10, 10) is None  # applied and committed to the end
    assert stall_offset(7, 10, 10) == 7
    assert stall_offset(10, 4, 10) == 4
    assert stall_offset(8, 4, 10) == 4
    assert stall_offset(None, 4, 10) == 4
    assert stall_offset(3, 4, None) is None  # no end offset known yet

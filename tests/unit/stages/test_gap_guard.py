"""The gap guard on a faust batch: a partition the stage never applied anything of expects
its log start offset, so records faust skipped (and acked) before the first delivery are
read again instead of being lost; a seek that goes unanswered is made again."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from faust.types import TP

from kpistream.observability.logs import RateLimitedLog
from kpistream.stages.offsets import GapGuard

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

    def assignment(self) -> set[TP]:
        return self.assigned

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

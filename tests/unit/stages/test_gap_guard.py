"""The gap guard on a faust batch: a partition the stage never applied anything of expects
its log start offset, so records faust skipped (and acked) before the first delivery are
read again instead of being lost."""

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

    async def earliest_offsets(self, *partitions: TP) -> dict[TP, int]:
        self.asked.extend(partitions)
        return {tp: self.starts[tp.partition] for tp in partitions}


@dataclass
class App:
    consumer: Consumer


def guard(starts: dict[int, int]) -> tuple[GapGuard, App]:
    app = App(Consumer(starts))
    return GapGuard(app, TOPIC, RateLimitedLog(logging.getLogger("test"), 10)), app


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

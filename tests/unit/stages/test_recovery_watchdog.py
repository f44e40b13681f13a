"""The watchdog on faust's table recovery: a changelog partition recovery still needs and that
delivers nothing is sought again where recovery stands, every ``retry``; one without progress
for ``timeout`` crashes the app naming it; partitions that move, are complete, or belong to an
earlier recovery are left alone. (The real broker: tests/integration/test_recovery_stall.py.)"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import pytest
from faust.types import TP
from prometheus_client import CollectorRegistry

from kpistream.observability.logs import RateLimitedLog
from kpistream.observability.metrics import Metrics
from kpistream.stages.recovery import RecoveryStalled, RecoveryWatch, RecoveryWatchdog

RETRY_S, TIMEOUT_S = 5.0, 60.0
A, B = TP("app-rollup-changelog", 2), TP("app-rollup-changelog", 4)


def test_a_partition_without_progress_is_sought_again_every_retry_where_recovery_stands() -> None:
    watch = RecoveryWatch(RETRY_S, TIMEOUT_S)
    highwaters, offsets = {A: 5, B: 2}, {A: -1, B: 0}
    assert watch.look(0.0, 1.0, highwaters, offsets).seek == {}
    assert watch.look(RETRY_S - 0.1, 1.0, highwaters, offsets).seek == {}
    assert watch.look(RETRY_S, 1.0, highwaters, offsets).seek == {A: 0, B: 0}
    assert watch.look(RETRY_S + 1, 1.0, highwaters, offsets).seek == {}
    assert watch.look(2 * RETRY_S, 1.0, highwaters, offsets).seek == {A: 0, B: 0}


def test_progress_restarts_the_wait_and_a_complete_partition_is_not_watched() -> None:
    watch = RecoveryWatch(RETRY_S, TIMEOUT_S)
    watch.look(0.0, 1.0, {A: 5, B: 2}, {A: -1, B: 0})
    verdict = watch.look(RETRY_S, 1.0, {A: 5, B: 2}, {A: 3, B: 2})
    assert verdict.seek == {} and verdict.stalled == {}
    assert watch.look(2 * RETRY_S - 0.1, 1.0, {A: 5, B: 2}, {A: 3, B: 2}).seek == {}
    assert watch.look(2 * RETRY_S, 1.0, {A: 5, B: 2}, {A: 3, B: 2}).seek == {A: 3}
    assert set(watch.partitions) == {A}


def test_unknown_offsets_or_highwaters_are_not_watched() -> None:
    watch = RecoveryWatch(RETRY_S, TIMEOUT_S)
    for now in (0.0, RETRY_S, TIMEOUT_S):
        verdict = watch.look(now, 1.0, {A: None, B: 4}, {A: 0, B: None})
        assert verdict.seek == {} and verdict.stalled == {}


def test_a_new_recovery_or_none_forgets_what_was_watched() -> None:
    watch = RecoveryWatch(RETRY_S, TIMEOUT_S)
    watch.look(0.0, 1.0, {A: 5}, {A: -1})
    assert watch.look(RETRY_S, 2.0, {A: 5}, {A: -1}).seek == {}  # a new attempt: wait again
    assert watch.look(2 * RETRY_S, 2.0, {A: 5}, {A: -1}).seek == {A: 0}
    assert watch.look(3 * RETRY_S, None, {A: 5}, {A: -1}).seek == {}
    assert watch.partitions == {}


def test_a_partition_without_progress_for_the_timeout_is_given_up() -> None:
    watch = RecoveryWatch(RETRY_S, TIMEOUT_S)
    watch.look(0.0, 1.0, {A: 5, B: 2}, {A: -1, B: 0})
    watch.look(TIMEOUT_S / 2, 1.0, {A: 5, B: 2}, {A: -1, B: 1})
    verdict = watch.look(TIMEOUT_S, 1.0, {A: 5, B: 2}, {A: -1, B: 1})
    assert verdict.stalled == {A: TIMEOUT_S} and verdict.seek == {B: 1}


@dataclass
class Recovery:
    in_recovery: bool = True
    _recovery_started_at: float = 1.0
    active_highwaters: dict[TP, int] = field(default_factory=dict)
    active_offsets: dict[TP, int] = field(default_factory=dict)


@dataclass
class Tables:
    recovery: Recovery


@dataclass
class Consumer:
    assigned: set[TP]
    seeks: list[dict[TP, int]] = field(default_factory=list)
    resumed: list[set[TP]] = field(default_factory=list)

    def assignment(self) -> set[TP]:
        return self.assigned

    async def seek_wait(self, offsets: dict[TP, int]) -> None:
        self.seeks.append(dict(offsets))

    def resume_partitions(self, tps: set[TP]) -> None:
        self.resumed.append(set(tps))


@dataclass
class FailingConsumer(Consumer):
    async def seek_wait(self, offsets: dict[TP, int]) -> None:
        raise RuntimeError("IllegalStateError: No current assignment for partition")


@dataclass
class App:
    tables: Tables
    consumer: Consumer
    should_stop: bool = False
    crashes: list[BaseException] = field(default_factory=list)

    async def crash(self, reason: BaseException) -> None:
        self.crashes.append(reason)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def watchdog(assigned: set[TP]) -> tuple[RecoveryWatchdog, App, Clock]:
    recovery = Recovery(active_highwaters={A: 5, B: 2}, active_offsets={A: -1, B: 0})
    app = App(Tables(recovery), Consumer(assigned))
    clock = Clock()
    registry = CollectorRegistry()
    dog = RecoveryWatchdog(app, RecoveryWatch(RETRY_S, TIMEOUT_S),
                           RateLimitedLog(logging.getLogger("test"), 0.0), RETRY_S / 4,
                           Metrics.create(registry).recovery_seeks, clock=clock)
    return dog, app, clock


def test_the_watchdog_seeks_assigned_partitions_in_the_consumer_thread_and_resumes_them(
        caplog: pytest.LogCaptureFixture) -> None:
    dog, app, clock = watchdog({A})
    asyncio.run(dog.check())
    clock.now = RETRY_S
    with caplog.at_level(logging.WARNING):
        asyncio.run(dog.check())
    assert app.consumer.seeks == [{A: 0}] and app.consumer.resumed == [{A}]
    assert "recovery_seek_retry" in caplog.text and "partition=2" in caplog.text
    assert dog.seeks is not None
    assert dog.seeks.labels(topic=A.topic)._value.get() == 1
    assert app.crashes == []


def test_the_watchdog_crashes_the_app_naming_the_stalled_partitions() -> None:
    dog, app, clock = watchdog({A, B})
    for clock.now in (0.0, TIMEOUT_S):
        asyncio.run(dog.check())
    assert len(app.crashes) == 1 and isinstance(app.crashes[0], RecoveryStalled)
    message = str(app.crashes[0])
    assert "app-rollup-changelog[2] (60 s)" in message
    assert "app-rollup-changelog[4] (60 s)" in message


def test_the_watchdog_does_nothing_outside_recovery_or_while_stopping() -> None:
    for stopping in (False, True):
        dog, app, clock = watchdog({A, B})
        app.should_stop = stopping
        app.tables.recovery.in_recovery = stopping  # in recovery only while stopping
        for clock.now in (0.0, RETRY_S, TIMEOUT_S):
            asyncio.run(dog.check())
        assert app.consumer.seeks == [] and app.crashes == []


def test_a_seek_that_fails_is_logged_and_made_again_at_the_next_retry(
        caplog: pytest.LogCaptureFixture) -> None:
    dog, app, clock = watchdog({A})
    app.consumer = FailingConsumer({A})
    with caplog.at_level(logging.WARNING):
        for clock.now in (0.0, RETRY_S):
            asyncio.run(dog.check())
    assert "recovery_seek_failed" in caplog.text and "No current assignment" in caplog.text
    app.consumer = Consumer({A})
    clock.now = 2 * RETRY_S
    asyncio.run(dog.check())
    assert app.consumer.seeks == [{A: 0}] and app.crashes == []

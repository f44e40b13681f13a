"""A roll-up partition is rebuilt from its changelog in steps (other work runs between them):
it counts as loaded only once whole, a second caller waits for the first one's rebuild, and a
rebuild the partition was dropped during stops."""

from __future__ import annotations

from kpistream.contracts.wire import ALL_READ, BucketValue, RollupMessage, encode_rollup
from kpistream.kpi.formulas import SUM_FIELDS
from kpistream.settings import Settings
from kpistream.state.rollup import LOAD_STEP, RollupState
from kpistream.state.store import DictPackLog

SETTINGS = Settings(windows=("1h/1m",), clock="event", partitions=1)
MIN = 60_000


def written(messages: int) -> DictPackLog:
    log = DictPackLog()
    state = RollupState(SETTINGS, log)
    orders = [0.0] * len(SUM_FIELDS)
    orders[SUM_FIELDS.index("orders")] = 1.0
    for i in range(messages):  # source i: one bucket each, so none supersedes another
        value = BucketValue("1h", "all", "all", i * MIN, tuple(orders))
        state.apply(0, i, encode_rollup(RollupMessage(i, i, i * MIN, ALL_READ, [value])), 0)
    return log


def test_a_rebuild_runs_in_steps_and_is_visible_only_when_whole() -> None:
    log = written(3 * LOAD_STEP)
    whole = RollupState(SETTINGS, log)
    whole.load(0, 0)
    state = RollupState(SETTINGS, log)
    steps = state.loading(0, 0)
    next(steps)
    assert not state.loaded(0)
    assert sum(1 for _ in steps) >= 1
    assert state.loaded(0) and list(state.loading(0, 0)) == []
    assert state.cache[0].keys() == whole.cache[0].keys()
    assert state.expected(0) == whole.expected(0) == 3 * LOAD_STEP


def test_a_second_caller_waits_and_a_drop_stops_the_rebuild() -> None:
    log = written(3 * LOAD_STEP)
    state = RollupState(SETTINGS, log)
    first = state.loading(0, 0)
    next(first)
    second = state.loading(0, 0)
    assert next(second) is None  # waiting, not starting over
    state.drop([0])  # revoked while rebuilding
    assert list(first) == [] and not state.loaded(0)
    assert list(second) == []  # nothing left to wait for
    state.load(0, 0)  # assigned again: a fresh rebuild
    assert state.loaded(0) and state.expected(0) == 3 * LOAD_STEP


def test_a_rebuild_abandoned_half_way_is_forgotten() -> None:
    state = RollupState(SETTINGS, written(3 * LOAD_STEP))
    abandoned = state.loading(0, 0)
    next(abandoned)
    abandoned.close()  # its caller went away (cancelled)
    assert not state.loaded(0) and not state.rebuilding  # nobody waits on it for ever
    state.load(0, 0)  # the next caller starts over
    assert state.loaded(0) and state.expected(0) == 3 * LOAD_STEP

"""AlertEngine: minute inputs from the roll-up cache, evaluation behind the low watermark,
state persisted per row, one transition per episode edge."""

from __future__ import annotations

from kpistream.alerts.engine import MINUTE_MS, AlertEngine, AlertTransition, alerts_enabled
from kpistream.contracts.wire import ALL_READ, NO_TIME, BucketValue, RollupMessage, encode_rollup
from kpistream.kpi.formulas import SUM_FIELDS
from kpistream.settings import Settings
from kpistream.state.rollup import RollupState
from kpistream.state.store import DictPackLog, DictStore

T0 = 1_800_000_000_000 - 1_800_000_000_000 % (15 * MINUTE_MS)
ROW = ("campaign", "c1")


def sums(orders: int, spend: float) -> tuple[float, ...]:
    values = [0.0] * len(SUM_FIELDS)
    values[SUM_FIELDS.index("orders")] = orders
    values[SUM_FIELDS.index("spend")] = spend
    values[SUM_FIELDS.index("spend_records")] = 1
    return tuple(values)


def setup() -> tuple[RollupState, AlertEngine, DictStore, Settings]:
    # the clock stands still here: no settling (test_a_watermark_that_falls_back_...)
    settings = Settings(clock="event", partitions=1, watermark_settle="0s")
    state = RollupState(settings, DictPackLog())
    store = DictStore()
    return state, AlertEngine(settings, state, store), store, settings


def send(state: RollupState, source: int, stamp: int, mark: int,
         values: list[BucketValue]) -> None:
    """A roll-up message from one source partition, whose low mark is ``mark``."""
    seq = state.expected(0) or 0
    state.apply(0, seq, encode_rollup(RollupMessage(source, stamp, mark, mark, values)), 0)


def feed(state: RollupState, minute: int, orders: int, spend: float, offset: int) -> None:
    """One minute of a campaign: 1h window (1m buckets) and 24h window (15m buckets)."""
    start = T0 + minute * MINUTE_MS
    quarter = start - start % (15 * MINUTE_MS)
    held = state.cache.get(0, {}).get(ROW, {}).get("24h")
    value = held.held(quarter, 0) if held else None
    previous = value[1] if value else None
    total = sums(orders, spend) if previous is None else tuple(
        a + b for a, b in zip(previous, sums(orders, spend), strict=True))
    send(state, 0, offset, start + MINUTE_MS - 1,
         [BucketValue("1h", *ROW, start, sums(orders, spend)),
          BucketValue("24h", *ROW, quarter, total)])


def stable_hour(state: RollupState, engine: AlertEngine) -> None:
    """An hour of 2 orders and 16 EUR a minute, each minute judged and saved."""
    for minute in range(0, 60):
        feed(state, minute, 2, 16.0, minute)
        assert engine.run({0}, 0) == []
        engine.save()


def orders_stop(state: RollupState, engine: AlertEngine, save: bool) -> list[AlertTransition]:
    """15 minutes without orders, spend going on; each judged (and saved if ``save``)."""
    fired = []
    for minute in range(60, 75):
        feed(state, minute, 0, 16.0, minute)
        fired += engine.run({0}, 0)
        if save:
            engine.save()
    return fired


def test_orders_stopping_fires_once_and_resolves_once() -> None:
    state, engine, store, _ = setup()
    transitions = []
    for minute in range(0, 60):  # a stable hour: 2 orders and 16 EUR a minute
        feed(state, minute, 2, 16.0, minute)
        transitions += engine.run({0}, 0)
    assert transitions == []
    for minute in range(60, 80):  # orders stop, spend goes on
        feed(state, minute, 0, 16.0, minute)
        transitions += engine.run({0}, 0)
    assert [t.transition.state for t in transitions] == ["firing"]
    fired = transitions[0].transition.message
    assert fired["kind"] == "orders_stopped" and fired["group"] == "c1"
    assert T0 + 60 * MINUTE_MS < fired["started_at"] <= T0 + 75 * MINUTE_MS
    assert [row for row, _ in engine.firing({0})] == [ROW]
    for minute in range(80, 110):  # orders are back
        feed(state, minute, 2, 16.0, minute)
        transitions += engine.run({0}, 0)
    assert [t.transition.state for t in transitions] == ["firing", "resolved"]
    assert transitions[1].transition.message["alert_id"] == fired["alert_id"]
    assert list(engine.firing({0})) == []
    assert store.get(engine.key(0, ROW)) is None  # not before the caller delivered ...
    engine.save()  # ... the transitions
    assert store.get(engine.key(0, ROW)) is not None  # the state is persisted per row


def test_a_restarted_engine_neither_repeats_nor_loses_the_episode() -> None:
    state, engine, store, settings = setup()
    stable_hour(state, engine)
    fired = orders_stop(state, engine, save=True)
    assert len(fired) == 1
    restarted = AlertEngine(settings, state, store)  # same tables, new process
    assert restarted.run({0}, 0) == []  # the minutes already evaluated are not evaluated again
    assert [row for row, _ in restarted.firing({0})] == [ROW]


def test_a_transition_not_delivered_before_a_crash_is_repeated_never_lost() -> None:
    """The sinks had not delivered the firing (save() not called) when the worker died: the
    next process judges those minutes again and fires the same episode (same alert_id)."""
    state, engine, store, settings = setup()
    stable_hour(state, engine)
    fired = orders_stop(state, engine, save=False)
    assert len(fired) == 1
    assert [row for row, _ in engine.firing({0})] == [ROW]  # unsaved, still this run's
    assert engine.run({0}, 0) == []  # judged once while the process lives
    restarted = AlertEngine(settings, state, store)  # the crash lost the unsaved states
    assert list(restarted.firing({0})) == []
    again = restarted.run({0}, 0)
    assert [t.transition.message for t in again] == [fired[0].transition.message]
    restarted.save()
    assert AlertEngine(settings, state, store).run({0}, 0) == []


def test_a_partition_given_up_leaves_its_unsaved_states_to_the_next_owner() -> None:
    """A rebalance took partition 0 while its firing was not delivered yet: this worker
    drops the unsaved state (saving it later would overwrite what the next owner saved),
    and the next owner fires the episode from the last saved state."""
    state, engine, store, settings = setup()
    stable_hour(state, engine)
    saved = store.get(engine.key(0, ROW))
    fired = orders_stop(state, engine, save=False)
    assert len(fired) == 1
    engine.forget({0})
    assert list(engine.firing({0})) == []
    engine.save()
    assert store.get(engine.key(0, ROW)) == saved
    next_owner = AlertEngine(settings, state, store)
    assert [t.transition.message for t in next_owner.run({0}, 0)] == [
        fired[0].transition.message]


def test_minutes_wait_for_the_slowest_source_partition() -> None:
    settings = Settings(clock="event", partitions=2, watermark_settle="0s")
    state = RollupState(settings, DictPackLog())
    engine = AlertEngine(settings, state, DictStore())
    send(state, 0, 0, T0 + 30 * MINUTE_MS, [BucketValue("1h", *ROW, T0, sums(0, 100.0))])
    assert engine.run({0}, 0) == []  # partition 1 has not reported: nothing is complete
    assert state.complete_time(0, 0) < 0
    send(state, 1, 0, T0 + 10 * MINUTE_MS, [])
    assert state.complete_time(0, 0) == T0 + 10 * MINUTE_MS


def test_the_baseline_window_is_found_by_name_or_by_size() -> None:
    """alert_baseline_window 24h finds a 24-hour window however its SIZE is written."""
    for written in ("24h", "1d", "1440m"):
        settings = Settings(windows=("5m/10s", "1h/1m", f"{written}/15m"))
        baseline = settings.alert_baseline
        assert baseline is not None and baseline.name == written
        assert alerts_enabled(settings)
    assert Settings(windows=("1h/1m", "12h/15m")).alert_baseline is None
    assert not alerts_enabled(Settings(windows=("1h/1m", "12h/15m")))
    assert Settings(alert_baseline_window="not-a-window").alert_baseline is None


def test_a_minute_is_judged_once_the_watermark_has_stood_past_it_for_the_settle_time(
        ) -> None:
    """Several workers: a raw partition one edge read to its end has records again, not
    read yet, while another edge's backlog moves the watermark an hour ahead; a second later
    the first edge's marks pull it back. Nothing the watermark passed for that second is
    judged; what it has stood past for ``watermark_settle`` is."""
    settings = Settings(clock="event", partitions=2, watermark_settle="5s")
    state = RollupState(settings, DictPackLog())
    engine = AlertEngine(settings, state, DictStore())
    for minute in range(60):
        feed(state, minute, 2, 16.0, minute)  # source 0, read up to each minute's end
    send(state, 1, 0, T0 + 10 * MINUTE_MS, [])
    now = 1_000_000

    def judged_at(ms: int) -> int:
        engine.run({0}, now + ms)
        return state.evaluated.get(0, NO_TIME)

    assert judged_at(0) == NO_TIME  # not seen for 5 s yet
    assert judged_at(5_000) == T0 + 9 * MINUTE_MS  # 10 min less the 30 s settle of ts
    state.apply(0, state.expected(0) or 0, encode_rollup(RollupMessage(
        1, 1, T0 + 10 * MINUTE_MS, ALL_READ, [], T0 + 60 * MINUTE_MS)), 0)
    assert state.complete_time(0, now + 6_000) > T0 + 59 * MINUTE_MS  # nothing left?
    assert judged_at(6_000) == T0 + 9 * MINUTE_MS
    send(state, 1, 2, T0 + 12 * MINUTE_MS, [])  # ... it had records again
    # at or past 12 min since 6 s (60 min, then 12): judged once that is 5 s ago
    assert [judged_at(ms) for ms in (7_000, 9_000, 11_000, 13_000)] == [
        T0 + 9 * MINUTE_MS] * 2 + [T0 + 11 * MINUTE_MS] * 2

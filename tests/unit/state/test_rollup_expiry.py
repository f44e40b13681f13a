"""What the roll-up keeps (state/rollup.py, ``expiry_times``): a row's buckets until the low
watermark has passed them by their window's reach, the detector's buckets until it has also
judged them, and an attribution day's campaign buckets until the day is folded; forgotten
after every batch, not only by the 5-second sweep."""

from __future__ import annotations

from kpistream.contracts.wire import NO_TIME, BucketValue, RollupMessage, encode_rollup
from kpistream.kpi.formulas import SUM_FIELDS
from kpistream.settings import Settings
from kpistream.state.rollup import RollupState
from kpistream.state.store import DictPackLog

# alerts on: the detector's minutes in 1h/1m, its baseline in 2h/15m (also the attribution
# window); 5m/10s is read by no one but the rows
SETTINGS = Settings(windows=("5m/10s", "1h/1m", "2h/15m"), clock="event", grace="5m",
                    partitions=2, attribution_period="30m", alert_baseline_window="2h",
                    watermark_settle="0s")
MIN = 60_000
T0 = 1_800_000_000_000 - 1_800_000_000_000 % (30 * MIN)


def sums(orders: float) -> tuple[float, ...]:
    out = [0.0] * len(SUM_FIELDS)
    out[SUM_FIELDS.index("orders")] = orders
    return tuple(out)


def message(source: int, stamp: int, event_time: int, low_mark: int,
            *values: BucketValue) -> bytes:
    return encode_rollup(RollupMessage(source, stamp, event_time, low_mark, list(values)))


def held(state: RollupState, row: tuple[str, str], window: str) -> set[int]:
    windows = state.cache[0].get(row, {})
    return set(windows[window].totals) if window in windows else set()


def two_sources(*, hold_for_alerts: bool = True) -> RollupState:
    """Every row has a bucket at T0 in every window; both sources are at T0."""
    state = RollupState(SETTINGS, DictPackLog(), hold_for_alerts=hold_for_alerts)
    state.load(0, 0)
    values = [BucketValue(window, dimension, group, T0, sums(1))
              for window in ("5m", "1h", "2h")
              for dimension, group in (("campaign", "c1"), ("segment", "new"))]
    state.apply(0, 0, message(0, 0, T0, T0, *values), 0)
    state.apply(0, 1, message(1, 0, T0, T0), 0)
    state.evaluated[0] = T0
    return state


def advance(state: RollupState, seq: int, stamp: int, to: int, *sources: int) -> None:
    for i, source in enumerate(sources):
        state.apply(0, seq + i, message(source, stamp, to, to), 0)


def test_a_lagging_source_holds_every_bucket_its_events_may_still_reach() -> None:
    state = two_sources()
    advance(state, 2, 1, T0 + 70 * MIN, 0)  # source 1 holds the watermark at T0
    assert state.complete_time(0, 0) == T0
    assert state.expire(0, 0) == 0
    assert held(state, ("segment", "new"), "5m") == {T0}


def test_buckets_go_after_the_batch_the_watermark_passed_them_in() -> None:
    state = two_sources()
    advance(state, 2, 1, T0 + 60 * MIN, 0, 1)
    state.expire(0, 0)  # as the agent does after a batch: no sweep
    # 5m/10s reaches 10 minutes back: gone for every row
    assert held(state, ("campaign", "c1"), "5m") == held(state, ("segment", "new"), "5m") == set()
    # 1h/1m reaches 65 minutes: still covered
    assert held(state, ("segment", "new"), "1h") == {T0}


def test_the_detectors_buckets_stay_until_it_has_judged_them() -> None:
    state = two_sources()
    advance(state, 2, 1, T0 + 70 * MIN, 0, 1)
    state.expire(0, 0)
    # 1h/1m: the watermark has passed the bucket, the segment row (no detector) lets it go ...
    assert held(state, ("segment", "new"), "1h") == set()
    # ... the detector watches campaign rows and has judged nothing since T0
    assert held(state, ("campaign", "c1"), "1h") == {T0}
    state.evaluated[0] = T0 + 70 * MIN
    state.expire(0, 0)
    assert held(state, ("campaign", "c1"), "1h") == set()


def test_a_campaign_bucket_of_the_largest_window_stays_until_its_day_is_folded() -> None:
    state = two_sources(hold_for_alerts=False)
    advance(state, 2, 1, T0 + 160 * MIN, 0, 1)
    state.expire(0, 0)  # the agent's expiry, before the sweep has folded the day
    assert held(state, ("segment", "new"), "2h") == set()
    assert held(state, ("campaign", "c1"), "2h") == {T0}
    assert state.final_costs(0) == []
    state.sweep(0, 0)  # folds the day, then the bucket goes
    assert [(c.campaign, c.orders) for c in state.final_costs(0)] == [("c1", 1)]
    assert held(state, ("campaign", "c1"), "2h") == set()


def test_a_value_for_a_bucket_the_watermark_passed_is_not_held() -> None:
    state = two_sources()
    advance(state, 2, 1, T0 + 60 * MIN, 0, 1)
    state.expire(0, 0)
    state.apply(0, 4, message(1, 2, T0 + 60 * MIN, T0 + 60 * MIN,
                              BucketValue("5m", "segment", "new", T0, sums(2))), 0)
    assert held(state, ("segment", "new"), "5m") == set()
    assert state.expiry_times(0, 0) == (T0 + 60 * MIN, T0)
    assert RollupState(SETTINGS, DictPackLog()).expiry_times(0, 0) == (NO_TIME, NO_TIME)

"""What the roll-up keeps (state/rollup.py, ``expiry_times``): a row's buckets only while a
window at the stream time can cover them, the detector's buckets until it has judged them,
and an attribution day's campaign buckets until the day is folded; forgotten after every
batch, not only by the 5-second sweep."""

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


def lagging_source() -> RollupState:
    """Source 0 has read an hour on; source 1 (its raw partitions behind) holds the low
    watermark at T0. Every row has a bucket at T0 in every window."""
    state = RollupState(SETTINGS, DictPackLog(), hold_for_alerts=True)
    state.load(0, 0)
    values = [BucketValue(window, dimension, group, T0, sums(1))
              for window in ("5m", "1h", "2h")
              for dimension, group in (("campaign", "c1"), ("segment", "new"))]
    state.apply(0, 0, message(0, 0, T0, T0, *values), 0)
    state.apply(0, 1, message(1, 0, T0, T0), 0)
    state.evaluated[0] = T0
    state.apply(0, 2, message(0, 1, T0 + 60 * MIN, T0 + 60 * MIN), 0)
    return state


def test_buckets_before_the_rows_windows_go_after_the_batch_whatever_the_watermark() -> None:
    state = lagging_source()
    assert state.complete_time(0, 0) == T0  # the watermark waits for source 1
    state.expire(0, 0)
    # 5m/10s reaches 10 minutes back from the stream time: gone for every row
    assert held(state, ("campaign", "c1"), "5m") == held(state, ("segment", "new"), "5m") == set()
    # 1h/1m reaches 65 minutes: still covered
    assert held(state, ("segment", "new"), "1h") == {T0}


def test_the_detectors_buckets_stay_until_it_has_judged_them() -> None:
    state = lagging_source()
    state.apply(0, 3, message(0, 2, T0 + 70 * MIN, T0 + 70 * MIN), 0)
    state.expire(0, 0)
    # 1h/1m: the stream time has passed the bucket for the rows ...
    assert held(state, ("segment", "new"), "1h") == set()
    # ... but the detector watches campaign rows and has judged nothing since T0
    assert held(state, ("campaign", "c1"), "1h") == {T0}
    state.apply(0, 4, message(1, 1, T0 + 70 * MIN, T0 + 70 * MIN), 0)
    state.evaluated[0] = T0 + 70 * MIN
    state.expire(0, 0)
    assert held(state, ("campaign", "c1"), "1h") == set()


def test_a_campaign_bucket_of_the_largest_window_stays_until_its_day_is_folded() -> None:
    state = lagging_source()
    state.apply(0, 3, message(0, 2, T0 + 160 * MIN, T0 + 160 * MIN), 0)
    state.evaluated[0] = T0 + 160 * MIN
    state.expire(0, 0)
    assert held(state, ("segment", "new"), "2h") == set()
    assert held(state, ("campaign", "c1"), "2h") == {T0}  # its day is not folded
    assert state.final_costs(0) == []
    # source 1 catches up: the watermark passes the day, which is folded, and the bucket goes
    state.apply(0, 4, message(1, 1, T0 + 160 * MIN, T0 + 160 * MIN), 0)
    state.sweep(0, 0)
    assert [(c.campaign, c.orders) for c in state.final_costs(0)] == [("c1", 1)]
    assert held(state, ("campaign", "c1"), "2h") == set()


def test_a_value_for_a_bucket_the_stream_time_passed_is_not_held() -> None:
    state = lagging_source()
    state.expire(0, 0)
    state.apply(0, 3, message(1, 1, T0, T0, BucketValue("5m", "segment", "new", T0,
                                                          sums(2))), 0)
    assert held(state, ("segment", "new"), "5m") == set()
    assert state.expiry_times(0, 0) == (T0 + 60 * MIN, T0)
    assert RollupState(SETTINGS, DictPackLog()).expiry_times(0, 0) == (NO_TIME, NO_TIME)

"""Attribution days at the roll-up (SPEC §8): a campaign's day sums are folded from the
largest window's buckets as they expire, and its CPO on the day is final exactly when the
low watermark has passed the day's end plus the largest window plus grace."""

from __future__ import annotations

from kpistream.contracts.wire import ALL_READ, BucketValue, RollupMessage, encode_rollup
from kpistream.kpi.formulas import SUM_FIELDS
from kpistream.settings import Settings
from kpistream.state.rollup import RollupState
from kpistream.state.store import DictPackLog

# The clock stands still here: days are final at the watermark itself, without the wall
# time it settles for (RollupState.settled_time).
SETTINGS = Settings(windows=("1h/15m",), clock="event", grace="5m", partitions=1,
                    attribution_period="1h", watermark_settle="0s")
MIN = 60_000
HOUR = 60 * MIN
RETENTION = HOUR + 5 * MIN


def sums(orders: float = 0, spend: float = 0) -> tuple[float, ...]:
    out = [0.0] * len(SUM_FIELDS)
    out[SUM_FIELDS.index("orders")] = orders
    out[SUM_FIELDS.index("spend")] = spend
    return tuple(out)


def message(stamp: int, event_time: int, *values: BucketValue,
            low_mark: int = ALL_READ) -> bytes:
    return encode_rollup(RollupMessage(0, stamp, event_time, low_mark, list(values)))


def value(campaign: str, bucket: int, orders: float, spend: float) -> BucketValue:
    return BucketValue("1h", "campaign", campaign, bucket, sums(orders, spend))


def test_a_day_is_final_when_its_last_bucket_expires_and_its_cpo_is_spend_over_orders() -> None:
    log = DictPackLog()
    state = RollupState(SETTINGS, log)
    state.load(0, 0)
    state.apply(0, 0, message(0, 50 * MIN, value("c1", 0, 2, 10.0), value("c1", 45 * MIN, 3,
                                                                            15.0),
                              value("c2", 15 * MIN, 0, 7.0), value("c3", 30 * MIN, 4, 0.0)), 0)
    # Watermark one millisecond before the day's end + retention: not final.
    state.apply(0, 1, message(1, HOUR + RETENTION - 1), 0)
    state.sweep(0, 0)
    assert state.final_costs(0) == []
    state.apply(0, 2, message(2, HOUR + RETENTION), 0)
    state.sweep(0, 0)
    costs = {(c.campaign, c.day): (c.cpo, c.spend, c.orders) for c in state.final_costs(0)}
    assert costs == {("c1", 0): (5.0, 25.0, 5), ("c2", 0): (0.0, 7.0, 0),
                     ("c3", 0): (0.0, 0.0, 4)}
    # A restart before the customer stage acknowledged them sends them again, from the
    # attribution record (the folded buckets' messages may be tombstoned by then).
    for seq in state.take_dead(0):
        log.delete(0, seq)
    restarted = RollupState(SETTINGS, log)
    restarted.load(0, 0)
    again = {(c.campaign, c.day): c.cpo for c in restarted.final_costs(0)}
    assert again == {("c1", 0): 5.0, ("c2", 0): 0.0, ("c3", 0): 0.0}
    restarted.costs_sent(0, restarted.final_costs(0))
    assert restarted.final_costs(0) == []
    after = RollupState(SETTINGS, log)
    after.load(0, 0)
    assert after.final_costs(0) == []


def test_buckets_folded_before_a_restart_are_not_folded_twice() -> None:
    log = DictPackLog()
    state = RollupState(SETTINGS, log)
    state.load(0, 0)
    state.apply(0, 0, message(0, 0, value("c1", 0, 1, 4.0), value("c1", 30 * MIN, 1, 6.0)), 0)
    # The first bucket has expired, the second not yet: half the day is folded.
    state.apply(0, 1, message(1, 15 * MIN + RETENTION), 0)
    state.sweep(0, 0)
    # Crash before the expired message was tombstoned: reloaded, it is held again.
    restarted = RollupState(SETTINGS, log)
    restarted.load(0, 0)
    restarted.apply(0, 2, message(2, HOUR + RETENTION), 0)
    restarted.sweep(0, 0)
    [cost] = restarted.final_costs(0)
    assert (cost.spend, cost.orders, cost.cpo) == (10.0, 2, 5.0)


def test_only_campaign_rows_of_the_largest_window_are_folded() -> None:
    settings = Settings(windows=("5m/1m", "1h/15m"), clock="event", grace="5m", partitions=1,
                        attribution_period="1h", watermark_settle="0s")
    state = RollupState(settings, DictPackLog())
    state.load(0, 0)
    state.apply(0, 0, message(0, 0, BucketValue("5m", "campaign", "c1", 0, sums(9, 9.0)),
                              BucketValue("1h", "channel", "search", 0, sums(9, 9.0)),
                              value("c1", 0, 1, 3.0)), 0)
    state.apply(0, 1, message(1, HOUR + RETENTION), 0)
    state.sweep(0, 0)
    assert [(c.campaign, c.spend, c.orders) for c in state.final_costs(0)] == [("c1", 3.0, 1)]


def test_a_day_is_final_at_the_watermark_while_the_detector_still_holds_its_buckets() -> None:
    """With alerts on, buckets stay until the detector has judged their minutes, idle_lag
    behind the watermark: the day is final at the watermark all the same (a replay ending
    within idle_lag of the boundary published no cost at all)."""
    # the detector's minutes in 1h/1m, its baseline in the largest window, 2h/15m
    alerting = Settings(windows=("1h/1m", "2h/15m"), clock="event", grace="5m", partitions=1,
                        attribution_period="1h", watermark_settle="0s",
                        alert_baseline_window="2h")
    state = RollupState(alerting, DictPackLog(), hold_for_alerts=True)
    state.load(0, 0)
    state.apply(0, 0, message(0, 50 * MIN, BucketValue("2h", "campaign", "c1", 0,
                                                        sums(2, 10.0))), 0)
    state.apply(0, 1, message(1, HOUR + 2 * HOUR + 5 * MIN), 0)
    state.evaluated[0] = 10 * MIN  # the detector has judged only the first minutes
    state.sweep(0, 0)
    assert [(c.campaign, c.cpo) for c in state.final_costs(0)] == [("c1", 5.0)]
    assert state.cache[0][("campaign", "c1")]["2h"].totals  # still held for the detector
    state.evaluated[0] = HOUR + 2 * HOUR + 5 * MIN
    state.sweep(0, 0)
    assert state.cache[0][("campaign", "c1")]["2h"].totals == {}


SETTLING = Settings(windows=("1h/15m",), clock="event", grace="5m", partitions=1,
                    attribution_period="1h", watermark_settle="5s")


def test_without_alerts_a_bucket_expires_only_once_folded_into_its_day() -> None:
    """Without alerts, buckets expire at the watermark and days are folded at the settled
    watermark, ``watermark_settle`` of wall time later: a bucket the watermark passed
    within that time was dropped unfolded, and its day lost its spend and orders."""
    state = RollupState(SETTLING, DictPackLog())
    state.load(0, 0)
    state.apply(0, 0, message(0, 50 * MIN, value("c1", 0, 2, 10.0), value("c1", 45 * MIN, 1,
                                                                            5.0)), 0)
    state.apply(0, 1, message(1, HOUR + RETENTION), 0)
    state.sweep(0, 0)  # the watermark has not stood for 5 s yet: nothing is folded
    assert state.final_costs(0) == []
    assert set(state.cache[0][("campaign", "c1")]["1h"].totals) == {0, 45 * MIN}
    state.sweep(0, 6_000)
    assert [(c.campaign, c.spend, c.orders) for c in state.final_costs(0)] == [("c1", 15.0, 3)]
    assert state.cache[0][("campaign", "c1")]["1h"].totals == {}  # folded, then expired


def test_without_alerts_a_rebuild_keeps_the_buckets_its_days_still_need() -> None:
    """After a restart nothing has settled yet; the first sweep must not drop what the
    next one folds."""
    log = DictPackLog()
    state = RollupState(SETTLING, log)
    state.load(0, 0)
    state.apply(0, 0, message(0, 50 * MIN, value("c1", 0, 2, 10.0)), 0)
    state.apply(0, 1, message(1, HOUR + RETENTION), 0)
    restarted = RollupState(SETTLING, log)
    restarted.load(0, 0)  # sweeps once, unsettled
    restarted.sweep(0, 6_000)
    assert [(c.campaign, c.cpo) for c in restarted.final_costs(0)] == [("c1", 5.0)]


def test_a_late_value_of_an_unfolded_bucket_is_held_for_its_day() -> None:
    """A value for a bucket the watermark has passed but the settled watermark has not is
    applied (it belongs to a day not yet folded), not dropped as expired."""
    state = RollupState(SETTLING, DictPackLog())
    state.load(0, 0)
    state.apply(0, 0, message(0, 50 * MIN), 0)
    state.apply(0, 1, message(1, HOUR + RETENTION), 0)
    state.sweep(0, 0)
    state.apply(0, 2, message(2, HOUR + RETENTION, value("c1", 0, 4, 8.0)), 0)
    state.sweep(0, 6_000)
    assert [(c.campaign, c.cpo) for c in state.final_costs(0)] == [("c1", 2.0)]

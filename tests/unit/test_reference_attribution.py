"""The reference's expired cancellations (SPEC §1) and attribution costs (SPEC §8), on small
hand-computed streams."""

from __future__ import annotations

from typing import Any

import pytest

from kpistream.contracts.records import Event, Order, Spend, Survey
from kpistream.reference import (
    campaign_day_cpo,
    classify,
    counted_events,
    expected_profiles,
    expected_row,
    expected_rows,
)

MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
RETENTION = HOUR + 5 * MIN  # a 1h largest window + 5m grace
PERIOD = HOUR  # attribution "days" of an hour


def order(order_id: str, ts: int, amount: float = 10.0, *, customer: str = "cu1",
          campaign: str = "c1") -> Order:
    return Order(order_id, ts, "placed", customer, amount, "search", campaign, "vip")


def cancel(order_id: str, ts: int) -> Order:
    return Order(order_id, ts, "cancelled", None, None, "unknown", "unattributed", "unknown")


def spend(spend_id: str, ts: int, amount: float, campaign: str = "c1") -> Spend:
    return Spend(spend_id, ts, campaign, "search", amount)


def profiles(events: list[Event], watermark: int | None) -> dict[str, dict[str, Any]]:
    outcome = classify(events, retention_ms=RETENTION)
    return expected_profiles(outcome, watermark_ms=watermark, retention_ms=RETENTION,
                             period_ms=PERIOD)


def test_a_cancellation_after_the_order_expired_is_unknown_and_the_order_stays_counted() -> None:
    events = [order("o1", 0), order("o2", 2 * HOUR), cancel("o1", RETENTION + 1)]
    outcome = classify(events, retention_ms=RETENTION)
    assert outcome.unknown_orders == [events[2]] and outcome.retracted == frozenset()
    assert expected_profiles(outcome)["cu1"]["orders"] == 2
    row = expected_row(outcome, dimension="all", group="all", window_start=0,
                       window_end=HOUR)
    assert row.orders == 1


def test_a_cancellation_of_an_expired_order_retracts_a_new_order_of_its_id_up_to_its_time(
) -> None:
    """Like a cancellation read before any order: the id's new order placed at or before
    it (within the retention) is retracted when it comes; the expired one stays counted.
    A new order placed after it counts."""
    events = [order("o1", 0), cancel("o1", RETENTION + 1), order("o1", RETENTION + 1, 7.0)]
    outcome = classify(events, retention_ms=RETENTION)
    assert outcome.unknown_orders == [events[1]]
    assert [e.amount for e in counted_events(outcome)] == [10.0]  # the expired one
    after = classify([*events[:2], order("o1", RETENTION + 2, 7.0)], retention_ms=RETENTION)
    assert sorted(e.amount for e in counted_events(after)) == [7.0, 10.0]


def test_an_id_is_a_duplicate_only_within_the_retention_before_its_ts_and_stream_time(
) -> None:
    first = spend("s1", 0, 5.0)
    within = classify([first, spend("s1", HOUR, 6.0)], retention_ms=RETENTION)
    assert len(within.duplicates) == 1
    # stream time passed the first use by more than the retention: the id is new again
    past = classify([first, order("o1", RETENTION + MIN), spend("s1", HOUR, 6.0)],
                    retention_ms=RETENTION)
    assert past.duplicates == [] and len(past.accepted) == 3


def test_a_cancellation_of_an_order_older_than_stream_time_allows_is_unknown() -> None:
    """Not late itself (20 min after its order), but stream time is 10 min past the order's
    retention: the order has expired, stays counted, and its final day's cost stands."""
    events = [order("o1", 0), spend("s1", MIN, 30.0), order("o2", RETENTION + 10 * MIN),
              cancel("o1", 20 * MIN)]
    outcome = classify(events, retention_ms=RETENTION)
    assert outcome.unknown_orders == [events[3]] and outcome.retracted == frozenset()
    costed = profiles(events, PERIOD + RETENTION)["cu1"]
    assert costed["orders"] == 2 and costed["acquisition_cost"] == 30.0


def test_a_cancellation_within_the_retention_retracts_also_before_its_order() -> None:
    in_time = classify([order("o1", 0), cancel("o1", RETENTION)], retention_ms=RETENTION)
    assert in_time.retracted == {"o1"} and len(in_time.accepted) == 2
    first = classify([cancel("o2", 5 * MIN), order("o2", MIN)], retention_ms=RETENTION)
    assert first.retracted == {"o2"} and first.unknown_orders[0].order_id == "o2"
    # one of an earlier time than its order changed nothing
    earlier = classify([cancel("o3", MIN), order("o3", 5 * MIN)], retention_ms=RETENTION)
    assert earlier.retracted == frozenset()
    assert [e.order_id for e in counted_events(earlier)] == ["o3"]


def test_campaign_day_cpo_is_counted_spend_over_counted_orders() -> None:
    events = [order("o1", MIN), order("o2", 2 * MIN, customer="cu2"),
              order("o3", 3 * MIN, customer="cu3"), cancel("o3", 4 * MIN),
              spend("s1", 10 * MIN, 30.0), spend("s2", 50 * MIN, 12.0),
              order("o4", HOUR + MIN, campaign="c2"),  # c2 has no spend: CPO 0
              spend("s3", HOUR + 2 * MIN, 9.0, campaign="c3")]  # c3 has no order: no CPO
    outcome = classify(events, retention_ms=RETENTION)
    assert campaign_day_cpo(outcome, period_ms=PERIOD) == {("c1", 0): 21.0, ("c2", HOUR): 0.0}


def test_only_final_days_are_costed_and_the_boundary_is_inclusive() -> None:
    events = [order("o1", MIN, 40.0), spend("s1", 2 * MIN, 20.0),
              order("o2", HOUR + MIN, 30.0), spend("s2", HOUR + 2 * MIN, 15.0)]
    final_at = PERIOD + RETENTION  # day 0 is final here, day 1 an hour later
    before = profiles(events, final_at - 1)["cu1"]
    assert (before["marketing_cost"], before["costed_orders"], before["costed_revenue"]) == (
        0.0, 0, 0.0)
    assert not {"cpo", "value_ratio", "acquisition_cost"} & set(before)
    at = profiles(events, final_at)["cu1"]
    assert (at["marketing_cost"], at["costed_orders"], at["costed_revenue"]) == (20.0, 1, 40.0)
    assert at["cpo"] == 20.0 and at["value_ratio"] == 2.0 and at["acquisition_cost"] == 20.0
    both = profiles(events, final_at + PERIOD)["cu1"]
    assert (both["marketing_cost"], both["costed_orders"], both["costed_revenue"]) == (
        35.0, 2, 70.0)
    assert both["cpo"] == 17.5 and both["value_ratio"] == pytest.approx(2.0)
    assert both["acquisition_cost"] == 20.0


def test_unattributed_orders_are_not_costed_and_zero_cost_leaves_no_value_ratio() -> None:
    events = [order("o1", MIN, campaign="unattributed"), order("o2", 2 * MIN, campaign="c2"),
              order("o3", 3 * MIN, customer="cu2", campaign="unattributed"),
              spend("s1", 4 * MIN, 10.0, campaign="unattributed")]
    got = profiles(events, DAY)
    cu1 = got["cu1"]
    assert (cu1["marketing_cost"], cu1["costed_orders"], cu1["costed_revenue"]) == (
        0.0, 1, 10.0)  # o2 of c2 (no spend: CPO 0) is costed at 0
    assert cu1["cpo"] == 0.0 and "value_ratio" not in cu1
    assert "acquisition_cost" not in cu1  # the first order is unattributed
    cu2 = got["cu2"]
    assert (cu2["marketing_cost"], cu2["costed_orders"]) == (0.0, 0)
    assert "cpo" not in cu2 and "acquisition_cost" not in cu2


def test_responses_only_and_no_watermark() -> None:
    response = Survey("r1", MIN, "nps", 9, "cu9", "search", "c1", "vip", None)
    got = profiles([response], DAY)["cu9"]
    assert (got["marketing_cost"], got["costed_orders"], got["costed_revenue"]) == (0.0, 0, 0.0)
    plain = profiles([order("o1", MIN), spend("s1", MIN, 5.0)], None)["cu1"]
    assert not {"marketing_cost", "costed_orders", "costed_revenue", "cpo",
                "acquisition_cost", "value_ratio"} & set(plain)


def test_expiry_is_judged_by_the_cancellations_own_ts_and_by_stream_time() -> None:
    # Stream time is still 0 when the cancellation (ts 2 h) comes, but the order was placed
    # more than the retention before the cancellation: expired, the order stays counted.
    events: list[Event] = [order("o1", 0, 40.0), cancel("o1", 2 * HOUR)]
    outcome = classify(events, retention_ms=RETENTION)
    assert outcome.unknown_orders == [events[1]]
    assert outcome.accepted == [events[0]] and outcome.retracted == frozenset()
    row = expected_row(outcome, dimension="all", group="all", window_start=0, window_end=HOUR)
    assert (row.orders, row.revenue) == (1, 40.0)
    # The cancellation's own ts (1 h) is within the retention of the order, but stream time
    # is 2 h (T_e - retention = 55 min > the order's 0): the order would be late now, its
    # bucket is gone: expired, it stays counted.
    events = [order("o1", 0, 40.0), spend("s1", 2 * HOUR, 5.0), cancel("o1", HOUR)]
    outcome = classify(events, retention_ms=RETENTION)
    assert outcome.late == [] and outcome.unknown_orders == [events[2]]
    assert outcome.retracted == frozenset()
    assert expected_profiles(outcome)["cu1"]["orders"] == 1
    # Stream time 1 h: the same cancellation retracts.
    events = [order("o1", 0, 40.0), spend("s1", HOUR, 5.0), cancel("o1", HOUR)]
    outcome = classify(events, retention_ms=RETENTION)
    assert outcome.unknown_orders == [] and outcome.retracted == {"o1"}
    assert expected_rows(outcome, window_start=0, window_end=HOUR) == {}
    assert expected_profiles(outcome) == {}


def test_expiry_boundary_and_a_second_cancellation_is_a_duplicate() -> None:
    on_edge = classify([order("o1", 0), cancel("o1", RETENTION)], retention_ms=RETENTION)
    assert on_edge.retracted == {"o1"}  # 0 == ts - retention: not expired
    past = [order("o1", 0), cancel("o1", RETENTION + 1), cancel("o1", RETENTION + 2)]
    outcome = classify(past, retention_ms=RETENTION)
    assert outcome.unknown_orders == [past[1]] and outcome.duplicates == [past[2]]
    assert outcome.retracted == frozenset()


def test_an_expired_order_is_still_costed_and_a_retracted_one_is_not() -> None:
    # c1 on day [0, 1h): spend 12; o1 (cu1, 30) and o2 (cu2, 10); day 0 final at 2h05.
    base: list[Event] = [order("o1", MIN, 30.0), spend("s1", 2 * MIN, 12.0),
                         order("o2", 3 * MIN, 10.0, customer="cu2")]
    watermark = PERIOD + RETENTION
    expired = profiles([*base, cancel("o1", 2 * HOUR)], watermark)  # 1 min < 2h - 65 min
    assert campaign_day_cpo(classify([*base, cancel("o1", 2 * HOUR)], retention_ms=RETENTION),
                            period_ms=PERIOD) == {("c1", 0): 6.0}
    cu1 = expired["cu1"]
    assert (cu1["orders"], cu1["revenue"]) == (1, 30.0)
    assert (cu1["marketing_cost"], cu1["costed_orders"], cu1["costed_revenue"]) == (
        6.0, 1, 30.0)
    assert (cu1["cpo"], cu1["acquisition_cost"], cu1["value_ratio"]) == (6.0, 6.0, 5.0)
    assert expired["cu2"]["marketing_cost"] == 6.0
    assert expired["cu2"]["value_ratio"] == pytest.approx(10.0 / 6.0)
    # cancelled in time: o1 counts nowhere, c1's CPO is 12 over o2 alone
    retracted = profiles([*base, cancel("o1", 30 * MIN)], watermark)
    assert set(retracted) == {"cu2"}
    cu2 = retracted["cu2"]
    assert (cu2["marketing_cost"], cu2["costed_orders"], cu2["costed_revenue"]) == (
        12.0, 1, 10.0)
    assert (cu2["cpo"], cu2["acquisition_cost"]) == (12.0, 12.0)
    assert cu2["value_ratio"] == pytest.approx(10.0 / 12.0)


def test_orders_without_a_customer_count_and_days_floor_negative_ts() -> None:
    # day [-1h, 0): c1 spend 9 over o1 (no customer) and o2 (cu1): CPO 4.5; s2 is on day 0,
    # where c1 has no order, so it has no CPO.
    events: list[Event] = [Order("o1", -1, "placed", None, 5.0, "search", "c1", "vip"),
                           order("o2", -PERIOD, 20.0), spend("s1", -30 * MIN, 9.0),
                           spend("s2", 0, 100.0)]
    outcome = classify(events, retention_ms=RETENTION)
    assert campaign_day_cpo(outcome, period_ms=PERIOD) == {("c1", -PERIOD): 4.5}
    final = profiles(events, -PERIOD + PERIOD + RETENTION)
    assert set(final) == {"cu1"}
    cu1 = final["cu1"]
    assert (cu1["marketing_cost"], cu1["costed_orders"], cu1["costed_revenue"]) == (
        4.5, 1, 20.0)
    assert (cu1["cpo"], cu1["acquisition_cost"]) == (4.5, 4.5)
    assert cu1["value_ratio"] == pytest.approx(20.0 / 4.5)
    not_yet = profiles(events, RETENTION - 1)["cu1"]
    assert (not_yet["marketing_cost"], not_yet["costed_orders"]) == (0.0, 0)
    assert "acquisition_cost" not in not_yet and "cpo" not in not_yet

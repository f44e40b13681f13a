"""The batch oracle on small hand-computed scenarios: if it is wrong, every engine test that
compares against it is wrong too."""

from __future__ import annotations

import pytest

from kpistream.contracts.records import Event, Order, Spend, Survey, SurveyKind
from kpistream.kpi.formulas import WindowSums
from kpistream.reference import (
    allocated_spend,
    classify,
    expected_kpis,
    expected_row,
    expected_row_kpis,
    expected_rows,
    window_bounds,
)

MIN = 60_000
HOUR = 60 * MIN
RETENTION = HOUR + 5 * MIN


def placed(order_id: str, ts: int, amount: float = 10.0, *, channel: str = "search",
           campaign: str = "c1", segment: str = "vip") -> Order:
    return Order(order_id, ts, "placed", "cust", amount, channel, campaign, segment)


def cancelled(order_id: str, ts: int, *, channel: str = "unknown",
              campaign: str = "unattributed", segment: str = "unknown") -> Order:
    return Order(order_id, ts, "cancelled", None, None, channel, campaign, segment)


def spend(spend_id: str, ts: int, amount: float = 5.0, *, channel: str = "search",
          campaign: str = "c1") -> Spend:
    return Spend(spend_id, ts, campaign, channel, amount)


def survey(response_id: str, ts: int, kind: SurveyKind, score: int, *,
           channel: str = "search", campaign: str = "c1", segment: str = "vip") -> Survey:
    return Survey(response_id, ts, kind, score, None, channel, campaign, segment, None)


def all_row(events: list[Event], start: int = 0, end: int = HOUR) -> WindowSums:
    outcome = classify(events, retention_ms=RETENTION)
    return expected_row(outcome, dimension="all", group="all", window_start=start,
                        window_end=end)


# --- classify: duplicates -----------------------------------------------------------------

def test_duplicate_with_different_content_is_a_duplicate() -> None:
    first = placed("o1", 1000, 10.0, channel="search")
    again = placed("o1", 2000, 99.0, channel="email", campaign="c2", segment="new")
    outcome = classify([first, again], retention_ms=RETENTION)
    assert outcome.accepted == [first]
    assert outcome.duplicates == [again]
    row = expected_row(outcome, dimension="all", group="all", window_start=0, window_end=HOUR)
    assert (row.orders, row.revenue) == (1, 10.0)
    assert set(expected_rows(outcome, window_start=0, window_end=HOUR)) == {
        ("all", "all"), ("channel", "search"), ("campaign", "c1"), ("segment", "vip")}


def test_duplicate_spend_and_survey_ids() -> None:
    events: list[Event] = [spend("s1", 1000, 5.0), spend("s1", 1000, 500.0),
                           survey("r1", 1000, "nps", 10), survey("r1", 1000, "nps", 0)]
    outcome = classify(events, retention_ms=RETENTION)
    assert outcome.accepted == [events[0], events[2]]
    assert outcome.duplicates == [events[1], events[3]]
    row = all_row(events)
    assert (row.spend, row.spend_records, row.promoters, row.detractors) == (5.0, 1, 1, 0)


def test_id_spaces_are_per_kind() -> None:
    events: list[Event] = [placed("x", 1000), spend("x", 1000), survey("x", 1000, "csat", 5)]
    outcome = classify(events, retention_ms=RETENTION)
    assert outcome.accepted == events
    assert outcome.duplicates == []


def test_an_id_is_forgotten_once_its_use_is_beyond_the_retention() -> None:
    events: list[Event] = [spend("s1", 0), spend("s2", 50 * HOUR), spend("s1", 50 * HOUR)]
    outcome = classify(events, retention_ms=RETENTION)
    assert outcome.duplicates == [] and events[2] in outcome.accepted


# --- classify: cancellations --------------------------------------------------------------

def test_cancel_after_placed_retracts_the_order() -> None:
    order, cancel = placed("o1", 1000, 40.0), cancelled("o1", 2 * MIN)
    outcome = classify([order, placed("o2", 2000, 7.0), cancel], retention_ms=RETENTION)
    assert cancel in outcome.accepted
    assert outcome.unknown_orders == []
    assert outcome.retracted == {"o1"}
    row = all_row([order, placed("o2", 2000, 7.0), cancel])
    assert (row.orders, row.revenue) == (1, 7.0)


def test_cancel_before_placed_is_unknown_and_the_order_counts() -> None:
    """SPEC §1: a cancellation of an order never seen changes nothing, so the placed order
    arriving after it is counted."""
    cancel, order = cancelled("o1", 1000), placed("o1", 2000, 40.0)
    outcome = classify([cancel, order], retention_ms=RETENTION)
    assert outcome.unknown_orders == [cancel]
    assert outcome.accepted == [order]
    assert outcome.retracted == frozenset()
    row = expected_row(outcome, dimension="all", group="all", window_start=0, window_end=HOUR)
    assert row.orders == 1 and row.revenue == 40.0


def test_placed_and_cancelled_rows_agree_whatever_the_order() -> None:
    """SPEC §4: rows do not depend on keying: a cancellation that overtook its order (read
    first, of a later time) retracts it all the same."""
    events: list[Event] = [placed("o1", 1000, 40.0), cancelled("o1", 3000),
                           placed("o2", 2000, 5.0)]
    forward = classify(events, retention_ms=RETENTION)
    backward = classify([events[1], events[0], events[2]], retention_ms=RETENTION)
    assert (expected_rows(forward, window_start=0, window_end=HOUR)
            == expected_rows(backward, window_start=0, window_end=HOUR))
    assert backward.retracted == {"o1"}


def test_an_id_seen_only_beyond_the_retention_is_new_not_a_duplicate() -> None:
    """SPEC §1: a duplicate is an id "already seen within retention", judged by the new
    event's own ts; a reused order id counts as a new order (and only it is retracted)."""
    events = [spend("s", 0), spend("s", RETENTION + 1), spend("s", RETENTION + 2),
              placed("o", 0), cancelled("o", 10), placed("o", RETENTION + 1, amount=7.0)]
    outcome = classify(events, retention_ms=RETENTION)
    assert outcome.duplicates == [events[2]]
    assert events[1] in outcome.accepted and events[5] in outcome.accepted
    assert events[3] not in outcome.accepted and outcome.retracted == frozenset()
    row = expected_row(outcome, dimension="all", group="all", window_start=HOUR,
                       window_end=2 * HOUR)
    assert (row.orders, row.revenue, row.spend) == (1, 7.0, 5.0)
    # at the horizon exactly, still within the retention: a duplicate
    edge = classify([spend("s", 0), spend("s", RETENTION)], retention_ms=RETENTION)
    assert len(edge.duplicates) == 1
    # a cancellation of the new order: a duplicate while the old one is within its
    # retention, then it retracts the new order only
    soon, late = cancelled("o", RETENTION + 5), cancelled("o", RETENTION + 20)
    again = classify([*events, soon, late], retention_ms=RETENTION)
    assert again.duplicates == [events[2], soon] and again.retracted == {"o"}
    assert expected_row(again, dimension="all", group="all", window_start=HOUR,
                        window_end=2 * HOUR).orders == 0


def test_second_cancel_is_a_duplicate() -> None:
    first, second = cancelled("o1", 2000), cancelled("o1", 3000)
    outcome = classify([placed("o1", 1000), first, second], retention_ms=RETENTION)
    assert outcome.duplicates == [second]
    assert first in outcome.accepted
    # also when the first one was an unknown order
    outcome = classify([first, second, placed("o1", 1000)], retention_ms=RETENTION)
    assert outcome.unknown_orders == [first]
    assert outcome.duplicates == [second]


def test_cancel_of_an_order_that_never_comes_changes_nothing() -> None:
    cancel = cancelled("ghost", 1000)
    outcome = classify([placed("o1", 1000, 3.0), cancel], retention_ms=RETENTION)
    assert outcome.unknown_orders == [cancel]
    assert outcome.retracted == frozenset()
    row = expected_row(outcome, dimension="all", group="all", window_start=0, window_end=HOUR)
    assert (row.orders, row.revenue) == (1, 3.0)


def test_retraction_uses_the_placed_orders_bucket_and_groups() -> None:
    # placed at 10 min in channel "social", cancelled 2 h later with other fields
    order = placed("o1", 10 * MIN, 25.0, channel="social", campaign="c9", segment="new")
    cancel = cancelled("o1", 2 * HOUR, channel="email")
    outcome = classify([order, cancel], retention_ms=3 * HOUR)
    assert cancel in outcome.accepted
    assert expected_rows(outcome, window_start=0, window_end=HOUR) == {}
    assert expected_rows(outcome, window_start=HOUR, window_end=3 * HOUR) == {}


def test_late_placed_order_is_not_retracted_nor_counted() -> None:
    events: list[Event] = [spend("s1", 10 * HOUR), placed("o1", 0), cancelled("o1", 10 * HOUR)]
    outcome = classify(events, retention_ms=RETENTION)
    assert outcome.late == [events[1]]
    assert outcome.unknown_orders == [events[2]]
    assert outcome.retracted == frozenset()


# --- classify: lateness ---------------------------------------------------------------------

def test_late_relative_to_stream_time() -> None:
    t = 10 * HOUR
    head = spend("head", t)
    on_edge = spend("edge", t - RETENTION)       # ts == T - retention: not late
    too_old = spend("old", t - RETENTION - 1)    # ts < T - retention: late
    outcome = classify([head, on_edge, too_old], retention_ms=RETENTION)
    assert outcome.accepted == [head, on_edge]
    assert outcome.late == [too_old]


def test_out_of_order_but_not_late_is_counted_in_its_own_bucket() -> None:
    events: list[Event] = [placed("o1", 50 * MIN, 1.0), placed("o2", 5 * MIN, 2.0),
                           placed("o3", 30 * MIN, 4.0)]
    outcome = classify(events, retention_ms=RETENTION)
    assert outcome.accepted == events
    early = expected_row(outcome, dimension="all", group="all", window_start=0,
                         window_end=10 * MIN)
    assert (early.orders, early.revenue) == (1, 2.0)
    assert all_row(events).revenue == 7.0


def test_late_events_do_not_advance_stream_time() -> None:
    # only a clock floor can make an event newer than T late: event 1 (5 h) is late against
    # a 10 h floor and must not lift T to 5 h, or event 2 (0 h, no floor) would be late too
    floors = [0, 10 * HOUR, 0]
    events: list[Event] = [spend("a", 0), spend("b", 5 * HOUR), spend("c", 0)]
    outcome = classify(events, retention_ms=RETENTION, clock_floor_ms=floors.__getitem__)
    assert outcome.late == [events[1]]
    assert outcome.accepted == [events[0], events[2]]


def test_out_of_order_events_do_not_lower_stream_time() -> None:
    events: list[Event] = [spend("a", 10 * HOUR), spend("b", 9 * HOUR),
                           spend("c", 10 * HOUR - RETENTION - 1)]
    outcome = classify(events, retention_ms=RETENTION)
    assert outcome.late == [events[2]]


def test_duplicates_advance_stream_time() -> None:
    events: list[Event] = [spend("a", 10 * HOUR - RETENTION), spend("a", 10 * HOUR),
                           spend("b", 8 * HOUR)]
    outcome = classify(events, retention_ms=RETENTION)
    assert outcome.duplicates == [events[1]]
    assert outcome.late == [events[2]]  # 8 h < 10 h - 65 min (not late against 8 h 55)


def test_clock_floor() -> None:
    floor = 10 * HOUR
    events: list[Event] = [spend("a", floor - RETENTION), spend("b", floor - RETENTION - 1)]
    outcome = classify(events, retention_ms=RETENTION, clock_floor_ms=lambda i: floor)
    assert outcome.accepted == [events[0]]
    assert outcome.late == [events[1]]
    # the floor is per event index: a later floor only affects later events
    floors = [0, 0, floor]
    events = [spend("x", 0), spend("y", 1000), spend("z", 2000)]
    outcome = classify(events, retention_ms=RETENTION, clock_floor_ms=floors.__getitem__)
    assert outcome.accepted == events[:2]
    assert outcome.late == [events[2]]


# --- expected_row ---------------------------------------------------------------------------

def test_window_is_half_open() -> None:
    events: list[Event] = [placed("start", 0, 1.0), placed("inside", HOUR - 1, 2.0),
                           placed("end", HOUR, 4.0), placed("before", -1, 8.0)]
    row = all_row(events, 0, HOUR)
    assert (row.orders, row.revenue) == (2, 3.0)


def test_survey_buckets() -> None:
    scores: dict[SurveyKind, list[int]] = {
        "nps": [0, 6, 7, 8, 9, 10, 10],
        "ces": [1, 4, 5, 7],
        "csat": [1, 3, 4, 5, 5],
    }
    events: list[Event] = [survey(f"{kind}{i}", 1000, kind, score)
                           for kind, values in scores.items() for i, score in enumerate(values)]
    row = all_row(events)
    assert row == WindowSums(
        nps_responses=7, promoters=3, passives=2, detractors=2,
        ces_responses=4, ces_sum=17.0, ces_easy=2,
        csat_responses=5, csat_satisfied=3,
    )
    kpis = expected_kpis(row)
    assert kpis["nps"] == pytest.approx(100 * (3 - 2) / 7)
    assert kpis["ces"] == 4.25
    assert kpis["ces_easy_pct"] == 50.0
    assert kpis["csat"] == 60.0
    assert kpis["orders"] == 0 and kpis["cpo"] is None and kpis["roas"] is None


def test_rows_per_dimension_and_segment_rows_with_allocated_spend() -> None:
    events: list[Event] = [
        placed("o1", 1000, 30.0, channel="search", campaign="c1", segment="vip"),
        placed("o2", 2000, 10.0, channel="email", campaign="c2", segment="vip"),
        spend("s1", 3000, 20.0, channel="search", campaign="c1"),
        spend("s2", 4000, 8.0, channel="social", campaign="c3"),
        survey("r1", 5000, "csat", 5, channel="email", campaign="c2", segment="new"),
    ]
    outcome = classify(events, retention_ms=RETENTION)
    rows = expected_rows(outcome, window_start=0, window_end=HOUR)
    assert set(rows) == {
        ("all", "all"),
        ("channel", "search"), ("channel", "email"), ("channel", "social"),
        ("campaign", "c1"), ("campaign", "c2"), ("campaign", "c3"),
        ("segment", "vip"), ("segment", "new"),
    }
    assert list(rows) == sorted(rows)
    # both orders are customer "cust"'s: o1 (search, c1, vip) is its first
    assert rows[("all", "all")] == WindowSums(orders=2, revenue=40.0, spend=28.0,
                                              spend_records=2, csat_responses=1,
                                              csat_satisfied=1, new_customers=1)
    assert rows[("channel", "search")] == WindowSums(orders=1, revenue=30.0, spend=20.0,
                                                     spend_records=1, new_customers=1)
    assert rows[("channel", "social")] == WindowSums(spend=8.0, spend_records=1)
    assert rows[("campaign", "c2")] == WindowSums(orders=1, revenue=10.0, csat_responses=1,
                                                  csat_satisfied=1)
    assert rows[("segment", "vip")] == WindowSums(orders=2, revenue=40.0, new_customers=1)
    assert rows[("segment", "new")] == WindowSums(csat_responses=1, csat_satisfied=1)
    # the oracle's own rows equal expected_row for each key
    for (dimension, group), sums in rows.items():
        assert expected_row(outcome, dimension=dimension, group=group, window_start=0,
                            window_end=HOUR) == sums

    # vip holds every order of c1 (spend 20) and of c2 (no spend); c3 has no order, so its
    # spend is allocated nowhere
    segment = expected_row_kpis(outcome, dimension="segment", group="vip", window_start=0,
                                window_end=HOUR)
    assert (segment["spend"], segment["cpo"], segment["roas"], segment["aov"]) == (
        20.0, 10.0, 2.0, 20.0)
    assert (segment["new_customers"], segment["cac"], segment["returning_orders"],
            segment["repeat_order_pct"]) == (1, 20.0, 1, 50.0)
    new = expected_row_kpis(outcome, dimension="segment", group="new", window_start=0,
                            window_end=HOUR)
    assert (new["spend"], new["cpo"], new["roas"]) == (0.0, None, None)
    channel = expected_kpis(rows[("channel", "search")])
    assert (channel["spend"], channel["cpo"], channel["roas"], channel["aov"]) == (
        20.0, 20.0, 1.5, 30.0)
    social = expected_kpis(rows[("channel", "social")])
    assert social["cpo"] is None and social["roas"] == 0.0


def test_segment_spend_is_allocated_by_each_campaigns_orders() -> None:
    # c1: 3 orders (2 vip, 1 new), spend 30 -> vip 20, new 10; c2: 1 order (new), spend 8
    # -> new 8; c2's cancelled vip order counts nowhere; c3 has spend but no order.
    events: list[Event] = [
        placed("o1", 1000, campaign="c1", segment="vip"),
        placed("o2", 2000, campaign="c1", segment="vip"),
        placed("o3", 3000, campaign="c1", segment="new"),
        placed("o4", 4000, campaign="c2", segment="new"),
        placed("o5", 4500, campaign="c2", segment="vip"),
        cancelled("o5", 4600),
        spend("s1", 5000, 12.0, campaign="c1"), spend("s2", 6000, 18.0, campaign="c1"),
        spend("s3", 7000, 8.0, campaign="c2"), spend("s4", 8000, 50.0, campaign="c3"),
        spend("s5", 2 * HOUR, 99.0, campaign="c1"),  # outside the window
    ]
    outcome = classify(events, retention_ms=3 * HOUR)
    allocation = {s: allocated_spend(outcome, segment=s, window_start=0, window_end=HOUR)
                  for s in ("vip", "new", "unknown")}
    assert allocation == pytest.approx({"vip": 20.0, "new": 18.0, "unknown": 0.0})
    vip = expected_row_kpis(outcome, dimension="segment", group="vip", window_start=0,
                            window_end=HOUR)
    assert (vip["orders"], vip["cpo"], vip["roas"]) == (2, 10.0, 1.0)  # 20 revenue / 20


def test_transactional_csat_counts_responses_with_an_order_id() -> None:
    events: list[Event] = [
        survey("r1", 1000, "csat", 5), survey("r2", 1000, "csat", 2),
        survey("r3", 1000, "csat", 4)._replace(order_id="o1"),
        survey("r4", 1000, "csat", 1)._replace(order_id="o2"),
        survey("r5", 1000, "nps", 10)._replace(order_id="o3"),  # not csat
    ]
    row = all_row(events)
    assert (row.csat_responses, row.csat_satisfied) == (4, 2)
    assert (row.csat_tx_responses, row.csat_tx_satisfied) == (2, 1)
    kpis = expected_kpis(row)
    assert (kpis["csat"], kpis["csat_transactional"]) == (50.0, 50.0)
    assert expected_kpis(all_row(events[:2]))["csat_transactional"] is None


def test_first_counted_order_moves_with_late_and_cancelled_orders() -> None:
    events: list[Event] = [
        placed("o2", 20 * MIN, segment="vip"),
        placed("o1", 10 * MIN, segment="new"),  # earlier, arrives later: the first order
        placed("o3", 30 * MIN, segment="vip"),
        placed("o4", 5 * MIN, segment="b2b")._replace(customer_id="other"),
        cancelled("o4", 6 * MIN),  # the other customer's only order: no customer left
    ]
    outcome = classify(events, retention_ms=RETENTION)
    vip = expected_row(outcome, dimension="segment", group="vip", window_start=0,
                       window_end=HOUR)
    new = expected_row(outcome, dimension="segment", group="new", window_start=0,
                       window_end=HOUR)
    assert (vip.orders, vip.new_customers, new.orders, new.new_customers) == (2, 0, 1, 1)
    assert expected_row(outcome, dimension="all", group="all", window_start=0,
                        window_end=HOUR).new_customers == 1
    # o1 cancelled: o2 becomes the first order, in the vip row
    moved = classify([*events, cancelled("o1", 40 * MIN)], retention_ms=RETENTION)
    assert expected_row(moved, dimension="segment", group="vip", window_start=0,
                        window_end=HOUR).new_customers == 1
    # the window holds o3 only: the customer is not new in it
    assert expected_row(outcome, dimension="all", group="all", window_start=25 * MIN,
                        window_end=HOUR).new_customers == 0


def test_unknown_dimension_is_an_error() -> None:
    outcome = classify([spend("s", 0)], retention_ms=RETENTION)
    with pytest.raises(ValueError):
        expected_row(outcome, dimension="country", group="de", window_start=0,
                     window_end=HOUR)


# --- window_bounds --------------------------------------------------------------------------

@pytest.mark.parametrize(("t", "size", "step", "bounds"), [
    (0, 300_000, 10_000, (-290_000, 10_000)),
    (9_999, 300_000, 10_000, (-290_000, 10_000)),
    (10_000, 300_000, 10_000, (-280_000, 20_000)),     # T on a boundary opens the next bucket
    (1_763_806_512_345, HOUR, MIN, (1_763_802_960_000, 1_763_806_560_000)),
    (90 * MIN, 24 * HOUR, 15 * MIN, (105 * MIN - 24 * HOUR, 105 * MIN)),
])
def test_window_bounds(t: int, size: int, step: int, bounds: tuple[int, int]) -> None:
    start, end = window_bounds(t, size, step)
    assert (start, end) == bounds
    assert end % step == 0 and end - start == size and start <= t < end

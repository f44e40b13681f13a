"""compute_kpis against SPEC.md §4, one KPI and one undefined rule at a time, with
hand-computed values."""

from __future__ import annotations

import math
from dataclasses import astuple, replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kpistream.kpi.formulas import (
    KPI_FIELDS,
    SUM_FIELDS,
    WindowSums,
    compute_kpis,
    nps_margin_of_error,
)

# --- every KPI, hand-computed ------------------------------------------------------------

FULL = WindowSums(
    orders=4, revenue=200.0, spend=50.0, spend_records=3,
    nps_responses=10, promoters=5, passives=3, detractors=2,
    ces_responses=4, ces_sum=22.0, ces_easy=3,
    csat_responses=8, csat_satisfied=6, csat_tx_responses=5, csat_tx_satisfied=3,
    new_customers=1,
)


@pytest.mark.parametrize(("name", "expected"), [
    ("orders", 4),
    ("revenue", 200.0),
    ("spend", 50.0),
    ("cpo", 12.5),            # 50 / 4
    ("roas", 4.0),            # 200 / 50
    ("aov", 50.0),            # 200 / 4
    ("nps_responses", 10),
    ("promoters", 5),
    ("passives", 3),
    ("detractors", 2),
    ("nps", 30.0),            # 100 * (5 - 2) / 10
    # p=.5, d=.2: .5 + .2 - .3^2 = .61 -> 1.96 * 100 * sqrt(.61 / 10)
    ("nps_moe", 196 * math.sqrt(0.061)),
    ("ces_responses", 4),
    ("ces", 5.5),             # 22 / 4
    ("ces_easy_pct", 75.0),   # 100 * 3 / 4
    ("csat_responses", 8),
    ("csat", 75.0),           # 100 * 6 / 8
    ("csat_transactional_responses", 5),
    ("csat_transactional", 60.0),  # 100 * 3 / 5
    ("new_customers", 1),
    ("cac", 50.0),            # 50 / 1
    ("returning_orders", 3),  # 4 - 1
    ("repeat_order_pct", 75.0),  # 100 * 3 / 4
])
def test_every_kpi_of_a_full_row(name: str, expected: float) -> None:
    kpis = compute_kpis(FULL)
    value = kpis[name]
    assert value is not None
    assert value == pytest.approx(expected, rel=1e-12)


def test_full_row_has_every_kpi_in_publishing_order() -> None:
    assert tuple(compute_kpis(FULL)) == KPI_FIELDS
    assert all(v is not None for v in compute_kpis(FULL).values())


def test_counts_are_ints_and_amounts_floats() -> None:
    kpis = compute_kpis(FULL)
    for name in ("orders", "nps_responses", "promoters", "passives", "detractors",
                 "ces_responses", "csat_responses", "csat_transactional_responses",
                 "new_customers", "returning_orders"):
        assert type(kpis[name]) is int, name
    for name in ("revenue", "spend", "cpo", "roas", "aov", "nps", "nps_moe", "ces",
                 "ces_easy_pct", "csat", "csat_transactional", "cac", "repeat_order_pct"):
        assert type(kpis[name]) is float, name


# --- undefined rules ----------------------------------------------------------------------

NO_NPS = {"nps_responses": 0, "promoters": 0, "passives": 0, "detractors": 0}


@pytest.mark.parametrize(("changes", "absent", "present"), [
    # FULL with one input zeroed: exactly the KPIs divided by it become undefined
    pytest.param({"orders": 0, "revenue": 0.0, "new_customers": 0},
                 {"cpo", "aov", "cac", "repeat_order_pct"},
                 {"orders": 0, "revenue": 0.0, "roas": 0.0, "spend": 50.0,
                  "returning_orders": 0}, id="no-orders"),
    pytest.param({"new_customers": 0}, {"cac"},
                 {"returning_orders": 4, "repeat_order_pct": 100.0}, id="no-new-customers"),
    pytest.param({"new_customers": 4}, set(),
                 {"cac": 12.5, "returning_orders": 0, "repeat_order_pct": 0.0},
                 id="all-new-customers"),
    pytest.param({"spend": 0.0, "spend_records": 0}, {"roas"},
                 {"cpo": 0.0, "aov": 50.0, "spend": 0.0, "cac": 0.0}, id="no-spend"),
    pytest.param({"spend": 0.0}, {"roas"}, {"cpo": 0.0, "spend": 0.0},
                 id="zero-amount-spend-records"),
    pytest.param(NO_NPS, {"nps", "nps_moe"}, NO_NPS, id="no-nps"),
    pytest.param({"ces_responses": 0, "ces_sum": 0.0, "ces_easy": 0}, {"ces", "ces_easy_pct"},
                 {"ces_responses": 0}, id="no-ces"),
    pytest.param({"csat_responses": 0, "csat_satisfied": 0, "csat_tx_responses": 0,
                  "csat_tx_satisfied": 0}, {"csat", "csat_transactional"},
                 {"csat_responses": 0, "csat_transactional_responses": 0}, id="no-csat"),
    pytest.param({"csat_tx_responses": 0, "csat_tx_satisfied": 0}, {"csat_transactional"},
                 {"csat": 75.0}, id="no-post-purchase-csat"),
    pytest.param({"promoters": 0, "passives": 10, "detractors": 0}, set(),
                 {"nps": 0.0, "nps_moe": 0.0}, id="all-passives-defined"),
    pytest.param({"ces_easy": 0, "csat_satisfied": 0}, set(),
                 {"ces_easy_pct": 0.0, "csat": 0.0}, id="zero-shares-defined"),
])
def test_undefined_kpis_are_none(changes: dict[str, float], absent: set[str],
                                 present: dict[str, float]) -> None:
    kpis = compute_kpis(replace(FULL, **changes))
    assert tuple(kpis) == KPI_FIELDS  # undefined is None, the key is still there
    undefined = {name for name, value in kpis.items() if value is None}
    assert undefined == absent
    for name, value in present.items():
        assert kpis[name] == value, name


def test_empty_row_defines_only_counts_and_sums() -> None:
    kpis = compute_kpis(WindowSums())
    undefined = {name for name, value in kpis.items() if value is None}
    assert undefined == {"cpo", "roas", "aov", "nps", "nps_moe", "ces", "ces_easy_pct",
                         "csat", "csat_transactional", "cac", "repeat_order_pct"}
    assert all(kpis[name] == 0 for name in set(KPI_FIELDS) - undefined)


def test_segment_rows_use_their_allocated_spend() -> None:
    kpis = compute_kpis(FULL, allocated_spend=20.0)  # FULL's own spend (50) is ignored
    assert (kpis["spend"], kpis["cpo"], kpis["roas"]) == (20.0, 5.0, 10.0)
    assert kpis["aov"] == 50.0
    assert kpis["cac"] == 20.0  # 20 / 1 new customer
    none = compute_kpis(FULL, allocated_spend=0.0)
    assert (none["spend"], none["cpo"], none["roas"]) == (0.0, 0.0, None)


@pytest.mark.parametrize("dust", [1e-15, -1e-15, 3.5e-14, -2e-13])
def test_revenue_snapped_to_zero_without_orders(dust: float) -> None:
    kpis = compute_kpis(WindowSums(revenue=dust, spend=5.0, spend_records=1))
    assert kpis["revenue"] == 0.0
    assert kpis["roas"] == 0.0  # 0 / 5, not dust / 5
    assert kpis["aov"] is None


# --- NPS ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("promoters", "passives", "detractors", "nps"), [
    (10, 0, 0, 100.0),
    (0, 0, 10, -100.0),
    (0, 10, 0, 0.0),
    (3, 4, 3, 0.0),
    (1, 1, 1, 0.0),
    (2, 1, 1, 25.0),
    (1, 0, 3, -50.0),
])
def test_nps(promoters: int, passives: int, detractors: int, nps: float) -> None:
    n = promoters + passives + detractors
    sums = WindowSums(nps_responses=n, promoters=promoters, passives=passives,
                      detractors=detractors)
    assert compute_kpis(sums)["nps"] == pytest.approx(nps)


@pytest.mark.parametrize(("promoters", "detractors", "n", "moe"), [
    # p=.5, d=.2: .7 - .09 = .61; 196 * sqrt(.61/100) = 196 * .0781025 = 15.30809
    (50, 20, 100, 15.308089),
    # p=.5, d=.5: 1 - 0 = 1; 196 * sqrt(1/4) = 98
    (2, 2, 4, 98.0),
    # p=.5, d=0: .5 - .25 = .25; 196 * sqrt(.25/50) = 196 * .0707107 = 13.85929
    (25, 0, 50, 13.859293),
    # p=.1, d=.3: .4 - .04 = .36; 196 * sqrt(.36/100) = 196 * .06 = 11.76
    (10, 30, 100, 11.76),
    # p=.4, d=0 (rest passives), n=25: .4 - .16 = .24; 196 * sqrt(.24/25) = 19.2040
    (10, 0, 25, 19.204000),
    (1, 0, 1, 0.0),       # all promoters: no variance
    (0, 7, 7, 0.0),       # all detractors
    (0, 0, 9, 0.0),       # all passives
])
def test_nps_margin_of_error(promoters: int, detractors: int, n: int, moe: float) -> None:
    assert nps_margin_of_error(promoters, detractors, n) == pytest.approx(moe, rel=1e-6,
                                                                         abs=1e-12)
    sums = WindowSums(nps_responses=n, promoters=promoters, detractors=detractors,
                      passives=n - promoters - detractors)
    assert compute_kpis(sums)["nps_moe"] == pytest.approx(moe, rel=1e-6, abs=1e-12)


def test_nps_margin_of_error_undefined_without_responses() -> None:
    assert nps_margin_of_error(0, 0, 0) is None


@given(st.integers(0, 500), st.integers(0, 500), st.integers(0, 500))
def test_nps_in_range_and_moe_finite(promoters: int, passives: int, detractors: int) -> None:
    n = promoters + passives + detractors
    sums = WindowSums(nps_responses=n, promoters=promoters, passives=passives,
                      detractors=detractors)
    kpis = compute_kpis(sums)
    if n == 0:
        assert kpis["nps"] is None and kpis["nps_moe"] is None
        return
    nps, moe = kpis["nps"], kpis["nps_moe"]
    assert nps is not None and moe is not None
    assert -100.0 <= nps <= 100.0
    assert math.isfinite(moe) and moe >= 0.0
    # the variance of a {-1, 0, 1} score is at most 1: moe <= 196 / sqrt(n)
    assert moe <= 196 / math.sqrt(n) * (1 + 1e-12)


# --- CES / CSAT -----------------------------------------------------------------------------

@pytest.mark.parametrize(("scores", "ces", "easy_pct"), [
    ([7], 7.0, 100.0),
    ([1], 1.0, 0.0),
    ([4, 5], 4.5, 50.0),
    ([1, 2, 3, 4, 5, 6, 7], 4.0, 300 / 7),
])
def test_ces(scores: list[int], ces: float, easy_pct: float) -> None:
    sums = WindowSums(ces_responses=len(scores), ces_sum=float(sum(scores)),
                      ces_easy=sum(s >= 5 for s in scores))
    kpis = compute_kpis(sums)
    assert kpis["ces"] == pytest.approx(ces)
    assert kpis["ces_easy_pct"] == pytest.approx(easy_pct)


@pytest.mark.parametrize(("scores", "csat"), [
    ([5], 100.0),
    ([3], 0.0),
    ([1, 2, 3, 4, 5], 40.0),
    ([4, 4, 2], 200 / 3),
])
def test_csat(scores: list[int], csat: float) -> None:
    sums = WindowSums(csat_responses=len(scores), csat_satisfied=sum(s >= 4 for s in scores))
    assert compute_kpis(sums)["csat"] == pytest.approx(csat)


# --- aov / cpo == roas ------------------------------------------------------------------------

amounts = st.floats(min_value=0.01, max_value=1e7, allow_nan=False, allow_infinity=False)


@given(orders=st.integers(1, 100_000), revenue=amounts, spend=amounts)
def test_aov_over_cpo_equals_roas(orders: int, revenue: float, spend: float) -> None:
    kpis = compute_kpis(WindowSums(orders=orders, revenue=revenue, spend=spend,
                                   spend_records=1))
    aov, cpo, roas = kpis["aov"], kpis["cpo"], kpis["roas"]
    assert aov is not None and cpo is not None and roas is not None
    assert math.isclose(aov / cpo, roas, rel_tol=1e-9)


# Realistic sums: 0 or at least a hundredth of a cent. (A subnormal spend such as 1e-309
# would overflow roas to inf; ingest amounts are money, far above that.)
money = st.one_of(st.just(0.0), st.floats(min_value=1e-4, max_value=1e9))


@given(orders=st.integers(0, 1000), revenue=money, spend=money,
       allocated=st.one_of(st.none(), money))
def test_no_kpi_is_nan_or_inf(orders: int, revenue: float, spend: float,
                              allocated: float | None) -> None:
    kpis = compute_kpis(WindowSums(orders=orders, revenue=revenue, spend=spend,
                                   spend_records=int(spend > 0)), allocated_spend=allocated)
    for name, value in kpis.items():
        assert value is None or math.isfinite(value), name


# --- WindowSums ---------------------------------------------------------------------------

def test_from_tuple_roundtrip_and_types() -> None:
    values = (3.0, 12.5, 7.25, 2.0, 4.0, 2.0, 1.0, 1.0, 2.0, 9.0, 1.0, 5.0, 4.0, 2.0, 1.0, 1.0,
              -1.0)
    sums = WindowSums.from_tuple(values)
    assert astuple(sums) == values
    assert SUM_FIELDS == (
        "orders", "revenue", "spend", "spend_records", "nps_responses", "promoters",
        "passives", "detractors", "ces_responses", "ces_sum", "ces_easy",
        "csat_responses", "csat_satisfied", "csat_tx_responses", "csat_tx_satisfied",
        "new_customers", "cancel_shift")
    for name in SUM_FIELDS:
        expected_type = float if name in {"revenue", "spend", "ces_sum"} else int
        assert type(getattr(sums, name)) is expected_type, name
    assert WindowSums.from_tuple(list(astuple(sums))) == sums


def test_from_tuple_rounds_float_counts() -> None:
    # counts accumulated as floats (e.g. +1 then -1 then +1) come back as exact ints
    sums = WindowSums.from_tuple((0.9999999999, 10.0, 0.0, 1.0000000001,
                                  *[0] * (len(SUM_FIELDS) - 4)))
    assert sums.orders == 1 and sums.spend_records == 1
    assert type(sums.orders) is int


def test_from_tuple_rejects_wrong_length() -> None:
    with pytest.raises(ValueError):
        WindowSums.from_tuple((1.0, 2.0))


@pytest.mark.parametrize(("sums", "empty"), [
    (WindowSums(), True),
    (WindowSums(revenue=1e-15), True),  # retraction dust is not an event
    (WindowSums(orders=1, revenue=5.0), False),
    (WindowSums(spend_records=1), False),  # a zero-amount spend record still counts
    (WindowSums(nps_responses=1, passives=1), False),
    (WindowSums(ces_responses=1, ces_sum=3.0), False),
    (WindowSums(csat_responses=1), False),
])
def test_is_empty(sums: WindowSums, empty: bool) -> None:
    assert sums.is_empty() is empty

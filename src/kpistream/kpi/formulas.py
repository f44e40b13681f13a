"""Pure KPI math: additive window sums -> the KPIs of SPEC.md §4.

Ratios are computed from the window's sums (never by averaging ratios) and are ``None`` when
their denominator is zero, so sinks can leave them out instead of writing 0, NaN or inf.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from kpistream.kpi.catalogue import KPI_FIELDS

# Field order of the additive accumulator; the engine stores sums as tuples in this order.
SUM_FIELDS: tuple[str, ...] = (
    "orders", "revenue", "spend", "spend_records",
    "nps_responses", "promoters", "passives", "detractors",
    "ces_responses", "ces_sum", "ces_easy",
    "csat_responses", "csat_satisfied",
    "csat_tx_responses", "csat_tx_satisfied",
    "new_customers",  # first counted orders of customers, from the customer stage
    # Orders of the bucket retracted by a cancellation in a later bucket, less cancellations
    # in the bucket of an earlier bucket's order: ``orders + cancel_shift`` counts each
    # cancellation in the bucket of its own ts, an event-time sum complete once the low
    # watermark passes the bucket. The alert detector reads it (SPEC §6: the same episodes
    # whatever the arrival), never a KPI: a minute judged live cannot know a later
    # cancellation, and a backlog read ahead would.
    "cancel_shift",
)
INTEGER_SUMS = frozenset(SUM_FIELDS) - {"revenue", "spend", "ces_sum"}
__all__ = ["KPI_FIELDS", "SUM_FIELDS", "WindowSums", "compute_kpis"]

NPS_PROMOTER_MIN = 9
NPS_PASSIVE_MIN = 7
CES_EASY_MIN = 5
CSAT_SATISFIED_MIN = 4
Z_95 = 1.96


@dataclass(frozen=True, slots=True)
class WindowSums:
    """Additive sums of one row over one window. ``spend_records`` and the response counts
    tell an empty window (delete the row) from one whose amounts happen to be zero."""

    orders: int = 0
    revenue: float = 0.0
    spend: float = 0.0
    spend_records: int = 0
    nps_responses: int = 0
    promoters: int = 0
    passives: int = 0
    detractors: int = 0
    ces_responses: int = 0
    ces_sum: float = 0.0
    ces_easy: int = 0
    csat_responses: int = 0
    csat_satisfied: int = 0
    csat_tx_responses: int = 0
    csat_tx_satisfied: int = 0
    new_customers: int = 0
    cancel_shift: int = 0

    @classmethod
    def from_tuple(cls, values: tuple[float, ...] | list[float]) -> WindowSums:
        converted: list[Any] = [
            round(v) if name in INTEGER_SUMS else float(v)
            for name, v in zip(SUM_FIELDS, values, strict=True)
        ]
        return cls(*converted)

    def is_empty(self) -> bool:
        """No event is counted: placed-then-cancelled orders leave nothing behind."""
        return not (self.orders or self.spend_records or self.nps_responses
                    or self.ces_responses or self.csat_responses)


assert tuple(f.name for f in fields(WindowSums)) == SUM_FIELDS


def _ratio(numerator: float, denominator: float) -> float | None:
    """None when undefined; also when a denormal denominator would overflow to inf."""
    if not denominator:
        return None
    value = numerator / denominator
    return value if math.isfinite(value) else None


def nps_margin_of_error(promoters: int, detractors: int, responses: int) -> float | None:
    """95% margin of error of NPS, in NPS points: 1.96*100*sqrt((p+d-(p-d)^2)/n)."""
    if responses <= 0:
        return None
    p, d = promoters / responses, detractors / responses
    variance = max(0.0, p + d - (p - d) ** 2)  # clamp rounding below zero
    return Z_95 * 100 * math.sqrt(variance / responses)


def compute_kpis(sums: WindowSums, *, allocated_spend: float | None = None
                 ) -> dict[str, float | int | None]:
    """All KPIs of one row, in catalogue order. Segment rows pass their allocated spend
    (ad spend has no segment, SPEC §4); other rows use the window's own."""
    spend = sums.spend if allocated_spend is None else allocated_spend
    revenue = sums.revenue if sums.orders else 0.0  # retracted amounts may leave 1e-15 dust
    kpis: dict[str, float | int | None] = {
        "orders": sums.orders,
        "revenue": revenue,
        "aov": _ratio(revenue, sums.orders),
        "nps_responses": sums.nps_responses,
        "promoters": sums.promoters,
        "passives": sums.passives,
        "detractors": sums.detractors,
        "nps": _ratio(100 * (sums.promoters - sums.detractors), sums.nps_responses),
        "nps_moe": nps_margin_of_error(sums.promoters, sums.detractors, sums.nps_responses),
        "ces_responses": sums.ces_responses,
        "ces": _ratio(sums.ces_sum, sums.ces_responses),
        "ces_easy_pct": _ratio(100 * sums.ces_easy, sums.ces_responses),
        "csat_responses": sums.csat_responses,
        "csat": _ratio(100 * sums.csat_satisfied, sums.csat_responses),
        "csat_transactional_responses": sums.csat_tx_responses,
        "csat_transactional": _ratio(100 * sums.csat_tx_satisfied, sums.csat_tx_responses),
        "spend": spend,
        "cpo": _ratio(spend, sums.orders),
        "roas": _ratio(revenue, spend),
        "new_customers": sums.new_customers,
        "cac": _ratio(spend, sums.new_customers),
        # The first orders come from the customer stage, the orders from the aggregate: while
        # one is ahead of the other the difference may dip below zero for a moment.
        "returning_orders": max(0, sums.orders - sums.new_customers),
        "repeat_order_pct": _ratio(100 * max(0, sums.orders - sums.new_customers),
                                   sums.orders),
    }
    return {name: kpis[name] for name in KPI_FIELDS}

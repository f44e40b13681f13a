"""The catalogue of KPI row fields: one entry per KPI, everything else derived from it.

Adding a KPI means: an entry here, its additive sums (``formulas.SUM_FIELDS`` and
``buckets.contribution``), its formula in ``formulas.compute_kpis``, its definition in the
reference oracle, and its property in ``schemas/kpi_update.json``. The Prometheus gauges,
``kpistream top`` columns and ``KPI_FIELDS`` are derived from this list;
``tests/unit/test_catalogue.py`` fails when the formulas, the client's row fields, the
schema or the docs table miss an entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

KpiType = Literal["count", "amount", "ratio"]


@dataclass(frozen=True, slots=True)
class Kpi:
    name: str
    type: KpiType
    definition: str
    undefined: str | None = None  # when the KPI is absent from a row; None: always defined
    gauge: bool = False  # exported as kpistream_<name> (SPEC §5)
    column: str | None = None  # header in `kpistream top`, None: not shown


KPIS: tuple[Kpi, ...] = (
    Kpi("orders", "count", "placed orders in the window, minus those cancelled",
        gauge=True, column="orders"),
    Kpi("revenue", "amount", "sum of those orders' amounts, reporting currency",
        gauge=True, column="revenue"),
    Kpi("spend", "amount", "ad spend in the window; on segment rows allocated by each "
        "campaign's orders (spend_allocated)", gauge=True, column="spend"),
    Kpi("cpo", "ratio", "cost per order: spend / orders", "orders = 0", gauge=True,
        column="cpo"),
    Kpi("roas", "ratio", "return on ad spend: revenue / spend (= aov / cpo)", "spend = 0",
        gauge=True, column="roas"),
    Kpi("aov", "ratio", "average order value: revenue / orders", "orders = 0", gauge=True),
    Kpi("nps_responses", "count", "NPS responses in the window", gauge=True),
    Kpi("promoters", "count", "NPS responses scoring 9-10"),
    Kpi("passives", "count", "NPS responses scoring 7-8"),
    Kpi("detractors", "count", "NPS responses scoring 0-6"),
    Kpi("nps", "ratio", "net promoter score: 100 * (promoters - detractors) / nps_responses",
        "no NPS responses", gauge=True, column="nps"),
    Kpi("nps_moe", "ratio", "95% margin of error of NPS, in NPS points", "no NPS responses",
        gauge=True, column="±"),
    Kpi("ces_responses", "count", "CES responses in the window", gauge=True),
    Kpi("ces", "ratio", "mean customer effort score, 1..7", "no CES responses", gauge=True,
        column="ces"),
    Kpi("ces_easy_pct", "ratio", "share of CES responses scoring 5-7, percent",
        "no CES responses", gauge=True),
    Kpi("csat_responses", "count", "CSAT responses in the window", gauge=True),
    Kpi("csat", "ratio", "share of CSAT responses scoring 4-5, percent", "no CSAT responses",
        gauge=True, column="csat"),
    Kpi("csat_transactional_responses", "count",
        "CSAT responses carrying an order_id (post-purchase)"),
    Kpi("csat_transactional", "ratio",
        "share of post-purchase CSAT responses scoring 4-5, percent",
        "no post-purchase CSAT responses", gauge=True, column="csat tx"),
    Kpi("new_customers", "count", "customers whose first counted order falls in the window "
        "and in this row", gauge=True, column="new"),
    Kpi("cac", "ratio", "customer acquisition cost: spend / new_customers",
        "new_customers = 0", gauge=True, column="cac"),
    Kpi("returning_orders", "count",
        "counted orders in the window that are not their customer's first"),
    Kpi("repeat_order_pct", "ratio", "100 * returning_orders / orders", "orders = 0",
        gauge=True, column="repeat%"),
)

KPI_FIELDS: tuple[str, ...] = tuple(kpi.name for kpi in KPIS)
BY_NAME: dict[str, Kpi] = {kpi.name: kpi for kpi in KPIS}
GAUGES: tuple[Kpi, ...] = tuple(kpi for kpi in KPIS if kpi.gauge)
COLUMNS: tuple[Kpi, ...] = tuple(kpi for kpi in KPIS if kpi.column)
# Row fields that are not KPIs: identity and bounds (SPEC §5) and the allocation flag (§4).
ROW_FIELDS: tuple[str, ...] = ("window", "dimension", "group", "window_start", "window_end",
                               "updated_at", "currency")
SPEND_ALLOCATED = "spend_allocated"


def gauge_help(kpi: Kpi) -> str:
    definition = kpi.definition[0].upper() + kpi.definition[1:]
    return f"{definition}." if kpi.undefined is None else \
        f"{definition}; no sample when {kpi.undefined}."

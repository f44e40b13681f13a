"""One catalogue of KPI fields; every other list of KPIs is derived from it or checked here,
so adding a KPI cannot silently miss a sink, the client, the schema, the docs or `top`."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path

from rich.console import Console

from kpistream.client import KpiRow
from kpistream.kpi.catalogue import COLUMNS, GAUGES, KPI_FIELDS, KPIS, ROW_FIELDS
from kpistream.kpi.formulas import WindowSums, compute_kpis
from kpistream.kpi.rows import build_message, hash_fields
from kpistream.sinks.prometheus import ROWS_DROPPED, KpiCollector
from kpistream.top import HEADING, fitting_columns, render

ROOT = Path(__file__).resolve().parents[2]
SPEC_GAUGES = {  # SPEC.md §5, the gauges kpistream exports today
    "orders", "revenue", "spend", "cpo", "roas", "aov", "nps", "nps_moe", "nps_responses",
    "ces", "ces_easy_pct", "ces_responses", "csat", "csat_responses", "csat_transactional",
    "new_customers", "cac", "repeat_order_pct"}


def test_names_are_unique_and_formulas_cover_the_catalogue() -> None:
    assert len(set(KPI_FIELDS)) == len(KPIS)
    assert tuple(compute_kpis(WindowSums())) == KPI_FIELDS


def test_gauges_are_the_specs() -> None:
    assert {kpi.name for kpi in GAUGES} == SPEC_GAUGES


def test_prometheus_collector_exports_every_gauge() -> None:
    message = build_message("1h", "all", "all", 0, 3_600_000,
                            WindowSums(orders=2, revenue=10.0, spend=4.0, spend_records=1,
                                       nps_responses=1, promoters=1, ces_responses=1,
                                       ces_sum=5.0, ces_easy=1, csat_responses=1,
                                       csat_satisfied=1, csat_tx_responses=1,
                                       csat_tx_satisfied=1, new_customers=1), 1, "EUR")
    collector = KpiCollector(lambda: [message], 10)
    names = {family.name for family in collector.collect() if family.samples}
    assert names == {f"kpistream_{kpi.name}" for kpi in GAUGES} | {ROWS_DROPPED}


def test_prometheus_collector_exports_nothing_while_partitions_change_hands() -> None:
    message = build_message("1h", "all", "all", 0, 3_600_000, WindowSums(orders=2), 1, "EUR")
    handing_over = [True]
    collector = KpiCollector(lambda: [message], 10, handing_over=lambda: handing_over[0])
    assert [f.samples for f in collector.collect() if f.name != ROWS_DROPPED] == [
        []] * len(GAUGES)
    handing_over[0] = False
    orders = {f.name: f.samples for f in collector.collect()}["kpistream_orders"]
    assert [(s.labels, s.value) for s in orders] == [
        ({"window": "1h", "dimension": "all", "group": "all"}, 2.0)]


def test_client_rows_hold_every_field() -> None:
    names = {f.name for f in fields(KpiRow)}
    assert set(KPI_FIELDS) | set(ROW_FIELDS) | {"spend_allocated"} <= names
    message = build_message("1h", "segment", "vip", 0, 3_600_000,
                            WindowSums(orders=4, revenue=40.0, csat_responses=1,
                                       csat_tx_responses=1, csat_tx_satisfied=1), 1, "EUR",
                            allocated_spend=8.0)
    row = KpiRow.from_hash(hash_fields(message))
    assert row.spend_allocated and (row.spend, row.cpo) == (8.0, 2.0)
    assert row.csat_transactional_responses == 1 and row.csat_transactional == 100.0
    assert row == replace(KpiRow.from_message(message), extra={})


def test_schema_and_docs_name_every_kpi() -> None:
    schema = json.loads((ROOT / "src/kpistream/schemas/kpi_update.json").read_text())
    contract = (ROOT / "docs/contract.md").read_text()
    for name in KPI_FIELDS:
        assert name in schema["properties"], name
        assert f"`{name}`" in contract, name


def test_top_fits_an_80_column_terminal() -> None:
    rows = [{"window": "1h", "dimension": dimension, "group": group, "orders": "12345",
             "revenue": "1234567.891", "spend": "98765.4", "cpo": "8.004", "roas": "12.5",
             "nps": "-33.333", "nps_moe": "4.2", "ces": "5.5", "csat": "87.5",
             "csat_transactional": "90"}
            for dimension, group in (("all", "all"), ("campaign", "cmp-0001"),
                                     ("segment", "returning-high-value-customers"))]
    console = Console(width=80, record=True, color_system=None)
    console.print(render(rows, [], 50, 80))
    text = console.export_text()
    assert all(len(line) <= 80 for line in text.splitlines())
    shown = fitting_columns(80, 28)
    assert len(shown) >= 5  # orders, revenue, spend, cpo, roas at least
    for kpi in shown:
        assert (kpi.column or kpi.name) in text
    for value in ("12.3k", "1.23M", "98.8k", "8.00", "12.50"):
        assert value in text
    assert "campaign cmp-0001" in text
    assert HEADING in text
    assert {kpi.name for kpi in COLUMNS} <= set(KPI_FIELDS)


def test_rows_dropped_by_the_cap_are_counted_in_the_same_scrape() -> None:
    """SPEC §5: rows beyond ``prometheus_max_groups`` per dimension are counted in
    kpistream_prometheus_rows_dropped, from the rows of the scrape that left them out (a
    gauge set while collecting showed the previous scrape's count)."""
    rows = [[build_message(w, "channel", f"ch{i}", 0, 3_600_000, WindowSums(orders=1), 1,
                           "EUR") for i in range(4) for w in ("5m", "1h")]]
    collector = KpiCollector(lambda: rows[0], 2)

    def scrape() -> tuple[set[str], dict[str, float]]:
        families = {f.name: f.samples for f in collector.collect()}
        exported = {s.labels["group"] for s in families["kpistream_orders"]}
        return exported, {s.labels["dimension"]: s.value for s in families[ROWS_DROPPED]}

    exported, dropped = scrape()
    assert exported == {"ch0", "ch1"}
    assert dropped == {"all": 0, "channel": 4, "campaign": 0, "segment": 0}
    rows[0] = []
    assert scrape() == (set(), {"all": 0, "channel": 0, "campaign": 0, "segment": 0})

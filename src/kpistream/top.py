"""``kpistream top``: a live terminal view of the KPI rows in Redis and the active alerts.

Reads only Redis (the hashes' own fields, never key parsing), so it works beside any number
of workers and shows exactly what other services see.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import redis
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from kpistream.connections import redis_sync_client
from kpistream.kpi.catalogue import COLUMNS, Kpi
from kpistream.settings import Settings
from kpistream.state.buckets import DIMENSIONS

HEADING = "kpistream — live KPI rows"
DIMENSION_ORDER = {dimension: i for i, dimension in enumerate(DIMENSIONS)}
LABEL_MIN, LABEL_MAX = 12, 28  # width of the row label column
CELL = 8  # width of a KPI column: "123.4k", "-12.34", "99.99"


def read_rows(client: redis.Redis, prefix: str, window: str | None,
              dimension: str | None) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    dimensions = [dimension] if dimension else list(DIMENSION_ORDER)
    for dim in dimensions:
        groups = sorted(str(g) for g in client.smembers(f"{prefix}:index:{dim}"))
        windows = [window] if window else None
        keys = [f"{prefix}:{w}:{dim}:{g}" for g in groups for w in (windows or _windows())]
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        rows.extend(row for row in pipe.execute() if row)
    return rows


def _windows() -> Iterable[str]:
    return [spec.name for spec in Settings().window_specs]


def read_alerts(client: redis.Redis, prefix: str) -> list[dict[str, str]]:
    keys = list(client.scan_iter(match=f"{prefix}:alert:*", count=500))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    return [row for row in pipe.execute() if row]


def _fmt(value: str | None) -> str:
    """At most 7 characters: 12, 4,321, 12.3k, 4.56M, 12.35, -3.21."""
    if value is None:
        return "—"
    number = float(value)
    size = abs(number)
    if size >= 1e6:
        return f"{number / 1e6:.2f}M"
    if size >= 1e4:
        return f"{number / 1e3:.1f}k"
    if number.is_integer():
        return f"{number:,.0f}"
    return f"{number:.1f}" if size >= 1000 else f"{number:.2f}"


def fitting_columns(width: int, label: int) -> tuple[Kpi, ...]:
    """The catalogue's columns that fit beside the row label, in catalogue order."""
    room = max(0, width - label - 1)
    return COLUMNS[:max(1, room // (CELL + 1))]


def render(rows: list[dict[str, str]], alerts: list[dict[str, str]], limit: int,
           width: int = 80) -> Any:
    """One table per window, a row label ("campaign cmp-001") and as many KPI columns as
    the terminal width holds, so an 80-column terminal shows whole numbers, not slivers."""
    rows = sorted(rows, key=lambda r: (r["window"], DIMENSION_ORDER.get(r["dimension"], 9),
                                       r["group"]))[:limit]
    labels = {id(row): f"{row['dimension']} {row['group']}" for row in rows}
    label = min(LABEL_MAX, max([LABEL_MIN, *(len(text) for text in labels.values())]))
    columns = fitting_columns(width, label)
    tables: list[Any] = []
    for window in sorted({row["window"] for row in rows}):
        table = Table(title=f"window {window}", box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0),
                      collapse_padding=True, title_justify="left")
        table.add_column("row", width=label, no_wrap=True, overflow="ellipsis")
        for kpi in columns:
            table.add_column(kpi.column or kpi.name, justify="right", width=CELL,
                             no_wrap=True)
        for row in rows:
            if row["window"] == window:
                table.add_row(labels[id(row)], *(_fmt(row.get(kpi.name)) for kpi in columns))
        tables.append(table)
    alert_table = Table(expand=True)
    for name in ("kind", "dimension", "group", "statistic", "baseline_cpo", "cpo", "started"):
        alert_table.add_column(name)
    for alert in alerts:
        alert_table.add_row(alert.get("kind", ""), alert.get("dimension", ""),
                            alert.get("group", ""), _fmt(alert.get("statistic")),
                            _fmt(alert.get("baseline_cpo")), _fmt(alert.get("cpo")),
                            time.strftime("%H:%M:%S", time.gmtime(
                                int(alert.get("started_at", "0")) / 1000)))
    title = f"active alerts ({len(alerts)})" if alerts else "no active alerts"
    footer = f"{len(rows)} rows (limit {limit})"
    heading = Text(HEADING, style="bold")
    return Group(heading, *tables, Panel(alert_table, title=title), footer)


def run_top(settings: Settings, window: str | None, dimension: str | None, limit: int,
            interval: float, once: bool) -> int:
    client = redis_sync_client(settings)
    prefix = settings.redis_prefix

    console = Console()

    def snapshot() -> Any:
        return render(read_rows(client, prefix, window, dimension), read_alerts(client, prefix),
                      limit, console.width)

    if once:
        console.print(snapshot())
        return 0
    with Live(snapshot(), refresh_per_second=2, screen=False, console=console) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(snapshot())
        except KeyboardInterrupt:
            pass
    return 0

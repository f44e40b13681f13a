"""``kpistream top``: a live terminal view of the KPI rows in Redis and the active alerts.

Reads only Redis (the hashes' own fields, never key parsing), so it works beside any number
of workers and shows exactly what other services see.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import redis
from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from kpistream.connections import redis_sync_client
from kpistream.settings import Settings

COLUMNS = ("orders", "revenue", "spend", "cpo", "roas", "aov", "nps", "nps_moe", "ces",
           "csat")
DIMENSION_ORDER = {"all": 0, "channel": 1, "campaign": 2, "segment": 3}


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
    if value is None:
        return "—"
    number = float(value)
    return f"{number:,.0f}" if number.is_integer() else f"{number:,.2f}"


def render(rows: list[dict[str, str]], alerts: list[dict[str, str]], limit: int) -> Any:
    table = Table(title="kpistream — live KPI rows", expand=True)
    for name in ("window", "dimension", "group", *COLUMNS):
        table.add_column(name, justify="left" if name in ("window", "dimension", "group")
                         else "right")
    rows = sorted(rows, key=lambda r: (r["window"], DIMENSION_ORDER.get(r["dimension"], 9),
                                       r["group"]))
    for row in rows[:limit]:
        table.add_row(row["window"], row["dimension"], row["group"],
                      *(_fmt(row.get(c)) for c in COLUMNS))
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
    footer = f"{len(rows)} rows" + (f", showing {limit}" if len(rows) > limit else "")
    return Group(table, Panel(alert_table, title=title), footer)


def run_top(settings: Settings, window: str | None, dimension: str | None, limit: int,
            interval: float, once: bool) -> int:
    client = redis_sync_client(settings)
    prefix = settings.redis_prefix

    def snapshot() -> Any:
        return render(read_rows(client, prefix, window, dimension), read_alerts(client, prefix),
                      limit)

    if once:
        from rich.console import Console

        Console(width=160).print(snapshot())
        return 0
    with Live(snapshot(), refresh_per_second=2, screen=False) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(snapshot())
        except KeyboardInterrupt:
            pass
    return 0

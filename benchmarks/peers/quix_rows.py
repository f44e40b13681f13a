"""The Quix Streams peer of make bench: kpistream's order rows written as Quix's docs teach.

A Quix Streams 3.x application (pinned in ``benchmarks/peers/requirements.txt``), written the
way the Quix Streams documentation has a user write windowed aggregations:

- https://quix.io/docs/quix-streams/windowing.html (``timestamp_extractor`` on
  ``app.topic()``, ``hopping_window(duration_ms, step_ms, grace_ms, on_late)``,
  ``.agg(x=Sum("x"))``, ``.current()``),
- https://quix.io/docs/quix-streams/groupby.html (``.group_by()`` by a custom key, one per
  StreamingDataFrame: "create separate pipelines" for more),
- https://quix.io/docs/quix-streams/processing.html (``.apply(expand=True)``, ``.update()``),
- https://quix.io/docs/quix-streams/concatenating.html and .../branching.html.

What it computes (SPEC §1, §3, §4, on the records of ``kpistream.generator.traffic``): for the
rows ``all``, ``channel``, ``campaign`` (``campaign_id``, null -> ``unattributed``) and
``segment``, in event time (the ``ts`` of each record, RFC 3339 or epoch ms), the placed
orders' ``revenue`` (amounts converted to EUR with kpistream's default rate table, passed in
``QUIX_RATES``), ``orders`` (their count) and ``spend`` (ad-spend amounts; ad spend has no
segment, so no segment row). Every order is expanded into one record per row (key
``dimension|group``), ad spend likewise, the two streams are concatenated and regrouped once
by row key, and each window emits the updated rows for every record (``.current()``: rows are
live, as kpistream's are). The windows are ``QUIX_WINDOWS``: ``SIZE`` is a tumbling window,
``SIZE/STEP`` a hopping one. The default, ``1m,15m``, is tumbling windows of kpistream's
1h/1m and 24h/15m STEPs: the buckets the rolling rows are summed from, not the rolling rows
themselves. ``QUIX_WINDOWS=5m/10s,1h/1m,24h/15m`` computes SPEC's rolling rows as hopping
windows, the faithful program, but every row record then updates 30 + 60 + 96 windows: 87
events/s on the bench machine (10,000 records, 50 campaigns; the default did 1,800-2,100 on
50,000), too slow for make bench.
Records are late (dropped by the window, counted, not logged) more than 24h5m behind their
row's latest event time: SPEC's largest window plus grace; a smaller ``grace_ms`` drops the
records of the partitions consumed later when a backlog is replayed.

What it leaves out, so it does less work than kpistream: cancellations are dropped instead of
retracting the placed order (that needs state keyed by ``order_id``, i.e. a second
``group_by``, which Quix allows only once per StreamingDataFrame); no de-duplication; no
validation, dead-letter topic, late/future rules or segment spend allocation; survey
responses are read and counted but not aggregated (no NPS/CES/CSAT); no customer KPIs; rows
are not published anywhere (kpistream writes Redis, Prometheus and Kafka).

Usage (run by ``benchmarks/peers/runner.py``, like ``benchmarks/bare_faust.py``):
QUIX_TOPICS=orders,ad-spend,surveys (in that order) QUIX_EXPECTED=N QUIX_BOOTSTRAP=host:port
QUIX_GROUP=consumer-group QUIX_STATE_DIR=dir QUIX_RATES='{"EUR": 1.0, ...}'
[QUIX_WINDOWS=1m,15m] python benchmarks/peers/quix_rows.py -> prints "rate <events/s> rss
<peak MB> ..." and a check line per window, then exits. Events/s are counted from the first
input record processed to the last row record reaching the windows.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timedelta
from typing import Any

from quixstreams import Application
from quixstreams.dataframe.windows import (
    HoppingTimeWindowDefinition,
    Sum,
    TumblingTimeWindowDefinition,
)

orders_name, spend_name, surveys_name = os.environ["QUIX_TOPICS"].split(",")
EXPECTED = int(os.environ["QUIX_EXPECTED"])
RATES: dict[str, float] = json.loads(os.environ["QUIX_RATES"])
UNITS = {"s": "seconds", "m": "minutes", "h": "hours"}
WINDOWS = {spec: [timedelta(**{UNITS[part[-1]]: int(part[:-1])}) for part in spec.split("/")]
           for spec in os.environ.get("QUIX_WINDOWS", "1m,15m").split(",")}
GRACE = timedelta(hours=24, minutes=5)


def event_time(value: Any, headers: Any, timestamp: float, timestamp_type: Any) -> int:
    """Windows use the record's ``ts`` (RFC 3339 or epoch ms), not the Kafka timestamp."""
    ts = value.get("ts") if isinstance(value, dict) else None
    if isinstance(ts, int):
        return ts
    if isinstance(ts, str):
        return int(datetime.fromisoformat(ts).timestamp() * 1000)
    return int(timestamp)


app = Application(
    broker_address=os.environ["QUIX_BOOTSTRAP"],
    consumer_group=os.environ["QUIX_GROUP"],
    auto_offset_reset="earliest",
    state_dir=os.environ["QUIX_STATE_DIR"],
    loglevel="WARNING",
)
orders_topic = app.topic(orders_name, value_deserializer="json", timestamp_extractor=event_time)
spend_topic = app.topic(spend_name, value_deserializer="json", timestamp_extractor=event_time)
surveys_topic = app.topic(surveys_name, value_deserializer="json")


# --- bench instrumentation: progress counters and the output check ----------------------
class Progress:
    def __init__(self) -> None:
        self.inputs = self.rows_out = self.rows_in = self.updates = self.late = 0
        self.first = self.last = 0.0
        self.all_rows: dict[tuple[str, int, int], dict[str, Any]] = {}

    def input(self, rows: int) -> None:
        if not self.inputs:
            self.first = time.perf_counter()
        self.inputs += 1
        self.rows_out += rows
        self.check()

    def row(self, _: Any) -> None:
        self.rows_in += 1
        self.check()

    def check(self) -> None:
        if not self.last and self.inputs >= EXPECTED and self.rows_in >= self.rows_out:
            self.last = time.perf_counter()
            app.stop()


progress = Progress()


def keep(name: str) -> Any:
    def output(row: dict[str, Any], key: Any, timestamp: int, headers: Any) -> None:
        progress.updates += 1
        if key == "all|all":  # kept for the check; the other rows would only cost memory
            progress.all_rows[(name, row["start"], row["end"])] = row
    return output


def on_late(value: Any, key: Any, timestamp_ms: int, late_by_ms: int, start: int, end: int,
            store_name: str, topic: str, partition: int, offset: int) -> bool:
    progress.late += 1
    return False  # counted here instead of logged


# --- the application ------------------------------------------------------------------
def order_rows(order: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per row the order counts in; cancellations are left out (see above)."""
    rows: list[dict[str, Any]] = []
    if order.get("status", "placed") == "placed":
        revenue = float(order["amount"]) * RATES[order["currency"]]
        rows = [{"row": row, "revenue": revenue, "orders": 1, "spend": 0.0} for row in (
            "all|all", f"channel|{order.get('channel') or 'unknown'}",
            f"campaign|{order.get('campaign_id') or 'unattributed'}",
            f"segment|{order.get('segment') or 'unknown'}")]
    progress.input(len(rows))
    return rows


def spend_rows(spend: dict[str, Any]) -> list[dict[str, Any]]:
    amount = float(spend["amount"]) * RATES[spend["currency"]]
    rows = [{"row": row, "revenue": 0.0, "orders": 0, "spend": amount} for row in (
        "all|all", f"channel|{spend['channel']}", f"campaign|{spend['campaign_id']}")]
    progress.input(len(rows))
    return rows


orders = app.dataframe(orders_topic).apply(order_rows, expand=True)
spend = app.dataframe(spend_topic).apply(spend_rows, expand=True)
app.dataframe(surveys_topic).update(lambda _: progress.input(0))

rows = orders.concat(spend).group_by("row")
rows = rows.update(progress.row)
for name, (size, *step) in WINDOWS.items():
    window: HoppingTimeWindowDefinition | TumblingTimeWindowDefinition
    if step:
        window = rows.hopping_window(duration_ms=size, step_ms=step[0], grace_ms=GRACE,
                                     on_late=on_late)
    else:
        window = rows.tumbling_window(duration_ms=size, grace_ms=GRACE, on_late=on_late)
    sums = window.agg(revenue=Sum("revenue"), orders=Sum("orders"), spend=Sum("spend"))
    sums.current().update(keep(name), metadata=True)


def rss_mb() -> float:
    """Peak RSS of this process (VmHWM), as engine_bench's ``peak_rss_mb`` reads it."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


if __name__ == "__main__":
    app.run()
    if not progress.last:
        raise SystemExit(f"stopped after {progress.inputs} of {EXPECTED} records")
    rate = progress.inputs / max(1e-9, progress.last - progress.first)
    print(f"rate {rate:.0f} rss {rss_mb():.1f} inputs {progress.inputs} rows "
          f"{progress.rows_in} updates {progress.updates} late {progress.late}", flush=True)
    for name in WINDOWS:  # the check: the "all" row of each window with the most orders
        rows_of = [(key, row) for key, row in progress.all_rows.items() if key[0] == name]
        if rows_of:
            _, row = max(rows_of, key=lambda item: (item[1]["orders"], -item[0][1]))
            print(f"check {name} all [{row['start']}, {row['end']}) orders {row['orders']} "
                  f"revenue {row['revenue']:.2f} spend {row['spend']:.2f}", flush=True)

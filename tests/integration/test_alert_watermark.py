"""Issue 13 acceptance: alerts judged behind the low watermark do not depend on arrival speed.

A 30-hour stream in which one campaign stops converting at hour 27, produced (a) all at once
as a backlog before the workers start, (b) all at once to running workers that have read
their empty topics to the end, and (c) paced with the workers running, with 1 and 3 workers:
the episodes in ``kpi-alerts`` are exactly those of the reference detector run on the exact
per-minute sums of the accepted events (``kpistream.reference.expected_alerts``).

With cancellations up to the whole stream back: the detector counts each in the minute of its
own ts (docs/alerting.md), so a backlog that reads them hours ahead of the minutes they
retract from judges those minutes as a paced run does."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from harness import Deployment, normalise
from test_alerts import read_topic

from kpistream import reference
from kpistream.alerts.detector import DetectorParams
from kpistream.generator.traffic import HOUR_MS, Anomaly, TrafficConfig, TrafficGenerator

pytestmark = pytest.mark.integration
STOPPED = "cmp-003"
SETTLE_S = 150.0
RUNNING_IDLE_S = 20.0  # three workers joining: rebalances of both groups done


def edges_of(alerts: list[dict]) -> set[tuple[str, str, str, str, int]]:
    return {(a["state"], a["kind"], a["dimension"], a["group"], a["started_at"])
            for a in alerts}


# make test runs a backlog with 3 workers, the backlog produced to 3 running workers and a
# paced stream with 1; the other two combinations run in make soak (CI time).
@pytest.mark.parametrize(("mode", "workers"), [
    pytest.param("backlog", 1, marks=pytest.mark.soak), ("backlog", 3), ("running", 3),
    ("paced", 1), pytest.param("paced", 3, marks=pytest.mark.soak)])
def test_alert_episodes_equal_the_reference_whatever_the_arrival(
        stack, mode: str, workers: int) -> None:
    dep = Deployment(f"alertwm-{uuid.uuid4().hex[:6]}", stack.bootstrap, stack.redis_url,
                     extra={"KPISTREAM_CLOCK": "event"})
    dep.create_topics()
    settings = dep.settings
    start = int(time.time() * 1000) - 3 * 24 * HOUR_MS
    start -= start % HOUR_MS
    config = TrafficConfig(seed=13, start_ms=start, duration_ms=30 * HOUR_MS,
                           orders_per_hour=900, campaigns=10, survey_ratio=0.0,
                           cancel_ratio=0.05, anomalies=[Anomaly(STOPPED,
                                                                 start + 27 * HOUR_MS)])
    records = list(TrafficGenerator(config).records())
    outcome = reference.classify(normalise(settings, records, int(time.time() * 1000)),
                                 retention_ms=settings.retention_ms)
    judged = outcome.accepted + outcome.duplicates + outcome.unknown_orders
    stream_time = max(e.ts for e in judged)
    last_minute = (stream_time - settings.idle_lag_ms) // 60_000 * 60_000
    baseline = next(s for s in settings.window_specs if s.name == "24h")
    want = {(e.state, e.kind, e.dimension, e.group, e.started_at)
            for e in reference.expected_alerts(
                outcome, DetectorParams.from_settings(settings), baseline_ms=baseline.size_ms,
                baseline_step_ms=baseline.step_ms, last_minute_end=last_minute)}
    assert any(g == STOPPED and s == "firing" for s, _, _, g, _ in want), (
        "the reference must see the stop")
    try:
        if mode == "backlog":
            dep.produce(records)
        for _ in range(workers):
            dep.start_worker()
        if mode == "paced":
            time.sleep(5)
            dep.produce(records, rate=4000)
        if mode == "running":
            # every edge has read its (empty) partitions to their end before the backlog
            # comes: the first edge to read it must not move the watermark past records
            # the others have not read yet (the end offsets it lists: learn_ends)
            time.sleep(RUNNING_IDLE_S)
            dep.produce(records)
        deadline = time.monotonic() + SETTLE_S
        got: set[tuple[str, str, str, str, int]] = set()
        while time.monotonic() < deadline:
            got = edges_of(asyncio.run(read_topic(dep.bootstrap, settings.topic_alerts)))
            if got >= want:
                break
            for proc in dep.workers:
                assert proc.poll() is None, f"worker exited with {proc.returncode}"
            time.sleep(2)
        time.sleep(3)  # nothing more may follow
        got = edges_of(asyncio.run(read_topic(dep.bootstrap, settings.topic_alerts)))
        assert got == want, (f"missing {sorted(want - got)[:5]}, "
                             f"extra {sorted(got - want)[:5]}")
    finally:
        dep.stop()

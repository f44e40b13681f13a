"""Issue 3 acceptance, on real Kafka and Redis: ~50,000 generated events over two hours of
event time; every Redis row equals the reference for its own bounds, whatever the number of
workers, duplicates, a SIGKILL mid-stream, or replay versus live clock."""

from __future__ import annotations

import os
import signal
import time

import pytest
from harness import Deployment, normalise, row_mismatches, wait_for_rows

from kpistream import reference
from kpistream.generator.traffic import HOUR_MS, TrafficConfig, TrafficGenerator

pytestmark = pytest.mark.integration
SETTLE_S = 150.0
DAY_MS = 24 * HOUR_MS


def records(start_ms: int, seed: int = 7) -> list:
    config = TrafficConfig(seed=seed, start_ms=start_ms, duration_ms=2 * HOUR_MS,
                           orders_per_hour=15_000, campaigns=40, survey_ratio=0.4,
                           cancel_ratio=0.03)
    return list(TrafficGenerator(config).records())


def live_start() -> int:
    now = int(time.time() * 1000)
    return now - 2 * HOUR_MS - 60_000  # the stream ends about a minute ago


def run(dep: Deployment, recs: list, workers: int, now_ms: int) -> dict:
    outcome = reference.classify(normalise(dep.settings, recs, now_ms),
                                 retention_ms=dep.settings.retention_ms)
    for _ in range(workers):
        dep.start_worker()
    dep.produce(recs)
    rows = wait_for_rows(dep.settings.redis_url.get_secret_value(), dep.settings.redis_prefix,
                         outcome, SETTLE_S, alive=lambda: assert_alive(dep))
    problems = row_mismatches(rows, outcome)
    assert not problems, f"{len(problems)} mismatches, e.g. {problems[:10]}"
    return rows


def assert_alive(dep: Deployment) -> None:
    for proc in dep.workers:
        assert proc.poll() is None, f"worker {proc.pid} exited with {proc.returncode}"


def test_one_worker_rows_equal_reference(deployment) -> None:
    recs = records(live_start())
    assert len(recs) > 45_000
    rows = run(deployment(), recs, workers=1, now_ms=int(time.time() * 1000))
    assert {d for (_, d, _) in rows} == {"all", "channel", "campaign", "segment"}


def test_three_workers_rows_equal_reference(deployment) -> None:
    run(deployment(), records(live_start()), workers=3, now_ms=int(time.time() * 1000))


def test_every_event_twice_rows_equal_reference(deployment) -> None:
    recs = records(live_start())
    doubled = [r for rec in recs for r in (rec, rec)]
    run(deployment(), doubled, workers=1, now_ms=int(time.time() * 1000))


def test_sigkill_mid_stream_rows_still_exact(deployment) -> None:
    dep = deployment()
    recs = records(live_start())
    now = int(time.time() * 1000)
    outcome = reference.classify(normalise(dep.settings, recs, now),
                                 retention_ms=dep.settings.retention_ms)
    victim, _ = dep.start_worker()
    dep.start_worker()
    half = len(recs) // 2
    dep.produce(recs[:half])
    time.sleep(8)  # let both workers get well into the first half
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    dep.workers.remove(victim)
    dep.produce(recs[half:])
    dep.start_worker()
    rows = wait_for_rows(dep.settings.redis_url.get_secret_value(), dep.settings.redis_prefix,
                         outcome, SETTLE_S, alive=lambda: assert_alive(dep))
    problems = row_mismatches(rows, outcome)
    assert not problems, f"{len(problems)} mismatches, e.g. {problems[:10]}"


def test_replay_mode_on_old_data_gives_the_live_rows(deployment) -> None:
    """The same stream shifted three days back, in replay mode: rows anchored at the stream's
    own time, equal to what live mode computes over the same (unshifted) events."""
    live_recs = records(live_start())
    shift = 3 * DAY_MS
    old_recs = [type(r)(r.kind, shifted(r.value, shift)) for r in live_recs]
    dep = deployment(KPISTREAM_CLOCK="event")
    now = int(time.time() * 1000)
    old_outcome = reference.classify(normalise(dep.settings, old_recs, now),
                                     retention_ms=dep.settings.retention_ms)
    rows = run(dep, old_recs, workers=1, now_ms=now)
    t = max(e.ts for e in old_outcome.accepted)
    live_outcome = reference.classify(normalise(dep.settings, live_recs, now),
                                      retention_ms=dep.settings.retention_ms)
    for spec in dep.settings.window_specs:
        start, end = reference.window_bounds(t, spec.size_ms, spec.step_ms)
        for (window, dimension, group), fields in rows.items():
            if window != spec.name:
                continue
            assert (int(fields["window_start"]), int(fields["window_end"])) == (start, end)
            live = reference.expected_row(live_outcome, dimension=dimension, group=group,
                                          window_start=start + shift, window_end=end + shift)
            assert int(fields["orders"]) == live.orders
            assert float(fields["revenue"]) == pytest.approx(live.revenue, rel=1e-9)


def shifted(value: dict, shift: int) -> dict:
    from kpistream.generator.traffic import event_time_ms, iso

    ts = event_time_ms(value) - shift
    return {**value, "ts": ts if isinstance(value["ts"], int) else iso(ts)}

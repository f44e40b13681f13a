"""make bench: kpistream end to end through the real broker, beside what bounds it.

For each scenario the input topics of a fresh deployment are filled beforehand, then, in one
run and on the same broker and topics:

1. plain: an aiokafka ``getmany`` + ``orjson.loads`` loop (the floor of any Python consumer);
2. bare faust: a faust agent that only iterates the input topics (the ceiling of any design
   with faust agents on the raw input, DESIGN-NOTES §1);
3. quix: a Quix Streams program computing the order rows as Quix's docs teach
   (``benchmarks/peers/quix_rows.py``: what it computes and leaves out), in a virtualenv of
   its own (``benchmarks/peers/requirements.txt``); events/s and peak RSS;
4. kpistream with 1 worker, then 2 workers (replay clock): events/s from the first record
   judged until every consumer group reads no lag (all stages done and committed), and
   until the last record is judged (``kpistream_judged_events`` summed over
   workers; the roll-up drains its messages after that), Kafka
   records written per input event (end offsets of the internal and changelog topics before
   and after), peak RSS (VmHWM) and the live rows published.

Then freshness (produce -> row in Redis, live clock, at half of the 1-worker rate) and a
restart with 2 million events in retention (``restart``).

Scenarios (event times spread over 50 minutes, DESIGN-NOTES §4): 50 campaigns; and
1000 campaigns x 10 channels x 5 segments. Prints a markdown table, writes
``docs/benchmarks.json`` and the chart ``docs/benchmarks.png``.
Targets (issue 13): >= 20,000 ev/s per worker (50 campaigns), >= 10,000 (1000 x 10 x 5),
>= 4x the bare faust agent, <= 0.25 records written per event, RSS <= 300 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
from harness import (  # noqa: E402
    Deployment,
    changelog_topics,
    committed_offsets,
    end_offsets,
    free_port,
    samples,
)
from peers.runner import quix_run  # noqa: E402

from kpistream.generator.traffic import (  # noqa: E402
    Record,
    TrafficConfig,
    TrafficGenerator,
)

MINUTE_MS = 60_000
SPREAD_MIN = 50
KAFKA_LOG_DIR = ROOT / ".local" / "kafka" / "data"  # the local stack's broker (stack.sh)
POLL_S = 0.5
RESTART_ROUNDS = 3


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def scrape(port: int) -> str:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return str(r.read().decode())
    except OSError:
        return ""


async def plain_consume(bootstrap: str, topics: list[str], expected: int) -> float:
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    seen, started = 0, None
    try:
        while seen < expected:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            if started is None and batch:
                started = time.perf_counter()
            for records in batch.values():
                for record in records:
                    orjson.loads(record.value)
                seen += len(records)
    finally:
        await consumer.stop()
    return seen / (time.perf_counter() - (started or time.perf_counter()))


def bare_faust(bootstrap: str, topics: list[str], expected: int, timeout_s: float) -> float:
    env = {**os.environ, "BARE_TOPICS": ",".join(topics), "BARE_EXPECTED": str(expected),
           "BARE_BOOTSTRAP": bootstrap, "BARE_WEB_PORT": str(free_port())}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bare_faust.py"), "worker",
                          "-l", "warn"], env=env, capture_output=True, text=True,
                         timeout=timeout_s, cwd="/tmp")
    # faust redirects stdout to its logger: the line may come on either stream.
    found = re.search(r"\brate (\d+)", out.stdout + out.stderr)
    if found:
        return float(found.group(1))
    raise SystemExit(f"bare faust agent gave no rate: {out.stderr[-2000:]}")


def judged(ports: list[int]) -> float:
    """Records the aggregate partitions have judged (kpistream_events_total follows the
    roll-up, which drains after them)."""
    return sum(value for port in ports
               for _, value in samples(scrape(port), "kpistream_judged_events"))


def judged_progress(ports: list[int], expected: int,
                    timeout_s: float) -> tuple[float, float, float]:
    """When the workers on ``ports`` were first seen judging (perf_counter, count then) and
    when the count reached ``expected`` (interpolated between the two polls around it).
    Polls every ``POLL_S``: each poll renders the workers' whole /metrics page, and polling
    every 50 ms (as this bench did before 2026-12-05) took ~20 % of a worker's core
    (8,300 against 10,130 events/s, same input); Prometheus itself scrapes every 15 s."""
    first: tuple[float, float] | None = None
    previous = (time.perf_counter(), 0.0)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done, now = judged(ports), time.perf_counter()
        if first is None and done > 0:
            first = (now, done)
        if done >= expected and first is not None:
            if first[1] >= expected:
                raise SystemExit(f"all {expected} events judged before the first poll")
            (t0, d0), (t1, d1) = previous, (now, done)
            return (*first, t0 + (t1 - t0) * (expected - d0) / max(1e-9, d1 - d0))
        previous = (now, done)
        time.sleep(POLL_S)
    raise SystemExit(f"kpistream judged {judged(ports):.0f} of {expected} events in "
                     f"{timeout_s:.0f} s")


def judged_rate(ports: list[int], expected: int, timeout_s: float) -> float:
    first, first_done, reached = judged_progress(ports, expected, timeout_s)
    return (expected - first_done) / max(1e-9, reached - first)


def settled_at(dep: Deployment, timeout_s: float) -> float:
    """When every consumer group of the deployment (the edge's on the raw topics, faust's on
    the internal ones) has first committed the end offset of every partition: every stage
    has processed and committed all it was sent. Judging (the aggregate) finishes first; the
    roll-up drains its messages after it. Read from the broker, not from the workers'
    ``kpistream_consumer_lag``: rendering a worker's whole /metrics page for each of the
    bench's polls took ~9 % of its samples in the 1000 x 10 x 5 run (twelfth session). A
    poll takes ~0.1-0.3 s here (new clients each time), so this is late by up to that plus
    ``POLL_S``."""
    settings = dep.settings
    groups = [(settings.edge_group_id, list(settings.input_topics)),
              (settings.app_id, [settings.topic_events, settings.topic_rollup,
                                 settings.topic_customers])]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        behind = False
        for group, topics in groups:
            ends = end_offsets(dep.bootstrap, topics)
            done = committed_offsets(dep.bootstrap, group, topics)
            # a partition nothing was written to has no commit either
            if any(done.get(tp, 0) < end for tp, end in ends.items()):
                behind = True
                break
        if not behind:
            return time.perf_counter()
        time.sleep(POLL_S)
    raise SystemExit(f"consumer groups not committed to the end within {timeout_s:.0f} s")


def log_bytes(topics: list[str]) -> float:
    """Bytes the local broker holds for ``topics`` (its segment files, as written: after the
    producer's compression); NaN without the local stack's broker."""
    if not KAFKA_LOG_DIR.is_dir():
        return float("nan")
    return float(sum(segment.stat().st_size for topic in topics
                     for segment in KAFKA_LOG_DIR.glob(f"{topic}-[0-9]*/*.log")))


def kpistream_run(dep: Deployment, workers: int, expected: int,
                  timeout_s: float) -> dict[str, float]:
    settings = dep.settings
    written_topics = [settings.topic_events, settings.topic_rollup, settings.topic_customers,
                      *changelog_topics(settings)]
    before = sum(end_offsets(dep.bootstrap, written_topics).values())
    bytes_before = log_bytes(written_topics)
    procs = [dep.start_worker() for _ in range(workers)]
    ports = [port for _, port in procs]
    first, first_done, reached = judged_progress(ports, expected, timeout_s)
    settled = settled_at(dep, timeout_s)
    time.sleep(4)  # publishing and the last changelog writes settle
    rows = sum(1 for port in ports for labels, _ in samples(scrape(port), "kpistream_orders"))
    rss = max(peak_rss_mb(proc.pid) for proc, _ in procs)
    after = sum(end_offsets(dep.bootstrap, written_topics).values())
    bytes_after = log_bytes(written_topics)
    dep.stop()
    dep.workers.clear()
    return {"rate": (expected - first_done) / max(1e-9, reached - first),
            "settled_rate": (expected - first_done) / max(1e-9, settled - first),
            "written_per_event": (after - before) / expected,
            "bytes_written_per_event": (bytes_after - bytes_before) / expected, "rss_mb": rss,
            "prometheus_rows": rows}


async def _freshness(dep: Deployment, rate: float, seconds: float,
                     probes: int) -> list[float]:
    """Live traffic at ``rate`` for ``seconds``; meanwhile ``probes`` orders, each of a
    campaign of its own, are produced one by one, and the time until the probe's row is in
    Redis is measured (produce -> row visible)."""
    import redis.asyncio as aioredis
    from aiokafka import AIOKafkaProducer

    from kpistream.generator.producer import produce

    settings = dep.settings
    now = int(time.time() * 1000)
    config = TrafficConfig(seed=7, start_ms=now, duration_ms=int(seconds * 1000),
                           orders_per_hour=rate * 3600 / 1.3 * 0.95, campaigns=50,
                           survey_ratio=0.3, spend_every_min=1)
    background = asyncio.create_task(produce(settings, TrafficGenerator(config).records(),
                                             rate=rate))
    client = aioredis.Redis.from_url(settings.redis_url.get_secret_value())
    producer = AIOKafkaProducer(bootstrap_servers=dep.bootstrap, linger_ms=0)
    await producer.start()
    delays = []
    try:
        await asyncio.sleep(3)  # traffic established
        for i in range(probes):
            key = f"{settings.redis_prefix}:5m:campaign:probe-{i}"
            sent = time.perf_counter()
            await producer.send_and_wait(settings.topic_orders, orjson.dumps({
                "order_id": f"probe-{uuid.uuid4().hex}", "ts": int(time.time() * 1000),
                "customer_id": "probe", "amount": 1, "currency": "EUR",
                "campaign_id": f"probe-{i}", "channel": "probe", "segment": "probe"}))
            while not await client.exists(key):
                if time.perf_counter() - sent > 30:
                    break
                await asyncio.sleep(0.01)
            delays.append(time.perf_counter() - sent)
            await asyncio.sleep(max(0.0, seconds / probes - delays[-1]) / 2)
        await background
    finally:
        await producer.stop()
        await client.aclose()
    return delays


def freshness(name: str, bootstrap: str, redis_url: str, rate: float) -> dict[str, Any]:
    dep = Deployment(f"bench-fresh-{name}-{uuid.uuid4().hex[:6]}", bootstrap, redis_url)
    dep.create_topics()
    dep.start_worker()
    time.sleep(8)  # the worker is up and assigned
    try:
        delays = sorted(asyncio.run(_freshness(dep, rate, 40.0, 60)))
    finally:
        dep.remove()
    return {"rate": rate, "p50": delays[len(delays) // 2],
            "p99": delays[min(len(delays) - 1, round(len(delays) * 0.99))],
            "slowest": delays[-5:]}


def scenario(name: str, records: list[Record], bootstrap: str, redis_url: str,
             timeout_s: float) -> dict[str, float]:
    base = f"bench-{name}-{uuid.uuid4().hex[:6]}"
    dep = Deployment(base, bootstrap, redis_url, extra={"KPISTREAM_CLOCK": "event"})
    dep.create_topics()
    dep.produce(records)
    topics = list(dep.settings.input_topics)
    result: dict[str, float] = {"events": len(records)}
    result["plain"] = asyncio.run(plain_consume(bootstrap, topics, len(records)))
    result["bare_faust"] = bare_faust(bootstrap, topics, len(records), timeout_s)
    quix = quix_run(bootstrap, topics, len(records), timeout_s, dep.settings.currency_rates)
    result["quix"], result["quix_rss_mb"] = quix["rate"], quix["rss_mb"]
    one = kpistream_run(dep, 1, len(records), timeout_s)
    # Same input topics, a new deployment (own groups, internal topics, Redis prefix).
    dep2 = Deployment(base + "-2w", bootstrap, redis_url, extra={
        "KPISTREAM_CLOCK": "event", **{k: v for k, v in dep.env.items()
                                       if k in ("KPISTREAM_TOPIC_ORDERS",
                                                "KPISTREAM_TOPIC_AD_SPEND",
                                                "KPISTREAM_TOPIC_SURVEYS")}})
    dep2.create_topics()
    two = kpistream_run(dep2, 2, len(records), timeout_s)
    dep2.remove()
    dep.remove()  # a broker holding every earlier run's partitions runs slower
    result.update({f"one_{k}": v for k, v in one.items()})
    result.update({f"two_{k}": v for k, v in two.items()})
    result["one_per_quix"] = one["settled_rate"] / result["quix"]
    return result


def traffic(seed: int, events: int, campaigns: int, channels: int, now: int) -> list[Record]:
    return list(traffic_records(seed, events, campaigns, channels, now))


def traffic_records(seed: int, events: int, campaigns: int, channels: int,
                    now: int) -> Iterator[Record]:
    minutes_of_orders = SPREAD_MIN
    spend_records = campaigns * minutes_of_orders // 10  # one per campaign per 10 minutes
    orders = max(1, events - spend_records) / 1.3  # surveys are 0.3 per order
    config = TrafficConfig(seed=seed, start_ms=now - SPREAD_MIN * MINUTE_MS,
                           duration_ms=SPREAD_MIN * MINUTE_MS,
                           orders_per_hour=orders * 60 / SPREAD_MIN, campaigns=campaigns,
                           channels=channels, survey_ratio=0.3, spend_every_min=10,
                           delayed_ratio=0.02)
    return TrafficGenerator(config).records()


def restart(bootstrap: str, redis_url: str, events: int, timeout_s: float,
            rounds: int = RESTART_ROUNDS) -> dict[str, Any]:
    """A worker restarted with ``events`` (2 million by default) in retention: one worker
    processes them all (50 campaigns, replay clock; until no consumer lag is left), is stopped
    (SIGTERM) and started again on the same data directory (a StatefulSet's volume, or a
    container restarted in its pod: the aggregate restores the snapshots the stop left);
    measured from the new process's start until an order produced at that moment has its row
    in Redis. Then the same again on a wiped data directory (a new machine, or a crash: every
    stage rebuilds from the changelogs). ``rounds`` times each, alternating (each stop leaves
    the snapshots the next same-directory start restores): one restart varies by ±25 % on a
    2-core machine that also runs the broker (44.8-72.1 s wiped for the same code, thirteenth
    session), so the medians are reported, with every run."""
    import redis

    dep = Deployment(f"bench-restart-{uuid.uuid4().hex[:6]}", bootstrap, redis_url,
                     extra={"KPISTREAM_CLOCK": "event"})
    dep.create_topics()
    data_dir = f"{dep.env['KPISTREAM_DATA_DIR']}-restart"
    client = redis.Redis.from_url(redis_url)

    def publishing_again() -> tuple[float, float]:
        """Seconds from a new worker's start until a new order's row is in Redis; its RSS."""
        started = time.monotonic()
        proc, _ = dep.start_worker(KPISTREAM_DATA_DIR=data_dir)
        probe = f"probe-{uuid.uuid4().hex[:8]}"
        dep.produce([Record("order", {
            "order_id": probe, "ts": int(time.time() * 1000), "customer_id": probe,
            "amount": 1.0, "currency": "EUR", "campaign_id": probe, "channel": "probe",
            "segment": "probe"})])
        key = f"{dep.settings.redis_prefix}:5m:campaign:{probe}"
        while not client.exists(key):
            if time.monotonic() - started > timeout_s:
                raise SystemExit(f"restart: no row for {probe} within {timeout_s:.0f} s")
            time.sleep(0.2)
        seconds = time.monotonic() - started
        rss = peak_rss_mb(proc.pid)
        settled_at(dep, timeout_s)
        dep.stop()
        dep.workers.clear()
        return seconds, rss

    try:
        now = int(time.time() * 1000)
        produced = dep.produce(traffic_records(3, events, 50, 4, now))
        _, port = dep.start_worker(KPISTREAM_DATA_DIR=data_dir)
        rate = judged_rate([port], produced, timeout_s)
        settled_at(dep, timeout_s)  # every stage done: the restart replays, never drains
        time.sleep(4)  # publishing and the last changelog writes settle
        dep.stop()
        dep.workers.clear()
        same: list[tuple[float, float]] = []
        wiped: list[tuple[float, float]] = []
        for _ in range(rounds):
            same.append(publishing_again())
            shutil.rmtree(data_dir)
            wiped.append(publishing_again())
    finally:
        client.close()
        dep.remove()
    return {"events": produced, "rate": rate,
            "restart_s": statistics.median(s for s, _ in same),
            "restarted_rss_mb": max(r for _, r in same),
            "rebuild_s": statistics.median(s for s, _ in wiped),
            "rebuilt_rss_mb": max(r for _, r in wiped),
            "restart_runs_s": [s for s, _ in same], "rebuild_runs_s": [s for s, _ in wiped]}


def report(name: str, r: dict[str, float]) -> None:
    print(f"| {name} | {r['events']:,.0f} | {r['plain']:,.0f} | {r['bare_faust']:,.0f} | "
          f"{r['quix']:,.0f} | {r['one_settled_rate']:,.0f} ({r['one_rate']:,.0f}) | "
          f"{r['two_settled_rate']:,.0f} ({r['two_rate']:,.0f}) | "
          f"{r['one_settled_rate'] / r['plain']:.3f} | "
          f"{r['one_settled_rate'] / r['bare_faust']:.1f} | "
          f"{r['one_per_quix']:.1f} | {r['one_written_per_event']:.3f} "
          f"({r['one_bytes_written_per_event']:,.0f} B) | "
          f"{r['one_rss_mb']:.0f} | {r['quix_rss_mb']:.0f} | {r['one_prometheus_rows']:,.0f} |",
          flush=True)


def report_restart(r: dict[str, Any]) -> None:
    def runs(key: str) -> str:
        return ", ".join(f"{s:.1f}" for s in r[key])

    print(f"restart with {r['events']:,.0f} events in retention (1 worker judged them at "
          f"{r['rate']:,.0f} ev/s): publishing again, median of {len(r['restart_runs_s'])}, "
          f"{r['restart_s']:.1f} s after the new worker started on the same data directory "
          f"({runs('restart_runs_s')} s; peak RSS {r['restarted_rss_mb']:,.0f} MB), "
          f"{r['rebuild_s']:.1f} s on a wiped one ({runs('rebuild_runs_s')} s; peak RSS "
          f"{r['rebuilt_rss_mb']:,.0f} MB)", flush=True)


def chart(results: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = [("plain aiokafka", "plain"), ("bare faust agent", "bare_faust"),
               ("Quix Streams (docs)", "quix"), ("kpistream 1 worker", "one_settled_rate"),
               ("kpistream 2 workers", "two_settled_rate")]
    scenarios = {k: v for k, v in results.items() if k not in ("freshness", "restart")}
    fig, axes = plt.subplots(1, len(scenarios), figsize=(5 * len(scenarios), 4))
    for ax, (name, r) in zip(axes if len(scenarios) > 1 else [axes], scenarios.items(),
                             strict=True):
        values = [r[key] for _, key in systems]
        ax.bar([label for label, _ in systems], values,
               color=["#888", "#c66", "#c93", "#36c", "#139"])
        ax.set_yscale("log")
        ax.set_title(name, fontsize=10)
        ax.set_ylabel("events/s (log)")
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rows-events", type=int, default=200_000)
    parser.add_argument("--restart-events", type=int, default=2_000_000)
    parser.add_argument("--restart-only", action="store_true",
                        help="only the restart measurement, printed, no files written")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    bootstrap = os.environ.get("KPISTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    redis_url = os.environ.get("KPISTREAM_REDIS_URL", "redis://127.0.0.1:6379/0")
    now = int(time.time() * 1000)

    print(f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} cores, "
          f"Python {platform.python_version()}", flush=True)
    if args.restart_only:
        report_restart(restart(bootstrap, redis_url, args.restart_events, args.timeout))
        return 0
    # kpistream: events/s until every stage is done (consumer lag 0), and in brackets until
    # the aggregate has judged every event (the roll-up drains after it)
    print("| scenario | events | plain ev/s | bare faust ev/s | quix ev/s | kpistream 1w ev/s | "
          "kpistream 2w ev/s | 1w / plain | 1w / bare faust | 1w / quix | "
          "records (bytes) written/event | peak RSS MB | quix peak RSS MB | Prometheus rows |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    results: dict[str, Any] = {}
    for name, seed, events, campaigns, channels in [
            ("50 campaigns", 1, args.events, 50, 4),
            ("1000 campaigns x 10 channels x 5 segments", 2, args.rows_events, 1000, 10)]:
        results[name] = scenario(name.split()[0], traffic(seed, events, campaigns, channels,
                                                          now), bootstrap, redis_url,
                                 args.timeout)
        report(name, results[name])
    half = results["50 campaigns"]["one_settled_rate"] / 2
    fresh = freshness("50", bootstrap, redis_url, half)
    results["freshness"] = fresh
    print(f"freshness at {fresh['rate']:,.0f} ev/s (half of the 1-worker rate, 50 campaigns, "
          f"live clock): p50 {fresh['p50']:.2f} s, p99 {fresh['p99']:.2f} s, slowest "
          f"{[round(d, 1) for d in fresh['slowest']]}", flush=True)
    results["restart"] = restart(bootstrap, redis_url, args.restart_events, args.timeout)
    report_restart(results["restart"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmarks.json").write_text(json.dumps(results, indent=2) + "\n")
    chart(results, args.out / "benchmarks.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

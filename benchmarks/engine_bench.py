"""make bench: the engine end to end through the real broker, beside a plain consumer.

1. Generate N events and produce them to a fresh deployment's input topics beforehand.
2. Plain aiokafka consumer: read and JSON-decode the same topics (the floor of any Kafka
   consumer in Python on this machine).
3. One kpistream worker (replay clock): time from the first event it consumed to the last
   one applied, read from its own /metrics (``kpistream_events_total`` over all outcomes
   reaching N; faust_messages_received for the start), and its resident memory.
4. Memory scenario: 1,000 campaigns x 10 channels x 5 segments spread over 24 h of event
   time, so every default window (5m, 1h, 24h) holds live rows; RSS after settling.

Prints a table; docs/benchmarks.md records a run. Targets (issue 3): >= 20,000 events/s,
>= 0.25 of the plain consumer, RSS < 300 MB with the memory scenario's live rows.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
from harness import Deployment  # noqa: E402

from kpistream.generator.traffic import (  # noqa: E402
    HOUR_MS,
    Record,
    TrafficConfig,
    TrafficGenerator,
)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return r.read().decode()
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


def run_worker(dep: Deployment, expected: int, timeout_s: float) -> tuple[float, float, int]:
    proc, port = dep.start_worker()
    first = last = None
    deadline = time.monotonic() + timeout_s
    done = 0.0
    while time.monotonic() < deadline:
        text = scrape(port)
        received = metric(text, "faust_messages_received_total")
        done = metric(text, "kpistream_events_total")  # every outcome: each record judged
        now = time.perf_counter()
        if first is None and received > 0:
            first = now
        if done >= expected:
            last = now
            break
        time.sleep(0.1)
    rss = rss_mb(proc.pid)
    if first is None or last is None:
        raise SystemExit(f"worker applied {done:.0f} of {expected} events in {timeout_s}s")
    return expected / (last - first), rss, proc.pid


def scenario(name: str, records: list[Record], bootstrap: str, redis_url: str,
             timeout_s: float) -> dict[str, float]:
    dep = Deployment(f"bench-{name}-{uuid.uuid4().hex[:6]}", bootstrap, redis_url,
                     extra={"KPISTREAM_CLOCK": "event"})
    dep.create_topics()
    dep.produce(records)
    settings = dep.settings
    plain = asyncio.run(plain_consume(bootstrap, list(settings.input_topics), len(records)))
    try:
        rate, rss, _ = run_worker(dep, len(records), timeout_s)
        time.sleep(3)
        rss_settled = rss_mb(dep.workers[0].pid)
    finally:
        dep.stop()
    return {"events": len(records), "plain": plain, "engine": rate, "rss": rss,
            "rss_settled": rss_settled}


def report(name: str, r: dict[str, float]) -> None:
    print(f"| {name} | {r['events']:,.0f} | {r['plain']:,.0f} | {r['engine']:,.0f} | "
          f"{r['engine'] / r['plain']:.3f} | {r['rss_settled']:.0f} |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--memory-events", type=int, default=100_000)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    bootstrap = os.environ.get("KPISTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    redis_url = os.environ.get("KPISTREAM_REDIS_URL", "redis://127.0.0.1:6379/0")
    now = int(time.time() * 1000)

    print(f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} cores, "
          f"Python {platform.python_version()}", flush=True)
    print("| scenario | events | plain consumer ev/s | engine ev/s | ratio | RSS MB |")
    print("|---|---|---|---|---|---|", flush=True)

    per_hour = args.events / 1.45 / 2  # orders make up ~69% of records over 2 h
    throughput = list(TrafficGenerator(TrafficConfig(
        seed=1, start_ms=now - 2 * HOUR_MS, duration_ms=2 * HOUR_MS,
        orders_per_hour=per_hour, campaigns=50)).records())
    report("throughput (50 campaigns, 2 h)",
           scenario("throughput", throughput, bootstrap, redis_url, args.timeout))

    memory_cfg = TrafficConfig(seed=2, start_ms=now - 24 * HOUR_MS, duration_ms=24 * HOUR_MS,
                               orders_per_hour=args.memory_events / 1.6 / 24,
                               campaigns=1000, channels=10, survey_ratio=0.3,
                               spend_every_min=60)
    report("rows (1000 campaigns x 10 channels x 5 segments, 24 h)",
           scenario("memory", list(TrafficGenerator(memory_cfg).records()), bootstrap,
                    redis_url, args.timeout))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""make bench (profiles, issue 10): one worker building a million customer profiles.

Fills a fresh deployment's input topics with orders of ``--customers`` distinct customers
(plus ``--repeat`` returning orders, ad spend each minute per campaign; event times spread
over two hours, replay clock), then starts one worker and measures:

- events/s from the first record judged to the last (``kpistream_judged_events``);
- the time until every profile is in Redis (``kpi:customers:by_revenue`` holds them all);
- peak RSS (``VmHWM``) of the worker;
- restart: the worker is stopped (SIGTERM) and a new one started on the same data directory
  (the stages restore the snapshots the stop left); the time from its start until a new
  customer's order, produced at that moment, has its profile in Redis. Then the same on a
  wiped data directory (a new machine, or a crash: every stage rebuilds from the changelogs
  and every profile is published again).

Targets (issue 10): peak RSS <= 400 MB, restart <= 60 s. Prints a markdown table and writes
``docs/profile_bench.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from engine_bench import judged_rate, peak_rss_mb  # noqa: E402
from harness import Deployment  # noqa: E402

from kpistream.generator.producer import produce  # noqa: E402
from kpistream.generator.traffic import Record  # noqa: E402

MINUTE_MS = 60_000
SPREAD_MIN = 120
CAMPAIGNS = 50
SEGMENTS = ("new", "returning", "vip", "b2b")


def orders(customers: int, repeat: float, start_ms: int, seed: int) -> Iterator[Record]:
    """Orders in event-time order: each customer's first order, and ``repeat`` returning
    orders per customer from earlier customers; one spend record per campaign per minute."""
    rng = random.Random(seed)
    total = int(customers * (1 + repeat))
    per_minute = total / SPREAD_MIN
    seen = 0
    for minute in range(SPREAD_MIN):
        base = start_ms + minute * MINUTE_MS
        for i in range(int(per_minute * (minute + 1)) - int(per_minute * minute)):
            if seen < customers and (seen == 0 or rng.random() >= repeat / (1 + repeat)):
                customer = seen
                seen += 1
            else:
                customer = rng.randrange(max(1, seen))
            campaign = f"cmp-{rng.randrange(CAMPAIGNS):03d}"
            yield Record("order", {
                "order_id": f"o-{seed}-{minute}-{i}", "ts": base + rng.randrange(MINUTE_MS),
                "customer_id": f"c-{customer}", "amount": round(rng.uniform(5, 300), 2),
                "currency": "EUR", "campaign_id": campaign, "channel": "search",
                "segment": SEGMENTS[customer % len(SEGMENTS)]})
        for c in range(CAMPAIGNS):
            yield Record("spend", {"spend_id": f"s-{seed}-{minute}-{c}",
                                   "ts": base + MINUTE_MS - 1, "campaign_id": f"cmp-{c:03d}",
                                   "channel": "search", "amount": 40.0, "currency": "EUR"})
    while seen < customers:  # rounding: the last first orders
        yield Record("order", {
            "order_id": f"o-{seed}-tail-{seen}", "ts": start_ms + SPREAD_MIN * MINUTE_MS - 1,
            "customer_id": f"c-{seen}", "amount": 10.0, "currency": "EUR",
            "campaign_id": "cmp-000", "channel": "search", "segment": "new"})
        seen += 1


def wait(predicate: object, timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if predicate():  # type: ignore[operator]
            return time.monotonic() - started
        time.sleep(0.2)
    raise SystemExit(f"{what}: not within {timeout_s:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=float, default=0.2)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    bootstrap = os.environ.get("KPISTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    redis_url = os.environ.get("KPISTREAM_REDIS_URL", "redis://127.0.0.1:6379/0")
    dep = Deployment(f"bench-profiles-{uuid.uuid4().hex[:6]}", bootstrap, redis_url,
                     extra={"KPISTREAM_CLOCK": "event"})
    dep.create_topics()
    settings = dep.settings
    start_ms = int(time.time() * 1000) - SPREAD_MIN * MINUTE_MS - 10 * MINUTE_MS
    produced = time.monotonic()
    events = asyncio.run(produce(settings, orders(args.customers, args.repeat, start_ms, 1)))
    print(f"produced {events:,} records in {time.monotonic() - produced:.0f} s", flush=True)
    client = redis.Redis.from_url(redis_url)
    ranking = f"{settings.redis_prefix}:customers:by_revenue"
    data_dir = f"{dep.env['KPISTREAM_DATA_DIR']}-profiles"

    def publishing_again(at_ms: int) -> tuple[float, float]:
        """Seconds from a new worker's start until a new customer's order, produced at that
        moment, has its profile in Redis; the worker's peak RSS."""
        started = time.monotonic()
        proc, _ = dep.start_worker(KPISTREAM_DATA_DIR=data_dir)
        probe = f"probe-{uuid.uuid4().hex[:8]}"
        asyncio.run(produce(settings, [Record("order", {
            "order_id": probe, "ts": at_ms, "customer_id": probe, "amount": 1.0,
            "currency": "EUR", "campaign_id": "cmp-000", "channel": "search",
            "segment": "new"})]))
        wait(lambda: client.exists(f"{settings.redis_prefix}:customer:{probe}"), args.timeout,
             "a profile published after the restart")
        seconds = time.monotonic() - started
        rss = peak_rss_mb(proc.pid)
        dep.stop()
        dep.workers.clear()
        return seconds, rss

    try:
        proc, port = dep.start_worker(KPISTREAM_DATA_DIR=data_dir)
        rate = judged_rate([port], events, args.timeout)
        published = wait(lambda: client.zcard(ranking) >= args.customers, args.timeout,
                         "every profile in Redis")
        rss = peak_rss_mb(proc.pid)
        dep.stop()
        dep.workers.clear()
        # the same data directory (a container restarted in its pod, a StatefulSet's
        # volume: the stop left snapshots), then a wiped one (a new machine, or a crash)
        restart, restart_rss = publishing_again(start_ms + SPREAD_MIN * MINUTE_MS)
        shutil.rmtree(data_dir)
        rebuild, rebuild_rss = publishing_again(start_ms + SPREAD_MIN * MINUTE_MS + 1)
    finally:
        dep.remove()
        client.close()
    result = {"customers": args.customers, "events": events, "rate": rate,
              "all_published_after_s": published, "peak_rss_mb": rss, "restart_s": restart,
              "restarted_peak_rss_mb": restart_rss, "rebuild_s": rebuild,
              "rebuilt_peak_rss_mb": rebuild_rss}
    print("| customers | events | events/s (1 worker) | all profiles in Redis after | "
          "peak RSS MB | restart until published again: same data dir / wiped | "
          "restarted worker's peak RSS MB: same / wiped |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.customers:,} | {events:,} | {rate:,.0f} | {published:.0f} s after the last "
          f"event | {rss:,.0f} | {restart:.0f} s / {rebuild:.0f} s | {restart_rss:,.0f} / "
          f"{rebuild_rss:,.0f} |", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "profile_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``kpistream generate``: seeded synthetic traffic to the input topics (or JSONL)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from rich.progress import Progress

from kpistream.encoding import json_bytes
from kpistream.generator.producer import produce
from kpistream.generator.traffic import (
    HOUR_MS,
    Anomaly,
    TrafficConfig,
    TrafficGenerator,
    event_time_ms,
)
from kpistream.settings import Settings, parse_duration_ms


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration", default="1h", help="event-time span (e.g. 30m, 2h)")
    parser.add_argument("--orders-per-hour", type=float, default=2000.0)
    parser.add_argument("--campaigns", type=int, default=12)
    parser.add_argument("--start", type=int, default=None,
                        help="event time of the first record, epoch ms (default: now - duration)")
    parser.add_argument("--rate", type=float, default=None,
                        help="records per second to produce (default: as fast as possible)")
    parser.add_argument("--duplicates", type=float, default=0.0, help="share sent twice")
    parser.add_argument("--delayed", type=float, default=0.0,
                        help="share of orders delivered up to 10 minutes after their ts "
                             "(out-of-order first orders)")
    parser.add_argument("--anomaly", action="append", default=[],
                        help="CAMPAIGN:KIND:AFTER[:FACTOR], KIND stop|cpo, AFTER a duration "
                             "from the start, e.g. cmp-003:stop:20m or cmp-001:cpo:30m:3")
    parser.add_argument("--jsonl", default=None, help="write records to this file instead")
    parser.add_argument("--live", action="store_true",
                        help="live traffic: event times from now on, each record sent when "
                             "the wall clock reaches it (--start defaults to now - backfill)")
    parser.add_argument("--backfill", default="0s",
                        help="with --live, history sent at once before the live part")


def parse_anomaly(text: str, start_ms: int) -> Anomaly:
    parts = text.split(":")
    if len(parts) not in (3, 4) or parts[1] not in ("stop", "cpo"):
        raise ValueError(f"--anomaly {text!r}: expected CAMPAIGN:stop|cpo:AFTER[:FACTOR]")
    factor = float(parts[3]) if len(parts) == 4 else 3.0
    return Anomaly(parts[0], start_ms + parse_duration_ms(parts[2]), parts[1], factor)


def run_generate(settings: Settings, args: argparse.Namespace) -> int:
    import time

    duration = parse_duration_ms(args.duration)
    now = int(time.time() * 1000)
    if args.live:
        backfill = parse_duration_ms(args.backfill)
        start = args.start if args.start is not None else now - backfill
        duration += backfill
    else:
        start = args.start if args.start is not None else now - duration
    try:
        anomalies = [parse_anomaly(text, start) for text in args.anomaly]
    except ValueError as exc:
        print(f"kpistream generate: {exc}", file=sys.stderr)
        return 2
    config = TrafficConfig(seed=args.seed, start_ms=start, duration_ms=duration,
                           orders_per_hour=args.orders_per_hour, campaigns=args.campaigns,
                           duplicate_ratio=args.duplicates, delayed_ratio=args.delayed,
                           anomalies=anomalies,
                           daily_rhythm=args.live)
    records = list(TrafficGenerator(config).records())
    if args.live:
        records = [r for r in records if event_time_ms(r.value) <= now + duration]
    if args.jsonl:
        with open(args.jsonl, "wb") as out:
            for record in records:
                out.write(json_bytes({"kind": record.kind, "value": record.value}) + b"\n")
        print(f"wrote {len(records)} records to {args.jsonl}")
        return 0
    with Progress() as progress:
        task = progress.add_task(f"producing {len(records)} records", total=len(records))
        sent = asyncio.run(produce(settings, records, rate=args.rate,
                                   live_from_ms=now if args.live else None,
                                   on_sent=lambda n: progress.update(task, completed=n)))
    print(f"produced {sent} records ({duration / HOUR_MS:.2f} h of event time)")
    return 0

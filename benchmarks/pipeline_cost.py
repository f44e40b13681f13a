"""The cost model of one worker's per-event work, without a broker or faust: the stages' pure
classes driven as their agents drive them (validate and pack at the edge, decode, aggregate,
roll-up messages, roll-up apply, the customer stage), over the 50-campaign scenario of
``engine_bench`` (event times spread over 50 minutes).

Two measures:
- ``python benchmarks/pipeline_cost.py`` - CPU time per event of each step (process time,
  the worker's garbage-collector thresholds). On a shared 2-core machine one run varies by
  up to ±20 %, too much to see a change of a few percent;
- ``python benchmarks/pipeline_cost.py --instructions`` - instructions per event, counted by
  valgrind's callgrind: the same count for the same code on any load (a run of N events
  minus a run of N/3, so imports and the traffic's generation cancel out). Needs valgrind
  (Debian package ``valgrind``); ~3 minutes.

Figures in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).parent))
import engine_bench

from kpistream.contracts.wire import (
    RawMark,
    decode_customer_facts,
    decode_event_pack,
    encode_customer_facts,
    encode_event_pack,
    encode_rollup,
)
from kpistream.ingest.packing import Packer, RawRecord, with_marks
from kpistream.ingest.validate import Validator
from kpistream.settings import Settings
from kpistream.stages.aggregate import customer_facts, rollup_messages
from kpistream.state.aggregate import PartitionAggregator
from kpistream.state.customers import CustomerState
from kpistream.state.rocks import partition_stores
from kpistream.state.rollup import RollupState
from kpistream.state.store import DictPackLog

RAW_PARTITIONS = 6  # per input topic, as engine_bench creates them
EDGE_BATCH = 2_000  # raw records per edge batch


def run(events: int, campaigns: int, channels: int, store: str) -> dict[str, float]:
    """CPU seconds of each step over ``events`` events."""
    settings = Settings(clock="event", state_store=store,
                        data_dir=tempfile.mkdtemp(prefix="pipeline-cost-"))
    try:
        return _run(settings, events, campaigns, channels)
    finally:
        shutil.rmtree(settings.data_dir, ignore_errors=True)


def _run(settings: Settings, events: int, campaigns: int,
         channels: int) -> dict[str, float]:
    stores = partition_stores(settings)
    partitions = settings.partitions
    now = int(time.time() * 1000)
    topic_of = {kind: topic for topic, kind in settings.input_topics.items()}
    offsets: dict[tuple[str, int], int] = defaultdict(int)
    raw = []
    for i, record in enumerate(engine_bench.traffic(7, events, campaigns, channels, now)):
        coords = (topic_of[record.kind], i % RAW_PARTITIONS)
        raw.append(RawRecord(*coords, offsets[coords], None, orjson.dumps(record.value)))
        offsets[coords] += 1
    raw_partitions = RAW_PARTITIONS * len(settings.input_topics)
    packer = Packer(Validator(settings), settings.input_topics, partitions,
                    settings.pack_max_bytes, settings.retention_ms)
    aggregator = PartitionAggregator(settings, DictPackLog(), stores.ids)
    rollup = RollupState(settings, DictPackLog(), hold_for_alerts=False)
    customers = CustomerState(settings, DictPackLog(), stores.customers)
    cpu: dict[str, float] = defaultdict(float)
    newest: dict[tuple[str, int], int] = {}
    next_offset: dict[tuple[str, int], int] = defaultdict(int)
    last_sent: dict[int, dict[int, tuple[object, ...]]] = defaultdict(dict)
    last_marks: dict[int, dict[int, tuple[int, int]]] = defaultdict(dict)

    def lap(step: str, started: float) -> float:
        now_cpu = time.process_time()
        cpu[step] += now_cpu - started
        return now_cpu

    gc.collect()
    gc.set_threshold(*settings.gc_thresholds)  # the worker's (cli.tune_gc)
    for start in range(0, len(raw), EDGE_BATCH):
        t = time.process_time()
        batch = packer.pack(raw[start:start + EDGE_BATCH], now, raw_partitions, newest)
        for coords, ts in batch.newest.items():
            newest[coords] = max(ts, newest.get(coords, ts))
        last = start + EDGE_BATCH >= len(raw)
        marks = [RawMark(topic, p, newest.get((topic, p)), last, offsets[(topic, p)])
                 for topic in settings.input_topics for p in range(RAW_PARTITIONS)]
        packed = {p: [encode_event_pack(pack) for pack in packs] for p, packs in
                  with_marks(batch, marks, partitions, raw_partitions, True, {}).items()}
        t = lap("edge: validate, pack, encode", t)
        for p, datas in packed.items():
            items = []
            for data in datas:
                items.append((next_offset["events", p], decode_event_pack(data)))
                next_offset["events", p] += 1
            t = lap("aggregate: decode packs", t)
            result = aggregator.process(p, items, now)
            t = lap("aggregate: de-duplicate, cancel, add to buckets", t)
            to_rollup = [(q, encode_rollup(message)) for q, message in
                         rollup_messages(p, result, partitions, last_sent[p]).items()]
            to_customers = [(r, encode_customer_facts(facts)) for r, facts in
                            customer_facts(p, result, partitions, last_marks[p]).items()]
            t = lap("aggregate: roll-up messages, customer facts", t)
            for q, data in to_rollup:
                rollup.apply(q, next_offset["rollup", q], data, now)
                next_offset["rollup", q] += 1
                rollup.expire(q, now)  # as the roll-up agent does after each batch
            t = lap("roll-up: apply", t)
            for r, data in to_customers:
                customers.process(r, [(next_offset["customers", r],
                                       decode_customer_facts(data))], now)
                next_offset["customers", r] += 1
            t = lap("customer stage", t)
    return dict(cpu)


def instructions(events: int, campaigns: int, channels: int, store: str) -> float:
    """Instructions per event: callgrind's count of a run of ``events`` minus one of a
    third as many, over the difference in events."""
    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (apt-get install valgrind)")
    counts = []
    sizes = (events // 3, events)
    for n in sizes:
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
             sys.executable, __file__, "--events", str(n), "--campaigns", str(campaigns),
             "--channels", str(channels), "--store", store, "--quiet"],
            capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONHASHSEED": "0"})
        found = re.search(r"Collected : (\d+)", out.stderr)
        if found is None:
            raise SystemExit(f"no instruction count in callgrind's output:\n{out.stderr}")
        counts.append(int(found.group(1)))
    return (counts[1] - counts[0]) / (sizes[1] - sizes[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=None,
                        help="events (default 100,000; 6,000 with --instructions)")
    parser.add_argument("--campaigns", type=int, default=50)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--store", choices=("memory", "rocksdb"), default="memory")
    parser.add_argument("--instructions", action="store_true",
                        help="count instructions per event under callgrind")
    parser.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.instructions:
        events = args.events or 6_000
        per_event = instructions(events, args.campaigns, args.channels, args.store)
        print(f"{per_event:,.0f} instructions per event ({events:,} events, "
              f"{args.campaigns} campaigns, state in {args.store})")
        return 0
    events = args.events or 100_000
    cpu = run(events, args.campaigns, args.channels, args.store)
    if not args.quiet:
        for step, seconds in cpu.items():
            print(f"{step:50s} {seconds / events * 1e6:7.1f} µs/event")
        print(f"{'total':50s} {sum(cpu.values()) / events * 1e6:7.1f} µs/event")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

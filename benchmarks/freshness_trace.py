"""Where a row's freshness goes: engine_bench's freshness run (live traffic at RATE events/s,
60 probe orders, each of a campaign of its own, produce -> row in Redis), then each probe
found again in the Kafka records it caused, by their CreateTime:

- input -> packed record on the internal events topic (the edge gathered, validated, packed);
- packed record -> the first roll-up message carrying the probe's campaign row (the
  aggregate waited for more packed records, applied the batch, sent the bucket values);
- roll-up message -> row in Redis (the roll-up waited and applied it, then the publisher's
  next pass wrote it): the probe's total minus the two above.

    python benchmarks/freshness_trace.py [RATE]      (default 4080, half of one worker)

Extra ``KPISTREAM_*`` variables in the environment go to the worker (A/B of a setting).
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Sequence

import engine_bench
from aiokafka import AIOKafkaConsumer, TopicPartition
from engine_bench import Deployment, end_offsets

from kpistream.contracts.records import Order
from kpistream.contracts.wire import decode_event_pack, decode_rollup

PROBE = "probe-"
CAMPAIGN_FIELD = b'"campaign_id":"' + PROBE.encode()


def probe_of_input(value: bytes) -> int | None:
    if CAMPAIGN_FIELD not in value:
        return None
    return int(value.split(CAMPAIGN_FIELD)[1].split(b'"')[0])


def probes_of_pack(value: bytes) -> list[int]:
    return [int(body.campaign_id[len(PROBE):]) for _, body in decode_event_pack(value).items
            if isinstance(body, Order) and body.campaign_id.startswith(PROBE)]


def probes_of_rollup(value: bytes) -> list[int]:
    return [int(v.group[len(PROBE):]) for v in decode_rollup(value).values
            if v.dimension == "campaign" and v.group.startswith(PROBE)]


async def first_seen(bootstrap: str, ends: dict[tuple[str, int], int],
                     kind: str) -> dict[int, int]:
    """Per probe, the CreateTime of the first record (up to ``ends``) that carries it."""
    seen: dict[int, int] = {}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(t, p) for (t, p), end in ends.items() if end > 0]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        left = {tp: ends[(tp.topic, tp.partition)] for tp in partitions}
        while left:
            for tp, messages in (await consumer.getmany(timeout_ms=1000)).items():
                for message in messages:
                    if kind == "input":
                        probe = probe_of_input(message.value)
                        found = [] if probe is None else [probe]
                    else:
                        found = (probes_of_pack if kind == "edge" else probes_of_rollup)(
                            message.value)
                    for probe in found:
                        seen.setdefault(probe, message.timestamp)
                    if message.offset >= left.get(tp, 0) - 1:
                        left.pop(tp, None)
    finally:
        await consumer.stop()
    return seen


def quantiles(name: str, values: Sequence[float]) -> str:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(len(ordered) * q))]  # noqa: E731
    return (f"{name:<24} p50 {pick(0.5):6.0f} ms  p90 {pick(0.9):6.0f} ms  "
            f"max {ordered[-1]:6.0f} ms")


def main(rate: float) -> None:
    dep = Deployment(f"bench-trace-{uuid.uuid4().hex[:6]}", "127.0.0.1:9092",
                     "redis://127.0.0.1:6379/0")
    dep.create_topics()
    dep.start_worker()
    time.sleep(8)  # the worker is up and assigned, as in engine_bench.freshness
    try:
        delays = asyncio.run(engine_bench._freshness(dep, rate, 40.0, 60))
        settings = dep.settings
        produced = asyncio.run(first_seen(
            dep.bootstrap, end_offsets(dep.bootstrap, [settings.topic_orders]), "input"))
        packed = asyncio.run(first_seen(
            dep.bootstrap, end_offsets(dep.bootstrap, [settings.topic_events]), "edge"))
        rolled = asyncio.run(first_seen(
            dep.bootstrap, end_offsets(dep.bootstrap, [settings.topic_rollup]), "rollup"))
    finally:
        dep.remove()
    probes = [i for i in range(len(delays)) if i in produced and i in packed and i in rolled]
    print(f"{len(probes)} of {len(delays)} probes traced at {rate:,.0f} events/s")
    print(quantiles("input -> packed", [packed[i] - produced[i] for i in probes]))
    print(quantiles("packed -> roll-up", [rolled[i] - packed[i] for i in probes]))
    print(quantiles("roll-up -> Redis", [delays[i] * 1000 - (rolled[i] - produced[i])
                                         for i in probes]))
    print(quantiles("total", [delays[i] * 1000 for i in probes]))


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 4080.0)

"""Issue 10 acceptance on the real broker and Redis: customer profiles over several days.

A 3½-day stream (replay clock) with duplicates, cancellations (of first orders too, and of
orders long expired), out-of-order orders and returning customers: every Redis row and every
profile hash equals the reference, attribution costs included for the two days the low
watermark has made final; the last message per key of ``customer-profiles`` equals the hash;
and in the topic's whole history a customer's attribution costs only ever grow by final days
(``costed_orders`` and ``marketing_cost`` never fall, ``acquisition_cost`` never changes once
published). With 1 worker, and with 3 workers one of which is SIGKILLed mid-stream."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import time
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from harness import (
    Deployment,
    assert_profiles_exact,
    expected_profiles,
    normalise,
    row_mismatches,
    wait_for_rows,
)

from kpistream import reference
from kpistream.generator.traffic import HOUR_MS, Record, TrafficConfig, TrafficGenerator

pytestmark = pytest.mark.integration
DAY_MS = 24 * HOUR_MS
SETTLE_S = 150.0


def multi_day_stream(seed: int) -> tuple[int, list[Record]]:
    """3½ days from a UTC midnight five days ago: days 0 and 1 are final at the end (their
    end + 24h05m is before the last event), days 2 and 3 are not, none near the boundary."""
    now = int(time.time() * 1000)
    midnight = now - now % DAY_MS - 5 * DAY_MS
    config = TrafficConfig(seed=seed, start_ms=midnight, duration_ms=3 * DAY_MS + 12 * HOUR_MS,
                           orders_per_hour=250, campaigns=8, survey_ratio=0.3,
                           cancel_ratio=0.03, delayed_ratio=0.02, duplicate_ratio=0.02,
                           spend_every_min=10)
    return midnight, list(TrafficGenerator(config).records())


def profile_history(bootstrap: str, topic: str) -> dict[str, list[dict[str, Any] | None]]:
    """Every message of the topic, per key in offset order (a key lives on one partition)."""
    async def read() -> dict[str, list[dict[str, Any] | None]]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                    enable_auto_commit=False)
        await consumer.start()
        out: dict[str, list[dict[str, Any] | None]] = {}
        try:
            cluster = await consumer._client.fetch_all_metadata()
            partitions = [TopicPartition(topic, p)
                          for p in sorted(cluster.partitions_for_topic(topic) or [])]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            while any([await consumer.position(tp) < end for tp, end in ends.items()]):
                batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
                for messages in batch.values():
                    for message in messages:
                        out.setdefault((message.key or b"").decode(), []).append(
                            None if message.value is None else orjson.loads(message.value))
        finally:
            await consumer.stop()
        return out
    return asyncio.run(read())


def assert_costs_only_grow(history: dict[str, list[dict[str, Any] | None]]) -> int:
    """Costs published for a final day never change: per customer, ``costed_orders`` and
    ``marketing_cost`` never fall and ``acquisition_cost`` keeps its first published value
    (until a tombstone: every order of the customer cancelled, the profile deleted). Returns
    how many customers are costed in their last message."""
    costed = 0
    for customer, messages in history.items():
        previous: dict[str, Any] | None = None
        acquisition = None
        for message in messages:
            if message is None:  # its orders all cancelled: a new profile may start later
                previous = acquisition = None
                continue
            if previous is not None:
                assert message["costed_orders"] >= previous["costed_orders"], customer
                assert message["marketing_cost"] >= previous["marketing_cost"] - 1e-9, customer
            if message["acquisition_cost"] is not None:
                if acquisition is None:
                    acquisition = message["acquisition_cost"]
                assert math.isclose(message["acquisition_cost"], acquisition,
                                    rel_tol=1e-12), customer
            elif acquisition is not None:
                raise AssertionError(f"{customer}: acquisition_cost published, then withdrawn")
            previous = message
        costed += bool(previous and previous["costed_orders"])
    return costed


def run(dep: Deployment, workers: int, kill: bool) -> None:
    settings = dep.settings
    _, recs = multi_day_stream(seed=31)
    outcome = reference.classify(normalise(settings, recs, int(time.time() * 1000)),
                                 retention_ms=settings.retention_ms)
    expected = expected_profiles(settings, outcome)
    # The stream must hold what the acceptance names: costed customers, unknown orders from
    # cancellations of expired orders, first orders cancelled, returning customers.
    assert sum(1 for p in expected.values() if p.get("acquisition_cost") is not None) > 50
    assert sum(1 for p in expected.values() if p["costed_orders"] == 0
               and p["orders"] > 0) > 50  # customers of the days not final yet
    assert len(outcome.unknown_orders) > 20
    assert sum(1 for p in expected.values() if p["orders"] > 1) > 50
    procs = [dep.start_worker()[0] for _ in range(workers)]
    half = len(recs) // 2
    dep.produce(recs[:half])
    if kill:
        time.sleep(6)
        victim = procs[0]
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        dep.workers.remove(victim)
    dep.produce(recs[half:])
    if kill:
        dep.start_worker()

    def alive() -> None:
        for proc in dep.workers:
            assert proc.poll() is None, f"worker {proc.pid} exited with {proc.returncode}"

    rows = wait_for_rows(settings.redis_url.get_secret_value(), settings.redis_prefix, outcome,
                         SETTLE_S, alive=alive)
    problems = row_mismatches(rows, outcome)
    assert not problems, f"{len(problems)} row mismatches, e.g. {problems[:10]}"
    assert_profiles_exact(settings, outcome, expected, timeout_s=SETTLE_S)
    history = profile_history(settings.kafka_bootstrap, settings.topic_customer_profiles)
    assert assert_costs_only_grow(history) == sum(
        1 for p in expected.values() if p["costed_orders"])


# Windows without a 1-minute STEP of an hour: no alert detector, so the roll-up holds no
# bucket for it, and attribution days are folded while their buckets expire (the buckets
# expired within watermark_settle of the watermark passing them were lost from their days).
NO_ALERTS = {"KPISTREAM_WINDOWS": "5m/10s,24h/15m"}


# make test runs the 3-worker SIGKILL variant and the 1-worker one without alerts (1 worker
# with alerts: make soak, for CI time; profiles with 1 worker on a 2-hour stream are in
# test_engine_exactness).
@pytest.mark.parametrize(("workers", "kill", "extra"), [
    pytest.param(1, False, {}, marks=pytest.mark.soak), (3, True, {}), (1, False, NO_ALERTS)],
    ids=["1-worker", "3-workers-sigkill", "1-worker-no-alerts"])
def test_multi_day_profiles_and_attribution_equal_the_reference(
        deployment, workers: int, kill: bool, extra: dict[str, str]) -> None:
    run(deployment(KPISTREAM_CLOCK="event", **extra), workers, kill)

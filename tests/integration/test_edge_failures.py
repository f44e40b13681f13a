"""Issue 13: a worker whose edge reader cannot work exits non-zero within 30 s, naming the
cause, instead of looking healthy while reading nothing: no broker at start, an input topic
deleted under it. (An authorisation error needs a broker with ACLs: issue 11's secured
stack.)"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from harness import LOG_DIR, Deployment, free_port

from kpistream.generator.traffic import Record, TrafficConfig, TrafficGenerator

pytestmark = pytest.mark.integration


def test_broker_unreachable_at_start_exits_non_zero_naming_the_cause(stack) -> None:
    dep = Deployment(f"nobroker-{uuid.uuid4().hex[:6]}", f"127.0.0.1:{free_port()}",
                     stack.redis_url)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "kpistream", "worker"],
                          env={**os.environ, **dep.env, "KPISTREAM_WEB_PORT": str(free_port())},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert time.monotonic() - started < 30
    assert "cannot reach Kafka at 127.0.0.1" in proc.stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_input_topic_deleted_under_running_workers_exits_naming_it(stack, workers) -> None:
    """With two workers the deletion rebalances the edge group, and a metadata request of
    the rebalance creates the topic again at once (the broker's auto.create.topics.enable):
    each worker must still exit, naming it, rather than read the new, empty topic."""
    dep = Deployment(f"deltopic-{uuid.uuid4().hex[:6]}", stack.bootstrap, stack.redis_url)
    dep.create_topics()
    topic = dep.settings.topic_surveys
    procs = [dep.start_worker()[0] for _ in range(workers)]
    try:
        now = int(time.time() * 1000)
        dep.produce(TrafficGenerator(TrafficConfig(
            seed=5, start_ms=now - 20 * 60_000, duration_ms=20 * 60_000,
            orders_per_hour=6000)).records())
        time.sleep(12)  # up, reading and committing
        assert all(proc.poll() is None for proc in procs)
        asyncio.run(delete_topic(stack.bootstrap, topic))
        deleted = time.monotonic()
        while any(p.poll() is None for p in procs) and time.monotonic() - deleted < 40:
            time.sleep(0.5)
        assert all(proc.poll() not in (None, 0) for proc in procs)
        assert time.monotonic() - deleted < 30
        for n in range(1, workers + 1):
            log = (LOG_DIR / f"{dep.name}-{n}.log").read_text()
            assert (f"input topics missing: ['{topic}']" in log
                    or f"input topic '{topic}' was deleted under the worker" in log), log[-2000:]
    finally:
        dep.stop()


async def delete_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()


def test_a_record_the_broker_refuses_stops_the_worker_naming_the_cause(stack) -> None:
    """A dead letter larger than its topic allows (an operator lowered max.message.bytes) is
    refused by the broker for good: the worker exits non-zero naming it, rather than going
    on with state its changelogs may not hold (kpistream.outbox). The record is one the
    aggregate stage dead-letters (a cancellation of an order never placed), not the edge: a
    failed agent used to be restarted by faust's supervisor, leaving a worker that looked
    healthy while every later flush failed."""
    dep = Deployment(f"refused-{uuid.uuid4().hex[:6]}", stack.bootstrap, stack.redis_url)
    dep.create_topics()
    asyncio.run(limit_message_bytes(stack.bootstrap, dep.settings.topic_dlq, 64))
    proc, _ = dep.start_worker()
    try:
        time.sleep(10)  # up and reading
        assert proc.poll() is None
        dep.produce([Record("order", {"order_id": "never-placed", "status": "cancelled",
                                      "ts": int(time.time() * 1000)})])
        produced = time.monotonic()
        while proc.poll() is None and time.monotonic() - produced < 40:
            time.sleep(0.5)
        assert proc.poll() not in (None, 0)
        log = (LOG_DIR / f"{dep.name}-1.log").read_text()
        assert "records could not be delivered to Kafka" in log
        assert "MessageSizeTooLarge" in log
    finally:
        dep.remove()


async def limit_message_bytes(bootstrap: str, topic: str, limit: int) -> None:
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic,
                                                  configs={"max.message.bytes": str(limit)})])
    finally:
        await admin.close()

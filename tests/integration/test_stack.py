"""The local real-services stack itself: Kafka and Redis answer real client requests, and
``stack.sh`` is idempotent."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

pytestmark = pytest.mark.integration

STACK_SH = Path(__file__).resolve().parents[2] / "deploy" / "local" / "stack.sh"


def run_stack(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(STACK_SH), *args], env={**os.environ, "PY": sys.executable},
                          capture_output=True, text=True, timeout=300)


def test_kafka_answers_a_metadata_request_listing_a_broker(stack) -> None:
    async def brokers() -> int:
        client = AIOKafkaClient(bootstrap_servers=stack.bootstrap)
        await client.bootstrap()
        try:
            metadata = await client.fetch_all_metadata()
            return len(metadata.brokers())
        finally:
            await client.close()

    assert asyncio.run(brokers()) == 1


def test_kafka_round_trips_a_message_on_a_fresh_topic(stack, fresh_names) -> None:
    topic = f"test-stack-{fresh_names}"

    async def round_trip() -> tuple[bytes | None, bytes | None]:
        admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        finally:
            await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"hello", key=b"k")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=stack.bootstrap,
                                    group_id=f"test-stack-{fresh_names}",
                                    auto_offset_reset="earliest")
        await consumer.start()
        try:
            msg = await asyncio.wait_for(consumer.getone(), timeout=60)
            return msg.key, msg.value
        finally:
            await consumer.stop()
            admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap)
            await admin.start()
            try:
                await admin.delete_topics([topic])
            finally:
                await admin.close()

    assert asyncio.run(round_trip()) == (b"k", b"hello")


def test_redis_answers_set_and_get(stack, fresh_names) -> None:
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    key = f"test-stack:{fresh_names}"
    try:
        assert client.ping()
        assert client.set(key, "value", ex=60)
        assert client.get(key) == "value"
    finally:
        client.delete(key)
        client.close()


def test_second_up_succeeds_and_reuses_both_services(stack) -> None:
    done = run_stack("up")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for service in ("kafka", "redis"):
        reused = [ln for ln in lines if ln.startswith(f"[stack] {service}:") and "reusing" in ln]
        assert reused, done.stdout


def test_status_shows_both_up(stack) -> None:
    done = run_stack("status")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "kafka: up" in done.stdout, done.stdout
    assert "redis: up" in done.stdout, done.stdout

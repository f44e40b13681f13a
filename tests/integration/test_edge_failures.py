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


def test_input_topic_deleted_under_a_running_worker_exits_naming_it(stack) -> None:
    dep = Deployment(f"deltopic-{uuid.uuid4().hex[:6]}", stack.bootstrap, stack.redis_url)
    dep.create_topics()
    proc, _ = dep.start_worker()
    try:
        time.sleep(10)  # up and reading
        assert proc.poll() is None
        asyncio.run(delete_topic(stack.bootstrap, dep.settings.topic_surveys))
        deleted = time.monotonic()
        while proc.poll() is None and time.monotonic() - deleted < 40:
            time.sleep(0.5)
        assert proc.poll() not in (None, 0)
        assert time.monotonic() - deleted < 30
        log = (LOG_DIR / f"{dep.name}-1.log").read_text()
        assert f"input topics missing: ['{dep.settings.topic_surveys}']" in log
    finally:
        dep.stop()


async def delete_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()

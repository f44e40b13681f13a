"""Issue 6 acceptance: `make demo` through its real entry point, for a short time: rows
appear in Redis within 30 s, `kpistream top` renders them, and stopping leaves no process of
the demo behind."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import redis
from harness import ROOT, free_port

pytestmark = pytest.mark.integration


def demo_processes(app_id: str) -> list[int]:
    """Pids whose environment carries this demo's app id."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if f"KPISTREAM_APP_ID={app_id}".encode() in environ.split(b"\0"):
            found.append(int(proc.name))
    return found


def test_make_demo_shows_rows_and_stops_cleanly(stack) -> None:
    name = f"demo-{uuid.uuid4().hex[:6]}"
    prefix = f"kpi-{name}"
    env = {**os.environ, "KPISTREAM_APP_ID": name, "KPISTREAM_REDIS_PREFIX": prefix,
           "KPISTREAM_TOPIC_ORDERS": f"orders-{name}",
           "KPISTREAM_TOPIC_AD_SPEND": f"ad-spend-{name}",
           "KPISTREAM_TOPIC_SURVEYS": f"survey-responses-{name}",
           "KPISTREAM_TOPIC_EVENTS": f"events-{name}", "KPISTREAM_TOPIC_ROLLUP": f"rollup-{name}",
           "KPISTREAM_TOPIC_CUSTOMERS": f"customers-{name}",
           "KPISTREAM_TOPIC_CUSTOMER_PROFILES": f"profiles-{name}",
           "KPISTREAM_TOPIC_KPI_UPDATES": f"kpi-updates-{name}",
           "KPISTREAM_TOPIC_DLQ": f"dlq-{name}", "KPISTREAM_TOPIC_ALERTS": f"alerts-{name}",
           "KPISTREAM_DATA_DIR": str(ROOT / ".local" / "worker-data" / name),
           "DEMO_PORTS": f"{free_port()} {free_port()}", "DEMO_SECONDS": "25",
           "DEMO_BACKFILL": "10m", "DEMO_TOP_DELAY": "1"}
    started = time.monotonic()
    demo = subprocess.Popen(["make", "--no-print-directory", "demo"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    first_row = None
    try:
        while time.monotonic() - started < 30:
            if client.exists(f"{prefix}:1h:all:all"):
                first_row = time.monotonic() - started
                break
            time.sleep(0.5)
        assert first_row is not None, "no row in Redis within 30 s of `make demo`"
        output, _ = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGINT)
            demo.wait(timeout=60)
    text = output.decode(errors="replace")
    assert demo.returncode == 0, text[-3000:]
    assert "kpistream — live KPI rows" in text
    assert "campaign" in text and "cmp-" in text
    assert "[demo] stopped" in text
    time.sleep(1)
    assert demo_processes(name) == [], "the demo left processes running"
    assert client.hget(f"{prefix}:1h:all:all", "orders") is not None

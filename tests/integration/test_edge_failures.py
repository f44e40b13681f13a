"""Issue 13: a worker whose edge reader cannot work exits non-zero within 30 s, naming the
cause, instead of looking healthy while reading nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest
from harness import Deployment, free_port

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

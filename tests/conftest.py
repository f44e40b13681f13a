"""Shared fixtures. Integration tests use the real local stack, started (or reused) by the
project's own script; it is left running afterwards because it may have been up before the
tests (``make down`` stops it)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent / "integration"))


@dataclass(frozen=True)
class Stack:
    bootstrap: str
    redis_url: str


@pytest.fixture(scope="session")
def stack() -> Stack:
    kafka_port = os.environ.get("KAFKA_PORT", "9092")
    redis_port = os.environ.get("REDIS_PORT", "6379")
    subprocess.run([str(ROOT / "deploy/local/stack.sh"), "up"], check=True,
                   env={**os.environ, "PY": sys.executable})
    return Stack(f"127.0.0.1:{kafka_port}", f"redis://127.0.0.1:{redis_port}/0")

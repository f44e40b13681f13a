"""Shared fixtures.

Integration tests (tests/integration, marked ``integration``) use the real local stack: the
``stack`` fixture runs ``deploy/local/stack.sh up`` once per session, which reuses Kafka and
Redis when they already answer and starts them otherwise. The stack is deliberately NOT torn
down at the end of the session: it may have been up before the tests started (another
session, ``make demo``), and ``up`` is cheap when it is. Stop it with ``make down``.

Tests share one broker and one Redis, so each one names its own topics, app ids (consumer
groups) and Redis key prefixes with the ``fresh_names`` suffix.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parents[1]

# `make test` (and so CI) runs the same examples every time: a property test that found a
# new counterexample in a CI run made a green change red for a bug it did not touch (the
# engine bug is fixed, and its case kept as an @example). Exploring new examples is a
# deliberate act: `HYPOTHESIS_PROFILE=explore make unit` draws fresh ones (and more, where a
# test does not set its own max_examples).
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", max_examples=1_000, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
STACK_SH = ROOT / "deploy" / "local" / "stack.sh"
sys.path.insert(0, str(Path(__file__).resolve().parent / "integration"))


@dataclass(frozen=True)
class Stack:
    bootstrap: str  # Kafka bootstrap servers, e.g. "127.0.0.1:9092"
    redis_url: str  # e.g. "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def stack() -> Stack:
    """The running local stack (started or reused; left running afterwards, see above)."""
    kafka_port = os.environ.get("KAFKA_PORT", "9092")
    redis_port = os.environ.get("REDIS_PORT", "6379")
    done = subprocess.run([str(STACK_SH), "up"], env={**os.environ, "PY": sys.executable},
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"deploy/local/stack.sh up failed ({done.returncode}):\n"
                    f"{done.stdout}\n{done.stderr}", pytrace=False)
    return Stack(f"127.0.0.1:{kafka_port}", f"redis://127.0.0.1:{redis_port}/0")


@pytest.fixture
def fresh_names() -> str:
    """A unique suffix per test (8 hex digits) for topic names, app ids and Redis prefixes."""
    return uuid.uuid4().hex[:8]

"""Fixtures of the integration tests (the ``stack`` fixture is in tests/conftest.py)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from harness import CREATED, LOG_DIR, Deployment

# A failed test's report carries each of its workers' warnings and rebalances (CI prints the
# report, not the log files), capped per worker; timer overlaps are noise there.
LOG_LINES_ON_FAILURE = 60
LOG_MARKS = ("[WARNING]", "[ERROR]", "[CRITICAL]", "newly assigned", "Revoking", "restored")
LOG_NOISE = ("is overlapping",)


@pytest.fixture
def deployment(stack: Any, request: pytest.FixtureRequest,
               ) -> Iterator[Callable[..., Deployment]]:
    """Factory of isolated deployments (own topics, consumer group, Redis prefix); every
    worker they started is stopped at the end of the test."""
    made: list[Deployment] = []
    request.node.deployments = made

    def make(partitions: dict[str, int] | None = None, **extra: str) -> Deployment:
        # Kafka topic names allow only [A-Za-z0-9._-]: a short parametrised test's id
        # brackets fell within the first 18 characters and made the topics invalid.
        prefix = re.sub(r"[^A-Za-z0-9.-]", "-", request.node.name[:18])
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        dep = Deployment(name, stack.bootstrap, stack.redis_url, extra=extra)
        dep.create_topics(partitions)
        made.append(dep)
        return dep

    yield make
    for dep in made:
        dep.stop()


@pytest.fixture(autouse=True)
def remove_deployments() -> Iterator[None]:
    """Every deployment a test created topics for is stopped and its topics deleted after
    the test, so the broker does not slow down as the run goes on."""
    yield
    while CREATED:
        CREATED.pop().remove()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None],
                              ) -> Iterator[None]:
    outcome: Any = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    for dep in getattr(item, "deployments", ()):
        for n in range(1, dep.started + 1):
            path = LOG_DIR / f"{dep.name}-{n}.log"
            if not path.exists():
                continue
            lines = [line for line in path.read_text(errors="replace").splitlines()
                     if any(m in line for m in LOG_MARKS)
                     and not any(m in line for m in LOG_NOISE)]
            report.sections.append((f"worker log {path.name} (last {LOG_LINES_ON_FAILURE} "
                                    "warnings and rebalances)",
                                    "\n".join(lines[-LOG_LINES_ON_FAILURE:])))

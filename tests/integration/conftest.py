"""Fixtures of the integration tests (the ``stack`` fixture is in tests/conftest.py)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from harness import CREATED, Deployment


@pytest.fixture
def deployment(stack: Any, request: pytest.FixtureRequest,
               ) -> Iterator[Callable[..., Deployment]]:
    """Factory of isolated deployments (own topics, consumer group, Redis prefix); every
    worker they started is stopped at the end of the test."""
    made: list[Deployment] = []

    def make(**extra: str) -> Deployment:
        name = f"{request.node.name[:18]}-{uuid.uuid4().hex[:6]}".replace("_", "-")
        dep = Deployment(name, stack.bootstrap, stack.redis_url, extra=dict(extra))
        dep.create_topics()
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

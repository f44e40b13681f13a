"""What every stage shares: configuration, topics, tables, metrics, the outbox and the clock.

Kept apart from :mod:`kpistream.app` (which wires the stages) so a stage imports this module
and never the app, and the import graph has no cycle.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import faust
from prometheus_client import CollectorRegistry

from kpistream.admin import PACKED_MAX_MESSAGE_BYTES
from kpistream.observability.metrics import Metrics
from kpistream.outbox import Outbox
from kpistream.settings import Settings
from kpistream.state.rocks import PartitionStores
from kpistream.state.tables import Tables


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Topics:
    """faust topics of the stages (raw input topics are read by the edge, not by faust)."""

    events: faust.TopicT
    rollup: faust.TopicT
    customers: faust.TopicT

    @classmethod
    def declare(cls, app: faust.App, settings: Settings) -> Topics:
        def topic(name: str) -> faust.TopicT:
            return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw",
                             value_serializer="raw", partitions=settings.partitions,
                             internal=True,
                             config={"max.message.bytes": str(PACKED_MAX_MESSAGE_BYTES)})

        return cls(events=topic(settings.topic_events), rollup=topic(settings.topic_rollup),
                   customers=topic(settings.topic_customers))


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    topics: Topics
    tables: Tables
    metrics: Metrics
    registry: CollectorRegistry
    outbox: Outbox
    now_ms: Callable[[], int]
    stores: PartitionStores

"""What every stage shares: configuration, topics, tables, metrics, the outbox and the clock.

Kept apart from :mod:`kpistream.app` (which wires the stages) so a stage imports this module
and never the app, and the import graph has no cycle.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

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


# How often a waiting rebuild looks whether the aggregate's is done (RebuildOrder.pause).
REBUILD_WAIT_S = 0.02


class RebuildOrder:
    """The aggregate's rebuilds go before the roll-up's and the customer stage's.

    After an assignment (a restart above all) every stage rebuilds its partitions on the
    worker's one Python thread, in steps. A new event's row waits for its aggregate
    partition and then its roll-up partition, its profile for the aggregate's and then the
    customer stage's; the other stages' rebuilds wait for nothing the aggregate does. With
    the three interleaved, a new event waited for nearly all of them: on a wiped restart of
    2 million events, the probe order was packed 15 s after the start and through the
    aggregate at 43 s (docs/benchmarks.md). So the other stages' rebuild steps pause while
    the aggregate is rebuilding; nothing the aggregate's rebuild needs waits on them."""

    def __init__(self) -> None:
        self.leading = 0  # aggregate rebuilds under way

    def lead(self, steps: Iterator[None]) -> Iterator[None]:
        """The aggregate's rebuild steps, marked as under way while they run."""
        self.leading += 1
        try:
            yield from steps
        finally:
            self.leading -= 1

    async def pause(self) -> None:
        """Between two steps of another stage's rebuild: let the event loop run, and wait
        while the aggregate is rebuilding."""
        await asyncio.sleep(0)
        while self.leading:
            await asyncio.sleep(REBUILD_WAIT_S)


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
    rebuilds: RebuildOrder = field(default_factory=RebuildOrder)

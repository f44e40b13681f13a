"""The faust application: topics, tables and agents registered from their feature modules.

``create_app`` is a factory (not a module-level app) so tests and several workers in one
process can each have their own settings and metrics registry.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import faust
from faust.sensors.prometheus import setup_prometheus_sensors
from prometheus_client import CollectorRegistry

from kpistream.admin import DLQ_MAX_MESSAGE_BYTES
from kpistream.observability.metrics import Metrics
from kpistream.outbox import Outbox
from kpistream.settings import Settings, parse_duration_ms
from kpistream.state.tables import Tables


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Topics:
    raw: faust.TopicT
    events: faust.TopicT
    rollup: faust.TopicT
    dlq: faust.TopicT
    kpi_updates: faust.TopicT
    alerts: faust.TopicT

    @classmethod
    def declare(cls, app: faust.App, settings: Settings) -> Topics:
        def topic(*names: str, internal: bool = False,
                  config: dict[str, str] | None = None) -> faust.TopicT:
            return app.topic(*names, key_type=bytes, value_type=bytes, key_serializer="raw",
                             value_serializer="raw", partitions=settings.partitions,
                             internal=internal, config=config)

        return cls(
            raw=topic(*settings.input_topics),
            events=topic(settings.topic_events, internal=True),
            rollup=topic(settings.topic_rollup, internal=True),
            dlq=topic(settings.topic_dlq),
            kpi_updates=topic(settings.topic_kpi_updates, config={"cleanup.policy": "compact"}),
            alerts=topic(settings.topic_alerts),
        )


@dataclass(frozen=True)
class Runtime:
    """What the agents share: configuration, topics, tables, metrics and the clock."""

    settings: Settings
    topics: Topics
    tables: Tables
    metrics: Metrics
    registry: CollectorRegistry
    outbox: Outbox
    now_ms: Callable[[], int]


def create_app(settings: Settings | None = None,
               now_ms: Callable[[], int] = wall_clock_ms) -> faust.App:
    settings = settings or Settings()
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap.split(",")],
        store="memory://",
        autodiscover=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication,
        topic_disable_leader=True,
        table_standby_replicas=0,
        consumer_auto_offset_reset="earliest",
        processing_guarantee="at_least_once",
        web_host=settings.web_host,
        web_port=settings.web_port,
        datadir=settings.data_dir,
        stream_buffer_maxsize=max(4096, settings.batch_size * 2),
        broker_session_timeout=parse_duration_ms(settings.session_timeout) / 1000,
        producer_max_request_size=DLQ_MAX_MESSAGE_BYTES,
    )
    registry = CollectorRegistry()
    setup_prometheus_sensors(app, registry=registry, name_prefix="faust")
    # faust's "faust_events_runtime_ms" breaks the exposition rules (`promtool check metrics`:
    # no abbreviated units); it is kept out of /metrics, the rest of faust's sensors stay.
    registry.unregister(cast(Any, app.monitor)._metrics.events_runtime_latency)
    outbox = Outbox(app)
    runtime = Runtime(settings, Topics.declare(app, settings),
                      Tables.declare(app, settings, outbox), Metrics.create(registry), registry,
                      outbox, now_ms)
    from kpistream.ingest.agents import register as register_ingest
    from kpistream.kpi.agents import register as register_kpi

    register_ingest(app, runtime)
    register_kpi(app, runtime)
    app.kpistream = runtime  # type: ignore[attr-defined]

    return app

"""The faust application: builds the app and wires the stages; no logic of its own.

``create_app`` is a factory (not a module-level app) so tests and several workers in one
process can each have their own settings and metrics registry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import faust
from faust.sensors.prometheus import setup_prometheus_sensors
from prometheus_client import CollectorRegistry

from kpistream.admin import DLQ_MAX_MESSAGE_BYTES
from kpistream.alerts.engine import alerts_enabled
from kpistream.connections import faust_broker_credentials, web_middlewares, web_ssl_context
from kpistream.observability.metrics import Metrics
from kpistream.outbox import Outbox
from kpistream.runtime import Runtime, Topics, wall_clock_ms
from kpistream.settings import Settings, parse_duration_ms
from kpistream.stages import aggregate, customers, edge, publish, recovery, rollup
from kpistream.stages.offsets import worker_consumer
from kpistream.state.rocks import partition_stores
from kpistream.state.rollup import RollupState
from kpistream.state.tables import Tables

# Records each agent's stream may hold unprocessed (faust's stream_buffer_maxsize, 4096 by
# default). Ours are packed, up to hundreds of KB each: while the edge is ahead, 4096 of them
# per agent held ~115 MB of the heap (memray, 300,000 events); 256 cut peak RSS by 45 MB with
# the same rate and restart time (docs/benchmarks.md). faust stops fetching a partition whose
# buffer is under pressure, so a smaller buffer only waits earlier.
STREAM_BUFFER_RECORDS = 256

__all__ = ["create_app", "wall_clock_ms"]


def create_app(settings: Settings | None = None,
               now_ms: Callable[[], int] = wall_clock_ms) -> faust.App:
    settings = settings or Settings()
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap.split(",")],
        broker_credentials=faust_broker_credentials(settings),
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
        web_ssl_context=web_ssl_context(settings),
        web_application_options={"middlewares": web_middlewares(settings)},
        datadir=settings.data_dir,
        stream_buffer_maxsize=STREAM_BUFFER_RECORDS,
        consumer_max_fetch_size=settings.consumer_fetch_partition_bytes,
        broker_session_timeout=parse_duration_ms(settings.session_timeout) / 1000,
        broker_commit_interval=1.0,
        producer_max_request_size=DLQ_MAX_MESSAGE_BYTES,
        producer_request_timeout=parse_duration_ms(settings.producer_request_timeout) / 1000,
        producer_compression_type=(None if settings.kafka_compression == "none"
                                   else settings.kafka_compression),
    )
    # a commit that does not stall on an offset acknowledged twice, and fetches that do not
    # hold records back for faust's 1.5 s (stages/offsets.py)
    cast(Any, app.transport).Consumer = worker_consumer(settings.fetch_max_wait_ms)
    registry = CollectorRegistry()
    setup_prometheus_sensors(app, registry=registry, name_prefix="faust")
    # faust's "faust_events_runtime_ms" breaks the exposition rules (`promtool check metrics`:
    # no abbreviated units); it is kept out of /metrics, the rest of faust's sensors stay.
    registry.unregister(cast(Any, app.monitor)._metrics.events_runtime_latency)
    outbox = Outbox(app)
    stores = partition_stores(settings)
    runtime = Runtime(settings, Topics.declare(app, settings),
                      Tables.declare(app, settings, outbox, stores.table_data),
                      Metrics.create(registry), registry, outbox, now_ms, stores)
    readers: list[edge.EdgeReader] = []

    @app.service
    class Edge(edge.EdgeReader):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(runtime, app.crash, **kwargs)
            readers.append(self)

    aggregator = aggregate.register(app, runtime)
    customer_state = customers.register(app, runtime)
    rollup_state = RollupState(settings, runtime.tables.rollup,
                               hold_for_alerts=alerts_enabled(settings))
    rollup.register(app, runtime, rollup_state)
    publish.register(app, runtime, rollup_state, aggregator, customer_state, readers)
    recovery.register(app, runtime)
    app.kpistream = runtime  # type: ignore[attr-defined]
    return app

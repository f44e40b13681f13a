"""Stages 2-4 on faust: aggregate per events partition, roll up per row, publish.

- ``aggregate`` consumes the internal events topic in batches, applies them through the pure
  :class:`~kpistream.state.aggregate.PartitionAggregator`, sends each touched bucket's
  absolute value to the roll-up topic keyed by row, and broadcasts the partition's stream
  time to every roll-up partition.
- ``rollup`` keeps the latest value per (row, window, bucket, source partition).
- a timer publishes the rows of the roll-up partitions this worker owns, once per
  ``publish_interval``; rows of a partition are only published after its tables recovered.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any, cast

import faust
import orjson
from faust.types import TP

from kpistream.alerts.engine import AlertEngine
from kpistream.app import Runtime
from kpistream.contracts.records import Event, Source, decode_event
from kpistream.ingest.dead_letter import dlq_record
from kpistream.kpi.rows import RowChange, RowPublisher
from kpistream.observability.logs import RateLimitedLog
from kpistream.sinks.alerts import AlertSink
from kpistream.sinks.prometheus import KpiCollector
from kpistream.sinks.redis import RedisRowSink
from kpistream.state.aggregate import NO_TIME, BucketUpdate, PartitionAggregator
from kpistream.state.offsets import OffsetLedger, split_contiguous
from kpistream.state.rollup import RollupState

logger = logging.getLogger(__name__)
SWEEP_EVERY_S = 5.0
WATERMARK = "wm"


def register(app: faust.App, runtime: Runtime) -> None:
    settings, topics, tables, metrics, outbox = (
        runtime.settings, runtime.topics, runtime.tables, runtime.metrics, runtime.outbox)
    aggregator = PartitionAggregator(settings, tables.ids, tables.partials, tables.clock)
    state = RollupState(settings, tables.rollup, tables.watermarks)
    publisher = RowPublisher(settings, state)
    log = RateLimitedLog(logger, settings.log_interval_s)
    ledger = OffsetLedger(tables.offsets)
    owned: set[int] = set()  # roll-up partitions whose cache is built and published
    redis_sink = RedisRowSink(settings, metrics, lambda: publisher.snapshot(set(owned)))
    alert_engine = AlertEngine(settings, state, tables.alerts)
    alert_sink = AlertSink(settings, metrics, outbox)
    if not alert_engine.enabled:
        logger.warning("alerts disabled: no window with a 1m STEP of at least 1h, or no "
                       "window named %r (alert_baseline_window)",
                       settings.alert_baseline_window)
    needs_rebuild = [True]
    runtime.registry.register(KpiCollector(lambda: publisher.current_rows(set(owned)),
                                           settings.prometheus_max_groups, metrics))

    def assigned(topic: str) -> set[int]:
        return {tp.partition for tp in app.consumer.assignment() if tp.topic == topic}

    @app.agent(topics.events, name="kpistream.aggregate")
    async def aggregate(stream: Any) -> None:
        async for batch in stream.take_events(settings.batch_size, settings.batch_within_s):
            now = runtime.now_ms()
            seeks: list[tuple[TP, int]] = []
            by_partition: dict[int, list[tuple[int, Event, Source]]] = defaultdict(list)
            for event in batch:
                decoded, source = decode_event(event.message.value)
                by_partition[event.message.partition].append(
                    (event.message.offset, decoded, source))
            for partition, all_items in by_partition.items():
                count, seek_to = split_contiguous(
                    [item[0] for item in all_items],
                    ledger.expected(settings.topic_events, partition))
                items = all_items[:count]
                if seek_to is not None:
                    log.warning("input_gap_seek_back", topic=settings.topic_events,
                                partition=partition, offset=seek_to)
                    seeks.append((TP(settings.topic_events, partition), seek_to))
                if not items:
                    continue
                ledger.advance(settings.topic_events, partition, items[-1][0])
                result = aggregator.process(partition, items, now)
                for verdict in result.verdicts:
                    source = verdict.source
                    if verdict.outcome in ("late", "unknown_order"):
                        metrics.events.labels(
                            source.topic, "late" if verdict.outcome == "late" else "invalid"
                        ).inc()
                        detail = ("ts is older than stream time minus retention"
                                  if verdict.outcome == "late"
                                  else f"order_id: no order {verdict.event.id!r} is known")
                        log.warning("input_rejected", error=verdict.outcome,
                                    topic=source.topic, partition=source.partition)
                        outbox.send(
                            settings.topic_dlq,
                            source.key.encode() if source.key is not None else None,
                            dlq_record(verdict.outcome, detail, source, now))
                        continue
                    metrics.events.labels(source.topic, verdict.outcome).inc()
                    if verdict.outcome == "accepted":
                        metrics.event_delay.observe(max(0, now - verdict.event.ts) / 1000)
                for (dimension, group), updates in result.updates.items():
                    outbox.send(settings.topic_rollup, orjson.dumps([dimension, group]),
                                orjson.dumps([partition, dimension, group,
                                              [[u.window, u.bucket, u.offset, *u.sums]
                                               for u in updates]]))
                if result.stream_time != NO_TIME:
                    mark = orjson.dumps([WATERMARK, partition, result.stream_time])
                    for q in range(settings.partitions):
                        outbox.send(settings.topic_rollup, None, mark, q)
            await outbox.flush()
            await seek_back(seeks)

    @app.agent(topics.rollup, name="kpistream.rollup")
    async def rollup(stream: Any) -> None:
        async for batch in stream.take_events(settings.batch_size, settings.batch_within_s):
            now = runtime.now_ms()
            seeks: list[tuple[TP, int]] = []
            by_partition: dict[int, list[Any]] = defaultdict(list)
            for event in batch:
                by_partition[event.message.partition].append(event)
            for q, events in by_partition.items():
                count, seek_to = split_contiguous(
                    [e.message.offset for e in events],
                    ledger.expected(settings.topic_rollup, q))
                if seek_to is not None:
                    log.warning("input_gap_seek_back", topic=settings.topic_rollup,
                                partition=q, offset=seek_to)
                    seeks.append((TP(settings.topic_rollup, q), seek_to))
                for event in events[:count]:
                    body = orjson.loads(event.message.value)
                    if body[0] == WATERMARK:
                        state.apply_watermark(q, body[1], body[2])
                        continue
                    source, dimension, group, updates = body
                    state.apply_updates(q, source, (dimension, group), [
                        BucketUpdate(u[0], u[1], u[2], tuple(u[3:])) for u in updates], now)
                if count:
                    ledger.advance(settings.topic_rollup, q, events[count - 1].message.offset)
            await outbox.flush()
            await seek_back(seeks)

    async def seek_back(seeks: list[tuple[TP, int]]) -> None:
        for tp, offset in seeks:
            await app.consumer.seek(tp, offset)

    async def on_recovered() -> None:
        needs_rebuild[0] = True

    tables.rollup_table.on_recover(on_recovered)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: faust.App, revoked: set[TP], **_: Any) -> None:
        lost = {tp.partition for tp in revoked if tp.topic == settings.topic_rollup}
        owned.difference_update(lost)
        state.drop(lost)
        publisher.forget(lost)

    last_sweep = [0.0]

    @app.timer(settings.publish_interval_ms / 1000)  # type: ignore[untyped-decorator]
    async def publish() -> None:
        recovery = cast(Any, app.tables).recovery
        if app.rebalancing or app.in_recovery or not recovery.completed.is_set():
            return
        current = assigned(settings.topic_rollup)
        if needs_rebuild[0] or current != owned:
            # Recovery finished: derive the cache of every owned partition from its table.
            state.drop(owned - current)
            publisher.forget(owned - current)
            state.rebuild(current)
            owned.clear()
            owned.update(current)
            needs_rebuild[0] = False
        now = runtime.now_ms()
        if now / 1000 - last_sweep[0] >= SWEEP_EVERY_S:
            last_sweep[0] = now / 1000
            for q in owned:
                state.sweep(q, now)
            for p in assigned(settings.topic_events):
                aggregator.sweep(p, now)
            update_lag()
        changes = publisher.tick(set(owned), now)
        transitions = alert_engine.run(set(owned), now)
        times = [state.stream_time(q, now) for q in owned]
        if times and max(times) != NO_TIME:
            metrics.stream_time.set(max(times) / 1000)
        await alert_sink.write([t.transition.message for t in transitions])
        alert_sink.export_active({("cpo_spike", dimension, group)
                                  for (dimension, group), _ in alert_engine.firing(owned)})
        await write_sinks(changes)

    def update_lag() -> None:
        """Consumer lag per partition: end offset minus committed offset (faust has no lag
        gauge of its own)."""
        consumer = app.consumer
        for tp in consumer.assignment():
            end = consumer.highwater(tp)
            committed = cast(Any, consumer)._committed_offset.get(tp)
            if end is not None:
                metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                    max(0, end - (committed or 0)))

    async def write_sinks(changes: list[RowChange]) -> None:
        for change in changes:
            key = f"{change.window}|{change.dimension}|{change.group}".encode()
            value = orjson.dumps(change.message) if change.message is not None else None
            outbox.send(settings.topic_kpi_updates, key, value)
        metrics.rows_published.inc(len(changes))
        await outbox.flush()
        await redis_sink.write(changes)

    @app.service
    class RedisLifecycle(faust.Service):
        async def on_stop(self) -> None:
            await redis_sink.close()
            await alert_sink.close()

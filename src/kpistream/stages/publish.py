"""Stage 4: a timer that publishes the rows of the roll-up partitions this worker owns, runs
the CPO spike detector behind the low watermark, and sweeps expired state. It fires every
``publish_check_interval``: once per ``publish_interval`` a full tick (every row, alerts,
sweeps), in between only the changed rows not published within the interval
(:meth:`~kpistream.kpi.rows.RowPublisher.quiet_changes`). A second timer, once per
``publish_interval``, publishes the changed customer profiles with sinks of its own, so that
rows never wait for profiles.

A roll-up partition is published only once its state is loaded from the recovered table, and
forgotten at once when revoked, so each row is exported by exactly one worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from functools import partial
from typing import Any, cast

import faust

from kpistream.alerts.detector import ALERT, KINDS
from kpistream.alerts.engine import AlertEngine
from kpistream.connections import redis_client
from kpistream.contracts.wire import (
    COUNTS_PARTITION,
    NO_TIME,
    CampaignDayCost,
    CustomerFacts,
    encode_customer_facts,
)
from kpistream.exceptions import DeliveryError
from kpistream.kpi.profiles import ProfileChange, build_profile
from kpistream.kpi.rows import RowPublisher
from kpistream.observability.metrics import (
    EventCountCollector,
    LagCollector,
    StateSizeCollector,
)
from kpistream.runtime import Runtime
from kpistream.sinks.alerts import RedisAlertSink
from kpistream.sinks.base import Publication, SinkSet
from kpistream.sinks.kafka import KafkaOutputSink
from kpistream.sinks.profiles import RedisProfileSink
from kpistream.sinks.prometheus import KpiCollector, PrometheusSink
from kpistream.sinks.redis import CHUNK as PROFILE_CHUNK
from kpistream.sinks.redis import RedisRowSink
from kpistream.stages.edge import EdgeReader
from kpistream.state.aggregate import PartitionAggregator
from kpistream.state.customers import CustomerState
from kpistream.state.rollup import RollupState

logger = logging.getLogger(__name__)
SWEEP_EVERY_S = 5.0


def register(app: faust.App, runtime: Runtime, state: RollupState,
             aggregator: PartitionAggregator, customers: CustomerState,
             edge: list[EdgeReader]) -> None:
    settings, tables, metrics, outbox = (runtime.settings, runtime.tables, runtime.metrics,
                                         runtime.outbox)
    publisher = RowPublisher(settings, state)
    owned: set[int] = set()  # roll-up partitions whose state is loaded and published
    redis = redis_client(settings)  # one connection pool for every Redis sink of the worker
    # Redis rows and alerts before Kafka: the Kafka sink's flush waits for the acks of all
    # the worker's queued records (the outbox is shared with the agents' changelog writes),
    # and rows waited for it on their way to Redis.
    kafka_sink = KafkaOutputSink(settings, outbox)
    alert_sink = RedisAlertSink(settings, redis)
    sinks = SinkSet([
        PrometheusSink(metrics),
        RedisRowSink(settings, redis, lambda: publisher.snapshot(set(owned))),
        alert_sink,
        kafka_sink,
    ], metrics, settings.log_interval_s)
    # Profiles have sinks and a timer of their own: built and written in the rows' tick,
    # a second's ~2,000 changed profiles held every row behind them (the tick took 0.3-1.6 s
    # at 2,961 events/s, and the rows changed meanwhile waited for it: freshness p99 4.5 s).
    profile_kafka_sink = KafkaOutputSink(settings, outbox)
    profile_sink = RedisProfileSink(settings, redis)
    profile_sinks = SinkSet([profile_kafka_sink, profile_sink], metrics,
                            settings.log_interval_s)
    alert_engine = AlertEngine(settings, state, tables.alerts)
    for kind in KINDS:  # a series per kind from the start, at 0
        metrics.alerts.labels(ALERT, kind)
    if not alert_engine.enabled:
        logger.warning("alerts disabled: no window with a 1m STEP of at least 1h, or no "
                       "window named %r or of that size (alert_baseline_window)",
                       settings.alert_baseline_window)
    runtime.registry.register(KpiCollector(lambda: publisher.current_rows(set(owned)),
                                           settings.prometheus_max_groups,
                                           handing_over=lambda: bool(app.rebalancing)))

    def assigned(topic: str) -> set[int]:
        return {tp.partition for tp in app.consumer.assignment() if tp.topic == topic}

    def event_counts() -> dict[tuple[str, str], int] | None:
        return state.event_counts(COUNTS_PARTITION) if COUNTS_PARTITION in owned else None

    def judged() -> int:
        return sum(sum(aggregator.counts(p).values()) for p in assigned(settings.topic_events))

    runtime.registry.register(EventCountCollector(event_counts, judged, settings.input_topics))

    def state_sizes() -> dict[tuple[str, str], int]:
        sizes = dict.fromkeys((("aggregate", "ids"), ("aggregate", "buckets"),
                               ("aggregate", "packs"), ("rollup", "rows"),
                               ("rollup", "values"), ("rollup", "messages"),
                               ("customers", "customers"), ("customers", "packs")), 0)
        for p in assigned(settings.topic_events):
            held = aggregator.parts.get(p)
            if held is not None:
                sizes["aggregate", "ids"] += len(held.ids)
                sizes["aggregate", "buckets"] += len(held.buckets)
                sizes["aggregate", "packs"] += len(held.packs)
        for r in assigned(settings.topic_customers):
            part = customers.parts.get(r)
            if part is not None:
                sizes["customers", "customers"] += len(part.customers)
                sizes["customers", "packs"] += len(part.refs)
        for q in set(owned):
            sizes["rollup", "rows"] += len(state.cache.get(q, ()))
            log = state.logs.get(q)
            if log is not None:
                sizes["rollup", "values"] += log.values
                sizes["rollup", "messages"] += len(log.messages)
        return sizes

    runtime.registry.register(StateSizeCollector(state_sizes))

    def lag() -> list[tuple[str, str, int, int]]:
        consumer = app.consumer
        committed_map = cast(Any, consumer)._committed_offset
        out = []
        # Changelog partitions are assigned too, but only read during recovery and never
        # committed: their "lag" is not lag.
        processed = {settings.topic_events, settings.topic_rollup, settings.topic_customers}
        for tp in consumer.assignment():
            end = consumer.highwater(tp)
            if end is not None and tp.topic in processed:
                out.append((settings.app_id, tp.topic, tp.partition,
                            max(0, end - (committed_map.get(tp) or 0))))
        for reader in edge:
            out.extend((settings.edge_group_id, topic, partition, value)
                       for topic, partition, value in reader.lag())
        return out

    runtime.registry.register(LagCollector(lag))

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: faust.App, revoked: set[Any], **_: Any) -> None:
        lost = {tp.partition for tp in revoked if tp.topic == settings.topic_rollup}
        owned.difference_update(lost)
        state.drop(lost)
        publisher.forget(lost)

    last_sweep = [0.0]

    def profile_changes(now: int) -> Iterator[list[ProfileChange]]:
        """Profiles of the customers partitions this worker owns that changed since the last
        tick (a partition publishes once its state is loaded, all of it at first), up to
        profile_publish_batch, built a sink chunk at a time. They are taken at once: taking
        a chunk at a time sorted a partition's changed customers every time (a million
        profiles reached Redis 625 s after the last event instead of 184)."""
        # Republishing waits while a partition is being rebuilt: it costs about as much as
        # the rebuild, and new changes (published at once) come through it.
        taken = customers.take_changes(sorted(assigned(settings.topic_customers)),
                                       settings.profile_publish_batch, now,
                                       republish=not customers.rebuilding)
        cost_of = {r: partial(customers.cost_of, customers.parts[r]) for r, _, _ in taken}
        for i in range(0, len(taken), PROFILE_CHUNK):
            yield [ProfileChange(customer, None if record is None else
                                 build_profile(customer, record, now, cost_of[r],
                                               settings.customer_retention_ms))
                   for r, customer, record in taken[i:i + PROFILE_CHUNK]]

    publishing = asyncio.Lock()  # held by a rows tick
    profiling = asyncio.Lock()  # held by a profiles tick: a stop's snapshot waits for it
    last_tick = [-float("inf")]  # now_ms of the last full tick

    @app.timer(settings.publish_check_interval_ms / 1000)  # type: ignore[untyped-decorator]
    async def publish() -> None:
        async with publishing:
            if not publishable():
                return  # (a stopping worker's producer may be closed already)
            now = runtime.now_ms()
            if now - last_tick[0] >= settings.publish_interval_ms:
                last_tick[0] = now
                await publish_tick(now)
            else:
                await publish_quiet_changes(now)

    @app.timer(settings.publish_interval_ms / 1000)  # type: ignore[untyped-decorator]
    async def publish_profiles() -> None:
        """The changed profiles, built a chunk at a time with a pause between chunks, in
        which the agents and the rows' timer run (20,000 profiles built at once held the
        event loop for about a second), then flushed once: a flush per chunk made a million
        profiles reach Redis 279 s after the last event instead of 176 s
        (docs/benchmarks.md). Every profile taken is written: a change taken is no longer
        among the partition's changes."""
        async with profiling:
            if not publishable():
                return
            for changes in profile_changes(runtime.now_ms()):
                profile_sinks.write(Publication(profiles=changes))
                await asyncio.sleep(0)
            await profile_sinks.flush()
            if profile_kafka_sink.idle() and profile_sink.idle():
                customers.published(assigned(settings.topic_customers))

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def leave_customer_snapshots(sender: faust.App, **_: Any) -> None:
        """A graceful stop leaves each customers partition's state for the next start on
        this disk: once the tick under way has written its profiles (those not taken yet are
        in the snapshot: none is lost, and a restart need not publish every profile again)
        and every changelog record is acknowledged (a snapshot is never ahead of the
        changelog). faust sends this once its streams are empty; no tick starts after."""
        async with profiling:
            try:
                await outbox.flush()
            except DeliveryError as exc:
                logger.warning("customer_snapshots_skipped error=%r", exc)
                return
            saved = customers.save_snapshots()
        logger.info("customer_snapshots_saved partitions=%s", saved)

    def publishable() -> bool:
        recovery = cast(Any, app.tables).recovery
        return not (app.should_stop or app.rebalancing or app.in_recovery
                    or not recovery.completed.is_set())

    def firing_now() -> frozenset[tuple[str, str, str]]:
        return frozenset(("cpo_spike", dimension, group)
                         for (dimension, group), _ in alert_engine.firing(owned))

    async def publish_quiet_changes(now: int) -> None:
        """Between full ticks: rows new or quiet for a publish_interval go out at once."""
        current = {q for q in owned & assigned(settings.topic_rollup) if state.loaded(q)}
        changes = publisher.quiet_changes(current, now)
        if changes:
            sinks.write(Publication(changes, firing=firing_now()))
            await sinks.flush()

    async def publish_tick(now: int) -> None:
        current = assigned(settings.topic_rollup)
        for q in owned - current:
            state.drop([q])
            publisher.forget({q})
            alert_engine.forget({q})
        for q in current:
            for _ in state.loading(q, now):  # in steps: a large rebuild takes seconds
                await asyncio.sleep(0)
        # (a rebalance may have come meanwhile: publish what is still ours and whole)
        current = {q for q in current & assigned(settings.topic_rollup) if state.loaded(q)}
        owned.clear()
        owned.update(current)
        if now / 1000 - last_sweep[0] >= SWEEP_EVERY_S:
            last_sweep[0] = now / 1000
            sent: dict[int, list[CampaignDayCost]] = {}
            for q in owned:
                state.sweep(q, now)
                for seq in state.take_dead(q):
                    tables.rollup.delete(q, seq)
                costs = sent[q] = state.final_costs(q)
                if costs:  # every customer partition may hold orders of these days
                    data = encode_customer_facts(CustomerFacts(settings.partitions + q,
                                                               costs=costs))
                    for r in range(settings.partitions):
                        outbox.send(settings.topic_customers, None, data, r)
            if any(sent.values()):
                await outbox.flush()
                for q, costs in sent.items():
                    state.costs_sent(q, costs)
            for p in assigned(settings.topic_events):
                aggregator.sweep(p, now)
            for r in assigned(settings.topic_customers):
                customers.sweep(r, now)
        for reader in edge:
            await reader.refresh_committed()  # only partitions it does not know yet
        changes = publisher.tick(set(owned), now)
        transitions = alert_engine.run(set(owned), now)
        times = [state.stream_time(q, now) for q in owned]
        if times and max(times) != NO_TIME:
            metrics.stream_time.set(max(times) / 1000)
        sinks.write(Publication(changes, [t.transition.message for t in transitions],
                                firing_now()))
        await sinks.flush()
        if kafka_sink.idle() and alert_sink.idle():  # (the transitions' sinks)
            alert_engine.save()

    @app.service
    class SinkLifecycle(faust.Service):
        async def on_start(self) -> None:
            await sinks.start()
            await profile_sinks.start()

        async def on_stop(self) -> None:
            await sinks.close()
            await profile_sinks.close()
            await redis.aclose()

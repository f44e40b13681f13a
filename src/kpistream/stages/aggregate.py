"""Stage 2 on faust: the aggregate agent on the packed events topic.

Per batch of packed records and partition: apply them through the pure
:class:`~kpistream.state.aggregate.PartitionAggregator` (one changelog record per batch),
dead-letter what it judged late or an unknown order, and send each roll-up partition one
message with the absolute values of the buckets it owns that changed, plus this partition's
event time and low mark. Everything is acknowledged before faust may commit the batch.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any, cast

import faust

from kpistream.contracts.records import Order, Survey
from kpistream.contracts.wire import (
    ALL_READ,
    COUNTS_PARTITION,
    NO_TIME,
    BucketValues,
    CustomerFacts,
    RollupMessage,
    decode_event_pack,
    encode_customer_facts,
    encode_rollup,
)
from kpistream.exceptions import DeliveryError
from kpistream.ingest.dead_letter import DeadLetters
from kpistream.ingest.packing import partition_for
from kpistream.ingest.validate import LATE, UNKNOWN_ORDER, Rejection
from kpistream.observability.logs import RateLimitedLog
from kpistream.runtime import Runtime
from kpistream.stages.offsets import gap_guard
from kpistream.state.aggregate import BatchResult, PartitionAggregator
from kpistream.state.buckets import RowId, partition_key

logger = logging.getLogger(__name__)
REJECTIONS: dict[str, Rejection] = {"late": LATE, "unknown_order": UNKNOWN_ORDER}


def row_partition(row: RowId, partitions: int) -> int:
    """Roll-up partition that owns a row."""
    return partition_for(partition_key(row), partitions)


def rollup_messages(p: int, result: BatchResult, partitions: int,
                    last_sent: dict[int, tuple[Any, ...]]) -> dict[int, RollupMessage]:
    """One message per roll-up partition with values or with new marks for it; those to
    COUNTS_PARTITION carry the partition's outcome counts, and go when they changed."""
    stamp = result.applied if result.applied is not None else -1
    messages: dict[int, RollupMessage] = {}
    values_of: dict[RowId, BucketValues] = {}  # the values of the message a row goes in
    for (row, window, bucket), sums in result.touched.items():
        values = values_of.get(row)
        if values is None:
            q = row_partition(row, partitions)
            message = messages.get(q)
            if message is None:
                message = messages[q] = RollupMessage(p, stamp, result.stream_time,
                                                      result.low_mark,
                                                      BucketValues.building(),
                                                      result.seen_time)
            values = values_of[row] = cast(BucketValues, message.values)  # built here
        values.append(window, row[0], row[1], bucket, sums)
    # The seen time only qualifies an ALL_READ low mark (state/rollup.py): a change of it
    # alone is news only then (one more message per roll-up partition per batch otherwise).
    marks = (result.stream_time, result.low_mark,
             result.seen_time if result.low_mark == ALL_READ else NO_TIME)
    counted = (*marks, tuple(sorted(result.counts.items())))
    for q in range(partitions):
        news = counted if q == COUNTS_PARTITION else marks
        if q not in messages and last_sent.get(q) != news:
            messages[q] = RollupMessage(p, stamp, result.stream_time, result.low_mark,
                                        seen_time=result.seen_time)
    for q, message in messages.items():
        if q == COUNTS_PARTITION:
            message.counts = result.counts
        last_sent[q] = counted if q == COUNTS_PARTITION else marks
    return messages


def customer_facts(p: int, result: BatchResult, partitions: int,
                   last_marks: dict[int, tuple[int, int]]) -> dict[int, CustomerFacts]:
    """The batch's customer facts, one message per customers partition (by customer id),
    plus a message with only the low mark to every partition that has not had it yet."""
    messages: dict[int, CustomerFacts] = {}
    low_mark, seen = result.customer_low_mark, result.seen_time
    for fact in result.facts:
        event = fact[3]
        customer = event.customer_id if isinstance(event, Order | Survey) else None
        if customer is not None:
            r = partition_for(customer, partitions)
            messages.setdefault(r, CustomerFacts(p, low_mark=low_mark, seen_time=seen)
                                ).facts.append(fact)
    marks = (low_mark, seen if low_mark == ALL_READ else NO_TIME)  # as in rollup_messages
    for r in range(partitions):
        if r not in messages and last_marks.get(r) != marks:
            messages[r] = CustomerFacts(p, low_mark=low_mark, seen_time=seen)
    for r in messages:
        last_marks[r] = marks
    return messages


def register(app: faust.App, runtime: Runtime) -> PartitionAggregator:
    settings, topics, metrics, outbox = (runtime.settings, runtime.topics, runtime.metrics,
                                         runtime.outbox)
    aggregator = PartitionAggregator(settings, runtime.tables.aggregate, runtime.stores.ids,
                                     runtime.stores.snapshots)
    log = RateLimitedLog(logger, settings.log_interval_s)
    dead_letters = DeadLetters(settings.topic_dlq, outbox, log)
    guard = gap_guard(app, settings.topic_events, log, settings.seek_retry_s)
    last_sent: dict[int, dict[int, tuple[Any, ...]]] = {}
    last_marks: dict[int, dict[int, tuple[int, int]]] = {}  # marks last sent to each

    def expected(p: int, now: int) -> int | None:
        return aggregator.expected(p, now)

    @app.agent(topics.events, name="kpistream.aggregate")
    async def aggregate(stream: Any) -> None:
        async for batch in stream.take_events(settings.aggregate_batch_size,
                                              settings.stage_batch_within_s):
            now = runtime.now_ms()
            parts = await guard.split(batch, partial(expected, now=now),
                                      partial(aggregator.loading, now_ms=now))
            while aggregator.restored:
                logger.info("aggregate_restored_from_snapshot partition=%d",
                            aggregator.restored.pop())
            for p, raw in parts.items():
                items = [(offset, decode_event_pack(value)) for offset, value in raw]
                result = aggregator.process(p, items, now)
                for verdict in result.verdicts:
                    rejection = REJECTIONS.get(verdict.outcome)
                    if rejection is not None:
                        dead_letters.send(rejection.error, rejection.detail, verdict.source,
                                          now)
                    elif verdict.outcome == "accepted":
                        metrics.event_delay.observe(max(0, now - verdict.event.ts) / 1000)
                marks_sent = last_marks.setdefault(p, {})
                for r, facts in customer_facts(p, result, settings.partitions,
                                               marks_sent).items():
                    outbox.send(settings.topic_customers, None, encode_customer_facts(facts), r)
                sent = last_sent.setdefault(p, {})
                for q, message in rollup_messages(p, result, settings.partitions,
                                                  sent).items():
                    outbox.send(settings.topic_rollup, None, encode_rollup(message), q)
            await outbox.flush()
            await guard.seek_back()

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def leave_snapshots(sender: faust.App, **_: Any) -> None:
        """A graceful stop leaves each partition's state for the next start on this disk
        (faust sends this once its streams are empty): only once every pack is
        acknowledged, so a snapshot is never ahead of the changelog."""
        try:
            await outbox.flush()
        except DeliveryError as exc:
            logger.warning("aggregate_snapshots_skipped error=%r", exc)
            return
        saved = aggregator.save_snapshots()
        logger.info("aggregate_snapshots_saved partitions=%s", saved)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: faust.App, revoked: set[Any], **_: Any) -> None:
        lost = {tp.partition for tp in revoked if tp.topic == settings.topic_events}
        aggregator.drop(lost)
        for p in lost:
            last_sent.pop(p, None)
            last_marks.pop(p, None)

    return aggregator

"""Stage 1: raw input topics -> validated events on the internal topic, rejects -> DLQ.

Stateless and parallel over the raw topics' partitions. Valid events are forwarded keyed by
``kind:id`` so duplicates and a cancellation land in the partition of their original, whatever
key the producer used. Forwarding is at-least-once (the outbox is flushed before a batch is
acked, so before its offsets can be committed); the aggregate stage makes that harmless.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import faust
from faust.types import TP

from kpistream.app import Runtime
from kpistream.contracts.records import EventKind, encode_event, event_key
from kpistream.ingest.dead_letter import dlq_record, source_from_message
from kpistream.ingest.validate import Rejection, Validator
from kpistream.observability.logs import RateLimitedLog
from kpistream.observability.metrics import outcome_label
from kpistream.state.offsets import OffsetLedger, split_contiguous

logger = logging.getLogger(__name__)


def register(app: faust.App, runtime: Runtime) -> None:
    settings, topics, metrics, outbox = (runtime.settings, runtime.topics, runtime.metrics,
                                         runtime.outbox)
    validator = Validator(settings)
    kinds = settings.input_topics
    log = RateLimitedLog(logger, settings.log_interval_s)
    ledger = OffsetLedger(runtime.tables.offsets)

    @app.agent(topics.raw, name="kpistream.ingest")
    async def ingest(stream: Any) -> None:
        async for batch in stream.take_events(settings.batch_size, settings.batch_within_s):
            now = runtime.now_ms()
            by_partition: dict[tuple[str, int], list[Any]] = defaultdict(list)
            for event in batch:
                by_partition[(event.message.topic, event.message.partition)].append(event)
            for (topic, partition), events in by_partition.items():
                kind = kinds.get(topic)
                if kind is None:
                    continue
                tracked = partition < settings.partitions
                count, seek_to = split_contiguous(
                    [e.message.offset for e in events],
                    ledger.expected(topic, partition) if tracked else None)
                for event in events[:count]:
                    forward(kind, event.message, now)
                if tracked and count:
                    ledger.advance(topic, partition, events[count - 1].message.offset)
                if seek_to is not None:
                    log.warning("input_gap_seek_back", topic=topic, partition=partition,
                                offset=seek_to)
                    await app.consumer.seek(TP(topic, partition), seek_to)
            await outbox.flush()

    def forward(kind: EventKind, message: Any, now: int) -> None:
        result = validator.validate(kind, message.value, now)
        source = source_from_message(message.topic, message.partition, message.offset,
                                     message.key, message.value)
        if isinstance(result, Rejection):
            metrics.events.labels(message.topic, outcome_label(result.error)).inc()
            log.warning("input_rejected", error=result.error, detail=result.detail,
                        topic=message.topic, partition=message.partition,
                        offset=message.offset)
            outbox.send(settings.topic_dlq, message.key,
                        dlq_record(result.error, result.detail, source, now))
            return
        outbox.send(settings.topic_events, event_key(result).encode(),
                    encode_event(result, source))

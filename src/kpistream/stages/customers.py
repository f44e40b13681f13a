"""Stage 2b on faust: the customer agent on the customers topic, keyed by customer.

Applies each batch of customer facts through the pure
:class:`~kpistream.state.customers.CustomerState` (one changelog record per batch), sends each
roll-up partition the absolute first-order counts that changed (as source ``partitions + r``)
and, once everything is acknowledged, tombstones the changelog records no longer current.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any, cast

import faust

from kpistream.contracts.wire import (
    ALL_READ,
    NO_TIME,
    BucketValues,
    RollupMessage,
    decode_customer_facts,
    encode_rollup,
)
from kpistream.observability.logs import RateLimitedLog
from kpistream.runtime import Runtime
from kpistream.stages.aggregate import row_partition
from kpistream.stages.offsets import gap_guard
from kpistream.state.customers import CustomerResult, CustomerState

logger = logging.getLogger(__name__)


def customer_rollup_messages(r: int, result: CustomerResult,
                             partitions: int) -> dict[int, RollupMessage]:
    """One message per roll-up partition whose rows' first-order counts changed."""
    stamp = result.applied if result.applied is not None else -1
    messages: dict[int, RollupMessage] = {}
    for row, updates in result.updates.items():
        q = row_partition(row, partitions)
        message = messages.get(q)
        if message is None:
            message = messages[q] = RollupMessage(partitions + r, stamp, NO_TIME, ALL_READ,
                                                  BucketValues.building())
        values = cast(BucketValues, message.values)  # built here
        for update in updates:
            values.append(update.window, row[0], row[1], update.bucket, update.sums)
    return messages


def register(app: faust.App, runtime: Runtime) -> CustomerState:
    settings, outbox = runtime.settings, runtime.outbox
    state = CustomerState(settings, runtime.tables.customers, runtime.stores.customers,
                          runtime.stores.customer_snapshots)
    log = RateLimitedLog(logger, settings.log_interval_s)
    guard = gap_guard(app, settings.topic_customers, log, settings.seek_retry_s)

    @app.agent(runtime.topics.customers, name="kpistream.customers")
    async def customers(stream: Any) -> None:
        async for batch in stream.take_events(settings.stage_batch_size * settings.partitions,
                                              settings.stage_batch_within_s):
            now = runtime.now_ms()
            parts = await guard.split(batch, partial(state.expected, now_ms=now),
                                      partial(state.loading, now_ms=now))
            while state.restored:
                logger.info("customers_restored_from_snapshot partition=%d",
                            state.restored.pop())
            for r, raw in parts.items():
                items = [(offset, decode_customer_facts(value)) for offset, value in raw]
                result = state.process(r, items, now)
                for q, message in customer_rollup_messages(r, result,
                                                           settings.partitions).items():
                    outbox.send(settings.topic_rollup, None, encode_rollup(message), q)
            await outbox.flush()
            for r in parts:
                for seq in state.take_dead(r):
                    runtime.tables.customers.delete(r, seq)
            await guard.seek_back()

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: faust.App, revoked: set[Any], **_: Any) -> None:
        state.drop({tp.partition for tp in revoked if tp.topic == settings.topic_customers})

    return state

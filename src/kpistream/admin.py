"""Topic creation: inputs, internal topics and outputs with the configured partition count,
``kpi-updates`` compacted (SPEC.md §5). Idempotent; existing topics are left as they are."""

from __future__ import annotations

import asyncio
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError

from kpistream.connections import kafka_options
from kpistream.exceptions import KpistreamError
from kpistream.settings import Settings

logger = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 20.0  # a worker that cannot reach Kafka exits within this, naming why
DLQ_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
# Packed internal records carry up to ``pack_max_bytes`` of events (plus framing).
PACKED_MAX_MESSAGE_BYTES = 8 * 1024 * 1024


def topic_specs(settings: Settings) -> list[NewTopic]:
    plain = [settings.topic_orders, settings.topic_ad_spend, settings.topic_surveys,
             settings.topic_alerts]
    specs = [NewTopic(name, settings.partitions, settings.replication) for name in plain]
    specs += [NewTopic(name, settings.partitions, settings.replication,
                       topic_configs={"max.message.bytes": str(PACKED_MAX_MESSAGE_BYTES)})
              for name in (settings.topic_events, settings.topic_rollup,
                           settings.topic_customers)]
    # A dead letter quotes the rejected value (JSON-escaped or base64): up to several times
    # the broker's default 1 MB message limit.
    specs.append(NewTopic(settings.topic_dlq, settings.partitions, settings.replication,
                          topic_configs={"max.message.bytes": str(DLQ_MAX_MESSAGE_BYTES)}))
    specs += [NewTopic(name, settings.partitions, settings.replication,
                       topic_configs={"cleanup.policy": "compact"})
              for name in (settings.topic_kpi_updates, settings.topic_customer_profiles)]
    return specs


async def ensure_topics(settings: Settings) -> list[str]:
    """Create missing topics; returns the names created."""
    admin = AIOKafkaAdminClient(**kafka_options(settings))
    deadline = asyncio.get_running_loop().time() + CONNECT_TIMEOUT_S
    while True:
        try:
            await admin.start()
            break
        except KafkaConnectionError as exc:
            if asyncio.get_running_loop().time() >= deadline:
                raise KpistreamError(f"cannot reach Kafka at {settings.kafka_bootstrap} "
                                     f"within {CONNECT_TIMEOUT_S:.0f} s: {exc}") from exc
            await asyncio.sleep(1)
    try:
        existing = set(await admin.list_topics())
        missing = [spec for spec in topic_specs(settings) if spec.name not in existing]
        if missing:
            await admin.create_topics(missing)
        return [spec.name for spec in missing]
    finally:
        await admin.close()

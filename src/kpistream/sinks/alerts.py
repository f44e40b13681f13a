"""Alert sinks (SPEC.md §6): Kafka ``kpi-alerts``, the capped Redis stream ``kpi:alerts``,
the hash ``kpi:alert:{dimension}:{group}`` while firing, Pub/Sub ``kpi-alerts``, and the
Prometheus gauge/counter. One episode gives one ``firing`` and one ``resolved`` message."""

from __future__ import annotations

import asyncio
import logging

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from kpistream.observability.logs import RateLimitedLog
from kpistream.observability.metrics import Metrics
from kpistream.outbox import Outbox
from kpistream.settings import Settings

logger = logging.getLogger(__name__)
AlertMessage = dict[str, object]


class AlertSink:
    def __init__(self, settings: Settings, metrics: Metrics, outbox: Outbox,
                 client: aioredis.Redis) -> None:
        self.client = client
        self.settings = settings
        self.metrics = metrics
        self.outbox = outbox
        self.pending: list[AlertMessage] = []
        self.active: set[tuple[str, str, str]] = set()
        self.log = RateLimitedLog(logger, settings.log_interval_s)

    def export_active(self, firing: set[tuple[str, str, str]]) -> None:
        """Make ``kpistream_alert_active`` show exactly these (alert, dimension, group)."""
        for labels in self.active - firing:
            self.metrics.alert_active.remove(*labels)
        for labels in firing - self.active:
            self.metrics.alert_active.labels(*labels).set(1)
        self.active = set(firing)

    async def write(self, messages: list[AlertMessage]) -> None:
        prefix = self.settings.redis_prefix
        for message in messages:
            key = f"{message['dimension']}|{message['group']}".encode()
            self.outbox.send(self.settings.topic_alerts, key, orjson.dumps(message))
            if message["state"] == "firing":
                self.metrics.alerts.labels(str(message["alert"]), str(message["kind"])).inc()
        self.pending.extend(messages)
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                for message in batch:
                    body = orjson.dumps(message)
                    hash_key = f"{prefix}:alert:{message['dimension']}:{message['group']}"
                    pipe.xadd(f"{prefix}:alerts", {"alert": body},
                              maxlen=self.settings.alert_redis_stream_maxlen, approximate=True)
                    if message["state"] == "firing":
                        pipe.delete(hash_key)
                        pipe.hset(hash_key, mapping={
                            k: str(v) for k, v in message.items() if v is not None})
                    else:
                        pipe.delete(hash_key)
                    pipe.publish(self.settings.redis_alert_channel, body)
                await asyncio.wait_for(pipe.execute(), self.settings.sink_timeout_s)
        except (TimeoutError, RedisError, OSError) as exc:
            self.pending = batch + self.pending  # keep order; retried on the next tick
            self.metrics.sink_errors.labels("redis").inc()
            self.log.warning("alert_write_failed", error=str(exc) or type(exc).__name__,
                             pending=len(self.pending))

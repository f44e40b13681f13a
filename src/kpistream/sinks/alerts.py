"""Alert sink of Redis (SPEC.md §6): the capped stream ``kpi:alerts``, the hash
``kpi:alert:{dimension}:{group}`` while firing, and Pub/Sub ``kpi-alerts``. One episode gives
one ``firing`` and one ``resolved`` message; messages that could not be written are kept in
order and retried. (Kafka ``kpi-alerts`` and the Prometheus series are the Kafka and
Prometheus sinks' part of the same publication.)"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from kpistream.encoding import json_bytes
from kpistream.settings import Settings
from kpistream.sinks.base import AlertMessage, Backoff, Publication
from kpistream.sinks.redis import BACKOFF_INITIAL_S, BACKOFF_MAX_S, redis_failure


class RedisAlertSink:
    name = "redis_alerts"

    def __init__(self, settings: Settings, client: aioredis.Redis) -> None:
        self.client = client
        self.settings = settings
        self.pending: list[AlertMessage] = []
        self.backoff = Backoff(BACKOFF_INITIAL_S, BACKOFF_MAX_S)

    async def start(self) -> None:
        return None  # the row sink checks the shared client

    def write(self, publication: Publication) -> None:
        self.pending.extend(publication.alerts)

    async def flush(self) -> None:
        if not self.pending:
            return
        prefix = self.settings.redis_prefix
        batch = list(self.pending)
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                for message in batch:
                    body = json_bytes(message)
                    hash_key = f"{prefix}:alert:{message['dimension']}:{message['group']}"
                    pipe.xadd(f"{prefix}:alerts", {"alert": body},
                              maxlen=self.settings.alert_redis_stream_maxlen, approximate=True)
                    pipe.delete(hash_key)
                    if message["state"] == "firing":
                        pipe.hset(hash_key, mapping={
                            k: str(v) for k, v in message.items() if v is not None})
                    pipe.publish(self.settings.redis_alert_channel, body)
                await asyncio.wait_for(pipe.execute(), self.settings.sink_timeout_s)
        except (TimeoutError, RedisError, OSError) as exc:
            raise redis_failure(self.name, exc, self.backoff) from exc
        del self.pending[:len(batch)]
        self.backoff.reset()

    async def close(self) -> None:
        """The client is the worker's, closed by its owner."""

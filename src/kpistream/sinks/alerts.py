"""Alert sink of Redis (SPEC.md §6): the capped stream ``kpi:alerts``, the hash
``kpi:alert:{dimension}:{group}`` while firing, and Pub/Sub ``kpi-alerts``. One episode gives
one ``firing`` and one ``resolved`` message; messages that could not be written are kept in
order and retried. (Kafka ``kpi-alerts`` and the Prometheus series are the Kafka and
Prometheus sinks' part of the same publication.)"""

from __future__ import annotations

import asyncio
from typing import cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from kpistream.alerts.detector import ALERT
from kpistream.encoding import json_bytes
from kpistream.kpi.rows import decimal_text
from kpistream.settings import Settings
from kpistream.sinks.base import AlertKey, AlertMessage, Backoff, Publication
from kpistream.sinks.redis import BACKOFF_INITIAL_S, BACKOFF_MAX_S, redis_failure


class RedisAlertSink:
    """Like the row sink, a Redis that failed (and may have come back empty) gets the hash of
    every alert still firing on this worker's rows again, with the message that fired it."""

    name = "redis_alerts"

    def __init__(self, settings: Settings, client: aioredis.Redis) -> None:
        self.client = client
        self.settings = settings
        self.pending: list[AlertMessage] = []
        self.backoff = Backoff(BACKOFF_INITIAL_S, BACKOFF_MAX_S)
        self.fired: dict[tuple[str, str], AlertMessage] = {}  # (dimension, group) -> firing
        self.firing: frozenset[AlertKey] = frozenset()  # as the latest publication says
        self.needs_resync = False

    async def start(self) -> None:
        return None  # the row sink checks the shared client

    def write(self, publication: Publication) -> None:
        self.pending.extend(publication.alerts)
        self.firing = publication.firing

    def _hash_key(self, message: AlertMessage) -> str:
        return f"{self.settings.redis_prefix}:alert:{message['dimension']}:{message['group']}"

    async def flush(self) -> None:
        if not self.pending and not self.needs_resync:
            return
        batch = list(self.pending)
        # (only rows this worker still owns: a moved row's episode is its new owner's)
        resync = [message for (dimension, group), message in self.fired.items()
                  if (ALERT, dimension, group) in self.firing] if self.needs_resync else []
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                for message in resync:
                    pipe.delete(self._hash_key(message))
                    pipe.hset(self._hash_key(message), mapping=alert_hash(message))  # type: ignore[arg-type]
                for message in batch:
                    body = json_bytes(message)
                    pipe.xadd(f"{self.settings.redis_prefix}:alerts", {"alert": body},
                              maxlen=self.settings.alert_redis_stream_maxlen, approximate=True)
                    pipe.delete(self._hash_key(message))
                    if message["state"] == "firing":
                        pipe.hset(self._hash_key(message), mapping=alert_hash(message))  # type: ignore[arg-type]
                    pipe.publish(self.settings.redis_alert_channel, body)
                await asyncio.wait_for(pipe.execute(), self.settings.sink_timeout_s)
        except (TimeoutError, RedisError, OSError) as exc:
            self.needs_resync = True
            raise redis_failure(self.name, exc, self.backoff) from exc
        del self.pending[:len(batch)]
        for message in batch:
            row = (str(message["dimension"]), str(message["group"]))
            if message["state"] == "firing":
                self.fired[row] = message
            else:
                self.fired.pop(row, None)
        self.backoff.reset()
        self.needs_resync = False

    def idle(self) -> bool:
        """Every alert message written to this sink is in Redis."""
        return not self.pending

    async def close(self) -> None:
        """The client is the worker's, closed by its owner."""


def alert_hash(message: AlertMessage) -> dict[str, str]:
    """The hash form of an alert message: strings, numbers as decimals without exponent (as
    in row hashes), null fields absent."""
    return {name: value if isinstance(value, str) else decimal_text(cast(float, value))
            for name, value in message.items() if value is not None}

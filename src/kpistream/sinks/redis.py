"""Redis sink: KPI row hashes, index sets and the Pub/Sub channel (SPEC.md §5).

Each tick's changes go out in one MULTI/EXEC pipeline, so every hash is replaced atomically
(DEL + HSET: a KPI that became undefined disappears). Writes that fail are kept, coalesced
per row (only the latest change of a row matters), and retried with exponential backoff; a
write never blocks the publisher longer than ``sink_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from kpistream.kpi.rows import RowChange, hash_fields
from kpistream.observability.logs import RateLimitedLog
from kpistream.observability.metrics import Metrics
from kpistream.settings import Settings

logger = logging.getLogger(__name__)
BACKOFF_INITIAL_S = 0.25
# Short: a retry is one cheap round trip, and every row must be back soon after Redis is.
BACKOFF_MAX_S = 1.0
CHUNK = 500


def row_key(prefix: str, window: str, dimension: str, group: str) -> str:
    return f"{prefix}:{window}:{dimension}:{group}"


def index_key(prefix: str, dimension: str) -> str:
    return f"{prefix}:index:{dimension}"


class RedisRowSink:
    name = "redis"

    def __init__(self, settings: Settings, metrics: Metrics, client: aioredis.Redis,
                 snapshot: Callable[[], list[RowChange]]) -> None:
        timeout = settings.sink_timeout_s
        self.client = client
        self.prefix = settings.redis_prefix
        self.channel = settings.redis_channel
        self.timeout = timeout
        self.metrics = metrics
        self.pending: dict[tuple[str, str, str], RowChange] = {}
        self.retry_at = 0.0
        self.backoff = BACKOFF_INITIAL_S
        self.log = RateLimitedLog(logger, settings.log_interval_s)
        self.snapshot = snapshot
        self.needs_resync = False

    async def write(self, changes: list[RowChange]) -> bool:
        """Queue changes and try to write everything pending; False while Redis fails."""
        for change in changes:
            self.pending[(change.window, change.dimension, change.group)] = change
        if not self.pending and not self.needs_resync:
            return True
        if time.monotonic() < self.retry_at:
            return False
        batch = dict(self.pending)
        if self.needs_resync:
            # Redis failed: it may have restarted empty, so rewrite every live row.
            for change in self.snapshot():
                batch.setdefault((change.window, change.dimension, change.group), change)
        try:
            items = list(batch.values())
            for i in range(0, len(items), CHUNK):
                await asyncio.wait_for(self._send(items[i:i + CHUNK]), self.timeout)
        except (TimeoutError, RedisError, OSError) as exc:
            self.metrics.sink_errors.labels(self.name).inc()
            self.retry_at = time.monotonic() + self.backoff
            self.log.warning("redis_write_failed", error=str(exc) or type(exc).__name__,
                             pending=len(self.pending), retry_in_s=self.backoff)
            self.backoff = min(self.backoff * 2, BACKOFF_MAX_S)
            self.needs_resync = True
            return False
        for key, change in batch.items():
            if self.pending.get(key) is change:
                del self.pending[key]
        self.backoff = BACKOFF_INITIAL_S
        self.needs_resync = False
        return True

    async def _send(self, changes: list[RowChange]) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            for change in changes:
                key = row_key(self.prefix, change.window, change.dimension, change.group)
                index = index_key(self.prefix, change.dimension)
                pipe.delete(key)
                if change.message is not None:
                    pipe.hset(key, mapping=hash_fields(change.message))  # type: ignore[arg-type]
                if change.group_live:
                    pipe.sadd(index, change.group)
                else:
                    pipe.srem(index, change.group)
                payload = orjson.dumps(change.message if change.message is not None else {
                    "window": change.window, "dimension": change.dimension,
                    "group": change.group, "deleted": True, "schema_version": 1})
                pipe.publish(self.channel, payload)
            await pipe.execute()


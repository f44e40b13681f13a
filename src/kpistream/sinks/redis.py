"""Redis sink of rows: KPI row hashes, index sets and the Pub/Sub channel (SPEC.md §5).

Each flush goes out in MULTI/EXEC pipelines, so every hash is replaced atomically (DEL +
HSET: a KPI that became undefined disappears). Changes that could not be written are kept,
coalesced per row (only the latest change of a row matters), and retried after a short
backoff; a flush never blocks the publisher longer than ``sink_timeout``. After a failure
every live row is rewritten (Redis may have come back empty).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from kpistream.encoding import json_bytes
from kpistream.kpi.rows import RowChange, hash_fields
from kpistream.settings import Settings
from kpistream.sinks.base import Backoff, Publication, SinkUnavailable

BACKOFF_INITIAL_S = 0.25
# Short: a retry is one cheap round trip, and every row must be back soon after Redis is.
BACKOFF_MAX_S = 1.0
CHUNK = 500
RowKey = tuple[str, str, str]


def row_key(prefix: str, window: str, dimension: str, group: str) -> str:
    return f"{prefix}:{window}:{dimension}:{group}"


def index_key(prefix: str, dimension: str) -> str:
    return f"{prefix}:index:{dimension}"


def redis_failure(sink: str, exc: BaseException, backoff: Backoff) -> SinkUnavailable:
    return SinkUnavailable(sink, str(exc) or type(exc).__name__, backoff.next())


class RedisRowSink:
    name = "redis"

    def __init__(self, settings: Settings, client: aioredis.Redis,
                 snapshot: Callable[[], list[RowChange]]) -> None:
        self.client = client
        self.prefix = settings.redis_prefix
        self.channel = settings.redis_channel
        self.timeout = settings.sink_timeout_s
        self.snapshot = snapshot
        self.pending: dict[RowKey, RowChange] = {}
        self.backoff = Backoff(BACKOFF_INITIAL_S, BACKOFF_MAX_S)
        self.needs_resync = False

    async def start(self) -> None:
        try:
            await asyncio.wait_for(self.client.ping(), self.timeout)
        except (TimeoutError, RedisError, OSError) as exc:
            self.needs_resync = True
            raise redis_failure(self.name, exc, self.backoff) from exc

    def write(self, publication: Publication) -> None:
        for change in publication.rows:
            self.pending[(change.window, change.dimension, change.group)] = change

    async def flush(self) -> None:
        if not self.pending and not self.needs_resync:
            return
        batch = dict(self.pending)
        if self.needs_resync:
            for change in self.snapshot():
                batch.setdefault((change.window, change.dimension, change.group), change)
        try:
            items = list(batch.values())
            for i in range(0, len(items), CHUNK):
                await asyncio.wait_for(self._send(items[i:i + CHUNK]), self.timeout)
        except (TimeoutError, RedisError, OSError) as exc:
            self.needs_resync = True
            raise redis_failure(self.name, exc, self.backoff) from exc
        for key, change in batch.items():
            if self.pending.get(key) is change:
                del self.pending[key]
        self.backoff.reset()
        self.needs_resync = False

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
                payload = json_bytes(change.message if change.message is not None else {
                    "window": change.window, "dimension": change.dimension,
                    "group": change.group, "deleted": True, "schema_version": 1})
                pipe.publish(self.channel, payload)
            await pipe.execute()

    async def close(self) -> None:
        """The client is the worker's, closed by its owner."""

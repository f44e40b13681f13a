"""Redis sink of customer profiles (SPEC §8): one hash per customer and the sorted sets a CRM
reads its "top customers" from, overall and per segment.

Each flush reads the segment the stored profiles had (one pipelined round trip), then writes
every change in MULTI/EXEC: the hash replaced (DEL + HSET), the customer scored in the sets of
its current segment and removed from those of a segment it left; a deleted profile leaves
every set. Changes that could not be written are kept, coalesced per customer, and retried
after a short backoff; written chunks are not written again.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from kpistream.kpi.profiles import RANKINGS, ProfileChange
from kpistream.kpi.rows import hash_fields
from kpistream.settings import Settings
from kpistream.sinks.base import Backoff, Publication
from kpistream.sinks.redis import BACKOFF_INITIAL_S, BACKOFF_MAX_S, CHUNK, redis_failure


def profile_key(prefix: str, customer_id: str) -> str:
    return f"{prefix}:customer:{customer_id}"


def ranking_key(prefix: str, field: str, segment: str | None = None) -> str:
    base = f"{prefix}:customers:by_{field}"
    return base if segment is None else f"{base}:{segment}"


class RedisProfileSink:
    name = "redis-profiles"

    def __init__(self, settings: Settings, client: aioredis.Redis) -> None:
        self.client = client
        self.prefix = settings.redis_prefix
        self.timeout = settings.sink_timeout_s
        self.pending: dict[str, ProfileChange] = {}
        self.backoff = Backoff(BACKOFF_INITIAL_S, BACKOFF_MAX_S)

    async def start(self) -> None:
        return None  # the row sink checks the worker's shared client

    def write(self, publication: Publication) -> None:
        for change in publication.profiles:
            self.pending[change.customer_id] = change

    async def flush(self) -> None:
        if not self.pending:
            return
        # Each chunk leaves the pending set once written: after a failure the next flush
        # goes on where this one stopped. (Forgetting them only at the end made a backlog of
        # a million profiles rewrite its first chunks after every timeout, never finishing.)
        items = list(self.pending.items())
        try:
            for i in range(0, len(items), CHUNK):
                chunk = items[i:i + CHUNK]
                await asyncio.wait_for(self._send([change for _, change in chunk]),
                                       self.timeout)
                for key, change in chunk:
                    if self.pending.get(key) is change:
                        del self.pending[key]
        except (TimeoutError, RedisError, OSError) as exc:
            raise redis_failure(self.name, exc, self.backoff) from exc
        self.backoff.reset()

    async def _send(self, changes: list[ProfileChange]) -> None:
        prefix = self.prefix
        async with self.client.pipeline(transaction=False) as read:
            for change in changes:
                read.hget(profile_key(prefix, change.customer_id), "segment")
            stored = await read.execute()
        async with self.client.pipeline(transaction=True) as pipe:
            for change, old in zip(changes, stored, strict=True):
                customer = change.customer_id
                old_segment = old.decode() if isinstance(old, bytes) else old
                message = change.message
                segment = None if message is None else message.get("segment")
                key = profile_key(prefix, customer)
                pipe.delete(key)
                if message is not None:
                    pipe.hset(key, mapping=hash_fields(message))  # type: ignore[arg-type]
                for field in RANKINGS:
                    score = None if message is None else message.get(field)
                    if old_segment is not None and old_segment != segment:
                        pipe.zrem(ranking_key(prefix, field, old_segment), customer)
                    for target in (ranking_key(prefix, field),
                                   None if segment is None else
                                   ranking_key(prefix, field, segment)):
                        if target is None:
                            continue
                        if score is None:
                            pipe.zrem(target, customer)
                        else:
                            pipe.zadd(target, {customer: float(score)})
            await pipe.execute()

    async def close(self) -> None:
        """The client is the worker's, closed by its owner."""

"""Redis sink of customer profiles (SPEC §8): one hash per customer and the sorted sets a CRM
reads its "top customers" from, overall and per segment.

Each chunk of changes is ONE command: a Lua script (``PROFILE_SCRIPT``) gets the chunk as one
JSON argument and, per customer, reads the segment the stored profile had, replaces the hash
(DEL + HSET), scores the customer in the sets of its current segment and removes it from
those of a segment it left; a deleted profile leaves every set. A script runs atomically, as
the MULTI/EXEC it replaces did. It replaced a read round trip and seven queued commands per
customer, whose packing and replies in redis-py's pure-Python protocol code took 20 % of a
worker's samples (docs/benchmarks.md, seventh session). The ACL user needs ``+evalsha
+script|load`` (docs/security.md). Like the row sink's MULTI/EXEC it needs one Redis, not a
Cluster (the keys of a chunk are in many slots).

Changes that could not be written are kept, coalesced per customer, and retried after a short
backoff; written chunks are not written again.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from kpistream.encoding import json_bytes
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


# KEYS: none (built from the prefix, as ``profile_key`` and ``ranking_key`` do). ARGV[1]: the
# prefix; ARGV[2]: the JSON ``profile_payload``. Scores travel as strings: cjson would turn a
# number into a Lua double that ZADD formats with 14 digits.
PROFILE_SCRIPT = """
local prefix = ARGV[1]
local null = cjson.null
local payload = cjson.decode(ARGV[2])
local rankings = payload[1]
for _, change in ipairs(payload[2]) do
  local customer, segment, fields, scores = change[1], change[2], change[3], change[4]
  if segment == null then segment = nil end
  local key = prefix .. ':customer:' .. customer
  local old = redis.call('HGET', key, 'segment')
  redis.call('DEL', key)
  if fields ~= null then
    local flat = {}
    for name, value in pairs(fields) do
      flat[#flat + 1] = name
      flat[#flat + 1] = value
    end
    if #flat > 0 then redis.call('HSET', key, unpack(flat)) end
  end
  for r, ranking in ipairs(rankings) do
    local base = prefix .. ':customers:by_' .. ranking
    local score = scores[r]
    if old and old ~= segment then redis.call('ZREM', base .. ':' .. old, customer) end
    local targets = {base}
    if segment then targets[2] = base .. ':' .. segment end
    for _, target in ipairs(targets) do
      if score == null then
        redis.call('ZREM', target, customer)
      else
        redis.call('ZADD', target, score, customer)
      end
    end
  end
end
return #payload[2]
"""


def profile_payload(changes: list[ProfileChange]) -> bytes:
    """The script's argument: the ranking names, then per change ``[customer, segment,
    hash fields, [score per ranking]]`` (segment, fields and scores null when absent; a
    deleted profile has no fields)."""
    out: list[list[Any]] = []
    for change in changes:
        message = change.message
        if message is None:
            out.append([change.customer_id, None, None, [None] * len(RANKINGS)])
            continue
        scores = [message.get(field) for field in RANKINGS]
        out.append([change.customer_id, message.get("segment"), hash_fields(message),
                    [None if score is None else repr(float(score)) for score in scores]])
    return json_bytes([RANKINGS, out])


class RedisProfileSink:
    name = "redis-profiles"

    def __init__(self, settings: Settings, client: aioredis.Redis) -> None:
        self.client = client
        self.prefix = settings.redis_prefix
        self.timeout = settings.sink_timeout_s
        self.pending: dict[str, ProfileChange] = {}
        self.backoff = Backoff(BACKOFF_INITIAL_S, BACKOFF_MAX_S)
        self.script = client.register_script(PROFILE_SCRIPT)

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

    def idle(self) -> bool:
        """Every profile written to this sink is in Redis."""
        return not self.pending

    async def _send(self, changes: list[ProfileChange]) -> None:
        await self.script(args=[self.prefix, profile_payload(changes)])

    async def close(self) -> None:
        """The client is the worker's, closed by its owner."""

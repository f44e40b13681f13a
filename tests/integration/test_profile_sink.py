"""The profile sink's Lua script on the real Redis: after any sequence of changes (segment
moves, scores becoming undefined, deletions, a customer changed several times in one chunk),
every profile hash is the last message's hash form and each ranking set holds exactly the
customers whose last profile is scored in it, as SPEC §8 lays out the keys."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from kpistream.kpi.profiles import RANKINGS, ProfileChange
from kpistream.kpi.rows import hash_fields
from kpistream.settings import Settings
from kpistream.sinks.base import Publication
from kpistream.sinks.profiles import RedisProfileSink, profile_key, ranking_key

pytestmark = pytest.mark.integration
SEGMENTS = ("new", "vip", "at risk", None)


def random_message(rng: random.Random, customer: str) -> dict[str, Any] | None:
    if rng.random() < 0.15:
        return None
    return {"customer_id": customer, "segment": rng.choice(SEGMENTS),
            "orders": rng.randint(0, 5),
            "revenue": rng.choice([None, 0.0, round(rng.uniform(0, 900), 2), 0.1 + 0.2]),
            "value_ratio": rng.choice([None, rng.uniform(0, 30), 1e-7]),
            "nps_category": rng.choice([None, "promoter"]), "schema_version": 1}


def expected_state(prefix: str, last: dict[str, dict[str, Any] | None]
                   ) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, float]]]:
    hashes = {profile_key(prefix, c): hash_fields(m) for c, m in last.items() if m}
    rankings: dict[str, dict[str, float]] = {}
    for customer, message in last.items():
        if message is None:
            continue
        for field in RANKINGS:
            score = message[field]
            if score is None:
                continue
            keys = [ranking_key(prefix, field)]
            if message["segment"] is not None:
                keys.append(ranking_key(prefix, field, message["segment"]))
            for key in keys:
                rankings.setdefault(key, {})[customer] = float(score)
    return hashes, rankings


def stored_state(client: redis.Redis, prefix: str, customers: list[str]
                 ) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, float]]]:
    """Every key the sink may have written (the shared Redis is too big to scan)."""
    hashes = {profile_key(prefix, c): client.hgetall(profile_key(prefix, c)) for c in customers}
    keys = [ranking_key(prefix, field, segment) for field in RANKINGS for segment in SEGMENTS]
    rankings = {k: dict(client.zrange(k, 0, -1, withscores=True)) for k in keys}
    return ({k: v for k, v in hashes.items() if v}, {k: v for k, v in rankings.items() if v})


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_script_leaves_exactly_the_last_profiles_and_their_rankings(stack, fresh_names,
                                                                     seed: int) -> None:
    prefix = f"ps{fresh_names}"
    rng = random.Random(seed)
    customers = [f"c{i}" for i in range(40)] + ["ü-ß 7"]
    last: dict[str, dict[str, Any] | None] = {}
    sync = redis.Redis.from_url(stack.redis_url, decode_responses=True)

    async def run() -> None:
        client = aioredis.Redis.from_url(stack.redis_url)
        sink = RedisProfileSink(Settings(redis_prefix=prefix), client)
        try:
            for _ in range(12):  # flushes; the sink coalesces per customer within one
                changes = []
                for _ in range(rng.randint(1, 60)):
                    customer = rng.choice(customers)
                    message = random_message(rng, customer)
                    changes.append(ProfileChange(customer, message))
                    last[customer] = message
                sink.write(Publication([], profiles=changes))
                await sink.flush()
                assert stored_state(sync, prefix, customers) == expected_state(prefix, last)
        finally:
            await client.aclose()

    try:
        asyncio.run(run())
        assert any(m and m["segment"] for m in last.values())  # the draw moved segments
    finally:
        sync.delete(*(profile_key(prefix, c) for c in customers),
                    *(ranking_key(prefix, f, s) for f in RANKINGS for s in SEGMENTS))

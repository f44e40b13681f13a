"""The profile sink's Lua script on the real Redis: after any sequence of changes (segment
moves, scores becoming undefined, deletions, a customer changed several times in one chunk),
every profile hash is the last message's hash form and each ranking set holds exactly the
customers whose last profile is scored in it, as SPEC §8 lays out the keys."""

from __future__ import annotations

import asyncio
import os
import random
import re
import subprocess
import sys
from pathlib import Path
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


def read_only_rule(prefix: str) -> list[str]:
    """docs/security.md's rule for users of `top`, `customers` and the client."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    match = re.search(r"give them a user of their own with `([^`]+)`", text.replace("\n", " "))
    assert match, "docs/security.md lost the read-only rule"
    return [token.replace("~kpi:*", f"~{prefix}:*") for token in match.group(1).split()]


def test_customers_command_ranks_by_each_ranking_as_a_read_only_user(stack,
                                                                      fresh_names) -> None:
    """`kpistream customers --top N --by X [--segment S]` for revenue, value_ratio and orders
    (SPEC §7), and one profile by id, run as the documented read-only ACL user."""
    prefix, user, password = f"pc{fresh_names}", f"reader-{fresh_names}", "s3cret-reader"
    profiles = [
        {"customer_id": "a", "segment": "vip", "orders": 5, "revenue": 100.0,
         "value_ratio": 2.5, "marketing_cost": 40.0, "costed_orders": 5, "schema_version": 1},
        {"customer_id": "b", "segment": "vip", "orders": 1, "revenue": 300.0,
         "value_ratio": None, "marketing_cost": 0.0, "costed_orders": 0, "schema_version": 1},
        {"customer_id": "c", "segment": "new", "orders": 2, "revenue": 50.0,
         "value_ratio": 7.25, "marketing_cost": 8.0, "costed_orders": 2, "schema_version": 1},
    ]
    admin = redis.Redis.from_url(stack.redis_url, decode_responses=True)

    async def seed() -> None:
        client = aioredis.Redis.from_url(stack.redis_url)
        try:
            sink = RedisProfileSink(Settings(redis_prefix=prefix), client)
            sink.write(Publication([], profiles=[ProfileChange(p["customer_id"], p)
                                                 for p in profiles]))
            await sink.flush()
        finally:
            await client.aclose()

    def customers(*args: str) -> list[str]:
        url = stack.redis_url.replace("redis://", f"redis://{user}:{password}@")
        env = {**os.environ, "KPISTREAM_REDIS_URL": url, "KPISTREAM_REDIS_PREFIX": prefix}
        done = subprocess.run([sys.executable, "-m", "kpistream", "customers", *args], env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout.splitlines()

    def ranked(*args: str) -> list[tuple[str, str]]:
        lines = customers(*args)
        return [(line.split()[0], line.split()[-1]) for line in lines[1:]]

    asyncio.run(seed())
    admin.execute_command("ACL", "SETUSER", user, "reset", "on", f">{password}",
                          *read_only_rule(prefix))
    try:
        assert ranked("--top", "3", "--by", "revenue") == [("b", "300.00"), ("a", "100.00"),
                                                           ("c", "50.00")]
        assert ranked("--top", "3", "--by", "value_ratio") == [("c", "7.25"), ("a", "2.50")]
        assert ranked("--top", "2", "--by", "orders") == [("a", "5"), ("c", "2")]
        assert ranked("--by", "orders", "--segment", "vip") == [("a", "5"), ("b", "1")]
        shown = dict(line.split(None, 1) for line in customers("c"))
        assert shown["value_ratio"].strip() == "7.25" and shown["costed_orders"].strip() == "2"
    finally:
        admin.execute_command("ACL", "DELUSER", user)
        admin.delete(*(profile_key(prefix, p["customer_id"]) for p in profiles),
                     *(ranking_key(prefix, f, s) for f in RANKINGS for s in SEGMENTS))

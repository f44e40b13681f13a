"""A small client for services that react to KPIs.

- :func:`get_row` reads one row from Redis (the hash's own fields, never key parsing);
- :func:`kafka_updates` iterates the compacted ``kpi-updates`` topic;
- :func:`pubsub_updates` iterates the Redis Pub/Sub channel ``kpi-updates``.

Both iterators yield :class:`KpiRow` for a published row and :class:`RowDeleted` when a
row's window became empty (a Kafka tombstone, or a Pub/Sub message with ``deleted``).
Each takes either a plain URL / bootstrap string or a :class:`~kpistream.settings.Settings`
(``Settings()`` reads ``KPISTREAM_*``), which brings TLS, SASL and Redis ACL credentials.
See docs/client.md for runnable examples.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer

from kpistream.connections import kafka_options, redis_options
from kpistream.contracts.schemas import load_schema
from kpistream.kpi.catalogue import BY_NAME, KPI_FIELDS, SPEND_ALLOCATED
from kpistream.kpi.profiles import RANKINGS
from kpistream.settings import Settings
from kpistream.sinks.profiles import profile_key, ranking_key

__all__ = ["KpiRow", "RowDeleted", "get_row", "kafka_updates", "pubsub_updates"]


@dataclass(frozen=True, slots=True)
class RowDeleted:
    window: str
    dimension: str
    group: str


@dataclass(frozen=True, slots=True)
class KpiRow:
    """One published row. Undefined KPIs (SPEC §4) are ``None``."""

    window: str
    dimension: str
    group: str
    window_start: int
    window_end: int
    updated_at: int
    currency: str
    orders: int | None = None
    revenue: float | None = None
    spend: float | None = None
    cpo: float | None = None
    roas: float | None = None
    aov: float | None = None
    nps_responses: int | None = None
    promoters: int | None = None
    passives: int | None = None
    detractors: int | None = None
    nps: float | None = None
    nps_moe: float | None = None
    ces_responses: int | None = None
    ces: float | None = None
    ces_easy_pct: float | None = None
    csat_responses: int | None = None
    csat: float | None = None
    csat_transactional_responses: int | None = None
    csat_transactional: float | None = None
    new_customers: int | None = None
    cac: float | None = None
    returning_orders: int | None = None
    repeat_order_pct: float | None = None
    spend_allocated: bool = False  # segment rows: spend, cpo and roas use allocated spend
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> KpiRow:
        """From the JSON of a Kafka or Pub/Sub update."""
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in message.items() if k in known}
        extra = {k: v for k, v in message.items() if k not in known}
        return cls(**values, extra=extra)

    @classmethod
    def from_hash(cls, fields_: Mapping[str, str]) -> KpiRow:
        """From a Redis hash (decimal strings; absent means undefined)."""
        values: dict[str, Any] = {
            "window": fields_["window"], "dimension": fields_["dimension"],
            "group": fields_["group"], "window_start": int(fields_["window_start"]),
            "window_end": int(fields_["window_end"]), "updated_at": int(fields_["updated_at"]),
            "currency": fields_["currency"],
        }
        for name in KPI_FIELDS:
            if name in fields_:
                text = fields_[name]
                values[name] = int(text) if BY_NAME[name].type == "count" else float(text)
        values[SPEND_ALLOCATED] = fields_.get(SPEND_ALLOCATED) == "true"
        return cls(**values)

    @property
    def kpis(self) -> dict[str, int | float | None]:
        return {name: getattr(self, name) for name in KPI_FIELDS}


def _decode(value: bytes | None, key: bytes | None) -> KpiRow | RowDeleted:
    if value is None:
        window, dimension, group = (key or b"").decode().split("|", 2)
        return RowDeleted(window, dimension, group)
    message = orjson.loads(value)
    if message.get("deleted"):
        return RowDeleted(message["window"], message["dimension"], message["group"])
    return KpiRow.from_message(message)


def _redis(source: str | Settings, *, decode_responses: bool) -> aioredis.Redis:
    if isinstance(source, Settings):
        url, options = redis_options(source)
        return aioredis.Redis.from_url(url, decode_responses=decode_responses, **options)
    return aioredis.Redis.from_url(source, decode_responses=decode_responses)


def _kafka(source: str | Settings) -> dict[str, Any]:
    return kafka_options(source) if isinstance(source, Settings) else {
        "bootstrap_servers": source}


async def get_row(redis: str | Settings, window: str, dimension: str, group: str, *,
                  prefix: str = "kpi") -> KpiRow | None:
    """The current row from Redis, or None when it has no events in its window.
    ``redis`` is a URL or the settings (then their prefix, unless ``prefix`` is given)."""
    if isinstance(redis, Settings) and prefix == "kpi":
        prefix = redis.redis_prefix
    client = _redis(redis, decode_responses=True)
    try:
        fields_ = await client.hgetall(f"{prefix}:{window}:{dimension}:{group}")
    finally:
        await client.aclose()
    return KpiRow.from_hash({str(k): str(v) for k, v in fields_.items()}) if fields_ else None


def _json_types(schema: str) -> dict[str, str]:
    """Per property of a shipped schema, its JSON type other than null."""
    types: dict[str, str] = {}
    for name, spec in load_schema(schema)["properties"].items():
        kinds = spec.get("type", [])
        kinds = [kinds] if isinstance(kinds, str) else kinds
        types[name] = next((k for k in kinds if k != "null"), "string")
    return types


PROFILE_TYPES = _json_types("customer_profile")


def _profile_from_hash(fields_: Mapping[str, str]) -> dict[str, Any]:
    """Profile fields with their JSON types (the hash holds decimal strings)."""
    out: dict[str, Any] = {}
    for name, value in fields_.items():
        kind = PROFILE_TYPES.get(name, "string")
        out[name] = int(value) if kind == "integer" else float(value) if kind == "number" \
            else value
    return out


async def get_customer(redis: str | Settings, customer_id: str, *,
                       prefix: str = "kpi") -> dict[str, Any] | None:
    """A customer's value profile (SPEC §8) from Redis, or None when there is none; undefined
    fields are absent."""
    if isinstance(redis, Settings) and prefix == "kpi":
        prefix = redis.redis_prefix
    client = _redis(redis, decode_responses=True)
    try:
        fields_ = await client.hgetall(profile_key(prefix, customer_id))
    finally:
        await client.aclose()
    return _profile_from_hash({str(k): str(v) for k, v in fields_.items()}) if fields_ else None


async def top_customers(redis: str | Settings, n: int = 10, *, by: str = "revenue",
                        segment: str | None = None, prefix: str = "kpi",
                        ) -> list[dict[str, Any]]:
    """The ``n`` customers with the highest ``by`` (``revenue`` or ``value_ratio``), overall
    or in one segment, best first, as profiles."""
    if by not in RANKINGS:
        raise ValueError(f"by must be one of {', '.join(RANKINGS)}, not {by!r}")
    if isinstance(redis, Settings) and prefix == "kpi":
        prefix = redis.redis_prefix
    key = ranking_key(prefix, by, segment or None)
    client = _redis(redis, decode_responses=True)
    try:
        ids = await client.zrevrange(key, 0, max(0, n - 1))
        pipe = client.pipeline(transaction=False)
        for customer in ids:
            pipe.hgetall(profile_key(prefix, str(customer)))
        hashes = await pipe.execute()
    finally:
        await client.aclose()
    return [_profile_from_hash({str(k): str(v) for k, v in h.items()}) for h in hashes if h]


async def kafka_updates(kafka: str | Settings, *, topic: str = "kpi-updates",
                        from_beginning: bool = True, group_id: str | None = None,
                        idle_timeout_s: float | None = None,
                        ) -> AsyncIterator[KpiRow | RowDeleted]:
    """Row updates from the compacted Kafka topic. ``from_beginning`` replays the current
    state first (the topic is compacted: the latest value of every row); with
    ``idle_timeout_s`` the iterator ends after that long without a message."""
    consumer = AIOKafkaConsumer(
        topic, **_kafka(kafka), group_id=group_id,
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=group_id is not None)
    await consumer.start()
    try:
        while True:
            timeout_ms = int((idle_timeout_s or 1.0) * 1000)
            batch = await consumer.getmany(timeout_ms=timeout_ms, max_records=1000)
            if not batch and idle_timeout_s is not None:
                return
            for records in batch.values():
                for record in records:
                    yield _decode(record.value, record.key)
    finally:
        await consumer.stop()


async def pubsub_updates(redis: str | Settings, *, channel: str = "kpi-updates",
                         idle_timeout_s: float | None = None,
                         ) -> AsyncIterator[KpiRow | RowDeleted]:
    """Row updates as they are published on the Redis channel (no history)."""
    client = _redis(redis, decode_responses=False)
    pubsub = client.pubsub()
    await pubsub.subscribe(channel)
    try:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True,
                                               timeout=idle_timeout_s or 1.0)
            if message is None:
                if idle_timeout_s is not None:
                    return
                continue
            yield _decode(message["data"], None)
    finally:
        await pubsub.unsubscribe(channel)
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()

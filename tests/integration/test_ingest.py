"""Issue 2 acceptance, on the real broker: ~10,000 valid and invalid records on the three
input topics (6 partitions each) through a real worker: valid events reach the internal
topic normalised, every invalid one is in the DLQ with its error and original value, the
/metrics counts match, and the worker keeps running."""

from __future__ import annotations

import asyncio
import random
import re
import time
import urllib.request
import uuid
from collections import Counter
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from harness import Deployment

from kpistream.contracts.records import event_key
from kpistream.contracts.wire import decode_event_pack
from kpistream.generator.producer import topic_of
from kpistream.generator.traffic import HOUR_MS, TrafficConfig, TrafficGenerator
from kpistream.ingest.packing import partition_for

pytestmark = pytest.mark.integration


def invalid_records(now_ms: int, rng: random.Random) -> list[tuple[str, bytes, str]]:
    """(kind, raw value, expected error) of every ingest error code."""
    big = orjson.dumps({"order_id": "big", "ts": now_ms, "pad": "x" * 70_000})
    cases: list[tuple[str, bytes, str]] = [
        ("order", b"{not json", "invalid_json"),
        ("spend", b"\xff\xfe\x00garbage", "invalid_json"),
        ("survey", b"[1, 2", "invalid_json"),
        ("order", orjson.dumps({"order_id": "neg", "ts": now_ms, "customer_id": "c",
                                "amount": -1, "currency": "EUR"}), "invalid_schema"),
        ("order", orjson.dumps({"ts": now_ms, "customer_id": "c", "amount": 1,
                                "currency": "EUR"}), "invalid_schema"),
        ("spend", orjson.dumps({"spend_id": "s", "ts": "yesterday", "campaign_id": "c",
                                "channel": "x", "amount": 1, "currency": "EUR"}),
         "invalid_schema"),
        ("survey", orjson.dumps({"response_id": "r", "ts": now_ms, "kind": "nps",
                                 "score": "ten"}), "invalid_schema"),
        ("order", orjson.dumps({"order_id": "cur", "ts": now_ms, "customer_id": "c",
                                "amount": 1, "currency": "XYZ"}), "unknown_currency"),
        ("survey", orjson.dumps({"response_id": "r11", "ts": now_ms, "kind": "nps",
                                 "score": 11}), "out_of_range"),
        ("survey", orjson.dumps({"response_id": "c0", "ts": now_ms, "kind": "csat",
                                 "score": 0}), "out_of_range"),
        ("order", big, "too_large"),
        ("spend", orjson.dumps({"spend_id": "fut", "ts": now_ms + HOUR_MS,
                                "campaign_id": "c", "channel": "x", "amount": 1,
                                "currency": "EUR"}), "future_timestamp"),
    ]
    out = []
    for i in range(2000):
        kind, raw, error = cases[i % len(cases)]
        # make every invalid value unique so each can be found in the DLQ
        if error not in ("invalid_json", "too_large"):
            raw = raw[:-1] + b',"n":' + str(i).encode() + b"}"
        elif error == "invalid_json":
            raw = raw + f" #{i}".encode()
        else:
            raw = raw[:-1] + b',"n":' + str(i).encode() + b"}"
        out.append((kind, raw, error))
    rng.shuffle(out)
    return out


async def consume_all(bootstrap: str, topic: str, expected: int, timeout_s: float,
                      count: Any = lambda message: 1) -> list:
    """Read ``topic`` from the start until ``count`` summed over its records reaches
    ``expected`` (or the timeout)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                group_id=None)
    await consumer.start()
    messages = []
    seen = 0
    deadline = time.monotonic() + timeout_s
    try:
        while seen < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for records in batch.values():
                messages.extend(records)
                seen += sum(count(m) for m in records)
    finally:
        await consumer.stop()
    return messages


# Users' producers compress as they please: the edge reads every codec Kafka has.
INPUT_CODECS = (None, "gzip", "snappy", "lz4", "zstd")


async def produce_raw(bootstrap: str, items: list[tuple[str, bytes]]) -> None:
    """Produce ``items``, each codec of :data:`INPUT_CODECS` compressing a share of them."""
    producers = [AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20,
                                  max_request_size=2_000_000, compression_type=codec)
                 for codec in INPUT_CODECS]
    for producer in producers:
        await producer.start()
    try:
        for i, (topic, value) in enumerate(items):
            await producers[i % len(producers)].send(topic, value)
        for producer in producers:
            await producer.flush()
    finally:
        for producer in producers:
            await producer.stop()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def counter(text: str, topic: str, outcome: str) -> float:
    pattern = (rf'^kpistream_events_total\{{(?=[^}}]*topic="{re.escape(topic)}")'
               rf'(?=[^}}]*outcome="{outcome}")[^}}]*\}} (\S+)$')
    match = re.search(pattern, text, re.M)
    return float(match.group(1)) if match else 0.0


def test_ingest_routes_valid_events_and_dead_letters_invalid_ones(stack) -> None:
    rng = random.Random(3)
    now = int(time.time() * 1000)
    dep = Deployment(f"ingest-{uuid.uuid4().hex[:6]}", stack.bootstrap, stack.redis_url)
    dep.create_topics()
    settings = dep.settings
    valid = list(TrafficGenerator(TrafficConfig(
        seed=5, start_ms=now - HOUR_MS, duration_ms=HOUR_MS, orders_per_hour=6000,
        campaigns=10, cancel_ratio=0.0)).records())
    invalid = invalid_records(now, rng)
    items = [(topic_of(settings, r.kind), orjson.dumps(r.value)) for r in valid]
    items += [(topic_of(settings, kind), raw) for kind, raw, _ in invalid]
    rng.shuffle(items)
    assert 9_000 <= len(items) <= 12_000
    try:
        proc, port = dep.start_worker()
        asyncio.run(produce_raw(stack.bootstrap, items))

        def events_in(message: Any) -> int:
            return sum(not isinstance(body, str)
                       for _, body in decode_event_pack(message.value).items)

        packs = asyncio.run(consume_all(stack.bootstrap, settings.topic_events,
                                        len(valid), 120, count=events_in))
        assert len(packs) < len(valid) / 20  # packed: many events per internal record
        ids = Counter()
        rejected = Counter()
        items = [(m.partition, item) for m in packs
                 for item in decode_event_pack(m.value).items]
        for partition, (source, event) in items:
            if isinstance(event, str):
                rejected[event] += 1
                continue
            assert partition == partition_for(event_key(event), settings.partitions)
            assert isinstance(event.ts, int)
            ids[event.id] += 1
            assert source.topic in settings.input_topics
            original = orjson.loads(source.value)
            assert original.get(f"{'response' if event.kind == 'survey' else event.kind}_id",
                                original.get("order_id")) == event.id
        assert set(ids) == {str(next(v for k, v in r.value.items() if k.endswith("_id")))
                            for r in valid}

        dlq = asyncio.run(consume_all(stack.bootstrap, settings.topic_dlq, len(invalid), 120))
        by_value = {}
        for message in dlq:
            record = orjson.loads(message.value)
            assert set(record) == {"error", "detail", "topic", "partition", "offset", "key",
                                   "value", "value_base64", "received_at"}
            raw = (record["value"].encode() if record["value"] is not None
                   else __import__("base64").b64decode(record["value_base64"]))
            by_value[raw] = record
        for kind, raw, error in invalid:
            assert raw in by_value, f"{error} record not in the DLQ: {raw[:60]!r}"
            record = by_value[raw]
            assert record["error"] == error
            assert record["topic"] == topic_of(settings, kind)
            if error == "invalid_schema":
                assert ":" in record["detail"]
        assert proc.poll() is None, "the worker died"

        expected_invalid = Counter(topic_of(settings, k) for k, _, e in invalid
                                   if e != "future_timestamp")
        expected_future = Counter(topic_of(settings, k) for k, _, e in invalid
                                  if e == "future_timestamp")
        deadline = time.monotonic() + 30
        while True:
            text = scrape(port)
            got = {t: counter(text, t, "invalid") for t in settings.input_topics}
            future = {t: counter(text, t, "future") for t in settings.input_topics}
            accepted = sum(counter(text, t, "accepted") for t in settings.input_topics)
            if ((got == {t: float(expected_invalid[t]) for t in settings.input_topics}
                 and future == {t: float(expected_future[t]) for t in settings.input_topics}
                 and accepted == len(valid)) or time.monotonic() > deadline):
                break
            time.sleep(1)
        assert got == {t: float(expected_invalid[t]) for t in settings.input_topics}
        assert future == {t: float(expected_future[t]) for t in settings.input_topics}
        assert accepted == len(valid)
        assert proc.poll() is None
    finally:
        dep.stop()


async def produce_to(bootstrap: str, items: list[tuple[str, int, dict[str, Any]]]) -> None:
    """Produce each ``(topic, partition, value)`` in order (one producer: in order per
    partition)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        for topic, partition, value in items:
            await producer.send(topic, orjson.dumps(value), partition=partition)
        await producer.flush()
    finally:
        await producer.stop()


def wait_judged(port: int, topics: list[str], expected: int, timeout_s: float = 60) -> str:
    """/metrics once ``expected`` records are counted over every outcome (or the timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            text = scrape(port)
        except OSError:  # the worker is still starting
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
            continue
        judged = sum(counter(text, t, outcome) for t in topics
                     for outcome in ("accepted", "duplicate", "invalid", "late", "future"))
        if judged >= expected or time.monotonic() > deadline:
            return text
        time.sleep(0.5)


def test_late_events_of_a_replayed_backlog_are_dead_lettered(stack) -> None:
    """SPEC §3, replay clock, a backlog produced at once to a fresh worker: an order more
    than the retention (24 h 5 min) older than one produced before it to the same partition
    is late, though other raw partitions are still unread or empty. Then records produced
    to partitions that never held one, older than what was read minus the retention, are
    late too (an empty partition has nothing left to read: it does not hold the judgement
    back). Each is in the DLQ with error ``late`` and counted; nothing else is. Last, once
    every partition has been quiet for idle_lag, old orders produced to every partition are
    all late, whichever partitions and ids they come with (a partition waking held the low
    mark back at its own time, and the records after it got through)."""
    dep = Deployment(f"late-{uuid.uuid4().hex[:6]}", stack.bootstrap, stack.redis_url,
                     extra={"KPISTREAM_CLOCK": "event", "KPISTREAM_IDLE_LAG": "2s"})
    dep.create_topics()
    settings = dep.settings
    orders, spend = settings.topic_orders, settings.topic_ad_spend
    t0 = 1_763_806_500_000  # 2025-11-22T10:15:00Z

    def order(order_id: str, ts: int) -> dict[str, Any]:
        return {"order_id": order_id, "ts": ts, "customer_id": "c", "amount": 10,
                "currency": "EUR", "campaign_id": "summer", "channel": "search"}

    backlog = [(orders, 0, order(f"o{i}", t0 + i * 60_000)) for i in range(10)]
    backlog += [(orders, 0, order("late-in-partition", t0 - 25 * HOUR_MS)),
                (orders, 0, order("old-in-retention", t0 - 23 * HOUR_MS))]
    fresh = [(orders, 1, order("late-in-empty-partition", t0 - 25 * HOUR_MS)),
             (spend, 0, {"spend_id": "late-spend", "ts": t0 - 26 * HOUR_MS,
                         "campaign_id": "summer", "channel": "search", "amount": 5,
                         "currency": "EUR"}),
             (orders, 2, order("recent-in-empty-partition", t0 - HOUR_MS))]
    topics = list(settings.input_topics)
    try:
        proc, port = dep.start_worker()
        asyncio.run(produce_to(stack.bootstrap, backlog))
        text = wait_judged(port, topics, len(backlog))
        assert (counter(text, orders, "accepted"), counter(text, orders, "late")) == (11, 1)
        asyncio.run(produce_to(stack.bootstrap, fresh))
        text = wait_judged(port, topics, len(backlog) + len(fresh))
        assert {(t, outcome): counter(text, t, outcome) for t in (orders, spend)
                for outcome in ("accepted", "late")} == {
            (orders, "accepted"): 12, (orders, "late"): 2, (spend, "accepted"): 0,
            (spend, "late"): 1}
        dlq = asyncio.run(consume_all(stack.bootstrap, settings.topic_dlq, 3, 30))
        late = sorted((orjson.loads(m.value)["error"],
                       orjson.loads(orjson.loads(m.value)["value"]).get("order_id", "spend"))
                      for m in dlq)
        assert late == [("late", "late-in-empty-partition"), ("late", "late-in-partition"),
                        ("late", "spend")]
        time.sleep(2 * settings.idle_lag_ms / 1000 + 1)  # quiet: nothing left to read
        after_quiet = [(orders, p, order(f"after-quiet-{p}-{i}", t0 - 25 * HOUR_MS))
                       for p in range(settings.partitions) for i in range(3)]
        asyncio.run(produce_to(stack.bootstrap, after_quiet))
        text = wait_judged(port, topics, len(backlog) + len(fresh) + len(after_quiet))
        assert (counter(text, orders, "accepted"), counter(text, orders, "late")) == (
            12, 2 + len(after_quiet))
        assert proc.poll() is None
    finally:
        dep.stop()

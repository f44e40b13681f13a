"""Issue 11's fault suite, short variants (the long ones run under `make soak`): each fault on
the real services ends with every Redis row equal to the reference, no worker exiting, and
the event counters equal to the reference's classification.

- the broker stopped for 30 s mid-stream and restarted;
- Redis paused (CLIENT PAUSE) for 20 s, then killed and restarted;
- workers restarted with their data directory wiped, and with a stale one of an earlier run;
- 100,000 hostile records mixed into valid traffic;
- SIGKILLs of random workers (of three) during the stream.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from harness import (
    LOG_DIR,
    ROOT,
    DedicatedRedis,
    Deployment,
    ExpectedRows,
    assert_profiles_exact,
    normalise,
    row_mismatches,
    samples,
    scrape,
    wait_for_rows,
)
from test_engine_exactness import assert_alive

from kpistream import reference
from kpistream.generator.traffic import HOUR_MS, Record, TrafficConfig, TrafficGenerator

pytestmark = pytest.mark.integration
SETTLE_S = 150.0
LOCAL = Path(os.environ.get("KPISTREAM_LOCAL_DIR", ROOT / ".local"))
STACK_SH = ROOT / "deploy" / "local" / "stack.sh"


def traffic(seed: int, hours: float = 1.0, orders_per_hour: float = 20_000) -> list[Record]:
    start = int(time.time() * 1000) - int(hours * HOUR_MS) - 60_000
    return list(TrafficGenerator(TrafficConfig(
        seed=seed, start_ms=start, duration_ms=int(hours * HOUR_MS),
        orders_per_hour=orders_per_hour, campaigns=20, survey_ratio=0.3,
        cancel_ratio=0.03)).records())


def expect(dep: Deployment, recs: list[Record]) -> reference.Outcome:
    settings = dep.settings
    return reference.classify(normalise(settings, recs, int(time.time() * 1000)),
                              retention_ms=settings.retention_ms)


def assert_rows_exact(dep: Deployment, outcome: reference.Outcome | ExpectedRows, *,
                      redis_url: str | None = None, timeout_s: float = SETTLE_S) -> None:
    settings = dep.settings
    rows = wait_for_rows(redis_url or settings.redis_url.get_secret_value(),
                         settings.redis_prefix, outcome, timeout_s,
                         alive=lambda: assert_alive(dep))
    problems = row_mismatches(rows, outcome)
    assert not problems, f"{len(problems)} mismatches, e.g. {problems[:10]}"


def event_counts(ports: list[int]) -> dict[str, float]:
    counts: dict[str, float] = collections.Counter()
    for port in ports:
        for labels, value in samples(scrape(port), "kpistream_events_total"):
            counts[labels["outcome"]] += value
    return {k: v for k, v in counts.items() if v}


def expected_counts(outcome: reference.Outcome, invalid: int = 0) -> dict[str, float]:
    counts = {"accepted": len(outcome.accepted), "duplicate": len(outcome.duplicates),
              "invalid": len(outcome.unknown_orders) + invalid, "late": len(outcome.late)}
    return {k: v for k, v in counts.items() if v}


def wait_for_counts(ports: list[int], expected: dict[str, float], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    counts = event_counts(ports)
    while counts != expected and time.monotonic() < deadline:
        time.sleep(1)
        counts = event_counts(ports)
    assert counts == expected


# --- the broker -------------------------------------------------------------------------

def kafka_pid() -> int:
    pidfile = LOCAL / "kafka" / "kafka.pid"
    if not pidfile.exists():
        pytest.skip("the broker was not started by deploy/local/stack.sh: cannot stop it")
    return int(pidfile.read_text().strip())


def test_broker_stopped_for_30s_mid_stream(deployment) -> None:
    dep = deployment()
    recs = traffic(seed=41)
    outcome = expect(dep, recs)
    ports = [dep.start_worker()[1], dep.start_worker()[1]]
    half = len(recs) // 2
    dep.produce(recs[:half])
    time.sleep(5)  # mid-stream: the workers are busy with the first half
    pid = kafka_pid()
    os.kill(pid, signal.SIGTERM)
    stopped = time.monotonic()
    while time.monotonic() - stopped < 60:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    time.sleep(max(0.0, 30 - (time.monotonic() - stopped)))
    assert_alive(dep)
    up = subprocess.run([str(STACK_SH), "up"], env={**os.environ, "PY": sys.executable},
                        capture_output=True, text=True, timeout=180)
    assert up.returncode == 0, up.stdout + up.stderr
    dep.produce(recs[half:])
    assert_rows_exact(dep, outcome)
    wait_for_counts(ports, expected_counts(outcome))
    assert_alive(dep)


# --- Redis ------------------------------------------------------------------------------

def test_redis_paused_20s_then_killed_and_restarted(deployment, tmp_path) -> None:
    """Redis unavailable for 30 s (paused 20 s, then down 10 s) mid-stream, and back empty:
    the worker keeps consuming, counts the sink errors, and every row is back and exact
    within 5 s of Redis answering."""
    redis = DedicatedRedis(tmp_path)
    redis.start()
    # Event clock: the rows stay put once the stream ends, so the reference can be computed
    # before Redis returns and the 5 s measure only the worker.
    dep = deployment(KPISTREAM_REDIS_URL=redis.url, KPISTREAM_CLOCK="event")
    try:
        recs = traffic(seed=42, hours=0.5)
        outcome = ExpectedRows(expect(dep, recs))
        outcome.warm(dep.settings)
        port = dep.start_worker()[1]
        third = len(recs) // 3
        dep.produce(recs[:third])
        assert_rows_exact(dep, expect(dep, recs[:third]), redis_url=redis.url)
        assert redis.cli("CLIENT", "PAUSE", "20000", "ALL") == "OK"
        dep.produce(recs[third:2 * third])
        time.sleep(20)
        assert_alive(dep)
        redis.kill()  # comes back empty: every row must be rewritten
        dep.produce(recs[2 * third:])
        time.sleep(10)  # 30 s without Redis in all
        assert_alive(dep)
        errors = samples(scrape(port), "kpistream_sink_errors_total")
        assert any(labels["sink"] == "redis" and value > 0 for labels, value in errors)
        redis.start()
        back = time.monotonic()
        assert_rows_exact(dep, outcome, redis_url=redis.url, timeout_s=5)
        assert time.monotonic() - back <= 5, "rows not back within 5 s of Redis"
        wait_for_counts([port], expected_counts(outcome.outcome))
    finally:
        redis.cli("shutdown", "nosave")


# --- the data directory -----------------------------------------------------------------

def test_restart_with_a_kept_a_wiped_and_a_stale_data_directory(deployment, tmp_path) -> None:
    """State lives in Kafka (changelogs and offsets); the local directory is a cache that can
    be kept (a graceful stop leaves the aggregate's state there for the next start), lost, or
    be left over from an earlier run of the same worker. (Workers are stopped with SIGTERM
    here: the crash itself is test_engine_exactness's; a graceful leave spares the session
    timeout.)"""
    dep = deployment()
    # one directory for the four runs of "the same worker" (the harness gives each worker
    # its own otherwise)
    data_dir = Path(dep.settings.data_dir)
    same_dir = {"KPISTREAM_DATA_DIR": str(data_dir)}
    recs = traffic(seed=43, hours=0.5)
    outcome = expect(dep, recs)
    quarter = len(recs) // 4

    def stop(worker: subprocess.Popen[bytes]) -> None:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
        dep.workers.remove(worker)

    first, _ = dep.start_worker(**same_dir)
    dep.produce(recs[:quarter])
    assert_rows_exact(dep, expect(dep, recs[:quarter]))
    stale = tmp_path / "stale"
    shutil.copytree(data_dir, stale)  # the directory as it was at this point
    stop(first)
    left = sorted(path.name for path in (data_dir / "state").glob("*.snapshot"))
    assert left == sorted(f"{topic}-{p}.snapshot" for p in range(dep.settings.partitions)
                          for topic in (dep.settings.topic_events,
                                        dep.settings.topic_customers))
    kept, _ = dep.start_worker(**same_dir)  # kept: restores what the stop left
    dep.produce(recs[quarter:2 * quarter])
    assert_rows_exact(dep, expect(dep, recs[:2 * quarter]))
    assert_profiles_exact(dep.settings, expect(dep, recs[:2 * quarter]))
    log = (LOG_DIR / f"{dep.name}-{dep.started}.log").read_text(errors="replace")
    assert log.count("aggregate_restored_from_snapshot") == dep.settings.partitions
    assert log.count("customers_restored_from_snapshot") == dep.settings.partitions
    assert not list((data_dir / "state").glob("*.snapshot"))  # each used once
    stop(kept)
    shutil.rmtree(data_dir)  # wiped
    second, _ = dep.start_worker(**same_dir)
    dep.produce(recs[2 * quarter:3 * quarter])
    assert_rows_exact(dep, expect(dep, recs[:3 * quarter]))
    stop(second)
    shutil.rmtree(data_dir)
    shutil.copytree(stale, data_dir)  # stale: from before the later workers' work
    port = dep.start_worker(**same_dir)[1]
    dep.produce(recs[3 * quarter:])
    assert_rows_exact(dep, outcome)
    wait_for_counts([port], expected_counts(outcome))


# --- hostile input ----------------------------------------------------------------------

HOSTILE_CLASSES: list[tuple[str, str]] = [
    ("random_bytes", "invalid_json"), ("deep_nesting", "invalid_json"),
    # 1e400 is valid JSON (a double overflows): its field is named, invalid_schema
    ("huge_number", "invalid_schema"), ("nan_token", "invalid_json"),
    ("infinity_token", "invalid_json"), ("control_character", "invalid_json"),
    ("lone_surrogate_escape", "invalid_json"), ("surrogate_bytes", "invalid_json"),
    ("empty", "invalid_json"), ("wrong_types", "invalid_schema"),
    ("not_an_object", "invalid_schema"), ("one_megabyte", "too_large"),
]


def hostile_value(kind: str, rng: random.Random) -> bytes:
    """One hostile record of a class; the class, not kpistream, says how it is rejected."""
    n = rng.randrange(1_000_000_000)
    order = {"order_id": f"hostile-{n}", "amount": 10.0, "currency": "EUR",
             "ts": "2026-01-01T00:00:00Z", "status": "placed"}
    if kind == "random_bytes":
        return b"\xff" + rng.randbytes(rng.randrange(1, 200))
    if kind == "deep_nesting":
        depth = rng.randrange(2000, 20000)
        return b'{"order_id": "x", "a": ' + b"[" * depth + b"]" * depth + b"}"
    if kind == "huge_number":
        return orjson.dumps(order).replace(b"10.0", b"1e400")
    if kind == "nan_token":
        return orjson.dumps(order).replace(b"10.0", b"NaN")
    if kind == "infinity_token":
        return orjson.dumps(order).replace(b"10.0", b"-Infinity")
    if kind == "control_character":
        return orjson.dumps(order).replace(b"hostile", b"host\x01ile")
    if kind == "lone_surrogate_escape":
        return orjson.dumps(order).replace(b"hostile", b"host\\ud800ile")
    if kind == "surrogate_bytes":
        return orjson.dumps(order).replace(b"hostile", b"host\xed\xa0\x80ile")
    if kind == "empty":
        return b""
    if kind == "wrong_types":
        return orjson.dumps({**order, "amount": "ten", "order_id": [n]})
    if kind == "not_an_object":
        return orjson.dumps([order])
    if kind == "one_megabyte":
        return orjson.dumps({**order, "note": "a" * 1_000_000})
    raise AssertionError(kind)


Source = tuple[str, int, int]  # topic, partition, offset


async def produce_hostile(dep: Deployment, valid: list[Record], hostile: int,
                          rng: random.Random) -> dict[Source, str]:
    """Valid records (some with huge keys or garbage headers, which change nothing) mixed
    with ``hostile`` rejected ones; returns each hostile record's coordinates and the error
    code its class calls for."""
    settings = dep.settings
    topics = [settings.topic_orders, settings.topic_ad_spend, settings.topic_surveys]
    topic_of = dict(zip(("order", "spend", "survey"), topics, strict=True))
    items: list[tuple[str, bytes | None, bytes, list[tuple[str, bytes]], str | None]] = []
    for record in valid:
        # Orders keep their id as key (a cancellation must follow its order, as `produce`
        # sends them); spend and surveys may carry any key, even a huge one.
        ident = next(str(v) for k, v in record.value.items() if k.endswith("_id"))
        key: bytes | None = ident.encode()
        if record.kind != "order" and rng.random() < 0.002:
            key = rng.randbytes(100_000)
        headers = [("\x00garbage", rng.randbytes(50))] if rng.random() < 0.01 else []
        items.append((topic_of[record.kind], key, orjson.dumps(record.value), headers, None))
    weights = [1 if name == "one_megabyte" else 400 for name, _ in HOSTILE_CLASSES]
    for _ in range(hostile):
        name, error = rng.choices(HOSTILE_CLASSES, weights)[0]
        key = rng.randbytes(rng.randrange(1, 50_000)) if rng.random() < 0.01 else None
        position = rng.randrange(len(items) + 1)
        items.insert(position, (rng.choice(topics), key, hostile_value(name, rng),
                                [("h", b"\xff\xfe")], error))
    producer = AIOKafkaProducer(bootstrap_servers=dep.bootstrap, linger_ms=20,
                                max_request_size=2_000_000, max_batch_size=1_000_000)
    await producer.start()
    sent: list[tuple[asyncio.Future[Any], str]] = []
    try:
        for topic, key, value, headers, error in items:
            delivery = await producer.send(topic, value, key=key, headers=headers)
            if error is not None:
                sent.append((delivery, error))
        await producer.flush()
    finally:
        await producer.stop()
    expected = {}
    for delivery, error in sent:
        meta = delivery.result()
        expected[meta.topic, meta.partition, meta.offset] = error
    return expected


async def dead_letters_by_source(bootstrap: str, topic: str, expected: int,
                                 timeout_s: float = 60) -> dict[Source, str]:
    """Error code per dead-lettered record, de-duplicated by its source coordinates."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=16 << 20,
                                fetch_max_bytes=64 << 20)
    await consumer.start()
    letters: dict[Source, str] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(letters) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for messages in batch.values():
                for message in messages:
                    letter = orjson.loads(message.value or b"{}")
                    # at-least-once: a repeat has the same source and the same code
                    letters[letter["topic"], letter["partition"], letter["offset"]] = \
                        letter["error"]
    finally:
        await consumer.stop()
    return letters


def test_hostile_records_are_classified_and_valid_rows_stay_exact(deployment) -> None:
    rng = random.Random(44)
    dep = deployment()
    recs = traffic(seed=44, hours=0.5)
    outcome = expect(dep, recs)
    ports = [dep.start_worker()[1], dep.start_worker()[1]]
    expected = asyncio.run(produce_hostile(dep, recs, 100_000, rng))
    assert_rows_exact(dep, outcome)
    letters = asyncio.run(dead_letters_by_source(
        dep.bootstrap, dep.settings.topic_dlq, len(expected) + len(outcome.unknown_orders)))
    hostile = {source: code for source, code in letters.items() if source in expected}
    assert hostile == expected  # every hostile record, with the code of its class
    others = collections.Counter(code for source, code in letters.items()
                                 if source not in expected)
    assert others == +collections.Counter({"unknown_order": len(outcome.unknown_orders)})
    wait_for_counts(ports, expected_counts(outcome, invalid=len(expected)))
    assert_alive(dep)


# --- SIGKILLs ---------------------------------------------------------------------------

def sigkill_storm(dep: Deployment, recs: list[Record], kills: int, seed: int) -> None:
    """Three workers; ``kills`` times a random one is SIGKILLed while the stream is produced
    and replaced at once; rows and counters equal the reference at the end."""
    rng = random.Random(seed)
    outcome = expect(dep, recs)
    for _ in range(3):
        dep.start_worker()
    chunk = len(recs) // (kills + 1)
    for i in range(kills + 1):
        dep.produce(recs[i * chunk:] if i == kills else recs[i * chunk:(i + 1) * chunk])
        if i == kills:
            break
        time.sleep(rng.uniform(2, 6))
        victim = rng.choice([p for p in dep.workers if p.poll() is None])
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        dep.workers.remove(victim)
        dep.start_worker()
    assert_rows_exact(dep, outcome, timeout_s=SETTLE_S + 60)
    web_ports = [dep.ports[proc] for proc in dep.workers]
    wait_for_counts(web_ports, expected_counts(outcome), timeout_s=30)


def test_three_sigkills_during_the_stream(deployment) -> None:
    recs = traffic(seed=45, hours=1.0, orders_per_hour=30_000)
    sigkill_storm(deployment(), recs, kills=3, seed=45)

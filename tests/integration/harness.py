"""Run real workers against the real local stack, and compare what lands in Redis with the
reference. Each test gets its own topics, consumer group and Redis prefix."""

from __future__ import annotations

import asyncio
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from aiokafka import AIOKafkaConsumer, TopicPartition

from kpistream import reference
from kpistream.connections import redis_sync_client
from kpistream.contracts.records import Event
from kpistream.generator.producer import produce
from kpistream.generator.traffic import Record
from kpistream.ingest.validate import Validator
from kpistream.kpi.catalogue import KPI_FIELDS, SPEND_ALLOCATED
from kpistream.kpi.rows import hash_fields
from kpistream.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CREATED: list[Deployment] = []  # deployments whose topics exist, removed after each test
LOG_DIR = ROOT / ".local" / "test-logs"
POLL_S = 0.25


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Deployment:
    """One isolated kpistream deployment: its environment and its workers."""

    name: str
    bootstrap: str
    redis_url: str
    extra: dict[str, str] = field(default_factory=dict)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    ports: dict[subprocess.Popen[bytes], int] = field(default_factory=dict)  # web port
    started: int = 0

    @property
    def env(self) -> dict[str, str]:
        env = {
            "KPISTREAM_APP_ID": f"kpistream-{self.name}",
            "KPISTREAM_KAFKA_BOOTSTRAP": self.bootstrap,
            "KPISTREAM_REDIS_URL": self.redis_url,
            "KPISTREAM_TOPIC_ORDERS": f"orders-{self.name}",
            "KPISTREAM_TOPIC_AD_SPEND": f"ad-spend-{self.name}",
            "KPISTREAM_TOPIC_SURVEYS": f"survey-responses-{self.name}",
            "KPISTREAM_TOPIC_DLQ": f"kpistream-dlq-{self.name}",
            "KPISTREAM_TOPIC_KPI_UPDATES": f"kpi-updates-{self.name}",
            "KPISTREAM_TOPIC_ALERTS": f"kpi-alerts-{self.name}",
            "KPISTREAM_TOPIC_EVENTS": f"kpistream-events-{self.name}",
            "KPISTREAM_TOPIC_ROLLUP": f"kpistream-rollup-{self.name}",
            "KPISTREAM_TOPIC_CUSTOMERS": f"kpistream-customers-{self.name}",
            "KPISTREAM_TOPIC_CUSTOMER_PROFILES": f"customer-profiles-{self.name}",
            "KPISTREAM_REDIS_PREFIX": f"kpi-{self.name}",
            "KPISTREAM_REDIS_CHANNEL": f"kpi-updates-{self.name}",
            "KPISTREAM_DATA_DIR": str(ROOT / ".local" / "worker-data" / self.name),
        }
        env.update(self.extra)
        return env

    @property
    def settings(self) -> Settings:
        saved = dict(os.environ)
        os.environ.update(self.env)
        try:
            return Settings()
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def create_topics(self, partitions: dict[str, int] | None = None) -> None:
        """``partitions``: topics (by setting name, e.g. ``topic_orders``) made first with
        a partition count of their own, as a producer's cluster may hold them; ``kpistream
        topics create`` leaves existing topics as they are."""
        CREATED.append(self)
        if partitions:
            settings = self.settings
            asyncio.run(_create_topics(settings, {getattr(settings, name): count
                                                  for name, count in partitions.items()}))
        subprocess.run([sys.executable, "-m", "kpistream", "topics", "create"],
                       env={**os.environ, **self.env}, check=True, capture_output=True)

    def remove(self) -> None:
        """Stop the workers and delete every topic of the deployment (its name is in each:
        inputs, internal, outputs, faust's changelogs). A broker holding the thousands of
        partitions a test run leaves behind ran the engine half as fast."""
        self.stop()
        try:
            asyncio.run(_delete_topics(self.settings, self.name))
        except Exception as exc:  # cleanup only: the test's verdict is already made
            print(f"[harness] could not delete the topics of {self.name}: {exc!r}")
        self.remove_redis_keys()

    def remove_redis_keys(self) -> None:
        """Delete the deployment's Redis keys (its prefix is its own): a benchmark leaves a
        million profiles, and Redis would hold every run's."""
        try:
            client = redis_sync_client(self.settings)
            try:
                batch: list[str] = []
                for key in client.scan_iter(match=f"{self.settings.redis_prefix}:*",
                                            count=10_000):
                    batch.append(key)
                    if len(batch) >= 10_000:
                        client.unlink(*batch)
                        batch.clear()
                if batch:
                    client.unlink(*batch)
            finally:
                client.close()
        except Exception as exc:  # cleanup only, as above
            print(f"[harness] could not delete the Redis keys of {self.name}: {exc!r}")

    def start_worker(self, argv: list[str] | None = None,
                     **extra: str) -> tuple[subprocess.Popen[bytes], int]:
        """A worker with the deployment's environment (plus ``extra``); returns it and its
        web port. ``argv``: a program of the tests' own in place of ``kpistream worker``."""
        port = free_port()
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.started += 1
        log = open(LOG_DIR / f"{self.name}-{self.started}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            argv or [sys.executable, "-m", "kpistream", "worker"],
            env={**os.environ, **self.env, "KPISTREAM_WEB_PORT": str(port),
                 "KPISTREAM_WEB_HOST": "127.0.0.1",
                 # one data directory per worker, as on separate machines
                 "KPISTREAM_DATA_DIR": f"{self.env['KPISTREAM_DATA_DIR']}-{self.started}",
                 **extra},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.workers.append(proc)
        self.ports[proc] = port
        return proc, port

    def stop(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.workers:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def produce(self, records: Iterable[Record], *, keyed: bool = True,
                rate: float | None = None) -> int:
        return asyncio.run(produce(self.settings, records, keyed=keyed, rate=rate))


async def _create_topics(settings: Settings, partitions: dict[str, int]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from kpistream.connections import kafka_options

    admin = AIOKafkaAdminClient(**kafka_options(settings))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, count, 1)
                                   for topic, count in partitions.items()])
    finally:
        await admin.close()


async def _delete_topics(settings: Settings, name: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    from kpistream.connections import kafka_options

    admin = AIOKafkaAdminClient(**kafka_options(settings))
    await admin.start()
    try:
        mine = [topic for topic in await admin.list_topics() if name in topic]
        if mine:
            await admin.delete_topics(mine)
    finally:
        await admin.close()


class DedicatedRedis:
    """A Redis server of one test's own, which the test may stop, pause or kill."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cli(self, *args: str) -> str:
        return subprocess.run(["redis-cli", "-p", str(self.port), *args],
                              capture_output=True, text=True, timeout=10).stdout.strip()

    def start(self) -> None:
        subprocess.run(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                        "--daemonize", "yes", "--save", "", "--appendonly", "no",
                        "--dir", str(self.directory),
                        "--pidfile", str(self.directory / "redis.pid")],
                       check=True, capture_output=True)
        for _ in range(50):
            if self.cli("ping") == "PONG":
                return
            time.sleep(0.1)
        raise AssertionError("dedicated redis did not start")

    def kill(self) -> None:
        pid = int((self.directory / "redis.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)


def normalise(settings: Settings, records: Iterable[Record], now_ms: int) -> list[Event]:
    """The events ingest accepts from these records, in order (the reference's input)."""
    validator = Validator(settings)
    out = []
    for record in records:
        result = validator.validate(record.kind, orjson.dumps(record.value), now_ms)  # type: ignore[arg-type]
        if isinstance(result, Event.__args__):  # type: ignore[attr-defined]
            out.append(result)
    return out


def read_rows(redis_url: str | Settings,
              prefix: str) -> dict[tuple[str, str, str], dict[str, str]]:
    """Every row hash under the prefix; ``redis_url`` may be settings with TLS and a user."""
    client = (redis_sync_client(redis_url) if isinstance(redis_url, Settings)
              else redis.Redis.from_url(redis_url, decode_responses=True))
    rows = {}
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        if key.startswith((f"{prefix}:index:", f"{prefix}:alert", f"{prefix}:customer")):
            continue  # index sets, alerts, customer profiles and their rankings
        fields = client.hgetall(key)
        if fields:
            rows[(fields["window"], fields["dimension"], fields["group"])] = fields
    client.close()
    return rows


class ExpectedRows:
    """The reference's rows, each computed once per (row, bounds): polling Redis until it is
    exact costs one reference pass per new window position, not one per poll."""

    def __init__(self, outcome: reference.Outcome) -> None:
        self.outcome = outcome
        self.kpis: dict[tuple[str, str, int, int], dict[str, Any]] = {}
        self.rows: dict[tuple[int, int], list[tuple[str, str]]] = {}

    def row(self, dimension: str, group: str, start: int, end: int) -> dict[str, Any]:
        key = (dimension, group, start, end)
        if key not in self.kpis:
            self.kpis[key] = reference.expected_row_kpis(
                self.outcome, dimension=dimension, group=group, window_start=start,
                window_end=end)
        return self.kpis[key]

    def warm(self, settings: Settings) -> None:
        """Compute the rows at the bounds the stream's newest event gives (event clock:
        where the rows stay once the stream ends), so a later poll is only a comparison."""
        newest = max(event.ts for event in reference.counted_events(self.outcome))
        for spec in settings.window_specs:
            start, end = reference.window_bounds(newest, spec.size_ms, spec.step_ms)
            for dimension, group in self.present(start, end):
                self.row(dimension, group, start, end)

    def present(self, start: int, end: int) -> list[tuple[str, str]]:
        if (start, end) not in self.rows:
            self.rows[start, end] = list(reference.expected_rows(
                self.outcome, window_start=start, window_end=end))
        return self.rows[start, end]


def row_mismatches(rows: dict[tuple[str, str, str], dict[str, str]],
                   outcome: reference.Outcome | ExpectedRows) -> list[str]:
    """Every difference between the Redis rows and the reference at the rows' own bounds,
    plus expected rows that are missing."""
    expect = outcome if isinstance(outcome, ExpectedRows) else ExpectedRows(outcome)
    problems: list[str] = []
    bounds_seen: dict[str, tuple[int, int]] = {}
    for (window, dimension, group), fields in rows.items():
        start, end = int(fields["window_start"]), int(fields["window_end"])
        bounds_seen.setdefault(window, (start, end))
        expected = expect.row(dimension, group, start, end)
        for name in KPI_FIELDS:
            want, got = expected.get(name), fields.get(name)
            if want is None and got is not None:
                problems.append(f"{window}/{dimension}/{group}: {name}={got}, want absent")
            elif want is not None and (got is None or not math.isclose(
                    float(got), want, rel_tol=1e-9, abs_tol=1e-9)):
                problems.append(f"{window}/{dimension}/{group}: {name}={got}, want {want}")
        allocated = "true" if dimension == "segment" else None
        if fields.get(SPEND_ALLOCATED) != allocated:
            problems.append(f"{window}/{dimension}/{group}: {SPEND_ALLOCATED}="
                            f"{fields.get(SPEND_ALLOCATED)}, want {allocated}")
    for window, (start, end) in bounds_seen.items():
        for dimension, group in expect.present(start, end):
            if (window, dimension, group) not in rows:
                problems.append(f"{window}/{dimension}/{group}: missing")
    return problems


def wait_for_rows(redis_url: str | Settings, prefix: str,
                  outcome: reference.Outcome | ExpectedRows,
                  timeout_s: float, *, alive: Any = None) -> dict[tuple[str, str, str],
                                                              dict[str, str]]:
    """Poll Redis until the rows equal the reference (the pipeline is eventually exact) or
    the timeout passes; returns the last rows read and leaves the assertion to the test."""
    deadline = time.monotonic() + timeout_s
    expect = outcome if isinstance(outcome, ExpectedRows) else ExpectedRows(outcome)
    rows = read_rows(redis_url, prefix)
    while time.monotonic() < deadline:
        if rows and not row_mismatches(rows, expect):
            return rows
        if alive is not None:
            alive()
        time.sleep(POLL_S)
        rows = read_rows(redis_url, prefix)
    return rows


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Samples of one metric in an exposition text: (labels, value)."""
    out = []
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels_text, value = line[len(name) + 1:].rsplit("} ", 1)
            labels = dict(re.findall(r'(\w+)="([^"]*)"', labels_text))
            out.append((labels, float(value)))
        elif line.startswith(name + " "):  # no labels
            out.append(({}, float(line[len(name) + 1:])))
    return out


async def _offsets(bootstrap: str, topics: list[str],
                   group: str | None) -> dict[tuple[str, int], int]:
    from aiokafka.admin import AIOKafkaAdminClient

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        cluster = await consumer._client.fetch_all_metadata()
        tps = [TopicPartition(t, p) for t in topics
               for p in sorted(cluster.partitions_for_topic(t) or [])]
        if group is None:
            ends = await consumer.end_offsets(tps)
            return {(tp.topic, tp.partition): off for tp, off in ends.items()}
    finally:
        await consumer.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group, partitions=tps)
        return {(tp.topic, tp.partition): meta.offset for tp, meta in committed.items()}
    finally:
        await admin.close()


def end_offsets(bootstrap: str, topics: list[str]) -> dict[tuple[str, int], int]:
    return asyncio.run(_offsets(bootstrap, topics, None))


def committed_offsets(bootstrap: str, group: str,
                      topics: list[str]) -> dict[tuple[str, int], int]:
    return asyncio.run(_offsets(bootstrap, topics, group))


def changelog_topics(settings: Settings) -> list[str]:
    return [f"{settings.app_id}-{table}-changelog"
            for table in ("aggregate-packs", "rollup-messages", "customer-packs", "alerts")]


# --- customer profiles ------------------------------------------------------------------------

def read_profiles(settings: Settings) -> dict[str, dict[str, str]]:
    """Every profile hash under the deployment's prefix."""
    client = redis.Redis.from_url(settings.redis_url.get_secret_value(), decode_responses=True)
    try:
        keys = sorted(client.scan_iter(match=f"{settings.redis_prefix}:customer:*", count=1000))
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        return {str(h["customer_id"]): h for h in pipe.execute() if h}
    finally:
        client.close()


def profile_mismatches(profiles: dict[str, dict[str, str]],
                       expected: dict[str, dict[str, Any]]) -> list[str]:
    problems = [f"{c}: missing" for c in sorted(set(expected) - set(profiles))]
    problems += [f"{c}: not expected" for c in sorted(set(profiles) - set(expected))]
    for customer in sorted(set(expected) & set(profiles)):
        got, want = profiles[customer], expected[customer]
        for name in set(got) - set(want) - {"updated_at"}:
            problems.append(f"{customer}: {name}={got[name]}, want absent")
        for name, value in want.items():
            text = got.get(name)
            if text is None:
                problems.append(f"{customer}: {name} missing, want {value}")
            elif not (math.isclose(float(text), value, rel_tol=1e-9, abs_tol=1e-9)
                      if isinstance(value, float) else text == str(value)):
                problems.append(f"{customer}: {name}={text}, want {value}")
    return problems


def expected_profiles(settings: Settings, outcome: reference.Outcome,
                      watermark_ms: int | None = None) -> dict[str, dict[str, Any]]:
    """The reference's profiles with attribution costs of the days final at
    ``watermark_ms`` (default: the stream time, where an event-clock deployment's low
    watermark ends once everything is read)."""
    if watermark_ms is None:
        judged = outcome.accepted + outcome.duplicates + outcome.unknown_orders
        watermark_ms = max((e.ts for e in judged), default=0)
    return reference.expected_profiles(outcome, watermark_ms=watermark_ms,
                                       retention_ms=settings.retention_ms,
                                       period_ms=settings.attribution_period_ms)


def assert_profiles_exact(settings: Settings, outcome: reference.Outcome,
                          expected: dict[str, dict[str, Any]] | None = None,
                          timeout_s: float = 90) -> dict[str, dict[str, str]]:
    """Redis profiles equal the reference's (or ``expected``; polled until they do or the
    timeout passes), the sorted sets rank exactly those customers, and the last message of
    every key on the compacted customer-profiles topic equals its hash."""
    expected = expected_profiles(settings, outcome) if expected is None else expected
    deadline = time.monotonic() + timeout_s
    profiles = read_profiles(settings)
    while profile_mismatches(profiles, expected) and time.monotonic() < deadline:
        time.sleep(1)
        profiles = read_profiles(settings)
    problems = profile_mismatches(profiles, expected)
    assert not problems, f"{len(problems)} profile mismatches, e.g. {problems[:10]}"
    client = redis.Redis.from_url(settings.redis_url.get_secret_value(), decode_responses=True)
    try:
        ranked = client.zrange(f"{settings.redis_prefix}:customers:by_revenue", 0, -1,
                               withscores=True)
        by_ratio = client.zrange(f"{settings.redis_prefix}:customers:by_value_ratio", 0, -1,
                                 withscores=True)
    finally:
        client.close()
    assert {c: s for c, s in ranked} == pytest.approx(
        {c: float(p["revenue"]) for c, p in profiles.items()})
    assert {c: s for c, s in by_ratio} == pytest.approx(
        {c: float(p["value_ratio"]) for c, p in profiles.items() if "value_ratio" in p})
    # The same publication goes to both sinks; a worker that takes a partition over
    # publishes its profiles again (new updated_at), so the two are compared until a read of
    # both falls between two publications.
    while True:
        last = last_messages(settings.kafka_bootstrap, settings.topic_customer_profiles)
        live = {key: value for key, value in last.items() if value is not None}
        differences = {customer: hash_fields(message) for customer, message in live.items()
                       if hash_fields(message) != profiles.get(customer)}
        if (set(live) == set(profiles) and not differences) or time.monotonic() > deadline:
            break
        time.sleep(1)
        profiles = read_profiles(settings)
    assert set(live) == set(profiles)
    for customer, published in list(differences.items())[:1]:
        raise AssertionError((customer, {
            k: (published.get(k), profiles[customer].get(k))
            for k in set(published) | set(profiles[customer])
            if published.get(k) != profiles[customer].get(k)}))
    return profiles


def last_messages(bootstrap: str, topic: str) -> dict[str, dict[str, Any] | None]:
    """Key -> JSON of the last record (None for a tombstone) of every key of a topic."""
    async def read() -> dict[str, dict[str, Any] | None]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                    auto_offset_reset="earliest")
        await consumer.start()
        out: dict[str, dict[str, Any] | None] = {}
        try:
            cluster = await consumer._client.fetch_all_metadata()
            partitions = [TopicPartition(topic, p)
                          for p in sorted(cluster.partitions_for_topic(topic) or [])]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            async def behind() -> bool:
                return any([await consumer.position(tp) < end for tp, end in ends.items()])

            while await behind():
                batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
                for messages in batch.values():
                    for message in messages:
                        key = (message.key or b"").decode()
                        out[key] = None if message.value is None else orjson.loads(
                            message.value)
        finally:
            await consumer.stop()
        return out
    return asyncio.run(read())

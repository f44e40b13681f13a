"""Every sink's lifecycle without services: write queues, flush delivers or raises
SinkUnavailable with retry_after and keeps the batch, the set honours retry_after and counts
failures per sink, and a Redis that came back empty gets every live row again."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import fastjsonschema
import orjson
import pytest
from aiokafka.errors import ProducerClosed
from prometheus_client import CollectorRegistry
from redis.exceptions import ConnectionError as RedisConnectionError

from kpistream.contracts.schemas import load_schema
from kpistream.exceptions import DeliveryError
from kpistream.kpi.profiles import ProfileChange
from kpistream.kpi.rows import RowChange
from kpistream.observability.metrics import OUTCOMES, EventCountCollector, Metrics
from kpistream.settings import Settings
from kpistream.sinks.alerts import RedisAlertSink
from kpistream.sinks.base import Backoff, Publication, SinkSet, SinkUnavailable
from kpistream.sinks.kafka import KafkaOutputSink
from kpistream.sinks.profiles import RedisProfileSink
from kpistream.sinks.prometheus import PrometheusSink
from kpistream.sinks.redis import BACKOFF_MAX_S, RedisRowSink
from kpistream.sinks.redis import CHUNK as CHUNK_PROFILES

SETTINGS = Settings(redis_prefix="p", redis_channel="rows", redis_alert_channel="alerts",
                    topic_kpi_updates="updates", topic_alerts="alert-topic")


class FakePipeline:
    def __init__(self, redis: FakeRedis) -> None:
        self.redis = redis
        self.commands: list[tuple[Any, ...]] = []

    async def __aenter__(self) -> FakePipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: self.commands.append((name, args, kwargs))

    async def execute(self) -> list[Any]:
        if self.redis.down:
            raise RedisConnectionError("Connection refused")
        self.redis.executed.append(self.commands)
        return []


class FakeRedis:
    def __init__(self) -> None:
        self.down = False
        self.executed: list[list[tuple[Any, ...]]] = []

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        return FakePipeline(self)

    async def ping(self) -> bool:
        if self.down:
            raise RedisConnectionError("Connection refused")
        return True

    def written_keys(self) -> list[str]:
        return [args[0] for batch in self.executed for name, args, _ in batch if name == "hset"]


class FakeOutbox:
    def __init__(self) -> None:
        self.queued: list[tuple[str, bytes | None, bytes | None]] = []
        self.acknowledged: list[tuple[str, bytes | None, bytes | None]] = []
        self.fail: Exception | None = None

    def send(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        self.queued.append((topic, key, value))

    async def flush(self) -> None:
        items, self.queued = self.queued, []
        if self.fail:
            raise self.fail
        self.acknowledged.extend(items)


def change(group: str, orders: int | None) -> RowChange:
    message = None if orders is None else {"window": "1h", "dimension": "channel",
                                           "group": group, "orders": orders}
    return RowChange("1h", "channel", group, message, orders is not None)  # type: ignore[arg-type]


def alert(state: str, group: str = "search") -> dict[str, object]:
    return {"alert": "cpo_spike", "kind": "cpo_shift", "state": state, "dimension": "channel",
            "group": group, "episode": f"{group}-1"}


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def metrics() -> Metrics:
    return Metrics.create(CollectorRegistry())


def test_backoff_doubles_to_its_cap_and_resets() -> None:
    backoff = Backoff(0.25, 1.0)
    assert [backoff.next() for _ in range(5)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    backoff.reset()
    assert backoff.next() == 0.25


def test_redis_rows_coalesce_per_row_and_replace_each_hash_atomically() -> None:
    redis = FakeRedis()
    sink = RedisRowSink(SETTINGS, redis, lambda: [])  # type: ignore[arg-type]
    sink.write(Publication([change("search", 1), change("email", 2)]))
    sink.write(Publication([change("search", 3)]))  # only the latest change of a row counts
    run(sink.flush())
    (batch,) = redis.executed
    names = [name for name, _, _ in batch]
    assert names.count("delete") == 2 and names.count("hset") == 2
    search = next(kwargs["mapping"] for name, args, kwargs in batch
                  if name == "hset" and args[0] == "p:1h:channel:search")
    assert search["orders"] == "3"
    published = [orjson.loads(args[1]) for name, args, _ in batch if name == "publish"]
    assert {m["group"] for m in published} == {"search", "email"}
    assert all(args[0] == "rows" for name, args, _ in batch if name == "publish")
    run(sink.flush())
    assert len(redis.executed) == 1  # nothing pending: no round trip


def test_redis_rows_deletion_leaves_the_index() -> None:
    redis = FakeRedis()
    sink = RedisRowSink(SETTINGS, redis, lambda: [])  # type: ignore[arg-type]
    sink.write(Publication([change("search", None)]))
    run(sink.flush())
    (batch,) = redis.executed
    assert ("srem", ("p:index:channel", "search"), {}) in batch
    assert not any(name == "hset" for name, _, _ in batch)
    # Pub/Sub has no keys: the deletion names its row, and the shipped schema covers it
    (payload,) = [orjson.loads(args[1]) for name, args, _ in batch if name == "publish"]
    check = fastjsonschema.compile(load_schema("kpi_update"))
    check(payload)
    assert payload == {"window": "1h", "dimension": "channel", "group": "search",
                       "deleted": True, "schema_version": 1}
    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        check({**payload, "deleted": False})


def test_redis_rows_outage_keeps_the_batch_and_rewrites_every_live_row_after() -> None:
    redis = FakeRedis()
    live = [change("search", 5), change("email", 6), change("social", 7)]
    sink = RedisRowSink(SETTINGS, redis, lambda: live)  # type: ignore[arg-type]
    redis.down = True
    sink.write(Publication([change("search", 5)]))
    delays = []
    for _ in range(4):
        with pytest.raises(SinkUnavailable) as failure:
            run(sink.flush())
        delays.append(failure.value.retry_after)
    assert delays == [0.25, 0.5, 1.0, BACKOFF_MAX_S]
    assert failure.value.sink == "redis" and "Connection refused" in failure.value.cause
    redis.down = False  # back, maybe empty: every live row is written, not only the pending
    run(sink.flush())
    assert sorted(redis.written_keys()) == ["p:1h:channel:email", "p:1h:channel:search",
                                            "p:1h:channel:social"]
    assert not sink.pending and not sink.needs_resync


def test_redis_rows_start_checks_the_connection() -> None:
    redis = FakeRedis()
    sink = RedisRowSink(SETTINGS, redis, lambda: [])  # type: ignore[arg-type]
    run(sink.start())
    redis.down = True
    with pytest.raises(SinkUnavailable):
        run(sink.start())
    assert sink.needs_resync


def test_redis_alerts_in_order_with_the_hash_only_while_firing() -> None:
    redis = FakeRedis()
    sink = RedisAlertSink(SETTINGS, redis)  # type: ignore[arg-type]
    sink.write(Publication(alerts=[alert("firing")]))
    redis.down = True
    with pytest.raises(SinkUnavailable):
        run(sink.flush())
    sink.write(Publication(alerts=[alert("resolved")]))
    redis.down = False
    run(sink.flush())
    (batch,) = redis.executed
    states = [orjson.loads(args[1]["alert"])["state"] for name, args, _ in batch
              if name == "xadd"]
    assert states == ["firing", "resolved"]
    assert [name for name, _, _ in batch if name in ("hset", "delete")] == [
        "delete", "hset", "delete"]
    assert all(args[0] == "p:alerts" for name, args, _ in batch if name == "xadd")
    assert not sink.pending


def test_redis_alerts_rewrite_the_hashes_still_firing_after_a_failure() -> None:
    """A Redis that failed may have come back empty: the hash of every alert still firing on
    this worker's rows is written again (not one whose row moved away); numbers as decimals
    without exponent, as in row hashes."""
    redis = FakeRedis()
    sink = RedisAlertSink(SETTINGS, redis)  # type: ignore[arg-type]
    search, email = ({**alert("firing", group), "statistic": 1e-05, "cpo": None}
                     for group in ("search", "email"))
    sink.write(Publication(alerts=[search, email], firing=frozenset(
        {("cpo_spike", "channel", "search"), ("cpo_spike", "channel", "email")})))
    run(sink.flush())
    (first,) = redis.executed
    mapping = next(kwargs["mapping"] for name, args, kwargs in first
                   if name == "hset" and args[0] == "p:alert:channel:search")
    assert mapping["statistic"] == "0.00001" and "cpo" not in mapping
    redis.down = True
    sink.write(Publication(alerts=[alert("firing", "social")], firing=frozenset(
        {("cpo_spike", "channel", "search"), ("cpo_spike", "channel", "social")})))
    with pytest.raises(SinkUnavailable):
        run(sink.flush())
    redis.down = False
    run(sink.flush())
    rewritten = [args[0] for name, args, _ in redis.executed[-1] if name == "hset"]
    # email's row is another worker's now; social's hash comes with its message
    assert rewritten == ["p:alert:channel:search", "p:alert:channel:social"]
    run(sink.flush())
    assert len(redis.executed) == 2  # resynced: nothing more to send


def test_kafka_rows_and_alerts_are_kept_until_acknowledged() -> None:
    """A stopping worker's outbox fails its flush (its producer is closed): the tick's
    messages stay for the partitions' next owner. (Any other failure stops the worker:
    tests/unit/test_outbox_failures.py.)"""
    error = DeliveryError(f"records could not be delivered to Kafka: {ProducerClosed()!r}")
    outbox = FakeOutbox()
    sink = KafkaOutputSink(SETTINGS, outbox)  # type: ignore[arg-type]
    sink.write(Publication([change("search", 1), change("email", None)], [alert("firing")]))
    outbox.fail = error
    with pytest.raises(SinkUnavailable) as failure:
        run(sink.flush())
    assert failure.value.sink == "kafka" and failure.value.retry_after > 0
    outbox.fail = None
    run(sink.flush())
    assert outbox.acknowledged == [
        ("updates", b"1h|channel|search", orjson.dumps(change("search", 1).message)),
        ("updates", b"1h|channel|email", None),  # a tombstone
        ("alert-topic", b"channel|search", orjson.dumps(alert("firing"))),
    ]
    run(sink.flush())
    assert len(outbox.acknowledged) == 3


def test_prometheus_counts_and_shows_exactly_the_firing_alerts() -> None:
    registry = CollectorRegistry()
    sink = PrometheusSink(Metrics.create(registry))
    sink.write(Publication([change("search", 1)], [alert("firing")],
                           frozenset({("cpo_spike", "channel", "search")})))
    sink.write(Publication([], [alert("resolved"), alert("firing", "email")],
                           frozenset({("cpo_spike", "channel", "email")})))
    value = registry.get_sample_value
    assert value("kpistream_rows_published_total") == 1
    assert value("kpistream_alerts_total", {"alert": "cpo_spike", "kind": "cpo_shift"}) == 2
    assert value("kpistream_alert_active", {"alert": "cpo_spike", "dimension": "channel",
                                            "group": "email"}) == 1
    assert value("kpistream_alert_active", {"alert": "cpo_spike", "dimension": "channel",
                                            "group": "search"}) is None


class FlakySink:
    name = "flaky"

    def __init__(self) -> None:
        self.fail = True
        self.flushes = 0
        self.written: list[Publication] = []

    async def start(self) -> None:
        return None

    def write(self, publication: Publication) -> None:
        self.written.append(publication)

    async def flush(self) -> None:
        self.flushes += 1
        if self.fail:
            raise SinkUnavailable(self.name, "down", retry_after=10)

    async def close(self) -> None:
        return None


def test_sink_set_honours_retry_after_and_counts_failures_per_sink() -> None:
    now = [100.0]
    registry = CollectorRegistry()
    flaky, healthy = FlakySink(), FlakySink()
    healthy.name, healthy.fail = "healthy", False
    sinks = SinkSet([flaky, healthy], Metrics.create(registry), 60, clock=lambda: now[0])
    # every sink has its series from the start (a query for errors returns 0, not nothing)
    assert registry.get_sample_value("kpistream_sink_errors_total", {"sink": "healthy"}) == 0
    sinks.write(Publication([change("search", 1)]))
    run(sinks.flush())
    run(sinks.flush())  # within retry_after: the failing sink is not tried again
    assert (flaky.flushes, healthy.flushes) == (1, 2)
    now[0] += 10
    flaky.fail = False
    run(sinks.flush())
    assert flaky.flushes == 2
    assert registry.get_sample_value("kpistream_sink_errors_total", {"sink": "flaky"}) == 1
    assert len(flaky.written) == len(healthy.written) == 1


class FlakyRedis(FakeRedis):
    """Its profile script fails every ``fail_every``-th call (a timeout under load)."""

    def __init__(self, fail_every: int) -> None:
        super().__init__()
        self.calls = 0
        self.fail_every = fail_every
        self.scripted: list[bytes] = []

    def register_script(self, script: str) -> Any:
        async def call(keys: list[str] | None = None, args: list[Any] | None = None) -> int:
            self.calls += 1
            if self.calls % self.fail_every == 0:
                raise RedisConnectionError("Timeout reading from socket")
            assert args is not None
            self.scripted.append(args[1])
            return len(orjson.loads(args[1])[1])
        return call


def test_redis_profiles_backlog_makes_progress_across_failures() -> None:
    """A backlog larger than what one flush gets through before a failure: every flush
    writes what it can, and written chunks are not written again."""
    redis = FlakyRedis(fail_every=7)
    sink = RedisProfileSink(SETTINGS, redis)  # type: ignore[arg-type]
    changes = [ProfileChange(f"c{i}", {"customer_id": f"c{i}", "revenue": 1.0, "orders": 1})
               for i in range(CHUNK_PROFILES * 10)]
    sink.write(Publication([], profiles=changes))
    for _ in range(20):
        if not sink.pending:
            break
        with contextlib.suppress(SinkUnavailable):
            run(sink.flush())
    assert not sink.pending
    written = [change[0] for payload in redis.scripted for change in orjson.loads(payload)[1]]
    assert len(written) == len(set(written)) == len(changes)


def test_event_counts_have_a_series_per_input_topic_and_outcome_from_the_start() -> None:
    registry = CollectorRegistry()
    registry.register(EventCountCollector(lambda: {("orders", "accepted"): 3}, lambda: 7,
                                          ["orders", "ad-spend"]))
    assert registry.get_sample_value("kpistream_events_total",
                                     {"topic": "orders", "outcome": "accepted"}) == 3
    for topic in ("orders", "ad-spend"):
        for outcome in OUTCOMES:
            assert registry.get_sample_value("kpistream_events_total",
                                             {"topic": topic, "outcome": outcome}) is not None
    assert registry.get_sample_value("kpistream_events_total",
                                     {"topic": "ad-spend", "outcome": "late"}) == 0
    assert registry.get_sample_value("kpistream_judged_events") == 7


def test_event_counts_only_where_their_roll_up_partition_is_owned() -> None:
    """A worker that does not own COUNTS_PARTITION exports no kpistream_events_total series:
    a series moves whole between workers and never decreases on a running one."""
    registry = CollectorRegistry()
    registry.register(EventCountCollector(lambda: None, lambda: 2, ["orders"]))
    assert registry.get_sample_value("kpistream_events_total",
                                     {"topic": "orders", "outcome": "accepted"}) is None
    assert registry.get_sample_value("kpistream_judged_events") == 2

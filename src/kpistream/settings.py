"""The one settings object: every tunable of kpistream, read once from ``KPISTREAM_*``.

No other module reads the environment. Durations accept ``250ms``, ``10s``, ``5m``, ``1h``,
``1d`` or a bare number of seconds, and are exposed in epoch milliseconds (``*_ms``) because
all event-time arithmetic in the pipeline is integer milliseconds.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from kpistream.contracts.records import EventKind

ClockMode = Literal["live", "event"]
KafkaSecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
KafkaSaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
ENV_PREFIX = "KPISTREAM_"
FILE_SUFFIX = "_FILE"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, None: 1000}


def parse_duration_ms(text: str | int | float) -> int:
    """``"5m"`` -> 300000. A bare number is seconds."""
    if isinstance(text, (int, float)):
        return round(float(text) * 1000)
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 250ms, 10s, 5m, 1h, 1d)")
    return round(float(match.group(1)) * _UNIT_MS[match.group(2)])


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """A rolling window ``SIZE/STEP``; ``name`` is its SIZE as written (``5m``)."""

    name: str
    size_ms: int
    step_ms: int

    @classmethod
    def parse(cls, text: str) -> WindowSpec:
        size, sep, step = text.partition("/")
        if not sep:
            raise ValueError(f"window {text!r} must be SIZE/STEP, e.g. 5m/10s")
        size_ms, step_ms = parse_duration_ms(size), parse_duration_ms(step)
        if step_ms <= 0 or size_ms <= 0 or size_ms % step_ms:
            raise ValueError(f"window {text!r}: SIZE must be a positive multiple of STEP")
        return cls(size.strip(), size_ms, step_ms)

    @property
    def buckets(self) -> int:
        return self.size_ms // self.step_ms


DEFAULT_RATES = {
    "EUR": 1.0,
    "USD": 0.92,
    "GBP": 1.17,
    "CHF": 1.04,
    "SEK": 0.087,
    "NOK": 0.085,
    "DKK": 0.134,
    "PLN": 0.23,
    "JPY": 0.0061,
    "CAD": 0.67,
    "AUD": 0.60,
}


class Settings(BaseSettings):
    """Effective configuration. Every field is ``KPISTREAM_<NAME>`` in the environment."""

    # hide_input_in_errors: a ValidationError raised to a library user (outside the CLI, which
    # prints describe_settings_error) must not quote the values given: secrets among them
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore",
                                      hide_input_in_errors=True)

    # --- connections -------------------------------------------------------------------
    app_id: str = Field("kpistream", description="Faust app id: consumer group and table prefix.")
    kafka_bootstrap: str = Field("localhost:9092", description="Kafka bootstrap servers.")
    redis_url: SecretStr = Field(
        SecretStr("redis://localhost:6379/0"), description="Redis URL (may hold a password)."
    )
    web_host: str = Field("0.0.0.0", description="Bind address of the worker's web server.")
    web_port: int = Field(6066, description="Worker web port: /metrics and health.")

    # --- security (SPEC §9; every secret also as <NAME>_FILE) ---------------------------
    kafka_security_protocol: KafkaSecurityProtocol = Field(
        "PLAINTEXT", description="Kafka: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.")
    kafka_sasl_mechanism: KafkaSaslMechanism = Field(
        "PLAIN", description="Kafka SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.")
    kafka_sasl_username: str = Field("", description="Kafka SASL user.")
    kafka_sasl_password: SecretStr = Field(SecretStr(""), description="Kafka SASL password.")
    kafka_ssl_cafile: str = Field(
        "", description="Kafka TLS: CA bundle (PEM) that signed the brokers' certificates "
        "(default: the system's trust store).")
    kafka_ssl_certfile: str = Field("", description="Kafka mTLS: client certificate (PEM).")
    kafka_ssl_keyfile: str = Field("", description="Kafka mTLS: client private key (PEM).")
    kafka_ssl_key_password: SecretStr = Field(
        SecretStr(""), description="Kafka mTLS: password of an encrypted client key.")
    redis_username: str = Field(
        "", description="Redis ACL user (overrides a user in KPISTREAM_REDIS_URL).")
    redis_password: SecretStr = Field(
        SecretStr(""), description="Redis password (overrides one in KPISTREAM_REDIS_URL).")
    redis_ssl_cafile: str = Field("", description="rediss://: CA bundle (PEM) of the server.")
    redis_ssl_certfile: str = Field("", description="rediss://: client certificate (PEM).")
    redis_ssl_keyfile: str = Field("", description="rediss://: client private key (PEM).")
    web_username: str = Field(
        "", description="Web port: HTTP basic auth user for /metrics and health (empty: open).")
    web_password: SecretStr = Field(SecretStr(""), description="Web port: basic auth password.")
    web_ssl_certfile: str = Field(
        "", description="Web port: serve HTTPS with this certificate (PEM) and web_ssl_keyfile.")
    web_ssl_keyfile: str = Field("", description="Web port: private key (PEM) of the certificate.")
    data_dir: str = Field(
        ".local/worker-data", description="Faust data directory; also holds the on-disk "
        "state (state_store=rocksdb). One per worker.")
    log_level: str = Field("info", description="Worker log level.")
    session_timeout: str = Field(
        "20s", description="Kafka consumer session timeout: how long a crashed worker's "
        "partitions wait before another worker takes them over.")
    producer_request_timeout: str = Field(
        "120s", description="How long the worker's producer waits for the broker to answer "
        "a produce request before it reconnects and retries, and for a record to be sent at "
        "all before the worker fails (Kafka's delivery.timeout.ms default). faust's 20 "
        "minutes hide a stuck producer behind a worker that looks alive.")
    fetch_max_wait: str = Field(
        "100ms", description="Longest the broker holds a fetch of the worker's consumers (the "
        "edge's and faust's) waiting for records. A record then waited for the fetch in "
        "flight before it was read: with Kafka's 500 ms (the edge) and faust's 1.5 s (its "
        "stages), rows at 1,809 events/s were visible 0.8 s p50 / 4.95 s p99 after their "
        "order; 100ms: 0.56 / 1.11 s. Idle, each consumer asks once per this wait: an idle "
        "worker used 5.0% of a core (20ms: 12.2%, 500ms: 4.0%; docs/benchmarks.md).")
    consumer_fetch_partition_bytes: int = Field(
        1024 * 1024, ge=64 * 1024, description="Most bytes one fetch of the worker's faust "
        "consumer returns per partition (its internal topics, and the changelogs a start "
        "restores the tables from; compressed bytes). 8 MiB restored 500k events' tables "
        "in 2.6 instead of 3.7 s, but raised a worker's peak RSS by up to 400 MB "
        "(docs/benchmarks.md).")
    edge_fetch_partition_bytes: int = Field(
        4 * 1024 * 1024, ge=64 * 1024, description="Most bytes one fetch of the edge's "
        "consumer returns per raw input partition (compressed bytes; aiokafka's "
        "max_partition_fetch_bytes). The edge reads a backlog in batches of batch_size "
        "records; what one fetch brings beyond that waits in the consumer. 1 MiB did not "
        "lower a worker's peak RSS (501 against 491 MB, 200,000 events, docs/benchmarks.md).")
    changelog_segment: str = Field(
        "1h", description="segment.ms of the changelog topics the worker creates: Kafka "
        "compacts only closed segments, so with its defaults (a week, or 1 GiB) a "
        "changelog keeps every superseded and deleted record that long, and each start "
        "reads them all. Applies when faust creates a changelog; alter existing ones with "
        "kafka-configs (docs/operations.md).")
    kafka_compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        "none", description="Compression of the record batches the worker produces "
        "(internal topics, changelogs, outputs; every Kafka client reads them). The packed "
        "records are JSON and mostly-zero doubles: zstd writes 8x fewer bytes to the "
        "brokers for the same CPU, but raised a worker's peak RSS by 60-100 MB (1000 x 10 "
        "x 5 rows); lz4 cost a quarter more CPU (docs/benchmarks.md).")

    # --- topics ------------------------------------------------------------------------
    topic_orders: str = Field("orders", description="Input topic of orders.")
    topic_ad_spend: str = Field("ad-spend", description="Input topic of ad spend.")
    topic_surveys: str = Field("survey-responses", description="Input topic of survey responses.")
    topic_dlq: str = Field("kpistream-dlq", description="Dead-letter topic.")
    topic_kpi_updates: str = Field("kpi-updates", description="Compacted KPI row topic.")
    topic_alerts: str = Field("kpi-alerts", description="Alert topic.")
    topic_customer_profiles: str = Field(
        "customer-profiles", description="Compacted customer profile topic, for CRMs (SPEC §8).")
    topic_events: str = Field(
        "kpistream-events", description="Internal: packed validated events, partitioned by id."
    )
    topic_rollup: str = Field(
        "kpistream-rollup", description="Internal: bucket values partitioned by row."
    )
    topic_customers: str = Field(
        "kpistream-customers",
        description="Internal: customers' counted orders and responses, partitioned by customer."
    )
    partitions: int = Field(6, ge=1, description="Partitions of every topic kpistream creates.")
    replication: int = Field(1, ge=1, description="Replication factor of created topics.")

    # --- windows and time --------------------------------------------------------------
    windows: Annotated[tuple[str, ...], NoDecode] = Field(
        ("5m/10s", "1h/1m", "24h/15m"), description="Rolling windows as SIZE/STEP."
    )
    clock: ClockMode = Field("live", description="live: wall clock drives windows; event: only ts.")
    idle_lag: str = Field("30s", description="Live mode: stream time >= wall clock - idle_lag.")
    grace: str = Field("5m", description="Lateness allowed beyond the largest window.")
    watermark_settle: str = Field(
        "5s", description="Wall time the low watermark must have stood at a period's end "
        "before the alert detector judges the period or an attribution day becomes final "
        "(SPEC §3). A margin: an edge's \"read to its end\" is checked against the end "
        "offsets the other edges list after each batch, but a producer's writes to partitions "
        "that never held a record can land a batch apart.")
    customer_retention: str = Field(
        "400d", description="A customer inactive for longer than this is deleted (SPEC §8).")
    attribution_period: str = Field(
        "1d", description="Attribution day of customer costs, aligned to the epoch (SPEC §8); "
        "a multiple of the largest window's STEP.")
    max_future: str = Field("5m", description="Reject ts later than wall clock + max_future.")

    # --- input limits ------------------------------------------------------------------
    max_value_bytes: int = Field(65536, ge=1, description="Larger input values are too_large.")
    max_amount: float = Field(
        1e15, gt=0, allow_inf_nan=False,
        description="Largest amount accepted, in the reporting currency: sums of amounts stay "
        "finite (two orders of 1.7e308 summed to inf, published as 'Infinity').")
    reporting_currency: str = Field("EUR", description="Currency of every published amount.")
    currency_rates: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_RATES),
        description="Units of reporting currency per unit of each accepted currency (JSON).",
    )

    # --- publishing --------------------------------------------------------------------
    publish_interval: str = Field("1s", description="A row is published at most this often.")
    publish_check_interval: str = Field(
        "250ms", description="How often the publisher looks, between its full passes once "
        "per publish_interval, for rows that changed and were not published within "
        "publish_interval (new or quiet rows), and publishes them at once: such a change "
        "waits at most this long instead of up to a whole publish_interval. At most "
        "publish_interval.")
    redis_prefix: str = Field("kpi", description="Prefix of every Redis key and the index sets.")
    redis_channel: str = Field("kpi-updates", description="Redis Pub/Sub channel of row updates.")
    redis_alert_channel: str = Field("kpi-alerts", description="Redis Pub/Sub channel of alerts.")
    prometheus_max_groups: int = Field(200, ge=0, description="KPI label groups per dimension.")
    sink_timeout: str = Field("2s", description="Longest a sink write may block the publisher.")

    # --- engine ------------------------------------------------------------------------
    batch_size: int = Field(
        5000, ge=1, description="Edge: raw input records read, validated and packed per batch.")
    batch_within: str = Field(
        "250ms", description="Edge: longest wait to fill a batch: it gathers raw records for "
        "this long after the first ones came. Live traffic at 1,600 events/s: 100ms kept one "
        "worker at 87% CPU with rows visible after 3-4.5 s, 250ms at 73% with 0.4-1.9 s "
        "(docs/benchmarks.md).")
    stage_batch_within: str = Field(
        "50ms", description="Longest a stage (aggregate, roll-up, customers) waits for more "
        "packed records before applying what it has; faust's take_events waits this long "
        "unless a whole batch (aggregate_batch_size, stage_batch_size) came first, so each "
        "stage adds up to this much to a row's freshness. 250ms: p99 2.1-3.9 s at 4,080 "
        "events/s; 50ms (with publish_check_interval): 1.35-1.37 s, a backlog as fast "
        "(docs/benchmarks.md).")
    pack_max_bytes: int = Field(
        512 * 1024, ge=1024, description="Edge: approximate size limit of one packed record "
        "(events and their original values) on the internal events topic.")
    state_store: Literal["rocksdb", "memory"] = Field(
        "rocksdb", description="Where the state that grows with customers and orders lives "
        "(the customer stage's customers, the aggregate's order ids): 'rocksdb' (on disk under "
        "data_dir, rebuilt from the changelogs at each assignment) or 'memory' (in the heap).")
    rocksdb_memory_mb: int = Field(
        64, ge=4, description="state_store=rocksdb: memory budget (MB) of all the worker's "
        "databases together (a shared block cache, memtables charged to it).")
    profile_publish_batch: int = Field(
        20_000, ge=1, description="Most customer profiles built and published per profiles "
        "tick, once per publish_interval (after a restart every profile is published again, "
        "this many at a time).")
    gc_thresholds: Annotated[tuple[int, int, int], NoDecode] = Field(
        (50_000, 20, 100), description="Worker: Python's garbage collector thresholds "
        "(gen0 allocations, gen1 and gen2 multipliers; `gc.set_threshold`). With Python's "
        "700,10,10 the collector rescanned the state held in the heap so often that a worker "
        "with state_store=memory ran 25% slower (docs/benchmarks.md); startup objects are "
        "also frozen out of collections.")
    stage_batch_size: int = Field(
        8, ge=1, description="Roll-up and customer stages: internal records applied as one "
        "batch, per partition the worker could own (one changelog record per partition).")
    aggregate_batch_size: int = Field(
        32, ge=1, description="Aggregate: packed records applied as one batch (over the "
        "partitions it owns; one changelog record and one roll-up message per destination "
        "per partition). Each batch sends the absolute value of every bucket it touched, so "
        "in a backlog larger batches send fewer: 32 against 8 made rows complete 25-35% "
        "sooner (50 campaigns) for 50-110 MB more peak RSS (docs/benchmarks.md); live "
        "traffic fills a batch only up to stage_batch_within.")
    edge_group: str = Field(
        "", description="Consumer group of the edge reader of the raw topics "
        "(default: <app_id>-edge).")
    log_interval: str = Field("10s", description="Rate limit of repeated hot-path log lines.")
    seek_retry: str = Field(
        "2s", description="A stage that sought back over records faust skipped seeks again "
        "if the first of them has not come this long after (faust drops a re-fetched record "
        "below its read offset, which a delivery still in flight may have raised past the "
        "seek). A retry made too early only delivers records again, which the stage applies "
        "idempotently; one made late stalls the partition's commits that long.")
    recovery_retry: str = Field(
        "10s", description="A changelog partition that faust's table recovery still needs "
        "and has delivered nothing for this long is sought again to where recovery stands "
        "(faust drops the re-fetched records below its read offset when a rebalance comes "
        "in the middle of a recovery, and would then wait for them for good). A retry "
        "only reads again records recovery skips.")
    recovery_timeout: str = Field(
        "3m", description="A changelog partition recovery still needs and that has "
        "delivered nothing for this long, retries included, makes the worker exit "
        "non-zero naming it, so that its group hands the partitions to a worker that can "
        "read them (or its supervisor starts it again).")

    # --- alerts ------------------------------------------------------------------------
    alert_baseline_window: str = Field(
        "24h", description="Name (SIZE) of the configured window whose sums give the CPO "
        "alert's baseline CPO; a window of the same SIZE written otherwise (1d, 1440m) is "
        "found too.")
    alert_min_baseline_orders: int = Field(
        20, ge=1, description="Orders the baseline window must hold before a row has a "
        "baseline CPO; below it only the no_baseline rule applies.")
    alert_h: float = Field(
        12.0, gt=0, description="CUSUM threshold h: an alert fires when a statistic exceeds "
        "it and resolves when both are below h/4.")
    alert_rho_stop: float = Field(
        0.1, gt=0, lt=1, description="CUSUM rho of the orders_stopped statistic (order rate "
        "falling to this fraction of expected).")
    alert_rho_shift: float = Field(
        0.5, gt=0, lt=1, description="CUSUM rho of the cpo_shift statistic (0.5: CPO "
        "doubling).")
    alert_min_spend: float = Field(
        50.0, gt=0, description="No-baseline rule: spend over the last hour (reporting "
        "currency) with no order that fires a no_baseline alert.")
    alert_redis_stream_maxlen: int = Field(
        10000, ge=1, description="Approximate cap of the Redis alert stream (XADD MAXLEN ~).")

    @field_validator("windows", mode="before")
    @classmethod
    def _split_windows(cls, value: Any) -> Any:
        """``5m/10s,1h/1m`` or a JSON list."""
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return tuple(json.loads(value))
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("gc_thresholds", mode="before")
    @classmethod
    def _split_gc_thresholds(cls, value: Any) -> Any:
        """``50000,20,100`` or a JSON list."""
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return tuple(json.loads(value))
            return tuple(part.strip() for part in value.split(","))
        return value

    @field_validator("gc_thresholds")
    @classmethod
    def _check_gc_thresholds(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if min(value) < 1:
            raise ValueError("every threshold must be at least 1")
        return value

    @field_validator("windows")
    @classmethod
    def _check_windows(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        specs = [WindowSpec.parse(text) for text in value]
        if not specs:
            raise ValueError("at least one window is required")
        if len({spec.name for spec in specs}) != len(specs):
            raise ValueError("window names (their SIZE) must be unique")
        return value

    @field_validator("idle_lag", "grace", "watermark_settle", "customer_retention",
                     "attribution_period",
                     "max_future",
                     "publish_interval", "publish_check_interval", "sink_timeout",
                     "batch_within", "stage_batch_within",
                     "log_interval",
                     "session_timeout", "producer_request_timeout", "seek_retry",
                     "recovery_retry", "recovery_timeout",
                     "changelog_segment")
    @classmethod
    def _check_duration(cls, value: str) -> str:
        parse_duration_ms(value)
        return value

    @model_validator(mode="after")
    def _check_publish_check(self) -> Settings:
        if self.publish_check_interval_ms > self.publish_interval_ms:
            raise ValueError(f"publish_check_interval={self.publish_check_interval} must not "
                             f"exceed publish_interval={self.publish_interval}")
        return self

    @model_validator(mode="after")
    def _check_recovery(self) -> Settings:
        if self.recovery_timeout_s <= self.recovery_retry_s:
            raise ValueError(f"recovery_timeout={self.recovery_timeout} must exceed "
                             f"recovery_retry={self.recovery_retry}: a stalled partition is "
                             "retried before the worker gives up on it")
        return self

    @model_validator(mode="after")
    def _check_attribution(self) -> Settings:
        step = self.attribution_window.step_ms
        if self.attribution_period_ms % step:
            raise ValueError(f"attribution_period={self.attribution_period} must be a multiple "
                             f"of the largest window's STEP ({step} ms): a day's campaign "
                             "sums are folded from that window's buckets")
        return self

    @model_validator(mode="after")
    def _check_security(self) -> Settings:
        sasl = self.kafka_security_protocol.startswith("SASL_")
        if sasl and not (self.kafka_sasl_username and self.kafka_sasl_password.get_secret_value()):
            raise ValueError(f"kafka_security_protocol={self.kafka_security_protocol} needs "
                             "kafka_sasl_username and kafka_sasl_password")
        if bool(self.kafka_ssl_certfile) != bool(self.kafka_ssl_keyfile):
            raise ValueError("kafka_ssl_certfile and kafka_ssl_keyfile go together (mTLS)")
        if bool(self.redis_ssl_certfile) != bool(self.redis_ssl_keyfile):
            raise ValueError("redis_ssl_certfile and redis_ssl_keyfile go together")
        if bool(self.web_ssl_certfile) != bool(self.web_ssl_keyfile):
            raise ValueError("web_ssl_certfile and web_ssl_keyfile go together")
        if bool(self.web_username) != bool(self.web_password.get_secret_value()):
            raise ValueError("web_username and web_password go together (basic auth)")
        return self

    @field_validator("currency_rates")
    @classmethod
    def _check_rates(cls, value: dict[str, float]) -> dict[str, float]:
        for code, rate in value.items():
            if not re.fullmatch(r"[A-Z]{3}", code) or not rate > 0:
                raise ValueError(f"currency rate {code}={rate}: need ISO code and rate > 0")
        return value

    # --- derived (milliseconds) ----------------------------------------------------------
    @cached_property
    def window_specs(self) -> tuple[WindowSpec, ...]:
        return tuple(WindowSpec.parse(text) for text in self.windows)

    def model_copy(self, *, update: Mapping[str, Any] | None = None,
                   deep: bool = False) -> Self:
        """pydantic's copy, without the cached ``window_specs``: copied along, it kept the
        original windows of a copy given new ones."""
        copy = super().model_copy(update=update, deep=deep)
        copy.__dict__.pop("window_specs", None)
        return copy

    @property
    def idle_lag_ms(self) -> int:
        return parse_duration_ms(self.idle_lag)

    @property
    def watermark_settle_ms(self) -> int:
        return parse_duration_ms(self.watermark_settle)

    @property
    def grace_ms(self) -> int:
        return parse_duration_ms(self.grace)

    @property
    def customer_retention_ms(self) -> int:
        return parse_duration_ms(self.customer_retention)

    @property
    def attribution_period_ms(self) -> int:
        return parse_duration_ms(self.attribution_period)

    @property
    def alert_minute_window(self) -> WindowSpec | None:
        """The window the CPO spike detector reads its minutes and last hour from: the
        smallest of a one-minute STEP and at least an hour."""
        candidates = [s for s in self.window_specs
                      if s.step_ms == 60_000 and s.size_ms >= 3_600_000]
        return min(candidates, key=lambda s: s.size_ms) if candidates else None

    @property
    def alert_windows(self) -> tuple[WindowSpec, ...]:
        """The windows the detector reads (SPEC §6), none when it is off: the minute window
        and the baseline window."""
        minute, baseline = self.alert_minute_window, self.alert_baseline
        if minute is None or baseline is None:
            return ()
        return (minute,) if minute == baseline else (minute, baseline)

    @property
    def alert_baseline(self) -> WindowSpec | None:
        """The configured window alert_baseline_window names: by name, or else by its SIZE
        however written (``1440m`` or ``1d`` for a window ``24h/15m``)."""
        specs = self.window_specs
        named = next((spec for spec in specs if spec.name == self.alert_baseline_window), None)
        if named is not None:
            return named
        try:
            size = parse_duration_ms(self.alert_baseline_window)
        except ValueError:
            return None
        return next((spec for spec in specs if spec.size_ms == size), None)

    @property
    def attribution_window(self) -> WindowSpec:
        """The largest window: its buckets expire exactly when no event of their time can be
        accepted any more, which is when an attribution day becomes final (SPEC §8)."""
        return max(self.window_specs, key=lambda spec: spec.size_ms)

    @property
    def max_future_ms(self) -> int:
        return parse_duration_ms(self.max_future)

    @property
    def publish_interval_ms(self) -> int:
        return parse_duration_ms(self.publish_interval)

    @property
    def publish_check_interval_ms(self) -> int:
        return parse_duration_ms(self.publish_check_interval)

    @property
    def sink_timeout_s(self) -> float:
        return parse_duration_ms(self.sink_timeout) / 1000

    @property
    def fetch_max_wait_ms(self) -> int:
        return parse_duration_ms(self.fetch_max_wait)

    @property
    def batch_within_s(self) -> float:
        return parse_duration_ms(self.batch_within) / 1000

    @property
    def stage_batch_within_s(self) -> float:
        return parse_duration_ms(self.stage_batch_within) / 1000

    @property
    def log_interval_s(self) -> float:
        return parse_duration_ms(self.log_interval) / 1000

    @property
    def seek_retry_s(self) -> float:
        return parse_duration_ms(self.seek_retry) / 1000

    @property
    def recovery_retry_s(self) -> float:
        return parse_duration_ms(self.recovery_retry) / 1000

    @property
    def recovery_timeout_s(self) -> float:
        return parse_duration_ms(self.recovery_timeout) / 1000

    @property
    def retention_ms(self) -> int:
        """How far behind stream time an event may be: largest window SIZE + grace."""
        return max(spec.size_ms for spec in self.window_specs) + self.grace_ms

    @property
    def edge_group_id(self) -> str:
        return self.edge_group or f"{self.app_id}-edge"

    @property
    def input_topics(self) -> dict[str, EventKind]:
        """Input topic name -> event kind."""
        return {
            self.topic_orders: "order",
            self.topic_ad_spend: "spend",
            self.topic_surveys: "survey",
        }

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, SecretFileSource(settings_cls), dotenv_settings)

    def masked(self) -> dict[str, Any]:
        """The effective configuration for printing, secrets masked."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                secret = value.get_secret_value()
                value = _mask_url(secret) if "://" in secret else ("***" if secret else "")
            out[name] = value
        return out


def describe_settings_error(exc: Exception) -> str:
    """A configuration error for people: every bad variable named, and never the values
    given (pydantic quotes its input, which would print secrets)."""
    if isinstance(exc, ValidationError):
        lines = []
        for error in exc.errors(include_input=False, include_url=False):
            where = ".".join(str(part) for part in error["loc"])
            name = f"{ENV_PREFIX}{where}".upper() if where else "settings"
            lines.append(f"  {name}: {error['msg']}")
        return "\n".join(lines)
    causes = []
    current: BaseException | None = exc
    while current is not None:
        causes.append(str(current))
        current = current.__cause__
    return "\n".join(f"  {cause}" for cause in causes)


def secret_fields() -> list[str]:
    """Names of the settings that hold secrets: each may also come from ``<NAME>_FILE``."""
    return [name for name, info in Settings.model_fields.items()
            if info.annotation is SecretStr]


# Not secrets, but mounted beside them (a Kubernetes secret often holds user and password):
# these may come from ``<NAME>_FILE`` too, rather than be silently ignored there.
FILE_USERNAMES = ("kafka_sasl_username", "redis_username", "web_username")


class SecretFileSource(EnvSettingsSource):
    """``KPISTREAM_<SECRET>_FILE=/run/secrets/x``: the secret is the file's content (one
    trailing newline dropped), as Docker and Kubernetes mount secrets. Setting both the
    variable and its ``_FILE`` is an error: which one wins would be a guess."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        if field.annotation is not SecretStr and field_name not in FILE_USERNAMES:
            return None, field_name, False
        env_name = f"{ENV_PREFIX}{field_name}".upper()
        path = _env_ci(env_name + FILE_SUFFIX)
        if not path:  # unset or empty: no file
            return None, field_name, False
        if _env_ci(env_name) is not None:
            raise ValueError(f"set {env_name} or {env_name}{FILE_SUFFIX}, not both")
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"{env_name}{FILE_SUFFIX}: cannot read {path}: "
                             f"{exc.strerror}") from None
        return text.removesuffix("\n").removesuffix("\r"), field_name, False


def _env_ci(name: str) -> str | None:
    """An environment variable by case-insensitive name (as pydantic-settings reads them)."""
    upper = name.upper()
    return next((value for key, value in os.environ.items() if key.upper() == upper), None)


# query parameters of a URL that carry a credential (redis-py reads ``?password=``)
_SECRET_QUERY = re.compile(r"([?&][^=&#]*(?:pass|secret|token|key)[^=&#]*=)[^&#]*", re.I)


def _mask_url(url: str) -> str:
    """Hide a password in ``scheme://user:password@host`` or in a query parameter
    (``?password=``) but keep the rest readable."""
    return _SECRET_QUERY.sub(r"\1***", re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url))

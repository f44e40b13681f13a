"""Settings: environment parsing, validation and masking."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, cast

import pytest
from pydantic import ValidationError

from kpistream.app import create_app
from kpistream.settings import (
    FILE_USERNAMES,
    Settings,
    WindowSpec,
    describe_settings_error,
    parse_duration_ms,
    secret_fields,
)


@pytest.mark.parametrize(("text", "ms"), [("250ms", 250), ("10s", 10_000), ("5m", 300_000),
                                          ("1h", 3_600_000), ("1d", 86_400_000), ("2", 2000),
                                          (1.5, 1500)])
def test_durations(text: str | float, ms: int) -> None:
    assert parse_duration_ms(text) == ms


def test_bad_duration_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration_ms("soon")


@pytest.mark.parametrize("value", ["5m/10s,1h/1m", '["5m/10s", "1h/1m"]'])
def test_windows_from_the_environment(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("KPISTREAM_WINDOWS", value)
    settings = Settings()
    assert settings.window_specs == (WindowSpec("5m", 300_000, 10_000),
                                     WindowSpec("1h", 3_600_000, 60_000))
    assert settings.retention_ms == 3_600_000 + 300_000


@pytest.mark.parametrize("value", ["5m", "5m/7s", "5m/10s,5m/1m"])
def test_invalid_windows_are_rejected(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("KPISTREAM_WINDOWS", value)
    with pytest.raises(ValidationError):
        Settings()


def test_secrets_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KPISTREAM_REDIS_URL", "redis://user:hunter2@cache:6379/0")
    masked = Settings().masked()
    assert masked["redis_url"] == "redis://user:***@cache:6379/0"
    assert "hunter2" not in repr(Settings())


def test_a_password_in_the_url_query_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KPISTREAM_REDIS_URL",
                       "rediss://cache:6380/0?password=hunter2&ssl_cert_reqs=required")
    masked = Settings().masked()
    assert masked["redis_url"] == "rediss://cache:6380/0?password=***&ssl_cert_reqs=required"
    assert "hunter2" not in repr(Settings())


def test_currency_rates_must_be_positive_iso_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KPISTREAM_CURRENCY_RATES", '{"EUR": 1, "usd": 0.9}')
    with pytest.raises(ValidationError):
        Settings()


def test_every_secret_can_come_from_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    for name in secret_fields():
        path = tmp_path / name
        path.write_text(f"from-file-{name}\n")
        monkeypatch.setenv(f"KPISTREAM_{name.upper()}_FILE", str(path))
    monkeypatch.setenv("KPISTREAM_REDIS_URL_FILE", str(tmp_path / "redis_url"))
    (tmp_path / "redis_url").write_text("redis://u:from-file@cache:6379/0\n")
    settings = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="u",
                        web_username="w")
    assert set(secret_fields()) == {"redis_url", "kafka_sasl_password",
                                    "kafka_ssl_key_password", "redis_password", "web_password"}
    assert settings.kafka_sasl_password.get_secret_value() == "from-file-kafka_sasl_password"
    assert settings.web_password.get_secret_value() == "from-file-web_password"
    assert settings.redis_url.get_secret_value() == "redis://u:from-file@cache:6379/0"
    masked = json.dumps(settings.masked())
    assert "from-file" not in masked and "from-file" not in repr(settings)


def test_users_can_come_from_a_file_too(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """A Kubernetes secret often holds the user beside the password."""
    for name in ("kafka_sasl_username", "redis_username", "web_username"):
        (tmp_path / name).write_text(f"user-{name}\n")
        monkeypatch.setenv(f"KPISTREAM_{name.upper()}_FILE", str(tmp_path / name))
    settings = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_password="p",
                        web_password="w")
    assert (settings.kafka_sasl_username, settings.redis_username, settings.web_username) == (
        "user-kafka_sasl_username", "user-redis_username", "user-web_username")
    assert set(FILE_USERNAMES) == {"kafka_sasl_username", "redis_username", "web_username"}


def test_a_secret_and_its_file_together_are_an_error(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path) -> None:
    (tmp_path / "pw").write_text("a")
    monkeypatch.setenv("KPISTREAM_WEB_PASSWORD", "b")
    monkeypatch.setenv("KPISTREAM_WEB_PASSWORD_FILE", str(tmp_path / "pw"))
    with pytest.raises(Exception) as caught:
        Settings()
    assert "set KPISTREAM_WEB_PASSWORD or KPISTREAM_WEB_PASSWORD_FILE, not both" in \
        describe_settings_error(caught.value)


def test_an_unreadable_secret_file_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KPISTREAM_KAFKA_SASL_PASSWORD_FILE", "/nonexistent/pw")
    with pytest.raises(Exception) as caught:
        Settings()
    assert "KPISTREAM_KAFKA_SASL_PASSWORD_FILE: cannot read /nonexistent/pw" in \
        describe_settings_error(caught.value)


def test_configuration_errors_never_quote_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KPISTREAM_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KPISTREAM_KAFKA_SASL_PASSWORD", "hunter2")  # but no user
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert "hunter2" not in str(caught.value)  # not in pydantic's own message either
    message = describe_settings_error(caught.value)
    assert "hunter2" not in message
    assert "needs kafka_sasl_username and kafka_sasl_password" in message


def test_configuration_errors_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KPISTREAM_WEB_PORT", "not-a-port")
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert describe_settings_error(caught.value).startswith("  KPISTREAM_WEB_PORT: ")


@pytest.mark.parametrize("given", [
    {"kafka_security_protocol": "SASL_SSL"},
    {"kafka_ssl_certfile": "c.pem"},
    {"redis_ssl_keyfile": "k.pem"},
    {"web_ssl_certfile": "c.pem"},
    {"web_username": "prometheus"},
])
def test_security_settings_that_go_together(given: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        Settings(**given)


def test_worker_producer_request_timeout_comes_from_the_settings(tmp_path: Path) -> None:
    app = create_app(Settings(producer_request_timeout="45s", data_dir=str(tmp_path)))
    assert app.conf.producer_request_timeout == 45.0


def test_worker_fetch_size_comes_from_the_settings(tmp_path: Path) -> None:
    app = create_app(Settings(consumer_fetch_partition_bytes=3_000_000, data_dir=str(tmp_path)))
    assert app.conf.consumer_max_fetch_size == 3_000_000


def test_worker_consumers_fetch_wait_comes_from_the_settings(tmp_path: Path) -> None:
    """faust's worker consumer hard-codes a 1.5 s fetch wait; the installed one uses the
    setting (the edge's consumer takes it as an argument, stages/edge.py)."""

    async def fetch_wait(settings: Settings) -> int:
        app = create_app(settings)
        thread = cast(Any, app.consumer)._new_consumer_thread()
        consumer = thread._create_worker_consumer(app.transport)  # (not started)
        return int(consumer._fetch_max_wait_ms)

    assert asyncio.run(fetch_wait(Settings(fetch_max_wait="35ms",
                                           data_dir=str(tmp_path / "a")))) == 35
    assert asyncio.run(fetch_wait(Settings(data_dir=str(tmp_path / "b")))) == 100


@pytest.mark.parametrize(("codec", "expected"), [("zstd", "zstd"), ("lz4", "lz4"),
                                                 ("none", None)])
def test_worker_compression_comes_from_the_settings(tmp_path: Path, codec: str,
                                                    expected: str | None) -> None:
    app = create_app(Settings(kafka_compression=codec, data_dir=str(tmp_path)))
    assert app.conf.producer_compression_type == expected
    # and aiokafka can write it (its codecs come from cramjam, a pinned dependency)
    from aiokafka.codec import has_lz4, has_snappy, has_zstd

    assert has_zstd() and has_lz4() and has_snappy()


def test_changelogs_roll_segments_as_the_settings_say() -> None:
    """Kafka compacts closed segments only: the changelogs faust creates roll one every
    ``changelog_segment``, so superseded and deleted packs leave them."""
    from kpistream.state.tables import changelog_configs

    configs = changelog_configs(Settings(changelog_segment="90m"))
    assert configs["segment.ms"] == str(90 * 60 * 1000)
    assert int(configs["max.message.bytes"]) >= Settings().pack_max_bytes


def test_tables_restore_in_small_batches(tmp_path: Path) -> None:
    """faust holds up to recovery_buffer_size changelog records a table while restoring it;
    ours are packed (hundreds of KB each): 1,000 of them held hundreds of MB."""
    from kpistream.state.tables import RECOVERY_BUFFER_RECORDS

    app = create_app(Settings(data_dir=str(tmp_path)))
    sizes = {table.name: table.recovery_buffer_size for table in app.tables.values()}
    assert len(sizes) == 4
    assert set(sizes.values()) == {RECOVERY_BUFFER_RECORDS}
    assert RECOVERY_BUFFER_RECORDS <= 100


def test_recovery_gives_up_only_after_retrying() -> None:
    assert Settings(recovery_retry="10s", recovery_timeout="3m").recovery_timeout_s == 180
    with pytest.raises(ValueError, match="recovery_timeout=10s must exceed recovery_retry=10s"):
        Settings(recovery_retry="10s", recovery_timeout="10s")


def test_a_copy_with_new_windows_has_those_windows() -> None:
    """``window_specs`` is cached: a copy must not carry the original's along."""
    original = Settings(windows=("5m/10s",))
    assert [s.name for s in original.window_specs] == ["5m"]
    copy = original.model_copy(update={"windows": ("1h/1m", "2h/15m")})
    assert [s.name for s in copy.window_specs] == ["1h", "2h"]
    assert copy.attribution_window.name == "2h"
    assert [s.name for s in original.window_specs] == ["5m"]

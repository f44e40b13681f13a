"""Settings: environment parsing, validation and masking."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from kpistream.settings import Settings, WindowSpec, parse_duration_ms


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


def test_currency_rates_must_be_positive_iso_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KPISTREAM_CURRENCY_RATES", '{"EUR": 1, "usd": 0.9}')
    with pytest.raises(ValidationError):
        Settings()

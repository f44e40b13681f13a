"""Raw input bytes -> a normalised :data:`~kpistream.contracts.records.Event` or a rejection.

Pure and synchronous: no I/O, no clock (the caller passes ``now_ms``), no logging. This is the
hot path of the ingest stage, so the three input schemas are compiled once (fastjsonschema
generates plain Python with precompiled regexes) and a call does one ``orjson.loads``, one
schema check and a handful of dict lookups.

Checks, in order (the first failing one decides the error code):

1. absent or empty value -> ``invalid_json``
2. value longer than ``max_value_bytes`` -> ``too_large``
3. not UTF-8 JSON -> ``invalid_json``
4. not a JSON object, or a schema violation -> ``invalid_schema`` (detail ``"field: reason"``)
5. amount not finite, negative, or over ``max_amount`` -> ``invalid_schema``
6. ``ts`` not a real RFC 3339 time (e.g. February 30) -> ``invalid_schema``
7. currency without a configured rate -> ``unknown_currency``
8. survey score outside its scale -> ``out_of_range``
9. ``ts`` later than ``now_ms + max_future`` -> ``future_timestamp``

``late`` and ``unknown_order`` need stream state and are decided by the aggregate stage.
:meth:`Validator.validate` never raises for any bytes.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any, Final, Literal, get_args

import fastjsonschema
import orjson

from kpistream.contracts.records import (
    DEFAULT_DIMENSION_VALUE,
    UNATTRIBUTED,
    Event,
    EventKind,
    Order,
    Spend,
    Survey,
    id_key,
)
from kpistream.contracts.schemas import INPUT_SCHEMAS, load_schema
from kpistream.settings import Settings

ErrorCode = Literal[
    "invalid_json",
    "invalid_schema",
    "unknown_currency",
    "out_of_range",
    "too_large",
    "future_timestamp",
    "late",
    "unknown_order",
]
ERROR_CODES: Final[frozenset[str]] = frozenset(get_args(ErrorCode))

# Inclusive score scales of SPEC.md §1.
SCORE_SCALES: Final[dict[str, tuple[int, int]]] = {"nps": (0, 10), "ces": (1, 7), "csat": (1, 5)}


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a record was not accepted; ``detail`` names the field where there is one."""

    error: ErrorCode
    detail: str
    # The internal key of an otherwise valid event rejected for its time alone (future):
    # read again later it may be valid, and must reach the same partition (ingest/packing).
    key: str | None = None


# Judged after validation, by the edge or the aggregate stage (SPEC §3).
LATE: Final = Rejection("late", "ts is older than stream time minus retention")
UNKNOWN_ORDER: Final = Rejection("unknown_order", "order_id: no such order is known")


# --- time --------------------------------------------------------------------------------

_RFC3339: Final = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))"
)
_EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()


def parse_ts(value: str | int) -> int:
    """An RFC 3339 time with an offset (``Z`` or ``±hh:mm``, optional fractional seconds,
    ``T``, ``t`` or a space between date and time) or epoch milliseconds -> epoch ms.

    Fractional seconds are truncated to the millisecond; a leap second (``:60``) counts as
    the first instant of the next minute. Raises :class:`ValueError` for anything else,
    including times without an offset and impossible dates."""
    if isinstance(value, bool):
        raise ValueError("must be an RFC 3339 time or epoch milliseconds, not a boolean")
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        raise ValueError(f"must be an RFC 3339 time or epoch milliseconds, not {_json_type(value)}")
    match = _RFC3339.fullmatch(value)
    if match is None:
        raise ValueError(f"not an RFC 3339 time with offset: {_show(value)}")
    year, month, day, hh, mm, ss, frac, zulu, sign, off_h, off_m = match.groups()
    hour, minute, second = int(hh), int(mm), int(ss)
    if hour > 23 or minute > 59 or second > 60:
        raise ValueError(f"time of day out of range: {_show(value)}")
    try:
        days = date(int(year), int(month), int(day)).toordinal() - _EPOCH_ORDINAL
    except ValueError as exc:
        raise ValueError(f"invalid date {_show(value)}: {exc}") from None
    offset_s = 0
    if zulu is None:
        offset_h, offset_m = int(off_h), int(off_m)
        if offset_h > 23 or offset_m > 59:
            raise ValueError(f"offset out of range: {_show(value)}")
        offset_s = offset_h * 3600 + offset_m * 60
        if sign == "-":
            offset_s = -offset_s
    millis = int(frac[:3].ljust(3, "0")) if frac else 0
    return (days * 86400 + hour * 3600 + minute * 60 + second - offset_s) * 1000 + millis


# --- schema error details ----------------------------------------------------------------

_PATTERN_MEANING: Final[dict[str, str]] = {
    "ts": "must be an RFC 3339 time with offset (e.g. 2026-11-22T10:15:00Z) or epoch ms",
    "amount": 'must be a number or a decimal string like "19.90"',
}
_PLACED_REQUIRED: Final = ("customer_id", "amount", "currency")
_SHOW_CHARS: Final = 60


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOW_CHARS else text[: _SHOW_CHARS - 3] + "..."


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _schema_detail(exc: Any) -> str:
    """fastjsonschema's ``JsonSchemaValueException`` -> ``"field: reason"``."""
    path = [str(part) for part in (getattr(exc, "path", None) or ["data"])[1:]]
    field = ".".join(path) or "value"
    rule = getattr(exc, "rule", None)
    rule_def: Any = getattr(exc, "rule_definition", None)
    value: Any = getattr(exc, "value", None)
    if rule == "required" and isinstance(rule_def, list):
        present = value if isinstance(value, dict) else {}
        missing = [str(name) for name in rule_def if name not in present] or [str(rule_def)]
        prefix = field + "." if path else ""
        detail = f"{prefix}{missing[0]}: is required"
        if tuple(rule_def) == _PLACED_REQUIRED:
            detail += " when status is placed"
        if len(missing) > 1:
            detail += f" (also missing: {', '.join(missing[1:])})"
        return detail
    if rule == "type":
        types = rule_def if isinstance(rule_def, list) else [rule_def]
        return f"{field}: must be {' or '.join(map(str, types))}, not {_json_type(value)}"
    if rule == "minimum":
        return f"{field}: must be >= {rule_def}"
    if rule == "maximum":
        return f"{field}: must be <= {rule_def}"
    if rule == "minLength":
        return f"{field}: must be at least {rule_def} character(s) long"
    if rule == "maxLength":
        return f"{field}: must be at most {rule_def} characters long"
    if rule == "enum" and isinstance(rule_def, list):
        return f"{field}: must be one of {', '.join(map(str, rule_def))}, not {_show(value)}"
    if rule == "pattern":
        meaning = _PATTERN_MEANING.get(field, f"must match pattern {rule_def}")
        return f"{field}: {meaning}, not {_show(value)}"
    message = str(getattr(exc, "message", exc))
    name = str(getattr(exc, "name", ""))
    if name and message.startswith(name):
        message = message[len(name) :].strip()
    return f"{field}: {message}"


# --- the validator -----------------------------------------------------------------------

_Check = Callable[[Any], Any]


class Validator:
    """Compiled input schemas plus the settings the checks need (limits and rates)."""

    __slots__ = ("_checks", "_max_amount", "_max_bytes", "_max_future_ms", "_rates")

    def __init__(self, settings: Settings) -> None:
        self._checks: dict[str, _Check] = {
            kind: fastjsonschema.compile(load_schema(name))
            for kind, name in INPUT_SCHEMAS.items()
        }
        self._max_bytes = settings.max_value_bytes
        self._max_amount = settings.max_amount
        self._max_future_ms = settings.max_future_ms
        self._rates = dict(settings.currency_rates)

    def validate(self, kind: EventKind, raw: bytes | None, now_ms: int) -> Event | Rejection:
        """Validate and normalise one input value. Never raises for any ``raw``."""
        check = self._checks.get(kind)
        if check is None:
            raise ValueError(f"unknown event kind {kind!r}")  # a caller bug, not bad input
        try:
            return self._validate(kind, check, raw, now_ms)
        except RecursionError:
            return Rejection("invalid_json", "value: nested too deeply")
        except Exception as exc:  # a gap in the checks must not crash the worker
            return Rejection("invalid_schema", f"value: cannot be validated ({exc!r:.80})")

    def _validate(
        self, kind: EventKind, check: _Check, raw: bytes | None, now_ms: int
    ) -> Event | Rejection:
        if not raw:
            return Rejection("invalid_json", "value: empty")
        if len(raw) > self._max_bytes:
            return Rejection(
                "too_large", f"value: {len(raw)} bytes is over the limit of {self._max_bytes}"
            )
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            data = _with_infinite_numbers(raw, exc)
            if data is None:
                return Rejection("invalid_json", f"value: {exc}")
        if type(data) is not dict:
            return Rejection(
                "invalid_schema", f"value: must be a JSON object, not {_json_type(data)}"
            )
        try:
            check(data)
        except fastjsonschema.JsonSchemaValueException as exc:
            return Rejection("invalid_schema", _schema_detail(exc))
        if kind == "order":
            return self._order(data, now_ms)
        if kind == "spend":
            return self._spend(data, now_ms)
        return self._survey(data, now_ms)

    # Each builder runs after the schema check, so types and required fields hold.

    def _order(self, data: dict[str, Any], now_ms: int) -> Order | Rejection:
        status = data.get("status", "placed")
        amount: float | None = None
        raw_amount = data.get("amount")
        if raw_amount is not None:
            parsed = _amount(raw_amount)
            if isinstance(parsed, Rejection):
                return parsed
            amount = parsed
        ts = _ts(data["ts"])
        if isinstance(ts, Rejection):
            return ts
        currency = data.get("currency")
        rate = 1.0
        if currency is not None:
            found = self._rates.get(currency)
            if found is None:
                return _unknown_currency(currency)
            rate = found
        if status == "placed":
            assert amount is not None  # required by the schema when placed
            converted = _convert(amount, rate, self._max_amount)
            if isinstance(converted, Rejection):
                return converted
            order_amount: float | None = converted
        else:
            order_amount = None
        future = self._future(ts, now_ms, id_key("order", data["order_id"]))
        if future is not None:
            return future
        campaign = data.get("campaign_id")
        return Order(
            order_id=data["order_id"],
            ts=ts,
            status=status,
            customer_id=data.get("customer_id"),
            amount=order_amount,
            channel=data.get("channel", DEFAULT_DIMENSION_VALUE),
            campaign_id=UNATTRIBUTED if campaign is None else campaign,
            segment=data.get("segment", DEFAULT_DIMENSION_VALUE),
        )

    def _spend(self, data: dict[str, Any], now_ms: int) -> Spend | Rejection:
        amount = _amount(data["amount"])
        if isinstance(amount, Rejection):
            return amount
        ts = _ts(data["ts"])
        if isinstance(ts, Rejection):
            return ts
        currency = data["currency"]
        rate = self._rates.get(currency)
        if rate is None:
            return _unknown_currency(currency)
        converted = _convert(amount, rate, self._max_amount)
        if isinstance(converted, Rejection):
            return converted
        future = self._future(ts, now_ms, id_key("spend", data["spend_id"]))
        if future is not None:
            return future
        return Spend(
            spend_id=data["spend_id"],
            ts=ts,
            campaign_id=data["campaign_id"],
            channel=data["channel"],
            amount=converted,
        )

    def _survey(self, data: dict[str, Any], now_ms: int) -> Survey | Rejection:
        ts = _ts(data["ts"])
        if isinstance(ts, Rejection):
            return ts
        survey_kind = data["kind"]
        score = int(data["score"])  # the schema admits 9.0 as an integer
        low, high = SCORE_SCALES[survey_kind]
        if not low <= score <= high:
            return Rejection(
                "out_of_range", f"score: {score} is outside the {survey_kind} scale {low}-{high}"
            )
        future = self._future(ts, now_ms, id_key("survey", data["response_id"]))
        if future is not None:
            return future
        campaign = data.get("campaign_id")
        return Survey(
            response_id=data["response_id"],
            ts=ts,
            survey_kind=survey_kind,
            score=score,
            customer_id=data.get("customer_id"),
            channel=data.get("channel", DEFAULT_DIMENSION_VALUE),
            campaign_id=UNATTRIBUTED if campaign is None else campaign,
            segment=data.get("segment", DEFAULT_DIMENSION_VALUE),
            order_id=data.get("order_id"),
        )

    def _future(self, ts: int, now_ms: int, key: str) -> Rejection | None:
        """``key``: the event's internal key (:func:`~kpistream.contracts.records.id_key`)."""
        if ts > now_ms + self._max_future_ms:
            return Rejection(
                "future_timestamp",
                f"ts: {ts} is later than wall clock {now_ms} + max_future "
                f"{self._max_future_ms} ms",
                key,
            )
        return None


def _amount(value: Any) -> float | Rejection:
    """A schema-valid amount (number, or digits with an optional fraction) -> float."""
    try:
        amount = float(value)
    except (TypeError, ValueError, OverflowError):
        return Rejection("invalid_schema", f"amount: not a number: {_show(value)}")
    if not math.isfinite(amount):
        return Rejection("invalid_schema", "amount: must be finite")
    if amount < 0:
        return Rejection("invalid_schema", "amount: must be >= 0")
    return amount


def _convert(amount: float, rate: float, max_amount: float) -> float | Rejection:
    converted = amount * rate
    if not math.isfinite(converted):
        return Rejection("invalid_schema", "amount: must be finite in the reporting currency")
    if converted > max_amount:
        return Rejection("invalid_schema",
                         f"amount: must be at most {max_amount:g} in the reporting currency")
    return converted + 0.0  # -0.0 -> 0.0


def _ts(value: Any) -> int | Rejection:
    if isinstance(value, float):  # an integral JSON number such as 1.7e12 or 2e30
        value = int(value)
    try:
        return parse_ts(value)
    except ValueError as exc:
        return Rejection("invalid_schema", f"ts: {exc}")


def _unknown_currency(currency: object) -> Rejection:
    return Rejection("unknown_currency", f"currency: no rate configured for {_show(currency)}")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _with_infinite_numbers(raw: bytes, error: orjson.JSONDecodeError) -> Any | None:
    """A document orjson refused only because a number overflows a double (``1e400`` is
    valid JSON, and the one way to write a non-finite number in it): parsed again with the
    standard library, so that the field is rejected by name (SPEC §1: amounts are finite)
    rather than the whole value as invalid JSON. None if it is not valid JSON after all."""
    if not str(error).startswith("number is infinity"):
        return None
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except ValueError:
        return None

"""Ingest validation: every field rule, every ingest error code, normalisation, robustness."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import fastjsonschema
import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from kpistream.contracts.records import Order, Spend, Survey
from kpistream.ingest import validate as validate_module
from kpistream.ingest.validate import ERROR_CODES, Rejection, Validator, parse_ts
from kpistream.settings import DEFAULT_RATES, Settings

INGEST_CODES = ERROR_CODES - {"late", "unknown_order"}  # those two need stream state

T0 = int(datetime(2026, 11, 22, 10, 15, tzinfo=UTC).timestamp() * 1000)  # 10:15:00Z
NOW = T0 + 5 * 60_000  # wall clock 10:20:00Z
MAX_FUTURE = 5 * 60_000
LIMIT = 65_536
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

ORDER: dict[str, Any] = {
    "order_id": "o-1", "ts": "2026-11-22T10:15:00Z", "customer_id": "c-1",
    "amount": 19.9, "currency": "EUR",
}
CANCEL: dict[str, Any] = {"order_id": "o-1", "ts": "2026-11-22T10:15:00Z", "status": "cancelled"}
SPEND: dict[str, Any] = {
    "spend_id": "s-1", "ts": "2026-11-22T10:15:00Z", "campaign_id": "summer",
    "channel": "search", "amount": "12.50", "currency": "EUR",
}
SURVEY: dict[str, Any] = {
    "response_id": "r-1", "ts": "2026-11-22T10:15:00Z", "kind": "nps", "score": 9,
}
BASES = {"order": ORDER, "spend": SPEND, "survey": SURVEY}


def with_(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**base, **changes}


def without(base: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in base.items() if k not in names}


def enc(record: Any) -> bytes:
    try:
        return orjson.dumps(record)
    except TypeError:  # integers beyond 64 bits
        return json.dumps(record).encode()


@pytest.fixture(scope="module")
def validator() -> Validator:
    return Validator(Settings(max_value_bytes=LIMIT, max_future="5m",
                              currency_rates=dict(DEFAULT_RATES)))


# --- parse_ts ------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-22T10:15:00Z", T0),
    ("2026-11-22T10:15:00z", T0),
    ("2026-11-22t10:15:00Z", T0),
    ("2026-11-22 10:15:00Z", T0),
    ("2026-11-22T11:15:00+01:00", T0),
    ("2026-11-22T11:15:00.250+01:00", T0 + 250),
    ("2026-11-22T05:15:00-05:00", T0),
    ("2026-11-22T15:45:00+05:30", T0),
    ("2026-11-22T10:15:00+00:00", T0),
    ("2026-11-22T10:15:00-00:00", T0),
    ("2026-11-22T10:15:00.5Z", T0 + 500),
    ("2026-11-22T10:15:00.05Z", T0 + 50),
    ("2026-11-22T10:15:00.123456789Z", T0 + 123),  # truncated to the millisecond
    ("2026-11-22T10:15:00.999999Z", T0 + 999),
    ("1970-01-01T00:00:00Z", 0),
    ("1969-12-31T23:59:59.999Z", -1),
    ("2024-02-29T00:00:00Z", int(datetime(2024, 2, 29, tzinfo=UTC).timestamp() * 1000)),
    ("2016-12-31T23:59:60Z", int(datetime(2017, 1, 1, tzinfo=UTC).timestamp() * 1000)),
    (T0, T0),
    (0, 0),
])
def test_parse_ts(text: str | int, expected: int) -> None:
    assert parse_ts(text) == expected


@pytest.mark.parametrize("text", [
    "2026-11-22T10:15:00",  # no offset
    "2026-11-22",
    "2026-11-22T10:15Z",
    "2026-11-22T10:15:00+0100",
    "2026-11-22T10:15:00+01",
    "2026-11-22T10:15:00.Z",
    "2026-02-30T10:15:00Z",
    "2026-13-01T10:15:00Z",
    "2026-00-01T10:15:00Z",
    "0000-01-01T00:00:00Z",
    "2026-11-22T24:00:00Z",
    "2026-11-22T10:60:00Z",
    "2026-11-22T10:15:61Z",
    "2026-11-22T10:15:00+24:00",
    "2026-11-22T10:15:00+01:60",
    " 2026-11-22T10:15:00Z",
    "2026-11-22T10:15:00Z\n",
    "２０２６-11-22T10:15:00Z",  # non-ASCII digits
    "1763806500000",
    "",
])
def test_parse_ts_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_ts(text)


def test_parse_ts_rejects_non_time_types() -> None:
    for value in (True, 1.5, None, [1]):
        with pytest.raises(ValueError):
            parse_ts(value)  # type: ignore[arg-type]


# --- accepted records and their normalisation ----------------------------------------------

VALID: list[tuple[str, str, dict[str, Any], Any]] = [
    ("order-minimal-defaults", "order", ORDER,
     Order("o-1", T0, "placed", "c-1", 19.9, "unknown", "unattributed", "unknown")),
    ("order-all-fields", "order",
     with_(ORDER, status="placed", channel="email", campaign_id="summer", segment="vip"),
     Order("o-1", T0, "placed", "c-1", 19.9, "email", "summer", "vip")),
    ("order-null-campaign", "order", with_(ORDER, campaign_id=None),
     Order("o-1", T0, "placed", "c-1", 19.9, "unknown", "unattributed", "unknown")),
    ("order-decimal-string", "order", with_(ORDER, amount="19.90"),
     Order("o-1", T0, "placed", "c-1", 19.9, "unknown", "unattributed", "unknown")),
    ("order-integer-string", "order", with_(ORDER, amount="20"),
     Order("o-1", T0, "placed", "c-1", 20.0, "unknown", "unattributed", "unknown")),
    ("order-zero-amount", "order", with_(ORDER, amount=0),
     Order("o-1", T0, "placed", "c-1", 0.0, "unknown", "unattributed", "unknown")),
    ("order-usd-converted", "order", with_(ORDER, amount=100, currency="USD"),
     Order("o-1", T0, "placed", "c-1", 92.0, "unknown", "unattributed", "unknown")),
    ("order-gbp-string-converted", "order", with_(ORDER, amount="10.00", currency="GBP"),
     Order("o-1", T0, "placed", "c-1", 11.7, "unknown", "unattributed", "unknown")),
    ("order-offset-fraction", "order", with_(ORDER, ts="2026-11-22T11:15:00.250+01:00"),
     Order("o-1", T0 + 250, "placed", "c-1", 19.9, "unknown", "unattributed", "unknown")),
    ("order-epoch-ms", "order", with_(ORDER, ts=T0 + 7),
     Order("o-1", T0 + 7, "placed", "c-1", 19.9, "unknown", "unattributed", "unknown")),
    ("order-epoch-ms-integral-float", "order", with_(ORDER, ts=float(T0)),
     Order("o-1", T0, "placed", "c-1", 19.9, "unknown", "unattributed", "unknown")),
    ("order-extra-fields-ignored", "order", with_(ORDER, coupon="X", nested={"a": [1, None]}),
     Order("o-1", T0, "placed", "c-1", 19.9, "unknown", "unattributed", "unknown")),
    ("order-id-128-chars", "order", with_(ORDER, order_id="é" * 128),
     Order("é" * 128, T0, "placed", "c-1", 19.9, "unknown", "unattributed", "unknown")),
    ("order-at-max-future", "order", with_(ORDER, ts=NOW + MAX_FUTURE),
     Order("o-1", NOW + MAX_FUTURE, "placed", "c-1", 19.9, "unknown", "unattributed",
           "unknown")),
    ("order-very-old", "order", with_(ORDER, ts="2001-01-01T00:00:00Z"),  # late is decided later
     Order("o-1", 978307200000, "placed", "c-1", 19.9, "unknown", "unattributed", "unknown")),
    ("cancel-minimal", "order", CANCEL,
     Order("o-1", T0, "cancelled", None, None, "unknown", "unattributed", "unknown")),
    ("cancel-with-order-fields", "order",
     with_(CANCEL, customer_id="c-1", amount="5.00", currency="USD", channel="social"),
     Order("o-1", T0, "cancelled", "c-1", None, "social", "unattributed", "unknown")),
    ("spend", "spend", SPEND, Spend("s-1", T0, "summer", "search", 12.5)),
    ("spend-chf-number", "spend", with_(SPEND, amount=100, currency="CHF"),
     Spend("s-1", T0, "summer", "search", 104.0)),
    ("spend-negative-offset", "spend", with_(SPEND, ts="2026-11-22T05:15:00-05:00"),
     Spend("s-1", T0, "summer", "search", 12.5)),
    ("survey-nps-defaults", "survey", SURVEY,
     Survey("r-1", T0, "nps", 9, None, "unknown", "unattributed", "unknown", None)),
    ("survey-all-fields", "survey",
     with_(SURVEY, customer_id="c-1", channel="email", campaign_id="summer", segment="vip",
           order_id="o-1"),
     Survey("r-1", T0, "nps", 9, "c-1", "email", "summer", "vip", "o-1")),
    ("survey-null-campaign", "survey", with_(SURVEY, campaign_id=None),
     Survey("r-1", T0, "nps", 9, None, "unknown", "unattributed", "unknown", None)),
    ("survey-integral-float-score", "survey", with_(SURVEY, score=9.0),
     Survey("r-1", T0, "nps", 9, None, "unknown", "unattributed", "unknown", None)),
    ("survey-nps-0", "survey", with_(SURVEY, score=0),
     Survey("r-1", T0, "nps", 0, None, "unknown", "unattributed", "unknown", None)),
    ("survey-nps-10", "survey", with_(SURVEY, score=10),
     Survey("r-1", T0, "nps", 10, None, "unknown", "unattributed", "unknown", None)),
    ("survey-ces-1", "survey", with_(SURVEY, kind="ces", score=1),
     Survey("r-1", T0, "ces", 1, None, "unknown", "unattributed", "unknown", None)),
    ("survey-ces-7", "survey", with_(SURVEY, kind="ces", score=7),
     Survey("r-1", T0, "ces", 7, None, "unknown", "unattributed", "unknown", None)),
    ("survey-csat-1", "survey", with_(SURVEY, kind="csat", score=1),
     Survey("r-1", T0, "csat", 1, None, "unknown", "unattributed", "unknown", None)),
    ("survey-csat-5", "survey", with_(SURVEY, kind="csat", score=5),
     Survey("r-1", T0, "csat", 5, None, "unknown", "unattributed", "unknown", None)),
]


@pytest.mark.parametrize(("kind", "record", "expected"),
                         [case[1:] for case in VALID], ids=[case[0] for case in VALID])
def test_accepts_and_normalises(validator: Validator, kind: str, record: dict[str, Any],
                                expected: Any) -> None:
    result = validator.validate(kind, enc(record), NOW)  # type: ignore[arg-type]
    assert not isinstance(result, Rejection), result
    assert type(result) is type(expected)
    amount = getattr(result, "amount", None)
    if amount is not None:
        assert isinstance(amount, float)
        assert amount == pytest.approx(expected.amount, rel=1e-12)
        result = result._replace(amount=expected.amount)  # compare the rest exactly
    assert result == expected
    assert isinstance(result.ts, int)


def test_string_and_number_amounts_agree(validator: Validator) -> None:
    a = validator.validate("order", enc(with_(ORDER, amount="19.90", currency="USD")), NOW)
    b = validator.validate("order", enc(with_(ORDER, amount=19.9, currency="USD")), NOW)
    assert isinstance(a, Order) and isinstance(b, Order)
    assert a.amount == b.amount == 19.9 * 0.92


def test_accepts_bytearray_and_memoryview(validator: Validator) -> None:
    raw = enc(SPEND)
    assert isinstance(validator.validate("spend", bytearray(raw), NOW), Spend)  # type: ignore[arg-type]
    assert isinstance(validator.validate("spend", memoryview(raw), NOW), Spend)  # type: ignore[arg-type]


# --- rejected records ----------------------------------------------------------------------

BIG_PAD = "x" * LIMIT
LONG_ID = "a" * 129

# (id, kind, raw value, error code, detail prefix)
INVALID: list[tuple[str, str, bytes | None, str, str]] = [
    # invalid_json
    ("none", "order", None, "invalid_json", "value:"),
    ("empty", "order", b"", "invalid_json", "value:"),
    ("truncated", "order", b'{"order_id": "o-1"', "invalid_json", "value:"),
    ("not-json", "spend", b"hello", "invalid_json", "value:"),
    ("not-utf8", "survey", b'{"response_id": "\xff\xfe"}', "invalid_json", "value:"),
    ("latin1", "order", '{"order_id": "é"}'.encode("latin-1"), "invalid_json", "value:"),
    ("utf8-bom", "order", b"\xef\xbb\xbf" + enc(ORDER), "invalid_json", "value:"),
    ("nan-literal", "order", b'{"amount": NaN}', "invalid_json", "value:"),
    ("lone-surrogate", "order", b'{"order_id": "\\ud800"}', "invalid_json", "value:"),
    ("deep-nesting", "order", b"[" * 5000 + b"]" * 5000, "invalid_json", "value:"),
    ("trailing-garbage", "order", enc(ORDER) + b"x", "invalid_json", "value:"),
    # too_large (checked before parsing)
    ("too-large", "order", enc(with_(ORDER, pad=BIG_PAD)), "too_large", "value:"),
    ("too-large-garbage", "order", b"\xff" * (LIMIT + 1), "too_large", "value:"),
    # invalid_schema: not an object
    ("array", "order", b"[1, 2]", "invalid_schema", "value: must be a JSON object"),
    ("string", "order", b'"x"', "invalid_schema", "value: must be a JSON object"),
    ("null", "order", b"null", "invalid_schema", "value: must be a JSON object"),
    ("number", "spend", b"42", "invalid_schema", "value: must be a JSON object"),
    # orders: ids
    ("order-id-missing", "order", enc(without(ORDER, "order_id")), "invalid_schema",
     "order_id: is required"),
    ("order-id-empty", "order", enc(with_(ORDER, order_id="")), "invalid_schema", "order_id:"),
    ("order-id-129", "order", enc(with_(ORDER, order_id=LONG_ID)), "invalid_schema",
     "order_id:"),
    ("order-id-int", "order", enc(with_(ORDER, order_id=1)), "invalid_schema",
     "order_id: must be string"),
    ("order-id-null", "order", enc(with_(ORDER, order_id=None)), "invalid_schema", "order_id:"),
    # orders: ts
    ("ts-missing", "order", enc(without(ORDER, "ts")), "invalid_schema", "ts: is required"),
    ("ts-no-offset", "order", enc(with_(ORDER, ts="2026-11-22T10:15:00")), "invalid_schema",
     "ts:"),
    ("ts-date-only", "order", enc(with_(ORDER, ts="2026-11-22")), "invalid_schema", "ts:"),
    ("ts-bad-date", "order", enc(with_(ORDER, ts="2026-02-30T10:15:00Z")), "invalid_schema",
     "ts:"),
    ("ts-bad-hour", "order", enc(with_(ORDER, ts="2026-11-22T25:15:00Z")), "invalid_schema",
     "ts:"),
    ("ts-bad-offset", "order", enc(with_(ORDER, ts="2026-11-22T10:15:00+25:00")),
     "invalid_schema", "ts:"),
    ("ts-numeric-string", "order", enc(with_(ORDER, ts=str(T0))), "invalid_schema", "ts:"),
    ("ts-fractional-number", "order", enc(with_(ORDER, ts=T0 + 0.5)), "invalid_schema", "ts:"),
    ("ts-negative", "order", enc(with_(ORDER, ts=-1)), "invalid_schema", "ts: must be >= 0"),
    ("ts-bool", "order", enc(with_(ORDER, ts=True)), "invalid_schema", "ts:"),
    ("ts-null", "order", enc(with_(ORDER, ts=None)), "invalid_schema", "ts:"),
    # orders: status and the fields required when placed
    ("status-unknown", "order", enc(with_(ORDER, status="shipped")), "invalid_schema",
     "status:"),
    ("status-null", "order", enc(with_(ORDER, status=None)), "invalid_schema", "status:"),
    ("placed-no-customer", "order", enc(without(ORDER, "customer_id")), "invalid_schema",
     "customer_id: is required"),
    ("placed-no-amount", "order", enc(without(ORDER, "amount")), "invalid_schema",
     "amount: is required"),
    ("placed-no-currency", "order", enc(without(ORDER, "currency")), "invalid_schema",
     "currency: is required"),
    ("explicit-placed-no-amount", "order", enc(with_(without(ORDER, "amount"), status="placed")),
     "invalid_schema", "amount: is required"),
    ("customer-int", "order", enc(with_(ORDER, customer_id=7)), "invalid_schema",
     "customer_id:"),
    # orders: amount
    ("amount-negative", "order", enc(with_(ORDER, amount=-1)), "invalid_schema",
     "amount: must be >= 0"),
    ("amount-negative-string", "order", enc(with_(ORDER, amount="-1.00")), "invalid_schema",
     "amount:"),
    ("amount-exponent-string", "order", enc(with_(ORDER, amount="1e3")), "invalid_schema",
     "amount:"),
    ("amount-two-dots", "order", enc(with_(ORDER, amount="19.9.0")), "invalid_schema",
     "amount:"),
    ("amount-comma", "order", enc(with_(ORDER, amount="19,90")), "invalid_schema", "amount:"),
    ("amount-empty-string", "order", enc(with_(ORDER, amount="")), "invalid_schema", "amount:"),
    ("amount-nan-string", "order", enc(with_(ORDER, amount="NaN")), "invalid_schema",
     "amount:"),
    ("amount-inf-string", "order", enc(with_(ORDER, amount="inf")), "invalid_schema",
     "amount:"),
    ("amount-overflow-string", "order", enc(with_(ORDER, amount="9" * 400)), "invalid_schema",
     "amount: must be finite"),
    ("amount-overflow-converted", "order",
     enc(with_(ORDER, amount=1.7e308, currency="GBP")), "invalid_schema", "amount:"),
    # finite, but two of them sum to inf: revenue was published as "Infinity" (SPEC §5)
    ("amount-over-max-amount", "order", enc(with_(ORDER, amount=1.7e308)), "invalid_schema",
     "amount: must be at most 1e+15 in the reporting currency"),
    ("spend-over-max-amount-converted", "spend",
     enc(with_(SPEND, amount="1000000000000000", currency="GBP")), "invalid_schema",
     "amount: must be at most 1e+15"),
    ("amount-bool", "order", enc(with_(ORDER, amount=True)), "invalid_schema", "amount:"),
    ("amount-null", "order", enc(with_(ORDER, amount=None)), "invalid_schema", "amount:"),
    ("amount-list", "order", enc(with_(ORDER, amount=[1])), "invalid_schema", "amount:"),
    ("cancel-amount-negative", "order", enc(with_(CANCEL, amount=-3)), "invalid_schema",
     "amount:"),
    # orders: other fields
    ("currency-int", "order", enc(with_(ORDER, currency=978)), "invalid_schema", "currency:"),
    ("channel-null", "order", enc(with_(ORDER, channel=None)), "invalid_schema", "channel:"),
    ("campaign-int", "order", enc(with_(ORDER, campaign_id=5)), "invalid_schema",
     "campaign_id:"),
    ("segment-list", "order", enc(with_(ORDER, segment=[])), "invalid_schema", "segment:"),
    # ad-spend
    *[(f"spend-no-{name}", "spend", enc(without(SPEND, name)), "invalid_schema",
       f"{name}: is required")
      for name in ("spend_id", "ts", "campaign_id", "channel", "amount", "currency")],
    ("spend-id-empty", "spend", enc(with_(SPEND, spend_id="")), "invalid_schema", "spend_id:"),
    ("spend-id-129", "spend", enc(with_(SPEND, spend_id=LONG_ID)), "invalid_schema",
     "spend_id:"),
    ("spend-campaign-null", "spend", enc(with_(SPEND, campaign_id=None)), "invalid_schema",
     "campaign_id:"),
    ("spend-amount-negative", "spend", enc(with_(SPEND, amount=-0.01)), "invalid_schema",
     "amount: must be >= 0"),
    ("spend-ts-no-offset", "spend", enc(with_(SPEND, ts="2026-11-22 10:15:00")),
     "invalid_schema", "ts:"),
    # survey-responses
    *[(f"survey-no-{name}", "survey", enc(without(SURVEY, name)), "invalid_schema",
       f"{name}: is required")
      for name in ("response_id", "ts", "kind", "score")],
    ("response-id-empty", "survey", enc(with_(SURVEY, response_id="")), "invalid_schema",
     "response_id:"),
    ("response-id-129", "survey", enc(with_(SURVEY, response_id=LONG_ID)), "invalid_schema",
     "response_id:"),
    ("kind-unknown", "survey", enc(with_(SURVEY, kind="ces2")), "invalid_schema", "kind:"),
    ("score-string", "survey", enc(with_(SURVEY, score="9")), "invalid_schema", "score:"),
    ("score-fraction", "survey", enc(with_(SURVEY, score=8.5)), "invalid_schema", "score:"),
    ("score-bool", "survey", enc(with_(SURVEY, score=True)), "invalid_schema",
     "score: must be integer"),
    ("score-null", "survey", enc(with_(SURVEY, score=None)), "invalid_schema", "score:"),
    ("survey-order-id-int", "survey", enc(with_(SURVEY, order_id=1)), "invalid_schema",
     "order_id:"),
    ("survey-campaign-list", "survey", enc(with_(SURVEY, campaign_id=["a"])), "invalid_schema",
     "campaign_id:"),
    # unknown_currency
    ("currency-unknown", "order", enc(with_(ORDER, currency="XYZ")), "unknown_currency",
     "currency:"),
    ("currency-lowercase", "order", enc(with_(ORDER, currency="eur")), "unknown_currency",
     "currency:"),
    ("currency-empty", "order", enc(with_(ORDER, currency="")), "unknown_currency",
     "currency:"),
    ("cancel-currency-unknown", "order", enc(with_(CANCEL, currency="XYZ")),
     "unknown_currency", "currency:"),
    ("spend-currency-unknown", "spend", enc(with_(SPEND, currency="BTC")), "unknown_currency",
     "currency:"),
    # out_of_range
    ("nps-minus-1", "survey", enc(with_(SURVEY, score=-1)), "out_of_range", "score:"),
    ("nps-11", "survey", enc(with_(SURVEY, score=11)), "out_of_range", "score:"),
    ("ces-0", "survey", enc(with_(SURVEY, kind="ces", score=0)), "out_of_range", "score:"),
    ("ces-8", "survey", enc(with_(SURVEY, kind="ces", score=8)), "out_of_range", "score:"),
    ("csat-0", "survey", enc(with_(SURVEY, kind="csat", score=0)), "out_of_range", "score:"),
    ("csat-6", "survey", enc(with_(SURVEY, kind="csat", score=6)), "out_of_range", "score:"),
    ("score-huge", "survey", enc(with_(SURVEY, score=10**30)), "out_of_range", "score:"),
    # future_timestamp
    ("order-future", "order", enc(with_(ORDER, ts=NOW + MAX_FUTURE + 1)), "future_timestamp",
     "ts:"),
    ("cancel-future", "order", enc(with_(CANCEL, ts="2026-11-22T10:25:00.001Z")),
     "future_timestamp", "ts:"),
    ("spend-future", "spend", enc(with_(SPEND, ts="2027-01-01T00:00:00+01:00")),
     "future_timestamp", "ts:"),
    ("survey-future", "survey", enc(with_(SURVEY, ts=NOW + 3_600_000)), "future_timestamp",
     "ts:"),
    ("ts-huge-epoch", "order", enc(with_(ORDER, ts=2**63 - 1)), "future_timestamp", "ts:"),
    ("ts-huge-float-epoch", "order", enc(with_(ORDER, ts=1e30)), "future_timestamp", "ts:"),
    # order of checks: the earlier check decides
    ("first-too-large-then-json", "order", b"{" * (LIMIT + 1), "too_large", "value:"),
    ("first-schema-then-currency", "order", enc(with_(ORDER, currency="XYZ", order_id="")),
     "invalid_schema", "order_id:"),
    ("first-amount-then-ts", "order",
     enc(with_(ORDER, amount="9" * 400, ts="2026-02-30T00:00:00Z")),
     "invalid_schema", "amount:"),
    ("first-ts-then-currency", "order",
     enc(with_(ORDER, currency="XYZ", ts="2026-02-30T00:00:00Z")), "invalid_schema", "ts:"),
    ("first-currency-then-future", "order",
     enc(with_(ORDER, currency="XYZ", ts=NOW + 10 * MAX_FUTURE)), "unknown_currency",
     "currency:"),
    ("first-range-then-future", "survey",
     enc(with_(SURVEY, score=42, ts=NOW + 10 * MAX_FUTURE)), "out_of_range", "score:"),
    # 1e400 is valid JSON (the one way to write a non-finite number in it): the field is
    # named, not the whole value called invalid JSON
    ("infinite-amount", "order", enc(ORDER).replace(b"19.9", b"1e400"), "invalid_schema",
     "amount: must be finite"),
    ("negative-infinite-spend", "spend", enc(SPEND).replace(b'"12.50"', b"-1e400"),
     "invalid_schema", "amount:"),
    ("infinite-score", "survey", enc(SURVEY).replace(b'"score":9', b'"score":1e400'),
     "invalid_schema", "score:"),
    ("infinite-and-nan", "order",
     enc(ORDER).replace(b"19.9", b"1e400").replace(b'"EUR"', b"NaN"), "invalid_json",
     "value:"),
]


@pytest.mark.parametrize(("kind", "raw", "error", "detail"),
                         [case[1:] for case in INVALID], ids=[case[0] for case in INVALID])
def test_rejects(validator: Validator, kind: str, raw: bytes | None, error: str,
                 detail: str) -> None:
    result = validator.validate(kind, raw, NOW)  # type: ignore[arg-type]
    assert isinstance(result, Rejection), result
    assert result.error == error, result
    assert result.detail.startswith(detail), result.detail


def test_every_ingest_error_code_is_covered() -> None:
    assert {case[3] for case in INVALID} == INGEST_CODES


@pytest.mark.parametrize(("record", "detail"), [
    (with_(ORDER, amount=-1), "amount: must be >= 0"),
    (without(ORDER, "order_id"), "order_id: is required"),
    (without(ORDER, "customer_id", "amount"),
     "customer_id: is required when status is placed (also missing: amount)"),
    (with_(ORDER, order_id=1), "order_id: must be string, not integer"),
    (with_(ORDER, status="x"), "status: must be one of placed, cancelled, not 'x'"),
])
def test_detail_wording(validator: Validator, record: dict[str, Any], detail: str) -> None:
    result = validator.validate("order", enc(record), NOW)
    assert isinstance(result, Rejection)
    assert result.detail == detail


def test_size_limit_is_inclusive() -> None:
    raw = enc(ORDER)
    exact = Validator(Settings(max_value_bytes=len(raw)))
    assert isinstance(exact.validate("order", raw, T0), Order)
    smaller = Validator(Settings(max_value_bytes=len(raw) - 1))
    result = smaller.validate("order", raw, T0)
    assert isinstance(result, Rejection) and result.error == "too_large"


def test_configured_rates_and_future_limit() -> None:
    custom = Validator(Settings(currency_rates={"EUR": 1.0, "XBT": 50_000.0}, max_future="1s"))
    spend = custom.validate("spend", enc(with_(SPEND, amount="0.5", currency="XBT")), T0)
    assert isinstance(spend, Spend) and spend.amount == 25_000.0
    usd = custom.validate("spend", enc(with_(SPEND, currency="USD")), T0)
    assert isinstance(usd, Rejection) and usd.error == "unknown_currency"
    late_clock = custom.validate("spend", enc(SPEND), T0 - 1001)
    assert isinstance(late_clock, Rejection) and late_clock.error == "future_timestamp"
    assert isinstance(custom.validate("spend", enc(SPEND), T0 - 1000), Spend)


def test_schemas_compiled_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    real = fastjsonschema.compile

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(validate_module.fastjsonschema, "compile", counting)
    fresh = Validator(Settings())
    assert len(calls) == 3
    for _ in range(10):
        for kind, base in BASES.items():
            fresh.validate(kind, enc(base), NOW)  # type: ignore[arg-type]
    assert len(calls) == 3


def test_input_not_mutated_and_repeatable(validator: Validator) -> None:
    raw = enc(ORDER)
    assert validator.validate("order", raw, NOW) == validator.validate("order", raw, NOW)


# --- robustness (hypothesis) ---------------------------------------------------------------

KINDS = st.sampled_from(["order", "spend", "survey"])


def check_result(result: object, now_ms: int) -> None:
    if isinstance(result, Rejection):
        assert result.error in INGEST_CODES
        assert isinstance(result.detail, str) and result.detail
        return
    assert isinstance(result, (Order, Spend, Survey)), result
    assert isinstance(result.ts, int) and not isinstance(result.ts, bool)
    assert result.ts <= now_ms + MAX_FUTURE
    assert isinstance(result.id, str) and 1 <= len(result.id) <= 128
    assert isinstance(result.channel, str) and isinstance(result.campaign_id, str)
    if isinstance(result, Order):
        assert result.status in ("placed", "cancelled")
        if result.status == "placed":
            assert isinstance(result.amount, float)
            assert math.isfinite(result.amount) and result.amount >= 0
            assert isinstance(result.customer_id, str)
        else:
            assert result.amount is None
        assert isinstance(result.segment, str)
    elif isinstance(result, Spend):
        assert isinstance(result.amount, float)
        assert math.isfinite(result.amount) and result.amount >= 0
    else:
        low, high = {"nps": (0, 10), "ces": (1, 7), "csat": (1, 5)}[result.survey_kind]
        assert type(result.score) is int and low <= result.score <= high


@hsettings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=KINDS, raw=st.one_of(st.none(), st.binary(max_size=512)),
       now_ms=st.integers(min_value=0, max_value=2**62))
def test_arbitrary_bytes_never_raise(validator: Validator, kind: str, raw: bytes | None,
                                    now_ms: int) -> None:
    check_result(validator.validate(kind, raw, now_ms), now_ms)  # type: ignore[arg-type]


TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=20)
SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | TEXT)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(TEXT, inner, max_size=4), max_leaves=12)


@hsettings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=KINDS, value=JSON)
def test_arbitrary_json_never_raises(validator: Validator, kind: str, value: Any) -> None:
    check_result(validator.validate(kind, enc(value), NOW), NOW)  # type: ignore[arg-type]


PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "order_id": st.sampled_from(["o-1", "", "x" * 128, "x" * 129]) | TEXT,
    "spend_id": st.sampled_from(["s-1", ""]) | TEXT,
    "response_id": st.sampled_from(["r-1", ""]) | TEXT,
    "ts": st.sampled_from([
        "2026-11-22T10:15:00Z", "2026-11-22T11:15:00.250+01:00", "2026-11-22T10:15:00",
        "2026-02-30T10:15:00Z", "2026-11-22T10:15:00+24:00", "2016-12-31T23:59:60Z",
        T0, NOW + MAX_FUTURE, NOW + MAX_FUTURE + 1, -1, 0, 2**63 - 1, 1e30, 1.5,
    ]) | st.integers(min_value=-(2**63), max_value=2**64 - 1),
    "status": st.sampled_from(["placed", "cancelled", "PLACED", None]),
    "customer_id": st.sampled_from(["c-1", None, ""]),
    "amount": st.sampled_from(["19.90", "0", "-1", "1e3", "9" * 400, 0, -0.0, 1e308, -1e-300])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.builds("{}.{:02d}".format, st.integers(min_value=0, max_value=10**40),
                st.integers(min_value=0, max_value=99)),
    "currency": st.sampled_from([*DEFAULT_RATES, "XYZ", "eur", ""]),
    "channel": st.sampled_from(["search", "", None]),
    "campaign_id": st.sampled_from(["summer", None, ""]),
    "segment": st.sampled_from(["vip", None]),
    "kind": st.sampled_from(["nps", "ces", "csat", "NPS", None]),
    "score": st.integers(min_value=-3, max_value=13) | st.sampled_from([9.0, 9.5, True, "9"]),
}
FIELD_NAMES = sorted(PLAUSIBLE)


@st.composite
def plausible_records(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A valid record of some kind with a few fields dropped or replaced (plausibly or not)."""
    kind = draw(KINDS)
    record = dict(BASES[kind])
    for name in draw(st.lists(st.sampled_from(FIELD_NAMES), max_size=3, unique=True)):
        action = draw(st.sampled_from(["drop", "plausible", "plausible", "json"]))
        if action == "drop":
            record.pop(name, None)
        elif action == "plausible":
            record[name] = draw(PLAUSIBLE[name])
        else:
            record[name] = draw(JSON)
    return kind, record


@hsettings(max_examples=1500, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=plausible_records(), extra=st.dictionaries(TEXT, JSON, max_size=2))
def test_plausible_records_never_raise(validator: Validator, case: tuple[str, dict[str, Any]],
                                       extra: dict[str, Any]) -> None:
    kind, record = case
    check_result(validator.validate(kind, enc({**extra, **record}), NOW), NOW)  # type: ignore[arg-type]


@hsettings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ts=st.integers(min_value=0, max_value=253402300799999))
def test_parse_ts_roundtrips_isoformat(ts: int) -> None:
    text = (EPOCH + timedelta(milliseconds=ts)).isoformat(timespec="milliseconds")
    assert parse_ts(text) == ts


def test_an_infinite_number_in_an_unknown_field_is_ignored_with_the_field(
        validator: Validator) -> None:
    """1e400 is valid JSON; unknown extra fields are ignored (SPEC §1), whatever they hold."""
    result = validator.validate("order", enc(ORDER)[:-1] + b',"x":1e400}', NOW)
    assert not isinstance(result, Rejection), result
    assert result == validator.validate("order", enc(ORDER), NOW)

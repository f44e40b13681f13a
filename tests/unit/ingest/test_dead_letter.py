"""Dead-letter records: original bytes preserved as text or base64, valid against dlq.json."""

from __future__ import annotations

import base64
from typing import Any

import fastjsonschema
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kpistream.contracts.records import Source
from kpistream.contracts.schemas import load_schema
from kpistream.ingest.dead_letter import dlq_record, source_from_message
from kpistream.ingest.validate import ERROR_CODES

RECEIVED_AT = 1763806500000
check_dlq = fastjsonschema.compile(load_schema("dlq"))


def roundtrip(record: bytes) -> dict[str, Any]:
    body = orjson.loads(record)
    check_dlq(body)
    assert isinstance(body, dict)
    return body


def test_utf8_value_is_kept_as_text() -> None:
    value = '{"order_id": "ö-1", "amount": -1}'.encode()
    source = source_from_message("orders", 3, 1842, b"k\xc3\xa9y", value)
    assert source == Source("orders", 3, 1842, "kéy", '{"order_id": "ö-1", "amount": -1}', None)
    body = roundtrip(dlq_record("invalid_schema", "amount: must be >= 0", source, RECEIVED_AT))
    assert body == {
        "error": "invalid_schema", "detail": "amount: must be >= 0", "topic": "orders",
        "partition": 3, "offset": 1842, "key": "kéy",
        "value": '{"order_id": "ö-1", "amount": -1}', "value_base64": None,
        "received_at": RECEIVED_AT,
    }


def test_non_utf8_value_goes_to_base64() -> None:
    value = b'{"order_id": "\xff\xfe"}'
    source = source_from_message("orders", 0, 7, None, value)
    assert source.value is None
    assert source.value_base64 is not None
    assert base64.b64decode(source.value_base64) == value
    body = roundtrip(dlq_record("invalid_json", "value: not UTF-8", source, RECEIVED_AT))
    assert body["value"] is None
    assert base64.b64decode(body["value_base64"]) == value
    assert body["key"] is None


def test_invalid_utf8_key_is_replaced_not_lost() -> None:
    source = source_from_message("ad-spend", 1, 2, b"a\xffb", b"{}")
    assert source.key == "a\ufffdb"
    assert roundtrip(dlq_record("invalid_schema", "spend_id: is required", source, 0))["key"] \
        == "a\ufffdb"


@pytest.mark.parametrize(("value", "text"), [(None, None), (b"", "")])
def test_absent_and_empty_values(value: bytes | None, text: str | None) -> None:
    source = source_from_message("survey-responses", 5, 0, b"", value)
    assert source.value == text and source.value_base64 is None and source.key == ""
    body = roundtrip(dlq_record("invalid_json", "value: empty", source, RECEIVED_AT))
    assert body["value"] == text and body["value_base64"] is None


def test_surrogate_bytes_are_not_utf8() -> None:
    value = b'"\xed\xa0\x80"'  # an encoded UTF-16 surrogate: not valid UTF-8
    source = source_from_message("orders", 0, 0, None, value)
    assert source.value is None and source.value_base64 == base64.b64encode(value).decode()


@pytest.mark.parametrize("error", sorted(ERROR_CODES))
def test_every_error_code_fits_the_schema(error: str) -> None:
    source = Source("orders", 0, 1, None, "{}")
    roundtrip(dlq_record(error, "detail", source, RECEIVED_AT))  # type: ignore[arg-type]


def test_schema_enum_matches_error_codes() -> None:
    assert set(load_schema("dlq")["properties"]["error"]["enum"]) == ERROR_CODES


def test_schema_rejects_text_and_base64_together() -> None:
    body = orjson.loads(dlq_record("invalid_json", "x", Source("t", 0, 0, None, "a"), 0))
    body["value_base64"] = "YQ=="
    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        check_dlq(body)


@given(key=st.one_of(st.none(), st.binary(max_size=64)),
       value=st.one_of(st.none(), st.binary(max_size=256), st.text(max_size=64).map(
           lambda text: text.encode("utf-8", errors="surrogatepass"))),
       partition=st.integers(min_value=0, max_value=2**31 - 1),
       offset=st.integers(min_value=0, max_value=2**63 - 1),
       detail=st.text(max_size=64).map(lambda t: t.encode("utf-8", "replace").decode()))
def test_any_message_gives_a_valid_lossless_record(key: bytes | None, value: bytes | None,
                                                   partition: int, offset: int,
                                                   detail: str) -> None:
    source = source_from_message("orders", partition, offset, key, value)
    body = roundtrip(dlq_record("invalid_json", detail, source, RECEIVED_AT))
    if value is None:
        assert body["value"] is None and body["value_base64"] is None
    elif body["value"] is not None:
        assert body["value_base64"] is None
        assert body["value"].encode() == value
    else:
        assert base64.b64decode(body["value_base64"]) == value
    assert (body["key"] is None) == (key is None)
    assert body["partition"] == partition and body["offset"] == offset


class RecordingOutbox:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None]] = []

    def send(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        self.sent.append((topic, key, value))


def test_every_error_code_is_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    """SPEC §2: each rejection reason is logged once per rate-limited interval: a flood of
    one code never hides another, and every record is still dead-lettered."""
    import logging

    from kpistream.ingest.dead_letter import DeadLetters
    from kpistream.observability.logs import RateLimitedLog

    outbox = RecordingOutbox()
    letters = DeadLetters("dlq", outbox, RateLimitedLog(  # type: ignore[arg-type]
        logging.getLogger("test.dlq"), interval_s=3600))
    source = Source("orders", 0, 1, None, "{}", None)
    with caplog.at_level(logging.WARNING, logger="test.dlq"):
        for _ in range(100):
            for error in ERROR_CODES:
                letters.send(error, "detail", source, RECEIVED_AT)
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == len(ERROR_CODES) == 8
    for error in ERROR_CODES:
        assert sum(f"error='{error}'" in line for line in logged) == 1
    assert len(outbox.sent) == 100 * len(ERROR_CODES)

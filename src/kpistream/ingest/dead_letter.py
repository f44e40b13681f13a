"""Dead-letter records (SPEC.md §2), pure: the caller sends the bytes to ``kpistream-dlq``.

The original value is quoted as UTF-8 text in ``value``; bytes that are not valid UTF-8 go to
``value_base64`` instead (and ``value`` is null), so nothing is lost and the record stays valid
JSON. The schema is ``kpistream/schemas/dlq.json``.
"""

from __future__ import annotations

import base64

from kpistream.contracts.records import Source
from kpistream.encoding import json_bytes
from kpistream.ingest.validate import ErrorCode
from kpistream.observability.logs import RateLimitedLog
from kpistream.outbox import Outbox


def source_from_message(
    topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None
) -> Source:
    """Where a record came from, with its key and value as text (or the value as base64)."""
    key_text: str | None = None
    if isinstance(key, str):  # tolerate a deserialised key
        key_text = key
    elif key is not None:
        key_text = bytes(key).decode("utf-8", errors="replace")
    value_text: str | None = None
    value_base64: str | None = None
    if isinstance(value, str):
        value_text = value
    elif value is not None:
        raw = bytes(value)
        try:
            value_text = raw.decode("utf-8")
        except UnicodeDecodeError:
            value_base64 = base64.b64encode(raw).decode("ascii")
    return Source(topic, partition, offset, key_text, value_text, value_base64)


def dlq_record(error: ErrorCode, detail: str, source: Source, received_at: int) -> bytes:
    """The JSON value of a dead-letter record."""
    return json_bytes({
        "error": error,
        "detail": detail,
        "topic": source.topic,
        "partition": source.partition,
        "offset": source.offset,
        "key": source.key,
        "value": source.value,
        "value_base64": source.value_base64,
        "received_at": received_at,
    })


class DeadLetters:
    """The one dead-letter writer of every stage: quotes the record, queues it on the outbox
    (sent and acknowledged with the stage's batch) and logs once per interval per error code.
    At-least-once: a crash before the batch's commit writes it again; consumers de-duplicate
    by (topic, partition, offset)."""

    def __init__(self, topic: str, outbox: Outbox, log: RateLimitedLog) -> None:
        self.topic = topic
        self.outbox = outbox
        self.log = log

    def send(self, error: ErrorCode, detail: str, source: Source, received_at: int) -> None:
        self.log.warning("input_rejected", limit_key=error, error=error, detail=detail,
                         topic=source.topic, partition=source.partition, offset=source.offset)
        key = source.key.encode() if source.key is not None else None
        self.outbox.send(self.topic, key, dlq_record(error, detail, source, received_at))

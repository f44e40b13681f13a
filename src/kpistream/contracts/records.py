"""Typed records for validated, normalised events (their wire forms: :mod:`.wire`).

Ingest turns raw bytes into one of these (``ts`` in epoch ms, amounts in the reporting
currency, defaults applied); the aggregate stage reads them back. ``Source`` keeps where the
event came from so a later rejection (``late``, ``unknown_order``) can still quote the
original record in the dead-letter topic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

EventKind = Literal["order", "spend", "survey"]
OrderStatus = Literal["placed", "cancelled"]
SurveyKind = Literal["nps", "ces", "csat"]

DEFAULT_DIMENSION_VALUE = "unknown"
UNATTRIBUTED = "unattributed"


@dataclass(frozen=True, slots=True)
class Source:
    """Coordinates and original bytes (as text or base64) of the input record."""

    topic: str
    partition: int
    offset: int
    key: str | None
    value: str | None
    value_base64: str | None = None


@dataclass(frozen=True, slots=True)
class Order:
    order_id: str
    ts: int
    status: OrderStatus
    customer_id: str | None
    amount: float | None  # reporting currency; None on a cancellation
    channel: str
    campaign_id: str
    segment: str
    kind: EventKind = "order"

    @property
    def id(self) -> str:
        return self.order_id


@dataclass(frozen=True, slots=True)
class Spend:
    spend_id: str
    ts: int
    campaign_id: str
    channel: str
    amount: float  # reporting currency
    kind: EventKind = "spend"

    @property
    def id(self) -> str:
        return self.spend_id


@dataclass(frozen=True, slots=True)
class Survey:
    response_id: str
    ts: int
    survey_kind: SurveyKind
    score: int
    customer_id: str | None
    channel: str
    campaign_id: str
    segment: str
    order_id: str | None
    kind: EventKind = "survey"

    @property
    def id(self) -> str:
        return self.response_id


Event = Order | Spend | Survey


def event_key(event: Event) -> str:
    """Key on the internal topic: one id space per kind, so a cancellation meets its order."""
    return id_key(event.kind, event.id)


def id_key(kind: EventKind, event_id: str) -> str:
    """:func:`event_key` of an event of ``kind`` with id ``event_id``."""
    return f"{kind}:{event_id}"


def expired_order_id(order_id: str, placed_ts: int) -> str:
    """The name a customer's order keeps once its id is used again after the retention (a
    new order, SPEC §1): profiles hold orders by id, and the earlier one stays counted."""
    return f"{order_id}\x00{placed_ts}"

"""Every internal wire format, defined once: one encoder and one decoder each.

- :class:`EventPack`: edge -> aggregate (``kpistream-events``). Many validated events (or the
  coordinates of records the edge dead-lettered) in one record, each with its source
  coordinates, plus what the edge knows of every raw partition it reads (the inputs of the
  low watermark, SPEC §3).
- :class:`RollupMessage`: aggregate -> roll-up (``kpistream-rollup``). Absolute values of the
  buckets one aggregate partition changed, stamped with the internal offset they include, and
  that partition's event time and low mark.
- :class:`AggregatePack`: the aggregate stage's changelog record, one per applied batch: the
  effects of the batch (bucket contributions, id-table upserts) and the partition's header
  (applied offset, stream time, source high-water marks, outcome counts, raw marks).
- :class:`CustomerFacts`: aggregate -> customer stage (``kpistream-customers``): the counted
  orders, retractions and responses of customers, each with the coordinates of its input item.
- :class:`CustomerPack`: the customer stage's changelog record: the new versions of the
  customers one batch changed, and the partition's header.

All of them are JSON arrays (orjson): compact, and readable with any Kafka tool when debugging.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from sys import intern
from typing import Any

import orjson

from kpistream.contracts.records import Event, Order, Source, Spend, Survey

NO_TIME = -(2**62)
ALL_READ = 2**62  # low mark of a partition whose every raw input partition is read to its end

# Outcome labels a pack carries for records the edge rejected (``kpistream_events_total``).
REJECTED_OUTCOMES = ("invalid", "future")


def event_fields(event: Event) -> list[Any]:
    if isinstance(event, Order):
        return ["o", event.order_id, event.ts, event.status, event.customer_id, event.amount,
                event.channel, event.campaign_id, event.segment]
    if isinstance(event, Spend):
        return ["s", event.spend_id, event.ts, event.campaign_id, event.channel, event.amount]
    return ["v", event.response_id, event.ts, event.survey_kind, event.score,
            event.customer_id, event.channel, event.campaign_id, event.segment, event.order_id]


def event_from_fields(fields: list[Any]) -> Event:
    kind = fields[0]
    if kind == "o":
        return Order(*fields[1:9])
    if kind == "s":
        return Spend(*fields[1:6])
    if kind == "v":
        return Survey(*fields[1:10])
    raise ValueError(f"unknown event kind code {kind!r}")


@dataclass(frozen=True, slots=True)
class RawMark:
    """What the edge knows of one raw input partition: the newest event time read from it
    (None before any) and whether it has been read to its end offset."""

    topic: str
    partition: int
    newest_ts: int | None
    at_end: bool


@dataclass(slots=True)
class EventPack:
    """Edge -> aggregate. ``items`` hold an event, or the outcome label of a record the edge
    dead-lettered (it is counted by the aggregate stage, which recognises re-deliveries)."""

    raw_partitions: int
    marks: list[RawMark] = field(default_factory=list)
    items: list[tuple[Source, Event | str]] = field(default_factory=list)


def encode_event_pack(pack: EventPack) -> bytes:
    items = []
    for source, body in pack.items:
        coords = [source.topic, source.partition, source.offset, source.key, source.value,
                  source.value_base64]
        items.append([*coords, body] if isinstance(body, str) else [*coords,
                                                                     event_fields(body)])
    return orjson.dumps([pack.raw_partitions,
                         [[m.topic, m.partition, m.newest_ts, m.at_end] for m in pack.marks],
                         items])


def decode_event_pack(data: bytes) -> EventPack:
    raw_partitions, marks, items = orjson.loads(data)
    out = EventPack(raw_partitions, [RawMark(*m) for m in marks])
    for item in items:
        body = item[6]
        out.items.append((Source(*item[:6]),
                          body if isinstance(body, str) else event_from_fields(body)))
    return out


Sums = tuple[float, ...]


# Not frozen: one is built per event or bucket value, and a frozen dataclass takes
# ~2 µs to build instead of ~0.4 (one object.__setattr__ per field).
@dataclass(slots=True)
class BucketValue:
    """Absolute value of one bucket of one row held by one aggregate partition."""

    window: str
    dimension: str
    group: str
    bucket: int
    sums: Sums


@dataclass(slots=True)
class RollupMessage:
    source: int
    stamp: int
    event_time: int
    low_mark: int
    values: list[BucketValue] = field(default_factory=list)


def encode_rollup(message: RollupMessage) -> bytes:
    return orjson.dumps([message.source, message.stamp, message.event_time, message.low_mark,
                         [[v.window, v.dimension, v.group, v.bucket, *v.sums]
                          for v in message.values]])


# Whole-number sums (counts, and every field a bucket does not use, which is most of them)
# decode to these shared objects instead of a new float each: the roll-up holds a sums vector
# per bucket per source for as long as the largest window, and 24 bytes per float were most
# of its memory.
SHARED_FLOATS: dict[float, float] = {float(i): float(i) for i in range(4097)}


def shared_floats(sums: Sums | list[float]) -> Sums:
    """``sums`` with its whole numbers replaced by the shared objects (equal values)."""
    return tuple(map(SHARED_FLOATS.get, sums, sums))


def decode_rollup(data: bytes) -> RollupMessage:
    """Names are interned: the roll-up keys every held value by them."""
    source, stamp, event_time, low_mark, values = orjson.loads(data)
    return RollupMessage(source, stamp, event_time, low_mark,
                         [BucketValue(intern(v[0]), intern(v[1]), intern(v[2]), v[3],
                                      shared_floats(v[4:])) for v in values])


@dataclass(slots=True)
class AggregatePack:
    """One applied batch of one aggregate partition (its changelog record)."""

    offset: int
    stream_time: int
    high_water: dict[tuple[str, int], int]
    counts: dict[tuple[str, str], int]
    marks: dict[tuple[str, int], tuple[int | None, bool]]
    raw_partitions: int
    ids: list[tuple[str, list[Any]]] = field(default_factory=list)
    # (sign, event, events offset, item index): what the batch added to or retracted from the
    # buckets, with the coordinates of the input item that caused it
    effects: list[tuple[int, Event, int, int]] = field(default_factory=list)
    keep_until: int = NO_TIME
    # events older than this may have been in packs dropped since (their buckets are not
    # whole when rebuilt from the packs left)
    dropped_below: int = NO_TIME


def encode_aggregate_pack(pack: AggregatePack) -> bytes:
    return orjson.dumps([
        pack.offset, pack.stream_time,
        [[t, p, o] for (t, p), o in pack.high_water.items()],
        [[t, outcome, n] for (t, outcome), n in pack.counts.items()],
        [[t, p, newest, end] for (t, p), (newest, end) in pack.marks.items()],
        pack.raw_partitions,
        [[key, record] for key, record in pack.ids],
        [[sign, event_fields(event), o, i] for sign, event, o, i in pack.effects],
        pack.keep_until, pack.dropped_below,
    ])


def decode_aggregate_pack(data: bytes) -> AggregatePack:
    (offset, stream_time, high_water, counts, marks, raw_partitions, ids, effects,
     keep_until, dropped_below) = orjson.loads(data)
    return AggregatePack(
        offset, stream_time,
        {(t, p): o for t, p, o in high_water},
        {(t, outcome): n for t, outcome, n in counts},
        {(t, p): (newest, end) for t, p, newest, end in marks},
        raw_partitions,
        [(key, record) for key, record in ids],
        [(sign, event_from_fields(fields), o, i) for sign, fields, o, i in effects],
        keep_until, dropped_below,
    )


# --- customers -------------------------------------------------------------------------------

# One counted-order or response change of one customer, as the aggregate stage accepted it:
# (events offset, item index, sign, event). The coordinates identify it whatever the batching,
# so the customer stage recognises a fact re-sent after a crash.
CustomerFact = tuple[int, int, int, Event]


@dataclass(frozen=True, slots=True)
class CampaignDayCost:
    """A campaign's final CPO on one attribution day (SPEC §8), with the sums it comes from."""

    campaign: str
    day: int
    cpo: float
    spend: float
    orders: int


@dataclass(slots=True)
class CustomerFacts:
    """To the customer stage (``kpistream-customers``). From an aggregate partition
    (``source`` < partitions): one record per customer partition per applied batch that has
    facts for it or a new low mark (the customer stage judges retention behind the low
    watermark, SPEC §3). From a roll-up partition q (``source`` = partitions + q): the final
    campaign day costs, to every customer partition."""

    source: int
    facts: list[CustomerFact] = field(default_factory=list)
    low_mark: int = NO_TIME
    costs: list[CampaignDayCost] = field(default_factory=list)


def encode_customer_facts(message: CustomerFacts) -> bytes:
    return orjson.dumps([message.source, [[o, i, sign, event_fields(event)]
                                          for o, i, sign, event in message.facts],
                         message.low_mark,
                         [[c.campaign, c.day, c.cpo, c.spend, c.orders]
                          for c in message.costs]])


def decode_customer_facts(data: bytes) -> CustomerFacts:
    source, facts, low_mark, costs = orjson.loads(data)
    return CustomerFacts(source, [(o, i, sign, event_from_fields(fields))
                                  for o, i, sign, fields in facts], low_mark,
                         [CampaignDayCost(*cost) for cost in costs])


# A profile's state: counted orders (order_id -> [ts, amount, channel, campaign, segment]) and
# the latest response of each kind (kind -> [ts, response_id, score]).
OrderEntry = list[Any]
ResponseEntry = list[Any]


@dataclass(slots=True)
class CustomerRecord:
    orders: dict[str, OrderEntry] = field(default_factory=dict)
    responses: dict[str, ResponseEntry] = field(default_factory=dict)
    # the first counted order's id, kept by the customer stage beside the record (derived from
    # ``orders``, so not part of the changelog record)
    first: str | None = field(default=None, compare=False)


@dataclass(slots=True)
class CustomerPack:
    """The customer stage's changelog record, one per applied batch: the new version of every
    customer the batch changed (None: the profile was deleted) and the partition's header."""

    seq: int
    stream_time: int
    high_water: dict[int, tuple[int, int]]
    customers: list[tuple[str, CustomerRecord | None]] = field(default_factory=list)
    # orders that became or stopped being a first order in this batch (order entries): the
    # buckets whose counts a replay of the batch must send again
    moves: list[OrderEntry] = field(default_factory=list)
    # final campaign day costs that arrived in this batch: (campaign, day) -> cpo
    costs: list[tuple[str, int, float]] = field(default_factory=list)


def encode_customer_pack(pack: CustomerPack) -> bytes:
    return orjson.dumps([
        pack.seq, pack.stream_time,
        [[p, o, i] for p, (o, i) in pack.high_water.items()],
        [[customer, None if record is None else [record.orders, record.responses]]
         for customer, record in pack.customers],
        pack.moves,
        [list(cost) for cost in pack.costs],
    ])


def decode_customer_pack(data: bytes) -> CustomerPack:
    seq, stream_time, high_water, customers, moves, costs = orjson.loads(data)
    return CustomerPack(seq, stream_time, {p: (o, i) for p, o, i in high_water},
                        [(customer, None if body is None else CustomerRecord(*body))
                         for customer, body in customers], moves,
                        [(c, d, cpo) for c, d, cpo in costs])

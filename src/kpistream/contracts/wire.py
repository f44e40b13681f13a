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

All of them but the roll-up message are JSON arrays (orjson): compact, and readable with any
Kafka tool when debugging. The roll-up message is binary (see ``encode_rollup``: most of the
values kpistream moves are in it).
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from sys import intern
from typing import Any, overload

import orjson

from kpistream.contracts.records import Event, Order, Source, Spend, Survey
from kpistream.encoding import json_bytes
from kpistream.kpi.formulas import SUM_FIELDS

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
    (None before any), whether it has been read to its end offset, and the offset it reads
    next (None from an edge that did not say: its ``at_end`` is taken as it is)."""

    topic: str
    partition: int
    newest_ts: int | None
    at_end: bool
    position: int | None = None


@dataclass(slots=True)
class EventPack:
    """Edge -> aggregate. ``items`` hold an event, or the outcome label of a record the edge
    dead-lettered (it is counted by the aggregate stage, which recognises re-deliveries)."""

    raw_partitions: int
    marks: list[RawMark] = field(default_factory=list)
    items: list[tuple[Source, Event | str]] = field(default_factory=list)
    # The broker's end offsets of every raw input partition, listed after the edge read the
    # batch: another edge's "read to its end" is stale for a partition that has grown past
    # the position it claimed it for (SPEC §3: nothing left to read).
    ends: dict[tuple[str, int], int] = field(default_factory=dict)


def encode_event_pack(pack: EventPack) -> bytes:
    items = []
    for source, body in pack.items:
        coords = [source.topic, source.partition, source.offset, source.key, source.value,
                  source.value_base64]
        item = [*coords, body] if isinstance(body, str) else [*coords, event_fields(body)]
        if source.seen is not None:  # (an event read out of order only: most have none)
            item.append(source.seen)
        items.append(item)
    return json_bytes([pack.raw_partitions,
                       [[m.topic, m.partition, m.newest_ts, m.at_end, m.position]
                        for m in pack.marks],
                       items, [[t, p, end] for (t, p), end in pack.ends.items()]])


def decode_event_pack(data: bytes) -> EventPack:
    # An earlier edge's pack has three fields and marks of four.
    raw_partitions, marks, items, *ends = orjson.loads(data)
    out = EventPack(raw_partitions, [RawMark(*m) for m in marks],
                    ends={(t, p): end for t, p, end in (ends[0] if ends else [])})
    for item in items:
        body = item[6]
        topic, partition, offset, key, value, value_base64 = item[:6]
        out.items.append((Source(topic, partition, offset, key, value, value_base64,
                                 item[7] if len(item) > 7 else None),
                          body if isinstance(body, str) else event_from_fields(body)))
    return out


# What the aggregate stage holds of one raw input partition: the newest event time read from
# it, whether it has nothing left to read, and the position the edge claimed that at (None: not
# at its end, or an earlier edge that did not say).
PartitionMark = tuple[int | None, bool, int | None]

Sums = tuple[float, ...]
SumsVector = Sequence[float]  # a tuple, or an array of doubles as the roll-up holds them


# Not frozen: one is built per event or bucket value, and a frozen dataclass takes
# ~2 µs to build instead of ~0.4 (one object.__setattr__ per field).
@dataclass(slots=True)
class BucketValue:
    """Absolute value of one bucket of one row held by one aggregate partition."""

    window: str
    dimension: str
    group: str
    bucket: int
    sums: SumsVector


class BucketValues(Sequence[BucketValue]):
    """The values of a decoded roll-up message, in columns: every name once, three name
    indexes and a bucket per value, and all sums end to end, ``width`` doubles each. Read
    by :meth:`columns` (the roll-up's loop); indexing builds :class:`BucketValue` objects."""

    __slots__ = ("buckets", "keys", "name_index", "names", "sums", "width")

    def __init__(self, names: list[str], keys: array[int], buckets: array[int],
                 sums: array[float], width: int) -> None:
        self.names, self.keys, self.buckets, self.sums, self.width = (names, keys, buckets,
                                                                       sums, width)
        self.name_index: dict[str, int] | None = None  # name -> its index, while built

    @classmethod
    def building(cls) -> BucketValues:
        """Empty, for :meth:`append`: a message's values built straight into the columns
        :func:`encode_rollup` writes (no object per value; a worker sends ~5 values per
        event in the 1000-campaign scenario)."""
        values = cls([], array("I"), array("q"), array("d"), 0)
        values.name_index = {}
        return values

    def append(self, window: str, dimension: str, group: str, bucket: int,
               sums: SumsVector) -> None:
        index, names, keys = self.name_index, self.names, self.keys
        if index is None:
            raise TypeError("decoded roll-up values are read-only")
        for name in (window, dimension, group):
            i = index.get(name)
            if i is None:
                i = index[name] = len(names)
                names.append(name)
            keys.append(i)
        if not self.width:
            self.width = len(sums)
        elif len(sums) != self.width:
            raise ValueError(f"roll-up values of {self.width} and of {len(sums)} sums")
        self.buckets.append(bucket)
        self.sums.extend(sums)

    def __len__(self) -> int:
        return len(self.buckets)

    @overload
    def __getitem__(self, i: int) -> BucketValue: ...

    @overload
    def __getitem__(self, i: slice) -> list[BucketValue]: ...

    def __getitem__(self, i: int | slice) -> BucketValue | list[BucketValue]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        names, keys, w = self.names, self.keys, self.width
        return BucketValue(names[keys[3 * i]], names[keys[3 * i + 1]], names[keys[3 * i + 2]],
                           self.buckets[i], tuple(self.sums[i * w:(i + 1) * w]))

    def columns(self) -> Iterator[tuple[str, str, str, int, array[float]]]:
        """(window, dimension, group, bucket, sums) per value; each ``sums`` is an array of
        its own (a C copy: no float object per field)."""
        names, sums, w = self.names, self.sums, self.width
        keys = iter(self.keys)
        j = 0
        for window, dimension, group, bucket in zip(keys, keys, keys, self.buckets,
                                                    strict=True):
            yield names[window], names[dimension], names[group], bucket, sums[j:j + w]
            j += w


@dataclass(slots=True)
class RollupMessage:
    source: int
    stamp: int
    event_time: int
    low_mark: int
    values: Sequence[BucketValue] = field(default_factory=list)
    # The newest event time any raw partition had shown the source: what its ALL_READ low
    # mark is as of (the roll-up tells a source that is behind by it, state/rollup.py).
    seen_time: int = NO_TIME
    # On messages to COUNTS_PARTITION: the source's input outcome counts by (topic,
    # outcome), as of this message (kpistream_events_total).
    counts: dict[tuple[str, str], int] = field(default_factory=dict)


# The roll-up partition that totals every aggregate partition's outcome counts: its owner
# alone exports kpistream_events_total, so a series moves whole between workers and never
# decreases (exported by each aggregate partition's owner, a worker's counter fell whenever
# it lost partitions, and Prometheus read every fall as a reset: rate() over the workers
# was 1.8x the input after a rebalance).
COUNTS_PARTITION = 0


# The roll-up topic carries the one binary format among the internal records: it holds most
# of the values kpistream moves (~150 bucket values per message, 17 doubles each), and as JSON
# their decoding was the roll-up's largest cost (~1.7 µs a value, half of it building float
# objects; docs/benchmarks.md, seventh session). Layout, little-endian:
#   header  version u8, source i32, stamp i64, event time i64, low mark i64,
#           seen time i64, names u32, values u32, width u16 (version 1: no seen time)
#   names   per name: length u32, UTF-8 bytes (windows, dimensions and groups, each once)
#   keys    per value: window, dimension and group name indexes, u32 each
#   buckets per value: i64
#   sums    per value: ``width`` float64
#   counts  per count: topic and outcome name indexes and the count, i64 each (the names
#           follow the values' names; version 3, header field ``counts`` u32 after width)
# A record that starts with ``[`` is the JSON format of earlier versions, still read.
ROLLUP_VERSION = 3
_ROLLUP_HEADER = struct.Struct("<BiqqqqIIHI")
_ROLLUP_HEADER_V2 = struct.Struct("<BiqqqqIIH")
_ROLLUP_HEADER_V1 = struct.Struct("<BiqqqIIH")
_NAME_LENGTH = struct.Struct("<I")
_NATIVE_LITTLE = sys.byteorder == "little"
assert array("I").itemsize == 4 and array("q").itemsize == 8 and array("d").itemsize == 8


def _little(values: array[Any]) -> bytes:
    if not _NATIVE_LITTLE:
        values = array(values.typecode, values)
        values.byteswap()
    return values.tobytes()


def _from_little(typecode: str, data: memoryview) -> array[Any]:
    values = array(typecode)
    values.frombytes(data)
    if not _NATIVE_LITTLE:
        values.byteswap()
    return values


def encode_rollup(message: RollupMessage) -> bytes:
    values = message.values
    if not isinstance(values, BucketValues):
        columns = BucketValues.building()
        for value in values:
            columns.append(value.window, value.dimension, value.group, value.bucket,
                           value.sums)
        values = columns
    names = values.names
    counts = array("q")
    if message.counts:
        names = list(names)
        index = {name: i for i, name in enumerate(names)}
        for (topic, outcome), n in sorted(message.counts.items()):
            for name in (topic, outcome):
                if name not in index:
                    index[name] = len(names)
                    names.append(name)
            counts.extend((index[topic], index[outcome], n))
    parts = [_ROLLUP_HEADER.pack(ROLLUP_VERSION, message.source, message.stamp,
                                 message.event_time, message.low_mark, message.seen_time,
                                 len(names), len(values.buckets), values.width,
                                 len(counts) // 3)]
    for name in names:
        encoded = name.encode()
        parts += (_NAME_LENGTH.pack(len(encoded)), encoded)
    parts += (_little(values.keys), _little(values.buckets), _little(values.sums),
              _little(counts))
    return b"".join(parts)


def decode_rollup(data: bytes) -> RollupMessage:
    """Names are interned: the roll-up keys every held value by them."""
    if data[:1] == b"[":
        return decode_rollup(encode_rollup(_decode_rollup_json(data)))
    version = data[0] if data else None
    n_counts = 0
    if version == ROLLUP_VERSION:
        (_, source, stamp, event_time, low_mark, seen_time, n_names, n_values,
         width, n_counts) = _ROLLUP_HEADER.unpack_from(data)
        pos = _ROLLUP_HEADER.size
    elif version == 2:  # of an earlier worker: no counts
        (_, source, stamp, event_time, low_mark, seen_time, n_names, n_values,
         width) = _ROLLUP_HEADER_V2.unpack_from(data)
        pos = _ROLLUP_HEADER_V2.size
    elif version == 1:  # of an earlier worker: its own event time is what it had seen
        _, source, stamp, event_time, low_mark, n_names, n_values, width = (
            _ROLLUP_HEADER_V1.unpack_from(data))
        seen_time, pos = event_time, _ROLLUP_HEADER_V1.size
    else:
        raise ValueError(f"roll-up message of format version {version}, "
                         f"this worker reads 1 to {ROLLUP_VERSION}")
    view = memoryview(data)
    names = []
    for _ in range(n_names):
        (length,) = _NAME_LENGTH.unpack_from(data, pos)
        pos += _NAME_LENGTH.size
        names.append(intern(str(view[pos:pos + length], "utf-8")))
        pos += length
    columns = []
    for typecode, size in (("I", 12 * n_values), ("q", 8 * n_values),
                           ("d", 8 * n_values * width), ("q", 24 * n_counts)):
        columns.append(_from_little(typecode, view[pos:pos + size]))
        pos += size
    if pos != len(data):
        raise ValueError(f"roll-up message of {len(data)} bytes, its header says {pos}")
    keys, buckets, sums, counted = columns
    if width < len(SUM_FIELDS):  # of an earlier worker: the sums added since are 0
        sums, width = _widen(sums, width, n_values, len(SUM_FIELDS)), len(SUM_FIELDS)
    counts = {(names[counted[i]], names[counted[i + 1]]): counted[i + 2]
              for i in range(0, len(counted), 3)}
    return RollupMessage(source, stamp, event_time, low_mark,
                         BucketValues(names, keys, buckets, sums, width), seen_time, counts)


def _widen(sums: array[float], width: int, n_values: int, to: int) -> array[float]:
    """Each value's ``width`` sums followed by ``to - width`` zeros (sums are only ever
    appended to ``SUM_FIELDS``)."""
    out = array("d", bytes(8 * n_values * to))
    for i in range(n_values):
        out[i * to:i * to + width] = sums[i * width:(i + 1) * width]
    return out


def _decode_rollup_json(data: bytes) -> RollupMessage:
    source, stamp, event_time, low_mark, values = orjson.loads(data)
    return RollupMessage(source, stamp, event_time, low_mark,
                         [BucketValue(v[0], v[1], v[2], v[3], tuple(v[4:])) for v in values],
                         event_time)


@dataclass(slots=True)
class AggregatePack:
    """One applied batch of one aggregate partition (its changelog record)."""

    offset: int
    stream_time: int
    high_water: dict[tuple[str, int], int]
    counts: dict[tuple[str, str], int]
    # raw partition -> (newest event time, read to its end, position of that claim)
    marks: dict[tuple[str, int], PartitionMark]
    raw_partitions: int
    ids: list[tuple[str, list[Any]]] = field(default_factory=list)
    # (sign, event, events offset, item index): what the batch added to or retracted from the
    # buckets, with the coordinates of the input item that caused it
    effects: list[tuple[int, Event, int, int]] = field(default_factory=list)
    keep_until: int = NO_TIME
    # events older than this may have been in packs dropped since (their buckets are not
    # whole when rebuilt from the packs left)
    dropped_below: int = NO_TIME
    # raw partitions woken from nothing left to read: what the others were read up to then
    # (state/aggregate.py, PartitionState.judge_low); a fifth field of their marks' entries
    woken: dict[tuple[str, int], int] = field(default_factory=dict)
    # the largest end offset heard of per raw partition (EventPack.ends)
    ends: dict[tuple[str, int], int] = field(default_factory=dict)


def encode_aggregate_pack(pack: AggregatePack) -> bytes:
    return json_bytes([
        pack.offset, pack.stream_time,
        [[t, p, o] for (t, p), o in pack.high_water.items()],
        [[t, outcome, n] for (t, outcome), n in pack.counts.items()],
        [[t, p, newest, end] if (t, p) not in pack.woken and position is None
         else [t, p, newest, end, pack.woken.get((t, p)), position]
         for (t, p), (newest, end, position) in pack.marks.items()],
        pack.raw_partitions,
        [[key, record] for key, record in pack.ids],
        [[sign, event_fields(event), o, i] for sign, event, o, i in pack.effects],
        pack.keep_until, pack.dropped_below,
        [[t, p, end] for (t, p), end in pack.ends.items()],
    ])


def decode_aggregate_pack(data: bytes) -> AggregatePack:
    # An earlier worker's pack has ten fields, marks of four or five (woken) and no ends.
    (offset, stream_time, high_water, counts, marks, raw_partitions, ids, effects,
     keep_until, dropped_below, *ends) = orjson.loads(data)
    return AggregatePack(
        offset, stream_time,
        {(t, p): o for t, p, o in high_water},
        {(t, outcome): n for t, outcome, n in counts},
        {(m[0], m[1]): (m[2], m[3], m[5] if len(m) > 5 else None) for m in marks},
        raw_partitions,
        [(key, record) for key, record in ids],
        [(sign, event_from_fields(fields), o, i) for sign, fields, o, i in effects],
        keep_until, dropped_below,
        {(m[0], m[1]): m[4] for m in marks if len(m) > 4 and m[4] is not None},
        {(t, p): end for t, p, end in (ends[0] if ends else [])},
    )


# --- aggregate snapshot (a local file, not a Kafka record) ------------------------------------

# A stopping worker leaves each aggregate partition's state beside its id database, for its
# next start on the same disk: the header of the newest pack, a digest of that pack (the
# snapshot is used only if the changelog holds the same pack), the packs held, and the
# buckets. Layout: JSON length (u32, little-endian), JSON, then the buckets' doubles in order.
SNAPSHOT_VERSION = 2  # 2: sums gained cancel_shift (a snapshot of 1 is rebuilt from its packs)
_SNAPSHOT_HEAD = struct.Struct("<I")


@dataclass(slots=True)
class AggregateSnapshot:
    header: AggregatePack  # offset: the applied offset; no ids, no effects
    pack_digest: str
    packs: dict[int, int]  # seq -> keep_until
    seen_time: int
    ids: int  # records in the id database
    # (window, dimension, group, bucket start, sums)
    buckets: list[tuple[str, str, str, int, SumsVector]] = field(default_factory=list)


def encode_aggregate_snapshot(snapshot: AggregateSnapshot) -> bytes:
    rows: dict[tuple[str, str, str], list[int]] = {}
    doubles = array("d")
    width = len(snapshot.buckets[0][4]) if snapshot.buckets else 0
    for window, dimension, group, bucket, sums in sorted(snapshot.buckets,
                                                         key=lambda b: b[:4]):
        rows.setdefault((window, dimension, group), []).append(bucket)
        doubles.extend(sums)
    head = json_bytes([
        SNAPSHOT_VERSION, encode_aggregate_pack(snapshot.header).decode(), snapshot.pack_digest,
        [[seq, keep] for seq, keep in snapshot.packs.items()], snapshot.seen_time, snapshot.ids,
        width, [[*row, starts] for row, starts in rows.items()]])
    if sys.byteorder != "little":
        doubles.byteswap()
    return _SNAPSHOT_HEAD.pack(len(head)) + head + doubles.tobytes()


def decode_aggregate_snapshot(data: bytes) -> AggregateSnapshot:
    """Raises ValueError for another version's snapshot or a damaged one."""
    if len(data) < _SNAPSHOT_HEAD.size:
        raise ValueError("aggregate snapshot: truncated")
    (size,) = _SNAPSHOT_HEAD.unpack_from(data)
    version, header, digest, packs, seen_time, ids, width, rows = orjson.loads(
        data[_SNAPSHOT_HEAD.size:_SNAPSHOT_HEAD.size + size])
    if version != SNAPSHOT_VERSION:
        raise ValueError(f"aggregate snapshot version {version}, expected {SNAPSHOT_VERSION}")
    doubles = array("d", data[_SNAPSHOT_HEAD.size + size:])
    if sys.byteorder != "little":
        doubles.byteswap()
    buckets: list[tuple[str, str, str, int, SumsVector]] = []
    j = 0
    for window, dimension, group, starts in rows:
        for bucket in starts:
            buckets.append((window, dimension, group, bucket, doubles[j:j + width]))
            j += width
    if j != len(doubles):
        raise ValueError("aggregate snapshot: buckets and sums do not match")
    return AggregateSnapshot(decode_aggregate_pack(header.encode()), digest,
                             {seq: keep for seq, keep in packs}, seen_time, ids, buckets)


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
    seen_time: int = NO_TIME  # as in RollupMessage: what an ALL_READ low mark is as of


def encode_customer_facts(message: CustomerFacts) -> bytes:
    return json_bytes([message.source, [[o, i, sign, event_fields(event)]
                                          for o, i, sign, event in message.facts],
                         message.low_mark,
                         [[c.campaign, c.day, c.cpo, c.spend, c.orders]
                          for c in message.costs], message.seen_time])


def decode_customer_facts(data: bytes) -> CustomerFacts:
    fields = orjson.loads(data)
    source, facts, low_mark, costs = fields[:4]
    # (four fields: of an earlier worker, which had seen what its own event time says)
    seen_time = fields[4] if len(fields) > 4 else NO_TIME
    return CustomerFacts(source, [(o, i, sign, event_from_fields(event))
                                  for o, i, sign, event in facts], low_mark,
                         [CampaignDayCost(*cost) for cost in costs], seen_time)


# A profile's state: counted orders (order_id -> [ts, amount, channel, campaign, segment]) and
# the latest response of each kind (kind -> [ts, response_id, score]).
OrderEntry = list[Any]
ResponseEntry = list[Any]


@dataclass(slots=True)
class CustomerRecord:
    orders: dict[str, OrderEntry] = field(default_factory=dict)
    responses: dict[str, ResponseEntry] = field(default_factory=dict)  # latest of each kind
    # the first counted order's id, kept by the customer stage beside the record (derived from
    # ``orders``, so not part of the changelog record)
    first: str | None = field(default=None, compare=False)
    # the ts of every counted response (the latest of each kind alone cannot tell where the
    # customer's spells split, SPEC §8 retention)
    answered: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.answered and self.responses:
            # (a record written before ``answered`` existed knows its latest responses only)
            self.answered = [entry[0] for entry in self.responses.values()]


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
    # the low mark of every aggregate partition heard of (records of earlier versions have
    # none: the stage then reads the topic again from the record after the header)
    low_marks: dict[int, int] = field(default_factory=dict)


def encode_customer_pack(pack: CustomerPack) -> bytes:
    return json_bytes([
        pack.seq, pack.stream_time,
        [[p, o, i] for p, (o, i) in pack.high_water.items()],
        [[customer, None if record is None else [record.orders, record.responses,
                                                   record.answered]]
         for customer, record in pack.customers],
        pack.moves,
        [list(cost) for cost in pack.costs],
        [[p, low] for p, low in pack.low_marks.items()],
    ])


def _customer_record(orders: dict[str, OrderEntry], responses: dict[str, ResponseEntry],
                     answered: list[int] | None = None) -> CustomerRecord:
    return CustomerRecord(orders, responses, answered=answered or [])


def decode_customer_pack(data: bytes) -> CustomerPack:
    seq, stream_time, high_water, customers, moves, costs, *rest = orjson.loads(data)
    return CustomerPack(seq, stream_time, {p: (o, i) for p, o, i in high_water},
                        [(customer, None if body is None else _customer_record(*body))
                         for customer, body in customers], moves,
                        [(c, d, cpo) for c, d, cpo in costs],
                        {p: low for p, low in rest[0]} if rest else {})


# --- customer snapshot (a local file, not a Kafka record) -------------------------------------

# A stopping worker leaves each customers partition's state beside its customer database, for
# its next start on the same disk: everything of the partition but the customers themselves
# (they stay in the database), and a digest of the partition's newest changelog record (the
# snapshot is used only if the changelog's newest record is still that one). JSON.
CUSTOMER_SNAPSHOT_VERSION = 2  # 2: guarded records


@dataclass(slots=True)
class CustomerSnapshot:
    applied: int  # the seq of the newest changelog record, which holds the header
    pack_digest: str
    stream_time: int
    high_water: dict[int, tuple[int, int]]
    low_marks: dict[int, int]
    first_counts: dict[tuple[str, str, str, int], int]  # (window, dimension, group, bucket)
    refs: dict[int, int]  # changelog record seq -> versions it holds
    dead: set[int]
    changed: set[str]  # not published yet
    republish_after: str | None
    expired: set[str]
    costs: dict[tuple[str, int], float]  # (campaign, day) -> cpo
    cost_packs: dict[int, int]
    customers: int  # records in the customer database
    guarded: set[int] = field(default_factory=set)  # records kept for their deletions


def encode_customer_snapshot(snapshot: CustomerSnapshot) -> bytes:
    return json_bytes([
        CUSTOMER_SNAPSHOT_VERSION, snapshot.applied, snapshot.pack_digest, snapshot.stream_time,
        [[p, o, i] for p, (o, i) in snapshot.high_water.items()],
        [[p, low] for p, low in snapshot.low_marks.items()],
        [[*key, n] for key, n in snapshot.first_counts.items()],
        [[seq, n] for seq, n in snapshot.refs.items()], sorted(snapshot.dead),
        sorted(snapshot.changed), snapshot.republish_after, sorted(snapshot.expired),
        [[campaign, day, cpo] for (campaign, day), cpo in snapshot.costs.items()],
        [[seq, day] for seq, day in snapshot.cost_packs.items()], snapshot.customers,
        sorted(snapshot.guarded)])


def decode_customer_snapshot(data: bytes) -> CustomerSnapshot:
    """Raises ValueError for another version's snapshot or a damaged one."""
    try:
        version, *fields = orjson.loads(data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"customer snapshot: damaged ({exc})") from None
    if version != CUSTOMER_SNAPSHOT_VERSION:
        raise ValueError(f"customer snapshot version {version}, "
                         f"expected {CUSTOMER_SNAPSHOT_VERSION}")
    try:
        (applied, digest, stream_time, high_water, low_marks, first_counts, refs, dead,
         changed, republish_after, expired, costs, cost_packs, customers, guarded) = fields
        return CustomerSnapshot(
            applied, digest, stream_time, {p: (o, i) for p, o, i in high_water},
            {p: low for p, low in low_marks},
            {(w, d, g, b): n for w, d, g, b, n in first_counts}, {s: n for s, n in refs},
            set(dead), set(changed), republish_after, set(expired),
            {(c, day): cpo for c, day, cpo in costs}, {s: day for s, day in cost_packs},
            customers, set(guarded))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"customer snapshot: damaged ({exc})") from None

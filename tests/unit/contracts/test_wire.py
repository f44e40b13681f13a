"""Every internal wire format: decode(encode(x)) == x, for any content."""

from __future__ import annotations

import struct
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kpistream.contracts.records import Order, Source, Spend, Survey
from kpistream.contracts.wire import (
    ALL_READ,
    CUSTOMER_SNAPSHOT_VERSION,
    NO_TIME,
    AggregatePack,
    AggregateSnapshot,
    BucketValue,
    BucketValues,
    CampaignDayCost,
    CustomerFacts,
    CustomerPack,
    CustomerRecord,
    CustomerSnapshot,
    EventPack,
    RawMark,
    RollupMessage,
    decode_aggregate_pack,
    decode_aggregate_snapshot,
    decode_customer_facts,
    decode_customer_pack,
    decode_customer_snapshot,
    decode_event_pack,
    decode_rollup,
    encode_aggregate_pack,
    encode_aggregate_snapshot,
    encode_customer_facts,
    encode_customer_pack,
    encode_customer_snapshot,
    encode_event_pack,
    encode_rollup,
)
from kpistream.kpi.formulas import SUM_FIELDS

text = st.text(max_size=12)
times = st.integers(-(2**53), 2**53)
amounts = st.floats(min_value=0, max_value=1e12, allow_nan=False)
orders = st.builds(Order, text, times, st.sampled_from(["placed", "cancelled"]),
                   st.none() | text, st.none() | amounts, text, text, text)
spends = st.builds(Spend, text, times, text, text, amounts)
surveys = st.builds(Survey, text, times, st.sampled_from(["nps", "ces", "csat"]),
                    st.integers(0, 10), st.none() | text, text, text, text, st.none() | text)
events = orders | spends | surveys
sources = st.builds(Source, text, st.integers(0, 1000), st.integers(0, 2**40),
                    st.none() | text, st.none() | text, st.none() | text, st.none() | times)
marks = st.builds(RawMark, text, st.integers(0, 100), st.none() | times, st.booleans(),
                  st.none() | st.integers(0, 2**40))
ends = st.dictionaries(st.tuples(text, st.integers(0, 99)), st.integers(0, 2**40), max_size=4)
sums = st.tuples(*[st.floats(allow_nan=False, allow_infinity=False)] * len(SUM_FIELDS))


@given(st.integers(0, 1000), st.lists(marks, max_size=4),
       st.lists(st.tuples(sources, events | st.sampled_from(["invalid", "future"])),
                max_size=8), ends)
def test_event_pack_round_trip(raw_partitions: int, pack_marks: list[RawMark],
                               items: list, pack_ends: dict) -> None:
    pack = EventPack(raw_partitions, pack_marks, items, pack_ends)
    assert decode_event_pack(encode_event_pack(pack)) == pack


def test_an_earlier_edges_pack_reads_without_positions_or_ends() -> None:
    earlier = b'[18,[["orders",2,1700000000000,true]],[]]'
    assert decode_event_pack(earlier) == EventPack(
        18, [RawMark("orders", 2, 1_700_000_000_000, True, None)], [], {})


marked_times = times | st.sampled_from([NO_TIME, ALL_READ, -1])
names = st.sampled_from(["5m", "1h", "all", "campaign", "c-1"]) | st.text(max_size=12)


def fields_of(message: RollupMessage) -> tuple[Any, ...]:
    return (message.source, message.stamp, message.event_time, message.low_mark,
            list(message.values), message.seen_time, message.counts)


counts = st.dictionaries(st.tuples(names, st.sampled_from(["accepted", "late"])),
                         st.integers(0, 2**40), max_size=4)


@given(st.integers(0, 100), marked_times, marked_times, marked_times, marked_times,
       st.lists(st.builds(BucketValue, names, names, names, times, sums), max_size=6),
       counts)
def test_rollup_message_round_trip(source: int, stamp: int, event_time: int, low: int,
                                   seen: int, values: list[BucketValue],
                                   counted: dict[tuple[str, str], int]) -> None:
    message = RollupMessage(source, stamp, event_time, low, values, seen, counted)
    decoded = decode_rollup(encode_rollup(message))
    assert fields_of(decoded) == fields_of(message)
    assert isinstance(decoded.values, BucketValues)
    assert [(v.window, v.dimension, v.group, v.bucket, v.sums) for v in values] == [
        (w, d, g, b, tuple(s)) for w, d, g, b, s in decoded.values.columns()]
    # earlier versions, of an earlier worker: version 2 (no counts), version 1 (no seen
    # time either: it reads as having seen its own event time)
    message.counts = {}
    data = encode_rollup(message)
    version2 = struct.pack("<BiqqqqIIH", 2, source, stamp, event_time, low, seen,
                           *struct.unpack_from("<IIH", data, 37)) + data[51:]
    assert fields_of(decode_rollup(version2)) == fields_of(message)
    version1 = struct.pack("<BiqqqIIH", 1, source, stamp, event_time, low,
                           *struct.unpack_from("<IIH", data, 37)) + data[51:]
    message.seen_time = event_time
    assert fields_of(decode_rollup(version1)) == fields_of(message)
    # the JSON format of earlier versions (a changelog written before) still reads
    legacy = orjson.dumps([source, stamp, event_time, low,
                           [[v.window, v.dimension, v.group, v.bucket, *v.sums]
                            for v in values]])
    assert fields_of(decode_rollup(legacy)) == fields_of(message)


def test_sums_of_an_earlier_worker_read_with_the_sums_added_since_at_zero() -> None:
    """A changelog written before ``cancel_shift`` (16 sums a value) still reads."""
    old = [BucketValue("1h", "all", "all", 60_000 * i, tuple(float(i + j) for j in range(16)))
           for i in range(3)]
    decoded = decode_rollup(encode_rollup(RollupMessage(1, 2, 3, 4, old)))
    assert isinstance(decoded.values, BucketValues)
    assert [(b, tuple(s)) for _, _, _, b, s in decoded.values.columns()] == [
        (v.bucket, (*v.sums, *[0.0] * (len(SUM_FIELDS) - 16))) for v in old]


def test_a_damaged_rollup_message_is_an_error_naming_it() -> None:
    data = encode_rollup(RollupMessage(1, 2, 3, 4, [BucketValue("5m", "all", "all", 0,
                                                                (1.0,) * 16)]))
    with pytest.raises(ValueError, match="header says"):
        decode_rollup(data[:-8])
    with pytest.raises(ValueError, match="format version 9"):
        decode_rollup(b"\x09" + data[1:])
    decoded = decode_rollup(data).values
    assert isinstance(decoded, BucketValues)
    with pytest.raises(TypeError, match="read-only"):
        decoded.append("5m", "all", "all", 1, (1.0,) * 16)
    with pytest.raises(ValueError, match="of 16 and of 2 sums"):
        encode_rollup(RollupMessage(1, 2, 3, 4, [BucketValue("5m", "all", "all", 0,
                                                             (1.0,) * 16),
                                                 BucketValue("5m", "all", "all", 1,
                                                             (1.0, 2.0))]))


@given(times, times,
       st.dictionaries(st.tuples(text, st.integers(0, 99)), st.integers(0, 2**40), max_size=4),
       st.dictionaries(st.tuples(text, text), st.integers(0, 2**40), max_size=4),
       st.dictionaries(st.tuples(text, st.integers(0, 99)),
                       st.tuples(st.none() | times, st.booleans(),
                                 st.none() | st.integers(0, 2**40)), max_size=4),
       st.lists(st.tuples(text, st.lists(st.none() | times | text, max_size=7)), max_size=4),
       st.lists(st.tuples(st.sampled_from([1, -1]), events, st.integers(0, 2**40),
                          st.integers(0, 10_000)), max_size=5), times, st.data())
def test_aggregate_pack_round_trip(offset, stream_time, high_water, counts, pack_marks, ids,
                                   effects, keep_until, data) -> None:
    woken = {coords: data.draw(times) for coords in pack_marks
             if data.draw(st.booleans())}
    pack = AggregatePack(offset, stream_time, high_water, counts, pack_marks, 18, ids,
                         effects, keep_until, keep_until - 1, woken, data.draw(ends))
    assert decode_aggregate_pack(encode_aggregate_pack(pack)) == pack


def test_an_earlier_workers_aggregate_pack_reads_without_positions_or_ends() -> None:
    earlier = b'[4,1000,[],[],[["orders",0,900,true],["orders",1,800,false,950]],6,[],[],0,0]'
    pack = decode_aggregate_pack(earlier)
    assert (pack.marks, pack.woken, pack.ends) == (
        {("orders", 0): (900, True, None), ("orders", 1): (800, False, None)},
        {("orders", 1): 950}, {})


@given(times, st.dictionaries(st.integers(0, 2**40), times, max_size=4), times,
       st.integers(0, 2**40),
       st.dictionaries(st.tuples(st.sampled_from(["5m", "1h"]), text, text,
                                 st.integers(-(2**50), 2**50)), sums, max_size=6))
def test_aggregate_snapshot_round_trip(offset, packs, seen_time, ids, buckets) -> None:
    header = AggregatePack(offset, seen_time, {("orders", 1): 7}, {("orders", "accepted"): 3},
                           {("orders", 1): (seen_time, False, None),
                            ("orders", 2): (seen_time, True, 40)}, 6,
                           dropped_below=offset - 1, ends={("orders", 2): 40})
    snapshot = AggregateSnapshot(header, "digest", packs, seen_time, ids,
                                 [(*key, values) for key, values in buckets.items()])
    again = decode_aggregate_snapshot(encode_aggregate_snapshot(snapshot))
    assert (again.header, again.pack_digest, again.packs, again.seen_time, again.ids) == (
        header, "digest", packs, seen_time, ids)
    assert {b[:4]: tuple(b[4]) for b in again.buckets} == buckets


seqs = st.integers(0, 2**40)


@given(st.builds(
    CustomerSnapshot, seqs, text, times,
    st.dictionaries(st.integers(0, 100), st.tuples(seqs, st.integers(0, 10_000)), max_size=3),
    st.dictionaries(st.integers(0, 100), times, max_size=3),
    st.dictionaries(st.tuples(st.sampled_from(["5m", "1h"]), text, text, times),
                    st.integers(-5, 5), max_size=5),
    st.dictionaries(seqs, st.integers(0, 10), max_size=4), st.sets(seqs, max_size=3),
    st.sets(text, max_size=4), st.none() | text, st.sets(text, max_size=3),
    st.dictionaries(st.tuples(text, times), amounts, max_size=3),
    st.dictionaries(seqs, times, max_size=3), st.integers(0, 2**40), st.sets(seqs, max_size=3)))
def test_customer_snapshot_round_trip(snapshot: CustomerSnapshot) -> None:
    assert decode_customer_snapshot(encode_customer_snapshot(snapshot)) == snapshot


def test_a_customer_snapshot_of_another_version_or_damaged_is_refused() -> None:
    data = encode_customer_snapshot(CustomerSnapshot(
        5, "d", 0, {}, {}, {}, {5: 1}, set(), set(), None, set(), {}, {}, 1))
    ours = CUSTOMER_SNAPSHOT_VERSION
    with pytest.raises(ValueError, match=f"version {ours + 1}, expected {ours}"):
        decode_customer_snapshot(data.replace(f"[{ours},".encode(), f"[{ours + 1},".encode(), 1))
    for damaged in (data[:-3], data.replace(b"[5,", b"[", 1), b"{}"):
        with pytest.raises(ValueError, match="customer snapshot"):
            decode_customer_snapshot(damaged)


costs = st.lists(st.builds(CampaignDayCost, text, times, amounts, amounts,
                          st.integers(0, 10_000)), max_size=3)


@given(st.integers(0, 100),
       st.lists(st.tuples(st.integers(0, 2**40), st.integers(0, 10_000),
                          st.sampled_from([1, -1]), orders | surveys), max_size=6), times,
       costs, marked_times)
def test_customer_facts_round_trip(source: int, facts: list, low_mark: int,
                                   day_costs: list, seen: int) -> None:
    message = CustomerFacts(source, facts, low_mark, day_costs, seen)
    data = encode_customer_facts(message)
    assert decode_customer_facts(data) == message
    # four fields, of an earlier worker: no seen time
    earlier = orjson.dumps(orjson.loads(data)[:4])
    assert decode_customer_facts(earlier) == CustomerFacts(source, facts, low_mark, day_costs)


records = st.builds(
    CustomerRecord,
    st.dictionaries(text, st.tuples(times, amounts, text, text, text).map(list), max_size=3),
    st.dictionaries(st.sampled_from(["nps", "ces", "csat"]),
                    st.tuples(times, text, st.integers(0, 10)).map(list), max_size=3))


@given(times, times,
       st.dictionaries(st.integers(0, 99), st.tuples(st.integers(0, 2**40),
                                                     st.integers(0, 10_000)), max_size=4),
       st.lists(st.tuples(text, st.none() | records), max_size=4),
       st.lists(st.tuples(times, amounts, text, text, text).map(list), max_size=3),
       st.lists(st.tuples(text, times, amounts), max_size=3),
       st.dictionaries(st.integers(0, 99), marked_times, max_size=4))
def test_customer_pack_round_trip(seq: int, stream_time: int, high_water: dict,
                                  customers: list, moves: list, pack_costs: list,
                                  low_marks: dict) -> None:
    pack = CustomerPack(seq, stream_time, high_water, customers, moves, pack_costs, low_marks)
    assert decode_customer_pack(encode_customer_pack(pack)) == pack
    # a record of an earlier version, without low marks, still reads
    legacy = orjson.loads(encode_customer_pack(pack))[:6]
    assert decode_customer_pack(orjson.dumps(legacy)).low_marks == {}

"""The edge's pure step: routing by id, rejected records as counted coordinates, pack size
limits, marks on every partition when they change."""

from __future__ import annotations

import orjson

from kpistream.contracts.records import Order, event_key
from kpistream.contracts.wire import EventPack, RawMark, decode_event_pack, encode_event_pack
from kpistream.ingest.packing import Packer, RawRecord, partition_for, with_marks
from kpistream.ingest.validate import Validator
from kpistream.settings import Settings

NOW = 1_800_000_000_000
SETTINGS = Settings()


def order(order_id: str, status: str = "placed") -> bytes:
    body = {"order_id": order_id, "ts": NOW - 1000, "status": status}
    if status == "placed":
        body.update(customer_id="c", amount=10, currency="EUR")
    return orjson.dumps(body)


def packer(max_bytes: int = 512 * 1024) -> Packer:
    return Packer(Validator(SETTINGS), SETTINGS.input_topics, 6, max_bytes,
                  SETTINGS.retention_ms)


def order_at(order_id: str, ts: int) -> bytes:
    return orjson.dumps({"order_id": order_id, "ts": ts, "customer_id": "c", "amount": 1,
                         "currency": "EUR"})


def test_events_go_to_the_partition_of_their_id_with_their_source() -> None:
    records = [RawRecord("orders", 2, i, None, order(f"o{i % 5}", "placed" if i < 5 else
                                                    "cancelled")) for i in range(10)]
    batch = packer().pack(records, NOW, 18)
    seen = 0
    for p, packs in batch.packs.items():
        for pack in packs:
            for source, event in pack.items:
                assert isinstance(event, Order)
                assert p == partition_for(event_key(event), 6)  # a cancel meets its order
                assert (source.topic, source.partition) == ("orders", 2)
                seen += 1
    assert seen == 10 and batch.newest == {("orders", 2): NOW - 1000}


def test_rejections_travel_as_counted_coordinates_and_are_returned_for_the_dlq() -> None:
    records = [RawRecord("orders", 1, 7, b"k", b"{not json"),
               RawRecord("orders", 1, 8, None, orjson.dumps({"order_id": "x", "ts": NOW * 2,
                                                             "customer_id": "c", "amount": 1,
                                                             "currency": "EUR"}))]
    batch = packer().pack(records, NOW, 18)
    assert [(r.error, s.offset) for r, s in batch.rejections] == [
        ("invalid_json", 7), ("future_timestamp", 8)]
    items = [item for packs in batch.packs.values() for pack in packs for item in pack.items]
    assert [(s.offset, body, s.value) for s, body in items] == [
        (7, "invalid", None), (8, "future", None)]
    # rejected for its time alone, an event goes where it would go accepted (its id's
    # partition); any other rejection to the partition of its source partition
    where = {s.offset: p for p, packs in batch.packs.items()
             for pack in packs for s, _ in pack.items}
    assert where == {7: partition_for("orders:1", 6), 8: partition_for("order:x", 6)}


def test_an_event_older_than_one_read_before_it_from_its_partition_by_the_retention_is_late(
        ) -> None:
    """SPEC §3: the earlier record was produced first, so live it had moved stream time
    past this one; no other partition's marks are needed (a backlog read in one batch)."""
    r = SETTINGS.retention_ms
    records = [RawRecord("orders", 0, 0, None, order_at("a", NOW)),
               RawRecord("orders", 0, 1, None, order_at("late", NOW - r - 1)),
               RawRecord("orders", 0, 2, None, order_at("edge", NOW - r)),
               RawRecord("orders", 1, 0, None, order_at("first-of-1", NOW - 2 * r)),
               RawRecord("orders", 2, 5, None, order_at("late-2", NOW - r - 1))]
    # partition 2's newest from an earlier batch; partition 1's is unknown: its first
    # record is not judged here (the aggregate holds it to the low mark)
    batch = packer().pack(records, NOW, 18, {("orders", 2): NOW})
    assert [(s.partition, s.offset, r.error) for r, s in batch.rejections] == [
        (0, 1, "late"), (2, 5, "late")]
    bodies = {(s.partition, s.offset): body for packs in batch.packs.values()
              for pack in packs for s, body in pack.items}
    assert bodies[(0, 1)] == bodies[(2, 5)] == "late"
    # to the partition of its id, where it would have gone accepted: a second reading that
    # judges it otherwise meets the first there (high-water mark per raw partition)
    where = {(s.partition, s.offset): p for p, packs in batch.packs.items()
             for pack in packs for s, _ in pack.items}
    assert where[(0, 1)] == partition_for("order:late", 6)
    assert where[(2, 5)] == partition_for("order:late-2", 6)
    assert {k: type(v).__name__ for k, v in bodies.items() if v != "late"} == {
        (0, 0): "Order", (0, 2): "Order", (1, 0): "Order"}
    # a late event moves nothing; partition 2 read nothing newer than it knew
    assert batch.newest == {("orders", 0): NOW, ("orders", 1): NOW - 2 * r}


def test_packs_are_split_at_the_size_limit() -> None:
    records = [RawRecord("orders", 0, i, None, order("same-id")) for i in range(50)]
    batch = packer(max_bytes=2048).pack(records, NOW, 18)
    (packs,) = batch.packs.values()
    assert len(packs) > 3
    assert all(len(encode_event_pack(p)) < 2048 * 2 for p in packs)
    assert sum(len(p.items) for p in packs) == 50


def test_changed_marks_reach_every_partition_unchanged_ones_ride_along() -> None:
    batch = packer().pack([RawRecord("orders", 0, 0, None, order("a"))], NOW, 18)
    marks = [RawMark("orders", 0, NOW - 1000, True)]
    everywhere = with_marks(batch, marks, 6, 18, everywhere=True, ends={})
    assert sorted(everywhere) == list(range(6))
    assert all(packs[-1].marks == marks for packs in everywhere.values())
    only = with_marks(batch, marks, 6, 18, everywhere=False, ends={})
    assert list(only) == list(batch.packs)
    decoded = decode_event_pack(encode_event_pack(everywhere[0][-1]))
    assert isinstance(decoded, EventPack) and decoded.marks == marks


def test_end_offsets_go_with_every_pack_before_its_events() -> None:
    """The aggregate stage applies a pack's ends before its events, so every pack of a
    batch split at the size limit carries them, not only the last (which has the marks)."""
    records = [RawRecord("orders", 0, i, None, order("same-id")) for i in range(50)]
    batch = packer(max_bytes=2048).pack(records, NOW, 18)
    ends = {("orders", 0): 50, ("orders", 1): 7}
    (packs,) = with_marks(batch, [], 6, 18, everywhere=False, ends=ends).values()
    assert len(packs) > 3
    assert all(decode_event_pack(encode_event_pack(p)).ends == ends for p in packs)


def test_an_event_read_out_of_order_carries_the_newest_time_its_partition_had_given() -> None:
    """The aggregate partition of an out-of-order event may not hold the events that moved
    its raw partition on (other ids, other partitions): the event carries that time
    (``Source.seen``), from this batch or an earlier one, through the wire format."""
    hour = 3_600_000
    records = [RawRecord("orders", 0, 0, None, order_at("a", NOW)),
               RawRecord("orders", 0, 1, None, order_at("b", NOW + hour)),
               RawRecord("orders", 0, 2, None, order_at("c", NOW + 30 * 60_000)),
               RawRecord("orders", 0, 3, None, order_at("d", NOW + 2 * hour)),
               RawRecord("orders", 1, 0, None, order_at("e", NOW - hour))]
    batch = packer().pack(records, NOW + 3 * hour, 18, {("orders", 1): NOW})
    seen = {event.order_id: source.seen  # type: ignore[union-attr]
            for packs in batch.packs.values() for pack in packs
            for source, event in decode_event_pack(encode_event_pack(pack)).items}
    assert seen == {"a": None, "b": None, "c": NOW + hour, "d": None, "e": NOW}

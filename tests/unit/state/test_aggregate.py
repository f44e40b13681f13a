"""PartitionAggregator details the property tests do not single out."""

from __future__ import annotations

from kpistream.contracts.records import Order, Source, Spend
from kpistream.contracts.wire import ALL_READ, NO_TIME, EventPack, RawMark
from kpistream.settings import Settings
from kpistream.state.aggregate import PartitionAggregator
from kpistream.state.store import DictPackLog

T = 1_800_000_000_000
HOUR = 3_600_000


def aggregator(log: DictPackLog | None = None) -> PartitionAggregator:
    return PartitionAggregator(Settings(clock="event"), log or DictPackLog())


def order(order_id: str, ts: int, status: str = "placed") -> Order:
    return Order(order_id, ts, status, "c", 10.0 if status == "placed" else None,  # type: ignore[arg-type]
                 "search", "c1", "new")


def pack(*events: object, first: int = 0, marks: list[RawMark] | None = None) -> EventPack:
    return EventPack(1, marks or [], [(Source("orders", 0, first + i, None, "{}"), e)
                                      for i, e in enumerate(events)])  # type: ignore[misc]


def test_one_changelog_record_per_batch_whatever_the_rows() -> None:
    log = DictPackLog()
    agg = aggregator(log)
    events = [Order(f"o{i}", T + i * 60_000, "placed", "c", 5.0, f"ch{i % 7}", f"c{i}",
                    f"s{i % 3}") for i in range(300)]
    result = agg.process(0, [(0, pack(*events[:150])), (1, pack(*events[150:], first=150))], T)
    assert log.writes == 1
    assert sum(len(u) for u in result.updates.values()) > 300  # many buckets, one record


def test_replayed_batch_is_not_applied_again_and_resends_its_buckets() -> None:
    log = DictPackLog()
    agg = aggregator(log)
    batch = [(0, pack(order("a", T), Spend("s", T + 25 * HOUR, "c1", "search", 5.0)))]
    first = agg.process(0, batch, T)
    again = agg.process(0, batch, T)  # same internal offsets: a replay after a crash
    assert [v.outcome for v in first.verdicts] == ["accepted", "accepted"]
    assert again.verdicts == []  # neither counted nor dead-lettered again
    assert again.updates == first.updates  # absolute values re-sent for the lost messages
    assert agg.state(0, T).counts == {("orders", "accepted"): 2}


def test_redelivered_source_records_are_skipped_not_counted_as_duplicates() -> None:
    agg = aggregator()
    agg.process(0, [(0, pack(order("a", T), order("b", T)))], T)
    result = agg.process(0, [(1, pack(order("a", T), order("b", T), order("c", T)))], T)
    assert [v.outcome for v in result.verdicts] == ["accepted"]  # only offset 2 is new
    result = agg.process(0, [(2, EventPack(1, [], [(Source("orders", 0, 9, None, None),
                                                     order("a", T))]))], T)
    assert [v.outcome for v in result.verdicts] == ["duplicate"]  # a genuine duplicate
    assert agg.state(0, T).counts == {("orders", "accepted"): 3, ("orders", "duplicate"): 1}


def test_state_rebuilt_from_packs_equals_the_live_state() -> None:
    log = DictPackLog()
    agg = aggregator(log)
    agg.process(0, [(0, pack(order("a", T), order("b", T + 1)))], T)
    agg.process(0, [(1, pack(order("a", T + 5, "cancelled"), first=2))], T)
    live = agg.state(0, T)
    rebuilt = aggregator(log).state(0, T)
    assert rebuilt.buckets == live.buckets and rebuilt.ids == live.ids
    assert rebuilt.counts == live.counts and rebuilt.applied == 1


def test_cancellation_before_its_order_counts_nowhere() -> None:
    agg = aggregator()
    result = agg.process(0, [(0, pack(order("a", T + 5, "cancelled"), order("a", T)))], T)
    assert [v.outcome for v in result.verdicts] == ["unknown_order", "accepted"]
    assert result.updates == {}


def test_low_mark_is_the_slowest_raw_partition_not_read_to_its_end() -> None:
    agg = aggregator()
    marks = [RawMark("orders", 0, T + 10, False), RawMark("orders", 1, T + 5, False)]
    assert agg.process(0, [(0, EventPack(3, marks))], T).low_mark == NO_TIME  # 1 unknown
    marks = [RawMark("ad-spend", 0, None, True)]
    assert agg.process(0, [(1, EventPack(3, marks))], T).low_mark == T + 5
    marks = [RawMark("orders", 1, T + 7, True)]
    assert agg.process(0, [(2, EventPack(3, marks))], T).low_mark == T + 10
    marks = [RawMark("orders", 0, T + 10, True)]
    assert agg.process(0, [(3, EventPack(3, marks))], T).low_mark == ALL_READ


def test_packs_leave_with_retention_but_the_newest_stays() -> None:
    log = DictPackLog()
    agg = aggregator(log)
    agg.process(0, [(0, pack(order("a", T)))], T)
    agg.process(0, [(1, pack(order("b", T + 30 * HOUR), first=1))], T)
    agg.process(0, [(2, pack(order("c", T + 60 * HOUR), first=2))], T)
    agg.sweep(0, T)
    assert sorted(seq for _, seq in log.data) == [2]
    assert aggregator(log).state(0, T).applied == 2


def test_a_redelivery_is_skipped_however_far_stream_time_has_moved() -> None:
    agg = aggregator()
    agg.process(0, [(0, pack(order("a", T), order("a", T + 5, "cancelled")))], T)
    agg.process(0, [(1, pack(order("z", T + 48 * HOUR), first=2))], T)
    # The edge crashed before committing offsets 0-1: they come again, two days later in
    # stream time. Neither late, nor a duplicate, nor an unknown order: nothing at all.
    again = agg.process(0, [(2, pack(order("a", T), order("a", T + 5, "cancelled")))], T)
    assert again.verdicts == []
    assert agg.state(0, T).counts == {("orders", "accepted"): 3}

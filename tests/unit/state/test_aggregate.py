"""PartitionAggregator details the property tests do not single out."""

from __future__ import annotations

from pathlib import Path

from kpistream.contracts.records import Order, Source, Spend
from kpistream.contracts.wire import (
    ALL_READ,
    NO_TIME,
    EventPack,
    RawMark,
    decode_aggregate_pack,
)
from kpistream.kpi.formulas import SUM_FIELDS
from kpistream.settings import Settings
from kpistream.stages.aggregate import customer_facts
from kpistream.state.aggregate import PartitionAggregator
from kpistream.state.buckets import bucket_expired
from kpistream.state.rocks import RocksIdMap, RocksMemory
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
    assert len(result.touched) > 300  # many buckets, one record


def test_a_partition_not_loaded_yet_counts_what_its_newest_pack_says() -> None:
    """kpistream_events_total of a partition just assigned, before its rebuild (a worker
    that took it over after a kill exported 0 for seconds after the lag read 0)."""
    log = DictPackLog()
    agg = aggregator(log)
    agg.process(0, [(0, pack(order("a", T), order("a", T)))], T)
    agg.process(0, [(1, pack(order("b", T), first=2))], T)
    owner = aggregator(log)  # another worker, same changelog
    assert owner.counts(0) == {("orders", "accepted"): 2, ("orders", "duplicate"): 1}
    assert 0 not in owner.parts  # read from the header, not rebuilt
    assert owner.counts(1) == {}
    assert owner.state(0, T).counts == owner.counts(0)


def test_replayed_batch_is_not_applied_again_and_resends_its_buckets() -> None:
    log = DictPackLog()
    agg = aggregator(log)
    batch = [(0, pack(order("a", T), Spend("s", T + 30_000, "c1", "search", 5.0)))]
    first = agg.process(0, batch, T)
    sent = {key: sums.tolist() for key, sums in first.touched.items()}  # (live arrays)
    again = agg.process(0, batch, T)  # same internal offsets: a replay after a crash
    assert [v.outcome for v in first.verdicts] == ["accepted", "accepted"]
    assert again.verdicts == []  # neither counted nor dead-lettered again
    assert {key: sums.tolist() for key, sums in again.touched.items()} == sent  # re-sent
    assert agg.state(0, T).counts == {("orders", "accepted"): 2}


def test_buckets_expire_at_the_end_of_the_batch_that_passes_them() -> None:
    settings = Settings(clock="event")
    agg = aggregator()
    hours = [order(f"o{i}", T + i * HOUR // 4, ) for i in range(4 * 30)]  # 30 hours
    for offset in range(0, len(hours), 8):
        result = agg.process(0, [(offset, pack(*hours[offset:offset + 8], first=offset))], T)
        state = agg.state(0, T)
        t = agg.expiry_time(state, T)
        specs = {spec.name: spec for spec in settings.window_specs}
        # exactly the buckets a full sweep at this moment would leave
        assert all(not bucket_expired(key[3], specs[key[0]], t, settings.grace_ms)
                   for key in state.buckets)
        index = state.buckets.index
        assert {(window, *by_start.row, bucket) for (window, bucket), held in index.items()
                for by_start in held} == set(state.buckets)
        assert sum(len(held) for held in index.values()) == len(state.buckets) == len(
            list(state.buckets))
        # the batch's values were sent before its buckets went
        assert {window for _, window, _ in result.touched} == set(specs)
    windows = {key[0] for key in agg.state(0, T).buckets}
    assert windows == set(specs)  # the newest buckets of every window stay
    assert min(key[3] for key in agg.state(0, T).buckets if key[0] == "5m") > T + 29 * HOUR


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


def test_a_rebuild_on_disk_runs_in_steps_and_equals_the_live_state(tmp_path: Path) -> None:
    log = DictPackLog()
    agg = aggregator(log)
    agg.process(0, [(0, pack(order("a", T), order("b", T + 1)))], T)
    agg.process(0, [(1, pack(order("a", T + 5, "cancelled"), first=2))], T)
    live = agg.state(0, T)
    memory = RocksMemory(8)
    disk = PartitionAggregator(Settings(clock="event"), log,
                               lambda p: RocksIdMap(tmp_path / str(p), memory))
    steps = disk.loading(0, T)
    assert next(steps, "done") is None and 0 not in disk.parts  # not visible until whole
    assert list(steps) == [None]  # a step per pack
    rebuilt = disk.parts[0]
    assert rebuilt.buckets == live.buckets and rebuilt.counts == live.counts
    assert {key: rebuilt.ids.get(key) for key in live.ids} == dict(live.ids)  # type: ignore[attr-defined]
    assert len(rebuilt.ids) == len(live.ids)
    disk.drop({0})
    steps = disk.loading(0, T)
    next(steps)
    disk.drop({0})  # revoked while rebuilding: discarded
    list(steps)
    assert 0 not in disk.parts


def test_an_id_used_again_after_the_sweep_survives_a_rebuild_on_disk(tmp_path: Path) -> None:
    """The rebuild writes first versions of ids without reading the map (state/rocks.py):
    an id the sweep forgot and the stream used again, while the pack of its first use is still
    replayed, is held once, and the next sweep does not forget its second use."""
    log = DictPackLog()
    agg = aggregator(log)
    agg.process(0, [(0, pack(order("a", T)))], T)
    agg.process(0, [(1, pack(order("z", T + 24 * HOUR + 10 * 60_000), first=1))], T)
    agg.sweep(0, T)
    assert "order|a" not in agg.state(0, T).ids and (0, 0) in log.data  # pack 0 stays
    again = agg.process(0, [(2, pack(order("a", T + 24 * HOUR + 20 * 60_000), first=2))], T)
    assert [v.outcome for v in again.verdicts] == ["accepted"]
    live = agg.state(0, T)
    memory = RocksMemory(8)
    disk = PartitionAggregator(Settings(clock="event"), log,
                               lambda p: RocksIdMap(tmp_path / str(p), memory))
    rebuilt = disk.state(0, T)
    assert rebuilt.ids.get("order|a") == live.ids.get("order|a")
    disk.sweep(0, T)
    assert len(rebuilt.ids) == len(live.ids) == 2
    duplicate = pack(order("a", T + 24 * HOUR + 30 * 60_000), first=3)
    assert [v.outcome for v in disk.process(0, [(3, duplicate)], T).verdicts] == ["duplicate"]
    disk.drop({0})


def test_a_cancellation_read_before_its_order() -> None:
    """An unknown order when it comes (SPEC §1). Of the order's time or later, it overtook
    the order (produced after it): the order, when it comes, counts nowhere, as if read in
    the order produced (SPEC §4: rows do not depend on keying). Of an earlier time, it
    changed nothing: the order counts. A second cancellation is a duplicate either way."""
    agg = aggregator()
    result = agg.process(0, [(0, pack(order("a", T + 5, "cancelled"), order("a", T),
                                      order("a", T + 6, "cancelled"),
                                      order("b", T, "cancelled"), order("b", T + 5),
                                      order("b", T + 6, "cancelled"), first=0))], T)
    assert [v.outcome for v in result.verdicts] == [
        "unknown_order", "accepted", "duplicate", "unknown_order", "accepted", "duplicate"]
    buckets = agg.state(0, T).buckets
    assert buckets[("5m", "all", "all", T - T % 10_000)][0] == 1  # b's order only


def test_a_cancellation_counts_for_the_detector_in_its_own_minute_whatever_the_arrival(
        ) -> None:
    """SPEC §6: the same episodes whatever the arrival. The rows count a retracted order
    nowhere; the detector's orders (``orders + cancel_shift``) count it in its own minute and
    the cancellation as -1 in the cancellation's, whether the cancellation was read after
    the order or overtook it, and also after a rebuild from the changelog."""
    placed_at, cancelled_at = T + 30_000, T + 7 * 60_000 + 1
    minute = SUM_FIELDS.index("orders"), SUM_FIELDS.index("cancel_shift")
    for events in ([order("a", placed_at), order("a", cancelled_at, "cancelled")],
                   [order("a", cancelled_at, "cancelled"), order("a", placed_at)]):
        log = DictPackLog()
        agg = aggregator(log)
        agg.process(0, [(0, pack(*events))], T)
        for held in (agg, aggregator(log)):  # the second rebuilt from the changelog
            buckets = held.state(0, T).buckets
            here = buckets[("1h", "campaign", "c1", placed_at - placed_at % 60_000)]
            there = buckets[("1h", "campaign", "c1", cancelled_at - cancelled_at % 60_000)]
            assert (here[minute[0]], here[minute[1]]) == (0, 1), events
            assert (there[minute[0]], there[minute[1]]) == (0, -1), events
            # only in the windows and rows the detector reads: no 10-second bucket or
            # segment row made for the cancellation alone
            assert ("5m", "campaign", "c1", cancelled_at - cancelled_at % 10_000) not in (
                buckets)
            assert ("1h", "segment", "new", cancelled_at - cancelled_at % 60_000) not in (
                buckets)
            # both in one 15-minute bucket of the 24h window: nothing moves there
            quarter = buckets[("24h", "campaign", "c1", T - T % (15 * 60_000))]
            assert (quarter[minute[0]], quarter[minute[1]]) == (0, 0), events


def test_customers_judge_expiry_against_the_newest_time_read_once_all_is_read() -> None:
    """Replay mode, every raw partition read to its end: the roll-up anchors on the largest
    event time of its sources, the customer stage (which sees no event time) gets the newest
    event time any raw partition reported, not this partition's own newest event."""
    marks = [RawMark("orders", 0, T + 3 * HOUR, True), RawMark("orders", 1, T, True)]
    replay = aggregator().process(0, [(0, EventPack(2, marks, [
        (Source("orders", 1, 0, None, "{}"), order("a", T))]))], T)
    assert replay.low_mark == ALL_READ and replay.customer_low_mark == T + 3 * HOUR
    facts = customer_facts(0, replay, 2, {})
    assert {m.low_mark for m in facts.values()} == {T + 3 * HOUR}
    live = PartitionAggregator(Settings(clock="live"), DictPackLog()).process(
        0, [(0, EventPack(2, marks))], T + 4 * HOUR)
    assert live.low_mark == live.customer_low_mark == ALL_READ  # wall clock, downstream


def test_packs_leave_with_retention_but_the_newest_stays() -> None:
    log = DictPackLog()
    agg = aggregator(log)
    read = [RawMark("orders", 0, T + 60 * HOUR, True)]  # the only raw partition, all read
    agg.process(0, [(0, pack(order("a", T)))], T)
    agg.process(0, [(1, pack(order("b", T + 30 * HOUR), first=1))], T)
    agg.process(0, [(2, pack(order("c", T + 60 * HOUR), first=2, marks=read))], T)
    agg.sweep(0, T)
    assert sorted(seq for _, seq in log.data) == [2]
    assert aggregator(log).state(0, T).applied == 2


def test_ids_wait_for_the_low_mark_and_a_cancellation_judges_expiry_by_its_own_time() -> None:
    """A raw partition read behind the others may still cancel an order that a faster one's
    stream time has passed: ids leave behind the low mark, and an order placed more than the
    retention before the cancellation's ts is expired (SPEC §1) whether or not swept yet."""
    agg = aggregator()
    behind = [RawMark("orders", 0, T + 60 * HOUR, False), RawMark("orders", 1, T, False)]
    agg.process(0, [(0, EventPack(2, behind, [(Source("orders", 0, 0, None, "{}"),
                                               order("a", T))]))], T)
    agg.process(0, [(1, pack(order("b", T + 60 * HOUR), first=1))], T)
    agg.sweep(0, T)
    assert "order|a" in agg.state(0, T).ids  # the low mark is still at T
    cancels = [order("a", T + HOUR, "cancelled"), order("b", T + 60 * HOUR + 1, "cancelled")]
    result = agg.process(0, [(2, EventPack(2, [], [(Source("orders", 1, i, None, "{}"), c)
                                                   for i, c in enumerate(cancels)]))], T)
    assert [v.outcome for v in result.verdicts] == ["accepted", "accepted"]
    agg.process(0, [(3, pack(order("c", T + 59 * HOUR), first=5))], T)
    # 25 h after the order (retention 24h05m) by its own ts: expired, though not swept.
    expired = agg.process(0, [(4, EventPack(2, [], [(Source("orders", 1, 9, None, "{}"),
                                                     order("c", T + 84 * HOUR,
                                                           "cancelled"))]))], T)
    assert "order|c" in agg.state(0, T).ids
    assert [v.outcome for v in expired.verdicts] == ["unknown_order"]


def test_a_cancellation_of_an_order_stream_time_has_expired_is_an_unknown_order() -> None:
    """SPEC §1: a cancellation removes its order "as long as that bucket is still retained".
    Stream time is 2 h past the order's retention; the cancellation itself is not late (its
    ts is 2 h after the order), but the order would be: its bucket is gone and its day may
    be final with the order counted (SPEC §8). It stays counted."""
    agg = aggregator()
    r = agg.retention_ms
    agg.process(0, [(0, pack(order("a", T), order("z", T + r + 2 * HOUR)))], T)
    result = agg.process(0, [(1, pack(order("a", T + 2 * HOUR, "cancelled"), first=2))], T)
    assert [v.outcome for v in result.verdicts] == ["unknown_order"]
    assert [fact for fact in result.facts if fact[2] < 0] == []


def test_a_redelivery_is_skipped_however_far_stream_time_has_moved() -> None:
    agg = aggregator()
    agg.process(0, [(0, pack(order("a", T), order("a", T + 5, "cancelled")))], T)
    agg.process(0, [(1, pack(order("z", T + 48 * HOUR), first=2))], T)
    # The edge crashed before committing offsets 0-1: they come again, two days later in
    # stream time. Neither late, nor a duplicate, nor an unknown order: nothing at all.
    again = agg.process(0, [(2, pack(order("a", T), order("a", T + 5, "cancelled")))], T)
    assert again.verdicts == []
    assert agg.state(0, T).counts == {("orders", "accepted"): 3}


def test_a_packs_own_marks_do_not_make_its_events_late() -> None:
    """The edge read a sparse partition's whole backlog in one batch: the pack's marks say
    both raw partitions are days ahead, but its events were read before that, so each is
    judged against the marks before the pack, advanced by the events read so far."""
    agg = aggregator()
    ahead = [RawMark("orders", 0, T + 72 * HOUR, False), RawMark("orders", 1, T + 72 * HOUR,
                                                                 False)]
    items = [(Source("orders", i % 2, i, None, "{}"), order(f"o{i}", T + i * HOUR))
             for i in range(72)]
    result = agg.process(0, [(0, EventPack(2, ahead, items))], T)
    assert {v.outcome for v in result.verdicts} == {"accepted"}
    # Read in the next pack, an event older than both partitions' newest - retention is late.
    old = agg.process(0, [(1, EventPack(2, [], [(Source("orders", 0, 99, None, "{}"),
                                                 order("x", T + 40 * HOUR))]))], T)
    assert [v.outcome for v in old.verdicts] == ["late"]


def test_dropping_packs_is_recorded_in_the_newest_pack_before_the_tombstones() -> None:
    """After a restart, campaign buckets of the largest window stay past their expiry (to be
    re-sent for attribution days) only when no dropped pack can have held events of them."""
    log = DictPackLog()
    agg = aggregator(log)
    read = [RawMark("orders", 0, T + 60 * HOUR, True)]
    agg.process(0, [(0, pack(order("a", T)))], T)
    agg.process(0, [(1, pack(order("b", T + 30 * HOUR), first=1))], T)
    agg.process(0, [(2, pack(order("c", T + 60 * HOUR), first=2, marks=read))], T)
    before = aggregator(DictPackLog())
    before.log.data = dict(log.data)  # the same packs, none dropped yet
    kept = {key[3] for key in before.state(0, T).buckets if key[:2] == ("24h", "campaign")}
    assert kept == {T, T + 30 * HOUR, T + 60 * HOUR}  # expired, but whole: kept
    agg.sweep(0, T)
    threshold = T + 60 * HOUR - (24 * HOUR + 5 * 60_000) - 15 * 60_000
    assert decode_aggregate_pack(log.data[(0, 2)]).dropped_below == threshold
    restored = aggregator(log).state(0, T)
    assert restored.dropped_below == threshold
    after = {key[3] for key in restored.buckets if key[:2] == ("24h", "campaign")}
    assert after == {T + 60 * HOUR}


def test_live_mode_judges_lateness_against_wall_clock_whatever_the_low_mark() -> None:
    """SPEC §3: in live mode T is never less than wall clock minus idle_lag. A first event
    three days old, on a worker that has not heard of every raw partition yet (no low mark),
    is late; one within the retention is not."""
    agg = PartitionAggregator(Settings(clock="live"), DictPackLog())
    now = T + 72 * HOUR
    result = agg.process(0, [(0, EventPack(3, [], [
        (Source("orders", 0, 0, None, "{}"), order("old", T)),
        (Source("orders", 1, 0, None, "{}"), order("recent", now - 23 * HOUR))]))], now)
    assert [v.outcome for v in result.verdicts] == ["late", "accepted"]
    assert agg.state(0, now).low_mark() == NO_TIME


def test_lateness_is_judged_against_what_the_edge_read_not_only_this_partition() -> None:
    """Replay mode, an internal partition that has had no event yet: the edge's marks say the
    pipeline has read up to T + 72 h and every raw partition is read to its end, so an order
    older than that minus the retention is late here too (SPEC §3: the latest event time the
    pipeline has seen)."""
    agg = aggregator()
    read = [RawMark("orders", 0, T + 72 * HOUR, True)]
    agg.process(1, [(0, EventPack(1, read, []))], T)
    result = agg.process(1, [(1, pack(order("old", T), order("fresh", T + 71 * HOUR),
                                      first=5))], T)
    assert [v.outcome for v in result.verdicts] == ["late", "accepted"]
    # The same events where the marks say a raw partition is still read far behind (a
    # backlog): held back to the low mark, neither is late.
    behind = aggregator()
    behind.process(1, [(0, EventPack(2, [*read, RawMark("orders", 1, T, False)], []))], T)
    held = behind.process(1, [(1, pack(order("old", T), order("fresh", T + 71 * HOUR),
                                       first=5))], T)
    assert [v.outcome for v in held.verdicts] == ["accepted", "accepted"]


def test_a_record_of_a_partition_that_had_nothing_left_to_read_is_judged_against_the_others(
        ) -> None:
    """Raw partition 1 was at its end (here: never held a record) while partition 0 is read
    at T + 30 h: a record now produced to partition 1 is judged against that (SPEC §3), not
    held back to its own time. One within the retention is accepted."""
    agg = aggregator()
    marks = [RawMark("orders", 0, T + 30 * HOUR, False), RawMark("orders", 1, None, True)]
    agg.process(0, [(0, EventPack(2, marks, []))], T)
    result = agg.process(0, [(1, EventPack(2, [], [
        (Source("orders", 1, 0, None, "{}"), order("old", T)),
        (Source("orders", 1, 1, None, "{}"), order("recent", T + 7 * HOUR))]))], T)
    assert [v.outcome for v in result.verdicts] == ["late", "accepted"]
    # partition 1 is busy again: the watermark waits for what it read, but it has passed
    # what the others were read up to as far as lateness goes: its next records are judged
    # against that too, not held back to its own time
    assert agg.state(0, T).marks[("orders", 1)] == (T + 7 * HOUR, False, None)
    assert agg.state(0, T).low_mark() == T + 7 * HOUR
    assert agg.state(0, T).judge_low() == T + 30 * HOUR
    result = agg.process(0, [(2, EventPack(2, [], [
        (Source("orders", 1, 2, None, "{}"), order("older", T + 5 * HOUR))]))], T)
    assert [v.outcome for v in result.verdicts] == ["late"]


def test_a_claim_read_to_the_end_below_an_end_offset_another_edge_listed_is_stale() -> None:
    """Two edges, the backlog produced while both had read their empty partitions: edge A's
    partition 0 claims nothing left to read at offset 0, edge B reads partition 1 up to
    T + 2 h and lists the end offsets after its batch: partition 0 holds 50 records. The
    watermark stays where partition 0 holds it (nothing read of it yet), whichever internal
    partition learns it first, also after a rebuild; A's claim counts again only at a
    position at or past that end (SPEC §3: nothing left to read)."""
    log = DictPackLog()
    agg = aggregator(log)
    both_empty = [RawMark("orders", 0, None, True, 0), RawMark("orders", 1, None, True, 0)]
    agg.process(0, [(0, EventPack(2, both_empty, []))], T)
    assert agg.state(0, T).low_mark() == ALL_READ
    ends = {("orders", 0): 50, ("orders", 1): 100}
    b_read = [RawMark("orders", 1, T + 2 * HOUR, False, 100)]
    agg.process(0, [(1, EventPack(2, b_read, [
        (Source("orders", 1, 98, None, "{}"), order("b1", T + HOUR)),
        (Source("orders", 1, 99, None, "{}"), order("b2", T + 2 * HOUR))], ends))], T)
    assert agg.state(0, T).low_mark() == NO_TIME
    # what the changelog keeps: a rebuilt partition knows the ends and rejects a stale claim
    rebuilt = aggregator(log)
    assert rebuilt.state(0, T).low_mark() == NO_TIME
    for state_of in (agg, rebuilt):
        state_of.process(0, [(2, EventPack(2, [RawMark("orders", 0, None, True, 40)], []))], T)
        assert state_of.state(0, T).low_mark() == NO_TIME
        state_of.process(0, [(3, EventPack(2, [RawMark("orders", 0, T + HOUR, True, 50)],
                                           []))], T)
        assert state_of.state(0, T).low_mark() == T + 2 * HOUR
    # an earlier edge's mark without a position is taken as it says
    compat = aggregator()
    compat.process(0, [(0, EventPack(2, [RawMark("orders", 0, None, True),
                                         *b_read], [], ends))], T)
    assert compat.state(0, T).low_mark() == T + 2 * HOUR


def test_records_after_a_quiet_spell_are_late_whatever_partitions_they_come_from() -> None:
    """Every raw partition read to its end, the newest at T + 30 h: records then produced
    to several of them, older than T + 30 h - retention, are all late (SPEC §3), in an
    aggregate partition that gets several of them and in one that learnt from the marks
    that others woke first. A woken partition's own old time held the low mark back: the
    later ones were accepted, depending on the ids that routed them."""
    log = DictPackLog()
    agg = aggregator(log)
    quiet = [RawMark("orders", 0, T + 30 * HOUR, True), RawMark("orders", 1, T, True),
             RawMark("orders", 2, T + HOUR, True)]
    for p in (0, 1):
        agg.process(p, [(0, EventPack(3, quiet, []))], T)
    old = T + 30 * HOUR - agg.retention_ms - 1
    woken = [RawMark("orders", 0, T + 30 * HOUR, True), RawMark("orders", 1, T, False),
             RawMark("orders", 2, T + HOUR, False)]
    result = agg.process(0, [(1, EventPack(3, woken, [
        (Source("orders", 1, 0, None, "{}"), order("a", old)),
        (Source("orders", 2, 0, None, "{}"), order("b", old))]))], T)
    assert [v.outcome for v in result.verdicts] == ["late", "late"]
    # partition 1 heard of the wakes from the marks only, then gets a record of each
    agg.process(1, [(1, EventPack(3, woken, []))], T)
    result = agg.process(1, [(2, EventPack(3, woken, [
        (Source("orders", 1, 1, None, "{}"), order("c", old)),
        (Source("orders", 2, 1, None, "{}"), order("d", old))]))], T)
    assert [v.outcome for v in result.verdicts] == ["late", "late"]
    # the watermark waits for the woken partitions (their records may be on their way);
    # lateness does not, also after a rebuild from the changelog
    assert agg.state(1, T).low_mark() == old
    assert agg.state(1, T).judge_low() == T + 30 * HOUR
    rebuilt = aggregator(log)
    assert rebuilt.state(1, T).judge_low() == T + 30 * HOUR
    result = rebuilt.process(1, [(3, EventPack(3, [], [
        (Source("orders", 1, 2, None, "{}"), order("e", old))]))], T)
    assert [v.outcome for v in result.verdicts] == ["late"]


def test_a_bucket_whose_orders_are_all_cancelled_has_no_revenue_exactly() -> None:
    """0.1 + 0.2 - 0.1 - 0.2 is 2.8e-17 in floats: the bucket reads 0, as the sum of its
    (no) counted orders, live and after a rebuild."""
    log = DictPackLog()
    agg = aggregator(log)
    placed = [Order(f"o{i}", T, "placed", "c", amount, "search", "c1", "new")
              for i, amount in enumerate((0.1, 0.2))]
    agg.process(0, [(0, pack(*placed))], T)
    agg.process(0, [(1, pack(*(order(f"o{i}", T + 1, "cancelled") for i in range(2)),
                             first=2))], T)
    revenue, orders = SUM_FIELDS.index("revenue"), SUM_FIELDS.index("orders")
    for state in (agg.state(0, T), aggregator(log).state(0, T)):
        assert state.buckets
        assert all(sums[orders] == 0 and sums[revenue] == 0.0
                   for sums in state.buckets.values())


def test_an_id_seen_only_beyond_the_retention_is_new_whether_or_not_it_was_swept() -> None:
    """SPEC §1: a duplicate is an id seen within the retention, judged by the event's own
    ts: the id's record still held (the sweep waits for the low mark, held back by another
    partition) does not make a later use a duplicate."""
    agg = aggregator()
    r = agg.retention_ms
    marks = [RawMark("orders", 0, None, False), RawMark("orders", 1, T, False)]
    agg.process(0, [(0, EventPack(2, marks, [
        (Source("orders", 0, 0, None, "{}"), Spend("s", T, "c1", "search", 5.0)),
        (Source("orders", 0, 1, None, "{}"), order("o", T)),
        (Source("orders", 0, 2, None, "{}"), order("o", T + 1, "cancelled"))]))], T)
    later = [Spend("s", T + r + 1, "c1", "search", 5.0), Spend("s", T + r + 2, "c1", "search", 5.0),
             Order("o", T + r + 1, "placed", "c", 7.0, "search", "c1", "new"),
             # the old cancellation (T + 1) is within the retention of this one: a duplicate
             order("o", T + r + 1, "cancelled"),
             order("o", T + r + 2, "cancelled"), order("o", T + r + 3, "cancelled")]
    result = agg.process(0, [(1, EventPack(2, [], [
        (Source("orders", 0, 3 + i, None, "{}"), e) for i, e in enumerate(later)]))], T)
    assert [v.outcome for v in result.verdicts] == [
        "accepted", "duplicate", "accepted", "duplicate", "accepted", "duplicate"]
    state = agg.state(0, T)
    assert state.ids.get("spend|s") is not None  # held: not swept, yet no duplicate
    # the new order was counted and then retracted by the new cancellation
    orders = SUM_FIELDS.index("orders")
    assert state.buckets[("5m", "all", "all", T + r + 1 - (T + r + 1) % 10_000)][orders] == 0


def test_a_rebuild_skips_only_buckets_that_expire_when_it_ends() -> None:
    """A rebuild does not fill the buckets of the smaller windows that the end of the rebuild
    expires anyway: the rebuilt buckets equal the live ones expired as a rebuild expires them
    (campaign buckets of the largest window kept for attribution days included)."""
    log = DictPackLog()
    live = aggregator(log)
    events = [Order(f"o{i}", T + i * 7 * 60_000, "placed", "c", 5.0, f"ch{i % 3}", f"c{i % 4}",
                    f"s{i % 2}") for i in range(300)]  # 35 hours
    read = [RawMark("orders", 0, events[-1].ts, True)]
    for n in range(0, 300, 20):
        live.process(0, [(n, pack(*events[n:n + 20], first=n,
                                  marks=read if n == 280 else None))], T)
    state = live.state(0, T)
    rebuilt = aggregator(DictPackLog())
    rebuilt.log.data = dict(log.data)
    again = rebuilt.state(0, T)
    assert {k: list(again.buckets[k]) for k in state.buckets} == {
        k: list(v) for k, v in state.buckets.items()}
    # beyond the live ones (expired at the end of their batch): only the expired campaign
    # buckets of the largest window a rebuild keeps for attribution days
    spec = {s.name: s for s in Settings(clock="event").window_specs}["24h"]
    extra = set(again.buckets) - set(state.buckets)
    assert extra and all(k[:2] == ("24h", "campaign") and bucket_expired(
        k[3], spec, live.expiry_time(state, T), live.grace_ms) for k in extra)
    assert any(k[0] == "5m" for k in again.buckets)  # the newest buckets of every window
    assert any(k[:2] == ("24h", "campaign") and k[3] < events[-1].ts - 25 * HOUR
               for k in again.buckets)  # an expired campaign bucket, kept for attribution


def test_an_unknown_cancellation_gives_the_same_verdicts_whether_or_not_the_sweep_forgot_its_order(
) -> None:
    """An order expired (placed more than the retention before its cancellation): the
    cancellation is an unknown order, and a new order of the id at or before the
    cancellation's time is retracted when it comes, as after a cancellation read before any
    order. The same whether or not the id sweep had forgotten the expired order."""
    r = aggregator().retention_ms
    orders = SUM_FIELDS.index("orders")
    outcomes = []
    for swept in (False, True):
        agg = aggregator()
        agg.process(0, [(0, pack(order("a", T), order("z", T + r + 5 * HOUR)))], T)
        if swept:
            agg.sweep(0, T)
            assert agg.state(0, T).ids.get("order|a") is None
        later = [order("a", T + r + HOUR, "cancelled"), order("a", T + r + HOUR)]
        result = agg.process(0, [(1, pack(*later, first=2))], T)
        bucket = T + r + HOUR - (T + r + HOUR) % (15 * 60_000)
        outcomes.append(([v.outcome for v in result.verdicts],
                         agg.state(0, T).buckets.find("24h", ("all", "all"), bucket)))
    assert outcomes[0][0] == outcomes[1][0] == ["unknown_order", "accepted"]
    for _, sums in outcomes:
        assert sums is None or sums[orders] == 0  # retracted at once: no order in its bucket


def test_a_later_use_of_an_id_gives_the_same_verdict_whether_or_not_the_sweep_forgot_it(
) -> None:
    """Stream time passed the spend's retention; a later use of its id (ts an hour after the
    first, so within the retention of its own ts, but not of stream time) is new, whether or
    not the id sweep had run."""
    r = aggregator().retention_ms
    verdicts = []
    for swept in (False, True):
        agg = aggregator()
        agg.process(0, [(0, pack(Spend("s", T, "c1", "search", 5.0),
                                 order("z", T + r + 10 * 60_000)))], T)
        if swept:
            agg.sweep(0, T)
            assert agg.state(0, T).ids.get("spend|s") is None
        result = agg.process(0, [(1, pack(Spend("s", T + HOUR, "c1", "search", 5.0),
                                          first=2))], T)
        verdicts.append([v.outcome for v in result.verdicts])
    assert verdicts == [["accepted"], ["accepted"]]

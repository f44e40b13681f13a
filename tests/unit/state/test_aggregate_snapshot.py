"""A graceful stop leaves each aggregate partition's state on the worker's disk; the next
start on that disk restores it instead of rebuilding it from every pack, and only if the
changelog still holds the pack it was taken at."""

from __future__ import annotations

import shutil
from pathlib import Path

from kpistream.contracts.records import Order, Source, Spend
from kpistream.contracts.wire import SNAPSHOT_VERSION, EventPack
from kpistream.settings import Settings
from kpistream.state.aggregate import PartitionAggregator, PartitionState
from kpistream.state.rocks import LocalSnapshots, RocksIdMap, RocksMemory
from kpistream.state.store import DictPackLog

T = 1_800_000_000_000
TOPIC = "kpistream-events"
SETTINGS = Settings(clock="event")


def order(order_id: str, ts: int, status: str = "placed", campaign: str = "c1") -> Order:
    return Order(order_id, ts, status, "cust", 10.5 if status == "placed" else None,  # type: ignore[arg-type]
                 "search", campaign, "new")


def batches(first: int, n: int, *, start: int = 0) -> list[tuple[int, EventPack]]:
    """``n`` batches of one partition from internal offset ``first``, five events each:
    orders, a cancellation of an earlier one, a duplicate, spend."""
    out = []
    for b in range(n):
        k = start + b
        events: list[object] = [order(f"o{k}-{i}", T + k * 60_000 + i * 7_000,
                                      campaign=f"c{i % 3}") for i in range(3)]
        if k:
            events.append(order(f"o{k - 1}-0", T + k * 60_000 + 30_000, "cancelled"))
            events.append(order(f"o{k - 1}-1", T + (k - 1) * 60_000 + 7_000))  # duplicate
        events.append(Spend(f"s{k}", T + k * 60_000 + 5_000, "c1", "search", 4.25))
        items = [(Source("orders", 0, 1000 * k + i, None, "{}"), e)
                 for i, e in enumerate(events)]
        out.append((first + b, EventPack(1, [], items)))  # type: ignore[arg-type]
    return out


class Disk:
    """One worker's data dir: its id databases and snapshots."""

    def __init__(self, root: Path) -> None:
        self.memory = RocksMemory(8)
        self.root = root
        self.snapshots = LocalSnapshots(root, TOPIC, self.memory, RocksIdMap)

    def aggregator(self, log: DictPackLog) -> PartitionAggregator:
        return PartitionAggregator(
            SETTINGS, log, lambda p: RocksIdMap(self.root / f"{TOPIC}-{p}", self.memory),
            self.snapshots)


def stopped_after_five_batches(root: Path) -> tuple[DictPackLog, Disk]:
    """A worker applied five batches of partition 0 and stopped gracefully."""
    log, disk = DictPackLog(), Disk(root)
    first = disk.aggregator(log)
    run(first, 0, batches(0, 5))
    assert first.save_snapshots() == [0]
    return log, disk


def run(agg: PartitionAggregator, p: int, items: list[tuple[int, EventPack]]) -> list[str]:
    return [v.outcome for offset, pack in items
            for v in agg.process(p, [(offset, pack)], T).verdicts]


def same_state(a: PartitionState, b: PartitionState) -> None:
    assert a.buckets == b.buckets
    assert (a.applied, a.stream_time, a.high_water, a.counts, a.marks, a.packs,
            a.dropped_below, a.seen_time) == (b.applied, b.stream_time, b.high_water,
                                              b.counts, b.marks, b.packs, b.dropped_below,
                                              b.seen_time)
    assert len(a.ids) == len(b.ids)
    for key in [f"order|o{k}-{i}" for k in range(12) for i in range(3)] + ["spend|s3"]:
        assert a.ids.get(key) == b.ids.get(key), key


def test_a_restored_partition_goes_on_as_if_the_worker_never_stopped(tmp_path: Path) -> None:
    log, never_stopped = DictPackLog(), PartitionAggregator(SETTINGS, DictPackLog())
    disk = Disk(tmp_path)
    first = disk.aggregator(log)
    for p in (0, 1):
        assert run(first, p, batches(0, 6)) == run(never_stopped, p, batches(0, 6))
    before = first.state(0, T).buckets.size
    assert sorted(first.save_snapshots()) == [0, 1]
    assert first.parts == {} and (tmp_path / f"{TOPIC}-0.snapshot").exists()

    second = disk.aggregator(log)  # the next start on the same disk
    restored = second.state(0, T)
    assert second.restored == [0]
    assert not (tmp_path / f"{TOPIC}-0.snapshot").exists()  # used once
    assert restored.buckets.size == before
    same_state(restored, never_stopped.state(0, T))
    # the kept ids judge what comes next: duplicates and cancellations of orders from
    # before the stop
    later = batches(6, 4, start=6)
    outcomes = run(second, 0, later)
    assert outcomes == run(never_stopped, 0, later)
    assert outcomes[3:5] == ["accepted", "duplicate"]  # o5-0 cancelled, o5-1 again
    assert outcomes.count("duplicate") == 4
    same_state(second.state(0, T), never_stopped.state(0, T))


def test_a_snapshot_is_not_used_when_the_changelog_has_another_pack_there(
        tmp_path: Path) -> None:
    log, disk = stopped_after_five_batches(tmp_path)
    # another worker took the partition over and rewrote its newest pack since
    newest = max(seq for _, seq in log.data)
    log.put(0, newest, log.data[(0, newest)].replace(b'"c1"', b'"c1x"'))
    second = disk.aggregator(log)
    state = second.state(0, T)
    assert second.restored == []
    rebuilt = PartitionAggregator(SETTINGS, log).state(0, T)  # from every pack
    same_state(state, rebuilt)
    assert any(key[2] == "c1x" for key in state.buckets)


def test_packs_another_worker_wrote_after_the_snapshot_are_applied_on_top(
        tmp_path: Path) -> None:
    log, disk = stopped_after_five_batches(tmp_path)
    other = PartitionAggregator(SETTINGS, log)  # rebuilt from the packs, then goes on
    run(other, 0, batches(5, 4, start=5))
    second = disk.aggregator(log)
    state = second.state(0, T)
    assert second.restored == [0]
    same_state(state, other.state(0, T))


def test_a_snapshot_of_another_version_is_not_used(tmp_path: Path) -> None:
    log, disk = stopped_after_five_batches(tmp_path)
    path = tmp_path / f"{TOPIC}-0.snapshot"
    data = bytearray(path.read_bytes())
    # the version field of the JSON part
    data[data.index(f"[{SNAPSHOT_VERSION},".encode()) + 1] = ord("9")
    path.write_bytes(bytes(data))
    second = disk.aggregator(log)
    state = second.state(0, T)
    assert second.restored == [] and not path.exists()
    same_state(state, PartitionAggregator(SETTINGS, log).state(0, T))


def test_a_snapshot_whose_database_was_replaced_is_not_used(tmp_path: Path) -> None:
    log, disk = stopped_after_five_batches(tmp_path)
    shutil.rmtree(tmp_path / f"{TOPIC}-0")  # e.g. recreated empty: its ids are gone
    RocksIdMap(tmp_path / f"{TOPIC}-0", disk.memory).persist(b"another stop's mark")
    second = disk.aggregator(log)
    state = second.state(0, T)
    assert second.restored == []
    same_state(state, PartitionAggregator(SETTINGS, log).state(0, T))

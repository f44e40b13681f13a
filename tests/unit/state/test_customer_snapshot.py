"""A graceful stop leaves each customers partition's state on the worker's disk; the next start
on that disk restores it instead of rebuilding a million customers from the changelog and
publishing every profile again, and only if the changelog's newest record of the partition is
still the one it was taken at."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from kpistream.contracts.records import Order, Survey
from kpistream.contracts.wire import (
    CUSTOMER_SNAPSHOT_VERSION,
    CampaignDayCost,
    CustomerFacts,
    CustomerPack,
)
from kpistream.settings import Settings
from kpistream.state.customers import CustomerPartition, CustomerState
from kpistream.state.rocks import LocalSnapshots, RocksCustomerMap, RocksMemory
from kpistream.state.store import DictPackLog

TOPIC = "kpistream-customers"
SETTINGS = Settings(windows=("1h/1m",), clock="event")
MIN = 60_000
DAY = 86_400_000


def order(order_id: str, ts: int, customer: str, segment: str = "vip") -> Order:
    return Order(order_id, ts, "placed", customer, 10.0, "search", "cmp", segment)


def batches(first: int, n: int) -> list[tuple[int, CustomerFacts]]:
    """``n`` batches of customer facts from customers-topic offset ``first``: new customers,
    an earlier order arriving later (the first order moves), the first order cancelled,
    surveys, low marks; the second batch also brings a final campaign day's cost."""
    out: list[tuple[int, CustomerFacts]] = []
    for b in range(n):
        k = first + b
        facts: list[Any] = [(100 + k, i, 1, order(f"o{k}-{i}", DAY + (k * 5 + i) * MIN,
                                                  f"c{(k + i) % 7}")) for i in range(4)]
        facts.append((100 + k, 4, 1, order(f"early{k}", DAY + MIN, f"c{k % 7}")))
        if k:
            facts.append((100 + k, 5, -1, order(f"o{k - 1}-0", DAY + ((k - 1) * 5) * MIN,
                                                f"c{(k - 1) % 7}")))
        facts.append((100 + k, 6, 1, Survey(f"r{k}", DAY + k * MIN, "nps", 9, f"c{k % 3}",
                                            "search", "cmp", "vip", None)))
        out.append((k, CustomerFacts(0, facts, low_mark=DAY + k * MIN)))
        if b == 1:
            k = first + n + b  # (offsets of cost messages interleave with facts')
            out.append((k, CustomerFacts(SETTINGS.partitions, costs=[
                CampaignDayCost("cmp", 0, 2.5, 25.0, 10)])))
    return sorted(out, key=lambda item: item[0])


class Disk:
    """One worker's data dir: its customer databases and snapshots."""

    def __init__(self, root: Path) -> None:
        self.memory = RocksMemory(8)
        self.root = root
        self.snapshots = LocalSnapshots(root, TOPIC, self.memory, RocksCustomerMap)

    def state(self, log: DictPackLog) -> CustomerState:
        return CustomerState(
            SETTINGS, log, lambda r: RocksCustomerMap(self.root / f"{TOPIC}-{r}", self.memory),
            self.snapshots)  # type: ignore[arg-type]


def run(state: CustomerState, items: list[tuple[int, CustomerFacts]]) -> list[Any]:
    """Apply items one batch each; what each sends the roll-up."""
    return [sorted((row, u.window, u.bucket, u.sums)
                   for row, updates in state.process(0, [item], 0).updates.items()
                   for u in updates) for item in items]


def customers(part: CustomerPartition) -> dict[str, Any]:
    return {c: (r.orders, r.responses, r.first) for c, r in part.customers.items()}


def same_partition(a: CustomerPartition, b: CustomerPartition) -> None:
    assert customers(a) == customers(b)
    assert (a.applied, a.header, a.stream_time, a.high_water, a.first_counts, a.refs, a.dead,
            a.changed, a.republish_after, a.expired, a.low_marks, a.costs, a.cost_packs) == (
        b.applied, b.header, b.stream_time, b.high_water, b.first_counts, b.refs, b.dead,
        b.changed, b.republish_after, b.expired, b.low_marks, b.costs, b.cost_packs)


def test_a_restored_partition_is_the_one_that_stopped_and_goes_on_alike(tmp_path: Path
                                                                        ) -> None:
    items = batches(0, 6)
    log, disk = DictPackLog(), Disk(tmp_path / "worker")
    first = disk.state(log)
    run(first, items[:5])
    first.take_changes([0], 3, 0)  # some profiles published, the rest not yet
    first.sweep(0, 0)
    # the never-stopped twin: the same batches on its own log and disk
    twin_log, twin_disk = DictPackLog(), Disk(tmp_path / "twin")
    twin = twin_disk.state(twin_log)
    run(twin, items[:5])
    twin.take_changes([0], 3, 0)
    twin.sweep(0, 0)
    expected = copy.deepcopy(twin.parts[0].changed)
    assert first.save_snapshots() == [0] and first.parts == {}
    assert (tmp_path / "worker" / f"{TOPIC}-0.snapshot").exists()

    again = disk.state(log)
    restored = again.state(0, 0)
    assert again.restored == [0]
    assert not (tmp_path / "worker" / f"{TOPIC}-0.snapshot").exists()  # used once
    same_partition(restored, twin.parts[0])
    # what was not published yet is, and nothing else: no republication of every profile
    assert {c for _, c, _ in again.take_changes([0], 100, 0)} == expected
    assert {c for _, c, _ in twin.take_changes([0], 100, 0)} == expected
    assert again.take_dead(0) == twin.take_dead(0)
    # later batches, a replay of applied ones included, give the same counts and state
    later = items[3:]
    assert run(again, later) == run(twin, later)
    same_partition(again.parts[0], twin.parts[0])
    assert again.take_changes([0], 100, 0) == twin.take_changes([0], 100, 0)


def stopped(root: Path) -> tuple[DictPackLog, Disk, list[tuple[int, CustomerFacts]]]:
    """A worker applied four batches of partition 0 and stopped gracefully."""
    items = batches(0, 6)
    log, disk = DictPackLog(), Disk(root)
    first = disk.state(log)
    run(first, items[:4])
    assert first.save_snapshots() == [0]
    return log, disk, items


def rebuilt_alike(state: CustomerState, log: DictPackLog, root: Path) -> None:
    """Partition 0 was rebuilt from the changelog: as a fresh worker's rebuild, every profile
    to be published again."""
    assert state.restored == []
    fresh = Disk(root).state(log)
    same_partition(state.state(0, 0), fresh.state(0, 0))
    assert state.parts[0].republish_after == ""


def test_a_changelog_that_moved_on_is_rebuilt(tmp_path: Path) -> None:
    """Another worker owned the partition meanwhile and applied a batch: the snapshot is not
    the newest state."""
    log, disk, items = stopped(tmp_path / "worker")
    other = Disk(tmp_path / "other").state(log)
    run(other, items[4:5])
    other.drop([0])
    again = disk.state(log)
    rebuilt_alike(again, log, tmp_path / "fresh")
    assert "o4-1" in again.parts[0].customers.peek("c5").orders  # type: ignore[union-attr]


def test_a_changed_newest_record_is_rebuilt(tmp_path: Path) -> None:
    log, disk, _ = stopped(tmp_path / "worker")
    (seq, data), = [(s, d) for (p, s), d in log.data.items() if s == max(
        s for _, s in log.data)]
    log.data[0, seq] = data.replace(b'"c', b'"x', 1)
    rebuilt_alike(disk.state(log), log, tmp_path / "fresh")


def test_a_snapshot_of_another_version_is_rebuilt(tmp_path: Path) -> None:
    log, disk, _ = stopped(tmp_path / "worker")
    path = tmp_path / "worker" / f"{TOPIC}-0.snapshot"
    raw = path.read_bytes()
    head = 8 + 16  # database size, mark
    version = f"[{CUSTOMER_SNAPSHOT_VERSION},".encode()
    assert version in raw[head:]
    path.write_bytes(raw[:head] + raw[head:].replace(version, b"[99,", 1))
    again = disk.state(log)
    rebuilt_alike(again, log, tmp_path / "fresh")


def test_a_replaced_database_is_rebuilt(tmp_path: Path) -> None:
    log, disk, _ = stopped(tmp_path / "worker")
    db = tmp_path / "worker" / f"{TOPIC}-0"
    RocksCustomerMap(db, disk.memory).close()  # recreated empty (and gone)
    RocksCustomerMap(db, disk.memory).flush()
    rebuilt_alike(disk.state(log), log, tmp_path / "fresh")


def test_the_header_record_is_the_one_a_snapshot_is_taken_at(tmp_path: Path) -> None:
    """A partition restored from its snapshot writes its next record after the snapshot's."""
    log, disk, items = stopped(tmp_path / "worker")
    again = disk.state(log)
    run(again, items[4:5])
    newest = max(s for _, s in log.data)
    assert newest == items[4][0] and again.parts[0].header == newest
    pack = log.data[0, newest]
    assert CustomerPack.__name__ and pack  # the record is there for the next restart
    assert again.save_snapshots() == [0]
    third = disk.state(log)
    third.state(0, 0)
    assert third.restored == [0]

"""The on-disk maps (state/rocks.py): what a stage reads back is what it wrote, changes made in
place to a record are kept, the time index follows every rewrite, and a new database never
trusts what an earlier one left on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from kpistream.contracts.wire import CustomerRecord
from kpistream.settings import Settings
from kpistream.state.aggregate import DictIdMap
from kpistream.state.customers import DictCustomerMap
from kpistream.state.rocks import (
    RocksCustomerMap,
    RocksIdMap,
    RocksMemory,
    RocksTableData,
    partition_stores,
)

MIN = 60_000


def test_the_customer_map_keeps_changes_made_in_place_and_indexes_activity(
        tmp_path: Path) -> None:
    customers = RocksCustomerMap(tmp_path / "0", RocksMemory(8))
    customers.put("a", CustomerRecord({"o1": [MIN, 1.0, "ch", "cmp", "vip"]}, {}, "o1"))
    customers.put("b", CustomerRecord({"o2": [3 * MIN, 2.0, "ch", "cmp", "vip"]}, {}, "o2"))
    customers.set_holder("a", 7)
    customers.flush()
    assert len(customers) == 2 and customers.inactive_before(2 * MIN) == ["a"]
    record = customers.get("a")
    assert record is not None
    record.orders["o3"] = [5 * MIN, 3.0, "ch", "cmp", "vip"]  # changed in place
    customers.flush()
    again = customers.peek("a")
    assert again is not None and set(again.orders) == {"o1", "o3"} and again.first == "o1"
    assert customers.inactive_before(4 * MIN) == ["b"]  # a's old activity is gone
    assert customers.holder("a") == 7 and customers.holder("b") is None
    customers.delete("b")
    assert customers.get("b") is None  # deleted before the flush already
    customers.flush()
    assert len(customers) == 1 and customers.keys_after("", 10) == ["a"]
    assert [name for name, _ in customers.items()] == ["a"]
    customers.close()
    # a new database never trusts what an earlier one left on disk
    fresh = RocksCustomerMap(tmp_path / "0", RocksMemory(8))
    assert len(fresh) == 0 and fresh.peek("a") is None and fresh.keys_after("", 10) == []
    fresh.close()


def test_the_id_map_expires_by_the_newest_time_of_a_record(tmp_path: Path) -> None:
    ids = RocksIdMap(tmp_path / "0", RocksMemory(8))
    placed = [MIN, 10.0, "ch", "cmp", "vip", None, 0, "c1"]
    ids.put("order|o1", placed)
    ids.put("spend|s1", [2 * MIN])
    ids.flush()
    assert ids.get("order|o1") == placed and len(ids) == 2
    ids.put("order|o1", [*placed[:5], 4 * MIN, 1, "c1"])  # cancelled at minute 4
    ids.flush()
    assert ids.older_than(3 * MIN) == ["spend|s1"]  # o1 is now timed by its cancellation
    assert ids.older_than(5 * MIN) == ["spend|s1", "order|o1"]  # oldest first
    ids.delete("spend|s1")
    ids.flush()
    assert ids.older_than(5 * MIN) == ["order|o1"] and len(ids) == 1
    assert ids.get("spend|s1") is None
    ids.close()
    assert not (tmp_path / "0").exists()


def test_the_setting_chooses_memory_or_disk(tmp_path: Path) -> None:
    memory = partition_stores(Settings(state_store="memory"))
    assert isinstance(memory.ids(0), DictIdMap)
    assert isinstance(memory.customers(0), DictCustomerMap)
    disk = partition_stores(Settings(data_dir=str(tmp_path)))
    ids, customers = disk.ids(1), disk.customers(1)
    assert isinstance(ids, RocksIdMap) and isinstance(customers, RocksCustomerMap)
    assert ids.path.parent == customers.path.parent == tmp_path / "state"
    ids.close()
    customers.close()


def test_table_data_behaves_like_the_dict_of_faust_memory_store(tmp_path: Path) -> None:
    """faust's memory store applies a changelog batch with ``update`` (a tombstone as None),
    then pops every key whose value is falsy (faust/stores/memory.py
    ``apply_changelog_batch``); the stage reads a partition's records by key prefix."""
    data = RocksTableData(tmp_path / "t", RocksMemory(8))
    data.update([(b"0:1", b"pack-1"), (b"0:2", b"pack-2"), (b"1:1", b"other")])
    data.update([(b"0:1", None)])  # a tombstone being applied
    assert not data[b"0:1"]
    assert data.pop(b"0:1", None) is None and b"0:1" not in data
    assert len(data) == 2 and data.get(b"0:2") == b"pack-2" and data.get(b"0:9") is None
    assert list(data.with_prefix(b"0:")) == [(b"0:2", b"pack-2")]
    assert sorted(data) == [b"0:2", b"1:1"]
    del data[b"1:1"]
    assert len(data) == 1 and list(data.with_prefix(b"1:")) == []


def test_an_id_put_as_new_is_written_unread_and_its_stale_entry_never_expires_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """put_new (a rebuild's first version of an id) reads nothing; when the id was held after
    all (used again after the live sweep forgot it, its old pack still replayed), the old
    version's index entry is recognised as stale, never expires the new one, and leaves the
    count right, also in a database kept by a stop and reopened."""
    memory = RocksMemory(8)
    ids = RocksIdMap(tmp_path / "0", memory)
    first = [MIN, 10.0, "ch", "cmp", "vip", None, 0, "c1"]
    ids.put_new("order|o1", first)
    ids.put_new("spend|s1", [2 * MIN])
    ids.flush()
    assert len(ids) == 2 and ids.get("order|o1") == first
    ids.put("spend|s2", [3 * MIN])
    ids.flush()

    def no_read(key: str) -> bytes | None:
        raise AssertionError(f"put_new read {key}")

    monkeypatch.setattr(ids, "_raw", no_read)
    again = [100 * MIN, 5.0, "ch", "cmp", "vip", None, 0, "c2"]
    ids.put_new("order|o1", again)
    monkeypatch.undo()
    ids.flush()
    assert ids.get("order|o1") == again
    assert ids.older_than(50 * MIN) == ["spend|s1", "spend|s2"]  # not o1: timed 100 min
    assert len(ids) == 3  # counted twice, held once: the stale entry is gone
    assert ids.older_than(50 * MIN) == ["spend|s1", "spend|s2"] and len(ids) == 3

    ids.put("order|o3", [4 * MIN, 1.0, "ch", "cmp", "vip", None, 0, "c3"])
    ids.flush()
    ids.put_new("order|o3", [200 * MIN, 1.0, "ch", "cmp", "vip", None, 0, "c3"])
    kept = ids.persist(b"mark")
    reopened = RocksIdMap(tmp_path / "0", memory, kept=kept)
    assert reopened.older_than(150 * MIN) == ["spend|s1", "spend|s2", "order|o1"]
    assert len(reopened) == 4
    reopened.close()

"""State that grows with customers and orders, on local disk: the customer stage's customers
(:class:`~kpistream.state.customers.CustomerMap`) and the aggregate's order ids
(:class:`~kpistream.state.aggregate.IdMap`) over RocksDB (``rocksdict``), one database per
partition under the worker's data dir, all sharing one memory budget.

A database is a cache of the stage's changelog, never a second source of truth: it is
destroyed and rebuilt from the partition's changelog records at every assignment (the stages'
``load``), so it can never be ahead of what Kafka holds after a crash, and it needs neither a
write-ahead log nor fsync. The one exception is a graceful stop (:class:`LocalSnapshots`):
written whole once every changelog record is acknowledged, reopened once by the next start on
the same disk if the changelog still holds the record it was taken at.

What it buys is memory: a million customers' order histories and ids live on disk and in a
bounded block cache instead of the Python heap (~1 KB per customer and ~300 bytes per order
id as dicts and lists, docs/benchmarks.md).

Keys (one keyspace, a prefix byte each):
- ``r`` + key: the record's time (8 bytes) and the record (JSON);
- ``t`` + time (8 bytes, big-endian, offset) + key: the sweep's index, so expiry reads only
  the records past the horizon;
- ``h`` + customer (customer map only): seq of the changelog record holding the customer's
  current version (deleted customers too, until a newer version moves the hold).

Records touched since the last :meth:`flush` are held decoded in ``cache`` (changes made in
place to a record :meth:`get` returned are kept); a flush writes them in one write batch.

A rewrite reads the key first, to delete its old time-index entry. A rebuild writes every id
in retention again, almost all of them for the first time, and that read (a miss through the
Bloom filters of every SST file) was 9 % of a wiped restart's samples (docs/benchmarks.md):
:meth:`_TimedRecords.put_new` writes a key its caller knows to be new without it. If the key
was held after all (an id used again after the sweep forgot it, whose old pack is still
replayed), its old index entry stays behind, and :meth:`_TimedRecords.older_than` checks the
entries up to the newest time so written against their records, deleting the stale ones.
"""

from __future__ import annotations

import shutil
import struct
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from hashlib import blake2b
from pathlib import Path
from sys import intern
from typing import Any, Generic, TypeVar, cast

import orjson
from rocksdict import (
    BlockBasedOptions,
    Cache,
    Options,
    Rdict,
    WriteBatch,
    WriteBufferManager,
    WriteOptions,
)

from kpistream.contracts.wire import CustomerRecord
from kpistream.encoding import json_bytes
from kpistream.settings import Settings
from kpistream.state.aggregate import DictIdMap, IdMap, IdMaps, record_time
from kpistream.state.customers import CustomerMap, CustomerMaps, DictCustomerMap, last_activity
from kpistream.state.store import Snapshots

V = TypeVar("V")

_RECORD, _TIMED, _HOLDER = b"r", b"t", b"h"
_TIME = struct.Struct(">Q")
_SNAPSHOT_SIZE = struct.Struct("<Q")  # records in the kept database
_SNAPSHOT_MARK = b"s"  # key of the snapshot's mark in a kept database
_UNREAD_UNTIL = b"u"  # key of a kept database's unread_until (below)
_MARK_SIZE = 16
_TIME_OFFSET = 1 << 63  # signed ms -> unsigned, so byte order is time order
_NO_TIME = -_TIME_OFFSET
_CH, _COST = 2, 5  # order entry fields holding group names
BLOOM_BITS_PER_KEY = 10


TableData = MutableMapping[bytes, Any]  # what a faust memory store keeps its values in


@dataclass(frozen=True)
class PartitionStores:
    """A fresh map per partition: the aggregate's ids and the customer stage's customers;
    and for a packed table (by name), where its faust store keeps the values (None: in the
    faust memory store's dict)."""

    ids: IdMaps
    customers: CustomerMaps
    table_data: Callable[[str], TableData] | None = None
    # where the aggregate and the customer stage leave their state on a stop
    snapshots: Snapshots[IdMap] | None = None
    customer_snapshots: Snapshots[CustomerMap] | None = None


def _time_key(time: int, key: bytes) -> bytes:
    return _TIMED + _TIME.pack(time + _TIME_OFFSET) + key


class RocksMemory:
    """One memory budget for all of a worker's customer databases: a block cache they share,
    with their memtables charged to it (RocksDB's write buffer manager), so six partitions
    cost one limit instead of six (RocksDB wiki, "Write Buffer Manager")."""

    def __init__(self, budget_mb: int) -> None:
        self.budget = budget_mb * 1024 * 1024
        self.cache = Cache(self.budget)
        self.buffers = WriteBufferManager.new_write_buffer_manager_with_cache(
            self.budget // 2, False, self.cache)

    def options(self) -> Options:
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        table = BlockBasedOptions()
        table.set_block_cache(self.cache)
        # Most reads are of keys not stored (every new order id, every customer's first
        # holder): a Bloom filter answers those without reading blocks (RocksDB wiki,
        # "RocksDB Bloom Filter"; 10 bits a key, ~1 % false positives). 5.1 -> 3.9 us per
        # id put in a fresh map of 400,000 ids.
        table.set_bloom_filter(BLOOM_BITS_PER_KEY, False)
        options.set_block_based_table_factory(table)
        options.set_write_buffer_size(max(1 << 20, self.budget // 8))
        options.set_max_write_buffer_number(2)
        options.set_write_buffer_manager(self.buffers)
        return options


class _TimedRecords(Generic[V]):
    """Records by key on a fresh local RocksDB at ``path``, with an index by their time."""

    def __init__(self, path: Path, memory: RocksMemory, *, kept: int | None = None) -> None:
        """A fresh database, or with ``kept`` the one this worker left at ``path`` when it
        stopped (:meth:`persist`; it held ``kept`` records)."""
        self.path = path
        if kept is None and path.exists():
            shutil.rmtree(path)  # rebuilt from the changelog: never trust an old copy
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = Rdict(str(path), memory.options())
        write = WriteOptions()
        # The changelog is the log. (A property at run time; rocksdict's stub says method.)
        write.disable_wal = True  # type: ignore[method-assign, assignment]
        self.db.set_write_options(write)
        self.closed = False
        self.cache: dict[str, V | None] = {}  # touched since the flush; None: deleted
        self.stored: dict[str, int | None] = {}  # their time on disk (None: not on disk)
        self.unread: set[str] = set()  # of those, put by put_new: not read
        # Newest time written by put_new: index entries up to it may be stale (module doc).
        self.unread_until = _NO_TIME
        self.size = kept or 0
        if kept is not None:
            raw = self.db.get(_UNREAD_UNTIL)
            if raw is not None:
                self.unread_until = self._time(cast(bytes, raw))

    # -- the record format (stored after its time, so a rewrite reads no JSON) -----------
    def decode(self, raw: bytes) -> V:
        raise NotImplementedError

    def encode(self, value: V) -> tuple[bytes, int]:
        raise NotImplementedError

    # -- records -----------------------------------------------------------------------
    def _raw(self, key: str) -> bytes | None:
        return cast(bytes | None, self.db.get(_RECORD + key.encode()))

    @staticmethod
    def _time(raw: bytes) -> int:
        return int(_TIME.unpack_from(raw)[0]) - _TIME_OFFSET

    def _read(self, key: str) -> tuple[V | None, int | None]:
        raw = self._raw(key)
        if raw is None:
            return None, None
        return self.decode(raw[_TIME.size:]), self._time(raw)

    def get(self, key: str) -> V | None:
        if key in self.cache:
            return self.cache[key]
        value, time = self._read(key)
        self.stored[key] = time
        if value is not None:
            self.cache[key] = value
        return value

    def peek(self, key: str) -> V | None:
        if key in self.cache:
            return self.cache[key]
        return self._read(key)[0]

    def _remember(self, key: str) -> None:
        if key not in self.stored:
            raw = self._raw(key)
            self.stored[key] = None if raw is None else self._time(raw)

    def put(self, key: str, value: V) -> None:
        self._remember(key)
        self.cache[key] = value

    def put_new(self, key: str, value: V) -> None:
        """:meth:`put` of a key the caller knows this map does not hold, without reading it
        (see the module doc for when it does hold it after all)."""
        if key in self.stored:
            self.put(key, value)
            return
        self.stored[key] = None
        self.unread.add(key)
        self.cache[key] = value

    def delete(self, key: str) -> None:
        self._remember(key)
        self.cache[key] = None

    def _write(self, batch: WriteBatch) -> None:
        """Add what else a flush writes."""

    def flush(self) -> None:
        batch = WriteBatch(raw_mode=True)
        for name, value in self.cache.items():
            key = name.encode()
            before = self.stored[name]
            if before is not None:
                batch.delete(_time_key(before, key))
            if value is None:
                if before is not None:
                    batch.delete(_RECORD + key)
                    self.size -= 1
                continue
            raw, time = self.encode(value)
            batch.put(_RECORD + key, _TIME.pack(time + _TIME_OFFSET) + raw)
            batch.put(_time_key(time, key), b"")
            if before is None:
                self.size += 1
            if name in self.unread and time > self.unread_until:
                self.unread_until = time
        self._write(batch)
        if len(batch):
            self.db.write(batch)
        self.cache.clear()
        self.stored.clear()
        self.unread.clear()

    # -- scans (of what was flushed) ---------------------------------------------------
    def _keys(self, prefix: bytes, start: bytes) -> Iterator[bytes]:
        for key in self.db.keys(from_key=start):
            key = cast(bytes, key)  # raw mode
            if not key.startswith(prefix):
                return
            yield key

    def items(self) -> Iterator[tuple[str, V]]:
        self.flush()
        for key, raw in self.db.items(from_key=_RECORD):
            key = cast(bytes, key)  # raw mode
            if not key.startswith(_RECORD):
                return
            yield key[1:].decode(), self.decode(cast(bytes, raw)[_TIME.size:])

    def older_than(self, horizon: int, since: int | None = None) -> list[str]:
        """Keys of the records whose time is before ``horizon`` (and not before ``since``)."""
        self.flush()
        end = _TIME.pack(horizon + _TIME_OFFSET)
        check_until = _TIME.pack(self.unread_until + _TIME_OFFSET)
        out = []
        stale = WriteBatch(raw_mode=True)
        start = _TIMED if since is None else _time_key(max(since, -_TIME_OFFSET), b"")
        for key in self._keys(_TIMED, start):
            time = key[1:1 + _TIME.size]
            if time >= end:
                break
            name = key[1 + _TIME.size:]
            if time <= check_until:
                raw = self.db.get(_RECORD + name)
                if raw is None or raw[:_TIME.size] != time:
                    # the entry of a version put_new wrote over: counted twice, held once
                    stale.delete(key)
                    self.size -= 1
                    continue
            out.append(name.decode())
        if len(stale):
            self.db.write(stale)
        return out

    def keys_after(self, after: str, limit: int) -> list[str]:
        self.flush()
        out: list[str] = []
        if limit <= 0:
            return out
        for key in self._keys(_RECORD, _RECORD + after.encode() + b"\x00"):
            out.append(key[1:].decode())
            if len(out) >= limit:
                break
        return out

    def persist(self, mark: bytes) -> int:
        """Write everything to disk with ``mark`` and close the database, keeping it (a
        stopping worker's snapshot, :class:`LocalSnapshots`); returns how many records it
        holds."""
        self.flush()
        self.db.put(_UNREAD_UNTIL, _TIME.pack(self.unread_until + _TIME_OFFSET))
        self.db.put(_SNAPSHOT_MARK, mark)
        self.db.flush(True)
        self.closed = True
        self.db.close()
        return self.size

    def close(self) -> None:
        """Close and delete the database (again: nothing)."""
        if self.closed:
            return
        self.closed = True
        self.cache.clear()
        self.db.close()
        shutil.rmtree(self.path, ignore_errors=True)

    def __len__(self) -> int:
        return self.size


class RocksCustomerMap(_TimedRecords[CustomerRecord]):
    """:class:`~kpistream.state.customers.CustomerMap`: customers by id, timed by their last
    activity (the retention sweep's order), with the changelog record holding each one."""

    def __init__(self, path: Path, memory: RocksMemory, *, kept: int | None = None) -> None:
        super().__init__(path, memory, kept=kept)
        self.holders: dict[str, int | None] = {}  # since the flush (None: dropped)

    def decode(self, raw: bytes) -> CustomerRecord:
        orders, responses, first, *answered = orjson.loads(raw)
        for entry in orders.values():
            entry[_CH:_COST] = map(intern, entry[_CH:_COST])
        return CustomerRecord(orders, responses, first, *answered)

    def encode(self, value: CustomerRecord) -> tuple[bytes, int]:
        return (json_bytes([value.orders, value.responses, value.first, value.answered]),
                last_activity(value))

    def inactive_before(self, horizon: int) -> list[str]:
        return self.older_than(horizon)

    def inactive_between(self, since: int, horizon: int) -> list[str]:
        return self.older_than(horizon, since)

    def holder(self, customer: str) -> int | None:
        if customer in self.holders:
            return self.holders[customer]
        raw = self.db.get(_HOLDER + customer.encode())
        return None if raw is None else int(raw)

    def set_holder(self, customer: str, seq: int) -> None:
        self.holders[customer] = seq

    def drop_holder(self, customer: str) -> None:
        self.holders[customer] = None

    def _write(self, batch: WriteBatch) -> None:
        for customer, seq in self.holders.items():
            if seq is None:
                batch.delete(_HOLDER + customer.encode())
            else:
                batch.put(_HOLDER + customer.encode(), str(seq).encode())
        self.holders.clear()


K = TypeVar("K", bound="_TimedRecords[Any]")


class LocalSnapshots(Generic[K]):
    """:class:`~kpistream.state.store.Snapshots` on the worker's data dir: a stopping worker
    persists each partition's database (of ``topic``) where it is and writes the rest of the
    partition's state in a file beside it; its next start on the same disk (a container
    restarted in its pod, a StatefulSet's volume) takes the file (deleting it, so it is used
    once) and reopens the database instead of rebuilding both from every record in the
    changelog."""

    def __init__(self, root: Path, topic: str, memory: RocksMemory,
                 kind: type[K]) -> None:
        self.root = root
        self.topic = topic
        self.memory = memory
        self.kind = kind  # the database class, reopened with ``kept=``

    def _db(self, p: int) -> Path:
        return self.root / f"{self.topic}-{p}"

    def _file(self, p: int) -> Path:
        return self.root / f"{self.topic}-{p}.snapshot"

    def save(self, p: int, kept: K, data: bytes) -> None:
        if not isinstance(kept, self.kind) or kept.path != self._db(p):
            raise TypeError(f"no snapshot of a map of {self.topic}-{p} not on disk here")
        # The same mark in the database and the file: the database reopened is the one
        # persisted with this file (not one recreated empty, or left by another stop).
        mark = blake2b(data, digest_size=16).digest()
        size = kept.persist(mark)
        staged = self._file(p).with_suffix(".partial")
        staged.write_bytes(_SNAPSHOT_SIZE.pack(size) + mark + data)
        staged.replace(self._file(p))  # whole or absent

    def take(self, p: int) -> tuple[bytes, K] | None:
        path = self._file(p)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        path.unlink()
        head = _SNAPSHOT_SIZE.size + _MARK_SIZE
        if not self._db(p).exists() or len(data) < head:
            return None
        (size,) = _SNAPSHOT_SIZE.unpack_from(data)
        mark = data[_SNAPSHOT_SIZE.size:head]
        try:
            kept = self.kind(self._db(p), self.memory, kept=size)
        except Exception:  # a cache that cannot be opened is rebuilt
            return None
        if kept.db.get(_SNAPSHOT_MARK) != mark:
            kept.close()  # not the database persisted with this file: rebuilt
            return None
        kept.db.delete(_SNAPSHOT_MARK)
        return data[head:], kept


class RocksIdMap(_TimedRecords[list[Any]]):
    """:class:`~kpistream.state.aggregate.IdMap`: the aggregate's id records (orders, spend
    and responses seen within the retention), timed for the id sweep."""

    def decode(self, raw: bytes) -> list[Any]:
        return cast(list[Any], orjson.loads(raw))

    def encode(self, value: list[Any]) -> tuple[bytes, int]:
        return json_bytes(value), record_time(value)


def partition_stores(settings: Settings) -> PartitionStores:
    """Where the stages keep what grows with customers and orders (``state_store``): for
    each partition a fresh map, in memory or in its own database under ``data_dir`` (one
    memory budget for all of them)."""
    if settings.state_store == "memory":
        return PartitionStores(lambda p: DictIdMap(), lambda r: DictCustomerMap())
    root = Path(settings.data_dir) / "state"
    memory = RocksMemory(settings.rocksdb_memory_mb)
    return PartitionStores(
        lambda p: RocksIdMap(root / f"{settings.topic_events}-{p}", memory),
        lambda r: RocksCustomerMap(root / f"{settings.topic_customers}-{r}", memory),
        lambda name: RocksTableData(root / f"table-{name}", memory),
        # (save() refuses any other map than its own kind, on disk where it expects it)
        cast(Snapshots[IdMap], LocalSnapshots(root, settings.topic_events, memory, RocksIdMap)),
        cast(Snapshots[CustomerMap], LocalSnapshots(root, settings.topic_customers, memory,
                                                    RocksCustomerMap)))


class RocksTableData(TableData):
    """The values of a faust memory-store table, on disk: the store keeps its logic (faust
    restores every assigned partition from the changelog into it, and drops the keys of
    partitions it loses), only the dict it writes into is a fresh RocksDB, so packed records
    (a table's size grows with customers and orders within retention) leave the heap. Fresh
    at every start, like the other databases here: a copy on disk is never trusted."""

    def __init__(self, path: Path, memory: RocksMemory) -> None:
        if path.exists():
            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = Rdict(str(path), memory.options())
        write = WriteOptions()
        write.disable_wal = True  # type: ignore[method-assign, assignment]
        self.db.set_write_options(write)
        self.size = 0

    def __getitem__(self, key: bytes) -> Any:
        raw = self.db.get(key)
        if raw is None:
            raise KeyError(key)
        return raw or None  # b"": faust marked the key deleted (a tombstone being applied)

    def __setitem__(self, key: bytes, value: Any) -> None:
        if self.db.get(key) is None:
            self.size += 1
        self.db.put(key, b"" if value is None else value)

    def __delitem__(self, key: bytes) -> None:
        if self.db.get(key) is None:
            raise KeyError(key)
        self.db.delete(key)
        self.size -= 1

    def __iter__(self) -> Iterator[bytes]:
        return (cast(bytes, key) for key in self.db.keys())  # noqa: SIM118 (Rdict is no iterable)

    def __len__(self) -> int:
        return self.size

    def keys_with_prefix(self, prefix: bytes) -> Iterator[bytes]:
        for key in self.db.keys(from_key=prefix):
            key = cast(bytes, key)
            if not key.startswith(prefix):
                return
            yield key  # (a tombstone being applied has no value: rare, and only a key here)

    def with_prefix(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        for key, value in self.db.items(from_key=prefix):
            key = cast(bytes, key)
            if not key.startswith(prefix):
                return
            if value:
                yield key, cast(bytes, value)

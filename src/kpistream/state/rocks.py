"""The customer stage's customers on local disk: a :class:`~kpistream.state.customers.CustomerMap`
over RocksDB (``rocksdict``), one database per customers partition under the worker's data dir.

The database is a cache of the changelog, never a second source of truth: it is destroyed
and rebuilt from the partition's changelog records at every assignment
(:meth:`CustomerState.load`), so it can never be ahead of what Kafka holds after a crash, and
it needs neither a write-ahead log nor fsync. What it buys is memory: a million customers'
order histories live on disk and in a bounded block cache instead of the Python heap
(~1 KB per customer as dicts and lists, docs/benchmarks.md).

Keys (one keyspace, a prefix byte each):
- ``c`` + customer: the record ``[orders, responses, first order id, last activity]``;
- ``h`` + customer: seq of the changelog record holding its current version (deleted
  customers too, until a newer version moves the hold);
- ``a`` + last activity (8 bytes, big-endian, offset) + customer: the sweep's index, so
  expiring inactive customers reads only those past the horizon.

Records touched since the last :meth:`flush` are held decoded in ``cache``; a flush writes them
in one write batch.
"""

from __future__ import annotations

import shutil
import struct
from collections.abc import Iterator
from pathlib import Path
from sys import intern
from typing import cast

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
from kpistream.state.customers import last_activity

_RECORD, _HOLDER, _ACTIVE = b"c", b"h", b"a"
_TIME = struct.Struct(">Q")
_TIME_OFFSET = 1 << 63  # signed ms -> unsigned, so byte order is time order
_CH, _COST = 2, 5  # order entry fields holding group names


def _active_key(active: int, customer: bytes) -> bytes:
    return _ACTIVE + _TIME.pack(active + _TIME_OFFSET) + customer


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
        options.set_block_based_table_factory(table)
        options.set_write_buffer_size(max(1 << 20, self.budget // 8))
        options.set_max_write_buffer_number(2)
        options.set_write_buffer_manager(self.buffers)
        return options


class RocksCustomerMap:
    """:class:`~kpistream.state.customers.CustomerMap` on a fresh local RocksDB at ``path``."""

    def __init__(self, path: Path, memory: RocksMemory) -> None:
        self.path = path
        if path.exists():
            shutil.rmtree(path)  # rebuilt from the changelog: never trust an old copy
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = Rdict(str(path), memory.options())
        write = WriteOptions()
        # The changelog is the log. (A property at run time; rocksdict's stub says method.)
        write.disable_wal = True  # type: ignore[method-assign, assignment]
        self.db.set_write_options(write)
        self.cache: dict[str, CustomerRecord | None] = {}  # None: deleted
        self.stored: dict[str, int | None] = {}  # cached customers' activity on disk
        self.holders: dict[str, int] = {}
        self.size = 0

    # -- records -----------------------------------------------------------------------
    def _read(self, customer: str) -> tuple[CustomerRecord | None, int | None]:
        raw = self.db.get(_RECORD + customer.encode())
        if raw is None:
            return None, None
        orders, responses, first, active = orjson.loads(raw)
        for entry in orders.values():
            entry[_CH:_COST] = map(intern, entry[_CH:_COST])
        return CustomerRecord(orders, responses, first), active

    def get(self, customer: str) -> CustomerRecord | None:
        if customer in self.cache:
            return self.cache[customer]
        record, active = self._read(customer)
        self.stored[customer] = active
        if record is not None:
            self.cache[customer] = record
        return record

    def peek(self, customer: str) -> CustomerRecord | None:
        if customer in self.cache:
            return self.cache[customer]
        return self._read(customer)[0]

    def _remember(self, customer: str) -> None:
        if customer not in self.stored:
            self.stored[customer] = self._read(customer)[1]

    def put(self, customer: str, record: CustomerRecord) -> None:
        self._remember(customer)
        self.cache[customer] = record

    def delete(self, customer: str) -> None:
        self._remember(customer)
        self.cache[customer] = None

    # -- holders -----------------------------------------------------------------------
    def holder(self, customer: str) -> int | None:
        held = self.holders.get(customer)
        if held is not None:
            return held
        raw = self.db.get(_HOLDER + customer.encode())
        return None if raw is None else int(raw)

    def set_holder(self, customer: str, seq: int) -> None:
        self.holders[customer] = seq

    # -- writing -----------------------------------------------------------------------
    def flush(self) -> None:
        if not self.cache and not self.holders:
            return
        batch = WriteBatch(raw_mode=True)
        for customer, record in self.cache.items():
            key = customer.encode()
            before = self.stored[customer]
            if before is not None:
                batch.delete(_active_key(before, key))
            if record is None:
                if before is not None:
                    batch.delete(_RECORD + key)
                    self.size -= 1
                continue
            active = last_activity(record)
            batch.put(_RECORD + key, orjson.dumps([record.orders, record.responses,
                                                   record.first, active]))
            batch.put(_active_key(active, key), b"")
            if before is None:
                self.size += 1
        for customer, seq in self.holders.items():
            batch.put(_HOLDER + customer.encode(), str(seq).encode())
        self.db.write(batch)
        self.cache.clear()
        self.stored.clear()
        self.holders.clear()

    # -- scans (of what was flushed) ---------------------------------------------------
    def _keys(self, prefix: bytes, start: bytes) -> Iterator[bytes]:
        for key in self.db.keys(from_key=start):
            key = cast(bytes, key)  # raw mode
            if not key.startswith(prefix):
                return
            yield key

    def items(self) -> Iterator[tuple[str, CustomerRecord]]:
        self.flush()
        for key, raw in self.db.items(from_key=_RECORD):
            key = cast(bytes, key)  # raw mode
            if not key.startswith(_RECORD):
                return
            orders, responses, first, _ = orjson.loads(cast(bytes, raw))
            yield key[1:].decode(), CustomerRecord(orders, responses, first)

    def inactive_before(self, horizon: int) -> list[str]:
        self.flush()
        end = _TIME.pack(horizon + _TIME_OFFSET)
        out = []
        for key in self._keys(_ACTIVE, _ACTIVE):
            if key[1:1 + _TIME.size] >= end:
                break
            out.append(key[1 + _TIME.size:].decode())
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

    def close(self) -> None:
        self.cache.clear()
        self.holders.clear()
        self.db.close()
        shutil.rmtree(self.path, ignore_errors=True)

    def __len__(self) -> int:
        return self.size

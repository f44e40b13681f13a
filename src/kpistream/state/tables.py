"""Every Faust table of kpistream, and the adapter that lets the pure stages use them.

The tables are plain (non-windowed) changelog-backed tables; windows and expiry are ours
(DESIGN-NOTES §1: faust's windowed tables expire on wall clock and lose windows across
partitions). The two engine tables hold packed records (one per applied batch or roll-up
message, DESIGN-NOTES §4), from which the stages rebuild their state after an assignment.
faust restores them from their changelogs; we write the changelog records ourselves through
the :class:`~kpistream.outbox.Outbox`, naming the changelog partition explicitly so a timer
can expire keys of a partition. Each write is also recorded in the memory store's
``_key_partition`` so faust drops the keys of partitions this worker loses at the next recovery
(faust/stores/memory.py ``on_recovery_completed`` only knows restored keys otherwise).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any, cast

import faust
from faust.types import TableT

from kpistream.admin import PACKED_MAX_MESSAGE_BYTES
from kpistream.encoding import json_bytes
from kpistream.outbox import Outbox
from kpistream.settings import Settings, parse_duration_ms
from kpistream.state.rocks import RocksTableData, TableData
from kpistream.state.store import SEP


class TableStore:
    """:class:`kpistream.state.store.Store` over a faust memory-store table."""

    def __init__(self, table: TableT[Any, Any], outbox: Outbox) -> None:
        self.table = table
        self.outbox = outbox

    @property
    def _store(self) -> Any:
        return self.table.data  # faust.stores.memory.Store

    @property
    def _dict(self) -> dict[str, Any]:
        return cast(dict[str, Any], self._store.data)

    def _changelog(self) -> str:
        return str(self.table.changelog_topic.get_topic_name())

    def get(self, key: str) -> Any:
        return self._dict.get(key)

    def put(self, partition: int, key: str, value: list[Any]) -> None:
        self._dict[key] = value
        self._store._key_partition[key] = partition
        self.outbox.send(self._changelog(), json_bytes(key), json_bytes(value), partition)

    def delete(self, partition: int, key: str) -> None:
        if self._dict.pop(key, None) is None:
            return
        self._store._key_partition.pop(key, None)
        self.outbox.send(self._changelog(), json_bytes(key), None, partition)

    def keys_of(self, partition: int) -> Iterator[str]:
        prefix = f"{partition}{SEP}"
        return iter([key for key in self._dict if key.startswith(prefix)])


class TablePackLog:
    """:class:`kpistream.state.store.PackLog` over a faust memory-store table of raw bytes,
    keyed ``b"{partition}:{seq}"``; values are the packed records as sent."""

    def __init__(self, table: TableT[Any, Any], outbox: Outbox) -> None:
        self.table = table
        self.outbox = outbox

    @property
    def _store(self) -> Any:
        return self.table.data

    @property
    def _dict(self) -> MutableMapping[bytes, bytes]:
        return cast(MutableMapping[bytes, bytes], self._store.data)

    @staticmethod
    def _key(partition: int, seq: int) -> bytes:
        return f"{partition}:{seq}".encode()

    def _changelog(self) -> str:
        return str(self.table.changelog_topic.get_topic_name())

    def get(self, partition: int, seq: int) -> bytes | None:
        return self._dict.get(self._key(partition, seq))

    def put(self, partition: int, seq: int, value: bytes) -> None:
        key = self._key(partition, seq)
        self._dict[key] = value
        self._store._key_partition[key] = partition
        self.outbox.send(self._changelog(), key, value, partition)

    def delete(self, partition: int, seq: int) -> None:
        key = self._key(partition, seq)
        if self._dict.pop(key, None) is None:
            return
        self._store._key_partition.pop(key, None)
        self.outbox.send(self._changelog(), key, None, partition)

    def seqs(self, partition: int) -> list[int]:
        prefix = f"{partition}:".encode()
        data = self._dict
        keys = (data.keys_with_prefix(prefix) if isinstance(data, RocksTableData) else
                (key for key in data if key.startswith(prefix)))
        return sorted(int(key[len(prefix):]) for key in keys)


def changelog_configs(settings: Settings) -> dict[str, str]:
    """Topic configs of every changelog (faust adds ``cleanup.policy=compact``)."""
    return {"max.message.bytes": str(PACKED_MAX_MESSAGE_BYTES),
            "segment.ms": str(parse_duration_ms(settings.changelog_segment))}


# Changelog records faust holds per table while a start restores it, before applying them to
# the store (faust's recovery_buffer_size, 1,000 by default). Ours are packed, up to hundreds
# of KB each: 1,000 a table held hundreds of MB at a restart's peak (docs/benchmarks.md).
RECOVERY_BUFFER_RECORDS = 64


@dataclass(frozen=True)
class Tables:
    aggregate: TablePackLog
    rollup: TablePackLog
    customers: TablePackLog
    alerts: TableStore
    aggregate_table: TableT[Any, Any]
    rollup_table: TableT[Any, Any]

    @classmethod
    def declare(cls, app: faust.App, settings: Settings, outbox: Outbox,
                on_disk: Callable[[str], TableData] | None = None) -> Tables:
        """``on_disk(name)``: where the tables that grow with customers and orders keep
        their values (None: in memory)."""
        def table(name: str, help: str, serializer: str,
                  grows: bool = False) -> TableT[Any, Any]:
            # faust picks the changelog codec from key_type/value_type (bytes -> raw).
            raw = bytes if serializer == "raw" else None
            created = app.Table(name, default=None, partitions=settings.partitions,
                                key_type=raw, value_type=raw,
                                recovery_buffer_size=RECOVERY_BUFFER_RECORDS,
                                schema=faust.Schema(key_serializer=serializer,
                                                    value_serializer=serializer), help=help,
                                extra_topic_configs=changelog_configs(settings))
            if grows and on_disk is not None:
                cast(Any, created.data).data = on_disk(name)
            return created

        aggregate = table("aggregate-packs", "applied batches of each events partition",
                          "raw", grows=True)
        rollup = table("rollup-messages", "current roll-up messages of each row partition",
                       "raw", grows=True)
        customers = table("customer-packs", "current customer versions of each customers "
                          "partition", "raw", grows=True)
        return cls(
            aggregate=TablePackLog(aggregate, outbox),
            rollup=TablePackLog(rollup, outbox),
            customers=TablePackLog(customers, outbox),
            alerts=TableStore(table("alerts", "CPO spike detector state per row", "json"),
                              outbox),
            aggregate_table=aggregate,
            rollup_table=rollup,
        )

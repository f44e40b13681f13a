"""Every Faust table of kpistream, and the adapter that lets the pure stages use them.

The tables are plain (non-windowed) changelog-backed tables; windows and expiry are ours
(DESIGN-NOTES §1: faust's windowed tables expire on wall clock and lose windows across
partitions). faust restores them from their changelogs; we write the changelog records
ourselves through the :class:`~kpistream.outbox.Outbox`, JSON-encoded as faust's ``json``
codec reads them, naming the changelog partition explicitly so a timer can expire keys of a
partition. Each write is also recorded in the memory store's ``_key_partition`` so faust
drops the keys of partitions this worker loses at the next recovery
(faust/stores/memory.py ``on_recovery_completed`` only knows restored keys otherwise).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import faust
import orjson
from faust.types import TableT

from kpistream.outbox import Outbox
from kpistream.settings import Settings
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
        self.outbox.send(self._changelog(), orjson.dumps(key), orjson.dumps(value), partition)

    def delete(self, partition: int, key: str) -> None:
        if self._dict.pop(key, None) is None:
            return
        self._store._key_partition.pop(key, None)
        self.outbox.send(self._changelog(), orjson.dumps(key), None, partition)

    def keys_of(self, partition: int) -> Iterator[str]:
        prefix = f"{partition}{SEP}"
        return iter([key for key in self._dict if key.startswith(prefix)])


@dataclass(frozen=True)
class Tables:
    ids: TableStore
    partials: TableStore
    clock: TableStore
    rollup: TableStore
    watermarks: TableStore
    offsets: TableStore
    alerts: TableStore
    rollup_table: TableT[Any, Any]

    @classmethod
    def declare(cls, app: faust.App, settings: Settings, outbox: Outbox) -> Tables:
        def table(name: str, help: str) -> TableT[Any, Any]:
            return app.Table(name, default=None, partitions=settings.partitions,
                             schema=faust.Schema(key_serializer="json",
                                                 value_serializer="json"), help=help)

        rollup = table("rollup", "row bucket values by source partition")
        return cls(
            ids=TableStore(table("ids", "event id -> offset, time (de-duplication)"), outbox),
            partials=TableStore(table("partials", "per-partition bucket sums"), outbox),
            clock=TableStore(table("clock", "stream time per events partition"), outbox),
            rollup=TableStore(rollup, outbox),
            watermarks=TableStore(table("watermarks", "stream time per source partition"),
                                  outbox),
            offsets=TableStore(table("offsets", "next input offset per stage and partition"),
                               outbox),
            alerts=TableStore(table("alerts", "CPO spike detector state per row"), outbox),
            rollup_table=rollup,
        )

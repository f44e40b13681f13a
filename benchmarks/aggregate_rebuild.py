"""One aggregate partition rebuilt from its packs on disk, as after a wiped restart: N orders
(5 % of them cancelled later) applied in packs of 500, then a fresh aggregator over a fresh
RocksDB id map loads the partition, timed. Each round does it twice: as the code does (an id's
first version written without reading the map, ``put_new``) and with every id written by
``put`` (read first), as before the thirteenth session.

    python benchmarks/aggregate_rebuild.py [N] [ROUNDS]      (default 300000 2)
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kpistream.contracts.records import Order, Source
from kpistream.contracts.wire import EventPack
from kpistream.settings import Settings
from kpistream.state import aggregate
from kpistream.state.rocks import RocksIdMap, RocksMemory
from kpistream.state.store import DictPackLog

T0 = 1_800_000_000_000
PACK = 500
SPACING_MS = 200  # 300,000 orders span ~17 h of event time: all within retention


def orders(count: int, seed: int = 1) -> list[Order]:
    rng = random.Random(seed)
    out: list[Order] = []
    for i in range(count):
        ts = T0 + i * SPACING_MS
        out.append(Order(f"o{i}", ts, "placed", f"c{rng.randrange(100_000)}", 10.0,
                         f"ch{rng.randrange(4)}", f"cmp{rng.randrange(50)}",
                         f"s{rng.randrange(3)}"))
        if i > 10 and rng.random() < 0.05:
            j = rng.randrange(max(0, i - 5_000), i)
            out.append(Order(f"o{j}", ts, "cancelled", None, None, "", "", ""))
    return out


def main(count: int, rounds: int) -> None:
    settings = Settings(clock="event")
    root = Path(tempfile.mkdtemp())
    memory = RocksMemory(settings.rocksdb_memory_mb)
    log = DictPackLog()
    live = aggregate.PartitionAggregator(settings, log,
                                         lambda p: RocksIdMap(root / "live", memory))
    events = orders(count)
    for first in range(0, len(events), PACK):
        items = [(Source("orders", 0, first + k, None, None), event)
                 for k, event in enumerate(events[first:first + PACK])]
        live.process(0, [(first, EventPack(1, [], items))], T0)  # type: ignore[arg-type]
    held = len(live.state(0, T0).ids)
    live.drop({0})
    print(f"{len(events):,} events, {held:,} ids, {len(log.data)} packs")
    unread = aggregate.first_version

    def read_first(record: list[Any]) -> bool:
        return False

    for n in range(rounds):
        for name, first_version in (("put_new", unread), ("put", read_first)):
            aggregate.first_version = first_version  # (looked up by _load_steps per id)
            rebuilt = aggregate.PartitionAggregator(
                settings, log, lambda p, d=f"{name}-{n}": RocksIdMap(root / d, memory))
            started = time.perf_counter()
            rebuilt.load(0, T0)
            elapsed = time.perf_counter() - started
            assert len(rebuilt.state(0, T0).ids) == held
            print(f"{name:8} {elapsed:6.2f} s  {elapsed / held * 1e6:5.2f} us per id")
            rebuilt.drop({0})
    aggregate.first_version = unread


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300_000,
         int(sys.argv[2]) if len(sys.argv) > 2 else 2)

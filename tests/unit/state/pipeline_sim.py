"""The engine's pure stages wired together without Kafka: partitions, batches, replays and
crashes that lose part of the changelog, all under the test's control."""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field

from kpistream.contracts.records import Event, Source, event_key
from kpistream.kpi.rows import RowPublisher
from kpistream.settings import Settings
from kpistream.state.aggregate import BatchResult, PartitionAggregator
from kpistream.state.rollup import RollupState
from kpistream.state.store import DictStore


def partition_of(key: str, partitions: int) -> int:
    return zlib.crc32(key.encode()) % partitions


@dataclass
class Sim:
    settings: Settings
    partitions: int = 1
    now_ms: int = 0
    ids: DictStore = field(default_factory=DictStore)
    partials: DictStore = field(default_factory=DictStore)
    clock: DictStore = field(default_factory=DictStore)
    rollup: DictStore = field(default_factory=DictStore)
    watermarks: DictStore = field(default_factory=DictStore)

    def __post_init__(self) -> None:
        self.logs: list[list[tuple[Event, Source]]] = [[] for _ in range(self.partitions)]
        self.done = [0] * self.partitions  # next offset to process per partition
        self.aggregator = PartitionAggregator(self.settings, self.ids, self.partials,
                                              self.clock)
        self.state = RollupState(self.settings, self.rollup, self.watermarks)
        self.publisher = RowPublisher(self.settings, self.state)
        self.verdicts: list[tuple[str, Event]] = []

    def append(self, event: Event) -> None:
        p = partition_of(event_key(event), self.partitions)
        source = Source("in", 0, len(self.logs[p]), None, "{}")
        self.logs[p].append((event, source))

    def _deliver(self, p: int, result: BatchResult) -> None:
        for row, updates in result.updates.items():
            q = partition_of(repr(row), self.partitions)
            self.state.apply_updates(q, p, row, updates, self.now_ms)
        for q in range(self.partitions):
            self.state.apply_watermark(q, p, result.stream_time)

    def step(self, p: int, n: int) -> int:
        """Process up to n pending events of partition p as one batch."""
        start = self.done[p]
        items = [(off, e, s) for off, (e, s) in
                 enumerate(self.logs[p][start:start + n], start=start)]
        if not items:
            return 0
        result = self.aggregator.process(p, items, self.now_ms)
        self.verdicts.extend((v.outcome, v.event) for v in result.verdicts)
        self._deliver(p, result)
        self.done[p] = start + len(items)
        return len(items)

    def crash_and_replay(self, p: int, n: int, rng: random.Random) -> None:
        """Process a batch, lose a random part of its changelog writes and of its roll-up
        messages, then replay the batch from the last commit, as a restarted worker would."""
        stores = (self.ids, self.partials, self.clock)
        before = [dict(s.data) for s in stores]
        start = self.done[p]
        items = [(off, e, s) for off, (e, s) in
                 enumerate(self.logs[p][start:start + n], start=start)]
        if not items:
            return
        result = self.aggregator.process(p, items, self.now_ms)
        for store, old in zip(stores, before, strict=True):
            after = store.data
            survived = dict(old)
            for key in set(old) | set(after):
                if rng.random() < 0.5:  # this changelog record reached Kafka
                    if key in after:
                        survived[key] = after[key]
                    else:
                        survived.pop(key, None)
            store.data = survived
        kept = BatchResult(result.verdicts, {
            row: u for row, u in result.updates.items() if rng.random() < 0.5},
            result.stream_time)
        self._deliver(p, kept)
        replay = self.aggregator.process(p, items, self.now_ms)  # offsets not committed
        self._deliver(p, replay)
        self.verdicts.extend((v.outcome, v.event) for v in replay.verdicts)
        self.done[p] = start + len(items)

    def run_all(self, rng: random.Random, crash_rate: float = 0.0) -> None:
        while any(self.done[p] < len(self.logs[p]) for p in range(self.partitions)):
            pending = [p for p in range(self.partitions) if self.done[p] < len(self.logs[p])]
            p = rng.choice(pending)
            n = rng.randint(1, 7)
            if rng.random() < crash_rate:
                self.crash_and_replay(p, n, rng)
            else:
                self.step(p, n)

    def rows(self) -> dict[tuple[str, str, str], dict[str, object]]:
        """(window, dimension, group) -> published message, after a final tick."""
        self.publisher.tick(set(range(self.partitions)), self.now_ms)
        out = {}
        for q in range(self.partitions):
            for (row, window), pub in self.publisher.published.get(q, {}).items():
                if pub.message is not None:
                    out[(window, row[0], row[1])] = pub.message
        return out


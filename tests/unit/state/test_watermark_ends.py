"""The low watermark against stale "read to its end" claims (SPEC §3), as a property.

Several edges own the raw partitions; records are produced to any of them at any moment (each
partition's records in time order, as one producer writes them), edges read their own
partitions in batches and list the end offsets of all of them after each batch (as
``EdgeReader._list_ends``); each edge's packs reach one aggregate partition in the order it
sent them, but interleaved with the other edges' packs in any order, and are applied when
the test says. Whatever the interleaving: a record that existed when an applied pack's
end offsets were listed, and has not been applied yet, is never behind the low mark. Once
every edge has read everything and said so, nothing holds the watermark back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kpistream.contracts.records import Order, Source
from kpistream.contracts.wire import ALL_READ, EventPack, RawMark
from kpistream.settings import Settings
from kpistream.state.aggregate import PartitionAggregator
from kpistream.state.store import DictPackLog

T = 1_800_000_000_000
TOPIC = "orders"


@dataclass
class World:
    partitions: int
    owner: list[int]  # raw partition -> edge
    log: list[list[int]] = field(default_factory=list)  # raw partition -> event times
    position: list[int] = field(default_factory=list)  # raw partition -> next offset read
    sending: dict[int, list[tuple[EventPack, dict[int, int]]]] = field(default_factory=dict)
    queue: list[tuple[EventPack, dict[int, int]]] = field(default_factory=list)
    applied_to: list[int] = field(default_factory=list)  # raw partition -> offsets applied
    listed: list[int] = field(default_factory=list)  # largest end listed in applied packs
    clock: int = T
    offset: int = 0

    def __post_init__(self) -> None:
        self.log = [[] for _ in range(self.partitions)]
        self.position = [0] * self.partitions
        self.applied_to = [0] * self.partitions
        self.listed = [0] * self.partitions
        self.aggregator = PartitionAggregator(Settings(clock="event"), DictPackLog())

    def produce(self, p: int, n: int, step_ms: int) -> None:
        for _ in range(n):
            self.clock += step_ms
            self.log[p].append(self.clock)

    def read(self, edge: int, most: int) -> None:
        pack = EventPack(self.partitions)
        read_to: dict[int, int] = {}
        for p in range(self.partitions):
            if self.owner[p] != edge:
                continue
            start = self.position[p]
            end = min(len(self.log[p]), start + most)
            for offset in range(start, end):
                pack.items.append((Source(TOPIC, p, offset, None, "{}"),
                                   Order(f"o{p}-{offset}", self.log[p][offset], "placed", "c",
                                         10.0, "search", "c1", "new")))
            self.position[p] = end
            read_to[p] = end
        # listed after the batch was read: records produced before now are counted
        pack.ends = {(TOPIC, p): len(self.log[p]) for p in range(self.partitions)}
        pack.marks = [RawMark(TOPIC, p, self.log[p][read_to[p] - 1] if read_to[p] else None,
                              read_to[p] >= len(self.log[p]), read_to[p])
                      for p in sorted(read_to)]
        self.sending.setdefault(edge, []).append((pack, read_to))

    def deliver(self, edge: int, n: int) -> None:
        sent = self.sending.get(edge, [])
        self.queue.extend(sent[:n])
        del sent[:n]

    def apply(self, n: int) -> None:
        for pack, read_to in self.queue[:n]:
            self.aggregator.process(0, [(self.offset, pack)], T)
            self.offset += 1
            for p, end in read_to.items():
                self.applied_to[p] = end
            for (_, p), end in pack.ends.items():
                self.listed[p] = max(self.listed[p], end)
        del self.queue[:n]

    def check(self) -> None:
        low = self.aggregator.state(0, T).low_mark()
        for p in range(self.partitions):
            first_pending = self.applied_to[p]
            if first_pending < self.listed[p]:
                ts = self.log[p][first_pending]
                assert low <= ts, (f"low mark {low - T} passed raw partition {p}'s record "
                                   f"{first_pending} at {ts - T}, listed and not applied")


steps = st.lists(st.one_of(
    st.tuples(st.just("produce"), st.integers(0, 3), st.integers(1, 20),
              st.integers(1, 60_000)),
    st.tuples(st.just("read"), st.integers(0, 2), st.integers(1, 15)),
    st.tuples(st.just("deliver"), st.integers(0, 2), st.integers(1, 3)),
    st.tuples(st.just("apply"), st.integers(1, 3))), max_size=40)


@settings(max_examples=500, deadline=None)
@given(st.integers(2, 4), st.data(), steps)
def test_the_low_mark_never_passes_a_listed_record_not_applied_yet(
        partitions: int, data: st.DataObject, script: list[tuple[Any, ...]]) -> None:
    edges = data.draw(st.integers(1, 3))
    owner = [data.draw(st.integers(0, edges - 1)) for _ in range(partitions)]
    world = World(partitions, owner)
    for edge in range(edges):  # every edge has read its empty partitions to their end
        world.read(edge, 1)
        world.deliver(edge, 1)
    world.apply(edges)
    for step in script:
        if step[0] == "produce":
            world.produce(step[1] % partitions, step[2], step[3])
        elif step[0] == "read":
            world.read(step[1] % edges, step[2])
        elif step[0] == "deliver":
            world.deliver(step[1] % edges, step[2])
        else:
            world.apply(step[1])
        world.check()
    for edge in range(edges):  # read everything, then say so with nothing new
        world.read(edge, 10_000)
        world.read(edge, 1)
        world.deliver(edge, len(world.sending[edge]))
    world.apply(len(world.queue))
    world.check()
    if any(world.log):
        assert world.aggregator.state(0, T).low_mark() == ALL_READ


def test_a_claim_sent_before_the_partition_grew_and_applied_after_another_edges_ends() -> None:
    """Edge 0 reads its empty partition and claims its end at offset 0; a record is then
    produced to each partition; edge 1 reads its own and lists partition 0 at 1; edge 1's
    pack lands first. Edge 0's claim, applied after, is stale (PartitionState.read_to_end)."""
    world = World(2, [0, 1])
    for edge in (0, 1):
        world.read(edge, 1)
        world.deliver(edge, 1)
    world.apply(2)
    world.read(0, 5)
    world.produce(0, 1, 1000)
    world.produce(1, 1, 1000)
    world.read(1, 5)
    world.deliver(1, 1)
    world.deliver(0, 1)
    world.apply(2)
    world.check()
    assert world.aggregator.state(0, T).low_mark() < ALL_READ

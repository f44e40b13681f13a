"""faust's commit offset with each acknowledged offset counted once: records faust filled a
fetch gap with and that a seek back delivers again must not hold the commit back (faust's
own ``_new_offset`` moves it one offset per commit then); everything else as faust does."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

from faust.transport.consumer import Consumer as FaustConsumer
from faust.types import TP
from hypothesis import given
from hypothesis import strategies as st
from intervaltree import IntervalTree

from kpistream.stages.offsets import new_offset

PARTITION = TP("kpistream-rollup", 4)


class ConsumerState:
    """The attributes faust's commit bookkeeping reads, as faust initialises them."""

    def __init__(self, committed: int | None) -> None:
        self._acked: defaultdict[TP, list[int]] = defaultdict(list)
        self._acked_index: defaultdict[TP, set[int]] = defaultdict(set)
        self._gap: defaultdict[TP, IntervalTree] = defaultdict(IntervalTree)
        self._committed_offset: defaultdict[TP, int | None] = defaultdict(lambda: None)
        self._committed_offset[PARTITION] = committed

    def ack(self, offset: int) -> None:
        """faust's ``Consumer.ack`` bookkeeping: an offset once until it is committed."""
        committed = self._committed_offset[PARTITION]
        index = self._acked_index[PARTITION]
        if (committed is None or offset >= committed) and offset not in index:
            index.add(offset)
            self._acked[PARTITION].append(offset)

    def commit(self, compute: Any) -> int | None:
        offset = compute(self, PARTITION)
        committed = self._committed_offset[PARTITION]
        if offset is not None and (committed is None or offset > committed):
            self._committed_offset[PARTITION] = offset
        return offset


def gap_then_seek_back(compute: Any) -> list[int | None]:
    """Read offset 21, next fetched record 35 (faust dropped 22..34): faust records the gap
    [22, 35]; the stage seeks back to 22 and every record up to 76 comes and is acked."""
    consumer = ConsumerState(committed=22)
    asyncio.run(FaustConsumer._add_gap(consumer, PARTITION, 22, 35))  # type: ignore[arg-type]
    for offset in range(22, 77):
        consumer.ack(offset)
    return [consumer.commit(compute) for _ in range(3)]


def test_a_gap_faust_filled_and_a_seek_back_delivered_again_commits_at_once() -> None:
    assert gap_then_seek_back(new_offset)[0] == 77


def test_faust_own_commit_creeps_on_the_same_acks() -> None:
    """Why kpistream installs its own: the same acks, faust's bookkeeping, one offset per
    commit (if faust fixes this, the override can go)."""
    assert gap_then_seek_back(FaustConsumer._new_offset) == [24, 25, 26]


def test_a_missing_head_holds_the_commit_and_a_later_ack_releases_it() -> None:
    consumer = ConsumerState(committed=10)
    for offset in range(12, 20):
        consumer.ack(offset)
    assert consumer.commit(new_offset) is None
    consumer.ack(10)
    consumer.ack(11)
    assert consumer.commit(new_offset) == 20
    assert consumer._acked[PARTITION] == []
    assert consumer._acked_index[PARTITION] == set()


def test_nothing_acked_commits_nothing() -> None:
    assert ConsumerState(committed=5).commit(new_offset) is None


@given(committed=st.one_of(st.none(), st.integers(0, 30)),
       acks=st.lists(st.integers(0, 60), max_size=40),
       gaps=st.lists(st.tuples(st.integers(0, 60), st.integers(1, 8)), max_size=3))
def test_without_duplicates_it_agrees_with_faust(committed: int | None, acks: list[int],
                                                  gaps: list[tuple[int, int]]) -> None:
    """Where faust's list never holds an offset twice, the same commits and the same
    bookkeeping left behind."""
    states = [ConsumerState(committed), ConsumerState(committed)]
    for state in states:
        for start, length in gaps:
            state._gap[PARTITION].addi(start, start + length)
        state._gap[PARTITION].merge_overlaps()
        for offset in acks:
            state.ack(offset)
    gap_offsets = {o for start, length in gaps for o in range(start, start + length)}
    if gap_offsets & set(states[0]._acked[PARTITION]):
        return  # faust would count these twice: the case the override exists for
    ours, faust = states
    for _ in range(3):
        assert ours.commit(new_offset) == faust.commit(FaustConsumer._new_offset)
        assert sorted(ours._acked[PARTITION]) == sorted(faust._acked[PARTITION])
        assert ours._acked_index[PARTITION] == faust._acked_index[PARTITION]

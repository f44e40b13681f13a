"""The edge gathers a batch for ``batch_within`` after the first records, not one fetch."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import TopicPartition

from kpistream.stages.edge import gather_batch

A, B = TopicPartition("orders", 0), TopicPartition("orders", 1)


class Fetches:
    """A consumer's getmany: each call returns the next scripted fetch (after its delay),
    or nothing once they are used up (after the timeout, as aiokafka does)."""

    def __init__(self, fetches: list[tuple[float, dict[TopicPartition, list[int]]]]) -> None:
        self.fetches = list(fetches)
        self.calls: list[tuple[int, int]] = []

    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[Any, list[Any]]:
        self.calls.append((timeout_ms, max_records))
        if not self.fetches or self.fetches[0][0] > timeout_ms / 1000:
            await asyncio.sleep(timeout_ms / 1000)
            if self.fetches:  # it came later: that much sooner for the next call
                self.fetches[0] = (self.fetches[0][0] - timeout_ms / 1000, self.fetches[0][1])
            return {}
        delay, records = self.fetches.pop(0)
        await asyncio.sleep(delay)
        return {tp: list(values)[:max_records] for tp, values in records.items()}


def gather(fetches: Fetches, batch_size: int = 100, within_s: float = 0.2) -> dict[Any, Any]:
    return asyncio.run(gather_batch(fetches.getmany, batch_size, within_s, lambda: False))


def test_small_fetches_within_the_wait_become_one_batch_in_order() -> None:
    fetches = Fetches([(0, {A: [1, 2]}), (0.01, {B: [10]}), (0.01, {A: [3]})])
    assert gather(fetches) == {A: [1, 2, 3], B: [10]}
    # after the scripted fetches, it waited out the rest of the 200 ms, asking for the rest
    assert fetches.calls[-1][1] == 100 - 4


def test_a_full_batch_is_not_held() -> None:
    fetches = Fetches([(0, {A: list(range(60))}), (0, {B: list(range(60))}), (0, {A: [99]})])
    batch = gather(fetches)
    assert sum(map(len, batch.values())) == 100  # the second fetch was asked for 40 only
    assert len(fetches.fetches) == 1  # the third was never read


def test_nothing_read_returns_after_one_wait() -> None:
    fetches = Fetches([])
    assert gather(fetches) == {}
    assert len(fetches.calls) == 1


def test_records_after_the_wait_go_to_the_next_batch() -> None:
    fetches = Fetches([(0, {A: [1]}), (0.3, {A: [2]})])
    assert gather(fetches, within_s=0.1) == {A: [1]}
    assert gather(fetches, within_s=0.5) == {A: [2]}

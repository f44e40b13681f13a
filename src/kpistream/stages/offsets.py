"""The offset-gap guard every faust stage applies to a batch, written once.

faust can mark a fetched record as read without delivering it around a rebalance (see
:mod:`kpistream.state.offsets`); a stage applies the contiguous head of each partition's
records and seeks back to the first missing offset.

A partition the stage has never applied anything of expects its log start offset: faust acks
the records it skips (``Stream.__aiter__`` acks a message fetched in an older generation or
while flow is suspended), so around the rebalances of a starting deployment the first
committed offset of a partition can lie beyond records no agent ever saw.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from faust.types import TP

from kpistream.observability.logs import RateLimitedLog
from kpistream.state.offsets import split_contiguous

logger = logging.getLogger(__name__)


class GapGuard:
    def __init__(self, app: Any, topic: str, log: RateLimitedLog) -> None:
        self.app = app
        self.topic = topic
        self.log = log
        self.seeks: list[tuple[TP, int]] = []

    async def split(self, events: Iterable[Any], expected: Callable[[int], int | None],
                    loading: Callable[[int], Iterator[None]] | None = None,
                    ) -> dict[int, list[tuple[int, bytes]]]:
        """Group a faust batch by partition; keep each partition's contiguous head and
        remember where to seek back for the rest. ``expected`` gives the next offset the
        stage's state expects, None when it holds nothing of the partition yet.
        ``loading(p)`` gives the steps of rebuilding partition p's state when it is not held
        yet: they run here, letting the event loop in between, so a long rebuild never
        starves heartbeats, timers or the other stages."""
        by_partition: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
        for event in events:
            by_partition[event.message.partition].append((event.message.offset,
                                                          event.message.value))
        if loading is not None:
            for partition in by_partition:
                for _ in loading(partition):
                    await asyncio.sleep(0)
        nexts = {partition: expected(partition) for partition in by_partition}
        unknown = [TP(self.topic, p) for p, offset in nexts.items() if offset is None]
        if unknown:
            starts = await self.app.consumer.earliest_offsets(*unknown)
            for tp in unknown:
                nexts[tp.partition] = starts.get(tp)
        out = {}
        for partition, items in by_partition.items():
            count, seek_to = split_contiguous([o for o, _ in items], nexts[partition])
            if seek_to is not None:
                self.log.warning("input_gap_seek_back", topic=self.topic, partition=partition,
                                 offset=seek_to)
                self.seeks.append((TP(self.topic, partition), seek_to))
            if count:
                out[partition] = items[:count]
        return out

    async def seek_back(self) -> None:
        """Seek inside faust's consumer thread (``seek_wait``, as faust's own recovery
        does): ``Consumer.seek`` runs aiokafka's seek on the caller's thread, which races
        the thread's fetcher (``KeyError`` in ``fetched_records``, the fetcher crashes)."""
        seeks, self.seeks = self.seeks, []
        if seeks:
            await self.app.consumer._thread.seek_wait(dict(seeks))

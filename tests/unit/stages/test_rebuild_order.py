"""RebuildOrder (runtime.py): the roll-up's and customer stage's rebuild steps wait while the
aggregate rebuilds, on the one event loop all stages share."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from kpistream.runtime import RebuildOrder


def steps(log: list[str], name: str, count: int) -> Iterator[None]:
    for _ in range(count):
        log.append(name)
        yield


def test_other_rebuilds_wait_while_the_aggregate_rebuilds() -> None:
    order = RebuildOrder()
    log: list[str] = []

    async def aggregate() -> None:
        for _ in order.lead(steps(log, "aggregate", 4)):
            await asyncio.sleep(0)

    async def rollup() -> None:
        for _ in steps(log, "rollup", 3):
            await order.pause()

    async def both() -> None:
        await asyncio.gather(aggregate(), rollup())

    asyncio.run(both())
    # the roll-up's first step ran before it first paused; then it waited for the aggregate
    assert log == ["aggregate", "rollup", "aggregate", "aggregate", "aggregate",
                   "rollup", "rollup"]
    assert order.leading == 0


def test_a_rebuild_abandoned_midway_no_longer_holds_the_others() -> None:
    order = RebuildOrder()
    rebuild = order.lead(steps([], "aggregate", 3))
    next(rebuild)
    assert order.leading == 1
    rebuild.close()  # the partition was revoked while it rebuilt
    assert order.leading == 0
    asyncio.run(asyncio.wait_for(order.pause(), 1))  # returns at once

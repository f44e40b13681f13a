"""Stage 3 on faust: the roll-up agent, keyed by row partition.

Applies each roll-up message (absolute bucket values of one aggregate partition) to the pure
:class:`~kpistream.state.rollup.RollupState`, whose changelog holds the messages themselves;
after the batch is acknowledged, messages no longer current are tombstoned.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import faust

from kpistream.observability.logs import RateLimitedLog
from kpistream.runtime import Runtime
from kpistream.settings import Settings
from kpistream.stages.offsets import gap_guard
from kpistream.state.rollup import RollupState

logger = logging.getLogger(__name__)


def register(app: faust.App, runtime: Runtime, state: RollupState) -> None:
    settings: Settings = runtime.settings
    outbox = runtime.outbox
    log = RateLimitedLog(logger, settings.log_interval_s)
    guard = gap_guard(app, settings.topic_rollup, log, settings.seek_retry_s)

    def expected(q: int, now: int) -> int | None:
        if not state.loaded(q):
            state.load(q, now)  # (the guard has let it load in steps already)
        return state.expected(q)

    @app.agent(runtime.topics.rollup, name="kpistream.rollup")
    async def rollup(stream: Any) -> None:
        async for batch in stream.take_events(settings.stage_batch_size * settings.partitions,
                                              settings.stage_batch_within_s):
            now = runtime.now_ms()
            parts = await guard.split(batch, partial(expected, now=now),
                                      partial(state.loading, now_ms=now))
            for q, raw in parts.items():
                for offset, value in raw:
                    state.apply(q, offset, value, now)
                state.expire(q, now)
            await outbox.flush()
            for q in parts:
                for seq in state.take_dead(q):
                    runtime.tables.rollup.delete(q, seq)
            await guard.seek_back()

"""One lifecycle for every sink: start (connect and check), write a batch, flush, close.

Each publish tick hands every sink the same :class:`Publication` (row changes, alert
transitions, the alerts firing now, customer profile changes); a sink takes what it
publishes. ``write`` only queues (it never blocks the tick); ``flush`` delivers what is
queued and raises :class:`SinkUnavailable` with ``retry_after`` when it cannot, keeping the
batch for the next attempt. :class:`SinkSet` runs them in order, honours ``retry_after`` per
sink, counts the failures in ``kpistream_sink_errors_total{sink}`` and logs them
rate-limited.

The dead-letter topic is not one of these sinks: a dead letter is part of the edge's commit
unit (delivered with the packed records before the raw offsets are committed), not a
best-effort publication."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kpistream.exceptions import KpistreamError
from kpistream.kpi.profiles import ProfileChange
from kpistream.kpi.rows import RowChange
from kpistream.observability.logs import RateLimitedLog
from kpistream.observability.metrics import Metrics

logger = logging.getLogger(__name__)
AlertMessage = dict[str, object]
AlertKey = tuple[str, str, str]  # alert, dimension, group


@dataclass(frozen=True, slots=True)
class Publication:
    """What one publish tick produced."""

    rows: Sequence[RowChange] = ()
    alerts: Sequence[AlertMessage] = ()  # firing/resolved transitions, in order
    firing: frozenset[AlertKey] = frozenset()
    profiles: Sequence[ProfileChange] = ()


class SinkUnavailable(KpistreamError):
    """A sink could not deliver now; its batch is kept and retried after ``retry_after``
    seconds."""

    def __init__(self, sink: str, cause: str, retry_after: float) -> None:
        super().__init__(f"{sink}: {cause}")
        self.sink = sink
        self.cause = cause
        self.retry_after = retry_after


class Sink(Protocol):
    name: str

    async def start(self) -> None:
        """Connect and check; may raise SinkUnavailable (the set retries with flush)."""

    def write(self, publication: Publication) -> None:
        """Queue what this sink publishes of the tick; never blocks."""

    async def flush(self) -> None:
        """Deliver everything queued, or raise SinkUnavailable and keep it."""

    async def close(self) -> None:
        """Release connections."""


@dataclass
class Backoff:
    """Exponential retry delays: ``initial``, doubled per failure, capped at ``maximum``."""

    initial: float
    maximum: float
    current: float = field(init=False)

    def __post_init__(self) -> None:
        self.current = self.initial

    def next(self) -> float:
        delay, self.current = self.current, min(self.current * 2, self.maximum)
        return delay

    def reset(self) -> None:
        self.current = self.initial


class SinkSet:
    """The worker's sinks, written and flushed in order every tick."""

    def __init__(self, sinks: Sequence[Sink], metrics: Metrics, log_interval_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sinks = list(sinks)
        self.metrics = metrics
        self.log = RateLimitedLog(logger, log_interval_s)
        self.clock = clock
        self.retry_at: dict[str, float] = {}
        for sink in self.sinks:  # a series per sink from the start, at 0
            metrics.sink_errors.labels(sink.name)

    async def start(self) -> None:
        for sink in self.sinks:
            try:
                await sink.start()
            except SinkUnavailable as exc:
                self._failed(exc)

    def write(self, publication: Publication) -> None:
        for sink in self.sinks:
            sink.write(publication)

    async def flush(self) -> None:
        now = self.clock()
        for sink in self.sinks:
            if now < self.retry_at.get(sink.name, 0.0):
                continue
            try:
                await sink.flush()
            except SinkUnavailable as exc:
                self._failed(exc)
            else:
                self.retry_at.pop(sink.name, None)

    async def close(self) -> None:
        for sink in self.sinks:
            await sink.close()

    def _failed(self, exc: SinkUnavailable) -> None:
        self.metrics.sink_errors.labels(exc.sink).inc()
        self.retry_at[exc.sink] = self.clock() + exc.retry_after
        self.log.warning("sink_write_failed", limit_key=exc.sink, sink=exc.sink,
                         error=exc.cause, retry_in_s=exc.retry_after)

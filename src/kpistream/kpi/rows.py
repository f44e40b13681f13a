"""Pure: which rows to publish now, and what a published row looks like (SPEC.md §5).

A row is published when its window moved, its buckets changed, or at least once per STEP
while non-empty, and at most once per ``publish_interval`` (a row published less than that
ago waits, still dirty). An empty window publishes a deletion once.

Two passes: :meth:`RowPublisher.tick`, once per ``publish_interval``, looks at every row;
:meth:`RowPublisher.quiet_changes`, run in between, publishes at once the changed rows that
were not published within the interval (a row new or quiet for a while), looking only at
the changed ones. Without it a change waited up to a whole interval for the next tick, the
largest term of a row's freshness (docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from kpistream.kpi.catalogue import SPEND_ALLOCATED
from kpistream.kpi.formulas import KPI_FIELDS, SUM_FIELDS, WindowSums, compute_kpis
from kpistream.settings import Settings
from kpistream.state.aggregate import NO_TIME
from kpistream.state.buckets import (
    ALLOCATED_DIMENSION,
    ALLOCATION_DIMENSIONS,
    ALLOCATION_ORDERS,
    RowId,
    allocate_spend,
    split_allocation_group,
)
from kpistream.state.rollup import RollupState, WindowBuckets

SCHEMA_VERSION = 1
RowMessage = dict[str, Any]


@dataclass(frozen=True, slots=True)
class RowChange:
    """One row to write: ``message`` is None for a deletion. ``group_live`` tells whether the
    group still has a row in some window (it stays in the dimension's index set)."""

    window: str
    dimension: str
    group: str
    message: RowMessage | None
    group_live: bool


@dataclass(slots=True)
class _Published:
    window_end: int
    message: RowMessage | None
    at: int


def build_message(window: str, dimension: str, group: str, start: int, end: int,
                  sums: WindowSums, now_ms: int, currency: str,
                  allocated_spend: float | None = None) -> RowMessage:
    """The Kafka/PubSub form: undefined KPIs are ``None`` (JSON null); a segment row, whose
    spend is allocated, says so."""
    kpis = compute_kpis(sums, allocated_spend=allocated_spend)
    message: RowMessage = {
        "window": window, "dimension": dimension, "group": group, "window_start": start,
        "window_end": end, "updated_at": now_ms, "currency": currency,
        **{name: kpis.get(name) for name in KPI_FIELDS}}
    if allocated_spend is not None:
        message[SPEND_ALLOCATED] = True
    message["schema_version"] = SCHEMA_VERSION
    return message


def decimal_text(value: int | float) -> str:
    """A decimal string without exponent (``1e-05`` -> ``0.00001``)."""
    if isinstance(value, int):
        return str(value)
    text = repr(value)
    # repr is the shortest round-trip decimal already, unless it has an exponent or is not
    # finite: only then go through Decimal (this runs for every field of every profile)
    return text if "e" not in text and "n" not in text else format(Decimal(text), "f")


def hash_fields(message: RowMessage) -> dict[str, str]:
    """The Redis hash form: strings, undefined KPIs absent, no schema_version."""
    return {name: value if isinstance(value, str) else
            ("true" if value else "false") if isinstance(value, bool) else decimal_text(value)
            for name, value in message.items()
            if value is not None and name != "schema_version"}


def _same_values(a: RowMessage | None, b: RowMessage | None) -> bool:
    if a is None or b is None:
        return a is b
    return all(a[k] == b[k] for k in a if k != "updated_at")


_ORDERS = SUM_FIELDS.index("orders")
_SPEND = SUM_FIELDS.index("spend")


@dataclass(slots=True)
class _Allocation:
    """One window's allocation inputs on one partition, kept per allocation row and
    recomputed only for rows that changed while the window stays put."""

    bounds: tuple[int, int] = (0, 0)
    orders: dict[str, int] = field(default_factory=dict)  # allocation group -> orders
    spend: dict[str, float] = field(default_factory=dict)  # campaign -> spend
    result: dict[str, float] | None = None

    def update(self, group: str, dimension: str, buckets: WindowBuckets | None) -> None:
        start, end = self.bounds
        target: dict[str, Any] = self.orders if dimension == ALLOCATION_ORDERS else self.spend
        index = _ORDERS if dimension == ALLOCATION_ORDERS else _SPEND
        value = 0.0 if buckets is None else sum(
            v[index] for b, v in buckets.totals.items() if start <= b < end)
        if dimension == ALLOCATION_ORDERS:
            value = round(value)
        if value:
            target[group] = value
        else:
            target.pop(group, None)
        self.result = None

    def spend_by_segment(self) -> dict[str, float]:
        if self.result is None:
            by_campaign: dict[str, dict[str, int]] = {}
            for group, n in self.orders.items():
                campaign, segment = split_allocation_group(group)
                by_campaign.setdefault(campaign, {})[segment] = int(n)
            self.result = allocate_spend(by_campaign, self.spend)
        return self.result


class RowPublisher:
    """Decides, per tick, the row changes of the partitions this worker owns."""

    def __init__(self, settings: Settings, state: RollupState) -> None:
        self.state = state
        self.currency = settings.reporting_currency
        self.interval_ms = settings.publish_interval_ms
        # A full tick comes publish_interval after the last, or up to a check interval
        # later: a row is published again when the next tick could be more than its STEP
        # after its last publication (SPEC §5: at least once per STEP while non-zero).
        self.tick_period_ms = settings.publish_interval_ms + settings.publish_check_interval_ms
        self.published: dict[int, dict[tuple[RowId, str], _Published]] = {}
        self.allocations: dict[int, dict[str, _Allocation]] = {}

    def forget(self, partitions: set[int]) -> None:
        for q in partitions:
            self.published.pop(q, None)
            self.allocations.pop(q, None)

    def _allocation(self, q: int, name: str, start: int, end: int,
                    dirty: set[tuple[RowId, str]]) -> tuple[dict[str, float], bool]:
        """Allocated spend per segment of window ``name`` on partition q, and whether it
        may have changed since the last tick."""
        rows = self.state.cache.get(q, {})
        held = self.allocations.setdefault(q, {}).get(name)
        if held is None or held.bounds != (start, end):
            held = self.allocations[q][name] = _Allocation((start, end))
            targets = [row for row in rows if row[0] in ALLOCATION_DIMENSIONS]
        else:
            targets = [row for row, window in dirty
                       if window == name and row[0] in ALLOCATION_DIMENSIONS]
        before = held.result
        for row in targets:
            held.update(row[1], row[0], rows.get(row, {}).get(name))
        return held.spend_by_segment(), before is None or held.result is not before

    def refresh_ms(self, step_ms: int) -> int:
        """How long an unchanged row may go without being published again."""
        return max(0, step_ms - self.tick_period_ms)

    def snapshot(self, partitions: set[int]) -> list[RowChange]:
        """Every live row as a change, to rewrite a sink that may have lost its data."""
        out = []
        for q in partitions:
            published = self.published.get(q, {})
            for (row, window), held in published.items():
                if held.message is not None:
                    out.append(RowChange(window, row[0], row[1], held.message, True))
        return out

    def current_rows(self, partitions: set[int]) -> list[RowMessage]:
        """Rows published last by the partitions given (for the Prometheus collector)."""
        return [p.message for q in partitions for p in self.published.get(q, {}).values()
                if p.message is not None]

    def tick(self, partitions: set[int], now_ms: int) -> list[RowChange]:
        changes: list[RowChange] = []
        for q in sorted(partitions):
            t = self.state.stream_time(q, now_ms)
            if t == NO_TIME:
                continue
            published = self.published.setdefault(q, {})
            dirty = self.state.dirty.get(q, set())
            rows = self.state.cache.get(q, {})
            allocated: dict[str, tuple[dict[str, float], bool]] = {}
            deferred: set[tuple[RowId, str]] = set()
            for row, windows in list(rows.items()):
                if row[0] in ALLOCATION_DIMENSIONS:
                    if all(not b.totals for b in windows.values()):
                        del rows[row]
                    continue
                row_changes: list[tuple[str, RowMessage | None]] = []
                for name, buckets in windows.items():
                    spec = self.state.specs[name]
                    start, end = self.state.window_of(spec, t)
                    refresh_ms = self.refresh_ms(spec.step_ms)
                    spend: float | None = None
                    moved = False
                    if row[0] == ALLOCATED_DIMENSION:
                        if name not in allocated:
                            allocated[name] = self._allocation(q, name, start, end, dirty)
                        by_segment, moved = allocated[name]
                        spend = by_segment.get(row[1], 0.0)
                    last = published.get((row, name))
                    if (last is not None and (row, name) not in dirty and not moved
                            and last.window_end == end and now_ms - last.at < refresh_ms):
                        continue
                    if last is not None and now_ms - last.at < self.interval_ms:
                        deferred.add((row, name))  # published since by quiet_changes
                        continue
                    message, changed = self._publish(published, row, name, buckets, start,
                                                     end, now_ms, spend, refresh_ms)
                    if changed:
                        row_changes.append((name, message))
                changes.extend(self._changes(published, row, windows, row_changes))
                if all(not b.totals for b in windows.values()):
                    del rows[row]  # every bucket expired: the row is gone for good
                    for name in windows:
                        published.pop((row, name), None)
                        deferred.discard((row, name))
            dirty.clear()
            dirty.update(deferred)
        return changes

    def quiet_changes(self, partitions: set[int], now_ms: int) -> list[RowChange]:
        """Between two ticks: the changed rows not published within ``publish_interval``,
        published now. Segment rows and the allocation inputs wait for the tick (a segment
        row's spend is allocated from other rows); what is left stays dirty for it."""
        changes: list[RowChange] = []
        for q in sorted(partitions):
            dirty = self.state.dirty.get(q)
            t = self.state.stream_time(q, now_ms)
            if not dirty or t == NO_TIME:
                continue
            published = self.published.setdefault(q, {})
            rows = self.state.cache.get(q, {})
            by_row: dict[RowId, list[tuple[str, RowMessage | None]]] = {}
            done: list[tuple[RowId, str]] = []
            for row, name in dirty:
                if row[0] in ALLOCATION_DIMENSIONS or row[0] == ALLOCATED_DIMENSION:
                    continue
                last = published.get((row, name))
                buckets = rows.get(row, {}).get(name)
                if buckets is None or (last is not None and now_ms - last.at < self.interval_ms):
                    continue
                spec = self.state.specs[name]
                start, end = self.state.window_of(spec, t)
                message, changed = self._publish(published, row, name, buckets, start, end,
                                                 now_ms, None, self.refresh_ms(spec.step_ms))
                done.append((row, name))
                if changed:
                    by_row.setdefault(row, []).append((name, message))
            dirty.difference_update(done)
            for row, row_changes in by_row.items():
                changes.extend(self._changes(published, row, rows[row], row_changes))
        return changes

    def _publish(self, published: dict[tuple[RowId, str], _Published], row: RowId, name: str,
                 buckets: WindowBuckets, start: int, end: int, now_ms: int,
                 spend: float | None, refresh_ms: int) -> tuple[RowMessage | None, bool]:
        """The row's message now, and whether it is a change to publish (recorded): a new
        value, or the same one not published for ``refresh_ms``."""
        last = published.get((row, name))
        sums = WindowSums.from_tuple(buckets.window_sums(start, end))
        message = None if sums.is_empty() else build_message(
            name, row[0], row[1], start, end, sums, now_ms, self.currency, spend)
        if (last is not None and _same_values(last.message, message)
                and (message is None or now_ms - last.at < refresh_ms)):
            last.window_end = end
            return message, False
        if last is None and message is None:
            # never published, so nothing to delete (a new row whose first events are
            # already outside this window: no tombstone for a row no one has seen)
            published[(row, name)] = _Published(end, None, now_ms)
            return None, False
        published[(row, name)] = _Published(end, message, now_ms)
        return message, True

    @staticmethod
    def _changes(published: dict[tuple[RowId, str], _Published], row: RowId,
                 windows: dict[str, WindowBuckets],
                 row_changes: list[tuple[str, RowMessage | None]]) -> list[RowChange]:
        live = any((held := published.get((row, w))) is not None
                   and held.message is not None for w in windows)
        return [RowChange(name, row[0], row[1], message, live)
                for name, message in row_changes]

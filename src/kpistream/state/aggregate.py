"""Stage 2, pure: de-duplicate, apply cancellations and keep per-partition bucket sums.

Runs per partition of the internal events topic (keyed by event id, so duplicates and a
cancellation meet their original in one partition). Idempotence without transactions: every
partial bucket stores the highest input offset it has applied, in the same changelog record as
its sums, so after a crash the replayed records it already holds are skipped, whatever subset
of the changelog survived. The id table tells a genuine duplicate (same id, another offset)
from a replay (same id, same offset).

State (all keys start with the partition):
- ids:      ``p|kind|id`` -> spend/survey ``[offset, ts]``; order ``[placed_off, placed_ts,
            amount, channel, campaign, segment, cancel_off, cancel_matched, cancel_ts]``
- partials: ``p|window|dimension|group|bucket`` -> ``[offset, *sums]``
- clock:    ``p`` -> ``[stream_time, [[first_offset, last_offset, time_before], ...]]``:
            the latest event time of the partition and a checkpoint per recent batch
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from kpistream.contracts.records import Event, Order, Source
from kpistream.settings import Settings
from kpistream.state.buckets import (
    ZERO,
    RowId,
    Sums,
    bucket_expired,
    bucket_start,
    contribution,
    rows_of,
)
from kpistream.state.store import SEP, Store

Outcome = Literal["accepted", "duplicate", "late", "unknown_order"]
NO_TIME = -(2**62)
CLOCK_CHECKPOINTS = 64  # (first, last offset, stream time before) of recent batches

# order record fields
_P_OFF, _P_TS, _AMOUNT, _CH, _CA, _SE, _C_OFF, _MATCHED, _C_TS = range(9)


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome
    event: Event
    source: Source


@dataclass(frozen=True, slots=True)
class BucketUpdate:
    """Absolute value of one partial bucket, with the offset it includes up to."""

    window: str
    bucket: int
    offset: int
    sums: Sums


@dataclass(slots=True)
class BatchResult:
    verdicts: list[Verdict] = field(default_factory=list)
    updates: dict[RowId, list[BucketUpdate]] = field(default_factory=dict)
    stream_time: int = NO_TIME


class PartitionAggregator:
    """Applies batches of one partition's events to ids/partials/clock stores."""

    def __init__(self, settings: Settings, ids: Store, partials: Store, clock: Store) -> None:
        self.windows = settings.window_specs
        self.grace_ms = settings.grace_ms
        self.retention_ms = settings.retention_ms
        self.live = settings.clock == "live"
        self.idle_lag_ms = settings.idle_lag_ms
        self.ids, self.partials, self.clock = ids, partials, clock

    # -- stream time -------------------------------------------------------------------
    def stream_time(self, partition: int) -> int:
        value = self.clock.get(str(partition))
        return int(value[0]) if value else NO_TIME

    def _time_before(self, partition: int, offset: int) -> int:
        """Stream time just before ``offset``: a replay after a crash must judge lateness
        against the time the first run saw, not the later time the changelog may hold.
        Replays start at a committed offset, which is where some earlier batch started."""
        value = self.clock.get(str(partition))
        if not value:
            return NO_TIME
        for start, end, before in reversed(value[1]):
            if start <= offset <= end:
                return int(before)
            if end < offset:
                break
        else:
            if value[1]:
                return int(value[1][0][2])  # older than the history kept: its oldest time
        return int(value[0])

    def effective_time(self, partition: int, now_ms: int) -> int:
        """T for lateness: the partition's latest event time, in live mode never less than
        wall clock minus idle_lag."""
        event_time = self.stream_time(partition)
        return max(event_time, now_ms - self.idle_lag_ms) if self.live else event_time

    # -- processing --------------------------------------------------------------------
    def process(
        self, partition: int, items: Sequence[tuple[int, Event, Source]], now_ms: int
    ) -> BatchResult:
        """Apply ``(offset, event, source)`` items of one partition, in offset order."""
        result = BatchResult()
        if not items:
            return result
        time_before = event_time = self._time_before(partition, items[0][0])
        floor = now_ms - self.idle_lag_ms if self.live else NO_TIME
        touched: dict[str, list[Any]] = {}
        for offset, event, source in items:
            t_eff = max(event_time, floor)
            if event.ts < t_eff - self.retention_ms:
                result.verdicts.append(Verdict("late", event, source))
                continue
            event_time = max(event_time, event.ts)
            t_eff = max(event_time, floor)
            outcome = self._apply(partition, offset, event, t_eff, touched)
            result.verdicts.append(Verdict(outcome, event, source))
        updates: dict[RowId, list[BucketUpdate]] = defaultdict(list)
        for key, value in touched.items():
            self.partials.put(partition, key, value)
            _, window, dimension, *group_parts, bucket = key.split(SEP)
            updates[(dimension, SEP.join(group_parts))].append(
                BucketUpdate(window, int(bucket), value[0], tuple(value[1:]))
            )
        result.updates = dict(updates)
        held = self.clock.get(str(partition))
        checkpoints = [c for c in (held[1] if held else []) if c[1] < items[0][0]]
        checkpoints = [*checkpoints[-(CLOCK_CHECKPOINTS - 1):],
                       [items[0][0], items[-1][0], time_before]]
        self.clock.put(partition, str(partition),
                       [max(event_time, held[0] if held else NO_TIME), checkpoints])
        result.stream_time = event_time
        return result

    def _apply(
        self, p: int, offset: int, event: Event, t_eff: int, touched: dict[str, list[Any]]
    ) -> Outcome:
        key = f"{p}{SEP}{event.kind}{SEP}{event.id}"
        record = self.ids.get(key)
        if not isinstance(event, Order):
            if record is not None and record[0] != offset:
                return "duplicate"
            if record is None:
                self.ids.put(p, key, [offset, event.ts])
            self._add(p, offset, event.ts, rows_of(event), contribution(event), 1, t_eff,
                      touched)
            return "accepted"
        if event.status == "placed":
            return self._placed(p, key, record, offset, event, t_eff, touched)
        return self._cancelled(p, key, record, offset, event, t_eff, touched)

    def _placed(self, p: int, key: str, record: list[Any] | None, offset: int, event: Order,
                t_eff: int, touched: dict[str, list[Any]]) -> Outcome:
        if record is not None and record[_P_OFF] is not None:
            if record[_P_OFF] != offset:
                return "duplicate"
            # A replay: re-apply unless a cancellation that came first retracted it.
            if record[_C_OFF] is not None and record[_C_OFF] < offset:
                return "accepted"
        else:
            pending_cancel = record is not None
            new = [offset, event.ts, event.amount, event.channel, event.campaign_id,
                   event.segment, None, 0, None]
            if record is not None:
                new[_C_OFF], new[_MATCHED], new[_C_TS] = record[_C_OFF], 0, record[_C_TS]
            self.ids.put(p, key, new)
            if pending_cancel:
                return "accepted"  # its cancellation arrived first: it counts nowhere
        self._add(p, offset, event.ts, rows_of(event), contribution(event), 1, t_eff, touched)
        return "accepted"

    def _cancelled(self, p: int, key: str, record: list[Any] | None, offset: int,
                   event: Order, t_eff: int, touched: dict[str, list[Any]]) -> Outcome:
        if record is not None and record[_C_OFF] is not None:
            if record[_C_OFF] != offset:
                return "duplicate"
            if not record[_MATCHED]:
                return "unknown_order"
        elif record is None or record[_P_OFF] is None:
            self.ids.put(p, key, [None, None, None, None, None, None, offset, 0, event.ts])
            return "unknown_order"
        else:
            record = list(record)
            record[_C_OFF], record[_MATCHED], record[_C_TS] = offset, 1, event.ts
            self.ids.put(p, key, record)
        placed = Order(key, record[_P_TS], "placed", None, record[_AMOUNT], record[_CH],
                       record[_CA], record[_SE])
        self._add(p, offset, placed.ts, rows_of(placed), contribution(placed), -1, t_eff,
                  touched)
        return "accepted"

    def _add(self, p: int, offset: int, ts: int, rows: list[RowId], vector: Sums, sign: int,
             t_eff: int, touched: dict[str, list[Any]]) -> None:
        for spec in self.windows:
            bucket = bucket_start(ts, spec.step_ms)
            if bucket_expired(bucket, spec, t_eff, self.grace_ms):
                continue
            for dimension, group in rows:
                key = f"{p}{SEP}{spec.name}{SEP}{dimension}{SEP}{group}{SEP}{bucket}"
                value = touched.get(key)
                if value is None:
                    stored = self.partials.get(key)
                    value = list(stored) if stored is not None else [-1, *ZERO]
                    touched[key] = value
                if offset <= value[0]:
                    continue  # already holds this record: a replay after a crash
                value[0] = offset
                for i, amount in enumerate(vector, start=1):
                    if amount:
                        value[i] += sign * amount

    # -- expiry ------------------------------------------------------------------------
    def sweep(self, partition: int, now_ms: int) -> int:
        """Drop ids and partial buckets no event can reach any more; returns how many."""
        t_eff = self.effective_time(partition, now_ms)
        if t_eff == NO_TIME:
            return 0
        specs = {spec.name: spec for spec in self.windows}
        dropped = 0
        for key in list(self.partials.keys_of(partition)):
            fields = key.split(SEP)
            spec = specs.get(fields[1])
            if spec is None or bucket_expired(int(fields[-1]), spec, t_eff, self.grace_ms):
                self.partials.delete(partition, key)
                dropped += 1
        horizon = t_eff - self.retention_ms
        for key in list(self.ids.keys_of(partition)):
            record = self.ids.get(key)
            if record is None:
                continue
            times = (record[1],) if len(record) == 2 else (record[_P_TS], record[_C_TS])
            if max(t for t in times if t is not None) < horizon:
                self.ids.delete(partition, key)
                dropped += 1
        return dropped

"""Stage 3, pure: per row, the latest absolute value of every (window, bucket, source
partition), and the window sums a row publishes.

Absolute values make replays harmless: an update whose offset is lower than the one held is
ignored, an equal one rewrites the same value. Stream time of a roll-up partition is the
largest watermark any source partition has sent it, so every row of every worker slides on
the same global event time (in live mode never less than wall clock minus idle_lag).

State (keys start with the roll-up partition ``q``):
- rollup:     ``q|window|dimension|group|bucket|src`` -> ``[offset, *sums]``
- watermarks: ``q|src`` -> ``[stream_time]``
The in-memory cache mirrors ``rollup`` per partition with per-bucket totals over sources; it
is derived, rebuilt from the table after every assignment and dropped on revocation.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from kpistream.settings import Settings, WindowSpec
from kpistream.state.aggregate import NO_TIME, BucketUpdate
from kpistream.state.buckets import RowId, Sums, bucket_expired, total, window_end
from kpistream.state.store import SEP, Store


@dataclass(slots=True)
class WindowBuckets:
    """One row's buckets of one window: per bucket, per source partition, the sums."""

    by_source: dict[int, dict[int, Sums]] = field(default_factory=dict)
    totals: dict[int, Sums] = field(default_factory=dict)

    def set(self, bucket: int, source: int, sums: Sums) -> None:
        sources = self.by_source.setdefault(bucket, {})
        sources[source] = sums
        self.totals[bucket] = sources[source] if len(sources) == 1 else total(sources.values())

    def drop(self, bucket: int) -> None:
        self.by_source.pop(bucket, None)
        self.totals.pop(bucket, None)

    def window_sums(self, start: int, end: int) -> Sums:
        return total(v for b, v in self.totals.items() if start <= b < end)


RowCache = dict[RowId, dict[str, WindowBuckets]]


class RollupState:
    """Roll-up table, watermarks and the derived per-partition cache of rows."""

    def __init__(self, settings: Settings, rollup: Store, watermarks: Store) -> None:
        self.specs: dict[str, WindowSpec] = {s.name: s for s in settings.window_specs}
        self.grace_ms = settings.grace_ms
        self.live = settings.clock == "live"
        self.idle_lag_ms = settings.idle_lag_ms
        self.partitions = settings.partitions
        self.rollup, self.watermarks = rollup, watermarks
        self.cache: dict[int, RowCache] = {}
        self.dirty: dict[int, set[tuple[RowId, str]]] = {}
        self.times: dict[int, int] = {}
        self.source_times: dict[int, dict[int, int]] = {}

    # -- stream time -------------------------------------------------------------------
    def event_time(self, q: int) -> int:
        return self.times.get(q, NO_TIME)

    def stream_time(self, q: int, now_ms: int) -> int:
        t = self.event_time(q)
        return max(t, now_ms - self.idle_lag_ms) if self.live else t

    def complete_time(self, q: int, now_ms: int) -> int:
        """Low watermark: every source partition has reached this time (in live mode never
        less than wall clock minus idle_lag), so buckets before it are complete. The detector
        evaluates minutes only up to here; in replay mode a source partition without any
        event holds it back."""
        sources = self.source_times.get(q, {})
        # Until every source partition has reported, the slowest one is unknown.
        low = min(sources.values()) if len(sources) >= self.partitions else NO_TIME
        return max(low, now_ms - self.idle_lag_ms) if self.live else low

    def apply_watermark(self, q: int, source: int, ts: int) -> None:
        key = f"{q}{SEP}{source}"
        held = self.watermarks.get(key)
        if held is None or held[0] < ts:
            self.watermarks.put(q, key, [ts])
        self.times[q] = max(self.event_time(q), ts)
        sources = self.source_times.setdefault(q, {})
        sources[source] = max(sources.get(source, NO_TIME), ts)

    # -- updates -----------------------------------------------------------------------
    def apply_updates(self, q: int, source: int, row: RowId,
                      updates: Iterable[BucketUpdate], now_ms: int) -> None:
        t = self.complete_time(q, now_ms)
        rows = self.cache.setdefault(q, {})
        dirty = self.dirty.setdefault(q, set())
        dimension, group = row
        for update in updates:
            spec = self.specs.get(update.window)
            if spec is None or bucket_expired(update.bucket, spec, t, self.grace_ms):
                continue
            key = (f"{q}{SEP}{update.window}{SEP}{dimension}{SEP}{group}{SEP}"
                   f"{update.bucket}{SEP}{source}")
            held = self.rollup.get(key)
            if held is not None and held[0] > update.offset:
                continue  # an older value of this bucket, replayed: keep the newer one
            self.rollup.put(q, key, [update.offset, *update.sums])
            rows.setdefault(row, {}).setdefault(update.window, WindowBuckets()).set(
                update.bucket, source, update.sums)
            dirty.add((row, update.window))

    # -- assignment --------------------------------------------------------------------
    def rebuild(self, partitions: Iterable[int]) -> None:
        """Derive the cache and stream time of these partitions from the restored tables."""
        for q in partitions:
            rows: RowCache = {}
            for key in self.rollup.keys_of(q):
                value = self.rollup.get(key)
                if value is None:
                    continue
                _, window, dimension, *group_parts, bucket, source = key.split(SEP)
                rows.setdefault((dimension, SEP.join(group_parts)), {}).setdefault(
                    window, WindowBuckets()).set(int(bucket), int(source), tuple(value[1:]))
            self.cache[q] = rows
            self.dirty[q] = {(row, w) for row, windows in rows.items() for w in windows}
            marks = {int(k.split(SEP)[1]): int(self.watermarks.get(k)[0])
                     for k in self.watermarks.keys_of(q)}
            self.source_times[q] = marks
            self.times[q] = max(marks.values(), default=NO_TIME)

    def drop(self, partitions: Iterable[int]) -> None:
        for q in partitions:
            self.cache.pop(q, None)
            self.dirty.pop(q, None)
            self.times.pop(q, None)
            self.source_times.pop(q, None)

    # -- expiry ------------------------------------------------------------------------
    def sweep(self, q: int, now_ms: int) -> None:
        """Forget buckets no current or future window of their row can cover, judged against
        the low watermark, so a lagging source partition never loses the buckets it is still
        filling (and the detector still sees its minutes)."""
        t = self.complete_time(q, now_ms)
        if t == NO_TIME:
            return
        for key in list(self.rollup.keys_of(q)):
            fields = key.split(SEP)
            spec = self.specs.get(fields[1])
            if spec is None or bucket_expired(int(fields[-2]), spec, t, self.grace_ms):
                self.rollup.delete(q, key)
        for windows in self.cache.get(q, {}).values():
            for name, buckets in windows.items():
                spec = self.specs[name]
                for bucket in [b for b in buckets.totals
                               if bucket_expired(b, spec, t, self.grace_ms)]:
                    buckets.drop(bucket)

    def window_of(self, spec: WindowSpec, t: int) -> tuple[int, int]:
        end = window_end(t, spec.step_ms)
        return end - spec.size_ms, end

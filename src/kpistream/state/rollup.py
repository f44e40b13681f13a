"""Stage 3, pure: per row, the latest absolute value of every (window, bucket, source
partition), the window sums a row publishes, and the low watermark.

Absolute values make replays harmless: a value whose stamp (the source partition's applied
offset) is lower than the one held is ignored. State is event-sourced: the changelog holds
the roll-up messages themselves, keyed by their roll-up offset, and a message is tombstoned
once no value it carries is current (every one superseded by a newer message or expired) and
it is not the newest message of its source (which carries that source's marks). Tombstones
are written only after the records superseding them were acknowledged
(:meth:`RollupState.take_dead` after a flush), so a crash never loses a current value.

Sources are the aggregate partitions (``0 .. partitions-1``) and the customer partitions
(``partitions + r``), which send the first-order counts of ``new_customers`` and no time.

Stream time of a roll-up partition is the largest event time any source partition reported
(in live mode never less than wall clock minus idle_lag). The low watermark (SPEC §3) is the
smallest low mark of the source partitions, each of which is the newest event time of the
slowest raw input partition not yet read to its end.

Attribution days (SPEC §8): a campaign's CPO on a day is its spend over its counted orders in
that day, final once the low watermark has passed the day's end plus the largest window plus
grace. That is exactly when the watermark has passed the day's last bucket of the largest
window by that window's reach (its STEP divides the day), and a bucket's total then is final:
no event of its time can be accepted any more, and no cancellation can reach its orders (their
ids expired first). So the partition folds each such bucket of a campaign row's largest window
into that campaign's day sums (at the settled watermark; the bucket is kept until then,
:meth:`RollupState._unfolded`), and once a day's last bucket is folded the day's CPO is final
and goes to the customer stage. The day sums and how far buckets were folded are kept in one
changelog record per partition (``ATTRIBUTION_SEQ``, written with each fold), so a restart
neither loses nor folds twice what the tombstoned messages carried; a final day is forgotten
only after its costs were acknowledged (:meth:`RollupState.costs_sent`), so a crash re-sends
rather than loses it (the customer stage ignores a cost it holds).
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from heapq import heappop, heappush

import orjson

from kpistream.contracts.wire import (
    ALL_READ,
    NO_TIME,
    BucketValues,
    CampaignDayCost,
    RollupMessage,
    SumsVector,
    decode_rollup,
)
from kpistream.encoding import json_bytes
from kpistream.kpi.formulas import SUM_FIELDS
from kpistream.settings import Settings, WindowSpec
from kpistream.state.buckets import ALERT_DIMENSIONS, RowId, Sums, total, window_end
from kpistream.state.store import PackLog, records

# The changelog key of a partition's attribution record: below every roll-up offset.
ATTRIBUTION_SEQ = -1
LOAD_STEP = 10  # roll-up messages applied between two steps of a rebuild
_ORDERS = SUM_FIELDS.index("orders")
_SPEND = SUM_FIELDS.index("spend")


@dataclass(slots=True)
class HeldMessage:
    """A roll-up message of a partition's changelog, and how many current values it holds
    (every value refers to the one message it came in: a per-value ``(stamp, seq)`` and
    an index by value key cost ~270 bytes a value, more than the value's own 17 doubles)."""

    stamp: int
    seq: int
    values: int = 0


HeldValue = tuple[HeldMessage, SumsVector]


@dataclass(slots=True)
class WindowBuckets:
    """One row's buckets of one window: per bucket, per source partition, the sums and the
    message they came in; and per bucket their total over the sources, summed when read. A
    backlog brings a bucket's new value from each source several times between two reads
    (one roll-up message per aggregate batch): summing at each one was the roll-up's hottest
    line (18 % of a worker's samples while it drained a backlog, docs/benchmarks.md)."""

    dimension: str = ""  # of the row (expiry: what the detector and attribution days hold)
    # arrays of doubles as decoded (no float object per field: the roll-up holds a vector
    # per bucket per source for as long as the largest window)
    by_source: dict[int, dict[int, HeldValue]] = field(default_factory=dict)
    summed: dict[int, SumsVector] = field(default_factory=dict)
    # buckets set since the last read, in the order they were first set: a new bucket
    # enters ``summed`` in that order, as it would have if summed at once
    stale: dict[int, None] = field(default_factory=dict)

    def held(self, bucket: int, source: int) -> HeldValue | None:
        sources = self.by_source.get(bucket)
        return None if sources is None else sources.get(source)

    @property
    def totals(self) -> dict[int, SumsVector]:
        """Per bucket, the sum over its sources (in the order buckets were first set)."""
        if self.stale:
            by_source, summed = self.by_source, self.summed
            for bucket in self.stale:
                sources = by_source[bucket]
                # zip/sum runs in C
                summed[bucket] = (next(iter(sources.values()))[1] if len(sources) == 1 else
                                  array("d", map(sum, zip(*[v[1] for v in sources.values()],
                                                          strict=True))))
            self.stale.clear()
        return self.summed

    def drop(self, bucket: int) -> dict[int, HeldValue]:
        """Forget a bucket; returns its values by source."""
        self.summed.pop(bucket, None)
        self.stale.pop(bucket, None)
        return self.by_source.pop(bucket, None) or {}

    def window_sums(self, start: int, end: int) -> Sums:
        return total(v for b, v in self.totals.items() if start <= b < end)


RowCache = dict[RowId, dict[str, WindowBuckets]]
ExpiryKey = tuple[str, int, bool]  # window, bucket start, held for the detector


@dataclass(slots=True)
class ExpiryIndex:
    """A partition's buckets by :data:`ExpiryKey`: the rows' windows holding each, and per
    kind (held or not) a heap of the times they expire at, so that expiry reads only what
    expires and can run after every batch (scanning every key after every message made the
    1000-campaign roll-up's step up to a quarter slower)."""

    holders: dict[ExpiryKey, list[WindowBuckets]] = field(default_factory=dict)
    # (the watermark or detector time the bucket expires at, window, bucket start)
    deadlines: tuple[list[tuple[int, str, int]], list[tuple[int, str, int]]] = field(
        default_factory=lambda: ([], []))
    # expired, but holding campaign buckets of attribution days not yet folded
    waiting: dict[ExpiryKey, list[WindowBuckets]] = field(default_factory=dict)
    folded_through: int = NO_TIME  # how far days were folded when ``waiting`` was checked


def low_watermark(marks: Iterable[tuple[int, int]]) -> int:
    """The low watermark (SPEC §3) from every source's ``(low mark, seen time)``: NO_TIME,
    a time, or ALL_READ (nothing left to read anywhere).

    "Nothing left to read" is true as of the newest event time its source had seen. A source
    that has not yet applied the marks others have (its agent is behind: some of its events
    are still on their way) has nothing to say beyond that time; taken for "no bound", the
    watermark passed its pending events as soon as a faster source reported a newer mark
    (alerts judged minutes before their data)."""
    held = list(marks)
    if not held or min(low for low, _ in held) == NO_TIME:
        return NO_TIME
    newest = max(seen for _, seen in held)
    return min(seen if low == ALL_READ and seen < newest else low for low, seen in held)


@dataclass(frozen=True, slots=True)
class SourceMark:
    stamp: int
    seq: int
    event_time: int
    low_mark: int
    seen_time: int = NO_TIME
    counts: dict[tuple[str, str], int] = field(default_factory=dict)  # COUNTS_PARTITION's


@dataclass(slots=True)
class PartitionLog:
    """The messages holding current values, and each source's newest message."""

    messages: dict[int, HeldMessage] = field(default_factory=dict)  # seq -> message
    marks: dict[int, SourceMark] = field(default_factory=dict)
    dead: set[int] = field(default_factory=set)
    last_seq: int | None = None
    values: int = 0  # current values held

    def release(self, message: HeldMessage) -> None:
        message.values -= 1
        self.values -= 1
        if message.values <= 0:
            self.dead.add(message.seq)


@dataclass(slots=True)
class AttributionDays:
    """One partition's campaign day sums not yet final, and how far buckets were folded."""

    folded_through: int = NO_TIME  # every bucket starting at or before it is folded
    days: dict[tuple[str, int], list[float]] = field(default_factory=dict)  # -> spend, orders
    final: list[CampaignDayCost] = field(default_factory=list)  # to send, not yet acked

    def encode(self) -> bytes:
        return json_bytes([self.folded_through,
                             [[c, d, *sums] for (c, d), sums in self.days.items()]])

    @classmethod
    def decode(cls, data: bytes) -> AttributionDays:
        folded_through, days = orjson.loads(data)
        return cls(folded_through, {(c, d): [spend, orders] for c, d, spend, orders in days})


class RollupState:
    """Roll-up values, source marks and the derived per-partition cache of rows."""

    def __init__(self, settings: Settings, log: PackLog, *, hold_for_alerts: bool = False
                 ) -> None:
        self.specs: dict[str, WindowSpec] = {s.name: s for s in settings.window_specs}
        self.grace_ms = settings.grace_ms
        # With alerts on, the buckets the detector reads (its minute and baseline windows of
        # the rows it watches) are kept until it has judged the minutes that read them (it
        # sets ``evaluated``), however far ahead a backlog moved the watermark; every other
        # bucket until the watermark has passed it by its window's reach (:meth:`expiry_times`).
        self.hold_for_alerts = hold_for_alerts
        held_windows = {s.name for s in settings.alert_windows} if hold_for_alerts else set()
        # per window name: STEP, how far behind the watermark a bucket stays (size+grace),
        # and whether the detector reads it
        self.bucket_reach = {s.name: (s.step_ms, s.size_ms + self.grace_ms,
                                      s.name in held_windows)
                             for s in settings.window_specs}
        self.expiry: dict[int, ExpiryIndex] = {}
        self.live = settings.clock == "live"
        self.idle_lag_ms = settings.idle_lag_ms
        self.partitions = settings.partitions
        self.log = log
        self.cache: dict[int, RowCache] = {}
        self.dirty: dict[int, set[tuple[RowId, str]]] = {}
        self.logs: dict[int, PartitionLog] = {}
        self.rebuilding: dict[int, object] = {}  # partitions being rebuilt, by rebuild
        self.evaluated: dict[int, int] = {}
        self.attribution_spec = settings.attribution_window
        self.period_ms = settings.attribution_period_ms
        self.attribution: dict[int, AttributionDays] = {}
        self.settle_ms = settings.watermark_settle_ms
        # per partition: (now_ms, complete_time) as seen, the oldest one at or before
        # now - settle first (settled_time)
        self.seen_complete: dict[int, deque[tuple[int, int]]] = {}

    # -- stream time -------------------------------------------------------------------
    def event_time(self, q: int) -> int:
        marks = self.logs[q].marks if q in self.logs else {}
        return max((m.event_time for m in marks.values()), default=NO_TIME)

    def stream_time(self, q: int, now_ms: int) -> int:
        t = self.event_time(q)
        return max(t, now_ms - self.idle_lag_ms) if self.live else t

    def complete_time(self, q: int, now_ms: int) -> int:
        """Low watermark: periods before it are complete (SPEC §3). Until every source
        partition has reported, the slowest raw partition is unknown: NO_TIME."""
        held = self.logs[q].marks if q in self.logs else {}
        # Customer partitions (sources >= partitions) send first-order counts, no marks.
        marks = [m for source, m in held.items() if source < self.partitions]
        if len(marks) < self.partitions:
            return NO_TIME
        low = low_watermark([(m.low_mark, m.seen_time) for m in marks])
        if low == NO_TIME:
            return NO_TIME
        if low == ALL_READ:  # nothing left to read anywhere
            low = now_ms - self.idle_lag_ms if self.live else self.event_time(q)
        return min(low, now_ms - self.idle_lag_ms) if self.live else low

    def settled_time(self, q: int, now_ms: int) -> int:
        """:meth:`complete_time` as it has stood for ``watermark_settle`` of wall time: the
        lowest value seen since the last one seen at least that long ago (NO_TIME until the
        first is that old). What the alert detector judges and attribution days become final
        against (settings.watermark_settle: a margin beside the end offsets)."""
        t = self.complete_time(q, now_ms)
        if not self.settle_ms:
            return t
        seen = self.seen_complete.setdefault(q, deque())
        seen.append((now_ms, t))
        cutoff = now_ms - self.settle_ms
        while len(seen) > 1 and seen[1][0] <= cutoff:
            seen.popleft()
        if seen[0][0] > cutoff:
            return NO_TIME
        return min(value for _, value in seen)

    def expiry_times(self, q: int, now_ms: int) -> tuple[int, int]:
        """Times buckets expire against: the low watermark, so that a lagging source
        partition never loses the buckets it is still filling; for the buckets the detector
        reads, the watermark held back to the detector's progress. (The stream time, whose
        windows alone are published, was tried for the rows' buckets: it held half as many
        during a backlog, but segment rows lost allocated spend in a worker without alerts,
        for a reason not found; docs/benchmarks.md.) The campaign buckets of attribution
        days also wait for the days to be folded (:meth:`_unfolded`)."""
        t_rows = self.complete_time(q, now_ms)
        if not self.hold_for_alerts:
            return t_rows, t_rows
        return t_rows, min(t_rows, self.evaluated.get(q, NO_TIME))

    def event_counts(self, q: int) -> dict[tuple[str, str], int] | None:
        """The input's outcome counts by (topic, outcome), summed over the aggregate
        partitions as their newest messages to q (COUNTS_PARTITION) say; None while q is
        not loaded here."""
        if not self.loaded(q):
            return None
        totals: dict[tuple[str, str], int] = {}
        for source, mark in self.logs[q].marks.items():
            if source < self.partitions:
                for key, count in mark.counts.items():
                    totals[key] = totals.get(key, 0) + count
        return totals

    # -- messages ----------------------------------------------------------------------
    def expected(self, q: int) -> int | None:
        """Next roll-up offset this partition expects (None before any)."""
        held = self.logs.get(q)
        return None if held is None or held.last_seq is None else held.last_seq + 1

    def apply(self, q: int, seq: int, data: bytes, now_ms: int) -> None:
        """Apply the roll-up message at offset ``seq`` and record it in the changelog."""
        self.log.put(q, seq, data)
        self._apply(q, seq, decode_rollup(data), *self.expiry_times(q, now_ms))

    def _apply(self, q: int, seq: int, message: RollupMessage, t_free: int,
               t_held: int) -> None:
        plog = self.logs.setdefault(q, PartitionLog())
        rows = self.cache.setdefault(q, {})
        dirty = self.dirty.setdefault(q, set())
        expiry = self.expiry.get(q)
        if expiry is None:
            expiry = self.expiry[q] = ExpiryIndex()
        holders = expiry.holders
        source, stamp = message.source, message.stamp
        held_message = plog.messages.get(seq)
        if held_message is None:
            held_message = plog.messages[seq] = HeldMessage(stamp, seq)
        plog.dead.discard(seq)
        plog.last_seq = seq if plog.last_seq is None else max(plog.last_seq, seq)
        reaches = self.bucket_reach
        values = message.values
        assert isinstance(values, BucketValues)  # as decoded
        for window, dimension, group, bucket, sums in values.columns():
            reach = reaches.get(window)
            if reach is None:
                continue
            held_for_alerts = reach[2] and dimension in ALERT_DIMENSIONS
            t = t_held if held_for_alerts else t_free
            # bucket_expired, inline: this runs for every value of every message
            if (t != NO_TIME and bucket + reach[0] <= t - reach[1]
                    and not self._unfolded(q, window, dimension, bucket)):
                continue
            row = (dimension, group)
            # get-then-create: a setdefault default would build a WindowBuckets per value
            windows = rows.get(row)
            if windows is None:
                windows = rows[row] = {}
            buckets = windows.get(window)
            if buckets is None:
                buckets = windows[window] = WindowBuckets(dimension)
            # WindowBuckets.held, and a bucket set stale, inline: this runs for every value
            sources = buckets.by_source.get(bucket)
            if sources is None:
                sources = buckets.by_source[bucket] = {}
                slot = holders.get((window, bucket, held_for_alerts))
                if slot is None:
                    slot = holders[window, bucket, held_for_alerts] = []
                    heappush(expiry.deadlines[held_for_alerts],
                             (bucket + reach[0] + reach[1], window, bucket))
                slot.append(buckets)
            else:
                held = sources.get(source)
                if held is not None:
                    if held[0].stamp >= stamp:
                        continue  # the same or a newer value of this bucket is held
                    plog.release(held[0])
            held_message.values += 1
            plog.values += 1
            sources[source] = (held_message, sums)
            buckets.stale[bucket] = None
            dirty.add((row, window))
        mark = plog.marks.get(source)
        if mark is None or (stamp, seq) >= (mark.stamp, mark.seq):
            plog.marks[source] = SourceMark(stamp, seq, message.event_time, message.low_mark,
                                            message.seen_time, message.counts)
            if mark is not None and mark.seq != seq and self._holds_nothing(plog, mark.seq):
                plog.dead.add(mark.seq)
        if held_message.values <= 0 and plog.marks[source].seq != seq:
            plog.dead.add(seq)

    @staticmethod
    def _holds_nothing(plog: PartitionLog, seq: int) -> bool:
        held = plog.messages.get(seq)
        return held is None or held.values <= 0

    def take_dead(self, q: int) -> list[int]:
        """Messages no longer needed; call after the records superseding them were
        acknowledged, then tombstone them."""
        plog = self.logs.get(q)
        if plog is None:
            return []
        pinned = {m.seq for m in plog.marks.values()}
        dead = [s for s in plog.dead if self._holds_nothing(plog, s) and s not in pinned]
        plog.dead.clear()
        for seq in dead:
            plog.messages.pop(seq, None)
        return dead

    # -- assignment --------------------------------------------------------------------
    def loaded(self, q: int) -> bool:
        return q in self.logs and q not in self.rebuilding

    def load(self, q: int, now_ms: int) -> None:
        """Rebuild partition q from its changelog (after an assignment)."""
        for _ in self.loading(q, now_ms):
            pass

    def loading(self, q: int, now_ms: int) -> Iterator[None]:
        """The rebuild of partition q in steps, for callers that let other work run between
        them (a large roll-up took over 30 s): nothing if it is loaded; if another caller's
        rebuild is under way, steps that wait for it. The partition counts as loaded only
        once whole, and a rebuild it was dropped during stops."""
        if self.loaded(q):
            return iter(())
        if q in self.rebuilding:
            return self._await_rebuild(q)
        return self._rebuild(q, now_ms)

    def _await_rebuild(self, q: int) -> Iterator[None]:
        while q in self.rebuilding:
            yield

    def _rebuild(self, q: int, now_ms: int) -> Iterator[None]:
        self.drop([q])
        token = self.rebuilding[q] = object()
        self.logs[q] = PartitionLog()
        self.cache[q] = {}
        self.attribution[q] = AttributionDays()
        whole = False
        try:
            for n, (seq, data) in enumerate(records(self.log, q, self.log.seqs(q))):
                if seq == ATTRIBUTION_SEQ:
                    self.attribution[q] = AttributionDays.decode(data)
                    continue
                self._apply(q, seq, decode_rollup(data), NO_TIME, NO_TIME)
                if n % LOAD_STEP == LOAD_STEP - 1:
                    yield
                    if self.rebuilding.get(q) is not token:
                        return  # dropped meanwhile
            whole = True
        finally:
            if not whole and self.rebuilding.get(q) is token:
                self.drop([q])  # abandoned half way: whoever comes next starts over
        del self.rebuilding[q]
        self.sweep(q, now_ms)
        self.dirty[q] = {(row, w) for row, windows in self.cache[q].items() for w in windows}

    def drop(self, partitions: Iterable[int]) -> None:
        for q in partitions:
            self.rebuilding.pop(q, None)
            self.cache.pop(q, None)
            self.expiry.pop(q, None)
            self.dirty.pop(q, None)
            self.logs.pop(q, None)
            self.evaluated.pop(q, None)
            self.attribution.pop(q, None)
            self.seen_complete.pop(q, None)

    # -- expiry ------------------------------------------------------------------------
    def sweep(self, q: int, now_ms: int) -> None:
        """Fold the attribution days the settled watermark has passed, then :meth:`expire`."""
        if q not in self.logs:
            return
        # Days are final at the (settled) low watermark itself (SPEC §8), not once the
        # detector has judged the minutes (it stays idle_lag behind): the buckets it holds
        # are whole.
        self._fold(q, self.settled_time(q, now_ms))
        self.expire(q, now_ms)

    def expire(self, q: int, now_ms: int) -> int:
        """Forget buckets no current or future window of their row can cover (as of
        :meth:`expiry_times`); returns how many went. Run after every batch of messages: run
        by the 5-second sweep only, a backlog's roll-up held minutes of event time beyond its
        windows."""
        plog, index = self.logs.get(q), self.expiry.get(q)
        if plog is None or index is None:
            return 0
        gone = 0
        for held, t in zip((False, True), self.expiry_times(q, now_ms), strict=True):
            heap = index.deadlines[held]
            while heap and t != NO_TIME and heap[0][0] <= t:
                _, window, bucket = heappop(heap)
                holders = index.holders.pop((window, bucket, held), None)
                if holders:
                    gone += self._forget(q, plog, index, (window, bucket, held), holders)
        days = self.attribution.get(q)
        if index.waiting and days is not None and days.folded_through > index.folded_through:
            index.folded_through = days.folded_through
            waiting, index.waiting = index.waiting, {}
            for key, holders in waiting.items():
                gone += self._forget(q, plog, index, key, holders)
        return gone

    def _forget(self, q: int, plog: PartitionLog, index: ExpiryIndex, key: ExpiryKey,
                holders: list[WindowBuckets]) -> int:
        """Drop an expired bucket from the rows' windows holding it, but campaign buckets of
        days not yet folded, which wait; returns how many went."""
        window, bucket, _ = key
        gone = 0
        for buckets in holders:
            if self._unfolded(q, window, buckets.dimension, bucket):
                index.waiting.setdefault(key, []).append(buckets)
                continue
            values = buckets.drop(bucket)
            for held_message, _ in values.values():
                plog.release(held_message)
            gone += bool(values)
        return gone

    def _unfolded(self, q: int, window: str, dimension: str, bucket: int) -> bool:
        """A campaign bucket of the largest window not yet folded into its day: it stays,
        although expired. Days are folded at the settled watermark, buckets expire at the
        watermark itself (or, with alerts on, behind the detector, which is behind both):
        without alerts, a bucket that expired within ``watermark_settle`` of the watermark
        passing it, or right after a rebuild (nothing settled yet), was dropped unfolded and
        its campaign's day lost its spend and orders."""
        if dimension != "campaign" or window != self.attribution_spec.name:
            return False
        days = self.attribution.get(q)
        return days is None or bucket > days.folded_through

    # -- attribution days (SPEC §8) ------------------------------------------------------
    def _fold(self, q: int, t: int) -> None:
        """Fold the campaign buckets of the largest window that expire at ``t`` into their
        day sums; the days whose last bucket expired become final."""
        spec = self.attribution_spec
        days = self.attribution.setdefault(q, AttributionDays())
        # Buckets expire in time order: the newest bucket expired at t bounds them all.
        through = t - self.retention_of(spec) - spec.step_ms
        through -= through % spec.step_ms
        if through > days.folded_through:
            for (dimension, campaign), windows in self.cache.get(q, {}).items():
                buckets = windows.get(spec.name) if dimension == "campaign" else None
                if buckets is None:
                    continue
                for bucket, sums in buckets.totals.items():
                    if days.folded_through < bucket <= through:
                        day = bucket - bucket % self.period_ms
                        held = days.days.setdefault((campaign, day), [0.0, 0.0])
                        held[0] += sums[_SPEND]
                        held[1] += sums[_ORDERS]
            days.folded_through = through
            self.log.put(q, ATTRIBUTION_SEQ, days.encode())
        # Also after a restart: final days not yet acknowledged are still in ``days``.
        pending = {(cost.campaign, cost.day) for cost in days.final}
        for (campaign, day), (spend, orders) in sorted(days.days.items()):
            if day + self.period_ms - spec.step_ms > through or (campaign, day) in pending:
                continue
            count = round(orders)
            days.final.append(CampaignDayCost(campaign, day, spend / count if count else 0.0,
                                              spend, count))

    def retention_of(self, spec: WindowSpec) -> int:
        return spec.size_ms + self.grace_ms

    def final_costs(self, q: int) -> list[CampaignDayCost]:
        """Final campaign day costs of partition q not yet acknowledged by the customer
        stage (sent again after a restart until they are)."""
        held = self.attribution.get(q)
        return list(held.final) if held is not None else []

    def costs_sent(self, q: int, costs: list[CampaignDayCost]) -> None:
        """The customer stage has these costs (their records were acknowledged): forget the
        days, and record it."""
        held = self.attribution.get(q)
        if held is None or not costs:
            return
        done = {(cost.campaign, cost.day) for cost in costs}
        held.final = [cost for cost in held.final if (cost.campaign, cost.day) not in done]
        for key in done:
            held.days.pop(key, None)
        self.log.put(q, ATTRIBUTION_SEQ, held.encode())

    def window_of(self, spec: WindowSpec, t: int) -> tuple[int, int]:
        end = window_end(t, spec.step_ms)
        return end - spec.size_ms, end

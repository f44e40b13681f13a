"""Stage 2, pure: de-duplicate, apply cancellations and keep per-partition bucket sums.

Runs per partition of the internal events topic (events are routed there by id, so duplicates
and a cancellation meet their original in one partition). State is event-sourced: each applied
batch writes ONE changelog record (:class:`~kpistream.contracts.wire.AggregatePack`) holding
its effects (bucket contributions, id-table upserts) and the partition's header; the id table
and the bucket sums are derived, rebuilt by replaying the packs after a restart. So a batch of
hundreds of events costs one changelog record, whatever the number of rows it touches.

Exactness without transactions:
- a batch at or below the applied offset (a replay after a crash or rebalance) is not applied
  again; the buckets its packs touched are re-sent (absolute values, so harmless) in case the
  roll-up messages of the first run were lost;
- a record the edge delivered twice (it crashed after producing and before committing) has
  source coordinates at or below the partition's high-water mark for that source partition,
  and is skipped: never counted as a duplicate, an accepted event or a new rejection;
- a second event with the same id is a genuine duplicate (SPEC §1).

Id records (``kind|id``): spend/survey ``[ts]``; order ``[placed_ts, amount, channel,
campaign, segment, cancel_ts, matched, customer_id]`` (``placed_ts`` None while only a
cancellation is known).

Every effect of a customer's order or response is also a **customer fact** for the customer
stage, with the coordinates (events offset, item index) of the input item that caused it; a
replayed batch re-sends the facts of its packs, which the customer stage recognises by those
coordinates.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from sys import intern
from typing import Any, Literal, Protocol

from kpistream.contracts.records import Event, Order, Source, Survey
from kpistream.contracts.wire import (
    ALL_READ,
    NO_TIME,
    AggregatePack,
    AggregateSnapshot,
    CustomerFact,
    EventPack,
    PartitionMark,
    RawMark,
    decode_aggregate_pack,
    decode_aggregate_snapshot,
    encode_aggregate_pack,
    encode_aggregate_snapshot,
)
from kpistream.kpi.formulas import SUM_FIELDS
from kpistream.settings import Settings
from kpistream.state.buckets import (
    ALERT_DIMENSIONS,
    ZERO,
    RowId,
    bucket_expired,
    bucket_start,
    contribution_items,
    rows_of,
)
from kpistream.state.store import PackLog, Snapshots, pack_digest, records

Outcome = Literal["accepted", "duplicate", "late", "unknown_order"]
COUNTED_OUTCOME: dict[str, str] = {"accepted": "accepted", "duplicate": "duplicate",
                                   "late": "late", "unknown_order": "invalid"}
BucketKey = tuple[str, str, str, int]  # window, dimension, group, bucket
# The buckets a batch changed, by (row, window, start), with their sums: what _updates sends
# without looking each up again (a dozen per event).
Touched = dict[tuple[RowId, str, int], "array[float]"]

__all__ = ["NO_TIME", "BatchResult", "Buckets", "PartitionAggregator",
           "Verdict"]

# order id-record fields
_P_TS, _AMOUNT, _CH, _CA, _SE, _C_TS, _MATCHED, _CUSTOMER = range(8)
Effect = tuple[int, Event, int, int]  # sign, event, events offset, item index
# Signs of the effects that move a cancellation to its own bucket for the alert detector
# (``cancel_shift``, kpi/formulas.py): +1 in the order's bucket (the event is the order) and
# -1 in the cancellation's (the event is the order at the cancellation's ts). Never a
# customer fact.
SHIFT_BACK, SHIFT_HERE = 2, -2
NEVER = 2**63  # a reach no bucket is ever behind by
_ORDERS, _REVENUE = SUM_FIELDS.index("orders"), SUM_FIELDS.index("revenue")
_SHIFT = SUM_FIELDS.index("cancel_shift")
_ZERO_SUMS = array("d", ZERO)  # copied for each new bucket


# Not frozen: one is built per event or bucket value, and a frozen dataclass takes
# ~2 µs to build instead of ~0.4 (one object.__setattr__ per field).
@dataclass(slots=True)
class Verdict:
    outcome: Outcome
    event: Event
    source: Source


@dataclass(slots=True)
class BatchResult:
    verdicts: list[Verdict] = field(default_factory=list)
    # Absolute value of every bucket the batch changed (as of ``applied``): the partition's
    # own arrays, not copies, so valid only until its next batch; the stage sends them
    # at once. (Copies were the largest allocation of a backlog's peak: 54 MB of 490.)
    touched: Touched = field(default_factory=dict)
    stream_time: int = NO_TIME
    low_mark: int = NO_TIME
    # The low mark the customer stage judges expiry against (SPEC §8). In replay mode, once
    # every raw partition is read to its end, the newest event time read: the customer
    # stage never sees the pipeline's stream time, and its own partition's newest event
    # may be days older (the roll-up takes the largest event time of its sources instead).
    customer_low_mark: int = NO_TIME
    # the newest event time of any raw partition, as the marks applied so far say
    seen_time: int = NO_TIME
    applied: int | None = None
    facts: list[CustomerFact] = field(default_factory=list)
    counts: dict[tuple[str, str], int] = field(default_factory=dict)  # the partition's, after


def customer_fact(effect: Effect) -> CustomerFact | None:
    """The customer stage's view of an effect: orders and responses of a known customer."""
    sign, event, offset, index = effect
    if sign in (SHIFT_BACK, SHIFT_HERE):
        return None
    if isinstance(event, Order | Survey) and event.customer_id is not None:
        return (offset, index, sign, event)
    return None


class IdMap(Protocol):
    """A partition's id records (``kind|id`` -> record) within the retention."""

    def get(self, key: str) -> list[Any] | None: ...

    def put(self, key: str, record: list[Any]) -> None: ...

    def put_new(self, key: str, record: list[Any]) -> None:
        """:meth:`put` of a key the caller knows the map does not hold (a rebuild's first
        version of an id), which an on-disk map writes without reading it first."""

    def delete(self, key: str) -> None: ...

    def older_than(self, horizon: int) -> list[str]: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...

    def __len__(self) -> int: ...


class DictIdMap(dict[str, list[Any]]):
    """In-memory :class:`IdMap`."""

    def put(self, key: str, record: list[Any]) -> None:
        self[key] = record

    put_new = put

    def delete(self, key: str) -> None:
        self.pop(key, None)

    def older_than(self, horizon: int) -> list[str]:
        return [key for key, record in self.items() if record_time(record) < horizon]

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


IdMaps = Callable[[int], IdMap]  # a fresh, empty map for events partition p


class _ByStart(dict[int, "array[float]"]):
    """One row's buckets of one window by start; knows its window and row, so the expiry
    index can hold it rather than a key tuple per bucket."""

    __slots__ = ("row", "window")

    def __init__(self, window: str, row: RowId) -> None:
        super().__init__()
        self.window = window
        self.row = row


class Buckets(Mapping[BucketKey, "array[float]"]):
    """A partition's bucket sums: per window, per row, a dict by bucket start; and the rows
    holding each (window, bucket start), so expiry reads only what expires and can run
    after every batch. Read as a mapping by :data:`BucketKey`.

    Nested rather than one dict by 4-tuple: a bucket then costs its array, a slot and its
    start, not also a key tuple and an index entry of its own (the aggregate's buckets are
    its largest state, docs/benchmarks.md), and adding to a bucket builds no key."""

    __slots__ = ("index", "size", "windows")

    def __init__(self) -> None:
        self.windows: dict[str, dict[RowId, _ByStart]] = {}
        self.index: dict[tuple[str, int], list[_ByStart]] = {}
        self.size = 0

    def rows(self, window: str) -> dict[RowId, _ByStart]:
        held = self.windows.get(window)
        if held is None:
            held = self.windows[window] = {}
        return held

    def created(self, by_start: _ByStart, bucket: int) -> None:
        """Record a bucket just added to ``by_start`` (by :meth:`PartitionAggregator._add`,
        which adds buckets inline: it runs for every window and row of every event)."""
        slot = self.index.get((by_start.window, bucket))
        if slot is None:
            slot = self.index[(by_start.window, bucket)] = []
        slot.append(by_start)
        self.size += 1

    def find(self, window: str, row: RowId, bucket: int) -> array[float] | None:
        by_start = self.windows.get(window, {}).get(row)
        return None if by_start is None else by_start.get(bucket)

    def expire(self, window: str, bucket: int,
               keep: Callable[[RowId], bool] | None = None) -> int:
        """Forget the window's buckets starting at ``bucket`` (but those of the rows
        ``keep`` holds on to); returns how many went."""
        kept: list[_ByStart] = []
        gone = 0
        for by_start in self.index.pop((window, bucket), ()):
            if keep is not None and keep(by_start.row):
                kept.append(by_start)
                continue
            del by_start[bucket]
            if not by_start:
                del self.windows[window][by_start.row]
            gone += 1
        if kept:
            self.index[(window, bucket)] = kept
        self.size -= gone
        return gone

    def __getitem__(self, key: BucketKey) -> array[float]:
        sums = self.find(key[0], key[1:3], key[3])
        if sums is None:
            raise KeyError(key)
        return sums

    def __contains__(self, key: object) -> bool:
        return (isinstance(key, tuple) and len(key) == 4
                and self.find(key[0], key[1:3], key[3]) is not None)

    def __iter__(self) -> Iterator[BucketKey]:
        for window, rows in self.windows.items():
            for (dimension, group), by_start in rows.items():
                for bucket in by_start:
                    yield window, dimension, group, bucket

    def __len__(self) -> int:
        return self.size


@dataclass(slots=True)
class PartitionState:
    applied: int | None = None
    stream_time: int = NO_TIME
    high_water: dict[tuple[str, int], int] = field(default_factory=dict)
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    marks: dict[tuple[str, int], PartitionMark] = field(default_factory=dict)
    raw_partitions: int = 0
    ids: IdMap = field(default_factory=DictIdMap)
    buckets: Buckets = field(default_factory=Buckets)
    packs: dict[int, int] = field(default_factory=dict)  # seq -> keep_until
    dropped_below: int = NO_TIME  # events before it may have been in dropped packs
    # the newest event time of any raw partition, as the marks say: the pipeline's stream
    # time as far as this partition knows it (its own events may all be older)
    seen_time: int = NO_TIME
    # raw partitions that had nothing left to read and have records again: what the others
    # had been read up to then (lateness only: judge_low)
    woken: dict[tuple[str, int], int] = field(default_factory=dict)
    # the largest end offset any edge has listed per raw partition (EventPack.ends)
    ends: dict[tuple[str, int], int] = field(default_factory=dict)

    def header(self, seq: int) -> AggregatePack:
        return AggregatePack(seq, self.stream_time, dict(self.high_water), dict(self.counts),
                             dict(self.marks), self.raw_partitions,
                             dropped_below=self.dropped_below, woken=dict(self.woken),
                             ends=dict(self.ends))

    def learn_ends(self, ends: Mapping[tuple[str, int], int], wake_time: int) -> None:
        """End offsets an edge listed after reading its batch. A partition claimed read to
        its end at a position below its end has something left to read after all: its
        edge had not looked since it grew. Without this, the first of several edges to
        read a backlog produced at once moved the watermark past the minutes the others
        had still to read (their partitions' claims were stale), and the detector judged
        those minutes without their orders."""
        for coords, end in ends.items():
            if end <= self.ends.get(coords, -1):
                continue
            self.ends[coords] = end
            held = self.marks.get(coords)
            if held is not None and held[1] and held[2] is not None and held[2] < end:
                self.marks[coords] = (held[0], False, None)
                if wake_time != NO_TIME:
                    self.woken[coords] = wake_time

    def read_to_end(self, mark: RawMark) -> bool:
        """An edge's claim that a partition has nothing left to read, unless a larger end
        offset of it is known."""
        return mark.at_end and (mark.position is None or mark.position >= self.ends.get(
            (mark.topic, mark.partition), -1))

    def judge_low(self) -> int:
        """The low mark lateness is held back to: :meth:`low_mark`, but a raw partition that
        woke from nothing left to read counts as having passed what the others were read up
        to then (its records were produced after that). Left at its own last event time, it
        held lateness back for every record after it, of every partition: late records were
        accepted after a quiet spell, depending on the ids that routed them. The watermark
        (:meth:`low_mark`) does wait for it: its records may still be on their way."""
        if not self.woken:
            return self.low_mark()
        if not self.raw_partitions or len(self.marks) < self.raw_partitions:
            return NO_TIME
        low = ALL_READ
        woken = self.woken
        for coords, (newest, at_end, _) in self.marks.items():
            if not at_end:
                passed = NO_TIME if newest is None else newest
                low = min(low, max(passed, woken.get(coords, NO_TIME)))
        return low

    def low_mark(self) -> int:
        """Event time every raw input partition has passed or been read to its end: the
        partition's contribution to the low watermark (SPEC §3)."""
        if not self.raw_partitions or len(self.marks) < self.raw_partitions:
            return NO_TIME  # some raw partition has never been heard of
        low = ALL_READ
        for newest, at_end, _ in self.marks.values():
            if not at_end:
                low = min(low, NO_TIME if newest is None else newest)
        return low


class PartitionAggregator:
    """Applies batches of packed events of each internal partition."""

    def __init__(self, settings: Settings, log: PackLog, ids: IdMaps | None = None,
                 snapshots: Snapshots[IdMap] | None = None) -> None:
        self.windows = settings.window_specs
        self.specs = {spec.name: spec for spec in self.windows}
        self.attribution_window = settings.attribution_window.name
        self.grace_ms = settings.grace_ms
        self.retention_ms = settings.retention_ms
        self.max_step_ms = max(spec.step_ms for spec in self.windows)
        # per window: name, STEP and how far behind stream time a bucket stays (size+grace)
        self.bucket_reach = [(spec.name, spec.step_ms, spec.size_ms + self.grace_ms)
                             for spec in self.windows]
        # cancel_shift is kept only where the detector reads it: a cancellation's -1 in
        # every 10-second bucket of every row made buckets of their own (+46 MB peak RSS,
        # 200,000 events)
        self.shift_windows = {spec.name for spec in settings.alert_windows}
        self.live = settings.clock == "live"
        self.idle_lag_ms = settings.idle_lag_ms
        self.log = log
        self.id_maps: IdMaps = ids or (lambda p: DictIdMap())
        self.snapshots = snapshots
        self.restored: list[int] = []  # partitions restored from a snapshot, to report
        self.parts: dict[int, PartitionState] = {}
        self.drops: dict[int, int] = {}  # per partition: how often it was dropped
        self.header_counts: dict[int, tuple[int, dict[tuple[str, str], int]]] = {}

    # -- ownership ---------------------------------------------------------------------
    def load(self, p: int, now_ms: int) -> PartitionState:
        """Rebuild partition p's state from its packs (after an assignment)."""
        for _ in self._load_steps(p, now_ms):
            pass
        return self.parts[p]

    def loading(self, p: int, now_ms: int) -> Iterator[None]:
        """The rebuild of partition p in steps (none if it is held), for a caller that lets
        other work run between them (see :meth:`CustomerState.loading`)."""
        return iter(()) if p in self.parts else self._load_steps(p, now_ms)

    def _load_steps(self, p: int, now_ms: int) -> Iterator[None]:
        old = self.parts.pop(p, None)
        if old is not None:
            old.ids.close()
        drops = self.drops.get(p, 0)
        seqs = self.log.seqs(p)
        state = self._restore(p, seqs) or PartitionState(ids=self.id_maps(p))
        restored = state.applied
        # Buckets that expire as soon as the rebuild ends (below) are not filled at all: the
        # newest pack's header says when that is. The largest window is filled whole, as its
        # campaign buckets may stay past their expiry (attribution days). With a day in
        # retention this skips most of the two smaller windows' work.
        t_end = NO_TIME
        newest = self.log.get(p, seqs[-1]) if seqs else None
        if newest is not None:
            t_end = self.expiry_time(self._header_state(decode_aggregate_pack(newest)), now_ms)
        reaches = [(name, step, NEVER if name == self.attribution_window else reach)
                   for name, step, reach in self.bucket_reach]
        after = seqs if restored is None else [seq for seq in seqs if seq > restored]
        for seq, data in records(self.log, p, after):  # (those up to restored: in the snapshot)
            pack = decode_aggregate_pack(data)
            for key, record in pack.ids:
                if first_version(record):
                    state.ids.put_new(key, record)
                else:
                    state.ids.put(key, record)
            state.ids.flush()
            for sign, event, _, _ in pack.effects:
                self._add(state, event, sign, None, t_end, reaches)
            state.applied, state.stream_time = pack.offset, pack.stream_time
            state.high_water, state.counts = pack.high_water, pack.counts
            state.marks, state.raw_partitions = pack.marks, pack.raw_partitions
            state.woken, state.ends = pack.woken, pack.ends
            state.seen_time = max((newest for newest, _, _ in pack.marks.values()
                                   if newest is not None), default=NO_TIME)
            state.dropped_below = max(state.dropped_below, pack.dropped_below)
            state.packs[seq] = pack.keep_until
            yield
        if self.drops.get(p, 0) != drops:
            state.ids.close()  # dropped meanwhile
            return
        self.parts[p] = state
        # Buckets the live run never filled (expired when their events came) go at once; ids
        # and packs wait for the next sweep, as they would have without the restart. Campaign
        # buckets of the largest window wait too: a replayed batch re-sends them (its roll-up
        # messages may have been lost with the crash), and the roll-up folds them into
        # attribution days (SPEC §8) unless it already did. Only those no dropped pack held
        # events of (``dropped_below``), so that what is re-sent is whole.
        self._expire_buckets(state, self.expiry_time(state, now_ms),
                             keep_from=state.dropped_below)

    # -- snapshots (a graceful stop, then a start on the same disk) -----------------------
    def save_snapshots(self) -> list[int]:
        """Leave every held partition's state in :attr:`snapshots` and let go of it; call
        when the worker stops, after every pack was acknowledged. The next start restores a
        partition from its snapshot if the changelog's pack at its applied offset is the one
        the snapshot was taken at, then applies only the packs after it."""
        if self.snapshots is None:
            return []
        saved = []
        for p, state in list(self.parts.items()):
            applied = state.applied
            newest = None if applied is None else self.log.get(p, applied)
            if applied is None or newest is None:
                continue
            del self.parts[p]
            state.ids.flush()
            snapshot = AggregateSnapshot(
                state.header(applied), pack_digest(newest), dict(state.packs),
                state.seen_time, len(state.ids),
                [(window, dimension, group, bucket, sums)
                 for (window, dimension, group, bucket), sums in state.buckets.items()])
            self.snapshots.save(p, state.ids, encode_aggregate_snapshot(snapshot))
            saved.append(p)
        return saved

    def _restore(self, p: int, seqs: list[int]) -> PartitionState | None:
        """Partition p's state from the snapshot left for it, if the changelog still holds
        the pack it was taken at (else None: the id map left with it is deleted)."""
        left = None if self.snapshots is None else self.snapshots.take(p)
        if left is None:
            return None
        data, ids = left
        try:
            snapshot: AggregateSnapshot | None = decode_aggregate_snapshot(data)
        except ValueError:  # another version's (or damaged): rebuild
            snapshot = None
        held = set(seqs)
        newest = None if snapshot is None or snapshot.header.offset not in held else (
            self.log.get(p, snapshot.header.offset))
        if snapshot is None or newest is None or pack_digest(newest) != snapshot.pack_digest:
            ids.close()
            return None
        header = snapshot.header
        state = PartitionState(
            applied=header.offset, stream_time=header.stream_time,
            high_water=header.high_water, counts=header.counts, marks=header.marks,
            raw_partitions=header.raw_partitions, ids=ids, woken=header.woken,
            ends=header.ends,
            packs={seq: keep for seq, keep in snapshot.packs.items() if seq in held},
            dropped_below=header.dropped_below, seen_time=snapshot.seen_time)
        buckets = state.buckets
        for window, dimension, group, bucket, sums in snapshot.buckets:
            by_row = buckets.rows(window)
            row = (dimension, group)
            by_start = by_row.get(row)
            if by_start is None:
                by_start = by_row[row] = _ByStart(window, row)
            by_start[bucket] = array("d", sums)
            buckets.created(by_start, bucket)
        self.restored.append(p)
        return state

    @staticmethod
    def _header_state(pack: AggregatePack) -> PartitionState:
        """What a pack's header says of its partition's times (no ids, no buckets)."""
        return PartitionState(applied=pack.offset, stream_time=pack.stream_time,
                              marks=pack.marks, raw_partitions=pack.raw_partitions,
                              woken=pack.woken, ends=pack.ends)

    def counts(self, p: int) -> dict[tuple[str, str], int]:
        """Partition p's outcome counts (``kpistream_events_total``): its state's or, while
        it is not loaded (just assigned: its rebuild waits for a batch or the publish
        timer, seconds after the lag reads 0), those in its newest pack's header."""
        held = self.parts.get(p)
        if held is not None:
            return held.counts
        seqs = self.log.seqs(p)
        if not seqs:
            return {}
        cached = self.header_counts.get(p)
        if cached is None or cached[0] != seqs[-1]:
            data = self.log.get(p, seqs[-1])
            cached = self.header_counts[p] = (
                seqs[-1], {} if data is None else decode_aggregate_pack(data).counts)
        return cached[1]

    def drop(self, partitions: set[int]) -> None:
        for p in partitions:
            self.drops[p] = self.drops.get(p, 0) + 1
            state = self.parts.pop(p, None)
            if state is not None:
                state.ids.close()

    def state(self, p: int, now_ms: int) -> PartitionState:
        held = self.parts.get(p)
        return held if held is not None else self.load(p, now_ms)

    def expected(self, p: int, now_ms: int) -> int | None:
        applied = self.state(p, now_ms).applied
        return None if applied is None else applied + 1

    def effective_time(self, state: PartitionState, now_ms: int) -> int:
        """T for lateness: the partition's latest event time, in live mode never less than
        wall clock minus idle_lag."""
        t = state.stream_time
        return max(t, now_ms - self.idle_lag_ms) if self.live else t

    def expiry_time(self, state: PartitionState, now_ms: int) -> int:
        """Time buckets expire against: stream time, held back to the low mark, so a bucket
        of a raw partition read behind the others is still filled while its minutes wait for
        the detector (SPEC §3); lateness is still judged against stream time."""
        t = self.effective_time(state, now_ms)
        low = state.low_mark()
        return t if low == ALL_READ else min(t, low)

    # -- processing --------------------------------------------------------------------
    def process(self, p: int, items: Sequence[tuple[int, EventPack]],
                now_ms: int) -> BatchResult:
        """Apply ``(offset, pack)`` items of partition p, in offset order, and write one
        changelog record for the batch."""
        state = self.state(p, now_ms)
        result = BatchResult()
        touched: Touched = {}
        replayed_from: int | None = None
        ids: dict[str, list[Any]] = {}
        effects: list[Effect] = []
        floor = now_ms - self.idle_lag_ms if self.live else NO_TIME
        last = None
        for offset, pack in items:
            if state.applied is not None and offset <= state.applied:
                replayed_from = offset if replayed_from is None else min(replayed_from, offset)
                continue
            last = offset
            if pack.raw_partitions:
                state.raw_partitions = pack.raw_partitions
            # The pack's marks describe the raw partitions after the edge read the whole
            # batch (a batch of a sparse partition may span days): its events are judged
            # against the marks before it, advanced by each event as it is read, and the
            # pack's marks apply after them.
            low, judge_low = state.low_mark(), state.judge_low()
            t_seen = max(state.stream_time, state.seen_time)
            wake_time = (NO_TIME if judge_low == NO_TIME or t_seen == NO_TIME
                         else held_back(t_seen, judge_low))
            if pack.ends:
                # Listed after the edge read the batch, so true before any of its events.
                state.learn_ends(pack.ends, wake_time)
                low, judge_low = state.low_mark(), state.judge_low()
            for index, (source, body) in enumerate(pack.items):
                coords = (source.topic, source.partition)
                if source.offset <= state.high_water.get(coords, -1):
                    continue  # the edge delivered this record before: already applied
                state.high_water[coords] = source.offset
                if isinstance(body, str):
                    self._count(state, source.topic, body)
                    continue
                held = state.marks.get(coords)
                # Before judging: the event's own time cannot make it late, and an event read
                # out of order is judged against the newest its raw partition had given by
                # then, though the events that moved it went to other internal partitions
                # (Source.seen): as in the order read, whatever the routing (SPEC §4).
                read_to = body.ts if source.seen is None or source.seen < body.ts else source.seen
                if read_to > state.seen_time:
                    state.seen_time = read_to
                # Lateness (SPEC §3) is judged against the newest event time the pipeline
                # has read, held back to the low mark, so an event of a raw partition read
                # behind the others (a backlog) is judged as it would have been live; in
                # live mode never against less than wall clock minus idle_lag. A record of
                # a partition that had nothing left to read was produced after what the
                # others were read up to: judged against them, not held back by its own
                # partition's time (PartitionState.judge_low).
                if held is not None and held[1] and wake_time != NO_TIME:
                    state.woken[coords] = wake_time
                if held is None or held[0] is None or held[1] or read_to > held[0]:
                    state.marks[coords] = (read_to if held is None or held[0] is None
                                           else max(read_to, held[0]), False, None)
                    if held is None or held[0] is None or held[1] or held[0] <= low:
                        low = state.low_mark()  # this partition may have held it back
                        judge_low = state.judge_low()
                t_seen = max(state.stream_time, state.seen_time)
                t_judge = max(held_back(t_seen, judge_low), floor)
                if t_judge != NO_TIME and body.ts < t_judge - self.retention_ms:
                    outcome: Outcome = "late"
                else:
                    state.stream_time = max(state.stream_time, body.ts)
                    t_now = max(state.stream_time, floor)
                    outcome = self._apply(state, body, t_now if low == ALL_READ
                                          else min(t_now, low), t_judge, touched, ids,
                                          effects, (offset, index))
                self._count(state, source.topic, COUNTED_OUTCOME[outcome])
                result.verdicts.append(Verdict(outcome, body, source))
            for mark in pack.marks:
                key = (mark.topic, mark.partition)
                held = state.marks.get(key)
                at_end = state.read_to_end(mark)
                if held is not None and held[1] and not at_end and wake_time != NO_TIME:
                    state.woken[key] = wake_time
                elif at_end:
                    state.woken.pop(key, None)
                newest = mark.newest_ts
                if held is not None and held[0] is not None:
                    newest = held[0] if newest is None else max(newest, held[0])
                state.marks[key] = (newest, at_end, mark.position if at_end else None)
                if newest is not None and newest > state.seen_time:
                    state.seen_time = newest
        state.ids.flush()
        if last is not None:
            keep_until = NO_TIME
            for _, event, _, _ in effects:
                keep_until = max(keep_until, event.ts)
            for record in ids.values():
                keep_until = max(keep_until, record_time(record))
            pack_out = state.header(last)
            pack_out.ids = list(ids.items())
            pack_out.effects = effects
            pack_out.keep_until = keep_until
            self.log.put(p, last, encode_aggregate_pack(pack_out))
            state.packs[last] = keep_until
            state.applied = last
        replayed: list[Effect] = []
        if replayed_from is not None:
            touched.update(self._touched_by_packs_from(p, state, replayed_from, replayed))
        for effect in [*replayed, *effects]:
            fact = customer_fact(effect)
            if fact is not None:
                result.facts.append(fact)
        result.touched = touched
        # Expired buckets go now rather than at the next sweep: a backlog brings minutes of
        # event time per batch, and sweeps (a publish timer's) come seconds apart. The same
        # verdict as a sweep's, only sooner; their values were sent above.
        self._expire_buckets(state, self.expiry_time(state, now_ms))
        result.stream_time = state.stream_time
        result.low_mark = result.customer_low_mark = state.low_mark()
        result.seen_time = state.seen_time
        if result.low_mark == ALL_READ and not self.live:
            result.customer_low_mark = state.seen_time
        result.applied = state.applied
        result.counts = dict(state.counts)
        return result

    @staticmethod
    def _count(state: PartitionState, topic: str, outcome: str) -> None:
        key = (topic, outcome)
        state.counts[key] = state.counts.get(key, 0) + 1

    def _touched_by_packs_from(self, p: int, state: PartitionState, first: int,
                               effects: list[Effect]) -> Touched:
        """Buckets the packs of a replayed range touched, and (into ``effects``) their
        effects: the roll-up messages and customer facts of the first run may have been lost
        with the crash, so they are sent again."""
        touched: Touched = {}
        for seq in sorted(state.packs):
            if seq < first:
                continue
            data = self.log.get(p, seq)
            if data is None:
                continue
            pack_effects = decode_aggregate_pack(data).effects
            effects.extend(pack_effects)
            for _, event, _, _ in pack_effects:
                for spec in self.windows:
                    bucket = bucket_start(event.ts, spec.step_ms)
                    for row in rows_of(event):
                        sums = state.buckets.find(spec.name, row, bucket)
                        if sums is not None:
                            touched[row, spec.name, bucket] = sums
        return touched

    def _apply(self, state: PartitionState, event: Event, t_eff: int, t_judge: int,
               touched: Touched, ids: dict[str, list[Any]], effects: list[Effect],
               coords: tuple[int, int]) -> Outcome:
        """Judge one event that is not late (against ``t_judge``).

        A cancellation finds its order expired (SPEC §1: "as long as that bucket is still
        retained") when the order is older than the retention before the cancellation's own
        ts or before ``t_judge``: the order would be late now. Its bucket has left every
        window, and its attribution day may be final with the order counted in its CPO: a
        retraction then would change a published cost (SPEC §8). Whether or not a sweep
        forgot its id yet: the same verdict whatever the timing of sweeps (ids are swept
        behind the low mark, so never earlier)."""
        key = f"{event.kind}|{event.id}"
        record = state.ids.get(key)
        shifts: list[tuple[int, Order]] = []
        # A duplicate is an id seen within the retention (SPEC §1) before the event's own ts
        # and before stream time, like a cancellation's expiry. The sweep forgets an id only
        # once it is older than that for every event still to come (ids leave behind the
        # low mark, which t_judge never falls below), so whether it ran yet changes nothing.
        # By the event's own ts alone, a later use read after stream time had passed the
        # first by the retention was a duplicate only while the sweep had not run.
        horizon = max(event.ts, t_judge) - self.retention_ms
        if not isinstance(event, Order):
            if record is not None and record[0] >= horizon:
                return "duplicate"
            record = [event.ts]
            sign = 1
        elif event.status == "placed":
            if record is not None and record[_P_TS] is not None:
                if record[_P_TS] >= horizon:
                    return "duplicate"
                # The id's earlier order has expired: this one is new. Its cancellation is
                # still an id seen (a second one within the retention is a duplicate).
                record = None if record[_C_TS] is None else [
                    None, None, None, None, None, record[_C_TS], record[_MATCHED], None]
            # A cancellation that came first was an unknown order (SPEC §1). If it is of
            # this order's time or later (within the retention), it was produced after the
            # order and overtook it (another partition, or read sooner): it retracts the
            # order now, so the rows do not depend on keying or arrival order (SPEC §4).
            # One of an earlier time came first in event time too: it changed nothing and
            # this order counts. The record keeps its time either way, so a second
            # cancellation is a duplicate of it (SPEC §1, same id and status).
            sign = 0 if (record is not None and not record[_MATCHED]
                         and cancel_retracts(event.ts, record[_C_TS], self.retention_ms)) else 1
            if not sign:
                shifts = cancellation_shifts(event, record[_C_TS])  # type: ignore[index]
            # Kept for the whole retention period, once per order: the few distinct group
            # names are interned rather than held once per record (~150 bytes an order).
            record = [event.ts, event.amount, intern(event.channel), intern(event.campaign_id),
                      intern(event.segment), record[_C_TS] if record else None, 0,
                      event.customer_id]
        else:
            if record is not None and record[_C_TS] is not None and record[_C_TS] >= horizon:
                return "duplicate"
            if (record is None or record[_P_TS] is None
                    or record[_P_TS] < max(event.ts, t_judge) - self.retention_ms):
                # Unknown: no order yet, or one expired. Either way it waits for an order of
                # the id placed at or before its time (_MATCHED 0), as in
                # kpistream.reference: whether an expired order was still held or the id
                # sweep had forgotten it then changes nothing (it did, in rows, before).
                record = [None, None, None, None, None, event.ts, 0, None]
                state.ids.put(key, record)
                ids[key] = record
                return "unknown_order"
            record = [*record[:_C_TS], event.ts, 1, record[_CUSTOMER]]
            cancelled_at = event.ts
            event = Order(event.order_id, record[_P_TS], "placed", record[_CUSTOMER],
                          record[_AMOUNT], record[_CH], record[_CA], record[_SE])
            sign = -1
            shifts = cancellation_shifts(event, cancelled_at)
        state.ids.put(key, record)
        ids[key] = record
        if sign:
            effects.append((sign, event, *coords))
            self._add(state, event, sign, touched, t_eff)
        for shift_sign, shifted in shifts:
            effects.append((shift_sign, shifted, *coords))
            self._add(state, shifted, shift_sign, touched, t_eff)
        return "accepted"

    def _add(self, state: PartitionState, event: Event, sign: int,
             touched: Touched | None, t_eff: int,
             reaches: list[tuple[str, int, int]] | None = None) -> None:
        windows = reaches or self.bucket_reach
        if sign in (SHIFT_BACK, SHIFT_HERE):
            vector: list[tuple[int, float]] = [(_SHIFT, sign // 2)]
            sign = 1  # (nothing retracted)
            rows = [row for row in rows_of(event) if row[0] in ALERT_DIMENSIONS]
            windows = [w for w in windows if w[0] in self.shift_windows]
        else:
            vector = contribution_items(event)
            if sign != 1:
                vector = [(i, sign * amount) for i, amount in vector]
            rows = rows_of(event)
        buckets = state.buckets
        ts = event.ts
        retracted: list[array[float]] | None = [] if sign < 0 else None
        for name, step, reach in windows:
            bucket = ts - ts % step
            # bucket_expired, inline: this runs for every window of every event
            if t_eff != NO_TIME and bucket + step <= t_eff - reach:
                continue
            by_row = buckets.rows(name)
            for row in rows:
                by_start = by_row.get(row)
                if by_start is None:
                    by_start = by_row[row] = _ByStart(name, row)
                sums = by_start.get(bucket)
                if sums is None:
                    # one C array of doubles per bucket, not a list of float objects
                    # (~190 instead of ~570 bytes; a worker holds hundreds of thousands)
                    sums = by_start[bucket] = _ZERO_SUMS[:]  # (array("d", ZERO): 10x slower)
                    buckets.created(by_start, bucket)
                for i, amount in vector:
                    sums[i] += amount
                if retracted is not None:
                    retracted.append(sums)
                if touched is not None:
                    touched[row, name, bucket] = sums
        # A bucket left without orders has no revenue: exactly 0, not what float subtraction
        # leaves (0.1 + 0.2 - 0.1 - 0.2 is 2.8e-17, and a reference summing the counted
        # orders says 0; a row's roas would read 1e-18 instead of 0).
        for sums in retracted or ():
            if not sums[_ORDERS]:
                sums[_REVENUE] = 0.0

    # -- expiry ------------------------------------------------------------------------
    def sweep(self, p: int, now_ms: int) -> int:
        """Drop ids, buckets and packs no event can reach any more; returns how many."""
        state = self.parts.get(p)
        return 0 if state is None else self._expire(p, state, now_ms)

    def _expire(self, p: int, state: PartitionState, now_ms: int) -> int:
        t_eff = self.effective_time(state, now_ms)
        if t_eff == NO_TIME:
            return 0
        t_expiry = self.expiry_time(state, now_ms)
        expired = self._expire_buckets(state, t_expiry)
        # Behind the low mark, like buckets: a raw partition read behind the others may
        # still cancel an order a faster one's stream time has passed (SPEC §3).
        horizon = t_expiry - self.retention_ms
        old_ids = state.ids.older_than(horizon)
        for id_key in old_ids:
            state.ids.delete(id_key)
        state.ids.flush()
        # A pack is dropped once nothing in it can matter: its times are older than the
        # retention horizon by a further step, so every bucket it touched has expired. The
        # newest pack holds the header and always stays.
        threshold = horizon - self.max_step_ms
        old_packs = [seq for seq, keep in state.packs.items()
                     if keep < threshold and seq != state.applied]
        if old_packs and state.applied is not None and threshold > state.dropped_below:
            # Recorded in the newest pack before the tombstones (same changelog partition,
            # so a restart never sees the packs gone without it).
            state.dropped_below = threshold
            newest = self.log.get(p, state.applied)
            if newest is not None:
                pack = decode_aggregate_pack(newest)
                pack.dropped_below = threshold
                self.log.put(p, state.applied, encode_aggregate_pack(pack))
        for seq in old_packs:
            del state.packs[seq]
            self.log.delete(p, seq)
        return expired + len(old_ids) + len(old_packs)

    def _expire_buckets(self, state: PartitionState, t_eff: int, *,
                        keep_from: int | None = None) -> int:
        if t_eff == NO_TIME:
            return 0
        specs, buckets = self.specs, state.buckets
        attribution = self.attribution_window
        expired = 0
        for window, bucket in [slot for slot in buckets.index
                               if bucket_expired(slot[1], specs[slot[0]], t_eff,
                                                 self.grace_ms)]:
            attributed = keep_from is not None and bucket >= keep_from and window == attribution
            expired += buckets.expire(window, bucket, _is_campaign if attributed else None)
        return expired


def held_back(t_seen: int, low: int) -> int:
    """Stream time as far as a partition judges it: the newest event time seen, held back
    to the low mark."""
    return t_seen if low == ALL_READ else min(t_seen, low)


def _is_campaign(row: RowId) -> bool:
    return row[0] == "campaign"


def cancellation_shifts(order: Order, cancelled_at: int) -> list[tuple[int, Order]]:
    """The ``cancel_shift`` effects of a cancellation at ``cancelled_at`` that retracts
    ``order`` (placed): the order back in its own bucket, the cancellation in its own."""
    return [(SHIFT_BACK, order), (SHIFT_HERE, order._replace(ts=cancelled_at))]


def cancel_retracts(placed_ts: int, cancelled_ts: int, retention_ms: int) -> bool:
    """Whether a cancellation read before its order retracts it when the order comes: when
    it is of the order's time or later, and the order would not have expired by then."""
    return cancelled_ts - retention_ms <= placed_ts <= cancelled_ts


def first_version(record: list[Any]) -> bool:
    """Whether an id record is its id's first version (:meth:`PartitionAggregator._apply`
    writes a spend or survey id once, and every later version of an order's record holds a
    cancellation), which a rebuild writes without reading the map (one that still holds an
    earlier use of the id, forgotten by the live run's sweep: state/rocks.py)."""
    return len(record) == 1 or record[_C_TS] is None


def record_time(record: list[Any]) -> int:
    """When an id record was last relevant: its newest event time (the id sweep's order)."""
    if len(record) == 1:
        return int(record[0])
    return max(int(t) for t in (record[_P_TS], record[_C_TS]) if t is not None)


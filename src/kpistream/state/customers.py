"""Stage 2b, pure: customers (SPEC §8) and the first-order counts of the rows (SPEC §4).

Runs per partition of the internal customers topic (facts are routed there by customer id,
so all of a customer's orders and responses meet in one partition). A customer holds its
counted orders and its latest response of each kind; its **first counted order** is the
earliest by ``(ts, order_id)``. When an earlier order arrives late or the first one is
cancelled, the first order moves: the partition takes 1 from the first-order count of the old
order's buckets (in every row the old order counted in) and adds 1 to the new one's. Those
counts are ``new_customers``; ``returning_orders`` is a row's orders minus them.

With a customer retention shorter than a customer's gaps, the customer's facts (orders, and
the time of every response) fall into spells split by gaps longer than the retention
(docs/crm.md): the profile is the last spell's and the first order of every spell counts.
A profile is deleted behind the low watermark; its facts stay until no fact still to be
accepted can join them, so that neither the sweep's timing nor arrival order changes a
profile.

Exactness without transactions, as in the aggregate stage:
- a fact is identified by its input item's coordinates (events offset, item index) per
  aggregate partition; a fact at or below the high-water mark of its source was applied
  before (a replay after a crash) and is skipped;
- state is event-sourced: each applied batch writes ONE changelog record holding the new
  version of every customer it changed and the partition's header; on load the newest version
  of each customer wins, and the first-order counts are derived from the profiles. A record is
  tombstoned once it holds no current version and is not the newest (the header).
- a replayed batch re-sends the counts of the buckets its records moved (each record lists
  the orders that became or stopped being a first order), zeros included. A record already
  tombstoned needs none: it is tombstoned only after a later batch was acknowledged, and its
  own roll-up messages went out before that.
- the counts go to the roll-up as absolute bucket values stamped with the applied offset,
  under their own source number (``partitions + r``), like an aggregate partition's.

Attribution costs (SPEC §8): each roll-up partition sends every customer partition the final
CPO of its campaigns' days. They are kept in the changelog record of the batch they came in
(pinned until they expire) and copied into an order's entry (its sixth field) whenever the
customer's record is written, so a customer's profile keeps an order's cost for as long as it
keeps the order, and a cost is forgotten once no profile can still hold an uncosted order of
its day (``customer_retention`` after the day became final). A cost already held is ignored:
after a crash the roll-up sends it again.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from sys import intern
from typing import Protocol

from kpistream.contracts.records import Order, Survey, expired_order_id
from kpistream.contracts.wire import (
    ALL_READ,
    NO_TIME,
    CustomerFacts,
    CustomerPack,
    CustomerRecord,
    CustomerSnapshot,
    OrderEntry,
    decode_customer_pack,
    decode_customer_snapshot,
    encode_customer_pack,
    encode_customer_snapshot,
)
from kpistream.kpi.formulas import SUM_FIELDS
from kpistream.kpi.profiles import fact_times, spell_firsts
from kpistream.settings import Settings
from kpistream.state.buckets import DIMENSIONS, RowId, Sums, bucket_expired
from kpistream.state.rollup import low_watermark
from kpistream.state.store import PackLog, Snapshots, pack_digest, records

BucketKey = tuple[str, str, str, int]  # window, dimension, group, bucket
_NEW = SUM_FIELDS.index("new_customers")
_NO_SUMS = [0] * len(SUM_FIELDS)  # copied for each update (a new customer count alone)
LOAD_STEP = 2000  # customers counted between two steps of a rebuild
# order entry fields
_TS, _AMOUNT, _CH, _CA, _SE, _COST = range(6)


def first_order(record: CustomerRecord) -> tuple[str, OrderEntry] | None:
    """The customer's first counted order: earliest ``ts``, ties the smallest order_id."""
    if not record.orders:
        return None
    order_id = min(record.orders, key=lambda o: (record.orders[o][_TS], o))
    return order_id, record.orders[order_id]


def order_rows(entry: OrderEntry) -> list[RowId]:
    """The published rows an order counts in (SPEC §4)."""
    return [("all", "all"), ("channel", entry[_CH]), ("campaign", entry[_CA]),
            ("segment", entry[_SE])]


assert len(order_rows([0, 0.0, "c", "k", "s"])) == len(DIMENSIONS)


def last_activity(record: CustomerRecord) -> int:
    return max(fact_times(record), default=NO_TIME)


class CustomerMap(Protocol):
    """A customers partition's customers, and which changelog record holds each customer's
    current version (a deleted customer has none: the record of its deletion is kept by the
    rule of :meth:`CustomerState.take_dead`).

    A record returned by :meth:`get` is the map's own: changes made to it are kept at the next
    :meth:`flush`. :meth:`peek` is for reading only. Scans see what was flushed."""

    def get(self, customer: str) -> CustomerRecord | None: ...

    def peek(self, customer: str) -> CustomerRecord | None: ...

    def put(self, customer: str, record: CustomerRecord) -> None: ...

    def delete(self, customer: str) -> None: ...

    def holder(self, customer: str) -> int | None: ...

    def set_holder(self, customer: str, seq: int) -> None: ...

    def drop_holder(self, customer: str) -> None: ...

    def items(self) -> Iterator[tuple[str, CustomerRecord]]: ...

    def inactive_before(self, horizon: int) -> list[str]: ...

    def inactive_between(self, since: int, horizon: int) -> list[str]:
        """Customers last active at or after ``since`` and before ``horizon``."""

    def keys_after(self, after: str, limit: int) -> list[str]: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...

    def __len__(self) -> int: ...


class DictCustomerMap:
    """In-memory :class:`CustomerMap` (unit and property tests, small deployments)."""

    def __init__(self) -> None:
        self.records: dict[str, CustomerRecord] = {}
        self.holders: dict[str, int] = {}

    def get(self, customer: str) -> CustomerRecord | None:
        return self.records.get(customer)

    peek = get

    def put(self, customer: str, record: CustomerRecord) -> None:
        self.records[customer] = record

    def delete(self, customer: str) -> None:
        self.records.pop(customer, None)

    def holder(self, customer: str) -> int | None:
        return self.holders.get(customer)

    def set_holder(self, customer: str, seq: int) -> None:
        self.holders[customer] = seq

    def drop_holder(self, customer: str) -> None:
        self.holders.pop(customer, None)

    def items(self) -> Iterator[tuple[str, CustomerRecord]]:
        return iter(list(self.records.items()))

    def inactive_before(self, horizon: int) -> list[str]:
        return [customer for customer, record in self.records.items()
                if last_activity(record) < horizon]

    def inactive_between(self, since: int, horizon: int) -> list[str]:
        return [customer for customer, record in self.records.items()
                if since <= last_activity(record) < horizon]

    def keys_after(self, after: str, limit: int) -> list[str]:
        return sorted(customer for customer in self.records if customer > after)[:limit]

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __len__(self) -> int:
        return len(self.records)


CustomerMaps = Callable[[int], CustomerMap]  # a fresh, empty map for customers partition r


@dataclass(slots=True)
class CustomerUpdate:
    """Absolute first-order count of one bucket, as the roll-up receives it."""

    window: str
    bucket: int
    sums: Sums


@dataclass(slots=True)
class CustomerResult:
    updates: dict[RowId, list[CustomerUpdate]] = field(default_factory=dict)
    applied: int | None = None


@dataclass(slots=True)
class CustomerPartition:
    applied: int | None = None  # customers-topic offset processed up to
    header: int | None = None  # seq of the newest changelog record (it holds the header)
    stream_time: int = NO_TIME
    high_water: dict[int, tuple[int, int]] = field(default_factory=dict)
    customers: CustomerMap = field(default_factory=DictCustomerMap)
    first_counts: dict[BucketKey, int] = field(default_factory=dict)
    refs: dict[int, int] = field(default_factory=dict)  # seq -> versions it holds
    dead: set[int] = field(default_factory=set)
    changed: set[str] = field(default_factory=set)  # since the last publication
    # After a load every profile is published again, in customer order from this key on,
    # a bounded number per tick (None: done), so a million customers are not all built at once.
    republish_after: str | None = None
    expired: set[str] = field(default_factory=set)  # deleted, not yet in the changelog
    # profiles last active before this were deleted from the sinks (their facts may still be
    # kept: sweep); NO_TIME after a load, so that the first sweep deletes them all again
    absent_from: int = NO_TIME
    low_marks: dict[int, int] = field(default_factory=dict)  # per aggregate partition
    # what each low mark is as of (state/rollup.py low_watermark); not in the changelog: a
    # restored ALL_READ counts as no bound only once its source reports again
    seen_times: dict[int, int] = field(default_factory=dict)
    costs: dict[tuple[str, int], float] = field(default_factory=dict)  # (campaign, day) -> cpo
    cost_packs: dict[int, int] = field(default_factory=dict)  # seq -> newest day it holds
    # Records holding a deletion, kept while it matters (take_dead). Each deleted customer
    # held its record for good: a changelog growing with every customer ever deleted (a
    # 20-minute soak with a 5-minute customer retention: 73 -> 7,985 records held, with the
    # customers flat at 280,000), all replayed by every rebuild.
    guarded: set[int] = field(default_factory=set)
    # the newest record whose changes were all taken for publication (take_changes), and
    # the one whose changes the sinks have all delivered since (published)
    taken_through: int | None = None
    published_through: int | None = None


class CustomerState:
    """Applies batches of customer facts of each customers partition."""

    def __init__(self, settings: Settings, log: PackLog, maps: CustomerMaps | None = None,
                 snapshots: Snapshots[CustomerMap] | None = None) -> None:
        self.windows = settings.window_specs
        self.grace_ms = settings.grace_ms
        self.live = settings.clock == "live"
        self.idle_lag_ms = settings.idle_lag_ms
        self.retention_ms = settings.customer_retention_ms
        self.partitions = settings.partitions
        self.period_ms = settings.attribution_period_ms
        # A day's cost is final at the day's end plus this (SPEC §8).
        self.final_after_ms = settings.retention_ms
        self.log = log
        self.maps: CustomerMaps = maps or (lambda r: DictCustomerMap())
        self.parts: dict[int, CustomerPartition] = {}
        self.drops: dict[int, int] = {}  # per partition: how often it was dropped
        self.rebuilding: set[int] = set()  # partitions whose rebuild is under way
        self.snapshots = snapshots
        self.restored: list[int] = []  # partitions restored from a snapshot, to report

    # -- ownership ---------------------------------------------------------------------
    def load(self, r: int, now_ms: int) -> CustomerPartition:
        """Rebuild partition r from its changelog (after an assignment)."""
        for _ in self._load_steps(r, now_ms):
            pass
        return self.parts[r]

    def loading(self, r: int, now_ms: int) -> Iterator[None]:
        """The rebuild of partition r in steps (none if it is held), for a caller that
        lets other work run between them: a million customers take tens of seconds, longer
        than a consumer's session timeout. A rebuild the partition was dropped during is
        discarded."""
        return iter(()) if r in self.parts else self._load_steps(r, now_ms)

    def _load_steps(self, r: int, now_ms: int) -> Iterator[None]:
        self.rebuilding.add(r)
        try:
            yield from self._rebuild(r, now_ms)
        finally:
            self.rebuilding.discard(r)

    def _rebuild(self, r: int, now_ms: int) -> Iterator[None]:
        old = self.parts.pop(r, None)
        if old is not None:
            old.customers.close()
        restored = self._restore(r)
        if restored is not None:
            self.parts[r] = restored
            self.restored.append(r)
            return
        drops = self.drops.get(r, 0)
        state = CustomerPartition(customers=self.maps(r))
        customers = state.customers
        deleted: set[str] = set()
        for seq, data in records(self.log, r, self.log.seqs(r)):
            pack = decode_customer_pack(data)
            state.refs.setdefault(seq, 0)
            for customer, record in pack.customers:
                if record is None:
                    self._release(state, customer)
                    state.guarded.add(seq)
                    customers.delete(customer)
                    deleted.add(customer)
                else:
                    self._hold(state, customer, seq)
                    for entry in record.orders.values():
                        entry[_CH:_COST] = map(intern, entry[_CH:_COST])
                    first = first_order(record)
                    record.first = None if first is None else first[0]
                    customers.put(customer, record)
                    deleted.discard(customer)
            if pack.costs:
                self._hold_costs(state, seq, pack.costs)
            state.applied, state.stream_time = pack.seq, pack.stream_time
            state.header = pack.seq
            state.high_water = pack.high_water
            state.low_marks.update(pack.low_marks)
            customers.flush()
            yield
        t = self.time(state, now_ms)
        for n, (_, record) in enumerate(customers.items()):
            for entry in spell_firsts(record, self.retention_ms):
                self._count(state, entry, 1, t, None)
            if n % LOAD_STEP == LOAD_STEP - 1:
                yield
        if self.drops.get(r, 0) != drops:
            customers.close()  # dropped meanwhile
            return
        # Everything is published again, deletions included: the previous owner may have
        # died between writing a deletion to the changelog and to the sinks.
        state.changed = deleted
        if state.applied is not None:  # (a partition new to the changelog has none)
            state.republish_after = ""
        self.parts[r] = state

    # -- snapshots (a graceful stop, then a start on the same disk) -----------------------
    def save_snapshots(self) -> list[int]:
        """Leave every held partition's state in :attr:`snapshots` and let go of it; call
        when the worker stops, once every changelog record is acknowledged and no profile is
        being published. The next start restores a partition from its snapshot if the
        changelog's newest record of the partition is still the one it was taken at (no
        rebuild and no republication of every profile); else it rebuilds."""
        if self.snapshots is None:
            return []
        saved = []
        for r, state in list(self.parts.items()):
            newest = None if state.header is None else self.log.get(r, state.header)
            if state.applied is None or newest is None or state.header != state.applied:
                continue
            del self.parts[r]
            state.customers.flush()
            snapshot = CustomerSnapshot(
                state.applied, pack_digest(newest), state.stream_time, state.high_water,
                state.low_marks, state.first_counts, state.refs, state.dead, state.changed,
                state.republish_after, state.expired, state.costs, state.cost_packs,
                len(state.customers), state.guarded)
            self.snapshots.save(r, state.customers, encode_customer_snapshot(snapshot))
            saved.append(r)
        return saved

    def _restore(self, r: int) -> CustomerPartition | None:
        """Partition r's state from the snapshot left for it, if the changelog's newest
        record of the partition is the one it was taken at (else None: the database left
        with it is deleted)."""
        left = None if self.snapshots is None else self.snapshots.take(r)
        if left is None:
            return None
        data, customers = left
        try:
            snapshot: CustomerSnapshot | None = decode_customer_snapshot(data)
        except ValueError:  # another version's (or damaged): rebuild
            snapshot = None
        newest = None if snapshot is None else self.log.get(r, snapshot.applied)
        if (snapshot is None or newest is None or self.log.seqs(r)[-1] != snapshot.applied
                or pack_digest(newest) != snapshot.pack_digest
                or len(customers) != snapshot.customers):
            customers.close()
            return None
        return CustomerPartition(
            applied=snapshot.applied, header=snapshot.applied,
            stream_time=snapshot.stream_time, high_water=snapshot.high_water,
            customers=customers, first_counts=snapshot.first_counts, refs=snapshot.refs,
            dead=snapshot.dead, changed=snapshot.changed,
            republish_after=snapshot.republish_after, expired=snapshot.expired,
            low_marks=snapshot.low_marks, costs=snapshot.costs, cost_packs=snapshot.cost_packs,
            guarded=snapshot.guarded)

    def drop(self, partitions: Iterable[int]) -> None:
        for r in partitions:
            self.drops[r] = self.drops.get(r, 0) + 1
            state = self.parts.pop(r, None)
            if state is not None:
                state.customers.close()

    def take_changes(self, partitions: Iterable[int], limit: int, now_ms: int, *,
                     republish: bool = True) -> list[tuple[int, str, CustomerRecord | None]]:
        """Up to ``limit`` ``(partition, customer, record)`` whose profile is to be published,
        of the given partitions: those changed since the last call in every partition first,
        then (if ``republish``) the next of the republications after a load. A new order's
        profile is never held back by another partition's republication of a million
        customers. Records are for reading only; None for a deleted profile (also one whose
        facts are still kept, :meth:`sweep`)."""
        held = [(r, self.parts[r]) for r in partitions if r in self.parts]
        names: list[tuple[int, str]] = []
        for r, state in held:
            taken = sorted(state.changed)[:limit - len(names)]
            state.changed.difference_update(taken)
            names += [(r, customer) for customer in taken]
            if not state.changed:
                state.taken_through = state.header
        for r, state in held if republish else ():
            room = limit - len(names)
            if room <= 0:
                break
            if state.republish_after is None:
                continue
            more = state.customers.keys_after(state.republish_after, room)
            state.republish_after = more[-1] if len(more) == room else None
            names += [(r, customer) for customer in more]
        absent = {r: self.absent_before(state, now_ms) for r, state in held}
        out: list[tuple[int, str, CustomerRecord | None]] = []
        for r, customer in names:
            record = self.parts[r].customers.peek(customer)
            if record is not None and last_activity(record) < absent[r]:
                record = None
            out.append((r, customer, record))
        return out

    def published(self, partitions: Iterable[int]) -> None:
        """The sinks have delivered every profile taken so far (nothing of theirs is queued):
        the deletions of the records up to the last :meth:`take_changes` that took every
        change need their records no longer to be published again (take_dead)."""
        for r in partitions:
            state = self.parts.get(r)
            if state is not None:
                state.published_through = state.taken_through

    def state(self, r: int, now_ms: int) -> CustomerPartition:
        held = self.parts.get(r)
        return held if held is not None else self.load(r, now_ms)

    def expected(self, r: int, now_ms: int) -> int | None:
        applied = self.state(r, now_ms).applied
        return None if applied is None else applied + 1

    def time(self, state: CustomerPartition, now_ms: int) -> int:
        """T for bucket expiry: the newest fact's time, in live mode never less than wall
        clock minus idle_lag."""
        t = state.stream_time
        return max(t, now_ms - self.idle_lag_ms) if self.live else t

    # -- processing --------------------------------------------------------------------
    def process(self, r: int, items: Sequence[tuple[int, CustomerFacts]],
                now_ms: int) -> CustomerResult:
        """Apply ``(offset, facts)`` items of partition r in offset order; one changelog
        record for the batch."""
        state = self.state(r, now_ms)
        result = CustomerResult()
        touched: set[BucketKey] = set()
        changed: set[str] = set()
        moves: list[OrderEntry] = []
        replayed_from: int | None = None
        last = None
        changed |= state.expired
        new_costs: list[tuple[str, int, float]] = []
        for offset, message in items:
            if state.applied is not None and offset <= state.applied:
                replayed_from = offset if replayed_from is None else min(replayed_from, offset)
                continue
            last = offset
            if message.source >= self.partitions:  # a roll-up partition's final costs
                for cost in message.costs:
                    if (cost.campaign, cost.day) not in state.costs:
                        state.costs[cost.campaign, cost.day] = cost.cpo
                        new_costs.append((cost.campaign, cost.day, cost.cpo))
                continue
            held = state.high_water.get(message.source, (-1, -1))
            for o, i, sign, event in message.facts:
                if (o, i) <= held:
                    continue  # applied before this partition's last crash or rebalance
                held = (o, i)
                customer = event.customer_id if isinstance(event, Order | Survey) else None
                if customer is None:
                    continue
                state.stream_time = max(state.stream_time, event.ts)
                record = state.customers.get(customer)
                if record is None:
                    record = CustomerRecord()
                    state.customers.put(customer, record)
                # One spell before and after (always, unless the customer retention is
                # shorter than the customer's span): the first order is moved as it changes.
                # Otherwise the first orders of every spell are compared around the fact.
                times = fact_times(record)
                if sign > 0:
                    times.append(event.ts)
                one_spell = not times or max(times) - min(times) <= self.retention_ms
                firsts = None if one_spell else spell_firsts(record, self.retention_ms)
                if isinstance(event, Order):
                    self._apply_order(state, record, event, sign,
                                      None if firsts is not None else (touched, moves),
                                      now_ms)
                elif isinstance(event, Survey):
                    record.answered.append(event.ts)
                    latest = record.responses.get(event.survey_kind)
                    if latest is None or (event.ts, event.response_id) > (latest[0],
                                                                           latest[1]):
                        record.responses[event.survey_kind] = [event.ts, event.response_id,
                                                               event.score]
                if firsts is not None:
                    after = spell_firsts(record, self.retention_ms)
                    kept = {id(entry) for entry in after}
                    was = {id(entry) for entry in firsts}
                    for entry in firsts:
                        if id(entry) not in kept:
                            self._move(state, entry, None, touched, moves, now_ms)
                    for entry in after:
                        if id(entry) not in was:
                            self._move(state, None, entry, touched, moves, now_ms)
                    self._forget_spells(state, record, now_ms)
                if not record.orders and not record.responses:
                    state.customers.delete(customer)
                changed.add(customer)
            state.high_water[message.source] = held
            # A message's low mark holds after its facts, which may be far older (a batch of
            # a backlog): the spells its facts may still join are judged without it.
            state.low_marks[message.source] = message.low_mark
            state.seen_times[message.source] = message.seen_time
        if new_costs:
            state.customers.flush()  # the scan sees what was flushed
            state.changed |= self._costed_customers(state, new_costs)
        # A record for every applied batch, also one that changed only low marks (a header
        # with them): a partition rebuilt from the changelog then expects the offset after
        # the last batch its previous owner committed. (Without it the new owner had to seek
        # back over the batches of low marks, and faust sometimes delivered nothing after
        # that seek: commits of the partition stalled.)
        if last is not None:
            deleted = set()
            for customer in changed:
                record = state.customers.get(customer)
                if record is None:
                    deleted.add(customer)
                else:
                    self._stamp(state, record)
            pack = CustomerPack(last, state.stream_time, dict(state.high_water),
                                [(c, state.customers.get(c)) for c in sorted(changed)], moves,
                                new_costs, dict(state.low_marks))
            self.log.put(r, last, encode_customer_pack(pack))
            state.refs.setdefault(last, 0)
            if new_costs:
                self._hold_costs(state, last, new_costs)
            for customer in changed:
                if customer in deleted:
                    self._release(state, customer)
                else:
                    self._hold(state, customer, last)
            if deleted:
                state.guarded.add(last)
            if state.header is not None and state.refs.get(state.header, 0) <= 0:
                state.dead.add(state.header)  # it held the header, now superseded
            state.header = last
            state.changed |= changed
            state.expired.clear()
        state.customers.flush()
        if last is not None:
            state.applied = last
        if replayed_from is not None:  # the first run's roll-up messages may be lost
            touched |= self._moved_since(r, state, replayed_from)
        result.updates = self._updates(state, touched)
        result.applied = state.applied
        return result

    def day_of(self, ts: int) -> int:
        return ts - ts % self.period_ms

    def _costed_customers(self, state: CustomerPartition,
                          costs: list[tuple[str, int, float]]) -> set[str]:
        """Customers holding an order of a newly final campaign day: their profiles change."""
        keys = {(campaign, day) for campaign, day, _ in costs}
        return {customer for customer, record in state.customers.items()
                if any((entry[_CA], self.day_of(int(entry[_TS]))) in keys
                       for entry in record.orders.values())}

    def _stamp(self, state: CustomerPartition, record: CustomerRecord) -> None:
        """Copy known costs into the record's order entries before it is written."""
        for entry in record.orders.values():
            if len(entry) == _COST:
                cost = state.costs.get((entry[_CA], self.day_of(int(entry[_TS]))))
                if cost is not None:
                    entry.append(cost)

    def _hold_costs(self, state: CustomerPartition, seq: int,
                    costs: list[tuple[str, int, float]]) -> None:
        for campaign, day, cpo in costs:
            state.costs[campaign, day] = cpo
        newest = max(day for _, day, _ in costs)
        if seq not in state.cost_packs:
            state.refs[seq] = state.refs.get(seq, 0) + 1  # pinned while its costs are kept
        state.cost_packs[seq] = max(newest, state.cost_packs.get(seq, newest))

    def cost_of(self, state: CustomerPartition, entry: OrderEntry) -> float | None:
        """The order's attribution cost once its day is final; None before."""
        if len(entry) > _COST:
            return float(entry[_COST])
        return state.costs.get((entry[_CA], self.day_of(int(entry[_TS]))))

    def _apply_order(self, state: CustomerPartition, record: CustomerRecord, order: Order,
                     sign: int, moving: tuple[set[BucketKey], list[OrderEntry]] | None,
                     now_ms: int) -> None:
        """Add or retract a counted order; when the first order moves, move its count (with
        ``moving``: the customer has one spell). The first order is cached per customer:
        only retracting it costs a scan."""
        orders = record.orders
        if sign > 0 and order.order_id in orders:
            # The id's earlier order expired (the aggregate judged this one new, SPEC §1):
            # it stays counted under another name.
            held = orders.pop(order.order_id)
            alias = expired_order_id(order.order_id, int(held[_TS]))
            orders[alias] = held
            if record.first == order.order_id:
                record.first = alias
        first = record.first
        before = None if first is None else orders[first]
        if sign > 0:
            # Held for the customer retention: the few group names are shared, not copied
            # into every order (~150 bytes an order).
            entry = [order.ts, order.amount, intern(order.channel), intern(order.campaign_id),
                     intern(order.segment)]
            orders[order.order_id] = entry
            if first is None or (order.ts, order.order_id) < (before[_TS], first):  # type: ignore[index]
                record.first = order.order_id
                if moving is not None:
                    self._move(state, before, entry, *moving, now_ms)
            return
        if orders.pop(order.order_id, None) is None or order.order_id != first:
            return
        after = first_order(record)
        record.first = None if after is None else after[0]
        if moving is not None:
            self._move(state, before, None if after is None else after[1], *moving, now_ms)

    def _forget_spells(self, state: CustomerPartition, record: CustomerRecord,
                       now_ms: int) -> None:
        """Drop the facts of the customer's spells that no fact still to be accepted can
        join (:meth:`sweep`'s rule for whole customers), so that a customer returning after
        every retention does not keep its every order. Their first orders' counts stay: their
        buckets have expired (every window is shorter than the lateness bound)."""
        absent = self.absent_before(state, now_ms)
        if absent == NO_TIME:
            return
        forget = absent - self.final_after_ms
        times = sorted(fact_times(record))
        cut = NO_TIME
        for before, after in pairwise(times):
            if before >= forget:
                break
            if after - before > self.retention_ms:
                cut = before
        if cut == NO_TIME:
            return
        for order_id in [o for o, entry in record.orders.items() if entry[_TS] <= cut]:
            del record.orders[order_id]
        record.answered = [ts for ts in record.answered if ts > cut]
        for kind in [k for k, entry in record.responses.items() if entry[0] <= cut]:
            del record.responses[kind]
        first = first_order(record)
        record.first = None if first is None else first[0]

    def _move(self, state: CustomerPartition, old: OrderEntry | None, new: OrderEntry | None,
              touched: set[BucketKey], moves: list[OrderEntry], now_ms: int) -> None:
        t = self.time(state, now_ms)
        if old is not None:
            self._count(state, old, -1, t, touched)
            moves.append(old)
        if new is not None:
            self._count(state, new, 1, t, touched)
            moves.append(new)

    def _moved_since(self, r: int, state: CustomerPartition, first: int) -> set[BucketKey]:
        keys: set[BucketKey] = set()
        for seq in sorted(state.refs):
            if seq < first:
                continue
            data = self.log.get(r, seq)
            if data is not None:
                for entry in decode_customer_pack(data).moves:
                    keys |= self._keys(entry)
        return keys

    def _keys(self, entry: OrderEntry) -> set[BucketKey]:
        ts = int(entry[_TS])
        return {(spec.name, dimension, group, ts - ts % spec.step_ms)
                for spec in self.windows for dimension, group in order_rows(entry)}

    def _hold(self, state: CustomerPartition, customer: str, seq: int) -> None:
        previous = state.customers.holder(customer)
        if previous == seq:
            return
        if previous is not None:
            self._unref(state, previous)
        state.customers.set_holder(customer, seq)
        state.refs[seq] = state.refs.get(seq, 0) + 1

    def _release(self, state: CustomerPartition, customer: str) -> None:
        """A deleted customer's version no longer holds its record."""
        previous = state.customers.holder(customer)
        if previous is not None:
            self._unref(state, previous)
            state.customers.drop_holder(customer)

    @staticmethod
    def _unref(state: CustomerPartition, seq: int) -> None:
        state.refs[seq] -= 1
        if state.refs[seq] <= 0:
            state.dead.add(seq)

    def _count(self, state: CustomerPartition, entry: OrderEntry, sign: int, t: int,
               touched: set[BucketKey] | None) -> None:
        ts = int(entry[_TS])
        rows = order_rows(entry)
        for spec in self.windows:
            bucket = ts - ts % spec.step_ms
            if t != NO_TIME and bucket_expired(bucket, spec, t, self.grace_ms):
                continue
            for dimension, group in rows:
                key = (spec.name, dimension, group, bucket)
                value = state.first_counts.get(key, 0) + sign
                if value:
                    state.first_counts[key] = value
                else:
                    state.first_counts.pop(key, None)
                if touched is not None:
                    touched.add(key)

    @staticmethod
    def _updates(state: CustomerPartition,
                 touched: set[BucketKey]) -> dict[RowId, list[CustomerUpdate]]:
        updates: dict[RowId, list[CustomerUpdate]] = defaultdict(list)
        for key in sorted(touched):
            window, dimension, group, bucket = key
            sums = _NO_SUMS.copy()
            sums[_NEW] = state.first_counts.get(key, 0)
            updates[(dimension, group)].append(CustomerUpdate(window, bucket, tuple(sums)))
        return dict(updates)

    def take_dead(self, r: int) -> list[int]:
        """Changelog records no longer needed; call after the records superseding them were
        acknowledged, then tombstone them (oldest first).

        A record holding no current version but a deletion is needed while an older record
        is kept (a rebuild would bring the deleted customer back from it) and until the
        deletion was published (a rebuild publishes the deletions it finds again, in case
        the previous owner died before its sinks had them: :meth:`published`)."""
        state = self.parts.get(r)
        if state is None:
            return []
        candidates = {s for s in state.dead | state.guarded
                      if state.refs.get(s, 0) <= 0 and s != state.header}
        state.dead.clear()
        if candidates & state.guarded:
            kept = [s for s, n in state.refs.items() if n > 0]
            oldest_kept = min(kept) if kept else None
            published = state.published_through
            candidates = {s for s in candidates if s not in state.guarded or (
                published is not None and s <= published
                and (oldest_kept is None or oldest_kept > s))}
        dead = sorted(candidates)
        for seq in dead:
            state.refs.pop(seq, None)
            state.guarded.discard(seq)
        return dead

    # -- expiry ------------------------------------------------------------------------
    def watermark(self, state: CustomerPartition, now_ms: int) -> int:
        """The low watermark (SPEC §3) as this partition last heard it from every aggregate
        partition: NO_TIME until all have reported (after a restart, until they report
        again)."""
        if len(state.low_marks) < self.partitions:
            return NO_TIME
        low = low_watermark((low, state.seen_times.get(source, NO_TIME))
                            for source, low in state.low_marks.items())
        if low == NO_TIME:
            return NO_TIME
        if low == ALL_READ:  # (replay mode: only from an aggregate of an earlier version,
            # which sent no customer_low_mark; this partition's newest event is a lower bound)
            low = now_ms - self.idle_lag_ms if self.live else state.stream_time
        return min(low, now_ms - self.idle_lag_ms) if self.live else low

    def absent_before(self, state: CustomerPartition, now_ms: int) -> int:
        """Profiles last active before this are deleted (SPEC §8 retention, behind the low
        watermark); NO_TIME while the watermark is not known."""
        watermark = self.watermark(state, now_ms)
        return NO_TIME if watermark == NO_TIME else watermark - self.retention_ms

    def sweep(self, r: int, now_ms: int) -> int:
        """Forget first-order counts of buckets no window can reach, and customers inactive
        for longer than the customer retention, judged behind the low watermark: a customer
        whose orders a slower input partition still holds is not deleted because a faster
        one moved stream time on. Their deletion goes into the next batch's changelog
        record (until then a restart brings them back and they expire again). Returns how
        many entries went."""
        state = self.parts.get(r)
        if state is None:
            return 0
        t = self.time(state, now_ms)
        if t == NO_TIME:
            return 0
        specs = {spec.name: spec for spec in self.windows}
        old_buckets = [k for k in state.first_counts
                       if bucket_expired(k[3], specs[k[0]], t, self.grace_ms)]
        for key in old_buckets:
            del state.first_counts[key]
        absent = self.absent_before(state, now_ms)
        # A profile is deleted once it is older than the customer retention; the customer's
        # facts are kept until no fact still to be accepted (none older than the low
        # watermark minus the lateness bound) could join its spell: until then a fact
        # joining it brings the profile back with all its orders, as it would have had the
        # fact come sooner (SPEC §8: the outcome does not depend on arrival order).
        horizon = NO_TIME if absent == NO_TIME else absent - self.final_after_ms
        gone = [] if horizon == NO_TIME else state.customers.inactive_before(horizon)
        for customer in gone:
            state.customers.delete(customer)
        state.customers.flush()
        state.expired.update(gone)
        state.changed.update(gone)
        if absent != NO_TIME and absent > state.absent_from:
            # the profiles deleted since the last sweep (all of the kept ones after a load:
            # the previous owner may have died before its sinks had them)
            state.changed.update(state.customers.inactive_between(
                max(state.absent_from, horizon), absent))
            state.absent_from = absent
        # A cost is copied into every order entry written after it came; an entry written
        # before belongs to a customer last active before the day became final, deleted by
        # now: the cost is no longer needed.
        old_costs = [cost for cost in state.costs
                     if cost[1] + self.period_ms + self.final_after_ms < horizon]
        for cost in old_costs:
            del state.costs[cost]
        for seq in [seq for seq, newest in state.cost_packs.items()
                    if newest + self.period_ms + self.final_after_ms < horizon]:
            del state.cost_packs[seq]
            state.refs[seq] -= 1
            if state.refs[seq] <= 0:
                state.dead.add(seq)
        return len(old_buckets) + len(gone) + len(old_costs)

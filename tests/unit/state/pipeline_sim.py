"""The engine's pure stages wired together without Kafka: the edge packing raw records, the
aggregate, customer and roll-up stages on their internal topics, with batches, re-deliveries and
crashes that lose part of the changelog and of the messages in flight, under the test's
control."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, partial

from kpistream.contracts.records import Event
from kpistream.contracts.wire import (
    COUNTS_PARTITION,
    CustomerFacts,
    RawMark,
    decode_customer_facts,
    decode_event_pack,
    encode_customer_facts,
    encode_event_pack,
    encode_rollup,
)
from kpistream.ingest.packing import PackedBatch, Packer, RawRecord, with_marks
from kpistream.ingest.validate import Rejection, Validator
from kpistream.kpi.profiles import build_profile
from kpistream.kpi.rows import RowPublisher
from kpistream.settings import Settings
from kpistream.stages.aggregate import customer_facts, rollup_messages
from kpistream.stages.customers import customer_rollup_messages
from kpistream.state.aggregate import IdMaps, PartitionAggregator
from kpistream.state.customers import CustomerMaps, CustomerState, last_activity
from kpistream.state.rollup import ATTRIBUTION_SEQ, RollupState
from kpistream.state.store import DictPackLog

TOPIC = "in"


@cache
def _validator() -> Validator:
    """(The simulation packs events already validated: one validator serves every run.)"""
    return Validator(Settings())


@dataclass
class Sim:
    settings: Settings
    partitions: int = 1
    now_ms: int = 0
    aggregate_log: DictPackLog = field(default_factory=DictPackLog)
    rollup_log: DictPackLog = field(default_factory=DictPackLog)
    customer_log: DictPackLog = field(default_factory=DictPackLog)
    customer_maps: CustomerMaps | None = None  # default: in memory
    id_maps: IdMaps | None = None  # default: in memory
    raw_partitions: int = 1  # of the one input topic, each read in order
    edges: int = 1  # edge consumers (workers); raw partition k is read by edge k % edges
    # Wall time a step may take, at random up to it. 0: the clock stands still, and every
    # message is where the test puts it: the watermark's wall-clock settling
    # (RollupState.settled_time) has nothing to wait for, so it is off. Otherwise the
    # settings' settle holds, and days become final a random number of sweeps after the
    # watermark passed them.
    wall_step_ms: int = 0

    def __post_init__(self) -> None:
        # The stages count their sources (watermark, customer sources) by this setting.
        update: dict[str, object] = {"partitions": self.partitions}
        if not self.wall_step_ms:
            update["watermark_settle"] = "0s"
        self.settings = self.settings.model_copy(update=update)
        self.raw: list[list[Event]] = [[] for _ in range(self.raw_partitions)]
        self.edge_committed = [0] * self.raw_partitions
        # what each edge knows of its raw partitions: the newest event time it read
        self.newest: dict[int, dict[tuple[str, int], int]] = {}
        self.told: dict[int, list[RawMark]] = {}  # per edge: the marks it last sent
        self.read: list[Event] = []  # every raw record in the order the edge first read it
        self.events_topic: list[list[bytes]] = [[] for _ in range(self.partitions)]
        self.events_done = [0] * self.partitions
        self.rollup_topic: list[list[bytes]] = [[] for _ in range(self.partitions)]
        self.rollup_done = [0] * self.partitions
        self.customers_topic: list[list[bytes]] = [[] for _ in range(self.partitions)]
        self.customers_done = [0] * self.partitions
        self.customers = CustomerState(self.settings, self.customer_log, self.customer_maps)
        self.aggregator = PartitionAggregator(self.settings, self.aggregate_log, self.id_maps)
        self.state = RollupState(self.settings, self.rollup_log)
        self.publisher = RowPublisher(self.settings, self.state)
        self.last_sent: dict[int, dict[int, tuple[int, int, int]]] = {}
        self.marks_sent: dict[int, dict[int, tuple[int, int]]] = {}
        self.verdicts: list[tuple[str, Event]] = []
        # The edge's own verdicts (late within its raw partition) by raw coordinates. A
        # record packed again after an uncommitted batch goes to the same internal partition
        # after its first packing, which the aggregate applies: only its first verdict counts.
        self.edge_verdicts: dict[tuple[int, int], tuple[str, Event]] = {}
        self.edge_packed = [0] * self.raw_partitions
        self.packer = Packer(_validator(), {TOPIC: "order"}, self.partitions,
                             self.settings.pack_max_bytes, self.settings.retention_ms)

    def judged(self) -> list[tuple[str, Event]]:
        """Every verdict, the edge's and the aggregate's."""
        return [*self.verdicts, *self.edge_verdicts.values()]

    def append(self, event: Event, raw_partition: int = 0) -> None:
        self.raw[raw_partition].append(event)

    # -- edge ----------------------------------------------------------------------------
    def edge_step(self, n: int, *, commit: bool = True,
                  rng: random.Random | None = None) -> None:
        """One edge batch: up to n records of each raw partition with records left (of a
        random choice of them, given ``rng``), packed, with every raw partition's mark and
        end offset. Without ``commit`` the edge 'crashes' after producing, so the same
        records are read and packed again later, by an edge that knows nothing of the
        partitions' earlier batches (a restarted worker, or another one)."""
        pending = [k for k in range(self.raw_partitions)
                   if self.edge_committed[k] < len(self.raw[k])]
        idle = self.idle_edges()
        if idle and (not pending or rng is None or rng.random() < 0.2):
            # an edge with nothing to read tells its marks when they changed (stages/edge.py:
            # a partition nobody writes to must not hold the watermark back for good)
            edge = idle[0] if rng is None else rng.choice(idle)
            self._send(edge, self.packer.pack_validated([], self.raw_partitions, {}),
                       dict(enumerate(self.edge_committed)))
            return
        if not pending:
            return
        edge = pending[0] % self.edges if rng is None else rng.choice(pending) % self.edges
        own = [k for k in range(self.raw_partitions) if k % self.edges == edge]
        pending = [k for k in pending if k in own]
        if rng is not None and len(pending) > 1:
            pending = rng.sample(pending, rng.randint(1, len(pending)))
        records: list[tuple[RawRecord, Event | Rejection]] = []
        for k in pending:
            start = self.edge_committed[k]
            for offset, event in enumerate(self.raw[k][start:start + n], start=start):
                records.append((RawRecord(TOPIC, k, offset, None, b"{}"), event))
                if offset >= self.edge_packed[k]:
                    self.read.append(event)
        if not records:
            return
        # The edge's own packing (routing, its lateness rule, Source.seen), after validation
        newest = self.newest.setdefault(edge, {})
        batch = self.packer.pack_validated(records, self.raw_partitions, newest)
        for coords, ts in batch.newest.items():
            newest[coords] = max(ts, newest.get(coords, ts))
        for rejection, source in batch.rejections:
            if source.offset >= self.edge_packed[source.partition]:  # (else: as first judged)
                self.edge_verdicts[source.partition, source.offset] = (
                    rejection.error, self.raw[source.partition][source.offset])
        read_to = {k: self.edge_committed[k] for k in range(self.raw_partitions)}
        for record, _ in records:
            read_to[record.partition] = record.offset + 1
            self.edge_packed[record.partition] = max(self.edge_packed[record.partition],
                                                     record.offset + 1)
        self._send(edge, batch, read_to)
        if commit:
            self.edge_committed = [read_to[k] for k in range(self.raw_partitions)]
        else:
            newest.clear()  # (its successor's marks: only what it reads itself)
            self.told.pop(edge, None)

    def _marks(self, edge: int, read_to: dict[int, int]) -> list[RawMark]:
        """The marks of the edge's own partitions (an edge tells of its own only)."""
        newest = self.newest.get(edge, {})
        marks = []
        for k in range(self.raw_partitions):
            if k % self.edges == edge:
                at_end = read_to[k] == len(self.raw[k])
                marks.append(RawMark(TOPIC, k, newest.get((TOPIC, k)), at_end,
                                     read_to[k] if at_end else None))
        return marks

    def idle_edges(self) -> list[int]:
        """Edges with nothing left to read whose marks changed since they last told them."""
        busy = {k % self.edges for k in range(self.raw_partitions)
                if self.edge_committed[k] < len(self.raw[k])}
        read_to = dict(enumerate(self.edge_committed))
        return [e for e in range(self.edges)
                if e not in busy and self.told.get(e) != self._marks(e, read_to)]

    def _send(self, edge: int, batch: PackedBatch, read_to: dict[int, int]) -> None:
        marks = self._marks(edge, read_to)
        ends = {(TOPIC, k): len(self.raw[k]) for k in range(self.raw_partitions)}
        packs = with_marks(batch, marks, self.partitions, self.raw_partitions, True, ends)
        for p in sorted(packs):
            for pack in packs[p]:
                self.events_topic[p].append(encode_event_pack(pack))
        self.told[edge] = marks

    # -- aggregate -----------------------------------------------------------------------
    def _aggregate(self, p: int, n: int) -> tuple[list[tuple[str, int, bytes]], int,
                                                   list[tuple[str, Event]]]:
        start = self.events_done[p]
        raw = list(enumerate(self.events_topic[p][start:start + n], start=start))
        items = [(offset, decode_event_pack(value)) for offset, value in raw]
        result = self.aggregator.process(p, items, self.now_ms)
        verdicts = [(v.outcome, v.event) for v in result.verdicts]
        messages = rollup_messages(p, result, self.partitions, self.last_sent.setdefault(p, {}))
        facts = customer_facts(p, result, self.partitions, self.marks_sent.setdefault(p, {}))
        return ([("rollup", q, encode_rollup(m)) for q, m in messages.items()]
                + [("customers", r, encode_customer_facts(m)) for r, m in facts.items()],
                start + len(items), verdicts)

    def _deliver(self, sent: list[tuple[str, int, bytes]]) -> None:
        for topic, partition, data in sent:
            target = self.rollup_topic if topic == "rollup" else self.customers_topic
            target[partition].append(data)

    def aggregate_step(self, p: int, n: int) -> None:
        sent, done, verdicts = self._aggregate(p, n)
        self.verdicts.extend(verdicts)
        self._deliver(sent)
        self.events_done[p] = done

    def aggregate_crash(self, p: int, n: int, rng: random.Random) -> None:
        """Apply a batch, lose part of its changelog writes and roll-up messages, restart
        (state rebuilt from the changelog) and process again from the last commit."""
        before = dict(self.aggregate_log.data)
        sent, done, verdicts = self._aggregate(p, n)
        _lose(self.aggregate_log, before, rng)
        if (p, done - 1) in self.aggregate_log.data:
            self.verdicts.extend(verdicts)  # its pack survived: the retry applies nothing
        self._deliver([message for message in sent if rng.random() < 0.5])
        self.aggregator.drop({p})
        self.last_sent.pop(p, None)
        self.marks_sent.pop(p, None)
        self.aggregate_step(p, n)

    # -- customers -----------------------------------------------------------------------
    def _customers(self, r: int, n: int) -> tuple[list[tuple[str, int, bytes]], int]:
        start = self.customers_done[r]
        raw = list(enumerate(self.customers_topic[r][start:start + n], start=start))
        items = [(offset, decode_customer_facts(value)) for offset, value in raw]
        result = self.customers.process(r, items, self.now_ms)
        messages = customer_rollup_messages(r, result, self.partitions)
        return [("rollup", q, encode_rollup(m)) for q, m in messages.items()], start + len(items)

    def customers_step(self, r: int, n: int, *, crash: bool = False,
                       rng: random.Random | None = None) -> None:
        before = dict(self.customer_log.data)
        sent, done = self._customers(r, n)
        if crash and rng is not None:  # lose part of it, restart from the last commit
            _lose(self.customer_log, before, rng)
            self._deliver([message for message in sent if rng.random() < 0.5])
            self.customers.drop([r])
            return
        self._deliver(sent)
        # the publish tick takes every change and its sinks deliver them: the records of
        # deletions may go from then on (CustomerState.take_dead)
        self.customers.take_changes([r], 1 << 30, self.now_ms, republish=False)
        self.customers.published([r])
        for seq in self.customers.take_dead(r):
            self.customer_log.delete(r, seq)
        self.customers_done[r] = done

    # -- roll-up -------------------------------------------------------------------------
    def rollup_step(self, q: int, n: int, *, crash: bool = False,
                    rng: random.Random | None = None) -> None:
        if not self.state.loaded(q):
            self.state.load(q, self.now_ms)
        start = self.rollup_done[q]
        batch = self.rollup_topic[q][start:start + n]
        before = dict(self.rollup_log.data)
        for offset, data in enumerate(batch, start=start):
            self.state.apply(q, offset, data, self.now_ms)
        self.state.expire(q, self.now_ms)
        if crash and rng is not None:
            # One changelog partition per roll-up partition, written in offset order: a
            # crash loses a suffix of the batch's records (a record of a later message never
            # survives without the earlier ones, which the attribution fold relies on).
            changed = sorted(key for key in self.rollup_log.data if key not in before
                             or before[key] != self.rollup_log.data[key])
            cut = rng.randint(0, len(changed))
            kept = dict(before)
            for key in changed[:cut]:
                kept[key] = self.rollup_log.data[key]
            self.rollup_log.data = kept
            self.state.drop([q])
            return  # not committed: processed again by the next step
        for seq in self.state.take_dead(q):
            self.rollup_log.delete(q, seq)
        self.rollup_done[q] = start + len(batch)

    def sweep_step(self, q: int, *, crash: bool = False,
                   rng: random.Random | None = None) -> None:
        """The publish timer's sweep of roll-up partition q: expiry, attribution days folded,
        final costs sent to every customer partition and, once delivered, acknowledged."""
        if not self.state.loaded(q):
            self.state.load(q, self.now_ms)
        before = dict(self.rollup_log.data)
        self.state.sweep(q, self.now_ms)
        for seq in self.state.take_dead(q):
            self.rollup_log.delete(q, seq)
        costs = self.state.final_costs(q)
        sent = [("customers", r, encode_customer_facts(CustomerFacts(self.partitions + q,
                                                                     costs=costs)))
                for r in range(self.partitions)] if costs else []
        if crash and rng is not None:
            # The attribution record is written before the tombstones of the messages it
            # folded, to the same changelog partition: Kafka keeps their order, so a crash
            # loses a suffix of them, never the record alone.
            record = (q, ATTRIBUTION_SEQ)
            if rng.random() < 0.5:
                self.rollup_log.data = before
            else:
                kept = dict(before)
                if record in self.rollup_log.data:
                    kept[record] = self.rollup_log.data[record]
                for key in set(before) - set(self.rollup_log.data):
                    if rng.random() < 0.5:
                        kept.pop(key)
                self.rollup_log.data = kept
            self._deliver([message for message in sent if rng.random() < 0.5])
            self.state.drop([q])
            return
        self._deliver(sent)
        self.state.costs_sent(q, costs)

    def settle(self, rng: random.Random | None = None) -> None:
        """Sweep every roll-up partition and process what that sends, until nothing moves."""
        rng = rng or random.Random(0)
        for _ in range(3):
            self.now_ms += self.settings.watermark_settle_ms  # the watermark has stood
            for q in range(self.partitions):
                self.sweep_step(q)
            self.run_all(rng)

    # -- driver --------------------------------------------------------------------------
    def pending(self) -> list[tuple[str, int]]:
        work: list[tuple[str, int]] = []
        if any(done < len(raw) for done, raw in zip(self.edge_committed, self.raw,
                                                     strict=True)) or self.idle_edges():
            work.append(("edge", 0))
        work += [("aggregate", p) for p in range(self.partitions)
                 if self.events_done[p] < len(self.events_topic[p])]
        work += [("rollup", q) for q in range(self.partitions)
                 if self.rollup_done[q] < len(self.rollup_topic[q])]
        work += [("customers", r) for r in range(self.partitions)
                 if self.customers_done[r] < len(self.customers_topic[r])]
        return work

    def run_all(self, rng: random.Random, crash_rate: float = 0.0,
                check: Callable[[], None] | None = None) -> None:
        """Run random steps of random stages until nothing is left, calling ``check`` after
        each."""
        while work := self.pending():
            self.now_ms += rng.randint(0, self.wall_step_ms)
            stage, p = rng.choice(work)
            n = rng.randint(1, 7)
            crash = rng.random() < crash_rate
            if stage == "edge":
                self.edge_step(n, commit=not crash, rng=rng)
            elif stage == "aggregate":
                if crash:
                    self.aggregate_crash(p, n, rng)
                else:
                    self.aggregate_step(p, n)
                if rng.random() < 0.3:  # the publish timer's sweep of ids, buckets and packs
                    self.aggregator.sweep(p, self.now_ms)
            elif stage == "customers":
                self.customers_step(p, n, crash=crash, rng=rng)
                if rng.random() < 0.3:
                    self.customers.sweep(p, self.now_ms)
            else:
                self.rollup_step(p, n, crash=crash, rng=rng)
                if rng.random() < 0.3:
                    self.sweep_step(p, crash=rng.random() < crash_rate, rng=rng)
            if check is not None:
                check()

    def rows(self) -> dict[tuple[str, str, str], dict[str, object]]:
        """(window, dimension, group) -> published message, after a final tick."""
        for q in range(self.partitions):
            if not self.state.loaded(q):
                self.state.load(q, self.now_ms)
        self.publisher.tick(set(range(self.partitions)), self.now_ms)
        out = {}
        for q in range(self.partitions):
            for (row, window), pub in self.publisher.published.get(q, {}).items():
                if pub.message is not None:
                    out[(window, row[0], row[1])] = pub.message
        return out

    def profiles(self) -> dict[str, dict[str, object]]:
        """customer_id -> published profile fields (undefined and updated_at left out);
        the profiles deleted by the customer retention left out."""
        out = {}
        for r in range(self.partitions):
            part = self.customers.state(r, self.now_ms)
            absent = self.customers.absent_before(part, self.now_ms)
            for customer, record in part.customers.items():
                if last_activity(record) < absent:
                    continue
                message = build_profile(customer, record, self.now_ms,
                                        partial(self.customers.cost_of, part),
                                        self.settings.customer_retention_ms)
                out[customer] = {k: v for k, v in message.items() if v is not None
                                 and k not in ("updated_at", "schema_version")}
        return out

    def in_flight(self) -> list[Event]:
        """Events packed by the edge that their aggregate partition has not applied yet."""
        return [event for p in range(self.partitions)
                for data in self.events_topic[p][self.events_done[p]:]
                for _, event in decode_event_pack(data).items if isinstance(event, Event)]

    def counts(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for p in range(self.partitions):
            for (_, outcome), count in self.aggregator.state(p, self.now_ms).counts.items():
                totals[outcome] = totals.get(outcome, 0) + count
        return totals

    def exported_counts(self) -> dict[str, int]:
        """kpistream_events_total as exported: totalled by the roll-up's COUNTS_PARTITION."""
        if not self.state.loaded(COUNTS_PARTITION):
            self.state.load(COUNTS_PARTITION, self.now_ms)
        totals: dict[str, int] = {}
        for (_, outcome), count in (self.state.event_counts(COUNTS_PARTITION) or {}).items():
            if count:
                totals[outcome] = totals.get(outcome, 0) + count
        return totals


def _lose(log: DictPackLog, before: dict[tuple[int, int], bytes], rng: random.Random) -> None:
    """Keep each changelog change of the last step with probability 1/2."""
    after = log.data
    survived = dict(before)
    for key in set(before) | set(after):
        if before.get(key) != after.get(key) and rng.random() < 0.5:
            if key in after:
                survived[key] = after[key]
            else:
                survived.pop(key, None)
        elif before.get(key) == after.get(key) and key in after:
            survived[key] = after[key]
    log.data = survived

"""The customer stage's first-order counts on the cases SPEC §8 names: an earlier order that
arrives later, the first order cancelled, a replay after a crash, a restart; each with the
customers in memory and on disk (RocksDB)."""

from __future__ import annotations

from collections.abc import Callable
from itertools import count
from pathlib import Path

import pytest

from kpistream.contracts.records import Order, Survey
from kpistream.contracts.wire import ALL_READ, CampaignDayCost, CustomerFacts
from kpistream.kpi.formulas import SUM_FIELDS
from kpistream.settings import Settings
from kpistream.state.customers import CustomerMaps, CustomerState, DictCustomerMap, first_order
from kpistream.state.rocks import RocksCustomerMap, RocksMemory
from kpistream.state.store import DictPackLog, PackLog

SETTINGS = Settings(windows=("1h/1m",), clock="event")
MIN = 60_000
NEW = SUM_FIELDS.index("new_customers")


MakeState = Callable[..., CustomerState]


@pytest.fixture(params=["memory", "rocksdb"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> MakeState:
    """``make(settings, log)``: a CustomerState over the store kind of the test's variant;
    each call stands for another worker (its own data directory)."""
    workers = count()

    def build(settings: Settings = SETTINGS, log: PackLog | None = None) -> CustomerState:
        maps: CustomerMaps
        if request.param == "memory":
            maps = lambda r: DictCustomerMap()  # noqa: E731
        else:
            root = tmp_path / f"worker-{next(workers)}"
            memory = RocksMemory(8)
            maps = lambda r: RocksCustomerMap(root / str(r), memory)  # noqa: E731
        return CustomerState(settings, log if log is not None else DictPackLog(), maps)

    return build


def names(state: CustomerState, r: int = 0) -> set[str]:
    return {customer for customer, _ in state.parts[r].customers.items()}


def order(order_id: str, ts: int, customer: str = "c1", segment: str = "vip") -> Order:
    return Order(order_id, ts, "placed", customer, 10.0, "search", "cmp", segment)


def counts(state: CustomerState, r: int = 0) -> dict[tuple[str, str, int], int]:
    """(dimension, group, bucket) -> first orders, for the 1h window."""
    return {(d, g, b): n for (w, d, g, b), n in state.parts[r].first_counts.items()}


def sent(result: object) -> dict[tuple[str, str, int], int]:
    return {(row[0], row[1], u.bucket): int(u.sums[NEW])
            for row, updates in result.updates.items() for u in updates}  # type: ignore[attr-defined]


def test_an_earlier_order_arriving_later_becomes_the_first(make: MakeState) -> None:
    state = make()
    state.process(0, [(0, CustomerFacts(0, [(10, 0, 1, order("o2", 5 * MIN))]))], 0)
    assert counts(state)[("all", "all", 5 * MIN)] == 1
    result = state.process(0, [(1, CustomerFacts(0, [(11, 0, 1, order("o1", 2 * MIN))]))], 0)
    assert counts(state) == {(d, g, 2 * MIN): 1 for d, g in
                             (("all", "all"), ("channel", "search"), ("campaign", "cmp"),
                              ("segment", "vip"))}
    assert sent(result)[("all", "all", 5 * MIN)] == 0  # the old first order's bucket: zero
    assert sent(result)[("all", "all", 2 * MIN)] == 1


def test_cancelling_the_first_order_moves_it_to_the_next(make: MakeState) -> None:
    state = make()
    state.process(0, [(0, CustomerFacts(0, [(1, 0, 1, order("o1", MIN)),
                                            (1, 1, 1, order("o2", 3 * MIN, segment="new"))]))],
                  0)
    state.process(0, [(1, CustomerFacts(0, [(2, 0, -1, order("o1", MIN))]))], 0)
    assert counts(state) == {(d, g, 3 * MIN): 1 for d, g in
                             (("all", "all"), ("channel", "search"), ("campaign", "cmp"),
                              ("segment", "new"))}
    first = first_order(state.parts[0].customers.peek("c1"))
    assert first is not None and first[0] == "o2"


def test_ties_go_to_the_smallest_order_id_and_responses_keep_the_latest(make: MakeState) -> None:
    state = make()
    survey = Survey("r1", 4 * MIN, "nps", 9, "c1", "search", "cmp", "vip", None)
    older = Survey("r0", 2 * MIN, "nps", 3, "c1", "search", "cmp", "vip", None)
    state.process(0, [(0, CustomerFacts(0, [(1, 0, 1, order("ob", MIN)),
                                            (1, 1, 1, order("oa", MIN)),
                                            (1, 2, 1, survey), (1, 3, 1, older)]))], 0)
    record = state.parts[0].customers.peek("c1")
    assert first_order(record) == ("oa", record.orders["oa"])
    assert record.responses["nps"] == [4 * MIN, "r1", 9]


def test_a_fact_sent_again_is_applied_once_and_a_restart_restores_the_counts(
        make: MakeState) -> None:
    log = DictPackLog()
    state = make(SETTINGS, log)
    facts = CustomerFacts(3, [(7, 0, 1, order("o1", MIN)), (7, 1, 1, order("o9", MIN, "c2"))])
    state.process(0, [(0, facts)], 0)
    state.process(0, [(1, facts)], 0)  # the aggregate re-sent its batch after a crash
    assert counts(state)[("all", "all", MIN)] == 2
    state.drop([0])
    restarted = make(SETTINGS, log)
    result = restarted.process(0, [(0, facts), (1, facts)], 0)  # replayed from offset 0
    assert counts(restarted)[("all", "all", MIN)] == 2
    assert sent(result)[("all", "all", MIN)] == 2  # a replay sends its buckets again


def test_records_no_longer_current_are_tombstoned_but_never_the_newest(make: MakeState) -> None:
    log = DictPackLog()
    state = make(SETTINGS, log)
    for offset in range(3):
        state.process(0, [(offset, CustomerFacts(0, [(offset, 0, 1,
                                                      order(f"o{offset}", MIN))]))], 0)
    dead = state.take_dead(0)
    assert dead == [0, 1]
    for seq in dead:
        log.delete(0, seq)
    restored = make(SETTINGS, log).load(0, 0)
    assert set(restored.customers.peek("c1").orders) == {"o0", "o1", "o2"}
    assert restored.applied == 2


def apply(state: CustomerState, seq: int, *facts: tuple[int, Order]) -> None:
    """Batch ``seq`` of partition 0: ``(sign, order)`` facts of aggregate partition 0."""
    state.process(0, [(seq, CustomerFacts(0, [(seq, i, sign, o)
                                              for i, (sign, o) in enumerate(facts)]))], 0)


def tombstone(state: CustomerState, log: DictPackLog) -> list[int]:
    dead = state.take_dead(0)
    for seq in dead:
        log.delete(0, seq)
    return dead


def test_a_deletions_record_goes_once_published_and_no_older_record_is_kept(
        make: MakeState) -> None:
    """Every deleted customer held its record for good: the changelog grew with every
    customer ever deleted (the 20-minute soak with a 5-minute customer retention: 73 ->
    7,985 records held with the customers flat)."""
    log = DictPackLog()
    state = make(SETTINGS, log)
    apply(state, 0, (1, order("o1", MIN)))
    apply(state, 1, (1, order("o2", MIN, customer="c2")))
    apply(state, 2, (-1, order("o1", MIN)))  # c1's only order cancelled: c1 is deleted
    apply(state, 3, (1, order("o3", MIN, customer="c3")))
    assert tombstone(state, log) == [0]
    assert 2 in state.parts[0].refs  # not published yet
    assert {c for _, c, _ in state.take_changes([0], 10, 0)} == {"c1", "c2", "c3"}
    state.published([0])
    assert tombstone(state, log) == []  # record 1 (c2) is older and kept
    apply(state, 4, (1, order("o4", 2 * MIN, customer="c2")))
    assert tombstone(state, log) == [1, 2]
    assert sorted(state.parts[0].refs) == [3, 4]
    restored = make(SETTINGS, log)
    restored.state(0, 0)
    assert names(restored) == {"c2", "c3"}


def test_a_deletion_is_kept_while_an_older_record_holds_the_customer(make: MakeState) -> None:
    """A rebuild would bring the customer back from any older record still kept."""
    log = DictPackLog()
    state = make(SETTINGS, log)
    apply(state, 0, (1, order("o1", MIN)), (1, order("x1", MIN, customer="cx")))
    apply(state, 1, (1, order("o2", 2 * MIN)))
    apply(state, 2, (-1, order("o1", MIN)))
    apply(state, 3, (-1, order("o2", 2 * MIN)))  # c1 deleted; record 0 (cx) still has c1
    state.take_changes([0], 10, 0)
    state.published([0])
    apply(state, 4, (1, order("x2", MIN, customer="cy")))
    assert tombstone(state, log) == [1, 2]
    assert 3 in state.parts[0].guarded
    restored = make(SETTINGS, log)
    restored.state(0, 0)
    assert names(restored) == {"cx", "cy"}
    assert {c for _, c, _ in restored.take_changes([0], 10, 0)} >= {"c1"}  # published again
    restored.published([0])
    apply(restored, 5, (1, order("x3", 3 * MIN, customer="cx")))  # record 0 superseded
    assert tombstone(restored, log) == [0, 3]
    again = make(SETTINGS, log)
    again.state(0, 0)
    assert names(again) == {"cx", "cy"}


def test_retention_waits_for_the_low_watermark_of_every_aggregate_partition(
        make: MakeState) -> None:
    settings = Settings(windows=("1h/1m",), clock="event", customer_retention="1h",
                        partitions=2)
    state = make(settings)
    old = order("o1", 0, customer="quiet")
    new = order("o2", 5 * 60 * MIN, customer="busy")
    # partition 0 of the aggregate read far ahead; partition 1 is still at minute 30
    state.process(0, [(0, CustomerFacts(0, [(1, 0, 1, old), (2, 0, 1, new)],
                                        low_mark=5 * 60 * MIN)),
                      (1, CustomerFacts(1, [], low_mark=30 * MIN))], 0)
    state.sweep(0, 0)  # (expired first-order buckets go: they are judged on stream time)
    assert "quiet" in names(state)
    state.process(0, [(2, CustomerFacts(1, [], low_mark=3 * 60 * MIN))], 0)
    state.sweep(0, 0)
    assert names(state) == {"busy"}
    assert "quiet" in state.parts[0].changed  # published as a deletion
    result = state.process(0, [(3, CustomerFacts(0, [(3, 0, 1, order("o3", 5 * 60 * MIN,
                                                                        "busy"))]))], 0)
    assert result.applied == 3
    restored = make(settings, state.log)
    restored.load(0, 0)
    assert names(restored) == {"busy"}


def test_a_stale_nothing_left_to_read_holds_the_watermark_at_what_it_had_seen(
        make: MakeState) -> None:
    """Live mode: aggregate partition 1 said "everything read" when it had seen minute 30;
    partition 0 has since applied newer marks (everything read again, at minute 300). Until
    partition 1 catches up, its events of the new reads may be on their way: the watermark
    stays at minute 30, not wall clock minus idle_lag."""
    settings = Settings(windows=("1h/1m",), clock="live", partitions=2, idle_lag="30s")
    state = make(settings)
    now = 400 * MIN
    state.process(0, [(0, CustomerFacts(0, low_mark=ALL_READ, seen_time=30 * MIN)),
                      (1, CustomerFacts(1, low_mark=ALL_READ, seen_time=30 * MIN))], now)
    part = state.parts[0]
    assert state.watermark(part, now) == now - 30_000  # both current: wall clock rules
    state.process(0, [(2, CustomerFacts(0, low_mark=ALL_READ, seen_time=300 * MIN))], now)
    assert state.watermark(part, now) == 30 * MIN
    state.process(0, [(3, CustomerFacts(1, low_mark=ALL_READ, seen_time=300 * MIN))], now)
    assert state.watermark(part, now) == now - 30_000


def test_final_costs_are_kept_once_restored_and_mark_their_customers_changed(
        make: MakeState) -> None:
    log = DictPackLog()
    state = make(SETTINGS, log)
    day = SETTINGS.attribution_period_ms
    state.process(0, [(0, CustomerFacts(0, [(1, 0, 1, order("o1", 2 * MIN)),
                                            (1, 1, 1, order("o2", day + MIN, customer="c2"))]))],
                  0)
    state.parts[0].changed.clear()
    cost = CampaignDayCost("cmp", 0, 4.0, 8.0, 2)
    state.process(0, [(1, CustomerFacts(SETTINGS.partitions, costs=[cost]))], 0)
    part = state.parts[0]
    assert part.changed == {"c1"}  # c2's order is on the next day, not final yet
    assert state.cost_of(part, part.customers.peek("c1").orders["o1"]) == 4.0
    assert state.cost_of(part, part.customers.peek("c2").orders["o2"]) is None
    # Sent again after a roll-up crash, and with another cost: the held one is kept.
    state.process(0, [(2, CustomerFacts(SETTINGS.partitions + 1,
                                        costs=[CampaignDayCost("cmp", 0, 9.0, 9.0, 1)]))], 0)
    assert part.costs[("cmp", 0)] == 4.0
    # A record written after the cost came carries it in its order entries.
    state.process(0, [(3, CustomerFacts(0, [(2, 0, 1, order("o3", 3 * MIN))]))], 0)
    assert part.customers.peek("c1").orders["o1"][5] == 4.0
    restored = make(SETTINGS, log)
    again = restored.state(0, 0)
    assert again.costs == {("cmp", 0): 4.0}
    assert restored.cost_of(again, again.customers.peek("c2").orders["o2"]) is None
    assert restored.cost_of(again, again.customers.peek("c1").orders["o1"]) == 4.0
    # The record holding the cost stays while the cost is kept.
    assert 1 not in restored.take_dead(0)


def test_a_restart_publishes_deletions_again(make: MakeState) -> None:
    """A worker may die between writing a deletion to the changelog and to the sinks: the
    next owner publishes it again (a profile no longer held is a deletion)."""
    log = DictPackLog()
    state = make(SETTINGS, log)
    state.process(0, [(0, CustomerFacts(0, [(1, 0, 1, order("o1", MIN)),
                                            (1, 1, 1, order("o2", MIN, customer="c2"))]))], 0)
    state.process(0, [(1, CustomerFacts(0, [(2, 0, -1, order("o1", MIN))]))], 0)
    assert names(state) == {"c2"}
    restored = make(SETTINGS, log)
    restored.state(0, 0)
    assert {c for _, c, _ in restored.take_changes([0], 10, 0)} == {"c1", "c2"}
    assert restored.take_changes([0], 10, 0) == []  # all published
    assert restored.parts[0].customers.peek("c1") is None


def test_a_partition_new_to_the_changelog_publishes_its_changes_once(
        make: MakeState) -> None:
    """Only a partition loaded from changelog records publishes every profile again."""
    state = make()
    facts = [(1, i, 1, order(f"o{i}", MIN, customer=f"c{i}")) for i in range(3)]
    state.process(0, [(0, CustomerFacts(0, facts))], 0)
    assert {c for _, c, _ in state.take_changes([0], 10, 0)} == {"c0", "c1", "c2"}
    state.process(0, [(1, CustomerFacts(0, [(2, 0, 1, order("x", MIN, customer="c3"))]))], 0)
    assert [c for _, c, _ in state.take_changes([0], 10, 0)] == ["c3"]
    assert state.take_changes([0], 10, 0) == []


def test_a_load_republishes_every_profile_a_bounded_number_at_a_time(make: MakeState) -> None:
    log = DictPackLog()
    state = make(SETTINGS, log)
    facts = [(1, i, 1, order(f"o{i}", MIN, customer=f"c{i:02}")) for i in range(25)]
    state.process(0, [(0, CustomerFacts(0, facts))], 0)
    restored = make(SETTINGS, log)
    restored.state(0, 0)
    assert restored.take_changes([0], 10, 0, republish=False) == []  # held back
    first = restored.take_changes([0], 10, 0)
    assert len(first) == 10
    # a customer changed meanwhile goes first, once
    restored.process(0, [(1, CustomerFacts(0, [(2, 0, 1, order("x", MIN, customer="c20"))]))],
                     0)
    second = restored.take_changes([0], 10, 0)
    assert second[0][1] == "c20" and len(second) == 10
    rest = restored.take_changes([0], 10, 0)
    published = [c for _, c, _ in first + second + rest]
    assert sorted(set(published)) == [f"c{i:02}" for i in range(25)]
    assert len(rest) < 10 and restored.take_changes([0], 10, 0) == []
    assert all(record is not None for _, _, record in first + second + rest)


def test_a_change_is_not_held_back_by_another_partitions_republication(
        make: MakeState) -> None:
    """After a restart partition 0 republishes its customers a batch at a time; a new order
    in partition 1 is published in the first batch, not after partition 0's last."""
    log = DictPackLog()
    state = make(SETTINGS, log)
    for r in (0, 1):
        facts = [(1, i, 1, order(f"o{r}-{i}", MIN, customer=f"c{r}-{i:02}"))
                 for i in range(25)]
        state.process(r, [(0, CustomerFacts(0, facts))], 0)
    restored = make(SETTINGS, log)
    for r in (0, 1):
        restored.state(r, 0)
    restored.process(1, [(1, CustomerFacts(0, [(2, 0, 1, order("new", MIN,
                                                                  customer="newcomer"))]))], 0)
    first = restored.take_changes([0, 1], 10, 0)
    assert first[0][:2] == (1, "newcomer") and first[0][2] is not None
    assert [r for r, _, _ in first[1:]] == [0] * 9  # then partition 0's republication
    taken = first
    while batch := restored.take_changes([0, 1], 10, 0):
        taken += batch
    # (the newcomer again too: partition 1's republication passes it)
    assert {(r, c) for r, c, _ in taken} == {(1, "newcomer")} | {
        (r, f"c{r}-{i:02}") for r in (0, 1) for i in range(25)}


def test_a_rebuild_runs_in_steps_and_one_dropped_meanwhile_is_discarded(
        make: MakeState) -> None:
    log = DictPackLog()
    state = make(SETTINGS, log)
    for offset in range(3):
        state.process(0, [(offset, CustomerFacts(0, [(offset, 0, 1, order(
            f"o{offset}", MIN, customer=f"c{offset}"))]))], 0)
    restored = make(SETTINGS, log)
    steps = restored.loading(0, 0)
    next(steps)
    assert 0 not in restored.parts  # not visible before it is whole
    assert restored.rebuilding == {0}
    assert sum(1 for _ in steps) >= 2  # a step per changelog record
    assert restored.rebuilding == set()
    assert names(restored) == {"c0", "c1", "c2"}
    assert list(restored.loading(0, 0)) == []  # held: nothing to do
    again = make(SETTINGS, log)
    steps = again.loading(0, 0)
    next(steps)
    again.drop([0])  # revoked while rebuilding
    list(steps)
    assert 0 not in again.parts
    assert again.expected(0, 0) == 3  # a later load starts afresh


def test_a_batch_of_low_marks_only_is_recorded_so_a_new_owner_expects_the_next_offset(
        make: MakeState) -> None:
    """A batch that changes only low marks still writes a header record with them: a worker
    that takes the partition over rebuilds the low marks and expects the offset after the
    last batch its previous owner committed, so it never has to seek back over it."""
    settings = Settings(windows=("1h/1m",), clock="event", partitions=2)
    state = make(settings)
    state.process(0, [(0, CustomerFacts(0, [(1, 0, 1, order("o1", 0))], low_mark=10 * MIN))],
                  0)
    state.process(0, [(1, CustomerFacts(0, [], low_mark=20 * MIN)),
                      (2, CustomerFacts(1, [], low_mark=30 * MIN))], 0)
    successor = make(settings, state.log)
    successor.load(0, 0)
    assert successor.expected(0, 0) == 3
    assert successor.parts[0].low_marks == {0: 20 * MIN, 1: 30 * MIN}
    assert names(successor) == {"c1"}


# -- SPEC §8 retention shorter than a customer's gaps: spells ----------------------------------
SPELLS = Settings(windows=("1h/1m",), clock="event", customer_retention="40m")


def facts(offset: int, *events: Order | Survey, low_mark: int | None = None) -> tuple[
        int, CustomerFacts]:
    """One batch of aggregate partition 0 (its only one), its low mark the newest event's."""
    newest = max((e.ts for e in events), default=0)
    return offset, CustomerFacts(0, [(offset, i, 1, e) for i, e in enumerate(events)],
                                 low_mark=newest if low_mark is None else low_mark,
                                 seen_time=newest if low_mark is None else low_mark)


def test_the_first_order_of_every_spell_is_a_new_customer(make: MakeState) -> None:
    """Orders 30 minutes apart with a 40-minute retention are one spell; a gap of 50 starts
    another (the profile expired in between): its first order counts as a new customer."""
    state = make(SPELLS.model_copy(update={"partitions": 1}))
    state.process(0, [facts(0, order("o1", 0), order("o2", 30 * MIN), order("o3", 80 * MIN))],
                  0)
    assert counts(state)[("all", "all", 0)] == 1
    assert ("all", "all", 30 * MIN) not in counts(state)
    assert counts(state)[("all", "all", 80 * MIN)] == 1
    # an order at minute 55 joins the spells: o3 is no longer a first order
    result = state.process(0, [facts(1, order("o4", 55 * MIN))], 0)
    assert sent(result)[("all", "all", 80 * MIN)] == 0
    assert counts(state)[("all", "all", 0)] == 1 and len(counts(state)) == 4  # 4 rows, 1 first


def test_a_fact_joining_a_deleted_profiles_spell_brings_it_back_whole(
        make: MakeState) -> None:
    """The profile of an order at minute 100 is deleted once the watermark passes minute
    140 (40-minute retention); an order at minute 135 read after that (not late: the
    lateness bound is 1h05m) joins its spell. Whether or not the sweep ran in between, the
    customer's profile then holds both orders and one new customer: its facts are kept
    until no fact can join them any more."""
    settings = SPELLS.model_copy(update={"partitions": 1})
    outcomes = []
    for sweep in (False, True):
        state = make(settings)
        state.process(0, [facts(0, order("o1", 100 * MIN))], 0)
        state.process(0, [facts(1, low_mark=145 * MIN)], 0)  # a spend moved time on
        if sweep:
            state.sweep(0, 0)
            assert [(c, r) for _, c, r in state.take_changes([0], 10, 0)] == [("c1", None)]
        state.process(0, [facts(2, order("o2", 135 * MIN), low_mark=145 * MIN)], 0)
        taken = state.take_changes([0], 10, 0)
        assert [(c, sorted(r.orders)) for _, c, r in taken if r is not None] == [
            ("c1", ["o1", "o2"])]
        outcomes.append(counts(state))
    assert outcomes[0] == outcomes[1]
    assert sum(n for (d, _, _), n in outcomes[0].items() if d == "all") == 1


def test_a_profile_past_the_retention_is_deleted_but_its_facts_kept_for_the_lateness_bound(
        make: MakeState) -> None:
    """Past the retention the profile is published as deleted (once); its facts go only
    when no fact still to be accepted can join them (retention + largest window + grace)."""
    settings = SPELLS.model_copy(update={"partitions": 1})
    state = make(settings)
    state.process(0, [facts(0, order("o1", 0))], 0)
    state.take_changes([0], 10, 0)
    state.process(0, [facts(1, low_mark=50 * MIN)], 0)
    state.sweep(0, 0)
    assert state.take_changes([0], 10, 0) == [(0, "c1", None)]
    state.sweep(0, 0)
    assert state.take_changes([0], 10, 0) == []  # published once
    assert names(state) == {"c1"}  # kept: an order at minute 1..40 may still come
    state.process(0, [facts(2, low_mark=40 * MIN + 65 * MIN + 1)], 0)
    state.sweep(0, 0)
    assert names(state) == set()


def test_the_facts_of_spells_nothing_can_join_any_more_are_dropped(make: MakeState) -> None:
    """A customer returning after every retention keeps only the spells a fact still to be
    accepted could join."""
    state = make(SPELLS.model_copy(update={"partitions": 1}))
    for k in range(6):  # an order every 90 minutes
        state.process(0, [facts(k, order(f"o{k}", k * 90 * MIN))], 0)
    record = state.parts[0].customers.peek("c1")
    assert record is not None
    # when the last order came the watermark was at minute 360 (a batch's low mark holds
    # after its facts): the spells that ended before 360 - 40 - 65 are gone
    assert sorted(record.orders) == ["o3", "o4", "o5"]
    # dropping a spell takes back no new customer (every count until the sweep forgets it)
    assert sum(n for (d, _, _), n in counts(state).items() if d == "all") == 6


def test_a_batchs_low_mark_holds_only_after_its_facts(make: MakeState) -> None:
    """An aggregate batch of a backlog carries facts hours older than the low mark it ends
    with. Judged by that mark while its facts were applied, the spell of an order at minute
    60 was dropped when an order at 140 came, before an order at 100 of the same batch joined
    them (40-minute retention): the profile lost its first order."""
    state = make(SPELLS.model_copy(update={"partitions": 1}))
    state.process(0, [facts(0, order("o1", 60 * MIN))], 0)
    state.process(0, [facts(1, order("o2", 140 * MIN), order("o3", 100 * MIN),
                            low_mark=300 * MIN)], 0)
    record = state.parts[0].customers.peek("c1")
    assert record is not None and sorted(record.orders) == ["o1", "o2", "o3"]
    assert sum(n for (d, _, _), n in counts(state).items() if d == "all") == 1

"""Property: whatever the partitions, batching, duplicates, cancellations, out-of-order
events and crashes, every published row equals the reference for its own bounds."""

from __future__ import annotations

import math
import random
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pipeline_sim import Sim

from kpistream import reference
from kpistream.contracts.records import Event, Order, Spend, Survey
from kpistream.kpi.formulas import KPI_FIELDS, SUM_FIELDS
from kpistream.settings import Settings
from kpistream.state.buckets import RowId
from kpistream.state.rocks import RocksCustomerMap, RocksIdMap, RocksMemory

BASE = 1_800_000_000_000
MIN = 60_000
# Attribution "days" of 30 minutes, so streams of a few hours have final days (SPEC §8);
# the detector's baseline in the 2h window (its minutes in 1h/1m).
SETTINGS = Settings(windows=("5m/10s", "1h/1m", "2h/15m"), clock="event", grace="5m",
                    attribution_period="30m", alert_baseline_window="2h")

# A pipeline run draws a random choice at every step, and even an empty stream takes steps
# (every edge tells its marks): the examples are large and slow by nature.
PIPELINE_RUNS = [HealthCheck.too_slow, HealthCheck.data_too_large,
                 HealthCheck.large_base_example]

channels = st.sampled_from(["search", "social", "email"])
# Names hold any character (SPEC §1): the separator of the allocation groups too.
campaigns = st.sampled_from(["c1", "c2", "c\x1f3", "", "unattributed"])
segments = st.sampled_from(["new", "v\x1fip", "unknown"])
customers = st.sampled_from(["cu1", "cu2", "cu3", "cu4"])
amounts = st.floats(min_value=0, max_value=500, allow_nan=False).map(lambda a: round(a, 2))


def times(spread_min: int) -> st.SearchStrategy[int]:
    return st.integers(BASE, BASE + spread_min * MIN)


def events(spread_min: int) -> st.SearchStrategy[Event]:
    ts = times(spread_min)
    order_ids = st.sampled_from([f"o{i}" for i in range(25)])
    placed = st.builds(Order, order_ids, ts, st.just("placed"), customers, amounts,
                       channels, campaigns, segments)
    cancelled = st.builds(Order, order_ids, ts, st.just("cancelled"), st.none(), st.none(),
                          st.just("unknown"), st.just("unattributed"), st.just("unknown"))
    spend = st.builds(Spend, st.sampled_from([f"s{i}" for i in range(20)]), ts, campaigns,
                      channels, amounts)
    survey = st.sampled_from(["nps", "ces", "csat"]).flatmap(lambda kind: st.builds(
        Survey, st.sampled_from([f"r{i}" for i in range(20)]), ts, st.just(kind),
        st.integers(*{"nps": (0, 10), "ces": (1, 7), "csat": (1, 5)}[kind]),
        st.none() | customers,
        channels, campaigns, segments, st.one_of(st.none(), st.sampled_from(["o1", "o2"]))))
    return st.one_of(placed, placed, cancelled, spend, survey)


def assert_rows_match(sim: Sim, outcome: reference.Outcome) -> None:
    """Every published row equals the reference at its bounds, the bounds are those of the
    stream time (latest non-late event), and no expected row is missing."""
    rows = sim.rows()
    judged = outcome.accepted + outcome.duplicates + outcome.unknown_orders
    if not judged:
        assert not rows
        return
    stream_time = max(e.ts for e in judged)
    for spec in SETTINGS.window_specs:
        start, end = reference.window_bounds(stream_time, spec.size_ms, spec.step_ms)
        expected_rows = reference.expected_rows(outcome, window_start=start, window_end=end)
        published = {(d, g): m for (w, d, g), m in rows.items() if w == spec.name}
        assert set(published) == set(expected_rows), spec.name
        for (dimension, group), message in published.items():
            assert (message["window_start"], message["window_end"]) == (start, end)
            expected = reference.expected_row_kpis(outcome, dimension=dimension, group=group,
                                                   window_start=start, window_end=end)
            assert message.get("spend_allocated") is (True if dimension == "segment" else None)
            for name in KPI_FIELDS:
                got, want = message.get(name), expected.get(name)
                if want is None:
                    assert got is None, (spec.name, dimension, group, name, got)
                else:
                    assert got is not None and math.isclose(
                        got, want, rel_tol=1e-9, abs_tol=1e-9), (
                        spec.name, dimension, group, name, got, want)


def assert_profiles_match(sim: Sim, outcome: reference.Outcome) -> None:
    """Every profile equals the reference's, attribution costs included: after the final
    sweeps, the low watermark is the stream time (everything read, event clock)."""
    sim.settle()
    published = sim.profiles()
    judged = outcome.accepted + outcome.duplicates + outcome.unknown_orders
    watermark = max((e.ts for e in judged), default=0)
    expected = reference.expected_profiles(
        outcome, watermark_ms=watermark, retention_ms=SETTINGS.retention_ms,
        period_ms=SETTINGS.attribution_period_ms)
    assert set(published) == set(expected)
    for customer, want in expected.items():
        got = published[customer]
        assert set(got) == set(want), (customer, got, want)
        for name, value in want.items():
            if isinstance(value, float):
                assert math.isclose(got[name], value, rel_tol=1e-9, abs_tol=1e-9), name
            else:
                assert got[name] == value, (customer, name, got[name], value)


def expected_counts(outcome: reference.Outcome) -> dict[str, int]:
    counts = {"accepted": len(outcome.accepted), "duplicate": len(outcome.duplicates),
              "invalid": len(outcome.unknown_orders), "late": len(outcome.late)}
    return {name: n for name, n in counts.items() if n}


def spread(sim: Sim, evs: list[Event], rng: random.Random) -> None:
    """Produce ``evs`` in order, each to a random raw partition (a producer without keys)."""
    for event in evs:
        sim.append(event, rng.randrange(sim.raw_partitions))


def simulation(partitions: int, raw_partitions: int, rng: random.Random) -> Sim:
    """A pipeline whose raw partitions are read by one edge or several (workers), each
    telling the aggregate of its own partitions only."""
    return Sim(SETTINGS, partitions=partitions, raw_partitions=raw_partitions,
               edges=rng.randint(1, raw_partitions))


@settings(max_examples=150, deadline=None,
          suppress_health_check=PIPELINE_RUNS)
@given(st.lists(events(90), max_size=80), st.integers(1, 4), st.integers(1, 3),
       st.randoms(use_true_random=False))
def test_rows_equal_reference_under_partitions_and_batches(
        evs: list[Event], partitions: int, raw_partitions: int, rng: random.Random) -> None:
    """The reference judges the events in the order the edge read them (each raw partition
    in order, the partitions interleaved as its batches took them)."""
    sim = simulation(partitions, raw_partitions, rng)
    spread(sim, evs, rng)
    sim.run_all(rng)
    outcome = reference.classify(sim.read, retention_ms=SETTINGS.retention_ms)
    assert_rows_match(sim, outcome)
    assert_profiles_match(sim, outcome)


@settings(max_examples=150, deadline=None,
          suppress_health_check=PIPELINE_RUNS)
@given(st.lists(events(90), max_size=80), st.integers(1, 4), st.integers(1, 3),
       st.randoms(use_true_random=False))
def test_duplicated_stream_and_crashes_give_the_same_rows(
        evs: list[Event], partitions: int, raw_partitions: int, rng: random.Random) -> None:
    """Crashes of the edge (re-deliveries), the aggregate and the roll-up stage, each losing
    part of what was in flight: the rows and the outcome counts stay exact."""
    sim = simulation(partitions, raw_partitions, rng)
    spread(sim, [copy for event in evs for copy in (event, event)], rng)  # each sent twice
    sim.run_all(rng, crash_rate=0.3)
    outcome = reference.classify(sim.read, retention_ms=SETTINGS.retention_ms)
    assert_rows_match(sim, outcome)
    assert_profiles_match(sim, outcome)
    expected = expected_counts(outcome)
    assert sim.counts() == expected
    assert sim.exported_counts() == expected


@settings(max_examples=40, deadline=None, suppress_health_check=PIPELINE_RUNS)
@given(st.lists(events(90), max_size=80), st.integers(1, 3), st.randoms(use_true_random=False))
def test_crashes_give_the_same_rows_and_profiles_with_state_on_disk(
        evs: list[Event], partitions: int, rng: random.Random) -> None:
    """The same with customers and ids in RocksDB, rebuilt at every reload."""
    with tempfile.TemporaryDirectory() as root:
        memory = RocksMemory(8)
        opened: list[RocksCustomerMap | RocksIdMap] = []

        def store(kind: type[RocksCustomerMap] | type[RocksIdMap], name: str) -> Any:
            opened.append(kind(Path(root) / name, memory))
            return opened[-1]

        try:
            sim = Sim(SETTINGS, partitions=partitions,
                      customer_maps=lambda r: store(RocksCustomerMap, f"c{r}"),
                      id_maps=lambda p: store(RocksIdMap, f"i{p}"))
            doubled = [copy for event in evs for copy in (event, event)]
            for event in doubled:
                sim.append(event)
            sim.run_all(rng, crash_rate=0.3)
            outcome = reference.classify(evs, retention_ms=SETTINGS.retention_ms)
            assert_rows_match(sim, outcome)
            assert_profiles_match(sim, outcome)
        finally:
            # A database dropped after its directory is gone waits on RocksDB's error
            # recovery (seconds per example): close them while the directory exists.
            for each in opened:
                each.close()


@settings(max_examples=150, deadline=None, suppress_health_check=PIPELINE_RUNS)
@given(st.lists(events(60), min_size=1, max_size=40), st.lists(events(60), min_size=1,
                                                                max_size=40),
       st.integers(2, 4), st.integers(1, 3), st.randoms(use_true_random=False))
def test_the_low_watermark_never_passes_an_event_on_its_way(
        first: list[Event], second: list[Event], partitions: int, raw_partitions: int,
        rng: random.Random) -> None:
    """A stream read to its end, then more of it (a replay produced in two parts): while
    the aggregate partitions apply the second part at their own pace, no roll-up partition
    holds a period complete (SPEC §3) that an event still on its way falls in. The first
    part's "nothing left to read" holds only as of what a partition had seen: the alert
    detector judged minutes before their data."""
    sim = simulation(partitions, raw_partitions, rng)
    first_end = max(e.ts for e in first)
    spread(sim, sorted(first, key=lambda e: e.ts), rng)
    sim.run_all(rng)
    later = [event._replace(ts=first_end + event.ts - BASE) for event in second]
    spread(sim, sorted(later, key=lambda e: e.ts), rng)  # produced in time order

    def watermark_behind_events_in_flight() -> None:
        pending = [e.ts for e in sim.in_flight()]
        if not pending:
            return
        for q in range(partitions):
            if sim.state.loaded(q):
                assert sim.state.complete_time(q, sim.now_ms) <= min(pending), q

    sim.run_all(rng, check=watermark_behind_events_in_flight)


@settings(max_examples=150, deadline=None, suppress_health_check=PIPELINE_RUNS)
@given(st.lists(events(400), max_size=80), st.randoms(use_true_random=False))
# Found by a CI run: the cancellation of an order just expired is an unknown order, and a new
# order of the same id and time that comes after it is retracted, as after a cancellation
# read before any order of its id (whether or not the id sweep forgot the expired order).
@example([Order("o0", BASE, "placed", "cu1", 0.0, "search", "c1", "new"),
          Order("o0", BASE + 7_500_001, "cancelled", None, None, "unknown", "unattributed",
                "unknown"),
          Order("o0", BASE + 7_500_001, "placed", "cu1", 0.0, "search", "c1", "new")],
         random.Random(0))
def test_late_events_match_reference_on_one_partition(evs: list[Event],
                                                      rng: random.Random) -> None:
    """Over 400 minutes with a 2h+5m retention, many events are late; with one partition the
    engine's stream time is the reference's."""
    sim = Sim(SETTINGS, partitions=1)
    for event in evs:
        sim.append(event)
    sim.run_all(rng, crash_rate=0.2)
    outcome = reference.classify(evs, retention_ms=SETTINGS.retention_ms)
    late = [e for outcome_name, e in sim.judged() if outcome_name == "late"]
    assert sorted(map(repr, late)) == sorted(map(repr, outcome.late))
    assert_rows_match(sim, outcome)
    # Over 400 minutes many 30-minute attribution days become final: their costs (and
    # cancellations of orders already expired) match the reference.
    assert_profiles_match(sim, outcome)


@settings(max_examples=150, deadline=None, suppress_health_check=PIPELINE_RUNS)
@given(st.lists(events(400), max_size=80), st.integers(2, 4), st.sampled_from([0, 2_000]),
       st.randoms(use_true_random=False))
# An order; in one edge batch, a spend past the order's retention, routed to the other
# partition, then the order's cancellation: stream time as read had expired the order.
@example([Order("o0", BASE, "placed", "cu1", 10.0, "search", "c1", "new"),
          Spend("s0", BASE + 135 * MIN, "c1", "search", 1.0),
          Order("o0", BASE + 20 * MIN, "cancelled", None, None, "unknown", "unattributed",
                "unknown")], 2, 0, random.Random(0))
def test_late_and_expired_events_match_reference_whatever_the_routing(
        evs: list[Event], partitions: int, wall_step_ms: int, rng: random.Random) -> None:
    """Over 400 minutes with a 2h+5m retention, on several internal partitions, with
    re-deliveries and crashes: late events, duplicates and cancellations of expired orders
    are judged as the reference judges them in the order read, although the events that
    moved stream time on went to other partitions (often in the same edge batch). With a
    clock that moves, attribution days become final only once the watermark has stood for
    ``watermark_settle``, while buckets expire at the watermark itself (the roll-up here
    does not hold them for the detector, as a worker without alerts does)."""
    sim = Sim(SETTINGS, partitions=partitions, wall_step_ms=wall_step_ms)
    for event in evs:
        sim.append(event)
    sim.run_all(rng, crash_rate=0.2)
    outcome = reference.classify(evs, retention_ms=SETTINGS.retention_ms)
    judged = sim.judged()
    for name, expected in (("late", outcome.late), ("duplicate", outcome.duplicates),
                           ("unknown_order", outcome.unknown_orders)):
        got = [e for outcome_name, e in judged if outcome_name == name]
        assert sorted(map(repr, got)) == sorted(map(repr, expected)), name
    assert sim.counts() == sim.exported_counts() == expected_counts(outcome)
    assert_rows_match(sim, outcome)
    assert_profiles_match(sim, outcome)


@settings(max_examples=150, deadline=None,
          suppress_health_check=PIPELINE_RUNS)
@given(st.lists(events(400), max_size=80), st.sampled_from(["10m", "40m", "3h"]),
       st.integers(1, 4), st.randoms(use_true_random=False))
def test_customers_returning_after_their_retention_match_reference(
        evs: list[Event], customer_retention: str, partitions: int,
        rng: random.Random) -> None:
    """SPEC §8 retention shorter than the customers' gaps, over 400 minutes with re-deliveries
    and crashes: a customer's profile is its last spell, the first order of every spell
    counts in new_customers, and profiles older than the retention at the end are gone,
    whatever the arrival order and whenever the sweeps ran (they run at random steps here).
    (One raw partition, as the other 400-minute tests: with several, lateness is held back
    to the slowest one, which the reference's stream time does not model.)"""
    custom = SETTINGS.model_copy(update={"customer_retention": customer_retention})
    sim = Sim(custom, partitions=partitions)
    for event in evs:
        sim.append(event)
    sim.run_all(rng, crash_rate=0.2)
    outcome = reference.classify(sim.read, retention_ms=SETTINGS.retention_ms,
                                 customer_retention_ms=custom.customer_retention_ms)
    assert_rows_match(sim, outcome)
    assert_profiles_match(sim, outcome)


@settings(max_examples=150, deadline=None, suppress_health_check=PIPELINE_RUNS)
@given(st.lists(events(90), min_size=1, max_size=60), st.integers(1, 4), st.integers(1, 3),
       st.randoms(use_true_random=False))
def test_the_detectors_minutes_are_final_once_the_watermark_passes_them(
        evs: list[Event], partitions: int, raw_partitions: int, rng: random.Random) -> None:
    """SPEC §6, the same episodes whatever the arrival: whenever a roll-up partition holds a
    minute complete, its orders as the detector reads them (``orders + cancel_shift``) are
    already those of the whole stream (``reference.detector_minutes``, of the events in the
    order read): a cancellation read later, however much later, changes no minute the
    detector may have judged. (Each raw partition in time order: the watermark's promise is
    about partitions read in order, SPEC §3.)"""
    minute_window = next(s.name for s in SETTINGS.window_specs if s.step_ms == MIN)
    orders, shift = SUM_FIELDS.index("orders"), SUM_FIELDS.index("cancel_shift")
    sim = simulation(partitions, raw_partitions, rng)
    spread(sim, sorted(evs, key=lambda e: e.ts), rng)
    held: list[tuple[RowId, int, float]] = []  # each complete minute's value, as held then

    def complete_minutes() -> None:
        for q in range(partitions):
            if not sim.state.loaded(q):
                continue
            complete = sim.state.complete_time(q, sim.now_ms)
            for row, windows in sim.state.cache.get(q, {}).items():
                if row[0] not in ("all", "channel", "campaign") or minute_window not in windows:
                    continue
                for bucket, sums in windows[minute_window].totals.items():
                    if bucket + MIN <= complete:
                        held.append((row, bucket, sums[orders] + sums[shift]))

    sim.run_all(rng, check=complete_minutes)
    complete_minutes()
    # the whole stream as read (the raw partitions' interleaving decides which of two events
    # of one id came first)
    want = reference.detector_minutes(reference.classify(sim.read,
                                                         retention_ms=SETTINGS.retention_ms))
    for row, bucket, value in held:
        assert value == want.get(row, {}).get(bucket, [0, 0.0])[0], (row, bucket)

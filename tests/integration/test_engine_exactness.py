"""Issue 3 acceptance, on real Kafka and Redis: ~50,000 generated events over two hours of
event time; every Redis row equals the reference for its own bounds, whatever the number of
workers, duplicates, a SIGKILL mid-stream, or replay versus live clock."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest
from harness import (
    Deployment,
    assert_profiles_exact,
    changelog_topics,
    committed_offsets,
    end_offsets,
    expected_profiles,
    last_messages,
    normalise,
    row_mismatches,
    samples,
    scrape,
    wait_for_rows,
)
from test_ingest import produce_raw

from kpistream import reference
from kpistream.generator.traffic import (
    HOUR_MS,
    TrafficConfig,
    TrafficGenerator,
)

pytestmark = pytest.mark.integration
SETTLE_S = 150.0
DAY_MS = 24 * HOUR_MS


def records(start_ms: int, seed: int = 7) -> list:
    config = TrafficConfig(seed=seed, start_ms=start_ms, duration_ms=2 * HOUR_MS,
                           orders_per_hour=15_000, campaigns=40, survey_ratio=0.4,
                           cancel_ratio=0.03, delayed_ratio=0.02)
    return list(TrafficGenerator(config).records())


def live_start() -> int:
    now = int(time.time() * 1000)
    return now - 2 * HOUR_MS - 60_000  # the stream ends about a minute ago


def run(dep: Deployment, recs: list, workers: int, now_ms: int, keyed: bool = True) -> dict:
    outcome = reference.classify(normalise(dep.settings, recs, now_ms),
                                 retention_ms=dep.settings.retention_ms)
    for _ in range(workers):
        dep.start_worker()
    dep.produce(recs, keyed=keyed)
    rows = wait_for_rows(dep.settings.redis_url.get_secret_value(), dep.settings.redis_prefix,
                         outcome, SETTLE_S, alive=lambda: assert_alive(dep))
    problems = row_mismatches(rows, outcome)
    assert not problems, f"{len(problems)} mismatches, e.g. {problems[:10]}"
    assert_profiles_exact(dep.settings, outcome)
    return rows


def assert_alive(dep: Deployment) -> None:
    for proc in dep.workers:
        assert proc.poll() is None, f"worker {proc.pid} exited with {proc.returncode}"


def written(dep: Deployment) -> int:
    """Records on the internal and changelog topics (end offsets summed)."""
    settings = dep.settings
    topics = [settings.topic_events, settings.topic_rollup, settings.topic_customers,
              *changelog_topics(settings)]
    return sum(end_offsets(dep.bootstrap, topics).values())


def test_one_worker_rows_equal_reference(deployment) -> None:
    """Also: Kafka records written per input event (internal topics and changelogs)."""
    recs = records(live_start())
    assert len(recs) > 45_000
    dep = deployment()
    rows = run(dep, recs, workers=1, now_ms=int(time.time() * 1000))
    assert {d for (_, d, _) in rows} == {"all", "channel", "campaign", "segment"}
    per_event = written(dep) / len(recs)
    assert per_event > 0  # the topics were found and written
    assert per_event <= 0.5, f"{per_event:.3f} records written per input event"


def test_three_workers_rows_equal_reference(deployment) -> None:
    run(deployment(), records(live_start()), workers=3, now_ms=int(time.time() * 1000))


def test_input_topics_of_their_own_partition_counts_unkeyed_rows_equal_reference(
        deployment) -> None:
    """SPEC §1 and §4: rows do not depend on how many partitions the topics have or on
    record keys. The input topics exist before kpistream's (a producer's cluster made them):
    orders with twice the internal topics' partitions, ad spend with one, surveys with
    three. Records carry no key, so the producer spreads them at random: an order, its
    cancellation and its duplicates land in different partitions. Two workers."""
    dep = deployment(partitions={"topic_orders": 12, "topic_ad_spend": 1,
                                 "topic_surveys": 3})
    ends = end_offsets(dep.bootstrap, list(dep.settings.input_topics))
    assert sorted(ends) == sorted(
        [(dep.settings.topic_orders, p) for p in range(12)]
        + [(dep.settings.topic_ad_spend, 0)]
        + [(dep.settings.topic_surveys, p) for p in range(3)])
    recs = records(live_start())
    recs += [recs[i] for i in range(0, len(recs), 40)]  # duplicates, later in the stream
    run(dep, recs, workers=2, now_ms=int(time.time() * 1000), keyed=False)
    ends = end_offsets(dep.bootstrap, [dep.settings.topic_orders])
    assert all(ends.values()), f"an orders partition got nothing: {ends}"


def test_every_event_twice_rows_equal_reference(deployment) -> None:
    recs = records(live_start())
    doubled = [r for rec in recs for r in (rec, rec)]
    run(deployment(), doubled, workers=1, now_ms=int(time.time() * 1000))


class CounterWatch:
    """Scrapes workers' ``kpistream_events_total`` every half second and records every
    series that fell on a running worker (Prometheus reads a fall as a counter reset)."""

    def __init__(self, ports: list[int]) -> None:
        self.ports, self.falls = ports, []  # type: list[int], list[str]
        self.last: dict[tuple[int, tuple[tuple[str, str], ...]], float] = {}
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.wait(0.5):
            for port in list(self.ports):
                try:
                    text = scrape(port)
                except OSError:
                    continue  # not up yet, or gone
                for labels, value in samples(text, "kpistream_events_total"):
                    key = (port, tuple(sorted(labels.items())))
                    if value < self.last.get(key, 0):
                        self.falls.append(f"{key}: {self.last[key]} -> {value}")
                    self.last[key] = value

    def stop(self) -> list[str]:
        self.stopped.set()
        self.thread.join()
        return self.falls


def test_sigkill_mid_stream_rows_counters_and_progress_exact(deployment) -> None:
    """Three workers, one SIGKILLed mid-stream and replaced, duplicates and bad records in
    the input: rows equal the reference; ``kpistream_events_total`` summed over the workers
    equals the reference's classification, and no series of it ever fell on a running
    worker through the rebalances; within 10 s every consumer group has committed the end
    offsets of every input and internal partition, and the lag gauge reads 0."""
    dep = deployment()
    settings = dep.settings
    recs = records(live_start())
    recs += [recs[i] for i in range(0, len(recs), 40)]  # duplicates, later in the stream
    now = int(time.time() * 1000)
    outcome = reference.classify(normalise(settings, recs, now),
                                 retention_ms=settings.retention_ms)
    victim, _ = dep.start_worker()
    ports = [dep.start_worker()[1], dep.start_worker()[1]]
    watch = CounterWatch(ports)
    half = len(recs) // 2
    dep.produce(recs[:half])
    bad = [(settings.topic_orders, b"{not json")] * 150
    asyncio.run(produce_raw(dep.bootstrap, bad))
    time.sleep(8)  # let the workers get well into the first half
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    dep.workers.remove(victim)
    dep.produce(recs[half:])
    ports.append(dep.start_worker()[1])
    rows = wait_for_rows(settings.redis_url.get_secret_value(), settings.redis_prefix,
                         outcome, SETTLE_S, alive=lambda: assert_alive(dep))
    problems = row_mismatches(rows, outcome)
    assert not problems, f"{len(problems)} mismatches, e.g. {problems[:10]}"
    processed_at = time.monotonic()

    inputs = list(settings.input_topics)
    internal = [settings.topic_events, settings.topic_rollup, settings.topic_customers]
    groups = [(settings.edge_group_id, inputs), (settings.app_id, internal)]
    while True:
        behind = {}
        for group, topics in groups:
            ends = end_offsets(dep.bootstrap, topics)
            assert len(ends) == len(topics) * settings.partitions
            done = committed_offsets(dep.bootstrap, group, topics)
            behind.update({tp: end - done.get(tp, -1) for tp, end in ends.items()
                           if done.get(tp, -1) != end})
        if not behind or time.monotonic() - processed_at > 10:
            break
        time.sleep(0.5)
    assert not behind, f"not committed within 10 s: {behind}"
    while True:
        texts = [scrape(port) for port in ports]
        lags = [(labels, value) for text in texts for labels, value in
                samples(text, "kpistream_consumer_lag")]
        lagging = [x for x in lags if x[1] != 0]
        if not lagging or time.monotonic() - processed_at > 10:
            break
        time.sleep(0.5)
    assert {labels["group"] for labels, _ in lags} == {settings.app_id, settings.edge_group_id}
    assert lagging == [], "kpistream_consumer_lag not 0 within 10 s"

    counts: dict[str, float] = {}
    for text in texts:
        for labels, value in samples(text, "kpistream_events_total"):
            counts[labels["outcome"]] = counts.get(labels["outcome"], 0) + value
    expected = {"accepted": len(outcome.accepted), "duplicate": len(outcome.duplicates),
                "invalid": len(outcome.unknown_orders) + len(bad), "late": len(outcome.late)}
    assert {k: v for k, v in counts.items() if v} == {k: v for k, v in expected.items() if v}
    assert watch.stop() == []
    assert_profiles_exact(settings, outcome)


def test_replay_mode_on_old_data_gives_the_live_rows(deployment) -> None:
    """The same stream shifted three days back, in replay mode: rows anchored at the stream's
    own time, equal to what live mode computes over the same (unshifted) events."""
    live_recs = records(live_start())
    shift = 3 * DAY_MS
    old_recs = [type(r)(r.kind, shifted(r.value, shift)) for r in live_recs]
    dep = deployment(KPISTREAM_CLOCK="event")
    now = int(time.time() * 1000)
    old_outcome = reference.classify(normalise(dep.settings, old_recs, now),
                                     retention_ms=dep.settings.retention_ms)
    rows = run(dep, old_recs, workers=1, now_ms=now)
    t = max(e.ts for e in old_outcome.accepted)
    live_outcome = reference.classify(normalise(dep.settings, live_recs, now),
                                      retention_ms=dep.settings.retention_ms)
    for spec in dep.settings.window_specs:
        start, end = reference.window_bounds(t, spec.size_ms, spec.step_ms)
        for (window, dimension, group), fields in rows.items():
            if window != spec.name:
                continue
            assert (int(fields["window_start"]), int(fields["window_end"])) == (start, end)
            live = reference.expected_row(live_outcome, dimension=dimension, group=group,
                                          window_start=start + shift, window_end=end + shift)
            assert int(fields["orders"]) == live.orders
            assert float(fields["revenue"]) == pytest.approx(live.revenue, rel=1e-9)


def shifted(value: dict, shift: int) -> dict:
    from kpistream.generator.traffic import event_time_ms, iso

    ts = event_time_ms(value) - shift
    return {**value, "ts": ts if isinstance(value["ts"], int) else iso(ts)}


def test_profiles_past_retention_are_deleted_and_tombstoned(deployment) -> None:
    """customer_retention 30m on a 2-hour stream of the generator's customers, who return
    at random: a customer whose last activity is more than 30 minutes before the end is
    deleted from Redis (hash and rankings) and tombstoned on customer-profiles; one who
    returned after more than 30 minutes has the profile of its last spell only, and counts
    as a new customer again in the rows; every profile and row equals the reference (SPEC
    §8 retention; two workers, event clock: the profiles deleted at the end are those of the
    stream's own time, not of how long after it the test looks)."""
    dep = deployment(KPISTREAM_CLOCK="event", KPISTREAM_CUSTOMER_RETENTION="30m")
    settings = dep.settings
    assert settings.customer_retention_ms == 30 * 60_000
    recs = records(live_start(), seed=11)
    now = int(time.time() * 1000)
    outcome = reference.classify(normalise(settings, recs, now),
                                 retention_ms=settings.retention_ms,
                                 customer_retention_ms=settings.customer_retention_ms)
    spells = reference.spells(outcome)
    expected = expected_profiles(settings, outcome)
    deleted = set(spells) - set(expected)
    returned = {c for c, split in spells.items() if len(split) > 1 and c in expected}
    assert len(deleted) > 100 and len(returned) > 20  # the cases this test is about
    dep.start_worker()
    dep.start_worker()
    dep.produce(recs)
    rows = wait_for_rows(settings.redis_url.get_secret_value(), settings.redis_prefix,
                         outcome, SETTLE_S, alive=lambda: assert_alive(dep))
    problems = row_mismatches(rows, outcome)
    assert not problems, f"{len(problems)} mismatches, e.g. {problems[:10]}"
    profiles = assert_profiles_exact(settings, outcome, expected, timeout_s=SETTLE_S)
    assert not deleted & set(profiles)
    last = last_messages(settings.kafka_bootstrap, settings.topic_customer_profiles)
    assert deleted <= set(last)
    assert all(last[c] is None for c in deleted)  # tombstoned

"""Issue 11's long fault variants, run by `make soak` (not by `make test`):

- five SIGKILLs of random workers (of three) during a 200,000-event stream;
- a 20-minute soak of live traffic at about half of one worker's maximum rate, with short
  windows and a short customer retention so that retention is reached early: RSS and state
  sizes flat after the first retention period (growth under 10%), consumer lag bounded, rows
  equal to the reference at the end. The curve goes to docs/soak.png and docs/soak.json
  (shown in docs/operations.md).

``KPISTREAM_SOAK_MINUTES`` (20) and ``KPISTREAM_SOAK_RATE`` (events/s, 2000) change the soak.
2,000 is about half of what one worker sustains live on the 2-core machine the suite runs on,
with this test's producer beside it: at 4,000 the worker ran at capacity (the event loop
blocked for seconds: faust's "Thread keepalive is not responding", Redis timeouts, lag
spikes of 44k records) and its RSS grew from 422 to 753 MB over 12 minutes with its state
flat; at 2,000 it stays within 10 %.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import threading
import time
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from harness import ROOT, Deployment, read_rows, row_mismatches, samples, scrape
from test_faults import expect, sigkill_storm, traffic

from kpistream.generator.producer import topic_of
from kpistream.generator.traffic import Record, TrafficConfig, TrafficGenerator, event_time_ms

pytestmark = [pytest.mark.integration, pytest.mark.soak]
MINUTES = float(os.environ.get("KPISTREAM_SOAK_MINUTES", "20"))
RATE = float(os.environ.get("KPISTREAM_SOAK_RATE", "2000"))
WINDOWS = "1m/10s,5m/1m"
GRACE = "1m"
RETENTION_S = 6 * 60  # the largest window + grace
# Customers' profiles are deleted this long after their last order and their facts
# RETENTION_S later (a late fact may still join them, docs/crm.md), so the customer stage's
# state is flat after 11 minutes, within the first half of the soak (each minute's
# customers are its own: LiveTraffic).
CUSTOMER_RETENTION = "5m"
SAMPLE_EVERY_S = 10.0
LAST_S = 300  # the end of the soak, compared with what came before
EVENTS_PER_ORDER = 1 + 0.3 + 0.03  # an order, its survey share and cancellations


def test_five_sigkills_during_200k_events(deployment) -> None:
    recs = traffic(seed=51, hours=1.0, orders_per_hour=152_000)
    assert len(recs) >= 200_000
    sigkill_storm(deployment(), recs, kills=5, seed=51)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class LiveTraffic(threading.Thread):
    """Generated traffic with event times "now", one minute's records at a time, sent in
    one-second slices; keeps the records of the last retention period for the reference."""

    def __init__(self, dep: Deployment, minutes: float, rate: float) -> None:
        super().__init__(daemon=True)
        self.dep, self.minutes, self.rate = dep, minutes, rate
        self.recent: collections.deque[tuple[int, list[Record]]] = collections.deque()
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._produce())
        except BaseException as exc:  # reported by the test
            self.error = exc

    async def _produce(self) -> None:
        settings = self.dep.settings
        producer = AIOKafkaProducer(bootstrap_servers=self.dep.bootstrap, linger_ms=20,
                                    max_batch_size=512 * 1024)
        await producer.start()
        try:
            first = int(time.time() // 60 * 60_000)
            for minute in range(int(self.minutes) + 1):
                start = first + minute * 60_000
                recs = list(TrafficGenerator(TrafficConfig(
                    seed=1000 + minute, start_ms=start, duration_ms=60_000,
                    orders_per_hour=self.rate / EVENTS_PER_ORDER * 3600, campaigns=50,
                    rfc3339_ratio=0.0)).records())
                own_customers(recs, f"m{minute}-")
                self.recent.append((start, recs))
                while self.recent and self.recent[0][0] < start - (RETENTION_S + 60) * 1000:
                    self.recent.popleft()
                by_second: dict[int, list[Record]] = collections.defaultdict(list)
                for record in recs:
                    by_second[event_time_ms(record.value) // 1000].append(record)
                for second in sorted(by_second):
                    wait = second - time.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    for record in by_second[second]:
                        key = next(str(v) for k, v in record.value.items() if k.endswith("_id"))
                        await producer.send(topic_of(settings, record.kind),
                                            orjson.dumps(record.value), key=key.encode())
                    self.sent += len(by_second[second])
        finally:
            await producer.stop()

    def reference_records(self) -> list[Record]:
        return [r for _, recs in self.recent for r in recs]


def own_customers(recs: list[Record], prefix: str) -> None:
    """Give one minute's customers ids of their own. Each minute has its own generator,
    which numbers customers from 1 again: the same id in two minutes would be one customer
    whose earlier orders the reference (given the last minutes only) never sees, so it
    counted some as new customers whom the worker knew (new_customers 312 against 311)."""
    for value in {id(r.value): r.value for r in recs}.values():  # (a duplicate shares it)
        if value.get("customer_id") is not None:
            value["customer_id"] = f"{prefix}{value['customer_id']}"


def test_twenty_minute_soak_is_flat(deployment) -> None:
    dep = deployment(KPISTREAM_WINDOWS=WINDOWS, KPISTREAM_GRACE=GRACE,
                     KPISTREAM_CUSTOMER_RETENTION=CUSTOMER_RETENTION)
    worker, port = dep.start_worker()
    time.sleep(10)  # joined
    source = LiveTraffic(dep, MINUTES, RATE)
    started = time.monotonic()
    source.start()
    curve: list[dict[str, float]] = []
    while source.is_alive():
        time.sleep(SAMPLE_EVERY_S)
        assert worker.poll() is None, "the worker exited during the soak"
        text = scrape(port)
        state = {f"{labels['stage']}_{labels['kind']}": value
                 for labels, value in samples(text, "kpistream_state_entries")}
        curve.append({
            "t_s": round(time.monotonic() - started, 1),
            "rss_mb": round(rss_mb(worker.pid), 1),
            "lag": sum(v for _, v in samples(text, "kpistream_consumer_lag")),
            "sent": source.sent,
            "accepted": sum(v for labels, v in samples(text, "kpistream_events_total")
                            if labels["outcome"] == "accepted"),
            **state})
    assert source.error is None, repr(source.error)
    write_report(curve)

    # Settled once the oldest packs (kept a retention period plus a step) start to expire.
    # Flat: the largest value of the last LAST_S within 10 % of the largest before (not the
    # first settled sample against the last: the customer stage's records settle later, as a
    # deletion's record waits for the records before it, and a sample at a trough made a
    # flat curve fail; a leak of 6 records/s still fails: 1.27).
    settled = [p for p in curve if p["t_s"] >= RETENTION_S + 120]
    last = [p for p in settled if p["t_s"] >= curve[-1]["t_s"] - LAST_S]
    before = settled[:len(settled) - len(last)]
    assert len(before) >= 3, "the soak ended before retention was reached"
    for name in ("rss_mb", "aggregate_ids", "aggregate_buckets", "rollup_rows",
                 "rollup_values", "customers_customers", "customers_packs"):
        early, late = max(p[name] for p in before), max(p[name] for p in last)
        assert late <= early * 1.10, f"{name} grew: {early} -> {late}"
    bound = RATE * 30  # at most 30 s of input behind
    assert max(p["lag"] for p in settled) <= bound, "consumer lag is not bounded"

    # Every row of the coarse dimensions against the reference (the reference recomputes
    # each row from all of its events: at this rate the campaign rows would take minutes).
    outcome = expect(dep, source.reference_records())
    settings = dep.settings
    deadline, problems = time.monotonic() + 60, ["not checked"]
    while problems and time.monotonic() < deadline:
        rows = {key: fields for key, fields in
                read_rows(settings.redis_url.get_secret_value(), settings.redis_prefix).items()
                if key[1] in ("all", "channel")}
        problems = [p for p in row_mismatches(rows, outcome) if p.split("/")[1] in (
            "all", "channel")]
        if problems:
            time.sleep(2)
    assert rows and not problems, problems[:10]


def write_report(curve: list[dict[str, float]]) -> None:
    (ROOT / "docs" / "soak.json").write_text(json.dumps({
        "minutes": MINUTES, "rate_events_per_s": RATE, "windows": WINDOWS, "grace": GRACE,
        "retention_s": RETENTION_S, "samples": curve}, indent=1) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return  # `make soak` installs it; a bare pytest run keeps the JSON only
    minutes = [p["t_s"] / 60 for p in curve]
    fig, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    axes[0].plot(minutes, [p["rss_mb"] for p in curve])
    axes[0].set_ylabel("worker RSS (MB)")
    for name in ("aggregate_ids", "aggregate_buckets", "rollup_values",
                 "customers_customers", "customers_packs"):
        axes[1].plot(minutes, [p.get(name, 0) for p in curve], label=name)
    axes[1].set_ylabel("state entries")
    axes[1].set_yscale("log")  # (thousands of records beside hundreds of thousands of ids)
    axes[1].legend()
    axes[2].plot(minutes, [p["lag"] for p in curve])
    axes[2].set_ylabel("consumer lag (records)")
    axes[2].set_xlabel("minutes")
    for axis in axes:
        axis.axvline(RETENTION_S / 60, color="grey", linestyle=":")
    fig.suptitle(f"kpistream soak: {RATE:.0f} events/s, windows {WINDOWS}, grace {GRACE}")
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / "soak.png", dpi=90)

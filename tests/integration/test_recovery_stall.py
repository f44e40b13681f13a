"""faust's table recovery with its seeks unanswered, on the real broker (kpistream.stages.recovery).

A worker whose first recovery seek of each changelog partition is dropped, as faust drops it
when a rebalance comes in the middle of a recovery, would wait for the records for good; the
watchdog seeks again and the rows come out exact. A worker none of whose seeks are answered
exits non-zero naming the partitions, within ``recovery_timeout``."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import LOG_DIR, changelog_topics, end_offsets, samples, scrape
from test_faults import assert_rows_exact, expect, traffic

pytestmark = pytest.mark.integration
UNANSWERED_WORKER = [sys.executable, str(Path(__file__).with_name("unanswered_recovery_worker.py"))]
RETRY = {"KPISTREAM_RECOVERY_RETRY": "2s", "KPISTREAM_RECOVERY_TIMEOUT": "10s"}
EXIT_WITHIN_S = 90.0  # the group's join and the recovery's start, then the 10 s timeout


def test_recovery_seeks_left_unanswered_are_retried_and_a_partition_never_answered_exits(
        deployment) -> None:
    dep = deployment()
    recs = traffic(seed=53, hours=0.5)
    half = len(recs) // 2

    def stop(worker: subprocess.Popen[bytes]) -> None:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
        dep.workers.remove(worker)

    first, _ = dep.start_worker()
    dep.produce(recs[:half])
    assert_rows_exact(dep, expect(dep, recs[:half]))
    stop(first)
    changelogs = changelog_topics(dep.settings)
    restore = {tp: end for tp, end in end_offsets(dep.bootstrap, changelogs).items() if end}
    assert restore, "the first worker left no changelog records to recover"

    retried, port = dep.start_worker(UNANSWERED_WORKER, UNANSWERED_SEEKS="1", **RETRY)
    dep.produce(recs[half:])
    assert_rows_exact(dep, expect(dep, recs))
    log = (LOG_DIR / f"{dep.name}-{dep.started}.log").read_text(errors="replace")
    sought = {(topic, int(p)) for topic, p in
              _fields(log, "recovery_seek_retry", ("topic", "partition"))}
    assert sought, "the watchdog never sought a changelog partition again"
    assert sought <= set(restore), f"sought partitions with nothing to recover: {sought}"
    counted = {labels["topic"]: value
               for labels, value in samples(scrape(port), "kpistream_recovery_seeks_total")}
    assert set(counted) == {topic for topic, _ in sought}, counted
    assert sum(counted.values()) >= len(sought)
    stop(retried)

    never, _ = dep.start_worker(UNANSWERED_WORKER, UNANSWERED_SEEKS="all", **RETRY)
    started = time.monotonic()
    code = never.wait(timeout=EXIT_WITHIN_S)
    dep.workers.remove(never)
    log = (LOG_DIR / f"{dep.name}-{dep.started}.log").read_text(errors="replace")
    assert code != 0, f"exit code {code} after {time.monotonic() - started:.0f} s"
    assert "table recovery received nothing from changelog partitions" in log
    named = {f"{topic}[{p}]" for topic, p in restore}
    assert any(name in log for name in named), log[-3000:]


def _fields(log: str, reason: str, names: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The values of ``names`` in each structured ``reason key=value ...`` line."""
    found = []
    for line in log.splitlines():
        if reason not in line:
            continue
        values = {}
        for part in line.split(reason, 1)[1].split():
            key, _, value = part.partition("=")
            values[key] = value.strip("'")
        found.append(tuple(values[name] for name in names))
    return found

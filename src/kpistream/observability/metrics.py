"""Every operational metric of kpistream, defined once (SPEC.md §5).

Names are an API: ``kpistream_`` namespace, base units, counters end in ``_total``, labels
bounded (topic names, outcomes, sinks, partitions - never ids). Business KPIs are exported by
:mod:`kpistream.sinks.prometheus`, a collector built from the current rows on every scrape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

OUTCOMES = ("accepted", "duplicate", "invalid", "late", "future")

DELAY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


@dataclass(frozen=True)
class Metrics:
    event_delay: Histogram
    stream_time: Gauge
    sink_errors: Counter
    rows_published: Counter
    alert_active: Gauge
    alerts: Counter
    recovery_seeks: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> Metrics:
        return cls(
            event_delay=Histogram(
                "kpistream_event_delay_seconds",
                "Processing time minus event time of accepted events.",
                buckets=DELAY_BUCKETS, registry=registry),
            stream_time=Gauge(
                "kpistream_stream_time_seconds",
                "Stream time T (epoch seconds) of the rows this worker publishes.",
                registry=registry),
            sink_errors=Counter(
                "kpistream_sink_errors", "Failed sink writes (retried with backoff).",
                ["sink"], registry=registry),
            rows_published=Counter(
                "kpistream_rows_published", "Row changes written to the sinks "
                "(deletions included).", registry=registry),
            alert_active=Gauge(
                "kpistream_alert_active", "1 while an alert fires for the row.",
                ["alert", "dimension", "group"], registry=registry),
            alerts=Counter(
                "kpistream_alerts", "Alert episodes started, by kind.", ["alert", "kind"],
                registry=registry),
            recovery_seeks=Counter(
                "kpistream_recovery_seeks", "Changelog partitions sought again because "
                "faust's table recovery received nothing from them (stages/recovery.py).",
                ["topic"], registry=registry),
        )


OUTCOME_OF_ERROR = {
    "late": "late",
    "future_timestamp": "future",
}


def outcome_label(error: str) -> str:
    """``kpistream_events_total`` outcome of a rejection: late, future, or invalid."""
    return OUTCOME_OF_ERROR.get(error, "invalid")


class EventCountCollector(Collector):
    """``kpistream_events_total{topic,outcome}``: the classification counts the aggregate
    stage keeps in its changelog, totalled over every aggregate partition by the roll-up
    partition COUNTS_PARTITION; only the worker that owns it exports them (``counts``
    returns None elsewhere). Persisted with the state, they survive a crash exactly (a
    re-delivered record is never counted again); a series moves whole when that partition
    changes hands, so it never decreases on a running worker, ``sum()`` across workers
    equals the input's classification and ``rate()`` sees no false resets. They follow the
    roll-up: in a backlog they lag the judging by as much as the roll-up does.

    Also ``kpistream_judged_events``: the records the aggregate partitions this worker owns
    have judged, a gauge that moves with those partitions (progress, e.g. for a benchmark,
    not for rates)."""

    def __init__(self, counts: Callable[[], dict[tuple[str, str], int] | None],
                 judged: Callable[[], int], topics: Iterable[str] = ()) -> None:
        self.counts = counts
        self.judged = judged
        # every (topic, outcome) of the input topics has a series from the start, at 0, so
        # that a query for an outcome not seen yet returns 0 rather than nothing
        self.zeros = {(topic, outcome): 0 for topic in topics for outcome in OUTCOMES}

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "kpistream_events", "Input records by topic and outcome "
            "(accepted, duplicate, invalid, late, future).", labels=["topic", "outcome"])
        counts = self.counts()
        if counts is not None:
            for (topic, outcome), count in sorted({**self.zeros, **counts}.items()):
                family.add_metric([topic, outcome], count)
        yield family
        yield GaugeMetricFamily(
            "kpistream_judged_events", "Input records judged by the aggregate partitions "
            "this worker owns (moves with them: progress, not for rate()).",
            value=self.judged())


class StateSizeCollector(Collector):
    """``kpistream_state_entries{stage,kind}``: entries held in the state of the partitions
    this worker owns (ids kept for de-duplication, buckets, roll-up rows and messages). Flat
    once retention is reached; growth past it is a leak (the soak test checks it)."""

    def __init__(self, sizes: Callable[[], dict[tuple[str, str], int]]) -> None:
        self.sizes = sizes

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("kpistream_state_entries",
                                   "Entries held in the owned partitions' state.",
                                   labels=["stage", "kind"])
        for (stage, kind), size in sorted(self.sizes().items()):
            family.add_metric([stage, kind], size)
        yield family


class LagCollector(Collector):
    """``kpistream_consumer_lag{group,topic,partition}``: end offset minus committed offset
    of every partition this worker's consumers own now (built at scrape time, so partitions
    moved away leave no stale series)."""

    def __init__(self, lags: Callable[[], list[tuple[str, str, int, int]]]) -> None:
        self.lags = lags

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("kpistream_consumer_lag",
                                   "End offset minus committed offset.",
                                   labels=["group", "topic", "partition"])
        for group, topic, partition, lag in sorted(self.lags()):
            family.add_metric([group, topic, str(partition)], lag)
        yield family

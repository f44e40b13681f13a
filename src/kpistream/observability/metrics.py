"""Every operational metric of kpistream, defined once (SPEC.md §5).

Names are an API: ``kpistream_`` namespace, base units, counters end in ``_total``, labels
bounded (topic names, outcomes, sinks, partitions - never ids). Business KPIs are exported by
:mod:`kpistream.sinks.prometheus`, a collector built from the current rows on every scrape.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

DELAY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


@dataclass(frozen=True)
class Metrics:
    events: Counter
    event_delay: Histogram
    stream_time: Gauge
    sink_errors: Counter
    rows_dropped: Gauge
    consumer_lag: Gauge
    rows_published: Counter
    alert_active: Gauge
    alerts: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> Metrics:
        return cls(
            events=Counter(
                "kpistream_events", "Input records by topic and outcome "
                "(accepted, duplicate, invalid, late, future).",
                ["topic", "outcome"], registry=registry),
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
            rows_dropped=Gauge(
                "kpistream_prometheus_rows_dropped",
                "KPI rows currently left out of /metrics by the per-dimension group cap.",
                ["dimension"], registry=registry),
            consumer_lag=Gauge(
                "kpistream_consumer_lag", "End offset minus committed offset.",
                ["topic", "partition"], registry=registry),
            rows_published=Counter(
                "kpistream_rows_published", "Row changes written to the sinks "
                "(deletions included).", registry=registry),
            alert_active=Gauge(
                "kpistream_alert_active", "1 while an alert fires for the row.",
                ["alert", "dimension", "group"], registry=registry),
            alerts=Counter(
                "kpistream_alerts", "Alert episodes started, by kind.", ["alert", "kind"],
                registry=registry),
        )


OUTCOME_OF_ERROR = {
    "late": "late",
    "future_timestamp": "future",
}


def outcome_label(error: str) -> str:
    """``kpistream_events_total`` outcome of a rejection: late, future, or invalid."""
    return OUTCOME_OF_ERROR.get(error, "invalid")

"""KPI gauges on ``/metrics``, built from the rows this worker owns on every scrape.

A custom collector (client_python docs, "Custom Collectors") rather than long-lived gauges:
a row that moves to another worker, or a KPI that becomes undefined, simply has no sample on
the next scrape, so ``sum()`` across workers never double counts and there is never a NaN.
Label cardinality is capped per dimension; the rows left out stay in Redis and Kafka and are
counted in ``kpistream_prometheus_rows_dropped``. Within the cap, groups are kept by name
order so the exported set is stable from scrape to scrape.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kpistream.kpi.catalogue import GAUGES, gauge_help
from kpistream.kpi.rows import RowMessage
from kpistream.observability.metrics import Metrics
from kpistream.sinks.base import Publication
from kpistream.state.buckets import DIMENSIONS

KPI_GAUGES: dict[str, str] = {kpi.name: gauge_help(kpi) for kpi in GAUGES}
ROWS_DROPPED = "kpistream_prometheus_rows_dropped"
ROWS_DROPPED_HELP = "KPI rows currently left out of /metrics by the per-dimension group cap."
LABELS = ["window", "dimension", "group"]


class KpiCollector(Collector):
    """``handing_over()`` is true while this worker's partitions may be changing hands: its
    rows are then left out. faust tells a worker which partitions it lost (the signal that
    forgets their rows) only once its streams and commit finished, which can take up to a
    session timeout, while their next owner may already export them: a CI run summed every
    row of a handed-over partition twice. A gap during a rebalance is the lesser evil."""

    def __init__(self, rows: Callable[[], list[RowMessage]], max_groups: int,
                 handing_over: Callable[[], bool] = lambda: False) -> None:
        self.rows = rows
        self.max_groups = max_groups
        self.handing_over = handing_over

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = {name: GaugeMetricFamily(f"kpistream_{name}", help_text, labels=LABELS)
                    for name, help_text in KPI_GAUGES.items()}
        # From the same rows as the gauges: a Gauge set here would show on the next scrape
        dropped_family = GaugeMetricFamily(ROWS_DROPPED, ROWS_DROPPED_HELP,
                                           labels=["dimension"])
        rows, dropped = ([], {}) if self.handing_over() else self._capped(self.rows())
        for row in rows:
            labels = [row["window"], row["dimension"], row["group"]]
            for name, family in families.items():
                value = row.get(name)
                if value is not None:
                    family.add_metric(labels, float(value))
        for dimension in DIMENSIONS:
            dropped_family.add_metric([dimension], dropped.get(dimension, 0))
        yield from families.values()
        yield dropped_family

    def _capped(self, rows: list[RowMessage]) -> tuple[list[RowMessage], dict[str, int]]:
        """The rows within the cap, and per dimension how many were left out."""
        groups: dict[str, set[str]] = defaultdict(set)
        for row in rows:
            groups[row["dimension"]].add(row["group"])
        kept = {dimension: set(sorted(names)[:self.max_groups])
                for dimension, names in groups.items()}
        out = [row for row in rows if row["group"] in kept[row["dimension"]]]
        dropped: dict[str, int] = defaultdict(int)
        for row in rows:
            if row["group"] not in kept[row["dimension"]]:
                dropped[row["dimension"]] += 1
        return out, dropped


class PrometheusSink:
    """The pushed part of /metrics: rows published, alert episodes started, and
    ``kpistream_alert_active`` showing exactly the alerts firing on this worker's rows. (The
    KPI gauges are pulled by :class:`KpiCollector` at scrape time.)"""

    name = "prometheus"

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.active: set[tuple[str, str, str]] = set()

    async def start(self) -> None:
        return None

    def write(self, publication: Publication) -> None:
        self.metrics.rows_published.inc(len(publication.rows))
        for message in publication.alerts:
            if message["state"] == "firing":
                self.metrics.alerts.labels(str(message["alert"]), str(message["kind"])).inc()
        firing = set(publication.firing)
        for labels in self.active - firing:
            self.metrics.alert_active.remove(*labels)
        for labels in firing - self.active:
            self.metrics.alert_active.labels(*labels).set(1)
        self.active = firing

    async def flush(self) -> None:
        return None  # in the registry already; Prometheus pulls it

    async def close(self) -> None:
        return None

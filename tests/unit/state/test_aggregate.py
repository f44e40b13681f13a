"""PartitionAggregator details the property tests do not single out."""

from __future__ import annotations

from kpistream.contracts.records import Order, Source, Spend
from kpistream.settings import Settings
from kpistream.state.aggregate import PartitionAggregator
from kpistream.state.store import DictStore

T = 1_800_000_000_000
HOUR = 3_600_000
SRC = Source("orders", 0, 0, None, "{}")


def aggregator() -> PartitionAggregator:
    return PartitionAggregator(Settings(clock="event"), DictStore(), DictStore(), DictStore())


def order(order_id: str, ts: int, status: str = "placed") -> Order:
    return Order(order_id, ts, status, "c", 10.0 if status == "placed" else None,  # type: ignore[arg-type]
                 "search", "c1", "new")


def test_replayed_batch_is_judged_against_the_time_of_its_first_run() -> None:
    agg = aggregator()
    batch = [(0, order("a", T), SRC), (1, Spend("s", T + 25 * HOUR, "c1", "search", 5.0), SRC)]
    first = agg.process(0, batch, T)
    again = agg.process(0, batch, T)  # same offsets: a replay after a crash
    assert [v.outcome for v in first.verdicts] == ["accepted", "accepted"]
    assert [v.outcome for v in again.verdicts] == ["accepted", "accepted"]
    assert first.updates == again.updates  # absolute values: replaying changes nothing


def test_cancellation_before_its_order_counts_nowhere() -> None:
    agg = aggregator()
    result = agg.process(0, [(0, order("a", T + 5, "cancelled"), SRC),
                             (1, order("a", T), SRC)], T)
    assert [v.outcome for v in result.verdicts] == ["unknown_order", "accepted"]
    assert result.updates == {}

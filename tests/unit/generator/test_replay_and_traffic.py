"""Replay files and the generator, without Kafka."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from kpistream.generator.replay import read_records
from kpistream.generator.traffic import Anomaly, TrafficConfig, TrafficGenerator, event_time_ms


def test_jsonl_with_kinds_and_plain_with_kind(tmp_path: Path) -> None:
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_bytes(b'{"kind": "order", "value": {"order_id": "a"}}\n\n'
                      b'{"kind": "spend", "value": {"spend_id": "s"}}\n')
    assert [(r.kind, r.value) for r in read_records(mixed, None)] == [
        ("order", {"order_id": "a"}), ("spend", {"spend_id": "s"})]
    plain = tmp_path / "plain.jsonl"
    plain.write_bytes(b'{"response_id": "r"}\n')
    assert [(r.kind, r.value) for r in read_records(plain, "survey")] == [
        ("survey", {"response_id": "r"})]


def test_csv_needs_kind_and_drops_empty_cells(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text("order_id,ts,amount,campaign_id\no1,1700000000000,19.90,\n")
    with pytest.raises(ValueError, match="--kind"):
        list(read_records(path, None))
    assert [r.value for r in read_records(path, "order")] == [
        {"order_id": "o1", "ts": "1700000000000", "amount": "19.90"}]


def test_bad_line_names_its_number(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"kind": "order", "value": {}}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        list(read_records(path, None))


def test_generator_is_seeded_and_the_stop_anomaly_stops_orders() -> None:
    config = TrafficConfig(seed=3, start_ms=0, duration_ms=3_600_000, orders_per_hour=3000,
                           anomalies=[Anomaly("cmp-001", 1_800_000, "stop")])
    first = list(TrafficGenerator(config).records())
    assert [r.value for r in first] == [r.value for r in TrafficGenerator(config).records()]
    stopped = [r for r in first if r.kind == "order" and r.value.get("campaign_id") == "cmp-001"
               and r.value.get("status", "placed") == "placed"]
    assert stopped and all(event_time_ms(r.value) < 1_800_000 for r in stopped)
    spend_after = [r for r in first if r.kind == "spend" and r.value["campaign_id"] == "cmp-001"
                   and event_time_ms(r.value) >= 1_800_000]
    assert spend_after, "spend continues while orders stop"
    assert orjson.dumps(first[0].value)


@pytest.mark.parametrize("duration_ms", [20_000, 90_000, 3_600_000])
def test_every_event_is_within_the_duration_and_cancelled_after_its_order(
        duration_ms: int) -> None:
    start = 1_796_590_800_000
    config = TrafficConfig(seed=42, start_ms=start, duration_ms=duration_ms,
                           orders_per_hour=30_000, cancel_ratio=0.2, campaigns=4)
    records = list(TrafficGenerator(config).records())
    assert records
    assert all(start <= event_time_ms(r.value) < start + duration_ms for r in records)
    placed = {r.value["order_id"]: event_time_ms(r.value) for r in records
              if r.kind == "order" and r.value.get("status", "placed") == "placed"}
    cancelled = [r.value for r in records if r.value.get("status") == "cancelled"]
    assert cancelled
    assert all(event_time_ms(c) > placed[c["order_id"]] for c in cancelled)
    # A short last minute has its share of the traffic, not a whole minute's.
    orders = len(placed)
    expected = config.orders_per_hour * duration_ms / 3_600_000
    assert 0.5 * expected < orders < 1.5 * expected

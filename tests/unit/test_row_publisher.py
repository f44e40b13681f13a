"""The publisher's two passes: a full tick once per publish_interval and, between ticks,
``quiet_changes`` for rows new or quiet for an interval. A row is never published twice
within publish_interval, whatever the interleaving, and nothing a tick would publish is lost.
And the decimal text of the numbers written to Redis hashes (rows and profiles)."""

from __future__ import annotations

import math
import random
from decimal import Decimal
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from kpistream.contracts.wire import ALL_READ, BucketValue, RollupMessage, encode_rollup
from kpistream.kpi.formulas import SUM_FIELDS
from kpistream.kpi.rows import RowPublisher, decimal_text
from kpistream.settings import Settings
from kpistream.state.buckets import ALLOCATION_ORDERS, ALLOCATION_SPEND, GROUP_SEP
from kpistream.state.rollup import RollupState
from kpistream.state.store import DictPackLog

SETTINGS = Settings(windows=("1h/1m",), clock="event", partitions=1, publish_interval="1s",
                    publish_check_interval="250ms")
MIN = 60_000
T0 = 100 * MIN
ORDERS, SPEND = SUM_FIELDS.index("orders"), SUM_FIELDS.index("spend")


class Pipeline:
    """One roll-up partition fed one aggregate source; every message a new stamp."""

    def __init__(self) -> None:
        self.state = RollupState(SETTINGS, DictPackLog())
        self.publisher = RowPublisher(SETTINGS, self.state)
        self.seq = 0
        self.totals: dict[tuple[str, str, int], list[float]] = {}

    def add(self, dimension: str, group: str, bucket: int, orders: float = 1.0,
            spend: float = 0.0) -> None:
        sums = self.totals.setdefault((dimension, group, bucket), [0.0] * len(SUM_FIELDS))
        sums[ORDERS] += orders
        sums[SPEND] += spend
        value = BucketValue("1h", dimension, group, bucket, tuple(sums))
        message = RollupMessage(0, self.seq, T0 + 10 * MIN, ALL_READ, [value])
        self.state.apply(0, self.seq, encode_rollup(message), 0)
        self.seq += 1


def published(changes: list) -> set[tuple[str, str]]:
    return {(c.dimension, c.group) for c in changes}


def test_a_new_row_goes_out_at_the_next_check_not_the_next_tick() -> None:
    pipe = Pipeline()
    pipe.add("campaign", "a", T0)
    assert published(pipe.publisher.tick({0}, 1_000)) == {("campaign", "a")}
    pipe.add("campaign", "b", T0)  # a row never published
    pipe.add("campaign", "a", T0)  # published 250 ms ago
    assert published(pipe.publisher.quiet_changes({0}, 1_250)) == {("campaign", "b")}
    assert published(pipe.publisher.quiet_changes({0}, 1_500)) == set()
    # a full interval after its last publication, a's change goes out at a check
    changes = pipe.publisher.quiet_changes({0}, 2_000)
    assert published(changes) == {("campaign", "a")}
    assert changes[0].message is not None and changes[0].message["orders"] == 2


def test_the_tick_defers_a_row_a_check_published_and_a_check_sends_it_later() -> None:
    pipe = Pipeline()
    pipe.add("campaign", "a", T0)
    pipe.publisher.tick({0}, 1_000)
    pipe.add("campaign", "a", T0)
    assert published(pipe.publisher.quiet_changes({0}, 2_100)) == {("campaign", "a")}
    pipe.add("campaign", "a", T0)
    assert published(pipe.publisher.tick({0}, 2_500)) == set()  # 400 ms after: waits, dirty
    changes = pipe.publisher.quiet_changes({0}, 3_100)
    assert published(changes) == {("campaign", "a")}
    assert changes[0].message is not None and changes[0].message["orders"] == 3


def test_segment_rows_and_their_allocation_inputs_wait_for_the_tick() -> None:
    pipe = Pipeline()
    pipe.add("campaign", "c", T0)
    pipe.publisher.tick({0}, 1_000)
    pipe.add("segment", "vip", T0)
    pipe.add(ALLOCATION_ORDERS, f"c{GROUP_SEP}vip", T0)
    pipe.add(ALLOCATION_SPEND, "c", T0, orders=0.0, spend=30.0)
    assert published(pipe.publisher.quiet_changes({0}, 1_250)) == set()
    changes = pipe.publisher.tick({0}, 2_000)
    assert published(changes) == {("segment", "vip")}
    message = changes[0].message
    assert message is not None and message["spend"] == 30 and message["spend_allocated"]


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_never_twice_within_the_interval_and_nothing_lost(seed: int) -> None:
    rng = random.Random(seed)
    pipe = Pipeline()
    groups = [("campaign", f"c{i}") for i in range(4)] + [("channel", "web")]
    last_at: dict[tuple[str, str], int] = {}
    last_tick = -10**9
    now = 1_000
    for _ in range(rng.randint(5, 60)):
        for _ in range(rng.randint(0, 3)):
            dimension, group = rng.choice(groups)
            pipe.add(dimension, group, T0 + rng.randint(0, 5) * MIN)
        now += rng.choice((50, 100, 250, 300, 600))
        if now - last_tick >= SETTINGS.publish_interval_ms:  # the stage's rule
            last_tick = now
            changes = pipe.publisher.tick({0}, now)
        else:
            changes = pipe.publisher.quiet_changes({0}, now)
        for change in changes:
            key = (change.dimension, change.group)
            assert now - last_at.get(key, -10**9) >= SETTINGS.publish_interval_ms
            last_at[key] = now
    now += SETTINGS.publish_interval_ms
    pipe.publisher.tick({0}, now)  # the next full tick: every change is out
    held = pipe.publisher.published[0]
    for (dimension, group, _), _sums in pipe.totals.items():
        message = held[((dimension, group), "1h")].message
        assert message is not None
        expected = sum(s[ORDERS] for (d, g, _), s in pipe.totals.items()
                       if (d, g) == (dimension, group))
        assert message["orders"] == expected


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_a_quiet_row_is_published_at_least_once_per_step(seed: int) -> None:
    """SPEC §5: at least once per STEP while non-zero, with full ticks coming
    publish_interval apart or up to a check interval later (the stage's timer)."""
    rng = random.Random(seed)
    pipe = Pipeline()
    pipe.add("campaign", "c1", T0)
    step = MIN  # of the 1h/1m window
    published_at = []
    now = 1_000
    for _ in range(400):
        changes = pipe.publisher.tick({0}, now)
        if published(changes):
            published_at.append(now)
        now += SETTINGS.publish_interval_ms + rng.choice(
            (0, SETTINGS.publish_check_interval_ms))
    gaps = [b - a for a, b in pairwise(published_at)]
    assert len(gaps) >= 5
    assert max(gaps) <= step
    assert min(gaps) >= SETTINGS.publish_interval_ms


def test_the_check_interval_may_not_exceed_the_publish_interval() -> None:
    with pytest.raises(ValidationError, match="publish_check_interval"):
        Settings(publish_interval="1s", publish_check_interval="2s")


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers()))
def test_decimal_text_is_the_floats_exact_shortest_decimal(value: float) -> None:
    expected = str(value) if isinstance(value, int) else format(Decimal(repr(value)), "f")
    assert decimal_text(value) == expected
    assert "e" not in decimal_text(value).lower() or not math.isfinite(value)


@pytest.mark.parametrize(("value", "text"), [
    (1e-05, "0.00001"), (1.5e16, "15000000000000000"), (0.1, "0.1"), (-0.0, "-0.0"),
    (2.0, "2.0"), (7, "7")])
def test_decimal_text_examples(value: float, text: str) -> None:
    assert decimal_text(value) == text


def test_a_row_never_published_gets_no_deletion() -> None:
    """A new row whose first events are already outside its 5m window: its 1h row goes out,
    and no tombstone for a 5m row no one has seen; once published, an emptied 5m row is
    deleted."""
    settings = Settings(windows=("5m/10s", "1h/1m"), clock="event", partitions=1)
    state = RollupState(settings, DictPackLog())
    publisher = RowPublisher(settings, state)
    sums = tuple(1.0 if i == ORDERS else 0.0 for i in range(len(SUM_FIELDS)))

    def send(seq: int, bucket_5m: int, bucket_1h: int, event_time: int) -> None:
        values = [BucketValue("5m", "campaign", "a", bucket_5m, sums),
                  BucketValue("1h", "campaign", "a", bucket_1h, sums)]
        message = RollupMessage(0, seq, event_time, ALL_READ, values)
        state.apply(0, seq, encode_rollup(message), 0)

    send(0, T0, T0, T0 + 10 * MIN)
    changes = publisher.tick({0}, 1_000)
    assert [(c.window, c.message is not None) for c in changes] == [("1h", True)]
    send(1, T0 + 10 * MIN, T0 + 10 * MIN, T0 + 10 * MIN)  # now the 5m row has an event
    assert {(c.window, c.message is not None) for c in publisher.tick({0}, 2_000)} == {
        ("5m", True), ("1h", True)}
    send(2, T0 + 10 * MIN, T0 + 10 * MIN, T0 + 20 * MIN)  # stream time moves on: 5m empties
    assert ("5m", False) in {(c.window, c.message is not None)
                             for c in publisher.tick({0}, 3_000)}

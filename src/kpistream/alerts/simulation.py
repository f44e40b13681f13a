"""Seeded simulation of campaigns, run through the CPO spike detector minute by minute.

Used by the acceptance tests (tests/unit/alerts/test_detector_scenarios.py) and by
``scripts/alert_sim.py``, which produces the delay / false-alert table of docs/alerting.md.

Model of one campaign (one row), per minute ``i`` covering ``[start + i*60s, start + (i+1)*60s)``:

* orders ~ Poisson(orders_per_hour / 60), divided by ``factor`` during a ``cpo`` anomaly and
  0 during a ``stop`` anomaly (orders stop, spend goes on);
* spend = orders_per_hour / 60 * cpo * U(0.9, 1.1) (±10% uniform noise), never changed by an
  anomaly;
* the baseline is estimated from the simulated stream itself: a rolling sum over the last
  ``baseline_minutes`` (default 24 h) of minutes, including the current one; the last hour is
  a rolling 60-minute sum. (The engine's baseline window advances in 15-minute steps; the
  difference is immaterial for a 24 h sum.)

Each campaign has its own ``random.Random`` seeded from ``(seed, group)``, so a campaign's
stream does not depend on which other campaigns are simulated with it. Pure Python (numpy is
not a dependency).
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import Literal

from kpistream.alerts.detector import (
    DetectorParams,
    DetectorState,
    MinuteInput,
    Transition,
    evaluate,
)

MINUTE_MS = 60_000
DAY_MINUTES = 1440
DIMENSION = "campaign"


@dataclass(frozen=True, slots=True)
class Anomaly:
    """From minute ``start_minute`` (index, inclusive) to ``end_minute`` (exclusive, None:
    forever): ``stop`` -> no orders; ``cpo`` -> order rate divided by ``factor`` (the CPO is
    multiplied by it; spend unchanged)."""

    kind: Literal["stop", "cpo"]
    start_minute: int
    factor: float = 1.0
    end_minute: int | None = None

    def active(self, minute: int) -> bool:
        return self.start_minute <= minute and (self.end_minute is None
                                                or minute < self.end_minute)


@dataclass(frozen=True, slots=True)
class Campaign:
    group: str
    orders_per_hour: float
    cpo: float
    anomalies: tuple[Anomaly, ...] = ()


@dataclass(frozen=True, slots=True)
class SimEvent:
    group: str
    minute: int  # index of the evaluated minute whose end caused the transition
    minute_end: int  # epoch ms
    transition: Transition

    @property
    def state(self) -> str:
        return self.transition.state

    @property
    def kind(self) -> str:
        return str(self.transition.message["kind"])


@dataclass(slots=True)
class SimResult:
    events: list[SimEvent] = field(default_factory=list)
    evaluated_minutes: int = 0  # row-minutes passed to evaluate

    def firings(self, from_minute: int = 0) -> list[SimEvent]:
        return [e for e in self.events if e.state == "firing" and e.minute >= from_minute]

    def resolutions(self, from_minute: int = 0) -> list[SimEvent]:
        return [e for e in self.events if e.state == "resolved" and e.minute >= from_minute]


@cache
def _poisson_cdf(lam: float) -> tuple[float, ...]:
    """Cumulative Poisson(lam) probabilities up to where the tail is negligible."""
    if lam <= 0:
        return (1.0,)
    out: list[float] = []
    p = math.exp(-lam)
    total = 0.0
    k = 0
    while True:
        total += p
        out.append(total)
        k += 1
        if k > lam and 1.0 - total < 1e-15:
            break
        p *= lam / k
        if k > lam + 50 * math.sqrt(lam) + 50:
            break
    return tuple(out)


def poisson(rng: random.Random, lam: float) -> int:
    """A Poisson(lam) sample by inversion (fast for the per-minute rates used here)."""
    cdf = _poisson_cdf(lam)
    return min(bisect_right(cdf, rng.random()), len(cdf))


def simulate_campaign(
    campaign: Campaign,
    minutes: int,
    params: DetectorParams,
    *,
    seed: int | str = 0,
    start_ms: int = 0,
    baseline_minutes: int = DAY_MINUTES,
    evaluate_from: int = 0,
    stop_when: Callable[[SimEvent], bool] | None = None,
) -> SimResult:
    """Simulate ``minutes`` minutes of one campaign, evaluating the detector on every minute
    from index ``evaluate_from`` on (earlier minutes only fill the rolling sums). Stops early
    after an event for which ``stop_when`` returns True."""
    if baseline_minutes < 61:
        raise ValueError("baseline_minutes must exceed the 60-minute hour")
    rng = random.Random(f"{seed}:{campaign.group}")
    per_minute = campaign.orders_per_hour / 60.0
    spend_mean = per_minute * campaign.cpo
    anomalies = campaign.anomalies
    group = campaign.group
    base_orders = [0] * baseline_minutes
    base_spend = [0.0] * baseline_minutes
    base_o = 0
    base_s = 0.0
    hour_o = 0
    hour_s = 0.0
    state = DetectorState()
    result = SimResult()
    events = result.events
    for i in range(minutes):
        lam = per_minute
        for anomaly in anomalies:
            if anomaly.active(i):
                lam = 0.0 if anomaly.kind == "stop" else lam / anomaly.factor
        x = poisson(rng, lam) if lam > 0 else 0
        spend = spend_mean * rng.uniform(0.9, 1.1)
        slot = i % baseline_minutes
        base_o += x - base_orders[slot]
        base_s += spend - base_spend[slot]
        base_orders[slot] = x
        base_spend[slot] = spend
        hour_o += x
        hour_s += spend
        if i >= 60:
            old = (i - 60) % baseline_minutes
            hour_o -= base_orders[old]
            hour_s -= base_spend[old]
        if i < evaluate_from:
            continue
        if i % 1024 == 0:  # bound float drift of the running spend sums
            base_s = math.fsum(base_spend)
            hour_s = math.fsum(base_spend[(i - k) % baseline_minutes]
                               for k in range(min(60, i + 1)))
        minute_end = start_ms + (i + 1) * MINUTE_MS
        state, transition = evaluate(
            state,
            MinuteInput(minute_end, x, spend, base_o, max(base_s, 0.0), hour_o, max(hour_s, 0.0)),
            params, dimension=DIMENSION, group=group)
        result.evaluated_minutes += 1
        if transition is not None:
            event = SimEvent(group, i, minute_end, transition)
            events.append(event)
            if stop_when is not None and stop_when(event):
                break
    return result


def simulate(
    campaigns: Iterable[Campaign],
    minutes: int,
    params: DetectorParams,
    *,
    seed: int | str = 0,
    start_ms: int = 0,
    baseline_minutes: int = DAY_MINUTES,
    evaluate_from: int = 0,
) -> SimResult:
    """Simulate several independent campaigns; events are sorted by time, then group."""
    total = SimResult()
    for campaign in campaigns:
        one = simulate_campaign(campaign, minutes, params, seed=seed, start_ms=start_ms,
                                baseline_minutes=baseline_minutes, evaluate_from=evaluate_from)
        total.events.extend(one.events)
        total.evaluated_minutes += one.evaluated_minutes
    total.events.sort(key=lambda e: (e.minute_end, e.group))
    return total


def detection_delay(
    orders_per_hour: float,
    anomaly: Literal["stop", "cpo"],
    params: DetectorParams,
    *,
    factor: float = 1.0,
    seed: int | str = 0,
    cpo: float = 30.0,
    onset: int = DAY_MINUTES,
    horizon: int = DAY_MINUTES,
    evaluate_from: int = 0,
) -> float | None:
    """Minutes from the anomaly's onset (start of minute ``onset``) to the end of the minute
    whose evaluation fired the first alert that started at or after the onset; None when none
    fired within ``horizon`` minutes."""
    campaign = Campaign(f"delay-{orders_per_hour:g}-{anomaly}-{factor:g}", orders_per_hour, cpo,
                        (Anomaly(anomaly, onset, factor),))
    result = simulate_campaign(
        campaign, onset + horizon, params, seed=seed, evaluate_from=evaluate_from,
        stop_when=lambda e: e.state == "firing" and e.minute >= onset)
    fired = result.firings(onset)
    if not fired:
        return None
    return float(fired[0].minute + 1 - onset)

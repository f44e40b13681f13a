"""The CPO spike detector of SPEC.md §6, as pure code: no I/O, no clock (time is passed in).

The streaming engine calls :func:`evaluate` once per completed minute of a row's stream time,
with the row's sums for that minute, the last hour and the baseline window; it persists the
returned :class:`DetectorState` (``to_list()`` is a JSON-able changelog value) and publishes
the returned :class:`Transition`, if any. docs/alerting.md describes the rules.

Rules (parameters from :class:`DetectorParams`, defaults in brackets):

* Baseline CPO ``b = baseline_spend / baseline_orders`` once ``baseline_orders >=
  min_baseline_orders`` [20] and ``baseline_spend > 0``; otherwise the row has no baseline.
* With a baseline, per minute ``mu = spend / b`` and two one-sided Poisson CUSUMs
  ``S = max(0, S + orders * ln(rho) + mu * (1 - rho))`` with ``rho_stop`` [0.1] (kind
  ``orders_stopped``) and ``rho_shift`` [0.5] (kind ``cpo_shift``). An alert fires when either
  statistic exceeds ``h`` [12]; if both do in the same minute the larger one names the kind
  (``orders_stopped`` on a tie). While firing both are capped at ``h``; the alert resolves when
  both are below ``h / 4``.
* Without a baseline the CUSUMs do not run (they are reset to 0, or frozen while a CUSUM alert
  fires). A ``no_baseline`` alert fires when the last hour's spend reaches ``min_spend`` [50]
  with no order in that hour; it resolves at the row's next order.
* A choice where SPEC §6 is silent: a CUSUM episode whose row has lost its baseline (the
  baseline window fell below ``min_baseline_orders`` during a long stop) resolves at the next
  order, like ``no_baseline``. A paused row (no spend) keeps firing: with no spend and no
  order its statistics stay where they are, and SPEC §6 resolves an episode only when they
  fall below ``h / 4`` (``no_baseline``: at the next order).
* ``statistic`` in both messages of an episode is the CUSUM value that fired it (before the
  cap), and ``null`` for ``no_baseline`` (the alert schema says so; there is no CUSUM).
* Idempotent per minute: a ``minute_end`` at or before ``state.last_minute`` returns the state
  unchanged and no transition, so replaying minutes after a restart neither repeats nor loses an
  episode. The ``alert_id`` is deterministic: ``cpo_spike:{dimension}:{group}:{started_at}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from kpistream.settings import Settings

ALERT = "cpo_spike"
SCHEMA_VERSION = 1
MINUTE_MS = 60_000
ORDERS_STOPPED = "orders_stopped"
CPO_SHIFT = "cpo_shift"
NO_BASELINE = "no_baseline"
AlertKind = Literal["orders_stopped", "cpo_shift", "no_baseline"]
KINDS: tuple[str, ...] = (ORDERS_STOPPED, CPO_SHIFT, NO_BASELINE)


@dataclass(frozen=True, slots=True)
class DetectorParams:
    h: float = 12.0
    rho_stop: float = 0.1
    rho_shift: float = 0.5
    min_baseline_orders: int = 20
    min_spend: float = 50.0

    def __post_init__(self) -> None:
        if not self.h > 0:
            raise ValueError(f"h must be > 0, got {self.h}")
        for name in ("rho_stop", "rho_shift"):
            rho = getattr(self, name)
            if not 0 < rho < 1:
                raise ValueError(f"{name} must be in (0, 1), got {rho}")
        if self.min_baseline_orders < 1:
            raise ValueError("min_baseline_orders must be >= 1")

    @classmethod
    def from_settings(cls, settings: Settings) -> DetectorParams:
        return cls(
            h=settings.alert_h,
            rho_stop=settings.alert_rho_stop,
            rho_shift=settings.alert_rho_shift,
            min_baseline_orders=settings.alert_min_baseline_orders,
            min_spend=settings.alert_min_spend,
        )


@dataclass(frozen=True, slots=True)
class MinuteInput:
    minute_end: int  # epoch ms, end of the evaluated minute [minute_end - 60000, minute_end)
    orders: int  # orders in that minute (x_t), cancellations counted in their own minute
    spend: float  # spend in that minute (spend_t)
    baseline_orders: int  # orders over the baseline window (e.g. 24h) at this time
    baseline_spend: float  # spend over the baseline window
    hour_orders: int  # orders over the last hour
    hour_spend: float  # spend over the last hour


def minute_input(minute_end: int, orders: float, spend: float, baseline_orders: float,
                 baseline_spend: float, hour_orders: float, hour_spend: float) -> MinuteInput:
    """A minute's input from event-time sums: orders count each cancellation in the minute
    of its own ts (``cancel_shift``), so a minute of many cancellations of earlier orders
    can sum below zero; it counts as no order."""
    return MinuteInput(minute_end, max(0, round(orders)), float(spend),
                       max(0, round(baseline_orders)), float(baseline_spend),
                       max(0, round(hour_orders)), float(hour_spend))


@dataclass(frozen=True, slots=True)
class DetectorState:
    """One row's detector state; ``to_list()``/``from_list()`` for a changelog table value."""

    s_stop: float = 0.0
    s_shift: float = 0.0
    firing_kind: str | None = None  # the kind of the episode that fires, None when quiet
    alert_id: str | None = None
    started_at: int | None = None  # minute_end of the minute the episode fired
    last_minute: int | None = None  # minute_end of the last minute evaluated
    statistic: float = 0.0  # the CUSUM value that fired the current episode (0: no_baseline)

    def to_list(self) -> list[Any]:
        return [self.s_stop, self.s_shift, self.firing_kind, self.alert_id, self.started_at,
                self.last_minute, self.statistic]

    @classmethod
    def from_list(cls, value: list[Any] | tuple[Any, ...]) -> DetectorState:
        s_stop, s_shift, kind, alert_id, started_at, last_minute, statistic = value
        return cls(
            s_stop=float(s_stop),
            s_shift=float(s_shift),
            firing_kind=None if kind is None else str(kind),
            alert_id=None if alert_id is None else str(alert_id),
            started_at=None if started_at is None else int(started_at),
            last_minute=None if last_minute is None else int(last_minute),
            statistic=float(statistic),
        )

    @property
    def firing(self) -> bool:
        return self.firing_kind is not None


@dataclass(frozen=True, slots=True)
class Transition:
    state: Literal["firing", "resolved"]
    message: dict[str, Any]  # the alert message of SPEC §6 (validates against alert.json)


def alert_id_of(dimension: str, group: str, started_at: int) -> str:
    return f"{ALERT}:{dimension}:{group}:{started_at}"


def baseline_cpo(minute: MinuteInput, params: DetectorParams) -> float | None:
    """``b``, or None when the row has no baseline yet."""
    if minute.baseline_orders < params.min_baseline_orders or not minute.baseline_spend > 0:
        return None
    return minute.baseline_spend / minute.baseline_orders


def evaluate(
    state: DetectorState,
    minute: MinuteInput,
    params: DetectorParams,
    *,
    dimension: str,
    group: str,
) -> tuple[DetectorState, Transition | None]:
    """Advance one row's detector by one minute; returns the new state and the transition
    (``firing`` or ``resolved``) this minute caused, if any."""
    if state.last_minute is not None and minute.minute_end <= state.last_minute:
        return state, None  # already evaluated: a replay changes nothing
    h = params.h
    b = baseline_cpo(minute, params)
    kind = state.firing_kind
    s_stop, s_shift = state.s_stop, state.s_shift
    if b is not None:
        mu = minute.spend / b
        x = minute.orders
        s_stop = max(0.0, s_stop + x * math.log(params.rho_stop) + mu * (1.0 - params.rho_stop))
        s_shift = max(0.0,
                      s_shift + x * math.log(params.rho_shift) + mu * (1.0 - params.rho_shift))
    elif kind is None or kind == NO_BASELINE:
        s_stop = s_shift = 0.0  # no baseline: nothing to accumulate against
    # else: a CUSUM episode whose baseline is gone keeps its (capped) statistics

    if kind is None:
        fired: str | None = None
        statistic = 0.0
        if b is not None:
            if s_stop > h or s_shift > h:
                fired = ORDERS_STOPPED if s_stop >= s_shift else CPO_SHIFT
                statistic = max(s_stop, s_shift)
                s_stop, s_shift = min(s_stop, h), min(s_shift, h)
        elif minute.hour_orders == 0 and minute.hour_spend >= params.min_spend:
            fired = NO_BASELINE
        new = DetectorState(s_stop, s_shift, last_minute=minute.minute_end)
        if fired is None:
            return new, None
        started = minute.minute_end
        new = DetectorState(s_stop, s_shift, fired, alert_id_of(dimension, group, started),
                            started, minute.minute_end, statistic)
        return new, Transition("firing", _message(new, minute, b, "firing", dimension, group))

    # firing: cap, then decide whether the episode is over
    s_stop, s_shift = min(s_stop, h), min(s_shift, h)
    if kind == NO_BASELINE or b is None:
        resolved = minute.orders > 0 or minute.hour_orders > 0 or (
            kind == NO_BASELINE and b is not None)
    else:
        resolved = s_stop < h / 4 and s_shift < h / 4
    if not resolved:
        return DetectorState(s_stop, s_shift, kind, state.alert_id, state.started_at,
                             minute.minute_end, state.statistic), None
    if not (s_stop < h / 4 and s_shift < h / 4):
        s_stop = s_shift = 0.0  # resolved by an order: start the next one afresh
    message = _message(state, minute, b, "resolved", dimension, group)
    return DetectorState(s_stop, s_shift, last_minute=minute.minute_end), Transition(
        "resolved", message)


def _message(
    episode: DetectorState,
    minute: MinuteInput,
    b: float | None,
    state: Literal["firing", "resolved"],
    dimension: str,
    group: str,
) -> dict[str, Any]:
    assert episode.firing_kind is not None and episode.started_at is not None
    hour_spend = float(minute.hour_spend)
    hour_orders = int(minute.hour_orders)
    return {
        "schema_version": SCHEMA_VERSION,
        "alert_id": episode.alert_id,
        "alert": ALERT,
        "kind": episode.firing_kind,
        "state": state,
        "dimension": dimension,
        "group": group,
        "statistic": None if episode.firing_kind == NO_BASELINE else episode.statistic,
        "baseline_cpo": b,
        "spend": hour_spend,
        "orders": hour_orders,
        "expected_orders": None if b is None else hour_spend / b,
        "cpo": hour_spend / hour_orders if hour_orders > 0 else None,
        "started_at": episode.started_at,
        "updated_at": minute.minute_end,
    }

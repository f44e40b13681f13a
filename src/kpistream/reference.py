"""The batch oracle used by the tests: events in, expected rows out, written for clarity.

Independent of the streaming engine (nothing from ``kpistream.state`` or the engine's
agents): it re-reads SPEC.md §1, §3 and §4 one event at a time. The KPI formulas are shared
(``kpistream.kpi.formulas``, tested on their own) because they are a pure definition.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from kpistream.contracts.records import Event, Order, Spend, Survey
from kpistream.kpi.formulas import WindowSums, compute_kpis


@dataclass(frozen=True)
class Outcome:
    """How every event was judged, in processing order."""

    accepted: list[Event] = field(default_factory=list)
    duplicates: list[Event] = field(default_factory=list)
    late: list[Event] = field(default_factory=list)
    unknown_orders: list[Event] = field(default_factory=list)
    retracted: frozenset[str] = frozenset()  # order_ids whose placed order is cancelled


def classify(events: Iterable[Event], *, retention_ms: int,
             clock_floor_ms: Callable[[int], int] | None = None) -> Outcome:
    """Judge events in order: late, duplicate, unknown cancellation, or accepted.

    Stream time T is the latest ts of the non-late events so far (never below the floor, when
    one is given for the i-th event); an event is late when ts < T - retention. Ids are
    remembered for the whole run. A cancellation retracts its placed order whichever of the
    two arrives first; it is an unknown order only when it arrives before its order.
    """
    accepted: list[Event] = []
    duplicates: list[Event] = []
    late: list[Event] = []
    unknown: list[Event] = []
    seen: set[tuple[str, str]] = set()
    placed_ids: set[str] = set()
    cancelled_ids: set[str] = set()
    stream_time: int | None = None
    for index, event in enumerate(events):
        t = stream_time
        if clock_floor_ms is not None:
            floor = clock_floor_ms(index)
            t = floor if t is None else max(t, floor)
        if t is not None and event.ts < t - retention_ms:
            late.append(event)
            continue
        stream_time = event.ts if stream_time is None else max(stream_time, event.ts)
        if isinstance(event, Order):
            identity = (f"order:{event.status}", event.order_id)
        else:
            identity = (event.kind, event.id)
        if identity in seen:
            duplicates.append(event)
            continue
        seen.add(identity)
        if isinstance(event, Order) and event.status == "cancelled":
            cancelled_ids.add(event.order_id)
            if event.order_id in placed_ids:
                accepted.append(event)
            else:
                unknown.append(event)
            continue
        if isinstance(event, Order):
            placed_ids.add(event.order_id)
        accepted.append(event)
    return Outcome(accepted, duplicates, late, unknown, frozenset(cancelled_ids & placed_ids))


def _group_of(event: Event, dimension: str) -> str | None:
    if dimension == "all":
        return "all"
    if dimension == "channel":
        return event.channel
    if dimension == "campaign":
        return event.campaign_id
    if dimension == "segment":
        return None if isinstance(event, Spend) else event.segment
    raise ValueError(f"unknown dimension {dimension!r}")


def _counted(outcome: Outcome) -> list[Order | Spend | Survey]:
    """Accepted events that count: placed orders not retracted, spend, survey responses."""
    out: list[Order | Spend | Survey] = []
    for event in outcome.accepted:
        if isinstance(event, Order):
            if event.status == "placed" and event.order_id not in outcome.retracted:
                out.append(event)
        else:
            out.append(event)
    return out


def expected_row(outcome: Outcome, *, dimension: str, group: str, window_start: int,
                 window_end: int) -> WindowSums:
    """Sums of one row over ``[window_start, window_end)``."""
    orders = nps = promoters = passives = detractors = 0
    ces_n = ces_easy = csat_n = csat_ok = spend_records = 0
    revenue = spend = ces_sum = 0.0
    for event in _counted(outcome):
        if not window_start <= event.ts < window_end:
            continue
        if _group_of(event, dimension) != group:
            continue
        if isinstance(event, Order):
            orders += 1
            revenue += event.amount or 0.0
        elif isinstance(event, Spend):
            spend += event.amount
            spend_records += 1
        elif event.survey_kind == "nps":
            nps += 1
            promoters += event.score >= 9
            passives += 7 <= event.score <= 8
            detractors += event.score <= 6
        elif event.survey_kind == "ces":
            ces_n += 1
            ces_sum += event.score
            ces_easy += event.score >= 5
        else:
            csat_n += 1
            csat_ok += event.score >= 4
    return WindowSums(orders, revenue, spend, spend_records, nps, promoters, passives,
                      detractors, ces_n, ces_sum, ces_easy, csat_n, csat_ok)


def expected_rows(outcome: Outcome, *, window_start: int,
                  window_end: int) -> dict[tuple[str, str], WindowSums]:
    """Every (dimension, group) whose window holds at least one counted event."""
    keys: set[tuple[str, str]] = set()
    for event in _counted(outcome):
        if window_start <= event.ts < window_end:
            for dimension in ("all", "channel", "campaign", "segment"):
                group = _group_of(event, dimension)
                if group is not None:
                    keys.add((dimension, group))
    return {key: expected_row(outcome, dimension=key[0], group=key[1],
                              window_start=window_start, window_end=window_end)
            for key in sorted(keys)}


def expected_kpis(sums: WindowSums, dimension: str) -> dict[str, float | int | None]:
    return compute_kpis(sums, with_spend=dimension != "segment")


def window_bounds(stream_time_ms: int, size_ms: int, step_ms: int) -> tuple[int, int]:
    """``window_end`` is the end of the STEP bucket containing T; start = end - SIZE."""
    end = (stream_time_ms // step_ms + 1) * step_ms
    return end - size_ms, end

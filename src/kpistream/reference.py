"""The batch oracle used by the tests: events in, expected rows out, written for clarity.

Independent of the streaming engine (nothing from ``kpistream.state`` or the engine's
agents): it re-reads SPEC.md §1, §3, §4 and §8 one event at a time, slowly and obviously.
The KPI formulas are shared (``kpistream.kpi.formulas``, tested on their own) because they are
a pure definition.

Rules, in the order :func:`classify` applies them to each event ``e``:

1. Stream time. ``T`` starts at -inf. Before judging ``e``, ``T_e = max(T, floor)`` where
   ``floor`` is ``clock_floor_ms(index)`` (the live clock's lower bound) or -inf. ``e`` is
   *late* when ``e.ts < T_e - retention_ms``; a late event changes nothing else. Every
   non-late event (duplicates included) advances ``T = max(T, e.ts)``.
2. De-duplication. A second spend with the same ``spend_id``, survey with the same
   ``response_id``, or order with the same ``order_id`` *and* ``status`` is a *duplicate*,
   whatever its content, when the id's last accepted use is within the retention before
   ``max(e.ts, T_e)`` (SPEC §1: "already seen within retention"; like a cancellation's
   expiry, rule 3); an older use is forgotten and the event is judged as new.
3. Cancellations (SPEC §1), decided here event by event (``Outcome.retractions``):

   - of a placed order already accepted, with ``order.ts >= max(cancellation.ts, T_e) -
     retention_ms``: accepted, and it retracts the order;
   - of a placed order already accepted and older than that: the order has *expired*
     ("never seen, or already expired"; it would be late now, its bucket is no longer
     retained and its attribution day may be final). The cancellation is an *unknown
     order* and does not retract it: the order stays counted in rows and profiles;
   - of an order never accepted (not seen yet, or seen only late): an *unknown order*.

   An unknown-order cancellation, of either kind, waits: if a placed order of its id arrives
   later with a ``ts`` at or before the cancellation's (and not more than the retention
   before it), the cancellation was produced after that order and overtook it (another
   partition, or read sooner): the order is accepted and at once retracted, so the rows do
   not depend on keying or arrival order (SPEC §4). Otherwise the cancellation changed
   nothing and the order counts. (Both kinds alike, so that the verdict never depends on
   whether a streaming engine still holds the expired order's id or has swept it.)

   A second cancellation of an order is a duplicate (rule 2), whatever happened to the first.

A retracted order counts nowhere: it disappears from the bucket of its own (placed) ``ts``.

Customers (SPEC §8) with ``customer_retention_ms`` ``R`` (:func:`classify`'s argument; None:
profiles never expire): a customer's counted facts (its counted orders and its responses),
by ``ts``, fall into *spells* wherever two consecutive facts are more than ``R`` apart — the
profile expired in between, and the later fact started a new one. The profile is the last
spell's; it is absent when that spell's newest fact is older than ``W - R`` (the low
watermark the deployment ended at). A spell's first counted order is the earliest of its
counted orders by ``(ts, order_id)``; ``new_customers`` of a row counts the first orders of
every spell that are in the window and in the row, ``returning_orders`` the row's other
counted orders. Without ``R`` a customer has one spell over the whole run.

Segment rows carry allocated spend (SPEC §4): for each campaign with orders in the window,
its spend in the window times the share of its orders that are in the segment.

Customer attribution (SPEC §8), given the low watermark ``W``, ``retention_ms`` (the largest
window plus grace) and ``period_ms`` (``attribution_period``); without ``W`` no attribution
field is computed:

- an order's attribution day is ``[D, D + period_ms)`` with ``D = ts - ts % period_ms``
  (epoch-aligned; Python's ``%`` floors, also for negative ``ts``); the day is *final* iff
  ``D + period_ms + retention_ms <= W``;
- a campaign's CPO on a day is the amount of its counted spend with ``ts`` in the day over the
  number of its counted orders (of any customer, or none) with ``ts`` in the day; 0.0 when it
  has no spend that day;
- a customer's *costed* orders are its counted orders whose campaign is not ``unattributed``
  and whose day is final. ``marketing_cost`` sums their campaigns' CPO on their days (in
  ``(ts, order_id)`` order), ``costed_orders`` counts them, ``costed_revenue`` sums their
  amounts (these three are always present, also for customers with responses only);
  ``cpo = marketing_cost / costed_orders`` (absent when 0 orders); ``acquisition_cost`` is the
  CPO of the first counted order when that order is costed (absent otherwise);
  ``value_ratio = costed_revenue / marketing_cost`` (absent when the cost is 0).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from kpistream.contracts.records import (
    UNATTRIBUTED,
    Event,
    Order,
    Spend,
    Survey,
    expired_order_id,
)
from kpistream.kpi.formulas import WindowSums, compute_kpis

DIMENSIONS: tuple[str, ...] = ("all", "channel", "campaign", "segment")


@dataclass(frozen=True)
class Outcome:
    """How every event was judged, each list in processing order."""

    accepted: list[Event] = field(default_factory=list)
    duplicates: list[Event] = field(default_factory=list)
    late: list[Event] = field(default_factory=list)
    unknown_orders: list[Event] = field(default_factory=list)
    #: ids of the orders :func:`classify` decided to retract (rule 3)
    retractions: set[str] = field(default_factory=set)
    #: the customer retention the profiles expire by (None: never)
    customer_retention_ms: int | None = None
    #: what the functions below derive from the judgements, kept while they do not change:
    #: the tests ask for hundreds of rows of one outcome, each once per window position
    _memo: dict[Any, Any] = field(default_factory=dict, init=False, repr=False,
                                  compare=False)

    @property
    def retracted(self) -> frozenset[str]:
        """Ids of accepted placed orders that a cancellation retracts (one accepted after
        them, or an unknown one before them); a cancellation after expiry retracts nothing."""
        placed = {e.order_id for e in self.accepted
                  if isinstance(e, Order) and e.status == "placed"}
        return frozenset(placed & self.retractions)


MEMO_ENTRIES = 512  # window positions kept per outcome (a test polls a few at a time)


def _memoised(outcome: Outcome, key: Any, build: Callable[[], Any]) -> Any:
    """``build()``, computed once per outcome and ``key`` as long as the outcome's lists
    keep their lengths (:func:`classify` only appends)."""
    memo = outcome._memo
    stamp = (len(outcome.accepted), len(outcome.retractions))
    if memo.get("stamp") != stamp or len(memo) > MEMO_ENTRIES:
        memo.clear()
        memo["stamp"] = stamp
    if key not in memo:
        memo[key] = build()
    return memo[key]


def _identity(event: Event) -> tuple[str, str]:
    """The de-duplication key: one id space per kind; orders also by status."""
    if isinstance(event, Order):
        return (f"order:{event.status}", event.order_id)
    return (event.kind, event.id)


def classify(events: Iterable[Event], *, retention_ms: int,
             clock_floor_ms: Callable[[int], int] | None = None,
             customer_retention_ms: int | None = None) -> Outcome:
    """Judge events in order: late, duplicate, unknown cancellation, or accepted.

    ``clock_floor_ms(i)``, when given, is the lower bound of stream time when the i-th event
    (0-based, counting every event) is judged, e.g. wall clock minus ``idle_lag`` in live mode.
    """
    outcome = Outcome(customer_retention_ms=customer_retention_ms)
    stream_time: int | None = None  # None = -inf
    seen: dict[tuple[str, str], int] = {}  # identity -> ts of its last accepted use
    placed_at: dict[str, int] = {}  # accepted placed order -> its ts
    cancelled_first: dict[str, int] = {}  # cancellation of an order not seen yet -> its ts

    for index, event in enumerate(events):
        # 1. late?
        judged_at = stream_time
        if clock_floor_ms is not None:
            floor = clock_floor_ms(index)
            judged_at = floor if judged_at is None else max(judged_at, floor)
        if judged_at is not None and event.ts < judged_at - retention_ms:
            outcome.late.append(event)
            continue
        stream_time = event.ts if stream_time is None else max(stream_time, event.ts)

        # 2. duplicate?
        identity = _identity(event)
        horizon = (event.ts if judged_at is None else max(event.ts, judged_at)) - retention_ms
        if seen.get(identity, horizon - 1) >= horizon:
            outcome.duplicates.append(event)
            continue
        seen[identity] = event.ts

        # 3. a cancellation: of an order not (yet) seen, of an expired one, or one to retract?
        if isinstance(event, Order) and event.status == "cancelled":
            placed = placed_at.get(event.order_id)
            if placed is None:
                cancelled_first[event.order_id] = event.ts
                outcome.unknown_orders.append(event)
            elif placed < max(event.ts, judged_at if judged_at is not None
                              else event.ts) - retention_ms:  # expired: stays counted
                # and, like a cancellation of an order not seen yet, retracts a new order
                # of the id placed at or before it that comes later (rule 3)
                cancelled_first[event.order_id] = event.ts
                outcome.unknown_orders.append(event)
            else:
                outcome.retractions.add(event.order_id)
                outcome.accepted.append(event)
            continue
        if isinstance(event, Order):
            if event.order_id in placed_at:
                # The id's earlier order expired (rule 2): it stays its customer's order
                # under another name, and a cancellation now concerns only the new one.
                alias = expired_order_id(event.order_id, placed_at[event.order_id])
                outcome.accepted[:] = [
                    e._replace(order_id=alias) if isinstance(e, Order) and e.status == "placed"
                    and e.order_id == event.order_id else e for e in outcome.accepted]
                if event.order_id in outcome.retractions:
                    outcome.retractions.discard(event.order_id)
                    outcome.retractions.add(alias)
            placed_at[event.order_id] = event.ts
            cancelled_ts = cancelled_first.get(event.order_id)
            if (cancelled_ts is not None
                    and cancelled_ts - retention_ms <= event.ts <= cancelled_ts):
                outcome.retractions.add(event.order_id)
        outcome.accepted.append(event)
    return outcome


def group_of(event: Event, dimension: str) -> str | None:
    """The group ``event`` counts in on ``dimension``; None when it has no such field."""
    if dimension == "all":
        return "all"
    if dimension == "channel":
        return event.channel
    if dimension == "campaign":
        return event.campaign_id
    if dimension == "segment":
        return None if isinstance(event, Spend) else event.segment
    raise ValueError(f"unknown dimension {dimension!r}")


def counted_events(outcome: Outcome) -> list[Order | Spend | Survey]:
    """Accepted events that count: placed orders not retracted, spend, survey responses."""
    return list(_counted(outcome))


def _counted(outcome: Outcome) -> tuple[Order | Spend | Survey, ...]:
    def build() -> tuple[Order | Spend | Survey, ...]:
        retracted = outcome.retracted
        out: list[Order | Spend | Survey] = []
        for event in outcome.accepted:
            if isinstance(event, Order):
                if event.status == "placed" and event.order_id not in retracted:
                    out.append(event)
            else:
                out.append(event)
        return tuple(out)
    return _memoised(outcome, "counted", build)  # type: ignore[no-any-return]


def spells(outcome: Outcome) -> dict[str, list[list[Order | Survey]]]:
    """Each customer's counted facts by ``(ts, kind, id)``, split into spells where two
    consecutive facts are more than the customer retention apart."""
    def build() -> dict[str, list[list[Order | Survey]]]:
        facts: dict[str, list[Order | Survey]] = {}
        for event in _counted(outcome):
            if isinstance(event, Order | Survey) and event.customer_id is not None:
                facts.setdefault(event.customer_id, []).append(event)
        limit = outcome.customer_retention_ms
        out: dict[str, list[list[Order | Survey]]] = {}
        for customer, mine in facts.items():
            mine.sort(key=lambda e: (e.ts, e.kind, e.id))
            split: list[list[Order | Survey]] = [[mine[0]]]
            for before, event in pairwise(mine):
                if limit is not None and event.ts - before.ts > limit:
                    split.append([])
                split[-1].append(event)
            out[customer] = split
        return out
    return _memoised(outcome, "spells", build)  # type: ignore[no-any-return]


def first_orders(outcome: Outcome) -> list[Order]:
    """The first counted order of every spell of every customer: earliest ``ts``, ties the
    smallest order_id."""
    return list(_first_orders(outcome))


def _first_orders(outcome: Outcome) -> list[Order]:
    def build() -> list[Order]:
        first: list[Order] = []
        for split in spells(outcome).values():
            for spell in split:
                orders = [e for e in spell if isinstance(e, Order)]
                if orders:
                    first.append(min(orders, key=lambda o: (o.ts, o.order_id)))
        return first
    return _memoised(outcome, "first", build)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class _Window:
    """The counted events of ``[start, end)``, in processing order, and per row."""

    events: list[Order | Spend | Survey]
    by_row: dict[tuple[str, str], list[Order | Spend | Survey]]
    new_customers: dict[tuple[str, str], int]


def _window(outcome: Outcome, window_start: int, window_end: int) -> _Window:
    def build() -> _Window:
        events = [e for e in _counted(outcome) if window_start <= e.ts < window_end]
        by_row: dict[tuple[str, str], list[Order | Spend | Survey]] = {}
        for event in events:
            for dimension in DIMENSIONS:
                group = group_of(event, dimension)
                if group is not None:
                    by_row.setdefault((dimension, group), []).append(event)
        new_customers: dict[tuple[str, str], int] = {}
        for order in _first_orders(outcome):
            if window_start <= order.ts < window_end:
                for dimension in DIMENSIONS:
                    group = group_of(order, dimension)
                    if group is not None:
                        key = (dimension, group)
                        new_customers[key] = new_customers.get(key, 0) + 1
        return _Window(events, by_row, new_customers)
    return _memoised(outcome, ("window", window_start, window_end),  # type: ignore[no-any-return]
                     build)


def expected_row(outcome: Outcome, *, dimension: str, group: str, window_start: int,
                 window_end: int) -> WindowSums:
    """Sums of one row over the half-open interval ``[window_start, window_end)``."""
    if dimension not in DIMENSIONS:
        raise ValueError(f"unknown dimension {dimension!r}")
    window = _window(outcome, window_start, window_end)
    new_customers = window.new_customers.get((dimension, group), 0)
    orders = nps = promoters = passives = detractors = 0
    ces_n = ces_easy = csat_n = csat_ok = csat_tx_n = csat_tx_ok = spend_records = 0
    revenue = spend = ces_sum = 0.0
    for event in window.by_row.get((dimension, group), []):
        if isinstance(event, Order):
            orders += 1
            revenue += event.amount or 0.0
        elif isinstance(event, Spend):
            spend += event.amount
            spend_records += 1
        elif event.survey_kind == "nps":
            nps += 1
            if event.score >= 9:
                promoters += 1
            elif event.score >= 7:
                passives += 1
            else:
                detractors += 1
        elif event.survey_kind == "ces":
            ces_n += 1
            ces_sum += event.score
            if event.score >= 5:
                ces_easy += 1
        else:
            csat_n += 1
            if event.score >= 4:
                csat_ok += 1
            if event.order_id is not None:  # post-purchase satisfaction
                csat_tx_n += 1
                if event.score >= 4:
                    csat_tx_ok += 1
    return WindowSums(
        orders=orders, revenue=revenue, spend=spend, spend_records=spend_records,
        nps_responses=nps, promoters=promoters, passives=passives, detractors=detractors,
        ces_responses=ces_n, ces_sum=ces_sum, ces_easy=ces_easy,
        csat_responses=csat_n, csat_satisfied=csat_ok,
        csat_tx_responses=csat_tx_n, csat_tx_satisfied=csat_tx_ok,
        new_customers=new_customers,
    )


def allocated_spend(outcome: Outcome, *, segment: str, window_start: int,
                    window_end: int) -> float:
    """A segment's share of ad spend over ``[window_start, window_end)``: per campaign with
    orders in the window, its spend times (its orders in the segment / all its orders)."""
    campaign_orders: dict[str, int] = {}
    segment_orders: dict[str, int] = {}
    campaign_spend: dict[str, float] = {}
    for event in _window(outcome, window_start, window_end).events:
        if isinstance(event, Order):
            campaign_orders[event.campaign_id] = campaign_orders.get(event.campaign_id, 0) + 1
            if event.segment == segment:
                segment_orders[event.campaign_id] = segment_orders.get(event.campaign_id,
                                                                       0) + 1
        elif isinstance(event, Spend):
            campaign_spend[event.campaign_id] = (campaign_spend.get(event.campaign_id, 0.0)
                                                 + event.amount)
    total = 0.0
    for campaign in sorted(campaign_orders):
        total += (campaign_spend.get(campaign, 0.0) * segment_orders.get(campaign, 0)
                  / campaign_orders[campaign])
    return total


def expected_rows(outcome: Outcome, *, window_start: int,
                  window_end: int) -> dict[tuple[str, str], WindowSums]:
    """Every (dimension, group) whose window holds at least one counted event, sorted."""
    keys = _window(outcome, window_start, window_end).by_row
    return {key: expected_row(outcome, dimension=key[0], group=key[1],
                              window_start=window_start, window_end=window_end)
            for key in sorted(keys)}


def expected_kpis(sums: WindowSums, allocated: float | None = None
                  ) -> dict[str, float | int | None]:
    """The KPIs of a row from its sums; segment rows pass their allocated spend."""
    return compute_kpis(sums, allocated_spend=allocated)


def expected_row_kpis(outcome: Outcome, *, dimension: str, group: str, window_start: int,
                      window_end: int) -> dict[str, float | int | None]:
    """Every KPI of one row over ``[window_start, window_end)``."""
    sums = expected_row(outcome, dimension=dimension, group=group,
                        window_start=window_start, window_end=window_end)
    allocated = allocated_spend(outcome, segment=group, window_start=window_start,
                                window_end=window_end) if dimension == "segment" else None
    return expected_kpis(sums, allocated)


def window_bounds(stream_time_ms: int, size_ms: int, step_ms: int) -> tuple[int, int]:
    """``window_end`` is the end of the STEP bucket containing T; start = end - SIZE."""
    end = (stream_time_ms // step_ms + 1) * step_ms
    return end - size_ms, end


MINUTE_MS = 60_000
HOUR_MS = 3_600_000
ALERT_DIMENSIONS = ("all", "channel", "campaign")


@dataclass(frozen=True)
class AlertEpisodeEdge:
    """One transition of the CPO spike detector (SPEC §6)."""

    state: str  # "firing" | "resolved"
    kind: str
    dimension: str
    group: str
    started_at: int


def detector_minutes(outcome: Outcome) -> dict[tuple[str, str], dict[int, list[float]]]:
    """Per ``all``/``channel``/``campaign`` row, minute start -> ``[orders, spend]`` as the
    detector counts them, in event time: every accepted placed order in its own minute, and
    a cancellation that retracts one as -1 in the minute of the cancellation's own ts (in
    the order's rows). So a minute's input is complete once every event of its time is read,
    whatever came later (SPEC §6: the same episodes whatever the arrival)."""
    cancelled_at: dict[str, int] = {}
    for event in [*outcome.accepted, *outcome.unknown_orders]:
        if isinstance(event, Order) and event.status == "cancelled":
            cancelled_at.setdefault(event.order_id, event.ts)
    retracted = outcome.retracted
    per_minute: dict[tuple[str, str], dict[int, list[float]]] = {}

    def add(event: Order | Spend, ts: int, orders: int) -> None:
        minute = ts - ts % MINUTE_MS
        for dimension in ALERT_DIMENSIONS:
            group = group_of(event, dimension)
            sums = per_minute.setdefault((dimension, str(group)), {}).setdefault(
                minute, [0, 0.0])
            if isinstance(event, Order):
                sums[0] += orders
            else:
                sums[1] += event.amount

    for event in outcome.accepted:
        if isinstance(event, Spend):
            add(event, event.ts, 0)
        elif isinstance(event, Order) and event.status == "placed":
            add(event, event.ts, 1)
            if event.order_id in retracted:
                add(event, cancelled_at[event.order_id], -1)
    return per_minute


def expected_alerts(outcome: Outcome, params: Any, *, baseline_ms: int, baseline_step_ms: int,
                    last_minute_end: int) -> list[AlertEpisodeEdge]:
    """The detector (``kpistream.alerts.detector.evaluate``, a pure definition like the KPI
    formulas) run on the per-minute sums of :func:`detector_minutes`, for every minute of
    every ``all``/``channel``/``campaign`` row from its first event's minute to
    ``last_minute_end``. A minute, hour or baseline that sums below zero orders counts as
    none.

    Baseline of minute ``m``: the row's sums over the baseline window that ends at the last
    baseline STEP boundary at or before ``m`` (complete buckets only); last hour:
    ``[m - 1h, m)``."""
    from kpistream.alerts.detector import DetectorState, evaluate, minute_input

    per_minute = detector_minutes(outcome)

    def total(minutes: dict[int, list[float]], start: int, end: int) -> tuple[int, float]:
        orders, spend = 0, 0.0
        for minute, (n, amount) in minutes.items():
            if start <= minute < end:
                orders += int(n)
                spend += amount
        return orders, spend

    edges: list[AlertEpisodeEdge] = []
    for (dimension, group), minutes in sorted(per_minute.items()):
        state = DetectorState()
        first_minute_end = min(minutes) + MINUTE_MS
        for minute_end in range(first_minute_end, last_minute_end + 1, MINUTE_MS):
            here = minutes.get(minute_end - MINUTE_MS, [0, 0.0])
            base_end = minute_end - minute_end % baseline_step_ms
            base_orders, base_spend = total(minutes, base_end - baseline_ms, base_end)
            hour_orders, hour_spend = total(minutes, minute_end - HOUR_MS, minute_end)
            state, transition = evaluate(
                state, minute_input(minute_end, here[0], here[1], base_orders, base_spend,
                                    hour_orders, hour_spend),
                params, dimension=dimension, group=group)
            if transition is not None:
                message = transition.message
                edges.append(AlertEpisodeEdge(transition.state, message["kind"], dimension,
                                              group, message["started_at"]))
    return edges


# --- customer profiles (SPEC §8) ------------------------------------------------------------

PROFILE_NPS_PROMOTER, PROFILE_NPS_PASSIVE = 9, 7


def attribution_day(ts: int, period_ms: int) -> int:
    """Start of the epoch-aligned period holding ``ts`` (floor, also for negative ``ts``)."""
    return ts - ts % period_ms


def campaign_day_cpo(outcome: Outcome, *, period_ms: int) -> dict[tuple[str, int], float]:
    """(campaign, day start) -> the campaign's counted spend in the day over its counted
    orders (of any customer, or none) in the day; 0.0 without spend; absent when the campaign
    has no counted order that day (``unattributed`` is a campaign like the others here)."""
    spend: dict[tuple[str, int], float] = {}
    orders: dict[tuple[str, int], int] = {}
    for event in counted_events(outcome):
        key = (event.campaign_id, attribution_day(event.ts, period_ms))
        if isinstance(event, Spend):
            spend[key] = spend.get(key, 0.0) + event.amount
        elif isinstance(event, Order):
            orders[key] = orders.get(key, 0) + 1
    return {key: spend.get(key, 0.0) / n for key, n in orders.items()}


def expected_profiles(outcome: Outcome, *, watermark_ms: int | None = None,
                      retention_ms: int = 0, period_ms: int = 86_400_000
                      ) -> dict[str, dict[str, Any]]:
    """Every customer with a counted order or a response, and its profile's fields (without
    ``updated_at``). Undefined fields are absent. With ``watermark_ms`` (the low watermark
    the deployment ended at) also the attribution fields, costing the orders of the days
    final at it, and without the profiles expired at it (with a customer retention);
    without, none of them. A profile is its customer's last spell."""
    costs = campaign_day_cpo(outcome, period_ms=period_ms)

    def cost(order: Order) -> float | None:
        day = attribution_day(order.ts, period_ms)
        if (watermark_ms is None or order.campaign_id == UNATTRIBUTED
                or day + period_ms + retention_ms > watermark_ms):
            return None
        return costs[(order.campaign_id, day)]

    limit = outcome.customer_retention_ms
    profiles: dict[str, dict[str, Any]] = {}
    for customer, split in sorted(spells(outcome).items()):
        spell = split[-1]
        if (limit is not None and watermark_ms is not None
                and max(e.ts for e in spell) < watermark_ms - limit):
            continue  # expired
        mine = [e for e in spell if isinstance(e, Order)]
        answers = [e for e in spell if isinstance(e, Survey)]
        profile: dict[str, Any] = {"customer_id": customer, "orders": len(mine),
                                   "revenue": sum((o.amount or 0.0 for o in mine), 0.0)}
        if mine:
            first = min(mine, key=lambda o: (o.ts, o.order_id))
            latest = max(mine, key=lambda o: (o.ts, o.order_id))
            profile.update(aov=profile["revenue"] / len(mine), first_order_at=first.ts,
                           last_order_at=latest.ts, segment=latest.segment,
                           acquisition_channel=first.channel,
                           acquisition_campaign=first.campaign_id)
            if cost(first) is not None:
                profile["acquisition_cost"] = cost(first)
        if watermark_ms is not None:
            costed: list[tuple[Order, float]] = []
            for o in sorted(mine, key=lambda o: (o.ts, o.order_id)):
                c = cost(o)
                if c is not None:
                    costed.append((o, c))
            marketing = sum((c for _, c in costed), 0.0)
            revenue = sum((o.amount or 0.0 for o, _ in costed), 0.0)
            profile.update(marketing_cost=marketing, costed_orders=len(costed),
                           costed_revenue=revenue)
            if costed:
                profile["cpo"] = marketing / len(costed)
            if marketing:
                profile["value_ratio"] = revenue / marketing
        for kind in ("nps", "ces", "csat"):
            of_kind = [r for r in answers if r.survey_kind == kind]
            if of_kind:
                last = max(of_kind, key=lambda r: (r.ts, r.response_id))
                profile[f"{kind}_last"] = last.score
        if "nps_last" in profile:
            score = profile["nps_last"]
            profile["nps_category"] = ("promoter" if score >= PROFILE_NPS_PROMOTER else
                                       "passive" if score >= PROFILE_NPS_PASSIVE else
                                       "detractor")
        profile["last_activity_at"] = max([o.ts for o in mine] + [r.ts for r in answers])
        profiles[customer] = profile
    return profiles

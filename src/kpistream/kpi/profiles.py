"""Pure: a customer's value profile for the CRM (SPEC §8), from what the customer stage holds.

Fields and when each is undefined follow SPEC §8. The attribution fields (``marketing_cost``,
``costed_orders``, ``costed_revenue``, ``cpo``, ``acquisition_cost``, ``value_ratio``) cost
each counted order of an attributed campaign at its campaign's CPO on the order's day, once
that day is final (``cost_of`` returns None before): a published cost never changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from kpistream.contracts.records import UNATTRIBUTED
from kpistream.contracts.wire import CustomerRecord, OrderEntry
from kpistream.kpi.formulas import NPS_PASSIVE_MIN, NPS_PROMOTER_MIN

SCHEMA_VERSION = 1
ProfileMessage = dict[str, Any]

# Every field a profile message carries, in publishing order (undefined ones as None).
PROFILE_FIELDS: tuple[str, ...] = (
    "customer_id", "segment", "orders", "revenue", "aov", "first_order_at", "last_order_at",
    "acquisition_channel", "acquisition_campaign", "marketing_cost", "costed_orders",
    "costed_revenue", "cpo", "acquisition_cost", "value_ratio", "nps_last", "nps_category",
    "ces_last", "csat_last", "last_activity_at", "updated_at",
)
# Scores of the sorted sets a CRM reads "top customers" from: SPEC §8 names revenue and
# value_ratio; orders is the third ranking `kpistream customers --by` offers (SPEC §7).
RANKINGS: tuple[str, ...] = ("revenue", "value_ratio", "orders")

_TS, _AMOUNT, _CH, _CA, _SE = range(5)


@dataclass(frozen=True, slots=True)
class ProfileChange:
    """One profile to write; ``message`` None deletes it."""

    customer_id: str
    message: ProfileMessage | None


def nps_category(score: int) -> str:
    if score >= NPS_PROMOTER_MIN:
        return "promoter"
    return "passive" if score >= NPS_PASSIVE_MIN else "detractor"


CostOf = Callable[[OrderEntry], float | None]


def fact_times(record: CustomerRecord) -> list[int]:
    """The ts of every fact the record holds: its counted orders and its responses."""
    return [entry[_TS] for entry in record.orders.values()] + record.answered


def spell_start(record: CustomerRecord, retention_ms: int) -> int:
    """The ts of the first fact of the customer's last spell (SPEC §8 retention): the facts
    up to it are more than the customer retention older than the next one, so the profile
    holding them expired before the next one came. The profile is the last spell's."""
    times = sorted(fact_times(record), reverse=True)
    start = times[0]
    for ts in times[1:]:
        if start - ts > retention_ms:
            break
        start = ts
    return start


def spell_firsts(record: CustomerRecord, retention_ms: int) -> list[OrderEntry]:
    """The first counted order (earliest ``ts``, ties the smallest order_id) of each of the
    customer's spells that has an order: the orders that count in ``new_customers``."""
    orders = sorted((entry[_TS], order_id, entry) for order_id, entry in record.orders.items())
    if not orders:
        return []
    times = sorted(fact_times(record))
    if times[-1] - times[0] <= retention_ms:
        return [orders[0][2]]
    ends = [a for a, b in pairwise(times) if b - a > retention_ms]
    ends.append(times[-1])
    firsts: list[OrderEntry] = []
    i = 0
    for end in ends:  # the first order at or before a spell's end is the spell's first
        if i < len(orders) and orders[i][0] <= end:
            firsts.append(orders[i][2])
        while i < len(orders) and orders[i][0] <= end:
            i += 1
    return firsts


def build_profile(customer_id: str, record: CustomerRecord, now_ms: int,
                  cost_of: CostOf, retention_ms: int) -> ProfileMessage:
    """The Kafka form of the customer's last spell: every field present, undefined ones
    None. ``cost_of(entry)`` is an order's attribution cost once its day is final, else
    None."""
    start = spell_start(record, retention_ms)
    orders = {o: entry for o, entry in record.orders.items() if entry[_TS] >= start}
    profile: ProfileMessage = dict.fromkeys(PROFILE_FIELDS)
    profile["customer_id"] = customer_id
    profile["orders"] = len(orders)
    revenue = 0.0
    for order_id in sorted(orders):  # a fixed order: every worker sums to the same float
        revenue += float(orders[order_id][_AMOUNT] or 0.0)
    profile["revenue"] = revenue
    if orders:
        first = min(orders, key=lambda o: (orders[o][_TS], o))
        latest = max(orders, key=lambda o: (orders[o][_TS], o))
        profile["aov"] = revenue / len(orders)
        profile["first_order_at"] = orders[first][_TS]
        profile["last_order_at"] = orders[latest][_TS]
        profile["segment"] = orders[latest][_SE]
        profile["acquisition_channel"] = orders[first][_CH]
        profile["acquisition_campaign"] = orders[first][_CA]
        if orders[first][_CA] != UNATTRIBUTED:
            profile["acquisition_cost"] = cost_of(orders[first])
    marketing_cost = costed_revenue = 0.0
    costed = 0
    for order_id in sorted(orders, key=lambda o: (orders[o][_TS], o)):
        entry = orders[order_id]
        cost = None if entry[_CA] == UNATTRIBUTED else cost_of(entry)
        if cost is not None:
            marketing_cost += cost
            costed_revenue += float(entry[_AMOUNT] or 0.0)
            costed += 1
    profile.update(marketing_cost=marketing_cost, costed_orders=costed,
                   costed_revenue=costed_revenue)
    if costed:
        profile["cpo"] = marketing_cost / costed
    if marketing_cost:
        profile["value_ratio"] = costed_revenue / marketing_cost
    for kind in ("nps", "ces", "csat"):
        latest_response = record.responses.get(kind)
        if latest_response is not None and latest_response[0] >= start:
            profile[f"{kind}_last"] = latest_response[2]
    if profile["nps_last"] is not None:
        profile["nps_category"] = nps_category(profile["nps_last"])
    profile["last_activity_at"] = max(fact_times(record))
    profile["updated_at"] = now_ms
    profile["schema_version"] = SCHEMA_VERSION
    return profile

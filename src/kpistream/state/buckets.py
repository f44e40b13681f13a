"""Pure bucket and window arithmetic, and what one event adds to which row.

Every window ``SIZE/STEP`` keeps one additive bucket per STEP; a row's value over
``[window_end - SIZE, window_end)`` is the sum of its buckets in that interval. Sums are
tuples in :data:`kpistream.kpi.formulas.SUM_FIELDS` order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from kpistream.contracts.records import Event, Order, Spend, Survey
from kpistream.kpi.formulas import (
    CES_EASY_MIN,
    CSAT_SATISFIED_MIN,
    NPS_PASSIVE_MIN,
    NPS_PROMOTER_MIN,
    SUM_FIELDS,
)
from kpistream.settings import WindowSpec

Sums = tuple[float, ...]
RowId = tuple[str, str]  # (dimension, group)
# The published dimensions (SPEC §4), in display order.
DIMENSIONS: tuple[str, ...] = ("all", "channel", "campaign", "segment")
# the rows the CPO spike detector watches (SPEC §6)
ALERT_DIMENSIONS = frozenset({"all", "channel", "campaign"})
# Ad spend has no segment: segment rows carry spend allocated by each campaign's orders
# (SPEC §4). Two internal row kinds feed the allocation and are never published: a
# campaign's orders per segment (group :func:`allocation_group`) and a campaign's spend. They
# live on the roll-up partition of the segment rows, so a segment row's allocation is
# computed where all its inputs are.
ALLOCATED_DIMENSION = "segment"
ALLOCATION_ORDERS = "campaign_segment"
ALLOCATION_SPEND = "campaign_spend"
ALLOCATION_DIMENSIONS = frozenset({ALLOCATION_ORDERS, ALLOCATION_SPEND})
GROUP_SEP = "\x1f"
ZERO: Sums = (0,) * len(SUM_FIELDS)
_IDX = {name: i for i, name in enumerate(SUM_FIELDS)}


def bucket_start(ts: int, step_ms: int) -> int:
    """Start of the STEP bucket holding ``ts`` (floor, also for negative times)."""
    return ts - ts % step_ms


def window_end(stream_time: int, step_ms: int) -> int:
    """End of the STEP bucket that contains stream time T (SPEC §3)."""
    return (stream_time // step_ms + 1) * step_ms


def bucket_expired(bucket: int, spec: WindowSpec, stream_time: int, grace_ms: int) -> bool:
    """True when the bucket can never again be inside this window: it ended more than
    SIZE + grace before stream time, so no current or future window covers it."""
    return bucket + spec.step_ms <= stream_time - spec.size_ms - grace_ms


def contribution(event: Event) -> Sums:
    """What one accepted event adds to every row it belongs to."""
    out = [0.0] * len(SUM_FIELDS)
    for index, value in contribution_items(event):
        out[index] = value
    return tuple(out)


_ORDERS, _REVENUE = _IDX["orders"], _IDX["revenue"]
_SPEND, _SPEND_RECORDS = _IDX["spend"], _IDX["spend_records"]
_NPS = (_IDX["nps_responses"], _IDX["promoters"], _IDX["passives"], _IDX["detractors"])
_CES = (_IDX["ces_responses"], _IDX["ces_sum"], _IDX["ces_easy"])
_CSAT = (_IDX["csat_responses"], _IDX["csat_satisfied"])
_CSAT_TX = (_IDX["csat_tx_responses"], _IDX["csat_tx_satisfied"])


def contribution_items(event: Event) -> list[tuple[int, float]]:
    """:func:`contribution` as its non-zero ``(field index, amount)`` pairs: the aggregate
    adds these to a dozen buckets per event (most of an event's 16 fields are zero)."""
    if isinstance(event, Order):
        amount = event.amount or 0.0
        return [(_ORDERS, 1), (_REVENUE, amount)] if amount else [(_ORDERS, 1)]
    if isinstance(event, Spend):
        return [(_SPEND, event.amount), (_SPEND_RECORDS, 1)] if event.amount else [
            (_SPEND_RECORDS, 1)]
    score = event.score
    if event.survey_kind == "nps":
        category = (1 if score >= NPS_PROMOTER_MIN else 2 if score >= NPS_PASSIVE_MIN else 3)
        return [(_NPS[0], 1), (_NPS[category], 1)]
    if event.survey_kind == "ces":
        items: list[tuple[int, float]] = [(_CES[0], 1)]
        if score:
            items.append((_CES[1], score))
        if score >= CES_EASY_MIN:
            items.append((_CES[2], 1))
        return items
    satisfied = score >= CSAT_SATISFIED_MIN
    items = [(_CSAT[0], 1)]
    if satisfied:
        items.append((_CSAT[1], 1))
    if event.order_id is not None:  # post-purchase: also transactional CSAT
        items.append((_CSAT_TX[0], 1))
        if satisfied:
            items.append((_CSAT_TX[1], 1))
    return items


def rows_of(event: Order | Spend | Survey) -> list[RowId]:
    """Rows of every dimension the event's fields name (ad spend has no segment), plus the
    internal allocation row of an order or a spend."""
    rows: list[RowId] = [("all", "all"), ("channel", event.channel),
                         ("campaign", event.campaign_id)]
    if isinstance(event, Spend):
        rows.append((ALLOCATION_SPEND, event.campaign_id))
        return rows
    rows.append(("segment", event.segment))
    if isinstance(event, Order):
        rows.append((ALLOCATION_ORDERS, allocation_group(event.campaign_id, event.segment)))
    return rows


def allocation_group(campaign: str, segment: str) -> str:
    """The group of a campaign's orders in a segment: ``campaign<SEP>segment``. A name may
    hold any character (SPEC §1), the separator too: a campaign that holds it, or is empty,
    is written ``<SEP>length<SEP>campaign segment`` instead, which no plain group starts with
    (the plain form, kept for every other name, is what earlier versions wrote)."""
    if campaign and GROUP_SEP not in campaign:
        return f"{campaign}{GROUP_SEP}{segment}"
    return f"{GROUP_SEP}{len(campaign)}{GROUP_SEP}{campaign}{segment}"


def split_allocation_group(group: str) -> tuple[str, str]:
    """``(campaign, segment)`` of an :func:`allocation_group`."""
    if not group.startswith(GROUP_SEP):
        campaign, segment = group.split(GROUP_SEP, 1)
        return campaign, segment
    length, rest = group[1:].split(GROUP_SEP, 1)
    return rest[:int(length)], rest[int(length):]


def partition_key(row: RowId) -> str:
    """What places a row on a roll-up partition: segment rows and the allocation rows
    together, every other row by itself."""
    if row[0] == ALLOCATED_DIMENSION or row[0] in ALLOCATION_DIMENSIONS:
        return ALLOCATED_DIMENSION
    return f"{row[0]}{GROUP_SEP}{row[1]}"


def allocate_spend(campaign_orders: dict[str, dict[str, int]],
                   campaign_spend: dict[str, float]) -> dict[str, float]:
    """Spend per segment: ``sum_c spend(c) * orders(c, s) / orders(c)`` over the campaigns
    with orders in the window (SPEC §4). ``campaign_orders[c][s]`` are one window's orders of
    campaign c in segment s; a campaign without orders allocates nothing. Summed in campaign
    order so every worker gets the same float."""
    allocated: dict[str, float] = {}
    for campaign in sorted(campaign_orders):
        by_segment = campaign_orders[campaign]
        orders = sum(by_segment.values())
        spend = campaign_spend.get(campaign, 0.0)
        if orders <= 0:
            continue
        for segment, n in by_segment.items():
            if n > 0:
                allocated[segment] = allocated.get(segment, 0.0) + spend * n / orders
    return allocated


def add(a: Sequence[float], b: Sequence[float], sign: int = 1) -> Sums:
    return tuple(x + sign * y for x, y in zip(a, b, strict=True))


def total(parts: Iterable[Sequence[float]]) -> Sums:
    """Field-wise sum of several sums vectors."""
    columns = list(zip(*parts, strict=True))
    return tuple(map(sum, columns)) if columns else (0.0,) * len(SUM_FIELDS)

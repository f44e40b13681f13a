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
DIMENSIONS: tuple[str, ...] = ("all", "channel", "campaign", "segment")
SPENDLESS_DIMENSIONS = frozenset({"segment"})
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


def _vector(**values: float) -> Sums:
    out = [0.0] * len(SUM_FIELDS)
    for name, value in values.items():
        out[_IDX[name]] = value
    return tuple(out)


def contribution(event: Event) -> Sums:
    """What one accepted event adds to every row it belongs to."""
    if isinstance(event, Order):
        return _vector(orders=1, revenue=event.amount or 0.0)
    if isinstance(event, Spend):
        return _vector(spend=event.amount, spend_records=1)
    score = event.score
    if event.survey_kind == "nps":
        return _vector(
            nps_responses=1,
            promoters=int(score >= NPS_PROMOTER_MIN),
            passives=int(NPS_PASSIVE_MIN <= score < NPS_PROMOTER_MIN),
            detractors=int(score < NPS_PASSIVE_MIN),
        )
    if event.survey_kind == "ces":
        return _vector(ces_responses=1, ces_sum=score, ces_easy=int(score >= CES_EASY_MIN))
    return _vector(csat_responses=1, csat_satisfied=int(score >= CSAT_SATISFIED_MIN))


def rows_of(event: Order | Spend | Survey) -> list[RowId]:
    """Rows of every dimension the event's fields name (ad spend has no segment)."""
    rows: list[RowId] = [("all", "all"), ("channel", event.channel),
                         ("campaign", event.campaign_id)]
    if not isinstance(event, Spend):
        rows.append(("segment", event.segment))
    return rows


def add(a: Sequence[float], b: Sequence[float], sign: int = 1) -> Sums:
    return tuple(x + sign * y for x, y in zip(a, b, strict=True))


def total(parts: Iterable[Sequence[float]]) -> Sums:
    """Field-wise sum of several sums vectors."""
    columns = list(zip(*parts, strict=True))
    return tuple(map(sum, columns)) if columns else (0.0,) * len(SUM_FIELDS)

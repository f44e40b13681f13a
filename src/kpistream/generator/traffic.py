"""Seeded synthetic traffic: orders, ad spend and survey responses as raw input records.

Deterministic for a seed, so tests and demos are reproducible. Campaigns belong to channels,
order rates follow a daily rhythm, spend is reported per campaign per minute with noise, and
optional anomalies change one campaign from a given time: ``stop`` (orders stop, spend goes
on) or ``cpo`` (orders fall by ``factor``, i.e. CPO multiplied by it).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

CHANNELS = ("search", "social", "email", "display", "affiliate", "video")
SEGMENTS = ("new", "returning", "vip", "churn-risk", "b2b")
CURRENCIES = ("EUR", "EUR", "EUR", "USD", "GBP")
# Score distributions of a healthy shop: NPS around +30, CES mostly easy, CSAT ~80%.
NPS_WEIGHTS = (2, 1, 1, 2, 2, 4, 5, 10, 15, 25, 33)
CES_WEIGHTS = (3, 5, 8, 14, 25, 27, 18)
CSAT_WEIGHTS = (4, 5, 11, 38, 42)
# Share of a segment's orders placed by a customer who ordered before.
REPEAT_SHARE = {"new": 0.1, "returning": 0.6, "vip": 0.75, "churn-risk": 0.3, "b2b": 0.5}
DELAY_MAX_MS = 10 * 60_000
POST_PURCHASE_SHARE = 0.6  # of CSAT responses: about an order (order_id), the rest general
MINUTE_MS = 60_000
HOUR_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class Anomaly:
    campaign: str
    start_ms: int
    kind: str = "stop"  # "stop" | "cpo"
    factor: float = 3.0

    def order_multiplier(self, ts: int, campaign: str) -> float:
        if campaign != self.campaign or ts < self.start_ms:
            return 1.0
        return 0.0 if self.kind == "stop" else 1.0 / self.factor


@dataclass(frozen=True, slots=True)
class Record:
    """One raw input record: which input (``order``/``spend``/``survey``) and its JSON."""

    kind: str
    value: dict[str, object]


@dataclass
class TrafficConfig:
    seed: int = 1
    start_ms: int = 0
    duration_ms: int = HOUR_MS
    orders_per_hour: float = 2000.0  # across all campaigns, before the daily rhythm
    campaigns: int = 12
    channels: int = len(CHANNELS)
    spend_every_min: int = 1  # one ad-spend record per campaign per this many minutes
    cpo_eur: float = 8.0
    survey_ratio: float = 0.3  # survey responses per order
    cancel_ratio: float = 0.03
    delayed_ratio: float = 0.0  # share of orders delivered up to 10 minutes after their ts
    duplicate_ratio: float = 0.0  # share of records sent twice
    rfc3339_ratio: float = 0.5  # share of ts written as RFC 3339 strings (rest epoch ms)
    daily_rhythm: bool = False
    anomalies: list[Anomaly] = field(default_factory=list)


def iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).isoformat(timespec="milliseconds")


class TrafficGenerator:
    def __init__(self, config: TrafficConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        rng = self.rng
        channels = [*CHANNELS, *(f"channel-{i}" for i in range(len(CHANNELS) + 1,
                                                                config.channels + 1))]
        channels = channels[:config.channels]
        self.campaigns = [
            (f"cmp-{i:03d}", channels[i % len(channels)], rng.uniform(0.3, 3.0))
            for i in range(config.campaigns)
        ]
        weight = sum(w for _, _, w in self.campaigns)
        self.rate_share = {name: w / weight for name, _, w in self.campaigns}
        self.seq = 0
        self.customers: dict[str, list[str]] = {segment: [] for segment in SEGMENTS}
        self.known_customers = 0

    def _ts_value(self, ts: int) -> object:
        return iso(ts) if self.rng.random() < self.config.rfc3339_ratio else ts

    def _id(self, prefix: str) -> str:
        self.seq += 1
        return f"{prefix}-{self.config.seed}-{self.seq}"

    def _rhythm(self, ts: int) -> float:
        if not self.config.daily_rhythm:
            return 1.0
        hour = (ts / HOUR_MS) % 24
        return 0.55 + 0.45 * math.sin((hour - 9) / 24 * 2 * math.pi)

    def records(self) -> Iterator[Record]:
        """All records of the configured span, in event-time order per minute."""
        cfg, rng = self.config, self.rng
        placed: list[dict[str, object]] = []
        stop = cfg.start_ms + cfg.duration_ms
        for minute_start in range(cfg.start_ms, stop, MINUTE_MS):
            batch: list[Record] = []
            # the last minute may be cut short by the duration: fewer events, all within it
            span = min(MINUTE_MS, stop - minute_start)
            rhythm = self._rhythm(minute_start) * span / MINUTE_MS
            minute_index = (minute_start - cfg.start_ms) // MINUTE_MS
            report_spend = (minute_index + 1) % cfg.spend_every_min == 0
            for name, channel, _ in self.campaigns:
                expected = cfg.orders_per_hour / 60 * self.rate_share[name] * rhythm
                mult = min((a.order_multiplier(minute_start, name) for a in cfg.anomalies),
                           default=1.0)
                for _ in range(_poisson(rng, expected * mult)):
                    batch.append(self._order(minute_start, span, name, channel, placed))
                if not report_spend:
                    continue
                spend = (expected * cfg.spend_every_min * cfg.cpo_eur
                         * rng.uniform(0.9, 1.1))
                end = minute_start + span - 1
                batch.append(Record("spend", {
                    "spend_id": self._id("s"), "ts": self._ts_value(end),
                    "campaign_id": name, "channel": channel,
                    "amount": f"{spend:.2f}" if rng.random() < 0.5 else round(spend, 2),
                    "currency": "EUR"}))
            for _ in range(_poisson(rng, cfg.orders_per_hour / 60 * rhythm * cfg.survey_ratio)):
                batch.append(self._survey(minute_start, span, placed))
            for _ in range(_poisson(rng, cfg.orders_per_hour / 60 * rhythm * cfg.cancel_ratio)):
                if placed:
                    order = placed.pop(rng.randrange(len(placed)))
                    # after its order: an order placed late in this minute is cancelled later
                    earliest = max(minute_start, event_time_ms(order) + 1)
                    if earliest >= minute_start + span:
                        placed.append(order)
                        continue
                    batch.append(Record("order", {
                        "order_id": order["order_id"], "status": "cancelled",
                        "ts": self._ts_value(earliest + rng.randrange(
                            minute_start + span - earliest))}))
            batch.sort(key=lambda r: event_time_ms(r.value))
            for record in batch:
                yield record
                if cfg.duplicate_ratio and rng.random() < cfg.duplicate_ratio:
                    yield record

    def _order(self, minute_start: int, span: int, campaign: str, channel: str,
               placed: list[dict[str, object]]) -> Record:
        rng = self.rng
        ts = minute_start + rng.randrange(span)
        if rng.random() < self.config.delayed_ratio:  # arrives out of order
            ts -= rng.randrange(DELAY_MAX_MS)
        currency = rng.choice(CURRENCIES)
        segment = rng.choice(SEGMENTS)
        value: dict[str, object] = {
            "order_id": self._id("o"), "ts": self._ts_value(ts),
            "customer_id": self._customer(segment),
            "amount": round(rng.lognormvariate(3.6, 0.6), 2), "currency": currency,
            "channel": channel, "campaign_id": campaign, "segment": segment}
        if rng.random() < 0.05:
            value["campaign_id"] = None
        placed.append(value)
        return Record("order", value)

    def _customer(self, segment: str) -> str:
        """A returning customer of the segment (how often differs by segment) or a new one."""
        known = self.customers[segment]
        if known and self.rng.random() < REPEAT_SHARE[segment]:
            return known[self.rng.randrange(len(known))]
        self.known_customers += 1
        customer = f"c-{self.known_customers}"
        known.append(customer)
        return customer

    def _survey(self, minute_start: int, span: int,
                placed: list[dict[str, object]]) -> Record:
        rng = self.rng
        kind = rng.choice(("nps", "nps", "ces", "csat"))
        score = {"nps": rng.choices(range(0, 11), NPS_WEIGHTS)[0],
                 "ces": rng.choices(range(1, 8), CES_WEIGHTS)[0],
                 "csat": rng.choices(range(1, 6), CSAT_WEIGHTS)[0]}[kind]
        name, channel, _ = rng.choice(self.campaigns)
        value: dict[str, object] = {
            "response_id": self._id("r"), "ts": self._ts_value(minute_start + rng.randrange(
                span)), "kind": kind, "score": score, "channel": channel,
            "campaign_id": name, "segment": rng.choice(SEGMENTS)}
        if kind == "csat" and placed and rng.random() < POST_PURCHASE_SHARE:
            # a post-purchase survey: about an order, from its customer and touchpoint
            order = placed[rng.randrange(len(placed))]
            value.update({field: order[field] for field in
                          ("order_id", "customer_id", "channel", "campaign_id", "segment")})
        return Record("survey", value)


def event_time_ms(value: dict[str, object]) -> int:
    ts = value["ts"]
    if isinstance(ts, int):
        return ts
    return int(datetime.fromisoformat(str(ts)).timestamp() * 1000)


def _poisson(rng: random.Random, lam: float) -> int:
    """Poisson draw (Knuth for small means, normal approximation for large ones)."""
    if lam <= 0:
        return 0
    if lam > 50:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1

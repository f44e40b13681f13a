"""Issue 5 detector scenarios on simulated streams with known truth (fixed seeds, so the
tests are deterministic). Baselines are estimated from the simulated stream itself."""

from __future__ import annotations

from kpistream.alerts.detector import DetectorParams, DetectorState, MinuteInput, evaluate
from kpistream.alerts.simulation import Anomaly, Campaign, simulate, simulate_campaign

PARAMS = DetectorParams()
DAY = 24 * 60
CPO = 10.0  # EUR per order


def test_orders_stopping_at_60_per_hour_fires_within_15_minutes_and_resolves_once() -> None:
    onset, back = DAY + 30, DAY + 150
    campaign = Campaign("stop-60", 60, CPO, (Anomaly("stop", onset, end_minute=back),))
    result = simulate_campaign(campaign, DAY + 300, PARAMS, seed=1)
    firings, resolutions = result.firings(onset), result.resolutions(onset)
    assert len(firings) == 1 and firings[0].kind == "orders_stopped"
    assert firings[0].minute + 1 - onset <= 15
    assert len(resolutions) == 1 and resolutions[0].minute >= back
    assert resolutions[0].transition.message["alert_id"] == firings[0].transition.message[
        "alert_id"]
    assert all(e.minute >= onset for e in result.firings(0))  # nothing before the stop


def test_triple_cpo_at_200_per_hour_fires_within_30_minutes() -> None:
    onset = DAY + 30
    campaign = Campaign("cpo3-200", 200, CPO, (Anomaly("cpo", onset, factor=3.0),))
    result = simulate_campaign(campaign, DAY + 120, PARAMS, seed=2)
    firings = result.firings(onset)
    assert firings and firings[0].minute + 1 - onset <= 30
    assert result.firings(0)[0].minute >= onset  # nothing before the change


def test_48_hours_of_50_stable_campaigns_give_at_most_one_alert() -> None:
    rates = [2 * (100 ** (i / 49)) for i in range(50)]  # 2 .. 200 orders/hour
    campaigns = [Campaign(f"stable-{i:02d}", rate, CPO) for i, rate in enumerate(rates)]
    result = simulate(campaigns, 2 * DAY, PARAMS, seed=3)
    assert result.evaluated_minutes == 50 * 2 * DAY
    assert len(result.firings(0)) <= 1, [(e.group, e.kind, e.minute) for e in result.firings()]


def test_no_baseline_fires_on_spend_without_orders_and_resolves_at_the_next_order() -> None:
    # A new campaign spending 1.5 EUR a minute, no order for its first two hours.
    campaign = Campaign("new", 0.5, 180.0, (Anomaly("stop", 0, end_minute=120),))
    result = simulate_campaign(campaign, 600, PARAMS, seed=4)
    firings = result.firings(0)
    assert firings and firings[0].kind == "no_baseline"
    spend_minutes = firings[0].minute + 1
    assert spend_minutes * 0.5 / 60 * 180.0 >= PARAMS.min_spend * 0.9
    resolutions = result.resolutions(0)
    assert resolutions and resolutions[0].minute >= 120
    assert resolutions[0].transition.message["alert_id"] == firings[0].transition.message[
        "alert_id"]


def _pause_run(spend_minutes: list[int], order_minute: int, *, baseline: bool
               ) -> list[tuple[int, str, str]]:
    """One row, minute by minute: 60 EUR of spend in each of ``spend_minutes``, an order a
    minute from ``order_minute`` on (for 30 minutes); with ``baseline`` a 24h baseline of 10
    EUR per order. Returns the transitions as (minute, state, kind)."""
    state, out = DetectorState(), []
    for m in range(order_minute + 30):
        spend = 60.0 if m in spend_minutes else 0.0
        hour_spend = 60.0 * sum(1 for s in spend_minutes if m - 60 < s <= m)
        orders = 1 if m >= order_minute else 0
        hour_orders = max(0, min(60, m - order_minute + 1))
        minute = MinuteInput((m + 1) * 60_000, orders, spend,
                             100 if baseline else 0, 1000.0 if baseline else 0.0,
                             hour_orders, hour_spend)
        state, transition = evaluate(state, minute, PARAMS, dimension="campaign", group="c")
        if transition is not None:
            out.append((m, transition.state, transition.message["kind"]))
    return out


def test_a_paused_row_keeps_firing_until_its_next_order() -> None:
    """SPEC §6: no_baseline resolves at the row's next order, and a CUSUM episode when its
    statistics fall below h/4, however long the spend pauses in between."""
    assert _pause_run([0], 200, baseline=False) == [
        (0, "firing", "no_baseline"), (200, "resolved", "no_baseline")]
    # 60 EUR a minute for 10 minutes at 10 EUR an order: 6 expected orders a minute, none
    cusum = _pause_run(list(range(10)), 300, baseline=True)
    assert [(state, kind) for _, state, kind in cusum] == [
        ("firing", "orders_stopped"), ("resolved", "orders_stopped")]
    assert cusum[0][0] < 10 and cusum[1][0] > 300  # orders returned, statistics came down

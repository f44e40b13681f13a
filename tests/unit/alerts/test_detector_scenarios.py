"""Issue 5 detector scenarios on simulated streams with known truth (fixed seeds, so the
tests are deterministic). Baselines are estimated from the simulated stream itself."""

from __future__ import annotations

from kpistream.alerts.detector import DetectorParams
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

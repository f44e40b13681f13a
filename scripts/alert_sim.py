"""make alert-sim: the CPO spike detector's delay and false-alert table (docs/alerting.md).

For each order volume: median and p90 detection delay (minutes from onset) of a full stop
and of a 2x / 3x CPO increase over several seeds, after a 24 h warm-up that estimates the
baseline from the stream; and the false-alert rate per 100,000 row-minutes of stable traffic
(first 24 h not counted). Deterministic for the seeds given.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kpistream.alerts.detector import DetectorParams
from kpistream.alerts.simulation import (
    DAY_MINUTES,
    Campaign,
    detection_delay,
    simulate,
)

VOLUMES = (2, 10, 30, 60, 100, 200)
CPO = 10.0


def delays(rate: float, kind: str, factor: float, seeds: int) -> list[float | None]:
    return [detection_delay(rate, kind, PARAMS, factor=factor, seed=f"d{seed}", cpo=CPO,  # type: ignore[arg-type]
                            onset=DAY_MINUTES, horizon=360) for seed in range(seeds)]


def describe(values: list[float | None]) -> str:
    found = sorted(v for v in values if v is not None)
    missed = len(values) - len(found)
    if not found:
        return "not within 6 h"
    p90 = found[min(len(found) - 1, int(0.9 * len(found)))]
    text = f"{statistics.median(found):.0f} / {p90:.0f}"
    return text + (f" ({missed} of {len(values)} missed)" if missed else "")


PARAMS = DetectorParams()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--stable-days", type=float, default=8.0)
    parser.add_argument("--quick", action="store_true", help="5 seeds, 3 stable days")
    args = parser.parse_args()
    seeds, days = (5, 3.0) if args.quick else (args.seeds, args.stable_days)
    print(f"Detector defaults: h={PARAMS.h}, rho={PARAMS.rho_stop}/{PARAMS.rho_shift}, "
          f"min_baseline_orders={PARAMS.min_baseline_orders}, min_spend={PARAMS.min_spend}; "
          f"CPO {CPO:g} EUR, +-10% spend noise, Poisson orders; {seeds} seeds per cell.\n")
    print("| orders/hour | full stop: delay median / p90 (min) | 2x CPO | 3x CPO "
          "| false alerts per 100k row-minutes |")
    print("|---|---|---|---|---|")
    minutes = int(days * DAY_MINUTES)
    for rate in VOLUMES:
        stable = simulate([Campaign(f"stable-{rate}-{i}", rate, CPO) for i in range(10)],
                          minutes, PARAMS, seed="fa", evaluate_from=DAY_MINUTES)
        rate_per_100k = len(stable.firings()) / stable.evaluated_minutes * 100_000
        print(f"| {rate} | {describe(delays(rate, 'stop', 1.0, seeds))} | "
              f"{describe(delays(rate, 'cpo', 2.0, seeds))} | "
              f"{describe(delays(rate, 'cpo', 3.0, seeds))} | "
              f"{rate_per_100k:.1f} ({len(stable.firings())} in "
              f"{stable.evaluated_minutes:,}) |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

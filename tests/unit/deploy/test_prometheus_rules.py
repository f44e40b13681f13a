"""The Prometheus configuration and rules pass Debian's promtool, and every alert rule has
unit-test cases that fire and that stay silent (deploy/prometheus/tests)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]
PROM = ROOT / "deploy" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: `make test` installs Debian's prometheus package"
    return subprocess.run([binary, *args], capture_output=True, text=True, cwd=ROOT)


def test_config_and_rules_are_valid() -> None:
    for args in (("check", "config", str(PROM / "prometheus.yml")),
                 ("check", "rules", *map(str, sorted((PROM / "rules").glob("*.yml"))))):
        result = promtool(*args)
        assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", *map(str, sorted((PROM / "tests").glob("*.yml"))))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_rule_is_tested_firing_and_silent() -> None:
    rules = yaml.safe_load((PROM / "rules" / "kpistream.yml").read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    fired: set[str] = set()
    silent: set[str] = set()
    for path in (PROM / "tests").glob("*.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    assert names <= fired, f"never shown firing: {sorted(names - fired)}"
    assert names <= silent, f"never shown silent: {sorted(names - silent)}"

"""Every alert rule links to a runbook section that exists in docs/operations.md."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]


def anchors(markdown: str) -> set[str]:
    """GitHub-style anchors of the headings."""
    out = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^a-z0-9 _-]", "", title).replace(" ", "-"))
    return out


def test_every_alert_rule_has_a_runbook_section() -> None:
    rules = yaml.safe_load((ROOT / "deploy/prometheus/rules/kpistream.yml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]
    assert alerts
    sections = anchors((ROOT / "docs/operations.md").read_text())
    for rule in alerts:
        annotations = rule.get("annotations", {})
        assert annotations.get("summary") and annotations.get("description"), rule["alert"]
        url = annotations["runbook_url"]
        assert "docs/operations.md#" in url, rule["alert"]
        assert url.split("#", 1)[1] in sections, f"{rule['alert']}: no section {url}"

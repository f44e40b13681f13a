"""Issue 5 acceptance: against a real Prometheus scraping a real worker fed by the
generator, every dashboard panel's query (template variables substituted) returns at least
one series, every template variable's query returns values, and every data-source reference
is the provisioned data source."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from harness import ROOT, Deployment, free_port

from kpistream.generator.traffic import TrafficConfig, TrafficGenerator

pytestmark = pytest.mark.integration
DASHBOARDS = sorted((ROOT / "deploy/grafana/dashboards").glob("*.json"))
# Alert panels legitimately show nothing while no alert fires: only their syntax is checked.
MAY_BE_EMPTY = re.compile(r"kpistream_alert_active|kpistream_alerts_total|ALERTS")


def api(port: int, path: str, **params: str) -> dict:
    url = f"http://127.0.0.1:{port}{path}?{urllib.parse.urlencode(params, doseq=True)}"
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]


def panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows
    return out


def substitute(expr: str, variables: dict[str, str]) -> str:
    for name, value in variables.items():
        expr = expr.replace(f"${{{name}}}", value).replace(f"${name}", value)
    return expr


def provisioned_uid() -> str:
    files = sorted((ROOT / "deploy/grafana/provisioning/datasources").glob("*.yml"))
    sources = [s for f in files for s in yaml.safe_load(f.read_text())["datasources"]]
    assert len(sources) == 1
    return str(sources[0]["uid"])


def test_every_panel_and_variable_has_data_from_a_real_prometheus(stack) -> None:
    uid = provisioned_uid()
    dep = Deployment(f"dash-{uuid.uuid4().hex[:6]}", stack.bootstrap, stack.redis_url)
    dep.create_topics()
    workdir = Path(tempfile.mkdtemp(prefix="kpistream-dash-"))
    prom = None
    try:
        _, worker_port = dep.start_worker()
        now = int(time.time() * 1000)
        dep.produce(TrafficGenerator(TrafficConfig(
            seed=31, start_ms=now - 30 * 60_000, duration_ms=30 * 60_000,
            orders_per_hour=6000, campaigns=8)).records())
        port = free_port()
        (workdir / "prometheus.yml").write_text(json.dumps({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in sorted((ROOT / "deploy/prometheus/rules")
                                                  .glob("*.yml"))],
            "scrape_configs": [{"job_name": "kpistream", "static_configs": [
                {"targets": [f"127.0.0.1:{worker_port}"]}]}]}))
        prom = subprocess.Popen(
            ["prometheus", f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        groups: list[str] = []
        while time.monotonic() < deadline:
            try:
                result = api(port, "/api/v1/query", query='kpistream_orders{window="1h",'
                             'dimension="campaign"}')["result"]
            except OSError:
                result = []
            groups = sorted(r["metric"]["group"] for r in result)
            if groups:
                break
            time.sleep(1)
        assert groups, "Prometheus never saw kpistream_orders"
        time.sleep(15)  # several scrapes, so rate() and increase() have two samples
        variables = {"window": "1h", "dimension": "campaign", "group": "|".join(groups),
                     "__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
        for path in DASHBOARDS:
            dashboard = json.loads(path.read_text())
            for variable in dashboard.get("templating", {}).get("list", []):
                if variable.get("type") != "query":
                    continue
                query = variable["query"]
                query = query["query"] if isinstance(query, dict) else query
                match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query.strip())
                assert match, f"{path.name}: variable {variable['name']}: {query}"
                selector, label = substitute(match.group(1), variables), match.group(2)
                values = api(port, f"/api/v1/label/{label}/values", **{"match[]": selector})
                assert values, f"{path.name}: variable {variable['name']} has no values"
                assert variable["datasource"]["uid"] == uid
            for panel in panels(dashboard):
                if panel.get("type") == "row":
                    continue
                assert panel["datasource"]["uid"] == uid, (path.name, panel.get("title"))
                for target in panel.get("targets", []):
                    assert target.get("datasource", {"uid": uid})["uid"] == uid
                    expr = substitute(target["expr"], variables)
                    data = api(port, "/api/v1/query", query=expr)
                    if not MAY_BE_EMPTY.search(expr):
                        assert data["result"], f"{path.name}: '{panel.get('title')}' {expr}"
    finally:
        if prom is not None:
            prom.terminate()
            prom.wait(timeout=30)
        dep.stop()
        shutil.rmtree(workdir, ignore_errors=True)

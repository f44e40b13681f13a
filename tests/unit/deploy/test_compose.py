"""docker-compose.yml, checked structurally (no Docker engine needed)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "docker-compose.yml"

# The Prometheus and Grafana files the stack is built from; the other deploy tests read the
# same paths.
PROMETHEUS_CONFIG = ROOT / "deploy/prometheus/prometheus.yml"
PROMETHEUS_COMPOSE_CONFIG = ROOT / "deploy/prometheus/prometheus.compose.yml"
PROMETHEUS_RULES = ROOT / "deploy/prometheus/rules"
GRAFANA_PROVISIONING = ROOT / "deploy/grafana/provisioning"
GRAFANA_DASHBOARDS = ROOT / "deploy/grafana/dashboards"

WORKERS = ("worker-1", "worker-2")
UNHEALTHCHECKED = {"generator"}  # a batch job: nothing to probe
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


def _load(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = _load(COMPOSE)
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host source, container target) of every bind mount of a service (short or long form)."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            target = rest.split(":")[0]
            if source.startswith((".", "/", "~")):
                mounts.append((source, target))
        elif volume.get("type") == "bind":
            mounts.append((volume["source"], volume["target"]))
    return mounts


def _named_volumes(service: dict[str, Any]) -> list[str]:
    names = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source = volume.partition(":")[0]
            if volume.count(":") and not source.startswith((".", "/", "~")):
                names.append(source)
        elif volume.get("type") == "volume" and volume.get("source"):
            names.append(volume["source"])
    return names


def _mount_source(service: dict[str, Any], target: str) -> Path:
    for source, mounted_at in _bind_mounts(service):
        if mounted_at.rstrip("/") == target.rstrip("/"):
            return (ROOT / source).resolve()
    raise AssertionError(f"nothing is mounted at {target}")


def test_expected_services(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) >= {"kafka", "redis", "prometheus", "grafana", *WORKERS, "generator"}


def test_every_service_has_a_pinned_image_or_a_build(
        services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service.get("image")
        if image is None:
            assert "build" in service, f"{name}: neither image nor build"
            continue
        if "@sha256:" in image:
            continue
        repo, sep, tag = image.rpartition(":")
        assert repo and sep and "/" not in tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest", f"{name}: image {image!r} is not pinned"


def test_third_party_images_are_the_agreed_versions(services: dict[str, dict[str, Any]]) -> None:
    assert services["kafka"]["image"] == "apache/kafka:3.9.1"
    assert services["redis"]["image"] == "redis:7.2.5-alpine"
    assert services["prometheus"]["image"] == "prom/prometheus:v2.53.1"
    assert services["grafana"]["image"] == "grafana/grafana:11.1.0"


def test_every_bind_mounted_host_path_exists(services: dict[str, dict[str, Any]]) -> None:
    missing = [f"{name}: {source}" for name, service in services.items()
               for source, _ in _bind_mounts(service) if not (ROOT / source).exists()]
    assert not missing, f"bind-mounted paths missing from the repository: {missing}"


def test_named_volumes_are_declared(compose: dict[str, Any],
                                    services: dict[str, dict[str, Any]]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for volume in _named_volumes(service):
            assert volume in declared, f"{name}: volume {volume!r} is not declared"


def test_every_long_running_service_has_a_healthcheck(
        services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if name in UNHEALTHCHECKED:
            continue
        check = service.get("healthcheck")
        assert check and not check.get("disable"), f"{name}: no healthcheck"
        test = check["test"]
        assert test, f"{name}: empty healthcheck"
        if isinstance(test, list):
            assert test[0] in {"CMD", "CMD-SHELL"}, f"{name}: healthcheck {test[0]!r}"


def test_depends_on_uses_conditions(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        depends = service.get("depends_on")
        if depends is None:
            continue
        assert isinstance(depends, dict), f"{name}: depends_on must name a condition"
        for other, spec in depends.items():
            assert other in services, f"{name} depends on unknown service {other}"
            assert spec.get("condition") in CONDITIONS, f"{name} -> {other}: no condition"
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[other], f"{other} has no healthcheck"


def test_workers(services: dict[str, dict[str, Any]]) -> None:
    host_ports = set()
    for name in WORKERS:
        worker = services[name]
        assert "build" in worker
        env = worker["environment"]
        assert env["KPISTREAM_KAFKA_BOOTSTRAP"] == "kafka:19092"
        assert env["KPISTREAM_REDIS_URL"] == "redis://redis:6379/0"
        for dependency in ("kafka", "redis"):
            assert worker["depends_on"][dependency]["condition"] == "service_healthy"
        assert worker["healthcheck"]["test"] == ["CMD", "kpistream", "health"]
        (port,) = worker["ports"]
        host, container = str(port).rsplit(":", 1)
        assert container == "6066"
        host_ports.add(host)
    assert host_ports == {"6066", "6067"}


def test_kafka_listeners(services: dict[str, dict[str, Any]]) -> None:
    env = services["kafka"]["environment"]
    advertised = env["KAFKA_ADVERTISED_LISTENERS"]
    assert "kafka:19092" in advertised and "localhost:9092" in advertised
    assert "9092:9092" in services["kafka"]["ports"]
    assert "kafka-broker-api-versions.sh" in " ".join(services["kafka"]["healthcheck"]["test"])
    cluster_id = str(env["CLUSTER_ID"])
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cluster_id), "CLUSTER_ID: 16 bytes, base64url"


def test_generator(services: dict[str, dict[str, Any]]) -> None:
    generator = services["generator"]
    assert "build" in generator
    command = generator["command"]
    command = command.split() if isinstance(command, str) else command
    assert command == ["generate", "--live", "--backfill", "30m", "--duration", "2h",
                       "--anomaly", "cmp-003:stop:33m"]
    assert generator["depends_on"]["worker-1"]["condition"] == "service_healthy"
    assert generator["environment"]["KPISTREAM_KAFKA_BOOTSTRAP"] == "kafka:19092"


def test_prometheus_mounts_the_compose_config_and_the_shared_rules(
        services: dict[str, dict[str, Any]]) -> None:
    prometheus = services["prometheus"]
    assert _mount_source(prometheus, "/etc/prometheus/prometheus.yml") == \
        PROMETHEUS_COMPOSE_CONFIG
    assert _mount_source(prometheus, "/etc/prometheus/rules") == PROMETHEUS_RULES
    assert PROMETHEUS_CONFIG.is_file(), "the local-stack prometheus.yml is missing"
    assert sorted(PROMETHEUS_RULES.glob("*.yml")), "no rule files in deploy/prometheus/rules"


def test_compose_prometheus_config_scrapes_the_workers() -> None:
    config = _load(PROMETHEUS_COMPOSE_CONFIG)
    targets = {target for job in config["scrape_configs"]
               for static in job.get("static_configs", []) for target in static["targets"]}
    assert targets == {f"{name}:6066" for name in WORKERS}
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]


def test_compose_prometheus_config_matches_the_local_one() -> None:
    """Same job names, so dashboards and rules that select on `job` work on both stacks."""
    local, compose_config = _load(PROMETHEUS_CONFIG), _load(PROMETHEUS_COMPOSE_CONFIG)
    jobs = {job["job_name"] for job in compose_config["scrape_configs"]}
    local_jobs = {job["job_name"] for job in local["scrape_configs"]}
    assert jobs <= local_jobs, f"compose jobs {jobs} not in prometheus.yml's {local_jobs}"


def test_grafana_mounts_provisioning_and_dashboards(services: dict[str, dict[str, Any]]) -> None:
    grafana = services["grafana"]
    assert _mount_source(grafana, "/etc/grafana/provisioning") == GRAFANA_PROVISIONING
    assert _mount_source(grafana, "/var/lib/grafana/dashboards") == GRAFANA_DASHBOARDS
    env = grafana["environment"]
    assert env["GF_SECURITY_ADMIN_USER"] == "admin"
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == "kpistream"
    assert "3000:3000" in grafana["ports"]
    assert sorted(GRAFANA_DASHBOARDS.glob("*.json")), "no dashboards in deploy/grafana/dashboards"


def _provisioning_files(kind: str) -> list[dict[str, Any]]:
    folder = GRAFANA_PROVISIONING / kind
    files = sorted([*folder.glob("*.yml"), *folder.glob("*.yaml")])
    return [_load(path) or {} for path in files]


def test_grafana_dashboard_provider_reads_the_mounted_folder() -> None:
    paths = {provider.get("options", {}).get("path")
             for config in _provisioning_files("dashboards")
             for provider in config.get("providers", [])}
    assert any(str(path).rstrip("/").startswith("/var/lib/grafana/dashboards")
               for path in paths), f"no dashboard provider reads the mount: {paths}"


def test_grafana_datasource_reaches_the_compose_prometheus(
        services: dict[str, dict[str, Any]]) -> None:
    env = services["grafana"].get("environment", {})
    urls = [source.get("url", "") for config in _provisioning_files("datasources")
            for source in config.get("datasources", []) if source.get("type") == "prometheus"]
    assert urls, "no Prometheus datasource provisioned"

    def expand(url: str) -> str:
        return re.sub(r"\$\{?(\w+)\}?", lambda m: str(env.get(m.group(1), m.group(0))), url)

    assert any(expand(url).rstrip("/") == "http://prometheus:9090" for url in urls), (
        f"Grafana's Prometheus datasource {urls} is not reachable from the compose network "
        "(use http://prometheus:9090 or ${PROMETHEUS_URL})")

"""deploy/k8s: the kustomize base, assembled in Python and validated offline against the
Kubernetes OpenAPI schemas (kubernetes-validate), plus the operational properties we rely on."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from kpistream.settings import Settings

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parents[3]
BASE = ROOT / "deploy/k8s"
KUBERNETES_VERSION = "1.30"

# Kustomization fields the assembler below implements; anything else must be added here (and
# implemented) before the base may use it, so the test never silently ignores a transformer.
SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "namespace", "commonLabels",
                    "commonAnnotations", "labels"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass",
                  "StorageClass", "CustomResourceDefinition"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


def _add_labels(resource: dict[str, Any], pairs: dict[str, str], *, selectors: bool,
                templates: bool) -> None:
    resource.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
    kind, spec = resource["kind"], resource.get("spec", {})
    if (templates or selectors) and kind in WORKLOADS:
        spec["template"].setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
    if not selectors:
        return
    if kind == "Service":
        spec.setdefault("selector", {}).update(pairs)
    elif kind in WORKLOADS or kind == "PodDisruptionBudget":
        spec.setdefault("selector", {}).setdefault("matchLabels", {}).update(pairs)


def assemble(base: Path = BASE) -> list[dict[str, Any]]:
    """What `kustomize build base` produces, for the transformers in SUPPORTED_FIELDS."""
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text(encoding="utf-8"))
    unsupported = set(kustomization) - SUPPORTED_FIELDS
    assert not unsupported, f"teach the test's assembler these kustomize fields: {unsupported}"
    resources: list[dict[str, Any]] = []
    for entry in kustomization["resources"]:
        path = base / entry
        assert path.is_file(), f"kustomization resource {entry} does not exist"
        docs = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
        assert docs, f"{entry} holds no manifest"
        resources.extend(copy.deepcopy(docs))
    for resource in resources:
        if kustomization.get("namespace") and resource["kind"] not in CLUSTER_SCOPED:
            resource["metadata"]["namespace"] = kustomization["namespace"]
        if kustomization.get("commonLabels"):
            _add_labels(resource, kustomization["commonLabels"], selectors=True, templates=True)
        for spec in kustomization.get("labels", []):
            _add_labels(resource, spec["pairs"], selectors=spec.get("includeSelectors", False),
                        templates=spec.get("includeTemplates", False))
        if kustomization.get("commonAnnotations"):
            resource["metadata"].setdefault("annotations", {}).update(
                kustomization["commonAnnotations"])
    return resources


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    return assemble()


def _one(manifests: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [m for m in manifests if m["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def deployment(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    return _one(manifests, "Deployment")


@pytest.fixture(scope="module")
def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def test_base_holds_the_expected_kinds(manifests: list[dict[str, Any]]) -> None:
    assert sorted(m["kind"] for m in manifests) == \
        ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service"]
    names = [(m["kind"], m["metadata"]["name"]) for m in manifests]
    assert len(set(names)) == len(names)


def test_every_manifest_is_valid_for_kubernetes(manifests: list[dict[str, Any]]) -> None:
    for manifest in manifests:
        try:
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            location = "/".join(str(part) for part in exc.path)
            pytest.fail(f"{manifest['kind']}/{manifest['metadata']['name']}: "
                        f"{location}: {exc.message}")


def test_validation_catches_a_broken_manifest(deployment: dict[str, Any]) -> None:
    broken = copy.deepcopy(deployment)
    broken["spec"]["replicas"] = "two"
    broken["spec"]["template"]["spec"]["containers"][0]["portz"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_deployment_selector_matches_its_pods(deployment: dict[str, Any]) -> None:
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    assert _selects(spec["selector"]["matchLabels"], spec["template"]["metadata"]["labels"])


def test_container_image_and_port(container: dict[str, Any]) -> None:
    assert container["image"] == "kpistream:0.1.0"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"web": 6066}


@pytest.mark.parametrize("probe", ["startupProbe", "readinessProbe", "livenessProbe"])
def test_probes_ask_metrics_with_the_pods_own_credentials(container: dict[str, Any],
                                                          probe: str) -> None:
    """An exec probe of `kpistream health` works with basic auth and TLS on the web port
    (tests/integration/test_security.py runs it against a protected worker)."""
    from kpistream.cli import COMMANDS

    command = container[probe]["exec"]["command"]
    assert command[0] == "kpistream" and command[1] in COMMANDS
    assert command[1] == "health"


def test_secret_files_and_tls_material_are_mounted_read_only(
        deployment: dict[str, Any], container: dict[str, Any]) -> None:
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    for name in ("secrets", "tls"):
        assert volumes[name]["secret"]["optional"] is True
        assert mounts[name]["readOnly"] is True


def test_resources(container: dict[str, Any]) -> None:
    resources = container["resources"]
    assert resources["requests"] == {"cpu": "500m", "memory": "1Gi",
                                     "ephemeral-storage": "1Gi"}
    assert resources["limits"] == {"cpu": "2", "memory": "2Gi", "ephemeral-storage": "12Gi"}


def _quantity_gi(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", value).groups()  # type: ignore[union-attr]
    return int(number) / (1024 if unit == "Mi" else 1)


def test_customer_store_is_on_node_disk_within_the_storage_limit(
        deployment: dict[str, Any], container: dict[str, Any],
        manifests: list[dict[str, Any]]) -> None:
    """The on-disk customer store lives under KPISTREAM_DATA_DIR: a disk-backed volume (not
    tmpfs, which would count as memory), bounded, and within the pod's ephemeral storage."""
    config = _one(manifests, "ConfigMap")["data"]
    assert config.get("KPISTREAM_STATE_STORE", "rocksdb") == "rocksdb"
    mount = next(m for m in container["volumeMounts"]
                 if m["mountPath"] == config["KPISTREAM_DATA_DIR"])
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == mount["name"])
    assert "persistentVolumeClaim" not in volume  # rebuilt from the changelog (README)
    empty_dir = volume["emptyDir"]
    assert empty_dir.get("medium") != "Memory"
    limit = container["resources"]["limits"]["ephemeral-storage"]
    assert _quantity_gi(empty_dir["sizeLimit"]) < _quantity_gi(limit)


def test_runs_as_the_images_non_root_user(deployment: dict[str, Any],
                                          container: dict[str, Any]) -> None:
    pod_context = deployment["spec"]["template"]["spec"].get("securityContext", {})
    context = {**pod_context, **container.get("securityContext", {})}
    assert context["runAsNonRoot"] is True
    uid = re.search(r"--uid (\d+)", (ROOT / "Dockerfile").read_text(encoding="utf-8"))
    assert uid, "Dockerfile creates no user with a fixed uid"
    assert context["runAsUser"] == int(uid.group(1)) != 0


def test_data_dir_is_writable(deployment: dict[str, Any], container: dict[str, Any],
                              manifests: list[dict[str, Any]]) -> None:
    if not container.get("securityContext", {}).get("readOnlyRootFilesystem"):
        return
    data_dir = _one(manifests, "ConfigMap")["data"]["KPISTREAM_DATA_DIR"]
    mounts = {mount["mountPath"] for mount in container.get("volumeMounts", [])}
    assert data_dir in mounts, f"KPISTREAM_DATA_DIR {data_dir} is on a read-only filesystem"


def test_env_comes_from_the_configmap(container: dict[str, Any],
                                      manifests: list[dict[str, Any]]) -> None:
    config_name = _one(manifests, "ConfigMap")["metadata"]["name"]
    refs = [source["configMapRef"]["name"] for source in container["envFrom"]
            if "configMapRef" in source]
    assert refs == [config_name]


def test_configmap_holds_valid_settings(manifests: list[dict[str, Any]],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    data = _one(manifests, "ConfigMap")["data"]
    known = {f"KPISTREAM_{name.upper()}": field for name, field in Settings.model_fields.items()}
    assert set(data) <= set(known), f"unknown settings: {set(data) - set(known)}"
    for key, field in known.items():
        if key in data and field.annotation is SecretStr:
            assert not re.search(r"//[^/@]*:[^@]+@", data[key]), f"{key}: password in ConfigMap"
    import os

    for key in list(os.environ):
        if key.upper().startswith("KPISTREAM_"):
            monkeypatch.delenv(key)
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    settings = Settings()  # raises on any invalid value
    assert settings.web_port == 6066


def test_replicas_do_not_exceed_partitions(deployment: dict[str, Any],
                                           manifests: list[dict[str, Any]]) -> None:
    data = _one(manifests, "ConfigMap")["data"]
    partitions = int(data.get("KPISTREAM_PARTITIONS", Settings.model_fields["partitions"].default))
    assert deployment["spec"]["replicas"] <= partitions


def test_service_is_scraped_on_the_web_port(manifests: list[dict[str, Any]],
                                            deployment: dict[str, Any]) -> None:
    service = _one(manifests, "Service")
    annotations = service["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "6066"
    assert annotations["prometheus.io/path"] == "/metrics"
    (port,) = service["spec"]["ports"]
    assert port["port"] == 6066 and port["targetPort"] in ("web", 6066)
    assert _selects(service["spec"]["selector"],
                    deployment["spec"]["template"]["metadata"]["labels"])


def test_pdb_selects_the_deployments_pods(manifests: list[dict[str, Any]],
                                          deployment: dict[str, Any]) -> None:
    pdb = _one(manifests, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["maxUnavailable"] == 1
    assert _selects(pdb["spec"]["selector"]["matchLabels"],
                    deployment["spec"]["template"]["metadata"]["labels"])


def test_readme_explains_replicas_versus_partitions() -> None:
    text = (BASE / "README.md").read_text(encoding="utf-8")
    assert "KPISTREAM_PARTITIONS" in text and "rebalance" in text

"""deploy/kubernetes: every manifest validates offline, and the manifests agree with the image,
the service's settings, its topology and the memory benchmark.

Core kinds are validated strictly (unknown fields are errors) by kubernetes-validate against the
Kubernetes schemas it bundles, for every minor version from 1.30 on. KEDA's ScaledObject and
TriggerAuthentication and the Prometheus Operator's ServiceMonitor are validated by
scripts/validate-crds.mjs with validators generated from those projects' published CRDs
(@kubernetes-models: KEDA 2.10.1, Prometheus Operator 0.90.1): types, required fields, enums,
not unknown fields. What a CRD cannot say (the rabbitmq trigger's metadata is a free map) is
checked here against the service itself.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from kubernetes_validate.utils import ValidationError, all_versions, validate
from packaging.version import Version

from service.broker.topology import Topology
from service.config import ENVIRONMENT, TOKEN_FILE_VARIABLE, Settings

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "kubernetes"
CRD_VALIDATOR = ROOT / "scripts" / "validate-crds.mjs"
CUSTOM_API_GROUPS = ("keda.sh/", "monitoring.coreos.com/")
KUBERNETES_VERSIONS = sorted(
    {v.rsplit(".", 1)[0] for v in all_versions() if Version(v) >= Version("1.30")}, key=Version
)
DIGITALOCEAN_REQUESTS_PER_MINUTE = 250
MIB = 1024 * 1024


def _documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(MANIFESTS.rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                found.append((str(path.relative_to(ROOT)), document))
    return found


DOCUMENTS = _documents()
CORE = [(f, d) for f, d in DOCUMENTS if not d["apiVersion"].startswith(CUSTOM_API_GROUPS)]
CUSTOM = [(f, d) for f, d in DOCUMENTS if d["apiVersion"].startswith(CUSTOM_API_GROUPS)]


def _one(kind: str) -> dict[str, Any]:
    (document,) = [d for _, d in DOCUMENTS if d["kind"] == kind]
    return document


def _container() -> dict[str, Any]:
    containers: list[dict[str, Any]] = _one("Deployment")["spec"]["template"]["spec"]["containers"]
    (container,) = containers
    return container


def _env() -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in _container()["env"]}


def _mebibytes(quantity: str) -> float:
    match = re.fullmatch(r"(\d+)(Mi|Gi)", quantity)
    assert match, f"memory quantity {quantity!r} is not in Mi or Gi"
    return int(match[1]) * (1024 if match[2] == "Gi" else 1)


def test_the_manifests_hold_the_deployment_its_service_and_the_custom_resources() -> None:
    kinds = sorted(d["kind"] for _, d in DOCUMENTS)
    assert kinds == [
        "Deployment", "ScaledObject", "Service", "ServiceAccount", "ServiceMonitor",
        "TriggerAuthentication",
    ]  # fmt: skip
    assert KUBERNETES_VERSIONS, "kubernetes-validate bundles no schema from 1.30 on"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_manifests_validate_strictly_against_the_kubernetes_schemas(version: str) -> None:
    for path, document in CORE:
        try:
            validate(document, version, strict=True)
        except ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{path} against Kubernetes {version}: {where}: {exc.message}")


def test_the_kubernetes_validation_rejects_an_unknown_field() -> None:
    deployment = copy.deepcopy(_one("Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFileSystem"] = True
    with pytest.raises(ValidationError, match="readOnlyRootFileSystem"):
        validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def _validate_custom(entries: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the CRD validators run on Node.js")
    assert (ROOT / "node_modules" / "@kubernetes-models" / "keda").is_dir(), (
        "the CRD validators are missing: run `make node` (npm ci)"
    )
    return subprocess.run(
        [node, str(CRD_VALIDATOR)],
        input=json.dumps(entries), capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip


def test_custom_resources_validate_against_the_published_crds() -> None:
    result = _validate_custom([{"file": f, "document": d} for f, d in CUSTOM])
    assert result.returncode == 0, result.stdout + result.stderr
    assert len([line for line in result.stdout.splitlines() if line.startswith("ok ")]) == 3


def test_the_crd_validation_rejects_a_wrong_type_and_an_unknown_kind() -> None:
    scaled = copy.deepcopy(_one("ScaledObject"))
    scaled["spec"]["minReplicaCount"] = "one"
    unknown = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledJobb", "metadata": {"name": "x"}}
    result = _validate_custom(
        [{"file": "wrong", "document": scaled}, {"file": "unknown", "document": unknown}]
    )
    assert result.returncode == 1
    assert "error wrong: ScaledObject/provisioner: data/spec/minReplicaCount must be integer" in (
        result.stdout
    )
    assert "error unknown: ScaledJobb/x: no validator" in result.stdout


def test_the_pod_runs_as_the_images_user_with_nothing_writable_and_no_capability() -> None:
    pod = _one("Deployment")["spec"]["template"]["spec"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER 10001:10001$", dockerfile, re.MULTILINE)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["automountServiceAccountToken"] is False
    context = _container()["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]


def test_probes_ask_healthz_and_readyz_on_the_port_the_service_listens_on() -> None:
    container = _container()
    (port,) = container["ports"]
    assert port["name"] == "http"
    assert str(port["containerPort"]) == _env()["PROVISIONER_HTTP_PORT"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}


def test_kubernetes_waits_for_the_drain_before_it_kills() -> None:
    grace = float(_env()["PROVISIONER_SHUTDOWN_GRACE_S"])
    waits = _one("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    # After the drain: consumer cancels, acks of finished work, closing; seconds, not more.
    assert waits >= grace + 5


def test_the_token_comes_from_a_secret_file_and_every_variable_is_a_setting() -> None:
    pod = _one("Deployment")["spec"]["template"]["spec"]
    env = _env()
    assert "DIGITALOCEAN_TOKEN" not in env and "DIGITALOCEAN_ACCESS_TOKEN" not in env
    token_path = Path(env[TOKEN_FILE_VARIABLE])
    (mount,) = [
        m for m in _container()["volumeMounts"] if token_path.parent == Path(m["mountPath"])
    ]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["items"] == [{"key": "token", "path": token_path.name}]
    assert mount["readOnly"] is True
    assert set(env) <= set(ENVIRONMENT) | {TOKEN_FILE_VARIABLE}
    (amqp,) = [e for e in _container()["env"] if e["name"] == "PROVISIONER_AMQP_URL"]
    assert "secretKeyRef" in amqp["valueFrom"]  # a URL with a password is a secret too


def test_memory_fits_the_benchmarks_peak_and_a_full_prefetch_of_the_largest_commands() -> None:
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith('{"benchmark": "memory"'))
    peak_mib = json.loads(line)["peak_rss_mib"]
    settings = msgspec.convert(
        {field: _env()[name] for name, field in ENVIRONMENT.items() if name in _env()},
        Settings,
        strict=False,
    )
    held_mib = settings.command_prefetch * settings.max_message_bytes / MIB
    resources = _container()["resources"]
    assert _mebibytes(resources["requests"]["memory"]) >= peak_mib
    assert _mebibytes(resources["limits"]["memory"]) >= peak_mib + held_mib


def test_the_service_and_the_service_monitor_find_the_pods_and_their_port() -> None:
    pod_labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    service = _one("Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "http"
    assert service["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    assert service["metadata"]["annotations"]["prometheus.io/port"] == str(port["port"])
    monitor = _one("ServiceMonitor")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [port["name"]]
    assert [e["path"] for e in monitor["spec"]["endpoints"]] == ["/metrics"]


def test_keda_scales_the_deployment_on_the_depth_of_the_command_queue() -> None:
    scaled = _one("ScaledObject")["spec"]
    assert scaled["scaleTargetRef"]["name"] == _one("Deployment")["metadata"]["name"]
    # Watches of clusters still creating need a consumer even with no command waiting.
    assert scaled["minReplicaCount"] >= 1
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "rabbitmq"
    assert trigger["metadata"] == {
        "protocol": "amqp",
        "queueName": Topology().requests_queue,
        "mode": "QueueLength",
        "value": str(Settings().command_prefetch),
    }
    authentication = _one("TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == authentication["metadata"]["name"]
    assert [t["parameter"] for t in authentication["spec"]["secretTargetRef"]] == ["host"]


def test_the_replicas_together_stay_within_the_tokens_burst_budget() -> None:
    per_replica = int(_env()["PROVISIONER_RATE_LIMIT_PER_MINUTE"])
    replicas = _one("ScaledObject")["spec"]["maxReplicaCount"]
    assert per_replica * replicas <= DIGITALOCEAN_REQUESTS_PER_MINUTE


def test_the_image_named_is_this_version() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert _container()["image"].endswith(f"/do-db-provisioner:{version}")

"""Kubernetes manifests in deploy/k8s, validated against the Kubernetes 1.37 OpenAPI schemas
(kubernetes-validate, strict: unknown fields fail), then checked for what the issue asks.

KServe's InferenceService is a custom resource whose schema is not shipped; its pod-level parts
(containers, volumes, tolerations) are validated as the core types KServe embeds.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

K8S_VERSION = "1.37.0"
NOT_CORE = {"Kustomization", "InferenceService"}
# Fields a KServe predictor adds around an embedded PodSpec (ComponentExtensionSpec and friends).
KSERVE_COMPONENT_FIELDS = {
    "minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "containerConcurrency",
    "timeout", "canaryTrafficPercent", "logger", "batcher", "labels", "annotations",
    "deploymentStrategy", "model", "workerSpec",
}  # fmt: skip
# Fields a KServe `model` adds to an embedded Container.
KSERVE_MODEL_FIELDS = {"modelFormat", "storageUri", "runtime", "protocolVersion", "storage"}


def load_documents(directory: Path) -> list[tuple[str, dict[str, Any]]]:
    documents = []
    for path in sorted(directory.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                documents.append((path.name, document))
    return documents


@pytest.fixture(scope="module")
def documents(repo_root: Path) -> list[tuple[str, dict[str, Any]]]:
    return load_documents(repo_root / "deploy/k8s")


def find(documents: list[tuple[str, dict[str, Any]]], kind: str, name: str) -> dict[str, Any]:
    (match,) = [d for _, d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    return match


def validate(document: dict[str, Any]) -> None:
    kubernetes_validate.validate(document, K8S_VERSION, strict=True)


def test_every_core_manifest_validates(documents: list[tuple[str, dict[str, Any]]]):
    checked = 0
    for filename, document in documents:
        if document["kind"] in NOT_CORE:
            continue
        try:
            validate(document)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(
                f"{filename} {document['kind']}/{document['metadata']['name']}: {error.message}"
            )
        checked += 1
    assert checked >= 12


def test_validation_is_strict(documents: list[tuple[str, dict[str, Any]]]):
    """A misspelt field in a valid Deployment is rejected: the schemas are really applied."""
    deployment = copy.deepcopy(find(documents, "Deployment", "gateway"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)


def test_gateway_requests_a_gpu_and_probes_v2_health(documents: list[tuple[str, dict[str, Any]]]):
    pod = find(documents, "Deployment", "gateway")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    resources = container["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": 8501, "grpc": 8500}
    assert pod["securityContext"]["runAsNonRoot"] is True
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["model-repository"]["readOnly"] is True


def test_gateway_service_exposes_http_and_grpc(documents: list[tuple[str, dict[str, Any]]]):
    service = find(documents, "Service", "gateway")
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {
        "http": "http",
        "grpc": "grpc",
    }


def test_hpa_and_pdb_target_the_gateway(documents: list[tuple[str, dict[str, Any]]]):
    deployment = find(documents, "Deployment", "gateway")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    hpa = find(documents, "HorizontalPodAutoscaler", "gateway")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "gateway",
    }
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = find(documents, "PodDisruptionBudget", "gateway")
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_every_service_selects_pods(documents: list[tuple[str, dict[str, Any]]]):
    pod_labels = [
        d["spec"]["template"]["metadata"]["labels"]
        for _, d in documents
        if d["kind"] == "Deployment"
    ]
    for _, service in documents:
        if service["kind"] != "Service":
            continue
        selector = service["spec"]["selector"].items()
        assert any(selector <= labels.items() for labels in pod_labels), service["metadata"]["name"]


def test_claimed_volumes_exist(documents: list[tuple[str, dict[str, Any]]]):
    claims = {
        d["metadata"]["name"]: d for _, d in documents if d["kind"] == "PersistentVolumeClaim"
    }
    assert "ReadWriteMany" in claims["model-repository"]["spec"]["accessModes"]
    for _, document in documents:
        if document["kind"] not in {"Deployment", "Job"}:
            continue
        for volume in document["spec"]["template"]["spec"].get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims


def test_tfserving_reads_its_configuration_from_the_repository(
    documents: list[tuple[str, dict[str, Any]]],
):
    (container,) = find(documents, "Deployment", "tfserving")["spec"]["template"]["spec"][
        "containers"
    ]
    assert container["image"].startswith("tensorflow/serving:") and container["image"].endswith(
        "-gpu"
    )
    flags = dict(arg.split("=", 1) for arg in container["args"])
    assert flags["--model_config_file"] == "/models/models.config"
    assert flags["--batching_parameters_file"] == "/models/batching.config"
    assert flags["--monitoring_config_file"] == "/models/monitoring.config"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_locust_workers_find_their_master(documents: list[tuple[str, dict[str, Any]]]):
    master = find(documents, "Deployment", "locust-master")
    worker = find(documents, "Deployment", "locust-worker")
    service = find(documents, "Service", "locust")
    worker_args = dict(
        a.split("=", 1)
        for a in worker["spec"]["template"]["spec"]["containers"][0]["args"]
        if "=" in a
    )
    assert worker_args["--master-host"] == service["metadata"]["name"]
    assert int(worker_args["--master-port"]) in {p["port"] for p in service["spec"]["ports"]}
    assert "--master" in master["spec"]["template"]["spec"]["containers"][0]["args"]
    assert worker["spec"]["replicas"] > 1


def test_kustomization_lists_every_core_manifest(
    repo_root: Path, documents: list[tuple[str, dict[str, Any]]]
):
    kustomization = yaml.safe_load((repo_root / "deploy/k8s/kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    files_with_core = {f for f, d in documents if d["kind"] not in NOT_CORE}
    assert listed == files_with_core
    assert all((repo_root / "deploy/k8s" / name).is_file() for name in listed)


def _as_pod(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def test_kserve_inference_services(documents: list[tuple[str, dict[str, Any]]]):
    services = [d for _, d in documents if d["kind"] == "InferenceService"]
    assert {s["apiVersion"] for s in services} == {"serving.kserve.io/v1beta1"}
    assert len(services) == 2
    for service in services:
        predictor = service["spec"]["predictor"]
        pod_spec = {k: v for k, v in predictor.items() if k not in KSERVE_COMPONENT_FIELDS}
        if "model" in predictor:
            model = predictor["model"]
            assert model["modelFormat"]["name"] == "tensorflow"
            assert model["storageUri"].startswith("pvc://model-repository/")
            container = {k: v for k, v in model.items() if k not in KSERVE_MODEL_FIELDS}
            pod_spec["containers"] = [{"name": "kserve-container", **container}]
        validate(_as_pod(service["metadata"]["name"], pod_spec))
        for container in pod_spec["containers"]:
            assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    gateway = find(documents, "InferenceService", "convnet-gateway")
    (container,) = gateway["spec"]["predictor"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"


def test_gateway_arguments_parse_with_the_gateway_cli(documents: list[tuple[str, dict[str, Any]]]):
    """The Deployment's and KServe's gateway arguments are accepted by the real settings parser."""
    from serving.settings import build_parser

    deployment = find(documents, "Deployment", "gateway")
    kserve = find(documents, "InferenceService", "convnet-gateway")
    for container, port in (
        (deployment["spec"]["template"]["spec"]["containers"][0], 8501),
        (kserve["spec"]["predictor"]["containers"][0], 8080),
    ):
        args = build_parser().parse_args(container["args"])
        assert int(args.http_port) == port and args.device == "cuda"
        assert args.repository == container["volumeMounts"][0]["mountPath"]


@pytest.mark.parametrize(("state", "ready"), [("AVAILABLE", True), ("LOADING", False)])
def test_tfserving_readiness_waits_for_an_available_version(
    documents: list[tuple[str, dict[str, Any]]], status_server: type, state: str, ready: bool
):
    """The exec probe, run against a loopback server answering like TF Serving."""
    import subprocess

    (container,) = find(documents, "Deployment", "tfserving")["spec"]["template"]["spec"][
        "containers"
    ]
    command = container["readinessProbe"]["exec"]["command"]
    assert command == container["startupProbe"]["exec"]["command"]
    body = json.dumps({"model_version_status": [{"version": "1", "state": state}]})
    with status_server(200, body) as server:
        local = [part.replace("127.0.0.1/8501", f"127.0.0.1/{server.port}") for part in command]
        code = subprocess.run(local, capture_output=True, timeout=30).returncode
    assert (code == 0) is ready
    assert server.paths == ["/v1/models/lenet"]

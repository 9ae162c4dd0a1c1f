"""docker-compose.yml and docker-compose.cpu.yml, checked by both Compose implementations.

Debian's docker-compose 1.29 validates the file against its bundled compose-spec schema and
interpolates it; Docker Compose v2 (the one users run) parses, merges the CPU override, including
its `!reset` tags, and renders the final model, which the structural checks then read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

SERVERS = ("tfserving", "gateway")
LONG_RUNNING = ("tfserving", "gateway", "locust", "prometheus", "grafana", "tensorboard")


def run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def render(compose: str, cwd: Path, env: dict[str, str], *args: str) -> dict[str, Any]:
    """`docker compose [files] config --format json`, parsed."""
    result = run([compose, *args, "config", "--format", "json"], cwd, env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def gpu_model(compose_v2: str, repo_root: Path, compose_env: dict[str, str]) -> dict[str, Any]:
    return render(compose_v2, repo_root, compose_env, "--profile", "bench")


@pytest.fixture(scope="module")
def cpu_model(compose_v2: str, repo_root: Path, compose_env: dict[str, str]) -> dict[str, Any]:
    return render(
        compose_v2, repo_root, compose_env, "-f", "docker-compose.yml", "-f",
        "docker-compose.cpu.yml", "--profile", "bench",
    )  # fmt: skip


@pytest.fixture(scope="module")
def tracing_model(compose_v2: str, repo_root: Path, compose_env: dict[str, str]) -> dict[str, Any]:
    return render(
        compose_v2, repo_root, compose_env, "-f", "docker-compose.yml", "-f",
        "docker-compose.cpu.yml", "--profile", "tracing",
    )  # fmt: skip


def gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    deploy = service.get("deploy") or {}
    return ((deploy.get("resources") or {}).get("reservations") or {}).get("devices") or []


def test_compose_v1_validates_the_file(
    compose_v1: str, repo_root: Path, compose_env: dict[str, str]
):
    for profile_args in ([], ["--profile", "bench"], ["--profile", "tracing"]):
        result = run([compose_v1, *profile_args, "config", "--quiet"], repo_root, compose_env)
        assert result.returncode == 0, result.stderr


def test_compose_v1_rejects_an_unknown_key(
    compose_v1: str, tmp_path: Path, repo_root: Path, compose_env: dict[str, str]
):
    """The validator is live: the same file with one misspelt key fails."""
    document = yaml.safe_load((repo_root / "docker-compose.yml").read_text())
    document["services"]["gateway"]["helthcheck"] = document["services"]["gateway"].pop(
        "healthcheck"
    )
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(document))
    result = run([compose_v1, "-f", str(broken), "config", "--quiet"], repo_root, compose_env)
    assert result.returncode != 0
    assert "helthcheck" in result.stderr


@pytest.mark.parametrize("which", ["v1", "v2"])
def test_missing_required_variable_fails_fast(
    which: str, request: pytest.FixtureRequest, repo_root: Path, bare_env: dict[str, str]
):
    compose = request.getfixturevalue("compose_v1" if which == "v1" else "compose_v2")
    result = run([compose, "config"], repo_root, bare_env)
    assert result.returncode != 0
    assert "GRAFANA_ADMIN_PASSWORD" in result.stderr


def test_compose_v2_renders_every_service(gpu_model: dict[str, Any]):
    services = gpu_model["services"]
    assert set(services) >= {
        "trainer", "tfserving", "gateway", "locust", "locust-worker", "sweep",
        "prometheus", "grafana", "tensorboard",
    }  # fmt: skip
    assert "jaeger" not in services  # optional: only with --profile tracing


def test_servers_reserve_a_gpu(gpu_model: dict[str, Any]):
    for name in (*SERVERS, "trainer"):
        devices = gpu_devices(gpu_model["services"][name])
        assert devices, f"{name} reserves no GPU"
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_long_running_services_have_healthchecks(gpu_model: dict[str, Any]):
    for name in LONG_RUNNING:
        check = gpu_model["services"][name].get("healthcheck") or {}
        assert check.get("test"), f"{name} has no healthcheck"
        assert not check.get("disable")


def test_start_order_waits_for_health(gpu_model: dict[str, Any]):
    services = gpu_model["services"]
    for server in SERVERS:
        assert (
            services[server]["depends_on"]["trainer"]["condition"]
            == "service_completed_successfully"
        )
    for client in ("locust", "sweep"):
        for server in SERVERS:
            assert services[client]["depends_on"][server]["condition"] == "service_healthy"
    assert services["locust-worker"]["depends_on"]["locust"]["condition"] == "service_healthy"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_tfserving_is_configured_from_the_repository(gpu_model: dict[str, Any]):
    service = gpu_model["services"]["tfserving"]
    image, _, tag = service["image"].partition(":")
    assert image == "tensorflow/serving" and tag.endswith("-gpu") and tag[0].isdigit()
    flags = dict(arg.split("=", 1) for arg in service["command"])
    assert flags["--model_config_file"] == "/models/models.config"
    assert flags["--enable_batching"] == "true"
    assert flags["--batching_parameters_file"] == "/models/batching.config"
    assert flags["--monitoring_config_file"] == "/models/monitoring.config"
    assert flags["--rest_api_port"] == "8501" and flags["--port"] == "8500"
    assert flags["--enable_model_warmup"] == "true"
    assert int(flags["--file_system_poll_wait_seconds"]) > 0
    assert any(v["target"] == "/models" and v["read_only"] for v in service["volumes"])


def test_both_servers_share_the_repository_on_distinct_host_ports(gpu_model: dict[str, Any]):
    services = gpu_model["services"]
    sources = {
        name: {v["source"] for v in services[name]["volumes"] if v["target"] == "/models"}
        for name in ("trainer", *SERVERS)
    }
    assert sources["trainer"] == sources["tfserving"] == sources["gateway"]
    published = {
        name: {(p["target"], p["published"]) for p in services[name]["ports"]} for name in SERVERS
    }
    assert published["tfserving"] == {(8501, "8501"), (8500, "8500")}
    assert published["gateway"] == {(8501, "9501"), (8500, "9500")}


def test_gateway_runs_our_image_on_cuda(gpu_model: dict[str, Any]):
    service = gpu_model["services"]["gateway"]
    assert service["build"]["dockerfile"] == "deploy/docker/gateway.Dockerfile"
    assert service["environment"]["SERVING_DEVICE"] == "cuda"
    assert service["environment"]["SERVING_REPOSITORY"] == "/models"
    # serving_build_info's commit: the image takes it as a build argument (empty when not set).
    assert service["build"]["args"] == {"SERVING_GIT_COMMIT": ""}


def test_sweep_compares_both_servers(gpu_model: dict[str, Any]):
    sweep = gpu_model["services"]["sweep"]
    assert sweep["profiles"] == ["bench"]
    assert sweep["entrypoint"] == ["python", "-m", "benchmarks"]
    command = sweep["command"]
    assert command[0] == "sweep"
    targets = [arg.split("=", 1)[1] for arg in command if arg.startswith("--target=")]
    assert targets == [
        "tfserving=http://tfserving:8501,tfserving:8500",
        "gateway=http://gateway:8501,gateway:8500",
    ]


def test_sweep_arguments_parse_with_the_benchmarks_cli(gpu_model: dict[str, Any]):
    """The sweep's command line is accepted by the real `python -m benchmarks` parser."""
    from benchmarks.__main__ import build_parser

    args = build_parser().parse_args(gpu_model["services"]["sweep"]["command"])
    assert args.command == "sweep" and args.model == "lenet"
    assert len(args.target) == 2


def test_built_images_name_existing_dockerfiles(
    gpu_model: dict[str, Any], cpu_model: dict[str, Any], repo_root: Path
):
    for model in (gpu_model, cpu_model):
        for name, service in model["services"].items():
            if "build" in service:
                dockerfile = Path(service["build"]["context"]) / service["build"]["dockerfile"]
                assert dockerfile.is_file(), f"{name}: {dockerfile}"
                assert Path(service["build"]["context"]) == repo_root


def test_cpu_override_removes_every_gpu_reservation(cpu_model: dict[str, Any]):
    services = cpu_model["services"]
    for name, service in services.items():
        assert not gpu_devices(service), f"{name} still reserves a GPU"
    assert not services["tfserving"]["image"].endswith("-gpu")
    assert services["gateway"]["build"]["dockerfile"] == "deploy/docker/gateway.cpu.Dockerfile"
    assert services["gateway"]["environment"]["SERVING_DEVICE"] == "cpu"
    assert services["trainer"]["build"]["dockerfile"] == "deploy/docker/trainer.cpu.Dockerfile"
    # Everything else about the servers is unchanged by the override.
    assert services["tfserving"]["command"][:3] == [
        "--port=8500",
        "--rest_api_port=8501",
        "--model_config_file=/models/models.config",
    ]
    assert services["gateway"]["healthcheck"]["test"]


def test_prometheus_scrapes_both_servers_where_they_listen(
    gpu_model: dict[str, Any], repo_root: Path, tmp_path: Path
):
    """Scrape targets name compose services and ports; TF Serving's path is the one training writes."""
    from training.export import write_repository_configs

    config = yaml.safe_load((repo_root / "deploy/compose/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    write_repository_configs(tmp_path)
    monitoring = (tmp_path / "monitoring.config").read_text()
    assert f'path: "{jobs["tfserving"]["metrics_path"]}"' in monitoring
    assert jobs["gateway"]["metrics_path"] == "/metrics"
    container_ports = {
        name: {port["target"] for port in gpu_model["services"][name]["ports"]} for name in SERVERS
    }
    for name in SERVERS:
        (target,) = jobs[name]["static_configs"][0]["targets"]
        host, port = target.split(":")
        assert host == name and int(port) in container_ports[name]


def _serving_settings(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, Any], argv: list[str]
):
    """What the gateway would run with: the real settings loader, env plus CLI."""
    from serving.settings import ServingSettings, settings_from_args

    fields = ServingSettings.model_fields
    others = {k for k in environment if not k.startswith("SERVING_")}
    assert all(k.startswith("OTEL_") for k in others), f"neither SERVING_ nor OTEL_: {others}"
    serving = {k: v for k, v in environment.items() if k not in others}
    unknown = {k for k in serving if k.removeprefix("SERVING_").lower() not in fields}
    assert not unknown, f"not gateway settings: {unknown}"
    with monkeypatch.context() as patch:
        for key in [k for k in os.environ if k.startswith("SERVING_")]:
            patch.delenv(key)
        for key, value in serving.items():
            patch.setenv(key, value or "")
        return settings_from_args(argv)


def test_gateway_environment_is_real_settings(
    monkeypatch: pytest.MonkeyPatch, gpu_model: dict[str, Any], cpu_model: dict[str, Any]
):
    """Every SERVING_* variable compose sets is a gateway setting and parses."""
    gpu = gpu_model["services"]["gateway"]
    settings = _serving_settings(monkeypatch, gpu["environment"], gpu.get("command") or [])
    assert settings.device == "cuda" and str(settings.repository) == "/models"
    assert settings.http_port == 8501 and settings.grpc_port == 8500
    assert settings.api_keys == []
    assert settings.trace_sample == 0.0  # tracing off unless asked for
    cpu = cpu_model["services"]["gateway"]
    settings = _serving_settings(monkeypatch, cpu["environment"], cpu.get("command") or [])
    assert settings.device == "cpu"


def test_jaeger_is_an_optional_otlp_backend_the_gateway_sends_to(
    tracing_model: dict[str, Any], gpu_model: dict[str, Any]
):
    """--profile tracing adds Jaeger (pinned, OTLP gRPC on 4317, UI on 16686, healthchecked);
    the gateway is pointed at it in every profile and traces nothing unless asked."""
    jaeger = tracing_model["services"]["jaeger"]
    assert jaeger["profiles"] == ["tracing"]
    image, _, tag = jaeger["image"].partition(":")
    assert image == "jaegertracing/all-in-one"
    assert tag[0].isdigit() and tag.count(".") == 2, f"not a pinned release: {tag!r}"
    assert jaeger["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    published = {(p["target"], p["published"]) for p in jaeger["ports"]}
    assert published == {(16686, "16686"), (4317, "4317")}
    assert jaeger["healthcheck"]["test"] and "depends_on" not in jaeger
    for model in (gpu_model, tracing_model):
        gateway = model["services"]["gateway"]
        environment = gateway["environment"]
        assert environment["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317"
        assert float(environment["SERVING_TRACE_SAMPLE"]) == 0.0
        assert "jaeger" not in (gateway.get("depends_on") or {})  # serves without it


def test_gateway_traces_when_the_sample_is_set(
    monkeypatch: pytest.MonkeyPatch, compose_v2: str, repo_root: Path, compose_env: dict[str, str]
):
    """SERVING_TRACE_SAMPLE from the caller's environment reaches the gateway's settings."""
    env = {**compose_env, "SERVING_TRACE_SAMPLE": "0.1"}
    model = render(compose_v2, repo_root, env, "--profile", "tracing")
    gateway = model["services"]["gateway"]
    settings = _serving_settings(monkeypatch, gateway["environment"], gateway.get("command") or [])
    assert settings.trace_sample == 0.1


def _run_healthcheck(test: list[str], port: int) -> int:
    """Run a compose healthcheck here, pointed at `port` instead of the container's 8501."""
    env = {**os.environ, "SERVING_HTTP_PORT": str(port)}  # serving.healthcheck reads its settings
    if test[0] == "CMD-SHELL":
        shell = test[1].replace("127.0.0.1/8501", f"127.0.0.1/{port}")
        return subprocess.run(
            ["sh", "-c", shell], capture_output=True, timeout=30, env=env
        ).returncode
    assert test[0] == "CMD"
    command = [part.replace("127.0.0.1:8501", f"127.0.0.1:{port}") for part in test[1:]]
    if command[0] == "python":
        command[0] = sys.executable
    return subprocess.run(
        command, capture_output=True, timeout=30, env=env, cwd=Path(__file__).resolve().parents[2]
    ).returncode


def test_exec_form_healthchecks_have_one_word_per_argument(gpu_model: dict[str, Any]):
    """Podman's Docker-compatible API splits CMD arguments at spaces (seen with Podman 4.3 under
    Compose v2: `python -c "import a; b"` became `python -c import a; b`): multi-word commands
    must use CMD-SHELL."""
    for name, service in gpu_model["services"].items():
        test = (service.get("healthcheck") or {}).get("test") or []
        if test and test[0] == "CMD":
            spaced = [part for part in test[1:] if " " in part]
            assert not spaced, f"{name}: {spaced}"


TFSERVING_STATUS = (
    '{"model_version_status": [{"version": "1", "state": "%s", "status": {"error_code": "OK"}}]}'
)


@pytest.mark.parametrize(("state", "healthy"), [("AVAILABLE", True), ("LOADING", False)])
def test_tfserving_healthcheck_waits_for_an_available_version(
    gpu_model: dict[str, Any], status_server: type, state: str, healthy: bool
):
    """The bash /dev/tcp check, run against a loopback server answering like TF Serving."""
    test = gpu_model["services"]["tfserving"]["healthcheck"]["test"]
    body = {
        "model_version_status": [{"version": "1", "state": state, "status": {"error_code": "OK"}}]
    }
    with status_server(200, json.dumps(body)) as server:
        assert (_run_healthcheck(test, server.port) == 0) is healthy
    assert server.paths == ["/v1/models/lenet"]


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_gateway_healthcheck_follows_v2_readiness(
    gpu_model: dict[str, Any], status_server: type, status: int, healthy: bool
):
    test = gpu_model["services"]["gateway"]["healthcheck"]["test"]
    with status_server(status, "{}") as server:
        assert (_run_healthcheck(test, server.port) == 0) is healthy
    assert server.paths == ["/v2/health/ready"]

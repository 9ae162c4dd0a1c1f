"""Short, bounded Locust runs (2 users, a few seconds) against our gateway on loopback.

Each run goes through the real path: test data prepared in the parent, Locust headless in a
subprocess, every answer checked, report files written. Numbers are not asserted beyond "some
requests succeeded": speed lives in the benchmark reports, not in tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from PIL import Image

from benchmarks.run import SCHEMA_PATH, RunConfig, run_benchmark
from benchmarks.servers import REPO_ROOT, Server, child_env, gateway
from clients.v2_grpc import MODEL_INFER_METHOD
from clients.wire import PREDICT_METHOD
from tests.benchmarks.conftest import validate_report

MODEL = "lenet"

pytestmark = pytest.mark.slow


def short_run(
    server: Server, repository: Path, out: Path, protocol: str, **overrides: Any
) -> RunConfig:
    options: dict[str, Any] = {
        "users": 2,
        "spawn_rate": 2.0,
        "duration_s": 2.0,
        "warmup_s": 1.0,
        "num_images": 256,
        "ceiling_seconds": 0.2,
    } | overrides
    return RunConfig(
        target=server.target_for(protocol) or "",
        model=MODEL,
        protocol=protocol,
        out=str(out),
        repository=str(repository),
        **options,
    )


def test_rest_run_reports_throughput_and_full_agreement(
    served_gateway: Server, trained_repository: Path, tmp_path: Path
) -> None:
    results = run_benchmark(short_run(served_gateway, trained_repository, tmp_path, "rest"))
    assert results["failure"] is False, results["failure_reasons"]
    assert results["throughput"]["requests_per_s"] > 0
    assert results["latency_ms"]["count"] > 0
    assert results["accuracy"]["count"] > 0
    assert results["accuracy"]["agreement"] == 1.0
    assert results["accuracy"]["accuracy"] == results["accuracy"]["offline_accuracy"]
    assert results["ceiling"]["efficiency"] is not None
    assert results["locust"]["aggregated"]["requests"] > 0
    on_disk = validate_report(tmp_path)
    assert on_disk["throughput"] == results["throughput"]


def test_v2_batches_over_two_locust_processes(
    served_gateway: Server, trained_repository: Path, tmp_path: Path
) -> None:
    results = run_benchmark(
        short_run(
            served_gateway,
            trained_repository,
            tmp_path,
            "v2",
            images_per_request=8,
            processes=2,
            users=4,
            spawn_rate=4.0,
        )
    )
    assert results["failure"] is False, results["failure_reasons"]
    assert results["locust"]["workers_with_samples"] == 2
    assert results["throughput"]["images_per_s"] == pytest.approx(
        8 * results["throughput"]["requests_per_s"]
    )
    assert results["accuracy"]["agreement"] == 1.0
    validate_report(tmp_path)


def test_grpc_calls_appear_in_locust_statistics(
    served_gateway: Server, trained_repository: Path, tmp_path: Path
) -> None:
    results = run_benchmark(
        short_run(served_gateway, trained_repository, tmp_path, "grpc", version=1)
    )
    grpc_rows = [e for e in results["locust"]["entries"] if e["type"] == "grpc"]
    assert [row["name"] for row in grpc_rows] == [PREDICT_METHOD]
    assert grpc_rows[0]["requests"] > 0
    assert grpc_rows[0]["failures"] == 0
    assert PREDICT_METHOD in (tmp_path / "locust_stats.csv").read_text()
    assert results["accuracy"]["agreement"] == 1.0
    assert results["failure"] is False, results["failure_reasons"]


def test_v2_grpc_calls_appear_in_locust_statistics(
    served_gateway: Server, trained_repository: Path, tmp_path: Path
) -> None:
    results = run_benchmark(
        short_run(served_gateway, trained_repository, tmp_path, "v2-grpc", version=1)
    )
    rows = [e for e in results["locust"]["entries"] if e["type"] == "grpc"]
    assert [row["name"] for row in rows] == [MODEL_INFER_METHOD]
    assert rows[0]["requests"] > 0 and rows[0]["failures"] == 0
    assert results["accuracy"]["agreement"] == 1.0
    assert results["failure"] is False, results["failure_reasons"]
    validate_report(tmp_path)


def test_image_endpoint_answers_are_checked(
    served_gateway: Server, trained_repository: Path, tmp_path: Path
) -> None:
    # An explicit version goes into the URL (/v1/models/lenet/versions/1:classify_image).
    results = run_benchmark(
        short_run(served_gateway, trained_repository, tmp_path, "image", version=1)
    )
    assert results["locust"]["aggregated"]["failures"] == 0
    assert results["failure"] is False, results["failure_reasons"]
    assert results["accuracy"]["count"] > 0
    assert results["accuracy"]["agreement"] == 1.0


def test_permuted_labels_are_reported_as_an_accuracy_failure(
    permuted_repository: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    with gateway(permuted_repository, model=MODEL, log_path=tmp_path / "gateway.log") as server:
        completed = subprocess.run(
            [
                sys.executable, "-m", "benchmarks", "run", "--target", server.http or "",
                "--model", MODEL, "--protocol", "v2", "--users", "2", "--duration", "2s",
                "--warmup", "1s", "--num-images", "256", "--ceiling-seconds", "0",
                "--repository", str(permuted_repository), "--out", str(out),
            ],
            cwd=REPO_ROOT, env=child_env(), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert completed.returncode == 1, completed.stdout + completed.stderr
    assert "FAIL" in completed.stdout
    results = validate_report(out)
    assert results["failure"] is True
    assert results["accuracy"]["passed"] is False
    # The server returned what the broken model computes (offline answers agree) ...
    assert results["accuracy"]["agreement"] == 1.0
    # ... and those answers are far below what training measured for the model's labels.
    assert results["accuracy"]["accuracy"] < results["accuracy"]["recorded_accuracy"] - 0.3
    assert any("recorded at training" in r for r in results["failure_reasons"])


def test_accuracy_command_equals_offline_for_fp32(
    served_gateway: Server, trained_repository: Path, tmp_path: Path
) -> None:
    completed = subprocess.run(
        [
            sys.executable, "-m", "benchmarks", "accuracy", "--target", served_gateway.http or "",
            "--protocol", "v2", "--model", MODEL, "--dataset", "mnist", "--limit", "2000",
            "--repository", str(trained_repository), "--out", str(tmp_path),
        ],
        cwd=REPO_ROOT, env=child_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout + completed.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text())).validate(results)
    assert results["equals_offline"] is True
    assert results["accuracy"]["count"] == 2000
    assert results["accuracy"]["agreement"] == 1.0
    assert results["accuracy"]["macro_f1"] > 0


def test_sweep_writes_one_comparison_report(
    served_gateway: Server, trained_repository: Path, tmp_path: Path
) -> None:
    from benchmarks.sweep import SweepConfig, run_sweep

    sweep = run_sweep(
        SweepConfig(
            model=MODEL,
            targets=[f"gateway={served_gateway.http},{served_gateway.grpc}"],
            out=str(tmp_path),
            users=[1, 2],
            protocols=["v2", "grpc"],
            duration_s=1.0,
            warmup_s=1.0,
            repository=str(trained_repository),
            num_images=128,
            ceiling_seconds=0.2,
        )
    )
    assert sweep["failure"] is False, sweep["failure_reasons"]
    assert [(r["config"]["protocol"], r["config"]["users"]) for r in sweep["runs"]] == [
        ("v2", 1), ("v2", 2), ("grpc", 1), ("grpc", 2),
    ]  # fmt: skip
    results = json.loads((tmp_path / "results.json").read_text())
    jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text())).validate(results)
    for name in results["files"]["plots"]:
        with Image.open(tmp_path / name) as image:
            image.verify()
    assert "| gateway | grpc |" in (tmp_path / "report.md").read_text()


def test_unreachable_target_is_a_failure_not_a_silent_zero(tmp_path: Path) -> None:
    from benchmarks.servers import free_port

    config = RunConfig(
        target=f"http://127.0.0.1:{free_port()}",
        model=MODEL,
        protocol="v2",
        out=str(tmp_path),
        users=1,
        spawn_rate=1.0,
        duration_s=1.0,
        warmup_s=0.0,
        num_images=16,
        repository=str(tmp_path / "no-repository"),
    )
    results = run_benchmark(config)
    assert results["failure"] is True
    assert results["throughput"]["requests"] == 0
    assert results["throughput"]["error_ratio"] == 1.0
    assert "no successful requests in the measured window" in results["failure_reasons"]
    validate_report(tmp_path)

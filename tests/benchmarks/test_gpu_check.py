"""The GPU check's dry run on this CPU: ceiling, gateway load, agreement and report, end to end
on a tiny repository with short measurements."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import gpu_check
from tests.tiny_models import lenet_like, write_version


def test_dry_run_measures_ceiling_gateway_and_agreement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    write_version(repo, gpu_check.LENET, 1, lenet_like())
    short = gpu_check.Plan((1, 4), (1, 2), ("fp32",), 0.5, 0.2, 2, 8)
    monkeypatch.setitem(gpu_check.PLANS, "cpu", short)
    assert gpu_check.run("cpu", repo, tmp_path / "out", budget_s=120) == 0
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    entry = report["models"]["lenet fp32"]
    assert [row["batch"] for row in entry["ceiling"]] == [1, 4]
    assert all(row["provider"] == "CPUExecutionProvider" for row in entry["ceiling"])
    protocols = [(row["protocol"], row["concurrency"]) for row in entry["gateway"]]
    assert protocols == [("v2", 1), ("v2", 2), ("grpc", 1), ("grpc", 2), ("image", 2)]
    for row in entry["gateway"]:
        assert row["errors"] == 0 and row["requests_per_s"] > 0
        assert row["ratio_to_ceiling"] > 0 and row["load_cpu_percent"] > 0
    # Served classes equal in-process ones on both wires (same model, same provider).
    assert entry["agreement"]["v2"] == entry["agreement"]["grpc"] == 1.0
    assert "| v2 | 1 |" in (tmp_path / "out" / "gpu_check.md").read_text()


def test_the_planned_device_time_fits_the_budget() -> None:
    # Two models, both precisions, every concurrency: under the 8 minutes one device call allows.
    assert gpu_check.expected_seconds(gpu_check.PLANS["cuda"], 2) < 480


def test_a_narrower_plan_from_the_command_line_with_gateway_options(tmp_path: Path) -> None:
    """--models/--batches/--concurrencies/--seconds narrow the plan; --gateway-args reach the
    gateway (a bad one would stop it from starting); both are recorded in the report."""
    import subprocess
    import sys

    repo = tmp_path / "repo"
    write_version(repo, gpu_check.LENET, 1, lenet_like())
    command = [
        sys.executable, "-m", "benchmarks.gpu_check", "run", "--device", "cpu",
        "--repository", str(repo), "--out", str(tmp_path / "out"), "--models", gpu_check.LENET,
        "--batches", "2", "--concurrencies", "3", "--seconds", "0.3",
        "--gateway-args", "--allowed-batch-sizes 1,256",
    ]  # fmt: skip
    subprocess.run(command, check=True, cwd=gpu_check.ROOT, timeout=240)
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["gateway_args"] == ["--allowed-batch-sizes", "1,256"]
    assert report["plan"]["concurrencies"] == [3] and report["plan"]["seconds"] == 0.3
    entry = report["models"]["lenet fp32"]
    assert [row["batch"] for row in entry["ceiling"]] == [2]
    assert [(row["protocol"], row["concurrency"]) for row in entry["gateway"]] == [
        ("v2", 3), ("grpc", 3), ("image", 3)
    ]  # fmt: skip
    assert all(row["errors"] == 0 and row["error_kinds"] == {} for row in entry["gateway"])


def test_errors_are_counted_by_kind() -> None:
    import grpc
    import httpx

    request = httpx.Request("POST", "http://127.0.0.1/v2/models/m/infer")
    refused = httpx.HTTPStatusError("429", request=request, response=httpx.Response(429))
    assert gpu_check.error_kind(refused) == "http 429"
    exhausted = grpc.aio.AioRpcError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.aio.Metadata(), grpc.aio.Metadata()
    )
    assert gpu_check.error_kind(exhausted) == "grpc RESOURCE_EXHAUSTED"
    assert gpu_check.error_kind(TimeoutError()) == "TimeoutError"


def test_the_padding_check_script_runs_its_four_gateway_variants(tmp_path: Path) -> None:
    """benchmarks/gpu_padding_check.sh as a dry run on the CPU: one report per variant, each
    with the gateway options it names (--cuda-graph has no effect on the CPU provider)."""
    import os
    import subprocess
    import sys

    repo = tmp_path / "repo"
    write_version(repo, gpu_check.LENET, 1, lenet_like())
    out = tmp_path / "out"
    subprocess.run(
        ["bash", "benchmarks/gpu_padding_check.sh", "cpu", str(repo), str(out), "--seconds", "0.3",
         "--batches", "1", "--concurrencies", "2"],
        check=True, cwd=gpu_check.ROOT, timeout=300, env={**os.environ, "PYTHON": sys.executable},
    )  # fmt: skip
    args = {
        name: json.loads((out / name / "gpu_check.json").read_text())["gateway_args"]
        for name in ("default", "sessions", "graphs", "none")
    }
    assert args["default"] == []
    assert args["sessions"] == [
        "--allowed-batch-sizes", "1,8,32,128,256", "--session-per-batch-size"
    ]  # fmt: skip
    assert args["graphs"] == ["--allowed-batch-sizes", "1,8,32,128,256", "--cuda-graph"]
    assert args["none"] == ["--allowed-batch-sizes", "none"]

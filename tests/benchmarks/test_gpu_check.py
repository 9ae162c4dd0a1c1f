"""The GPU check's dry run on this CPU: ceiling, gateway load, agreement and report, end to end
on a tiny repository with short measurements."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
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


def test_dry_run_takes_kserve_v2_grpc_as_a_protocol(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    write_version(repo, gpu_check.LENET, 1, lenet_like())
    short = gpu_check.Plan((1,), (2,), ("fp32",), 0.5, 0.2, 1, 8, ("grpc", "v2-grpc"))
    monkeypatch.setitem(gpu_check.PLANS, "cpu", short)
    assert gpu_check.run("cpu", repo, tmp_path / "out", budget_s=120) == 0
    entry = json.loads((tmp_path / "out" / "gpu_check.json").read_text())["models"]["lenet fp32"]
    assert [(row["protocol"], row["concurrency"]) for row in entry["gateway"]] == [
        ("grpc", 2), ("v2-grpc", 2),
    ]  # fmt: skip
    assert all(row["errors"] == 0 and row["requests_per_s"] > 0 for row in entry["gateway"])
    assert entry["agreement"]["v2-grpc"] == entry["agreement"]["grpc"] == 1.0


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


def test_the_matrix_screens_variants_chooses_one_and_gives_a_verdict(tmp_path: Path) -> None:
    """The device check's dry run: ceilings, transport floors, two variants screened (their
    options read back from the gateway's metrics), the better one measured on every wire, and the
    verdict line in the form RESULTS.md records (marked as a dry run: no GPU here)."""
    import re

    from benchmarks import gpu_matrix

    repo = tmp_path / "repo"
    write_version(repo, gpu_check.LENET, 1, lenet_like())
    plan = gpu_matrix.MatrixPlan(
        (gpu_check.LENET, "fp32"), ((gpu_check.LENET, "fp32"),), (1, 4), (1, 2), 0.3, 0.3, 1, 8,
        5.0,
    )  # fmt: skip
    variants = gpu_matrix.VARIANTS[:2]  # the defaults; five sizes with a session each
    report = gpu_matrix.run("cpu", repo, tmp_path / "out", 120, plan, variants)
    assert [row["batch"] for row in report["ceilings"]["lenet fp32"]] == [1, 4]
    assert report["floors"]["v2"]["p50_ms"] > 0 and report["floors"]["grpc"]["p50_ms"] > 0
    screened = {row["variant"]: row for row in report["screen"]}
    assert list(screened) == ["default", "sessions-heuristic"] and report["skipped"] == []
    (info,) = screened["sessions-heuristic"]["runtime_info"]
    assert info["sessions"] == info["padded_batch_sizes"] == gpu_matrix.SIZES
    assert screened["default"]["runtime_info"][0]["sessions"] == ""
    for row in screened.values():
        assert row["light"]["errors"] == row["heavy"]["errors"] == 0 and row["start_s"] > 0
    assert report["chosen"]["variant"] in screened
    entry = report["full"]["lenet fp32"]
    assert [(r["protocol"], r["concurrency"]) for r in entry["gateway"]] == [
        ("v2", 1), ("v2", 2), ("grpc", 1), ("grpc", 2), ("image", 2)
    ]  # fmt: skip
    assert all(r["errors"] == 0 for r in entry["gateway"])
    assert entry["agreement"]["v2"] == entry["agreement"]["grpc"] == 1.0
    verdict, details = report["verdicts"]
    assert re.fullmatch(
        r"CPU dry-run verdict \(\d{4}-\d\d-\d\d, .+\): LeNet fp32 V2 binary c=2 "
        r"gateway/ceiling = \d+\.\d\d", verdict
    ), verdict  # fmt: skip
    assert "gRPC c=2" in details and "decode threads" in details and "one caller p50" in details
    written = json.loads((tmp_path / "out" / "gpu_matrix.json").read_text())
    assert written["verdicts"] == report["verdicts"]
    assert verdict in (tmp_path / "out" / "gpu_matrix.md").read_text()


def test_the_matrix_keeps_its_budget_for_the_full_step(tmp_path: Path) -> None:
    """Variants whose screen would eat the full step's reserve are skipped and listed, not run."""
    from benchmarks import gpu_matrix

    repo = tmp_path / "repo"
    write_version(repo, gpu_check.LENET, 1, lenet_like())
    slow_starts = gpu_matrix.MatrixPlan(
        (gpu_check.LENET, "fp32"), ((gpu_check.LENET, "fp32"),), (1,), (1, 2), 0.2, 0.2, 1, 0,
        200.0,  # a gateway start guessed at 200 s: nothing fits a 60 s budget
    )  # fmt: skip
    report = gpu_matrix.run("cpu", repo, tmp_path / "out", 60, slow_starts, gpu_matrix.VARIANTS)
    assert report["screen"] == [] and report["chosen"] is None and report["verdicts"] == []
    assert [s["step"] for s in report["skipped"]] == [
        f"screen {v.name}" for v in gpu_matrix.VARIANTS
    ]  # fmt: skip
    assert report["seconds"] < 60


def test_every_variant_is_a_valid_gateway_command_line() -> None:
    from benchmarks import gpu_matrix
    from serving.settings import settings_from_args

    for variant in gpu_matrix.VARIANTS:
        settings = settings_from_args([*variant.args, "--max-batch-size", "256"])
        assert settings.max_batch_size == 256, variant.name


def test_the_verdict_line_form_on_a_device() -> None:
    """The line RESULTS.md records: date, the device's name, the model and the V2 ratio at the
    most callers; its details name gRPC, the JPEG endpoint's decode threads and the light-load
    goal (1.5 x in-process batch 1 + transport)."""
    from benchmarks import gpu_matrix

    def load(protocol: str, concurrency: int, ratio: float, p50: float = 1.0) -> dict[str, Any]:
        return {"protocol": protocol, "concurrency": concurrency, "ratio_to_ceiling": ratio,
                "p50_ms": p50}  # fmt: skip

    report = {
        "date": "2026-12-06T20:00:00+00:00", "device": "cuda", "device_name": "NVIDIA H100",
        "chosen": {"variant": "sessions-heuristic", "args": []},
        "floors": {"v2": {"p50_ms": 0.5}},
        "ceilings": {"resnet50_imagenet fp16": [
            {"batch": 1, "how": "IO binding", "p50_ms": 1.2},
            {"batch": 1, "how": "CUDA graph", "p50_ms": 0.5}]},
        "full": {"resnet50_imagenet fp16": {"decode_threads": 1, "gateway": [
            load("v2", 1, 0.1, p50=2.0), load("v2", 256, 0.856), load("grpc", 256, 0.8),
            load("image", 256, 0.3)]}},
    }  # fmt: skip
    verdict, details = gpu_matrix.verdicts(report)
    assert verdict == (
        "GPU verdict (2026-12-06, NVIDIA H100): ResNet50-224 fp16 V2 binary c=256 "
        "gateway/ceiling = 0.86"
    )  # fmt: skip
    assert "gRPC c=256 0.80; JPEG c=256 0.30 (1 decode threads)" in details
    assert "one caller p50 2.00 ms against goal 2.30 ms" in details and ": met;" in details


def test_the_device_plan_screens_the_first_variants_within_one_call() -> None:
    """With the guessed start times, the ceilings, floors, full step and the four most telling
    variants fit the 450 s budget of the prepared call (the rest as the budget allows)."""
    from benchmarks import gpu_matrix

    plan = gpu_matrix.PLANS["cuda"]
    assert gpu_matrix.expected_seconds(plan, gpu_matrix.VARIANTS[:4]) < 450


def test_the_matrix_measures_int8_only_where_the_file_is_and_on_leftover_budget(
    tmp_path: Path,
) -> None:
    """An int8 entry joins the full step where the version has model.int8.onnx (the device
    repository gets one from `prepare`), keeps no share of the budget while screening, and is
    served from the int8 file; a model without the file has no int8 entry."""
    from benchmarks import gpu_matrix
    from training.quantize import quantize_file

    repo = tmp_path / "repo"
    version = write_version(repo, gpu_check.LENET, 1, lenet_like())
    calibration = np.random.default_rng(0).integers(0, 256, (8, 28, 28, 1), dtype=np.uint8)
    quantize_file(version / "model.onnx", version / "model.int8.onnx", calibration)
    plan = gpu_matrix.MatrixPlan(
        (gpu_check.LENET, "fp32"), ((gpu_check.LENET, "fp32"), (gpu_check.LENET, "int8")),
        (1,), (2,), 0.3, 0.3, 1, 8, 5.0,
    )  # fmt: skip
    report = gpu_matrix.run("cpu", repo, tmp_path / "out", 120, plan, gpu_matrix.VARIANTS[:1])
    assert list(report["full"]) == ["lenet fp32", "lenet int8"]
    assert list(report["ceilings"]) == ["lenet fp32", "lenet int8"]
    assert report["full"]["lenet int8"]["agreement"]["v2"] == 1.0  # against the int8 file
    assert [v.split(": ")[1].split(" V2")[0] for v in report["verdicts"][::2]] == [
        "LeNet fp32", "LeNet int8"
    ]  # fmt: skip
    (version / "model.int8.onnx").unlink()
    without = gpu_matrix.run("cpu", repo, tmp_path / "out2", 120, plan, gpu_matrix.VARIANTS[:1])
    assert list(without["full"]) == ["lenet fp32"]

"""`python -m benchmarks accuracy --precision fp16`: the fp16 export, served and judged against fp32.

A really trained LeNet (the session's ``trained_repository``) gets its fp16 file from the
converter training uses; our gateway serves it on loopback, real ONNX Runtime on both sides.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from benchmarks.accuracy import AccuracyConfig, check_accuracy, compare_precisions
from benchmarks.run import SCHEMA_PATH
from benchmarks.servers import child_env, gateway

MODEL = "lenet"
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fp16_repository(trained_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.export import convert_to_fp16

    repository = tmp_path_factory.mktemp("fp16") / "repository"
    shutil.copytree(trained_repository, repository)
    version = repository / MODEL / "1"
    convert_to_fp16(version / "model.onnx", version / "model.fp16.onnx")
    return repository


def test_compare_precisions_counts_the_changed_answers() -> None:
    labels = np.array([0, 1, 2, 0])
    fp32 = np.eye(3, dtype=np.float32)[[0, 1, 1, 0]]  # 3 of 4 right
    fp16 = np.eye(3, dtype=np.float32)[[0, 2, 2, 1]]  # image 2 fixed, images 1 and 3 broken
    report = compare_precisions(fp32, fp16, labels, max_drop=0.001)
    assert (report["fp32_accuracy"], report["fp16_accuracy"]) == (0.75, 0.5)
    assert (report["answers_changed"], report["fixed"], report["broken"]) == (3, 1, 2)
    assert report["passed"] is False
    same = compare_precisions(fp32, fp32 + 1e-4, labels, max_drop=0.001)
    assert same["passed"] is True and same["answers_changed"] == 0
    assert same["max_abs_diff"] == pytest.approx(1e-4, rel=1e-3)


def test_fp16_served_on_cpu_equals_fp16_offline(fp16_repository: Path, tmp_path: Path) -> None:
    with gateway(
        fp16_repository, model=MODEL,
        extra_args=["--poll-interval-s", "0", "--precision", "fp16", "--fp16-on-cpu"],
    ) as server:  # fmt: skip
        completed = subprocess.run(
            [
                sys.executable, "-m", "benchmarks", "accuracy", "--target", server.http or "",
                "--protocol", "v2", "--model", MODEL, "--dataset", "mnist", "--limit", "2000",
                "--repository", str(fp16_repository), "--precision", "fp16",
                "--out", str(tmp_path),
            ],
            cwd=REPO_ROOT, env=child_env(), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert completed.returncode == 0, completed.stdout + completed.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text())).validate(results)
    assert results["offline_file"] == "model.fp16.onnx"
    assert results["equals_offline"] is True and results["accuracy"]["agreement"] == 1.0
    precision = results["precision"]
    assert precision["images"] == results["accuracy"]["count"] == 2000
    assert precision["fp16_accuracy"] == results["accuracy"]["accuracy"]
    assert abs(precision["accuracy_difference"]) <= 0.001
    # The served probabilities are the fp16 file's, not the fp32 file's.
    assert precision["served_vs_fp16_max_abs_diff"] < precision["served_vs_fp32_max_abs_diff"]
    assert precision["max_abs_diff"] == pytest.approx(precision["served_vs_fp32_max_abs_diff"])
    assert "fp16 vs fp32 offline on 2000 images" in completed.stdout


def _fp16_check(server: Any, repository: Path, limit: int) -> dict[str, Any]:
    """``benchmarks accuracy --precision fp16`` over V2 against ``server``."""
    config = AccuracyConfig(
        target=server.http or "", model=MODEL, protocol="v2", limit=limit,
        repository=str(repository), precision="fp16",
    )  # fmt: skip
    return check_accuracy(config)


def test_fp16_check_fails_when_the_gateway_served_fp32(fp16_repository: Path) -> None:
    """Without --fp16-on-cpu a CPU gateway serves model.onnx; the fp16 check must notice."""
    with gateway(
        fp16_repository, model=MODEL, extra_args=["--poll-interval-s", "0", "--precision", "fp16"]
    ) as server:
        result = _fp16_check(server, fp16_repository, limit=500)
    assert result["failure"] is True
    assert result["precision"]["served_vs_fp32_max_abs_diff"] == 0.0
    assert any("--fp16-on-cpu" in reason for reason in result["failure_reasons"])


def test_fp16_check_without_an_fp16_file_says_so(trained_repository: Path) -> None:
    with gateway(trained_repository, model=MODEL, extra_args=["--poll-interval-s", "0"]) as server:
        result = _fp16_check(server, trained_repository, limit=200)
    assert result["failure"] is True and result["precision"] is None
    assert any("no model.fp16.onnx on disk" in reason for reason in result["failure_reasons"])

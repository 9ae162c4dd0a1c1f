"""Fixtures for the benchmark tests: a really trained and exported LeNet, a copy of it whose
output columns are permuted, and our gateway serving a repository on loopback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from PIL import Image

from benchmarks.run import SCHEMA_PATH
from benchmarks.servers import Server, child_env, gateway

MODEL = "lenet"


def validate_report(out: Path, heading: str = "Accuracy of served answers") -> dict[str, Any]:
    """results.json matches the committed schema, the PNGs open, the reports are written."""
    results: dict[str, Any] = json.loads((out / "results.json").read_text())
    jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text())).validate(results)
    for name in results["files"]["plots"]:
        with Image.open(out / name) as image:
            image.verify()
            assert image.format == "PNG"
    assert heading in (out / "report.md").read_text()
    assert "<table>" in (out / "report.html").read_text()
    return results


@pytest.fixture(scope="session")
def trained_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LeNet trained one epoch on 2,000 MNIST images by the training CLI, exported as training
    publishes it (metadata.json records its test accuracy). About 15 s on two cores."""
    work = tmp_path_factory.mktemp("trained")
    repository = work / "repository"
    command = [
        sys.executable, "-m", "training", "train", "--model", MODEL, "--dataset", "mnist",
        "--epochs", "1", "--limit", "2000", "--repository", str(repository), "--no-fp16",
    ]  # fmt: skip
    completed = subprocess.run(
        command, cwd=work, env=child_env(), capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert (repository / MODEL / "1" / "model.onnx").exists()
    return repository


def permute_outputs(onnx_path: Path, permutation: np.ndarray) -> None:
    """Rewrite the graph so output column j holds the old column permutation[j].

    The metadata (class names, recorded accuracy) stays as it was, so it no longer matches what
    the model answers: the kind of defect a broken export or a mixed-up label file produces.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(onnx_path))
    graph = model.graph
    output_name = graph.output[0].name
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name == output_name:
                node.output[i] = f"{output_name}_unpermuted"
    graph.initializer.append(
        numpy_helper.from_array(permutation.astype(np.int64), "output_permutation")
    )
    graph.node.append(
        helper.make_node(
            "Gather", [f"{output_name}_unpermuted", "output_permutation"], [output_name], axis=1
        )
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(onnx_path))


@pytest.fixture(scope="session")
def permuted_repository(trained_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained LeNet with its output columns rolled by one (every answer names a wrong digit)."""
    repository = tmp_path_factory.mktemp("permuted") / "repository"
    shutil.copytree(trained_repository, repository)
    version = repository / MODEL / "1"
    for extra in version.glob("model.fp16.onnx"):
        extra.unlink()
    permute_outputs(version / "model.onnx", np.roll(np.arange(10), 1))
    return repository


@pytest.fixture(scope="module")
def served_gateway(
    trained_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """Our gateway on free loopback ports serving the trained repository."""
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    with gateway(
        trained_repository, batching=True, model=MODEL, log_path=log,
        extra_args=["--poll-interval-s", "0"],
    ) as server:  # fmt: skip
        yield server

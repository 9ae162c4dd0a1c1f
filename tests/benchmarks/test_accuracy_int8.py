"""`python -m benchmarks accuracy --precision int8`: the served int8 file equals it offline.

The session's really trained LeNet gets its int8 file from training's quantizer (calibrated on
its own test images here, for speed); our gateway serves it with ``--precision int8``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmarks.accuracy import AccuracyConfig, check_accuracy
from benchmarks.prepare import load_test_set
from benchmarks.servers import gateway

MODEL = "lenet"


@pytest.fixture(scope="module")
def int8_repository(trained_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.quantize import quantize_file

    repository = tmp_path_factory.mktemp("int8") / "repository"
    shutil.copytree(trained_repository, repository)
    version = repository / MODEL / "1"
    images = load_test_set("mnist")[0][:64]
    quantize_file(version / "model.onnx", version / "model.int8.onnx", images)
    return repository


def test_int8_served_equals_int8_offline(int8_repository: Path) -> None:
    with gateway(
        int8_repository, model=MODEL, extra_args=["--poll-interval-s", "0", "--precision", "int8"]
    ) as server:
        config = AccuracyConfig(
            target=server.http or "", model=MODEL, protocol="v2", limit=1000,
            repository=str(int8_repository), precision="int8",
        )  # fmt: skip
        result = check_accuracy(config)
    assert result["failure"] is False, result["failure_reasons"]
    assert result["offline_file"] == "model.int8.onnx"
    assert result["equals_offline"] is True and result["accuracy"]["agreement"] == 1.0
    assert np.isclose(result["served"]["accuracy"], result["offline"]["accuracy"])

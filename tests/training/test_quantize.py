"""`python -m training quantize`: an int8 file behind an accuracy gate, published as a new version."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training.export import existing_versions
from training.quantize import QuantizationError, quantize_version

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def repository(exported_lenet, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    """A private copy of the session's trained LeNet repository (version 1)."""
    _, source = exported_lenet
    shutil.copytree(source, tmp_path / "repo")
    return tmp_path / "repo"


def test_int8_is_gated_on_the_test_set_and_published_as_the_next_version(
    repository: Path,
) -> None:
    target, metadata = quantize_version(repository, "lenet", calibration_images=64, seed=3)
    assert target == repository / "lenet" / "2"
    assert (target / "model.int8.onnx").is_file() and (target / "saved_model.pb").is_file()
    written = json.loads((target / "metadata.json").read_text())
    assert written == metadata and written["version"] == 2
    assert written["files"]["onnx_int8"] == "model.int8.onnx"
    int8 = written["int8"]
    assert int8["derived_from_version"] == 1
    assert int8["calibration"] == "64 mnist training images, seed 3"
    assert (
        int8["quantized_ops"]["Conv"] >= 2
        and int8["quantized_ops"].get("MatMul", 0) + int8["quantized_ops"].get("Gemm", 0) >= 1
    )
    gate = int8["gate"]
    assert gate["passed"] is True and gate["images"] == 10_000
    assert gate["drop_points"] <= 0.5 and gate["accuracy_int8"] > 0.5
    # The source version is untouched; TF Serving's config labels the new one stable (the same
    # SavedModel: TF Serving serves fp32, the gateway int8 with --precision int8).
    assert not (repository / "lenet" / "1" / "model.int8.onnx").exists()
    config = (repository / "models.config").read_text()
    assert re.search(r'key: "stable"\s+value: 2', config), config


def test_a_broken_calibration_is_refused_and_nothing_is_published(repository: Path) -> None:
    """Blank calibration images (a real mistake: ranges of zero width) ruin the int8 file; the
    gate refuses it with both accuracies, and neither a version nor a staging folder is left."""
    blank = np.zeros((16, 28, 28, 1), np.uint8)
    with pytest.raises(QuantizationError) as refused:
        quantize_version(repository, "lenet", calibration=blank)
    assert re.fullmatch(
        r"int8 accuracy \d+\.\d\d% is \d+\.\d\d points below fp32's \d+\.\d\d% on the 10,000 "
        r"test images \(at most 0\.5 allowed\): not published",
        str(refused.value),
    ), refused.value  # fmt: skip
    assert existing_versions(repository / "lenet") == [1]
    assert [p.name for p in (repository / "lenet").iterdir()] == ["1"]


def test_the_command_line(repository: Path) -> None:
    command = [sys.executable, "-m", "training", "quantize", "--repository", str(repository),
               "--calibration-images", "32"]  # fmt: skip
    done = subprocess.run([*command, "--model", "lenet"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert re.match(r"published .*/lenet/2: model\.int8\.onnx from version 1, calibrated on 32 "
                    r"mnist training images, seed 0; accuracy fp32 ", done.stdout), done.stdout  # fmt: skip
    missing = subprocess.run([*command, "--model", "nope"], cwd=ROOT, capture_output=True,
                             text=True, timeout=300)  # fmt: skip
    assert missing.returncode == 4
    assert missing.stderr.strip() == f"error: no published version of 'nope' under {repository}"

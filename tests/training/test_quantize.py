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


def test_export_int8_in_the_same_version_or_dropped_with_the_reason(
    exported_lenet, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """`export --int8`: model.int8.onnx inside the exported version, gated on the test set; and
    --int8 without a labelled test set (a model the user brings) is refused up front."""
    result, _ = exported_lenet
    checkpoint = result.run_dir / "checkpoints" / "best_val_loss.keras"
    repository = tmp_path / "repo"
    done = subprocess.run(
        [sys.executable, "-m", "training", "export", "--model", "lenet", "--checkpoint",
         str(checkpoint), "--dataset", "mnist", "--repository", str(repository), "--int8",
         "--no-fp16"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"; int8 accuracy \d+\.\d\d% against fp32's \d+\.\d\d%", done.stdout)
    version = repository / "lenet" / "1"
    metadata = json.loads((version / "metadata.json").read_text())
    assert (version / "model.int8.onnx").is_file()
    assert metadata["files"]["onnx_int8"] == "model.int8.onnx"
    assert metadata["int8"]["calibration"] == "256 mnist training images, seed 42"
    assert metadata["int8"]["gate"]["passed"] is True
    refused = subprocess.run(
        [sys.executable, "-m", "training", "export", "--from", str(version / "model.onnx"),
         "--name", "mine", "--class-names", ",".join("0123456789"), "--repository",
         str(repository), "--int8"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: --int8 needs a labelled test set to gate on")
    assert not (repository / "mine").exists()


def test_a_failing_int8_file_is_dropped_and_the_version_still_published(tmp_path: Path) -> None:
    """add_int8 on a staged export: a quantization that fails its gate (blank calibration) is
    removed, the reason kept for metadata.json; fp32 is unaffected."""
    from tests.tiny_models import lenet_like, reference_predict, write_version
    from training.export import Int8Request
    from training.quantize import add_int8

    staging = write_version(tmp_path, "m", 1, lenet_like())
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (500, 28, 28, 1), dtype=np.uint8)
    labels = reference_predict(staging / "model.onnx", images).argmax(1)  # fp32 scores 100%
    blank = Int8Request(np.zeros((8, 28, 28, 1), np.uint8), images, labels, "8 blank images")
    record = add_int8(staging, blank)
    assert not (staging / "model.int8.onnx").exists() and (staging / "model.onnx").exists()
    assert record["gate"]["passed"] is False and record["gate"]["accuracy_fp32"] == 1.0
    assert (
        record["dropped"].startswith("int8 accuracy ")
        and "below fp32's 100.00%" in record["dropped"]
    )


def test_labelled_images_gate_a_model_without_a_dataset(tmp_path: Path) -> None:
    """`quantize --images DIR` (DIR/<class name>/<image>): a model naming no dataset (one a user
    brought) is calibrated on and gated with those images; folders must name its classes and be
    numerous enough to judge the drop."""
    from PIL import Image

    from tests.tiny_models import lenet_like, reference_predict, write_version

    repository = tmp_path / "repo"
    version = write_version(repository, "mine", 1, lenet_like())
    metadata = json.loads((version / "metadata.json").read_text())
    metadata["dataset"] = None
    (version / "metadata.json").write_text(json.dumps(metadata))
    images = np.random.default_rng(1).integers(0, 256, (240, 28, 28, 1), dtype=np.uint8)
    answers = reference_predict(version / "model.onnx", images).argmax(1)  # fp32 scores 100%
    folder = tmp_path / "labelled"
    for i, (image, answer) in enumerate(zip(images, answers, strict=True)):
        (folder / f"class_{answer}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[:, :, 0]).save(folder / f"class_{answer}" / f"{i}.png")
    target, written = quantize_version(
        repository, "mine", calibration_images=32, images_dir=folder, max_drop_points=100
    )  # fmt: skip
    gate = written["int8"]["gate"]
    assert (target / "model.int8.onnx").is_file() and gate["images"] == 240
    assert gate["accuracy_fp32"] == 1.0 and 0 < gate["accuracy_int8"] <= 1.0
    assert written["int8"]["calibration"].startswith(f"32 of the 240 images in {folder}")
    (folder / "not_a_class").mkdir()
    shutil.copy(next((folder / f"class_{answers[0]}").iterdir()), folder / "not_a_class")
    with pytest.raises(QuantizationError, match=r"folders \['not_a_class'\] name no class"):
        quantize_version(repository, "mine", images_dir=folder)
    shutil.rmtree(folder / "not_a_class")
    with pytest.raises(QuantizationError, match=r"names no dataset.*--images DIR"):
        quantize_version(repository, "mine")

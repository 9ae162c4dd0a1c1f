"""benchmarks.lab.precision_ab: fp32 and int8 of one version, in-process and through two gateways."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.tiny_models import lenet_like, write_version

ROOT = Path(__file__).resolve().parents[2]


def test_two_precisions_side_by_side(tmp_path: Path) -> None:
    from training.quantize import quantize_file

    version = write_version(tmp_path / "repo", "lenet", 1, lenet_like())
    calibration = np.random.default_rng(0).integers(0, 256, (8, 28, 28, 1), dtype=np.uint8)
    quantize_file(version / "model.onnx", version / "model.int8.onnx", calibration)
    out = tmp_path / "ab.json"
    subprocess.run(
        [sys.executable, "-m", "benchmarks.lab.precision_ab", "--repository", str(tmp_path / "repo"),
         "--model", "lenet", "--concurrency", "2", "--batches", "4", "--duration", "0.3",
         "--rounds", "2", "--json", str(out)],
        cwd=ROOT, check=True, timeout=300, capture_output=True,
    )  # fmt: skip
    rows = {row["scenario"]: row for row in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["in-process batch 4 img/s", "gateway V2 binary c=2 req/s"]
    for row in rows.values():
        assert row["fp32"] > 0 and row["int8"] > 0 and row["ratio"] == row["int8"] / row["fp32"]
        assert len(row["rounds"]["fp32"]) == len(row["rounds"]["int8"]) == 2

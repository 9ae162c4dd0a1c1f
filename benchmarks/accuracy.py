"""The whole test set through a server, in batched requests, judged like training's evaluation.

For the fp32 ONNX model the served accuracy must equal the offline (in-process ONNX Runtime)
accuracy exactly: the server runs the same graph on the same pixels, so any difference is a bug
(wrong preprocessing, batching that mixes rows up, a stale version).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.prepare import (
    find_model,
    load_test_set,
    model_to_dataset_classes,
    offline_predictions,
)
from benchmarks.run import SCHEMA_VERSION, judge_accuracy, machine_info


@dataclass
class AccuracyConfig:
    """Options of ``python -m benchmarks accuracy``."""

    target: str
    model: str
    protocol: str | None = None
    dataset: str = "mnist"
    version: int | None = None
    label: str | None = None
    repository: str = "model_repository"
    batch_size: int = 256
    limit: int | None = None
    timeout_s: float = 60.0
    require_equal: bool = True
    min_agreement: float = 1.0
    out: str | None = None


def served_predictions(
    config: AccuracyConfig, images: np.ndarray, progress: Any = None
) -> np.ndarray:
    """argmax of the served probabilities for every image, sent in batches through ``clients``."""
    from clients import Client

    answers = []
    with Client(config.target, protocol=config.protocol, timeout=config.timeout_s) as client:
        for start in range(0, len(images), config.batch_size):
            batch = images[start : start + config.batch_size]
            outputs = client.predict(
                config.model, {"image": batch}, version=config.version, label=config.label
            )
            if isinstance(outputs, dict):
                outputs = outputs["probabilities"]
            answers.append(np.asarray(outputs).reshape(len(batch), -1).argmax(axis=1))
            if progress is not None:
                progress(len(batch))
    return np.concatenate(answers).astype(np.int64) if answers else np.zeros(0, np.int64)


def check_accuracy(config: AccuracyConfig) -> dict[str, Any]:
    """Run the check and return the results dict (``kind: accuracy`` in the schema)."""
    from rich.progress import Progress

    images, labels, class_names = load_test_set(config.dataset)
    if config.limit and config.limit < len(images):
        # A seeded random subset, not the first N: MNIST's test set is ordered by writer group
        # and its first images are harder, which would bias the comparison with training.
        chosen = np.sort(np.random.default_rng(0).permutation(len(images))[: config.limit])
        images, labels = images[chosen], labels[chosen]
    model_files = find_model(config.repository, config.model, config.version)
    model_classes = model_files.class_names if model_files else None
    mapping = model_to_dataset_classes(
        model_classes, class_names, len(model_classes or class_names)
    )

    def to_dataset(indices: np.ndarray) -> np.ndarray:
        inside = (indices >= 0) & (indices < len(mapping))
        return np.where(inside, mapping[np.clip(indices, 0, len(mapping) - 1)], -1)

    started = time.perf_counter()
    with Progress(transient=True) as progress:
        task = progress.add_task(f"test set through {config.target}", total=len(images))
        served = to_dataset(served_predictions(config, images, lambda n: progress.advance(task, n)))
    elapsed = time.perf_counter() - started
    offline = None
    if model_files and model_files.onnx_path:
        offline = to_dataset(offline_predictions(model_files.onnx_path, images))
    accuracy = judge_accuracy(
        served,
        labels,
        offline,
        class_names,
        model_files.recorded_accuracy if model_files else None,
        max_accuracy_drop=0.0 if config.require_equal else 0.01,
        min_agreement=config.min_agreement,
        recorded_examples=model_files.recorded_examples if model_files else None,
    )
    equals_offline = None
    reasons = list(accuracy["failure_reasons"])
    if offline is not None:
        equals_offline = accuracy["accuracy"] == accuracy["offline_accuracy"]
        if config.require_equal and not equals_offline:
            reasons.append(
                f"served accuracy {accuracy['accuracy']:.6f} differs from the offline accuracy"
                f" {accuracy['offline_accuracy']:.6f}"
            )
    else:
        reasons.append("no model.onnx on disk: offline accuracy unknown")
    # A full test set is no sample: training's number is compared within the tolerance only.
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "accuracy",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "config": asdict(config),
        "images": len(images),
        "elapsed_s": elapsed,
        "images_per_s": len(images) / elapsed if elapsed else None,
        "accuracy": accuracy,
        "equals_offline": equals_offline,
        # Flat summary for callers such as the demo (the full metrics are under "accuracy").
        "served": {"accuracy": accuracy["accuracy"]},
        "offline": {"accuracy": accuracy["offline_accuracy"]},
        "agreement": accuracy["agreement"],
        "passed": not reasons,
        "failure": bool(reasons),
        "failure_reasons": sorted(set(reasons), key=reasons.index),
    }


def format_accuracy(result: dict[str, Any]) -> str:
    """Terminal summary of an accuracy check."""
    acc = result["accuracy"]

    def fmt(value: Any) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    lines = [
        f"{result['images']} images through {result['config']['target']}"
        f" ({result['config']['protocol'] or 'default protocol'}) in {result['elapsed_s']:.1f} s",
        f"served accuracy {fmt(acc['accuracy'])}  macro P/R/F1 {fmt(acc['macro_precision'])}"
        f" / {fmt(acc['macro_recall'])} / {fmt(acc['macro_f1'])}",
        f"offline accuracy {fmt(acc['offline_accuracy'])}  agreement {fmt(acc['agreement'])}"
        f"  recorded at training {fmt(acc['recorded_accuracy'])}",
        "verdict: "
        + (
            "FAIL"
            if result["failure"]
            else "ok (served equals offline)"
            if result["equals_offline"]
            else "ok"
        ),
    ]
    lines += [f"FAILURE: {reason}" for reason in result["failure_reasons"]]
    return "\n".join(lines)


def write_accuracy(result: dict[str, Any], out: str | Path) -> None:
    """results.json and report.md of an accuracy check."""
    from benchmarks.report import write_json

    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    write_json(result, directory / "results.json")
    acc = result["accuracy"]
    lines = [
        "# Served accuracy",
        "",
        "```",
        format_accuracy(result),
        "```",
        "",
        "| | " + " | ".join(acc["class_names"]) + " |",
        "|---" * (len(acc["class_names"]) + 1) + "|",
    ]
    for name, row in zip(acc["class_names"], acc["confusion_matrix"], strict=False):
        lines.append(f"| **{name}** | " + " | ".join(str(v) for v in row) + " |")
    (directory / "report.md").write_text("\n".join(lines) + "\n")

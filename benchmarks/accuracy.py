"""The whole test set through a server, in batched requests, judged like training's evaluation.

For the fp32 ONNX model the served accuracy must equal the offline (in-process ONNX Runtime)
accuracy exactly: the server runs the same graph on the same pixels, so any difference is a bug
(wrong preprocessing, batching that mixes rows up, a stale version).

``--precision fp16`` checks the half-precision export the same way: the offline reference is
``model.fp16.onnx`` (ONNX Runtime, CPU), and the fp16 file is also judged against the fp32 one on
the whole test set (accuracy within ``max_fp16_drop``, the images whose answer changes counted).
The served answers are matched to the closer of the two files by their probabilities, so a
gateway that quietly served fp32 (on a CPU it does unless started with ``--fp16-on-cpu``) fails
the check instead of passing it by accident.

``--precision int8`` takes ``model.int8.onnx`` as the offline reference (the gateway serves it with
``--precision int8``); how far int8 is from fp32 was judged when ``python -m training quantize``
made the file and is in its metadata.json.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.prepare import (
    SYNTHETIC,
    DataMismatch,
    find_model,
    load_test_set,
    model_to_dataset_classes,
    offline_outputs,
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
    precision: str = "fp32"  # fp16: judge model.fp16.onnx, served and against fp32; int8: served
    # against model.int8.onnx offline (its gate against fp32 ran at quantization)
    max_fp16_drop: float = 0.001  # fp16 accuracy may differ from fp32 by at most this


ONNX_FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}


def served_outputs(config: AccuracyConfig, images: np.ndarray, progress: Any = None) -> np.ndarray:
    """The served probabilities ([N, classes]) for every image, sent in batches via ``clients``."""
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
            answers.append(np.asarray(outputs, dtype=np.float32).reshape(len(batch), -1))
            if progress is not None:
                progress(len(batch))
    return np.concatenate(answers) if answers else np.zeros((0, 0), np.float32)


def _max_abs_diff(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
    if a is None or b is None or a.shape != b.shape or not a.size:
        return None
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def compare_precisions(
    fp32: np.ndarray, fp16: np.ndarray, labels: np.ndarray, max_drop: float
) -> dict[str, Any]:
    """fp16 against fp32 on the same images, both as model outputs ([N, classes]; labels already
    in the model's class order): accuracies, the images whose answer changes, the verdict."""
    answers32, answers16 = fp32.argmax(axis=1), fp16.argmax(axis=1)
    changed = answers32 != answers16
    accuracy32 = float((answers32 == labels).mean()) if len(labels) else 0.0
    accuracy16 = float((answers16 == labels).mean()) if len(labels) else 0.0
    return {
        "images": len(labels),
        "fp32_accuracy": accuracy32,
        "fp16_accuracy": accuracy16,
        "accuracy_difference": accuracy16 - accuracy32,
        "answers_changed": int(changed.sum()),
        "fixed": int((changed & (answers16 == labels)).sum()),  # fp32 wrong, fp16 right
        "broken": int((changed & (answers32 == labels)).sum()),  # fp32 right, fp16 wrong
        "agreement": float(1.0 - changed.mean()) if len(labels) else 1.0,
        "max_abs_diff": _max_abs_diff(fp32, fp16),
        "max_drop": max_drop,
        "passed": bool(abs(accuracy16 - accuracy32) <= max_drop + 1e-12),
    }


def check_accuracy(config: AccuracyConfig) -> dict[str, Any]:
    """Run the check and return the results dict (``kind: accuracy`` in the schema)."""
    from rich.progress import Progress

    onnx_name = ONNX_FILES[config.precision]
    model_files = find_model(config.repository, config.model, config.version, onnx_name)
    if config.dataset == SYNTHETIC:
        raise DataMismatch("accuracy needs true labels: give --images DIR or --dataset")
    images, labels, class_names = load_test_set(config.dataset, model_files)
    if config.limit and config.limit < len(images):
        # A seeded random subset, not the first N: MNIST's test set is ordered by writer group
        # and its first images are harder, which would bias the comparison with training.
        chosen = np.sort(np.random.default_rng(0).permutation(len(images))[: config.limit])
        images, labels = images[chosen], labels[chosen]
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
        served_probabilities = served_outputs(config, images, lambda n: progress.advance(task, n))
    elapsed = time.perf_counter() - started
    answers = served_probabilities.argmax(axis=1) if len(served_probabilities) else np.zeros(0)
    served = to_dataset(answers.astype(np.int64))
    offline = reference = None
    if model_files and model_files.onnx_path:
        reference = offline_outputs(model_files.onnx_path, images)
        offline = to_dataset(reference.argmax(axis=1))
    precision_report = None
    precision_reasons: list[str] = []
    if config.precision == "fp16" and model_files and reference is not None:
        fp32_path = model_files.directory / ONNX_FILES["fp32"]
        fp32 = offline_outputs(fp32_path, images) if fp32_path.is_file() else None
        if fp32 is not None:
            # Labels in the model's class order, so both files are judged alike.
            to_model = {int(d): m for m, d in enumerate(mapping) if d >= 0}
            model_labels = np.asarray([to_model.get(int(y), -1) for y in labels])
            precision_report = compare_precisions(
                fp32, reference, model_labels, config.max_fp16_drop
            )
            precision_report["served_vs_fp16_max_abs_diff"] = _max_abs_diff(
                served_probabilities, reference
            )
            precision_report["served_vs_fp32_max_abs_diff"] = _max_abs_diff(
                served_probabilities, fp32
            )
            if not precision_report["passed"]:
                precision_reasons.append(
                    f"fp16 accuracy {precision_report['fp16_accuracy']:.6f} differs from fp32 "
                    f"{precision_report['fp32_accuracy']:.6f} by more than {config.max_fp16_drop}"
                )
            to16 = precision_report["served_vs_fp16_max_abs_diff"]
            to32 = precision_report["served_vs_fp32_max_abs_diff"]
            if to16 is not None and to32 is not None and to32 < to16:
                precision_reasons.append(
                    f"the served probabilities match model.onnx (max |diff| {to32:.3g}) more "
                    f"closely than model.fp16.onnx ({to16:.3g}): the server ran fp32; on a CPU, "
                    "start the gateway with --precision fp16 --fp16-on-cpu"
                )
        else:
            precision_reasons.append("no model.onnx next to model.fp16.onnx to compare with")
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
        reasons.append(
            f"no {onnx_name} on disk: offline accuracy unknown"
            + (
                " (the parity gate drops an fp16 file that fails it)"
                if onnx_name != "model.onnx"
                else ""
            )
        )
    reasons += precision_reasons
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
        "offline_file": onnx_name,
        "served_vs_offline_max_abs_diff": _max_abs_diff(served_probabilities, reference),
        "precision": precision_report,
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

    def gfmt(value: Any) -> str:
        return "n/a" if value is None else f"{value:.3g}"

    lines = [
        f"{result['images']} images through {result['config']['target']}"
        f" ({result['config']['protocol'] or 'default protocol'}) in {result['elapsed_s']:.1f} s",
        f"served accuracy {fmt(acc['accuracy'])}  macro P/R/F1 {fmt(acc['macro_precision'])}"
        f" / {fmt(acc['macro_recall'])} / {fmt(acc['macro_f1'])}",
        f"offline accuracy ({result.get('offline_file', 'model.onnx')}, in-process)"
        f" {fmt(acc['offline_accuracy'])}  agreement {fmt(acc['agreement'])}"
        f"  max |diff| {gfmt(result.get('served_vs_offline_max_abs_diff'))}"
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
    precision = result.get("precision")
    if precision:
        lines.insert(
            -1,
            f"fp16 vs fp32 offline on {precision['images']} images: accuracy "
            f"{fmt(precision['fp16_accuracy'])} vs {fmt(precision['fp32_accuracy'])} "
            f"({precision['accuracy_difference'] * 100:+.2f} points), "
            f"{precision['answers_changed']} answers changed ({precision['fixed']} fixed, "
            f"{precision['broken']} broken), max |diff| {gfmt(precision['max_abs_diff'])}; "
            f"served vs fp16 max |diff| {gfmt(precision['served_vs_fp16_max_abs_diff'])}, "
            f"vs fp32 {gfmt(precision['served_vs_fp32_max_abs_diff'])}",
        )
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

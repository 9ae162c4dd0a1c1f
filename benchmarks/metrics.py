"""Classification and latency metrics computed with numpy alone.

The benchmark reports the same classification metrics as training's evaluation (accuracy, macro
precision / recall / F1, per-class scores, confusion matrix) but computes them on the answers the
server actually returned, so this module must not depend on TensorFlow or scikit-learn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

LATENCY_PERCENTILES: tuple[float, ...] = (50.0, 90.0, 95.0, 99.0, 99.9)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes (scikit-learn's convention)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    # Predictions outside the label space (a model with more outputs than the dataset has classes)
    # cannot be placed in the matrix; they still count as wrong in accuracy.
    valid = (y_pred >= 0) & (y_pred < num_classes)
    np.add.at(matrix, (y_true[valid], y_pred[valid]), 1)
    return matrix


@dataclass(frozen=True)
class ClassificationReport:
    """Metrics of one set of answers against the true labels."""

    count: int
    accuracy: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    per_class: list[dict[str, Any]]
    confusion_matrix: list[list[int]]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable form."""
        return {
            "count": self.count,
            "accuracy": self.accuracy,
            "macro_precision": self.macro_precision,
            "macro_recall": self.macro_recall,
            "macro_f1": self.macro_f1,
            "per_class": self.per_class,
            "confusion_matrix": self.confusion_matrix,
        }


def classification_report(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]
) -> ClassificationReport:
    """Accuracy, macro precision/recall/F1 and the confusion matrix.

    Classes absent from both truth and predictions score 0 precision/recall, as scikit-learn does
    with ``zero_division=0``; macro averages run over all classes of the label space.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    num_classes = len(class_names)
    matrix = confusion_matrix(y_true, y_pred, num_classes)
    true_positive = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    actual = matrix.sum(axis=1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, true_positive / predicted, 0.0)
        recall = np.where(actual > 0, true_positive / actual, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    count = int(y_true.size)
    accuracy = float((y_true == y_pred).mean()) if count else 0.0
    per_class = [
        {
            "class": name,
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(actual[i]),
        }
        for i, name in enumerate(class_names)
    ]
    return ClassificationReport(
        count=count,
        accuracy=accuracy,
        macro_precision=float(precision.mean()) if num_classes else 0.0,
        macro_recall=float(recall.mean()) if num_classes else 0.0,
        macro_f1=float(f1.mean()) if num_classes else 0.0,
        per_class=per_class,
        confusion_matrix=matrix.tolist(),
    )


def agreement(served: np.ndarray, offline: np.ndarray) -> float:
    """Fraction of images where the server's answer equals the offline (in-process) answer."""
    served = np.asarray(served)
    offline = np.asarray(offline)
    if served.size == 0:
        return 0.0
    return float((served == offline).mean())


def allowed_accuracy_drop(
    reference_accuracy: float, count: int, tolerance: float, reference_count: int | None = None
) -> float:
    """How far served accuracy may fall below a reference before it counts as a drop.

    A run checks a sample of the test set, so its accuracy wobbles around the reference even when
    nothing is wrong (and the reference itself may come from a sample of ``reference_count``
    images); three standard errors of the difference keep a healthy run from failing by chance,
    while a real defect (shuffled outputs, a batching mix-up) falls far below that.
    """
    if count <= 0:
        return tolerance
    p = min(max(reference_accuracy, 0.0), 1.0)
    variance = p * (1.0 - p) / count
    if reference_count:
        variance += p * (1.0 - p) / reference_count
    return max(tolerance, 3.0 * math.sqrt(variance))


def latency_summary_ms(latencies_s: np.ndarray) -> dict[str, float | int]:
    """Count, mean, min, max and percentiles in milliseconds from samples in seconds."""
    samples = np.asarray(latencies_s, dtype=np.float64) * 1000.0
    if samples.size == 0:
        return {"count": 0}
    summary: dict[str, float | int] = {
        "count": int(samples.size),
        "mean": float(samples.mean()),
        "min": float(samples.min()),
        "max": float(samples.max()),
    }
    for q in LATENCY_PERCENTILES:
        summary[percentile_key(q)] = float(np.percentile(samples, q))
    return summary


def percentile_key(q: float) -> str:
    """'p50', 'p99', 'p99.9' -> JSON keys without dots: p50, p99, p999."""
    return "p" + f"{q:g}".replace(".", "")


def throughput_series(
    end_times: np.ndarray, counts: np.ndarray, start: float, stop: float, bucket_s: float = 1.0
) -> tuple[list[float], list[float]]:
    """Completed requests (or images, via ``counts``) per second in buckets from start to stop."""
    if stop <= start:
        return [], []
    edges = np.arange(start, stop + bucket_s * 0.5, bucket_s)
    if edges.size < 2:
        edges = np.array([start, stop])
    hist, _ = np.histogram(np.asarray(end_times), bins=edges, weights=np.asarray(counts))
    widths = np.diff(edges)
    return (edges[:-1] - start).tolist(), (hist / widths).tolist()

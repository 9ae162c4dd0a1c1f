"""Evaluation: accuracy, per-class and macro precision/recall/F1, confusion matrix, and plots.

The metrics are numpy alone (scikit-learn's definitions, ``zero_division=0``; a test compares),
so the benchmarks compute them with this very code on answers served under load, without
TensorFlow or scikit-learn; plots use matplotlib (Agg).
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


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
    # Support from the labels, not the matrix: an answer outside the label space is missing from
    # the matrix but is still a miss of its true class (scikit-learn's recall counts it too).
    actual = np.bincount(y_true, minlength=num_classes)[:num_classes].astype(np.float64)
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


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro and per-class precision/recall/F1 and the confusion matrix, as JSON types
    (``classification_report`` in the form training's reports use: per-class scores by name)."""
    report = classification_report(
        np.asarray(y_true).reshape(-1), np.asarray(y_pred).reshape(-1), list(class_names)
    )
    return {
        "examples": report.count,
        "accuracy": report.accuracy,
        "macro_precision": report.macro_precision,
        "macro_recall": report.macro_recall,
        "macro_f1": report.macro_f1,
        "per_class": {
            row["class"]: {key: row[key] for key in ("precision", "recall", "f1", "support")}
            for row in report.per_class
        },
        "confusion_matrix": report.confusion_matrix,
    }


def _png(plt: Any, fig: Any, path: Path | None) -> bytes:
    """Lay out and close ``fig``; its PNG bytes, also written to ``path`` when given."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    png = buffer.getvalue()
    if path is not None:
        path.write_bytes(png)
    return png


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: Path | None = None
) -> bytes:
    """Render the confusion matrix as PNG; write it to `path` when given; return the bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(7, 6), dpi=100)
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(class_names)), labels=class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), labels=class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = cm.max() / 2 if cm.size else 0
    for (i, j), count in np.ndenumerate(cm):
        ax.text(
            j,
            i,
            str(count),
            ha="center",
            va="center",
            fontsize=7,
            color="white" if count > threshold else "black",
        )
    return _png(plt, fig, path)


def plot_per_class(
    metrics: Mapping[str, Any], class_names: Sequence[str], path: Path | None = None
) -> bytes:
    """Per-class precision, recall and F1 as grouped bars (PNG); write to `path` when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    positions = np.arange(len(class_names))
    fig, ax = plt.subplots(figsize=(9, 4), dpi=100)
    for offset, key in ((-0.27, "precision"), (0.0, "recall"), (0.27, "f1")):
        values = [metrics["per_class"][name][key] for name in class_names]
        ax.bar(positions + offset, values, width=0.27, label=key)
    low = min(
        (
            metrics["per_class"][name][key]
            for name in class_names
            for key in ("precision", "recall", "f1")
        ),
        default=0.0,
    )
    ax.set_ylim(max(0.0, low - 0.1), 1.0)
    ax.set_xticks(positions, labels=class_names, rotation=45, ha="right")
    ax.set_title(f"per class (macro F1 {metrics['macro_f1']:.4f})")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(plt, fig, path)


def plot_history(history: Mapping[str, Sequence[float]], path: Path) -> None:
    """Loss and accuracy convergence curves (training and validation) as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for key, ax in (("loss", loss_ax), ("accuracy", acc_ax)):
        for prefix, style in (("", "-o"), ("val_", "--o")):
            values = history.get(prefix + key)
            if values:
                ax.plot(range(1, len(values) + 1), values, style, label=prefix + key or key)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(
    run_dir: Path,
    metrics: dict[str, Any],
    class_names: Sequence[str],
    history: Mapping[str, Sequence[float]] | None = None,
    prefix: str = "test",
) -> dict[str, str]:
    """Write `<prefix>_metrics.json` and the plots into `run_dir`; return the file paths."""
    run_dir.mkdir(parents=True, exist_ok=True)
    files = {"metrics": str(run_dir / f"{prefix}_metrics.json")}
    Path(files["metrics"]).write_text(json.dumps(metrics, indent=2))
    files["confusion_matrix"] = str(run_dir / f"{prefix}_confusion_matrix.png")
    plot_confusion_matrix(metrics["confusion_matrix"], class_names, Path(files["confusion_matrix"]))
    files["per_class"] = str(run_dir / f"{prefix}_per_class.png")
    plot_per_class(metrics, class_names, Path(files["per_class"]))
    if history:
        files["curves"] = str(run_dir / "convergence.png")
        plot_history(history, Path(files["curves"]))
    return files


def print_summary(title: str, metrics: dict[str, Any], class_names: Sequence[str]) -> None:
    """A terminal table: overall metrics, then per class."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("class")
    for column in ("precision", "recall", "f1", "support"):
        table.add_column(column, justify="right")
    for name in class_names:
        row = metrics["per_class"][name]
        table.add_row(
            name,
            f"{row['precision']:.4f}",
            f"{row['recall']:.4f}",
            f"{row['f1']:.4f}",
            str(row["support"]),
        )
    table.add_row(
        "[bold]macro",
        f"{metrics['macro_precision']:.4f}",
        f"{metrics['macro_recall']:.4f}",
        f"{metrics['macro_f1']:.4f}",
        str(metrics["examples"]),
    )
    console = Console()
    console.print(table)
    console.print(
        f"[bold]accuracy {metrics['accuracy'] * 100:.2f}%[/] on {metrics['examples']} test images"
    )

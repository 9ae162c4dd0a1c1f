"""Evaluation: accuracy, per-class and macro precision/recall/F1, confusion matrix, and plots.

Pure numpy + scikit-learn + matplotlib (Agg), so the benchmarks can compute the same metrics on
answers served under load without importing TensorFlow.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro and per-class precision/recall/F1 and the confusion matrix, as JSON types."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = np.arange(len(class_names))
    y_true = np.asarray(y_true).reshape(-1)
    y_pred = np.asarray(y_pred).reshape(-1)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    return {
        "examples": len(y_true),
        "accuracy": float(np.mean(y_true == y_pred)) if len(y_true) else 0.0,
        "macro_precision": float(np.mean(precision)),
        "macro_recall": float(np.mean(recall)),
        "macro_f1": float(np.mean(f1)),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: Path | None = None
) -> bytes:
    """Render the confusion matrix as PNG; write it to `path` when given; return the bytes."""
    import io

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
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    png = buffer.getvalue()
    if path is not None:
        path.write_bytes(png)
    return png


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

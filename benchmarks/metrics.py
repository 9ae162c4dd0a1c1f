"""Classification and latency metrics computed with numpy alone.

The benchmark reports the same classification metrics as training's evaluation, computed by the
same code (``training.evaluate.classification_report``, numpy only) on the answers the server
actually returned; this module adds agreement, the allowed accuracy drop and latency summaries.
It must not depend on TensorFlow or scikit-learn.
"""

from __future__ import annotations

import math

import numpy as np

# Re-exported: the benchmarks' one import for metrics.
from training.evaluate import ClassificationReport as ClassificationReport
from training.evaluate import classification_report as classification_report
from training.evaluate import confusion_matrix as confusion_matrix

LATENCY_PERCENTILES: tuple[float, ...] = (50.0, 90.0, 95.0, 99.0, 99.9)


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

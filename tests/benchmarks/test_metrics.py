"""The served-answer metrics agree with scikit-learn (training's evaluation uses the same
definitions), and the helpers that read durations and map class names behave."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion
from sklearn.metrics import precision_recall_fscore_support

from benchmarks import metrics
from benchmarks.prepare import model_to_dataset_classes
from benchmarks.run import parse_duration


def test_classification_report_matches_scikit_learn() -> None:
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 10, 500)
    y_pred = np.where(rng.random(500) < 0.7, y_true, rng.integers(0, 9, 500))  # class 9 rarer
    report = metrics.classification_report(y_true, y_pred, [str(i) for i in range(10)])
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(10)), average=None, zero_division=0
    )
    assert report.accuracy == pytest.approx((y_true == y_pred).mean())
    assert report.macro_precision == pytest.approx(precision.mean())
    assert report.macro_recall == pytest.approx(recall.mean())
    assert report.macro_f1 == pytest.approx(f1.mean())
    assert [c["support"] for c in report.per_class] == support.tolist()
    assert report.confusion_matrix == sk_confusion(y_true, y_pred, labels=list(range(10))).tolist()


def test_unmappable_answers_count_as_wrong() -> None:
    report = metrics.classification_report(np.array([0, 1, 1]), np.array([0, -1, 1]), ["a", "b"])
    assert report.accuracy == pytest.approx(2 / 3)
    assert report.confusion_matrix == [[1, 0], [0, 1]]


def test_allowed_drop_grows_with_sampling_noise_only() -> None:
    assert metrics.allowed_accuracy_drop(0.99, 100_000, 0.01) == 0.01
    small = metrics.allowed_accuracy_drop(0.75, 1000, 0.01)
    assert small == pytest.approx(3 * np.sqrt(0.75 * 0.25 / 1000))
    assert metrics.allowed_accuracy_drop(0.75, 1000, 0.01, reference_count=2000) > small


def test_latency_summary_in_milliseconds() -> None:
    summary = metrics.latency_summary_ms(np.array([0.001, 0.002, 0.003, 0.004]))
    assert summary["count"] == 4
    assert summary["min"] == pytest.approx(1.0)
    assert summary["p50"] == pytest.approx(2.5)
    assert set(summary) >= {"p90", "p95", "p99", "p999", "mean", "max"}


def test_throughput_series_buckets_per_second() -> None:
    times, rates = metrics.throughput_series(
        np.array([100.2, 100.4, 101.5, 102.9]), np.ones(4), start=100.0, stop=103.0
    )
    assert times == [0.0, 1.0, 2.0]
    assert rates == [2.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30.0), ("2m", 120.0), ("1m30s", 90.0), ("12", 12.0)]
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_parse_duration_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_answers_are_judged_by_the_model_class_names() -> None:
    dataset = ["0", "1", "2"]
    assert model_to_dataset_classes(["2", "0", "1"], dataset, 3).tolist() == [2, 0, 1]
    assert model_to_dataset_classes(["0", "1", "x"], dataset, 3).tolist() == [0, 1, -1]
    # Names that share nothing with the dataset carry no meaning: position decides.
    assert model_to_dataset_classes(["class_0", "class_1", "class_2"], dataset, 3).tolist() == [
        0,
        1,
        2,
    ]

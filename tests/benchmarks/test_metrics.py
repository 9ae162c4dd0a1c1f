"""The served-answer metrics agree with scikit-learn (training's evaluation uses the same
definitions), and the helpers that read durations and map class names behave."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion
from sklearn.metrics import precision_recall_fscore_support

from benchmarks import metrics
from benchmarks.prepare import model_to_dataset_classes
from benchmarks.run import judge_accuracy, parse_duration
from training.evaluate import classification_metrics


@pytest.mark.parametrize("unmappable", [False, True])
def test_classification_report_matches_scikit_learn(unmappable: bool) -> None:
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 10, 500)
    y_pred = np.where(rng.random(500) < 0.7, y_true, rng.integers(0, 9, 500))  # class 9 rarer
    if unmappable:  # answers outside the label space (-1, or a class the dataset lacks)
        y_pred[::17] = -1
        y_pred[5::23] = 10
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
    # training's reports come from the same code, in their own shape
    training = classification_metrics(y_true, y_pred, [str(i) for i in range(10)])
    assert training["macro_f1"] == report.macro_f1 and training["examples"] == 500
    assert [training["per_class"][str(i)]["recall"] for i in range(10)] == pytest.approx(recall)


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


def _judge(served: np.ndarray, labels: np.ndarray, offline: np.ndarray) -> dict[str, object]:
    return judge_accuracy(
        served, labels, offline, [str(c) for c in range(10)], recorded_accuracy=None,
        max_accuracy_drop=0.01, min_agreement=0.99,
    )  # fmt: skip


def _labels_and_offline(count: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Labels and offline predictions right on 90% of the images (wrong ones: label + 1)."""
    labels = np.arange(count) % 10
    offline = labels.copy()
    offline[::10] = (labels[::10] + 1) % 10
    return labels, offline


def test_verdict_passes_when_served_answers_are_the_offline_ones() -> None:
    labels, offline = _labels_and_offline()
    verdict = _judge(offline.copy(), labels, offline)
    assert verdict["passed"] is True and verdict["failure_reasons"] == []
    assert verdict["agreement"] == 1.0 and verdict["offline_accuracy"] == pytest.approx(0.9)


def test_verdict_fails_on_agreement_below_the_minimum_at_equal_accuracy() -> None:
    labels, offline = _labels_and_offline()
    served = offline.copy()
    # 2% of answers differ from offline, half now right and half now wrong: the accuracy is
    # unchanged, so only the agreement check can catch it (e.g. rows shuffled within a batch).
    fixed, broken = np.arange(0, 1000, 10)[:10], np.arange(1, 1000, 10)[:10]
    served[fixed] = labels[fixed]
    served[broken] = (labels[broken] + 1) % 10
    verdict = _judge(served, labels, offline)
    assert verdict["agreement"] == pytest.approx(0.98)
    assert verdict["accuracy"] == pytest.approx(verdict["offline_accuracy"])
    assert verdict["passed"] is False
    assert verdict["failure_reasons"] == ["agreement with offline predictions 0.9800 is below 0.99"]


def test_verdict_agreement_at_the_minimum_passes() -> None:
    labels, offline = _labels_and_offline()
    served = offline.copy()
    moved = np.arange(0, 1000, 10)[:10]  # wrong before, wrong differently now: 99% agreement
    served[moved] = (labels[moved] + 2) % 10
    verdict = _judge(served, labels, offline)
    assert verdict["agreement"] == pytest.approx(0.99) and verdict["passed"] is True


def test_verdict_fails_when_served_accuracy_is_below_offline() -> None:
    labels, offline = _labels_and_offline()
    served = offline.copy()
    broken = np.arange(1, 1000, 10)[:50]  # 5% of images right offline, wrong when served
    served[broken] = (labels[broken] + 1) % 10
    verdict = _judge(served, labels, offline)
    assert verdict["accuracy"] == pytest.approx(0.85)
    assert verdict["passed"] is False
    reasons = verdict["failure_reasons"]
    assert isinstance(reasons, list) and len(reasons) == 2
    assert reasons[0] == (
        "served accuracy 0.8500 is below the offline accuracy 0.9000 on the same images"
    )
    assert reasons[1].startswith("agreement with offline predictions 0.9500")

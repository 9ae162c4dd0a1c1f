"""Training behaviour: determinism and k-fold reporting, on small subsets."""

from __future__ import annotations

from training.train import TrainConfig, run_training


def _tiny(tmp_path, **overrides) -> TrainConfig:
    values = dict(
        model="mlp", dataset="mnist", epochs=1, limit=1000, test_limit=1000,
        repository=str(tmp_path / "repo"), runs_dir=str(tmp_path / "runs"), export=False, seed=3,
    )  # fmt: skip
    values.update(overrides)
    return TrainConfig(**values)


def test_same_seed_gives_same_metrics(tmp_path) -> None:
    first = run_training(_tiny(tmp_path))
    second = run_training(_tiny(tmp_path))
    assert first.metrics["accuracy"] == second.metrics["accuracy"]
    assert first.metrics["confusion_matrix"] == second.metrics["confusion_matrix"]


def test_pydataset_pipeline_with_augmentation_trains(tmp_path) -> None:
    result = run_training(_tiny(tmp_path, pipeline="pydataset", augment=True))
    assert result.metrics["accuracy"] > 0.3  # 1 epoch of 900 images: well above chance (0.1)


def test_kfold_reports_mean_and_std(tmp_path) -> None:
    result = run_training(_tiny(tmp_path, kfold=2))
    assert result.kfold is not None
    assert len(result.kfold["folds"]) == 2
    assert 0.0 <= result.kfold["accuracy_std"] < 0.2
    assert result.kfold["accuracy_mean"] > 0.3

"""Fixtures for the training tests: one tiny trained-and-exported LeNet shared by the session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def exported_lenet(tmp_path_factory: pytest.TempPathFactory):
    """A LeNet trained for one epoch on 1,000 MNIST images and exported through the parity gate."""
    from training.train import TrainConfig, run_training

    root = tmp_path_factory.mktemp("exported")
    config = TrainConfig(
        model="lenet",
        dataset="mnist",
        epochs=1,
        limit=1000,
        repository=str(root / "repo"),
        runs_dir=str(root / "runs"),
        seed=7,
    )
    result = run_training(config)
    assert result.version_dir is not None
    return result, Path(config.repository)

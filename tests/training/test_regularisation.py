"""--weight-decay (AdamW) and --label-smoothing: what each computes, and a run that uses both."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from training.__main__ import build_parser, main, train_config
from training.losses import SmoothedSparseCrossentropy
from training.train import TrainConfig, optimizer_for, run_training


def test_smoothed_loss_is_cross_entropy_against_smoothed_targets() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 4))
    probabilities = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype("float32")
    labels = np.array([0, 3, 1, 2, 3, 0])
    smoothing, classes = 0.2, 4
    targets = np.full((6, classes), smoothing / classes)
    targets[np.arange(6), labels] += 1 - smoothing
    expected = np.mean(-(targets * np.log(probabilities)).sum(axis=1))
    got = SmoothedSparseCrossentropy(smoothing, classes)(labels, probabilities)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    # No smoothing is Keras' own sparse cross-entropy.
    plain = keras.losses.SparseCategoricalCrossentropy()(labels, probabilities)
    assert float(SmoothedSparseCrossentropy(0.0, classes)(labels, probabilities)) == pytest.approx(
        float(plain), rel=1e-5
    )


def test_weight_decay_shrinks_weights_but_not_biases_or_normalisation() -> None:
    inputs = keras.Input((3,))
    outputs = keras.layers.BatchNormalization()(keras.layers.Dense(2)(inputs))
    model = keras.Model(inputs, outputs)
    rate, decay = 0.1, 0.5
    adamw = optimizer_for(TrainConfig(learning_rate=rate, weight_decay=decay), steps_per_epoch=1)
    assert isinstance(adamw, keras.optimizers.AdamW)
    before = {v.path: np.array(v) for v in model.trainable_variables}
    # Zero gradients: Adam's own step is zero, so whatever moves is the decoupled decay.
    adamw.apply_gradients([(np.zeros(v.shape, "float32"), v) for v in model.trainable_variables])
    for variable in model.trainable_variables:
        old, new = before[variable.path], np.array(variable)
        if variable.path.endswith("kernel"):
            np.testing.assert_allclose(new, old * (1 - rate * decay), rtol=1e-6)
        else:  # bias, gamma, beta
            np.testing.assert_array_equal(new, old)
    assert isinstance(optimizer_for(TrainConfig(), 1), keras.optimizers.Adam)
    assert not isinstance(optimizer_for(TrainConfig(), 1), keras.optimizers.AdamW)


def test_flags_reach_the_config_and_bad_values_are_refused(capsys) -> None:  # type: ignore[no-untyped-def]
    config, line = train_config(
        build_parser().parse_args(["train", "--weight-decay", "0.05", "--label-smoothing", "0.1"])
    )
    assert (config.weight_decay, config.label_smoothing) == (0.05, 0.1)
    assert "weight_decay=0.05 (flag)" in line and "label_smoothing=0.1 (flag)" in line
    default, _ = train_config(build_parser().parse_args(["train"]))
    assert (default.weight_decay, default.label_smoothing) == (0.0, 0.0)
    assert main(["train", "--label-smoothing", "1.5", "--no-export"]) == 2
    assert "label smoothing must be in [0, 1)" in capsys.readouterr().err
    assert main(["train", "--weight-decay", "-1", "--no-export"]) == 2
    assert "weight decay must be >= 0" in capsys.readouterr().err


def test_a_run_with_both_trains_and_its_checkpoint_loads(tmp_path: Path) -> None:
    config = TrainConfig(
        model="mlp", epochs=2, limit=1000, test_limit=1000, weight_decay=0.01,
        label_smoothing=0.1, learning_rate=3e-3, export=False,
        repository=str(tmp_path / "repo"), runs_dir=str(tmp_path / "runs"),
    )  # fmt: skip
    result = run_training(config)
    assert result.metrics["accuracy"] > 0.5  # 2 epochs of 900 images: far above chance (0.1)
    checkpoint = next(result.run_dir.glob("checkpoints/*.keras"))
    loaded = keras.models.load_model(checkpoint)
    assert isinstance(loaded.loss, SmoothedSparseCrossentropy)
    assert loaded.loss.label_smoothing == pytest.approx(0.1)
    assert isinstance(loaded.optimizer, keras.optimizers.AdamW)


def test_sgd_is_nesterov_momentum_with_the_same_decoupled_decay() -> None:
    from training import __main__ as cli
    from training import train

    assert cli.OPTIMIZERS == train.OPTIMIZERS  # the CLI's copy, kept without importing TF
    inputs = keras.Input((3,))
    outputs = keras.layers.BatchNormalization()(keras.layers.Dense(2)(inputs))
    model = keras.Model(inputs, outputs)
    rate, decay, momentum = 0.1, 0.5, 0.9
    sgd = optimizer_for(
        TrainConfig(optimizer="sgd", learning_rate=rate, momentum=momentum, weight_decay=decay), 1
    )
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.nesterov
    kernel = next(v for v in model.trainable_variables if v.path.endswith("kernel"))
    gamma = next(v for v in model.trainable_variables if v.path.endswith("gamma"))
    start = np.array(kernel)
    # One step of gradient 1 on the kernel: Nesterov moves it by rate * (1 + momentum), after
    # the decoupled decay has shrunk it by rate * decay; biases and normalisation do not decay.
    gradients = [np.ones(v.shape, "float32") if v is kernel else np.zeros(v.shape, "float32")
                 for v in model.trainable_variables]  # fmt: skip
    sgd.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
    expected = start * (1 - rate * decay) - rate * (1 + momentum)
    np.testing.assert_allclose(np.array(kernel), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.array(gamma), np.ones(2, "float32"))  # 1s, not decayed
    plain = optimizer_for(TrainConfig(optimizer="sgd", momentum=0.0), 1)
    assert plain.momentum == 0.0 and not plain.nesterov


def test_optimizer_flags_reach_the_config_and_bad_values_are_refused(capsys) -> None:  # type: ignore[no-untyped-def]
    config, line = train_config(
        build_parser().parse_args(["train", "--optimizer", "sgd", "--momentum", "0.8"])
    )
    assert (config.optimizer, config.momentum) == ("sgd", 0.8)
    assert "optimizer=sgd (flag)" in line and "momentum=0.8 (flag)" in line
    default, _ = train_config(build_parser().parse_args(["train"]))
    assert (default.optimizer, default.momentum) == ("adam", 0.9)
    assert main(["train", "--optimizer", "sgd", "--momentum", "1.0", "--no-export"]) == 2
    assert "momentum must be in [0, 1)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown optimizer"):
        TrainConfig(optimizer="rmsprop")


def test_an_sgd_run_trains_and_its_checkpoint_loads(tmp_path: Path) -> None:
    config = TrainConfig(
        model="mlp", epochs=2, limit=1000, test_limit=1000, optimizer="sgd", learning_rate=0.05,
        weight_decay=5e-4, schedule="cosine", export=False,
        repository=str(tmp_path / "repo"), runs_dir=str(tmp_path / "runs"),
    )  # fmt: skip
    result = run_training(config)
    assert result.metrics["accuracy"] > 0.5  # 2 epochs of 900 images: far above chance (0.1)
    loaded = keras.models.load_model(next(result.run_dir.glob("checkpoints/*.keras")))
    assert isinstance(loaded.optimizer, keras.optimizers.SGD) and loaded.optimizer.nesterov

"""Issue 18's speed and shape options: mixed_bfloat16, XLA, the CIFAR stem, the time budget, the
epoch clock, and an export that stays float32 whatever the training precision."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from training.models import build_model
from training.train import EPOCH_LOG, TrainConfig, as_float32, dtype_policy, run_training


def test_cifar_stem_is_a_3x3_stride_1_conv_without_pool() -> None:
    cifar = build_model("resnet50", (28, 28, 1), 10, resnet_side=32, resnet_stem="cifar")
    stem = cifar.get_layer("stem_conv")
    assert stem.kernel_size == (3, 3) and stem.strides == (1, 1)
    assert not any("pool" in layer.name and "avg" not in layer.name for layer in cifar.layers)
    # The first block sees the full 32x32 side (the imagenet stem leaves 8x8), the last 4x4.
    assert cifar.get_layer("conv2_block1_out").output.shape[1:3] == (32, 32)
    assert cifar.get_layer("conv5_block3_out").output.shape[1:] == (4, 4, 2048)
    # ResNet50 in every other respect: the parameter count differs by the stem's conv only.
    imagenet = build_model("resnet50", (28, 28, 1), 10, resnet_side=32)
    stem_difference = (7 * 7 * 3 * 64 + 64) - 3 * 3 * 3 * 64
    assert imagenet.count_params() - cifar.count_params() == stem_difference


def test_cifar_stem_trains_one_step_under_mixed_bfloat16() -> None:
    with dtype_policy("mixed_bfloat16"):
        model = build_model("resnet50", (28, 28, 1), 10, resnet_side=28, resnet_stem="cifar")
    assert model.get_layer("stem_conv").compute_dtype == "bfloat16"
    assert model.get_layer("stem_conv").kernel.dtype == "float32"  # variables stay float32
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    loss = model.train_on_batch(rng.integers(0, 256, (4, 28, 28, 1), np.uint8), np.arange(4))
    assert np.isfinite(loss)
    assert model.predict(rng.integers(0, 256, (2, 28, 28, 1), np.uint8), verbose=0).dtype == (
        np.float32
    )


def test_cifar_stem_is_refused_with_imagenet_weights() -> None:
    with pytest.raises(ValueError, match="from scratch"):
        build_model("resnet50", resnet_stem="cifar", weights="imagenet")
    with pytest.raises(ValueError, match="unknown ResNet stem"):
        build_model("resnet50", resnet_stem="wide")


def test_dtype_policy_is_restored_and_float32_twin_matches() -> None:
    import keras

    config = TrainConfig(model="lenet", precision="mixed_bfloat16")
    from training.data import Dataset

    dataset = Dataset(
        "mnist", np.zeros((1, 28, 28, 1), np.uint8), np.zeros(1, np.int64),
        np.zeros((1, 28, 28, 1), np.uint8), np.zeros(1, np.int64), [str(i) for i in range(10)], "",
    )  # fmt: skip
    with dtype_policy("mixed_bfloat16"):
        mixed = build_model("lenet")
    assert keras.mixed_precision.global_policy().name == "float32"
    twin = as_float32(mixed, config, dataset)
    assert all(layer.compute_dtype == "float32" for layer in twin.layers[1:])
    for a, b in zip(mixed.get_weights(), twin.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    images = np.random.default_rng(1).integers(0, 256, (16, 28, 28, 1), np.uint8)
    # bfloat16 keeps 8 bits of mantissa: the two agree to about 1e-2 on the probabilities.
    np.testing.assert_allclose(mixed.predict(images, verbose=0), twin.predict(images, verbose=0),
                               atol=3e-2)  # fmt: skip
    assert as_float32(twin, TrainConfig(model="lenet"), dataset) is twin


def test_bf16_xla_training_exports_float32_through_the_parity_gate(tmp_path) -> None:
    config = TrainConfig(
        model="lenet", dataset="mnist", epochs=2, limit=1000, precision="mixed_bfloat16",
        jit_compile=True, repository=str(tmp_path / "repo"), runs_dir=str(tmp_path / "runs"),
        seed=11, fp16=False,
    )  # fmt: skip
    result = run_training(config)
    assert result.metrics["accuracy"] > 0.5  # 2 epochs of 900 images: far above chance (0.1)
    assert result.version_dir is not None and result.metadata is not None
    parity = result.metadata["parity"]["fp32"]
    assert parity["argmax_agreement"] == 1.0 and parity["max_abs_diff"] < 1e-4
    training = json.loads((result.version_dir / "metadata.json").read_text())["training"]
    assert (training["precision"], training["jit_compile"]) == ("mixed_bfloat16", True)

    _assert_float32_export(result.version_dir)


def _assert_float32_export(version_dir) -> None:
    """float32 variables in the SavedModel; no 16-bit float weight or cast in the ONNX graph."""
    import onnx
    import tensorflow as tf

    loaded = tf.saved_model.load(str(version_dir))
    floating = {v.dtype for v in loaded.variables if v.dtype.is_floating}
    assert floating == {tf.float32}  # (an int64 seed or step counter may sit next to them)
    graph = onnx.load(str(version_dir / "model.onnx")).graph
    float_types = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    assert not [t.name for t in graph.initializer if t.data_type in float_types]
    assert not [n.name for n in graph.node if n.op_type == "Cast" and any(
        a.name == "to" and a.i in float_types for a in n.attribute)]  # fmt: skip


def test_time_budget_stops_cleanly_then_evaluates_and_exports(tmp_path) -> None:
    config = TrainConfig(
        model="mlp", dataset="mnist", epochs=6, limit=1000, time_budget_minutes=1e-4,
        repository=str(tmp_path / "repo"), runs_dir=str(tmp_path / "runs"), seed=3, fp16=False,
    )  # fmt: skip
    result = run_training(config)
    with open(result.run_dir / EPOCH_LOG) as stream:
        rows = list(csv.DictReader(stream))
    assert [int(row["epoch"]) for row in rows] == [1]  # stopped within the first epoch
    assert float(rows[0]["wall_s"]) > 0 and float(rows[0]["cpu_s"]) > 0
    assert 0.0 < float(rows[0]["val_accuracy"]) <= 1.0
    assert (result.run_dir / "accuracy_over_time.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((result.run_dir / "run_summary.json").read_text())
    assert summary["epochs_run"] == 1 and summary["first_epoch_wall_s"] > 0
    # A budget of 6 ms runs out during the first batch: the epoch is cut there, validated, logged.
    assert summary["time_budget_stop"]["mid_epoch"] is True
    assert summary["time_budget_stop"]["stopped"] == "mid-epoch, after batch 1"
    assert result.version_dir is not None and result.metrics["examples"] == 1000


def test_epoch_clock_logs_every_epoch(tmp_path) -> None:
    config = TrainConfig(
        model="mlp", dataset="mnist", epochs=3, limit=1000, test_limit=1000, export=False,
        repository=str(tmp_path / "repo"), runs_dir=str(tmp_path / "runs"), seed=3,
    )  # fmt: skip
    result = run_training(config)
    with open(result.run_dir / EPOCH_LOG) as stream:
        rows = list(csv.DictReader(stream))
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3]
    cumulative = [float(row["cum_wall_s"]) for row in rows]
    assert cumulative == sorted(cumulative)
    summary = json.loads((result.run_dir / "run_summary.json").read_text())
    expected = np.mean([float(row["wall_s"]) for row in rows[1:]])
    assert summary["later_epochs_wall_s"] == pytest.approx(expected)


@pytest.mark.parametrize("name", ["lenet", "resnet50"])
def test_float32_copy_of_a_mixed_model(name: str) -> None:
    from training.models import float32_copy

    with dtype_policy("mixed_bfloat16"):
        mixed = build_model(name, (28, 28, 1), 10)
    copy = float32_copy(mixed)
    assert copy is not mixed
    assert all(layer.compute_dtype == "float32" for layer in copy._flatten_layers())
    for a, b in zip(mixed.get_weights(), copy.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert float32_copy(copy) is copy  # nothing mixed left: returned as it is


def test_checkpoint_of_a_bf16_run_exports_float32(tmp_path) -> None:
    from training.__main__ import main

    config = TrainConfig(
        model="lenet", dataset="mnist", epochs=1, limit=1000, test_limit=1000, export=False,
        precision="mixed_bfloat16", runs_dir=str(tmp_path / "runs"), seed=5,
    )  # fmt: skip
    result = run_training(config)
    checkpoint = result.run_dir / "checkpoints" / "best_val_loss.keras"
    repository = tmp_path / "repo"
    code = main(["export", "--model", "lenet", "--checkpoint", str(checkpoint),
                 "--repository", str(repository), "--no-fp16"])  # fmt: skip
    assert code == 0
    metadata = json.loads((repository / "lenet" / "1" / "metadata.json").read_text())
    assert metadata["parity"]["fp32"]["argmax_agreement"] == 1.0
    _assert_float32_export(repository / "lenet" / "1")


def test_time_budget_stops_between_epochs_by_the_median_epoch(tmp_path) -> None:
    # mlp epochs on 900 images take well under a second, the first (tracing) the longest; more
    # epochs than could ever fit, and no early stopping, so only the budget ends the run.
    config = TrainConfig(
        model="mlp", dataset="mnist", epochs=10_000, patience=10_000, limit=1000,
        test_limit=1000, export=False, time_budget_minutes=0.1, runs_dir=str(tmp_path / "runs"),
        seed=3,
    )  # fmt: skip
    result = run_training(config)
    summary = json.loads((result.run_dir / "run_summary.json").read_text())
    stop = summary["time_budget_stop"]
    assert 2 <= summary["epochs_run"] < 10_000
    assert stop["used_s"] <= 6.0 + 2.0  # at most a batch and a validation past the budget
    if not stop["mid_epoch"]:
        assert stop["stopped"].startswith(f"after epoch {summary['epochs_run']} (median epoch")


def test_kfold_shares_one_time_budget_among_the_folds(tmp_path) -> None:
    total_s = 6.0
    config = TrainConfig(
        model="mlp", dataset="mnist", epochs=10_000, patience=10_000, limit=1000,
        test_limit=1000, export=False, time_budget_minutes=total_s / 60, kfold=2,
        runs_dir=str(tmp_path / "runs"), seed=3,
    )  # fmt: skip
    result = run_training(config)
    first, second = (
        json.loads((result.run_dir / f"fold-{n}" / "time_budget.json").read_text()) for n in (1, 2)
    )
    assert first["budget_s"] == pytest.approx(total_s / 2, abs=0.05)  # half of it, at the start
    # The second fold gets what the first (and its evaluation) left, not a budget of its own.
    assert second["budget_s"] <= total_s - first["used_s"]
    assert len(result.kfold["folds"]) == 2  # both folds trained, were evaluated and reported

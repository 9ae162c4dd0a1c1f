"""FusedBatchNormalization: TensorFlow's fused kernel in training, Keras' BatchNormalization in
every observable respect (outputs, gradients, moving statistics, inference, saving)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.layers import FusedBatchNormalization
from training.models import build_model
from training.train import dtype_policy


def _pair(policy: str, channels: int = 6) -> tuple:
    import keras

    with dtype_policy(policy):
        plain = keras.layers.BatchNormalization(momentum=0.9, epsilon=1.001e-5)
        fused = FusedBatchNormalization(momentum=0.9, epsilon=1.001e-5)
        for layer in (plain, fused):
            layer.build((None, 5, 5, channels))
    rng = np.random.default_rng(0)
    gamma, beta = rng.normal(1, 0.2, channels), rng.normal(0, 0.2, channels)
    for layer in (plain, fused):
        layer.set_weights([gamma, beta, np.zeros(channels), np.ones(channels)])
    return plain, fused


@pytest.mark.parametrize(("policy", "tolerance"), [("float32", 1e-5), ("mixed_bfloat16", 3e-2)])
def test_a_training_step_matches_keras_batch_normalization(policy: str, tolerance: float) -> None:
    import tensorflow as tf

    plain, fused = _pair(policy)
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(3, 2, (8, 5, 5, 6)), tf.float32)
    weights = tf.constant(rng.normal(0, 1, (8, 5, 5, 6)), tf.float32)  # a loss with gradients
    results = []
    for layer in (plain, fused):
        inputs = tf.cast(x, layer.compute_dtype)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = layer(inputs, training=True)
            loss = tf.reduce_sum(tf.cast(outputs, tf.float32) * weights)
        grads = tape.gradient(loss, [inputs, layer.gamma, layer.beta])
        assert outputs.dtype == layer.compute_dtype
        results.append([outputs, *grads, layer.moving_mean, layer.moving_variance])
    names = ["outputs", "input gradient", "gamma gradient", "beta gradient", "moving mean",
             "moving variance"]  # fmt: skip
    for name, a, b in zip(names, *results, strict=True):
        a, b = np.asarray(tf.cast(a, tf.float32)), np.asarray(tf.cast(b, tf.float32))
        scale = max(1.0, float(np.abs(a).max()))
        np.testing.assert_allclose(b, a, atol=tolerance * scale, err_msg=name)


def test_inference_is_keras_own() -> None:
    plain, fused = _pair("float32")
    x = np.random.default_rng(2).normal(0, 1, (4, 5, 5, 6)).astype(np.float32)
    np.testing.assert_array_equal(fused(x, training=False), plain(x, training=False))


def test_resnet50_trains_with_the_fused_layer_when_asked_and_its_checkpoint_loads(
    tmp_path: Path,
) -> None:
    import keras

    for stem in ("imagenet", "cifar"):
        for fused in (False, True):
            model = build_model("resnet50", (28, 28, 1), 10, resnet_side=32, resnet_stem=stem,
                                fused_batch_norm=fused)  # fmt: skip
            norms = [layer for layer in model._flatten_layers() if "BatchNormalization" in
                     type(layer).__name__]  # fmt: skip
            assert len(norms) == 53, stem
            kind = FusedBatchNormalization if fused else keras.layers.BatchNormalization
            assert all(type(layer) is kind for layer in norms), (stem, fused)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(3)
    assert np.isfinite(model.train_on_batch(rng.integers(0, 256, (4, 28, 28, 1), np.uint8),
                                            np.arange(4)))  # fmt: skip
    path = tmp_path / "checkpoint.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    images = rng.integers(0, 256, (2, 28, 28, 1), np.uint8)
    np.testing.assert_array_equal(
        loaded.predict(images, verbose=0), model.predict(images, verbose=0)
    )

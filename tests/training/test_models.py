"""Every model builds with the `image` -> `probabilities` contract and trains one step."""

from __future__ import annotations

import numpy as np
import pytest

from training.models import WeightsUnavailable, build_model


@pytest.mark.parametrize("name", ["mlp", "lenet", "resnet50"])
def test_model_builds_and_trains_one_step(name: str) -> None:
    model = build_model(name, (28, 28, 1), 10)
    assert model.inputs[0].name == "image"
    assert model.inputs[0].dtype == "uint8"
    assert tuple(model.inputs[0].shape) == (None, 28, 28, 1)
    assert model.outputs[0].shape[-1] == 10
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, 8)
    loss = model.train_on_batch(images, labels)
    assert np.isfinite(loss)
    probabilities = model.predict(images, verbose=0)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_resnet50_resizes_inside_the_model() -> None:
    model = build_model("resnet50", (28, 28, 1), 10, resnet_side=40)
    assert model.get_layer("resize").output.shape[1:] == (40, 40, 3)
    assert model.get_layer("gray_to_rgb").output.shape[-1] == 3


def test_imagenet_weights_are_never_downloaded(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("training.models._KERAS_WEIGHTS_DIR", tmp_path)
    with pytest.raises(WeightsUnavailable, match="never downloads"):
        build_model("resnet50", (28, 28, 1), 10, weights="imagenet")


def test_resnet50_imagenet_has_the_imagenet_shape() -> None:
    model = build_model("resnet50_imagenet")
    assert tuple(model.inputs[0].shape) == (None, 224, 224, 3)
    assert model.outputs[0].shape[-1] == 1000


def test_unknown_model_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        build_model("vgg")

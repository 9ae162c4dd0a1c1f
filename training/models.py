"""The models: an MLP baseline, LeNet, ResNet50, and an ImageNet-shaped ResNet50 for throughput.

Every model takes one input named `image` (uint8, NHWC, the dataset's native shape) and carries its
own preprocessing, so servers and clients send raw pixels. Every model outputs `probabilities`
(float32 softmax).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MODEL_NAMES = ("mlp", "lenet", "resnet50", "resnet50_imagenet")
# ResNet50's first layers: `imagenet` is Keras' (7x7 stride-2 conv, 3x3 stride-2 max-pool: the
# feature map shrinks 4x per side before the first block); `cifar` is a 3x3 stride-1 conv and no
# pool, so the blocks see the full input side (about 16x the compute at the same side).
RESNET_STEMS = ("imagenet", "cifar")
# Bottleneck blocks per stage in ResNet50 (He et al. 2015, table 1), with each stage's width.
_RESNET50_STAGES = ((64, 3), (128, 4), (256, 6), (512, 3))
IMAGENET_INPUT_SHAPE = (224, 224, 3)
IMAGENET_CLASSES = 1000
_KERAS_WEIGHTS_DIR = Path.home() / ".keras" / "models"
_RESNET50_WEIGHTS = {
    True: "resnet50_weights_tf_dim_ordering_tf_kernels.h5",
    False: "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
}


class WeightsUnavailable(RuntimeError):
    """Pretrained weights were asked for but are not on disk (nothing is downloaded)."""


def imagenet_weights_path(include_top: bool) -> Path | None:
    """Where Keras caches ResNet50's ImageNet weights, if they are on disk."""
    path = _KERAS_WEIGHTS_DIR / _RESNET50_WEIGHTS[include_top]
    return path if path.is_file() else None


def build_model(
    name: str,
    input_shape: tuple[int, int, int] = (28, 28, 1),
    num_classes: int = 10,
    *,
    weights: str | None = None,
    resnet_side: int = 32,
    resnet_stem: str = "imagenet",
    fused_batch_norm: bool = False,
) -> Any:
    """Build (uncompiled) model `name` for uint8 NHWC `input_shape` images and `num_classes`.

    Layers follow Keras' global dtype policy (`keras.mixed_precision`); the `probabilities` output
    is float32 whatever the policy. `fused_batch_norm`: ResNet50's batch normalisation trains
    with TensorFlow's fused kernel (training.layers), faster on a CPU but, under
    mixed_bfloat16, a worse learner (benchmarks/RESULTS.md), so not the default.
    """
    import keras
    from keras import layers

    if name == "resnet50_imagenet":
        input_shape, num_classes = IMAGENET_INPUT_SHAPE, IMAGENET_CLASSES
    image = keras.Input(shape=input_shape, dtype="uint8", name="image")

    if name == "mlp":
        x = layers.Rescaling(1.0 / 255, name="scale")(image)
        x = layers.Flatten()(x)
        x = layers.Dense(128, activation="relu")(x)
        x = layers.Dense(128, activation="relu")(x)
    elif name == "lenet":
        x = layers.Rescaling(1.0 / 255, name="scale")(image)
        x = layers.Conv2D(16, 3, activation="relu", padding="same")(x)
        x = layers.MaxPooling2D()(x)
        x = layers.Conv2D(64, 3, activation="relu", padding="same")(x)
        x = layers.MaxPooling2D()(x)
        x = layers.Flatten()(x)
        x = layers.Dropout(0.4)(x)
        x = layers.Dense(128, activation="relu")(x)
    elif name in ("resnet50", "resnet50_imagenet"):
        x, is_probabilities = _resnet50_features(
            image, name, input_shape, weights, resnet_side, resnet_stem, fused_batch_norm
        )
        if is_probabilities:
            probabilities = layers.Activation("linear", dtype="float32", name="probabilities")(x)
            return keras.Model(inputs=image, outputs=probabilities, name=name)
    else:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")

    probabilities = layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="probabilities"
    )(x)
    return keras.Model(inputs=image, outputs=probabilities, name=name)


def float32_copy(model: Any) -> Any:
    """`model` with every layer computing in float32: itself when it already does, else a copy of
    its architecture (nested models included) with mixed dtype policies replaced by float32 and
    its weights copied in. Mixed policies keep variables in float32, so no weight is rounded.
    For checkpoints saved by a mixed-precision run, whose build arguments are not at hand."""

    def float32_policies(node: Any) -> tuple[Any, bool]:
        if isinstance(node, list):
            items = [float32_policies(item) for item in node]
            return [item for item, _ in items], any(changed for _, changed in items)
        if not isinstance(node, dict):
            return node, False
        if node.get("class_name") == "DTypePolicy" and str(
            node.get("config", {}).get("name", "")
        ).startswith("mixed_"):
            return {**node, "config": {**node["config"], "name": "float32"}}, True
        pairs = {key: float32_policies(value) for key, value in node.items()}
        return {key: item for key, (item, _) in pairs.items()}, any(
            changed for _, changed in pairs.values()
        )

    config, changed = float32_policies(model.get_config())
    if not changed:
        return model
    copy = model.__class__.from_config(config)
    copy.set_weights(model.get_weights())
    return copy


def _resnet50_features(
    image: Any,
    name: str,
    input_shape: tuple[int, int, int],
    weights: str | None,
    side: int,
    stem: str = "imagenet",
    fused_batch_norm: bool = False,
) -> tuple[Any, bool]:
    """ResNet50 on the preprocessed image: (pooled features, False) or (probabilities, True)."""
    import keras
    from keras import layers

    if weights not in (None, "imagenet"):
        raise ValueError(f"weights must be None or 'imagenet', got {weights!r}")
    if stem not in RESNET_STEMS:
        raise ValueError(f"unknown ResNet stem {stem!r}; choose one of {', '.join(RESNET_STEMS)}")
    if stem != "imagenet" and (weights is not None or name != "resnet50"):
        raise ValueError(
            "the cifar stem is for resnet50 trained from scratch (no ImageNet weights)"
        )
    include_top = name == "resnet50_imagenet"
    weights_path = None
    if weights == "imagenet":
        weights_path = imagenet_weights_path(include_top=include_top)
        if weights_path is None:
            raise WeightsUnavailable(
                "ImageNet weights for ResNet50 are not on disk (expected "
                f"{_KERAS_WEIGHTS_DIR / _RESNET50_WEIGHTS[include_top]}); this project never "
                "downloads them. Copy the file there or train from scratch (the default)."
            )

    # Rescaling also casts uint8 to float32. ImageNet weights expect Keras' caffe-style
    # preprocessing of 0..255 RGB; random weights train better on 0..1.
    x = layers.Rescaling(1.0 if weights_path is not None else 1.0 / 255, name="scale")(image)
    if input_shape[-1] == 1:
        x = layers.Concatenate(name="gray_to_rgb")([x, x, x])
    if name == "resnet50" and input_shape[:2] != (side, side):
        x = layers.Resizing(side, side, name="resize")(x)
    feature_shape = (side, side, 3) if name == "resnet50" else IMAGENET_INPUT_SHAPE
    if weights_path is not None:
        x = layers.Lambda(keras.applications.resnet50.preprocess_input, name="imagenet_preprocess")(
            x
        )
    if include_top and weights_path is not None:
        # The full ImageNet classifier, softmax included; renamed to our output name by the caller.
        full = keras.applications.ResNet50(
            include_top=True, weights=str(weights_path), input_shape=feature_shape
        )
        return layers.Identity(name="imagenet_softmax")(full(x)), True
    if stem == "cifar":
        return _resnet50_cifar(x, fused_batch_norm), False
    backbone = keras.applications.ResNet50(
        include_top=False,
        weights=str(weights_path) if weights_path is not None else None,
        input_shape=feature_shape,
        pooling="avg",
    )
    if fused_batch_norm:
        backbone = _with_fused_batch_norm(backbone)
    return backbone(x), False


def _with_fused_batch_norm(model: Any) -> Any:
    """``model`` (a Functional) with its BatchNormalization layers trained by TensorFlow's fused
    kernel (``training.layers.FusedBatchNormalization``); same names, config and weights."""
    import keras

    from training.layers import FusedBatchNormalization

    def clone(layer: Any) -> Any:
        if type(layer) is keras.layers.BatchNormalization:
            return FusedBatchNormalization.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    fused = keras.models.clone_model(model, clone_function=clone)
    fused.set_weights(model.get_weights())
    return fused


def _resnet50_cifar(x: Any, fused_batch_norm: bool = False) -> Any:
    """ResNet50 (v1, as keras.applications builds it) with the CIFAR stem: a 3x3 stride-1 conv
    and no max-pool, then the same four stages of bottleneck blocks; global-average-pooled."""
    from keras import layers

    from training.layers import FusedBatchNormalization

    norm = FusedBatchNormalization if fused_batch_norm else layers.BatchNormalization
    x = layers.Conv2D(64, 3, padding="same", use_bias=False, name="stem_conv")(x)
    x = norm(epsilon=1.001e-5, name="stem_bn")(x)
    x = layers.Activation("relu", name="stem_relu")(x)
    for stage, (width, blocks) in enumerate(_RESNET50_STAGES, start=2):
        for block in range(1, blocks + 1):
            stride = 2 if block == 1 and stage > 2 else 1
            x = _bottleneck(
                x, width, stride, projection=block == 1, name=f"conv{stage}_block{block}", norm=norm
            )
    return layers.GlobalAveragePooling2D(name="avg_pool")(x)


def _bottleneck(x: Any, width: int, stride: int, projection: bool, name: str, norm: Any) -> Any:
    """1x1 (stride) -> 3x3 -> 1x1 (4x width), ``norm`` (a BatchNormalization) after each, plus
    the shortcut."""
    from keras import layers

    def conv_bn(y: Any, filters: int, kernel: int, step: int, part: str) -> Any:
        y = layers.Conv2D(
            filters, kernel, strides=step, padding="same", name=f"{name}_{part}_conv"
        )(y)
        return norm(epsilon=1.001e-5, name=f"{name}_{part}_bn")(y)

    shortcut = conv_bn(x, 4 * width, 1, stride, "0") if projection else x
    y = layers.Activation("relu", name=f"{name}_1_relu")(conv_bn(x, width, 1, stride, "1"))
    y = layers.Activation("relu", name=f"{name}_2_relu")(conv_bn(y, width, 3, 1, "2"))
    y = conv_bn(y, 4 * width, 1, 1, "3")
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.Activation("relu", name=f"{name}_out")(y)

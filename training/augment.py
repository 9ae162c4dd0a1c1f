"""Training-time augmentation, two ways: TensorFlow ops inside the tf.data graph (``graph``, the
default: parallel map, no Python per batch) and albumentations (one Python call per batch).

The same family of transforms both ways: small rotations, shifts and scale, brightness/contrast,
noise; never flips (a mirrored digit can change class). Both are deterministic for a seed and a
per-batch key, so a run repeats exactly whatever the pipeline's parallelism.

A third, lighter kind for garments only (``flip_shift``, graph ops): a left-right mirror and a
shift of a few pixels, the classic CIFAR-style augmentation. A mirrored shirt or shoe is still a
shirt or shoe (Fashion-MNIST's classes do not depend on left and right), and a deep network
trained for few epochs fits this lighter family faster than the full one.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np


class Augmenter:
    """Albumentations on uint8 HxWxC images: small affine moves, brightness/contrast, noise.

    No flips: a flipped digit or garment class can change meaning. Deterministic for a given
    (seed, call key), and thread-safe (one Compose per thread), so tf.data's parallel map and
    PyDataset's workers give the same batches for the same seed.
    """

    def __init__(self, seed: int = 42) -> None:
        self.seed = seed
        self._local = threading.local()

    def _pipeline(self) -> Any:
        pipeline = getattr(self._local, "pipeline", None)
        if pipeline is None:
            import albumentations as A

            pipeline = A.Compose(
                [
                    A.Affine(
                        rotate=(-10, 10),
                        translate_percent=(-0.08, 0.08),
                        scale=(0.9, 1.1),
                        border_mode=0,
                        fill=0,
                        p=0.8,
                    ),
                    A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
                    A.GaussNoise(std_range=(0.02, 0.08), p=0.3),
                ],
                seed=self.seed,
            )
            self._local.pipeline = pipeline
        return pipeline

    def __call__(self, images: np.ndarray, key: int) -> np.ndarray:
        """Augment a batch `[N, H, W, C]` uint8; `key` picks the random stream (batch, epoch)."""
        pipeline = self._pipeline()
        pipeline.set_random_seed(int(np.random.default_rng([self.seed, int(key)]).integers(2**31)))
        out = np.empty_like(images)
        for i, image in enumerate(images):
            out[i] = pipeline(image=image)["image"].reshape(image.shape)
        return out


# The graph version of the same family: tf ops on whole batches inside the tf.data graph, so
# augmentation runs in TensorFlow's threads instead of one Python call per batch.
AUGMENT_KINDS = ("none", "graph", "albumentations", "flip_shift")
#: The kinds that mirror images: never for digits.
MIRRORING_KINDS = ("flip_shift",)
FLIP_SHIFT_MAX_PIXELS = 3
GRAPH_AUGMENT: dict[str, Any] = {
    "affine_p": 0.8,
    "rotate_degrees": 10.0,
    "translate_fraction": 0.08,
    "scale": 0.1,
    "brightness_contrast_p": 0.5,
    "brightness": 0.2,
    "contrast": 0.2,
    "noise_p": 0.3,
    "noise_std": (0.02, 0.08),
}


def augment_kind(value: str | bool | None) -> str:
    """Normalise an augmentation choice: True (the old `--augment`) means the default, graph."""
    if value is None or value is False:
        return "none"
    if value is True:
        return "graph"
    if value not in AUGMENT_KINDS:
        raise ValueError(
            f"unknown augmentation {value!r}; choose one of {', '.join(AUGMENT_KINDS)}"
        )
    return value


def graph_augment(images: Any, seed: Any) -> Any:
    """Augment a uint8 batch `[N, H, W, C]` with TensorFlow ops; returns uint8 of the same shape.

    Per image, like `Augmenter`: with p=0.8 an affine move (rotation within +-10 degrees, shift
    within +-8% of the side, scale 0.9-1.1, black fill), with p=0.5 brightness/contrast +-20%, with
    p=0.3 Gaussian noise (std 2-8% of 255). Never a flip. Every random draw is stateless, keyed
    by `seed` (an int `[2]` tensor), so the same seed gives the same batch whatever the
    parallelism.
    """
    import math

    import tensorflow as tf

    cfg = GRAPH_AUGMENT
    images = tf.convert_to_tensor(images)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=11)
    shape = tf.shape(images)
    batch = shape[0]
    height = tf.cast(shape[1], tf.float32)
    width = tf.cast(shape[2], tf.float32)

    def uniform(index: int, low: float, high: float, size: Any = None) -> Any:
        return tf.random.stateless_uniform(
            [batch] if size is None else size, seeds[index], minval=low, maxval=high
        )

    def chance(index: int, p: float) -> Any:
        return tf.cast(uniform(index, 0.0, 1.0) < p, tf.float32)

    # Affine: the transform maps output pixel coordinates to input coordinates, about the centre.
    moved = chance(0, cfg["affine_p"])
    angle = uniform(1, -1.0, 1.0) * cfg["rotate_degrees"] * math.pi / 180.0 * moved
    scale = 1.0 + uniform(2, -1.0, 1.0) * cfg["scale"] * moved
    shift_x = uniform(3, -1.0, 1.0) * cfg["translate_fraction"] * width * moved
    shift_y = uniform(4, -1.0, 1.0) * cfg["translate_fraction"] * height * moved
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    centre_x, centre_y = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    from_x, from_y = centre_x + shift_x, centre_y + shift_y
    zeros = tf.zeros_like(cos)
    transforms = tf.stack(
        [
            cos, sin, centre_x - cos * from_x - sin * from_y,
            -sin, cos, centre_y + sin * from_x - cos * from_y,
            zeros, zeros,
        ],
        axis=1,
    )  # fmt: skip
    x = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(images, tf.float32),
        transforms=transforms,
        output_shape=shape[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )

    # Brightness/contrast: x * alpha + beta * 255, as albumentations does for uint8.
    toned = chance(5, cfg["brightness_contrast_p"])[:, None, None, None]
    alpha = 1.0 + uniform(6, -1.0, 1.0) * cfg["contrast"]
    beta = uniform(9, -1.0, 1.0) * cfg["brightness"] * 255.0
    x = x + toned * (x * (alpha[:, None, None, None] - 1.0) + beta[:, None, None, None])

    # Gaussian noise on a share of the images.
    noisy = chance(7, cfg["noise_p"])[:, None, None, None]
    low, high = cfg["noise_std"]
    std = uniform(8, low * 255.0, high * 255.0)[:, None, None, None]
    noise = tf.random.stateless_normal(tf.shape(x), seeds[10])
    x = x + noisy * std * noise
    return tf.cast(tf.round(tf.clip_by_value(x, 0.0, 255.0)), tf.uint8)


def flip_shift_augment(images: Any, seed: Any) -> Any:
    """Mirror left-right with p=0.5 and shift by up to `FLIP_SHIFT_MAX_PIXELS` each way (zero fill).

    A uint8 batch `[N, H, W, C]` in, the same shape and dtype out. The shift is whole pixels, so
    no interpolation blurs the image. Stateless draws keyed by `seed` (an int `[2]` tensor), like
    `graph_augment`: the same seed gives the same batch whatever the parallelism.
    """
    import tensorflow as tf

    images = tf.convert_to_tensor(images)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=2)
    batch = tf.shape(images)[0]
    mirrored = tf.random.stateless_uniform([batch], seeds[0]) < 0.5
    images = tf.where(mirrored[:, None, None, None], tf.reverse(images, axis=[2]), images)
    reach = FLIP_SHIFT_MAX_PIXELS
    shifts = tf.random.stateless_uniform(
        [batch, 2], seeds[1], minval=-reach, maxval=reach + 1, dtype=tf.int32
    )
    zeros = tf.zeros([batch], tf.float32)
    ones = tf.ones([batch], tf.float32)
    # Output pixel (x, y) reads input pixel (x - dx, y - dy): a move of (dx, dy).
    transforms = tf.stack(
        [ones, zeros, -tf.cast(shifts[:, 0], tf.float32),
         zeros, ones, -tf.cast(shifts[:, 1], tf.float32),
         zeros, zeros],
        axis=1,
    )  # fmt: skip
    moved = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(images, tf.float32),
        transforms=transforms,
        output_shape=tf.shape(images)[1:3],
        fill_value=0.0,
        interpolation="NEAREST",
        fill_mode="CONSTANT",
    )
    return tf.cast(moved, tf.uint8)


def batch_augment_fn(kind: str) -> Any:
    """The graph function for a graph kind (`graph` or `flip_shift`)."""
    return {"graph": graph_augment, "flip_shift": flip_shift_augment}[kind]

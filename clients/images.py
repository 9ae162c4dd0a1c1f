"""Turn images into the batch a model's signature expects, and probabilities into top-k labels.

Public API:

- ``ImageInput``: what ``classify`` accepts per image: a path, encoded bytes, a PIL image or an
  ndarray (``[H, W]`` or ``[H, W, C]``).
- ``prepare_batch(images, spec) -> ndarray``: decode, convert colour mode, resize and stack into
  ``spec``'s shape (NHWC, e.g. ``[-1, 28, 28, 1]``) and dtype. Models carry their own scaling, so
  pixels stay raw.
- ``top_k(probabilities, k, class_names) -> list[list[(label, score)]]``.
- ``read_image(path, height, width, channels)`` and ``load_image_folder(directory, ...)`` (the
  ``DIR/<class>/<image>`` layout): files as uint8 NHWC arrays, for tools that read image folders.

Pillow is needed only for paths, bytes, PIL images and resizing; it is imported on first use.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clients.errors import InvalidInput
from clients.protocols import TensorSpec

# Any stands for PIL.Image.Image, which stays unimported until needed.
ImageInput = str | Path | bytes | np.ndarray | Any


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise InvalidInput(
            "decoding or resizing images needs Pillow (pip install pillow); "
            "or pass arrays of the model's input size"
        ) from None
    return Image


def _geometry(spec: TensorSpec) -> tuple[int | None, int | None, int]:
    shape = spec.shape
    if len(shape) != 4:
        raise InvalidInput(f"input {spec.name!r} has shape {shape}, classify needs NHWC images")
    height, width, channels = shape[1], shape[2], shape[3]
    return (
        height if height > 0 else None,
        width if width > 0 else None,
        channels if channels > 0 else 3,
    )


def _load(image: ImageInput, channels: int, height: int | None, width: int | None) -> np.ndarray:
    if isinstance(image, np.ndarray):
        array = image if image.ndim == 3 else image.reshape(*image.shape, 1)
        if array.ndim != 3:
            raise InvalidInput(f"image array must be [H, W] or [H, W, C], got {image.shape}")
        size_ok = (height is None or array.shape[0] == height) and (
            width is None or array.shape[1] == width
        )
        if size_ok and array.shape[2] == channels:
            return array
        pil_image = _pil().fromarray(array.squeeze(-1) if array.shape[2] == 1 else array)
    elif isinstance(image, (str, Path)):
        pil_image = _pil().open(image)
    elif isinstance(image, (bytes, bytearray)):
        pil_image = _pil().open(io.BytesIO(image))
    else:
        pil_image = image  # a PIL image
    pil_image = pil_image.convert("L" if channels == 1 else "RGB")
    if height is not None and width is not None and pil_image.size != (width, height):
        pil_image = pil_image.resize((width, height), _pil().Resampling.BILINEAR)
    array = np.asarray(pil_image)
    return array.reshape(array.shape[0], array.shape[1], channels)


#: the image files the folder readers take
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_image(path: str | Path, height: int, width: int, channels: int) -> np.ndarray:
    """One PNG or JPEG file as uint8 ``[height, width, channels]``: colour mode converted (1:
    grayscale, else RGB), resized bilinearly. OSError when the file cannot be read as an image."""
    with _pil().open(path) as image:
        return np.asarray(_load(image, channels, height, width), np.uint8)


def load_image_folder(
    directory: str | Path, height: int, width: int, channels: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The image-folder layout (``DIR/<class>/<image>``, PNG or JPEG) as uint8 NHWC images of
    the given size and colour mode, labels (the index of the folder's name among the sorted
    class folders) and those class names. InvalidInput names what is wrong."""
    root = Path(directory)
    classes = sorted(
        folder.name
        for folder in root.iterdir()
        if folder.is_dir()
        and any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.rglob("*") if p.is_file())
    ) if root.is_dir() else []  # fmt: skip
    if not classes:
        raise InvalidInput(
            f"--images {directory} holds no class folders with PNG or JPEG images "
            "(DIR/<class name>/<image>)"
        )
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted(
            p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
        ):
            try:
                images.append(read_image(path, height, width, channels))
            except OSError as error:
                raise InvalidInput(f"--images: cannot read {path}: {error}") from None
            labels.append(label)
    return np.stack(images), np.asarray(labels, np.int64), classes


def prepare_batch(images: Sequence[ImageInput], spec: TensorSpec) -> np.ndarray:
    """Stack images into one batch of the input's shape and dtype."""
    if not images:
        raise InvalidInput("classify needs at least one image")
    height, width, channels = _geometry(spec)
    arrays = [_load(image, channels, height, width) for image in images]
    if len({a.shape for a in arrays}) != 1:
        raise InvalidInput("images differ in size and the model does not fix one")
    dtype = spec.dtype if spec.dtype != np.dtype(object) else np.dtype(np.uint8)
    return np.stack(arrays).astype(dtype, copy=False)


def top_k(
    probabilities: np.ndarray, k: int, class_names: Sequence[str] | None
) -> list[list[tuple[str, float]]]:
    """The k best ``(label, score)`` pairs per row, best first; labels are indices if unnamed."""
    scores = np.asarray(probabilities, dtype=np.float64).reshape(len(probabilities), -1)
    k = max(1, min(k, scores.shape[1]))
    best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    results = []
    for row, indices in zip(scores, best, strict=True):
        results.append(
            [
                (class_names[i] if class_names and i < len(class_names) else str(i), float(row[i]))
                for i in indices
            ]
        )
    return results

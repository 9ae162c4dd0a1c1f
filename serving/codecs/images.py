"""PNG/JPEG bytes -> uint8 NHWC arrays, following a model's ``preprocessing`` metadata."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from serving.errors import InvalidArgument

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


@dataclass(frozen=True)
class ImageSpec:
    """What one image must become: height, width, channels (1 = grayscale, 3 = RGB)."""

    height: int
    width: int
    channels: int

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any], input_shape: tuple[int, ...]) -> ImageSpec:
        """From metadata.json's ``preprocessing``, else from the input shape [-1, H, W, C]."""
        pre = metadata.get("preprocessing") or {}
        shape = list(input_shape[1:]) if len(input_shape) == 4 else [28, 28, 1]
        height = int(pre.get("height") or (shape[0] if shape[0] > 0 else 28))
        width = int(pre.get("width") or (shape[1] if shape[1] > 0 else 28))
        channels = pre.get("channels")
        if channels is None:
            color = str(pre.get("color_mode", "")).lower()
            channels = (
                1 if color in ("grayscale", "l", "gray") else (shape[2] if shape[2] > 0 else 3)
            )
        return cls(height, width, int(channels))


def looks_like_image(data: bytes) -> bool:
    """True for PNG or JPEG magic bytes."""
    return data.startswith(PNG_MAGIC) or data.startswith(JPEG_MAGIC)


def decode_image(data: bytes, spec: ImageSpec) -> np.ndarray:
    """Decode, convert the colour mode and resize; returns uint8 ``[H, W, C]``."""
    if not data:
        raise InvalidArgument("image is empty")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in ("PNG", "JPEG"):
                raise InvalidArgument(f"image format {image.format} is not supported (PNG or JPEG)")
            converted = image.convert("L" if spec.channels == 1 else "RGB")
            if converted.size != (spec.width, spec.height):
                converted = converted.resize((spec.width, spec.height), Image.Resampling.BILINEAR)
            array = np.asarray(converted, dtype=np.uint8)
    except InvalidArgument:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InvalidArgument(f"cannot decode image (PNG or JPEG expected): {exc}") from None
    if array.ndim == 2:
        array = array[:, :, None]
    return array

"""A model's declared preprocessing: how raw uint8 pixels become its own float input.

Most models in a repository take uint8 NHWC pixels and scale them inside the graph. A model
exported with ``python -m training export --from ... --keep-float-input`` keeps its own float
input instead, and its ``metadata.json`` says how to get there from pixels; the gateway's image
endpoint and ``Client.classify`` apply it, nobody else guesses. The form (``preprocessing`` in
``metadata.json``, and the same object in the gateway's metadata answers):

``{"inside_model": false, "input": "x", "dtype": "float32", "layout": "NCHW", "height": 32,
"width": 32, "channels": 3, "color_mode": "rgb", "resize": "bilinear", "scale": 0.0039...,
"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}``

meaning: decode, convert to ``color_mode`` (``rgb`` or ``grayscale``), resize to ``width`` x
``height`` (bilinear), ``x = float32(pixels) * scale`` (no scaling when ``scale`` is null), then
``(x - mean) / std`` per channel (when both are given), then the layout (NCHW: a transpose), then
``dtype``. ``inside_model`` absent or true: the model takes uint8 pixels as they are.

Public API: ``DeclaredPreprocessing.from_metadata(preprocessing) -> DeclaredPreprocessing | None``
(ValueError naming what is wrong), ``.apply(pixels)``, ``.to_json()``, ``.input_shape``.
numpy only: the client installs without the server's dependencies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

#: The key of ``preprocessing`` that says the model does not preprocess its input itself.
INSIDE_MODEL = "inside_model"
LAYOUTS = ("NHWC", "NCHW")
DTYPES = ("float16", "float32", "float64")
COLOR_MODES = {"grayscale": 1, "rgb": 3}
RESIZE = "bilinear"
#: Height and width are bounded so a hand-written metadata.json cannot ask for absurd arrays.
MAX_SIDE = 8192


def _side(pre: Mapping[str, Any], key: str) -> int:
    value = pre.get(key)
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or value != int(value)
        or not 1 <= value <= MAX_SIDE
    ):
        raise ValueError(f"preprocessing.{key} must be a whole number from 1 to {MAX_SIDE}")
    return int(value)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"preprocessing.{what} must be a finite number")
    return float(value)


def _per_channel(pre: Mapping[str, Any], key: str, channels: int) -> tuple[float, ...] | None:
    value = pre.get(key)
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) not in (1, channels):
        raise ValueError(f"preprocessing.{key} must be a list of 1 or {channels} numbers")
    return tuple(_number(v, key) for v in value)


@dataclass(frozen=True)
class DeclaredPreprocessing:
    """uint8 pixels [N, H, W, C] -> the model's input, as its metadata declares."""

    input: str
    dtype: str
    layout: str
    height: int
    width: int
    channels: int
    scale: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def color_mode(self) -> str:
        return "grayscale" if self.channels == 1 else "rgb"

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The model input's shape, -1 for the batch."""
        if self.layout == "NCHW":
            return (-1, self.channels, self.height, self.width)
        return (-1, self.height, self.width, self.channels)

    @classmethod
    def from_metadata(cls, pre: Any) -> DeclaredPreprocessing | None:
        """From metadata.json's ``preprocessing`` (or a metadata answer's copy of it): None when
        the model preprocesses inside (``inside_model`` absent or true); ValueError when the
        declaration is incomplete or inconsistent."""
        if not isinstance(pre, Mapping) or pre.get(INSIDE_MODEL, True) is not False:
            return None
        name = pre.get("input")
        if not isinstance(name, str) or not name:
            raise ValueError("preprocessing.input must name the model's input")
        dtype = pre.get("dtype")
        if dtype not in DTYPES:
            raise ValueError(f"preprocessing.dtype must be one of {', '.join(DTYPES)}")
        layout = pre.get("layout")
        if layout not in LAYOUTS:
            raise ValueError("preprocessing.layout must be NHWC or NCHW")
        color_mode = pre.get("color_mode")
        if color_mode not in COLOR_MODES:
            raise ValueError("preprocessing.color_mode must be rgb or grayscale")
        channels = COLOR_MODES[color_mode]
        if pre.get("channels", channels) != channels:
            raise ValueError(f"preprocessing.channels must be {channels} for {color_mode}")
        if pre.get("resize", RESIZE) != RESIZE:
            raise ValueError(f"preprocessing.resize must be {RESIZE}")
        scale = pre.get("scale")
        mean, std = _per_channel(pre, "mean", channels), _per_channel(pre, "std", channels)
        if (mean is None) != (std is None):
            raise ValueError("preprocessing.mean and preprocessing.std go together")
        if std is not None and 0.0 in std:
            raise ValueError("preprocessing.std must not hold 0")
        return cls(
            input=name, dtype=dtype, layout=layout, height=_side(pre, "height"),
            width=_side(pre, "width"), channels=channels,
            scale=None if scale is None else _number(scale, "scale"), mean=mean, std=std,
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        """The declaration in its documented form (what ``from_metadata`` reads)."""
        return {
            INSIDE_MODEL: False,
            "input": self.input,
            "dtype": self.dtype,
            "layout": self.layout,
            "height": self.height,
            "width": self.width,
            "channels": self.channels,
            "color_mode": self.color_mode,
            "resize": RESIZE,
            "scale": self.scale,
            "mean": list(self.mean) if self.mean is not None else None,
            "std": list(self.std) if self.std is not None else None,
        }

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 ``[N, height, width, channels]`` -> the model's input (float32 arithmetic, as
        the export's parity gate computes it)."""
        expected = (self.height, self.width, self.channels)
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != expected:
            raise ValueError(f"pixels of shape {pixels.shape}, expected [N, {expected}]")
        x: np.ndarray = pixels.astype(np.float32)
        if self.scale is not None:
            x = x * np.float32(self.scale)
        if self.mean is not None and self.std is not None:
            x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.layout == "NCHW":
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        return x.astype(self.dtype, copy=False)

    def matches(self, name: str, dtype: np.dtype[Any], shape: tuple[int, ...]) -> str | None:
        """None when a model input of ``name``, ``dtype`` and ``shape`` is what this declares;
        else what differs, in words."""
        want = self.input_shape
        if (
            name != self.input
            or np.dtype(dtype) != np.dtype(self.dtype)
            or len(shape) != len(want)
            or any(s not in (w, -1) for s, w in zip(shape[1:], want[1:], strict=True))
        ):
            shown = ", ".join(str(d) for d in want)
            return (
                f"preprocessing declares input '{self.input}' {self.dtype} [{shown}], the model "
                f"takes '{name}' {np.dtype(dtype)} [{', '.join(str(d) for d in shape)}]"
            )
        return None

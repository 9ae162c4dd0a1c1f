"""A request's tensors checked against the model's input spec, before any work is done on them.

Every decoder (TF Serving JSON, KServe V2 JSON and binary, gRPC ``TensorProto``) calls
:func:`check_declared` with what a request *declares* for an input (name, dtype, shape) before it
converts or allocates anything, so refusing a request costs what its bytes on the wire cost, never
what its claimed shape would. :func:`validate_inputs` applies the same checks to decoded arrays
(the last gate, whatever the transport) plus what only the whole request shows: missing inputs and
batch sizes that disagree. Shape arithmetic uses Python integers, so it cannot overflow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.errors import InvalidArgument, shown, shown_list
from serving.runtimes.base import TensorSpec


@dataclass(frozen=True)
class InputLimits:
    """What one request may carry, on top of matching the model's spec."""

    #: rows per request (the batch dimension of every input).
    max_batch: int = 1024
    #: bytes one decoded input may take; bounds inputs whose non-batch dimensions are dynamic,
    #: and tensors a request describes without sending them (gRPC's fill-with-last-value rule).
    max_tensor_bytes: int = 64 * 1024 * 1024
    #: pixels (width x height) an encoded image may declare; 0 = derived from the model's input
    #: size (see ``serving.images.pixel_limit``).
    max_image_pixels: int = 0
    #: pixels all encoded images of one request may declare together; 0 = derived from the
    #: per-image limit (see ``serving.images.request_pixel_limit``).
    max_request_image_pixels: int = 0


#: The limits a decoder applies when its caller names none.
DEFAULT_LIMITS = InputLimits()


def check_rows(name: str, rows: int, limits: InputLimits) -> None:
    """The batch limit: InvalidArgument when an input carries more rows than one request may."""
    if rows > limits.max_batch:
        raise InvalidArgument(
            f"input '{name}' has a batch of {rows} rows; the limit is {limits.max_batch} per request"
        )


def describe_shape(shape: Sequence[int]) -> str:
    """``[1, 28, 28, 1]`` for error messages."""
    return "[" + ", ".join(str(dim) for dim in shape) + "]"


def _dtype_matches(spec: TensorSpec, dtype: np.dtype[Any]) -> bool:
    # A string input takes object arrays of bytes, or fixed-width byte strings.
    return dtype == spec.dtype or (spec.dtype == np.object_ and dtype.kind in "OS")


def check_declared(
    specs: Mapping[str, TensorSpec],
    name: str,
    dtype: np.dtype[Any],
    shape: Sequence[int],
    limits: InputLimits,
) -> TensorSpec:
    """The spec of input ``name`` once its declared dtype and shape are acceptable.

    Raises InvalidArgument naming what was expected and what was received: an unknown input, a
    dtype or shape that differs from the model's, an empty or too large batch, or a tensor that
    would take more than ``limits.max_tensor_bytes``.
    """
    spec = specs.get(name)
    if spec is None:
        raise InvalidArgument(f"unknown input {shown(name)}; model inputs: {', '.join(specs)}")
    if dtype != spec.dtype and not _dtype_matches(spec, dtype):
        raise InvalidArgument(f"input '{name}' expects dtype {spec.dtype}, received {dtype}")
    rows = shape[0] if shape else 1
    if rows == 0:
        raise InvalidArgument(f"input '{name}' has an empty batch (0 rows)")
    want = spec.shape
    if len(shape) != len(want) or any(w >= 0 and g != w for w, g in zip(want, shape, strict=False)):
        raise InvalidArgument(
            f"input '{name}' expects shape {spec.describe_shape()}, received {describe_shape(shape)}"
        )
    check_rows(name, rows, limits)
    size = math.prod(shape) * (dtype.itemsize or 1)  # Python ints: no overflow
    if size > limits.max_tensor_bytes:
        raise InvalidArgument(
            f"input '{name}' of shape {describe_shape(shape)} would take {size} bytes; the limit "
            f"is {limits.max_tensor_bytes} bytes per input"
        )
    return spec


def validate_inputs(
    inputs: Mapping[str, np.ndarray],
    specs: list[TensorSpec],
    limits: InputLimits,
    *,
    declared: bool = False,
) -> None:
    """Names, dtypes, shapes and batch sizes of decoded arrays against the model's spec.

    ``declared``: the decoder already passed every input through :func:`check_declared` (gRPC,
    KServe V2), so only what the whole request shows is left: missing inputs, batch agreement.
    """
    if not declared:
        by_name = {spec.name: spec for spec in specs}
        unknown = sorted(set(inputs) - set(by_name))
        if unknown:
            raise InvalidArgument(
                f"unknown input {shown_list(unknown)}; model inputs: {', '.join(by_name)}"
            )
    batch: int | None = None
    for spec in specs:
        array = inputs.get(spec.name)
        if array is None:
            raise InvalidArgument(
                f"missing input '{spec.name}' ({spec.dtype} {spec.describe_shape()})"
            )
        if not declared:
            check_declared(by_name, spec.name, array.dtype, array.shape, limits)
        rows = array.shape[0] if array.shape else 1
        if batch is not None and rows != batch:
            raise InvalidArgument(f"inputs disagree on the batch size ({batch} vs {rows})")
        batch = rows

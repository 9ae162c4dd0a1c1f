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


#: Dimensions an error message quotes from a client's shape: the first ones, then the count. A
#: shape is a request's own data (a V2 shape of 1,000,000 ones is 3 MB of JSON) and must never be
#: echoed whole (gRPC drops a status message over its metadata limit).
SHOWN_DIMENSIONS = 8

#: The most significant digits an integer read from a header, a path or a query may have: more
#: than any limit needs (int64 has 19), far below Python's int-conversion limit (4,300 digits,
#: ValueError beyond it, quadratic time below it).
MAX_INT_DIGITS = 19


def describe_shape(shape: Sequence[int]) -> str:
    """``[1, 28, 28, 1]`` for error messages; a long shape (a client's) is cut to its first
    ``SHOWN_DIMENSIONS`` dimensions and their count: ``[1, 1, ..., 1, ... (1000000 dimensions)]``."""
    if len(shape) <= SHOWN_DIMENSIONS:
        return "[" + ", ".join(str(dim) for dim in shape) + "]"
    head = ", ".join(str(dim)[:24] for dim in shape[:SHOWN_DIMENSIONS])
    return f"[{head}, ... ({len(shape)} dimensions)]"


def parse_count(text: str, what: str, max_digits: int = MAX_INT_DIGITS) -> int:
    """A non-negative decimal integer from a client's header, path or query: ASCII digits only
    (leading zeros allowed, as HTTP allows them), at most ``max_digits`` significant ones, checked
    before any conversion. InvalidArgument otherwise, quoting at most 40 characters."""
    digits = text.lstrip("0")
    if not (text and text.isascii() and text.isdigit()):
        raise InvalidArgument(f"{what} {text[:40]!r} is not a non-negative integer")
    if len(digits) > max_digits:
        raise InvalidArgument(
            f"{what} of {len(digits)} digits is out of range (at most {max_digits} digits)"
        )
    return int(digits or "0")


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

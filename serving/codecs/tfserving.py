"""TF Serving REST JSON: ``instances`` (row) and ``inputs`` (columnar) requests, ``{"b64": ...}``.

Responses follow TF Serving: row requests get ``{"predictions": ...}`` (a list per instance, or a
list of ``{output: value}`` objects for several outputs), columnar ones ``{"outputs": ...}``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import gc
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from clients.wire import DEFAULT_SIGNATURE
from serving.codecs import regular_json
from serving.errors import InvalidArgument, shown_list
from serving.images import (
    ImageSpec,
    PixelBudget,
    decode_image,
    looks_like_image,
    pixel_limit,
    request_pixel_limit,
)
from serving.runtimes.base import TensorSpec
from serving.validation import DEFAULT_LIMITS, InputLimits, check_rows


@dataclass
class PredictRequest:
    """A decoded ``:predict`` body."""

    inputs: dict[str, np.ndarray]
    row_format: bool
    signature_name: str


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Hold off Python's cyclic garbage collector while a JSON body is parsed and converted.

    A 28x28x1 image in TF Serving's row format parses into some 800 nested lists, all alive until
    numpy has copied them: enough allocations to trigger a collection on nearly every request, and
    each collection that reaches the older generations walks the whole server heap
    (benchmarks/RESULTS.md, "Gateway speed, 2026-11-27, morning", item 1). The lists hold no
    cycles, so reference counting frees them; pausing costs nothing.
    """
    if not gc.isenabled():  # already paused by an enclosing caller
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def loads(body: bytes) -> Any:
    """Parse JSON; a syntax error becomes InvalidArgument naming where it is."""
    if not body:
        raise InvalidArgument("request body is empty; expected a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"malformed JSON: {exc}") from None


def has_b64(body: bytes) -> bool:
    """Whether a body may hold ``{"b64": ...}`` values, whose decoding (base64, images) is heavy
    enough to belong off the event loop. Cheap and conservative: any JSON escape counts too, as
    the key may be spelled with escapes (``"\\u0062\\u0036\\u0034"``); numbers need none."""
    return b'"b64"' in body or b"\\u" in body


def _b64(
    value: dict[str, Any], spec: TensorSpec, limits: InputLimits, budget: PixelBudget
) -> np.ndarray:
    """One ``{"b64": ...}`` element: bytes for string inputs, image or raw bytes for numeric ones."""
    encoded = value.get("b64")
    if not isinstance(encoded, str) or len(value) != 1:
        raise InvalidArgument(f'input \'{spec.name}\': a b64 object must be {{"b64": "<base64>"}}')
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"input '{spec.name}': invalid base64 in b64 value") from None
    if spec.dtype == np.object_:
        return np.array(data, dtype=object)
    element_shape = spec.shape[1:]
    # A numeric input: accept an encoded image (decoded per the input shape) or raw tensor bytes.
    fixed = all(dim > 0 for dim in element_shape)
    if looks_like_image(data) and fixed and len(element_shape) == 3 and spec.dtype == np.uint8:
        image = ImageSpec(*element_shape)
        request_limit = request_pixel_limit(
            image, limits.max_image_pixels, limits.max_request_image_pixels
        )
        return decode_image(
            data, image, pixel_limit(image, limits.max_image_pixels), budget, request_limit
        )
    if fixed:
        expected = int(np.prod(element_shape)) * spec.dtype.itemsize
        if len(data) == expected:
            return np.frombuffer(data, dtype=spec.dtype).reshape(element_shape)
        raise InvalidArgument(
            f"input '{spec.name}': b64 value has {len(data)} bytes; expected a PNG/JPEG image or "
            f"{expected} raw bytes ({spec.dtype} {spec.describe_shape()} per instance)"
        )
    raise InvalidArgument(f"input '{spec.name}': b64 values need a fixed per-instance shape")


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and "b64" in value


def to_array(
    value: Any,
    spec: TensorSpec,
    batch: bool,
    limits: InputLimits = DEFAULT_LIMITS,
    budget: PixelBudget | None = None,
) -> np.ndarray:
    """A JSON value -> ndarray of the spec's dtype (integers stay integers; no silent rounding).

    ``budget``: the pixels the request's images have declared so far, shared by every call for
    one request (a new one when None)."""
    if batch and isinstance(value, list):
        check_rows(spec.name, len(value), limits)
    budget = PixelBudget() if budget is None else budget
    if _is_b64(value):
        array = _b64(value, spec, limits, budget)
        return array[None] if batch else array
    if isinstance(value, list) and value and _is_b64(value[0]):
        try:
            return np.stack([_b64(item, spec, limits, budget) for item in value])
        except ValueError as exc:
            raise InvalidArgument(
                f"input '{spec.name}': b64 values differ in shape: {exc}"
            ) from None
    if isinstance(value, dict):
        raise InvalidArgument(f"input '{spec.name}': expected a list of numbers, got an object")
    depth, level = 0, value
    while isinstance(level, list) and level:
        depth, level = depth + 1, level[0]
    rank = len(spec.shape) if batch else len(spec.shape) - 1
    if depth > rank:  # numpy would refuse beyond 64 dimensions with a misleading message
        raise InvalidArgument(
            f"input '{spec.name}' expects shape {spec.describe_shape()}, received lists nested "
            f"{depth} deep"
        )
    if batch:
        regular = _regular_batch(value, spec.shape[1:])
        if regular is not None:
            return cast(exact_uint64(value, regular, spec.dtype), spec)
    try:
        array = np.asarray(value)
    except ValueError:
        raise InvalidArgument(
            f"input '{spec.name}': ragged nested lists (rows of different lengths)"
        ) from None
    return cast(exact_uint64(value, array, spec.dtype), spec)


def exact_uint64(value: Any, array: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    """``array`` (numpy's reading of the JSON ``value``), or for a uint64 input the integers
    exactly: numpy reads a mix of integers below 2**63 and at or above it as float64, which would
    round them (and then be refused as floats). Anything else is returned as it is, for ``cast``
    to judge."""
    if dtype != np.uint64 or array.dtype.kind != "f":
        return array
    objects = np.asarray(value, dtype=object)
    if not all(type(item) is int for item in objects.flat):  # a real float, or a bool
        return array
    try:
        return objects.astype(np.uint64)
    except OverflowError:  # negative, or 2**64 and above
        return array


def _regular_batch(value: Any, element_shape: tuple[int, ...]) -> np.ndarray | None:
    """Nested lists of exactly ``[n, *element_shape]`` numbers as an array, else None.

    ``np.asarray`` spends most of its time discovering the shape of deeply nested lists (an image
    in row format is 1 + 28 + 784 lists, the innermost of one pixel each). When the model's
    per-instance shape is fixed, checking every level's lengths against it and converting the
    flattened numbers is faster (benchmarks/RESULTS.md, "Gateway speed, 2026-11-27, morning",
    item 2). Anything else (ragged rows, strings, objects, numbers at the wrong depth) returns
    None, and the caller's exact ``np.asarray`` path reports it.
    """
    if not isinstance(value, list) or not value or not all(size > 0 for size in element_shape):
        return None
    level: list[Any] = value
    try:
        for size in element_shape:
            if set(map(len, level)) != {size}:
                return None
            level = list(itertools.chain.from_iterable(level))
        flat = np.array(level)
    except (TypeError, ValueError):  # a number where a list should be, or lists at the leaves
        return None
    if flat.ndim != 1 or flat.dtype.kind not in "biuf":  # lists or strings at the leaves
        return None
    return flat.reshape(len(value), *element_shape)


def cast(array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Convert JSON-typed numbers to the input dtype, refusing lossy conversions."""
    if array.dtype == spec.dtype:
        return array
    if array.size == 0:  # "[]" parses as float64; an empty batch is reported by validation
        return array.astype(spec.dtype)
    if array.dtype.kind == "O" or array.dtype.kind in "US":
        raise InvalidArgument(
            f"input '{spec.name}' expects {spec.dtype} numbers, got {_kind_name(array)} values"
        )
    if array.dtype.kind == "b" and spec.dtype.kind != "b":
        raise InvalidArgument(
            f"input '{spec.name}' expects {spec.dtype} numbers, got true/false values"
        )
    if spec.dtype.kind in "iu":
        if array.dtype.kind not in "iu":
            raise InvalidArgument(
                f"input '{spec.name}' expects {spec.dtype}, got {_kind_name(array)} values"
                + (" (numbers with a fraction or an exponent, or integers beyond 64 bits)"
                   if array.dtype.kind == "f" else "")
            )  # fmt: skip
        info = _int_info(spec.dtype)
        if spec.dtype.kind == "u" and array.dtype == np.int64 and info.max < 2**63:
            # One pass instead of a min and a max: read as uint64, a negative number is huge
            # (larger than any unsigned type's maximum but uint64's).
            out_of_range = bool(array.view(np.uint64).max() > info.max)
        else:
            out_of_range = bool(array.min() < info.min or array.max() > info.max)
        if out_of_range:
            raise InvalidArgument(
                f"input '{spec.name}' expects {spec.dtype} in [{info.min}, {info.max}], got values "
                f"in [{array.min()}, {array.max()}]"
            )
    elif spec.dtype.kind == "b" and array.dtype.kind != "b":
        raise InvalidArgument(f"input '{spec.name}' expects bool, got {_kind_name(array)} values")
    elif spec.dtype.kind == "f":
        return float_within_range(array, spec.dtype, f"input '{spec.name}'")
    return array.astype(spec.dtype)


def float_within_range(array: np.ndarray, dtype: np.dtype[Any], what: str) -> np.ndarray:
    """``array`` as the float ``dtype``, refusing numbers beyond its range: JSON has no infinity,
    so an infinity after the conversion is a finite number that overflowed (1e300 in float32)."""
    with np.errstate(over="ignore"):
        out = array.astype(dtype)
    if dtype.itemsize < 8 and out.size and np.isinf(out).any():
        limit = float(np.finfo(dtype).max)
        raise InvalidArgument(
            f"{what} expects {dtype} numbers within +-{limit:.4g}, got larger ones"
        )
    return out


@functools.lru_cache(maxsize=16)
def _int_info(dtype: np.dtype) -> np.iinfo:
    return np.iinfo(dtype)


def _kind_name(array: np.ndarray) -> str:
    return {"f": "float", "i": "integer", "u": "integer", "b": "bool", "O": "non-numeric", "U": "string", "S": "string"}.get(
        array.dtype.kind, str(array.dtype)
    )  # fmt: skip


def contains_bool(value: Any) -> bool:
    """Whether a JSON value holds true/false anywhere (iterative: nesting can be 1,024 deep)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is bool:
            return True
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict) and not _is_b64(item):
            stack.extend(item.values())
    return False


def decode_predict(
    body: bytes, specs: list[TensorSpec], limits: InputLimits | None = None
) -> PredictRequest:
    """Decode a ``:predict`` body into batch-major arrays keyed by input name.

    Nothing is converted before the batch limit is checked on the JSON itself; JSON true/false
    are numbers only for bool inputs (numpy would silently read them as 0 and 1).
    """
    limits = limits or DEFAULT_LIMITS
    return decode_simple_predict(body, specs, limits) or decode_general_predict(body, specs, limits)


def decode_simple_predict(
    body: bytes, specs: list[TensorSpec], limits: InputLimits
) -> PredictRequest | None:
    """The common body, one regular numeric tensor, decoded without Python lists; None for any
    other body (``decode_general_predict`` then decodes it, and words every error)."""
    if len(specs) != 1:
        return None
    simple = regular_json.decode_single_tensor(body, specs[0])
    if simple is None:
        return None
    array, row_format, signature = simple
    check_rows(specs[0].name, len(array), limits)
    return PredictRequest(
        {specs[0].name: cast(array, specs[0])}, row_format, signature or DEFAULT_SIGNATURE
    )


def decode_general_predict(
    body: bytes, specs: list[TensorSpec], limits: InputLimits
) -> PredictRequest:
    """Any ``:predict`` body, through Python lists (with the collector paused: see gc_paused)."""
    with gc_paused():
        return _decode_general(body, specs, limits)


def _decode_general(body: bytes, specs: list[TensorSpec], limits: InputLimits) -> PredictRequest:
    payload = loads(body)
    if not isinstance(payload, dict):
        raise InvalidArgument("request body must be a JSON object with 'instances' or 'inputs'")
    signature = payload.get("signature_name", DEFAULT_SIGNATURE)
    if not isinstance(signature, str):
        raise InvalidArgument("'signature_name' must be a string")
    has_rows, has_columns = "instances" in payload, "inputs" in payload
    if has_rows and has_columns:
        raise InvalidArgument("request has both 'instances' and 'inputs'; send exactly one")
    if not has_rows and not has_columns:
        raise InvalidArgument(
            "request needs 'instances' (row format) or 'inputs' (columnar format)"
        )
    by_name = {spec.name: spec for spec in specs}
    values = payload["instances"] if has_rows else payload["inputs"]
    if (
        (b"true" in body or b"false" in body)
        and all(spec.dtype.kind != "b" for spec in specs)
        and contains_bool(values)
    ):
        raise InvalidArgument(
            f"model inputs take numbers ({', '.join(f'{s.name}: {s.dtype}' for s in specs)}); "
            "JSON true/false are not numbers"
        )
    budget = PixelBudget()
    if has_rows:
        inputs = _decode_rows(values, specs, by_name, limits, budget)
    else:
        inputs = _decode_columns(values, specs, by_name, limits, budget)
    return PredictRequest(inputs, has_rows, signature)


def _decode_rows(
    instances: Any,
    specs: list[TensorSpec],
    by_name: dict[str, TensorSpec],
    limits: InputLimits,
    budget: PixelBudget,
) -> dict[str, np.ndarray]:
    if not isinstance(instances, list):
        raise InvalidArgument("'instances' must be a list with one element per instance")
    if not instances:
        raise InvalidArgument("'instances' is empty; send at least one instance")
    check_rows(specs[0].name, len(instances), limits)
    named = isinstance(instances[0], dict) and not _is_b64(instances[0])
    if not named:
        if len(specs) != 1:
            names = ", ".join(by_name)
            raise InvalidArgument(
                f"model has several inputs ({names}): each instance must be an object"
            )
        spec = specs[0]
        # A list of values (or of b64 objects) is the batch itself.
        return {spec.name: to_array(instances, spec, batch=True, limits=limits, budget=budget)}
    columns: dict[str, list[Any]] = {}
    for index, instance in enumerate(instances):
        if not isinstance(instance, dict) or _is_b64(instance):
            raise InvalidArgument(f"instance {index} is not an object like instance 0")
        for name, value in instance.items():
            columns.setdefault(name, []).append(value)
    _check_names(columns, by_name)
    inputs = {}
    for name, values in columns.items():
        if len(values) != len(instances):
            raise InvalidArgument(f"input '{name}' is missing from some instances")
        spec = by_name[name]
        try:
            inputs[name] = np.stack(
                [to_array(value, spec, False, limits, budget) for value in values]
            )
        except ValueError:
            raise InvalidArgument(f"input '{name}': instances differ in shape") from None
    return inputs


def _decode_columns(
    columns: Any,
    specs: list[TensorSpec],
    by_name: dict[str, TensorSpec],
    limits: InputLimits,
    budget: PixelBudget,
) -> dict[str, np.ndarray]:
    if isinstance(columns, dict) and not _is_b64(columns):
        _check_names(columns, by_name)
        return {
            name: to_array(value, by_name[name], batch=True, limits=limits, budget=budget)
            for name, value in columns.items()
        }
    if len(specs) != 1:
        names = ", ".join(by_name)
        raise InvalidArgument(f"model has several inputs ({names}): 'inputs' must be an object")
    return {specs[0].name: to_array(columns, specs[0], batch=True, limits=limits, budget=budget)}


def _check_names(given: dict[str, Any], by_name: dict[str, TensorSpec]) -> None:
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        raise InvalidArgument(
            f"unknown input {shown_list(unknown)}; model inputs: {', '.join(by_name)}"
        )


def encode_predict(outputs: dict[str, np.ndarray], row_format: bool) -> bytes:
    """TF Serving's response JSON for ``outputs`` (batch-major arrays)."""
    outputs = {name: _jsonable(array) for name, array in outputs.items()}
    if row_format:
        if len(outputs) == 1:
            body: Any = {"predictions": next(iter(outputs.values()))}
        else:
            count = len(next(iter(outputs.values())))
            body = {"predictions": [{n: a[i] for n, a in outputs.items()} for i in range(count)]}
    elif len(outputs) == 1:
        body = {"outputs": next(iter(outputs.values()))}
    else:
        body = {"outputs": outputs}
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def _jsonable(array: np.ndarray) -> Any:
    if array.dtype.kind == "O":  # bytes tensors travel as b64 objects, as in TF Serving
        return np.frompyfunc(lambda b: {"b64": base64.b64encode(b).decode()}, 1, 1)(array).tolist()
    if array.dtype == np.float16:
        array = array.astype(np.float32)
    return np.ascontiguousarray(array)


def error_body(message: str, request_id: str | None = None) -> bytes:
    """TF Serving's error JSON, ``{"error": message}``, with the request's ``id`` when known."""
    if request_id is None:
        return orjson.dumps({"error": message})
    return orjson.dumps({"error": message, "id": request_id})

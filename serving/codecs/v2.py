"""KServe V2 (Open Inference Protocol) JSON, with the binary tensor data extension.

Binary extension: the body is the JSON header followed by raw tensor bytes; the header's length is
in the ``Inference-Header-Content-Length`` HTTP header, and each binary input says how many bytes it
takes with ``parameters.binary_data_size``. The framing itself (header name, tensor bytes, BYTES
elements) has one home, the client's ``clients/v2.py``; this module adds what a server needs on
top: every declared field checked before anything is converted, and errors that name the input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from clients import v2 as v2_wire
from clients.codec import numpy_dtype_from_v2, v2_datatype
from serving.codecs.tfserving import (
    contains_bool,
    exact_uint64,
    float_within_range,
    gc_paused,
    loads,
)
from serving.errors import InvalidArgument, shown
from serving.runtimes.base import TensorSpec
from serving.validation import (
    DEFAULT_LIMITS,
    InputLimits,
    check_declared,
    describe_shape,
    parse_count,
)

#: the header's name as ASGI delivers it (lower-case)
HEADER_LENGTH = v2_wire.HEADER_LENGTH.lower()


@dataclass
class InferRequest:
    """A decoded V2 infer request."""

    inputs: dict[str, np.ndarray]
    request_id: str | None = None
    #: output names asked for (None = all) and whether each goes back as binary.
    outputs: list[str] | None = None
    binary_outputs: set[str] = field(default_factory=set)
    binary_default: bool = False


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    # Digits bounded before the conversion (Python refuses over 4,300 with a ValueError).
    length = parse_count(header_length.strip(), "Inference-Header-Content-Length")
    if length > len(body):
        raise InvalidArgument(
            f"Inference-Header-Content-Length {length} does not fit a body of {len(body)} bytes"
        )
    return body[:length], body[length:]


def _decode_bytes_elements(data: bytes, count: int, name: str) -> np.ndarray:
    try:
        return v2_wire.bytes_elements(data, count)
    except ValueError as exc:
        raise InvalidArgument(f"input {shown(name)}: {exc}") from None


def _object(value: Any, where: str) -> dict[str, Any]:
    """An optional JSON object (``parameters``): ``{}`` when absent, 400 when not an object."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where} must be an object, got {type(value).__name__}")
    return value


def _flag(parameters: dict[str, Any], key: str, where: str, default: bool) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise InvalidArgument(f"{where}.{key} must be true or false")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


#: Triton's parameters for features this gateway does not provide: refused, never ignored.
_UNSUPPORTED_PARAMETERS = {
    "shared_memory_region": "shared-memory inputs and outputs are not supported",
    "shared_memory_byte_size": "shared-memory inputs and outputs are not supported",
    "shared_memory_offset": "shared-memory inputs and outputs are not supported",
    "classification": "the classification extension is not supported",
}


def _refuse_unsupported(parameters: dict[str, Any], where: str) -> None:
    for key, reason in _UNSUPPORTED_PARAMETERS.items():
        if key in parameters:
            raise InvalidArgument(f"{where}.{key}: {reason}")


def decode_infer(
    body: bytes,
    header_length: str | None = None,
    specs: list[TensorSpec] | None = None,
    limits: InputLimits | None = None,
) -> InferRequest:
    """Decode a ``/v2/models/{m}/infer`` body (JSON, or JSON + binary tensors).

    With the model's ``specs``, each input's declared name, datatype and shape are checked
    against them (and ``limits``) before its data is read, so a request that claims a shape it
    does not carry is refused without allocating it. Parameters follow Triton: known ones must
    have their types, binary data excludes ``data``, shared memory and classification are refused.
    """
    with gc_paused():  # JSON "data" lists: see gc_paused
        return _decode_infer(body, header_length, specs, limits or DEFAULT_LIMITS)


def _decode_infer(
    body: bytes, header_length: str | None, specs: list[TensorSpec] | None, limits: InputLimits
) -> InferRequest:
    header, binary = _split_body(body, header_length)
    payload = loads(header)
    if not isinstance(payload, dict):
        raise InvalidArgument("V2 infer body must be a JSON object with 'inputs'")
    request_id = payload.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidArgument("'id' must be a string")
    request_params = _object(payload.get("parameters"), "parameters")
    _refuse_unsupported(request_params, "parameters")
    binary_default = _flag(request_params, "binary_data_output", "parameters", False)
    raw_inputs = payload.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidArgument("V2 infer request needs a non-empty 'inputs' list")
    by_name = {spec.name: spec for spec in specs} if specs is not None else None
    may_hold_bools = b"true" in header or b"false" in header
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for index, item in enumerate(raw_inputs):
        if not isinstance(item, dict):
            raise InvalidArgument(f"inputs[{index}] must be an object")
        name, shape, datatype = item.get("name"), item.get("shape"), item.get("datatype")
        if not isinstance(name, str) or not name:
            raise InvalidArgument(f"inputs[{index}] needs a 'name'")
        if name in inputs:
            raise InvalidArgument(f"input {shown(name)} appears twice")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise InvalidArgument(
                f"input {shown(name)}: 'shape' must be a list of non-negative integers"
            )
        if not isinstance(datatype, str):
            raise InvalidArgument(f"input {shown(name)} needs a 'datatype' such as UINT8 or FP32")
        try:
            dtype = numpy_dtype_from_v2(datatype)
        except TypeError:
            raise InvalidArgument(
                f"input {shown(name)}: unknown datatype {datatype[:40]!r}"
            ) from None
        if by_name is not None:
            check_declared(by_name, name, dtype, shape, limits)
        count = math.prod(shape)
        parameters = _object(item.get("parameters"), f"input {shown(name)}: parameters")
        _refuse_unsupported(parameters, f"input {shown(name)}: parameters")
        binary_size = parameters.get("binary_data_size")
        if binary_size is not None:
            if item.get("data") is not None:
                raise InvalidArgument(
                    f"input {shown(name)} has both 'data' and parameters.binary_data_size; send one"
                )
            if not _is_int(binary_size) or binary_size < 0 or offset + binary_size > len(binary):
                raise InvalidArgument(
                    f"input {shown(name)}: binary_data_size {str(binary_size)[:40]} exceeds the "
                    f"{len(binary) - offset} binary bytes left in the body"
                )
            chunk = binary[offset : offset + binary_size]
            offset += binary_size
            if dtype == np.object_:
                array = _decode_bytes_elements(chunk, count, name).reshape(shape)
            else:
                expected = count * dtype.itemsize
                if len(chunk) != expected:
                    raise InvalidArgument(
                        f"input {shown(name)}: {len(chunk)} binary bytes, but {datatype} "
                        f"{describe_shape(shape)} needs {expected}"
                    )
                array = np.frombuffer(chunk, dtype=dtype.newbyteorder("<")).reshape(shape)
        else:
            if item.get("data") is None:
                raise InvalidArgument(
                    f"input {shown(name)} has neither 'data' nor binary_data_size"
                )
            array = _json_data(item["data"], dtype, shape, name, datatype, may_hold_bools)
        inputs[name] = array
    if offset != len(binary):
        raise InvalidArgument(f"{len(binary) - offset} binary bytes after the last binary input")
    outputs, binary_outputs = None, set()
    raw_outputs = payload.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise InvalidArgument("'outputs' must be a list of {\"name\": ...} objects")
        outputs = []
        for index, item in enumerate(raw_outputs):
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise InvalidArgument(f"outputs[{index}] needs a 'name'")
            where = f"outputs[{index}].parameters"
            params = _object(item.get("parameters"), where)
            _refuse_unsupported(params, where)
            outputs.append(item["name"])
            if _flag(params, "binary_data", where, binary_default):
                binary_outputs.add(item["name"])
    return InferRequest(inputs, request_id, outputs, binary_outputs, binary_default)


def _json_data(
    data: Any,
    dtype: np.dtype[Any],
    shape: list[int],
    name: str,
    datatype: str,
    may_hold_bools: bool,
) -> np.ndarray:
    if not isinstance(data, list):
        raise InvalidArgument(f"input {shown(name)}: 'data' must be a list")
    if dtype == np.object_:
        flat = np.asarray(data, dtype=object).ravel()
        if not all(isinstance(v, str) for v in flat):
            raise InvalidArgument(f"input {shown(name)}: BYTES 'data' must hold strings")
        values = np.empty(flat.size, dtype=object)
        values[:] = [v.encode() for v in flat]
        array = values
    else:
        if dtype.kind != "b" and may_hold_bools and contains_bool(data):
            raise InvalidArgument(
                f"input {shown(name)} is {datatype}: 'data' must hold numbers, not true/false"
            )
        try:
            array = exact_uint64(data, np.asarray(data), dtype)
        except ValueError:
            raise InvalidArgument(f"input {shown(name)}: ragged 'data'") from None
        if dtype.kind == "b":
            if array.size and array.dtype.kind != "b":
                raise InvalidArgument(f"input {shown(name)} is BOOL: 'data' must hold true/false")
        elif array.dtype.kind not in "iuf":
            raise InvalidArgument(f"input {shown(name)}: 'data' must hold numbers for {datatype}")
        if dtype.kind in "iu" and array.dtype.kind == "f":
            raise InvalidArgument(f"input {shown(name)} is {datatype} but 'data' holds floats")
        if dtype.kind in "iu" and array.size:
            info = np.iinfo(dtype)
            if array.min() < info.min or array.max() > info.max:
                raise InvalidArgument(
                    f"input {shown(name)}: values out of range for {datatype} [{info.min}, {info.max}]"
                )
        if dtype.kind == "f":
            array = float_within_range(array, dtype, f"input {shown(name)} ({datatype})").ravel()
        else:
            array = array.astype(dtype).ravel()
    count = math.prod(shape)
    if array.size != count:
        raise InvalidArgument(
            f"input {shown(name)}: 'data' has {array.size} elements, shape "
            f"{describe_shape(shape)} needs {count}"
        )
    return array.reshape(shape)


def encode_infer(
    model: str, version: int, outputs: dict[str, np.ndarray], request: InferRequest
) -> tuple[bytes, int | None]:
    """Response body, and the JSON header length when binary outputs follow it."""
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, array in outputs.items():
        entry: dict[str, Any] = {
            "name": name,
            "datatype": v2_datatype(array.dtype),
            "shape": list(array.shape),
        }
        if name in request.binary_outputs or (request.outputs is None and request.binary_default):
            raw = v2_wire.tensor_to_bytes(array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif array.dtype == np.object_:
            entry["data"] = [b.decode("utf-8", "replace") for b in array.ravel()]
        else:
            entry["data"] = np.ascontiguousarray(
                array.astype(np.float32) if array.dtype == np.float16 else array
            ).ravel()
        entries.append(entry)
    body: dict[str, Any] = {"model_name": model, "model_version": str(version), "outputs": entries}
    if request.request_id is not None:
        body["id"] = request.request_id
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)

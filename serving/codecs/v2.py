"""KServe V2 (Open Inference Protocol) JSON, with the binary tensor data extension.

Binary extension: the body is the JSON header followed by raw tensor bytes; the header's length is
in the ``Inference-Header-Content-Length`` HTTP header, and each binary input says how many bytes it
takes with ``parameters.binary_data_size``. Numeric tensors are raw little-endian row-major bytes;
BYTES tensors are 4-byte little-endian length-prefixed elements.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from clients.codec import numpy_dtype_from_v2, v2_datatype
from serving.codecs.tfserving import gc_paused, loads
from serving.errors import InvalidArgument

HEADER_LENGTH = "inference-header-content-length"


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
    try:
        length = int(header_length)
    except ValueError:
        raise InvalidArgument(
            f"Inference-Header-Content-Length {header_length!r} is not a number"
        ) from None
    if length < 0 or length > len(body):
        raise InvalidArgument(
            f"Inference-Header-Content-Length {length} does not fit a body of {len(body)} bytes"
        )
    return body[:length], body[length:]


def _decode_bytes_elements(data: bytes, count: int, name: str) -> np.ndarray:
    elements: list[bytes] = []
    offset = 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise InvalidArgument(f"input '{name}': truncated BYTES element length")
        (size,) = struct.unpack_from("<I", data, offset)
        offset += 4
        elements.append(data[offset : offset + size])
        offset += size
    if offset != len(data) or len(elements) != count:
        raise InvalidArgument(
            f"input '{name}': BYTES data holds {len(elements)} elements, shape needs {count}"
        )
    array = np.empty(count, dtype=object)
    array[:] = elements
    return array


def decode_infer(body: bytes, header_length: str | None = None) -> InferRequest:
    """Decode a ``/v2/models/{m}/infer`` body (JSON, or JSON + binary tensors)."""
    with gc_paused():  # JSON "data" lists: see gc_paused
        return _decode_infer(body, header_length)


def _decode_infer(body: bytes, header_length: str | None) -> InferRequest:
    header, binary = _split_body(body, header_length)
    payload = loads(header)
    if not isinstance(payload, dict):
        raise InvalidArgument("V2 infer body must be a JSON object with 'inputs'")
    raw_inputs = payload.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidArgument("V2 infer request needs a non-empty 'inputs' list")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for index, item in enumerate(raw_inputs):
        if not isinstance(item, dict):
            raise InvalidArgument(f"inputs[{index}] must be an object")
        name, shape, datatype = item.get("name"), item.get("shape"), item.get("datatype")
        if not isinstance(name, str) or not name:
            raise InvalidArgument(f"inputs[{index}] needs a 'name'")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise InvalidArgument(
                f"input '{name}': 'shape' must be a list of non-negative integers"
            )
        if not isinstance(datatype, str):
            raise InvalidArgument(f"input '{name}' needs a 'datatype' such as UINT8 or FP32")
        try:
            dtype = numpy_dtype_from_v2(datatype)
        except TypeError:
            raise InvalidArgument(f"input '{name}': unknown datatype {datatype!r}") from None
        if name in inputs:
            raise InvalidArgument(f"input '{name}' appears twice")
        count = int(np.prod(shape, dtype=np.int64))
        parameters = item.get("parameters") or {}
        binary_size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        if binary_size is not None:
            if (
                not isinstance(binary_size, int)
                or binary_size < 0
                or offset + binary_size > len(binary)
            ):
                raise InvalidArgument(
                    f"input '{name}': binary_data_size {binary_size} exceeds the {len(binary) - offset} "
                    "binary bytes left in the body"
                )
            chunk = binary[offset : offset + binary_size]
            offset += binary_size
            if dtype == np.object_:
                array = _decode_bytes_elements(chunk, count, name).reshape(shape)
            else:
                expected = count * dtype.itemsize
                if len(chunk) != expected:
                    raise InvalidArgument(
                        f"input '{name}': {len(chunk)} binary bytes, but {datatype} {shape} needs {expected}"
                    )
                array = np.frombuffer(chunk, dtype=dtype.newbyteorder("<")).reshape(shape)
        else:
            if "data" not in item:
                raise InvalidArgument(f"input '{name}' has neither 'data' nor binary_data_size")
            array = _json_data(item["data"], dtype, shape, name, datatype)
        inputs[name] = array
    if offset != len(binary):
        raise InvalidArgument(f"{len(binary) - offset} binary bytes after the last binary input")
    request_params = payload.get("parameters") or {}
    binary_default = (
        bool(request_params.get("binary_data_output", False))
        if isinstance(request_params, dict)
        else False
    )
    outputs, binary_outputs = None, set()
    raw_outputs = payload.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise InvalidArgument("'outputs' must be a list of {\"name\": ...} objects")
        outputs = []
        for item in raw_outputs:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise InvalidArgument("each entry of 'outputs' needs a 'name'")
            outputs.append(item["name"])
            params = item.get("parameters") or {}
            if params.get("binary_data", binary_default):
                binary_outputs.add(item["name"])
    request_id = payload.get("id")
    return InferRequest(
        inputs,
        str(request_id) if request_id is not None else None,
        outputs,
        binary_outputs,
        binary_default,
    )


def _json_data(
    data: Any, dtype: np.dtype[Any], shape: list[int], name: str, datatype: str
) -> np.ndarray:
    if dtype == np.object_:
        flat = np.asarray(data, dtype=object).ravel()
        values = np.empty(flat.size, dtype=object)
        values[:] = [v.encode() if isinstance(v, str) else v for v in flat]
        array = values
    else:
        try:
            array = np.asarray(data)
        except ValueError:
            raise InvalidArgument(f"input '{name}': ragged 'data'") from None
        if array.dtype.kind not in "iufb":
            raise InvalidArgument(f"input '{name}': 'data' must hold numbers for {datatype}")
        if dtype.kind in "iu" and array.dtype.kind == "f":
            raise InvalidArgument(f"input '{name}' is {datatype} but 'data' holds floats")
        if dtype.kind in "iu" and array.size:
            info = np.iinfo(dtype)
            if array.min() < info.min or array.max() > info.max:
                raise InvalidArgument(f"input '{name}': values out of range for {datatype}")
        array = array.astype(dtype).ravel()
    count = int(np.prod(shape, dtype=np.int64))
    if array.size != count:
        raise InvalidArgument(
            f"input '{name}': 'data' has {array.size} elements, shape {shape} needs {count}"
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
            raw = _binary(array)
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


def _binary(array: np.ndarray) -> bytes:
    if array.dtype == np.object_:
        return b"".join(struct.pack("<I", len(b)) + b for b in array.ravel())
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def error_body(message: str) -> bytes:
    """KServe V2 error JSON."""
    return orjson.dumps({"error": message})

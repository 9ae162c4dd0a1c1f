"""KServe V2 (Open Inference Protocol) JSON bodies with the binary tensor extension.

A binary body is a JSON header followed by the raw tensor bytes, in header order; the HTTP header
``Inference-Header-Content-Length`` gives the JSON length. A tensor sent as binary has
``"parameters": {"binary_data_size": N}`` and no ``"data"``. Numeric tensors are row-major
little-endian; a BYTES tensor is each element prefixed by its 4-byte little-endian length.

Public API (used by the client, the gateway and the benchmarks alike):

- ``HEADER_LENGTH`` = ``"Inference-Header-Content-Length"``; ``JSON_CONTENT_TYPE``,
  ``BINARY_CONTENT_TYPE`` (``application/octet-stream``).
- ``tensor_to_bytes(array) -> bytes`` / ``tensor_from_bytes(raw, datatype, shape) -> ndarray``;
  ``bytes_elements(raw, count)``: a BYTES tensor's elements, exactly ``count`` of them.
- ``tensor_to_json(array) -> list`` (flat ``data``) / ``tensor_from_json(data, datatype, shape)``.
- ``encode_tensors(kind, tensors, *, binary=True, extra=None) -> (body, headers)``: ``kind`` is
  ``"inputs"`` (a request) or ``"outputs"`` (a response); ``extra`` adds header keys such as
  ``id``, ``model_name``, ``model_version``, ``parameters`` or (for a request) ``outputs`` asking
  for binary outputs, see ``binary_outputs_request(names)``.
- ``decode_tensors(kind, body, header_length=None) -> (tensors, header)``: accepts pure JSON
  (``header_length`` None) or binary bodies; returns ``{name: ndarray}`` and the JSON header.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from clients.codec import as_ndarray, numpy_dtype_from_v2, v2_datatype

HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_CONTENT_TYPE = "application/json"
BINARY_CONTENT_TYPE = "application/octet-stream"
_LENGTH = np.dtype("<u4")


def bytes_elements(raw: bytes | memoryview, count: int) -> np.ndarray[Any, Any]:
    """The elements of a BYTES tensor's binary data (each a 4-byte little-endian length, then
    that many bytes) as a flat object array; ValueError unless ``raw`` holds exactly ``count``
    whole elements."""
    data = bytes(raw)
    elements: list[bytes] = []
    offset = 0
    while offset < len(data):
        if offset + 4 > len(data) or len(elements) == count:
            break
        size = int.from_bytes(data[offset : offset + 4], "little")
        offset += 4
        if offset + size > len(data):
            raise ValueError(f"BYTES element {len(elements)} is truncated")
        elements.append(data[offset : offset + size])
        offset += size
    if offset != len(data) or len(elements) != count:
        raise ValueError(
            f"BYTES data holds {len(elements)} elements in {len(data)} bytes, shape needs {count}"
        )
    array = np.empty(count, dtype=object)
    array[:] = elements
    return array


def tensor_to_bytes(array: np.ndarray[Any, Any]) -> bytes:
    """Raw bytes of a tensor for the binary extension."""
    if v2_datatype(array.dtype) == "BYTES":
        parts: list[bytes] = []
        for element in as_ndarray(array).flat:
            parts.append(len(element).to_bytes(4, "little"))
            parts.append(element)
        return b"".join(parts)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array.tobytes()


def tensor_from_bytes(
    raw: bytes | memoryview, datatype: str, shape: list[int]
) -> np.ndarray[Any, Any]:
    """A tensor from its binary-extension bytes (numeric tensors without a copy, read-only)."""
    dtype = numpy_dtype_from_v2(datatype)
    if datatype.upper() == "BYTES":
        return bytes_elements(raw, math.prod(shape)).reshape(shape)
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(shape)


def tensor_to_json(array: np.ndarray[Any, Any]) -> list[Any]:
    """The flat, row-major ``data`` list of a tensor (BYTES as UTF-8 text)."""
    if v2_datatype(array.dtype) == "BYTES":
        return [element.decode("utf-8") for element in as_ndarray(array).flat]
    return array.ravel().tolist()  # type: ignore[no-any-return]


def tensor_from_json(data: Any, datatype: str, shape: list[int]) -> np.ndarray[Any, Any]:
    """A tensor from a ``data`` list (flat or nested) of the given datatype and shape."""
    if datatype.upper() == "BYTES":
        return as_ndarray(np.asarray(data, dtype=object)).reshape(shape)
    return np.asarray(data, dtype=numpy_dtype_from_v2(datatype)).reshape(shape)


def binary_outputs_request(names: list[str]) -> list[dict[str, Any]]:
    """The request's ``outputs`` list asking the server to answer these outputs in binary."""
    return [{"name": name, "parameters": {"binary_data": True}} for name in names]


def encode_tensors(
    kind: str,
    tensors: Mapping[str, Any],
    *,
    binary: bool = True,
    extra: Mapping[str, Any] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Encode tensors as a V2 request (``kind="inputs"``) or response (``kind="outputs"``) body."""
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, value in tensors.items():
        array = as_ndarray(value)
        entry: dict[str, Any] = {
            "name": name,
            "shape": list(array.shape),
            "datatype": v2_datatype(array.dtype),
        }
        if binary:
            blob = tensor_to_bytes(array)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = tensor_to_json(array)
        entries.append(entry)
    header = dict(extra or {})
    header[kind] = entries
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    if not binary:
        return header_bytes, {"Content-Type": JSON_CONTENT_TYPE}
    headers = {"Content-Type": BINARY_CONTENT_TYPE, HEADER_LENGTH: str(len(header_bytes))}
    return b"".join([header_bytes, *blobs]), headers


def decode_tensors(
    kind: str, body: bytes, header_length: int | None = None
) -> tuple[dict[str, np.ndarray[Any, Any]], dict[str, Any]]:
    """Decode a V2 body (JSON, or JSON header + binary tensors) into ``{name: ndarray}``."""
    view = memoryview(body)
    json_end = len(body) if header_length is None else header_length
    if json_end > len(body):
        raise ValueError(f"{HEADER_LENGTH} {json_end} exceeds body length {len(body)}")
    header = json.loads(bytes(view[:json_end]))
    if not isinstance(header, dict) or not isinstance(header.get(kind), list):
        raise ValueError(f"V2 body has no {kind!r} list")
    tensors: dict[str, np.ndarray[Any, Any]] = {}
    offset = json_end
    for entry in header[kind]:
        name, datatype, shape = entry["name"], entry["datatype"], entry["shape"]
        size = (entry.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if offset + size > len(body):
                raise ValueError(f"tensor {name!r} overruns the body")
            tensors[name] = tensor_from_bytes(view[offset : offset + size], datatype, shape)
            offset += size
        else:
            tensors[name] = tensor_from_json(entry["data"], datatype, shape)
    return tensors, header

"""KServe V2 over gRPC: a parsed ``ModelInferRequest`` <-> numpy, every declared field checked
before anything is converted.

The rules are the REST V2 codec's (``codecs/v2.py``) on protobuf's fields: at most as many inputs
as the model has, each named once with a known datatype and a shape that ``check_declared``
accepts (Python integers, so a product that would wrap int64 is refused, never allocated); a
tensor's bytes in ``raw_input_contents`` must be exactly shape x itemsize, typed ``contents`` must
hold exactly shape's product of values in the field of its datatype, in range, and nothing in
another field. Raw and typed contents are never mixed in one request, as Triton refuses them.
Unsupported extensions (shared memory, classification, sequences) are refused, never ignored.
Answers always carry ``raw_output_contents``, as Triton's gRPC frontend sends them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from clients import v2 as v2_wire
from clients.codec import numpy_dtype_from_v2, v2_datatype
from clients.v2_grpc import CONTENTS_FIELD, ModelInferResponse
from serving.errors import InvalidArgument, shown
from serving.runtimes.base import TensorSpec
from serving.validation import InputLimits, check_declared, describe_shape

#: Request parameters this gateway cannot honour: refused with the reason.
_UNSUPPORTED = {
    "shared_memory_region": "shared-memory inputs and outputs are not supported",
    "shared_memory_byte_size": "shared-memory inputs and outputs are not supported",
    "shared_memory_offset": "shared-memory inputs and outputs are not supported",
    "classification": "the classification extension is not supported",
    "sequence_id": "sequence batching is not supported (the models are stateless)",
    "sequence_start": "sequence batching is not supported (the models are stateless)",
    "sequence_end": "sequence batching is not supported (the models are stateless)",
}
#: Request parameters read (``timeout``: microseconds, Triton's) or harmless to ignore
#: (``priority``: every request has one queue here; ``binary_data_output``: answers are raw).
_KNOWN = {"timeout", "priority", "binary_data_output", "binary_data"}

_ALL_FIELDS = frozenset(CONTENTS_FIELD.values())


@dataclass
class GrpcInferRequest:
    """A decoded ``ModelInferRequest``: the arrays, the outputs asked for, the client's timeout."""

    inputs: dict[str, np.ndarray]
    outputs: list[str] | None
    timeout_s: float | None


def _check_parameters(parameters: Any, where: str) -> None:
    for key in parameters:
        reason = _UNSUPPORTED.get(key)
        if reason is not None:
            raise InvalidArgument(f"{where} {shown(key)}: {reason}")


def _timeout(parameters: Any) -> float | None:
    if "timeout" not in parameters:
        return None
    value = parameters["timeout"]
    if value.WhichOneof("parameter_choice") != "int64_param" or value.int64_param <= 0:
        raise InvalidArgument("parameter 'timeout' must be a positive int64 of microseconds")
    return value.int64_param / 1e6


def _typed(contents: Any, name: str, datatype: str, dtype: np.dtype[Any], count: int) -> np.ndarray:
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidArgument(f"input {shown(name)}: {datatype} travels in raw_input_contents only")
    for other in _ALL_FIELDS - {field}:
        if len(getattr(contents, other)):
            raise InvalidArgument(
                f"input {shown(name)} is {datatype}: its values belong in {field}, not {other}"
            )
    values = getattr(contents, field)
    if len(values) != count:
        raise InvalidArgument(
            f"input {shown(name)}: {len(values)} values in {field}, but its shape needs {count}"
        )
    if dtype == np.object_:
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array
    wide = np.array(values)  # int32/int64/uint32/uint64/float/double/bool as protobuf holds them
    if dtype.kind in "iu" and wide.size and wide.dtype != dtype:
        info = np.iinfo(dtype)
        if wide.min() < info.min or wide.max() > info.max:
            raise InvalidArgument(
                f"input {shown(name)}: values out of range for {datatype} [{info.min}, {info.max}]"
            )
    return wide.astype(dtype, copy=False)


def decode_infer_request(
    request: Any, specs: list[TensorSpec], limits: InputLimits
) -> GrpcInferRequest:
    """Check and convert a parsed ``ModelInferRequest`` for a model of input ``specs``."""
    _check_parameters(request.parameters, "parameter")
    timeout_s = _timeout(request.parameters)
    inputs_declared = request.inputs
    if len(inputs_declared) > len(specs):  # before a loop over them: 10,000 inputs cost nothing
        raise InvalidArgument(
            f"request has {len(inputs_declared)} inputs; model takes {len(specs)}: "
            f"{', '.join(spec.name for spec in specs)}"
        )
    raw = request.raw_input_contents
    if raw and len(raw) != len(inputs_declared):
        raise InvalidArgument(
            f"raw_input_contents has {len(raw)} entries for {len(inputs_declared)} inputs; "
            "send one per input, in order"
        )
    by_name = {spec.name: spec for spec in specs}
    declared: list[tuple[str, str, np.dtype[Any], list[int]]] = []
    for tensor in inputs_declared:
        name, datatype = tensor.name, tensor.datatype
        if any(name == seen[0] for seen in declared):
            raise InvalidArgument(f"input {shown(name)} appears twice")
        _check_parameters(tensor.parameters, f"input {shown(name)}: parameter")
        try:
            dtype = numpy_dtype_from_v2(datatype)
        except TypeError:
            raise InvalidArgument(
                f"input {shown(name)}: unknown datatype {shown(datatype, 40)}"
            ) from None
        shape = list(tensor.shape)
        if any(dim < 0 for dim in shape):
            raise InvalidArgument(
                f"input {shown(name)}: shape {describe_shape(shape)} has a negative dimension"
            )
        check_declared(by_name, name, dtype, shape, limits)
        if raw and tensor.HasField("contents"):
            raise InvalidArgument(
                f"input {shown(name)} has typed contents and the request raw_input_contents; "
                "send one kind"
            )
        declared.append((name, datatype, dtype, shape))
    arrays: dict[str, np.ndarray] = {}
    for index, (name, datatype, dtype, shape) in enumerate(declared):
        count = math.prod(shape)
        if raw:
            chunk = raw[index]  # reading a bytes field copies it once (upb); views follow
            if dtype == np.object_:
                try:
                    array = v2_wire.bytes_elements(chunk, count)
                except ValueError as exc:
                    raise InvalidArgument(f"input {shown(name)}: {exc}") from None
            else:
                expected = count * dtype.itemsize
                if len(chunk) != expected:
                    raise InvalidArgument(
                        f"input {shown(name)}: {len(chunk)} bytes in raw_input_contents, but "
                        f"{datatype} {describe_shape(shape)} needs {expected}"
                    )
                array = np.frombuffer(chunk, dtype=dtype.newbyteorder("<"))
        else:
            array = _typed(inputs_declared[index].contents, name, datatype, dtype, count)
        arrays[name] = array.reshape(shape)
    outputs = None
    if request.outputs:
        outputs = []
        for item in request.outputs:
            _check_parameters(item.parameters, f"output {shown(item.name)}: parameter")
            outputs.append(item.name)
    return GrpcInferRequest(arrays, outputs, timeout_s)


def encode_infer_response(
    model: str, version: int, request_id: str, outputs: dict[str, np.ndarray]
) -> Any:
    """A ``ModelInferResponse`` with every output in ``raw_output_contents`` (one copy each)."""
    response = ModelInferResponse(model_name=model, model_version=str(version), id=request_id)
    for name, array in outputs.items():
        response.outputs.add(name=name, datatype=v2_datatype(array.dtype), shape=array.shape)
        response.raw_output_contents.append(v2_wire.tensor_to_bytes(array))
    return response

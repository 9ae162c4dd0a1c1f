"""KServe V2 (Open Inference Protocol) over gRPC: method paths, message types, tensor framing.

The service is ``inference.GRPCInferenceService`` (Triton's, KServe's, MLServer's); our messages
live in the proto package ``convnet_serving.inference`` (``clients/proto/grpc_service.proto``), so
they can share a process with tritonclient's own ``inference`` package, and are wire-compatible
with it. Methods are bound by path, as TF Serving's are in ``clients.wire``.

Public API:

- ``SERVICE`` = ``"inference.GRPCInferenceService"``; ``SERVER_LIVE_METHOD``,
  ``SERVER_READY_METHOD``, ``MODEL_READY_METHOD``, ``SERVER_METADATA_METHOD``,
  ``MODEL_METADATA_METHOD``, ``MODEL_INFER_METHOD``, ``MODEL_STATISTICS_METHOD``: full paths.
- ``HEALTH_METHODS``: the paths that answer liveness and readiness (no API key where health is
  exempt, as ``/v2/health/...`` over REST).
- ``METHODS``: full path -> ``clients.wire.GrpcMethod``.
- ``build_infer_request(model, inputs, *, version, outputs, raw=True) -> ModelInferRequest``:
  numeric and string arrays as ``raw_input_contents`` (``raw=False``: typed ``contents``).
- ``infer_outputs(response) -> dict[str, ndarray]``: a ``ModelInferResponse``'s tensors, from
  ``raw_output_contents`` or typed ``contents``.
- ``CONTENTS_FIELD``: V2 datatype -> the ``InferTensorContents`` field that carries its values
  (FP16 has none: it travels raw only).
- Message classes re-exported from ``clients.proto.grpc_service_pb2``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from clients import v2
from clients.codec import as_ndarray, numpy_dtype_from_v2, v2_datatype
from clients.proto.grpc_service_pb2 import (
    InferParameter,
    InferTensorContents,
    ModelInferRequest,
    ModelInferResponse,
    ModelMetadataRequest,
    ModelMetadataResponse,
    ModelReadyRequest,
    ModelReadyResponse,
    ModelStatistics,
    ModelStatisticsRequest,
    ModelStatisticsResponse,
    ServerLiveRequest,
    ServerLiveResponse,
    ServerMetadataRequest,
    ServerMetadataResponse,
    ServerReadyRequest,
    ServerReadyResponse,
    StatisticDuration,
)
from clients.wire import GrpcMethod

__all__ = [
    "CONTENTS_FIELD",
    "HEALTH_METHODS",
    "METHODS",
    "MODEL_INFER_METHOD",
    "MODEL_METADATA_METHOD",
    "MODEL_READY_METHOD",
    "MODEL_STATISTICS_METHOD",
    "SERVER_LIVE_METHOD",
    "SERVER_METADATA_METHOD",
    "SERVER_READY_METHOD",
    "SERVICE",
    "InferParameter",
    "InferTensorContents",
    "ModelInferRequest",
    "ModelInferResponse",
    "ModelMetadataRequest",
    "ModelMetadataResponse",
    "ModelReadyRequest",
    "ModelReadyResponse",
    "ModelStatistics",
    "ModelStatisticsRequest",
    "ModelStatisticsResponse",
    "ServerLiveRequest",
    "ServerLiveResponse",
    "ServerMetadataRequest",
    "ServerMetadataResponse",
    "ServerReadyRequest",
    "ServerReadyResponse",
    "StatisticDuration",
    "build_infer_request",
    "infer_outputs",
]

SERVICE = "inference.GRPCInferenceService"

METHODS: dict[str, GrpcMethod] = {
    m.path: m
    for m in (
        GrpcMethod(SERVICE, "ServerLive", ServerLiveRequest, ServerLiveResponse),
        GrpcMethod(SERVICE, "ServerReady", ServerReadyRequest, ServerReadyResponse),
        GrpcMethod(SERVICE, "ModelReady", ModelReadyRequest, ModelReadyResponse),
        GrpcMethod(SERVICE, "ServerMetadata", ServerMetadataRequest, ServerMetadataResponse),
        GrpcMethod(SERVICE, "ModelMetadata", ModelMetadataRequest, ModelMetadataResponse),
        GrpcMethod(SERVICE, "ModelInfer", ModelInferRequest, ModelInferResponse),
        GrpcMethod(SERVICE, "ModelStatistics", ModelStatisticsRequest, ModelStatisticsResponse),
    )
}
SERVER_LIVE_METHOD = f"/{SERVICE}/ServerLive"
SERVER_READY_METHOD = f"/{SERVICE}/ServerReady"
MODEL_READY_METHOD = f"/{SERVICE}/ModelReady"
SERVER_METADATA_METHOD = f"/{SERVICE}/ServerMetadata"
MODEL_METADATA_METHOD = f"/{SERVICE}/ModelMetadata"
MODEL_INFER_METHOD = f"/{SERVICE}/ModelInfer"
MODEL_STATISTICS_METHOD = f"/{SERVICE}/ModelStatistics"
HEALTH_METHODS = frozenset({SERVER_LIVE_METHOD, SERVER_READY_METHOD})

#: V2 datatype -> the InferTensorContents field of its values (as Triton reads them)
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def build_infer_request(
    model: str,
    inputs: Mapping[str, Any],
    *,
    version: int | None = None,
    outputs: list[str] | None = None,
    raw: bool = True,
) -> Any:
    """A ``ModelInferRequest``: each input as raw little-endian bytes (``raw``), or as typed
    ``contents`` in the field of its datatype."""
    request = ModelInferRequest(
        model_name=model, model_version="" if version is None else str(version)
    )
    for name, value in inputs.items():
        array = as_ndarray(value)
        datatype = v2_datatype(array.dtype)
        tensor = request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        if raw:
            request.raw_input_contents.append(v2.tensor_to_bytes(array))
        else:
            field = CONTENTS_FIELD.get(datatype)
            if field is None:
                raise TypeError(f"{datatype} has no typed contents field; send it raw")
            values = array.ravel().tolist()
            getattr(tensor.contents, field).extend(values)
    for name in outputs or ():
        request.outputs.add(name=name)
    return request


def infer_outputs(response: Any) -> dict[str, np.ndarray]:
    """The output tensors of a ``ModelInferResponse`` by name (raw or typed contents)."""
    result: dict[str, np.ndarray] = {}
    raw = response.raw_output_contents
    for index, output in enumerate(response.outputs):
        dtype = numpy_dtype_from_v2(output.datatype)
        shape = [int(dim) for dim in output.shape]
        if index < len(raw):
            if dtype == np.object_:
                array = v2.bytes_elements(raw[index], math.prod(shape))
            else:
                array = np.frombuffer(raw[index], dtype=dtype.newbyteorder("<"))
        else:
            field = CONTENTS_FIELD.get(output.datatype)
            if field is None:
                raise ValueError(f"output {output.name!r}: {output.datatype} without raw contents")
            values = list(getattr(output.contents, field))
            array = np.array(values, dtype=dtype)
        result[output.name] = array.reshape(shape)
    return result

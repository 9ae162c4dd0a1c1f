"""TF Serving's gRPC wire: method paths, message types, ModelSpec and Any helpers.

Our messages live in the proto package ``convnet_serving`` (so they can share a process with
TensorFlow's own definitions) but are wire-compatible with TF Serving's. The service and method
names are TF Serving's and are bound by path: clients use channel multi-callables
(``channel.unary_unary(PREDICT_METHOD, ...)``), servers use ``grpc.method_handlers_generic_handler``
with ``PREDICTION_SERVICE`` / ``MODEL_SERVICE`` and the method names below.

Public API:

- ``PREDICTION_SERVICE`` = ``"tensorflow.serving.PredictionService"``,
  ``MODEL_SERVICE`` = ``"tensorflow.serving.ModelService"``.
- ``PREDICT_METHOD`` = ``"/tensorflow.serving.PredictionService/Predict"``,
  ``GET_MODEL_METADATA_METHOD`` = ``"/tensorflow.serving.PredictionService/GetModelMetadata"``,
  ``GET_MODEL_STATUS_METHOD`` = ``"/tensorflow.serving.ModelService/GetModelStatus"``.
- ``METHODS``: full path -> ``GrpcMethod(service, name, path, request_type, response_type)``.
- ``SIGNATURE_DEF_MAP_TYPE_URL`` = ``"type.googleapis.com/tensorflow.serving.SignatureDefMap"``;
  ``pack_signature_def_map(msg) -> Any`` and ``unpack_signature_def_map(any) -> SignatureDefMap``
  (by TF Serving's type URL, which ``Any.Pack`` would not write for our package name).
- ``PREDICT_METHOD_NAME`` = ``"tensorflow/serving/predict"`` (SignatureDef.method_name).
- ``model_spec(name, version=None, label=None, signature=None) -> ModelSpec``.
- ``build_predict_request(model, inputs, *, version, label, signature, output_filter)``.
- Message classes re-exported: ``TensorProto``, ``TensorShapeProto``, ``DataType``, ``ModelSpec``,
  ``PredictRequest``, ``PredictResponse``, ``GetModelMetadataRequest``,
  ``GetModelMetadataResponse``, ``SignatureDefMap``, ``SignatureDef``, ``TensorInfo``,
  ``GetModelStatusRequest``, ``GetModelStatusResponse``, ``ModelVersionStatus``, ``StatusProto``,
  ``ErrorCode``, and the model config messages ``ModelServerConfig``, ``ModelConfigList``,
  ``ModelConfig``, ``ServableVersionPolicy`` (parse ``models.config`` with
  ``google.protobuf.text_format.Parse(text, ModelServerConfig())``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf import any_pb2
from google.protobuf.message import Message

from clients.codec import ndarray_to_tensor_proto
from clients.proto.metadata_pb2 import (
    GetModelMetadataRequest,
    GetModelMetadataResponse,
    SignatureDef,
    SignatureDefMap,
    TensorInfo,
)
from clients.proto.model_server_config_pb2 import (
    ModelConfig,
    ModelConfigList,
    ModelServerConfig,
    ServableVersionPolicy,
)
from clients.proto.model_status_pb2 import (
    ErrorCode,
    GetModelStatusRequest,
    GetModelStatusResponse,
    ModelVersionStatus,
    StatusProto,
)
from clients.proto.predict_pb2 import ModelSpec, PredictRequest, PredictResponse
from clients.proto.tensor_pb2 import DataType, TensorProto, TensorShapeProto

__all__ = [
    "GET_MODEL_METADATA_METHOD",
    "GET_MODEL_STATUS_METHOD",
    "METHODS",
    "MODEL_SERVICE",
    "PREDICTION_SERVICE",
    "PREDICT_METHOD",
    "PREDICT_METHOD_NAME",
    "SIGNATURE_DEF_MAP_TYPE_URL",
    "DataType",
    "ErrorCode",
    "GetModelMetadataRequest",
    "GetModelMetadataResponse",
    "GetModelStatusRequest",
    "GetModelStatusResponse",
    "GrpcMethod",
    "ModelConfig",
    "ModelConfigList",
    "ModelServerConfig",
    "ModelSpec",
    "ModelVersionStatus",
    "PredictRequest",
    "PredictResponse",
    "ServableVersionPolicy",
    "SignatureDef",
    "SignatureDefMap",
    "StatusProto",
    "TensorInfo",
    "TensorProto",
    "TensorShapeProto",
    "build_predict_request",
    "model_spec",
    "pack_signature_def_map",
    "unpack_signature_def_map",
]

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
PREDICT_METHOD = f"/{PREDICTION_SERVICE}/Predict"
GET_MODEL_METADATA_METHOD = f"/{PREDICTION_SERVICE}/GetModelMetadata"
GET_MODEL_STATUS_METHOD = f"/{MODEL_SERVICE}/GetModelStatus"

SIGNATURE_DEF_MAP_TYPE_URL = "type.googleapis.com/tensorflow.serving.SignatureDefMap"
PREDICT_METHOD_NAME = "tensorflow/serving/predict"


@dataclass(frozen=True)
class GrpcMethod:
    """One TF Serving RPC: where it lives and which messages it carries."""

    service: str
    name: str
    request_type: type[Message]
    response_type: type[Message]

    @property
    def path(self) -> str:
        """The full method path, ``/service/Name``."""
        return f"/{self.service}/{self.name}"


METHODS: dict[str, GrpcMethod] = {
    m.path: m
    for m in (
        GrpcMethod(PREDICTION_SERVICE, "Predict", PredictRequest, PredictResponse),
        GrpcMethod(
            PREDICTION_SERVICE,
            "GetModelMetadata",
            GetModelMetadataRequest,
            GetModelMetadataResponse,
        ),
        GrpcMethod(MODEL_SERVICE, "GetModelStatus", GetModelStatusRequest, GetModelStatusResponse),
    )
}


def pack_signature_def_map(signatures: SignatureDefMap) -> any_pb2.Any:
    """Pack a signature map into ``Any`` under TF Serving's type URL."""
    return any_pb2.Any(
        type_url=SIGNATURE_DEF_MAP_TYPE_URL, value=signatures.SerializeToString(deterministic=True)
    )


def unpack_signature_def_map(packed: any_pb2.Any) -> SignatureDefMap:
    """Unpack the signature map TF Serving (or our gateway) put into model metadata."""
    if packed.type_url.rsplit("/", 1)[-1] != "tensorflow.serving.SignatureDefMap":
        raise ValueError(f"not a SignatureDefMap: {packed.type_url!r}")
    signatures = SignatureDefMap()
    signatures.ParseFromString(packed.value)
    return signatures


def model_spec(
    name: str,
    version: int | None = None,
    label: str | None = None,
    signature: str | None = None,
) -> ModelSpec:
    """A ``ModelSpec``; at most one of version and label (neither means latest)."""
    if version is not None and label is not None:
        raise ValueError("give a version or a label, not both")
    spec = ModelSpec(name=name)
    if version is not None:
        spec.version.value = int(version)
    elif label is not None:
        spec.version_label = label
    if signature:
        spec.signature_name = signature
    return spec


def build_predict_request(
    model: str,
    inputs: Mapping[str, Any],
    *,
    version: int | None = None,
    label: str | None = None,
    signature: str | None = "serving_default",
    output_filter: list[str] | None = None,
) -> PredictRequest:
    """A ``PredictRequest`` with every input encoded by ``ndarray_to_tensor_proto``."""
    request = PredictRequest(
        model_spec=model_spec(model, version, label, signature), output_filter=output_filter or []
    )
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(ndarray_to_tensor_proto(value))
    return request

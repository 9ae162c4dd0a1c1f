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
- ``PREDICT_SIGNATURE_METHOD`` = ``"tensorflow/serving/predict"`` (a SignatureDef's
  ``method_name``; not to be confused with ``PREDICT_METHOD``, the gRPC method path).
- ``DEFAULT_SIGNATURE`` = ``"serving_default"`` (the signature a request without one means).
- ``CLASS_NAMES_FIELD`` = ``"class_names"``: the extra model-metadata entry our gateway adds next to
  ``signature_def`` (a ``google.protobuf.ListValue`` of strings in ``Any``; stock clients ignore
  it); ``pack_class_names(names) -> Any`` and ``unpack_class_names(any) -> list[str]``.
- ``PREPROCESSING_FIELD`` = ``"preprocessing"``: the entry beside it for a model that declares how
  raw pixels become its float input (``clients.preprocessing``; a ``google.protobuf.Struct`` in
  ``Any``); ``pack_preprocessing(dict) -> Any`` and ``unpack_preprocessing(any) -> dict``.
- ``model_spec(name, version=None, label=None, signature=None) -> ModelSpec``.
- ``build_predict_request(model, inputs, *, version, label, signature, output_filter)``: the
  ``PredictRequest`` message.
- ``encode_predict_request(...)`` (same arguments) -> ``bytes``: the same request already
  serialized, written field by field so a tensor's bytes are copied once (protobuf would copy them
  into the message and again when serializing). The gRPC client sends these bytes as they are.
- Message classes re-exported: ``TensorProto``, ``TensorShapeProto``, ``DataType``, ``ModelSpec``,
  ``PredictRequest``, ``PredictResponse``, ``GetModelMetadataRequest``,
  ``GetModelMetadataResponse``, ``SignatureDefMap``, ``SignatureDef``, ``TensorInfo``,
  ``GetModelStatusRequest``, ``GetModelStatusResponse``, ``ModelVersionStatus``, ``StatusProto``,
  ``ErrorCode``, and the model config messages ``ModelServerConfig``, ``ModelConfigList``,
  ``ModelConfig``, ``ServableVersionPolicy``.
- ``read_models_config(text) -> ModelServerConfig`` / ``format_models_config(config) -> str``:
  TF Serving's ``models.config``, in protobuf text format (training writes it, the gateway reads it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf import any_pb2, json_format, struct_pb2, text_format
from google.protobuf.message import Message

from clients.codec import as_ndarray, ndarray_to_tensor_proto, tf_dtype
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
    "CLASS_NAMES_FIELD",
    "DEFAULT_SIGNATURE",
    "GET_MODEL_METADATA_METHOD",
    "GET_MODEL_STATUS_METHOD",
    "METHODS",
    "MODEL_SERVICE",
    "PREDICTION_SERVICE",
    "PREDICT_METHOD",
    "PREDICT_SIGNATURE_METHOD",
    "PREPROCESSING_FIELD",
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
    "encode_predict_request",
    "format_models_config",
    "model_spec",
    "pack_class_names",
    "pack_preprocessing",
    "pack_signature_def_map",
    "read_models_config",
    "unpack_class_names",
    "unpack_preprocessing",
    "unpack_signature_def_map",
]

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
PREDICT_METHOD = f"/{PREDICTION_SERVICE}/Predict"
GET_MODEL_METADATA_METHOD = f"/{PREDICTION_SERVICE}/GetModelMetadata"
GET_MODEL_STATUS_METHOD = f"/{MODEL_SERVICE}/GetModelStatus"

SIGNATURE_DEF_MAP_TYPE_URL = "type.googleapis.com/tensorflow.serving.SignatureDefMap"
PREDICT_SIGNATURE_METHOD = "tensorflow/serving/predict"
DEFAULT_SIGNATURE = "serving_default"
CLASS_NAMES_FIELD = "class_names"
PREPROCESSING_FIELD = "preprocessing"


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


def pack_class_names(names: list[str]) -> any_pb2.Any:
    """Pack a model's class names (index order) into ``Any`` as a ``ListValue`` of strings."""
    packed = any_pb2.Any()
    packed.Pack(struct_pb2.ListValue(values=[struct_pb2.Value(string_value=n) for n in names]))
    return packed


def unpack_class_names(packed: any_pb2.Any) -> list[str]:
    """The class names ``pack_class_names`` packed; ``ValueError`` for any other message."""
    values = struct_pb2.ListValue()
    if not packed.Unpack(values):
        raise ValueError(f"not a ListValue of class names: {packed.type_url!r}")
    return [value.string_value for value in values.values]


def pack_preprocessing(declared: Mapping[str, Any]) -> any_pb2.Any:
    """Pack a model's declared preprocessing (a JSON object) into ``Any`` as a ``Struct``."""
    structure = struct_pb2.Struct()
    structure.update(dict(declared))
    packed = any_pb2.Any()
    packed.Pack(structure)
    return packed


def unpack_preprocessing(packed: any_pb2.Any) -> dict[str, Any]:
    """The object ``pack_preprocessing`` packed (numbers come back as floats); ``ValueError``
    for any other message."""
    structure = struct_pb2.Struct()
    if not packed.Unpack(structure):
        raise ValueError(f"not a Struct of preprocessing: {packed.type_url!r}")
    return json_format.MessageToDict(structure)  # type: ignore[no-any-return]


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
    signature: str | None = DEFAULT_SIGNATURE,
    output_filter: list[str] | None = None,
) -> PredictRequest:
    """A ``PredictRequest`` with every input encoded by ``ndarray_to_tensor_proto``."""
    request = PredictRequest(
        model_spec=model_spec(model, version, label, signature), output_filter=output_filter or []
    )
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(ndarray_to_tensor_proto(value))
    return request


# --- hand-written serialization of PredictRequest ------------------------------------------------
# Protobuf wire format: a field is a varint key (number << 3 | wire type) and its value; wire type
# 0 is a varint, 2 is length-delimited. Only the fields this client writes are covered; the tests
# check that protobuf parses the result into the same message build_predict_request makes.


_ONE_BYTE = [bytes((i,)) for i in range(0x80)]


def _varint(value: int) -> bytes:
    # Short forms first: keys and lengths of a request are small, and this runs several times
    # per request.
    if 0 <= value < 0x80:
        return _ONE_BYTE[value]
    if 0 <= value < 0x4000:
        return bytes((value & 0x7F | 0x80, value >> 7))
    if 0 <= value < 0x200000:
        return bytes((value & 0x7F | 0x80, (value >> 7) & 0x7F | 0x80, value >> 14))
    if value < 0:
        value += 1 << 64  # negative int64: ten bytes of two's complement, as protobuf writes it
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


_SPEC_CACHE: dict[tuple[str, int | None, str | None, str | None], bytes] = {}


def _model_spec_field(
    model: str, version: int | None, label: str | None, signature: str | None
) -> bytes:
    """``PredictRequest.model_spec`` (field 1), serialized with its key and length."""
    key = (model, version, label, signature)
    cached = _SPEC_CACHE.get(key)
    if cached is None:
        cached = _field(1, model_spec(model, version, label, signature).SerializeToString())
        if len(_SPEC_CACHE) < 1024:  # a client talks to few models; bound it anyway
            _SPEC_CACHE[key] = cached
    return cached


_CONTENT_KEY = _varint(4 << 3 | 2)  # TensorProto.tensor_content
_INPUTS_KEY = _varint(2 << 3 | 2)  # PredictRequest.inputs (a map entry)
_MAP_VALUE_KEY = _varint(2 << 3 | 2)  # the entry's value
_SHAPE_CACHE: dict[tuple[int, ...], bytes] = {}


def _shape_bytes(shape: tuple[int, ...]) -> bytes:
    cached = _SHAPE_CACHE.get(shape)
    if cached is None:
        # Dim{size=1}; proto3 leaves out a zero size, so a 0 dim is an empty Dim.
        dims = [_field(2, b"\x08" + _varint(size) if size else b"") for size in shape]
        cached = b"".join(dims)
        if len(_SHAPE_CACHE) < 1024:  # a client sees few distinct shapes; bound it anyway
            _SHAPE_CACHE[shape] = cached
    return cached


def _tensor_parts(array: np.ndarray) -> list[bytes | memoryview]:
    """A TensorProto's serialized pieces; a contiguous numeric array is not copied here."""
    dtype_number = tf_dtype(array.dtype)
    shape = _field(2, _shape_bytes(tuple(array.shape)))
    head = b"\x08" + _varint(dtype_number) + shape
    if array.dtype.kind in "OSU":
        strings = [_field(8, element) for element in as_ndarray(array).flat]
        return [head, *strings]
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    content: bytes | memoryview
    if array.flags.c_contiguous:
        content = array.data.cast("B") if array.size else b""
    else:
        content = array.tobytes()
    if not len(content):
        return [head]
    return [head, _CONTENT_KEY, _varint(len(content)), content]


def encode_predict_request(
    model: str,
    inputs: Mapping[str, Any],
    *,
    version: int | None = None,
    label: str | None = None,
    signature: str | None = DEFAULT_SIGNATURE,
    output_filter: list[str] | None = None,
) -> bytes:
    """A serialized ``PredictRequest``, equal to ``build_predict_request(...)``'s message.

    A request's framing depends only on the model spec and each input's name, dtype and shape,
    which repeat from call to call, so it is cached and a numeric input costs one copy of its bytes
    (into the joined result) and a few dictionary lookups.
    """
    # The cache is read inline on this hot path; _model_spec_field fills it on a miss.
    spec = _SPEC_CACHE.get((model, version, label, signature))
    if spec is None:
        spec = _model_spec_field(model, version, label, signature)
    parts: list[Any] = [spec]  # bytes, memoryviews and C-contiguous arrays: buffers join takes
    for name, value in inputs.items():
        if type(value) is np.ndarray and value.flags.c_contiguous:
            head = _INPUT_HEAD_CACHE.get((name, value.dtype, value.shape))
            if head is not None:
                # A C-contiguous array exports its buffer as is: join copies it straight in.
                parts += (head, value)
                continue
        parts += _input_entry_parts(name, as_ndarray(value))
    if output_filter:
        parts += [_field(3, name.encode("utf-8")) for name in output_filter]
    return b"".join(parts)


def _input_entry_parts(name: str, array: np.ndarray) -> list[bytes | memoryview]:
    """One ``inputs`` map entry, serialized in pieces; caches the framing of numeric inputs."""
    tensor = _tensor_parts(array)
    tensor_length = sum(len(part) for part in tensor)
    key = _field(1, name.encode("utf-8"))
    value_head = _MAP_VALUE_KEY + _varint(tensor_length)
    entry_length = len(key) + len(value_head) + tensor_length
    head: list[bytes | memoryview] = [_INPUTS_KEY, _varint(entry_length), key, value_head]
    numeric_content = (
        array.dtype.kind not in "OSU" and array.dtype.byteorder != ">" and len(tensor) == 4
    )
    if numeric_content and array.flags.c_contiguous and len(_INPUT_HEAD_CACHE) < 1024:
        # Everything before the tensor's bytes: entry key and length, name, TensorProto's dtype,
        # shape and content key and length. Bounded: a client sees few distinct inputs.
        _INPUT_HEAD_CACHE[(name, array.dtype, array.shape)] = b"".join(head + tensor[:3])
    return head + tensor


_INPUT_HEAD_CACHE: dict[tuple[str, np.dtype[Any], tuple[int, ...]], bytes] = {}


def read_models_config(text: str) -> ModelServerConfig:
    """TF Serving's ``models.config`` (protobuf text format, ``#`` comments allowed); raises
    ``google.protobuf.text_format.ParseError`` when it is not one."""
    return text_format.Parse(text, ModelServerConfig())


def format_models_config(config: ModelServerConfig) -> str:
    """``config`` in the text format TF Serving's ``--model_config_file`` reads."""
    return text_format.MessageToString(config)

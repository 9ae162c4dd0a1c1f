"""Protocol-free request building and response parsing, shared by ``Client`` and ``AsyncClient``.

Each protocol turns one client call into a transport-neutral description (``HttpCall`` or
``GrpcCall``) that carries its own ``parse`` function; the sync and async executors in
``clients.client`` only move bytes and map transport failures to ``clients.errors``. So the three
protocols below are written once and behave identically from both clients.

Public API (for tools and tests; most users want ``clients.Client``):

- ``TensorSpec``, ``SignatureInfo``, ``ModelMetadata``, ``ModelVersionState``: typed results.
- ``RestProtocol(rest_format="columnar"|"row")``: TF Serving REST (``/v1/models/...``).
- ``V2Protocol()``: KServe V2 REST with binary tensors.
- ``GrpcProtocol()``: TF Serving gRPC (PredictionService / ModelService).
- ``V2GrpcProtocol()``: KServe V2 over gRPC (``inference.GRPCInferenceService``), raw tensors.
- ``rest_predict_body(inputs, signature, rest_format) -> dict`` and
  ``rest_predict_outputs(body) -> ndarray | dict``: TF Serving's JSON shapes (``instances`` /
  ``inputs``, ``predictions`` / ``outputs``, ``{"b64": ...}`` for bytes).

Size: the three protocols implement one interface and are read side by side.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import numpy as np
from google.protobuf.message import Message

from clients import codec, v2, v2_grpc, wire
from clients.codec import TensorSpec
from clients.errors import InternalError, InvalidInput, Status
from clients.preprocessing import DeclaredPreprocessing

T = TypeVar("T")
Array = np.ndarray[Any, Any]
Outputs = Array | dict[str, Array]


#: the dtype of a tensor whose reported type the dtype table does not know
UNKNOWN_DTYPE = np.dtype(object)


@dataclass(frozen=True)
class SignatureInfo:
    """A signature's inputs and outputs by name."""

    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    method_name: str = ""


@dataclass(frozen=True)
class ModelMetadata:
    """What a server says about a model: version, signatures and, where known, class names and
    the preprocessing a float-input model declares (our gateway's additions)."""

    name: str
    version: int | None
    signatures: dict[str, SignatureInfo]
    class_names: list[str] | None = None
    preprocessing: DeclaredPreprocessing | None = None

    def signature(self, name: str = wire.DEFAULT_SIGNATURE) -> SignatureInfo:
        """One signature by name (the only one if the model has just one)."""
        if name in self.signatures:
            return self.signatures[name]
        if len(self.signatures) == 1:
            return next(iter(self.signatures.values()))
        raise InvalidInput(f"model {self.name!r} has no signature {name!r}")


@dataclass(frozen=True)
class ModelVersionState:
    """One version's state as TF Serving reports it (``state`` is e.g. ``"AVAILABLE"``)."""

    version: int | None
    state: str
    status: Status = Status.OK
    message: str = ""

    @property
    def available(self) -> bool:
        """Whether this version serves requests."""
        return self.state == "AVAILABLE"


@dataclass
class HttpReply:
    """What came back over HTTP, for a call's ``parse``."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes


@dataclass
class HttpCall(Generic[T]):
    """One HTTP request and how to read its (successful) reply."""

    method: str
    path: str
    parse: Callable[[HttpReply], T]
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # Health probes read the status code themselves instead of raising on 4xx/5xx.
    raise_for_status: bool = True


@dataclass
class GrpcCall(Generic[T]):
    """One unary gRPC call by method path and how to read its reply."""

    method: str
    request: Message | bytes  # bytes: already serialized (the predict fast path)
    response_type: type[Message]
    parse: Callable[[Any], T]


try:  # optional: orjson writes and reads TF Serving's nested lists about 3x faster
    import orjson

    def _json_dumps(body: Any) -> bytes:
        return orjson.dumps(body)

    _parse_json: Any = orjson.loads
except ImportError:  # pragma: no cover - depends on the installed extras

    def _json_dumps(body: Any) -> bytes:
        return json.dumps(body, separators=(",", ":")).encode("utf-8")

    _parse_json = json.loads


def _json_loads(content: bytes) -> Any:
    try:
        return _parse_json(content)
    except ValueError as error:  # orjson.JSONDecodeError is a ValueError too
        raise InternalError(f"server sent malformed JSON: {error}") from None


def _declared(value: Any) -> DeclaredPreprocessing | None:
    """A metadata answer's declared preprocessing; a malformed one is an InternalError (the
    gateway checks it when it loads the model), never silently ignored."""
    try:
        return DeclaredPreprocessing.from_metadata(value)
    except ValueError as error:
        raise InternalError(f"server sent a malformed preprocessing: {error}") from None


def _model_path(prefix: str, model: str, version: int | None, label: str | None) -> str:
    if version is not None and label is not None:
        raise ValueError("give a version or a label, not both")
    path = f"{prefix}/{quote(model, safe='')}"
    if version is not None:
        path += f"/versions/{int(version)}"
    elif label is not None:
        path += f"/labels/{quote(label, safe='')}"
    return path


# --- TF Serving REST -----------------------------------------------------------------------------


def _to_json_value(array: Array) -> Any:
    """Nested lists for JSON; bytes elements as TF Serving's ``{"b64": ...}`` objects."""
    if array.dtype.kind not in "OSU":
        return array.tolist()
    strings = codec.as_ndarray(array)

    def encode(part: Any) -> Any:
        if isinstance(part, np.ndarray):
            return [encode(item) for item in part]
        return {"b64": base64.b64encode(part).decode("ascii")}

    return encode(strings)


def _from_json_value(value: Any) -> Array:
    """An ndarray from TF Serving's JSON; ``{"b64": ...}`` objects become bytes."""

    def has_b64(part: Any) -> bool:
        while isinstance(part, list) and part:
            part = part[0]
        return isinstance(part, dict)

    if not has_b64(value):
        return np.asarray(value)

    def decode(part: Any) -> Any:
        if isinstance(part, list):
            return [decode(item) for item in part]
        if isinstance(part, dict) and "b64" in part:
            return base64.b64decode(part["b64"])
        return part

    return np.array(decode(value), dtype=object)


def rest_predict_body(
    inputs: Mapping[str, Any] | Any, signature: str | None, rest_format: str = "columnar"
) -> dict[str, Any]:
    """TF Serving's predict JSON: columnar ``inputs`` or row ``instances``, named or not."""
    body: dict[str, Any] = {}
    if signature:
        body["signature_name"] = signature
    if not isinstance(inputs, Mapping):
        value = _to_json_value(codec.as_ndarray(inputs))
        body["inputs" if rest_format == "columnar" else "instances"] = value
        return body
    arrays = {name: codec.as_ndarray(value) for name, value in inputs.items()}
    if rest_format == "columnar":
        body["inputs"] = {name: _to_json_value(array) for name, array in arrays.items()}
        return body
    if rest_format != "row":
        raise ValueError(f"rest_format must be 'columnar' or 'row', not {rest_format!r}")
    batch_sizes = {array.shape[0] if array.ndim else None for array in arrays.values()}
    if len(batch_sizes) != 1 or None in batch_sizes:
        raise InvalidInput("row format needs every input to share one batch dimension")
    columns = {name: _to_json_value(array) for name, array in arrays.items()}
    (batch,) = batch_sizes
    body["instances"] = [{name: col[i] for name, col in columns.items()} for i in range(batch or 0)]
    return body


def rest_predict_outputs(body: Any) -> Outputs:
    """Outputs from TF Serving's predict reply (``outputs`` or ``predictions``)."""
    if not isinstance(body, dict):
        raise InternalError("predict reply is not a JSON object")
    if "outputs" in body:
        outputs = body["outputs"]
        if isinstance(outputs, dict):
            return {name: _from_json_value(value) for name, value in outputs.items()}
        return _from_json_value(outputs)
    if "predictions" in body:
        rows = body["predictions"]
        if rows and isinstance(rows[0], dict) and not (len(rows[0]) == 1 and "b64" in rows[0]):
            return {name: _from_json_value([row[name] for row in rows]) for name in rows[0]}
        return _from_json_value(rows)
    raise InternalError("predict reply has neither 'outputs' nor 'predictions'")


def _spec_from_tf_json(name: str, info: Mapping[str, Any]) -> TensorSpec:
    shape_info = info.get("tensor_shape") or {}
    shape = tuple(int(dim.get("size", -1)) for dim in shape_info.get("dim", []))
    try:
        dtype = codec.numpy_dtype_from_tf_name(str(info.get("dtype", "")))
    except TypeError:
        dtype = UNKNOWN_DTYPE
    return TensorSpec(name, dtype, shape)


def _metadata_from_rest(body: Any) -> ModelMetadata:
    if not isinstance(body, dict):
        raise InternalError("metadata reply is not a JSON object")
    spec = body.get("model_spec") or {}
    metadata = body.get("metadata") or {}
    signature_map = (metadata.get("signature_def") or {}).get("signature_def") or {}
    signatures = {
        name: SignatureInfo(
            inputs={k: _spec_from_tf_json(k, v) for k, v in (sig.get("inputs") or {}).items()},
            outputs={k: _spec_from_tf_json(k, v) for k, v in (sig.get("outputs") or {}).items()},
            method_name=str(sig.get("method_name", "")),
        )
        for name, sig in signature_map.items()
    }
    version = spec.get("version")
    class_names = body.get("class_names") or metadata.get("class_names")
    return ModelMetadata(
        name=str(spec.get("name", "")),
        version=int(version) if version not in (None, "") else None,
        signatures=signatures,
        class_names=[str(c) for c in class_names] if class_names else None,
        preprocessing=_declared(metadata.get("preprocessing")),
    )


def _status_from_rest(body: Any) -> list[ModelVersionState]:
    if not isinstance(body, dict):
        raise InternalError("status reply is not a JSON object")
    states = []
    for entry in body.get("model_version_status", []):
        status = entry.get("status") or {}
        states.append(
            ModelVersionState(
                version=int(entry["version"]) if "version" in entry else None,
                state=str(entry.get("state", "UNKNOWN")),
                status=Status.from_grpc_name(str(status.get("error_code", "OK"))),
                message=str(status.get("error_message", "")),
            )
        )
    return states


class RestProtocol:
    """TF Serving's REST API (``/v1/models/...``)."""

    needs_input_names = False

    def __init__(self, rest_format: str = "columnar") -> None:
        if rest_format not in ("columnar", "row"):
            raise ValueError(f"rest_format must be 'columnar' or 'row', not {rest_format!r}")
        self.rest_format = rest_format

    def predict(
        self,
        model: str,
        inputs: Mapping[str, Any] | Any,
        version: int | None,
        label: str | None,
        signature: str | None,
        output_filter: list[str] | None,
    ) -> HttpCall[Outputs]:
        """``POST /v1/models/{model}[/versions/{v}|/labels/{l}]:predict``."""
        body = rest_predict_body(inputs, signature, self.rest_format)

        def parse(reply: HttpReply) -> Outputs:
            outputs = rest_predict_outputs(_json_loads(reply.content))
            if output_filter and isinstance(outputs, dict):
                outputs = {name: outputs[name] for name in output_filter if name in outputs}
            return outputs

        return HttpCall(
            "POST",
            _model_path("/v1/models", model, version, label) + ":predict",
            parse,
            body=_json_dumps(body),
            headers={"Content-Type": "application/json"},
        )

    def metadata(
        self, model: str, version: int | None, label: str | None
    ) -> HttpCall[ModelMetadata]:
        """``GET /v1/models/{model}[...]/metadata``."""
        path = _model_path("/v1/models", model, version, label) + "/metadata"
        return HttpCall("GET", path, lambda reply: _metadata_from_rest(_json_loads(reply.content)))

    def status(
        self, model: str, version: int | None, label: str | None
    ) -> HttpCall[list[ModelVersionState]]:
        """``GET /v1/models/{model}[...]``."""
        path = _model_path("/v1/models", model, version, label)
        return HttpCall("GET", path, lambda reply: _status_from_rest(_json_loads(reply.content)))

    def live(self) -> HttpCall[bool]:
        """TF Serving has no health route: any HTTP answer, even 404, means the server is up."""
        return HttpCall("GET", "/v1/models", lambda reply: True, raise_for_status=False)

    def ready(self) -> HttpCall[bool] | None:
        """No server-wide readiness in TF Serving REST: ``None`` means "ask per model"."""
        return None


# --- KServe V2 REST ------------------------------------------------------------------------------


def _metadata_from_v2(body: Any, version: int | None) -> ModelMetadata:
    if not isinstance(body, dict):
        raise InternalError("metadata reply is not a JSON object")

    def specs(entries: Any) -> dict[str, TensorSpec]:
        found = {}
        for entry in entries or []:
            try:
                dtype = codec.numpy_dtype_from_v2(str(entry.get("datatype", "")))
            except TypeError:
                dtype = UNKNOWN_DTYPE
            found[entry["name"]] = TensorSpec(
                entry["name"], dtype, tuple(int(s) for s in entry.get("shape", []))
            )
        return found

    versions = [int(v) for v in body.get("versions") or [] if str(v).isdigit()]
    parameters = body.get("parameters") or {}
    class_names = body.get("class_names") or parameters.get("class_names")
    return ModelMetadata(
        name=str(body.get("name", "")),
        version=version if version is not None else (max(versions) if versions else None),
        signatures={
            wire.DEFAULT_SIGNATURE: SignatureInfo(
                specs(body.get("inputs")), specs(body.get("outputs")), wire.PREDICT_SIGNATURE_METHOD
            )
        },
        class_names=[str(c) for c in class_names] if class_names else None,
        preprocessing=_declared(parameters.get("preprocessing")),
    )


class V2Protocol:
    """KServe V2 / Open Inference Protocol REST, binary tensors both ways."""

    needs_input_names = True

    @staticmethod
    def _path(model: str, version: int | None, label: str | None) -> str:
        if label is not None:
            raise InvalidInput("KServe V2 has no version labels: give a version number")
        return _model_path("/v2/models", model, version, None)

    def predict(
        self,
        model: str,
        inputs: Mapping[str, Any],
        version: int | None,
        label: str | None,
        signature: str | None,
        output_filter: list[str] | None,
    ) -> HttpCall[Outputs]:
        """``POST /v2/models/{model}[/versions/{v}]/infer`` with binary inputs and outputs."""
        extra: dict[str, Any] = {"parameters": {"binary_data_output": True}}
        if output_filter:
            extra["outputs"] = v2.binary_outputs_request(output_filter)
        body, headers = v2.encode_tensors("inputs", inputs, binary=True, extra=extra)

        def parse(reply: HttpReply) -> Outputs:
            length = reply.headers.get(v2.HEADER_LENGTH)
            try:
                outputs, _ = v2.decode_tensors(
                    "outputs", reply.content, int(length) if length is not None else None
                )
            except (ValueError, KeyError, TypeError) as error:
                raise InternalError(f"malformed V2 reply: {error}") from None
            return outputs

        return HttpCall("POST", self._path(model, version, label) + "/infer", parse, body, headers)

    def metadata(
        self, model: str, version: int | None, label: str | None
    ) -> HttpCall[ModelMetadata]:
        """``GET /v2/models/{model}[/versions/{v}]``."""
        return HttpCall(
            "GET",
            self._path(model, version, label),
            lambda reply: _metadata_from_v2(_json_loads(reply.content), version),
        )

    def status(
        self, model: str, version: int | None, label: str | None
    ) -> HttpCall[list[ModelVersionState]]:
        """``GET /v2/models/{model}[/versions/{v}]/ready``: one entry, AVAILABLE when ready."""

        def parse(reply: HttpReply) -> list[ModelVersionState]:
            ready = reply.status_code == 200
            return [ModelVersionState(version, "AVAILABLE" if ready else "UNAVAILABLE")]

        return HttpCall("GET", self._path(model, version, label) + "/ready", parse)

    def live(self) -> HttpCall[bool]:
        """``GET /v2/health/live``."""
        return HttpCall(
            "GET", "/v2/health/live", lambda reply: reply.status_code == 200, raise_for_status=False
        )

    def ready(self) -> HttpCall[bool] | None:
        """``GET /v2/health/ready``."""
        return HttpCall(
            "GET",
            "/v2/health/ready",
            lambda reply: reply.status_code == 200,
            raise_for_status=False,
        )


# --- TF Serving gRPC -----------------------------------------------------------------------------


def _spec_from_tensor_info(name: str, info: wire.TensorInfo) -> TensorSpec:
    try:
        dtype = codec.numpy_dtype(info.dtype)
    except TypeError:
        dtype = UNKNOWN_DTYPE
    if info.tensor_shape.unknown_rank:
        return TensorSpec(name, dtype, ())
    return TensorSpec(name, dtype, tuple(dim.size for dim in info.tensor_shape.dim))


def _metadata_from_grpc(response: wire.GetModelMetadataResponse) -> ModelMetadata:
    signatures: dict[str, SignatureInfo] = {}
    if "signature_def" in response.metadata:
        signature_map = wire.unpack_signature_def_map(response.metadata["signature_def"])
        for name, sig in signature_map.signature_def.items():
            signatures[name] = SignatureInfo(
                inputs={k: _spec_from_tensor_info(k, v) for k, v in sig.inputs.items()},
                outputs={k: _spec_from_tensor_info(k, v) for k, v in sig.outputs.items()},
                method_name=sig.method_name,
            )
    class_names = None
    if wire.CLASS_NAMES_FIELD in response.metadata:  # our gateway's addition; TF Serving has none
        class_names = wire.unpack_class_names(response.metadata[wire.CLASS_NAMES_FIELD]) or None
    preprocessing = None
    if wire.PREPROCESSING_FIELD in response.metadata:  # ours too: a float input's preprocessing
        try:
            unpacked = wire.unpack_preprocessing(response.metadata[wire.PREPROCESSING_FIELD])
        except ValueError as error:
            raise InternalError(f"server sent a malformed preprocessing: {error}") from None
        preprocessing = _declared(unpacked)
    spec = response.model_spec
    return ModelMetadata(
        name=spec.name,
        version=spec.version.value if spec.HasField("version") else None,
        signatures=signatures,
        class_names=class_names,
        preprocessing=preprocessing,
    )


def _status_from_grpc(response: wire.GetModelStatusResponse) -> list[ModelVersionState]:
    return [
        ModelVersionState(
            version=entry.version,
            state=wire.ModelVersionStatus.State.Name(entry.state),
            status=Status.from_grpc_code(entry.status.error_code),
            message=entry.status.error_message,
        )
        for entry in response.model_version_status
    ]


def _outputs_from_grpc(response: wire.PredictResponse) -> Outputs:
    return {name: codec.tensor_proto_to_ndarray(t) for name, t in response.outputs.items()}


class GrpcProtocol:
    """TF Serving's gRPC API, bound by method path."""

    needs_input_names = True

    def predict(
        self,
        model: str,
        inputs: Mapping[str, Any],
        version: int | None,
        label: str | None,
        signature: str | None,
        output_filter: list[str] | None,
    ) -> GrpcCall[Outputs]:
        """``tensorflow.serving.PredictionService/Predict``."""
        request = wire.encode_predict_request(
            model,
            inputs,
            version=version,
            label=label,
            signature=signature,
            output_filter=output_filter,
        )
        return GrpcCall(wire.PREDICT_METHOD, request, wire.PredictResponse, _outputs_from_grpc)

    def metadata(
        self, model: str, version: int | None, label: str | None
    ) -> GrpcCall[ModelMetadata]:
        """``tensorflow.serving.PredictionService/GetModelMetadata`` (signature_def)."""
        request = wire.GetModelMetadataRequest(
            model_spec=wire.model_spec(model, version, label), metadata_field=["signature_def"]
        )
        return GrpcCall(
            wire.GET_MODEL_METADATA_METHOD,
            request,
            wire.GetModelMetadataResponse,
            _metadata_from_grpc,
        )

    def status(
        self, model: str, version: int | None, label: str | None
    ) -> GrpcCall[list[ModelVersionState]]:
        """``tensorflow.serving.ModelService/GetModelStatus``."""
        request = wire.GetModelStatusRequest(model_spec=wire.model_spec(model, version, label))
        return GrpcCall(
            wire.GET_MODEL_STATUS_METHOD, request, wire.GetModelStatusResponse, _status_from_grpc
        )

    def live(self) -> GrpcCall[bool]:
        """GetModelStatus for no model: any answer, even an error status, means the server is up.

        A real RPC rather than the channel's connectivity state, so it proves the server answers.
        """
        request = wire.GetModelStatusRequest(model_spec=wire.ModelSpec(name=""))
        return GrpcCall(
            wire.GET_MODEL_STATUS_METHOD, request, wire.GetModelStatusResponse, lambda reply: True
        )

    def ready(self) -> None:
        """TF Serving's gRPC API has no server-wide readiness: ask per model."""
        return None


# --- KServe V2 gRPC ------------------------------------------------------------------------------


def _metadata_from_v2_grpc(
    response: v2_grpc.ModelMetadataResponse, version: int | None
) -> ModelMetadata:
    def specs(entries: Any) -> dict[str, TensorSpec]:
        found = {}
        for entry in entries:
            try:
                dtype = codec.numpy_dtype_from_v2(entry.datatype)
            except TypeError:
                dtype = UNKNOWN_DTYPE
            found[entry.name] = TensorSpec(entry.name, dtype, tuple(int(d) for d in entry.shape))
        return found

    versions = [int(v) for v in response.versions if v.isdigit()]
    return ModelMetadata(
        name=response.name,
        version=version if version is not None else (max(versions) if versions else None),
        signatures={
            wire.DEFAULT_SIGNATURE: SignatureInfo(
                specs(response.inputs), specs(response.outputs), wire.PREDICT_SIGNATURE_METHOD
            )
        },
    )


class V2GrpcProtocol:
    """KServe V2 over gRPC (Triton's, KServe's and MLServer's service), raw tensors both ways."""

    needs_input_names = True

    @staticmethod
    def _version(version: int | None, label: str | None) -> str:
        if label is not None:
            raise InvalidInput("KServe V2 has no version labels: give a version number")
        return "" if version is None else str(version)

    def predict(
        self,
        model: str,
        inputs: Mapping[str, Any],
        version: int | None,
        label: str | None,
        signature: str | None,
        output_filter: list[str] | None,
    ) -> GrpcCall[Outputs]:
        """``inference.GRPCInferenceService/ModelInfer`` with ``raw_input_contents``."""
        self._version(version, label)
        request = v2_grpc.build_infer_request(model, inputs, version=version, outputs=output_filter)

        def parse(response: v2_grpc.ModelInferResponse) -> Outputs:
            try:
                return v2_grpc.infer_outputs(response)
            except (ValueError, TypeError) as error:
                raise InternalError(f"malformed ModelInferResponse: {error}") from None

        return GrpcCall(v2_grpc.MODEL_INFER_METHOD, request, v2_grpc.ModelInferResponse, parse)

    def metadata(
        self, model: str, version: int | None, label: str | None
    ) -> GrpcCall[ModelMetadata]:
        """``ModelMetadata`` (inputs, outputs and versions; V2 carries no class names)."""
        request = v2_grpc.ModelMetadataRequest(name=model, version=self._version(version, label))
        return GrpcCall(
            v2_grpc.MODEL_METADATA_METHOD,
            request,
            v2_grpc.ModelMetadataResponse,
            lambda reply: _metadata_from_v2_grpc(reply, version),
        )

    def status(
        self, model: str, version: int | None, label: str | None
    ) -> GrpcCall[list[ModelVersionState]]:
        """``ModelReady``: one entry, AVAILABLE when ready."""
        request = v2_grpc.ModelReadyRequest(name=model, version=self._version(version, label))

        def parse(reply: v2_grpc.ModelReadyResponse) -> list[ModelVersionState]:
            return [ModelVersionState(version, "AVAILABLE" if reply.ready else "UNAVAILABLE")]

        return GrpcCall(v2_grpc.MODEL_READY_METHOD, request, v2_grpc.ModelReadyResponse, parse)

    def live(self) -> GrpcCall[bool]:
        """``ServerLive``."""
        return GrpcCall(
            v2_grpc.SERVER_LIVE_METHOD,
            v2_grpc.ServerLiveRequest(),
            v2_grpc.ServerLiveResponse,
            lambda reply: bool(reply.live),
        )

    def ready(self) -> GrpcCall[bool]:
        """``ServerReady``."""
        return GrpcCall(
            v2_grpc.SERVER_READY_METHOD,
            v2_grpc.ServerReadyRequest(),
            v2_grpc.ServerReadyResponse,
            lambda reply: bool(reply.ready),
        )


def single_output(outputs: Outputs) -> Outputs:
    """An ndarray when there is exactly one output, else the dict (the ``predict`` contract)."""
    if isinstance(outputs, dict) and len(outputs) == 1:
        return next(iter(outputs.values()))
    return outputs

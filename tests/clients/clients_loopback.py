"""Loopback servers for the client tests (started by the fixtures in conftest.py): a toy model behind TF Serving REST, KServe V2 and gRPC.

The toy model ``toy`` takes ``image`` (uint8, ``[-1, 2, 2, 1]``) and returns ``probabilities``
(float32, ``[-1, 3]``): class ``sum(pixels) % 3`` gets 0.8, the others 0.1. The servers are real
(stdlib HTTP server and grpc.server on 127.0.0.1, port 0) and can be told to fail the next
requests with a given status, to be slow, and to record the headers they saw.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import grpc
import numpy as np

from clients import codec, v2, wire
from clients.errors import Status

MODEL = "toy"
CLASS_NAMES = ["zero", "one", "two"]
INPUT_SHAPE = [-1, 2, 2, 1]


def toy_model(image: np.ndarray) -> np.ndarray:
    """The toy model's computation (tests compare against it)."""
    batch = np.asarray(image).reshape(len(image), -1).astype(np.int64)
    winners = batch.sum(axis=1) % 3
    probabilities = np.full((len(batch), 3), 0.1, dtype=np.float32)
    probabilities[np.arange(len(batch)), winners] = 0.8
    return probabilities


@dataclass
class Behaviour:
    """What the loopback servers do next; shared by the HTTP and gRPC servers."""

    failures: list[Status] = field(default_factory=list)
    delay_s: float = 0.0
    predict_calls: int = 0
    headers: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_failure(self) -> Status | None:
        with self.lock:
            self.predict_calls += 1
            return self.failures.pop(0) if self.failures else None


class ModelLookupError(Exception):
    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def resolve(name: str, version: int | None = None, label: str | None = None) -> int:
    if name != MODEL:
        raise ModelLookupError(Status.NOT_FOUND, f"Servable not found for request: Latest({name})")
    if label is not None and label != "stable":
        raise ModelLookupError(Status.NOT_FOUND, f"Unrecognized servable version label: {label}")
    if version is not None and version != 1:
        raise ModelLookupError(Status.NOT_FOUND, f"Servable not found: {name} version {version}")
    return 1


def run_predict(inputs: dict[str, np.ndarray]) -> np.ndarray:
    if set(inputs) != {"image"}:
        raise ModelLookupError(
            Status.INVALID_ARGUMENT, f"expected input 'image', got {sorted(inputs)}"
        )
    image = inputs["image"]
    if image.dtype.kind == "f":
        raise ModelLookupError(Status.INVALID_ARGUMENT, "image must hold integers")
    if image.dtype != np.uint8 or image.shape[1:] != (2, 2, 1):
        raise ModelLookupError(
            Status.INVALID_ARGUMENT,
            f"image must be uint8 [-1,2,2,1], got {image.dtype} {image.shape}",
        )
    return toy_model(image)


# --- HTTP: TF Serving REST and KServe V2 ---------------------------------------------------------


def _rest_metadata() -> dict[str, Any]:
    def info(name: str, dtype: str, shape: list[int]) -> dict[str, Any]:
        dims = [{"size": str(s), "name": ""} for s in shape]
        return {"dtype": dtype, "tensor_shape": {"dim": dims, "unknown_rank": False}, "name": name}

    return {
        "model_spec": {"name": MODEL, "signature_name": "", "version": "1"},
        "metadata": {
            "signature_def": {
                "signature_def": {
                    "serving_default": {
                        "inputs": {
                            "image": info("serving_default_image:0", "DT_UINT8", INPUT_SHAPE)
                        },
                        "outputs": {
                            "probabilities": info("StatefulPartitionedCall:0", "DT_FLOAT", [-1, 3])
                        },
                        "method_name": "tensorflow/serving/predict",
                    }
                }
            }
        },
    }


class _Handler(BaseHTTPRequestHandler):
    behaviour: Behaviour
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for key, value in (headers or {"Content-Type": "application/json"}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, body: Any) -> None:
        self._send(code, json.dumps(body).encode())

    def _error(self, status: Status, message: str) -> None:
        headers = {"Content-Type": "application/json"}
        if status is Status.RESOURCE_EXHAUSTED:
            headers["Retry-After"] = "0"
        self._send(status.http_status, json.dumps({"error": message}).encode(), headers)

    def _parse_model_path(self, path: str) -> tuple[str, int | None, str | None, str]:
        # /v1/models/{m}[/versions/{v}|/labels/{l}][/metadata|:predict]
        rest = path[len("/v1/models/") :]
        action = ""
        if rest.endswith(":predict"):
            rest, action = rest[: -len(":predict")], "predict"
        elif rest.endswith("/metadata"):
            rest, action = rest[: -len("/metadata")], "metadata"
        parts = rest.split("/")
        version = int(parts[2]) if len(parts) == 3 and parts[1] == "versions" else None
        label = parts[2] if len(parts) == 3 and parts[1] == "labels" else None
        return parts[0], version, label, action

    def do_GET(self) -> None:
        self.behaviour.headers.append({k.lower(): v for k, v in self.headers.items()})
        try:
            if self.path in ("/v2/health/live", "/v2/health/ready"):
                return self._send(200, b"")
            if self.path.startswith("/v2/models/"):
                parts = self.path[len("/v2/models/") :].split("/")
                version = int(parts[2]) if len(parts) >= 3 and parts[1] == "versions" else None
                resolve(parts[0], version)
                if parts[-1] == "ready":
                    return self._send(200, b"")
                return self._json(
                    200,
                    {
                        "name": MODEL,
                        "versions": ["1"],
                        "platform": "onnxruntime_onnx",
                        "inputs": [{"name": "image", "datatype": "UINT8", "shape": INPUT_SHAPE}],
                        "outputs": [
                            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}
                        ],
                        "parameters": {"class_names": CLASS_NAMES},
                    },
                )
            if self.path.startswith("/v1/models/"):
                name, version, label, action = self._parse_model_path(self.path)
                resolved = resolve(name, version, label)
                if action == "metadata":
                    return self._json(200, _rest_metadata())
                status = {"error_code": "OK", "error_message": ""}
                entry = {"version": str(resolved), "state": "AVAILABLE", "status": status}
                return self._json(200, {"model_version_status": [entry]})
            self._error(Status.NOT_FOUND, f"no route {self.path}")
        except ModelLookupError as error:
            self._error(error.status, error.message)

    def do_POST(self) -> None:
        self.behaviour.headers.append({k.lower(): v for k, v in self.headers.items()})
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        failure = self.behaviour.next_failure()
        if self.behaviour.delay_s:
            time.sleep(self.behaviour.delay_s)
        try:
            if failure is not None:
                raise ModelLookupError(failure, f"injected {failure.name}")
            if self.path.startswith("/v2/models/") and self.path.endswith("/infer"):
                parts = self.path[len("/v2/models/") :].split("/")
                resolve(parts[0], int(parts[2]) if parts[1] == "versions" else None)
                length = self.headers.get(v2.HEADER_LENGTH)
                try:
                    inputs, _ = v2.decode_tensors("inputs", body, int(length) if length else None)
                except (ValueError, KeyError, TypeError) as error:
                    raise ModelLookupError(Status.INVALID_ARGUMENT, str(error)) from None
                out, headers = v2.encode_tensors(
                    "outputs",
                    {"probabilities": run_predict(inputs)},
                    extra={"model_name": MODEL, "model_version": "1"},
                )
                return self._send(200, out, headers)
            name, version, label, action = self._parse_model_path(self.path)
            resolve(name, version, label)
            if action != "predict":
                raise ModelLookupError(Status.NOT_FOUND, f"no route {self.path}")
            request = json.loads(body)
            if "instances" in request:
                rows = request["instances"]
                image = np.asarray([r["image"] if isinstance(r, dict) else r for r in rows])
                # JSON has no dtype: integers are taken as the signature's uint8, as TF Serving does.
                if image.dtype.kind == "i":
                    image = image.astype(np.uint8)
                result = run_predict({"image": image})
                return self._json(200, {"predictions": result.tolist()})
            columns = request["inputs"]
            named = columns if isinstance(columns, dict) else {"image": columns}
            arrays = {k: np.asarray(v) for k, v in named.items()}
            arrays = {
                k: a.astype(np.uint8) if a.dtype.kind == "i" else a for k, a in arrays.items()
            }
            return self._json(200, {"outputs": run_predict(arrays).tolist()})
        except ModelLookupError as error:
            self._error(error.status, error.message)


@dataclass
class LoopbackServers:
    """Addresses of the running servers and their shared behaviour switch."""

    http_url: str
    grpc_target: str
    behaviour: Behaviour


# --- gRPC: TF Serving's PredictionService and ModelService, bound by path -------------------------


def _grpc_handlers(behaviour: Behaviour) -> list[grpc.GenericRpcHandler]:
    def abort(context: grpc.ServicerContext, error: ModelLookupError) -> Any:
        context.abort(grpc.StatusCode[error.status.name], error.message)

    def spec_of(spec: wire.ModelSpec) -> tuple[str, int | None, str | None]:
        choice = spec.WhichOneof("version_choice")
        version = spec.version.value if choice == "version" else None
        return spec.name, version, spec.version_label if choice == "version_label" else None

    def predict(
        request: wire.PredictRequest, context: grpc.ServicerContext
    ) -> wire.PredictResponse:
        behaviour.headers.append(dict(context.invocation_metadata()))
        failure = behaviour.next_failure()
        if behaviour.delay_s:
            time.sleep(behaviour.delay_s)
        try:
            if failure is not None:
                raise ModelLookupError(failure, f"injected {failure.name}")
            version = resolve(*spec_of(request.model_spec))
            inputs = {k: codec.tensor_proto_to_ndarray(v) for k, v in request.inputs.items()}
            result = run_predict(inputs)
        except ModelLookupError as error:
            return abort(context, error)
        response = wire.PredictResponse(
            model_spec=wire.model_spec(MODEL, version, None, "serving_default")
        )
        response.outputs["probabilities"].CopyFrom(codec.ndarray_to_tensor_proto(result))
        return response

    def metadata(
        request: wire.GetModelMetadataRequest, context: grpc.ServicerContext
    ) -> wire.GetModelMetadataResponse:
        try:
            version = resolve(*spec_of(request.model_spec))
        except ModelLookupError as error:
            return abort(context, error)

        def info(name: str, dtype: int, shape: list[int]) -> wire.TensorInfo:
            dims = [wire.TensorShapeProto.Dim(size=s) for s in shape]
            return wire.TensorInfo(
                name=name, dtype=dtype, tensor_shape=wire.TensorShapeProto(dim=dims)
            )  # type: ignore[arg-type]

        signatures = wire.SignatureDefMap()
        sig = signatures.signature_def["serving_default"]
        sig.inputs["image"].CopyFrom(
            info("serving_default_image:0", wire.DataType.DT_UINT8, INPUT_SHAPE)
        )
        sig.outputs["probabilities"].CopyFrom(info("out:0", wire.DataType.DT_FLOAT, [-1, 3]))
        sig.method_name = wire.PREDICT_SIGNATURE_METHOD
        response = wire.GetModelMetadataResponse(model_spec=wire.model_spec(MODEL, version))
        response.metadata["signature_def"].CopyFrom(wire.pack_signature_def_map(signatures))
        return response

    def status(
        request: wire.GetModelStatusRequest, context: grpc.ServicerContext
    ) -> wire.GetModelStatusResponse:
        try:
            version = resolve(*spec_of(request.model_spec))
        except ModelLookupError as error:
            return abort(context, error)
        entry = wire.ModelVersionStatus(version=version, state=wire.ModelVersionStatus.AVAILABLE)
        return wire.GetModelStatusResponse(model_version_status=[entry])

    implementations = {
        wire.PREDICT_METHOD: predict,
        wire.GET_MODEL_METADATA_METHOD: metadata,
        wire.GET_MODEL_STATUS_METHOD: status,
    }
    by_service: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
    for path, method in wire.METHODS.items():
        by_service.setdefault(method.service, {})[method.name] = (
            grpc.unary_unary_rpc_method_handler(
                implementations[path],
                request_deserializer=method.request_type.FromString,
                response_serializer=lambda message: message.SerializeToString(),
            )
        )
    return [grpc.method_handlers_generic_handler(s, h) for s, h in by_service.items()]


TRANSPORTS = ["rest", "rest-row", "v2", "grpc"]


def make_client_kwargs(servers: LoopbackServers, transport: str) -> tuple[str, dict[str, Any]]:
    """Target and keyword arguments for a client speaking ``transport`` to the loopback servers."""
    if transport == "grpc":
        return servers.grpc_target, {}
    if transport == "v2":
        return servers.http_url, {"protocol": "v2"}
    if transport == "rest-row":
        return servers.http_url, {"rest_format": "row"}
    return servers.http_url, {}

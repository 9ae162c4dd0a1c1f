"""TF Serving gRPC over grpc.aio: only gRPC concerns; the work is in the dataplane.

The services are TF Serving's (``tensorflow.serving.PredictionService`` / ``ModelService``), bound
by method path with generic handlers to our own wire messages from ``clients.wire`` (same bytes,
different proto package), so stock ``tensorflow-serving-api`` stubs talk to this server.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from clients import v2_grpc, wire
from clients.codec import ndarray_to_tensor_proto, numpy_dtype, tensor_proto_to_ndarray
from serving.auth import DENIED_MESSAGE, ApiKeys
from serving.codecs import tfserving_status
from serving.dataplane import DataPlane
from serving.errors import InvalidArgument, as_serving_error, bounded_message, shown
from serving.grpc import health as health_service
from serving.grpc.health import HealthService
from serving.grpc.inference import InferenceServicer
from serving.grpc.transport import GrpcCall, GrpcLimits, GrpcServer
from serving.observe import REQUEST_ID_HEADER, TRACEPARENT_HEADER, RequestRecord
from serving.runtimes.base import TensorSpec
from serving.settings import ServingSettings
from serving.validation import InputLimits, check_declared, describe_shape

log = logging.getLogger(__name__)

#: the metrics' and access log's protocol label of TF Serving's gRPC calls, and of KServe V2's
PROTOCOL, V2_PROTOCOL = "grpc", "v2-grpc"

HEALTH_PREFIX = "/grpc.health.v1.Health/"
#: every method bound by path: TF Serving's and KServe V2's (for the error boundary's parsing)
METHODS = {**wire.METHODS, **v2_grpc.METHODS}
#: the most bytes one element of a numeric tensor takes in a TensorProto, a varint's (complex
#: elements take their itemsize)
_LARGEST_VALUE_BYTES = 10
#: what a PredictRequest may carry besides its tensors' values (model spec, output filter,
#: names, framing), for the bound in _decode_inputs
_MESSAGE_SLACK_BYTES = 64 * 1024


def _version_choice(spec: Any) -> tuple[int | None, str | None]:
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return spec.version.value, None
    if choice == "version_label":
        return None, spec.version_label
    return None, None


def _decode_inputs(
    request: Any, specs: list[TensorSpec], limits: InputLimits, size: int | None = None
) -> dict[str, Any]:
    """Each input's declared dtype and shape checked against the model before it is decoded:
    a tensor's typed values may be fewer than its elements (TensorFlow fills the rest), so
    decoding an unchecked shape could allocate without bound. With ``size`` (the serialized
    request's bytes), a request larger than its declared numeric tensors can take in any
    encoding is refused before a tensor's bytes are read: reading ``tensor_content`` copies it."""
    by_name = {spec.name: spec for spec in specs}
    largest = _MESSAGE_SLACK_BYTES
    for name, proto in request.inputs.items():
        try:
            dtype = numpy_dtype(proto.dtype)
        except TypeError as exc:
            raise InvalidArgument(f"input {shown(name)}: {exc}") from None
        shape = [dim.size for dim in proto.tensor_shape.dim]
        if any(size < 0 for size in shape):
            raise InvalidArgument(
                f"input {shown(name)}: tensor shape {describe_shape(shape)} is not fully defined"
            )
        check_declared(by_name, name, dtype, shape, limits)
        if dtype == np.object_:
            size = None  # strings: no bound per element
        else:
            per_element = max(_LARGEST_VALUE_BYTES, dtype.itemsize)
            largest += per_element * math.prod(shape) + 16 * len(shape) + len(name)
    if size is not None and size > largest:
        raise InvalidArgument(
            f"request of {size} bytes is larger than its declared tensors can take in any "
            f"encoding ({largest} bytes)"
        )
    inputs = {}
    for name, proto in request.inputs.items():
        try:
            inputs[name] = tensor_proto_to_ndarray(proto)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"input {shown(name)}: {exc}") from None
    return inputs


class PredictionServicer:
    """Predict, GetModelMetadata and GetModelStatus."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dp = dataplane

    async def _guard(
        self, call: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]], raw: bytes,
        context: grpc.aio.ServicerContext, method: str,
    ) -> Any:  # fmt: skip
        """The one error boundary of the gRPC transport: parses the request (a malformed message
        is INVALID_ARGUMENT, not grpc's UNKNOWN), runs ``call``, maps every failure through the
        status table; only unexpected exceptions become INTERNAL with a logged request id.

        It also begins and ends the call's request record (``serving.observe``): the id from
        the ``x-request-id`` metadata (else a fresh one) goes back in the trailing metadata (not the
        initial: grpc.aio sends initial metadata set by the handler as a frame of its own, which
        cost 10-15% of gRPC's throughput, benchmarks/RESULTS.md), and
        it serializes the answer itself, so the access log knows the bytes sent for free."""
        types = METHODS[method]
        request_id = traceparent = None
        for key, value in context.invocation_metadata() or ():
            if key == REQUEST_ID_HEADER:
                request_id = value
            elif key == TRACEPARENT_HEADER:
                traceparent = value
        observer = self.dp.observer
        record = observer.begin(
            V2_PROTOCOL if method in v2_grpc.METHODS else PROTOCOL,
            types.name,
            request_id,
            None,
            traceparent,
        )
        record.bytes_in = len(raw)
        try:
            try:
                request = types.request_type.FromString(raw)
            except DecodeError:
                raise InvalidArgument(
                    f"request is not a valid {types.request_type.DESCRIPTOR.name} message"
                ) from None
            answer = (await call(request, context)).SerializeToString()
            if record.encode_start_ns:  # the answer's encoding ends with its serialization
                record.encode_end_ns = time.perf_counter_ns()
            record.http_status, record.bytes_out = 200, len(answer)
            if not record.status:  # a call the dataplane did not count (metadata, status)
                record.status = "OK"
            context.set_trailing_metadata(((REQUEST_ID_HEADER, record.id),))
            self._end(record, context)
            return answer
        except Exception as exc:
            error = as_serving_error(exc, log, f"gRPC {types.name}")
            code, message = error.grpc_code, bounded_message(error.message)
            record.http_status, record.status, record.error = (
                error.http_status, error.status, message,
            )  # fmt: skip
            retry_after = getattr(error, "retry_after_s", None)
            del error  # its traceback holds the frames that hold the request (see below)
        self._end(record, context)
        trailing: tuple[tuple[str, str], ...] = ((REQUEST_ID_HEADER, record.id),)
        if retry_after is not None:  # gRPC's retry pushback (gRFC A6), in milliseconds
            trailing += (("grpc-retry-pushback-ms", str(math.ceil(retry_after * 1000))),)
        context.set_trailing_metadata(trailing)
        # Ended by status, not by context.abort(): abort raises an error that grpc keeps in the
        # call's state, chained to the one above, whose traceback holds the request's frames
        # (raw bytes, the parsed message, decode buffers) in a reference cycle with the call.
        # Only the cyclic garbage collector would free a refused request's memory then.
        context.set_code(code)
        context.set_details(message)
        return None

    def _end(self, record: RequestRecord, context: grpc.aio.ServicerContext) -> None:
        if not record.timed:  # nothing reads it
            return
        observer = self.dp.observer
        if observer.access_log is not None and (record.logged or record.http_status >= 400):
            record.peer = context.peer()  # read only for a line that is written
        observer.end(record)

    async def predict(self, raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        """``PredictionService/Predict``."""
        size = len(raw)

        async def predict(request: Any, context: grpc.aio.ServicerContext) -> Any:
            return await self._predict(request, context, size)

        return await self._guard(predict, raw, context, wire.PREDICT_METHOD)

    async def _predict(self, request: Any, context: grpc.aio.ServicerContext, size: int) -> Any:
        """``size``: the serialized request's bytes (what admission counts). Not ByteSize():
        protobuf's upb backend computes it by serializing the whole message again, a copy of
        every tensor the request carries."""
        spec = request.model_spec
        with self.dp.observe(PROTOCOL, spec.name) as record:
            mv = self.dp.resolve(spec.name, *_version_choice(spec))
            record.version = str(mv.version)
            assert mv.runtime is not None
            self.dp.admit(mv, size)
            if record.timed:
                record.decode_start_ns = time.perf_counter_ns()
            inputs = _decode_inputs(request, mv.runtime.inputs, self.dp.input_limits, size)
            if record.timed:
                record.decode_end_ns = time.perf_counter_ns()
            outputs = await self.dp.predict(
                mv,
                inputs,
                deadline=self.dp.deadline(context.time_remaining()),
                signature_name=spec.signature_name,
                output_filter=list(request.output_filter),
                declared=True,  # _decode_inputs checked each input before decoding it
            )
            if record.timed:
                record.encode_start_ns = time.perf_counter_ns()
            response = wire.PredictResponse(
                outputs={name: ndarray_to_tensor_proto(array) for name, array in outputs.items()}
            )
            response.model_spec.name = spec.name
            response.model_spec.version.value = mv.version
            response.model_spec.signature_name = wire.DEFAULT_SIGNATURE
            return response

    async def get_model_metadata(self, raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        """``PredictionService/GetModelMetadata`` (``signature_def``, plus ``class_names``)."""
        return await self._guard(self._metadata, raw, context, wire.GET_MODEL_METADATA_METHOD)

    async def _metadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        fields = set(request.metadata_field)
        if not fields:
            raise InvalidArgument(
                "GetModelMetadataRequest must name a metadata_field ('signature_def')"
            )
        known = {"signature_def", wire.CLASS_NAMES_FIELD, wire.PREPROCESSING_FIELD}
        unsupported = sorted(fields - known)
        if unsupported:
            raise InvalidArgument(
                f"metadata_field {shown(unsupported[0])} is not supported; use 'signature_def', "
                f"'{wire.CLASS_NAMES_FIELD}' or '{wire.PREPROCESSING_FIELD}'"
            )
        spec = request.model_spec
        mv = self.dp.resolve(spec.name, *_version_choice(spec))
        assert mv.runtime is not None
        response = wire.GetModelMetadataResponse()
        response.model_spec.CopyFrom(tfserving_status.model_spec(spec.name, mv.version))
        if "signature_def" in fields:
            signatures = tfserving_status.signature_def_map(mv.runtime.inputs, mv.runtime.outputs)
            response.metadata["signature_def"].CopyFrom(wire.pack_signature_def_map(signatures))
        # Class names ride along with signature_def, so a client that asks TF Serving's question
        # can still label its answers; stock clients ignore the extra map entry.
        if mv.class_names:
            response.metadata[wire.CLASS_NAMES_FIELD].CopyFrom(
                wire.pack_class_names(mv.class_names)
            )
        # Likewise how raw pixels become the input of a model that declares it (a float input).
        if mv.declared_preprocessing is not None:
            response.metadata[wire.PREPROCESSING_FIELD].CopyFrom(
                wire.pack_preprocessing(mv.declared_preprocessing.to_json())
            )
        return response

    async def get_model_status(self, raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        """``ModelService/GetModelStatus``."""
        return await self._guard(self._status, raw, context, wire.GET_MODEL_STATUS_METHOD)

    async def _status(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        spec = request.model_spec
        versions = self.dp.statuses(spec.name, *_version_choice(spec))
        return tfserving_status.status_response((mv.version, mv.state, mv.error) for mv in versions)


def is_exempt(method: str, exempt_health: bool) -> bool:
    """Health (gRPC's and V2's ServerLive/ServerReady) needs no API key where it is exempt."""
    return exempt_health and (method.startswith(HEALTH_PREFIX) or method in v2_grpc.HEALTH_METHODS)


def denial(dataplane: DataPlane | None) -> Callable[[Any, Any], Awaitable[Any]]:
    """The handler of a call without a valid API key: UNAUTHENTICATED, logged and counted as a
    refusal with its id."""

    async def deny(request: Any, context: Any) -> Any:
        if dataplane is not None:
            dataplane.metrics.count_refusal(PROTOCOL, 401)
            record = dataplane.observer.refused(
                PROTOCOL, 401, "UNAUTHENTICATED", DENIED_MESSAGE, context.peer()
            )
            context.set_trailing_metadata(((REQUEST_ID_HEADER, record.id),))
        # By status, not abort(), for the reason given in PredictionServicer._guard.
        context.set_code(grpc.StatusCode.UNAUTHENTICATED)
        context.set_details(DENIED_MESSAGE)
        return None

    return deny


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Requires an API key in the call's metadata (see ``serving.auth``); health (gRPC's and
    V2's ServerLive/ServerReady) is exempt."""

    def __init__(
        self, keys: ApiKeys, exempt_health: bool, dataplane: DataPlane | None = None
    ) -> None:
        self.keys = keys
        self.exempt_health = exempt_health
        self._deny = grpc.unary_unary_rpc_method_handler(denial(dataplane))

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = details.method  # type: ignore[attr-defined]
        if is_exempt(method, self.exempt_health):
            return await continuation(details)
        metadata = dict(details.invocation_metadata or ())  # type: ignore[attr-defined]
        if self.keys.accepts(metadata.get("authorization"), metadata.get("x-api-key")):
            return await continuation(details)
        return self._deny


def unary_handlers(dataplane: DataPlane) -> dict[str, Callable[[bytes, Any], Awaitable[Any]]]:
    """Method path -> handler (request bytes, context) for every unary method of TF Serving's
    and KServe V2's services, on either transport."""
    servicer = PredictionServicer(dataplane)
    handlers: dict[str, Callable[[bytes, Any], Awaitable[Any]]] = {
        wire.PREDICT_METHOD: servicer.predict,
        wire.GET_MODEL_METADATA_METHOD: servicer.get_model_metadata,
        wire.GET_MODEL_STATUS_METHOD: servicer.get_model_status,
    }
    for name, handler in InferenceServicer(dataplane, servicer._guard).handlers().items():
        handlers[f"/{v2_grpc.SERVICE}/{name}"] = handler
    assert set(handlers) == set(METHODS), "every method is bound by path (METHODS)"
    return handlers


def build_grpc_transport(
    dataplane: DataPlane, settings: ServingSettings
) -> tuple[GrpcServer, HealthService]:
    """The gateway's own gRPC transport (``serving.grpc.transport``) with the same services as
    ``build_grpc_server``: TF Serving's, KServe V2's and health (not started)."""
    health = HealthService()
    handlers = unary_handlers(dataplane)
    handlers[health_service.CHECK_METHOD] = health.check
    authorize = None
    if settings.api_keys:
        keys, exempt = ApiKeys(settings.api_keys), settings.auth_exempt_health

        def authorize(method: str, call: GrpcCall) -> bool:
            if is_exempt(method, exempt):
                return True
            metadata = dict(call.invocation_metadata())
            return keys.accepts(metadata.get("authorization"), metadata.get("x-api-key"))

    limits = GrpcLimits(
        max_message_bytes=settings.max_body_bytes,
        max_header_bytes=settings.max_header_bytes,
        max_streams=settings.grpc_max_streams_per_connection or GrpcLimits.max_streams,
        max_buffered_bytes=max(2 * settings.max_body_bytes, GrpcLimits.max_buffered_bytes),
        max_server_buffered_bytes=max(
            8 * settings.max_body_bytes, GrpcLimits.max_server_buffered_bytes
        ),
        max_connections=settings.max_connections,
        max_concurrent_calls=settings.grpc_max_concurrent_rpcs,
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        write_timeout_s=settings.write_timeout_s,
        accept_compressed=settings.grpc_compressed_requests,
    )

    def refused(http_status: int, name: str, message: str, peer: str, log_it: bool) -> None:
        """A call or connection the transport refused: counted, and (but REFUSED_STREAM, which
        clients retry) logged whatever the access log's sample, as the HTTP server's are."""
        dataplane.metrics.count_refusal(PROTOCOL, http_status)
        if log_it:
            dataplane.observer.refused(PROTOCOL, http_status, name, bounded_message(message), peer)

    server = GrpcServer(
        handlers,
        {health_service.WATCH_METHOD: health.watch},
        limits,
        authorize,
        denial(dataplane),
        refused,
    )
    return server, health


def build_grpc_server(
    dataplane: DataPlane, settings: ServingSettings
) -> tuple[grpc.aio.Server, health_aio.HealthServicer]:
    """A grpc.aio server (``--grpc-transport grpcio``) with TF Serving's services, KServe V2's
    ``GRPCInferenceService`` and the standard health service (not started)."""
    interceptors = (
        [ApiKeyInterceptor(ApiKeys(settings.api_keys), settings.auth_exempt_health, dataplane)]
        if settings.api_keys
        else []
    )
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        ("grpc.max_send_message_length", settings.max_body_bytes),
        # Off unless worker processes share the port: a stale gateway must not silently
        # split a new one's traffic.
        ("grpc.so_reuseport", int(settings.reuse_port)),
    ]
    if not settings.grpc_compressed_requests:
        # Only "identity": gRPC's core refuses a compressed call before inflating its message.
        options.append(("grpc.compression_enabled_algorithms_bitset", 1))
    if settings.grpc_max_streams_per_connection > 0:
        options.append(("grpc.max_concurrent_streams", settings.grpc_max_streams_per_connection))
    server = grpc.aio.server(
        interceptors=interceptors,
        options=options,
        maximum_concurrent_rpcs=settings.grpc_max_concurrent_rpcs or None,
    )
    by_service: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
    for path, handler in unary_handlers(dataplane).items():
        service, name = path[1:].split("/")
        # No request deserializer: the handler parses, inside its error boundary (_guard); no
        # response serializer: _guard returns the answer's bytes.
        by_service.setdefault(service, {})[name] = grpc.unary_unary_rpc_method_handler(handler)
    server.add_generic_rpc_handlers(
        tuple(
            grpc.method_handlers_generic_handler(service, methods)
            for service, methods in by_service.items()
        )
    )
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    return server, health

"""KServe V2 over gRPC (``inference.GRPCInferenceService``): only gRPC concerns.

Bound by method path on the gateway's gRPC port beside TF Serving's services (see
``server.build_grpc_server``), with the same error boundary (``PredictionServicer._guard``, passed
in), the same API-key interceptor and the same dataplane: ``ModelInfer`` resolves, admits (by the
message's bytes, before decoding), checks every declared tensor (``codecs/v2_grpc.py``), batches
and counts under ``protocol="v2-grpc"``, as ``Predict`` does. Statuses follow Triton's gRPC
frontend: unknown model or version NOT_FOUND, a bad request INVALID_ARGUMENT, a full queue
RESOURCE_EXHAUSTED with ``grpc-retry-pushback-ms``; ``ModelReady`` answers ``ready: false`` for a
model or version it cannot serve, as Triton does, rather than an error.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from clients import v2_grpc
from clients.codec import v2_datatype
from serving import __version__
from serving.codecs import v2_statistics
from serving.codecs.v2_grpc import decode_infer_request, encode_infer_response
from serving.dataplane import DataPlane
from serving.errors import ServingError
from serving.runtimes.base import TensorSpec
from serving.validation import parse_count

Guard = Callable[..., Awaitable[Any]]

#: the platform ModelMetadata reports (Triton's name for an ONNX Runtime model)
PLATFORM = "onnxruntime_onnx"
PROTOCOL = "v2-grpc"


def _version(text: str) -> int | None:
    """A request's ``version`` string: empty is the latest; otherwise digits (INVALID_ARGUMENT)."""
    return parse_count(text, "model version") if text else None


def _tensors(specs: list[TensorSpec], into: Any) -> None:
    for spec in specs:
        into.add(name=spec.name, datatype=v2_datatype(spec.dtype), shape=list(spec.shape))


class InferenceServicer:
    """The seven methods; each handler takes the raw request bytes, as TF Serving's do."""

    def __init__(self, dataplane: DataPlane, guard: Guard) -> None:
        self.dp = dataplane
        self._guard = guard

    def handlers(self) -> dict[str, Callable[[bytes, Any], Awaitable[Any]]]:
        """Method name -> handler, for ``grpc.method_handlers_generic_handler``."""
        calls = {
            "ServerLive": self._live,
            "ServerReady": self._ready,
            "ModelReady": self._model_ready,
            "ServerMetadata": self._server_metadata,
            "ModelMetadata": self._model_metadata,
            "ModelStatistics": self._statistics,
        }
        result: dict[str, Callable[[bytes, Any], Awaitable[Any]]] = {"ModelInfer": self.model_infer}
        for name, call in calls.items():

            async def handler(
                raw: bytes, context: Any, call: Any = call, path: str = f"/{v2_grpc.SERVICE}/{name}"
            ) -> Any:
                return await self._guard(call, raw, context, path)

            result[name] = handler
        return result

    async def _live(self, request: Any, context: Any) -> Any:
        return v2_grpc.ServerLiveResponse(live=True)

    async def _ready(self, request: Any, context: Any) -> Any:
        return v2_grpc.ServerReadyResponse(ready=self.dp.ready())

    async def _model_ready(self, request: Any, context: Any) -> Any:
        version = _version(request.version)
        try:
            self.dp.resolve(request.name, version)
        except ServingError as exc:
            if exc.status not in ("NOT_FOUND", "UNAVAILABLE"):
                raise
            return v2_grpc.ModelReadyResponse(ready=False)
        return v2_grpc.ModelReadyResponse(ready=True)

    async def _server_metadata(self, request: Any, context: Any) -> Any:
        return v2_grpc.ServerMetadataResponse(
            name="convnet-serving", version=__version__, extensions=["statistics"]
        )

    async def _model_metadata(self, request: Any, context: Any) -> Any:
        mv = self.dp.resolve(request.name, _version(request.version))
        assert mv.runtime is not None
        entry = self.dp.repository.entry(request.name)
        response = v2_grpc.ModelMetadataResponse(
            name=request.name,
            versions=[str(v.version) for v in entry.available()],
            platform=PLATFORM,
        )
        _tensors(mv.runtime.inputs, response.inputs)
        _tensors(mv.runtime.outputs, response.outputs)
        return response

    async def model_infer(self, raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        """``ModelInfer``."""
        size = len(raw)

        async def infer(request: Any, context: grpc.aio.ServicerContext) -> Any:
            return await self._infer(request, context, size)

        return await self._guard(infer, raw, context, v2_grpc.MODEL_INFER_METHOD)

    async def _infer(self, request: Any, context: grpc.aio.ServicerContext, size: int) -> Any:
        dp = self.dp
        with dp.observe(PROTOCOL, request.model_name) as record:
            mv = dp.resolve(request.model_name, _version(request.model_version))
            record.version = str(mv.version)
            assert mv.runtime is not None
            dp.admit(mv, size)
            if record.timed:
                record.decode_start_ns = time.perf_counter_ns()
            decoded = decode_infer_request(request, mv.runtime.inputs, dp.input_limits)
            if record.timed:
                record.decode_end_ns = time.perf_counter_ns()
            remaining = context.time_remaining()
            if decoded.timeout_s is not None:
                remaining = min(decoded.timeout_s, remaining or decoded.timeout_s)
            outputs = await dp.predict(
                mv,
                decoded.inputs,
                deadline=dp.deadline(remaining),
                output_filter=decoded.outputs,
                declared=True,  # decode_infer_request checked each input before reading it
            )
            if record.timed:
                record.encode_start_ns = time.perf_counter_ns()
            # V2's id: the client's, else the request's (x-request-id or made)
            answer = encode_infer_response(
                request.model_name, mv.version, request.id or record.id, outputs
            )
            if record.timed:
                record.encode_end_ns = time.perf_counter_ns()
            return answer

    async def _statistics(self, request: Any, context: Any) -> Any:
        counted = self.dp.statistics(request.name, _version(request.version))
        return v2_statistics.statistics_message(v2_statistics.statistics_json(counted))

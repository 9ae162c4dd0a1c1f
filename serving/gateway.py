"""The composition root: settings -> repository -> dataplane -> HTTP + gRPC servers, and shutdown.

``Gateway.start()`` loads the repository (every version warmed) before it opens the ports, so the
servers never answer before the models are ready. ``Gateway.stop()`` is the graceful drain that
SIGTERM triggers: readiness and gRPC health go to NOT_SERVING, the listeners close, in-flight HTTP
requests and RPCs finish (up to ``drain_timeout_s``), then the models are unloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import uvicorn
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

from serving.batching import BatchingConfig, padded_batch_sizes, warmup_batch_sizes
from serving.dataplane import DataPlane, Limits
from serving.grpc.health import HealthService
from serving.grpc.server import build_grpc_server, build_grpc_transport
from serving.grpc.transport import GrpcServer
from serving.metrics import GatewayMetrics
from serving.observe import AccessLog, Observer, Tracer
from serving.repository import ModelRepository, VersionPolicy
from serving.rest.app import create_app, create_front
from serving.rest.protocol import HttpLimits, gateway_protocol
from serving.runtimes.base import ModelRuntime
from serving.runtimes.onnx import OnnxOptions, OnnxRuntime
from serving.settings import ServingSettings

log = logging.getLogger("serving")


class _UvicornServer(uvicorn.Server):
    """uvicorn without its own signal handling (the gateway drains both servers together), and
    whose shutdown serves the connections the kernel had already queued on its listeners."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # A connection waiting in a listener's accept queue is a client whose request may be on
        # its way; closing the listener would reset it (a request written, never answered). Take
        # them all, close the listeners in the same step (no await in between), then serve them
        # like every open connection: the drain answers each with Connection: close.
        queued: list[socket.socket] = []
        for listener in sockets or []:
            while True:
                try:
                    connection, _ = listener.accept()
                except OSError:  # BlockingIOError: the queue is empty
                    break
                queued.append(connection)
        for server in self.servers:
            server.close()
        loop = asyncio.get_running_loop()
        for connection in queued:
            connection.setblocking(False)
            await loop.connect_accepted_socket(self._new_protocol, connection)
        await super().shutdown(sockets)

    def _new_protocol(self) -> asyncio.Protocol:
        """What uvicorn's own accept path builds for a connection."""
        return self.config.http_protocol_class(  # type: ignore[call-arg]
            config=self.config,
            server_state=self.server_state,
            app_state=self.lifespan.state,
            _loop=asyncio.get_running_loop(),
        )


def onnx_options(settings: ServingSettings) -> OnnxOptions:
    """ONNX Runtime options from the settings."""
    return OnnxOptions(
        device=settings.device,
        precision=settings.precision,
        fp16_on_cpu=settings.fp16_on_cpu,
        tensorrt=settings.tensorrt,
        intra_op_threads=settings.intra_op_threads,
        inter_op_threads=settings.inter_op_threads,
        allow_spinning=settings.allow_spinning,
        graph_optimization=settings.graph_optimization,
        cuda_prefer_nhwc=settings.cuda_prefer_nhwc,
        cudnn_conv_algo_search=settings.cudnn_conv_algo_search,
        gpu_mem_limit_mb=settings.gpu_mem_limit_mb,
        cuda_graph=settings.cuda_graph,
        session_per_batch_size=settings.session_per_batch_size,
    )


def batching_config(settings: ServingSettings) -> BatchingConfig:
    """Batching parameters from the settings."""
    return BatchingConfig(
        merge=settings.batching,
        max_batch_size=settings.max_batch_size,
        split_large_requests=settings.split_large_requests,
        batch_timeout_us=settings.batch_timeout_us,
        peer_wait_us=settings.batch_peer_wait_us,
        peer_idle_us=settings.batch_peer_idle_us,
        preferred_batch_sizes=tuple(settings.preferred_batch_sizes),
        max_queue_size=settings.max_queue_size,
        max_queue_bytes=settings.max_queue_bytes,
        refusal_share=settings.refusal_share or None,
        queue_overflow=settings.queue_overflow,
        max_concurrent=settings.max_concurrent_inferences,
        inline_compute_us=settings.inline_compute_us,
        allowed_batch_sizes=settings.padded_batch_sizes(),
    )


def version_policy(settings: ServingSettings) -> VersionPolicy:
    """The default version policy from the settings."""
    return VersionPolicy(
        settings.version_policy, settings.num_versions, frozenset(settings.versions)
    )


def build_observer(settings: ServingSettings, metrics: GatewayMetrics) -> Observer:
    """The access log and the tracer the settings ask for (the tracer's SDK is imported only
    when tracing is on)."""
    access_log = None
    if settings.access_log != "off":
        access_log = AccessLog(
            settings.access_log, settings.access_log_sample, metrics.access_log_dropped
        )
    tracer: Tracer | None = None
    if settings.trace_sample > 0:
        from serving.tracing import OtelTracer

        tracer = OtelTracer(settings.trace_sample)
    return Observer(access_log, tracer)


class Gateway:
    """One gateway instance: start, serve, stop."""

    def __init__(self, settings: ServingSettings) -> None:
        self.settings = settings
        self.metrics = GatewayMetrics()
        options = onnx_options(settings)
        batching = batching_config(settings)

        def load(path: Path) -> ModelRuntime:
            runtime = OnnxRuntime(path, options)
            # A CUDA graph is captured for one shape: several sizes need a session each.
            if options.session_per_batch_size or options.cuda_graph:
                try:
                    runtime.specialise(padded_batch_sizes(batching, runtime))
                    if runtime.specialised_sizes:
                        log.info(
                            "%s: one session per batch size %s", path, runtime.specialised_sizes
                        )
                except BaseException:
                    runtime.close()
                    raise
            if settings.warmup:
                try:
                    runtime.warmup(warmup_batch_sizes(batching, runtime))
                except BaseException:  # the version fails to load: free what it opened
                    runtime.close()
                    raise
            return runtime

        self.repository = ModelRepository(
            settings.repository,
            load,
            batching,
            default_policy=version_policy(settings),
            label_overrides=settings.label_map(),
            config_file=settings.model_config_file,
            metrics=self.metrics,
            drain_timeout_s=settings.drain_timeout_s,
        )
        self.observer = build_observer(settings, self.metrics)
        if self.observer.tracer is not None:  # batch spans: every version's batcher reports
            self.repository.on_batch = self.observer.tracer.batch
        self.dataplane = DataPlane(
            self.repository,
            self.metrics,
            Limits(
                max_request_batch=settings.max_request_batch,
                request_timeout_s=settings.request_timeout_s,
                max_tensor_bytes=settings.max_body_bytes,
                max_image_pixels=settings.max_image_pixels,
                max_request_image_pixels=settings.max_request_image_pixels,
                decode_threads=settings.decode_threads,
                decode_queue=settings.decode_queue,
                json_offload_bytes=settings.json_offload_bytes,
                json_decode_processes=settings.json_decode_processes,
            ),
            self.observer,
        )
        self.app = create_app(self.dataplane, settings)
        self.front = create_front(self.app, self.dataplane, settings)
        self.http_port: int | None = None
        self.grpc_port: int | None = None
        self._http: _UvicornServer | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._grpc: grpc.aio.Server | GrpcServer | None = None
        self._health: health_aio.HealthServicer | HealthService | None = None
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        """Load every model, then open the HTTP and gRPC ports."""
        s = self.settings
        if s.json_offload_bytes > 0:  # its processes start while the models load
            self.dataplane.json_pool.warm()
        await self.repository.sync()
        if not self.repository.models:
            log.warning("no models found under %s", s.repository)
        sock = listening_socket(s.host, s.http_port, s.reuse_port)
        self.http_port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.front,
            log_level=s.log_level,
            log_config=None,  # uvicorn's loggers go through ours (one format in the log)
            access_log=False,
            lifespan="off",
            # uvicorn's ProxyHeadersMiddleware would sit in front of every request; no route
            # reads the client's address or scheme.
            proxy_headers=False,
            # httptools (a dependency) with the gateway's connection limits and drain, serving
            # the hot routes itself (the front door's checks and handlers, no ASGI cycle).
            http=gateway_protocol(
                http_limits(s),
                self.front if s.http_fast_path else None,
                self.dataplane.observer,
                self.metrics,
            ),
            timeout_keep_alive=s.keep_alive_timeout_s,
            loop="none",
            timeout_graceful_shutdown=int(s.drain_timeout_s),
            backlog=2048,
        )
        self._http = _UvicornServer(config)
        self._http_task = asyncio.get_running_loop().create_task(self._http.serve(sockets=[sock]))
        while not self._http.started:
            if self._http_task.done():
                self._http_task.result()  # raises the startup error
            await asyncio.sleep(0.01)
        log.info(
            "HTTP (TF Serving REST, KServe V2, /metrics, /docs) on http://%s:%d",
            s.host,
            self.http_port,
        )
        if s.grpc_port >= 0 and s.grpc_transport == "gateway":
            self._grpc, self._health = build_grpc_transport(self.dataplane, s)
            grpc_sock = listening_socket(s.host, s.grpc_port, s.reuse_port)
            self.grpc_port = grpc_sock.getsockname()[1]
            await self._grpc.start(grpc_sock)
        elif s.grpc_port >= 0:
            grpcio_server, self._health = build_grpc_server(self.dataplane, s)
            self.grpc_port = grpcio_server.add_insecure_port(f"{s.host}:{s.grpc_port}")
            await grpcio_server.start()
            self._grpc = grpcio_server
        if self._grpc is not None and self._health is not None:
            await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
            for service in (
                "tensorflow.serving.PredictionService",
                "tensorflow.serving.ModelService",
            ):
                await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
            log.info(
                "gRPC (TF Serving PredictionService/ModelService, health) on %s:%d",
                s.host,
                self.grpc_port,
            )
        self.repository.start_polling(s.poll_interval_s)
        freeze_startup_heap()

    async def stop(self) -> None:
        """Graceful drain: stop taking connections, finish in-flight requests, unload models."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        log.info(
            "draining: finishing in-flight requests (up to %.0f s)", self.settings.drain_timeout_s
        )
        self.dataplane.draining = True  # readiness false; requests still arriving are served
        waits = []
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._grpc is not None:
            waits.append(self._grpc.stop(self.settings.drain_timeout_s))
        if self._http is not None and self._http_task is not None:
            self._http.should_exit = True
            waits.append(self._http_task)
        await asyncio.gather(*waits, return_exceptions=True)
        self.dataplane.stopped = True
        await self.repository.close()
        self.dataplane.close()
        self.observer.close()  # the access log's last lines, the last spans
        log.info("stopped")

    async def serve_forever(self) -> None:
        """Start, wait for SIGTERM or SIGINT, drain, return. The handlers are in place before
        anything starts: a signal while starting (the ports may already take requests) drains
        once the start is complete, instead of killing the process with what it holds."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        wait_http = self._http_task
        waiters = [asyncio.ensure_future(stop.wait())]
        if wait_http is not None:
            waiters.append(wait_http)  # type: ignore[arg-type]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        await self.stop()


def listening_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    """A non-blocking TCP socket listening on ``host:port`` (0: any free port); with
    ``reuse_port`` the worker processes of one gateway share it and the kernel spreads
    connections among them."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def freeze_startup_heap() -> None:
    """Take what startup allocated (modules, models, servers) out of the cyclic collector's scans.

    Those objects live as long as the process, yet every full collection walks all of them and
    finds nothing to free; under load those collections set the p99 (benchmarks/RESULTS.md,
    "Gateway speed, 2026-11-27, later", item 2). ``gc.freeze()`` moves them to a generation that
    is never scanned; reference counting still frees them. Collected first, so no garbage is
    frozen.
    """
    gc.collect()
    gc.freeze()
    log.info(
        "%d startup objects frozen out of the garbage collector's scans", gc.get_freeze_count()
    )


def http_limits(settings: ServingSettings) -> HttpLimits:
    """The HTTP connection limits from the settings."""
    return HttpLimits(
        max_header_bytes=settings.max_header_bytes,
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        max_connections=settings.max_connections,
        drain_idle_grace_s=min(1.0, settings.drain_timeout_s),
        keep_alive_timeout_s=settings.keep_alive_timeout_s,
        write_timeout_s=settings.write_timeout_s,
        max_pipelined_requests=settings.max_pipelined_requests,
        max_body_bytes=settings.max_body_bytes,
    )

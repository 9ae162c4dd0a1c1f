"""Typed gateway settings: environment variables with the ``SERVING_`` prefix, CLI overrides.

Every field documents itself; ``python -m serving --help`` is generated from these descriptions, so
an option cannot exist without help text.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from serving.batching import BatchingConfig

CommaList = Annotated[list[str], NoDecode]
IntCommaList = Annotated[list[int], NoDecode]

#: The batching options take their defaults from BatchingConfig: each is set in one place.
_BATCHING = BatchingConfig()


def _split_commas(value: Any) -> Any:
    """Accept ``"a,b"`` from the environment or CLI as well as a real list."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class ServingSettings(BaseSettings):
    """All gateway options. Environment: ``SERVING_<FIELD>``; CLI: ``--<field-with-dashes>``."""

    model_config = SettingsConfigDict(env_prefix="SERVING_", extra="ignore")

    # --- where and how to listen -----------------------------------------------------------
    repository: Path = Field(
        Path("model_repository"), description="Model repository directory (one folder per model)."
    )
    host: str = Field("0.0.0.0", description="Address both servers bind to.")
    http_port: int = Field(8501, description="REST port (TF Serving's default 8501; 0 = any free).")
    grpc_port: int = Field(
        8500, description="gRPC port (TF Serving's default 8500; 0 = any free; -1 = no gRPC)."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level."
    )
    workers: int = Field(
        1,
        ge=0,
        description="Gateway processes sharing both ports (SO_REUSEPORT); each loads every model "
        "and batches on its own; /metrics sums them. 0 = one per CPU core. On a GPU each worker "
        "holds its own CUDA context and copy of the models.",
    )
    reuse_port: bool = Field(
        False, description="Bind with SO_REUSEPORT (set by --workers for its worker processes)."
    )
    worker_restarts: int = Field(
        5,
        ge=0,
        description="With --workers: a worker that dies is replaced (after 0.5 s, doubling with "
        "each crash in the window up to 30 s) while the others serve on; more than this many "
        "crashes within --worker-restart-window-s and the supervisor stops every worker and "
        "exits 1. 0 = no replacement: the first crash stops the gateway.",
    )
    worker_restart_window_s: float = Field(
        60.0, gt=0, description="With --workers: the window --worker-restarts counts crashes in."
    )
    # --- compute ---------------------------------------------------------------------------
    device: Literal["auto", "cuda", "cpu"] = Field(
        "auto",
        description="auto: TensorRT/CUDA when they really load, else CPU; cuda: require a GPU.",
    )
    precision: Literal["fp32", "fp16", "int8"] = Field(
        "fp32",
        description="fp16 loads model.fp16.onnx when a GPU provider is active; int8 loads "
        "model.int8.onnx (python -m training quantize) on any provider, and a version without "
        "one fails to load rather than serve other answers.",
    )
    fp16_on_cpu: bool = Field(
        False,
        description="With --precision fp16, load model.fp16.onnx on the CPU provider too (slower "
        "than fp32 there): for checking the fp16 file's served answers on a host without a GPU.",
    )
    tensorrt: bool = Field(True, description="Allow the TensorRT provider when it is available.")
    intra_op_threads: int = Field(
        -1,
        ge=-1,
        description="ONNX Runtime intra-op threads per session: -1 = per model (one thread if an "
        "image runs in under 2 ms, else one per core), 0 = one per core, N = N.",
    )
    inter_op_threads: int = Field(1, description="ONNX Runtime inter-op threads per session.")
    allow_spinning: bool = Field(
        False,
        description="Let ONNX Runtime worker threads spin while idle (burns CPU on small hosts).",
    )
    graph_optimization: Literal["disable", "basic", "extended", "all"] = Field(
        "all", description="ONNX Runtime graph optimisation level."
    )
    cuda_prefer_nhwc: bool = Field(True, description="CUDA provider: prefer NHWC kernels.")
    cudnn_conv_algo_search: Literal["exhaustive", "heuristic", "default"] = Field(
        "exhaustive",
        description="CUDA provider: how cuDNN picks each convolution's algorithm for a new input "
        "shape: exhaustive = time every candidate (ONNX Runtime's default: the fastest kernels, "
        "the costliest change of batch size), heuristic = cuDNN's heuristics (cheap changes), "
        "default = one fixed algorithm. Ignored on the CPU.",
    )
    gpu_mem_limit_mb: int = Field(0, description="CUDA memory arena limit in MiB (0 = no limit).")
    cuda_graph: bool = Field(
        False,
        description="CUDA graphs: every batch padded to max_batch_size so its shape is fixed, or "
        "to the --allowed-batch-sizes listed, with one session and graph per size.",
    )
    max_concurrent_inferences: int = Field(
        _BATCHING.max_concurrent,
        description="Concurrent ONNX Runtime executions per model version.",
    )
    inline_compute_us: int = Field(
        _BATCHING.inline_compute_us,
        ge=0,
        description="Batches of up to 4 rows run on the event loop instead of a worker thread "
        "while they measure below this many microseconds (cheaper than the hand-off for light "
        "models); 0 = always a worker thread.",
    )
    warmup: bool = Field(True, description="Run warmup inferences before a version is ready.")
    # --- dynamic batching ------------------------------------------------------------------
    batching: bool = Field(
        _BATCHING.merge, description="Dynamic batching (merge concurrent requests)."
    )
    max_batch_size: int = Field(
        _BATCHING.max_batch_size, description="Largest merged batch, in rows."
    )
    split_large_requests: bool = Field(
        _BATCHING.split_large_requests,
        description="A request of more than max_batch_size rows is computed max_batch_size rows "
        "at a time, each next chunk queued behind the requests that arrived meanwhile, so they "
        "wait for one chunk rather than the whole request (TF Serving's "
        "enable_large_batch_splitting). Off: it runs whole.",
    )
    batch_timeout_us: int = Field(
        _BATCHING.batch_timeout_us,
        description="How long a batch waits for more rows once compute is free (0 = take what is queued).",
    )
    batch_peer_wait_us: int = Field(
        _BATCHING.peer_wait_us,
        ge=0,
        description="With batch_timeout_us 0, while the event loop is saturated (its thread "
        f"{_BATCHING.peer_min_loop_busy * 100:.0f}%% busy) and requests queue up (last batch over one row): once compute is free, wait up to "
        "this long for as many rows as were recently in flight together. One client at a time "
        "never waits. 0 = take what is queued.",
    )
    batch_peer_idle_us: int = Field(
        _BATCHING.peer_idle_us,
        ge=0,
        description="A peer wait also ends after this long without a new request.",
    )
    preferred_batch_sizes: IntCommaList = Field(
        default_factory=lambda: list(_BATCHING.preferred_batch_sizes),
        description="Comma list; a batch reaching one is dispatched at once.",
    )
    allowed_batch_sizes: str = Field(
        "auto",
        description="Sizes a merged batch is padded up to, each warmed at load, so the model "
        "only ever sees these shapes: 'auto' = max_batch_size alone on a GPU (there every change "
        "of batch size rebuilds the convolution plans, about 0.4 s for ResNet50), none on the "
        "CPU; 'none'; or a comma list ending with max_batch_size. --cuda-graph pads to "
        "max_batch_size unless sizes are listed (then one session and graph per size).",
    )
    session_per_batch_size: bool = Field(
        False,
        description="With more than one allowed batch size: one ONNX Runtime session per size, so "
        "no session sees a second shape (no plan rebuilds on a GPU) at one copy of the model per "
        "size in memory and load time.",
    )
    max_queue_size: int = Field(
        _BATCHING.max_queue_size,
        ge=1,
        description="Queued requests per model beyond which arrivals are refused with 429 "
        "RESOURCE_EXHAUSTED (decided before decoding), up to refusal_share of the admissions; the "
        "others wait in the queue's overflow.",
    )
    refusal_share: float = Field(
        _BATCHING.refusal_share or 0.0,
        ge=0,
        description="While a model's queue is full, arrivals refused per request admitted; the "
        "others wait in the queue's overflow (pushback: a refused closed-loop client comes "
        "straight back, and refusing costs the event loop). 0 = refuse every arrival beyond "
        "max_queue_size.",
    )
    queue_overflow: int = Field(
        _BATCHING.queue_overflow,
        ge=0,
        description="Requests that may wait beyond max_queue_size (429 beyond).",
    )
    max_queue_bytes: int = Field(
        _BATCHING.max_queue_bytes,
        ge=1,
        description="Bytes of queued inputs per model (429 beyond; an empty queue takes any "
        "request the body limit admits).",
    )
    grpc_transport: Literal["gateway", "grpcio"] = Field(
        "gateway",
        description="Who speaks gRPC's HTTP/2: 'gateway' (the gateway's own protocol on the event "
        "loop, about 2x the calls per CPU second of grpc.aio) or 'grpcio' (grpc.aio). Both serve "
        "the same services with the same limits.",
    )
    grpc_max_streams_per_connection: int = Field(
        0,
        ge=0,
        description="HTTP/2 streams one gRPC connection may have open (SETTINGS_MAX_CONCURRENT_"
        "STREAMS): a client's calls beyond it wait in the client. 0 = the transport's default "
        "(1024 on the gateway's, no bound on grpcio's).",
    )
    grpc_max_concurrent_rpcs: int = Field(
        0,
        ge=0,
        description="gRPC calls handled at once; further calls wait inside gRPC's core, unread, "
        "until one ends. 0 = no limit.",
    )
    grpc_compressed_requests: bool = Field(
        True,
        description="Accept gzip/deflate-compressed gRPC requests (as TF Serving does). Each is "
        "inflated within --max-body-bytes, and gRPC holds about 3 copies of a message on its way "
        "in, so 60 KB of compressed zeros cost 180 MB; off, they are refused (UNIMPLEMENTED) "
        "before they are inflated.",
    )
    # --- limits ----------------------------------------------------------------------------
    max_body_bytes: int = Field(64 * 1024 * 1024, description="Largest request body (413 above).")
    max_request_batch: int = Field(1024, ge=1, description="Largest batch one request may carry.")
    max_header_bytes: int = Field(
        16 * 1024,
        ge=1024,
        description="Largest HTTP request line plus headers (431 above; the connection closes).",
    )
    max_connections: int = Field(
        2048,
        ge=1,
        description="Open HTTP connections; a connection beyond it gets 503 at once (keep the "
        "process's file descriptor limit above it).",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Time a client has to send a request's line and headers (408 and the "
        "connection closes; a new connection that sends nothing is closed).",
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="Time a client has to send a request's body (408 and close)."
    )
    keep_alive_timeout_s: int = Field(
        5, ge=1, description="An idle keep-alive HTTP connection is closed after this many seconds."
    )
    write_timeout_s: float = Field(
        30.0,
        gt=0,
        description="An HTTP connection whose client leaves its answers unread (more than the "
        "write buffer holds, or any after the connection was closed) with no progress for this "
        "long is reset.",
    )
    max_pipelined_requests: int = Field(
        1024,
        ge=1,
        description="Requests an HTTP connection may have queued behind an unanswered one "
        "(pipelining); beyond it the connection is reset.",
    )
    max_image_pixels: int = Field(
        0,
        ge=0,
        description="Largest image (width x height, read from its header before decoding; 413 "
        "above). 0 = 256x the model's input pixels, at least 2048x2048.",
    )
    max_request_image_pixels: int = Field(
        0,
        ge=0,
        description="Pixels all images of one request (a TF Serving JSON batch of b64 images) "
        "may declare together, counted before each is decoded; 413 above. 0 = 16x the "
        "per-image limit.",
    )
    decode_threads: int = Field(
        1,
        ge=1,
        description="Threads decoding big images and base64 bodies off the event loop, at low "
        "CPU priority.",
    )
    decode_queue: int = Field(
        64,
        ge=0,
        description="Decodes that may wait for a decode thread, and as many for a JSON decode "
        "process (429 beyond).",
    )
    json_offload_bytes: int = Field(
        256 * 1024,
        ge=0,
        description="JSON bodies of at least this many bytes (TF Serving :predict, KServe V2 "
        "infer without binary data) are decoded in separate processes at low CPU priority, so "
        "that parsing them does not stall the event loop. 0 = always on the event loop.",
    )
    json_decode_processes: int = Field(
        1,
        ge=1,
        description="Processes decoding big JSON bodies (started with the gateway, about 40 MB "
        "each).",
    )
    request_timeout_s: float = Field(
        30.0,
        description="Default deadline of a request (REST header x-request-timeout-ms overrides).",
    )
    drain_timeout_s: float = Field(
        30.0, description="SIGTERM: how long in-flight requests may finish."
    )
    # --- repository ------------------------------------------------------------------------
    model_config_file: Path | None = Field(
        None,
        description="TF Serving models.config (default: <repository>/models.config if present).",
    )
    version_policy: Literal["latest", "all", "specific"] = Field(
        "latest", description="Versions to serve when models.config says nothing."
    )
    num_versions: int = Field(1, description="latest policy: how many newest versions to serve.")
    versions: IntCommaList = Field(
        default_factory=list, description="specific policy: comma list of versions."
    )
    labels: CommaList = Field(
        default_factory=list,
        description="Version labels, comma list of model:label=version (override models.config).",
    )
    poll_interval_s: float = Field(
        5.0, description="Seconds between repository scans for new/removed versions (0 = off)."
    )
    # --- observability ---------------------------------------------------------------------
    access_log: str = Field(
        "off",
        description="One JSON line per request (id, peer, protocol, route, model, version, "
        "status, rows, bytes, queue wait, batch, compute, total): off, stderr, or a file path "
        "(appended to; workers share it). Written by a thread of its own; lines it cannot keep "
        "up with are dropped and counted, never the request delayed.",
    )
    access_log_sample: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="Share of successful requests the access log writes (errors and refusals "
        "are always written).",
    )
    trace_sample: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Share of requests traced with OpenTelemetry (exported over OTLP as the "
        "OTEL_* environment variables say, e.g. OTEL_EXPORTER_OTLP_ENDPOINT); a request whose "
        "W3C traceparent is sampled is traced too. 0 = tracing off (the SDK is not imported).",
    )
    # --- auth and extras -------------------------------------------------------------------
    api_keys: CommaList = Field(
        default_factory=list, description="Comma list of API keys; empty = no authentication."
    )
    auth_exempt_health: bool = Field(
        True, description="Health, readiness and /metrics need no API key."
    )
    http_fast_path: bool = Field(
        True,
        description="Serve :predict and /infer from the HTTP protocol itself, no ASGI cycle (off: FastAPI does).",
    )
    image_top_k: int = Field(5, description="Default number of labels the image endpoint returns.")

    _split = field_validator(
        "preferred_batch_sizes", "versions", "labels", "api_keys", mode="before"
    )(_split_commas)

    @field_validator("allowed_batch_sizes")
    @classmethod
    def _check_allowed_batch_sizes(cls, value: str) -> str:
        value = value.strip().lower()
        if value in ("auto", "none"):
            return value
        try:
            sizes = [int(item) for item in value.split(",") if item.strip()]
        except ValueError:
            raise ValueError("expected 'auto', 'none' or a comma list of sizes") from None
        if not sizes or sizes != sorted(set(sizes)) or sizes[0] < 1:
            raise ValueError("sizes must be positive and strictly ascending")
        return ",".join(map(str, sizes))

    @model_validator(mode="after")
    def _allowed_sizes_end_at_max(self) -> ServingSettings:
        sizes = self.padded_batch_sizes()
        if sizes and sizes[-1] != self.max_batch_size:
            raise ValueError(
                f"--allowed-batch-sizes must end with --max-batch-size ({self.max_batch_size}), "
                f"got {sizes[-1]}"
            )
        return self

    def padded_batch_sizes(self) -> tuple[int, ...] | None:
        """BatchingConfig.allowed_batch_sizes: None = decided per runtime ('auto')."""
        if self.allowed_batch_sizes in ("auto", "none"):
            if self.cuda_graph:  # a CUDA graph is captured for one shape
                return (self.max_batch_size,)
            return None if self.allowed_batch_sizes == "auto" else ()
        return tuple(int(size) for size in self.allowed_batch_sizes.split(","))

    def label_map(self) -> dict[str, dict[str, int]]:
        """Parse ``labels`` into ``{model: {label: version}}``."""
        result: dict[str, dict[str, int]] = {}
        for entry in self.labels:
            try:
                model, rest = entry.split(":", 1)
                label, version = rest.split("=", 1)
                result.setdefault(model, {})[label] = int(version)
            except ValueError as exc:
                raise ValueError(f"label {entry!r} is not model:label=version") from exc
        return result


def build_parser() -> argparse.ArgumentParser:
    """An argparse parser with one option per settings field, help taken from the field."""
    parser = argparse.ArgumentParser(
        prog="python -m serving",
        description="FastAPI + ONNX Runtime gateway speaking TF Serving REST/gRPC and KServe V2. "
        "Every option can also be set as SERVING_<OPTION> in the environment.",
    )
    for name, field in ServingSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = f"SERVING_{name.upper()}"
        default = field.get_default(call_default_factory=True)
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        help_text = f"{field.description} [env {env}; default: {shown}]"
        if field.annotation is bool:
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                help=help_text,
            )  # fmt: skip
        else:
            parser.add_argument(flag, dest=name, default=argparse.SUPPRESS, help=help_text)
    return parser


def settings_from_args(argv: list[str] | None = None) -> ServingSettings:
    """Settings from the environment, with the CLI options given in ``argv`` taking precedence.

    An invalid value exits with status 2 and one line per problem naming the option, as argparse
    does for unknown options, rather than a traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return ServingSettings(**vars(args))
    except ValidationError as exc:
        problems = "; ".join(
            f"--{str(error['loc'][0]).replace('_', '-')} (env SERVING_{str(error['loc'][0]).upper()}): "
            f"{error['msg']}"
            if error["loc"]
            else error["msg"]  # a rule across options names them itself
            for error in exc.errors()
        )
        parser.error(problems)

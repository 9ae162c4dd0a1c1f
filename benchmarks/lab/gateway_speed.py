"""Gateway speed, side by side in one run, on loopback.

LeNet (``model_repository/lenet`` if training has exported it, else the LeNet-like model from
``tests/tiny_models.py``), single-image requests, concurrency 1 and 32:

- in-process ONNX Runtime (the ceiling: no network, no serialisation), and the gateway's
  DynamicBatcher alone (32 asyncio callers, batching on and off, no transport);
- our gateway with batching on and off (and once without its pure-ASGI fast path, and once with
  ``--workers`` one per core), over REST JSON (TF Serving row format), KServe V2 binary and TF
  Serving gRPC (and, batching on, KServe V2 gRPC: ModelInfer with raw contents);
- a naive FastAPI + ONNX Runtime server (one ``session.run`` per request, on the event loop, JSON
  lists in and out, default session options);
- grpc.aio alone: a server whose Predict returns a prepared reply without reading the request,
  on uvloop like the gateway: the ceiling of grpc.aio in one Python process (issue 36's yardstick);
- the gateway's gRPC transport alone (``benchmarks.lab.grpc_transport_alone``): the same no-op
  Predict on ``serving.grpc.transport``, the ceiling of the gateway's own gRPC transport;
- idle/low-load CPU of the gateway for ONNX Runtime thread settings (spinning on/off).

HTTP load comes from Debian's ``wrk`` (C, one thread, Lua script for the POST body) so the client
does not hide server speed; gRPC load from nghttp2's ``h2load`` (C; Debian ``nghttp2-client``; one
HTTP/2 connection with as many streams as the concurrency, four per worker for a multi-worker
gateway, pre-framed Predict requests, gRPC
statuses checked through the gateway's request counter), or, without it, an asyncio grpc.aio client
in this process, which on a small host is itself the bottleneck. Both share the machine's cores
with the server: on a 2-core host these are lower bounds.

Then, with every server stopped, each part of one request is timed alone
(``benchmarks.lab.request_budget``) and the gateway at concurrency 32 is set against the limit those
parts add up to, per protocol (gRPC's transport: this run's gateway transport alone, else grpc.aio
alone); ``--no-parts`` skips it.
A last table sets the parts against what a request costs in situ: the gateway's CPU per request at
concurrency 32, the event-loop thread's apart from the others (compute, gRPC's own threads).

    python -m benchmarks.lab.gateway_speed [--duration 5] [--json out.json]   # from the repository root

Size: every row of the one side-by-side table (servers, loads, ceilings, the batcher alone) is
set up here, so that all rows are measured the same way in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

PREDICT_PATH = "/v1/models/{model}:predict"
INFER_PATH = "/v2/models/{model}/infer"


@dataclass
class Result:
    """One measured scenario."""

    server: str
    protocol: str
    concurrency: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_cpu_percent: float | None = None
    #: CPU of the server's event-loop thread (its main thread), % of one core; single-process
    #: servers only (a multi-worker gateway's main thread is the supervisor).
    loop_cpu_percent: float | None = None


# --- model -------------------------------------------------------------------------------------
#: where the probes look for a trained LeNet: the environment's BENCHMARKS_LENET_DIR, else the
#: checkout's model_repository/lenet; an empty value means never (the tests set it so: they must
#: not depend on what `make demo` left in the checkout)
LENET_DIR_ENV = "BENCHMARKS_LENET_DIR"


def trained_lenet_versions() -> list[Path]:
    """The trained LeNet's version directories that hold a model.onnx, oldest first."""
    configured = os.environ.get(LENET_DIR_ENV)
    if configured == "":
        return []
    trained = Path(configured) if configured else ROOT / "model_repository" / "lenet"
    found = (p for p in trained.glob("[0-9]*") if (p / "model.onnx").exists())
    return sorted(found, key=lambda p: int(p.name)) if trained.exists() else []


def prepare_repository(work: Path) -> tuple[Path, str, str]:
    """A repository with one LeNet version; returns (repository, model name, description)."""
    versions = trained_lenet_versions()
    repo = work / "repo"
    if versions:
        target = repo / "lenet" / versions[-1].name
        target.mkdir(parents=True)
        shutil.copy(versions[-1] / "model.onnx", target / "model.onnx")
        if (versions[-1] / "metadata.json").exists():
            shutil.copy(versions[-1] / "metadata.json", target / "metadata.json")
        return repo, "lenet", f"trained LeNet ({versions[-1]})"
    from tests.tiny_models import lenet_like, write_version

    write_version(repo, "lenet", 1, lenet_like())
    return repo, "lenet", "LeNet-like ONNX from tests/tiny_models.py (no trained export found)"


def model_file(repo: Path) -> Path:
    return next(repo.glob("lenet/*/model.onnx"))


def one_image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(1, 28, 28, 1), dtype=np.uint8)


# --- helpers -----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all threads) and of its live child processes
    (the workers of ``--workers``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    children = Path(f"/proc/{pid}/task/{pid}/children")
    child_pids = children.read_text().split() if children.exists() else []
    return own + sum(cpu_seconds(int(child)) for child in child_pids)


def thread_cpu_seconds(pid: int, tid: int) -> float:
    """User + system CPU seconds of one thread of a process."""
    fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


class Server:
    """A server subprocess; ``url`` / ``grpc`` parsed from its log."""

    def __init__(
        self, command: list[str], wait_for: str, env: dict[str, str] | None = None,
        connections: int = 1,
    ) -> None:  # fmt: skip
        #: gRPC load: HTTP/2 connections to spread the streams over (the kernel hands each
        #: connection to one worker process, so a multi-worker gateway needs several per worker).
        self.connections = connections
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, **(env or {})},
        )  # fmt: skip
        self.lines: list[str] = []
        self.url = ""
        self.grpc = ""
        assert self.process.stdout is not None
        end = time.monotonic() + 120
        for line in self.process.stdout:
            self.lines.append(line)
            if match := re.search(r"on (http://127\.0\.0\.1:\d+)", line):
                self.url = match.group(1)
            if match := re.search(r"gRPC .* on (127\.0\.0\.1:\d+)", line):
                self.grpc = match.group(1)
            if wait_for in line or time.monotonic() > end:
                break
        if not self.url and (
            match := re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", "".join(self.lines))
        ):
            self.url = match.group(1)
        if self.process.poll() is not None or not (self.url or self.grpc):
            raise RuntimeError("server did not start:\n" + "".join(self.lines))
        threading.Thread(
            target=lambda: self.lines.extend(self.process.stdout or []), daemon=True
        ).start()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


# --- load generators ---------------------------------------------------------------------------
WRK_LUA = """
local f = io.open(os.getenv("WRK_BODY"), "rb")
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = os.getenv("WRK_CTYPE")
local hl = os.getenv("WRK_HEADER_LENGTH")
if hl and hl ~= "" then wrk.headers["Inference-Header-Content-Length"] = hl end
"""


def _ms(text: str) -> float:
    match = re.match(r"([0-9.]+)(us|ms|s)", text)
    assert match, text
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def wrk(url: str, body: bytes, content_type: str, concurrency: int, duration: float, work: Path,
        header_length: int | None = None, pid: int | None = None) -> tuple[float, float, float, int, float | None]:  # fmt: skip
    """(requests/s, p50 ms, p99 ms, errors, server CPU %) from one wrk run."""
    body_file = work / "body.bin"
    body_file.write_bytes(body)
    script = work / "post.lua"
    script.write_text(WRK_LUA)
    env = {**os.environ, "WRK_BODY": str(body_file), "WRK_CTYPE": content_type,
           "WRK_HEADER_LENGTH": str(header_length) if header_length is not None else ""}  # fmt: skip
    cpu_before = cpu_seconds(pid) if pid else 0.0
    started = time.monotonic()
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{duration:g}s", "--latency", "-s", str(script), url],
        env=env, capture_output=True, text=True, timeout=duration + 60, check=True,
    ).stdout  # fmt: skip
    elapsed = time.monotonic() - started
    cpu = (cpu_seconds(pid) - cpu_before) / elapsed * 100 if pid else None
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    errors = int(bad.group(1)) if bad else 0
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    return rps, p50, p99, errors, cpu


async def _grpc_load(
    target: str, request: bytes, concurrency: int, duration: float
) -> tuple[list[float], int, float]:
    import grpc

    from clients import wire

    latencies: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(wire.PREDICT_METHOD)  # bytes in, bytes out: minimal client cost
        await call(request, timeout=30)
        end = time.perf_counter() + duration

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < end:
                start = time.perf_counter()
                try:
                    await call(request, timeout=30)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - start)

        started = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        return latencies, errors, time.perf_counter() - started


def grpc_status_counts(metrics_url: str, protocol: str = "grpc") -> dict[str, float]:
    """The gateway's gRPC request counter so far (``protocol``: TF Serving's ``grpc`` or
    KServe V2's ``v2-grpc``), by gRPC status name.

    h2load sees only HTTP/2 statuses (always 200 for gRPC), so the gRPC status of its requests
    comes from the gateway's own ``serving_requests_total``, read before and after a run.
    """
    import urllib.request

    with urllib.request.urlopen(metrics_url, timeout=10) as reply:
        return requests_by_status(reply.read().decode(), protocol)


def requests_by_status(metrics_text: str, protocol: str) -> dict[str, float]:
    """``serving_requests_total`` of one protocol in a ``/metrics`` text, summed over models and
    versions, by status; read with prometheus_client's parser (the gateway's own dependency)."""
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "serving_requests_total" and sample.labels["protocol"] == protocol:
                status = sample.labels["status"]
                counts[status] = counts.get(status, 0.0) + sample.value
    return counts


def grpc_failures(metrics_url: str, protocol: str = "grpc") -> float:
    """gRPC requests answered with a status other than OK or CANCELLED (a client hanging up)."""
    counts = grpc_status_counts(metrics_url, protocol)
    return sum(value for status, value in counts.items() if status not in ("OK", "CANCELLED"))


def h2load_grpc(target: str, concurrency: int, duration: float, work: Path, pid: int,
                metrics_url: str | None = None, connections: int = 1, *,
                method: str | None = None, request: bytes | None = None,
                failed: Callable[[], float] | None = None,
                ) -> tuple[float, float, float, int, float]:  # fmt: skip
    """gRPC load from nghttp2's ``h2load`` (C): ``connections`` HTTP/2 connections (1: like one
    grpc channel) sharing ``concurrency`` streams in flight. By default a TF Serving Predict of one
    LeNet image, its failures read from ``metrics_url``; ``method``, ``request`` (a serialised
    message) and ``failed`` (failures counted so far) load another service. Returns (req/s, p50 ms,
    p99 ms, errors, server CPU %)."""
    connections = max(1, min(connections, concurrency))
    from clients import wire

    if request is None:
        request = wire.build_predict_request("lenet", {"image": one_image()}).SerializeToString()
    if failed is None:
        failed = (lambda: grpc_failures(metrics_url)) if metrics_url else (lambda: 0.0)
    body_file = work / "grpc_request.bin"
    body_file.write_bytes(b"\x00" + len(request).to_bytes(4, "big") + request)  # gRPC frame
    log_file = work / "h2load.log"
    log_file.unlink(missing_ok=True)
    failed_before = failed()
    cpu_before, started = cpu_seconds(pid), time.monotonic()
    out = subprocess.run(
        ["h2load", f"-c{connections}", f"-m{concurrency // connections}", f"-D{duration:g}", "--warm-up-time=1",
         f"--log-file={log_file}", "-H", "content-type: application/grpc", "-H", "te: trailers",
         "-d", str(body_file), f"http://{target}{method or wire.PREDICT_METHOD}"],
        capture_output=True, text=True, timeout=duration + 60, check=True,
    ).stdout  # fmt: skip
    cpu = (cpu_seconds(pid) - cpu_before) / (time.monotonic() - started) * 100
    rps = float(re.search(r"finished in \S+, ([0-9.]+) req/s", out).group(1))  # type: ignore[union-attr]
    rows = [line.split("\t") for line in log_file.read_text().splitlines() if line]
    latencies = [int(row[2]) / 1e6 for row in rows if row[1] == "200"]
    errors = sum(1 for row in rows if row[1] != "200") + int(failed() - failed_before)
    return rps, percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000, errors, cpu


def grpc_bench(
    target: str, concurrency: int, duration: float, pid: int
) -> tuple[float, float, float, int, float]:
    """gRPC Predict load from a grpc.aio client in this process (when h2load is missing)."""
    from clients import wire

    request = wire.build_predict_request("lenet", {"image": one_image()}).SerializeToString()
    cpu_before, started = cpu_seconds(pid), time.monotonic()
    try:
        import uvloop

        latencies, errors, elapsed = uvloop.run(_grpc_load(target, request, concurrency, duration))
    except ImportError:
        latencies, errors, elapsed = asyncio.run(_grpc_load(target, request, concurrency, duration))
    cpu = (cpu_seconds(pid) - cpu_before) / (time.monotonic() - started) * 100
    return (
        len(latencies) / elapsed,
        percentile(latencies, 50) * 1000,
        percentile(latencies, 99) * 1000,
        errors,
        cpu,
    )


# --- scenarios ---------------------------------------------------------------------------------
def in_process_ceiling(repo: Path, duration: float) -> list[Result]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(
        str(model_file(repo)), options, providers=["CPUExecutionProvider"]
    )
    results = []
    for batch in (1, 32):
        images = np.repeat(one_image(), batch, axis=0)
        latencies: list[float] = []
        end = time.perf_counter() + duration
        while time.perf_counter() < end:
            start = time.perf_counter()
            session.run(None, {"image": images})
            latencies.append(time.perf_counter() - start)
        total = sum(latencies)
        results.append(Result(f"in-process ORT (batch {batch})", "numpy", 1, batch * len(latencies) / total,
                              percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000, 0))  # fmt: skip
    return results


def rest_json_body() -> bytes:
    return json.dumps({"instances": one_image().tolist()}).encode()


def v2_binary_body() -> tuple[bytes, int]:
    image = one_image()
    header = json.dumps({
        "inputs": [{"name": "image", "shape": [1, 28, 28, 1], "datatype": "UINT8",
                    "parameters": {"binary_data_size": image.nbytes}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
    }).encode()  # fmt: skip
    return header + image.tobytes(), len(header)


#: the line a gateway logs once both its ports listen (its last startup line: other lines, such as
#: tracing's "OTLP gRPC", may name gRPC before the port is open)
GATEWAY_READY = "gRPC (TF Serving"


def start_gateway(repo: Path, extra: list[str], workers: int = 1) -> Server:
    workers_option = ["--workers", str(workers)] if workers != 1 else []
    return Server(
        [sys.executable, "-m", "serving", "--repository", str(repo), "--host", "127.0.0.1",
         "--http-port", "0", "--grpc-port", "0", "--device", "cpu", "--poll-interval-s", "0",
         *extra, *workers_option],
        wait_for="workers ready" if workers != 1 else GATEWAY_READY,
        # The kernel hashes each connection to one worker: with one connection per worker, two
        # often land on the same one. Four per worker spread the streams (on one process the
        # connection count made no difference: -c1 -m32 and -c32 -m1 measured alike).
        connections=1 if workers == 1 else 4 * workers,
    )  # fmt: skip


WORKERS = os.cpu_count() or 1
MULTI = f"gateway, batching on, {WORKERS} workers"


def measure(
    server: Server, protocol: str, concurrency: int, duration: float, work: Path
) -> tuple[float, float, float, int, float | None]:
    """One measurement of one protocol against one running server."""
    pid = server.process.pid
    if protocol == "REST JSON":
        path = PREDICT_PATH.format(model="lenet")
        return wrk(
            server.url + path,
            rest_json_body(),
            "application/json",
            concurrency,
            duration,
            work,
            pid=pid,
        )
    if protocol == "V2 binary":
        body, header_length = v2_binary_body()
        path = INFER_PATH.format(model="lenet")
        return wrk(
            server.url + path,
            body,
            "application/octet-stream",
            concurrency,
            duration,
            work,
            header_length,
            pid,
        )
    metrics_url = server.url + "/metrics" if server.url else None  # grpc.aio alone has none
    if protocol == "V2 gRPC":  # KServe V2's ModelInfer, the image as raw_input_contents
        from clients import v2_grpc

        if not shutil.which("h2load"):
            raise SystemExit("V2 gRPC needs h2load (Debian package nghttp2-client)")
        request = v2_grpc.build_infer_request("lenet", {"image": one_image()})
        return h2load_grpc(
            server.grpc, concurrency, duration, work, pid, connections=server.connections,
            method=v2_grpc.MODEL_INFER_METHOD, request=request.SerializeToString(),
            failed=(lambda: grpc_failures(metrics_url, "v2-grpc")) if metrics_url else None,
        )  # fmt: skip
    if shutil.which("h2load"):
        return h2load_grpc(server.grpc, concurrency, duration, work, pid, metrics_url,
                           server.connections)  # fmt: skip
    return grpc_bench(server.grpc, concurrency, duration, pid)


def side_by_side(
    repo: Path, duration: float, work: Path, rounds: int, concurrencies: tuple[int, ...]
) -> list[Result]:
    """Every server runs at once; the scenarios are interleaved round by round and the median
    round is reported, so a neighbour's burst of load hits all of them alike."""
    servers = {
        "gateway, batching on": start_gateway(repo, []),
        "gateway, batching off": start_gateway(repo, ["--no-batching"]),
        # the same gateway without its pure-ASGI fast path: every request through FastAPI routing
        "gateway, batching on, FastAPI routing": start_gateway(repo, ["--no-http-fast-path"]),
    }
    if WORKERS > 1:  # one process per core, as --workers 0 would start
        servers[MULTI] = start_gateway(repo, [], workers=WORKERS)
    servers["naive FastAPI+ORT"] = Server(
        [
            sys.executable,
            "-m",
            "benchmarks.lab.naive_server",
            str(model_file(repo)),
            str(free_port()),
        ],
        wait_for="Uvicorn running",
    )
    servers[GRPC_ALONE] = start_grpc_aio_alone()
    servers[TRANSPORT_ALONE] = start_grpc_transport_alone()
    protocols = {
        "naive FastAPI+ORT": ("REST JSON",),
        GRPC_ALONE: ("gRPC",),
        TRANSPORT_ALONE: ("gRPC",),
        "gateway, batching on, FastAPI routing": ("REST JSON", "V2 binary"),
        "gateway, batching on": ("REST JSON", "V2 binary", "gRPC", "V2 gRPC"),
    }
    plan = [
        (name, protocol, concurrency)
        for concurrency in concurrencies
        for name in servers
        for protocol in protocols.get(name, ("REST JSON", "V2 binary", "gRPC"))
    ]
    samples: dict[tuple[str, str, int], list[tuple[float, float, float, int, float | None, float | None]]] = {
        k: [] for k in plan
    }  # fmt: skip
    try:
        for round_number in range(rounds):
            for key in plan:
                server = servers[key[0]]
                single = key[0] != MULTI
                pid = server.process.pid
                loop_before = thread_cpu_seconds(pid, pid) if single else 0.0
                started = time.monotonic()
                measured = measure(server, key[1], key[2], duration, work)
                loop_cpu = (
                    (thread_cpu_seconds(pid, pid) - loop_before) / (time.monotonic() - started) * 100
                    if single else None
                )  # fmt: skip
                samples[key].append((*measured, loop_cpu))
            print(f"round {round_number + 1}/{rounds} done", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    results = []
    for (name, protocol, concurrency), runs in samples.items():
        runs.sort(key=lambda run: run[0])
        rps, p50, p99, _errors, cpu, loop_cpu = runs[len(runs) // 2]
        results.append(
            Result(name, protocol, concurrency, rps, p50, p99, sum(r[3] for r in runs), cpu,
                   loop_cpu)
        )  # fmt: skip
    return results


GRPC_ALONE = "grpc.aio alone, no-op Predict"
TRANSPORT_ALONE = "gateway's gRPC transport alone, no-op Predict"


def start_grpc_aio_alone() -> Server:
    """grpc.aio's ceiling, ``benchmarks.lab.grpc_aio_alone``."""
    return Server(
        [sys.executable, "-m", "benchmarks.lab.grpc_aio_alone"], wait_for="gRPC (grpc.aio alone) on"
    )


def start_grpc_transport_alone() -> Server:
    """The gateway's gRPC transport's ceiling, ``benchmarks.lab.grpc_transport_alone``."""
    return Server(
        [sys.executable, "-m", "benchmarks.lab.grpc_transport_alone"],
        wait_for="gRPC (transport alone) on",
    )


def spinning_scenarios(repo: Path, duration: float, work: Path) -> list[Result]:
    """One gRPC client (low load) with several ONNX Runtime thread settings: the CPU the server
    burns and what it gets for it (docs/ARCHITECTURE.md, known traps: an idle spinning thread
    pool)."""
    results = []
    for label, extra in (
        ("intra-op 1 (the default rule picks it for LeNet)", []),
        ("intra-op 0 (all cores), spinning on", ["--intra-op-threads", "0", "--allow-spinning"]),
        (
            "intra-op 0 (all cores), spinning off",
            ["--intra-op-threads", "0", "--no-allow-spinning"],
        ),
    ):
        server = start_gateway(repo, extra)
        try:
            rps, p50, p99, err, cpu = grpc_bench(server.grpc, 1, duration, server.process.pid)
            results.append(Result(f"gateway, {label}", "gRPC", 1, rps, p50, p99, err, cpu))
        finally:
            server.stop()
    return results


def batcher_scenarios(repo: Path, duration: float) -> list[Result]:
    """The batching layer alone: 32 asyncio callers on one DynamicBatcher over ONNX Runtime, no
    transport. Shows what batching saves before HTTP/gRPC handling dilutes it."""
    from serving.batching import BatchingConfig, DynamicBatcher
    from serving.metrics import GatewayMetrics
    from serving.runtimes.onnx import OnnxOptions, OnnxRuntime

    async def run(merge: bool) -> Result:
        runtime = OnnxRuntime(model_file(repo).parent, OnnxOptions(device="cpu"))
        batcher = DynamicBatcher(runtime, "lenet", 1, BatchingConfig(merge=merge), GatewayMetrics())
        image = {"image": one_image()}
        latencies: list[float] = []
        end = time.perf_counter() + duration

        async def caller() -> None:
            while time.perf_counter() < end:
                start = time.perf_counter()
                await batcher.infer(image, time.monotonic() + 30)
                latencies.append(time.perf_counter() - start)

        started = time.perf_counter()
        await asyncio.gather(*[caller() for _ in range(32)])
        elapsed = time.perf_counter() - started
        batcher.close()
        name = f"in-process DynamicBatcher, batching {'on' if merge else 'off'}"
        return Result(name, "numpy", 32, len(latencies) / elapsed,
                      percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000, 0)  # fmt: skip

    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    return [runner(run(merge)) for merge in (True, False)]


def table(results: list[Result]) -> str:
    lines = [
        "| server | protocol | concurrency | requests/s | p50 ms | p99 ms | errors | server CPU % |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        cpu = f"{r.server_cpu_percent:.0f}" if r.server_cpu_percent is not None else "-"
        lines.append(f"| {r.server} | {r.protocol} | {r.concurrency} | {r.requests_per_s:,.0f} | "
                     f"{r.p50_ms:.3f} | {r.p99_ms:.3f} | {r.errors} | {cpu} |")  # fmt: skip
    return "\n".join(lines)


def ratios(results: list[Result]) -> list[str]:
    def rps(server: str, protocol: str, concurrency: int) -> float:
        for r in results:
            if r.server == server and r.protocol == protocol and r.concurrency == concurrency:
                return r.requests_per_s
        return float("nan")

    lines = []
    for protocol in ("REST JSON", "V2 binary", "gRPC"):
        on, off = (
            rps("gateway, batching on", protocol, 32),
            rps("gateway, batching off", protocol, 32),
        )
        lines.append(f"- batching on / off at concurrency 32, {protocol}: {on / off:.2f}x")
    for protocol in ("REST JSON", "V2 binary"):
        fast = rps("gateway, batching on", protocol, 32)
        routed = rps("gateway, batching on, FastAPI routing", protocol, 32)
        lines.append(
            f"- fast path / FastAPI routing at concurrency 32, {protocol}: {fast / routed:.2f}x"
        )
    naive = rps("naive FastAPI+ORT", "REST JSON", 32)
    for server in ("gateway, batching on", MULTI):
        for protocol in ("REST JSON", "V2 binary", "gRPC"):
            ours = rps(server, protocol, 32)
            if ours == ours:  # measured (not NaN)
                lines.append(f"- {server}, {protocol} / naive FastAPI+ORT (REST JSON) at concurrency 32: "
                             f"{ours / naive:.2f}x")  # fmt: skip
    alone = rps(GRPC_ALONE, "gRPC", 32)
    transport_alone = rps(TRANSPORT_ALONE, "gRPC", 32)
    for server in ("gateway, batching on", "gateway, batching off"):
        ours = rps(server, "gRPC", 32)
        lines.append(f"- {server}, gRPC / grpc.aio alone (no-op Predict) at concurrency 32: "
                     f"{ours / alone:.2f}")  # fmt: skip
        if transport_alone == transport_alone:  # measured (not NaN)
            lines.append(f"- {server}, gRPC / the gateway's gRPC transport alone at concurrency "
                         f"32: {ours / transport_alone:.2f}")  # fmt: skip
    v2 = rps("gateway, batching on", "V2 gRPC", 32)
    if v2 == v2:  # measured (not NaN)
        tf = rps("gateway, batching on", "gRPC", 32)
        lines.append(f"- gateway, batching on, V2 gRPC at concurrency 32: {v2 / tf:.2f}x TF Serving "
                     f"gRPC, {v2 / alone:.2f} of grpc.aio alone")  # fmt: skip
    grpc_p50 = [
        r.p50_ms
        for r in results
        if r.server == "gateway, batching on" and r.protocol == "gRPC" and r.concurrency == 1
    ]
    if grpc_p50:
        lines.append(f"- gRPC p50 at concurrency 1 (batching on): {grpc_p50[0]:.3f} ms")
    return lines


def grpc_parts_us(budget: dict[str, Any], alone_calls_per_s: float) -> float:
    """gRPC's parts: its stages from ``budget`` plus a transport alone's time per call."""
    return float(budget["paths"]["gRPC (without transport)"]["total_us"]) + 1e6 / alone_calls_per_s


def parts_report(results: list[Result], budget: dict[str, Any]) -> list[str]:
    """The gateway at concurrency 32 against the limit its parts add up to, per protocol.

    ``budget`` is ``benchmarks.lab.request_budget.measure``'s result (each stage timed alone, the HTTP
    transport under wrk). gRPC's transport is the gateway's transport alone's measured cost per
    call (this run's row; grpc.aio alone's where it was not measured), its other stages from
    ``budget``; issue 36's yardstick, grpc.aio alone, gets a row of its own.
    """

    def rps(server: str, protocol: str) -> float:
        return next((r.requests_per_s for r in results
                     if r.server == server and r.protocol == protocol and r.concurrency == 32),
                    float("nan"))  # fmt: skip

    lines = ["| protocol | parts, us per request | limit, requests/s | gateway c=32 | gateway / limit |",
             "|---|---:|---:|---:|---:|"]  # fmt: skip
    paths = budget["paths"]
    rows: list[tuple[str, float, str]] = []
    for protocol in ("REST JSON", "V2 binary"):
        path = paths[protocol]
        note = f" (without {', '.join(path['missing'])})" if path["missing"] else ""
        rows.append((protocol + note, path["total_us"], protocol))
    alone = rps(GRPC_ALONE, "gRPC")
    transport_alone = rps(TRANSPORT_ALONE, "gRPC")
    if transport_alone == transport_alone and transport_alone > 0:
        grpc_us = grpc_parts_us(budget, transport_alone)
        rows.append(("gRPC (transport: the gateway's, alone)", grpc_us, "gRPC"))
    elif alone == alone and alone > 0:
        grpc_us = grpc_parts_us(budget, alone)
        rows.append(("gRPC (transport: grpc.aio alone)", grpc_us, "gRPC"))
    for label, total_us, protocol in rows:
        ours = rps("gateway, batching on", protocol)
        limit = 1e6 / total_us
        lines.append(
            f"| {label} | {total_us:.1f} | {limit:,.0f} | {ours:,.0f} | {ours / limit:.2f} |"
        )
    if alone == alone and alone > 0:
        ours = rps("gateway, batching on", "gRPC")
        lines.append(f"| gRPC against grpc.aio alone ({alone:,.0f}/s) | | | {ours:,.0f} | "
                     f"{ours / alone:.2f} |")  # fmt: skip
    return lines


def in_situ_report(results: list[Result], budget: dict[str, Any]) -> list[str]:
    """What a request costs inside the running gateway at concurrency 32 (CPU per request, from
    its CPU share and its rate), set against the sum of its parts timed alone.

    The gap is what the parts miss in situ: caches shared with the load generator and the compute
    thread on a small host, wake-ups, and work no stage owns. The two no-op gRPC servers give each
    transport's own in-situ cost per call.
    """
    lines = ["| protocol | parts alone, us | in situ: whole process, us | event-loop thread, us | "
             "other threads, us | in situ / parts |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    paths = budget["paths"]
    parts = {"REST JSON": paths["REST JSON"]["total_us"],
             "V2 binary": paths["V2 binary"]["total_us"]}  # fmt: skip
    for transport in (GRPC_ALONE, TRANSPORT_ALONE):  # the gateway's transport, where measured
        alone = next((r for r in results if r.server == transport and r.concurrency == 32), None)
        if alone is not None:
            parts["gRPC"] = grpc_parts_us(budget, alone.requests_per_s)
    rows = [("gateway, batching on", protocol) for protocol in ("REST JSON", "V2 binary", "gRPC")]
    rows += [(GRPC_ALONE, "gRPC"), (TRANSPORT_ALONE, "gRPC")]
    for server, protocol in rows:
        r = next((r for r in results if r.server == server and r.protocol == protocol
                  and r.concurrency == 32), None)  # fmt: skip
        if r is None or r.server_cpu_percent is None or r.loop_cpu_percent is None:
            continue
        whole = r.server_cpu_percent * 1e4 / r.requests_per_s
        loop = r.loop_cpu_percent * 1e4 / r.requests_per_s
        if server == GRPC_ALONE:
            label, part, ratio = "grpc.aio alone (no-op Predict)", "-", "-"
        elif server == TRANSPORT_ALONE:
            label, part, ratio = "the gateway's gRPC transport alone (no-op Predict)", "-", "-"
        else:
            label, part, ratio = (
                protocol,
                f"{parts[protocol]:.1f}",
                f"{whole / parts[protocol]:.2f}",
            )
        lines.append(
            f"| {label} | {part} | {whole:.1f} | {loop:.1f} | {whole - loop:.1f} | {ratio} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement (whole)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds (median reported)"
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument(
        "--skip-spinning", action="store_true", help="leave out the thread-setting runs"
    )
    parser.add_argument(
        "--batcher-only", action="store_true", help="only the in-process ceiling and batcher runs"
    )
    parser.add_argument(
        "--no-parts", action="store_true",
        help="leave out the per-request parts (benchmarks.lab.request_budget) and the limit they make",
    )  # fmt: skip
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found (Debian package 'wrk'; `make setup` installs it as root)")
    concurrencies = (1, 32)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        repo, _, description = prepare_repository(work)
        print(
            f"model: {description}; {args.duration:g} s per measurement; {os.cpu_count()} CPUs",
            flush=True,
        )
        results = in_process_ceiling(repo, args.duration)
        results += batcher_scenarios(repo, args.duration)
        if args.batcher_only:
            print(table(results))
            return
        results += side_by_side(repo, args.duration, work, args.rounds, concurrencies)
        if not args.skip_spinning:
            results += spinning_scenarios(repo, args.duration, work)
    budget: dict[str, Any] | None = None
    if not args.no_parts:  # after the servers have stopped: every stage is timed alone
        from benchmarks.lab import request_budget

        print("timing each part of a request alone (benchmarks.lab.request_budget)", flush=True)
        budget = request_budget.measure(0.3, 5, float(args.duration))
    print(table(results))
    print()
    print("\n".join(ratios(results)))
    if budget is not None:
        print()
        print("\n".join(parts_report(results, budget)))
        print()
        print("\n".join(in_situ_report(results, budget)))
    if args.json:
        report = {"model": description, "results": [asdict(r) for r in results], "parts": budget}
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

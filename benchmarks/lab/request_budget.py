"""What one request may cost the gateway, stage by stage, and what each stage costs now.

One LeNet image per request (``model_repository/lenet`` if training has exported it, else the
LeNet-like model of ``tests/tiny_models.py``), each stage of the hot path timed on its own in this
process with the gateway's own code: decode, validation, admission, the batcher's event-loop work,
the request's share of a batch-32 ONNX Runtime run, encode, metrics; and the HTTP transport alone
(the gateway's HTTP protocol serving a do-nothing hot route, ``benchmarks.lab.noop_http``, under
``wrk -t1 -c32``, when ``wrk`` is installed; also through uvicorn's ASGI cycle, for comparison).
The stages add up to the per-request cost of one gateway process and so to its limit in
requests/s (with compute on its own thread the limit is an upper bound: the two cores are shared
with the load generator). Each stage is checked against its budget in
``docs/ARCHITECTURE.md`` ("The per-request cost budget"); a stage over budget is flagged.

    python -m benchmarks.lab.request_budget [--seconds 0.3] [--rounds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

HTTP_TRANSPORT = "HTTP transport (protocol, no-op hot route)"
#: not on any path: what a request would cost with uvicorn's ASGI cycle (every non-hot route does)
HTTP_TRANSPORT_ASGI = "HTTP transport via ASGI (uvicorn's cycle, no-op app)"
#: Microseconds each stage may cost one request (one process, this repository's reference
#: 2-core machine). The same table is in docs/ARCHITECTURE.md.
BUDGET_US: dict[str, float] = {
    HTTP_TRANSPORT: 20.0,
    HTTP_TRANSPORT_ASGI: 40.0,
    "REST JSON decode": 20.0,
    "V2 binary decode": 10.0,
    "gRPC decode (parse + declared checks)": 10.0,
    "validation": 5.0,
    "admission": 2.0,
    "batcher, event-loop CPU": 20.0,
    "compute share (batch 32)": 60.0,
    "REST JSON encode": 6.0,
    "V2 binary encode": 6.0,
    "gRPC encode": 6.0,
    "metrics": 2.0,
}
#: The stages one request of each protocol goes through (the transport is measured for HTTP only:
#: grpc.aio's per-call cost is in ``benchmarks.lab.gateway_speed``'s "grpc.aio alone" row).
PATHS: dict[str, list[str]] = {
    "REST JSON": [
        HTTP_TRANSPORT, "REST JSON decode", "validation",
        "admission", "batcher, event-loop CPU", "compute share (batch 32)", "REST JSON encode",
        "metrics",
    ],
    "V2 binary": [
        HTTP_TRANSPORT, "V2 binary decode", "validation",
        "admission", "batcher, event-loop CPU", "compute share (batch 32)", "V2 binary encode",
        "metrics",
    ],
    "gRPC (without transport)": [
        "gRPC decode (parse + declared checks)", "validation", "admission",
        "batcher, event-loop CPU", "compute share (batch 32)", "gRPC encode", "metrics",
    ],
}  # fmt: skip


def model_dir(work: Path) -> Path:
    """The version directory of the model every stage runs."""
    from benchmarks.lab.gateway_speed import trained_lenet_versions

    versions = trained_lenet_versions()
    if versions:
        return versions[-1]
    from tests.tiny_models import lenet_like, write_version

    return write_version(work, "lenet", 1, lenet_like())


def per_call_us(function: Callable[[], Any], seconds: float, rounds: int) -> float:
    """Median over ``rounds`` of the mean time of one call, in microseconds."""
    function()  # warm caches and lazy imports
    results = []
    for _ in range(rounds):
        calls = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            for _ in range(100):
                function()
            calls += 100
            now = time.perf_counter()
            if now >= deadline:
                break
        results.append((now - start) / calls * 1e6)
    return statistics.median(results)


def codec_stages(runtime: Any, seconds: float, rounds: int) -> dict[str, float]:
    """Decode, validation, admission, encode and metrics, each on its own."""
    from clients import v2 as v2_wire
    from clients import wire
    from clients.codec import ndarray_to_tensor_proto
    from serving.batching import BatchingConfig, DynamicBatcher
    from serving.codecs import tfserving, v2
    from serving.grpc.server import _decode_inputs
    from serving.metrics import GatewayMetrics
    from serving.validation import DEFAULT_LIMITS, validate_inputs

    image = np.random.default_rng(0).integers(0, 256, size=(1, 28, 28, 1), dtype=np.uint8)
    specs = runtime.inputs
    name = specs[0].name
    outputs = runtime.predict({name: image})
    rest_body = json.dumps({"instances": image.tolist()}).encode()
    v2_body, v2_headers = v2_wire.encode_tensors("inputs", {name: image})
    v2_length = v2_headers[v2_wire.HEADER_LENGTH]
    v2_request = v2.decode_infer(v2_body, v2_length, specs, DEFAULT_LIMITS)
    grpc_body = wire.build_predict_request("lenet", {name: image}).SerializeToString()
    metrics = GatewayMetrics()
    batcher = DynamicBatcher(runtime, "lenet", 1, BatchingConfig(), metrics)

    def grpc_decode() -> None:
        _decode_inputs(wire.PredictRequest.FromString(grpc_body), specs, DEFAULT_LIMITS)

    def grpc_encode() -> None:
        response = wire.PredictResponse(
            outputs={key: ndarray_to_tensor_proto(value) for key, value in outputs.items()}
        )
        response.model_spec.name = "lenet"
        response.model_spec.version.value = 1
        response.model_spec.signature_name = wire.DEFAULT_SIGNATURE
        response.SerializeToString()

    def admit() -> None:
        batcher.admit(len(rest_body))

    stages = {
        "REST JSON decode": lambda: tfserving.decode_simple_predict(
            rest_body, specs, DEFAULT_LIMITS
        ),
        "V2 binary decode": lambda: v2.decode_infer(v2_body, v2_length, specs, DEFAULT_LIMITS),
        "gRPC decode (parse + declared checks)": grpc_decode,
        "validation": lambda: validate_inputs({name: image}, specs, DEFAULT_LIMITS, declared=True),
        "admission": admit,
        "REST JSON encode": lambda: tfserving.encode_predict(outputs, True),
        "V2 binary encode": lambda: v2.encode_infer("lenet", 1, outputs, v2_request),
        "gRPC encode": grpc_encode,
        "metrics": lambda: metrics.count_request("lenet", "1", "rest", "OK", 0.001),
    }
    # The batcher only admits here; it never starts, and closing it would close the runtime.
    return {stage: per_call_us(run, seconds, rounds) for stage, run in stages.items()}


def compute_share_us(runtime: Any, seconds: float, rounds: int) -> float:
    """One request's share of a batch-32 run (what batching at c=32 gives each request)."""
    batch = np.random.default_rng(1).integers(0, 256, size=(32, 28, 28, 1), dtype=np.uint8)
    feeds = {runtime.inputs[0].name: batch}
    return per_call_us(lambda: runtime.predict(feeds), seconds, rounds) / 32


def batcher_loop_us(make_runtime: Callable[[], Any], seconds: float, rounds: int) -> float:
    """Event-loop CPU per request through the DynamicBatcher with 32 callers (the compute runs on
    the batcher's worker thread and is not counted). Each round's batcher owns a new runtime."""
    from serving.batching import BatchingConfig, DynamicBatcher
    from serving.metrics import GatewayMetrics

    async def one_round() -> float:
        runtime = make_runtime()
        feeds = runtime.zero_feeds(1)
        batcher = DynamicBatcher(runtime, "lenet", 1, BatchingConfig(), GatewayMetrics())
        done = 0
        end = time.perf_counter() + seconds

        async def caller() -> None:
            nonlocal done
            while time.perf_counter() < end:
                await batcher.infer(feeds, time.monotonic() + 30)
                done += 1

        cpu = time.thread_time()
        await asyncio.gather(*[caller() for _ in range(32)])
        cpu = time.thread_time() - cpu
        batcher.close()
        return cpu / max(done, 1) * 1e6

    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    runner(one_round())  # warm-up
    return statistics.median(runner(one_round()) for _ in range(rounds))


def transport_us(seconds: float, work: Path, asgi: bool = False) -> float | None:
    """1 / requests-per-second of ``benchmarks.lab.noop_http`` (the gateway's HTTP protocol serving a
    do-nothing hot route; ``asgi``: a do-nothing ASGI app) under ``wrk -t1 -c32`` with the REST
    body: the HTTP transport's share of one process."""
    if shutil.which("wrk") is None:
        return None
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    body = work / "body.json"
    image = np.random.default_rng(0).integers(0, 256, size=(1, 28, 28, 1), dtype=np.uint8)
    body.write_bytes(json.dumps({"instances": image.tolist()}).encode())
    script = work / "post.lua"
    script.write_text(
        f'wrk.method = "POST"\nlocal f = io.open("{body}", "rb")\nwrk.body = f:read("*all")\n'
        'f:close()\nwrk.headers["Content-Type"] = "application/json"\n'
    )
    command = [sys.executable, "-m", "benchmarks.lab.noop_http", str(port)] + (
        ["--asgi"] if asgi else []
    )
    server = subprocess.Popen(command, cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the no-op HTTP server did not start") from None
                time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/v1/models/lenet:predict"
        out = subprocess.run(
            ["wrk", "-t1", "-c32", f"-d{max(2.0, seconds):g}s", "-s", str(script), url],
            capture_output=True, text=True, check=True, timeout=seconds + 60,
        ).stdout  # fmt: skip
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
        return 1e6 / rps
    finally:
        server.terminate()
        server.wait(timeout=10)


def measure(seconds: float, rounds: int, transport_seconds: float) -> dict[str, Any]:
    """Every stage's cost, and the per-protocol sums and limits."""
    from serving.runtimes.onnx import OnnxOptions, OnnxRuntime

    with tempfile.TemporaryDirectory(prefix="request-budget-") as tmp:
        work = Path(tmp)
        version = model_dir(work)

        def make_runtime() -> OnnxRuntime:
            # One thread, as the gateway's automatic rule gives LeNet.
            return OnnxRuntime(version, OnnxOptions(device="cpu", intra_op_threads=1))

        runtime = make_runtime()
        try:
            stages = codec_stages(runtime, seconds, rounds)
            stages["compute share (batch 32)"] = compute_share_us(runtime, seconds, rounds)
        finally:
            runtime.close()
        stages["batcher, event-loop CPU"] = batcher_loop_us(make_runtime, seconds * 3, rounds)
        for stage, asgi in ((HTTP_TRANSPORT, False), (HTTP_TRANSPORT_ASGI, True)):
            transport = transport_us(transport_seconds, work, asgi)
            if transport is not None:
                stages[stage] = transport
    paths = {}
    for protocol, names in PATHS.items():
        known = [name for name in names if name in stages]
        total = sum(stages[name] for name in known)
        paths[protocol] = {
            "stages": known,
            "missing": [name for name in names if name not in stages],
            "total_us": total,
            "limit_requests_per_s": 1e6 / total,
            "budget_us": sum(BUDGET_US[name] for name in known),
        }
    return {"stages_us": stages, "budget_us": BUDGET_US, "paths": paths}


def table(result: dict[str, Any]) -> str:
    lines = ["| stage | measured us | budget us | |", "|---|---:|---:|---|"]
    for stage, budget in BUDGET_US.items():
        measured = result["stages_us"].get(stage)
        if measured is None:
            lines.append(f"| {stage} | not measured | {budget:g} | |")
            continue
        flag = "OVER" if measured > budget else "ok"
        lines.append(f"| {stage} | {measured:.1f} | {budget:g} | {flag} |")
    lines += ["", "| protocol | sum of its stages, us | budget, us | limit, requests/s |",
              "|---|---:|---:|---:|"]  # fmt: skip
    for protocol, path in result["paths"].items():
        note = f" (without {', '.join(path['missing'])})" if path["missing"] else ""
        lines.append(
            f"| {protocol}{note} | {path['total_us']:.1f} | {path['budget_us']:g} | "
            f"{path['limit_requests_per_s']:,.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=0.3, help="per round of each stage")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--transport-seconds", type=float, default=5.0, help="wrk run length")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    result = measure(args.seconds, args.rounds, args.transport_seconds)
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    over = [s for s, us in result["stages_us"].items() if us > BUDGET_US[s]]
    if over:
        print(f"\nover budget: {', '.join(over)}")


if __name__ == "__main__":
    main()

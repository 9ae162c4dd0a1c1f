"""KServe V2 over gRPC against the gateway's TF Serving gRPC path and grpc.aio alone, side by side.

Two gateway processes (batching on, the LeNet ``benchmarks.lab.gateway_speed`` uses: the trained
one if exported, else the LeNet-like test model), one on each gRPC transport (the default, the
gateway's own, and ``--grpc-transport grpcio``), and the transport-ceiling server
(``benchmarks.lab.grpc_aio_alone``: a no-op Predict on grpc.aio and uvloop) run at once; h2load
(C, nghttp2) sends pre-framed single-image requests over one HTTP/2 connection with
``--concurrency`` streams in flight: ``ModelInfer`` with ``raw_input_contents``, TF Serving
``Predict`` with ``tensor_content``, and the no-op Predict. The scenarios are interleaved round
by round and the median round is reported, so a neighbour's burst hits all alike. gRPC statuses
come from the gateways' request counters (h2load sees only HTTP/2's 200).

    python -m benchmarks.lab.v2_grpc_speed [--duration 5] [--rounds 3] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks.lab.gateway_speed import (
    h2load_grpc,
    one_image,
    prepare_repository,
    requests_by_status,
    start_gateway,
    start_grpc_aio_alone,
)
from clients import v2_grpc, wire

V2 = "V2 gRPC ModelInfer (raw)"
TF = "TF Serving gRPC Predict"
V2_GRPCIO = "V2 gRPC ModelInfer (raw), --grpc-transport grpcio"
TF_GRPCIO = "TF Serving gRPC Predict, --grpc-transport grpcio"
ALONE = "grpc.aio alone (no-op Predict)"


def bodies(model: str) -> dict[str, tuple[str, bytes]]:
    """Scenario -> (method path, serialized request) for one image."""
    image = {"image": one_image()}
    v2 = (
        v2_grpc.MODEL_INFER_METHOD,
        v2_grpc.build_infer_request(model, image).SerializeToString(),
    )
    tf = (wire.PREDICT_METHOD, wire.build_predict_request(model, image).SerializeToString())
    return {V2: v2, TF: tf, V2_GRPCIO: v2, TF_GRPCIO: tf, ALONE: tf}


def failures(metrics_url: str | None, protocol: str) -> float:
    """Requests of ``protocol`` the gateway answered with neither OK nor CANCELLED so far."""
    if not metrics_url:
        return 0.0
    import urllib.request

    with urllib.request.urlopen(metrics_url, timeout=10) as reply:
        counts = requests_by_status(reply.read().decode(), protocol)
    return sum(v for status, v in counts.items() if status not in ("OK", "CANCELLED"))


def h2load(
    target: str, method: str, request: bytes, concurrency: int, duration: float, work: Path,
    pid: int, metrics_url: str | None, protocol: str,
) -> tuple[float, float, float, int, float]:  # fmt: skip
    """(req/s, p50 ms, p99 ms, errors, server CPU %) of one h2load run on one connection."""
    return h2load_grpc(target, concurrency, duration, work, pid, method=method, request=request,
                       failed=lambda: failures(metrics_url, protocol))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run (5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    parser.add_argument("--concurrency", type=int, default=32, help="streams in flight (32)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        repo, model, description = prepare_repository(work)
        gateway = start_gateway(repo, [])
        grpcio = start_gateway(repo, ["--grpc-transport", "grpcio"])
        alone = start_grpc_aio_alone()
        requests = bodies(model)
        plan = {
            V2: (gateway, "v2-grpc"),
            TF: (gateway, "grpc"),
            V2_GRPCIO: (grpcio, "v2-grpc"),
            TF_GRPCIO: (grpcio, "grpc"),
            ALONE: (alone, ""),
        }
        samples: dict[str, list[tuple[float, float, float, int, float]]] = {k: [] for k in plan}
        try:
            for _ in range(args.rounds):
                for name, (server, protocol) in plan.items():
                    method, request = requests[name]
                    metrics = server.url + "/metrics" if server.url else None
                    run = h2load(server.grpc, method, request, args.concurrency, args.duration,
                                 work, server.process.pid, metrics, protocol)  # fmt: skip
                    samples[name].append(run)
        finally:
            gateway.stop()
            grpcio.stop()
            alone.stop()
    print(f"model: {description}; h2load -c1 -m{args.concurrency} -D{args.duration:g}, "
          f"median of {args.rounds} interleaved rounds\n")  # fmt: skip
    print("| scenario | req/s | p50 ms | p99 ms | errors | server CPU % |")
    print("|---|---:|---:|---:|---:|---:|")
    median: dict[str, float] = {}
    for name, runs in samples.items():
        runs.sort(key=lambda run: run[0])
        rps, p50, p99, _, cpu = runs[len(runs) // 2]
        median[name] = rps
        errors = sum(run[3] for run in runs)
        print(f"| {name} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {errors} | {cpu:.0f} |")
    print(f"\n- V2 gRPC / TF Serving gRPC: {median[V2] / median[TF]:.2f}x")
    print(f"- V2 gRPC / grpc.aio alone: {median[V2] / median[ALONE]:.2f}x")
    print(f"- V2 gRPC, the gateway's transport / grpcio's: {median[V2] / median[V2_GRPCIO]:.2f}x")
    print(f"- TF Serving gRPC, the gateway's transport / grpcio's: "
          f"{median[TF] / median[TF_GRPCIO]:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()

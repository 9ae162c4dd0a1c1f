"""Goodput under overload: what the gateway admits, and how fast it refuses, when demand far
exceeds capacity.

LeNet (``model_repository/lenet`` if training has exported it, else the LeNet-like model of
``tests/tiny_models.py``), one image per request, a gateway subprocess per queue size
(``--max-queue-size`` 4, 32 and 256 by default; ``python -m serving --device cpu`` on 127.0.0.1,
started from ``--gateway-root``). Load is closed-loop from nghttp2's ``h2load`` (C; HTTP/1.1 for
REST JSON and KServe V2 binary, one request at a time per connection; HTTP/2 for gRPC, the streams
spread over 8 connections): ``--base-concurrency`` (32, where one process saturates) times each of
``--loads`` (1, 2, 8), i.e. 32, 64 and 256 clients, for ``--duration`` seconds after a 1 s warm-up.

Per run: admitted requests per second (200 / OK), refused ones (429 / RESOURCE_EXHAUSTED) and their
latency p50/p99, the latency of admitted requests, failures of any other kind, and the gateway's
CPU. HTTP statuses and latencies come from h2load's per-request log; for gRPC, whose statuses
travel in trailers, the counts come from the gateway's ``serving_requests_total`` and the
latencies are those of one more client beside h2load, one call at a time. ``--grpc-floor`` also
floods ``benchmarks/lab/grpc_floor.py``, a grpc.aio server that refuses every call at once: the
refusal latency grpc.aio alone gives at each load, beside the gateway's. The goal (issue 13): at 8x, admitted throughput at least 80% of capacity (the
admitted rate at 1x with the largest queue) and a 429 p99 of at most 10 ms, on every protocol.

    .venv/bin/python -m benchmarks.lab.overload [--duration 5] [--queues 4,32,256] [--loads 1,2,8]
        [--protocols rest,v2,grpc] [--gateway-root DIR] [--gateway-arg=--option=value ...]
        [--grpc-floor] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from benchmarks.hostile_speed import gateway_commit, machine, start_gateway
from benchmarks.lab.gateway_speed import (
    INFER_PATH,
    PREDICT_PATH,
    Server,
    cpu_seconds,
    one_image,
    percentile,
    prepare_repository,
    requests_by_status,
    rest_json_body,
    v2_binary_body,
)

GRPC_CONNECTIONS = 8
PROTOCOL_NAMES = {"rest": "REST JSON", "v2": "V2 binary", "grpc": "gRPC"}
GOODPUT_GOAL = 0.8
REFUSAL_P99_GOAL_MS = 10.0


def grpc_counts(http_url: str) -> dict[str, float]:
    """``serving_requests_total`` for protocol grpc, by status."""
    return requests_by_status(httpx.get(f"{http_url}/metrics", timeout=30).text, "grpc")


def h2load_run(
    protocol: str, url: str, grpc_target: str, clients: int, duration: float, work: Path
) -> tuple[list[tuple[int, float]], float, float]:
    """(per-request (HTTP status, latency s) from h2load's log, seconds measured, h2load's CPU %).

    On a machine as small as the one the gateway runs on, the generator's CPU is taken from the
    gateway's: reported beside every row so a loss of goodput can be told from a starved server."""
    log_file = work / "h2load.log"
    log_file.unlink(missing_ok=True)
    if protocol == "grpc":
        from clients import wire

        request = wire.build_predict_request("lenet", {"image": one_image()}).SerializeToString()
        body = b"\x00" + len(request).to_bytes(4, "big") + request
        connections = min(GRPC_CONNECTIONS, clients)
        target = f"http://{grpc_target}{wire.PREDICT_METHOD}"
        options = [f"-c{connections}", f"-m{max(1, clients // connections)}",
                   "-H", "content-type: application/grpc", "-H", "te: trailers"]  # fmt: skip
    else:
        if protocol == "rest":
            body, headers = rest_json_body(), ["-H", "content-type: application/json"]
            target = url + PREDICT_PATH.format(model="lenet")
        else:
            body, header_length = v2_binary_body()
            headers = ["-H", "content-type: application/octet-stream",
                       "-H", f"inference-header-content-length: {header_length}"]  # fmt: skip
            target = url + INFER_PATH.format(model="lenet")
        options = ["--h1", f"-c{clients}", "-m1", *headers]
    body_file = work / "body.bin"
    body_file.write_bytes(body)
    started = time.monotonic()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(
        ["h2load", *options, f"-D{duration:g}", "--warm-up-time=1", f"--log-file={log_file}",
         "-d", str(body_file), target],
        capture_output=True, text=True, timeout=duration + 120, check=True,
    )  # fmt: skip
    wall = time.monotonic() - started
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # h2load, now reaped
    load_cpu = (children.ru_utime + children.ru_stime - children_before.ru_utime
                - children_before.ru_stime) / wall * 100  # fmt: skip
    rows = [line.split("\t") for line in log_file.read_text().splitlines() if line]
    answers = [(int(row[1]), int(row[2]) / 1e6) for row in rows]
    return answers, max(wall - 1, duration), load_cpu  # the warm-up second is not logged


class GrpcProbe:
    """One more gRPC client beside h2load, one call at a time, recording each call's status and
    latency: h2load sees every gRPC answer as HTTP 200, so per-status latency comes from here."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.records: list[tuple[str, float]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import grpc

        from clients import wire

        request = wire.build_predict_request("lenet", {"image": one_image()}).SerializeToString()
        with grpc.insecure_channel(self.target) as channel:
            call = channel.unary_unary(wire.PREDICT_METHOD)
            while not self.stopping.is_set():
                start = time.perf_counter()
                try:
                    call(request, timeout=30)
                    status = "OK"
                except grpc.RpcError as exc:
                    status = exc.code().name
                self.records.append((status, time.perf_counter() - start))

    def __enter__(self) -> GrpcProbe:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        self.thread.join(35)


def measure(
    protocol: str, server: Any, clients: int, duration: float, work: Path
) -> dict[str, Any]:
    """One closed-loop run of ``clients`` against ``server``."""
    pid = server.process.pid
    counts_before = grpc_counts(server.url) if protocol == "grpc" else {}
    cpu_before, started = cpu_seconds(pid), time.monotonic()
    probe = GrpcProbe(server.grpc) if protocol == "grpc" else None
    if probe is not None:
        with probe:
            answers, seconds, load_cpu = h2load_run(
                protocol, server.url, server.grpc, clients, duration, work
            )
    else:
        answers, seconds, load_cpu = h2load_run(
            protocol, server.url, server.grpc, clients, duration, work
        )
    cpu = (cpu_seconds(pid) - cpu_before) / (time.monotonic() - started) * 100
    if protocol == "grpc":
        after = grpc_counts(server.url)
        delta = {k: after.get(k, 0.0) - counts_before.get(k, 0.0) for k in after}
        total = sum(delta.values())
        admitted_n, refused_n = delta.get("OK", 0.0), delta.get("RESOURCE_EXHAUSTED", 0.0)
        # Other gateway statuses, and streams h2load saw fail (-1: e.g. REFUSED_STREAM beyond
        # SETTINGS_MAX_CONCURRENT_STREAMS, which gRPC clients retry transparently).
        other = total - admitted_n - refused_n + sum(1 for s, _ in answers if s != 200)
        # The counter covers h2load's warm-up second too: rates over the whole run.
        whole = seconds + 1
        assert probe is not None
        admitted_latency = [t for s, t in probe.records if s == "OK"]
        refused_latency = [t for s, t in probe.records if s == "RESOURCE_EXHAUSTED"]
        admitted_per_s, refused_per_s = admitted_n / whole, refused_n / whole
        latency_note = (
            f"from a one-call-at-a-time probe beside h2load: {len(admitted_latency)} admitted, "
            f"{len(refused_latency)} refused calls"
        )
    else:
        admitted_latency = [t for s, t in answers if s == 200]
        refused_latency = [t for s, t in answers if s == 429]
        other = sum(1 for s, _ in answers if s not in (200, 429))
        admitted_per_s = len(admitted_latency) / seconds
        refused_per_s = len(refused_latency) / seconds
        latency_note = "by status"
    return {
        "protocol": PROTOCOL_NAMES[protocol],
        "clients": clients,
        "admitted_per_s": admitted_per_s,
        "refused_per_s": refused_per_s,
        "other_failures": int(other),
        "admitted_p50_ms": percentile(admitted_latency, 50) * 1000,
        "admitted_p99_ms": percentile(admitted_latency, 99) * 1000,
        "refused_p50_ms": percentile(refused_latency, 50) * 1000,
        "refused_p99_ms": percentile(refused_latency, 99) * 1000,
        "gateway_cpu_percent": cpu,
        "load_generator_cpu_percent": load_cpu,
        "latency_note": latency_note,
    }


def measure_grpc_floor(clients: int, duration: float, work: Path) -> dict[str, Any]:
    """The same gRPC flood against ``benchmarks/lab/grpc_floor.py`` (refuses every call at once): the
    refusal latency that grpc.aio alone gives at this load."""
    floor = Server(
        [sys.executable, "-m", "benchmarks.lab.grpc_floor", "--port", "0"],
        wait_for="gRPC floor server on",
    )
    try:
        pid = floor.process.pid
        cpu_before, started = cpu_seconds(pid), time.monotonic()
        with GrpcProbe(floor.grpc) as probe:
            answers, seconds, load_cpu = h2load_run("grpc", "", floor.grpc, clients, duration, work)
        cpu = (cpu_seconds(pid) - cpu_before) / (time.monotonic() - started) * 100
    finally:
        floor.stop()
    refused_latency = [t for s, t in probe.records if s == "RESOURCE_EXHAUSTED"]
    return {
        "clients": clients,
        "refused_per_s": sum(1 for s, _ in answers if s == 200) / seconds,
        "other_failures": sum(1 for s, _ in answers if s != 200)
        + sum(1 for s, _ in probe.records if s != "RESOURCE_EXHAUSTED"),
        "refused_p50_ms": percentile(refused_latency, 50) * 1000,
        "refused_p99_ms": percentile(refused_latency, 99) * 1000,
        "server_cpu_percent": cpu,
        "load_generator_cpu_percent": load_cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5, help="seconds per run, after 1 s")
    parser.add_argument("--queues", default="4,32,256", help="--max-queue-size values")
    parser.add_argument("--loads", default="1,2,8", help="multiples of --base-concurrency")
    parser.add_argument("--base-concurrency", type=int, default=32)
    parser.add_argument("--protocols", default="rest,v2,grpc")
    parser.add_argument("--gateway-root", type=Path, default=Path(__file__).resolve().parents[2])
    parser.add_argument("--gateway-arg", action="append", default=[], help="raw gateway option")
    parser.add_argument(
        "--grpc-floor",
        action="store_true",
        help="also flood a grpc.aio server that refuses every call at once (the framework's floor)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        sys.exit("h2load not found (Debian package nghttp2-client)")
    queues = [int(q) for q in args.queues.split(",")]
    loads = [int(x) for x in args.loads.split(",")]
    protocols = [p.strip() for p in args.protocols.split(",")]
    root = args.gateway_root.resolve()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        repo, _model, description = prepare_repository(work)
        for queue in queues:
            server = start_gateway(root, repo, ["--max-queue-size", str(queue), *args.gateway_arg])
            try:
                for protocol in protocols:
                    for load in loads:
                        clients = args.base_concurrency * load
                        row = {"queue": queue, "load": load,
                               **measure(protocol, server, clients, args.duration, work)}  # fmt: skip
                        rows.append(row)
                        print(
                            f"queue {queue:>3} {row['protocol']:9s} {load}x ({clients:>3} clients): "
                            f"admitted {row['admitted_per_s']:>7,.0f}/s p99 "
                            f"{row['admitted_p99_ms']:7.1f} ms | refused "
                            f"{row['refused_per_s']:>7,.0f}/s p99 {row['refused_p99_ms']:7.1f} ms"
                            f" | other {row['other_failures']}",
                            flush=True,
                        )
            finally:
                server.stop()
        floor_rows = []
        if args.grpc_floor:
            for load in loads:
                floor = {"load": load, **measure_grpc_floor(
                    args.base_concurrency * load, args.duration, work)}  # fmt: skip
                floor_rows.append(floor)
                print(
                    f"grpc floor {load}x ({floor['clients']:>3} clients): refused "
                    f"{floor['refused_per_s']:>7,.0f}/s p50 {floor['refused_p50_ms']:.1f} ms p99 "
                    f"{floor['refused_p99_ms']:.1f} ms | other {floor['other_failures']}",
                    flush=True,
                )
    add_goodput(rows)
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "machine": machine(),
        "model": description,
        "gateway": f"{root} at {gateway_commit(root)}",
        "gateway_args": args.gateway_arg,
        "duration_s": args.duration,
        "results": rows,
        "grpc_floor": floor_rows,
    }
    print()
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=_nan_to_none))


def add_goodput(rows: list[dict[str, Any]]) -> None:
    """Admitted throughput as a share of capacity: the admitted rate at the lowest load with the
    largest queue, per protocol."""
    for protocol in {row["protocol"] for row in rows}:
        mine = [row for row in rows if row["protocol"] == protocol]
        base = max(mine, key=lambda r: (r["queue"], -r["load"]))
        capacity = base["admitted_per_s"]
        for row in mine:
            row["goodput"] = row["admitted_per_s"] / capacity if capacity else float("nan")


def table(report: dict[str, Any]) -> str:
    lines = [
        f"gateway: {report['gateway']}; extra args: {' '.join(report['gateway_args']) or 'none'}",
        f"{report['model']}; {report['duration_s']:g} s per run after a 1 s warm-up",
        "",
        "| queue | protocol | load (clients) | admitted/s | goodput | admitted p50 / p99 ms | "
        "429/s | 429 p50 / p99 ms | other failures | gateway / h2load CPU % |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        refused = (
            f"{r['refused_p50_ms']:.1f} / {r['refused_p99_ms']:.1f}"
            if r["refused_per_s"] and r["refused_p99_ms"] == r["refused_p99_ms"]  # not NaN
            else "-"
        )
        lines.append(
            f"| {r['queue']} | {r['protocol']} | {r['load']}x ({r['clients']}) | "
            f"{r['admitted_per_s']:,.0f} | {r['goodput']:.2f} | "
            f"{r['admitted_p50_ms']:.1f} / {r['admitted_p99_ms']:.1f} | {r['refused_per_s']:,.0f} | "
            f"{refused} | {r['other_failures']} | {r['gateway_cpu_percent']:.0f} / "
            f"{r['load_generator_cpu_percent']:.0f} |"
        )
    if report["grpc_floor"]:
        lines += [
            "",
            "gRPC floor (`benchmarks/lab/grpc_floor.py`: grpc.aio on uvloop refusing every call as its"
            " first statement), the same flood and probe:",
            "",
            "| load (clients) | refused/s | 429 p50 / p99 ms | other failures | server / h2load CPU % |",
            "|---|---:|---:|---:|---:|",
        ]
        for f in report["grpc_floor"]:
            lines.append(
                f"| {f['load']}x ({f['clients']}) | {f['refused_per_s']:,.0f} | "
                f"{f['refused_p50_ms']:.1f} / {f['refused_p99_ms']:.1f} | {f['other_failures']} | "
                f"{f['server_cpu_percent']:.0f} / {f['load_generator_cpu_percent']:.0f} |"
            )
    lines.append("")
    lines.append(
        f"Goal at 8x: goodput >= {GOODPUT_GOAL:g} and 429 p99 <= {REFUSAL_P99_GOAL_MS:g} ms "
        "(gRPC latencies come from a one-call-at-a-time probe beside the flood)."
    )
    return "\n".join(lines)


def _nan_to_none(value: Any) -> Any:
    return None


if __name__ == "__main__":
    main()

"""How many machine instructions does one request cost the gateway, checkout against checkout?

Throughput and CPU time on a shared 2-core VM move by 3-8% from run to run, so a change that costs
1-2% cannot be seen with them. Instructions counted by valgrind's callgrind can: the same
checkout reads the same count within about 0.1%. This starts each checkout's gateway
(``python -m serving``, the checkout as working directory and PYTHONPATH) under callgrind with
instrumentation off, warms it up, switches counting on (``callgrind_control -i on``), sends
``--requests`` requests over ``--concurrency`` keep-alive connections, dumps the counts and
prints instructions per request; every thread of the process is counted (ONNX Runtime's too).

Read the figures as ratios between checkouts of one run. Under valgrind ONNX Runtime sees no
AVX-512 (valgrind does not emulate it) and time runs ~50x slower, so the model's share is larger,
and work done per unit of time (timers, the date header) per request larger, than on the bare
machine: a difference in instructions is a difference in Python work, not a throughput ratio.

    .venv/bin/python -m benchmarks.lab.instructions /tmp/before /tmp/after \\
        [--protocol "V2 binary"] [--concurrency 32] [--requests 300] \\
        [--a-options "..."] [--b-options "--trace-sample 0.1"] [--keep /tmp/dumps]

Needs ``valgrind`` (the Debian package); one gateway takes about a minute. Checkouts of other
commits: ``git worktree add /tmp/before COMMIT``.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.hostile_speed import gateway_commit, machine
from benchmarks.lab.gateway_speed import (
    GATEWAY_READY,
    prepare_repository,
    rest_json_body,
    v2_binary_body,
)

PROTOCOLS = ("REST JSON", "V2 binary", "gRPC", "V2 gRPC")
#: requests sent before counting starts (imports, first-call caches, the batcher's estimates)
WARMUP_REQUESTS = 64
#: how long a gateway under valgrind may take to start (imports and the model's warm-up run ~50x
#: slower than natively)
START_TIMEOUT_S = 600


def request_for(protocol: str, model: str) -> tuple[str, bytes, dict[str, str]]:
    """(path, body, headers) of one LeNet image in ``protocol``."""
    if protocol == "REST JSON":
        return (
            f"/v1/models/{model}:predict",
            rest_json_body(),
            {"Content-Type": "application/json"},
        )
    body, header_length = v2_binary_body()
    return (
        f"/v2/models/{model}/infer",
        body,
        {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(header_length),
        },
    )


def grpc_request_for(protocol: str, model: str) -> tuple[str, bytes]:
    """(method path, serialized request) of one LeNet image: TF Serving's Predict, or KServe V2's
    ModelInfer with raw contents."""
    from benchmarks.lab.gateway_speed import one_image
    from clients import v2_grpc, wire

    image = one_image()
    if protocol == "gRPC":
        predict = wire.build_predict_request(model, {"image": image})
        return wire.PREDICT_METHOD, predict.SerializeToString()
    request = v2_grpc.build_infer_request(model, {"image": image})
    return v2_grpc.MODEL_INFER_METHOD, request.SerializeToString()


def send(
    ports: tuple[int, int], protocol: str, model: str, requests: int, concurrency: int
) -> None:
    """``requests`` requests over ``concurrency`` keep-alive connections (gRPC: one channel,
    ``concurrency`` callers); every answer a 200 (gRPC: OK)."""
    failures: list[str] = []
    shares = [requests // concurrency + (i < requests % concurrency) for i in range(concurrency)]
    if protocol in ("gRPC", "V2 gRPC"):
        import grpc

        method, message = grpc_request_for(protocol, model)
        with grpc.insecure_channel(f"127.0.0.1:{ports[1]}") as channel:
            call = channel.unary_unary(method)  # bytes in, bytes out

            def one_caller(count: int) -> None:
                for _ in range(count):
                    try:
                        call(message, timeout=START_TIMEOUT_S)
                    except grpc.RpcError as error:
                        failures.append(f"{error.code()} {error.details()}")  # type: ignore[attr-defined]
                        return

            _in_threads(one_caller, shares)
        if failures:
            raise RuntimeError(f"{len(failures)} failed calls, the first: {failures[0]}")
        return
    path, body, headers = request_for(protocol, model)
    port = ports[0]

    def one_connection(count: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=START_TIMEOUT_S)
        try:
            for _ in range(count):
                connection.request("POST", path, body, headers)
                response = connection.getresponse()
                answer = response.read()
                if response.status != 200:
                    failures.append(f"{response.status} {answer[:200]!r}")
                    return
        finally:
            connection.close()

    _in_threads(one_connection, shares)
    if failures:
        raise RuntimeError(f"{len(failures)} failed requests, the first: {failures[0]}")


def _in_threads(work: Callable[[int], None], shares: list[int]) -> None:
    threads = [threading.Thread(target=work, args=(n,)) for n in shares if n]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def count(
    root: Path, repo: Path, model: str, protocol: str, requests: int, concurrency: int,
    options: list[str], work: Path,
) -> int:  # fmt: skip
    """Instructions per request of the gateway at ``root`` (all its threads)."""
    out = Path(tempfile.mkdtemp(prefix="callgrind-", dir=work))
    command = [
        "valgrind", "--tool=callgrind", "--instr-atstart=no",
        f"--callgrind-out-file={out}/callgrind.%p",
        sys.executable, "-m", "serving", "--repository", str(repo), "--host", "127.0.0.1",
        "--http-port", "0", "--grpc-port", "0", "--device", "cpu", "--poll-interval-s", "0",
        *options,
    ]  # fmt: skip
    log_path = out / "gateway.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command, cwd=root, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(root)},
        )  # fmt: skip
    try:
        ports = (0, 0)
        end = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < end and process.poll() is None:
            text = log_path.read_text(errors="replace")
            if GATEWAY_READY in text:
                http_port = re.findall(r"on http://127\.0\.0\.1:(\d+)", text)[-1]
                grpc_port = re.findall(r"gRPC .* on 127\.0\.0\.1:(\d+)", text)[-1]
                ports = (int(http_port), int(grpc_port))
                break
            time.sleep(1)
        if not ports[0]:
            raise RuntimeError(
                f"{root}: the gateway did not start:\n{log_path.read_text()[-3000:]}"
            )
        send(ports, protocol, model, WARMUP_REQUESTS, min(concurrency, WARMUP_REQUESTS))
        control = ["callgrind_control"]
        subprocess.run([*control, "-i", "on", str(process.pid)], check=True, capture_output=True)
        send(ports, protocol, model, requests, concurrency)
        subprocess.run([*control, "-d", str(process.pid)], check=True, capture_output=True)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    dumps = sorted(out.glob("callgrind.*.1"))
    if not dumps:
        raise RuntimeError(f"{root}: callgrind wrote no dump in {out}")
    totals = re.search(r"^(?:summary|totals):\s+(\d+)", dumps[0].read_text(), re.M)
    if totals is None:
        raise RuntimeError(f"{dumps[0]}: no totals line")
    return int(totals.group(1)) // requests


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("a", type=Path, help="the checkout to compare against")
    parser.add_argument("b", type=Path, help="the checkout to price")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="V2 binary")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=1, help="A then B, this many times")
    parser.add_argument("--a-options", default="", help="gateway options for A")
    parser.add_argument("--b-options", default="", help="gateway options for B")
    parser.add_argument(
        "--keep", type=Path, help="copy each gateway's callgrind dump here (callgrind_annotate)"
    )
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    sides = [
        ("A", args.a.resolve(), shlex.split(args.a_options)),
        ("B", args.b.resolve(), shlex.split(args.b_options)),
    ]
    figures: dict[str, list[int]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        repo, model, description = prepare_repository(work)
        for round_index in range(args.rounds):
            for name, root, options in sides:
                per_request = count(
                    root, repo, model, args.protocol, args.requests, args.concurrency,
                    options, work,
                )  # fmt: skip
                figures[name].append(per_request)
                if args.keep is not None:
                    args.keep.mkdir(parents=True, exist_ok=True)
                    for dump in work.glob("callgrind-*/callgrind.*.1"):
                        shutil.move(dump, args.keep / f"{name}{round_index + 1}.callgrind")
                print(f"round {round_index + 1} {name}: {per_request:,} instructions/request",
                      flush=True)  # fmt: skip
    print(f"{machine()}; {description}")
    unit = "callers on one channel" if "gRPC" in args.protocol else "connections"
    print(
        f"{args.protocol}, {args.concurrency} {unit}, {args.requests} requests counted "
        f"per gateway, {args.rounds} round(s)"
    )
    for name, root, options in sides:
        shown = f" {' '.join(options)}" if options else ""
        values = ", ".join(f"{value:,}" for value in figures[name])
        print(f"{name} {root} at {gateway_commit(root)}{shown}: {values}")
    a, b = min(figures["A"]), min(figures["B"])
    print(f"B/A instructions per request: {b / a:.4f} ({b - a:+,})")


if __name__ == "__main__":
    main()

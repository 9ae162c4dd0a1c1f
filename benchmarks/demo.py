"""`make demo`: the whole path on this machine's CPU, end to end, in a few minutes.

1. train LeNet on MNIST and export it (SavedModel + ONNX, parity-gated) into the repository;
2. start the gateway on the CPU on free loopback ports;
3. classify a few test images through the client, over HTTP and over gRPC;
4. send the whole test set through the server and compare with the offline accuracy;
5. a short Locust run that checks every answer, with a report;
6. stop the gateway, print a summary table with where everything is, and what to try next.

The terminal shows the project's own lines only: TensorFlow's C++ log lines (absl's ``I0000``,
``W0000``, ``E0000`` ...), which say nothing about the run, go to ``<out>/train-stderr.log``.

    .venv/bin/python -m benchmarks.demo [--epochs 8] [--duration 20s] [--skip-training]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

MODEL = "lenet"
DATASET = "mnist"


def _step(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


#: a line of TensorFlow's C++ logging (absl: severity letter, date, time, thread, file:line), or
#: absl's notice before its logging is set up; TF_CPP_MIN_LOG_LEVEL does not hide all of them
CPP_LOG_LINE = re.compile(
    r"^(?:[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.]+:\d+\]"
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called)"
)


def train(repository: Path, epochs: int, log_path: Path) -> None:
    """Training runs in a child process, so this process never holds TensorFlow's memory. Its
    stderr passes through, less TensorFlow's C++ log lines, which go to ``log_path`` with the rest."""
    command = [
        sys.executable, "-m", "training", "train",
        "--model", MODEL, "--dataset", DATASET, "--recipe", "demo", "--epochs", str(epochs),
        "--repository", str(repository),
    ]  # fmt: skip
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    with (
        log_path.open("w") as log,
        subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) as child,
    ):
        assert child.stderr is not None
        reader = threading.Thread(target=_filter_stderr, args=(child.stderr, log), daemon=True)
        reader.start()
        child.wait()
        reader.join()
    if child.returncode:
        raise subprocess.CalledProcessError(child.returncode, command)


def _filter_stderr(stream: Any, log: Any) -> None:
    for line in stream:
        log.write(line)
        if not CPP_LOG_LINE.match(line):
            sys.stderr.write(line)
            sys.stderr.flush()


def newest_version(repository: Path) -> int | None:
    model_dir = repository / MODEL
    versions = (
        [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()] if model_dir.is_dir() else []
    )
    return max(versions) if versions else None


def classify_examples(http: str, grpc_address: str, count: int = 5) -> list[list[str]]:
    """Top-1 answers for a few test images over both transports, next to the truth."""
    from clients import Client
    from training.data import load_dataset

    dataset = load_dataset(DATASET)
    images = list(dataset.x_test[:count])
    rows = []
    with Client(http) as over_http, Client(f"grpc://{grpc_address}") as over_grpc:
        by_http = over_http.classify(MODEL, images, top_k=1)
        by_grpc = over_grpc.classify(MODEL, images, top_k=1)
    for index in range(count):
        (http_label, http_score), (grpc_label, grpc_score) = by_http[index][0], by_grpc[index][0]
        rows.append(
            [
                str(index),
                dataset.class_names[int(dataset.y_test[index])],
                f"{http_label} ({http_score:.3f})",
                f"{grpc_label} ({grpc_score:.3f})",
            ]
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.demo", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--repository", default="model_repository")
    parser.add_argument(
        "--epochs",
        type=int,
        default=8,
        help="LeNet epochs (default 8: ~99.2%% with --recipe demo's cosine decay)",
    )
    parser.add_argument("--duration", default="20s", help="Locust run length (default 20s)")
    parser.add_argument("--users", type=int, default=16, help="Locust users (default 16)")
    parser.add_argument("--out", default="reports/demo", help="report directory")
    parser.add_argument(
        "--skip-training", action="store_true", help="serve the newest exported LeNet instead"
    )
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from benchmarks.accuracy import AccuracyConfig, check_accuracy
    from benchmarks.run import RunConfig, parse_duration, print_summary, run_benchmark
    from benchmarks.servers import gateway

    console = Console()
    repository, out = Path(args.repository), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    if args.skip_training and newest_version(repository) is not None:
        _step(f"1/5 using {repository / MODEL / str(newest_version(repository))}")
    else:
        _step(f"1/5 train {MODEL} on {DATASET} ({args.epochs} epochs) and export")
        train(repository, args.epochs, out / "train-stderr.log")
    timings["train + export"] = time.perf_counter() - started
    version = newest_version(repository)

    _step("2/5 start the gateway on the CPU")
    phase = time.perf_counter()
    summary: dict[str, Any] = {}
    with gateway(
        repository, batching=True, extra_args=["--device", "cpu"], model=MODEL,
        log_path=out / "gateway.log",
    ) as server:  # fmt: skip
        assert server.http and server.grpc
        timings["gateway start"] = time.perf_counter() - phase
        print(f"gateway: REST {server.http}, gRPC {server.grpc}, log {out / 'gateway.log'}")

        _step("3/5 classify test images through the client (HTTP and gRPC)")
        table = Table("image", "true", "HTTP top-1", "gRPC top-1")
        for row in classify_examples(server.http, server.grpc):
            table.add_row(*row)
        console.print(table)

        _step("4/5 served accuracy on the full test set (REST and gRPC)")
        phase = time.perf_counter()
        for protocol, target in (("rest", server.http), ("grpc", f"grpc://{server.grpc}")):
            result = check_accuracy(
                AccuracyConfig(
                    target=target, model=MODEL, dataset=DATASET, repository=str(repository),
                    version=version, out=str(out / f"accuracy-{protocol}"),
                )
            )  # fmt: skip
            summary[f"accuracy_{protocol}"] = result
        timings["served accuracy"] = time.perf_counter() - phase

        _step(f"5/5 Locust: {args.users} users for {args.duration}, every answer checked")
        phase = time.perf_counter()
        run = run_benchmark(
            RunConfig(
                target=server.http, model=MODEL, protocol="v2", users=args.users,
                spawn_rate=float(args.users), duration_s=parse_duration(args.duration),
                out=str(out / "locust"), repository=str(repository), dataset=DATASET,
                server_name="gateway (CPU)",
            )
        )  # fmt: skip
        timings["locust run"] = time.perf_counter() - phase
    print_summary(run)
    timings["total"] = time.perf_counter() - started

    final = Table(title="make demo: summary")
    final.add_column("what")
    final.add_column("result")
    final.add_row("model", f"{repository / MODEL / str(version)}")
    for protocol in ("rest", "grpc"):
        result = summary[f"accuracy_{protocol}"]
        final.add_row(
            f"served accuracy ({protocol})",
            f"{_percent(result, 'served')} served vs {_percent(result, 'offline')} offline, "
            f"{_fraction(result.get('agreement'))} agreement with offline predictions: "
            + ("passed" if result.get("passed") else "FAILED"),
        )
    throughput, latency = run.get("throughput") or {}, run.get("latency_ms") or {}
    final.add_row(
        "locust (V2 binary)",
        f"{throughput.get('requests_per_s', 0):.0f} req/s, p50 {latency.get('p50', 0):.2f} ms, "
        f"p99 {latency.get('p99', 0):.2f} ms, errors {throughput.get('error_ratio', 0) * 100:.2f}%, "
        + ("answers checked: passed" if run.get("passed") else "FAILED"),
    )
    final.add_row("locust report", str(out / "locust" / "report.md"))
    for name, seconds in timings.items():
        final.add_row(f"time: {name}", f"{seconds:.1f} s")
    console.print(final)
    print(WHAT_NEXT.format(repository=repository, out=out))
    failed = not run.get("passed", True) or not all(
        summary[f"accuracy_{p}"].get("passed", False) for p in ("rest", "grpc")
    )
    return 1 if failed else 0


WHAT_NEXT = """
What next (README.md, "After the demo", walks through each):
  serve it:      .venv/bin/python -m serving --repository {repository}
  call it:       .venv/bin/python -m clients predict --target http://127.0.0.1:8501 --model lenet examples/digit-7.png
                 .venv/bin/python -m clients predict --target grpc://127.0.0.1:8500 --model lenet examples/digit-7.png
  curl it:       curl -s -X POST localhost:8501/v1/models/lenet:predict -d @examples/predict-tfserving.json
  measure it:    .venv/bin/python -m benchmarks run --target http://127.0.0.1:8501 --model lenet --dry-run --out reports/smoke
  the reports:   {out}/locust/report.html, and runs/ (tensorboard --logdir runs/)
"""


def _percent(result: dict[str, Any], which: str) -> str:
    block = result.get(which) or {}
    value = block.get("accuracy") if isinstance(block, dict) else None
    return f"{value * 100:.2f}%" if isinstance(value, (int, float)) else "?"


def _fraction(value: Any) -> str:
    return f"{value * 100:.2f}%" if isinstance(value, (int, float)) else "?"


if __name__ == "__main__":
    sys.exit(main())

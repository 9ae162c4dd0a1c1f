"""Two precisions of one model side by side: in-process ONNX Runtime and the gateway, interleaved.

One version directory holding ``model.onnx`` and ``model.int8.onnx`` (``python -m training
quantize``; ``--b fp16`` compares the fp16 file instead) is served by two gateways at once, one
per precision, on the CPU. For each concurrency the rounds interleave the two (A then B, then B
then A, ...) over KServe V2 binary, one image per request, so a neighbour's burst on a shared
machine hits both alike; the in-process rows (each file alone, batch 1 and 8) interleave the same
way. The median round of each is reported with the ratio B / A.

    .venv/bin/python -m benchmarks.lab.precision_ab --repository R --model resnet50_imagenet \\
        [--a fp32] [--b int8] [--concurrency 1,4] [--duration 5] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import gpu_check


def in_process(version_dir: Path, precision: str, batch: int, seconds: float) -> float:
    """Images per second of the file ``precision`` names, on the CPU, at ``batch``."""
    runtime = gpu_check.runtime_for(version_dir, "cpu", precision)
    try:
        return float(gpu_check.time_runtime(runtime, batch, seconds, "run")["images_per_s"])
    finally:
        runtime.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--a", default="fp32", help="baseline precision (fp32)")
    parser.add_argument("--b", default="int8", help="compared precision (int8)")
    parser.add_argument("--concurrency", default="1,4", help="comma list")
    parser.add_argument("--batches", default="1,8", help="in-process batch sizes, comma list")
    parser.add_argument("--duration", type=float, default=5, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per scenario (median)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    version_dir = gpu_check.latest_version(args.repository, args.model)
    only = gpu_check.only_repo(args.repository, args.model)
    pair = (args.a, args.b)
    rows: list[dict[str, Any]] = []

    def interleave(name: str, measure: Any) -> None:
        seen: dict[str, list[float]] = {p: [] for p in pair}
        for round_ in range(args.rounds):
            for precision in pair if round_ % 2 == 0 else pair[::-1]:
                seen[precision].append(measure(precision))
        a, b = (statistics.median(seen[p]) for p in pair)
        rows.append({"scenario": name, args.a: a, args.b: b, "ratio": b / a, "rounds": seen})
        print(f"{name:<28} {args.a} {a:9.1f}/s   {args.b} {b:9.1f}/s   {args.b}/{args.a} "
              f"{b / a:.2f}", flush=True)  # fmt: skip

    for batch in gpu_check._sizes(args.batches):
        interleave(f"in-process batch {batch} img/s",
                   lambda p, batch=batch: in_process(version_dir, p, batch, args.duration))  # fmt: skip
    started = time.monotonic()
    servers = {p: gpu_check.start_gateway(only, "cpu", p) for p in pair}
    print(f"both gateways ready in {time.monotonic() - started:.0f} s", flush=True)
    try:
        runtime = gpu_check.runtime_for(version_dir, "cpu", args.a)
        try:
            body, headers = gpu_check.v2_body(gpu_check.model_inputs(runtime, 1))
        finally:
            runtime.close()
        for concurrency in gpu_check._sizes(args.concurrency):

            def load(precision: str, concurrency: int = concurrency) -> float:
                server = servers[precision]
                spec = gpu_check.LoadSpec(
                    "v2", f"{server.url}/v2/models/{args.model}/infer", server.grpc, args.model,
                    body, headers, concurrency, args.duration,
                )  # fmt: skip
                result = gpu_check.drive(spec, 1)
                if result["errors"]:
                    raise RuntimeError(f"{precision}: {result['error_kinds']}")
                return float(result["requests_per_s"])

            interleave(f"gateway V2 binary c={concurrency} req/s", load)
    finally:
        for server in servers.values():
            server.stop()
    if args.json:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                    .splitlines() if line.startswith("model name")), "unknown")  # fmt: skip
        args.json.write_text(json.dumps({
            "date": datetime.now(UTC).isoformat(timespec="seconds"), "cpu": cpu,
            "cpu_count": os.cpu_count(), "model": args.model, "version_dir": str(version_dir),
            "rows": rows,
        }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()

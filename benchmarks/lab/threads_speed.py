"""Threads per model: the gateway's default against in-process ONNX Runtime, light and heavy model.

The gateway's ``--intra-op-threads`` defaults to -1: one intra-op thread for a model whose one
image runs in under 2 ms on one thread (LeNet: tens of microseconds, where more threads only add
synchronisation and the other cores belong to the event loop), one per core for heavier ones
(ResNet50-224: tens of milliseconds, which scale with cores). This benchmark shows both sides, in
one run on one machine:

- in-process ceiling: ``session.run`` on one thread and on all cores, batch 1 and batch 8 (the
  best of them is the ceiling);
- the gateway with its defaults, and with ``--intra-op-threads 1`` (the old default), under
  ``wrk`` with one image per KServe V2 binary request at a few concurrencies;
- the ratio of each gateway row to the ceiling.

Models: the LeNet-like ONNX of ``tests/tiny_models.py`` (or a trained ``model_repository/lenet``)
and, given ``--resnet-repository``, its ``resnet50_imagenet`` (export it with
``python -m training export --model resnet50_imagenet --repository DIR``).

    .venv/bin/python -m benchmarks.lab.threads_speed --resnet-repository /tmp/r16/repo [--duration 8]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.ceiling import measure_ceiling
from benchmarks.hostile_speed import gateway_commit, machine
from benchmarks.lab.gateway_speed import (
    INFER_PATH,
    model_file,
    prepare_repository,
    start_gateway,
    wrk,
)

ROOT = Path(__file__).resolve().parents[2]
RESNET = "resnet50_imagenet"


def v2_one_image_body(onnx_path: Path) -> tuple[bytes, int]:
    """A KServe V2 binary request with one zero image of the model's input shape and type, its
    outputs asked for in binary (body, header length)."""
    import onnxruntime as ort

    from clients import v2 as v2_wire

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    node = session.get_inputs()[0]
    dtype = np.uint8 if "uint8" in node.type else np.float32
    image = np.zeros(
        [1, *[d if isinstance(d, int) and d > 0 else 1 for d in node.shape[1:]]], dtype
    )
    outputs = v2_wire.binary_outputs_request([session.get_outputs()[0].name])
    body, headers = v2_wire.encode_tensors("inputs", {node.name: image}, extra={"outputs": outputs})
    return body, int(headers[v2_wire.HEADER_LENGTH])


def model_rows(
    name: str, repo: Path, onnx_path: Path, concurrencies: list[int], duration: float, work: Path
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    ceiling = 0.0
    for threads, label in ((1, "1 thread"), (0, "all cores")):
        measured = measure_ceiling(onnx_path, [1, 8], duration / 2, "CPUExecutionProvider", threads)
        for result in measured["results"]:
            ceiling = max(ceiling, result["images_per_s"])
            rows.append({
                "model": name, "server": f"in-process ORT, {label}",
                "concurrency": f"batch {result['batch_size']}",
                "images_per_s": result["images_per_s"], "p50_ms": result["latency_ms_p50"],
                "p99_ms": result["latency_ms_p99"], "errors": 0,
            })  # fmt: skip
    body, header_length = v2_one_image_body(onnx_path)
    for label, extra in (("gateway, default threads", []),
                         ("gateway, --intra-op-threads 1", ["--intra-op-threads", "1"])):  # fmt: skip
        server = start_gateway(repo, extra)
        try:
            url = server.url + INFER_PATH.format(model=name)
            for concurrency in concurrencies:
                rps, p50, p99, errors, _cpu = wrk(
                    url, body, "application/octet-stream", concurrency, duration, work,
                    header_length=header_length, pid=server.process.pid,
                )  # fmt: skip
                rows.append({
                    "model": name, "server": label, "concurrency": f"c={concurrency}",
                    "images_per_s": rps, "p50_ms": p50, "p99_ms": p99, "errors": errors,
                })  # fmt: skip
        finally:
            server.stop()
    for row in rows:
        row["ratio_to_ceiling"] = row["images_per_s"] / ceiling if ceiling else float("nan")
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | server | load | images/s | / ceiling | p50 ms | p99 ms | errors |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['server']} | {r['concurrency']} | {r['images_per_s']:,.1f} | "
            f"{r['ratio_to_ceiling']:.2f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--resnet-repository", type=Path, help=f"a repository holding {RESNET}")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found (Debian package wrk)")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        repo, model, description = prepare_repository(work)
        print(f"LeNet: {description}", flush=True)
        rows += model_rows(model, repo, model_file(repo), [1, 32], args.duration / 2, work)
        if args.resnet_repository:
            resnet_dir = args.resnet_repository / RESNET
            versions = sorted(p for p in resnet_dir.iterdir() if p.name.isdigit())
            if not versions:
                sys.exit(f"no {RESNET} version under {args.resnet_repository}")
            # A repository with only ResNet50, so the gateway loads nothing else.
            only = work / "resnet"
            (only / RESNET).mkdir(parents=True)
            (only / RESNET / versions[-1].name).symlink_to(versions[-1].resolve())
            rows += model_rows(
                RESNET, only, versions[-1] / "model.onnx", [1, 4], args.duration, work
            )
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "machine": machine(),
        "gateway": f"{ROOT} at {gateway_commit(ROOT)}",
        "results": rows,
    }
    print()
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

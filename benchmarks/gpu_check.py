"""The gateway against its own in-process ceiling, ready for one short call on a lent GPU.

Two halves:

``prepare`` (here, with TensorFlow): a model repository with the ImageNet-shaped ResNet50
(``resnet50_imagenet``, fp32 and fp16 ONNX; a GPU machine cannot export it) and a LeNet, then the
parts for the device, packed by the pack script you name (it ships onnxruntime-gpu and the wheels
the device lacks); prints the device calls and the device time they are expected to take.

    .venv/bin/python -m benchmarks.gpu_check prepare --out .gpu-check [--pack-script PATH]

``run`` (on the device, or here as a dry run with ``--device cpu``): for each model and precision,

1. the in-process ceiling: ``serving.runtimes.onnx.OnnxRuntime`` itself (IO binding on a GPU, the
   same session options the gateway uses) at each batch size, plus a CUDA graph at batch 1 on a GPU;
2. the gateway (``python -m serving --device ... --precision ...``) on the same device under
   closed-loop load over KServe V2 binary and gRPC at several concurrencies, from several load
   processes (their CPU is reported: the generator must not be the bottleneck), and the image
   endpoint with JPEGs;
3. served-answer agreement: the same images through the gateway and in-process, classes equal.

It writes ``gpu_check.json`` and ``gpu_check.md`` (every figure, and gateway / ceiling) into
``--out`` and stops by itself within ``--budget-s`` (the measurement times are planned to fit).

    python -m benchmarks.gpu_check run --device cuda --repository $GPU_EXTRA/repo --out $OUT
    .venv/bin/python -m benchmarks.gpu_check run --device cpu --repository .gpu-check/repo --out /tmp/gc

Size: both halves in one module, so the device half and the half that prepares its parts
cannot disagree on the repository layout or the time plan.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import json
import multiprocessing
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESNET = "resnet50_imagenet"
LENET = "lenet"


@dataclass(frozen=True)
class Plan:
    """What one ``run`` measures on a device; the CPU plan is small enough for a 2-core dry run."""

    batches: tuple[int, ...]
    concurrencies: tuple[int, ...]
    precisions: tuple[str, ...]
    seconds: float  # per load measurement
    ceiling_seconds: float  # per batch size
    load_processes: int
    agreement_images: int
    #: the wires loaded, in this order: v2 (binary REST), grpc (TF Serving), v2-grpc (KServe V2
    #: gRPC), image (the image endpoint, at the highest concurrency only)
    protocols: tuple[str, ...] = ("v2", "grpc", "image")


PLANS = {
    "cuda": Plan((1, 8, 32, 64, 128, 256), (1, 32, 128, 256), ("fp16", "fp32"), 8.0, 2.0, 12, 256),
    "cpu": Plan((1, 8), (1, 4), ("fp32",), 6.0, 2.0, 1, 16),
}


# --- prepare -----------------------------------------------------------------------------------
def prepare(out: Path, pack_script: Path | None) -> None:
    export = out / "export"
    if not (export / RESNET).exists():
        print(f"exporting {RESNET} (fp32 and fp16 ONNX; a few minutes, about 9 GB of memory)")
        subprocess.run(
            [sys.executable, "-m", "training", "export", "--model", RESNET, "--repository",
             str(export)], check=True, cwd=ROOT,
        )  # fmt: skip
    if not (export / LENET).exists():
        from tests.tiny_models import lenet_like, write_version

        write_version(export, LENET, 1, lenet_like())
    # The device needs what the gateway loads (ONNX and metadata), not the SavedModels: every
    # carried megabyte costs device time.
    repo = out / "repo"
    shutil.rmtree(repo, ignore_errors=True)
    for source in export.glob("*/[0-9]*/"):
        target = repo / source.relative_to(export)
        target.mkdir(parents=True)
        for name in ("model.onnx", "model.fp16.onnx", "model.int8.onnx", "metadata.json"):
            if (source / name).exists():
                shutil.copy2(source / name, target / name)
    for target in repo.glob(f"{RESNET}/[0-9]*/"):
        if not (target / "model.int8.onnx").exists():
            # The int8 row of the GPU matrix (TensorRT where it loads, else the CUDA provider on
            # the QDQ graph): an untrained model has no test set to gate on, so it is calibrated
            # on random pixels here, for speed only, not published anywhere.
            from training.quantize import quantize_file

            print(f"quantizing {target.relative_to(repo)} to int8 (calibration: random pixels)")
            calibration = np.random.default_rng(0).integers(0, 256, (32, 224, 224, 3), np.uint8)
            quantize_file(target / "model.onnx", target / "model.int8.onnx", calibration)
    sizes = {p.relative_to(repo): p.stat().st_size for p in repo.rglob("*.onnx")}
    for path, size in sorted(sizes.items()):
        print(f"  {path}: {size / 1e6:,.1f} MB")
    if pack_script is None:
        print("no --pack-script: pack the repository with your own tooling; device command:")
    else:
        subprocess.run(["bash", str(pack_script), str(repo)], check=True, cwd=ROOT)
    from benchmarks import gpu_matrix

    print(
        "check call (after the parts are on the device), with a hard stop past its budget:\n"
        "  source .gpu/unpack.sh && timeout 560 python3 -m benchmarks.gpu_matrix --device cuda "
        "--repository $GPU_EXTRA/repo --out $OUT --budget-s 450"
    )
    parts = sorted((ROOT / ".gpu").glob("p[0-9]*")) if pack_script else []
    # One start (about a minute), one short call per part, the check, then give the device back.
    print(
        f"expected device time: start ~60 s + {len(parts)} part call(s) + check <= 450 s (the "
        f"matrix fits its budget by skipping its last screen variants; "
        f"{gpu_matrix.expected_seconds(gpu_matrix.PLANS['cuda'], gpu_matrix.VARIANTS):.0f} s "
        "would measure all of them)"
    )


def expected_seconds(plan: Plan, models: int) -> float:
    """Planned measurement time of ``run`` (load and ceiling), without model loading."""
    per_precision = (
        len(plan.batches) * plan.ceiling_seconds
        + sum(1 if p == "image" else len(plan.concurrencies) for p in plan.protocols) * plan.seconds
        + 15  # gateway start, warmup, agreement
    )
    return models * len(plan.precisions) * per_precision


# --- in-process ceiling --------------------------------------------------------------------------
def runtime_for(version_dir: Path, device: str, precision: str, cuda_graph: bool = False) -> Any:
    from serving.runtimes.onnx import OnnxOptions, OnnxRuntime

    options = OnnxOptions(device=device, precision=precision, cuda_graph=cuda_graph)
    return OnnxRuntime(version_dir, options)


def model_inputs(runtime: Any, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in runtime.inputs:
        shape = (batch, *[d if d > 0 else 1 for d in spec.shape[1:]])
        if np.issubdtype(spec.dtype, np.integer):
            feeds[spec.name] = rng.integers(0, 256, shape).astype(spec.dtype)
        else:
            feeds[spec.name] = rng.random(shape, dtype=np.float32).astype(spec.dtype)
    return feeds


def ceiling(version_dir: Path, device: str, precision: str, plan: Plan) -> list[dict[str, Any]]:
    rows = []
    runtime = runtime_for(version_dir, device, precision)
    try:
        for batch in plan.batches:
            rows.append(time_runtime(runtime, batch, plan.ceiling_seconds, "IO binding"
                                     if runtime.provider != "CPUExecutionProvider" else "run"))  # fmt: skip
    finally:
        runtime.close()
    if device == "cuda":
        graph = runtime_for(version_dir, device, precision, cuda_graph=True)
        try:
            rows.append(time_runtime(graph, 1, plan.ceiling_seconds, "CUDA graph"))
        finally:
            graph.close()
    return rows


def time_runtime(runtime: Any, batch: int, seconds: float, how: str) -> dict[str, Any]:
    feeds = model_inputs(runtime, batch)
    for _ in range(3):
        runtime.predict(feeds)
    latencies: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(latencies) < 5:
        started = time.perf_counter()
        runtime.predict(feeds)
        latencies.append(time.perf_counter() - started)
    median = float(np.median(latencies))
    return {
        "batch": batch,
        "how": how,
        "provider": runtime.provider,
        "intra_op_threads": runtime.intra_op_threads,
        "images_per_s": batch / median,
        "p50_ms": median * 1000,
        "p99_ms": float(np.percentile(latencies, 99)) * 1000,
    }


# --- load --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadSpec:
    protocol: str  # v2, grpc, v2-grpc, image
    url: str
    grpc_target: str
    model: str
    body: bytes
    headers: tuple[tuple[str, str], ...]
    concurrency: int
    seconds: float


async def _load(spec: LoadSpec) -> tuple[int, list[float], Counter[str]]:
    latencies: list[float] = []
    end = time.perf_counter() + spec.seconds
    if spec.protocol in ("grpc", "v2-grpc"):
        import grpc

        from clients import v2_grpc, wire

        method = v2_grpc.MODEL_INFER_METHOD if spec.protocol == "v2-grpc" else wire.PREDICT_METHOD

        async with grpc.aio.insecure_channel(
            spec.grpc_target, options=[("grpc.max_receive_message_length", 64 << 20),
                                       ("grpc.max_send_message_length", 64 << 20)],
        ) as channel:  # fmt: skip
            call = channel.unary_unary(method)

            async def one() -> None:
                await call(spec.body, timeout=30)

            return await _workers(one, spec.concurrency, end, latencies)
    import httpx

    limits = httpx.Limits(max_connections=spec.concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        headers = dict(spec.headers)

        async def one_http() -> None:
            reply = await client.post(spec.url, content=spec.body, headers=headers)
            reply.raise_for_status()

        return await _workers(one_http, spec.concurrency, end, latencies)


def error_kind(error: BaseException) -> str:
    """``http 429``, ``grpc RESOURCE_EXHAUSTED`` or the exception's class name."""
    response = getattr(error, "response", None)
    if response is not None and hasattr(response, "status_code"):
        return f"http {response.status_code}"
    code = getattr(error, "code", None)
    if callable(code):
        try:
            return f"grpc {code().name}"
        except Exception:  # not a gRPC error after all
            pass
    return type(error).__name__


async def _workers(
    one: Any, concurrency: int, end: float, latencies: list[float]
) -> tuple[int, list[float], Counter[str]]:
    errors: Counter[str] = Counter()

    async def worker() -> None:
        while time.perf_counter() < end:
            started = time.perf_counter()
            try:
                await one()
            except Exception as error:  # counted: any failed call is an error of the run
                errors[error_kind(error)] += 1
                continue
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*[worker() for _ in range(concurrency)])
    return len(latencies), latencies, errors


def _load_process(spec: LoadSpec) -> tuple[int, list[float], Counter[str], float]:
    before = resource.getrusage(resource.RUSAGE_SELF)
    count, latencies, errors = asyncio.run(_load(spec))
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return count, latencies, errors, cpu


def drive(spec: LoadSpec, processes: int) -> dict[str, Any]:
    """Closed-loop load from ``processes`` processes sharing ``spec.concurrency`` callers."""
    processes = max(1, min(processes, spec.concurrency))
    shares = [spec.concurrency // processes + (i < spec.concurrency % processes)
              for i in range(processes)]  # fmt: skip
    specs = [LoadSpec(**{**spec.__dict__, "concurrency": share}) for share in shares]
    started = time.perf_counter()
    if processes == 1:
        results = [_load_process(specs[0])]
    else:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            results = pool.map(_load_process, specs)
    elapsed = time.perf_counter() - started
    latencies = [t for _, lat, _, _ in results for t in lat]
    count = sum(r[0] for r in results)
    return {
        "protocol": spec.protocol,
        "concurrency": spec.concurrency,
        "requests_per_s": count / spec.seconds,
        "errors": sum(sum(r[2].values()) for r in results),
        "error_kinds": dict(sum((r[2] for r in results), Counter())),
        "p50_ms": float(np.percentile(latencies, 50)) * 1000 if latencies else float("nan"),
        "p99_ms": float(np.percentile(latencies, 99)) * 1000 if latencies else float("nan"),
        # of one core; over the whole window including process start
        "load_cpu_percent": sum(r[3] for r in results) / elapsed * 100,
        "load_processes": processes,
    }


def v2_body(feeds: dict[str, np.ndarray]) -> tuple[bytes, tuple[tuple[str, str], ...]]:
    """A KServe V2 binary request for ``feeds`` (the client's own encoder)."""
    from clients import v2 as v2_wire

    body, headers = v2_wire.encode_tensors("inputs", feeds)
    return body, tuple((k.lower(), v) for k, v in headers.items())


def jpeg_of(image: np.ndarray) -> bytes:
    from PIL import Image

    pixels = image.squeeze()
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


# --- gateway ----------------------------------------------------------------------------------
class GatewayProcess:
    """``python -m serving`` in a subprocess of its own session, ready once its ports are
    announced (with ``--workers``: once all workers are); ``url`` and ``grpc`` read from its log.
    Raises RuntimeError, with the log, when it exits or stays silent past ``timeout_s``."""

    def __init__(self, command: list[str], timeout_s: float, workers: int = 1) -> None:
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,  # stop() reaches a supervisor's workers too
        )  # fmt: skip
        self.lines: list[str] = []
        self.url = ""
        self.grpc = ""
        ready = threading.Event()
        ready_text = "workers ready" if workers > 1 else "gRPC ("

        def read() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                self.lines.append(line)
                if ready_text in line:
                    if match := re.search(r"on (http://127\.0\.0\.1:\d+)", line):
                        self.url = match.group(1)
                    if match := re.search(r"gRPC\b.*?\bon (127\.0\.0\.1:\d+)", line):
                        self.grpc = match.group(1)
                    ready.set()
                elif not self.url and (match := re.search(r"on (http://127\.0\.0\.1:\d+)", line)):
                    self.url = match.group(1)
            ready.set()  # exited

        threading.Thread(target=read, daemon=True).start()
        self.started = time.monotonic()
        ready.wait(timeout_s)
        #: seconds from the command to ready: model loads, sessions and warmup included
        self.start_seconds = time.monotonic() - self.started
        if self.process.poll() is not None or not (self.url and self.grpc):
            self.stop()
            raise RuntimeError(
                f"gateway not ready after {self.start_seconds:.0f} s:\n" + "".join(self.lines[-40:])
            )

    def stop(self) -> None:
        """SIGTERM (a drain), then SIGKILL to the whole session after 30 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def start_gateway(
    repo: Path, device: str, precision: str, extra: tuple[str, ...] = (), timeout_s: float = 300
) -> GatewayProcess:
    workers = int(extra[extra.index("--workers") + 1]) if "--workers" in extra else 1
    return GatewayProcess(
        [sys.executable, "-m", "serving", "--repository", str(repo), "--host", "127.0.0.1",
         "--http-port", "0", "--grpc-port", "0", "--device", device, "--precision", precision,
         "--poll-interval-s", "0", "--max-batch-size", "256", *extra],
        timeout_s, workers,
    )  # fmt: skip


def agreement(
    server: Any, model: str, runtime: Any, images: int, v2_grpc: bool = False
) -> dict[str, Any]:
    from clients import Client

    feeds = model_inputs(runtime, images, seed=1)
    (name, batch), = feeds.items()  # fmt: skip
    expected = runtime.predict(feeds)[runtime.outputs[0].name]
    agree = {}
    wires = [("v2", server.url), ("grpc", f"grpc://{server.grpc}")]
    if v2_grpc:
        wires.append(("v2-grpc", f"grpc://{server.grpc}"))
    for protocol, target in wires:
        with Client(target, protocol=protocol, timeout=60) as client:
            served = np.concatenate([
                np.asarray(client.predict(model, {name: batch[i:i + 32]}))
                for i in range(0, len(batch), 32)
            ])  # fmt: skip
        agree[protocol] = float((served.argmax(1) == expected.argmax(1)).mean())
        agree[f"{protocol}_max_abs_diff"] = float(np.abs(served - expected).max())
    return agree


def run(
    device: str,
    repo: Path,
    out: Path,
    budget_s: float,
    plan: Plan | None = None,
    only_models: tuple[str, ...] = (),
    gateway_args: tuple[str, ...] = (),
) -> int:
    plan = plan or PLANS[device]
    models = [m for m in (RESNET, LENET) if (repo / m).exists() and m in (only_models or (m,))]
    if not models:
        sys.exit(f"no {RESNET} or {LENET} under {repo}")
    planned = expected_seconds(plan, len(models))
    if planned > budget_s:
        sys.exit(f"the plan takes about {planned:.0f} s, over --budget-s {budget_s:.0f}")
    print(f"plan: {device}, models {models}, about {planned:.0f} s of measurement", flush=True)
    started = time.monotonic()
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "device": device,
        "command": " ".join(sys.argv), "cpu_count": os.cpu_count(), "models": {},
        "gateway_args": list(gateway_args), "plan": dataclasses.asdict(plan),
    }  # fmt: skip
    for model in models:
        version_dir = latest_version(repo, model)
        for precision in plan.precisions:
            key = f"{model} {precision}"
            print(f"--> {key}: in-process ceiling", flush=True)
            entry: dict[str, Any] = {"ceiling": ceiling(version_dir, device, precision, plan)}
            server = start_gateway(only_repo(repo, model), device, precision, gateway_args)
            try:
                entry.update(measure_gateway(server, model, version_dir, device, precision, plan))
            finally:
                server.stop()
            set_ratios(entry)
            report["models"][key] = entry
            # Written after every entry: a call cut short by the device's limit still brings
            # back what it measured.
            write_report(report, out, started)
            if time.monotonic() - started > budget_s:
                print("budget spent: stopping early", flush=True)
                break
    print(write_report(report, out, started))
    return 0


def latest_version(repo: Path, model: str) -> Path:
    return max((p for p in (repo / model).iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def only_repo(repo: Path, model: str) -> Path:
    """A repository beside ``repo`` holding ``model`` alone (a link), so a gateway loads one."""
    only = repo.parent / f".only-{model}"
    if not only.exists():
        only.mkdir()
        (only / model).symlink_to((repo / model).resolve())
    return only


def measure_gateway(
    server: GatewayProcess, model: str, version_dir: Path, device: str, precision: str,
    plan: Plan, protocols: tuple[str, ...] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Agreement with in-process, then closed-loop load per protocol and concurrency (the image
    endpoint at the highest concurrency only) against a started gateway."""
    protocols = plan.protocols if protocols is None else protocols
    entry: dict[str, Any] = {"gateway_start_s": server.start_seconds}
    runtime = runtime_for(version_dir, device, precision)
    try:
        if plan.agreement_images:
            entry["agreement"] = agreement(
                server, model, runtime, plan.agreement_images, "v2-grpc" in protocols
            )
        one = model_inputs(runtime, 1)
    finally:
        runtime.close()
    body, headers = v2_body(one)
    from clients import v2_grpc, wire

    grpc_body = wire.build_predict_request(model, one).SerializeToString()
    v2_grpc_body = v2_grpc.build_infer_request(model, one).SerializeToString()
    loads = []
    for protocol, payload, hdrs in (
        ("v2", body, headers), ("grpc", grpc_body, ()), ("v2-grpc", v2_grpc_body, ()),
    ):  # fmt: skip
        if protocol not in protocols:
            continue
        for concurrency in plan.concurrencies:
            spec = LoadSpec(protocol, server.url + f"/v2/models/{model}/infer", server.grpc,
                            model, payload, hdrs, concurrency, plan.seconds)  # fmt: skip
            print(f"    {protocol} c={concurrency}", flush=True)
            loads.append(drive(spec, plan.load_processes))
    image = next(iter(one.values()))[0]
    if (
        "image" in protocols
        and image.ndim == 3
        and image.shape[-1] in (1, 3)
        and image.dtype == np.uint8
    ):
        spec = LoadSpec("image", server.url + f"/v1/models/{model}:classify_image",
                        server.grpc, model, jpeg_of(image), (("content-type", "image/jpeg"),),
                        plan.concurrencies[-1], plan.seconds)  # fmt: skip
        print(f"    image c={plan.concurrencies[-1]}", flush=True)
        loads.append(drive(spec, plan.load_processes))
    entry["gateway"] = loads
    return entry


def set_ratios(entry: dict[str, Any]) -> None:
    """Each load's images/s over the entry's best in-process row."""
    best = max(row["images_per_s"] for row in entry["ceiling"])
    for load in entry["gateway"]:
        load["ratio_to_ceiling"] = load["requests_per_s"] / best


def write_report(report: dict[str, Any], out: Path, started: float) -> str:
    report["seconds"] = time.monotonic() - started
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    markdown = table(report)
    (out / "gpu_check.md").write_text(markdown + "\n")
    return markdown


def table(report: dict[str, Any]) -> str:
    lines = [f"{report['device']} check, {report['date']}, {report['seconds']:.0f} s", ""]
    for key, entry in report["models"].items():
        best = max(row["images_per_s"] for row in entry["ceiling"])
        lines += [f"### {key}", "", "| in-process | batch | provider | threads | images/s | p50 ms |",
                  "|---|---:|---|---:|---:|---:|"]  # fmt: skip
        for row in entry["ceiling"]:
            lines.append(f"| {row['how']} | {row['batch']} | {row['provider']} | "
                         f"{row['intra_op_threads']} | {row['images_per_s']:,.1f} | "
                         f"{row['p50_ms']:.2f} |")  # fmt: skip
        lines += ["", "| gateway | concurrency | images/s | / ceiling | p50 ms | p99 ms | errors | "
                  "load CPU % (processes) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for row in entry["gateway"]:
            lines.append(f"| {row['protocol']} | {row['concurrency']} | "
                         f"{row['requests_per_s']:,.1f} | {row['ratio_to_ceiling']:.2f} | "
                         f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['errors']} | "
                         f"{row['load_cpu_percent']:.0f} ({row['load_processes']}) |")  # fmt: skip
        kinds = [f"{row['protocol']} c={row['concurrency']}: {row['error_kinds']}"
                 for row in entry["gateway"] if row.get("error_kinds")]  # fmt: skip
        if kinds:
            lines += ["", "errors by kind: " + "; ".join(kinds)]
        agree = entry.get("agreement", {})
        lines += ["", f"agreement with in-process (classes): {agree}", f"ceiling: {best:,.1f} img/s",
                  ""]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    prep = commands.add_parser("prepare", help="export the models and pack the device parts")
    prep.add_argument("--out", type=Path, default=ROOT / ".gpu-check")
    prep.add_argument("--pack-script", type=Path, help="packs a path into device parts")
    go = commands.add_parser("run", help="measure: in-process ceiling, gateway, agreement")
    go.add_argument("--device", choices=sorted(PLANS), required=True)
    go.add_argument("--repository", type=Path, required=True)
    go.add_argument("--out", type=Path, required=True)
    go.add_argument("--budget-s", type=float, default=480)
    narrow = go.add_argument_group("a narrower plan (default: the device's whole plan)")
    narrow.add_argument("--models", type=_names, default=(), help=f"comma list of {RESNET},{LENET}")
    narrow.add_argument("--precisions", type=_names, help="comma list of fp16,fp32")
    narrow.add_argument("--batches", type=_sizes, help="in-process batch sizes, comma list")
    narrow.add_argument("--concurrencies", type=_sizes, help="gateway load, comma list")
    narrow.add_argument("--seconds", type=float, help="per load measurement")
    narrow.add_argument(
        "--protocols", type=_names, help="comma list of v2,grpc,v2-grpc,image (v2,grpc,image)"
    )
    go.add_argument("--gateway-args", default="", help="extra gateway options, one string")
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.out, args.pack_script)
    else:
        if args.device == "cuda" and shutil.which("nvidia-smi") is None:
            print("note: nvidia-smi not found; the gateway fails loudly if CUDA does not load")
        plan = PLANS[args.device]
        changes = {"precisions": args.precisions, "batches": args.batches,
                   "concurrencies": args.concurrencies, "seconds": args.seconds,
                   "protocols": args.protocols}  # fmt: skip
        plan = dataclasses.replace(plan, **{k: v for k, v in changes.items() if v is not None})
        code = run(args.device, args.repository, args.out, args.budget_s, plan, args.models,
                   tuple(args.gateway_args.split()))  # fmt: skip
        sys.exit(code)


def _names(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _sizes(text: str) -> tuple[int, ...]:
    return tuple(int(item) for item in _names(text))


if __name__ == "__main__":
    main()

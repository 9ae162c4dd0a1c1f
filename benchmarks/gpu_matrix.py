"""Which gateway options serve a GPU best: the prepared device check, one call, one verdict a model.

The gateway's GPU path hinges on how ONNX Runtime's CUDA convolutions meet a new batch size
(RESULTS.md, "The GPU path on an H200": about 0.4 s per change with cuDNN's exhaustive search).
This check measures the levers side by side in one device call and picks from the numbers:

1. **ceilings**: in-process ONNX Runtime (``benchmarks.gpu_check.ceiling``: IO binding, and a
   CUDA graph at batch 1 on a GPU) for every model and precision of the plan;
2. **transport floors**: the same request bodies at one caller against servers that do nothing
   (``benchmarks.lab.noop_http`` for KServe V2 over HTTP, ``benchmarks.lab.grpc_aio_alone`` for gRPC), the
   transport's own share of a light-load request;
3. **screen**: each gateway variant (padding to one size / several sizes with a session each /
   none, x cuDNN algorithm search exhaustive / heuristic, x NHWC on / off, plus CUDA graphs and
   ``--workers``; ``VARIANTS``, most telling first) serves the screen model (ResNet50-224 fp16)
   over V2 binary at one caller and at the most callers, with its start time (loads, sessions,
   warmup) recorded; variants that the remaining budget cannot fit are skipped and listed;
4. **full**: the best variant (most images/s at the most callers; within 5% of it, the lower
   one-caller p50) serves every model and precision over V2 binary, gRPC and the JPEG endpoint at
   every concurrency, with served answers compared to in-process ones;
5. **verdicts**: one line per model, gateway / ceiling at the most callers over V2 binary, and the
   light-load price: one caller's p50 against 1.5 x in-process batch 1 + the transport floor.

It writes ``gpu_matrix.json`` and ``gpu_matrix.md`` into ``--out`` after every step (a call cut
short still brings back what it measured), stops itself within ``--budget-s``, and prints the
verdict lines last. On the device (after the parts are shipped, ``benchmarks.gpu_check prepare``):

    source .gpu/unpack.sh && python3 -m benchmarks.gpu_matrix --device cuda \\
        --repository $GPU_EXTRA/repo --out $OUT --budget-s 450

Dry run here (LeNet alone, short; the CUDA options change nothing on the CPU provider):

    .venv/bin/python -m benchmarks.gpu_matrix --device cpu --repository .gpu-check/repo \\
        --out /tmp/gm --models lenet --variants default,sessions-heuristic --seconds 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import gpu_check
from benchmarks.gpu_check import LENET, RESNET, ROOT, LoadSpec, Plan
from benchmarks.servers import free_port

SIZES = "1,8,32,128,256"  # the padded sizes of the session-per-size variants
HEURISTIC = ("--cudnn-conv-algo-search", "heuristic")
SESSIONS = ("--allowed-batch-sizes", SIZES, "--session-per-batch-size")


@dataclass(frozen=True)
class Variant:
    """One set of gateway options the screen compares."""

    name: str
    args: tuple[str, ...]
    question: str


#: Most telling first: when the budget runs short, the last ones are skipped.
VARIANTS = (
    Variant("default", (), "the defaults: one padded size on a GPU, exhaustive search, NHWC"),
    Variant("sessions-heuristic", (*SESSIONS, *HEURISTIC),
            "five padded sizes, a session each, cuDNN heuristics: light and heavy load both?"),
    Variant("none-heuristic", ("--allowed-batch-sizes", "none", *HEURISTIC),
            "no padding at all: do heuristics make a change of batch size cheap enough?"),
    Variant("sessions-exhaustive", SESSIONS,
            "sessions per size with exhaustive search: better kernels once, at load?"),
    Variant("sessions-heuristic-nchw", (*SESSIONS, *HEURISTIC, "--no-cuda-prefer-nhwc"),
            "the same without NHWC (the cuDNN frontend path is the NHWC one)"),
    Variant("sessions-heuristic-workers4", (*SESSIONS, *HEURISTIC, "--workers", "4"),
            "four processes: is one event loop the limit at many callers?"),
    Variant("default-heuristic", HEURISTIC, "one padded size with heuristics"),
    Variant("sizes-heuristic", ("--allowed-batch-sizes", SIZES, *HEURISTIC),
            "five padded sizes on one session with heuristics: are sessions needed?"),
    Variant("graphs-heuristic", ("--allowed-batch-sizes", SIZES, "--cuda-graph", *HEURISTIC),
            "a CUDA graph per padded size"),
    Variant("none-exhaustive", ("--allowed-batch-sizes", "none"),
            "no padding, exhaustive search (about 25 img/s at 32 callers on an H200, 2026-11-28)"),
)  # fmt: skip


@dataclass(frozen=True)
class MatrixPlan:
    """What one matrix run measures; the CPU plan is small enough for a 2-core dry run."""

    screen: tuple[str, str]  # model, precision
    full: tuple[tuple[str, str], ...]  # (model, precision), verdict model first
    ceiling_batches: tuple[int, ...]
    concurrencies: tuple[int, ...]  # the full step's; the screen uses the first and the last
    screen_seconds: float
    seconds: float  # per load measurement of the full step
    load_processes: int
    agreement_images: int
    start_guess_s: float  # a gateway start before one was timed


PLANS = {
    # int8 last: the first entry the budget drops (and only where the file is there)
    "cuda": MatrixPlan((RESNET, "fp16"),
                       ((RESNET, "fp16"), (RESNET, "fp32"), (LENET, "fp32"), (RESNET, "int8")),
                       (1, 32, 256), (1, 32, 256), 3.0, 4.0, 12, 256, 20.0),
    "cpu": MatrixPlan((RESNET, "fp32"), ((RESNET, "fp32"), (LENET, "fp32")),
                      (1, 8), (1, 4), 2.0, 2.0, 1, 16, 5.0),
}  # fmt: skip
SPAWN_S = 2.0  # a load step's process pool start, on top of its measurement time
VERDICT_NAMES = {RESNET: "ResNet50-224", LENET: "LeNet"}


class Budget:
    """Seconds left of ``--budget-s``; every step asks before it starts."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def device_name(device: str) -> str:
    """The GPU's name from nvidia-smi, or the CPU model for a dry run."""
    if device == "cuda" and shutil.which("nvidia-smi"):
        names = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30,
        ).stdout.split("\n")  # fmt: skip
        if names and names[0].strip():
            return names[0].strip()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                .splitlines() if line.startswith("model name")), "unknown CPU")  # fmt: skip
    return f"{cpu}, {os.cpu_count()} cores" if device == "cpu" else f"{device}: {cpu}"


def load_seconds(plan: MatrixPlan, steps: int, seconds: float) -> float:
    return steps * (seconds + SPAWN_S)


def full_entry_seconds(plan: MatrixPlan, start_s: float) -> float:
    """A full-step entry: start, agreement, V2 and gRPC at every concurrency, the image endpoint."""
    return start_s + 5 + load_seconds(plan, 2 * len(plan.concurrencies) + 1, plan.seconds)


#: full-step entries that get only what the budget leaves: no share is kept for them while
#: screening (the int8 row: a question of its own, not the verdict's)
LEFTOVER_PRECISIONS = ("int8",)


def expected_seconds(plan: MatrixPlan, variants: tuple[Variant, ...]) -> float:
    """The whole matrix, every variant screened, at ``plan.start_guess_s`` a gateway start
    (without the entries that run on what is left, ``LEFTOVER_PRECISIONS``)."""
    entries = len([p for _, p in plan.full if p not in LEFTOVER_PRECISIONS])
    ceilings = entries * (len(plan.ceiling_batches) + 1) * 2.0 + 5 * entries  # + session loads
    floors = load_seconds(plan, 2, plan.screen_seconds)
    screen = len(variants) * (plan.start_guess_s + load_seconds(plan, 2, plan.screen_seconds))
    return ceilings + floors + screen + entries * full_entry_seconds(plan, plan.start_guess_s)


# --- transport floors --------------------------------------------------------------------------
def transport_floors(one: dict[str, Any], model: str, seconds: float) -> dict[str, Any]:
    """One caller's p50 for the model's V2 binary and gRPC bodies against do-nothing servers."""
    from clients import wire

    floors: dict[str, Any] = {}
    port = free_port()
    noop = subprocess.Popen([sys.executable, "-m", "benchmarks.lab.noop_http", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        end = time.monotonic() + 30
        while time.monotonic() < end:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        body, headers = gpu_check.v2_body(one)
        spec = LoadSpec("v2", f"http://127.0.0.1:{port}/v2/models/{model}/infer", "", model, body,
                        headers, 1, seconds)  # fmt: skip
        floors["v2"] = gpu_check.drive(spec, 1)
    finally:
        noop.terminate()
        noop.wait(10)
    grpc_alone = subprocess.Popen([sys.executable, "-m", "benchmarks.lab.grpc_aio_alone"], cwd=ROOT,
                                  stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert grpc_alone.stdout is not None
        line = grpc_alone.stdout.readline()
        match = re.search(r"on (127\.0\.0\.1:\d+)", line)
        if match:
            grpc_body = wire.build_predict_request(model, one).SerializeToString()
            spec = LoadSpec("grpc", "", match.group(1), model, grpc_body, (), 1, seconds)
            floors["grpc"] = gpu_check.drive(spec, 1)
    finally:
        grpc_alone.terminate()
        grpc_alone.wait(10)
    return floors


# --- the run -----------------------------------------------------------------------------------
def runtime_info(server: gpu_check.GatewayProcess) -> list[dict[str, str]]:
    """The gateway's serving_model_runtime_info labels: the options ONNX Runtime really applied."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(server.url + "/metrics", timeout=30).text
    return [
        sample.labels
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "serving_model_runtime_info" and sample.value == 1
    ]


def screen_variant(
    variant: Variant, repo: Path, device: str, plan: MatrixPlan, one: dict[str, Any],
    timeout_s: float,
) -> dict[str, Any]:  # fmt: skip
    """One variant on the screen model: V2 binary at the fewest and the most callers."""
    model, precision = plan.screen
    row: dict[str, Any] = {"variant": variant.name, "args": list(variant.args),
                           "question": variant.question}  # fmt: skip
    print(f"--> screen {variant.name}: {' '.join(variant.args) or '(defaults)'}", flush=True)
    try:
        server = gpu_check.start_gateway(
            gpu_check.only_repo(repo, model), device, precision, variant.args, timeout_s
        )
    except RuntimeError as error:
        row["error"] = str(error)[-3000:]
        print(f"    failed to start: {str(error).splitlines()[0]}", flush=True)
        return row
    try:
        row["start_s"] = server.start_seconds
        row["runtime_info"] = runtime_info(server)
        body, headers = gpu_check.v2_body(one)
        for name, concurrency in (("light", plan.concurrencies[0]),
                                  ("heavy", plan.concurrencies[-1])):  # fmt: skip
            spec = LoadSpec("v2", server.url + f"/v2/models/{model}/infer", server.grpc, model,
                            body, headers, concurrency, plan.screen_seconds)  # fmt: skip
            row[name] = gpu_check.drive(spec, plan.load_processes)
            print(f"    v2 c={concurrency}: {row[name]['requests_per_s']:,.1f} img/s, "
                  f"p50 {row[name]['p50_ms']:.2f} ms", flush=True)  # fmt: skip
    finally:
        server.stop()
    return row


def choose(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Most images/s at the most callers; within 5% of that, the lowest one-caller p50."""
    measured = [row for row in rows if "heavy" in row and row["heavy"]["requests_per_s"] > 0]
    if not measured:
        return None
    best = max(row["heavy"]["requests_per_s"] for row in measured)
    close = [row for row in measured if row["heavy"]["requests_per_s"] >= 0.95 * best]
    return min(close, key=lambda row: row["light"]["p50_ms"])


def run(
    device: str, repo: Path, out: Path, budget_s: float, plan: MatrixPlan,
    variants: tuple[Variant, ...] = VARIANTS,
) -> dict[str, Any]:  # fmt: skip
    budget = Budget(budget_s)
    started = time.monotonic()
    present = [
        (m, p) for m, p in plan.full if (repo / m).exists()
        and (p != "int8" or (gpu_check.latest_version(repo, m) / "model.int8.onnx").exists())
    ]  # fmt: skip
    if not present:
        sys.exit(f"none of {sorted({m for m, _ in plan.full})} under {repo}")
    if not (repo / plan.screen[0]).exists():
        plan = dataclasses.replace(plan, screen=present[0])
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "device": device,
        "device_name": device_name(device), "command": " ".join(sys.argv),
        "cpu_count": os.cpu_count(), "budget_s": budget_s, "plan": dataclasses.asdict(plan),
        "ceilings": {}, "floors": {}, "screen": [], "skipped": [], "chosen": None, "full": {},
        "verdicts": [],
    }  # fmt: skip

    def save() -> None:
        report["seconds"] = time.monotonic() - started
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_matrix.json").write_text(json.dumps(report, indent=2))
        (out / "gpu_matrix.md").write_text(markdown(report) + "\n")

    ceiling_plan = dataclasses.replace(gpu_check.PLANS[device], batches=plan.ceiling_batches)
    for model, precision in present:
        print(f"--> ceiling {model} {precision}", flush=True)
        version_dir = gpu_check.latest_version(repo, model)
        report["ceilings"][f"{model} {precision}"] = gpu_check.ceiling(
            version_dir, device, precision, ceiling_plan
        )
        save()

    screen_model, screen_precision = plan.screen
    runtime = gpu_check.runtime_for(
        gpu_check.latest_version(repo, screen_model), device, screen_precision
    )
    try:
        one = gpu_check.model_inputs(runtime, 1)
    finally:
        runtime.close()
    print("--> transport floors (do-nothing servers, one caller)", flush=True)
    report["floors"] = transport_floors(one, screen_model, plan.screen_seconds)
    save()

    starts: list[float] = []
    for variant in variants:
        # Kept for the full step: its entries at the start time of the best variant so far.
        leader = choose(report["screen"])
        reserve = sum(
            full_entry_seconds(plan, leader["start_s"] if leader else plan.start_guess_s)
            for _, precision in present
            if precision not in LEFTOVER_PRECISIONS
        )
        cost = max(starts, default=plan.start_guess_s) + load_seconds(plan, 2, plan.screen_seconds)
        if budget.left() - reserve < cost:
            report["skipped"].append({"step": f"screen {variant.name}", "why": "budget"})
            continue
        row = screen_variant(variant, repo, device, plan, one,
                             timeout_s=max(30.0, budget.left() - reserve))  # fmt: skip
        if "start_s" in row:
            starts.append(row["start_s"])
        report["screen"].append(row)
        save()

    chosen = choose(report["screen"])
    if chosen is None:
        print("no variant served: see gpu_matrix.md", flush=True)
        save()
        return report
    report["chosen"] = {"variant": chosen["variant"], "args": chosen["args"]}
    print(f"--> chosen: {chosen['variant']}", flush=True)
    args = tuple(chosen["args"])
    for model, precision in present:
        key = f"{model} {precision}"
        if budget.left() < full_entry_seconds(plan, chosen["start_s"]):
            report["skipped"].append({"step": f"full {key}", "why": "budget"})
            continue
        print(f"--> full {key} with {chosen['variant']}", flush=True)
        full_plan = Plan(plan.ceiling_batches, plan.concurrencies, (precision,), plan.seconds,
                         0.0, plan.load_processes, plan.agreement_images)  # fmt: skip
        version_dir = gpu_check.latest_version(repo, model)
        try:
            server = gpu_check.start_gateway(
                gpu_check.only_repo(repo, model), device, precision, args,
                max(30.0, budget.left()),
            )  # fmt: skip
        except RuntimeError as error:
            report["full"][key] = {"error": str(error)[-3000:]}
            save()
            continue
        try:
            entry = {"ceiling": report["ceilings"][key]}
            entry.update(gpu_check.measure_gateway(server, model, version_dir, device, precision,
                                                   full_plan))  # fmt: skip
        finally:
            server.stop()
        gpu_check.set_ratios(entry)
        entry["decode_threads"] = decode_threads(args)
        report["full"][key] = entry
        save()
    report["verdicts"] = verdicts(report)
    save()
    return report


def decode_threads(args: tuple[str, ...]) -> int:
    """The image endpoint's decode threads under these gateway options."""
    if "--decode-threads" in args:
        return int(args[args.index("--decode-threads") + 1])
    from serving.settings import ServingSettings

    return int(ServingSettings.model_fields["decode_threads"].default)


def light_load(report: dict[str, Any], key: str) -> dict[str, Any] | None:
    """One caller's p50 over V2 binary against 1.5 x in-process batch 1 + the transport floor."""
    entry = report["full"].get(key, {})
    one_caller = [row for row in entry.get("gateway", [])
                  if row["protocol"] == "v2" and row["concurrency"] == 1]  # fmt: skip
    batch_one = [row for row in report["ceilings"].get(key, [])
                 if row["batch"] == 1 and row["how"] != "CUDA graph"]  # fmt: skip
    floor = report["floors"].get("v2")
    if not (one_caller and batch_one and floor):
        return None
    goal = 1.5 * batch_one[0]["p50_ms"] + floor["p50_ms"]
    return {
        "gateway_p50_ms": one_caller[0]["p50_ms"], "in_process_batch1_p50_ms": batch_one[0]["p50_ms"],
        "transport_p50_ms": floor["p50_ms"], "goal_ms": goal, "met": one_caller[0]["p50_ms"] <= goal,
    }  # fmt: skip


def verdicts(report: dict[str, Any]) -> list[str]:
    """One line per model of the full step, gateway / ceiling over V2 binary at the most callers
    (the form RESULTS.md records), then its gRPC, image and light-load figures."""
    day = report["date"][:10]
    prefix = "GPU verdict" if report["device"] == "cuda" else "CPU dry-run verdict"
    lines = []
    for key, entry in report["full"].items():
        if "gateway" not in entry:
            continue
        model, precision = key.split()
        most = max(row["concurrency"] for row in entry["gateway"])
        ratio = {row["protocol"]: row["ratio_to_ceiling"] for row in entry["gateway"]
                 if row["concurrency"] == most}  # fmt: skip
        lines.append(
            f"{prefix} ({day}, {report['device_name']}): {VERDICT_NAMES.get(model, model)} "
            f"{precision} V2 binary c={most} gateway/ceiling = {ratio.get('v2', 0):.2f}"
        )
        extra = f"  gRPC c={most} {ratio.get('grpc', 0):.2f}"
        if "image" in ratio:
            extra += (
                f"; JPEG c={most} {ratio['image']:.2f} ({entry['decode_threads']} decode threads)"
            )
        price = light_load(report, key)
        if price:
            extra += (f"; one caller p50 {price['gateway_p50_ms']:.2f} ms against goal "
                      f"{price['goal_ms']:.2f} ms (1.5 x {price['in_process_batch1_p50_ms']:.2f} "
                      f"in-process + {price['transport_p50_ms']:.2f} transport): "
                      f"{'met' if price['met'] else 'not met'}")  # fmt: skip
        lines.append(extra + f"; options: {report['chosen']['variant']}")
    return lines


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# GPU matrix: {report['device_name']}, {report['date']}, "
             f"{report.get('seconds', 0):.0f} s of a {report['budget_s']:.0f} s budget", "",
             f"`{report['command']}`", "", "## In-process ceilings", "",
             "| model | how | batch | provider | images/s | p50 ms |", "|---|---|---:|---|---:|---:|"]  # fmt: skip
    for key, rows in report["ceilings"].items():
        for row in rows:
            lines.append(f"| {key} | {row['how']} | {row['batch']} | {row['provider']} | "
                         f"{row['images_per_s']:,.1f} | {row['p50_ms']:.2f} |")  # fmt: skip
    lines += ["", "## Transport floors (do-nothing servers, one caller)", ""]
    for protocol, row in report["floors"].items():
        lines.append(f"- {protocol}: p50 {row['p50_ms']:.3f} ms, {row['requests_per_s']:,.0f}/s")
    lines += ["", "## Screen: the options side by side", "",
              "| variant | options | start s | c=1 img/s | c=1 p50 ms | c=max img/s | c=max p50 ms "
              "| errors | load CPU % |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for row in report["screen"]:
        if "error" in row:
            lines.append(f"| {row['variant']} | `{' '.join(row['args'])}` | failed: "
                         f"{row['error'].splitlines()[0][:80]} | | | | | | |")  # fmt: skip
            continue
        light, heavy = row["light"], row["heavy"]
        lines.append(
            f"| {row['variant']} | `{' '.join(row['args']) or '(defaults)'}` | "
            f"{row['start_s']:.1f} | {light['requests_per_s']:,.1f} | {light['p50_ms']:.2f} | "
            f"{heavy['requests_per_s']:,.1f} | {heavy['p50_ms']:.2f} | "
            f"{light['errors'] + heavy['errors']} | {heavy['load_cpu_percent']:.0f} |"
        )
    for row in report["screen"]:
        for info in row.get("runtime_info", []):
            lines.append(f"\n{row['variant']} runs with: " + ", ".join(
                f"{k}={v}" for k, v in info.items() if v and k not in ("model", "version")))  # fmt: skip
    if report["skipped"]:
        lines += ["", "Skipped for the budget: "
                  + ", ".join(item["step"] for item in report["skipped"])]  # fmt: skip
    if report["chosen"]:
        lines += ["", f"Chosen: **{report['chosen']['variant']}** "
                  f"(`{' '.join(report['chosen']['args']) or '(defaults)'}`)", ""]  # fmt: skip
        full = {**report, "models": {k: v for k, v in report["full"].items() if "gateway" in v}}
        lines.append(gpu_check.table(full))
        for key, entry in report["full"].items():
            if "error" in entry:
                lines.append(f"{key}: failed: {entry['error'].splitlines()[0]}")
    if report["verdicts"]:
        lines += ["## Verdicts", "", *report["verdicts"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=sorted(PLANS), required=True)
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget-s", type=float, default=450,
                        help="stop within this many seconds (one device call allows 600)")  # fmt: skip
    parser.add_argument("--variants", help="comma list of: " + ", ".join(v.name for v in VARIANTS))
    parser.add_argument("--models", help=f"comma list of {RESNET},{LENET} (default: the plan's)")
    parser.add_argument("--seconds", type=float, help="per load measurement (screen and full)")
    parser.add_argument("--concurrencies", help="comma list (default: the device plan's)")
    args = parser.parse_args()
    plan = PLANS[args.device]
    if args.models:
        wanted = gpu_check._names(args.models)
        plan = dataclasses.replace(plan, full=tuple(e for e in plan.full if e[0] in wanted))
    if args.seconds:
        plan = dataclasses.replace(plan, seconds=args.seconds, screen_seconds=args.seconds)
    if args.concurrencies:
        plan = dataclasses.replace(plan, concurrencies=gpu_check._sizes(args.concurrencies))
    variants: tuple[Variant, ...] = VARIANTS
    if args.variants:
        by_name = {v.name: v for v in VARIANTS}
        unknown = [n for n in gpu_check._names(args.variants) if n not in by_name]
        if unknown:
            parser.error(f"unknown variants {unknown}; known: {', '.join(by_name)}")
        variants = tuple(by_name[n] for n in gpu_check._names(args.variants))
    report = run(args.device, args.repository, args.out, args.budget_s, plan, variants)
    print(markdown(report))
    print("\n".join(report["verdicts"]) or "no verdict: nothing served (see gpu_matrix.md)")
    sys.exit(0 if report["verdicts"] else 1)


if __name__ == "__main__":
    main()

"""One benchmark run: prepare data, run Locust headless as a subprocess, collect, judge, report.

``run_benchmark(RunConfig(...))`` returns the results dict that ``results.json`` holds; the demo
and the sweep call it directly, ``python -m benchmarks run`` is its command line.

Size: the stages of one run, in order; each reads what the previous one wrote, and keeping
them together keeps those hand-offs visible.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import re
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import metrics
from benchmarks.ceiling import ceiling_for, measure_ceiling
from benchmarks.prepare import prepare_test_data
from benchmarks.reference import Reference, mismatch_reason, resolve_reference
from benchmarks.servers import child_env

PROTOCOLS = ("rest", "v2", "grpc", "v2-grpc", "image")
USER_CLASS = {
    "rest": "RestUser", "v2": "V2User", "grpc": "GrpcUser", "v2-grpc": "V2GrpcUser",
    "image": "ImageUser",
}  # fmt: skip
DEFAULT_PAYLOAD_FORMAT = {
    "rest": "row", "v2": "binary", "grpc": "tensor_content", "v2-grpc": "raw", "image": "png",
}  # fmt: skip
PAYLOAD_FORMATS = {
    "rest": ("row", "columnar"),
    "v2": ("binary", "json"),
    "grpc": ("tensor_content",),
    "v2-grpc": ("raw",),
    "image": ("png",),
}
LOCUSTFILE = Path(__file__).with_name("locustfile.py")
SCHEMA_PATH = Path(__file__).with_name("results.schema.json")
SCHEMA_VERSION = 1
RUN_TIME_SLACK_S = 30


def parse_duration(text: str | float | int) -> float:
    """'30s', '2m', '1m30s', '1h' or a number of seconds -> seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    text = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", text)
    if not parts or "".join(a + b for a, b in parts) != text:
        raise ValueError(f"cannot read duration {text!r}; use e.g. 30s, 2m, 1m30s")
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0}
    return sum(float(value) * scale[unit] for value, unit in parts)


@dataclass
class RunConfig:
    """Everything one run needs; defaults match ``python -m benchmarks run``."""

    target: str
    model: str
    protocol: str = "rest"
    out: str = "reports/run"
    users: int = 8
    spawn_rate: float = 8.0
    duration_s: float = 30.0
    warmup_s: float = 3.0
    processes: int = 1
    images_per_request: int = 1
    payload_format: str | None = None
    version: int | None = None
    label: str | None = None
    repository: str = "model_repository"
    dataset: str = "mnist"
    num_images: int = 1024
    seed: int = 0
    image_path: str = "/v1/models/{model}{suffix}:classify_image?top_k=1"
    input_name: str = "image"
    output_name: str = "probabilities"
    ceiling_seconds: float = 1.0
    # One intra-op thread, as the gateway runs by default (SERVING_INTRA_OP_THREADS=1).
    ceiling_intra_op_threads: int = 1
    max_accuracy_drop: float = 0.01
    min_agreement: float = 0.99
    max_error_ratio: float = 0.01
    server_name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}")
        if self.payload_format is None:
            self.payload_format = DEFAULT_PAYLOAD_FORMAT[self.protocol]
        if self.payload_format not in PAYLOAD_FORMATS[self.protocol]:
            raise ValueError(
                f"payload format for {self.protocol} must be one of"
                f" {', '.join(PAYLOAD_FORMATS[self.protocol])}"
            )
        if self.protocol in ("v2", "v2-grpc") and self.label:
            raise ValueError("KServe V2 has no version labels: give --version instead")
        if self.protocol == "image" and self.images_per_request != 1:
            raise ValueError("the image endpoint takes one image per request")
        if self.images_per_request < 1 or self.users < 1 or self.processes < 1:
            raise ValueError("users, processes and images per request must be at least 1")


def locust_command(config: RunConfig, csv_prefix: Path) -> list[str]:
    """The headless Locust command line for a run (its own runner, several processes if asked)."""
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--users",
        str(config.users),
        "--spawn-rate",
        str(config.spawn_rate),
        "--run-time",
        # A safety net only: the locustfile ends the run warm-up + duration after it started.
        f"{math.ceil(config.warmup_s + config.duration_s) + RUN_TIME_SLACK_S}s",
        "--host",
        config.target,
        "--csv",
        str(csv_prefix),
        "--only-summary",
        "--stop-timeout",
        "10",
        "--loglevel",
        "WARNING",
    ]
    if config.processes > 1:
        command += ["--processes", str(config.processes)]
    command.append(USER_CLASS[config.protocol])
    return command


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _number(value: str | None) -> float | None:
    if value in (None, "", "N/A"):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def read_locust_stats(csv_prefix: Path) -> dict[str, Any]:
    """Locust's own statistics (post-warm-up) from its CSV files."""
    rows = _read_csv(Path(f"{csv_prefix}_stats.csv"))
    entries = []
    for row in rows:
        entries.append(
            {
                "type": row.get("Type", ""),
                "name": row.get("Name", ""),
                "requests": int(_number(row.get("Request Count")) or 0),
                "failures": int(_number(row.get("Failure Count")) or 0),
                "requests_per_s": _number(row.get("Requests/s")) or 0.0,
                "avg_ms": _number(row.get("Average Response Time")),
                "median_ms": _number(row.get("Median Response Time")),
                "p95_ms": _number(row.get("95%")),
                "p99_ms": _number(row.get("99%")),
                "max_ms": _number(row.get("Max Response Time")),
            }
        )
    aggregated = next((e for e in entries if e["name"] == "Aggregated"), None)
    history = _read_csv(Path(f"{csv_prefix}_stats_history.csv"))
    series = [
        {
            "timestamp": int(_number(row.get("Timestamp")) or 0),
            "users": int(_number(row.get("User Count")) or 0),
            "requests_per_s": _number(row.get("Requests/s")) or 0.0,
        }
        for row in history
        if row.get("Name") == "Aggregated"
    ]
    return {
        "aggregated": aggregated,
        "entries": [e for e in entries if e["name"] != "Aggregated"],
        "history": series,
    }


def load_samples(samples_dir: Path) -> dict[str, Any]:
    """Concatenate the per-worker high-resolution samples."""
    files = sorted(samples_dir.glob("samples-*.npz"))
    keys = ("end_time", "latency", "images", "success", "image_index", "served")
    merged: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    starts, answer_errors = [], 0
    for path in files:
        with np.load(path) as data:
            for key in keys:
                merged[key].append(data[key])
            if float(data["test_start"]) > 0:
                starts.append(float(data["test_start"]))
            answer_errors += int(data["answer_errors"])
    result: dict[str, Any] = {
        key: (np.concatenate(values) if values else np.zeros(0)) for key, values in merged.items()
    }
    result["success"] = result["success"].astype(bool)
    result["image_index"] = result["image_index"].astype(np.int64)
    result["served"] = result["served"].astype(np.int64)
    result["test_start"] = min(starts) if starts else None
    result["workers"] = len(files)
    result["answer_errors"] = answer_errors
    return result


def judge_accuracy(
    served: np.ndarray,
    labels: np.ndarray,
    offline: np.ndarray | None,
    class_names: list[str],
    recorded_accuracy: float | None,
    max_accuracy_drop: float,
    min_agreement: float,
    recorded_examples: int | None = None,
) -> dict[str, Any]:
    """Metrics of the served answers and whether they fell below what the model can do.

    Three checks, each a failure reason: served accuracy against the offline accuracy on the very
    same images (no sampling noise, so only ``max_accuracy_drop``), against the accuracy training
    recorded in metadata.json (a sample, so a binomial allowance on top), and agreement with the
    offline predictions.
    """
    report = metrics.classification_report(labels, served, class_names)
    result: dict[str, Any] = report.to_dict()
    result["class_names"] = class_names
    reasons: list[str] = []
    if report.count == 0:
        reasons.append("no answers were checked")
    offline_accuracy = None
    agreement = None
    if offline is not None and report.count:
        offline_accuracy = float((offline == labels).mean())
        agreement = metrics.agreement(served, offline)
        if report.accuracy < offline_accuracy - max_accuracy_drop:
            reasons.append(
                f"served accuracy {report.accuracy:.4f} is below the offline accuracy"
                f" {offline_accuracy:.4f} on the same images"
            )
        if agreement < min_agreement:
            reasons.append(
                f"agreement with offline predictions {agreement:.4f} is below {min_agreement}"
            )
    allowed = None
    if recorded_accuracy is not None and report.count:
        allowed = metrics.allowed_accuracy_drop(
            recorded_accuracy, report.count, max_accuracy_drop, recorded_examples
        )
        if report.accuracy < recorded_accuracy - allowed:
            reasons.append(
                f"served accuracy {report.accuracy:.4f} is below the accuracy recorded at training"
                f" {recorded_accuracy:.4f} (allowed drop {allowed:.4f} for {report.count} images)"
            )
    result.update(
        {
            "offline_accuracy": offline_accuracy,
            "agreement": agreement,
            "recorded_accuracy": recorded_accuracy,
            "allowed_drop_vs_recorded": allowed,
            "max_accuracy_drop": max_accuracy_drop,
            "min_agreement": min_agreement,
            "passed": not reasons,
            "failure_reasons": reasons,
        }
    )
    return result


def judge_served(
    served: np.ndarray,
    image_index: np.ndarray,
    labels_all: np.ndarray,
    offline_all: np.ndarray,
    data_summary: dict[str, Any],
    reference: Reference | None,
    max_accuracy_drop: float,
    min_agreement: float,
) -> dict[str, Any]:
    """``judge_accuracy`` of served answers by test-set index, against the offline reference
    and the accuracy training recorded, unless the reference is not the served model: then the
    answers are checked against the true labels only (the reference's numbers belong to
    another model) and the mismatch itself is the failure (``reference_reasons``)."""
    trusted = reference is None or reference.matches is not False
    image_index = np.asarray(image_index, dtype=np.int64)
    return judge_accuracy(
        served,
        labels_all[image_index],
        offline_all[image_index] if data_summary["has_offline"] and trusted else None,
        data_summary["class_names"],
        data_summary["recorded_accuracy"] if trusted else None,
        max_accuracy_drop,
        min_agreement,
        data_summary.get("recorded_examples"),
    )


def reference_reasons(reference: Reference | None) -> list[str]:
    """The reference mismatch as a failure reason (an empty list when it matches)."""
    reason = mismatch_reason(reference) if reference else None
    return [reason] if reason else []


def print_reference(reference: Reference) -> None:
    """Say plainly on the terminal what the offline reference is and whether it is served."""
    for note in reference.notes:
        print(f"reference: {note}", flush=True)
    for difference in reference.differences:
        print(f"REFERENCE DIFFERS FROM THE SERVED MODEL: {difference}", flush=True)


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count() or 0,
        "python": platform.python_version(),
    }


def _run_locust(config: RunConfig, command: list[str], env: dict[str, str], out: Path) -> int:
    """Run Locust, showing progress (elapsed time, live requests/s) until it exits."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    total = config.warmup_s + config.duration_s
    stats_csv = out / "locust_stats.csv"
    log_path = out / "locust.log"
    # start-up, the --run-time safety net, the stop timeout and CSV writing
    deadline = time.monotonic() + total + RUN_TIME_SLACK_S + 90.0
    with (
        log_path.open("wb") as log,
        Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            transient=False,
            disable=not sys.stderr.isatty(),
        ) as progress,
    ):
        label = config.server_name or config.target
        task = progress.add_task(
            f"{config.protocol} {label} u={config.users} k={config.images_per_request}",
            total=total,
            status="starting",
        )
        if progress.disable:  # no terminal (CI, logs): one line per run instead of a bar
            print(
                f"locust: {config.protocol} {label} users={config.users}"
                f" k={config.images_per_request} for {total:g} s",
                flush=True,
            )
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        started = time.monotonic()
        while process.poll() is None:
            if time.monotonic() > deadline:
                process.kill()
                break
            elapsed = time.monotonic() - started
            phase = "warm-up" if elapsed < config.warmup_s else "measuring"
            rate = ""
            rows = _read_csv(stats_csv) if stats_csv.exists() else []
            aggregated = next((r for r in rows if r.get("Name") == "Aggregated"), None)
            if aggregated:
                rate = f" {float(aggregated.get('Requests/s') or 0):.0f} req/s"
            progress.update(task, completed=min(elapsed, total), status=phase + rate)
            time.sleep(0.5)
        progress.update(task, completed=total, status="done")
        return process.wait()


def run_benchmark(config: RunConfig, ceiling: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one Locust benchmark and write its report; returns the results dict.

    ``ceiling`` (from ``measure_ceiling``) is reused when given, e.g. by a sweep; otherwise a short
    in-process measurement at this run's batch size is made when model.onnx is on disk and
    ``config.ceiling_seconds`` > 0.
    """
    from benchmarks.report import write_run_report

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    samples_dir = out / "samples"
    samples_dir.mkdir(exist_ok=True)
    for stale in samples_dir.glob("samples-*.npz"):
        stale.unlink()  # a rerun into the same folder must not mix old samples in

    reference = resolve_reference(
        config.repository, config.model, config.version, config.label, config.target,
        config.protocol,
    )  # fmt: skip
    print_reference(reference)
    model_files = reference.model_files
    data_path = out / "test_data.npz"
    data_summary = prepare_test_data(
        data_path, config.dataset, model_files, config.num_images, config.seed
    )
    if ceiling is None and model_files and model_files.onnx_path and config.ceiling_seconds > 0:
        with np.load(data_path) as data:
            sample = data["images"][:256]
        ceiling = measure_ceiling(
            model_files.onnx_path,
            [config.images_per_request],
            config.ceiling_seconds,
            providers="auto",
            intra_op_threads=config.ceiling_intra_op_threads,
            images=sample,
        )

    locust_config = {
        "target": config.target,
        "model": config.model,
        "version": config.version,
        "label": config.label,
        "protocol": config.protocol,
        "payload_format": config.payload_format,
        "images_per_request": config.images_per_request,
        "warmup_s": config.warmup_s,
        "duration_s": config.duration_s,
        "data_path": str(data_path.resolve()),
        "samples_dir": str(samples_dir.resolve()),
        "image_path": config.image_path,
        "input_name": config.input_name,
        "output_name": config.output_name,
    }
    config_path = out / "bench_config.json"
    config_path.write_text(json.dumps(locust_config, indent=2))
    csv_prefix = out / "locust"
    command = locust_command(config, csv_prefix)
    env = child_env({"BENCH_CONFIG": str(config_path.resolve())})
    exit_code = _run_locust(config, command, env, out)

    results = collect_results(
        config, data_path, data_summary, samples_dir, csv_prefix, ceiling, reference
    )
    results["locust"]["exit_code"] = exit_code
    results["locust"]["command"] = command
    if exit_code not in (0, 1):  # 1 only says some requests failed, which is judged above
        results["failure_reasons"].append(
            f"locust exited with {exit_code}; see {out / 'locust.log'}"
        )
        results["failure"], results["passed"] = True, False
    write_run_report(results, out)
    return results


def collect_results(
    config: RunConfig,
    data_path: Path,
    data_summary: dict[str, Any],
    samples_dir: Path,
    csv_prefix: Path,
    ceiling: dict[str, Any] | None,
    reference: Reference | None = None,
) -> dict[str, Any]:
    """Turn the workers' samples and Locust's CSVs into the results dict."""
    samples = load_samples(samples_dir)
    with np.load(data_path) as data:
        labels_all = data["labels"]
        offline_all = data["offline"]
    test_start = samples["test_start"]
    duration = config.duration_s
    end_times = samples["end_time"]
    success = samples["success"]
    if test_start is not None:
        window_start = test_start + config.warmup_s
        window_end = window_start + duration
        if len(end_times):
            # The earliest worker's start opens the window; a run that ended a little sooner
            # (a later worker, a slow start) is measured over the time it really ran.
            window_end = max(window_start, min(window_end, float(end_times.max())))
        in_window = (end_times >= window_start) & (end_times <= window_end)
    else:
        window_start = window_end = 0.0
        in_window = np.zeros(len(end_times), bool)
    window = window_end - window_start
    measured_ok = in_window & success
    requests_ok = int(measured_ok.sum())
    failures = int((in_window & ~success).sum())
    images_ok = int(samples["images"][measured_ok].sum())
    total_in_window = requests_ok + failures
    throughput = {
        "requests_per_s": requests_ok / window if window > 0 else 0.0,
        "images_per_s": images_ok / window if window > 0 else 0.0,
        "requests": requests_ok,
        "images": images_ok,
        "failures": failures,
        "error_ratio": failures / total_in_window if total_in_window else 0.0,
        "window_s": window,
    }
    latency: dict[str, Any] = dict(metrics.latency_summary_ms(samples["latency"][measured_ok]))
    latency["source"] = "time.perf_counter per request, successful requests after warm-up"
    times: list[float] = []
    rates: list[float] = []
    if test_start is not None:
        times, rates = metrics.throughput_series(
            end_times[success], np.ones(int(success.sum())), test_start, window_end
        )

    accuracy = judge_served(
        samples["served"],
        samples["image_index"],
        labels_all,
        offline_all,
        data_summary,
        reference,
        config.max_accuracy_drop,
        config.min_agreement,
    )
    accuracy["answer_errors"] = samples["answer_errors"]
    accuracy["scope"] = "every answered request, warm-up included"

    efficiency = None
    ceiling_images_per_s = ceiling_for(ceiling, config.images_per_request)
    if ceiling_images_per_s:
        efficiency = throughput["images_per_s"] / ceiling_images_per_s

    reasons = reference_reasons(reference) + list(accuracy["failure_reasons"])
    if requests_ok == 0:
        reasons.append("no successful requests in the measured window")
    if throughput["error_ratio"] > config.max_error_ratio:
        reasons.append(
            f"error ratio {throughput['error_ratio']:.4f} is above {config.max_error_ratio}"
        )
    if samples["answer_errors"]:
        reasons.append(f"{samples['answer_errors']} answers could not be read")

    run_config = asdict(config)
    from importlib.metadata import version as package_version

    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "run",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "config": run_config | {"locust_version": package_version("locust")},
        "server": config.server_name or config.target,
        "data": {k: v for k, v in data_summary.items() if k != "class_names"},
        "throughput": throughput,
        "latency_ms": latency,
        "timeseries": {
            "bucket_s": 1.0,
            "t_s": times,
            "requests_per_s": rates,
            "warmup_s": config.warmup_s,
        },
        "accuracy": accuracy,
        "ceiling": {
            "images_per_s": ceiling_images_per_s,
            "efficiency": efficiency,
            "details": ceiling,
        },
        "locust": read_locust_stats(csv_prefix) | {"workers_with_samples": samples["workers"]},
        "reference": reference.to_dict() if reference else None,
        "passed": not reasons,
        "failure": bool(reasons),
        "failure_reasons": reasons,
    }


def summary_table(results: dict[str, Any] | list[dict[str, Any]]) -> str:
    """A plain-text table of one or several runs: throughput, latency, accuracy, verdict."""
    runs = results if isinstance(results, list) else [results]
    header = (
        f"{'server':<22} {'proto':<6} {'users':>5} {'k':>4} {'req/s':>9} {'img/s':>10}"
        f" {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'acc':>7} {'agree':>7} {'eff':>6}  verdict"
    )
    lines = [header, "-" * len(header)]
    for run in runs:
        cfg, thr, lat, acc = run["config"], run["throughput"], run["latency_ms"], run["accuracy"]
        agree = acc.get("agreement")
        eff = run["ceiling"].get("efficiency")
        lines.append(
            f"{str(run.get('server'))[:22]:<22} {cfg['protocol']:<6} {cfg['users']:>5}"
            f" {cfg['images_per_request']:>4} {thr['requests_per_s']:>9.1f}"
            f" {thr['images_per_s']:>10.1f} {lat.get('p50', float('nan')):>8.2f}"
            f" {lat.get('p99', float('nan')):>8.2f} {thr['error_ratio']:>7.2%}"
            f" {acc['accuracy']:>7.4f} {(agree if agree is not None else float('nan')):>7.4f}"
            f" {(eff if eff is not None else float('nan')):>6.3f}  "
            + ("FAIL" if run["failure"] else "ok")
        )
    return "\n".join(lines)


def print_summary(results: dict[str, Any] | list[dict[str, Any]]) -> None:
    """Print ``summary_table`` and, for failed runs, why."""
    print(summary_table(results))
    for run in results if isinstance(results, list) else [results]:
        for reason in run["failure_reasons"]:
            print(f"FAILURE ({run['config']['protocol']} {run.get('server')}): {reason}")

"""``python -m benchmarks rate``: latency against offered rate, open-loop, answers checked.

For each target, protocol and offered rate, the engine in ``benchmarks.openloop`` sends requests
at their scheduled times (Poisson or constant arrivals) from one or several processes; latency
counts from each request's scheduled time; every answer is checked against the true label and the
offline answer of the model the server says it serves (``benchmarks.reference``). A load point is
valid only when the generator kept up: it dispatched at least 99% of the offered rate and its own
scheduling lag stayed small; otherwise the point is reported as invalid, without numbers.

With ``--p99-bound-ms B`` the rates are then refined by bisection to the highest offered rate
whose p99 stays under B with errors under 1% (MLPerf's server scenario), per target and protocol.

Size: the command line, the load points, their validity rule, the bisection and the report
of one command, in the order they run.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import metrics, openloop
from benchmarks.prepare import prepare_test_data
from benchmarks.reference import Reference, resolve_reference
from benchmarks.run import (
    DEFAULT_PAYLOAD_FORMAT,
    SCHEMA_VERSION,
    judge_served,
    machine_info,
    print_reference,
    reference_reasons,
)
from benchmarks.servers import Server, parse_server

RATE_PROTOCOLS = ("rest", "v2", "grpc", "v2-grpc")


@dataclass
class RateConfig:
    """Options of ``python -m benchmarks rate``."""

    targets: list[str]
    model: str
    rates: list[float]
    protocols: list[str] = field(default_factory=lambda: ["rest"])
    out: str = "reports/rate"
    arrival: str = "poisson"
    duration_s: float = 20.0
    warmup_s: float = 2.0
    images_per_request: int = 1
    version: int | None = None
    label: str | None = None
    repository: str = "model_repository"
    dataset: str = "mnist"
    num_images: int = 1024
    seed: int = 0
    processes: int = 1
    timeout_s: float = 2.0
    max_connections: int = 1000
    grpc_channels: int = 4
    p99_bound_ms: float | None = None
    search_steps: int = 3
    max_error_ratio: float = 0.01
    min_send_ratio: float = 0.99
    max_lag_ms: float = 5.0
    generator_nice: int = -10
    cooldown_s: float = 1.0
    max_accuracy_drop: float = 0.01
    min_agreement: float = 0.99
    baseline: str | None = None

    def __post_init__(self) -> None:
        unknown = [p for p in self.protocols if p not in RATE_PROTOCOLS]
        if unknown:
            raise ValueError(f"protocols must be among {', '.join(RATE_PROTOCOLS)}: {unknown}")
        if not self.targets or not self.rates or min(self.rates) <= 0:
            raise ValueError("give at least one target and positive rates")
        if self.arrival not in ("poisson", "constant"):
            raise ValueError("arrival must be poisson or constant")
        if self.processes < 1 or self.images_per_request < 1 or self.duration_s <= 0:
            raise ValueError("processes, images per request and duration must be positive")


@dataclass
class Series:
    """One server and protocol: its reference, test data and load points."""

    server: Server
    protocol: str
    target: str
    reference: Reference
    data_path: Path
    data_summary: dict[str, Any]
    points: list[dict[str, Any]] = field(default_factory=list)
    answers: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    answer_errors: int = 0
    skipped: str | None = None
    #: the target was asked and answered nothing: a failure, not a skip
    unanswered: bool = False

    @property
    def name(self) -> str:
        return f"{self.server.name} {self.protocol}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


# --------------------------------------------------------------------------- one load point


def _specs(
    config: RateConfig, series: Series, rate: float, warmup: float, duration: float, seed: int
) -> list[openloop.WorkerSpec]:
    # Warm-up and window drawn apart, so the window holds exactly rate * duration arrivals.
    schedule = np.concatenate([
        openloop.make_schedule(rate, warmup, config.arrival, seed),
        warmup + openloop.make_schedule(rate, duration, config.arrival, seed + 1),
    ])  # fmt: skip
    ids = np.arange(len(schedule), dtype=np.int64)
    start_at = time.monotonic() + 0.5
    per_process = max(1, config.max_connections // config.processes)
    return [
        openloop.WorkerSpec(
            protocol=series.protocol,
            target=series.target,
            model=config.model,
            version=config.version,
            label=config.label,
            data_path=str(series.data_path),
            images_per_request=config.images_per_request,
            request_ids=ids[p :: config.processes],
            offsets=schedule[p :: config.processes],
            start_at=start_at,
            timeout_s=config.timeout_s,
            max_connections=per_process,
            grpc_channels=config.grpc_channels,
            payload_format=DEFAULT_PAYLOAD_FORMAT[series.protocol],
            nice=config.generator_nice,
        )
        for p in range(config.processes)
    ]


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("scheduled", "dispatched", "sent", "done", "outcome", "image_index", "served")
    merged = {key: np.concatenate([part[key] for part in parts]) for key in keys}
    merged["answer_errors"] = sum(part["answer_errors"] for part in parts)
    merged["cpu_percent"] = [
        100.0 * part["cpu_s"] / part["wall_s"] if part["wall_s"] > 0 else 0.0 for part in parts
    ]
    merged["peak_outstanding"] = sum(part["peak_outstanding"] for part in parts)
    merged["nice"] = [part["nice"] for part in parts]
    return merged


def _ms_percentiles(values: np.ndarray) -> dict[str, float | None]:
    values = values[np.isfinite(values)] * 1000.0
    if not values.size:
        return {"p50": None, "p99": None, "max": None}
    return {
        "p50": float(np.percentile(values, 50)),
        "p99": float(np.percentile(values, 99)),
        "max": float(values.max()),
    }


def summarise_point(
    config: RateConfig, rate: float, samples: dict[str, Any], window: tuple[float, float]
) -> dict[str, Any]:
    """Offered and achieved rates, outcomes, latency from the scheduled time, generator health."""
    start, end = window
    duration = end - start
    scheduled, outcome = samples["scheduled"], samples["outcome"]
    in_window = (scheduled >= start) & (scheduled < end)
    offered = int(in_window.sum())
    dispatched = samples["dispatched"]
    dispatched_in_window = int(((dispatched >= start) & (dispatched < end)).sum())
    sent = samples["sent"]
    sent_in_window = int(((sent >= start) & (sent < end)).sum())
    window_outcomes = outcome[in_window]
    ok = np.isin(window_outcomes, openloop.OK_CODES)
    counts = {
        "ok": int(ok.sum()),
        "refused": int(np.isin(window_outcomes, openloop.REFUSED_CODES).sum()),
        "timeouts": int(np.isin(window_outcomes, openloop.DEADLINE_CODES).sum()),
        "unavailable": int(np.isin(window_outcomes, (503, openloop.GRPC_BASE + 14)).sum()),
        "connection_errors": int((window_outcomes == openloop.CONNECTION_ERROR).sum()),
        "unreadable": int((window_outcomes == openloop.UNREADABLE).sum()),
    }
    counts["other_errors"] = offered - sum(counts.values())
    codes, code_counts = np.unique(window_outcomes[~ok], return_counts=True)
    latency = metrics.latency_summary_ms((samples["done"] - scheduled)[in_window][ok])
    lag = _ms_percentiles((dispatched - scheduled)[in_window])
    wire_wait = _ms_percentiles((sent - dispatched)[in_window])
    send_ratio = dispatched_in_window / offered if offered else 0.0
    invalid = []
    if send_ratio < config.min_send_ratio:
        invalid.append(
            f"the generator dispatched {send_ratio:.1%} of the offered requests in the window"
            f" (at least {config.min_send_ratio:.0%} needed): it could not keep up"
        )
    if lag["p99"] is not None and lag["p99"] > config.max_lag_ms:
        invalid.append(
            f"the generator's scheduling lag p99 {lag['p99']:.2f} ms is above"
            f" {config.max_lag_ms:g} ms: it could not keep up"
        )
    error_ratio = 1.0 - counts["ok"] / offered if offered else 1.0
    point: dict[str, Any] = {
        "offered_rate": rate,
        "offered_requests_per_s": offered / duration,
        "dispatched_requests_per_s": dispatched_in_window / duration,
        "sent_requests_per_s": sent_in_window / duration,
        "send_ratio": send_ratio,
        "achieved_requests_per_s": counts["ok"] / duration,
        "achieved_images_per_s": counts["ok"] * config.images_per_request / duration,
        "requests": offered,
        "outcomes": counts,
        "error_codes": {
            _code_name(int(c)): int(n) for c, n in zip(codes, code_counts, strict=True)
        },
        "error_ratio": error_ratio,
        "latency_ms": latency,
        "scheduling_lag_ms": lag,
        "connection_wait_ms": wire_wait,
        "generator_cpu_percent": samples["cpu_percent"],
        "generator_nice": samples["nice"],
        "peak_outstanding": samples["peak_outstanding"],
        "answers_checked": int(samples["served"].size),
        "answer_errors": samples["answer_errors"],
        "valid": not invalid,
        "invalid_reasons": invalid,
        "window_s": duration,
    }
    if not point["valid"]:  # marked invalid rather than reported
        point["latency_ms"] = {"count": latency.get("count", 0)}
    point["meets_bound"] = meets_bound(point, config)
    return point


def _code_name(code: int) -> str:
    if code >= openloop.GRPC_BASE:
        import grpc

        names = {c.value[0]: c.name for c in grpc.StatusCode}
        return f"grpc {names.get(code - openloop.GRPC_BASE, code - openloop.GRPC_BASE)}"
    names = {
        openloop.CONNECTION_ERROR: "connection error",
        openloop.TIMEOUT: "no answer within the timeout",
        openloop.UNREADABLE: "unreadable answer",
        openloop.NOT_SENT: "not sent",
    }
    return names.get(code, f"http {code}")


def meets_bound(point: dict[str, Any], config: RateConfig) -> bool | None:
    """Whether a valid point keeps p99 under the bound with errors under the allowed ratio."""
    if config.p99_bound_ms is None or not point["valid"]:
        return None
    p99 = point["latency_ms"].get("p99")
    return (
        p99 is not None
        and p99 <= config.p99_bound_ms
        and point["error_ratio"] < config.max_error_ratio
    )


def run_point(
    config: RateConfig,
    series: Series,
    rate: float,
    pool: concurrent.futures.Executor,
    seconds: float | None = None,
    warmup_s: float | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One load point of ``series`` at ``rate``: (summary, merged samples)."""
    warmup = config.warmup_s if warmup_s is None else warmup_s
    duration = config.duration_s if seconds is None else seconds
    seed = config.seed + int(rate * 1000) % 100_003
    specs = _specs(config, series, rate, warmup, duration, seed)
    samples = _merge(list(pool.map(openloop.run_worker, specs)))
    return summarise_point(config, rate, samples, (warmup, warmup + duration)), samples


def _record(series: Series, point: dict[str, Any], samples: dict[str, Any]) -> None:
    series.points.append(point)
    series.answers.append((samples["image_index"], samples["served"]))
    series.answer_errors += int(samples["answer_errors"])


def _line(series: Series, point: dict[str, Any]) -> str:
    lat, lag = point["latency_ms"], point["scheduling_lag_ms"]
    verdict = "INVALID: " + "; ".join(point["invalid_reasons"]) if not point["valid"] else "valid"
    bound = {True: ", under the bound", False: ", over the bound", None: ""}[point["meets_bound"]]
    numbers = (
        f"p50 {lat.get('p50', float('nan')):.2f} p99 {lat.get('p99', float('nan')):.2f}"
        f" p99.9 {lat.get('p999', float('nan')):.2f} ms, "
        if point["valid"]
        else ""
    )
    return (
        f"{series.name} {point['offered_rate']:g}/s: {numbers}ok"
        f" {1 - point['error_ratio']:.2%} ({point['achieved_requests_per_s']:.0f}/s), lag p99"
        f" {lag['p99'] or 0:.2f} ms, dispatched {point['send_ratio']:.1%}, generator CPU"
        f" {', '.join(f'{c:.0f}%' for c in point['generator_cpu_percent'])} [{verdict}{bound}]"
    )


# --------------------------------------------------------------------------- the search


def search_step(series: Series, config: RateConfig) -> float | None:
    """The next rate to try between the highest passing and the lowest failing, or None."""
    bracket = bracket_bound(series.points)
    low, high = bracket["highest_passing"], bracket["lowest_failing"]
    if high is None:
        return None
    if low is None:  # nothing tried passes: halve below the lowest rate tried
        low = 0.0
        if high <= 2.0:
            return None
    middle = round((low + high) / 2)
    if high - low <= max(1.0, 0.02 * low) or middle in (low, high):
        return None
    if any(p["offered_rate"] == middle for p in series.points):
        return None  # tried already (invalid: the generator cannot tell more here)
    return float(middle)


def bracket_bound(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Highest valid rate under the bound, the lowest valid rate above it that is not, and why."""
    passing = [p["offered_rate"] for p in points if p["meets_bound"] is True]
    failing = [p["offered_rate"] for p in points if p["meets_bound"] is False]
    invalid = sorted(p["offered_rate"] for p in points if not p["valid"])
    low = max(passing) if passing else None
    above = [r for r in failing if low is None or r > low]
    high = min(above) if above else None
    if low is None:
        verdict = "no valid rate tried stays under the bound"
    elif high is None:
        verdict = "at least this rate: no valid rate tried above it exceeds the bound"
    else:
        verdict = "bracketed"
    below_failing = [r for r in failing if low is not None and r < low]
    return {
        "highest_passing": low,
        "lowest_failing": high,
        "verdict": verdict,
        "failing_below_highest": sorted(below_failing),
        "invalid_rates": invalid,
    }


# --------------------------------------------------------------------------- the whole command


def _prepare_series(config: RateConfig, out: Path) -> list[Series]:
    series_list: list[Series] = []
    data_files: dict[str, tuple[Path, dict[str, Any]]] = {}
    for spec in config.targets:
        server = parse_server(spec)
        for protocol in config.protocols:
            target = server.target_for(protocol)
            reference = (
                resolve_reference(
                    config.repository,
                    config.model,
                    config.version,
                    config.label,
                    target,
                    protocol,
                )
                if target
                else Reference(None, None)
            )
            files = reference.model_files
            key = str(files.directory) if files else "(none)"
            if key not in data_files:
                path = out / "data" / f"test_data-{len(data_files)}.npz"
                path.parent.mkdir(parents=True, exist_ok=True)
                summary = prepare_test_data(
                    path, config.dataset, files, config.num_images, config.seed
                )
                data_files[key] = (path, summary)
            path, summary = data_files[key]
            series = Series(server, protocol, target or "", reference, path, summary)
            if not target:
                series.skipped = f"no {protocol} address for {server.name}"
            else:
                print(f"{series.name}:", flush=True)
                print_reference(reference)
            series_list.append(series)
    return series_list


def _preflight(config: RateConfig, series: Series, pool: concurrent.futures.Executor) -> None:
    """A few requests per worker: does this server speak this protocol? (Also builds payloads.)"""
    point, samples = run_point(
        config, series, 20.0 * config.processes, pool, seconds=0.25, warmup_s=0.0
    )
    if point["outcomes"]["ok"] == 0:
        series.skipped = (
            f"no answer to {point['requests']} {series.protocol} requests"
            f" ({point['error_codes']}): not served, or not reachable; nothing was measured"
        )
        series.unanswered = True
        print(f"{series.name}: FAILED, {series.skipped}", flush=True)
    else:
        series.answers.append((samples["image_index"], samples["served"]))
        series.answer_errors += int(samples["answer_errors"])


def run_rate(config: RateConfig) -> dict[str, Any]:
    """Every rate for every target and protocol, interleaved, then the search; writes the report."""
    from benchmarks.report import write_rate_report

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    all_series = _prepare_series(config, out)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(config.processes, mp_context=context) as pool:
        # Start every worker (imports, a process per core) before the first schedule begins.
        list(pool.map(openloop.warm_worker, range(config.processes)))
        active = []
        for series in all_series:
            if series.skipped is None:
                _preflight(config, series, pool)
            if series.skipped is None:
                active.append(series)
        for rate in sorted(config.rates):
            for series in active:
                _measure(config, series, rate, pool)
        if config.p99_bound_ms is not None:
            for _ in range(config.search_steps):
                todo = [(s, search_step(s, config)) for s in active]
                if not any(rate for _, rate in todo):
                    break
                for series, next_rate in todo:
                    if next_rate is not None:
                        _measure(config, series, next_rate, pool)
    results = rate_results(config, all_series)
    write_rate_report(results, out)
    return results


def _measure(
    config: RateConfig, series: Series, rate: float, pool: concurrent.futures.Executor
) -> None:
    point, samples = run_point(config, series, rate, pool)
    _record(series, point, samples)
    print(_line(series, point), flush=True)
    time.sleep(config.cooldown_s)  # let the server drain what the point left queued


def rate_results(config: RateConfig, all_series: list[Series]) -> dict[str, Any]:
    """The results dict (``kind: rate`` in results.schema.json)."""
    series_results = []
    failure_reasons: list[str] = []
    invalid_points = 0
    for series in all_series:
        entry = series_result(config, series)
        series_results.append(entry)
        failure_reasons += [f"{series.name}: {reason}" for reason in entry["failure_reasons"]]
        invalid_points += sum(1 for p in entry["points"] if not p["valid"])
    comparison = compare_series(series_results, config)
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "rate",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "config": asdict(config),
        "series": series_results,
        "comparison": comparison,
        "invalid_points": invalid_points,
        "passed": not failure_reasons,
        "failure": bool(failure_reasons),
        "failure_reasons": failure_reasons,
    }


def series_result(config: RateConfig, series: Series) -> dict[str, Any]:
    """One server and protocol: points by rate, the bound's bracket, the answers judged."""
    points = sorted(series.points, key=lambda p: p["offered_rate"])
    entry: dict[str, Any] = {
        "server": series.server.name,
        "protocol": series.protocol,
        "target": series.target,
        "skipped": series.skipped,
        "reference": series.reference.to_dict(),
        "points": points,
        "bound": bracket_bound(points) if config.p99_bound_ms is not None else None,
        "accuracy": None,
        "failure_reasons": [],
    }
    if series.skipped:
        if series.unanswered:  # a target that answers nothing fails the run
            entry["failure_reasons"] = [series.skipped]
        return entry
    with np.load(series.data_path) as data:
        labels_all, offline_all = data["labels"], data["offline"]
    image_index = np.concatenate([a for a, _ in series.answers]) if series.answers else []
    served = np.concatenate([s for _, s in series.answers]) if series.answers else []
    accuracy = judge_served(
        np.asarray(served, dtype=np.int64),
        np.asarray(image_index, dtype=np.int64),
        labels_all,
        offline_all,
        series.data_summary,
        series.reference,
        config.max_accuracy_drop,
        config.min_agreement,
    )
    accuracy["answer_errors"] = series.answer_errors
    accuracy["scope"] = "every answer of every load point, warm-up and overload included"
    entry["accuracy"] = accuracy
    reasons = reference_reasons(series.reference) + list(accuracy["failure_reasons"])
    if series.answer_errors:
        reasons.append(f"{series.answer_errors} answers could not be read")
    entry["failure_reasons"] = reasons
    return entry


def compare_series(series: list[dict[str, Any]], config: RateConfig) -> list[dict[str, Any]]:
    """Per protocol, each server's highest rate under the bound and its ratio to the baseline."""
    if config.p99_bound_ms is None:
        return []
    rows = []
    for protocol in config.protocols:
        entries = [s for s in series if s["protocol"] == protocol and not s["skipped"]]
        baseline = next((s for s in entries if s["server"] == config.baseline), None)
        base_rate = baseline["bound"]["highest_passing"] if baseline else None
        for entry in entries:
            rate = entry["bound"]["highest_passing"]
            rows.append(
                {
                    "protocol": protocol,
                    "server": entry["server"],
                    "highest_rate_under_bound": rate,
                    "verdict": entry["bound"]["verdict"],
                    "ratio_to_baseline": (rate / base_rate) if rate and base_rate else None,
                }
            )
    return rows


def print_rate_summary(results: dict[str, Any]) -> None:
    """The bound's result per server and protocol, invalid points and failures."""
    bound = results["config"]["p99_bound_ms"]
    for row in results["comparison"]:
        ratio = row["ratio_to_baseline"]
        print(
            f"{row['protocol']:<5} {row['server']:<24} highest rate with p99 <= {bound:g} ms:"
            f" {row['highest_rate_under_bound'] or 0:g}/s ({row['verdict']})"
            + (f", {ratio:.2f}x {results['config']['baseline']}" if ratio else "")
        )
    for entry in results["series"]:
        if entry["skipped"] and not entry["failure_reasons"]:
            print(f"skipped {entry['server']} {entry['protocol']}: {entry['skipped']}")
    if results["invalid_points"]:
        print(
            f"INVALID: {results['invalid_points']} load point(s) where the generator could not"
            " keep up; their numbers are not reported (more --processes, or lower rates)"
        )
    for reason in results["failure_reasons"]:
        print(f"FAILURE: {reason}")

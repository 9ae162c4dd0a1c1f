"""A list of benchmark runs and one comparison report: the side-by-side a user reads to choose.

Scenarios: concurrency (users 1..N), images per request, protocols, servers (TF Serving and the
gateway when both targets are given) and batching on/off (when the sweep starts the gateway
itself, or when the two gateways are given as two targets).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.ceiling import measure_ceiling
from benchmarks.prepare import find_model
from benchmarks.run import SCHEMA_VERSION, RunConfig, machine_info, run_benchmark
from benchmarks.servers import Server, gateway, parse_server, protocols_served


@dataclass
class SweepConfig:
    """Options of ``python -m benchmarks sweep``."""

    model: str
    targets: list[str] = field(default_factory=list)
    out: str = "reports/sweep"
    users: list[int] = field(default_factory=lambda: [1, 4, 16, 32])
    images_per_request: list[int] = field(default_factory=lambda: [1])
    protocols: list[str] = field(default_factory=lambda: ["rest", "v2", "grpc"])
    duration_s: float = 10.0
    warmup_s: float = 2.0
    processes: int = 1
    repository: str = "model_repository"
    dataset: str = "mnist"
    num_images: int = 1024
    start_gateway: bool = False
    batching: list[bool] = field(default_factory=lambda: [True, False])
    gateway_args: list[str] = field(default_factory=list)
    skip_down: bool = False
    ceiling_seconds: float = 2.0
    ceiling_intra_op_threads: int = 1
    max_error_ratio: float = 0.01


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def _run_server(
    config: SweepConfig, server: Server, ceiling: dict[str, Any] | None, out: Path
) -> list[dict[str, Any]]:
    protocols = protocols_served(server, config.model, config.protocols)
    skipped = [p for p in config.protocols if p not in protocols]
    if skipped:
        print(f"{server.name}: skipping {', '.join(skipped)} (not served or not reachable)")
    runs = []
    for protocol in protocols:
        for per_request in config.images_per_request:
            for users in config.users:
                name = f"{_slug(server.name)}-{protocol}-k{per_request}-u{users}"
                run_config = RunConfig(
                    target=server.target_for(protocol) or "",
                    model=config.model,
                    protocol=protocol,
                    out=str(out / "runs" / name),
                    users=users,
                    spawn_rate=float(users),
                    duration_s=config.duration_s,
                    warmup_s=config.warmup_s,
                    processes=config.processes,
                    images_per_request=per_request,
                    repository=config.repository,
                    dataset=config.dataset,
                    num_images=config.num_images,
                    ceiling_seconds=0.0,
                    max_error_ratio=config.max_error_ratio,
                    server_name=server.name,
                    extra={"batching": server.batching},
                )
                result = run_benchmark(run_config, ceiling=ceiling)
                result["report_dir"] = f"runs/{name}"
                runs.append(result)
    return runs


def run_sweep(config: SweepConfig) -> dict[str, Any]:
    """Run every scenario, write the comparison report into ``config.out``, return its dict."""
    from benchmarks.report import write_sweep_report

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    servers = [parse_server(spec) for spec in config.targets]
    if config.skip_down:
        up = [s for s in servers if protocols_served(s, config.model, ["rest"])]
        for server in servers:
            if server not in up:
                print(f"{server.name}: not up (no {config.model} at {server.http}), skipped")
        servers = up
    model_files = find_model(config.repository, config.model)
    ceiling = None
    if model_files and model_files.onnx_path and config.ceiling_seconds > 0:
        # Measured before any load, one batch size per scenario, shared by every run.
        ceiling = measure_ceiling(
            model_files.onnx_path,
            sorted(set(config.images_per_request)),
            config.ceiling_seconds,
            providers="auto",
            intra_op_threads=config.ceiling_intra_op_threads,
        )
    runs: list[dict[str, Any]] = []
    problems: list[str] = []
    for server in servers:
        runs += _run_server(config, server, ceiling, out)
    if config.start_gateway and (not config.skip_down or not servers):
        if model_files is None:
            problems.append(
                f"no model {config.model!r} in {config.repository} to start the gateway with:"
                f" train one first (make demo, or python -m training train --model {config.model})"
            )
        for batching in config.batching if model_files else []:
            log = out / f"gateway-batching-{'on' if batching else 'off'}.log"
            with gateway(
                config.repository, batching, config.gateway_args, config.model, log_path=log
            ) as server:
                runs += _run_server(config, server, ceiling, out)
    reasons = [
        f"{run['server']} {run['config']['protocol']} u={run['config']['users']}"
        f" k={run['config']['images_per_request']}: {reason}"
        for run in runs
        for reason in run["failure_reasons"]
    ]
    reasons += problems
    if not runs:
        reasons.append("no scenario ran: no target was up")
    sweep = {
        "schema_version": SCHEMA_VERSION,
        "kind": "sweep",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "config": {k: v for k, v in vars(config).items()},
        "duration_s": config.duration_s,
        "warmup_s": config.warmup_s,
        "ceiling": ceiling,
        "runs": runs,
        "passed": not reasons,
        "failure": bool(reasons),
        "failure_reasons": reasons,
    }
    write_sweep_report(sweep, out)
    return sweep


def quick(config: SweepConfig) -> SweepConfig:
    """A cut-down sweep (dry run): one short scenario per protocol, for smoke checks."""
    return replace(
        config,
        users=[min(config.users)],
        images_per_request=config.images_per_request[:1],
        duration_s=2.0,
        warmup_s=1.0,
        batching=config.batching[:1],
        ceiling_seconds=0.2,
    )

"""The per-request budget benchmark measures every stage with the gateway's own code."""

from __future__ import annotations

import shutil

import pytest

from benchmarks.lab import request_budget


def test_every_stage_is_measured_and_the_paths_add_up() -> None:
    result = request_budget.measure(seconds=0.02, rounds=1, transport_seconds=1.0)
    stages = result["stages_us"]
    expected = set(request_budget.BUDGET_US)
    if shutil.which("wrk") is None:
        expected -= {request_budget.HTTP_TRANSPORT, request_budget.HTTP_TRANSPORT_ASGI}
    assert set(stages) == expected
    assert all(0 < us < 1e5 for us in stages.values()), stages
    for protocol, path in result["paths"].items():
        assert path["total_us"] == pytest.approx(sum(stages[name] for name in path["stages"]))
        assert path["limit_requests_per_s"] == pytest.approx(1e6 / path["total_us"])
        assert set(path["stages"]) | set(path["missing"]) == set(request_budget.PATHS[protocol])
    report = request_budget.table(result)
    assert "| REST JSON decode |" in report and "limit, requests/s" in report


def test_every_stage_on_a_path_has_a_budget() -> None:
    for names in request_budget.PATHS.values():
        assert set(names) <= set(request_budget.BUDGET_US)


def test_gateway_speed_sets_the_gateway_against_the_limit_of_its_parts() -> None:
    """The parts come from a real (short) request_budget run; the gateway rows are given, so the
    ratios can be checked: each protocol's limit is 1e6 / its parts in us, gRPC's parts include
    grpc.aio alone's cost per call."""
    from benchmarks.lab.gateway_speed import GRPC_ALONE, Result, parts_report

    budget = request_budget.measure(seconds=0.02, rounds=1, transport_seconds=1.0)
    results = [
        Result("gateway, batching on", "REST JSON", 32, 5000.0, 1.0, 2.0, 0),
        Result("gateway, batching on", "V2 binary", 32, 6000.0, 1.0, 2.0, 0),
        Result("gateway, batching on", "gRPC", 32, 2000.0, 1.0, 2.0, 0),
        Result(GRPC_ALONE, "gRPC", 32, 4000.0, 1.0, 2.0, 0),
    ]
    lines = parts_report(results, budget)
    rest_us = budget["paths"]["REST JSON"]["total_us"]
    grpc_us = budget["paths"]["gRPC (without transport)"]["total_us"] + 250.0
    rest_row = next(line for line in lines if line.startswith("| REST JSON"))
    assert f"| {5000 / (1e6 / rest_us):.2f} |" in rest_row
    grpc_row = next(line for line in lines if line.startswith("| gRPC (transport"))
    assert f"| {grpc_us:.1f} |" in grpc_row and f"| {2000 / (1e6 / grpc_us):.2f} |" in grpc_row
    assert lines[-1].endswith("| 2,000 | 0.50 |")


def test_gateway_speed_takes_the_gateway_transport_alone_as_grpc_s_transport() -> None:
    """With the gateway's own gRPC transport alone measured, gRPC's parts take its cost per call
    (200 us at 5,000/s), and grpc.aio alone (the issue's yardstick) keeps its own row."""
    from benchmarks.lab.gateway_speed import (
        GRPC_ALONE,
        TRANSPORT_ALONE,
        Result,
        in_situ_report,
        parts_report,
    )

    budget = request_budget.measure(seconds=0.02, rounds=1, transport_seconds=1.0)
    results = [
        Result("gateway, batching on", "REST JSON", 32, 5000.0, 1.0, 2.0, 0, 100.0, 80.0),
        Result("gateway, batching on", "V2 binary", 32, 6000.0, 1.0, 2.0, 0, 90.0, 60.0),
        Result("gateway, batching on", "gRPC", 32, 3000.0, 1.0, 2.0, 0, 120.0, 90.0),
        Result(GRPC_ALONE, "gRPC", 32, 4000.0, 1.0, 2.0, 0, 100.0, 70.0),
        Result(TRANSPORT_ALONE, "gRPC", 32, 5000.0, 1.0, 2.0, 0, 100.0, 90.0),
    ]
    grpc_us = budget["paths"]["gRPC (without transport)"]["total_us"] + 200.0
    lines = parts_report(results, budget)
    grpc_row = next(line for line in lines if line.startswith("| gRPC (transport"))
    assert grpc_row.startswith("| gRPC (transport: the gateway's, alone) |")
    assert f"| {grpc_us:.1f} |" in grpc_row and f"| {3000 / (1e6 / grpc_us):.2f} |" in grpc_row
    assert lines[-1].endswith("| 3,000 | 0.75 |")  # against grpc.aio alone's 4,000/s
    situ = in_situ_report(results, budget)
    assert situ[-1] == (
        "| the gateway's gRPC transport alone (no-op Predict) | - | 200.0 | 180.0 | 20.0 | - |"
    )
    grpc_situ = next(line for line in situ if line.startswith("| gRPC"))
    assert f"| {grpc_us:.1f} | 400.0 |" in grpc_situ


def test_gateway_speed_sets_the_parts_against_the_cost_in_situ() -> None:
    """CPU per request in situ = CPU share / rate: 100% of a core at 5,000 requests/s is 200 us,
    80% of it on the event loop 160 us; grpc.aio alone gets its row without a ratio."""
    from benchmarks.lab.gateway_speed import GRPC_ALONE, Result, in_situ_report

    budget = request_budget.measure(seconds=0.02, rounds=1, transport_seconds=1.0)
    results = [
        Result("gateway, batching on", "REST JSON", 32, 5000.0, 1.0, 2.0, 0, 100.0, 80.0),
        Result("gateway, batching on", "V2 binary", 32, 6000.0, 1.0, 2.0, 0, 90.0, 60.0),
        Result("gateway, batching on", "gRPC", 32, 2000.0, 1.0, 2.0, 0, 120.0, 90.0),
        Result(GRPC_ALONE, "gRPC", 32, 4000.0, 1.0, 2.0, 0, 100.0, 70.0),
    ]
    lines = in_situ_report(results, budget)
    rest_us = budget["paths"]["REST JSON"]["total_us"]
    rest_row = next(line for line in lines if line.startswith("| REST JSON"))
    assert rest_row == (
        f"| REST JSON | {rest_us:.1f} | 200.0 | 160.0 | 40.0 | {200.0 / rest_us:.2f} |"
    )
    grpc_us = budget["paths"]["gRPC (without transport)"]["total_us"] + 250.0
    grpc_row = next(line for line in lines if line.startswith("| gRPC"))
    assert f"| {grpc_us:.1f} | 600.0 | 450.0 | 150.0 | {600.0 / grpc_us:.2f} |" in grpc_row
    assert lines[-1] == "| grpc.aio alone (no-op Predict) | - | 250.0 | 175.0 | 75.0 | - |"


def test_a_thread_s_cpu_time_is_read_from_proc() -> None:
    """The event-loop thread's CPU time (the main thread: tid == pid) grows with its own work."""
    import os
    import time

    from benchmarks.lab.gateway_speed import thread_cpu_seconds

    pid = os.getpid()
    before = thread_cpu_seconds(pid, pid)
    end = time.process_time() + 0.2
    while time.process_time() < end:
        pass
    assert thread_cpu_seconds(pid, pid) - before >= 0.1

"""The per-request budget benchmark measures every stage with the gateway's own code."""

from __future__ import annotations

import shutil

import pytest

from benchmarks import request_budget


def test_every_stage_is_measured_and_the_paths_add_up() -> None:
    result = request_budget.measure(seconds=0.02, rounds=1, transport_seconds=1.0)
    stages = result["stages_us"]
    expected = set(request_budget.BUDGET_US)
    if shutil.which("wrk") is None:
        expected.discard("HTTP transport (uvicorn + protocol, no-op app)")
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

"""Prometheus configuration (promtool), the Grafana dashboard and its provisioning.

Every PromQL expression of the dashboard goes through promtool's parser (as recording rules),
and every gateway metric it names is one the gateway really exports.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.metrics_text import metric_samples

DASHBOARD = "deploy/compose/grafana/dashboards/convnet-serving.json"
# Grafana substitutes these before a query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$model": "lenet"}


@pytest.fixture(scope="module")
def dashboard(repo_root: Path) -> dict[str, Any]:
    return json.loads((repo_root / DASHBOARD).read_text())


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def as_prometheus(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def check_rules(
    promtool: str, tmp_path: Path, exprs: list[str]
) -> subprocess.CompletedProcess[str]:
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:expr_{i}", "expr": e} for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    return subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )


def test_promtool_accepts_the_prometheus_config(promtool: str, repo_root: Path):
    result = subprocess.run(
        [promtool, "check", "config", str(repo_root / "deploy/compose/prometheus.yml")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_parses_every_dashboard_query(
    promtool: str, dashboard: dict[str, Any], tmp_path: Path
):
    exprs = [as_prometheus(e) for e in expressions(dashboard)]
    assert not [e for e in exprs if "$" in e], "an unknown Grafana variable is left in a query"
    result = check_rules(promtool, tmp_path, exprs)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rejects_a_broken_query(promtool: str, tmp_path: Path):
    """The parser check above is live."""
    result = check_rules(promtool, tmp_path, ["sum(rate(serving_requests_total[1m])"])
    assert result.returncode != 0


def test_dashboard_has_the_comparison_panels(dashboard: dict[str, Any]):
    """Latency percentiles, throughput, batch sizes and errors, each for both servers."""
    titles = {panel["title"]: panel for panel in dashboard["panels"]}
    wanted = {
        "Latency percentiles per server": "histogram_quantile(",
        "Throughput per server": "rate(",
        "Batch sizes per server": "batch_size",
        "Errors per server": "status",
    }
    for title, needle in wanted.items():
        exprs = [target["expr"] for target in titles[title]["targets"]]
        tfserving = [e for e in exprs if ":tensorflow:serving:" in e]
        gateway = [e for e in exprs if "serving_" in e and ":tensorflow:" not in e]
        assert tfserving and gateway, f"{title}: a server is missing"
        assert all(needle in e for e in exprs), f"{title}: a query lacks {needle!r}"
    latency = [t["expr"] for t in titles["Latency percentiles per server"]["targets"]]
    for quantile in ("0.5", "0.95", "0.99"):
        assert sum(f"histogram_quantile({quantile}," in e for e in latency) == 2


def test_dashboard_panels_use_the_provisioned_datasource(
    repo_root: Path, dashboard: dict[str, Any]
):
    provisioning = yaml.safe_load(
        (repo_root / "deploy/compose/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    (datasource,) = provisioning["datasources"]
    assert datasource["url"] == "http://prometheus:9090"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"]


def test_dashboard_is_mounted_where_the_provider_looks(repo_root: Path):
    provider = yaml.safe_load(
        (repo_root / "deploy/compose/grafana/provisioning/dashboards/dashboards.yml").read_text()
    )["providers"][0]
    compose = yaml.safe_load((repo_root / "docker-compose.yml").read_text())
    grafana = compose["services"]["grafana"]
    mounts = dict(
        volume.rsplit(":", 2)[:2] for volume in grafana["volumes"] if volume.startswith("./")
    )
    assert mounts["./deploy/compose/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/compose/grafana/provisioning"] == "/etc/grafana/provisioning"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{Path(DASHBOARD).name}"


def gateway_names(expr: str) -> set[str]:
    """The gateway's metric names in a query: serving_*, process_* and python_* (TF Serving's
    all start with a colon)."""
    return set(re.findall(r"(?<![:\w])((?:serving|process|python)_\w+)", expr))


def test_gateway_metrics_named_by_the_dashboard_exist(dashboard: dict[str, Any]):
    """Render a real GatewayMetrics registry and find every gateway series the queries use."""
    from serving.metrics import GatewayMetrics

    metrics = GatewayMetrics()
    metrics.requests.labels("lenet", "1", "rest", "OK").inc()
    metrics.request_latency.labels("lenet", "rest").observe(0.001)
    metrics.queue_latency.labels("lenet").observe(0.0001)
    metrics.compute_latency.labels("lenet", "1").observe(0.0005)
    metrics.batch_size.labels("lenet").observe(4)
    metrics.queue_depth.labels("lenet").set(0)
    metrics.count_refusal("rest", 431)
    exported = {sample.name for sample in metric_samples(metrics.render().decode())}
    used = {name for expr in expressions(dashboard) for name in gateway_names(expr)}
    assert used, "the dashboard names no gateway metric"
    assert used <= exported, used - exported
    labels_used = set(re.findall(r"(\w+)(?:=~|!~|=|!=)\"", " ".join(expressions(dashboard))))
    assert {"model", "status"} <= labels_used


def test_dashboard_has_the_gateway_process_and_operations_panels(dashboard: dict[str, Any]):
    """Memory, CPU and open files per process, connection refusals by status, access-log drops
    and the build table; process and Python series only from the gateway's job (Prometheus
    exports its own under the same names)."""
    titles = {panel["title"]: panel for panel in dashboard["panels"]}
    wanted = {
        "Gateway memory (RSS) per process": "process_resident_memory_bytes",
        "Gateway CPU per process": "process_cpu_seconds_total",
        "Gateway open file descriptors": "process_open_fds",
        "Gateway garbage collections": "python_gc_collections_total",
        "Connection refusals by status": "serving_connection_refusals_total",
        "Access-log lines dropped": "serving_access_log_dropped_total",
        "Gateway build": "serving_build_info",
    }
    for title, metric in wanted.items():
        exprs = [target["expr"] for target in titles[title]["targets"]]
        assert exprs and all(metric in gateway_names(e) for e in exprs), (title, exprs)
    assert "by (protocol, status)" in titles["Connection refusals by status"]["targets"][0]["expr"]
    build = titles["Gateway build"]
    assert build["type"] == "table" and build["targets"][0]["format"] == "table"
    build_expr = build["targets"][0]["expr"]
    from serving.metrics import BUILD_INFO_LABELS

    assert all(label in build_expr for label in BUILD_INFO_LABELS), build_expr
    for expr in expressions(dashboard):
        if any(name.startswith(("process_", "python_")) for name in gateway_names(expr)):
            assert 'job="gateway"' in expr, expr

"""Process, platform and build metrics at a real gateway's ``/metrics``: prometheus_client's
process, platform and GC collectors and ``serving_build_info``, in one process and with
``--workers 2`` (``process_*`` per live process, labelled ``pid`` and ``role``)."""

from __future__ import annotations

import os
import platform
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import onnxruntime
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

import serving
from serving.metrics import BUILD_INFO_LABELS, GatewayMetrics, build_info
from tests.metrics_text import metric_samples, metric_value
from tests.serving.serving_harness import GatewayProcess, wait_until
from tests.serving.test_serving_workers import Supervised
from tests.tiny_models import sample_images

MODEL = "tiny"
PROCESS_SERIES = (
    "process_resident_memory_bytes", "process_virtual_memory_bytes", "process_cpu_seconds_total",
    "process_open_fds", "process_max_fds", "process_start_time_seconds",
)  # fmt: skip
GC_SERIES = (
    "python_gc_collections_total", "python_gc_objects_collected_total",
    "python_gc_objects_uncollectable_total",
)  # fmt: skip


def samples(text: str, name: str) -> list[Sample]:
    return [sample for sample in metric_samples(text) if sample.name == name]


def scrape(http_url: str) -> str:
    """``/metrics`` on a new connection (with workers: whichever worker the kernel picks)."""
    reply = httpx.get(f"{http_url}/metrics", timeout=30)
    assert reply.status_code == 200, reply.text
    return reply.text


def expected_build_info(commit: str) -> dict[str, str]:
    return {
        "version": serving.__version__,
        "git_commit": commit,
        "onnxruntime": onnxruntime.__version__,
        "providers": ",".join(onnxruntime.get_available_providers()),
        "python": platform.python_version(),
    }


@pytest.fixture(scope="module")
def single(tiny_repo: Path) -> Iterator[GatewayProcess]:
    """One gateway process, told its commit through SERVING_GIT_COMMIT."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SERVING_GIT_COMMIT", "0123abc")
        patch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
        running = GatewayProcess(tiny_repo)
    yield running
    running.stop()


def test_process_metrics_describe_the_gateway_process(single: GatewayProcess) -> None:
    body = {"instances": sample_images(2).tolist()}
    reply = httpx.post(f"{single.http_url}/v1/models/{MODEL}:predict", json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    text = scrape(single.http_url)
    for name in PROCESS_SERIES:
        (sample,) = samples(text, name)  # one process, no pid label
        assert sample.labels == {} and sample.value > 0, sample
    rss_mb = metric_value(text, "process_resident_memory_bytes") / 2**20
    assert 0.5 * single.rss_mb() < rss_mb < 2 * single.rss_mb()
    start = metric_value(text, "process_start_time_seconds")
    assert time.time() - 600 < start <= time.time()
    assert metric_value(text, "process_open_fds") < metric_value(text, "process_max_fds")


def test_gc_and_platform_metrics(single: GatewayProcess) -> None:
    text = scrape(single.http_url)
    for name in GC_SERIES:
        generations = {sample.labels["generation"] for sample in samples(text, name)}
        assert generations == {"0", "1", "2"}, (name, generations)
    assert metric_value(text, "python_gc_collections_total", generation="0") > 0
    (info,) = samples(text, "python_info")
    assert info.value == 1 and info.labels["version"] == platform.python_version()
    assert info.labels["implementation"] == platform.python_implementation()


def test_build_info_names_what_runs(single: GatewayProcess) -> None:
    (info,) = samples(scrape(single.http_url), "serving_build_info")
    assert info.value == 1
    assert info.labels == expected_build_info("0123abc")


def test_refusal_and_access_log_counters_are_exported(single: GatewayProcess) -> None:
    """The families exist from the start (the refusals have their children once counted)."""
    text = scrape(single.http_url)
    families = {family.name for family in text_string_to_metric_families(text)}
    assert {"serving_connection_refusals", "serving_access_log_dropped"} <= families
    assert samples(text, "serving_access_log_dropped_total")


def test_git_commit_falls_back_to_the_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without SERVING_GIT_COMMIT: HEAD of the source tree when it is a git checkout, else ""."""
    monkeypatch.delenv("SERVING_GIT_COMMIT", raising=False)
    root = Path(serving.__file__).resolve().parents[1]
    commit = build_info()["git_commit"]
    if (root / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40,64}", commit), commit
    else:
        assert commit == ""
    monkeypatch.setenv("SERVING_GIT_COMMIT", " feedbeef\n")
    assert build_info()["git_commit"] == "feedbeef"
    metrics = GatewayMetrics()
    (info,) = samples(metrics.render().decode(), "serving_build_info")
    assert [info.labels[name] for name in BUILD_INFO_LABELS] == list(
        expected_build_info("feedbeef").values()
    )


def _process_pids(text: str, name: str) -> dict[int, str]:
    """pid -> role of the ``name`` samples, each of which must carry both labels."""
    found = {}
    for sample in samples(text, name):
        assert set(sample.labels) == {"pid", "role"}, sample
        found[int(sample.labels["pid"])] = sample.labels["role"]
    return found


def test_workers_report_every_live_process(tiny_repo: Path) -> None:
    """``--workers 2``: whichever worker answers, ``process_*`` has one series per live worker and
    one for the supervisor; a killed worker's series go and its replacement's come; GC counts
    are summed over the workers; build and platform info are one series each."""
    supervised = Supervised(tiny_repo)
    try:
        workers = supervised.workers()
        assert len(workers) == 2
        expected = {supervised.process.pid: "supervisor", **dict.fromkeys(workers, "worker")}
        for _ in range(6):  # a new connection each time: both workers answer some
            text = scrape(supervised.http_url)
            for name in PROCESS_SERIES:
                assert _process_pids(text, name) == expected, (name, text)
            for sample in samples(text, "process_resident_memory_bytes"):
                assert sample.value > 10 * 2**20, sample  # an interpreter at least
            assert metric_value(text, "python_gc_collections_total", generation="0") > 0
            (info,) = samples(text, "serving_build_info")
            assert info.value == 1 and info.labels["onnxruntime"] == onnxruntime.__version__
            assert len(samples(text, "python_info")) == 1

        killed, survivor = workers
        os.kill(killed, signal.SIGKILL)
        wait_until(
            lambda: "in place of a dead one" in supervised.log(),
            what="the replacement to be ready", timeout_s=90,
        )  # fmt: skip
        workers = supervised.workers()
        assert len(workers) == 2 and survivor in workers and killed not in workers
        expected = {supervised.process.pid: "supervisor", **dict.fromkeys(workers, "worker")}
        for _ in range(6):
            text = scrape(supervised.http_url)
            assert _process_pids(text, "process_cpu_seconds_total") == expected
    finally:
        supervised.stop()

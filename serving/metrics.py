"""Prometheus metrics of one gateway instance (own registry, so several can live in one process).

With ``--workers N`` every worker process writes its values to files under
``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode, set up by the supervisor
before the workers import anything), and ``/metrics``, whichever worker answers it, reports the
sum over the live workers; gauges say how they combine (``multiprocess_mode``).

Process and platform metrics come from prometheus_client's own collectors: ``process_*`` (RSS,
virtual memory, CPU seconds, open and maximum fds, start time), ``python_gc_*`` and
``python_info``, plus ``serving_build_info`` (what is running). With workers, ``process_*`` is
reported **per process**, labelled ``pid`` and ``role`` (``worker`` or ``supervisor``): whichever
worker answers reads ``/proc/<pid>`` of every live worker (the pids of the live gauge files in the
multiprocess directory, which ``mark_process_dead`` removes when a worker dies) and of the
supervisor, so one leaking worker stands out and ``sum by (instance)`` gives the whole gateway.
``python_gc_*`` is summed over the workers instead (the interpreter's counts cannot be read from
outside it: each worker copies its own into multiprocess counters every ``GC_REFRESH_S``).
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import gc
import json
import os
import platform
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

import serving
from serving.lifecycle import VersionState

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: In a worker that replaced a dead one: JSON {how a worker ended: replacements so far}, set by
#: the supervisor (``serving.workers``), the only process that knows; exported by the worker.
WORKER_RESTARTS_ENV = "SERVING_REPLACED_WORKERS"

# Sub-millisecond buckets: a LeNet request is served in well under a millisecond.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
#: labels of serving_model_runtime_info beyond model, version and provider: ModelRuntime.describe()
#: plus the batcher's padded sizes; "" where one does not apply (the CUDA options on a CPU)
RUNTIME_INFO_LABELS = (
    "model_file", "prefer_nhwc", "cudnn_conv_algo_search", "enable_cuda_graph", "sessions",
    "padded_batch_sizes",
)  # fmt: skip
#: The commit the running code was built from, where the source tree is no git checkout (an image:
#: ``docker build --build-arg SERVING_GIT_COMMIT=$(git rev-parse HEAD)``).
GIT_COMMIT_ENV = "SERVING_GIT_COMMIT"
#: labels of serving_build_info
BUILD_INFO_LABELS = ("version", "git_commit", "onnxruntime", "providers", "python")
#: With workers: how often each worker copies its garbage collector's counts to its metrics files.
GC_REFRESH_S = 5.0
#: The supervisor's pid in a worker's environment (``serving.workers.SUPERVISOR_ENV``, which
#: imports this module).
_SUPERVISOR_ENV = "SERVING_SUPERVISOR_PID"
#: A live gauge's file in the multiprocess directory: ``gauge_livemax_<pid>.db``.
_LIVE_FILE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")


@functools.cache
def _git_head() -> str:
    """``git rev-parse HEAD`` of the source tree when it is a git checkout, else "" (once)."""
    root = Path(serving.__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return ""
    try:
        result = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):  # no git binary, a hung filesystem
        return ""
    head = result.stdout.strip()
    return head if result.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", head) else ""


def build_info() -> dict[str, str]:
    """The values of serving_build_info: BUILD_INFO_LABELS."""
    import onnxruntime  # here, not at the top: the --workers supervisor imports this module

    return {
        "version": serving.__version__,
        "git_commit": os.environ.get(GIT_COMMIT_ENV, "").strip() or _git_head(),
        "onnxruntime": onnxruntime.__version__,
        "providers": ",".join(onnxruntime.get_available_providers()),
        "python": platform.python_version(),
    }


def fast_observe(histogram: Any) -> Callable[[float], None]:
    """``observe`` of one labelled histogram, for per-request paths: prometheus_client's checks
    the child has already passed (labels bound) and its linear walk over the buckets replaced by
    a bisection; the same values change (its ``_sum`` and the first bucket whose bound is at
    least the amount, under their own locks or files). Touches prometheus_client's internals:
    pinned in pyproject.toml, and tests/serving/test_serving_metrics.py compares the two."""
    bounds = list(histogram._upper_bounds)
    add_to_sum = histogram._sum.inc
    add_to_bucket = [bucket.inc for bucket in histogram._buckets]
    first_at_least = bisect.bisect_left

    def observe(amount: float) -> None:
        add_to_sum(amount)
        add_to_bucket[first_at_least(bounds, amount)](1)

    return observe


def fast_inc(counter: Any) -> Callable[[float], None]:
    """``inc`` of one labelled counter (or gauge), without the per-call checks: its value's own
    ``inc`` (see :func:`fast_observe`). Call it with the amount."""
    return counter._value.inc  # type: ignore[no-any-return]


def fast_set(gauge: Any) -> Callable[[float], None]:
    """``set`` of one labelled gauge of the default ("all", "liveall", "livesum", ...) modes,
    without the per-call checks: its value's own ``set`` (see :func:`fast_observe`)."""
    if gauge._is_most_recent:  # needs the timestamp Gauge.set passes
        return gauge.set  # type: ignore[no-any-return]
    return gauge._value.set  # type: ignore[no-any-return]


class WorkerProcessCollector(Collector):
    """``process_*`` of every live process of a ``--workers`` gateway, labelled ``pid`` and
    ``role`` (``worker``, ``supervisor``): prometheus_client's ProcessCollector pointed at each
    ``/proc/<pid>`` in turn.

    The live workers are the pids that own a live gauge's file in the multiprocess directory
    (every worker writes ``serving_build_info``, a ``livemax`` gauge, as it starts, and the
    supervisor's ``mark_process_dead`` deletes a dead worker's live files), this process always,
    and only pids that still exist. A process that ends while it is read yields what was read."""

    def __init__(self, directory: str) -> None:
        self._directory = directory
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._process = ProcessCollector(pid=lambda: self._pid, registry=None)

    def processes(self) -> list[tuple[int, str]]:
        """(pid, role) of every live process of the gateway, the supervisor first."""
        workers = {os.getpid()}
        with contextlib.suppress(OSError):
            for name in os.listdir(self._directory):
                if match := _LIVE_FILE.match(name):
                    workers.add(int(match.group(1)))
        found = [(pid, "worker") for pid in sorted(workers)]
        supervisor = int(os.environ.get(_SUPERVISOR_ENV) or 0)
        if supervisor and supervisor not in workers:
            found.insert(0, (supervisor, "supervisor"))
        return [(pid, role) for pid, role in found if os.path.exists(f"/proc/{pid}")]

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        with self._lock:
            for pid, role in self.processes():
                self._pid = pid
                for family in self._process.collect():
                    merged = families.setdefault(
                        family.name, Metric(family.name, family.documentation, family.type)
                    )
                    for sample in family.samples:
                        labels = {**sample.labels, "pid": str(pid), "role": role}
                        merged.add_sample(sample.name, labels, sample.value)
        return list(families.values())


class _GcCounters:
    """GCCollector's three counters as multiprocess counters (summed over the workers, dead ones
    included, as counters are), fed from ``gc.get_stats()`` by ``refresh``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        families = (
            Counter("python_gc_objects_collected", "Objects collected during gc",
                    ["generation"], registry=registry),
            Counter("python_gc_objects_uncollectable", "Uncollectable objects found during GC",
                    ["generation"], registry=registry),
            Counter("python_gc_collections", "Number of times this generation was collected",
                    ["generation"], registry=registry),
        )  # fmt: skip
        generations = [str(gen) for gen in range(len(gc.get_stats()))]
        self._series = [[family.labels(gen) for family in families] for gen in generations]
        self._seen = [[0, 0, 0] for _ in generations]
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Add what the collector counted since the last refresh."""
        with self._lock:
            for gen, stat in enumerate(gc.get_stats()):
                values = (stat["collected"], stat["uncollectable"], stat["collections"])
                for index, value in enumerate(values):
                    if value > self._seen[gen][index]:
                        self._series[gen][index].inc(value - self._seen[gen][index])
                        self._seen[gen][index] = value

    def refresh_every(self, seconds: float) -> None:
        """Refresh now and then every ``seconds`` from a daemon thread, for the process's life."""
        self.refresh()

        def loop() -> None:
            while True:
                time.sleep(seconds)
                self.refresh()

        threading.Thread(target=loop, name="metrics-gc", daemon=True).start()


class GatewayMetrics:
    """All metrics the gateway exports at ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._multiprocess_dir = os.environ.get(MULTIPROCESS_ENV) or ""
        #: with workers: the collectors render() adds to the files' metrics (process, platform)
        self._process_collectors: list[Collector] = []
        self._gc: _GcCounters | None = None
        if self._multiprocess_dir:
            self._process_collectors = [
                WorkerProcessCollector(self._multiprocess_dir), PlatformCollector(registry=None),
            ]  # fmt: skip
            self._gc = _GcCounters(r)
        else:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        self.build_info = Gauge(
            "serving_build_info",
            "1, labelled with what this gateway runs: its version, the git commit it was built "
            "from (\"\" when unknown), ONNX Runtime's version and available providers, Python.",
            list(BUILD_INFO_LABELS), registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        info = build_info()
        self.build_info.labels(*(info[name] for name in BUILD_INFO_LABELS)).set(1)
        self.requests = Counter(
            "serving_requests", "Requests by model, version, protocol and status.",
            ["model", "version", "protocol", "status"], registry=r,
        )  # fmt: skip
        self.request_latency = Histogram(
            "serving_request_latency_seconds", "Total time in the gateway per request.",
            ["model", "protocol"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_latency = Histogram(
            "serving_queue_latency_seconds", "Time a request waited for compute.",
            ["model"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.compute_latency = Histogram(
            "serving_compute_latency_seconds", "ONNX Runtime time per executed batch.",
            ["model", "version"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "serving_batch_size", "Rows per executed batch.",
            ["model"], buckets=BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "serving_queue_depth", "Requests waiting for compute.", ["model"], registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.model_state = Gauge(
            "serving_model_state",
            "Model version state (TF Serving numbers: 30 AVAILABLE, 20 LOADING, 0 ERROR).",
            ["model", "version"], registry=r,
            multiprocess_mode="livemin",  # with workers: the least ready of them
        )  # fmt: skip
        self.model_provider = Gauge(
            "serving_model_provider", "1 for the execution provider a model version runs on.",
            ["model", "version", "provider"], registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self.model_runtime_info = Gauge(
            "serving_model_runtime_info",
            "1 for the runtime configuration a model version runs with: its provider, model file, "
            "the CUDA provider options read back from ONNX Runtime, the batch sizes with a "
            "session of their own and the sizes batches are padded to.",
            ["model", "version", "provider", *RUNTIME_INFO_LABELS], registry=r,
            multiprocess_mode="livemax",
        )  # fmt: skip
        self.worker_restarts = Gauge(
            "serving_worker_restarts",
            "Workers the --workers supervisor replaced since it started, by how they ended "
            "(a count; the newest worker carries it, so the most any live worker reports).",
            ["reason"], registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self.connection_refusals = Counter(
            "serving_connection_refusals",
            "Requests refused before they reached a route, by protocol and status: 408 (head or "
            "body too slow), 413 (body over the limit before it was read), 431 (head too large), "
            "503 (over --max-connections), 400 (not HTTP).",
            ["protocol", "status"], registry=r,
        )  # fmt: skip
        self.access_log_dropped = Counter(
            "serving_access_log_dropped",
            "Access-log lines dropped because the writer fell behind (its queue was full); the "
            "requests themselves were served.",
            registry=r,
        )  # fmt: skip
        if self._gc is not None:  # after the build info: that gauge's file marks a live worker
            self._gc.refresh_every(GC_REFRESH_S)
        for reason, count in json.loads(os.environ.get(WORKER_RESTARTS_ENV) or "{}").items():
            self.worker_restarts.labels(reason).set(count)
        #: (model, version) -> its runtime info's label values, to drop them at unload
        self._runtime_info: dict[tuple[str, str], tuple[str, ...]] = {}

        #: (model, version, protocol, status) -> the updates of that request's two series, bound
        #: once: a label lookup per request (a lock and label validation) costs more than the
        #: update itself.
        #: Bounded: model and version names come from the repository, never from requests.
        self._request_series: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}

    def count_request(
        self, model: str, version: str, protocol: str, status: str, seconds: float
    ) -> None:
        """Count one finished request and observe its latency."""
        key = (model, version, protocol, status)
        series = self._request_series.get(key)
        if series is None:
            series = (
                fast_inc(self.requests.labels(*key)),
                fast_observe(self.request_latency.labels(model, protocol)),
            )
            self._request_series[key] = series
        series[0](1)
        series[1](seconds)

    def count_refusal(self, protocol: str, status: int | str) -> None:
        """Count one request refused at the connection level (before any route saw it)."""
        self.connection_refusals.labels(protocol, str(status)).inc()

    def set_state(self, model: str, version: int, state: VersionState | None) -> None:
        """Record a model version's state (TF Serving's number; None, a failed load, is 0)."""
        self.model_state.labels(model, str(version)).set(state.value if state else 0)

    def set_runtime_info(
        self, model: str, version: int, provider: str, info: dict[str, str]
    ) -> None:
        """Record what a loaded version runs with (``info``: RUNTIME_INFO_LABELS, others ignored)."""
        labels = (model, str(version), provider, *(info.get(n, "") for n in RUNTIME_INFO_LABELS))
        self._runtime_info[(model, str(version))] = labels
        self.model_runtime_info.labels(*labels).set(1)

    def forget_version(self, model: str, version: int, provider: str | None) -> None:
        """Drop the series of an unloaded version (multiprocess mode cannot drop a series: the
        version reads END and its provider and runtime info 0 instead)."""
        info = self._runtime_info.pop((model, str(version)), None)
        if os.environ.get(MULTIPROCESS_ENV):
            self.set_state(model, version, VersionState.END)
            self.model_provider.labels(model, str(version), provider or "").set(0)
            if info is not None:
                self.model_runtime_info.labels(*info).set(0)
            return
        series: list[tuple[Any, tuple[str, ...]]] = [
            (self.model_state, (model, str(version))),
            (self.model_provider, (model, str(version), provider or "")),
        ]
        if info is not None:
            series.append((self.model_runtime_info, info))
        for metric, labels in series:
            with contextlib.suppress(KeyError):
                metric.remove(*labels)

    def render(self) -> bytes:
        """Prometheus text exposition (of every live worker in multiprocess mode, read from their
        files and every worker's ``/proc``: blocking, so call it from a worker thread, as
        ``/metrics`` does)."""
        if os.environ.get(MULTIPROCESS_ENV):
            if self._gc is not None:
                self._gc.refresh()  # this worker's now, the others' at most GC_REFRESH_S old
            combined = CollectorRegistry()
            MultiProcessCollector(combined)
            for collector in self._process_collectors:
                combined.register(collector)
            return generate_latest(combined)
        return generate_latest(self.registry)

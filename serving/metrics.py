"""Prometheus metrics of one gateway instance (own registry, so several can live in one process).

With ``--workers N`` every worker process writes its values to files under
``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode, set up by the supervisor
before the workers import anything), and ``/metrics``, whichever worker answers it, reports the
sum over the live workers; gauges say how they combine (``multiprocess_mode``).
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

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


class GatewayMetrics:
    """All metrics the gateway exports at ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
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
        for reason, count in json.loads(os.environ.get(WORKER_RESTARTS_ENV) or "{}").items():
            self.worker_restarts.labels(reason).set(count)
        #: (model, version) -> its runtime info's label values, to drop them at unload
        self._runtime_info: dict[tuple[str, str], tuple[str, ...]] = {}

        #: (model, version, protocol, status) -> that request's two series, bound once: a label
        #: lookup per request (a lock and label validation) costs more than the update itself.
        #: Bounded: model and version names come from the repository, never from requests.
        self._request_series: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}

    def count_request(
        self, model: str, version: str, protocol: str, status: str, seconds: float
    ) -> None:
        """Count one finished request and observe its latency."""
        key = (model, version, protocol, status)
        series = self._request_series.get(key)
        if series is None:
            series = (self.requests.labels(*key), self.request_latency.labels(model, protocol))
            self._request_series[key] = series
        series[0].inc()
        series[1].observe(seconds)

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
        files: blocking, so call it from a worker thread, as ``/metrics`` does)."""
        if os.environ.get(MULTIPROCESS_ENV):
            combined = CollectorRegistry()
            MultiProcessCollector(combined)
            return generate_latest(combined)
        return generate_latest(self.registry)

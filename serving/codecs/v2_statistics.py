"""Triton's statistics extension, one mapping for both wires: what the batcher counts for a version
(``batching.InferenceStats``, read through :class:`Counters`) -> Triton's model statistics.

REST (``GET /v2/models[/{name}[/versions/{version}]]/stats``) sends :func:`statistics_json`'s dict
as Triton's HTTP server writes it: every field present, in Triton's order, uint64 values as JSON
numbers and the version as a string (``tritonserver.cc``, ``TRITONSERVER_ServerModelStatistics``).
KServe V2 gRPC (``ModelStatistics``) parses the same dict into its message
(:func:`statistics_message`), so the two wires cannot drift apart.

Counted as Triton counts them: ``success``/``fail`` per request with its time inside the dataplane,
``inference_count`` rows of the successful requests, ``execution_count`` model runs, ``queue`` and
the three ``compute_*`` phases per request (a request split into chunks: per chunk), and per batch
size (rows before padding) the runs and their phases. Not measured, so sent empty or zero as
Triton does when they are off: ``cache_hit``, ``cache_miss``, ``response_stats`` (decoupled
models only) and ``memory_usage``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from google.protobuf import json_format

from clients import v2_grpc


class Counters(Protocol):
    """What one version's counters hold (``batching.InferenceStats`` is one): cumulative since it
    loaded; times in nanoseconds."""

    @property
    def success_count(self) -> int: ...
    @property
    def success_ns(self) -> int: ...
    @property
    def fail_count(self) -> int: ...
    @property
    def fail_ns(self) -> int: ...
    @property
    def inference_count(self) -> int: ...
    @property
    def execution_count(self) -> int: ...
    @property
    def queue_count(self) -> int: ...
    @property
    def queue_ns(self) -> int: ...
    @property
    def compute_count(self) -> int: ...
    @property
    def compute_input_ns(self) -> int: ...
    @property
    def compute_infer_ns(self) -> int: ...
    @property
    def compute_output_ns(self) -> int: ...
    @property
    def last_inference_ms(self) -> int: ...
    @property
    def batches(self) -> Mapping[int, Sequence[int]]:
        """rows -> (batches, input ns, infer ns, output ns)"""
        ...


def _duration(count: int, ns: int) -> dict[str, int]:
    return {"count": count, "ns": ns}


def model_stats(name: str, version: int, stats: Counters) -> dict[str, Any]:
    """One ``$model_stat`` object: ``name``'s ``version`` as ``stats`` counted it."""
    compute = stats.compute_count
    return {
        "name": name,
        "version": str(version),
        "last_inference": stats.last_inference_ms,
        "inference_count": stats.inference_count,
        "execution_count": stats.execution_count,
        "inference_stats": {
            "success": _duration(stats.success_count, stats.success_ns),
            "fail": _duration(stats.fail_count, stats.fail_ns),
            "queue": _duration(stats.queue_count, stats.queue_ns),
            "compute_input": _duration(compute, stats.compute_input_ns),
            "compute_infer": _duration(compute, stats.compute_infer_ns),
            "compute_output": _duration(compute, stats.compute_output_ns),
            "cache_hit": _duration(0, 0),
            "cache_miss": _duration(0, 0),
        },
        "response_stats": {},
        "batch_stats": [
            {
                "batch_size": rows,
                "compute_input": _duration(count, input_ns),
                "compute_infer": _duration(count, infer_ns),
                "compute_output": _duration(count, output_ns),
            }
            for rows, (count, input_ns, infer_ns, output_ns) in sorted(stats.batches.items())
        ],
        "memory_usage": [],
    }


def statistics_json(versions: Iterable[tuple[str, int, Counters]]) -> dict[str, Any]:
    """``$stats_model_response`` for (model, version, counters), in the order given."""
    return {"model_stats": [model_stats(name, version, stats) for name, version, stats in versions]}


def statistics_message(body: Mapping[str, Any]) -> Any:
    """:func:`statistics_json`'s dict as KServe V2 gRPC's ``ModelStatisticsResponse``."""
    return json_format.ParseDict(body, v2_grpc.ModelStatisticsResponse())

"""Triton's statistics extension over REST (``GET /v2/models[/{name}[/versions/{v}]]/stats``),
proven with NVIDIA's own ``tritonclient.http`` against a real ``python -m serving`` process: the
counts are exactly what was sent, every field Triton writes is there (uint64 as JSON numbers), the
versions reported are the gRPC ``ModelStatistics``'s, and both wires say the same thing.

tritonclient is installed by ``make setup`` without its dependencies (its HTTP client's,
geventhttpclient, come with Locust); these tests are skipped only where it is not installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from google.protobuf import json_format

from tests.serving.serving_harness import GatewayProcess
from tests.tiny_models import (
    batch_one_classifier,
    lenet_like,
    sample_images,
    write_models_config,
    write_version,
)

httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
from tritonclient.utils import InferenceServerException  # noqa: E402

MODEL = "lenet"  # versions 1 and 2, both served
FRAGILE = "fragile"  # fails in ONNX Runtime for any batch above one row
API_KEY = "k-stats"
KEY_HEADER = "x-api-key"
ROWS = (1, 3, 2, 4, 1)  # the rows of the requests sent to lenet version 1, one at a time
FIELDS = [
    "name", "version", "last_inference", "inference_count", "execution_count",
    "inference_stats", "response_stats", "batch_stats", "memory_usage",
]  # fmt: skip
PHASES = ("compute_input", "compute_infer", "compute_output")
INFERENCE_STATS = ["success", "fail", "queue", *PHASES, "cache_hit", "cache_miss"]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("v2stats")
    for version in (1, 2):
        write_version(root, MODEL, version, lenet_like(seed=version))
    write_version(root, FRAGILE, 1, batch_one_classifier())
    write_models_config(root, [MODEL, FRAGILE], policies={MODEL: "all {}"})
    # No warmup: it would run a batch of several rows, which the fragile model cannot load with.
    running = GatewayProcess(root, "--api-keys", API_KEY, "--no-warmup")
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def triton(gateway: GatewayProcess) -> Iterator[Any]:
    client = httpclient.InferenceServerClient(url=gateway.http_url.removeprefix("http://"))
    try:
        yield client
    finally:
        client.close()


def _infer(client: Any, model: str, rows: int, version: str = "") -> None:
    images = sample_images(rows, seed=rows)
    image = httpclient.InferInput("image", list(images.shape), "UINT8")
    image.set_data_from_numpy(images)  # binary tensor extension, as tritonclient sends it
    # a dict of its own: tritonclient adds its Inference-Header-Content-Length to the one it gets
    result = client.infer(model, [image], model_version=version, headers={KEY_HEADER: API_KEY})
    assert result.as_numpy("probabilities").shape == (rows, 10)


def _stats(client: Any, model: str = "", version: str = "") -> list[dict[str, Any]]:
    body = client.get_inference_statistics(model, version, headers={KEY_HEADER: API_KEY})
    assert list(body) == ["model_stats"]
    return body["model_stats"]  # type: ignore[no-any-return]


def _duration(stat: dict[str, Any], key: str) -> tuple[int, int]:
    return stat["inference_stats"][key]["count"], stat["inference_stats"][key]["ns"]


def test_counts_are_exactly_what_was_sent(triton: Any) -> None:
    (fresh,) = _stats(triton, MODEL, "1")
    assert fresh["inference_count"] == fresh["execution_count"] == fresh["last_inference"] == 0
    assert fresh["batch_stats"] == [] and fresh["memory_usage"] == []

    for rows in ROWS:
        _infer(triton, MODEL, rows, "1")
    (stats,) = _stats(triton, MODEL, "1")
    assert list(stats) == FIELDS  # Triton's fields, in Triton's order
    assert list(stats["inference_stats"]) == INFERENCE_STATS
    assert stats["name"] == MODEL and stats["version"] == "1"
    assert stats["inference_count"] == sum(ROWS)
    assert stats["execution_count"] == len(ROWS)  # one client, one request at a time
    assert stats["last_inference"] > 1_700_000_000_000  # milliseconds since the epoch
    success, fail = _duration(stats, "success"), _duration(stats, "fail")
    assert success[0] == len(ROWS) and success[1] > 0 and fail == (0, 0)
    queue = _duration(stats, "queue")
    assert queue[0] == len(ROWS) and queue[1] > 0
    for phase in PHASES:
        count, ns = _duration(stats, phase)
        assert count == len(ROWS) and ns > 0, phase
    assert _duration(stats, "cache_hit") == _duration(stats, "cache_miss") == (0, 0)
    assert stats["response_stats"] == {} and stats["memory_usage"] == []
    batches = stats["batch_stats"]
    assert [b["batch_size"] for b in batches] == sorted(set(ROWS))
    for batch in batches:
        assert list(batch) == ["batch_size", *PHASES]
        expected = ROWS.count(batch["batch_size"])
        for phase in PHASES:
            assert batch[phase]["count"] == expected and batch[phase]["ns"] > 0, (batch, phase)
    for phase in PHASES:  # a batch per request: the per-batch times add up to the totals
        assert sum(b[phase]["ns"] for b in batches) == _duration(stats, phase)[1]

    (untouched,) = _stats(triton, MODEL, "2")
    assert untouched["version"] == "2" and untouched["inference_count"] == 0


def test_failures_are_counted_apart(triton: Any) -> None:
    for _ in range(5):
        _infer(triton, FRAGILE, 1)
    for _ in range(2):
        with pytest.raises(InferenceServerException) as failed:
            _infer(triton, FRAGILE, 2)  # ONNX Runtime refuses a batch of two: a 500
        assert failed.value.status() == "500"
    (stats,) = _stats(triton, FRAGILE)
    assert _duration(stats, "success")[0] == 5 and _duration(stats, "fail")[0] == 2
    assert _duration(stats, "fail")[1] > 0
    assert stats["inference_count"] == stats["execution_count"] == 5  # failed batches not run
    assert _duration(stats, "queue")[0] == 7  # every request waited in the queue
    assert _duration(stats, "compute_infer")[0] == 5
    assert [b["batch_size"] for b in stats["batch_stats"]] == [1]


def test_every_model_one_model_one_version(triton: Any) -> None:
    everything = _stats(triton)
    assert [(s["name"], s["version"]) for s in everything] == [
        (FRAGILE, "1"), (MODEL, "1"), (MODEL, "2"),
    ]  # fmt: skip
    assert [(s["name"], s["version"]) for s in _stats(triton, MODEL)] == [
        (MODEL, "1"),
        (MODEL, "2"),
    ]
    assert [s["version"] for s in _stats(triton, MODEL, "2")] == ["2"]


@pytest.mark.parametrize(
    ("model", "version", "status"),
    [("nope", "", "404"), (MODEL, "7", "404"), (MODEL, "x1", "400"), ("nope", "1", "404")],
)
def test_unknown_model_or_version_is_refused(
    triton: Any, model: str, version: str, status: str
) -> None:
    with pytest.raises(InferenceServerException) as refused:
        triton.get_inference_statistics(model, version, headers={KEY_HEADER: API_KEY})
    assert refused.value.status() == status
    assert refused.value.message()


def test_api_keys_guard_the_statistics(gateway: GatewayProcess) -> None:
    for path in ("/v2/models/stats", f"/v2/models/{MODEL}/stats", f"/v2/models/{MODEL}/versions/1/stats"):  # fmt: skip
        assert httpx.get(gateway.http_url + path, timeout=10).status_code == 401, path
        answer = httpx.get(gateway.http_url + path, headers={KEY_HEADER: API_KEY}, timeout=10)
        assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    metadata = httpx.get(f"{gateway.http_url}/v2", headers={KEY_HEADER: API_KEY}, timeout=10).json()
    assert "statistics" in metadata["extensions"]


def test_rest_and_grpc_say_the_same(triton: Any, gateway: GatewayProcess) -> None:
    _infer(triton, MODEL, 2)  # the latest version, so there is something to compare
    client = grpcclient.InferenceServerClient(url=gateway.grpc_target)
    try:
        for model, version in (("", ""), (MODEL, ""), (MODEL, "1")):
            rest = triton.get_inference_statistics(model, version, headers={KEY_HEADER: API_KEY})
            answer = client.get_inference_statistics(model, version, headers={KEY_HEADER: API_KEY})
            assert json_format.ParseDict(rest, service_pb2.ModelStatisticsResponse()) == answer
        with pytest.raises(InferenceServerException) as refused:
            client.get_inference_statistics(MODEL, "7", headers={KEY_HEADER: API_KEY})
        assert refused.value.status() == "StatusCode.NOT_FOUND"
    finally:
        client.close()

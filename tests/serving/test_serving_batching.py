"""Dynamic batching: concurrent requests are merged, and each caller gets exactly its own rows."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from serving_harness import RunningGateway

from serving.batching import BatchingConfig, DynamicBatcher
from serving.metrics import GatewayMetrics
from serving.runtimes.onnx import OnnxOptions, OnnxRuntime
from tests.tiny_models import batch_one_classifier, reference_predict, sample_images, write_version

MODEL = "tiny"


def batch_stats(metrics: str, model: str) -> tuple[float, float]:
    """(batches executed, rows executed) from the batch-size histogram."""
    count = re.search(rf'serving_batch_size_count{{model="{model}"}} ([0-9.e+]+)', metrics)
    total = re.search(rf'serving_batch_size_sum{{model="{model}"}} ([0-9.e+]+)', metrics)
    assert count and total, metrics
    return float(count.group(1)), float(total.group(1))


async def _fire(url: str, requests: list[np.ndarray]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return await asyncio.gather(
            *[
                client.post(
                    f"/v1/models/{MODEL}/versions/1:predict", json={"instances": r.tolist()}
                )
                for r in requests
            ]
        )


@pytest.mark.parametrize("batching", [True, False])
def test_concurrent_requests_are_merged_and_split(
    start_gateway, tiny_repo: Path, batching: bool
) -> None:
    # A long batch window makes merging certain (no timing assumption about the client).
    gateway: RunningGateway = start_gateway(
        tiny_repo, batching=batching, batch_timeout_us=300_000, max_batch_size=64
    )
    rng = np.random.default_rng(0)
    requests = [sample_images(int(rng.integers(1, 4)), seed=100 + i) for i in range(24)]
    replies = asyncio.run(_fire(gateway.http_url, requests))
    model_file = tiny_repo / MODEL / "1" / "model.onnx"
    for rows, reply in zip(requests, replies, strict=True):
        assert reply.status_code == 200, reply.text
        got = np.array(reply.json()["predictions"], dtype=np.float32)
        # Exactly this caller's rows, identical to running them alone.
        np.testing.assert_allclose(got, reference_predict(model_file, rows), rtol=1e-6, atol=1e-7)
    batches, rows_run = batch_stats(gateway.metrics_text(), MODEL)
    assert rows_run == sum(len(r) for r in requests)
    if batching:
        assert rows_run / batches > 1, "no request was merged"
    else:
        assert batches == len(requests), "batching off must run each request alone"


def test_failing_batch_fails_only_its_requests(tmp_path: Path) -> None:
    """Merged rows make ONNX Runtime fail (the model only runs batch 1): those requests fail,
    a later single request still succeeds."""
    write_version(tmp_path, "one", 1, batch_one_classifier())
    runtime = OnnxRuntime(tmp_path / "one" / "1", OnnxOptions(device="cpu"))
    batcher = DynamicBatcher(
        runtime, "one", 1, BatchingConfig(batch_timeout_us=200_000, max_batch_size=8)
    )

    async def scenario() -> tuple[list[object], object]:
        deadline = time.monotonic() + 30
        merged = await asyncio.gather(
            *[batcher.infer({"image": sample_images(1, seed=i)}, deadline) for i in range(4)],
            return_exceptions=True,
        )
        alone = await batcher.infer({"image": sample_images(1, seed=9)}, deadline)
        return merged, alone

    merged, alone = asyncio.run(scenario())
    assert all(isinstance(result, Exception) for result in merged)
    expected = reference_predict(tmp_path / "one" / "1" / "model.onnx", sample_images(1, seed=9))
    np.testing.assert_allclose(alone["probabilities"], expected, rtol=1e-6)  # type: ignore[index]
    batcher.close()


def test_only_compatible_shapes_are_merged(tmp_path: Path) -> None:
    """A model with a dynamic feature axis: requests of different widths queue together but run
    in separate batches, and every caller gets its own sums."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)],
        "row_sum",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "width"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    write_version(tmp_path, "sum", 1, model.SerializeToString())
    assert onnx.load(tmp_path / "sum" / "1" / "model.onnx")
    metrics = GatewayMetrics()
    runtime = OnnxRuntime(tmp_path / "sum" / "1", OnnxOptions(device="cpu"))
    batcher = DynamicBatcher(
        runtime, "sum", 1, BatchingConfig(batch_timeout_us=200_000, max_batch_size=64), metrics
    )
    rng = np.random.default_rng(0)
    requests = [
        rng.random((int(rng.integers(1, 4)), 3 if i % 2 else 5), dtype=np.float32)
        for i in range(12)
    ]

    async def scenario() -> list[dict[str, np.ndarray]]:
        deadline = time.monotonic() + 30
        return await asyncio.gather(*[batcher.infer({"x": r}, deadline) for r in requests])

    results = asyncio.run(scenario())
    for request, result in zip(requests, results, strict=True):
        np.testing.assert_allclose(result["y"], request.sum(axis=1, keepdims=True), rtol=1e-6)
    batches, rows = batch_stats(metrics.render().decode(), "sum")
    assert rows == sum(len(r) for r in requests)
    assert 2 <= batches < len(requests)  # merged, but never across widths
    batcher.close()

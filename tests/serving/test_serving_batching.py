"""Dynamic batching: concurrent requests are merged, and each caller gets exactly its own rows."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from serving.batching import BatchingConfig, DynamicBatcher
from serving.metrics import GatewayMetrics
from serving.runtimes.onnx import OnnxOptions, OnnxRuntime
from tests.metrics_text import metric_value
from tests.serving.serving_harness import RunningGateway, batcher_of, gateway_settings
from tests.tiny_models import (
    batch_one_classifier,
    linear_classifier,
    reference_predict,
    sample_images,
    write_version,
)

MODEL = "tiny"


def batch_stats(metrics: str, model: str) -> tuple[float, float]:
    """(batches executed, rows executed) from the batch-size histogram."""
    count = metric_value(metrics, "serving_batch_size_count", model=model)
    total = metric_value(metrics, "serving_batch_size_sum", model=model)
    assert count and total, metrics
    return count, total


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


def _peer_batcher(
    tmp_path: Path, peer_wait_us: int, peer_idle_us: int, min_loop_busy: float = 0.0
) -> DynamicBatcher:
    """A batcher that waits for peers; by default whatever its event loop's load (these tests'
    loops mostly sleep, where the gateway's default waits only for a saturated loop)."""
    write_version(tmp_path, MODEL, 1, linear_classifier())
    runtime = OnnxRuntime(tmp_path / MODEL / "1", OnnxOptions(device="cpu"))
    config = BatchingConfig(
        peer_wait_us=peer_wait_us, peer_idle_us=peer_idle_us, peer_min_loop_busy=min_loop_busy
    )
    return DynamicBatcher(runtime, MODEL, 1, config, GatewayMetrics())


async def _staggered_rounds(batcher: DynamicBatcher, callers: int, rounds: int) -> None:
    """``callers`` clients in lock step. The first round arrives at once (requests queue up, as
    under load); in later rounds the clients arrive 20 ms apart, far apart compared with a tiny
    model's compute, so without waiting each would mostly run alone."""

    async def client(index: int) -> None:
        for round_number in range(rounds):
            await asyncio.sleep(0.020 * index if round_number else 0)
            image = sample_images(1, seed=100 * round_number + index)
            result = await batcher.infer({"image": image}, time.monotonic() + 60)
            assert result["probabilities"].shape == (1, 10)

    await asyncio.wait_for(asyncio.gather(*[client(i) for i in range(callers)]), 30)


def _batches(batcher: DynamicBatcher) -> tuple[float, float]:
    assert batcher.metrics is not None
    return batch_stats(batcher.metrics.render().decode(), MODEL)


@pytest.mark.parametrize(
    ("peer_wait_us", "min_loop_busy"), [(0, 0.0), (20_000_000, 0.0), (20_000_000, 0.8)]
)
def test_peer_wait_gathers_staggered_lock_step_callers(
    tmp_path: Path, peer_wait_us: int, min_loop_busy: float
) -> None:
    # Idle gap 0.5 s: longer than the 20 ms stagger, so a wait lasts until all 6 are queued; the
    # 20 s cap is never what ends it (the whole scenario must finish within 30 s). With the
    # gateway's default, an event loop this idle (it mostly sleeps) is never waited for.
    batcher = _peer_batcher(tmp_path, peer_wait_us, 500_000, min_loop_busy)
    asyncio.run(_staggered_rounds(batcher, callers=6, rounds=5))
    batches, rows = _batches(batcher)
    assert rows == 30
    if peer_wait_us and min_loop_busy == 0.0:
        # Round one runs as one or two batches; every later round is one batch of 6.
        assert batches <= 8, batches
    else:
        # No waiting: most of the 24 later requests run alone (a stalled
        # event loop on a busy machine can let a few meet).
        assert batches >= 14, batches
    batcher.close()


def test_peer_wait_never_delays_one_caller_at_a_time(tmp_path: Path) -> None:
    # With a 20 s cap and a 20 s idle gap, any wait at all would blow the 30 s budget below.
    batcher = _peer_batcher(tmp_path, peer_wait_us=20_000_000, peer_idle_us=20_000_000)

    async def one_at_a_time() -> None:
        for seed in range(20):
            await batcher.infer({"image": sample_images(1, seed=seed)}, time.monotonic() + 60)

    asyncio.run(asyncio.wait_for(one_at_a_time(), 30))
    assert _batches(batcher) == (20, 20)
    batcher.close()


def test_peer_wait_ends_after_the_idle_gap_when_peers_stop_coming(tmp_path: Path) -> None:
    # Six callers teach the batcher a concurrency of 6 in merged batches; then one caller goes on
    # alone. Its first batch waits for peers that never come; the idle gap (0.5 s), not the 20 s
    # cap, ends it, and after a batch of one nothing waits.
    batcher = _peer_batcher(tmp_path, peer_wait_us=20_000_000, peer_idle_us=500_000)

    async def scenario() -> float:
        await _staggered_rounds(batcher, callers=6, rounds=3)
        started = time.monotonic()
        for seed in range(20):
            await batcher.infer({"image": sample_images(1, seed=seed)}, time.monotonic() + 60)
        return time.monotonic() - started

    alone = asyncio.run(asyncio.wait_for(scenario(), 30))
    # One idle gap (0.5 s), then batches of one never wait: 20 waits would be 10 s.
    assert alone < 5, alone
    batcher.close()


def test_gateway_batching_defaults_are_batching_configs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings take their batching defaults from BatchingConfig: with no option given, the
    gateway batches with exactly ``BatchingConfig()``."""
    from serving.gateway import batching_config
    from serving.settings import ServingSettings

    for name in list(os.environ):
        if name.startswith("SERVING_"):
            monkeypatch.delenv(name)
    assert batching_config(ServingSettings()) == BatchingConfig()


class ShapeRecordingRuntime(OnnxRuntime):
    """The real ONNX Runtime session, recording the batch sizes it is called with."""

    def __init__(self, *args: object, costly: bool = False, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.seen: list[int] = []
        self.new_shapes_are_costly = costly

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.seen.append(len(next(iter(inputs.values()))))
        return super().predict(inputs)


def test_padded_sizes_are_powers_of_two_only_where_new_shapes_are_costly(tmp_path: Path) -> None:
    """'auto': a runtime where shape changes cost gets max_batch_size alone; a CPU runtime
    none; an explicit list (or none) wins either way; warmup runs exactly the padded sizes."""
    from serving.batching import padded_batch_sizes, warmup_batch_sizes

    write_version(tmp_path, MODEL, 1, linear_classifier())
    cpu = ShapeRecordingRuntime(tmp_path / MODEL / "1", OnnxOptions(device="cpu"))
    gpu_like = ShapeRecordingRuntime(tmp_path / MODEL / "1", OnnxOptions(device="cpu"), costly=True)
    auto = BatchingConfig(max_batch_size=48)
    assert padded_batch_sizes(auto, cpu) == ()
    assert padded_batch_sizes(auto, gpu_like) == (48,)
    explicit = BatchingConfig(max_batch_size=8, allowed_batch_sizes=(2, 8))
    assert padded_batch_sizes(explicit, cpu) == (2, 8)
    assert padded_batch_sizes(BatchingConfig(allowed_batch_sizes=()), gpu_like) == ()
    assert warmup_batch_sizes(auto, cpu) == (1, 48)
    assert warmup_batch_sizes(BatchingConfig(max_batch_size=8, merge=False), cpu) == (1,)
    gpu_like.warmup(warmup_batch_sizes(BatchingConfig(max_batch_size=8), gpu_like))
    assert gpu_like.seen == [8]
    cpu.warmup(warmup_batch_sizes(explicit, cpu))
    assert cpu.seen == [2, 8]


def test_batches_are_padded_and_every_caller_gets_only_its_rows(tmp_path: Path) -> None:
    """Allowed sizes 1, 4, 8: 3 merged rows run as 4, 5 as 8, a 9-row request (batching off
    would send it too) as it is; each caller's answer equals the model on its own rows."""
    write_version(tmp_path, MODEL, 1, linear_classifier())
    runtime = ShapeRecordingRuntime(tmp_path / MODEL / "1", OnnxOptions(device="cpu"))
    config = BatchingConfig(
        batch_timeout_us=200_000,
        max_batch_size=8,
        preferred_batch_sizes=(3, 5),
        allowed_batch_sizes=(1, 4, 8),
    )
    batcher = DynamicBatcher(runtime, MODEL, 1, config)
    reference = tmp_path / MODEL / "1" / "model.onnx"

    rounds = [
        [sample_images(1, seed=1), sample_images(2, seed=2)],  # 3 rows -> 4
        [sample_images(2, seed=3), sample_images(3, seed=4)],  # 5 rows -> 8
        [sample_images(1, seed=5)],  # 1 row -> 1
        [sample_images(9, seed=6)],  # larger than every allowed size: split into 8 and 1
    ]

    async def scenario() -> list[list[dict[str, np.ndarray]]]:
        deadline = time.monotonic() + 30
        return [
            await asyncio.gather(*[batcher.infer({"image": i}, deadline) for i in images])
            for images in rounds
        ]

    for images, results in zip(rounds, asyncio.run(scenario()), strict=True):
        for image, result in zip(images, results, strict=True):
            assert result["probabilities"].shape == (len(image), 10)
            np.testing.assert_allclose(
                result["probabilities"], reference_predict(reference, image), rtol=1e-5
            )
    assert runtime.seen == [4, 8, 1, 8, 1]
    batcher.close()


class GatedRuntime(ShapeRecordingRuntime):
    """Records batch sizes; the first call waits for ``gate`` (so a test can queue requests
    behind a computing batch), and the call numbered ``fail_call`` raises."""

    def __init__(self, *args: object, fail_call: int = -1, **kwargs: object) -> None:
        import threading

        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.fail_call = fail_call

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        call = len(self.seen)
        outputs = super().predict(inputs)
        if call == 0:
            assert self.gate.wait(30), "the test never opened the gate"
        if call == self.fail_call:
            raise RuntimeError("chunk failed")
        return outputs


def _gated_batcher(
    tmp_path: Path, max_batch_size: int = 8, **config: Any
) -> tuple[DynamicBatcher, GatedRuntime, Path]:
    write_version(tmp_path, MODEL, 1, linear_classifier())
    fail_call = config.pop("fail_call", -1)
    runtime = GatedRuntime(tmp_path / MODEL / "1", OnnxOptions(device="cpu"), fail_call=fail_call)
    batching = BatchingConfig(max_batch_size=max_batch_size, inline_compute_us=0, **config)
    return (
        DynamicBatcher(runtime, MODEL, 1, batching),
        runtime,
        tmp_path / MODEL / "1" / "model.onnx",
    )


async def _until(condition: Any, timeout_s: float = 30) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < end, "condition never held"
        await asyncio.sleep(0.001)


def test_a_large_request_runs_a_batch_at_a_time_and_later_requests_run_in_between(
    tmp_path: Path,
) -> None:
    """40 rows at max_batch_size 8 run as five chunks of 8. A 1-row request that arrives while
    the first chunk computes runs right after it, not after all five; both answers equal the
    model on their own rows, the large one in its rows' order."""
    batcher, runtime, reference = _gated_batcher(tmp_path)
    large, small = sample_images(40, seed=1), sample_images(1, seed=2)

    async def scenario() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[int]]:
        deadline = time.monotonic() + 30
        large_task = asyncio.create_task(batcher.infer({"image": large}, deadline))
        await _until(lambda: runtime.seen == [8])  # the first chunk is computing, held
        small_task = asyncio.create_task(batcher.infer({"image": small}, deadline))
        await _until(lambda: batcher.queued == 1)
        runtime.gate.set()
        small_result = await small_task
        seen_when_small_answered = list(runtime.seen)
        return await large_task, small_result, seen_when_small_answered

    large_result, small_result, seen_then = asyncio.run(scenario())
    assert runtime.seen == [8, 1, 8, 8, 8, 8]
    assert seen_then[:2] == [8, 1] and len(seen_then) < 6
    np.testing.assert_allclose(
        large_result["probabilities"], reference_predict(reference, large), rtol=1e-5
    )
    np.testing.assert_allclose(
        small_result["probabilities"], reference_predict(reference, small), rtol=1e-5
    )
    assert not batcher._splits
    batcher.close()


def test_with_splitting_off_a_large_request_runs_whole_and_later_ones_wait(tmp_path: Path) -> None:
    batcher, runtime, reference = _gated_batcher(tmp_path, split_large_requests=False)
    large, small = sample_images(40, seed=1), sample_images(1, seed=2)

    async def scenario() -> dict[str, np.ndarray]:
        deadline = time.monotonic() + 30
        large_task = asyncio.create_task(batcher.infer({"image": large}, deadline))
        await _until(lambda: runtime.seen == [40])
        small_task = asyncio.create_task(batcher.infer({"image": small}, deadline))
        await _until(lambda: batcher.queued == 1)
        runtime.gate.set()
        await small_task
        return await large_task

    result = asyncio.run(scenario())
    assert runtime.seen == [40, 1]
    np.testing.assert_allclose(
        result["probabilities"], reference_predict(reference, large), rtol=1e-5
    )
    batcher.close()


def test_a_large_request_past_its_deadline_stops_between_chunks(tmp_path: Path) -> None:
    """The deadline passes while the first chunk computes: the caller gets DeadlineExceeded, no
    further chunk runs, and the batcher serves the next request."""
    from serving.errors import DeadlineExceeded

    batcher, runtime, _ = _gated_batcher(tmp_path)

    async def scenario() -> tuple[BaseException | None, dict[str, np.ndarray]]:
        task = asyncio.create_task(
            batcher.infer({"image": sample_images(40, seed=1)}, time.monotonic() + 0.2)
        )
        await _until(lambda: runtime.seen == [8])
        error = None
        try:
            await task
        except DeadlineExceeded as exc:
            error = exc
        runtime.gate.set()
        await _until(lambda: batcher.idle)
        later = await batcher.infer({"image": sample_images(3, seed=2)}, time.monotonic() + 30)
        return error, later

    error, later = asyncio.run(scenario())
    assert isinstance(error, DeadlineExceeded)
    assert runtime.seen == [8, 3]
    assert later["probabilities"].shape == (3, 10)
    assert not batcher._splits
    batcher.close()


def test_a_failing_chunk_fails_its_request_only(tmp_path: Path) -> None:
    """The second chunk of a large request fails: that request gets the error and runs no more
    chunks; the request queued beside it is answered."""
    batcher, runtime, reference = _gated_batcher(tmp_path, fail_call=1)
    small = sample_images(2, seed=2)

    async def scenario() -> list[Any]:
        deadline = time.monotonic() + 30
        large_task = asyncio.create_task(
            batcher.infer({"image": sample_images(40, seed=1)}, deadline)
        )
        await _until(lambda: runtime.seen == [8])
        runtime.gate.set()
        await _until(lambda: len(runtime.seen) == 2)
        small_result = await batcher.infer({"image": small}, deadline)
        (large_outcome,) = await asyncio.gather(large_task, return_exceptions=True)
        return [large_outcome, small_result]

    large_outcome, small_result = asyncio.run(scenario())
    assert isinstance(large_outcome, RuntimeError)
    assert runtime.seen == [8, 8, 2]
    np.testing.assert_allclose(
        small_result["probabilities"], reference_predict(reference, small), rtol=1e-5
    )
    batcher.close()


def test_gateway_splits_large_requests_into_max_batch_size_batches(
    start_gateway, tiny_repo: Path
) -> None:
    """Over REST: 100 rows at --max-batch-size 8 run as 13 batches (12 of 8, one of 4), and the
    answer is the model's on those rows in order; --no-split-large-requests runs them as one."""
    from serving.settings import settings_from_args

    assert settings_from_args(["--no-split-large-requests"]).split_large_requests is False
    images = sample_images(100, seed=7)
    reference = reference_predict(tiny_repo / MODEL / "1" / "model.onnx", images)
    for split, batches in ((True, 13), (False, 1)):
        gateway: RunningGateway = start_gateway(
            tiny_repo, max_batch_size=8, split_large_requests=split
        )
        reply = httpx.post(
            f"{gateway.http_url}/v1/models/{MODEL}/versions/1:predict",
            json={"instances": images.tolist()},
            timeout=30,
        )
        assert reply.status_code == 200, reply.text
        got = np.array(reply.json()["predictions"], dtype=np.float32)
        np.testing.assert_allclose(got, reference, rtol=1e-6, atol=1e-7)
        assert batch_stats(gateway.metrics_text(), MODEL) == (batches, 100)


def test_allowed_batch_sizes_option_is_checked_and_maps_to_the_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """'auto' leaves it to the runtime, 'none' turns padding off, a list must be ascending and
    end at max_batch_size, --cuda-graph pads to max_batch_size; bad values exit 2 naming the
    option."""
    from serving.gateway import batching_config
    from serving.settings import ServingSettings, settings_from_args

    for name in list(os.environ):
        if name.startswith("SERVING_"):
            monkeypatch.delenv(name)
    assert batching_config(ServingSettings()).allowed_batch_sizes is None
    assert batching_config(ServingSettings(allowed_batch_sizes="none")).allowed_batch_sizes == ()
    listed = ServingSettings(allowed_batch_sizes=" 1, 8,32", max_batch_size=32)
    assert batching_config(listed).allowed_batch_sizes == (1, 8, 32)
    graph = ServingSettings(cuda_graph=True, max_batch_size=16)
    assert batching_config(graph).allowed_batch_sizes == (16,)
    graphs = ServingSettings(cuda_graph=True, max_batch_size=16, allowed_batch_sizes="1,16")
    assert batching_config(graphs).allowed_batch_sizes == (1, 16)
    for bad in ("8,4,32", "0,32", "1,2,x", "1,8"):
        with pytest.raises(SystemExit) as exit_info:
            settings_from_args(["--allowed-batch-sizes", bad, "--max-batch-size", "32"])
        assert exit_info.value.code == 2


class ThreadRecordingRuntime(OnnxRuntime):
    """The real ONNX Runtime session, recording (rows, ran on the event loop's thread)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.calls: list[tuple[int, bool]] = []
        self.loop_thread = 0

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import threading

        rows = len(next(iter(inputs.values())))
        self.calls.append((rows, threading.get_ident() == self.loop_thread))
        return super().predict(inputs)


def _thread_recording_batcher(
    tmp_path: Path, model: bytes, inline_compute_us: int
) -> tuple[DynamicBatcher, ThreadRecordingRuntime]:
    write_version(tmp_path, MODEL, 1, model)
    runtime = ThreadRecordingRuntime(tmp_path / MODEL / "1", OnnxOptions(device="cpu"))
    config = BatchingConfig(
        batch_timeout_us=50_000, max_batch_size=8, inline_compute_us=inline_compute_us
    )
    return DynamicBatcher(runtime, MODEL, 1, config), runtime


def _rounds(
    batcher: DynamicBatcher, runtime: ThreadRecordingRuntime, sizes: list[list[int]]
) -> None:
    """One round per entry, its requests (of these row counts) sent together."""
    import threading

    async def scenario() -> None:
        runtime.loop_thread = threading.get_ident()
        for seed, round_sizes in enumerate(sizes):
            images = [sample_images(rows, seed=10 * seed + i) for i, rows in enumerate(round_sizes)]
            deadline = time.monotonic() + 30
            results = await asyncio.gather(
                *[batcher.infer({"image": image}, deadline) for image in images],
                return_exceptions=True,
            )
            for image, result in zip(images, results, strict=True):
                if not isinstance(result, BaseException):
                    assert result["probabilities"].shape == (len(image), 10)

    asyncio.run(scenario())


def test_light_small_batches_run_on_the_loop_once_measured(tmp_path: Path) -> None:
    """The first small batch runs in the worker thread and is measured; later batches of up to
    four rows of this light model run on the loop, larger ones stay in the thread."""
    batcher, runtime = _thread_recording_batcher(tmp_path, linear_classifier(), 100_000)
    _rounds(batcher, runtime, [[1], [1], [2, 2], [3, 3], [1]])
    assert runtime.calls == [(1, False), (1, True), (4, True), (6, False), (1, True)]
    batcher.close()


@pytest.mark.parametrize("inline_compute_us", [0, 1])
def test_batches_measured_heavier_than_the_hand_off_or_inline_off_stay_in_the_thread(
    tmp_path: Path, inline_compute_us: int
) -> None:
    """0 turns the loop path off; 1 us is below any model's compute here, so the measurement
    keeps every batch in the worker thread."""
    batcher, runtime = _thread_recording_batcher(tmp_path, linear_classifier(), inline_compute_us)
    _rounds(batcher, runtime, [[1], [1], [2, 2], [1]])
    assert [on_loop for _, on_loop in runtime.calls] == [False] * 4
    batcher.close()


def test_a_batch_failing_on_the_loop_fails_only_its_requests(tmp_path: Path) -> None:
    """A model that only runs batch 1: single requests are measured and then run on the loop; a
    merged batch of three fails there, its callers get the error, the next request succeeds."""
    batcher, runtime = _thread_recording_batcher(tmp_path, batch_one_classifier(), 100_000)
    outcomes: list[object] = []

    async def scenario() -> None:
        import threading

        runtime.loop_thread = threading.get_ident()
        deadline = time.monotonic() + 30
        for seed in range(2):
            await batcher.infer({"image": sample_images(1, seed=seed)}, deadline)
        merged = await asyncio.gather(
            *[batcher.infer({"image": sample_images(1, seed=5 + i)}, deadline) for i in range(3)],
            return_exceptions=True,
        )
        outcomes.extend(merged)
        outcomes.append(await batcher.infer({"image": sample_images(1, seed=9)}, deadline))

    asyncio.run(scenario())
    assert runtime.calls == [(1, False), (1, True), (3, True), (1, True)]
    assert all(isinstance(outcome, Exception) for outcome in outcomes[:3])
    assert outcomes[3]["probabilities"].shape == (1, 10)  # type: ignore[index]
    batcher.close()


def test_one_session_per_padded_size_runs_each_size_and_answers_alike(tmp_path: Path) -> None:
    """specialise: sizes 1, 4 and 8 each get a session of their own (1 keeps the first), other
    sizes run on the first; every size answers as the model does; close drops them all."""
    write_version(tmp_path, MODEL, 1, linear_classifier())
    runtime = OnnxRuntime(tmp_path / MODEL / "1", OnnxOptions(device="cpu"))
    first = runtime.session
    runtime.specialise((8, 1, 4))
    sessions = {size: runtime.session_for(size) for size in (1, 3, 4, 8)}
    assert sessions[1] is first and sessions[3] is first
    assert len({id(sessions[size]) for size in (1, 4, 8)}) == 3
    reference = tmp_path / MODEL / "1" / "model.onnx"
    for rows in (1, 3, 4, 8):
        images = sample_images(rows, seed=rows)
        np.testing.assert_allclose(
            runtime.predict({"image": images})["probabilities"],
            reference_predict(reference, images),
            rtol=1e-5,
        )
    runtime.io_device = "cpu"  # the GPU's IO binding path, run on the CPU device here
    images = sample_images(4, seed=7)
    np.testing.assert_allclose(
        runtime._predict_io_binding({"image": images}, runtime.session_for(4))["probabilities"],
        reference_predict(reference, images),
        rtol=1e-5,
    )
    assert runtime.specialised_sizes == (1, 4, 8)
    runtime.close()
    assert runtime.specialised_sizes == ()


def test_gateway_with_a_session_per_allowed_size_serves_every_size(tmp_path: Path) -> None:
    """--allowed-batch-sizes 1,4 with --session-per-batch-size: the version holds two sessions,
    was warmed on both, and answers requests of 1 to 4 rows over REST like the model."""
    write_version(tmp_path, MODEL, 1, linear_classifier())
    settings = gateway_settings(
        tmp_path, allowed_batch_sizes="1,4", max_batch_size=4, session_per_batch_size=True
    )
    gateway = RunningGateway(settings).start()
    try:
        runtime = batcher_of(gateway, MODEL).runtime
        assert isinstance(runtime, OnnxRuntime)
        assert runtime.specialised_sizes == (1, 4)
        assert runtime.session_for(4) is not runtime.session_for(1)
        reference = tmp_path / MODEL / "1" / "model.onnx"
        with httpx.Client(base_url=gateway.http_url, timeout=30) as client:
            for rows in (1, 2, 4):
                images = sample_images(rows, seed=rows)
                reply = client.post(
                    f"/v1/models/{MODEL}:predict", json={"instances": images.tolist()}
                )
                assert reply.status_code == 200, reply.text
                np.testing.assert_allclose(
                    np.asarray(reply.json()["predictions"], np.float32),
                    reference_predict(reference, images),
                    rtol=1e-5,
                    atol=1e-6,
                )
    finally:
        gateway.stop()


def test_cuda_graph_path_keeps_one_graph_per_batch_size_session(tmp_path: Path) -> None:
    """With sessions per size, the CUDA-graph path binds fixed buffers once per session and
    reuses them: sizes 1 and 4 alternate, each answers like the model (run on the CPU device
    here, as in test_serving_config)."""
    write_version(tmp_path, MODEL, 1, linear_classifier())
    runtime = OnnxRuntime(tmp_path / MODEL / "1", OnnxOptions(device="cpu"))
    runtime.io_device = "cpu"
    runtime.specialise((1, 4))
    reference = tmp_path / MODEL / "1" / "model.onnx"
    for seed, rows in enumerate((1, 4, 1, 4)):
        images = sample_images(rows, seed=seed)
        answer = runtime._predict_cuda_graph({"image": images}, runtime.session_for(rows))
        np.testing.assert_allclose(
            answer["probabilities"], reference_predict(reference, images), rtol=1e-5
        )
    with pytest.raises(RuntimeError, match="captured for"):
        runtime._predict_cuda_graph({"image": sample_images(2)}, runtime.session_for(4))
    runtime.close()

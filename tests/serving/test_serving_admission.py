"""Admission under overload: decided before decoding, refusals carry Retry-After and are a bounded
share of the work (the rest wait: pushback), the queue is bounded in requests and bytes; the batch
scheduler is supervised; unloading never pulls a model from under a running batch."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from clients import wire
from serving.batching import BatchingConfig, DynamicBatcher
from serving.errors import ResourceExhausted, Unavailable
from serving.runtimes.onnx import OnnxOptions, OnnxRuntime
from tests.serving.serving_harness import (
    RunningGateway,
    model_busy,
    predict_call,
    wait_until_async,
)
from tests.tiny_models import linear_classifier, sample_images, slow_classifier, write_version

SLOW = "slow"


async def _burst(url: str, count: int, body: bytes | None = None) -> list[httpx.Response]:
    content = (
        body
        if body is not None
        else httpx.Request("POST", "/", json={"instances": sample_images(1).tolist()}).content
    )
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        return await asyncio.gather(
            *[
                client.post(
                    f"/v1/models/{SLOW}:predict",
                    content=content,
                    headers={"content-type": "application/json"},
                )
                for _ in range(count)
            ]
        )


def test_full_queue_refuses_before_decoding_with_retry_after(
    slow_repo: Path, start_gateway: Any
) -> None:
    gateway: RunningGateway = start_gateway(
        slow_repo, batching=False, max_queue_size=1, refusal_share=0
    )

    # One request computing and one queued (both answered 200 afterwards): the queue is full.
    with model_busy(gateway, SLOW, requests=2, rows=4):
        # Not even JSON: refused by admission, never decoded (a decode would say 400).
        refused = httpx.post(
            f"{gateway.http_url}/v1/models/{SLOW}:predict", content=b"{not json", timeout=60
        )
    assert refused.status_code == 429, refused.text
    assert "queue is full" in refused.json()["error"]
    assert int(refused.headers["retry-after"]) >= 1


def test_refusals_are_a_bounded_share_and_the_rest_wait(
    slow_repo: Path, start_gateway: Any
) -> None:
    """Queue of 1, 12 concurrent requests: with refusal_share 0 all but the first two are
    refused; with the default share most of them wait in the overflow and are answered."""
    strict: RunningGateway = start_gateway(
        slow_repo, batching=False, max_queue_size=1, refusal_share=0
    )
    codes = [r.status_code for r in asyncio.run(_burst(strict.http_url, 12))]
    assert codes.count(429) >= 9, codes
    patient: RunningGateway = start_gateway(slow_repo, batching=False, max_queue_size=1)
    codes = [r.status_code for r in asyncio.run(_burst(patient.http_url, 12))]
    assert codes.count(200) >= 10 and set(codes) <= {200, 429}, codes


def test_overflow_and_bytes_bound_the_queue(slow_repo: Path, start_gateway: Any) -> None:
    # No refusal budget at all is not possible with a share > 0, so bound the overflow instead.
    small: RunningGateway = start_gateway(
        slow_repo, batching=False, max_queue_size=1, queue_overflow=1, refusal_share=0.01
    )
    codes = [r.status_code for r in asyncio.run(_burst(small.http_url, 8))]
    # computing 1 + queued 1 + overflow 1 (+ the first refusal token): the rest are refused.
    assert codes.count(200) <= 4 and codes.count(429) >= 4, codes
    tight: RunningGateway = start_gateway(
        slow_repo, batching=False, max_queue_bytes=1000, refusal_share=0.01
    )
    body = httpx.Request("POST", "/", json={"instances": sample_images(1).tolist()}).content
    codes = [r.status_code for r in asyncio.run(_burst(tight.http_url, 6, body))]
    # A request body of ~2.5 KB: an empty queue takes one, a non-empty one none.
    assert codes.count(429) >= 3, codes
    refused = next(r for r in asyncio.run(_burst(tight.http_url, 4, body)) if r.status_code == 429)
    assert "bytes queued" in refused.json()["error"]


def test_grpc_refusal_carries_retry_pushback(slow_repo: Path, start_gateway: Any) -> None:
    gateway: RunningGateway = start_gateway(
        slow_repo, batching=False, max_queue_size=1, refusal_share=0
    )
    request = wire.build_predict_request(SLOW, {"image": sample_images(1)})

    async def burst() -> list[grpc.aio.AioRpcError | None]:
        async with grpc.aio.insecure_channel(gateway.grpc_target) as channel:
            call = predict_call(channel)

            async def one() -> grpc.aio.AioRpcError | None:
                try:
                    await call(request, timeout=60)
                except grpc.aio.AioRpcError as error:
                    return error
                return None

            return await asyncio.gather(*[one() for _ in range(6)])

    errors = [e for e in asyncio.run(burst()) if e is not None]
    assert errors and all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for e in errors)
    pushback = dict(errors[0].trailing_metadata() or ())
    assert int(pushback["grpc-retry-pushback-ms"]) >= 100


# --- the batcher itself -------------------------------------------------------------------------
def _batcher(path: Path, **config: Any) -> DynamicBatcher:
    runtime = OnnxRuntime(path, OnnxOptions(device="cpu"))
    return DynamicBatcher(runtime, "m", 1, BatchingConfig(**config))


def test_admit_is_decided_from_the_queue_alone(tmp_path: Path) -> None:
    write_version(tmp_path, "m", 1, slow_classifier(repeats=12))
    batcher = _batcher(tmp_path / "m" / "1", merge=False, max_queue_size=1, refusal_share=None)

    async def scenario() -> None:
        images = {"image": sample_images(1)}
        deadline = asyncio.get_running_loop().time() + 60
        first = asyncio.ensure_future(batcher.infer(images, deadline))
        await wait_until_async(
            lambda: not batcher.idle and batcher.queued == 0, what="the first to be computing"
        )
        batcher.admit(10)  # queue empty: admitted
        second = asyncio.ensure_future(batcher.infer(images, deadline))
        await wait_until_async(lambda: batcher.queued == 1, what="the second to be queued")
        with pytest.raises(ResourceExhausted) as refused:
            batcher.admit(10)
        assert refused.value.retry_after_s is not None and refused.value.retry_after_s >= 0.1
        await asyncio.gather(first, second)
        batcher.close()

    asyncio.run(scenario())


def test_a_dead_scheduler_fails_its_queue_at_once_and_is_restarted(tmp_path: Path) -> None:
    write_version(tmp_path, "m", 1, linear_classifier())
    batcher = _batcher(tmp_path / "m" / "1", batch_timeout_us=50_000)
    original_take = batcher._take
    failures = [RuntimeError("injected scheduler bug")]

    def take_once_broken() -> Any:
        if failures:
            raise failures.pop()
        return original_take()

    batcher._take = take_once_broken  # type: ignore[method-assign]

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        started = loop.time()
        with pytest.raises(Unavailable, match="scheduler failed and was restarted"):
            await batcher.infer({"image": sample_images(2)}, deadline)
        assert loop.time() - started < 5, "the queued request waited for its deadline"
        result = await batcher.infer({"image": sample_images(3)}, deadline)
        assert result["probabilities"].shape == (3, 10)
        batcher.close()

    asyncio.run(scenario())


class ClosingRecorder(OnnxRuntime):
    """The real runtime, recording whether close() came while a prediction was running."""

    running = 0
    closed_while_running = False
    closed = False

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        type(self).running += 1
        try:
            return super().predict(inputs)
        finally:
            type(self).running -= 1

    def close(self) -> None:
        type(self).closed_while_running |= type(self).running > 0
        type(self).closed = True
        super().close()


def test_close_waits_for_the_running_batch(tmp_path: Path) -> None:
    write_version(tmp_path, "m", 1, slow_classifier(repeats=12))
    # One thread, so that the batch runs for a while (auto would use every core).
    runtime = ClosingRecorder(tmp_path / "m" / "1", OnnxOptions(device="cpu", intra_op_threads=1))
    batcher = DynamicBatcher(runtime, "m", 1, BatchingConfig(merge=False))

    async def scenario() -> None:
        deadline = asyncio.get_running_loop().time() + 60
        running = asyncio.ensure_future(batcher.infer({"image": sample_images(1)}, deadline))
        queued = asyncio.ensure_future(batcher.infer({"image": sample_images(1)}, deadline))
        await wait_until_async(
            lambda: ClosingRecorder.running == 1 and batcher.queued == 1,
            what="one batch running and one queued",
        )
        batcher.close()
        assert not ClosingRecorder.closed  # the batch is still computing
        assert (await running)["probabilities"].shape == (1, 10)
        with pytest.raises(Unavailable, match="unloaded"):
            await queued

    asyncio.run(scenario())
    assert ClosingRecorder.closed and not ClosingRecorder.closed_while_running

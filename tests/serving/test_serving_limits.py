"""The limits that keep one request from hurting the others: the bounded decode pools (big images
and base64 bodies on threads, big JSON bodies in processes, off the event loop, 429 when full),
the pixel limit, the request-head limit, and
that ordinary traffic (big bodies on keep-alive connections, pipelined requests) is never caught
by them."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from serving.codecs import tfserving
from serving.errors import InvalidArgument, ResourceExhausted, Unavailable
from serving.offload import DECODE_THREAD_NICENESS, DecodePool
from serving.validation import DEFAULT_LIMITS
from tests.serving.serving_harness import (
    GatewayProcess,
    RunningGateway,
    child_pids,
    connect,
    process_running,
    wait_until,
    wait_until_async,
)
from tests.tiny_models import sample_images

MODEL = "tiny"
CLASSIFY = f"/v1/models/{MODEL}:classify_image"
PREDICT = f"/v1/models/{MODEL}:predict"


def png(side: int, noise: bool = False) -> bytes:
    pixels = (
        np.random.default_rng(side).integers(0, 256, (side, side), np.uint8)
        if noise
        else np.full((side, side), 90, np.uint8)
    )
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


# --- the pool itself ----------------------------------------------------------------------------
def test_decode_pool_refuses_beyond_threads_plus_queue_and_frees_places() -> None:
    async def scenario() -> None:
        pool = DecodePool(threads=1, queue=1)
        release = threading.Event()
        running = asyncio.ensure_future(pool.run(release.wait, 10))
        waiting = asyncio.ensure_future(pool.run(lambda: "second"))
        await wait_until_async(lambda: pool.admitted == 2, what="both jobs to be admitted")
        with pytest.raises(ResourceExhausted, match="decoding is at capacity"):
            await pool.run(lambda: "third")
        waiting.cancel()  # a caller that goes away before its job started frees its place
        await wait_until_async(lambda: pool.admitted == 1, what="the cancelled job's place")
        release.set()
        assert await running is True
        assert pool.admitted == 0
        assert await pool.run(lambda: "again") == "again"
        pool.close()
        with pytest.raises(Unavailable):
            await pool.run(lambda: None)

    asyncio.run(scenario())


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="thread niceness is a POSIX notion")
def test_decode_threads_run_at_lower_cpu_priority() -> None:
    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    async def scenario() -> int:
        pool = DecodePool(threads=1, queue=0)
        try:
            return await pool.run(niceness)
        finally:
            pool.close()

    assert asyncio.run(scenario()) >= min(19, niceness() + DECODE_THREAD_NICENESS)


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="niceness is a POSIX notion")
def test_process_pool_runs_jobs_elsewhere_carries_errors_and_replaces_a_dead_worker() -> None:
    async def scenario() -> None:
        pool = DecodePool(threads=1, queue=1, name="JSON decode", processes=True)
        try:
            worker = await pool.run(os.getpid)
            assert worker != os.getpid()
            expected_niceness = min(19, os.getpriority(os.PRIO_PROCESS, 0) + DECODE_THREAD_NICENESS)
            assert await pool.run(os.getpriority, os.PRIO_PROCESS, 0) >= expected_niceness
            # A decoder's refusal comes back as the same error, worded as on the event loop.
            with pytest.raises(InvalidArgument) as in_process:
                tfserving.decode_predict(b'{"instances": [1, 2', [], DEFAULT_LIMITS)
            with pytest.raises(InvalidArgument) as offloaded:
                await pool.run(tfserving.decode_predict, b'{"instances": [1, 2', [], DEFAULT_LIMITS)
            assert str(offloaded.value) == str(in_process.value)
            # A worker that dies during a job: that job is refused with 503, the next one runs in
            # a new worker.
            sleeping = asyncio.ensure_future(pool.run(time.sleep, 60))
            await wait_until_async(lambda: pool.admitted == 1, what="the job to be admitted")
            await asyncio.sleep(0.2)  # the job reaches the worker
            os.kill(worker, signal.SIGKILL)
            with pytest.raises(Unavailable, match="worker process died"):
                await sleeping
            replacement = await pool.run(os.getpid)
            assert replacement not in (worker, os.getpid()) and pool.restarts == 1
            # One that dies between jobs: the next job is refused the same way, then all is well.
            os.kill(replacement, signal.SIGKILL)
            await asyncio.sleep(0.5)
            with pytest.raises(Unavailable, match="worker process died"):
                await pool.run(os.getpid)
            assert await pool.run(os.getpid) not in (replacement, os.getpid())
            assert pool.restarts == 2 and pool.admitted == 0
        finally:
            pool.close()
        with pytest.raises(Unavailable, match="shutting down"):
            await pool.run(os.getpid)

    asyncio.run(scenario())


# --- the pool in the gateway --------------------------------------------------------------------
def occupy_pool(gateway: RunningGateway) -> threading.Event:
    """Fill the gateway's decode pool (1 thread, queue 0) with a job that waits for the event."""
    assert gateway.gateway is not None and gateway.loop is not None
    pool = gateway.gateway.dataplane.decode_pool
    release = threading.Event()
    asyncio.run_coroutine_threadsafe(pool.run(release.wait, 30), gateway.loop)
    wait_until(lambda: pool.admitted == 1, what="the job to occupy the decode pool")
    return release


def test_big_images_and_base64_bodies_use_the_pool_small_images_do_not(
    tiny_repo: Path, start_gateway: Any
) -> None:
    """With the pool full, big images and base64 bodies get 429, small ones are answered, and an
    image declaring more than the pixel limit still gets its 413: it never queues for a decode."""
    gateway: RunningGateway = start_gateway(
        tiny_repo, decode_threads=1, decode_queue=0, max_image_pixels=512 * 512
    )
    b64_body = json.dumps({"instances": [{"b64": base64.b64encode(png(28)).decode()}]})
    # The same key spelled with JSON escapes must not slip past the pool onto the event loop.
    escaped_body = b64_body.replace('"b64"', '"\\u0062\\u0036\\u0034"')
    release = occupy_pool(gateway)
    try:
        with httpx.Client(base_url=gateway.http_url, timeout=30) as http:
            busy = http.post(CLASSIFY, content=png(512, noise=True))
            assert busy.status_code == 429, busy.text
            assert "decoding is at capacity" in busy.json()["error"]
            refused = http.post(CLASSIFY, content=png(513, noise=True))
            assert refused.status_code == 413, refused.text
            assert "513x513 pixels exceeds the limit of 262144" in refused.json()["error"]
            assert http.post(PREDICT, content=b64_body).status_code == 429
            assert http.post(PREDICT, content=escaped_body).status_code == 429
            # Small images are decoded inline: the busy pool does not matter to them.
            assert http.post(CLASSIFY, content=png(28)).status_code == 200
            assert (
                http.post(PREDICT, json={"instances": sample_images(1).tolist()}).status_code == 200
            )
    finally:
        release.set()
    # The released job must leave the pool before the next big decode can have it.
    pool = gateway.gateway.dataplane.decode_pool  # type: ignore[union-attr]
    wait_until(lambda: pool.admitted == 0, what="the released job to leave the decode pool")
    with httpx.Client(base_url=gateway.http_url, timeout=30) as http:
        assert http.post(CLASSIFY, content=png(512, noise=True)).status_code == 200
        plain = http.post(PREDICT, content=b64_body)
        assert plain.status_code == 200
        assert http.post(PREDICT, content=escaped_body).json() == plain.json()


def _read_answer(conn: socket.socket) -> bytes:
    """One HTTP answer with a Content-Length body, read off a raw connection."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = conn.recv(65536)
        assert chunk, f"connection closed after {answer!r}"
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    length = int(
        next(
            line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
        ).split(b":")[1]
    )
    while len(body) < length:
        body += conn.recv(65536)
    return head + b"\r\n\r\n" + body


@pytest.mark.parametrize(
    ("start", "status", "words"),
    [
        (
            b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (30_000).to_bytes(4, "big") * 2,
            413,
            b"30000x30000 pixels exceeds the limit",
        ),
        (b"GIF89a" + b"\x00" * 30, 400, b"PNG or JPEG expected"),
    ],
    ids=["too-many-pixels", "not-an-image"],
)
def test_an_image_body_is_refused_from_its_first_bytes_and_the_connection_goes_on(
    tiny_repo: Path, start_gateway: Any, start: bytes, status: int, words: bytes
) -> None:
    """The answer comes while most of a 4 MB body is still unsent; the rest is then dropped
    unread, and the next request on the same connection is answered."""
    gateway: RunningGateway = start_gateway(tiny_repo)
    rest = b"\0" * (4_000_000 - len(start))
    with connect(gateway.http_url) as conn:
        conn.sendall(
            f"POST {CLASSIFY} HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            f"Content-Length: {len(start) + len(rest)}\r\n\r\n".encode()
            + start
        )
        refused = _read_answer(conn)  # nothing more of the body has been sent
        assert refused.startswith(f"HTTP/1.1 {status} ".encode()), refused[:200]
        assert words in refused
        conn.sendall(rest)
        image = png(28)
        conn.sendall(
            f"POST {CLASSIFY} HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            f"Content-Length: {len(image)}\r\n\r\n".encode()
            + image
        )
        answered = _read_answer(conn)
    assert answered.startswith(b"HTTP/1.1 200 "), answered[:300]
    assert b'"predictions"' in answered


def test_big_json_bodies_are_decoded_in_a_process_and_answered_as_on_the_loop(
    tiny_repo: Path, start_gateway: Any
) -> None:
    threshold = 16 * 1024  # a 28x28 image is about 3 KB of JSON: 8 of them go to the process
    offloading: RunningGateway = start_gateway(
        tiny_repo, json_offload_bytes=threshold, decode_queue=0
    )
    on_loop: RunningGateway = start_gateway(tiny_repo, json_offload_bytes=0)
    images = sample_images(8, seed=3)
    v2_json = {"inputs": [{"name": "image", "shape": [8, 28, 28, 1], "datatype": "UINT8",
                           "data": images.ravel().tolist()}]}  # fmt: skip
    many = sample_images(32, seed=4)  # 25 KB of binary tensor
    header = json.dumps(
        {"inputs": [{"name": "image", "shape": [32, 28, 28, 1], "datatype": "UINT8",
                     "parameters": {"binary_data_size": many.nbytes}}]}
    ).encode()  # fmt: skip
    requests = [
        (PREDICT, {"content": json.dumps({"instances": images.tolist()})}),  # the common body
        (PREDICT, {"content": json.dumps({"inputs": {"image": images.tolist()}})}),  # columnar
        (PREDICT, {"content": json.dumps({"instances": images.tolist()})[:-1]}),  # malformed
        (PREDICT, {"content": json.dumps({"instances": (images / 2).tolist()})}),  # fractions
        (f"/v2/models/{MODEL}/infer", {"json": v2_json}),
    ]
    assert all(len(kwargs.get("content", "")) >= threshold for _, kwargs in requests[:4])
    for path, kwargs in requests:
        kwargs["headers"] = {"x-request-id": "same"}  # V2's id and error bodies carry it
        answers = [
            httpx.post(gw.http_url + path, timeout=30, **kwargs) for gw in (offloading, on_loop)
        ]
        assert answers[0].status_code == answers[1].status_code, (path, answers[0].text)
        assert answers[0].content == answers[1].content, path
    # Proof that they went to the process pool: with its only process busy (and no queue), big
    # JSON bodies are refused with 429, while small ones and binary tensors are answered.
    assert offloading.gateway is not None and offloading.loop is not None
    pool = offloading.gateway.dataplane.json_pool
    worker = asyncio.run_coroutine_threadsafe(pool.run(os.getpid), offloading.loop).result(30)
    asyncio.run_coroutine_threadsafe(pool.run(time.sleep, 60), offloading.loop)
    wait_until(lambda: pool.admitted == 1, what="the job to occupy the JSON decode process")
    with httpx.Client(base_url=offloading.http_url, timeout=30) as http:
        busy = [http.post(path, **kwargs) for path, kwargs in (requests[0], requests[-1])]
        assert [reply.status_code for reply in busy] == [429, 429], busy[0].text
        assert "decoding is at capacity" in busy[0].json()["error"]
        small = {"instances": images[:1].tolist()}
        assert http.post(PREDICT, json=small).status_code == 200
        binary = http.post(
            f"/v2/models/{MODEL}/infer",
            content=header + many.tobytes(),
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
        assert binary.status_code == 200, binary.text
    # The busy process is killed: the gateway replaces it and big bodies are answered again.
    os.kill(worker, signal.SIGKILL)
    wait_until(lambda: pool.admitted == 0, what="the killed job to leave the pool")
    reply = httpx.post(offloading.http_url + PREDICT, timeout=30, **requests[0][1])
    assert reply.status_code == 200 and pool.restarts == 1


def json_workers_of(pid: int) -> list[int]:
    """The JSON decode worker processes a gateway process spawned (Linux: /proc)."""
    return [
        child
        for child in child_pids(pid)
        if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
    ]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads processes from /proc")
def test_json_workers_end_with_a_gateway_that_is_killed(tiny_repo: Path) -> None:
    gateway = GatewayProcess(tiny_repo)
    try:
        wait_until(lambda: json_workers_of(gateway.process.pid), what="the JSON decode worker")
        (worker,) = json_workers_of(gateway.process.pid)
    finally:
        gateway.process.kill()  # SIGKILL: no chance to stop its pool
        gateway.process.wait(30)
    wait_until(
        lambda: not process_running(worker), what=f"the orphaned JSON worker {worker} to exit"
    )


def test_pixel_limit_is_configurable(tiny_repo: Path, start_gateway: Any) -> None:
    gateway: RunningGateway = start_gateway(tiny_repo, max_image_pixels=1000)
    with httpx.Client(base_url=gateway.http_url, timeout=30) as http:
        assert http.post(CLASSIFY, content=png(31)).status_code == 200  # 961 pixels
        refused = http.post(CLASSIFY, content=png(32))  # 1024 pixels
    assert refused.status_code == 413
    assert "32x32 pixels exceeds the limit of 1000 pixels" in refused.json()["error"]


def test_request_pixel_budget_is_configurable(tiny_repo: Path, start_gateway: Any) -> None:
    gateway: RunningGateway = start_gateway(
        tiny_repo, max_image_pixels=1000, max_request_image_pixels=3000
    )
    value = {"b64": base64.b64encode(png(31)).decode()}  # 961 pixels
    with httpx.Client(base_url=gateway.http_url, timeout=30) as http:
        assert http.post(PREDICT, json={"instances": [value] * 3}).status_code == 200
        refused = http.post(PREDICT, json={"instances": [value] * 4})
        assert http.post(PREDICT, json={"instances": [value] * 3}).status_code == 200
    assert refused.status_code == 413
    assert "declare more than 3000 pixels together" in refused.json()["error"]


# --- the request-head limit ---------------------------------------------------------------------
def raw_exchange(url: str, payload: bytes, answers: int) -> bytes:
    """Send ``payload`` on one connection, read until ``answers`` responses have begun (or the
    connection closes or goes quiet for 5 s)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(payload)
        answer = b""
        while answer.count(b"HTTP/1.1 ") < answers or not answer.endswith(b"]]}"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


def test_big_bodies_and_pipelined_requests_are_not_mistaken_for_big_heads(
    tiny_repo: Path, start_gateway: Any
) -> None:
    gateway: RunningGateway = start_gateway(tiny_repo)
    body = json.dumps({"instances": sample_images(8).tolist()}).encode()  # ~25 KB > 16 KiB
    with httpx.Client(base_url=gateway.http_url, timeout=30) as http:
        for _ in range(5):  # one keep-alive connection
            assert http.post(PREDICT, content=body).status_code == 200
    request = (
        f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    answer = raw_exchange(gateway.http_url, request * 3, 3)  # three requests in one write
    assert answer.count(b"HTTP/1.1 200 OK") == 3, answer[:300]


def test_head_limit_is_configurable(tiny_repo: Path, start_gateway: Any) -> None:
    header = {"x-trace": "t" * 20_000}
    default: RunningGateway = start_gateway(tiny_repo)
    assert httpx.get(f"{default.http_url}/v2/health/live", headers=header).status_code == 431
    roomy: RunningGateway = start_gateway(tiny_repo, max_header_bytes=64 * 1024)
    assert httpx.get(f"{roomy.http_url}/v2/health/live", headers=header).status_code == 200

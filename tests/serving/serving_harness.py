"""Run a real gateway (HTTP + gRPC on 127.0.0.1, port 0) in a background thread for tests."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from clients import wire
from serving.batching import DynamicBatcher
from serving.gateway import Gateway
from serving.settings import ServingSettings
from tests.metrics_text import metric_samples
from tests.tiny_models import sample_images


def wait_until(
    condition: Callable[[], object],
    timeout_s: float = 30,
    *,
    what: str | None = None,
    interval_s: float = 0.01,
) -> None:
    """Poll ``condition`` until it holds; fail, saying ``what`` (else the condition's name) was
    awaited, if it does not within ``timeout_s``. For an event that sends no notification of its
    own (a request reaching a queue, a version being loaded)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout_s} s waiting for {what or condition.__name__}"
            )
        time.sleep(interval_s)


async def wait_until_async(
    condition: Callable[[], object],
    timeout_s: float = 30,
    *,
    what: str | None = None,
    interval_s: float = 0.005,
) -> None:
    """``wait_until`` inside a coroutine: the event loop keeps running between polls."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout_s} s waiting for {what or condition.__name__}"
            )
        await asyncio.sleep(interval_s)


def batcher_of(gateway: RunningGateway, model: str) -> DynamicBatcher:
    """The batcher of ``model``'s latest version in a running gateway: its ``idle`` and
    ``queued`` say whether requests are computing or waiting."""
    assert gateway.gateway is not None
    batcher = gateway.gateway.repository.resolve(model).batcher
    assert batcher is not None
    return batcher


def requests_total(http_url: str) -> dict[tuple[str, str], float]:
    """``serving_requests_total`` from ``/metrics`` (a new connection each call), summed over
    models and versions, by (protocol, status)."""
    text = httpx.get(f"{http_url}/metrics", timeout=10).text
    totals: dict[tuple[str, str], float] = {}
    for sample in metric_samples(text):
        if sample.name == "serving_requests_total":
            key = (sample.labels["protocol"], sample.labels["status"])
            totals[key] = totals.get(key, 0.0) + sample.value
    return totals


def predict_call(channel: Any) -> Any:
    """TF Serving's ``Predict`` on a grpc (or grpc.aio) channel, with our wire messages."""
    return channel.unary_unary(
        wire.PREDICT_METHOD,
        request_serializer=wire.PredictRequest.SerializeToString,
        response_deserializer=wire.PredictResponse.FromString,
    )


def gateway_settings(repository: Path, **overrides: Any) -> ServingSettings:
    """Settings for a test gateway: loopback, any free ports, CPU, no background polling."""
    values: dict[str, Any] = {
        "repository": repository,
        "host": "127.0.0.1",
        "http_port": 0,
        "grpc_port": 0,
        "device": "cpu",
        "poll_interval_s": 0,
        "log_level": "warning",
        "drain_timeout_s": 10,
        # One intra-op thread whatever the model: the timing-based tests (a slow model keeps the
        # queue busy) are calibrated for it; the per-model auto rule has its own tests.
        "intra_op_threads": 1,
    }
    values.update(overrides)
    return ServingSettings(**values)


class RunningGateway:
    """A started Gateway whose event loop runs in its own thread."""

    def __init__(self, settings: ServingSettings) -> None:
        self.settings = settings
        self.gateway: Gateway | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> RunningGateway:
        """Start and return once both ports are open (raises what start() raised)."""
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self.loop = loop
            self.gateway = Gateway(self.settings)
            try:
                loop.run_until_complete(self.gateway.start())
            except BaseException as exc:
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="gateway", daemon=True)
        self._thread.start()
        started.wait(60)
        if failure:
            raise failure[0]
        return self

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        """Run a coroutine on the gateway's loop (e.g. ``repository.sync()``)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        """Graceful stop, then end the loop thread."""
        if self.loop is None or self.gateway is None or self._thread is None:
            return
        if self._thread.is_alive():
            self.run(self.gateway.stop())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(30)

    @property
    def http_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        assert self.gateway is not None
        return f"http://127.0.0.1:{self.gateway.http_port}"

    @property
    def grpc_target(self) -> str:
        """``127.0.0.1:<port>``."""
        assert self.gateway is not None
        return f"127.0.0.1:{self.gateway.grpc_port}"

    def metrics_text(self) -> str:
        """The Prometheus exposition, read in-process."""
        assert self.gateway is not None
        return self.gateway.metrics.render().decode()


def wait_until_idle(gateway: RunningGateway, model: str, timeout_s: float = 120) -> None:
    """Wait until ``model``'s latest version has nothing computing and nothing queued (a request
    an earlier test abandoned may still be computing)."""
    batcher = batcher_of(gateway, model)
    wait_until(lambda: batcher.idle, timeout_s, what=f"model {model} to be idle")


@contextmanager
def model_busy(gateway: RunningGateway, model: str, requests: int, rows: int) -> Iterator[None]:
    """``requests`` REST predicts of ``rows`` images each for ``model``, sent from threads once
    the model is idle, each once the one before is inside: the first computes, the others wait in
    the model's queue. Yields with all of them inside; on exit waits until each is answered (200).

    With batching off, ``max_queue_size`` of ``requests - 1`` and no overflow (``refusal_share`` or
    ``queue_overflow`` 0), the model then refuses every other request (RESOURCE_EXHAUSTED) for as
    long as the first one computes: ``rows`` sets how long that is."""
    batcher = batcher_of(gateway, model)
    body = {"instances": sample_images(rows).tolist()}
    statuses: list[int] = []

    def send() -> None:
        # A deadline as long as the client waits (the gateway allows up to 10x its
        # request_timeout_s): on a loaded machine the queued one can wait past the default 30 s.
        headers = {"x-request-timeout-ms": "120000"}
        url = f"{gateway.http_url}/v1/models/{model}:predict"
        statuses.append(httpx.post(url, json=body, headers=headers, timeout=120).status_code)

    wait_until_idle(gateway, model)
    threads = [threading.Thread(target=send) for _ in range(requests)]
    for inside, thread in enumerate(threads, start=1):
        thread.start()
        wait_until(
            lambda: not batcher.idle and batcher.queued == inside - 1,  # noqa: B023 (called at once)
            timeout_s=60,
            what=f"request {inside} to be inside (one computing, the rest queued)",
        )
    try:
        yield
    finally:
        for thread in threads:
            thread.join(120)
    assert statuses == [200] * requests, f"the requests holding {model} were answered {statuses}"


def child_pids(pid: int) -> list[int]:
    """PIDs of a process's children, whichever of its threads started them (Linux: /proc)."""
    return [
        int(child)
        for children in Path(f"/proc/{pid}/task").glob("*/children")
        for child in children.read_text().split()
    ]


def process_running(pid: int) -> bool:
    """Alive and not a zombie (an orphan that exited may wait for init to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


class GatewayProcess:
    """``python -m serving`` as its own process on 127.0.0.1 (free ports), its log collected:
    for tests that need the process's own memory (``rss_mb``) or its exit. It reads the ports
    from the startup log, so ``options`` must keep ``--log-level`` at info or below."""

    def __init__(self, repository: Path, *options: str) -> None:
        root = Path(__file__).resolve().parents[2]
        env = {**os.environ, "SERVING_POLL_INTERVAL_S": "0", "SERVING_DRAIN_TIMEOUT_S": "5"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "serving", "--repository", str(repository),
             "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0", "--device", "cpu",
             *options],
            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        assert self.process.stdout is not None
        http = grpc_target = None
        for line in self.process.stdout:
            self.lines.append(line)
            http = http or re.search(r"HTTP .* on (http://\S+)", line)
            grpc_target = grpc_target or re.search(r"gRPC .* on (\S+:\d+)", line)
            if http and grpc_target:
                break
        assert http and grpc_target, "".join(self.lines)
        self.http_url, self.grpc_target = http.group(1), grpc_target.group(1)
        threading.Thread(
            target=lambda: self.lines.extend(self.process.stdout or []), daemon=True
        ).start()

    def rss_mb(self) -> float:
        """Resident memory of the gateway process (VmRSS), in MiB."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        assert match, status
        return int(match.group(1)) / 1024

    def stop(self) -> None:
        """SIGTERM (graceful drain), then kill if it does not exit."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


class RawResponses:
    """Reads HTTP/1.1 responses (Content-Length framed) off one socket."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.buffer = b""

    def _fill(self) -> bool:
        chunk = self.conn.recv(65536)
        self.buffer += chunk
        return bool(chunk)

    def next(self) -> tuple[bytes, dict[bytes, bytes], bytes]:
        """(status line, headers without Date, body) of the next response."""
        while b"\r\n\r\n" not in self.buffer:
            assert self._fill(), f"connection closed mid-head: {self.buffer[:200]!r}"
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status, *lines = head.split(b"\r\n")
        headers = dict(line.split(b": ", 1) for line in lines)
        headers = {name.lower(): value for name, value in headers.items()}
        length = int(headers[b"content-length"])
        while len(self.buffer) < length:
            assert self._fill(), "connection closed mid-body"
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        headers.pop(b"date", None)  # the one header that may differ between two answers
        return status, headers, body

    def closed(self) -> bool:
        """True once the server has closed the connection (and sent nothing more)."""
        self.conn.settimeout(5)
        return not self._fill() and not self.buffer


def connect(http_url: str, receive_buffer: int | None = None) -> socket.socket:
    """A raw TCP connection to the gateway at ``http_url``, for what httpx would not send;
    ``receive_buffer`` bytes of socket receive buffer, set before the connection's window is
    agreed (set afterwards, a small buffer can stall the connection)."""
    host, port = http_url.removeprefix("http://").split(":")
    if receive_buffer is None:
        return socket.create_connection((host, int(port)), timeout=10)
    conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    conn.settimeout(10)
    conn.connect((host, int(port)))
    return conn


def server_connections(gateway: RunningGateway) -> set[Any]:
    """The in-process gateway's ends of its open HTTP connections (uvicorn's protocol objects)."""
    assert gateway.gateway._http is not None
    return gateway.gateway._http.server_state.connections


def server_side(gateway: RunningGateway) -> Any:
    """The in-process gateway's end of its one HTTP connection."""
    wait_until(lambda: len(server_connections(gateway)) == 1, what="the connection to be accepted")
    return next(iter(server_connections(gateway)))


def small_send_buffer(server_end: Any) -> None:
    """A small socket send buffer at the gateway's end (a client's small receive buffer is
    ``connect(..., receive_buffer=...)``), so answers a client leaves unread back up into the
    gateway's write buffer after a few kilobytes instead of the kernel's megabytes."""
    server_end.transport.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
    )

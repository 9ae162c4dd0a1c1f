"""The open-loop load engine of ``python -m benchmarks rate``.

Requests leave at their scheduled times whether or not earlier ones have been answered; each
latency is counted from the request's scheduled time, so queueing anywhere (the server, its
listen backlog, a connection the client had to wait for) is in it, and a slow server cannot slow
the load down (no coordinated omission).

The engine is asyncio on uvloop: HTTP/1.1 keep-alive connections driven by ``httptools`` (the C
parser uvicorn uses) with the request bytes built once, so a request costs the generator a write
and a parse; gRPC through ``grpc.aio`` with pre-serialised requests and raw replies, spread over
several HTTP/2 connections (a multi-worker server gets connections, not calls, from its kernel).
Answers are kept as bytes and decoded after the schedule ends, so checking them costs no
generator time while it matters. Each worker process takes every P-th arrival of one schedule,
so P processes together send exactly the schedule. A worker records, per request, when it was
scheduled, when the scheduler dispatched it (its lag: the generator's own delay), when it went
on the wire (later only when every allowed connection was busy) and when its answer came back.

Size: the scheduler, the HTTP and gRPC drivers and the worker entry point share the
per-request record layout above; one module keeps them in step.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from benchmarks import answers

# Outcome codes per request: HTTP statuses as they are, gRPC codes as GRPC_BASE + code.
GRPC_BASE = 1000
CONNECTION_ERROR = -1
TIMEOUT = -2
UNREADABLE = -3
NOT_SENT = -4
OK_CODES = (200, GRPC_BASE)
REFUSED_CODES = (429, GRPC_BASE + 8)  # RESOURCE_EXHAUSTED
DEADLINE_CODES = (TIMEOUT, 504, 408, GRPC_BASE + 4)  # DEADLINE_EXCEEDED


def make_schedule(rate: float, seconds: float, arrival: str, seed: int = 0) -> np.ndarray:
    """Arrival times (s from the start, sorted) of ``rate * seconds`` requests.

    ``poisson``: the arrival times of a Poisson process given its count (that many uniform
    times, sorted), so the offered rate is exact and only the gaps are random, as in MLPerf's
    server scenario. ``constant``: evenly spaced (wrk2's constant throughput).
    """
    count = round(rate * seconds)
    if arrival == "constant":
        return np.arange(count, dtype=np.float64) / rate
    if arrival != "poisson":
        raise ValueError("arrival must be poisson or constant")
    return np.sort(np.random.default_rng(seed).uniform(0.0, seconds, count))


@dataclass(frozen=True)
class WorkerSpec:
    """One worker process's share of one load point (picklable)."""

    protocol: str  # rest | v2 | grpc | v2-grpc
    target: str  # http://host:port, or host:port for gRPC
    model: str
    version: int | None
    label: str | None
    data_path: str
    images_per_request: int
    request_ids: np.ndarray  # global request numbers (which payload each request carries)
    offsets: np.ndarray  # scheduled send times, seconds after start_at
    start_at: float  # time.monotonic() of the schedule's zero (CLOCK_MONOTONIC is system-wide)
    timeout_s: float
    max_connections: int
    grpc_channels: int = 4
    input_name: str = "image"
    output_name: str = "probabilities"
    payload_format: str = "row"
    # Raised priority (when allowed): on a host shared with the servers, a generator waiting
    # behind their threads (ONNX Runtime's spinning pool) would put its own lag in the numbers.
    nice: int = -10


class _Payloads:
    """Request bodies of one protocol and the test-set indices each carries (built once)."""

    def __init__(self, spec: WorkerSpec) -> None:
        with np.load(spec.data_path) as data:
            images = data["images"]
            self.model_to_dataset = data["model_to_dataset"]
        per_request, count = spec.images_per_request, len(images)
        self.indices = [
            np.arange(b * per_request, (b + 1) * per_request) % count
            for b in range(max(1, count // per_request))
        ]
        self.header_length: str | None = None
        self.bodies: list[bytes] = []
        for idx in self.indices:
            batch = images[idx]
            if spec.protocol == "rest":
                self.bodies.append(answers.encode_rest(batch, spec.payload_format == "columnar"))
                self.content_type = "application/json"
            elif spec.protocol == "v2":
                body, headers = answers.encode_v2(
                    batch, spec.input_name, spec.output_name, spec.payload_format != "json"
                )
                self.bodies.append(body)
                self.content_type = headers["Content-Type"]
                self.header_length = headers.get(answers.v2_wire.HEADER_LENGTH)
            elif spec.protocol == "v2-grpc":
                self.bodies.append(
                    answers.encode_v2_grpc(batch, spec.model, spec.version, spec.input_name)
                )
            else:
                self.bodies.append(
                    answers.encode_grpc(
                        batch, spec.model, spec.version, spec.label, spec.input_name
                    )
                )


_PAYLOAD_CACHE: dict[tuple[Any, ...], _Payloads] = {}


def _payloads(spec: WorkerSpec) -> _Payloads:
    key = (spec.protocol, spec.data_path, spec.images_per_request, spec.payload_format,
           spec.model, spec.version, spec.label)  # fmt: skip
    if key not in _PAYLOAD_CACHE:
        _PAYLOAD_CACHE.clear()
        _PAYLOAD_CACHE[key] = _Payloads(spec)
    return _PAYLOAD_CACHE[key]


class _Record:
    """Per-request times and outcomes of one worker, filled in place (no allocation per request)."""

    def __init__(self, count: int) -> None:
        self.dispatched = np.full(count, np.nan)
        self.sent = np.full(count, np.nan)
        self.done = np.full(count, np.nan)
        self.outcome = np.full(count, NOT_SENT, dtype=np.int32)
        self.bodies: list[Any] = [None] * count
        self.header_lengths: list[Any] = [None] * count
        self.outstanding = 0
        self.peak_outstanding = 0


# --------------------------------------------------------------------------- HTTP/1.1


class _Connection(asyncio.Protocol):
    """One keep-alive connection: one request at a time, parsed by httptools."""

    def __init__(self, pool: _HttpPool) -> None:
        import httptools

        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.slot = -1
        self.parts: list[bytes] = []
        self.header_length: bytes | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, slot: int, request: bytes) -> None:
        self.slot, self.parts, self.header_length = slot, [], None
        self.pool.record.sent[slot] = time.monotonic()
        assert self.transport is not None
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        import httptools

        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail()

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"inference-header-content-length":
            self.header_length = value

    def on_body(self, body: bytes) -> None:
        self.parts.append(body)

    def on_message_complete(self) -> None:
        slot, self.slot = self.slot, -1
        if slot < 0:
            return
        body = b"".join(self.parts)
        self.pool.finish(slot, self.parser.get_status_code(), body, self.header_length)
        if self.parser.should_keep_alive():
            self.pool.release(self)
        else:
            self._fail()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail()

    def _fail(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.pool.lost(self)
        if self.slot >= 0:
            slot, self.slot = self.slot, -1
            self.pool.finish(slot, CONNECTION_ERROR, None, None)


class _HttpPool:
    """Up to ``max_connections`` connections; a request waits for one only when all are busy."""

    def __init__(self, spec: WorkerSpec, record: _Record, payloads: _Payloads) -> None:
        parts = urlsplit(spec.target)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        base = parts.path.rstrip("/")
        if spec.protocol == "rest":
            path = base + answers.rest_path(spec.model, spec.version, spec.label)
        else:
            path = base + answers.v2_path(spec.model, spec.version)
        extra = f"Inference-Header-Content-Length: {payloads.header_length}\r\n" if (
            payloads.header_length is not None) else ""  # fmt: skip
        self.requests = [
            (
                f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: {payloads.content_type}\r\nContent-Length: {len(body)}\r\n"
                f"{extra}\r\n"
            ).encode()
            + body
            for body in payloads.bodies
        ]
        self.record = record
        self.max_connections = spec.max_connections
        self.idle: list[_Connection] = []
        self.all: set[_Connection] = set()
        self.opening = 0
        self.waiting: deque[int] = deque()
        self.opened = 0
        self.closing = False
        self.request_of: Callable[[int], bytes] = lambda slot: b""

    async def open(self, count: int) -> None:
        """Open ``count`` connections before the schedule starts."""
        await asyncio.gather(*(self._open() for _ in range(count)))

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        self.opening += 1
        try:
            _, connection = await loop.create_connection(
                lambda: _Connection(self), self.host, self.port
            )
        except OSError:
            self.opening -= 1
            if self.waiting:  # the server is not there: the request waiting for it fails
                self.finish(self.waiting.popleft(), CONNECTION_ERROR, None, None)
            return
        self.opening -= 1
        self.opened += 1
        self.all.add(connection)
        self.release(connection)

    def submit(self, slot: int) -> None:
        if self.idle:
            self.idle.pop().send(slot, self.request_of(slot))
            return
        self.waiting.append(slot)
        if len(self.all) + self.opening < self.max_connections:
            asyncio.get_running_loop().create_task(self._open())

    def release(self, connection: _Connection) -> None:
        if self.waiting:
            slot = self.waiting.popleft()
            connection.send(slot, self.request_of(slot))
        else:
            self.idle.append(connection)

    def lost(self, connection: _Connection) -> None:
        self.all.discard(connection)
        if connection in self.idle:
            self.idle.remove(connection)
        if (
            self.waiting
            and not self.closing
            and len(self.all) + self.opening < self.max_connections
        ):
            asyncio.get_running_loop().create_task(self._open())

    def finish(self, slot: int, status: int, body: bytes | None, header_length: Any) -> None:
        record = self.record
        if not np.isnan(record.done[slot]):
            return
        record.done[slot] = time.monotonic()
        record.outcome[slot] = status
        record.bodies[slot] = body
        record.header_lengths[slot] = header_length
        record.outstanding -= 1

    def close(self) -> None:
        self.closing = True
        for connection in list(self.all):
            if connection.transport is not None:
                connection.transport.abort()
        self.all.clear()
        self.idle.clear()


# --------------------------------------------------------------------------- gRPC


class _GrpcSender:
    """Pre-serialised Predict (or V2 ModelInfer) calls over ``grpc_channels`` channels, each its
    own connection."""

    def __init__(self, spec: WorkerSpec, record: _Record, payloads: _Payloads) -> None:
        import grpc

        from clients.v2_grpc import MODEL_INFER_METHOD
        from clients.wire import PREDICT_METHOD

        method = MODEL_INFER_METHOD if spec.protocol == "v2-grpc" else PREDICT_METHOD

        options = [
            ("grpc.use_local_subchannel_pool", 1),  # one TCP connection per channel
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
        ]
        address = spec.target.split("://", 1)[-1].rstrip("/")
        self.channels = [
            grpc.aio.insecure_channel(address, options=options)
            for _ in range(max(1, spec.grpc_channels))
        ]
        self.calls = [
            channel.unary_unary(method, request_serializer=None, response_deserializer=None)
            for channel in self.channels
        ]
        self.record, self.timeout_s = record, spec.timeout_s
        self.tasks: set[asyncio.Task[None]] = set()
        self.bodies = payloads.bodies
        self.request_of: Callable[[int], bytes] = lambda slot: b""

    async def open(self, count: int) -> None:
        await asyncio.gather(*(channel.channel_ready() for channel in self.channels))

    def submit(self, slot: int) -> None:
        task = asyncio.get_running_loop().create_task(self._call(slot))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _call(self, slot: int) -> None:
        import grpc

        record = self.record
        record.sent[slot] = time.monotonic()
        scheduled_left = self.timeout_s - (record.sent[slot] - record.dispatched[slot])
        try:
            reply = await self.calls[slot % len(self.calls)](
                self.request_of(slot), timeout=max(scheduled_left, 0.001)
            )
            outcome, body = GRPC_BASE, reply
        except grpc.aio.AioRpcError as error:
            outcome, body = GRPC_BASE + error.code().value[0], None
        except asyncio.CancelledError:
            return
        record.done[slot] = time.monotonic()
        record.outcome[slot] = outcome
        record.bodies[slot] = body
        record.outstanding -= 1

    def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()

    async def aclose(self) -> None:
        self.close()
        await asyncio.gather(*(channel.close() for channel in self.channels))


# --------------------------------------------------------------------------- one worker


async def _drive(spec: WorkerSpec) -> dict[str, Any]:
    payloads = _payloads(spec)
    count = len(spec.offsets)
    record = _Record(count)
    sender: _HttpPool | _GrpcSender
    if spec.protocol in ("grpc", "v2-grpc"):
        sender = _GrpcSender(spec, record, payloads)
        bodies = payloads.bodies
    else:
        sender = _HttpPool(spec, record, payloads)
        bodies = sender.requests
    ids = spec.request_ids
    sender.request_of = lambda slot: bodies[int(ids[slot]) % len(bodies)]
    # Connections open ahead of the schedule, but a server slow to accept them (still busy with
    # an earlier backlog) must not hold the schedule back: its requests wait for a connection,
    # which counts in their latency (connection wait), not in the generator's lag.
    opening = asyncio.ensure_future(sender.open(min(spec.max_connections, 16)))
    await asyncio.wait([opening], timeout=max(0.0, spec.start_at - time.monotonic()))
    offsets = spec.offsets + spec.start_at  # absolute monotonic times
    cpu_start = time.process_time()
    delay = spec.start_at - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
    index = 0
    while index < count:
        now = time.monotonic()
        while index < count and offsets[index] <= now:
            record.dispatched[index] = now
            record.outstanding += 1
            sender.submit(index)
            index += 1
            now = time.monotonic()
        record.peak_outstanding = max(record.peak_outstanding, record.outstanding)
        if index < count:
            # Timers have millisecond resolution: the lag this leaves is measured and reported.
            await asyncio.sleep(max(0.0, offsets[index] - time.monotonic()))
    schedule_end = time.monotonic()
    cpu_schedule = time.process_time() - cpu_start
    deadline = (offsets[-1] if count else schedule_end) + spec.timeout_s
    while record.outstanding > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    if isinstance(sender, _GrpcSender):
        await sender.aclose()
    else:
        sender.close()
    return _finish(spec, record, payloads, schedule_end - spec.start_at, cpu_schedule)


def _finish(
    spec: WorkerSpec, record: _Record, payloads: _Payloads, wall_s: float, cpu_s: float
) -> dict[str, Any]:
    """Times relative to the schedule's zero, timeouts applied, every answer decoded and checked."""
    latency = record.done - (spec.offsets + spec.start_at)
    late = np.isnan(record.done) | (latency > spec.timeout_s)
    outcome = record.outcome.copy()
    outcome[late & (outcome != NOT_SENT)] = TIMEOUT
    outcome[np.isnan(record.dispatched)] = NOT_SENT
    image_index: list[np.ndarray] = []
    served: list[np.ndarray] = []
    request_of_answer: list[int] = []
    answer_errors = 0
    for slot in np.flatnonzero(np.isin(outcome, OK_CODES)):
        body = record.bodies[slot]
        indices = payloads.indices[int(spec.request_ids[slot]) % len(payloads.indices)]
        try:
            if spec.protocol == "rest":
                outputs = answers.parse_rest(body, spec.output_name)
            elif spec.protocol == "v2":
                length = record.header_lengths[slot]
                outputs = answers.parse_v2(body, length.decode() if length else None,
                                           spec.output_name)  # fmt: skip
            elif spec.protocol == "v2-grpc":
                outputs = answers.parse_v2_grpc(body, spec.output_name)
            else:
                outputs = answers.parse_grpc(body, spec.output_name)
            classes = answers.served_classes(outputs, payloads.model_to_dataset)
            if len(classes) != len(indices):
                raise ValueError(f"{len(classes)} answers for {len(indices)} images")
        except Exception:  # any malformed answer counts, whatever broke
            answer_errors += 1
            outcome[slot] = UNREADABLE
            continue
        image_index.append(indices)
        served.append(classes)
        request_of_answer.append(int(slot))
    empty = np.zeros(0, np.int64)
    return {
        "request_ids": spec.request_ids,
        "scheduled": spec.offsets,
        "dispatched": record.dispatched - spec.start_at,
        "sent": record.sent - spec.start_at,
        "done": record.done - spec.start_at,
        "outcome": outcome,
        "image_index": np.concatenate(image_index) if image_index else empty,
        "served": np.concatenate(served) if served else empty,
        "answer_errors": answer_errors,
        "cpu_s": cpu_s,
        "wall_s": wall_s,
        "peak_outstanding": record.peak_outstanding,
    }


def run_worker(spec: WorkerSpec) -> dict[str, Any]:
    """Drive one worker's share of a load point on a fresh event loop (uvloop when present)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with contextlib.suppress(OSError):  # not allowed here: the niceness reported says so
        os.setpriority(os.PRIO_PROCESS, 0, spec.nice)
    try:
        import uvloop

        result = uvloop.run(_drive(spec))
    except ImportError:
        result = asyncio.run(_drive(spec))
    result["nice"] = os.getpriority(os.PRIO_PROCESS, 0)
    return result


def warm_worker(_: int = 0) -> int:
    """Import what a worker needs before the first load point (the pool's start-up)."""
    import grpc  # noqa: F401
    import httptools  # noqa: F401

    import clients.wire  # noqa: F401

    return os.getpid()

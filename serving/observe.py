"""What each request did: its id, its timings, and where that goes (the access log, traces).

Every request a transport accepts gets a :class:`RequestRecord` from :meth:`Observer.begin`: the
client's ``x-request-id`` when it sent a usable one, else a fresh id. The transport sets it as
the task's :data:`current` record, so the dataplane, the batcher and the error boundary fill it
in without it being passed through every call (each request runs in a task of its own: an HTTP
exchange, a gRPC call), and log lines about the request carry its id (:class:`RequestIdFilter`).
When the answer is written, the transport calls :meth:`Observer.end`, which hands the record to
the access log and the tracer, each only when it is on.

A record is *timed* only when something will read its times: the access log is on, or the
tracer sampled its request. The transports and the batcher read clocks and fill timings only for
a timed record, so with everything off a request pays one small object and its id (measured in
instructions per request: benchmarks/RESULTS.md). The access log's JSON is built and written on
its own thread; a full queue drops lines (counted in ``serving_access_log_dropped``), never delays
a request. The tracer (``serving/tracing.py``, OpenTelemetry's SDK) is imported only when tracing
is on.
"""

from __future__ import annotations

import collections
import contextvars
import itertools
import json
import logging
import os
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import orjson
from prometheus_client import Counter

#: the header (HTTP) and metadata key (gRPC) that carries a request's id, both ways
REQUEST_ID_HEADER = "x-request-id"
REQUEST_ID_HEADER_BYTES = REQUEST_ID_HEADER.encode()
#: W3C trace context's header and gRPC metadata key
TRACEPARENT_HEADER = "traceparent"
TRACEPARENT_HEADER_BYTES = TRACEPARENT_HEADER.encode()
#: a client's id longer than this, empty, or not printable ASCII is replaced by a fresh one
MAX_REQUEST_ID_CHARS = 128
#: the access log's queue: past this many unwritten lines, new ones are dropped and counted
ACCESS_LOG_QUEUE = 10_000
#: how often the access log's writer looks for lines when it found none (seconds)
WRITER_POLL_S = 0.05
#: the most lines one write carries (a write of whole lines is not torn by another worker's)
WRITE_BURST_LINES = 256

#: the record of the request this task serves (None outside a request)
current: contextvars.ContextVar[RequestRecord | None] = contextvars.ContextVar(
    "serving_request", default=None
)

# Fresh ids: a random per-process prefix and a counter (ids are unique across workers and
# restarts, and cost a fraction of a uuid4); a forked child draws a new prefix.
_prefix = ""
_counter: itertools.count[int] = itertools.count(1)


def _new_prefix() -> None:
    global _prefix, _counter
    _prefix = os.urandom(6).hex()
    _counter = itertools.count(1)


_new_prefix()
os.register_at_fork(after_in_child=_new_prefix)


def new_request_id() -> str:
    """A fresh request id: 12 hex digits of this process, '-', a hex counter."""
    return f"{_prefix}-{next(_counter):x}"


def accept_request_id(value: str | None) -> str:
    """The client's id when it is 1..MAX_REQUEST_ID_CHARS printable ASCII characters (it is
    echoed in a header and written in logs), else a fresh one."""
    if value and len(value) <= MAX_REQUEST_ID_CHARS and value.isascii() and value.isprintable():
        return value
    return new_request_id()


class BatchTiming(NamedTuple):
    """When the batch a request's rows ran in ran (perf_counter_ns), and its size."""

    #: ONNX Runtime's run: its start and end
    infer_start_ns: int
    infer_end_ns: int
    #: every request of the batch handed its rows (compute_start_ns to this: merge, run, split)
    end_ns: int
    #: rows before padding, and after
    rows: int
    padded_rows: int


class RequestRecord:
    """One request, from accepted to answered. Attributes the request never reached keep the
    class defaults (no per-instance cost). Times are ``time.perf_counter_ns()`` readings (0:
    that step did not happen); :data:`EPOCH_OFFSET_NS` turns them into wall-clock time."""

    # who and what
    model = ""
    version = ""
    #: the dataplane's status name ("OK", "NOT_FOUND", ...), and the HTTP status the answer had
    #: (for gRPC: the HTTP status of its gRPC code in serving.errors.STATUS_TABLE)
    status = ""
    http_status = 0
    #: the error's message, for a failed request
    error = ""
    rows = 0
    bytes_in = 0
    bytes_out = 0
    # when (perf_counter_ns; taken only for a timed record)
    start_ns = 0
    end_ns = 0
    decode_start_ns = 0
    decode_end_ns = 0
    #: joined the batcher's queue; its batch started (inputs merged)
    enqueued_ns = 0
    compute_start_ns = 0
    #: the batch its (last) rows ran in, shared by the batch's requests (None: it ran in none)
    batch: BatchTiming | None = None
    encode_start_ns = 0
    encode_end_ns = 0
    #: the access log or the tracer reads this record's times: only then are they taken
    timed = False
    #: sampled for the access log (errors are logged whatever the sample)
    logged = False
    #: the tracer's span for this request (None: not traced)
    span: Any = None
    #: the client's W3C traceparent, when it sent one and tracing is on
    traceparent: str | None = None

    def __init__(self, request_id: str, protocol: str, route: str, peer: Any = None) -> None:
        self.id = request_id
        self.protocol = protocol
        self.route = route
        #: (host, port) or a gRPC peer string; formatted only when the line is written
        self.peer = peer

    def as_log_line(self) -> dict[str, Any]:
        """The access log's fields (durations in milliseconds, to the microsecond). Built on the
        writer's thread, where it holds the GIL: integer arithmetic, no round()."""
        start = self.start_ns
        compute_start = self.compute_start_ns
        batch = self.batch
        line: dict[str, Any] = {
            "time": (start + EPOCH_OFFSET_NS) // 1000 / 1e6,
            "id": self.id,
            "peer": _peer(self.peer),
            "protocol": self.protocol,
            "route": self.route,
            "model": self.model,
            "version": self.version,
            "status": self.http_status,
            "code": self.status or ("OK" if self.http_status < 400 else "ERROR"),
            "rows": self.rows,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "queue_ms": (compute_start - self.enqueued_ns) // 1000 / 1000 if compute_start else 0.0,
            "batch": batch.rows if batch else 0,
            "compute_ms": (batch.end_ns - compute_start) // 1000 / 1000 if batch else 0.0,
            "total_ms": (self.end_ns - start) // 1000 / 1000,
        }
        if self.error:
            line["error"] = self.error
        return line


#: perf_counter_ns() + this = time.time_ns(), measured once at import (spans and log lines need
#: wall-clock times; perf_counter is what the hot path reads)
EPOCH_OFFSET_NS = time.time_ns() - time.perf_counter_ns()


def _json_line(line: dict[str, Any]) -> bytes:
    """One access-log line: orjson (about 5x the standard library's speed), or, for a string
    orjson refuses (a lone surrogate from a client's bytes), the standard library's escapes."""
    try:
        return orjson.dumps(line)
    except TypeError:
        return json.dumps(line).encode()


def _peer(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return str(peer) if peer else ""


class BatchRecord:
    """One model execution, for the tracer: its times, rows, how many requests it served and
    the records of those that are timed."""

    __slots__ = (
        "end_ns",
        "infer_end_ns",
        "infer_start_ns",
        "model",
        "padded",
        "records",
        "requests",
        "rows",
        "start_ns",
        "version",
    )  # fmt: skip

    def __init__(
        self, model: str, version: int, rows: int, padded: int, start_ns: int,
        infer_start_ns: int, infer_end_ns: int, end_ns: int, records: list[RequestRecord],
        requests: int,
    ) -> None:  # fmt: skip
        self.model, self.version, self.rows, self.padded = model, version, rows, padded
        self.start_ns, self.infer_start_ns = start_ns, infer_start_ns
        self.infer_end_ns, self.end_ns = infer_end_ns, end_ns
        self.records, self.requests = records, requests


class Tracer(Protocol):
    """What the observer needs of a tracer (``serving.tracing.OtelTracer``)."""

    def start(self, record: RequestRecord) -> None:
        """Decide whether ``record`` is traced (its traceparent, the sample ratio); if so, set
        ``record.span``."""

    def batch(self, batch: BatchRecord) -> None:
        """One batch ran: a span linked to every traced request in it."""

    def end(self, record: RequestRecord) -> None:
        """``record``'s request was answered: its span and child spans."""

    def close(self) -> None:
        """Flush and stop exporting."""


class AccessLog:
    """One JSON line per logged request, written by a thread of its own.

    ``submit`` (on the event loop) appends the finished record to a bounded deque: a full deque
    drops the line and counts it, so a slow disk never delays a request. The writer builds the
    JSON and writes whole lines with one ``os.write`` per burst on an ``O_APPEND`` descriptor, so
    the workers of ``--workers N`` can share one file without tearing each other's lines.
    """

    def __init__(
        self, target: str, sample: float, dropped: Counter | None = None,
        capacity: int = ACCESS_LOG_QUEUE,
    ) -> None:  # fmt: skip
        self.sample = sample
        self.target = target
        self._dropped = dropped
        self.dropped = 0
        self.capacity = capacity
        self._lines: collections.deque[RequestRecord] = collections.deque()
        self._stop = threading.Event()
        if target == "stderr":
            self._fd, self._owned = sys.stderr.fileno(), False
        else:
            path = Path(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._owned = True
        self._thread = threading.Thread(target=self._write, name="access-log", daemon=True)
        self._thread.start()

    def sampled(self) -> bool:
        """Whether a request is logged even if it succeeds."""
        return self.sample >= 1.0 or (self.sample > 0.0 and random.random() < self.sample)

    def submit(self, record: RequestRecord) -> None:
        if len(self._lines) >= self.capacity:
            self.dropped += 1
            if self._dropped is not None:
                self._dropped.inc()
            return
        self._lines.append(record)

    def _write(self) -> None:
        lines = self._lines
        while True:
            if not lines:
                if self._stop.is_set():
                    return
                self._stop.wait(WRITER_POLL_S)
                continue
            burst: list[bytes] = []
            while lines and len(burst) < WRITE_BURST_LINES:
                burst.append(_json_line(lines.popleft().as_log_line()))
            burst.append(b"")
            data = b"\n".join(burst)
            try:
                while data:
                    data = data[os.write(self._fd, data) :]
            except OSError as exc:  # a full disk, a closed descriptor: keep serving
                logging.getLogger(__name__).warning("access log: %s", exc)

    def close(self) -> None:
        """Write what is queued, then stop the writer (and close the file)."""
        self._stop.set()
        self._thread.join(timeout=10)
        if self._owned:
            os.close(self._fd)


class Observer:
    """Begins and ends every request's record; feeds the access log and the tracer when on."""

    def __init__(self, access_log: AccessLog | None = None, tracer: Tracer | None = None) -> None:
        self.access_log = access_log
        self.tracer = tracer

    def begin(
        self, protocol: str, route: str, request_id: str | None, peer: Any = None,
        traceparent: str | None = None, *, make_current: bool = True,
    ) -> RequestRecord:  # fmt: skip
        """A record for a request just accepted, set as this task's :data:`current` (unless
        ``make_current`` is false: a caller outside the request's task sets it there)."""
        if not (
            request_id
            and len(request_id) <= MAX_REQUEST_ID_CHARS
            and request_id.isascii()
            and request_id.isprintable()
        ):  # accept_request_id, inline: this runs for every request
            request_id = f"{_prefix}-{next(_counter):x}"
        record = RequestRecord(request_id, protocol, route, peer)
        if self.access_log is not None:
            record.timed = True
            record.start_ns = time.perf_counter_ns()
            record.logged = self.access_log.sampled()
        if self.tracer is not None:
            record.traceparent = traceparent
            self.tracer.start(record)  # sets start_ns if it traces a request the log does not
            if record.span is not None:
                record.timed = True
        if make_current:
            current.set(record)
        return record

    def end(self, record: RequestRecord) -> None:
        """``record``'s answer went out (or was refused): log it and end its trace. Callers may
        skip it for a record that is not timed (nothing reads it)."""
        if not record.timed:
            return
        record.end_ns = time.perf_counter_ns()
        if self.access_log is not None and (record.logged or record.http_status >= 400):
            self.access_log.submit(record)
        if record.span is not None and self.tracer is not None:
            self.tracer.end(record)

    def refused(
        self, protocol: str, http_status: int, status: str, message: str, peer: Any = None
    ) -> RequestRecord:
        """A request refused at the connection level (before any route saw it), logged whatever
        the sample; its record is returned for the caller's answer id."""
        record = RequestRecord(new_request_id(), protocol, "", peer)
        record.http_status, record.status, record.error = http_status, status, message
        if self.access_log is not None:
            record.timed = True
            record.start_ns = time.perf_counter_ns()
        self.end(record)
        return record

    def close(self) -> None:
        if self.access_log is not None:
            self.access_log.close()
        if self.tracer is not None:
            self.tracer.close()


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every log record ("-" outside a request) and, for records logged
    while serving a request, appends ``[request <id>]`` to the message, so every line about a
    request names it whatever the handler's format."""

    def filter(self, record: logging.LogRecord) -> bool:
        request = current.get()
        record.request_id = request.id if request is not None else "-"
        if request is not None and not getattr(record, "_request_tagged", False):
            # %-escaped: a client's id may hold '%', and the message is formatted with args
            record.msg = f"{record.msg} [request {request.id.replace('%', '%%')}]"
            record._request_tagged = True
        return True

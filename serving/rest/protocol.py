"""uvicorn's httptools protocol with the connection hygiene a public-facing server needs.

uvicorn bounds neither what a client may send nor how long it may take: httptools keeps a header
in memory until it ends, a connection that sends nothing or half a request is held forever, and
there is no bound on open connections. On shutdown uvicorn closes idle keep-alive connections at
once, which resets a request the client had already written. :class:`GatewayHttpProtocol` adds:

- a bound on a request's head (``max_header_bytes``: 431 and the connection closes), counted
  while the head arrives, so a head costs at most the limit plus one read;
- a bound on what follows the head: a chunked body's framing and trailers count against the
  head limit (431; httptools keeps a trailer in memory until it ends, growing it by
  concatenation on the event loop), and the bytes read for one request after its head against
  the body limit plus the head limit (413), so one request costs at most head limit + body
  limit plus one read, whatever its chunks and trailers;
- a deadline for the head (``header_timeout_s`` from the connection's start or the request's first
  byte) and for the body (``body_timeout_s`` from the end of the head): 408 and close, so slow
  clients cannot hold connections (checked by one sweep per server, a quarter of the shortest
  timeout apart, at most a second); a request pipelined behind one still being answered is not
  late while it waits (its deadline is looked at again later, and its body's time starts when
  its turn comes and reading resumes), so no 408 takes an answer's place;
- a bound on open connections (``max_connections``): beyond it a new connection gets 503 at once;
- the keep-alive timeout (``keep_alive_timeout_s``) as one more deadline of the sweep, where
  uvicorn arms and cancels a timer around every request;
- a bound on requests queued behind an unanswered one (``max_pipelined_requests``): uvicorn
  parses every request a read holds and queues each, and reads again after every answer, so a
  client pipelining faster than it reads would grow the queue without bound; beyond the bound
  the connection is reset (nothing can be answered ahead of the answers still owed);
- a bound on answers left unread (``write_timeout_s``): a connection whose unsent bytes stay
  over the write buffer's high-water mark, or stay unsent after it was closed, with no progress
  for that long is reset. uvicorn waits for such a client for ever, so a client that sends
  requests and never reads would hold its connection slot (and what is queued on it) for good;
- a graceful shutdown that loses nothing already received: a request in progress is answered
  with ``Connection: close``, and an idle keep-alive connection is closed only after a short grace
  (``drain_idle_grace_s``) in which a request already on its way is still answered;
- the hot routes (POST ``:predict`` and ``/infer``) served by the protocol itself, through the
  front door's own checks and handlers (``rest/front.py``) but without an ASGI cycle: no scope,
  no receive/send messages, one write for the response. Everything else, and a hot request that
  arrives pipelined behind an unanswered one, takes uvicorn's ASGI path to the front door, which
  answers it the same way. Backpressure as on that path: while a client leaves its answers
  unread (the write buffer over its high-water mark) no hot answer is written, and a new request
  takes the ASGI path, whose cycle waits likewise and queues what follows with reading paused.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from serving.errors import HttpError
from serving.metrics import GatewayMetrics
from serving.observe import Observer, RequestRecord, current
from serving.rest.front import GatewayFront, HotMatch
from serving.rest.inference import RawResponse, add_request_id, error_response

HEADER_TOO_LARGE = 431


@dataclass(frozen=True)
class HttpLimits:
    """Per-connection limits of the HTTP server."""

    max_header_bytes: int = 16 * 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 2048
    drain_idle_grace_s: float = 1.0
    keep_alive_timeout_s: float = 5.0
    write_timeout_s: float = 30.0
    max_pipelined_requests: int = 1024
    #: the body limit (the front door refuses a body over it, 413); with ``max_header_bytes`` it
    #: bounds the bytes read for one request after its head (0: no such bound)
    max_body_bytes: int = 0


class _HeadTooLarge(httptools.HttpParserError):
    """Raised from a parser callback: httptools stops, uvicorn's error path answers (431)."""


class _TooManyPipelined(httptools.HttpParserError):
    """Raised from a parser callback: httptools stops, uvicorn's error path resets the
    connection (no answer can go out ahead of those still owed)."""


class _NoEvent:
    """Stands in for a cycle's ``message_event``: nobody waits on a hot exchange's body."""

    @staticmethod
    def set() -> None:
        pass


class _HotExchange:
    """A hot request the protocol serves itself. It stands where uvicorn keeps a request's
    ``RequestResponseCycle`` (``protocol.cycle``) and has the fields uvicorn's connection code and
    the deadlines read there, so pipelining, disconnects and the drain treat both alike."""

    __slots__ = (
        "chunks",
        "disconnected",
        "headers",
        "keep_alive",
        "record",
        "response_complete",
        "response_started",
        "route",
        "size",
    )
    message_event = _NoEvent()

    def __init__(
        self, route: HotMatch, headers: dict[bytes, bytes], keep_alive: bool, record: RequestRecord
    ) -> None:
        self.route = route
        self.headers = headers
        self.keep_alive = keep_alive
        #: what the request did (observe.RequestRecord): ended when it is answered
        self.record = record
        self.chunks: list[bytes] = []
        self.size = 0
        self.disconnected = False
        self.response_started = False
        self.response_complete = False


_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class GatewayHttpProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with bounded heads, read deadlines, a connection bound and a drain that
    resets nothing (see the module doc)."""

    limits = HttpLimits()
    #: the front door whose hot routes this protocol serves; None: every request goes to ASGI
    front: GatewayFront | None = None
    #: logs (and ``metrics`` counts) the requests refused at the connection level
    observer = Observer()
    metrics: GatewayMetrics | None = None
    _sweeping = False  # per protocol class, i.e. per server (see gateway_protocol)
    # uvicorn's default headers (server, date) as bytes, for the list object they were built from
    _default_headers: tuple[object, bytes] = (None, b"")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_incomplete = True  # a connection starts by waiting for a request head
        self._head_bytes = 0  # bytes of earlier reads that were all head
        self._message_ended = False  # a request ended within the read being parsed
        self._refused = False  # a 431/408/503 went out: the connection is closing
        self._draining = False
        self._received_any = False
        self._read_bytes = 0  # size of the read being parsed
        # Bytes read after the current request's head (from the read after the one where it
        # ended: an under-count by at most one read), and its body's bytes among them: the rest
        # is chunk framing and trailers. See _check_after_head.
        self._after_head_bytes = 0
        self._body_bytes = 0
        # The current deadline: a monotonic instant and what to do then. Deadlines are checked
        # by one sweep per server (see _sweep), not a timer per request: arming a timer three
        # times per request cost the hot path measurably.
        self._deadline_at: float | None = None
        self._on_deadline: Any = None
        # Unsent answers the client does not read: since when, and how many bytes at the last
        # sweep (fewer is progress). See _check_unread_answers.
        self._unread_since: float | None = None
        self._unread_bytes = 0
        self._pipeline_overflowed = False  # more than max_pipelined_requests queued: reset
        self._running: Any = None  # the ASGI cycle started last (uvicorn keeps the newest only)

    # --- connections ----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(503, "too many open connections; retry later")
            return
        self._arm(self.limits.header_timeout_s, self._head_timed_out)
        self._ensure_sweep()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        # uvicorn marks only the newest request (self.cycle) disconnected. The one running
        # before it and those queued must not answer either: uvloop raises on a write to the
        # closed transport, and uvicorn logs that as an exception in the application.
        for cycle in (self._running, *(queued for queued, _ in self.pipeline)):
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
        super().connection_lost(exc)

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    # --- parser callbacks -----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        # uvicorn's builds the ASGI scope here; it is built only for a request that takes the
        # ASGI path (_build_scope), a hot one needs none.
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self._head_incomplete = True
        # A head that starts in a read where another request ended may span that whole read.
        self._head_bytes = self._read_bytes if self._message_ended else 0
        self._arm(self.limits.header_timeout_s, self._head_timed_out)

    def on_headers_complete(self) -> None:
        self._head_incomplete = False
        # The head is at most the reads counted for it plus this read; measure it exactly only
        # when that bound is over the limit (a head that arrived with a big body, say).
        limit = self.limits.max_header_bytes
        if self._head_bytes + self._read_bytes > limit:
            size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
            if size > limit:
                self._refused = True
                raise _HeadTooLarge("request head too large")
        self._arm(self.limits.body_timeout_s, self._body_timed_out)
        self._after_head_bytes = -self._read_bytes  # data_received adds this read whole
        self._body_bytes = 0
        if self.front is not None and self._begin_hot():
            return
        self._build_scope()
        super().on_headers_complete()
        if self._draining and self.cycle is not None:
            self.cycle.keep_alive = False  # answered with Connection: close, then closed
        if len(self.pipeline) > self.limits.max_pipelined_requests:
            self._pipeline_overflowed = True
            raise _TooManyPipelined("too many pipelined requests")

    def _build_scope(self) -> None:
        """uvicorn's scope for this request, built by uvicorn's own code, over what the head
        has collected so far."""
        url, headers, expect_100_continue = self.url, self.headers, self.expect_100_continue
        super().on_message_begin()  # resets those three and builds the scope
        self.url, self.expect_100_continue = url, expect_100_continue
        self.headers = self.scope["headers"] = headers

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        exchange = self.cycle
        if type(exchange) is not _HotExchange:
            super().on_body(body)
            return
        if exchange.response_complete:  # refused already: the rest of the body is dropped
            return
        exchange.size += len(body)
        if exchange.size > self.front.max_body_bytes:  # type: ignore[union-attr]
            self.front.count_refusal(413)  # type: ignore[union-attr]
            self._answer(exchange, self.front.body_too_large())  # type: ignore[union-attr]
            return
        exchange.chunks.append(body)

    def on_message_complete(self) -> None:
        self._disarm()
        exchange = self.cycle
        if type(exchange) is _HotExchange:
            if not exchange.response_complete:
                chunks = exchange.chunks
                body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                exchange.chunks = []
                task = self.loop.create_task(self._serve_hot(exchange, body))
                task.add_done_callback(self.tasks.discard)
                self.tasks.add(task)  # uvicorn's shutdown waits for these
        else:
            super().on_message_complete()
        if exchange is not None and exchange.response_complete and not self.pipeline:
            # Answered before its body ended (a refusal): idle from now on.
            self._arm(self.limits.keep_alive_timeout_s, self._keep_alive_expired)
        self._head_incomplete = True  # what follows on this connection is the next request's head
        # The rest of this read may be the next request's head: count it all (an over-count).
        self._head_bytes = self._read_bytes
        self._message_ended = True

    def data_received(self, data: bytes) -> None:
        self._message_ended = False
        self._received_any = True
        self._read_bytes = len(data)
        super().data_received(data)
        # A head that has not ended: count the reads that were nothing but head (a read in which
        # a request ended was counted whole when it ended). So a head that never ends is refused
        # after at most the limit plus one read.
        if (
            self._head_incomplete
            and not self._message_ended
            and not self._refused
            and self.transport is not None
            and not self.transport.is_closing()
        ):
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse_head()
        elif (
            not self._head_incomplete
            and not self._message_ended
            and not self._refused
            and self.transport is not None
            and not self.transport.is_closing()
        ):
            self._after_head_bytes += len(data)
            self._check_after_head()

    def send_400_response(self, msg: str) -> None:
        if self._pipeline_overflowed:  # our callback stopped the parser: reset, see the class
            for cycle, _ in self.pipeline:
                cycle.disconnected = True
            self.pipeline.clear()
            self.transport.abort()
            return
        if self._refused:  # our callback stopped the parser: answer 431, not 400
            self._refuse_head()
            return
        # httptools refused the bytes (a malformed head or chunk, a Content-Length beyond 64
        # bits): 400 with the gateway's error body, where uvicorn's is plain text.
        self._refuse(
            400,
            "invalid HTTP request: malformed request line, header or chunk framing "
            "(a Content-Length must be a decimal number below 2**64)",
        )

    # --- the hot routes -------------------------------------------------------------------------
    def _begin_hot(self) -> bool:
        """At the end of a head: take the request if it is a hot one that can be served now (no
        unanswered request before it on this connection); False leaves it to uvicorn."""
        parser = self.parser
        if parser.get_method() != b"POST" or parser.should_upgrade() or self.root_path:
            return False
        if self.cycle is not None and not self.cycle.response_complete:
            return False  # pipelined behind an unanswered request: uvicorn queues it in order
        if self.flow.write_paused:
            # The client leaves its answers unread: uvicorn's cycle waits for the drain before
            # it answers, and queues what follows with reading paused; a refusal written here,
            # from the parser, would not wait.
            return False
        url = self.url
        # Origin-form only, no percent-escapes and no fragment: those take uvicorn's path, which
        # decodes escapes and drops a fragment (never valid in a request-target).
        if url[:1] != b"/" or b"%" in url or b"#" in url:
            return False
        try:
            path = url.split(b"?", 1)[0].decode("ascii")
        except UnicodeDecodeError:
            return False
        front = self.front
        assert front is not None
        route = front.hot_route(path)
        if route is None:
            return False
        headers = dict(self.headers)  # lower-case names; of repeated headers the last counts
        keep_alive = (
            not self._draining and parser.get_http_version() != "1.0" and parser.should_keep_alive()
        )
        # Not current here: this callback is not the request's task (_serve_hot sets it there).
        record = front.begin(headers, self.client, route, make_current=False)
        exchange = _HotExchange(route, headers, keep_alive, record)
        self.cycle = exchange  # type: ignore[assignment]
        refusal = front.refuse_head(path, headers)
        if refusal is not None:  # rare: again, with the record current, for the body's id
            token = current.set(record)
            try:
                refusal = front.refuse_head(path, headers)
            finally:
                current.reset(token)
        if refusal is not None:
            front.count_refusal(refusal.status)
            self._answer(exchange, refusal)
        elif self.expect_100_continue:
            self.transport.write(_CONTINUE)
        return True

    async def _serve_hot(self, exchange: _HotExchange, body: bytes) -> None:
        front = self.front
        assert front is not None  # a hot exchange exists only with a front door
        current.set(exchange.record)  # this task serves that request
        exchange.record.bytes_in = len(body)
        try:
            try:
                response = await front.serve_hot(exchange.route, exchange.headers, body)
            except Exception as exc:  # the handlers answer their own errors; this is a bug
                response = error_response(exc, "hot route")
            if self.flow.write_paused and not exchange.disconnected:
                # As uvicorn's cycle does: no write while the client leaves earlier answers
                # unread; meanwhile the exchange is open, so what follows queues unread.
                await self.flow.drain()
        except BaseException:  # cancelled (the server stopped): nothing can be answered
            if not self.transport.is_closing():
                self.transport.close()
            raise
        self._answer(exchange, response)

    def _answer(self, exchange: _HotExchange, response: RawResponse) -> None:
        """Write ``response`` in one go and finish the exchange as uvicorn finishes a cycle."""
        exchange.response_started = exchange.response_complete = True
        record = exchange.record
        record.http_status = response.status
        if exchange.disconnected or self.transport.is_closing():
            record.http_status = 499  # the client has gone: nobody read the answer
            self.front.observer.end(record)  # type: ignore[union-attr]
            return
        add_request_id(response, record.id)
        if record.timed:  # else nothing reads it
            record.bytes_out = len(response.body)
            self.front.observer.end(record)  # type: ignore[union-attr]
        defaults = self.server_state.default_headers
        cached_for, default_bytes = self._default_headers
        if cached_for is not defaults:  # uvicorn rebuilds the list when the date changes
            default_bytes = b"".join(name + b": " + value + b"\r\n" for name, value in defaults)
            type(self)._default_headers = (defaults, default_bytes)
        self.transport.write(http_response(response, exchange.keep_alive, default_bytes))
        if not exchange.keep_alive:
            self.transport.close()
        self.on_response_complete()

    def on_response_complete(self) -> None:
        """uvicorn's, except that the keep-alive timeout is the connection's deadline, checked by
        the sweep, instead of a timer armed and cancelled around every request."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            if self._deadline_at is not None and self._on_deadline == self._body_timed_out:
                # A body uvicorn stopped reading while its request queued: its time starts now.
                self._arm(self.limits.body_timeout_s, self._body_timed_out)
        elif self._deadline_at is None:  # else the next request's head has begun: its deadline
            self._arm(self.limits.keep_alive_timeout_s, self._keep_alive_expired)

    def _keep_alive_expired(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    # --- shutdown -------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Called by uvicorn for every connection when the server stops."""
        self._draining = True
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
            return
        # Idle between requests: the client may have its next request on the wire already, and
        # closing now would reset it. Answer what arrives within the grace, then close.
        self.loop.call_later(self.limits.drain_idle_grace_s, self._close_if_idle)

    def _close_if_idle(self) -> None:
        idle = (self.cycle is None or self.cycle.response_complete) and (
            self._deadline_at is None or self._on_deadline == self._keep_alive_expired
        )
        if idle and not self.transport.is_closing():
            self.transport.close()
        # else: a request arrived, and its response closes the connection (keep_alive False).

    # --- deadlines and refusals -----------------------------------------------------------------
    def _arm(self, seconds: float, callback: Any) -> None:
        self._deadline_at = self.loop.time() + seconds
        self._on_deadline = callback

    def _disarm(self) -> None:
        self._deadline_at = None

    def _ensure_sweep(self) -> None:
        cls = type(self)
        if not cls._sweeping:
            cls._sweeping = True
            self.loop.call_later(cls._sweep_interval(), cls._sweep, self.loop, self.connections)

    @classmethod
    def _sweep_interval(cls) -> float:
        limits = cls.limits
        shortest = min(
            limits.header_timeout_s,
            limits.body_timeout_s,
            limits.keep_alive_timeout_s,
            limits.write_timeout_s,
        )
        return min(1.0, max(0.02, shortest / 4))

    @classmethod
    def _sweep(cls, loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
        """Fire the deadlines that have passed and reset connections whose answers go unread;
        runs while the server has connections."""
        now = loop.time()
        for connection in list(connections):
            if not isinstance(connection, GatewayHttpProtocol):
                continue  # upgraded to another protocol (WebSocket): uvicorn's own
            at = connection._deadline_at
            if at is not None and at <= now:
                connection._deadline_at = None
                connection._on_deadline()
            connection._check_unread_answers(now)
        if connections:
            loop.call_later(cls._sweep_interval(), cls._sweep, loop, connections)
        else:
            cls._sweeping = False

    def _check_unread_answers(self, now: float) -> None:
        """Reset the connection once its unsent answers have made no progress for
        ``write_timeout_s`` while the client should be reading them: writes paused (over the
        high-water mark) or the connection closed with bytes still to send."""
        transport = self.transport
        unsent = transport.get_write_buffer_size()
        if not unsent or not (self.flow.write_paused or transport.is_closing()):
            self._unread_since = None
            return
        if self._unread_since is None or unsent < self._unread_bytes:
            self._unread_since = now  # the first look, or the client read some: start again
        elif now - self._unread_since >= self.limits.write_timeout_s:
            transport.abort()
        self._unread_bytes = unsent

    def _head_timed_out(self) -> None:
        if self.transport.is_closing() or not self._head_incomplete:
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The request before this head is still being answered: a 408 now would go out in
            # its place. Look again later (that answer is bounded by the request deadline).
            self._arm(self.limits.header_timeout_s, self._head_timed_out)
            return
        if not self._received_any:  # a connection that never said anything: just close it
            self._refused = True
            self.transport.close()
            return
        self._refuse(408, f"request head not received within {self.limits.header_timeout_s:g} s")

    def _body_timed_out(self) -> None:
        if self.transport.is_closing() or self._head_incomplete:
            return
        if self.pipeline:
            # This request waits its turn behind an unanswered one (uvicorn stopped reading its
            # body meanwhile): as for a head, not late yet, and a 408 would jump the queue.
            self._arm(self.limits.body_timeout_s, self._body_timed_out)
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The application waiting for the body sees the client gone.
            cycle.disconnected = True
            cycle.message_event.set()
        if cycle is not None and cycle.response_started:
            # Answered, or answering, already (a 413 or 401 goes out before the body ends): a
            # 408 would be a second answer to one request. Close without one.
            self._refused = True
            self.transport.close()
            return
        self._refuse(408, f"request body not received within {self.limits.body_timeout_s:g} s")

    def _check_after_head(self) -> None:
        """Refuse a request still arriving whose framing and trailers (the bytes after its head
        that are not body) pass the head limit (431), or whose bytes after its head pass the
        body limit plus the head limit (413: a hot route's body refused already is still read
        and dropped until then)."""
        limits = self.limits
        framing = self._after_head_bytes - self._body_bytes
        if framing > limits.max_header_bytes:
            self._refuse_request(
                HEADER_TOO_LARGE,
                "chunk framing and trailers of the request exceed the limit of "
                f"{limits.max_header_bytes} bytes (--max-header-bytes)",
            )
            return
        max_body = limits.max_body_bytes
        if max_body and self._after_head_bytes > max_body + limits.max_header_bytes:
            self._refuse_request(
                413, f"request body exceeds the limit of {max_body} bytes (--max-body-bytes)"
            )

    def _refuse_request(self, status: int, message: str) -> None:
        """Refuse the request whose body is arriving: ``status`` unless it was answered (or is
        being answered) already, then the connection closes; the application waiting for its
        body sees the client gone."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        if cycle is not None and cycle.response_started:
            self._refused = True
            self._disarm()
            self.transport.close()
            return
        self._refuse(status, message)

    def _refuse_head(self) -> None:
        self._refuse(
            HEADER_TOO_LARGE,
            f"request line and headers exceed the limit of {self.limits.max_header_bytes} bytes "
            "(--max-header-bytes)",
        )

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` with the gateway's error body and close the connection; the refusal
        is counted (serving_connection_refusals) and logged whatever the access log's sample."""
        self._refused = True
        self._disarm()
        if self.metrics is not None:
            self.metrics.count_refusal("http", status)
        if self.transport.is_closing():
            return
        record = self.observer.refused("http", status, "", message, self.client)
        token = current.set(record)
        try:
            refusal = error_response(HttpError(message, status), "connection")
        finally:
            current.reset(token)
        add_request_id(refusal, record.id)
        self.transport.write(http_response(refusal, keep_alive=False))
        self.transport.close()


def http_response(response: RawResponse, keep_alive: bool, default_headers: bytes = b"") -> bytes:
    """``response`` as HTTP/1.1 bytes, one write: status line, ``default_headers`` (already
    framed), content type and length, its own headers, ``Connection: close`` unless kept alive."""
    body = response.body
    parts = [
        STATUS_LINE[response.status],
        default_headers,
        b"content-type: ",
        response.content_type,
        b"\r\ncontent-length: ",
        str(len(body)).encode(),
        b"\r\n",
    ]
    for name, value in response.headers:
        parts += (name, b": ", value, b"\r\n")
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    parts += (b"\r\n", body)
    return b"".join(parts)


def gateway_protocol(
    limits: HttpLimits,
    front: GatewayFront | None = None,
    observer: Observer | None = None,
    metrics: GatewayMetrics | None = None,
) -> type[asyncio.Protocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` with these limits; with ``front``, it
    serves the front door's hot routes itself. ``observer`` logs, and ``metrics`` counts, the
    requests it refuses itself (408, 413, 431, 503, 400)."""
    attributes = {
        "limits": limits, "front": front, "observer": observer or Observer(), "metrics": metrics,
    }  # fmt: skip
    return type("GatewayHttpProtocol", (GatewayHttpProtocol,), attributes)

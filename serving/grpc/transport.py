"""gRPC over HTTP/2, served by the gateway's own asyncio protocol (the default transport).

Why not grpc.aio: its per-call Python (the completion-queue poller handing each event to the
loop, the call object, metadata conversion, several awaits per call) cost about 0.37M
instructions per call on top of the gateway's work, a third of a whole V2 request over HTTP
(benchmarks/RESULTS.md, "Issue 36"). This protocol reads HTTP/2 frames (RFC 9113) on the event
loop, decodes header blocks with ``hpack`` (python-hyper's HPACK, RFC 7541) and writes its own
answers from precomputed header blocks (no dynamic table), so a unary call costs a few frames'
parsing and one task. ``--grpc-transport grpcio`` keeps grpc.aio.

What it serves: unary calls (every TF Serving and KServe V2 method the gateway has, and
``grpc.health.v1.Health/Check``) and server-streaming calls (``Health/Watch``), each handler
``async (request bytes, GrpcCall) -> answer bytes | None`` as grpc.aio's generic handlers are
(``GrpcCall`` has the ``ServicerContext`` methods the handlers use).

Limits, each checked before the work it bounds:

- frames no larger than the ``SETTINGS_MAX_FRAME_SIZE`` it announces (16 KiB);
- a header block (HEADERS and its CONTINUATIONs) no larger than ``max_header_bytes`` before it is
  decoded, and the decoded list no larger either (``hpack``'s bound); beyond: GOAWAY;
- at most ``max_streams`` calls per connection whose handlers have not finished, a call reset by
  its client included (the "rapid reset" attack: a reset does not free the work it started);
  a stream beyond the bound is refused (REFUSED_STREAM, which clients retry);
- a message's declared length against ``max_message_bytes`` as soon as its 5-byte prefix
  arrives (RESOURCE_EXHAUSTED), before its bytes are buffered;
- flow control: the peer may send only what the windows allow, and the connection's window is
  given back only while the bodies still arriving hold at most ``max_buffered_bytes`` on
  this connection and ``max_server_buffered_bytes`` on all of them (else as they end, or at the
  next sweep);
- a body must arrive within ``body_timeout_s`` of its headers, the preface within
  ``header_timeout_s``; answers left unread for ``write_timeout_s`` close the connection; while
  the connection's write buffer is over its high-water mark nothing more is read from it, so
  PING and SETTINGS floods queue at most that buffer;
- at most ``max_connections`` connections (beyond: GOAWAY and close), and with
  ``max_concurrent_calls`` the calls handled at once by the whole server (more wait, unread);
- a compressed message is inflated off the event loop, into at most ``max_message_bytes``.

Every refusal before a handler (a trailers-only answer, REFUSED_STREAM, a GOAWAY for an error, a
connection over the bound, a timeout) is handed to the server's ``refused`` callback with the HTTP
status it counts as, like the HTTP server's refusals (``serving_connection_refusals``); all but
REFUSED_STREAM (flow control that clients retry) are also logged.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import quote

import grpc
import hpack

log = logging.getLogger(__name__)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# frame types (RFC 9113, section 6)
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
# flags
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
# error codes (section 7)
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL = 0x5, 0x6, 0x7, 0x8
COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x9, 0xB
# settings (section 6.5.2)
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE = 1, 2, 3, 4
MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = 5, 6

DEFAULT_WINDOW = 65_535
MAX_WINDOW = 2**31 - 1
#: the largest frame we accept (and announce: the protocol's minimum, what clients send anyway)
OUR_MAX_FRAME = 16_384
#: the window each stream and the connection get (large requests need no round trip per 64 KiB)
OUR_WINDOW = 4 * 1024 * 1024

Handler = Callable[[bytes, "GrpcCall"], Awaitable[bytes | None]]

#: how long after a call's deadline the transport ends it itself: the handlers watch the
#: deadline (``GrpcCall.time_remaining``) and answer DEADLINE_EXCEEDED, counted as such; the
#: transport's timer is the backstop (a call still waiting for a slot, a handler that ignores
#: it), whose cancelled handler counts as CANCELLED. The client's own timer ends the call for the
#: client at the deadline either way.
DEADLINE_GRACE_S = 0.05

_TIMEOUT = re.compile(rb"^(\d{1,8})([HMSmun])$")
_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
#: request headers that are HTTP/2's or gRPC's, not the call's metadata (grpc.aio hides them too)
_NOT_METADATA = frozenset(
    {b"content-type", b"te", b"grpc-timeout", b"grpc-encoding", b"grpc-accept-encoding"}
)


def _frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream_id.to_bytes(4, "big")
    ) + payload


def _goaway_payload(last_stream_id: int, code: int, message: str) -> bytes:
    return (
        last_stream_id.to_bytes(4, "big")
        + code.to_bytes(4, "big")
        + message.encode("utf-8", "replace")[:256]
    )


def _hpack_int(value: int, prefix_bits: int, first: int) -> bytes:
    """RFC 7541 5.1: ``value`` with an N-bit prefix, ``first`` holding the byte's other bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    """A header as a literal never added to the peer's dynamic table (RFC 7541 6.2.2)."""
    return b"\x00" + _hpack_int(len(name), 7, 0) + name + _hpack_int(len(value), 7, 0) + value


#: ``:status: 200`` (static table entry 8) and ``content-type: application/grpc`` (literal with
#: the static table's name 31): every answer's headers, encoded once
RESPONSE_HEADERS = b"\x88" + _hpack_int(31, 4, 0) + _hpack_int(16, 7, 0) + b"application/grpc"
OK_TRAILERS = _literal(b"grpc-status", b"0")


def grpc_message_header(message: str) -> bytes:
    """gRPC's percent-encoding of ``grpc-message`` (printable ASCII but '%' stays as is)."""
    return quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode("ascii")


def parse_timeout(value: bytes) -> float | None:
    """``grpc-timeout`` (e.g. ``100m``) in seconds; None if malformed."""
    match = _TIMEOUT.match(value)
    if match is None:
        return None
    return int(match.group(1)) * _TIMEOUT_UNITS[match.group(2)]


@dataclass(frozen=True)
class GrpcLimits:
    """What one connection and the server may hold (see the module's docstring)."""

    max_message_bytes: int = 64 * 1024 * 1024
    max_header_bytes: int = 16 * 1024
    max_streams: int = 1024
    max_buffered_bytes: int = 128 * 1024 * 1024
    max_server_buffered_bytes: int = 512 * 1024 * 1024
    max_connections: int = 2048
    max_concurrent_calls: int = 0  # 0: no bound
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    write_timeout_s: float = 30.0
    accept_compressed: bool = True


class GrpcCall:
    """One call as its handler sees it: the subset of ``grpc.aio.ServicerContext`` the gateway's
    handlers use, plus ``write`` for a server-streaming answer."""

    __slots__ = (
        "_connection",
        "_peer",
        "_stream",
        "code",
        "deadline",
        "details",
        "metadata",
        "method",
        "trailing",
    )  # fmt: skip

    def __init__(self, method: str, metadata: tuple[tuple[str, str], ...],
                 deadline: float | None, peer: str) -> None:  # fmt: skip
        self.method, self.metadata, self.deadline, self._peer = method, metadata, deadline, peer
        self.code: grpc.StatusCode = grpc.StatusCode.OK
        self.details = ""
        self.trailing: tuple[tuple[str, str], ...] = ()
        self._stream: _Stream | None = None
        self._connection: GrpcConnection | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def time_remaining(self) -> float | None:
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    def peer(self) -> str:
        return self._peer

    def set_trailing_metadata(self, metadata: Iterable[tuple[str, str]]) -> None:
        self.trailing = tuple(metadata)

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    async def write(self, message: bytes) -> None:
        """One message of a server-streaming answer (headers go with the first)."""
        assert self._connection is not None and self._stream is not None
        await self._connection.send_message(self._stream, message)


class _Stream:
    __slots__ = (
        "body",
        "call",
        "deadline_timer",
        "done",
        "encoding",
        "expected",
        "headers_sent",
        "id",
        "method",
        "orphaned",
        "pending",
        "recv_unacked",
        "refused",
        "remote_closed",
        "running",
        "send_window",
        "started",
        "streaming",
        "task",
    )  # fmt: skip

    def __init__(self, stream_id: int, send_window: int) -> None:
        self.id = stream_id
        self.call: GrpcCall | None = None
        self.method = ""
        self.encoding = b"identity"
        self.body = bytearray()
        self.expected = -1  # the message's declared length, once its prefix arrived
        self.remote_closed = False
        self.task: asyncio.Task[None] | None = None
        self.send_window = send_window
        self.recv_unacked = 0
        self.pending: deque[tuple[bytes, bool]] = deque()  # data frames' payloads (and end?)
        self.headers_sent = False
        self.started = time.monotonic()
        self.refused = False  # answered before its body ended: what still arrives is dropped
        self.deadline_timer: asyncio.TimerHandle | None = None
        self.done = False  # its answer (or reset) went out
        self.running = False  # dispatched, its handler not finished (or not yet started)
        self.orphaned = False  # running, but no longer among the connection's streams
        self.streaming = False  # a server-streaming call (health's Watch)


class _ConnectionError(Exception):
    """A connection error: GOAWAY with ``code``; counted as a refusal with ``http_status``."""

    def __init__(self, code: int, message: str, http_status: int = 400) -> None:
        super().__init__(message)
        self.code, self.http_status = code, http_status


#: the HTTP status a refusal before any handler counts under (``serving_connection_refusals``,
#: like the HTTP server's), by the gRPC status it answered
_REFUSAL_STATUS = {
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
    grpc.StatusCode.DEADLINE_EXCEEDED: 408,
    grpc.StatusCode.UNIMPLEMENTED: 501,
}
_H2_ERRORS = {
    PROTOCOL_ERROR: "PROTOCOL_ERROR", FLOW_CONTROL_ERROR: "FLOW_CONTROL_ERROR",
    STREAM_CLOSED: "STREAM_CLOSED", FRAME_SIZE_ERROR: "FRAME_SIZE_ERROR",
    COMPRESSION_ERROR: "COMPRESSION_ERROR", ENHANCE_YOUR_CALM: "ENHANCE_YOUR_CALM",
}  # fmt: skip
#: what the server is told of each refusal: (HTTP status, name, message, peer, whether to log it)
Refused = Callable[[int, str, str, str, bool], None]


def _inflate(data: bytes, encoding: bytes, limit: int) -> bytes | None:
    """``data`` inflated, or None if it would exceed ``limit`` bytes (or is corrupt)."""
    wbits = 31 if encoding == b"gzip" else 15
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error:
        return None
    if len(out) > limit or inflater.unconsumed_tail:
        return None
    return out


class GrpcServer:
    """The listening side: handlers by method path, the connections, the drain."""

    def __init__(
        self,
        handlers: dict[str, Handler],
        streaming: dict[str, Handler],
        limits: GrpcLimits,
        authorize: Callable[[str, GrpcCall], bool] | None = None,
        deny: Handler | None = None,
        refused: Refused | None = None,
    ) -> None:
        self.handlers, self.streaming, self.limits = handlers, streaming, limits
        self.authorize, self.deny, self.refused = authorize, deny, refused
        self.connections: set[GrpcConnection] = set()
        self.calls_in_flight = 0
        self.waiting: deque[Callable[[], bool]] = deque()
        self.buffered = 0  # bytes of bodies still arriving, on all connections  # calls beyond max_concurrent_calls
        self.draining = False
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None
        settings = [
            (MAX_CONCURRENT_STREAMS, limits.max_streams),
            (INITIAL_WINDOW_SIZE, OUR_WINDOW),
            (MAX_FRAME_SIZE, OUR_MAX_FRAME),
            (MAX_HEADER_LIST_SIZE, limits.max_header_bytes),
            (ENABLE_PUSH, 0),
        ]
        payload = b"".join(key.to_bytes(2, "big") + value.to_bytes(4, "big")
                           for key, value in settings)  # fmt: skip
        self.preamble = _frame(SETTINGS, 0, 0, payload) + _frame(
            WINDOW_UPDATE, 0, 0, (OUR_WINDOW - DEFAULT_WINDOW).to_bytes(4, "big")
        )

    async def start(self, sock: Any) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: GrpcConnection(self), sock=sock)
        self._sweeper = loop.create_task(self._sweep())

    async def _sweep(self) -> None:
        """Deadlines of slow peers, once a second (or a quarter of the shortest timeout)."""
        limits = self.limits
        period = min(1.0, limits.header_timeout_s / 4, limits.body_timeout_s / 4,
                     limits.write_timeout_s / 4)  # fmt: skip
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for connection in list(self.connections):
                connection.check_deadlines(now)

    def call_started(self, start: Callable[[], bool]) -> None:
        """``start`` now, or once fewer than ``max_concurrent_calls`` run; it returns False
        when its call was reset meanwhile (and takes no slot)."""
        bound = self.limits.max_concurrent_calls
        if bound and self.calls_in_flight >= bound:
            self.waiting.append(start)
            return
        self.calls_in_flight += 1
        if not start():
            self.calls_in_flight -= 1

    def call_ended(self) -> None:
        self.calls_in_flight -= 1
        bound = self.limits.max_concurrent_calls
        while self.waiting and (not bound or self.calls_in_flight < bound):
            self.calls_in_flight += 1
            if not self.waiting.popleft()():
                self.calls_in_flight -= 1

    async def stop(self, grace: float) -> None:
        """GOAWAY to every connection (calls already started are finished, new ones go
        elsewhere), wait up to ``grace`` seconds for them, then close what is left."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        await asyncio.sleep(0)  # what the drain woke (health's Watch: NOT_SERVING) writes first
        for connection in list(self.connections):
            connection.go_away(NO_ERROR, "server shutting down")
        deadline = time.monotonic() + grace
        while any(c.busy() for c in self.connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for connection in list(self.connections):
            connection.end_streams("server shutting down")
            connection.close()
        if self._sweeper is not None:
            self._sweeper.cancel()


class GrpcConnection(asyncio.Protocol):
    """One client connection: frames in, calls dispatched, answers out."""

    def __init__(self, server: GrpcServer) -> None:
        self.server = server
        self.limits = server.limits
        self.transport: Any = None
        self.buffer = bytearray()
        self.preface_seen = False
        self.started = time.monotonic()
        self.streams: dict[int, _Stream] = {}
        self.active_handlers = 0  # handlers running, reset ones included
        self.orphans = 0  # of those, the ones whose streams are gone (reset, expired)
        self.streaming_handlers = 0  # of those, server-streaming calls (a drain does not wait)
        self.last_stream_id = 0
        self.goaway_sent = False
        self.closed = False
        self.decoder = hpack.Decoder(max_header_list_size=self.limits.max_header_bytes)
        self.decoder.max_allowed_table_size = 4096
        #: header block -> (the dynamic table it was decoded against, its size, the headers)
        self.header_blocks: dict[bytes, tuple[deque[Any], int, list[tuple[bytes, bytes]]]] = {}
        self.continuation: tuple[int, int, bytearray] | None = None
        self.peer_max_frame = OUR_MAX_FRAME
        self.peer_initial_window = DEFAULT_WINDOW
        self.send_window = DEFAULT_WINDOW
        self.recv_window = OUR_WINDOW
        self.recv_unacked = 0
        self.buffered = 0  # bytes of bodies still arriving
        self.out: list[bytes] = []
        self.flush_scheduled = False
        self.write_paused_since: float | None = None
        self.peer_name = "unknown"
        self.blocked: deque[_Stream] = deque()  # streams with data waiting for window

    # --- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport  # uvloop's transports are not asyncio.Transport subclasses
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            family = "ipv6:[%s]:%d" if ":" in str(peer[0]) else "ipv4:%s:%d"
            self.peer_name = family % (peer[0], peer[1])
        server = self.server
        server.connections.add(self)
        if len(server.connections) > self.limits.max_connections or server.draining:
            why = "draining" if server.draining else "too many connections (--max-connections)"
            self._refused(503, "UNAVAILABLE", why)
            transport.write(
                _frame(SETTINGS, 0, 0)
                + _frame(GOAWAY, 0, 0, _goaway_payload(0, ENHANCE_YOUR_CALM, why))
            )
            self.closed = True
            transport.close()
            return
        transport.write(server.preamble)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        for stream in list(self.streams.values()):
            self._cancel(stream)
        self.streams.clear()

    def pause_writing(self) -> None:
        self.write_paused_since = time.monotonic()
        if self.transport is not None:
            self.transport.pause_reading()  # no more acks and answers queued behind unread ones

    def resume_writing(self) -> None:
        self.write_paused_since = None
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.buffer += data
        try:
            self._read_frames()
        except _ConnectionError as error:
            log.debug("gRPC connection %s: %s", self.peer_name, error)
            self._refused(error.http_status, _H2_ERRORS.get(error.code, "GOAWAY"), str(error))
            self.go_away(error.code, str(error))
            self.close()
        self._flush()

    # --- reading ----------------------------------------------------------------------------
    def _read_frames(self) -> None:
        buffer = self.buffer
        position, size = 0, len(buffer)
        if not self.preface_seen:
            if size < 24:
                if not PREFACE.startswith(bytes(buffer)):
                    raise _ConnectionError(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                return
            if buffer[:24] != PREFACE:
                raise _ConnectionError(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
            self.preface_seen, position = True, 24
        try:
            while size - position >= 9:
                length = int.from_bytes(buffer[position : position + 3], "big")
                if length > OUR_MAX_FRAME:
                    raise _ConnectionError(FRAME_SIZE_ERROR, f"frame of {length} bytes")
                end = position + 9 + length
                if end > size:
                    break
                kind, flags = buffer[position + 3], buffer[position + 4]
                stream_id = int.from_bytes(buffer[position + 5 : position + 9], "big") & MAX_WINDOW
                payload = bytes(buffer[position + 9 : end])
                position = end
                if self.continuation is not None and kind != CONTINUATION:
                    raise _ConnectionError(PROTOCOL_ERROR, "header block interrupted")
                if kind == DATA:
                    self._on_data(stream_id, flags, payload)
                elif kind == HEADERS:
                    self._on_headers(stream_id, flags, payload)
                elif kind == CONTINUATION:
                    self._on_continuation(stream_id, flags, payload)
                elif kind == SETTINGS:
                    self._on_settings(stream_id, flags, payload)
                elif kind == PING:
                    if len(payload) != 8 or stream_id:
                        raise _ConnectionError(FRAME_SIZE_ERROR, "malformed PING")
                    if not flags & ACK:
                        self.out.append(_frame(PING, ACK, 0, payload))
                elif kind == WINDOW_UPDATE:
                    self._on_window_update(stream_id, payload)
                elif kind == RST_STREAM:
                    if len(payload) != 4 or not stream_id:
                        raise _ConnectionError(PROTOCOL_ERROR, "malformed RST_STREAM")
                    if stream_id > self.last_stream_id:
                        raise _ConnectionError(PROTOCOL_ERROR, "RST_STREAM on an idle stream")
                    stream = self.streams.get(stream_id)
                    if stream is not None:
                        self._detach(stream)
                        self._cancel(stream)
                elif kind == GOAWAY:
                    if stream_id:
                        raise _ConnectionError(PROTOCOL_ERROR, "GOAWAY on a stream")
                    self.go_away(NO_ERROR, "")
                elif kind == PRIORITY:
                    if len(payload) != 5 or not stream_id:
                        raise _ConnectionError(FRAME_SIZE_ERROR, "malformed PRIORITY")
                elif kind == PUSH_PROMISE:
                    raise _ConnectionError(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
                if self.closed:
                    return
        finally:
            del buffer[:position]

    @staticmethod
    def _unpad(flags: int, payload: bytes) -> bytes:
        if flags & PADDED:
            if not payload or payload[0] >= len(payload):
                raise _ConnectionError(PROTOCOL_ERROR, "padding longer than the frame")
            return payload[1 : len(payload) - payload[0]]
        return payload

    def _on_headers(self, stream_id: int, flags: int, payload: bytes) -> None:
        if not stream_id or not stream_id & 1:
            raise _ConnectionError(PROTOCOL_ERROR, f"HEADERS on stream {stream_id}")
        block = self._unpad(flags, payload)
        if flags & PRIORITY_FLAG:
            if len(block) < 5:
                raise _ConnectionError(PROTOCOL_ERROR, "HEADERS too short for its priority")
            block = block[5:]
        if len(block) > self.limits.max_header_bytes:  # a block in one frame too, undecoded
            raise _ConnectionError(
                ENHANCE_YOUR_CALM,
                f"header block over the limit of {self.limits.max_header_bytes} bytes",
                431,
            )
        if flags & END_HEADERS:
            self._on_header_block(stream_id, flags, block)
        else:
            self.continuation = (stream_id, flags, bytearray(block))

    def _on_continuation(self, stream_id: int, flags: int, payload: bytes) -> None:
        if self.continuation is None or self.continuation[0] != stream_id:
            raise _ConnectionError(PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
        block = self.continuation[2]
        block += payload
        if len(block) > self.limits.max_header_bytes:
            raise _ConnectionError(
                ENHANCE_YOUR_CALM,
                f"header block over the limit of {self.limits.max_header_bytes} bytes",
                431,
            )
        if flags & END_HEADERS:
            first_flags = self.continuation[1]
            self.continuation = None
            self._on_header_block(stream_id, first_flags, bytes(block))

    def _decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """``block`` decoded, from the connection's cache when the same bytes were decoded
        before against the same dynamic table without changing it.

        A gRPC client sends every call's headers as the same few bytes of references into that
        table once it holds them (a 9-byte block for a tritonclient call); ``hpack`` decodes
        those in about 14 us of Python, the cache in under 1. Only a block that left the table
        as it found it is kept (one that adds entries means something else next time), and
        a hit needs the table to be what it was then (entries compared, so exact)."""
        table = self.decoder.header_table
        cached = self.header_blocks.get(block)
        if cached is not None and cached[1] == table.maxsize and cached[0] == table.dynamic_entries:
            return cached[2]
        before, size = deque(table.dynamic_entries), table.maxsize
        try:  # decoded even for a stream refused below: the table is the connection's
            headers = cast(list[tuple[bytes, bytes]], self.decoder.decode(block, raw=True))
        except Exception as exc:  # any decoding failure leaves the shared table unknown
            raise _ConnectionError(COMPRESSION_ERROR, f"header block: {exc}") from None
        if len(block) <= 1024 and table.maxsize == size and table.dynamic_entries == before:
            if len(self.header_blocks) >= 64:
                self.header_blocks.clear()
            self.header_blocks[block] = (before, size, headers)
        return headers

    def _on_header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        headers = self._decode(block)
        stream = self.streams.get(stream_id)
        if stream is not None:  # trailers of a request: nothing in them is read
            if stream.remote_closed:
                raise _ConnectionError(STREAM_CLOSED, f"HEADERS after stream {stream_id} ended")
            if not flags & END_STREAM:
                raise _ConnectionError(PROTOCOL_ERROR, "trailers without END_STREAM")
            self._end_of_body(stream)
            return
        if stream_id <= self.last_stream_id:
            return  # a closed stream (perhaps reset by us, with frames still on their way)
        self.last_stream_id = stream_id
        if self.goaway_sent:
            return  # after GOAWAY: not processed, the client retries it elsewhere
        if len(self.streams) + self.orphans >= self.limits.max_streams:
            self.out.append(_frame(RST_STREAM, 0, stream_id, REFUSED_STREAM.to_bytes(4, "big")))
            # counted, not logged: HTTP/2 flow control that clients retry, and a flood's bulk
            self._refused(503, "REFUSED_STREAM", "streams over the connection's limit", False)
            return
        stream = _Stream(stream_id, self.peer_initial_window)
        self.streams[stream_id] = stream
        method = content_type = b""
        post = False
        timeout: float | None = None
        metadata = []
        for name, value in headers:
            if name[:1] == b":":
                if name == b":path":
                    method = value
                elif name == b":method":
                    post = value == b"POST"
            elif name == b"content-type":
                content_type = value
            elif name == b"grpc-timeout":
                timeout = parse_timeout(value)
                if timeout is None:
                    self._answer_early(stream, grpc.StatusCode.INVALID_ARGUMENT,
                                       f"malformed grpc-timeout {value[:40]!r}")  # fmt: skip
                    return
            elif name == b"grpc-encoding":
                stream.encoding = value
            elif name not in _NOT_METADATA:
                metadata.append((name.decode("latin-1"), value.decode("latin-1")))
        if not post or not content_type.startswith(b"application/grpc"):
            self._answer_early(stream, grpc.StatusCode.UNIMPLEMENTED,
                               "only POST with content-type application/grpc is served")  # fmt: skip
            return
        path = method.decode("latin-1")
        call = GrpcCall(
            path,
            tuple(metadata),
            None if timeout is None else time.monotonic() + timeout,
            self.peer_name,
        )
        call._stream, call._connection = stream, self
        stream.call, stream.method = call, path
        if path not in self.server.handlers and path not in self.server.streaming:
            self._answer_early(stream, grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
            return
        if stream.encoding not in (b"identity", b"gzip", b"deflate"):
            self._answer_early(stream, grpc.StatusCode.UNIMPLEMENTED,
                               f"grpc-encoding {stream.encoding[:40]!r} is not supported")  # fmt: skip
            return
        if stream.encoding != b"identity" and not self.limits.accept_compressed:
            self._answer_early(stream, grpc.StatusCode.UNIMPLEMENTED,
                               "compressed requests are refused (--no-grpc-compressed-requests)")  # fmt: skip
            return
        if flags & END_STREAM:
            self._end_of_body(stream)

    def _on_data(self, stream_id: int, flags: int, payload: bytes) -> None:
        if not stream_id:
            raise _ConnectionError(PROTOCOL_ERROR, "DATA on stream 0")
        length = len(payload)
        self.recv_window -= length
        if self.recv_window < 0:
            raise _ConnectionError(FLOW_CONTROL_ERROR, "DATA beyond the connection's window")
        stream = self.streams.get(stream_id)
        if stream is None or stream.remote_closed:
            if stream_id > self.last_stream_id:
                raise _ConnectionError(PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
            self._give_back(length)  # a refused or reset stream's data: dropped
            return
        data = self._unpad(flags, payload)
        if stream.refused:
            self._give_back(length)
        else:
            stream.body += data
            self._buffer(len(data))
            if stream.expected < 0 and len(stream.body) >= 5:
                stream.expected = int.from_bytes(stream.body[1:5], "big")
                if stream.expected > self.limits.max_message_bytes:
                    self._answer_early(stream, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                      f"Received message larger than max ({stream.expected} vs. "
                                      f"{self.limits.max_message_bytes})")  # fmt: skip
            elif stream.expected >= 0 and len(stream.body) > stream.expected + 5:
                self._answer_early(stream, grpc.StatusCode.INVALID_ARGUMENT,
                                  "a unary call carries one message")  # fmt: skip
            if not stream.refused:
                stream.recv_unacked += length
                if stream.recv_unacked >= OUR_WINDOW // 2 and not flags & END_STREAM:
                    self.out.append(_frame(WINDOW_UPDATE, 0, stream_id,
                                           stream.recv_unacked.to_bytes(4, "big")))  # fmt: skip
                    stream.recv_unacked = 0
            self._give_back(length)
        if flags & END_STREAM:
            self._end_of_body(stream)

    def _buffer(self, delta: int) -> None:
        """Bytes of bodies still arriving, on this connection and on the server."""
        self.buffered += delta
        self.server.buffered += delta

    def _give_back(self, length: int) -> None:
        """Connection window back to the peer, unless the bodies still arriving hold more than
        their bound (then it comes back as they end)."""
        self.recv_unacked += length
        if (
            self.recv_unacked >= OUR_WINDOW // 4
            and self.buffered <= self.limits.max_buffered_bytes
            and self.server.buffered <= self.limits.max_server_buffered_bytes
        ):
            self.out.append(_frame(WINDOW_UPDATE, 0, 0, self.recv_unacked.to_bytes(4, "big")))
            self.recv_window += self.recv_unacked
            self.recv_unacked = 0

    def _on_settings(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id:
            raise _ConnectionError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise _ConnectionError(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise _ConnectionError(FRAME_SIZE_ERROR, "SETTINGS of a partial entry")
        for offset in range(0, len(payload), 6):
            key = int.from_bytes(payload[offset : offset + 2], "big")
            value = int.from_bytes(payload[offset + 2 : offset + 6], "big")
            if key == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise _ConnectionError(FLOW_CONTROL_ERROR, "initial window over 2^31-1")
                delta, self.peer_initial_window = value - self.peer_initial_window, value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif key == MAX_FRAME_SIZE:
                if not 16_384 <= value <= 16_777_215:
                    raise _ConnectionError(PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value}")
                self.peer_max_frame = value
            elif key == ENABLE_PUSH and value > 1:
                raise _ConnectionError(PROTOCOL_ERROR, f"SETTINGS_ENABLE_PUSH {value}")
        self.out.append(_frame(SETTINGS, ACK, 0))
        self._send_blocked()

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ConnectionError(FRAME_SIZE_ERROR, "malformed WINDOW_UPDATE")
        increment = int.from_bytes(payload, "big") & MAX_WINDOW
        if not increment:
            raise _ConnectionError(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
        if not stream_id:
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise _ConnectionError(FLOW_CONTROL_ERROR, "connection window over 2^31-1")
        else:
            stream = self.streams.get(stream_id)
            if stream is None:
                return
            stream.send_window += increment
            if stream.send_window > MAX_WINDOW:
                raise _ConnectionError(FLOW_CONTROL_ERROR, "stream window over 2^31-1")
        self._send_blocked()

    # --- calls ------------------------------------------------------------------------------
    def _end_of_body(self, stream: _Stream) -> None:
        stream.remote_closed = True
        if stream.refused:
            self._forget(stream)
            return
        body, stream.body = stream.body, bytearray()
        self._buffer(-len(body))
        self._give_back(0)
        if len(body) < 5 or len(body) != stream.expected + 5:
            self._answer_early(stream, grpc.StatusCode.INVALID_ARGUMENT,
                               "a unary call carries exactly one whole message")  # fmt: skip
            return
        compressed = body[0]
        with memoryview(body) as view:  # the message's one copy (a slice of bytes is another)
            message = bytes(view[5:])
        del body
        if compressed and stream.encoding == b"identity":
            self._answer_early(stream, grpc.StatusCode.INVALID_ARGUMENT,
                               "a compressed message without grpc-encoding")  # fmt: skip
            return
        assert stream.call is not None
        server = self.server
        call = stream.call
        path = stream.method
        if server.authorize is not None and not server.authorize(path, call):
            handler = server.deny
        else:
            handler = server.handlers.get(path) or server.streaming.get(path)
        assert handler is not None
        self.active_handlers += 1
        stream.running = True
        if path in server.streaming:
            stream.streaming = True
            self.streaming_handlers += 1
        loop = asyncio.get_running_loop()

        def start() -> bool:
            if stream.done:  # reset (or expired) while it waited for a slot
                self._handler_ended(stream)
                return False
            stream.task = loop.create_task(
                self._run(stream, handler, message, call, compressed and stream.encoding)
            )
            # not a ``finally`` in _run: a task cancelled before its first step (a reset in the
            # same read as its request) never runs its coroutine, and its slot would leak
            stream.task.add_done_callback(lambda _task: self._run_ended(stream))
            return True

        if call.deadline is not None:
            stream.deadline_timer = loop.call_at(
                loop.time() + max(0.0, call.deadline - time.monotonic()) + DEADLINE_GRACE_S,
                self._expire,
                stream,
            )
        server.call_started(start)

    async def _run(
        self, stream: _Stream, handler: Handler, message: bytes, call: GrpcCall,
        encoding: bytes | int,
    ) -> None:  # fmt: skip
        try:
            if encoding:
                assert isinstance(encoding, bytes)
                inflated = await asyncio.to_thread(
                    _inflate, message, encoding, self.limits.max_message_bytes
                )
                if inflated is None:
                    call.code = grpc.StatusCode.RESOURCE_EXHAUSTED
                    call.details = (f"compressed message larger than max "
                                    f"({self.limits.max_message_bytes}) or corrupt")  # fmt: skip
                    answer = None
                else:
                    message = inflated  # the compressed bytes go now, not with the call
                    del inflated
                    answer = await handler(message, call)
            else:
                answer = await handler(message, call)
            del message
            if not stream.done:
                self._answer(stream, call, answer)
        except asyncio.CancelledError:
            pass  # reset by the client, its deadline, or the connection's end
        except Exception:  # the handlers have their own error boundary; this is a last resort
            log.exception("gRPC handler for %s failed", stream.method)
            if not stream.done:
                call.code, call.details = grpc.StatusCode.INTERNAL, "internal error"
                self._answer(stream, call, None)

    def _run_ended(self, stream: _Stream) -> None:
        self._handler_ended(stream)
        self.server.call_ended()

    def _handler_ended(self, stream: _Stream) -> None:
        self.active_handlers -= 1
        stream.running = False
        if stream.streaming:
            self.streaming_handlers -= 1
        if stream.orphaned:
            self.orphans -= 1
        if stream.deadline_timer is not None:
            stream.deadline_timer.cancel()

    def _detach(self, stream: _Stream) -> None:
        """``stream`` leaves the connection's streams; a handler still running for it keeps
        counting against ``max_streams`` until it ends."""
        if self.streams.pop(stream.id, None) is not None and stream.running and not stream.orphaned:
            stream.orphaned = True
            self.orphans += 1

    def _expire(self, stream: _Stream) -> None:
        """The call's deadline passed: DEADLINE_EXCEEDED, and its handler is cancelled."""
        if stream.done or stream.call is None:
            return
        call = stream.call
        call.code, call.details = grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"
        self._answer(stream, call, None)
        if stream.task is not None:
            stream.task.cancel()
        self._flush()

    def _cancel(self, stream: _Stream) -> None:
        stream.done = True
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()
        if stream.deadline_timer is not None:
            stream.deadline_timer.cancel()
        if not stream.remote_closed:
            self._buffer(-len(stream.body))
            stream.body = bytearray()
            if not self.closed:
                self._give_back(0)

    def _forget(self, stream: _Stream) -> None:
        if stream.done and stream.remote_closed and not stream.pending:
            self._detach(stream)

    def _trailers(self, call: GrpcCall | None, code: grpc.StatusCode, details: str) -> bytes:
        block = _literal(b"grpc-status", str(code.value[0]).encode())
        if details:
            block += _literal(b"grpc-message", grpc_message_header(details)[:4096])
        if call is not None:
            for key, value in call.trailing:
                block += _literal(key.encode("latin-1"), value.encode("latin-1")[:4096])
        return block

    def _answer_early(self, stream: _Stream, code: grpc.StatusCode, details: str) -> None:
        """A trailers-only answer before any handler ran (counted and logged as a refusal)."""
        self._refused(_REFUSAL_STATUS.get(code, 400), code.name, details)
        if stream.call is None:
            stream.call = GrpcCall(stream.method, (), None, self.peer_name)
        stream.call.code, stream.call.details = code, details
        if not stream.remote_closed:
            stream.refused = True
            self._buffer(-len(stream.body))
            stream.body = bytearray()
            self._give_back(0)
        self._answer(stream, stream.call, None)

    def _answer(self, stream: _Stream, call: GrpcCall, answer: bytes | None) -> None:
        """The call's answer: headers, its message and trailers, or trailers only."""
        stream.done = True
        out = self.out
        sid = stream.id.to_bytes(4, "big")
        if answer is not None and call.code == grpc.StatusCode.OK:
            message = b"\x00" + len(answer).to_bytes(4, "big") + answer
            if not stream.headers_sent:
                out.append(len(RESPONSE_HEADERS).to_bytes(3, "big") + b"\x01\x04" + sid
                           + RESPONSE_HEADERS)  # fmt: skip
                stream.headers_sent = True
            trailers = OK_TRAILERS if not call.trailing else self._trailers(call, call.code, "")
            length = len(message)
            if (
                length <= stream.send_window and length <= self.send_window
                and length <= self.peer_max_frame and not stream.pending
            ):  # fmt: skip
                stream.send_window -= length
                self.send_window -= length
                out.append(length.to_bytes(3, "big") + b"\x00\x00" + sid + message)
                out.append(len(trailers).to_bytes(3, "big") + b"\x01\x05" + sid + trailers)
            else:
                stream.pending.append((message, False))
                stream.pending.append((trailers, True))
                self._send_pending(stream)
        elif stream.headers_sent:  # a stream that already sent messages ends with trailers
            trailers = self._trailers(call, call.code, call.details)
            if stream.pending:
                stream.pending.append((trailers, True))
            else:
                out.append(_frame(HEADERS, END_HEADERS | END_STREAM, stream.id, trailers))
        else:
            code = grpc.StatusCode.UNKNOWN if call.code == grpc.StatusCode.OK else call.code
            block = RESPONSE_HEADERS + self._trailers(call, code, call.details)
            out.append(_frame(HEADERS, END_HEADERS | END_STREAM, stream.id, block))
        if not stream.pending:
            self._finish(stream)
        self._schedule_flush()

    def _finish(self, stream: _Stream) -> None:
        if not stream.remote_closed:  # answered early: the client need not send the rest
            self.out.append(_frame(RST_STREAM, 0, stream.id, NO_ERROR.to_bytes(4, "big")))
            stream.remote_closed = True
        self._detach(stream)

    async def send_message(self, stream: _Stream, message: bytes) -> None:
        """One message of a streaming answer, within the flow-control windows."""
        if stream.done or self.closed:
            raise asyncio.CancelledError
        if not stream.headers_sent:
            self.out.append(_frame(HEADERS, END_HEADERS, stream.id, RESPONSE_HEADERS))
            stream.headers_sent = True
        stream.pending.append((b"\x00" + len(message).to_bytes(4, "big") + message, False))
        self._send_pending(stream)
        self._schedule_flush()

    def _send_pending(self, stream: _Stream) -> None:
        """As much of ``stream``'s queued data as the windows allow; trailers when it is sent."""
        out = self.out
        while stream.pending:
            payload, is_trailers = stream.pending[0]
            if is_trailers:
                out.append(_frame(HEADERS, END_HEADERS | END_STREAM, stream.id, payload))
                stream.pending.popleft()
                self._finish(stream)
                return
            allowed = min(stream.send_window, self.send_window, self.peer_max_frame)
            if allowed <= 0:
                if stream not in self.blocked:
                    self.blocked.append(stream)
                return
            chunk, rest = payload[:allowed], payload[allowed:]
            stream.send_window -= len(chunk)
            self.send_window -= len(chunk)
            out.append(_frame(DATA, 0, stream.id, chunk))
            if rest:
                stream.pending[0] = (rest, False)
            else:
                stream.pending.popleft()

    def _send_blocked(self) -> None:
        for _ in range(len(self.blocked)):
            stream = self.blocked.popleft()
            if self.streams.get(stream.id) is stream:
                self._send_pending(stream)

    # --- writing, ending --------------------------------------------------------------------
    def _schedule_flush(self) -> None:
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        if self.out:
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(b"".join(self.out))
            self.out.clear()

    def go_away(self, code: int, message: str) -> None:
        if self.goaway_sent or self.closed:
            return
        self.goaway_sent = True
        self.out.append(_frame(GOAWAY, 0, 0, _goaway_payload(self.last_stream_id, code, message)))
        self._flush()

    def end_streams(self, reason: str) -> None:
        """Every call still open ends now with UNAVAILABLE (clients retry those elsewhere)."""
        for stream in list(self.streams.values()):
            if not stream.done and stream.call is not None:
                stream.call.code, stream.call.details = grpc.StatusCode.UNAVAILABLE, reason
                self._answer(stream, stream.call, None)
                if stream.task is not None:
                    stream.task.cancel()

    def _refused(self, http_status: int, name: str, message: str, log_it: bool = True) -> None:
        if self.server.refused is not None:
            self.server.refused(http_status, name, message, self.peer_name, log_it)

    def busy(self) -> bool:
        """Unary calls in progress or still arriving: what a drain waits for. A streaming call
        (health's Watch) does not hold the drain up; it ends with the connection."""
        return self.active_handlers > self.streaming_handlers or any(
            not stream.running for stream in self.streams.values()
        )

    def close(self) -> None:
        self._flush()
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def check_deadlines(self, now: float) -> None:
        limits = self.limits
        if not self.preface_seen and now - self.started > limits.header_timeout_s:
            self._refused(408, "PREFACE_TIMEOUT", "no HTTP/2 preface within --header-timeout-s")
            self.close()
            return
        if (
            self.write_paused_since is not None
            and now - self.write_paused_since > limits.write_timeout_s
        ):
            self._refused(408, "WRITE_TIMEOUT", "answers left unread past --write-timeout-s")
            if self.transport is not None:
                self.transport.abort()
            return
        for stream in list(self.streams.values()):
            if not stream.remote_closed and now - stream.started > limits.body_timeout_s:
                self._answer_early(stream, grpc.StatusCode.DEADLINE_EXCEEDED,
                                   f"the request did not arrive within {limits.body_timeout_s:g} s")  # fmt: skip
        if self.goaway_sent and not self.busy():
            self.close()
            return
        if self.recv_unacked:  # window held back while the server held too much: given now?
            self._give_back(0)
        self._flush()

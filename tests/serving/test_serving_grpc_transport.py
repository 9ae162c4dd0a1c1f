"""Hostile HTTP/2 against the gateway's own gRPC transport (``serving/grpc/transport.py``): each
limit its module docstring promises, probed with raw frames on a socket against a real
``python -m serving`` process on 127.0.0.1 (its memory read from /proc), no mocks.

Frames are built here (9-byte header, payload), header blocks with ``hpack`` (one encoder and one
decoder per connection, as HTTP/2 requires). Every case is bounded in time and asserts one
documented outcome (a GOAWAY's error code, a RST_STREAM's, a ``grpc-status``, a close), and after
it a well-formed call on a new connection is answered: the server stays healthy. Cases that send
megabytes also bound the gateway's resident memory.

Two gateways: one with the defaults (64 MiB messages, 16 KiB header blocks, 1024 streams per
connection) and one with tight limits (4 streams per connection, 4 calls at once in the whole
server, 6 connections, 4 KiB header blocks, 1 s for a body, for the preface and for answers left
unread); the stream limit and the rapid-reset burst share the tight one's 4 streams.

Regressions guarded here: a call reset in the same read as its request had its handler's task
cancelled before it ever ran, so its slot was never given back (the connection then refused every
stream, and with --grpc-max-concurrent-rpcs 4 reset calls wedged the whole gRPC server); a header
block in a single HEADERS frame was decoded whatever --max-header-bytes said.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import hpack
import pytest

from clients import v2_grpc
from tests.serving.serving_harness import GatewayProcess
from tests.tiny_models import lenet_like, sample_images, write_version

MODEL = "lenet"
LIVE = v2_grpc.SERVER_LIVE_METHOD
INFER = v2_grpc.MODEL_INFER_METHOD
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
TIGHT_STREAMS = 4  # --grpc-max-streams-per-connection of the tight gateway
TIGHT_CONNECTIONS = 6  # its --max-connections
TIGHT_HEADER_BYTES = 4096  # its --max-header-bytes
DEFAULT_MAX_BODY = 64 * 1024 * 1024  # --max-body-bytes' default
DEFAULT_MAX_BUFFERED = 128 * 1024 * 1024  # what the transport holds of bodies still arriving
#: growth of the gateway's resident memory a flood may cause (allocator noise, a few buffers)
RSS_SLACK_MB = 32

# frame types, flags, settings and error codes (RFC 9113)
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE = 4, 5
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR = 0x0, 0x1, 0x3, 0x6
REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x7, 0x8, 0x9, 0xB
# gRPC status codes
OK, DEADLINE_EXCEEDED, INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNIMPLEMENTED = 0, 4, 3, 8, 12


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream_id.to_bytes(4, "big")
    ) + payload


def grpc_message(message: bytes, declared: int | None = None) -> bytes:
    """gRPC's length-prefixed message (uncompressed); ``declared`` overrides the length."""
    length = len(message) if declared is None else declared
    return b"\x00" + length.to_bytes(4, "big") + message


@dataclass
class Answer:
    """What came back on one stream."""

    headers: dict[bytes, bytes] = field(default_factory=dict)  # headers and trailers, merged
    data: bytearray = field(default_factory=bytearray)
    ended: bool = False  # END_STREAM seen
    reset: int | None = None  # RST_STREAM's error code
    events: list[str] = field(default_factory=list)  # "headers", "data", "rst", in order

    @property
    def done(self) -> bool:
        return self.ended or self.reset is not None

    @property
    def status(self) -> int:
        assert b"grpc-status" in self.headers, self
        return int(self.headers[b"grpc-status"])

    @property
    def message(self) -> str:
        return unquote(self.headers.get(b"grpc-message", b"").decode())

    @property
    def body(self) -> bytes:
        """The answer's one message, without its prefix."""
        assert len(self.data) >= 5 and int.from_bytes(self.data[1:5], "big") == len(self.data) - 5
        return bytes(self.data[5:])


class H2Client:
    """One raw HTTP/2 connection: sends what it is given, reads and sorts what comes back."""

    def __init__(
        self, target: str, *, preface: bool = True, timeout_s: float = 10.0,
        receive_buffer: int | None = None,
    ) -> None:  # fmt: skip
        host, port = target.rsplit(":", 1)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:  # before connecting, so the window is agreed with it
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(timeout_s)
        self.sock.connect((host, int(port)))
        self.encoder, self.decoder = hpack.Encoder(), hpack.Decoder()
        self.buffer = bytearray()
        self.eof = False
        self.goaway: tuple[int, int, bytes] | None = None  # last stream, error code, debug data
        self.settings: list[dict[int, int]] = []
        self.ping_acks = 0
        self.answers: dict[int, Answer] = {}
        if preface:
            self.send(PREFACE + frame(SETTINGS, 0, 0))

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_tolerant(self, data: bytes) -> bool:
        """Send what the server takes; False once it has closed the connection."""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    def headers(
        self, stream_id: int, path: str = LIVE, *, end_stream: bool = False,
        override: dict[str, str] | None = None,
    ) -> bytes:  # fmt: skip
        """A HEADERS frame (END_HEADERS) of a gRPC request; ``override`` replaces or adds fields."""
        fields = {":method": "POST", ":scheme": "http", ":path": path, ":authority": "x",
                  "content-type": "application/grpc", "te": "trailers", **(override or {})}  # fmt: skip
        flags = END_HEADERS | (END_STREAM if end_stream else 0)
        return frame(HEADERS, flags, stream_id, self.encoder.encode(list(fields.items())))

    def call(
        self, stream_id: int, path: str = LIVE, message: bytes = b"",
        override: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        """A whole unary request: HEADERS, then DATA with END_STREAM."""
        self.send(self.headers(stream_id, path, override=override)
                  + frame(DATA, END_STREAM, stream_id, grpc_message(message)))  # fmt: skip

    def answer(self, stream_id: int, timeout_s: float = 10.0) -> Answer:
        self.wait_for(lambda: self.answer_of(stream_id).done, timeout_s, f"stream {stream_id}")
        return self.answers[stream_id]

    def answer_of(self, stream_id: int) -> Answer:
        return self.answers.setdefault(stream_id, Answer())

    def goaway_code(self, timeout_s: float = 10.0) -> int:
        """The error code of the server's GOAWAY, once the connection is closed after it."""
        self.wait_for(lambda: self.eof, timeout_s, "the connection to close")
        assert self.goaway is not None, "closed without a GOAWAY"
        return self.goaway[1]

    def wait_for(self, condition: Callable[[], object], timeout_s: float, what: str) -> None:
        """Read frames until ``condition`` holds (fails at EOF or after ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert not self.eof, (
                f"connection closed while waiting for {what} (GOAWAY {self.goaway})"
            )
            left = deadline - time.monotonic()
            assert left > 0, f"timed out after {timeout_s} s waiting for {what}"
            self._read(left)

    def _read(self, timeout_s: float) -> None:
        self.sock.settimeout(timeout_s)
        try:
            chunk = self.sock.recv(1 << 20)
        except TimeoutError:
            return
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            return
        self.buffer += chunk
        while len(self.buffer) >= 9:
            length = int.from_bytes(self.buffer[:3], "big")
            if len(self.buffer) < 9 + length:
                break
            kind, flags = self.buffer[3], self.buffer[4]
            stream_id = int.from_bytes(self.buffer[5:9], "big") & 0x7FFFFFFF
            payload = bytes(self.buffer[9 : 9 + length])
            del self.buffer[: 9 + length]
            self._on_frame(kind, flags, stream_id, payload)

    def _on_frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if kind == HEADERS:
            assert flags & END_HEADERS, "the server's header blocks fit one frame"
            answer = self.answer_of(stream_id)
            answer.headers.update(dict(self.decoder.decode(payload, raw=True)))
            answer.events.append("headers")
            answer.ended = answer.ended or bool(flags & END_STREAM)
        elif kind == DATA:
            answer = self.answer_of(stream_id)
            answer.data += payload
            answer.events.append("data")
            answer.ended = answer.ended or bool(flags & END_STREAM)
        elif kind == RST_STREAM:
            answer = self.answer_of(stream_id)
            answer.reset = int.from_bytes(payload, "big")
            answer.events.append("rst")
        elif kind == SETTINGS and not flags & ACK:
            self.settings.append({int.from_bytes(payload[i : i + 2], "big"):
                                  int.from_bytes(payload[i + 2 : i + 6], "big")
                                  for i in range(0, len(payload), 6)})  # fmt: skip
        elif kind == PING and flags & ACK:
            self.ping_acks += 1
        elif kind == GOAWAY:
            self.goaway = (
                int.from_bytes(payload[:4], "big"),
                int.from_bytes(payload[4:8], "big"),
                payload[8:],
            )


def assert_serves(gateway: GatewayProcess) -> None:
    """A well-formed ServerLive on a new connection is answered OK (live)."""
    with closing(H2Client(gateway.grpc_target)) as client:
        client.call(1)
        answer = client.answer(1)
        assert answer.status == OK, answer
        assert v2_grpc.ServerLiveResponse.FromString(answer.body).live


def infer_message() -> bytes:
    request = v2_grpc.build_infer_request(MODEL, {"image": sample_images(1, seed=7)})
    return bytes(request.SerializeToString())


def stop_cleanly(running: GatewayProcess) -> None:
    """Stop the gateway; none of the hostile input may have logged an error or a traceback."""
    running.stop()
    log = "".join(running.lines)
    assert running.process.returncode == 0 and not re.search(r"Traceback| ERROR ", log), log


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("grpc-transport")
    write_version(root, MODEL, 1, lenet_like())
    return root


@pytest.fixture(scope="module")
def gateway(repo: Path) -> Iterator[GatewayProcess]:
    """The defaults: 64 MiB messages, 16 KiB header blocks, 1024 streams per connection."""
    running = GatewayProcess(repo)
    try:
        yield running
    finally:
        stop_cleanly(running)


@pytest.fixture(scope="module")
def tight(repo: Path) -> Iterator[GatewayProcess]:
    """4 streams per connection, 4 calls at once in the server, 6 connections, 4 KiB header
    blocks, 1 s for a body, a preface and unread answers."""
    running = GatewayProcess(
        repo,
        "--grpc-max-streams-per-connection", str(TIGHT_STREAMS),
        "--grpc-max-concurrent-rpcs", "4",
        "--max-connections", str(TIGHT_CONNECTIONS),
        "--max-header-bytes", str(TIGHT_HEADER_BYTES),
        "--body-timeout-s", "1",
        "--header-timeout-s", "1",
        "--write-timeout-s", "1",
    )  # fmt: skip
    try:
        yield running
    finally:
        stop_cleanly(running)


# --- the connection's framing -------------------------------------------------------------------
def test_garbage_instead_of_the_preface_gets_goaway_protocol_error(gateway: GatewayProcess) -> None:
    with closing(H2Client(gateway.grpc_target, preface=False)) as client:
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.goaway_code() == PROTOCOL_ERROR
    assert_serves(gateway)


def test_a_frame_over_16_kib_gets_goaway_frame_size_error(gateway: GatewayProcess) -> None:
    with closing(H2Client(gateway.grpc_target)) as client:
        client.wait_for(lambda: client.settings, 10, "the server's SETTINGS")
        assert client.settings[0][MAX_FRAME_SIZE] == 16_384
        client.send(frame(HEADERS, END_HEADERS, 1, b"\x00" * 16_385)[:9] + b"\x00" * 100)
        assert client.goaway_code() == FRAME_SIZE_ERROR
    assert_serves(gateway)


def test_a_continuation_flood_is_refused_at_16_kib_unbuffered(gateway: GatewayProcess) -> None:
    """HEADERS without END_HEADERS, then CONTINUATIONs offered up to 48 MiB (1 MiB a go): the
    gateway refuses the block once it passes 16 KiB and closes; what the client still sends
    never reaches its memory."""
    before = gateway.rss_mb()
    with closing(H2Client(gateway.grpc_target)) as client:
        start = client.encoder.encode([(":method", "POST"), (":path", LIVE)])
        client.send(frame(HEADERS, 0, 1, start))
        piece = frame(CONTINUATION, 0, 1, b"a" * 16_384) * 64
        sent = 0
        while sent < 48 * 2**20 and client.send_tolerant(piece):
            sent += len(piece)
        assert client.goaway_code() == ENHANCE_YOUR_CALM
    after = gateway.rss_mb()
    print(f"CONTINUATION flood: {sent / 2**20:.0f} MiB taken before the close; "
          f"RSS {before:.1f} -> {after:.1f} MiB")  # fmt: skip
    assert after - before < RSS_SLACK_MB / 2, (before, after)
    assert_serves(gateway)


def test_a_malformed_hpack_block_gets_goaway_compression_error(gateway: GatewayProcess) -> None:
    with closing(H2Client(gateway.grpc_target)) as client:
        client.send(frame(HEADERS, END_HEADERS, 1, b"\xff\xff\xff\xff"))
        assert client.goaway_code() == COMPRESSION_ERROR
    assert_serves(gateway)


def test_headers_on_an_even_stream_get_goaway_protocol_error(gateway: GatewayProcess) -> None:
    with closing(H2Client(gateway.grpc_target)) as client:
        client.send(client.headers(2))
        assert client.goaway_code() == PROTOCOL_ERROR
    assert_serves(gateway)


def test_a_push_promise_from_the_client_gets_goaway_protocol_error(
    gateway: GatewayProcess,
) -> None:
    with closing(H2Client(gateway.grpc_target)) as client:
        block = client.encoder.encode([(":method", "GET"), (":path", "/")])
        client.send(frame(PUSH_PROMISE, END_HEADERS, 1, (2).to_bytes(4, "big") + block))
        assert client.goaway_code() == PROTOCOL_ERROR
    assert_serves(gateway)


# --- calls refused before their handler ---------------------------------------------------------
def test_a_message_declaring_1_gb_is_refused_on_its_prefix(gateway: GatewayProcess) -> None:
    with closing(H2Client(gateway.grpc_target)) as client:
        client.send(client.headers(1) + frame(DATA, 0, 1, grpc_message(b"", declared=1 << 30)))
        answer = client.answer(1)
        assert answer.status == RESOURCE_EXHAUSTED, answer
        assert "larger than max" in answer.message
        client.wait_for(lambda: answer.reset is not None, 10, "the RST_STREAM after the answer")
        assert answer.events == ["headers", "rst"] and answer.reset == NO_ERROR  # trailers-only
        # what the client still sends on the refused stream is dropped; the connection serves on
        client.send(frame(DATA, END_STREAM, 1, b"\x00" * 1000))
        client.call(3)
        assert client.answer(3).status == OK
    assert_serves(gateway)


def test_calls_the_server_cannot_serve_get_their_grpc_status(gateway: GatewayProcess) -> None:
    with closing(H2Client(gateway.grpc_target)) as client:
        client.call(1, override={"content-type": "text/plain"})
        client.call(3, "/no.Such/Method")
        client.call(5, override={"grpc-timeout": "soon"})
        client.call(7, override={"grpc-timeout": "123456789S"})  # more than 8 digits
        wrong_type, unknown, *bad_timeouts = (client.answer(s) for s in (1, 3, 5, 7))
        assert wrong_type.status == UNIMPLEMENTED, wrong_type
        assert unknown.status == UNIMPLEMENTED and "Method not found" in unknown.message, unknown
        for answer in bad_timeouts:
            assert answer.status == INVALID_ARGUMENT and "grpc-timeout" in answer.message, answer
        client.call(9)  # the connection still serves
        assert client.answer(9).status == OK
    assert_serves(gateway)


def test_a_unary_call_with_two_messages_is_invalid(gateway: GatewayProcess) -> None:
    two = grpc_message(b"") + grpc_message(b"")
    with closing(H2Client(gateway.grpc_target)) as client:
        client.send(client.headers(1) + frame(DATA, END_STREAM, 1, two))  # in one frame
        client.send(
            client.headers(3)  # in two frames, the second beyond the first message
            + frame(DATA, 0, 3, grpc_message(b""))
            + frame(DATA, END_STREAM, 3, grpc_message(b""))
        )
        for stream_id in (1, 3):
            answer = client.answer(stream_id)
            assert answer.status == INVALID_ARGUMENT, answer
            assert "message" in answer.message
        client.call(5)
        assert client.answer(5).status == OK
    assert_serves(gateway)


def test_connections_beyond_max_connections_get_goaway(tight: GatewayProcess) -> None:
    clients: list[H2Client] = []
    try:
        for _ in range(TIGHT_CONNECTIONS):
            clients.append(H2Client(tight.grpc_target))
            clients[-1].call(1)
            assert clients[-1].answer(1).status == OK
        extra = H2Client(tight.grpc_target)
        clients.append(extra)
        assert extra.goaway_code() == ENHANCE_YOUR_CALM
        assert not any(client.goaway or client.eof for client in clients[:-1])
    finally:
        for client in clients:
            client.close()
    deadline = time.monotonic() + 10  # until the gateway has seen the closes
    while True:
        try:
            assert_serves(tight)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_a_single_frame_header_block_over_the_limit_is_refused_before_decoding(
    tight: GatewayProcess,
) -> None:
    """--max-header-bytes 4096 bounds a block in one HEADERS frame as it bounds one continued
    over CONTINUATIONs: GOAWAY ENHANCE_YOUR_CALM, not decoded (frames may carry 16 KiB)."""
    for split in (False, True):
        with closing(H2Client(tight.grpc_target)) as client:
            fields = [(":method", "POST"), (":path", LIVE), ("x-big", "a" * 6000)]
            block = client.encoder.encode(fields, huffman=False)
            assert TIGHT_HEADER_BYTES < len(block) < 16_384
            if split:
                client.send(frame(HEADERS, 0, 1, block[:3000])
                            + frame(CONTINUATION, END_HEADERS, 1, block[3000:]))  # fmt: skip
            else:
                client.send(frame(HEADERS, END_HEADERS, 1, block))
            assert client.goaway_code() == ENHANCE_YOUR_CALM, split
    assert_serves(tight)


# --- streams and their work ---------------------------------------------------------------------
def test_streams_beyond_the_limit_are_refused(tight: GatewayProcess) -> None:
    with closing(H2Client(tight.grpc_target)) as client:
        client.wait_for(lambda: client.settings, 10, "the server's SETTINGS")
        ids = [1, 3, 5, 7, 9, 11]
        client.send(b"".join(client.headers(stream_id) for stream_id in ids))  # no body yet
        refused = ids[TIGHT_STREAMS:]
        client.wait_for(
            lambda: all(client.answer_of(s).reset is not None for s in refused), 10, "refusals"
        )
        assert [client.answers[s].reset for s in refused] == [REFUSED_STREAM] * len(refused)
        # the 4 admitted ones are held until their bodies time out (--body-timeout-s 1)
        for stream_id in ids[:TIGHT_STREAMS]:
            answer = client.answer(stream_id)
            assert answer.status == DEADLINE_EXCEEDED, answer
            assert answer.events[0] == "headers", answer  # answered, not refused
        client.call(13)  # their slots are free again
        assert client.answer(13).status == OK
    assert_serves(tight)


def test_rapid_reset_keeps_the_connection_bounded_and_serving(tight: GatewayProcess) -> None:
    """2,000 ModelInfer calls each reset by the client right after it was sent, in one burst: the
    streams beyond 4 are refused, the work started stays within the bounds, and afterwards the
    same connection, a new one and the whole server (4 calls at once) still serve."""
    message = infer_message()
    before = tight.rss_mb()
    with closing(H2Client(tight.grpc_target)) as client:
        ids = range(1, 4001, 2)
        burst = b"".join(
            client.headers(s, INFER) + frame(DATA, END_STREAM, s, grpc_message(message))
            + frame(RST_STREAM, 0, s, CANCEL.to_bytes(4, "big"))
            for s in ids
        )  # fmt: skip
        started = time.monotonic()
        client.send(burst + frame(PING, 0, 0, b"burstend"))
        client.wait_for(lambda: client.ping_acks, 20, "the burst to be read")
        burst_s = time.monotonic() - started
        refused = sum(client.answer_of(s).reset == REFUSED_STREAM for s in ids)
        answered = sum("headers" in client.answer_of(s).events for s in ids)
        during = tight.rss_mb()
        assert refused > 0, "4 streams per connection: most of a burst is refused"
        print(f"rapid reset: {len(ids)} streams in {burst_s:.2f} s, {refused} refused, "
              f"{answered} answered; RSS {before:.1f} -> {during:.1f} MiB")  # fmt: skip
        # the reset calls' handlers end and free their slots: this connection serves again
        # (a refused stream is what a client retries)
        deadline = time.monotonic() + 10
        stream_id = ids[-1] + 2
        while True:
            client.call(stream_id)
            answer = client.answer(stream_id)
            if answer.reset != REFUSED_STREAM or time.monotonic() > deadline:
                break
            stream_id += 2
            time.sleep(0.05)
        assert answer.reset is None and answer.status == OK, answer
        assert time.monotonic() - started < 15
    assert tight.rss_mb() - before < RSS_SLACK_MB
    with closing(H2Client(tight.grpc_target)) as client:  # the server's 4 call slots are free
        client.send(b"".join(client.headers(s, INFER) + frame(DATA, END_STREAM, s,
                                                              grpc_message(message))
                             for s in (1, 3, 5, 7)))  # fmt: skip
        for stream_id in (1, 3, 5, 7):
            answer = client.answer(stream_id)
            assert answer.status == OK, answer
            assert v2_grpc.ModelInferResponse.FromString(answer.body).model_name == MODEL
    assert_serves(tight)


# --- timeouts -----------------------------------------------------------------------------------
def test_a_body_that_never_finishes_gets_deadline_exceeded(tight: GatewayProcess) -> None:
    with closing(H2Client(tight.grpc_target)) as client:
        started = time.monotonic()
        client.send(client.headers(1) + frame(DATA, 0, 1, grpc_message(b"\x00" * 10, 100)))
        answer = client.answer(1)
        elapsed = time.monotonic() - started
        assert answer.status == DEADLINE_EXCEEDED, answer
        assert 0.9 < elapsed < 5, elapsed
        client.wait_for(lambda: answer.reset is not None, 5, "the RST_STREAM after the answer")
        assert answer.reset == NO_ERROR
    assert_serves(tight)


def test_a_connection_without_a_preface_is_closed(tight: GatewayProcess) -> None:
    with closing(H2Client(tight.grpc_target, preface=False)) as client:
        started = time.monotonic()
        client.wait_for(lambda: client.eof, 10, "the connection to close")
        elapsed = time.monotonic() - started
        assert 0.9 < elapsed < 5, elapsed
    assert_serves(tight)


def test_answers_left_unread_past_the_write_timeout_abort_the_connection(
    tight: GatewayProcess,
) -> None:
    """A PING flood whose ACKs are never read: once the gateway's write buffer has been full for
    --write-timeout-s (1 s), it aborts the connection, which the flooding sender sees."""
    chunk = frame(PING, 0, 0, b"\x00" * 8) * 4096
    with closing(H2Client(tight.grpc_target, receive_buffer=4096)) as client:
        client.sock.settimeout(30)
        failure: list[OSError] = []
        started = time.monotonic()
        try:
            for _ in range(3_000_000 // 4096):
                client.sock.sendall(chunk)
        except OSError as exc:
            failure.append(exc)
        elapsed = time.monotonic() - started
    print(f"write timeout: the flooding sender failed after {elapsed:.2f} s: {failure}")
    assert failure and isinstance(failure[0], (ConnectionResetError, BrokenPipeError)), failure
    assert 0.9 < elapsed < 6, elapsed
    assert_serves(tight)


# --- floods -------------------------------------------------------------------------------------
def test_a_ping_flood_left_unread_stops_the_reading(gateway: GatewayProcess) -> None:
    """PINGs sent without reading an ACK: once its write buffer is full the gateway stops reading,
    so the flood stalls in the kernel's buffers (about 6.5 MB on loopback) instead of queueing
    ACKs in the gateway's memory; once the client reads, every PING it sent is acked.

    Up to 3,000,000 PINGs (51 MB) are offered: 200,000 (3.4 MB) would fit in the kernel's
    buffers and never reach the gateway's bound."""
    one = frame(PING, 0, 0, b"\x00" * 8)
    chunk, chunks = one * 4096, 3_000_000 // 4096
    before = gateway.rss_mb()
    with closing(H2Client(gateway.grpc_target, receive_buffer=4096)) as client:
        sent, stop, failure = [0], threading.Event(), []

        def flood() -> None:
            try:
                for _ in range(chunks):
                    if stop.is_set():
                        return
                    client.sock.sendall(chunk)
                    sent[0] += len(chunk)
            except OSError as exc:  # reported below
                failure.append(exc)

        client.sock.settimeout(30)
        sender = threading.Thread(target=flood, daemon=True)
        sender.start()
        peak = before
        watch_until = time.monotonic() + 2
        while time.monotonic() < watch_until:
            peak = max(peak, gateway.rss_mb())
            time.sleep(0.05)
        stalled_at = sent[0]
        stop.set()  # the chunk in flight completes once the client reads
        started = time.monotonic()
        client.wait_for(lambda: not sender.is_alive() and client.ping_acks * len(one) == sent[0],
                        30, "an ACK of every PING sent")  # fmt: skip
        drained_s = time.monotonic() - started
        assert not failure and not client.goaway, (failure, client.goaway)
    print(f"PING flood: stalled at {stalled_at / 1e6:.1f} of {chunks * len(chunk) / 1e6:.0f} MB "
          f"left unread, {sent[0] // len(one)} PINGs acked in {drained_s:.2f} s once read; "
          f"RSS {before:.1f} -> peak {peak:.1f} MiB")  # fmt: skip
    assert stalled_at < chunks * len(chunk) // 2, "the gateway kept reading an unread connection"
    assert peak - before < RSS_SLACK_MB / 2, (before, peak)
    assert_serves(gateway)


def test_data_beyond_the_connection_window_gets_goaway_flow_control_error(
    gateway: GatewayProcess,
) -> None:
    """The transport gives the connection's 4 MiB window back as data arrives while the bodies
    still arriving hold at most 128 MiB; past that, a client that does not wait for a
    WINDOW_UPDATE oversteps the window. Two 64 MiB messages (the default --max-body-bytes)
    held unfinished, then a third stream's data: GOAWAY FLOW_CONTROL_ERROR."""
    chunk = b"\x00" * 16_384
    before = gateway.rss_mb()
    with closing(H2Client(gateway.grpc_target)) as client:
        client.wait_for(lambda: client.settings, 10, "the server's SETTINGS")
        window = client.settings[0][INITIAL_WINDOW_SIZE]
        assert window == 4 * 1024 * 1024

        def body(stream_id: int, size: int) -> Iterator[bytes]:
            """``size`` bytes of a 64 MiB message on ``stream_id``, no END_STREAM, 1 MiB a go."""
            yield client.headers(stream_id, INFER) + frame(
                DATA, 0, stream_id, grpc_message(b"", DEFAULT_MAX_BODY)
            )
            for _ in range(size // (64 * len(chunk))):
                yield frame(DATA, 0, stream_id, chunk) * 64

        started = time.monotonic()
        sent = 0
        pieces = (
            piece
            for stream_id, size in ((1, DEFAULT_MAX_BODY), (3, DEFAULT_MAX_BODY), (5, 2 * window))
            for piece in body(stream_id, size)
        )
        for piece in pieces:
            if not client.send_tolerant(piece):
                break
            sent += len(piece)
        assert client.goaway_code(30) == FLOW_CONTROL_ERROR
        elapsed = time.monotonic() - started
    assert sent > DEFAULT_MAX_BUFFERED
    peak = peak_rss_mb(gateway)
    time.sleep(0.5)
    after = gateway.rss_mb()
    print(f"flow control: {sent / 2**20:.0f} MiB sent in {elapsed:.2f} s; RSS {before:.1f} -> "
          f"peak (VmHWM) {peak:.1f} -> {after:.1f} MiB after the close")  # fmt: skip
    assert peak - before < DEFAULT_MAX_BUFFERED / 2**20 * 1.5 + RSS_SLACK_MB, (before, peak)
    assert after - before < RSS_SLACK_MB, (before, after)
    assert_serves(gateway)


def peak_rss_mb(gateway: GatewayProcess) -> float:
    status = Path(f"/proc/{gateway.process.pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    assert match
    return int(match.group(1)) / 1024


# --- the server's side of flow control -----------------------------------------------------------
def test_an_answer_waits_for_the_clients_window_and_fits_its_frames(
    gateway: GatewayProcess,
) -> None:
    """A client that allows 1,000 bytes per stream gets 1,000 bytes of a 20 KB answer (512
    images' probabilities), the rest once it grants more, in DATA frames of at most 16 KiB (its
    SETTINGS_MAX_FRAME_SIZE), then the trailers: the answer equals what the gateway sends a
    client without such limits."""
    import numpy as np

    images = sample_images(512, seed=8)
    message = v2_grpc.build_infer_request(MODEL, {"image": images}).SerializeToString()
    body = grpc_message(message)
    frames = b"".join(
        frame(DATA, END_STREAM if offset + 16_384 >= len(body) else 0, 1,
              body[offset : offset + 16_384])
        for offset in range(0, len(body), 16_384)
    )  # fmt: skip
    with closing(H2Client(gateway.grpc_target, preface=False)) as client:
        window = (INITIAL_WINDOW_SIZE).to_bytes(2, "big") + (1000).to_bytes(4, "big")
        client.send(PREFACE + frame(SETTINGS, 0, 0, window))
        client.send(client.headers(1, INFER) + frames)
        answer = client.answer_of(1)
        client.wait_for(lambda: len(answer.data) >= 1000, 10, "the first 1,000 bytes")
        client._read(0.3)  # nothing more may come while the window is spent
        assert len(answer.data) == 1000 and not answer.done, answer.events
        client.send(frame(WINDOW_UPDATE, 0, 1, (1 << 20).to_bytes(4, "big")))
        client.answer(1)
        assert answer.status == OK, answer
        reply = v2_grpc.ModelInferResponse.FromString(answer.body)
    with closing(H2Client(gateway.grpc_target)) as plain:
        plain.send(plain.headers(1, INFER) + frames)
        expected = v2_grpc.ModelInferResponse.FromString(plain.answer(1).body)
    got = np.frombuffer(reply.raw_output_contents[0], np.float32)
    assert got.size == 512 * 10 and len(answer.data) > 16_384
    assert got.tobytes() == expected.raw_output_contents[0]
    assert answer.events.count("data") >= 3  # 1,000 bytes, then frames of at most 16 KiB


# --- what the operator sees ----------------------------------------------------------------------
def test_refusals_are_counted_and_logged_like_the_http_servers(repo: Path, tmp_path: Path) -> None:
    """Refusals before any handler count in serving_connection_refusals under protocol "grpc"
    with the HTTP status they stand for, and are logged with their reason; REFUSED_STREAM (flow
    control that clients retry, a rapid-reset flood's bulk) is counted, not logged."""
    import json

    import httpx

    from tests.metrics_text import metric_value

    log = tmp_path / "access.jsonl"
    running = GatewayProcess(
        repo, "--access-log", str(log), "--grpc-max-streams-per-connection", "1"
    )
    try:
        with closing(H2Client(running.grpc_target)) as client:  # 413: a 1 GB prefix
            client.send(client.headers(1, INFER) + frame(DATA, 0, 1, grpc_message(b"", 10**9)))
            assert client.answer(1).status == RESOURCE_EXHAUSTED
            client.send(client.headers(3) + client.headers(5))  # 503: stream 5 over the limit
            client.wait_for(lambda: client.answer_of(5).reset is not None, 10, "REFUSED_STREAM")
            assert client.answer_of(5).reset == REFUSED_STREAM
        with closing(H2Client(running.grpc_target)) as client:  # 400: a malformed HPACK block
            client.send(frame(HEADERS, END_HEADERS, 1, b"\xff\xff\xff\xff"))
            assert client.goaway_code() == COMPRESSION_ERROR
        text = httpx.get(f"{running.http_url}/metrics", timeout=10).text
        counted = {
            status: metric_value(
                text, "serving_connection_refusals_total", protocol="grpc", status=status
            )
            for status in ("413", "503", "400")
        }
        assert counted == {"413": 1.0, "503": 1.0, "400": 1.0}, counted
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(log.read_text().splitlines()) < 2:
            time.sleep(0.05)
        lines = [json.loads(line) for line in log.read_text().splitlines()]
    finally:
        stop_cleanly(running)
    refusals = [(line["code"], line["status"]) for line in lines if line["protocol"] == "grpc"]
    assert refusals == [("RESOURCE_EXHAUSTED", 413), ("COMPRESSION_ERROR", 400)], lines

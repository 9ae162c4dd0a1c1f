"""Cheap requests that must not cost everyone (issue 33): integers of thousands of digits,
chunked trailers, images whose header Pillow would inflate or walk byte by byte, and what one
client sending such requests back to back does to another's latency.

The gateway is a real ``python -m serving`` process, as in ``test_serving_hostile.py`` (1 MiB
bodies, the default 16 KiB head limit); requests the tables there cannot express (raw framing,
answers that must be 200, costs) live here. Every test is bounded in requests and time.
"""

from __future__ import annotations

import http.client
import io
import json
import re
import socket
import statistics
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.serving.serving_harness import GatewayProcess, connect
from tests.tiny_models import lenet_like, write_models_config, write_version

MODEL = "lenet"
MAX_BODY = 1024 * 1024
HEAD_LIMIT = 16 * 1024  # the gateway's default --max-header-bytes
PREDICT = f"/v1/models/{MODEL}:predict"
INFER = f"/v2/models/{MODEL}/infer"
CLASSIFY = f"/v1/models/{MODEL}:classify_image"
GOOD_ROW = json.dumps({"instances": [[[[0]] * 28] * 28]}).encode()
#: others' median latency under one back-to-back attacker, at most this many times the unloaded
#: one measured in the same test (generous: the machine's cores are shared)
COST_RATIO = 10.0


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("hostile-cost")
    write_version(root, MODEL, 1, lenet_like())
    write_models_config(root, [MODEL])
    running = GatewayProcess(root, "--max-body-bytes", str(MAX_BODY), "--max-request-batch", "8")
    try:
        yield running
    finally:
        running.stop()


# --- images -------------------------------------------------------------------------------------
def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _encoded(image: Image.Image, kind: str) -> bytes:
    out = io.BytesIO()
    image.save(out, format=kind)
    return out.getvalue()


SMALL_PNG = _encoded(Image.new("L", (28, 28), 128), "PNG")
SMALL_JPEG = _encoded(Image.new("L", (28, 28), 90), "JPEG")
_MEGABYTE_OF_ZEROS = zlib.compress(bytes(1 << 20), 9)  # about 1 KB that inflates to 1 MiB


def png_with_inflating_chunks(count: int, kind: bytes = b"zTXt") -> bytes:
    """A 28x28 PNG with ``count`` compressed ancillary chunks after its IHDR, each inflating to
    1 MiB (Pillow's own cap per chunk): about 1 KB each on the wire."""
    body = b"k\0\0" + _MEGABYTE_OF_ZEROS if kind == b"zTXt" else b"icc\0\0" + _MEGABYTE_OF_ZEROS
    header_end = 8 + 25  # the signature and IHDR
    return SMALL_PNG[:header_end] + png_chunk(kind, body) * count + SMALL_PNG[header_end:]


def jpeg_with_comment(comment: bytes) -> bytes:
    """``SMALL_JPEG`` with a comment segment (COM) holding ``comment`` right after SOI."""
    return (
        SMALL_JPEG[:2]
        + b"\xff\xfe"
        + struct.pack(">H", 2 + len(comment))
        + comment
        + SMALL_JPEG[2:]
    )


# --- raw HTTP -----------------------------------------------------------------------------------
def read_answer(conn: socket.socket) -> bytes:
    """Everything the gateway sends until it closes (a reset after its answer is fine)."""
    answer = b""
    try:
        while chunk := conn.recv(65536):
            answer += chunk
            if re.search(rb"\r\n\r\n", answer) and b"connection: close" not in answer.lower():
                head, _, body = answer.partition(b"\r\n\r\n")
                length = re.search(rb"content-length: (\d+)", head, re.I)
                if length and len(body) >= int(length.group(1)):
                    break
    except ConnectionResetError:
        pass
    return answer


def post_raw(gateway: GatewayProcess, path: str, headers: dict[str, str], body: bytes) -> bytes:
    """One POST with exactly these headers (no Content-Length added), the whole answer back."""
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in headers.items()
    )
    with connect(gateway.http_url) as conn:
        conn.sendall(head.encode() + b"\r\n" + body)
        return read_answer(conn)


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer[9:12])


# --- point 1: integers of thousands of digits ---------------------------------------------------
@pytest.mark.parametrize(
    ("path", "body"),
    [(PREDICT, GOOD_ROW), (CLASSIFY, SMALL_PNG)],
    ids=["hot-route", "asgi-route"],
)
def test_content_length_of_5000_digits_is_read_as_its_value(
    gateway: GatewayProcess, path: str, body: bytes
) -> None:
    """Leading zeros are legal HTTP: 5,000 digits of them before the length is that length
    (200), and 5,000 significant digits are over any limit (413), on every route: never a 500
    from Python's int-conversion digit limit."""
    zeros = "0" * (5000 - len(str(len(body)))) + str(len(body))
    assert status_of(post_raw(gateway, path, {"Content-Length": zeros}, body)) == 200
    # Past 64 bits httptools refuses the head itself: 400, in the gateway's error body.
    for length, status, words in (
        ("9" * 18, 413, b"exceeds the limit"),
        ("9" * 5000, 400, b"invalid HTTP request"),
    ):
        answer = post_raw(gateway, path, {"Content-Length": length}, body)
        assert status_of(answer) == status, answer[:300]
        assert words in answer and b'{"error":' in answer


def test_v2_header_length_of_5003_digits_with_a_correct_value_is_that_value(
    gateway: GatewayProcess,
) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1, 28, 28, 1],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": 784},
                }
            ]
        }
    ).encode()
    length = "0" * (5003 - len(str(len(header)))) + str(len(header))
    body = header + bytes(784)
    answer = post_raw(
        gateway,
        INFER,
        {"Content-Length": str(len(body)), "Inference-Header-Content-Length": length},
        body,
    )
    assert status_of(answer) == 200, answer[:300]


# --- point 2: chunked trailers and framing ------------------------------------------------------
def _stream_until_refused(
    conn: socket.socket, first: bytes, piece: bytes, most: int
) -> tuple[int, bytes]:
    """Send ``first``, then ``piece`` again and again (at most ``most`` bytes) until the gateway
    stops reading; (bytes sent after ``first``, its answer)."""
    conn.sendall(first)
    sent = 0
    try:
        while sent < most:
            conn.sendall(piece)
            sent += len(piece)
            time.sleep(0.0005)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return sent, read_answer(conn)


@pytest.mark.parametrize("path", [PREDICT, CLASSIFY], ids=["hot-route", "asgi-route"])
def test_a_chunked_trailer_counts_against_the_head_limit(
    gateway: GatewayProcess, path: str
) -> None:
    """A trailer that never ends, after a valid chunked body: 431 once the bytes after the head
    that are not body pass the head limit, and the gateway stops reading; before, they counted
    against no limit and httptools grew the header by concatenation on the event loop."""
    body = GOOD_ROW if path == PREDICT else SMALL_PNG
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    first = head + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\nX-Trailer: "
    with connect(gateway.http_url) as conn:
        sent, answer = _stream_until_refused(conn, first, b"a" * 4096, 4 * 1024 * 1024)
    assert status_of(answer) == 431, answer[:300]
    assert b"trailers" in answer
    assert sent < 2 * 1024 * 1024, f"the gateway read {sent} bytes of one trailer"


def test_the_bytes_read_for_one_request_are_bounded(gateway: GatewayProcess) -> None:
    """A chunked body over the limit on a hot route is refused (413) as soon as it passes the
    limit; the gateway then stops reading once the bytes after the head pass body limit + head
    limit, where it used to read and drop the rest of the body for as long as it came."""
    head = f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    piece = b"10000\r\n" + b" " * 0x10000 + b"\r\n"  # 64 KiB chunks
    with connect(gateway.http_url) as conn:
        sent, answer = _stream_until_refused(conn, head, piece, 64 * 1024 * 1024)
    assert status_of(answer) == 413, answer[:300]
    assert sent < 16 * 1024 * 1024, f"the gateway read {sent} bytes of one request"


# --- points 3 and 6: images ---------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks


@pytest.mark.parametrize("kind", [b"zTXt", b"iCCP"])
def test_compressed_ancillary_chunks_are_never_inflated(
    gateway: GatewayProcess, kind: bytes
) -> None:
    """A small PNG whose 56 compressed chunks would inflate to 1 MiB each (80-100 ms of event
    loop per request before) is served (200) for about what a plain small PNG costs: the chunks
    change no pixel and are dropped unread."""
    image = png_with_inflating_chunks(56, kind)
    assert len(image) < 64 * 1024  # decoded on the event loop
    conn = http.client.HTTPConnection(*gateway.http_url.removeprefix("http://").split(":"))
    try:
        before = cpu_seconds(gateway.process.pid)
        for _ in range(20):
            conn.request("POST", CLASSIFY, body=image)
            reply = conn.getresponse()
            reply.read()
            assert reply.status == 200
        per_request = (cpu_seconds(gateway.process.pid) - before) / 20
    finally:
        conn.close()
    assert per_request < 0.02, f"{per_request * 1000:.1f} ms of gateway CPU per request"


def test_a_comment_holding_scan_markers_is_not_a_scan(gateway: GatewayProcess) -> None:
    """The bytes FF DA 101 times inside a comment segment are the comment's, not 101 scans."""
    conn = http.client.HTTPConnection(*gateway.http_url.removeprefix("http://").split(":"))
    try:
        conn.request("POST", CLASSIFY, body=jpeg_with_comment(b"\xff\xda" * 101))
        reply = conn.getresponse()
        assert reply.status == 200, reply.read()[:300]
    finally:
        conn.close()


# --- the cost guard -----------------------------------------------------------------------------
_ATTACKER = r"""
import socket, sys, time
host, port, path, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
request = sys.stdin.buffer.read()
end = time.monotonic() + seconds
while time.monotonic() < end:
    try:
        with socket.create_connection((host, port), timeout=10) as conn:
            conn.sendall(request)
            while conn.recv(65536):
                pass
    except OSError:
        time.sleep(0.01)
"""


def _request(path: str, headers: dict[str, str], body: bytes) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in headers.items()
    )
    return head.encode() + b"\r\n" + body


def _chunked_trailer(megabytes: int) -> bytes:
    head = f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    chunk = f"{len(GOOD_ROW):x}\r\n".encode() + GOOD_ROW + b"\r\n"
    return head + chunk + b"0\r\nX-Trailer: " + b"a" * (megabytes << 20) + b"\r\n\r\n"


def _length(body: bytes) -> dict[str, str]:
    return {"Content-Length": str(len(body))}


_FILL_JPEG = SMALL_JPEG[:2] + b"\xff" * 60_000 + SMALL_JPEG[2:]
_STRAY_JPEG = SMALL_JPEG[:2] + b"\xff\xfe\x00\x02" + b"s" * 60_000 + SMALL_JPEG[2:]
_INFLATING_PNG = png_with_inflating_chunks(56)
_HUGE_SHAPE = json.dumps(
    {"inputs": [{"name": "image", "shape": [1] * 300_000, "datatype": "UINT8", "data": [0]}]}
).encode()
#: one hostile class per row: (id, the raw request an attacker sends back to back)
COST_CASES = [
    ("png-56-inflating-chunks", _request(CLASSIFY, _length(_INFLATING_PNG), _INFLATING_PNG)),
    ("jpeg-60kb-fill-bytes", _request(CLASSIFY, _length(_FILL_JPEG), _FILL_JPEG)),
    ("jpeg-60kb-stray-bytes", _request(CLASSIFY, _length(_STRAY_JPEG), _STRAY_JPEG)),
    ("chunked-8mb-trailer", _chunked_trailer(8)),
    ("content-length-5000-digits", _request(CLASSIFY, {"Content-Length": "9" * 5000}, b"")),
    ("v2-shape-of-300000-dims", _request(INFER, _length(_HUGE_SHAPE), _HUGE_SHAPE)),
]


def normal_latencies(gateway: GatewayProcess, count: int, budget_s: float) -> list[float]:
    """Seconds per normal :predict, one at a time on one keep-alive connection."""
    host, port = gateway.http_url.removeprefix("http://").split(":")
    latencies: list[float] = []
    end = time.monotonic() + budget_s
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        while len(latencies) < count and time.monotonic() < end:
            started = time.perf_counter()
            conn.request("POST", PREDICT, body=GOOD_ROW)
            reply = conn.getresponse()
            reply.read()
            latencies.append(time.perf_counter() - started)
            assert reply.status == 200
    finally:
        conn.close()
    return latencies


@pytest.mark.parametrize(
    "request_bytes", [case[1] for case in COST_CASES], ids=[c[0] for c in COST_CASES]
)
def test_one_client_sending_a_hostile_class_back_to_back_costs_the_others_little(
    gateway: GatewayProcess, request_bytes: bytes
) -> None:
    """One client sends the class back to back (its own process, so the measuring client's
    interpreter is not shared), while another's median :predict latency stays within
    ``COST_RATIO`` times the unloaded median measured just before, in the same test."""
    normal_latencies(gateway, 20, 5)  # warm
    unloaded = statistics.median(normal_latencies(gateway, 150, 10))
    host, port = gateway.http_url.removeprefix("http://").split(":")
    attacker = subprocess.Popen(
        [sys.executable, "-c", _ATTACKER, host, port, "/", "30"], stdin=subprocess.PIPE
    )
    try:
        assert attacker.stdin is not None
        attacker.stdin.write(request_bytes)
        attacker.stdin.close()
        time.sleep(0.5)  # the attack under way
        loaded = statistics.median(normal_latencies(gateway, 150, 15))
    finally:
        attacker.kill()
        attacker.wait()
    limit = COST_RATIO * max(unloaded, 0.001)
    assert loaded <= limit, (
        f"others' median {loaded * 1000:.1f} ms under attack, unloaded {unloaded * 1000:.2f} ms"
    )


# --- point 5: memory of a compressed gRPC message -----------------------------------------------
def peak_rss_mb(pid: int) -> float:
    match = re.search(r"^VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    assert match
    return int(match.group(1)) / 1024


def _lying_predict(content_bytes: int) -> bytes:
    """A Predict whose [1, 28, 28, 1] uint8 tensor carries ``content_bytes`` of zeros."""
    from clients import wire

    request = wire.PredictRequest(model_spec=wire.model_spec(MODEL))
    proto = request.inputs["image"]
    proto.dtype = wire.DataType.DT_UINT8
    for size in (1, 28, 28, 1):
        proto.tensor_shape.dim.add(size=size)
    proto.tensor_content = bytes(content_bytes)
    return request.SerializeToString()


@pytest.mark.parametrize("accept_compressed", [True, False], ids=["accepted", "refused"])
def test_a_compressed_grpc_message_costs_what_grpc_itself_holds(
    tmp_path: Path, accept_compressed: bool
) -> None:
    """60 MB of zeros, gzip-compressed to about 60 KB, for a 784-byte tensor. Accepted: refused
    (INVALID_ARGUMENT) from its size before any tensor's bytes are read, and the server's peak
    memory rises by at most 3.5x the message: gRPC's own receive path holds about 3 copies (a
    bare grpc.aio server measured +174-184 MB), and the gateway used to add two (the admission's
    ByteSize() re-serialised the message, reading tensor_content copied it: +289-295 MB).
    With --no-grpc-compressed-requests it is refused (UNIMPLEMENTED) before it is inflated."""
    import grpc

    from clients import wire

    write_version(tmp_path, MODEL, 1, lenet_like())
    write_models_config(tmp_path, [MODEL])
    options = () if accept_compressed else ("--no-grpc-compressed-requests",)
    running = GatewayProcess(tmp_path, *options)
    message = 60_000_000
    raw = _lying_predict(message)
    try:
        channel_options = [("grpc.max_send_message_length", -1)]
        with grpc.insecure_channel(running.grpc_target, options=channel_options) as channel:
            call = channel.unary_unary(wire.PREDICT_METHOD)
            with pytest.raises(grpc.RpcError):  # warm the path with a small lie
                call(_lying_predict(1000), timeout=10)
            before = peak_rss_mb(running.process.pid)
            with pytest.raises(grpc.RpcError) as caught:
                call(raw, timeout=30, compression=grpc.Compression.Gzip)
            time.sleep(0.2)
            lift = peak_rss_mb(running.process.pid) - before
    finally:
        running.stop()
    print(f"peak RSS +{lift:.0f} MiB for a {message / 1e6:.0f} MB message")  # pytest -s shows it
    if accept_compressed:
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "larger than its declared tensors" in (caught.value.details() or "")
        assert lift <= 3.5 * message / 2**20, f"peak memory +{lift:.0f} MiB"
    else:
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert lift <= 20, f"peak memory +{lift:.0f} MiB"

"""The hot routes served by the HTTP protocol itself (``rest/protocol.py``) answer exactly as the
front door's ASGI path does, and keep HTTP's rules: pipelining order, ``Expect: 100-continue``,
HTTP/1.0, chunked bodies, clients that leave before their answer.

A hot request pipelined behind an unanswered one takes uvicorn's ASGI path to the front door, so
sending a request twice in one write compares the two paths on one connection, byte for byte.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serving.serving_harness import (
    RawResponses,
    RunningGateway,
    connect,
    requests_total,
    server_connections,
    server_side,
    small_send_buffer,
    wait_until,
)
from tests.tiny_models import sample_images

PREDICT = "/v1/models/tiny:predict"
INFER = "/v2/models/tiny/infer"


def _request(path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    # One client-chosen request id: every answer echoes it, so the paths' bytes can be equal.
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: x",
        f"Content-Length: {len(body)}",
        "X-Request-Id: r-1",
    ]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _v2_binary() -> tuple[bytes, dict[str, str]]:
    images = sample_images(2, seed=3)
    header = json.dumps(
        {"inputs": [{"name": "image", "shape": [2, 28, 28, 1], "datatype": "UINT8",
                     "parameters": {"binary_data_size": images.nbytes}}]}
    ).encode()  # fmt: skip
    return header + images.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


V2_JSON = json.dumps(
    {"inputs": [{"name": "image", "shape": [1, 28, 28, 1], "datatype": "UINT8",
                 "data": sample_images(1).ravel().tolist()}]}
).encode()  # fmt: skip

CASES = {
    "predict rows": (PREDICT, json.dumps({"instances": sample_images(3).tolist()}).encode(), {}),
    "predict by label": (
        "/v1/models/tiny/labels/canary:predict",
        json.dumps({"inputs": sample_images(1).tolist()}).encode(),
        {},
    ),
    "v2 json": ("/v2/models/tiny/versions/2/infer", V2_JSON, {}),
    "v2 binary": (INFER, *_v2_binary()),
    "query string": (PREDICT + "?trace=1", json.dumps({"instances": [[0] * 4]}).encode(), {}),
    # Not valid in a request-target; uvicorn drops it, so the model is "tiny", not "tiny#x".
    "fragment": ("/v2/models/tiny#x/infer", V2_JSON, {}),
    "wrong shape (400)": (PREDICT, b'{"instances": [[1, 2]]}', {}),
    "bad json (400)": (PREDICT, b'{"instances": [', {}),
    "unknown model (404)": ("/v1/models/nope:predict", b'{"instances": [[1]]}', {}),
    "unknown version (404)": ("/v2/models/tiny/versions/9/infer", b"{}", {}),
    "bad timeout (400)": (PREDICT, b'{"instances": [[1]]}', {"x-request-timeout-ms": "soon"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_protocol_and_asgi_paths_answer_byte_for_byte_alike(
    gateway: RunningGateway, case: str
) -> None:
    path, body, headers = CASES[case]
    request = _request(path, body, headers)
    with connect(gateway.http_url) as conn:
        conn.sendall(request * 3)  # the first served by the protocol, the others pipelined
        responses = RawResponses(conn)
        answers = [responses.next() for _ in range(3)]
    assert answers[0] == answers[1] == answers[2], case
    assert answers[0][1][b"server"] == b"uvicorn"  # uvicorn's default headers, on both paths
    assert answers[0][1][b"x-request-id"] == b"r-1"


def test_expect_100_continue_is_answered_before_the_body(gateway: RunningGateway) -> None:
    body = json.dumps({"instances": sample_images(1).tolist()}).encode()
    head = _request(PREDICT, b"", {"Expect": "100-continue"}).replace(
        b"Content-Length: 0", f"Content-Length: {len(body)}".encode()
    )
    with connect(gateway.http_url) as conn:
        conn.sendall(head)
        assert conn.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        conn.sendall(body)
        status, _, answer = RawResponses(conn).next()
    assert status == b"HTTP/1.1 200 OK" and b"predictions" in answer


def test_a_refused_head_gets_no_100_continue(start_gateway: Any, tiny_repo: Path) -> None:
    gateway: RunningGateway = start_gateway(tiny_repo, max_body_bytes=1000)
    head = _request(PREDICT, b"", {"Expect": "100-continue"}).replace(
        b"Content-Length: 0", b"Content-Length: 5000"
    )
    with connect(gateway.http_url) as conn:
        conn.sendall(head)
        status, _, answer = RawResponses(conn).next()
    assert status == b"HTTP/1.1 413 Request Entity Too Large", status
    assert b"exceeds the limit of 1000 bytes" in answer


def test_http_1_0_is_answered_then_closed(gateway: RunningGateway) -> None:
    body = json.dumps({"instances": sample_images(1).tolist()}).encode()
    request = _request(PREDICT, body).replace(b"HTTP/1.1\r\n", b"HTTP/1.0\r\n", 1)
    with connect(gateway.http_url) as conn:
        conn.sendall(request)
        responses = RawResponses(conn)
        status, headers, _ = responses.next()
        assert status.endswith(b"200 OK") and headers[b"connection"] == b"close"
        assert responses.closed()


def test_chunked_bodies_are_read_whole_and_bounded(tiny_repo: Path, start_gateway: Any) -> None:
    body = json.dumps({"instances": sample_images(2).tolist()}).encode()
    gateway: RunningGateway = start_gateway(tiny_repo, max_body_bytes=len(body) + 10)
    pieces = [body[i : i + 1000] for i in range(0, len(body), 1000)]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"
    head = f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    with connect(gateway.http_url) as conn:
        for piece in [head, *[chunked[i : i + 700] for i in range(0, len(chunked), 700)]]:
            conn.sendall(piece)
        status, _, answer = RawResponses(conn).next()
    assert status.endswith(b"200 OK") and len(json.loads(answer)["predictions"]) == 2
    too_big = b"%x\r\n%s\r\n" % (len(body) + 11, b"[" * (len(body) + 11)) + b"0\r\n\r\n"
    with connect(gateway.http_url) as conn:
        conn.sendall(head + too_big + _request(PREDICT, body))
        responses = RawResponses(conn)
        status, _, answer = responses.next()
        assert status.endswith(b"413 Request Entity Too Large"), status
        # The connection stays usable: the rest of the refused body is skipped, the next request
        # is answered.
        assert responses.next()[0].endswith(b"200 OK")


def test_clients_that_leave_before_their_answer_hurt_no_one(gateway: RunningGateway) -> None:
    body = json.dumps({"instances": sample_images(4).tolist()}).encode()
    before = requests_total(gateway.http_url).get(("rest", "OK"), 0)
    for _ in range(30):
        with connect(gateway.http_url) as conn:
            conn.sendall(_request(PREDICT, body))
            conn.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
        # closed with a reset, most likely before the answer was written
    with httpx.Client(base_url=gateway.http_url, timeout=10) as http:
        assert http.post(PREDICT, content=body).status_code == 200

    def served() -> float:
        return requests_total(gateway.http_url).get(("rest", "OK"), 0) - before

    # Each request read whole was computed and counted although its answer had nowhere to go.
    wait_until(lambda: served() >= 1, what="the requests to be counted")
    assert 1 <= served() <= 31


def test_a_client_that_leaves_its_answers_unread_is_read_no_further(
    start_gateway: Any, tiny_repo: Path
) -> None:
    """Each predict is sent once the one before was answered, and no answer is read: once the
    gateway's write buffer passes its high-water mark it writes no more and reads no more (as
    uvicorn's own path does), so its backlog stays at one answer past the mark; every answer
    then arrives, in order, once the client reads."""
    gateway: RunningGateway = start_gateway(tiny_repo)
    assert gateway.gateway._http is not None
    state = gateway.gateway._http.server_state
    request = _request(PREDICT, json.dumps({"instances": sample_images(8).tolist()}).encode())
    sent, largest_backlog, writes_paused = 0, 0, False
    with connect(gateway.http_url, receive_buffer=4096) as conn:
        server_end = server_side(gateway)
        small_send_buffer(server_end)
        high_water = server_end.transport.get_write_buffer_limits()[1]
        conn.settimeout(1)
        for _ in range(400):
            answered = state.total_requests
            try:
                conn.sendall(request)
            except TimeoutError:  # the gateway reads no more: the test's point
                break
            sent += 1
            try:
                wait_until(lambda before=answered: state.total_requests > before, timeout_s=0.5)
            except AssertionError:
                break  # the gateway holds this one back: it waits for the client to read
            largest_backlog = max(largest_backlog, server_end.transport.get_write_buffer_size())
            writes_paused = writes_paused or server_end.flow.write_paused
        assert writes_paused, "the client's unread answers never filled the gateway's buffer"
        assert sent < 400, "the gateway kept reading requests whose answers nobody read"
        one_answer = len(request)  # an 8-row answer is far smaller than its request
        assert largest_backlog <= high_water + one_answer, largest_backlog
        conn.settimeout(10)
        responses = RawResponses(conn)
        statuses = [responses.next()[0] for _ in range(sent)]
    assert statuses == [b"HTTP/1.1 200 OK"] * sent


def test_refusals_to_a_client_that_reads_none_stay_bounded(
    start_gateway: Any, tiny_repo: Path
) -> None:
    """Requests without a key, refused (401) as each head ends, pipelined in one stream and never
    read: the gateway stops reading once its unread refusals pass the high-water mark, so they
    stay within the mark plus the refusals of one read (without that, millions of bytes)."""
    # The pipelining bound would reset this connection first: lifted, to see backpressure alone.
    gateway: RunningGateway = start_gateway(
        tiny_repo, api_keys=["secret"], max_pipelined_requests=200_000
    )
    request = _request(PREDICT, b"{}")
    with connect(gateway.http_url) as conn:
        conn.sendall(request)
        refusal = RawResponses(conn).next()
        assert refusal[0] == b"HTTP/1.1 401 Unauthorized"
    refusal_bytes = len(refusal[0]) + sum(len(k) + len(v) + 4 for k, v in refusal[1].items())
    refusal_bytes += len(refusal[2]) + 64  # the Date header and the blank line, generously
    wait_until(lambda: not server_connections(gateway), what="the first connection to close")
    one_read = 256 * 1024  # the most the event loop reads from a socket at once
    with connect(gateway.http_url, receive_buffer=4096) as conn:
        server_end = server_side(gateway)
        small_send_buffer(server_end)
        high_water = server_end.transport.get_write_buffer_limits()[1]
        conn.settimeout(2)
        try:
            for _ in range(200):  # 100,000 requests, about 7 MB
                conn.sendall(request * 500)
        except TimeoutError:
            pass  # the gateway, and then the kernel's buffers, stopped taking them
        wait_until(lambda: server_end.flow.read_paused, what="the gateway to stop reading")
        backlog = server_end.transport.get_write_buffer_size()
    bound = high_water + (one_read // len(request) + 1) * refusal_bytes
    assert backlog <= bound, (backlog, bound)


def test_a_request_queued_behind_unread_refusals_gets_its_whole_body_time(
    start_gateway: Any, tiny_repo: Path
) -> None:
    """A keyed predict, its body cut short, behind 1,500 refusals the client reads only later:
    the request waits its turn unread (the gateway stops reading once the refusals back up), and
    its body deadline counts from when the gateway reads again, not from its head."""
    body_timeout_s = 2.0
    gateway: RunningGateway = start_gateway(
        tiny_repo, api_keys=["secret"], body_timeout_s=body_timeout_s, max_pipelined_requests=5000
    )  # the bound lifted: up to 1,500 may queue
    body = json.dumps({"instances": sample_images(2).tolist()}).encode()
    keyed = _request(PREDICT, body, {"x-api-key": "secret"})
    refused = _request(PREDICT, b"{}")
    with connect(gateway.http_url, receive_buffer=4096) as conn:
        server_end = server_side(gateway)
        small_send_buffer(server_end)
        conn.sendall(refused * 1500 + keyed[:-10])
        time.sleep(0.9 * body_timeout_s)  # most of its body time spent waiting its turn
        responses = RawResponses(conn)
        refusals = {responses.next()[0] for _ in range(1500)}
        time.sleep(0.5 * body_timeout_s)  # then the client takes its time with the rest
        conn.sendall(keyed[-10:])
        status, _, answer = responses.next()
    assert refusals == {b"HTTP/1.1 401 Unauthorized"}
    assert status == b"HTTP/1.1 200 OK", answer

"""Connection hygiene and a drain that loses nothing: slow or silent clients are answered 408
and closed after their deadlines while others are served, connections beyond the bound get 503,
and SIGTERM under load answers every request the gateway received (single process and
``--workers 2``)."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serving.serving_harness import (
    GatewayProcess,
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

MODEL = "tiny"
PREDICT = f"/v1/models/{MODEL}:predict"
BODY = json.dumps({"instances": sample_images(1).tolist()}).encode()


def _read_all(conn: socket.socket) -> tuple[bytes, float]:
    """Everything until the server closes, and how long that took."""
    started, answer = time.monotonic(), b""
    try:
        while chunk := conn.recv(65536):
            answer += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return answer, time.monotonic() - started


def test_slow_and_silent_clients_are_closed_while_others_are_served(
    tiny_repo: Path, start_gateway: Any
) -> None:
    gateway: RunningGateway = start_gateway(tiny_repo, header_timeout_s=0.5, body_timeout_s=0.5)
    url = gateway.http_url
    silent = [connect(url) for _ in range(50)]
    half_head = [connect(url) for _ in range(50)]
    for conn in half_head:
        conn.sendall(f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\n".encode())
    half_body = [connect(url) for _ in range(50)]
    for conn in half_body:
        conn.sendall(
            f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(BODY)}\r\n\r\n".encode()
            + BODY[:10]
        )
    # A slowloris head: a byte at a time, never idle for long, never finished.
    loris = connect(url)
    loris.sendall(b"GET /v2/health/ready HTTP/1.1\r\n")
    with httpx.Client(base_url=url, timeout=10) as http:  # others are served meanwhile
        for _ in range(20):
            assert http.post(PREDICT, content=BODY).status_code == 200
    started = time.monotonic()
    while time.monotonic() - started < 3:
        try:
            loris.sendall(b"x")
        except OSError:
            break
        time.sleep(0.05)
    loris_answer, _ = _read_all(loris)
    assert loris_answer.startswith(b"HTTP/1.1 408"), loris_answer[:100]
    assert time.monotonic() - started < 3, "the slow head was not cut at its deadline"
    for conn in half_head:
        answer, _ = _read_all(conn)
        assert answer.startswith(b"HTTP/1.1 408") and b"head not received" in answer, answer
    for conn in half_body:
        answer, _ = _read_all(conn)
        assert answer.startswith(b"HTTP/1.1 408") and b"body not received" in answer, answer
    for conn in silent:
        answer, _ = _read_all(conn)
        assert answer == b""  # closed without a word
    for conn in [*silent, *half_head, *half_body, loris]:
        conn.close()


@pytest.mark.parametrize(
    ("path", "status"),
    [
        (PREDICT, b"200 OK"),  # served by the protocol
        ("/v1/models/tiny", b"200 OK"),  # served through ASGI
        (PREDICT, b"401 Unauthorized"),  # refused at the end of its head, before its body
    ],
)
def test_idle_keep_alive_connections_close_after_the_timeout(
    tiny_repo: Path, start_gateway: Any, path: str, status: bytes
) -> None:
    keys = ["k-one"] if status.startswith(b"401") else []
    gateway: RunningGateway = start_gateway(tiny_repo, keep_alive_timeout_s=1, api_keys=keys)
    method = "POST" if path == PREDICT else "GET"
    body = BODY if method == "POST" else b""
    request = (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with connect(gateway.http_url) as conn:
        for _ in range(3):  # requests within the timeout keep the connection open
            conn.sendall(request)
            assert RawResponses(conn).next()[0] == b"HTTP/1.1 " + status
            time.sleep(0.3)
        answer, waited = _read_all(conn)  # then idle: closed by the server
    assert answer == b"" and 0.5 < waited < 5, (answer[:100], waited)


def test_connections_beyond_the_bound_get_503(tiny_repo: Path, start_gateway: Any) -> None:
    gateway: RunningGateway = start_gateway(tiny_repo, max_connections=4)
    held = [connect(gateway.http_url) for _ in range(4)]
    extra = connect(gateway.http_url)
    answer, _ = _read_all(extra)
    assert answer.startswith(b"HTTP/1.1 503") and b"too many open connections" in answer
    for conn in held:
        conn.close()

    def a_new_connection_is_served() -> bool:  # once the gateway has seen the held ones close
        return httpx.get(f"{gateway.http_url}/v2/health/live", timeout=10).status_code == 200

    wait_until(a_new_connection_is_served, timeout_s=10)


def _hammer(url: str, stop: threading.Event, outcomes: Counter[str], lock: threading.Lock) -> None:
    """One keep-alive client in a tight loop until the gateway is gone."""
    with httpx.Client(base_url=url, timeout=30) as http:
        while not stop.is_set():
            try:
                reply = http.post(PREDICT, content=BODY)
                outcome = str(reply.status_code)
            except httpx.ConnectError:
                outcome = "refused"  # a new connection after the listener closed: never received
                stop.wait(0.05)
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__  # a request written and not answered
            with lock:
                outcomes[outcome] += 1
            if outcome == "refused" and outcomes["refused"] > 200:
                return


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_under_load_answers_every_request_received(tiny_repo: Path, workers: int) -> None:
    options = ["--drain-timeout-s", "10"] + (["--workers", str(workers)] if workers > 1 else [])
    gateway = GatewayProcess(tiny_repo, *options)
    stop, lock = threading.Event(), threading.Lock()
    outcomes: Counter[str] = Counter()
    clients = [
        threading.Thread(target=_hammer, args=(gateway.http_url, stop, outcomes, lock))
        for _ in range(16)
    ]
    try:
        for client in clients:
            client.start()
        wait_until(lambda: outcomes["200"] >= 500, what="500 answers under load")
        gateway.process.send_signal(signal.SIGTERM)
        assert gateway.process.wait(60) == 0, "".join(gateway.lines[-30:])
    finally:
        stop.set()
        for client in clients:
            client.join(30)
        gateway.stop()
    unanswered = {k: n for k, n in outcomes.items() if k not in ("200", "refused")}
    assert outcomes["200"] >= 500 and not unanswered, outcomes


@pytest.mark.parametrize("cut", ["in the next head", "in the next body"])
def test_a_pipelined_request_is_not_timed_out_while_the_one_before_computes(
    slow_repo: Path, start_gateway: Any, cut: str
) -> None:
    """A request pipelined behind one that computes longer than the head and body deadlines,
    cut short by the read it arrived in: the gateway is not reading it (it waits its turn), so
    it is not late. Both are answered, in order, instead of a 408 in place of the first answer."""
    deadline_s = 0.1
    gateway: RunningGateway = start_gateway(
        slow_repo, batching=False, header_timeout_s=deadline_s, body_timeout_s=deadline_s
    )
    # 32 images of the slow model: about a second here, many times the deadlines on any host.
    slow_body = json.dumps({"instances": sample_images(32).tolist()}).encode()
    slow = f"POST /v1/models/slow:predict HTTP/1.1\r\nHost: x\r\nContent-Length: {len(slow_body)}"
    quick_body = json.dumps({"instances": sample_images(1).tolist()}).encode()
    quick = (
        f"POST /v1/models/slow:predict HTTP/1.1\r\nHost: x\r\nContent-Length: {len(quick_body)}"
        "\r\n\r\n"
    ).encode() + quick_body
    split = 20 if cut == "in the next head" else len(quick) - 10
    with connect(gateway.http_url) as conn:
        started = time.monotonic()
        conn.sendall(slow.encode() + b"\r\n\r\n" + slow_body + quick[:split])
        responses = RawResponses(conn)
        first = responses.next()
        computed_s = time.monotonic() - started
        conn.sendall(quick[split:])
        second = responses.next()
    assert computed_s > 3 * deadline_s, f"the first took {computed_s:.2f} s: deadlines not passed"
    assert first[0] == b"HTTP/1.1 200 OK", first
    assert second[0] == b"HTTP/1.1 200 OK", second


def _unread_client(gateway: RunningGateway, requests: int) -> socket.socket:
    """A connection with small socket buffers that sends ``requests`` metadata requests in one
    write and reads nothing yet: small requests (the write never waits) whose answers, 16 times
    their size, back up into the gateway's write buffer."""
    conn = connect(gateway.http_url, receive_buffer=4096)
    small_send_buffer(server_side(gateway))
    conn.sendall(f"GET /v1/models/{MODEL}/metadata HTTP/1.1\r\nHost: x\r\n\r\n".encode() * requests)
    return conn


def test_a_client_that_never_reads_its_answers_is_reset_after_the_write_timeout(
    tiny_repo: Path, start_gateway: Any
) -> None:
    # The pipelining bound lifted: up to 2,000 may queue, the write timeout is what must act.
    gateway: RunningGateway = start_gateway(
        tiny_repo, write_timeout_s=1.0, max_pipelined_requests=5000
    )
    connections = server_connections(gateway)
    started = time.monotonic()
    with _unread_client(gateway, 2000) as conn:
        wait_until(lambda: any(c.flow.write_paused for c in connections), what="answers backed up")
        # Others are served meanwhile.
        assert httpx.post(gateway.http_url + PREDICT, content=BODY, timeout=10).status_code == 200
        wait_until(lambda: not connections, timeout_s=10, what="the connection to be reset")
        held_s = time.monotonic() - started
        received, _ = _read_all(conn)  # what the kernel still held for it, then the end
    assert held_s >= 1.0, f"reset after {held_s:.2f} s, before the write timeout"
    assert received.count(b"HTTP/1.1 200 OK") < 2000, "every answer went out: nothing stalled"


def test_a_slow_reader_keeps_its_connection(tiny_repo: Path, start_gateway: Any) -> None:
    """Reading a little at a time is progress: the write timeout counts only a stall."""
    gateway: RunningGateway = start_gateway(tiny_repo, write_timeout_s=1.0)
    with _unread_client(gateway, 300) as conn:
        responses = RawResponses(conn)
        for index in range(300):
            if index % 20 == 0:
                time.sleep(0.25)  # 20 answers per quarter second: slow, never stalled for 1 s
            assert responses.next()[0] == b"HTTP/1.1 200 OK", index


def test_pipelining_beyond_the_bound_resets_the_connection(
    tiny_repo: Path, start_gateway: Any
) -> None:
    """Up to ``max_pipelined_requests`` queued behind an unanswered one are answered in order;
    one more and the connection is reset (an answer cannot jump the ones still owed)."""
    gateway: RunningGateway = start_gateway(tiny_repo, max_pipelined_requests=50)
    status = f"GET /v1/models/{MODEL} HTTP/1.1\r\nHost: x\r\n\r\n".encode()  # all in one read
    with connect(gateway.http_url) as conn:
        conn.sendall(status * 51)  # one answered at once, 50 queued behind it
        responses = RawResponses(conn)
        assert [responses.next()[0] for _ in range(51)] == [b"HTTP/1.1 200 OK"] * 51
    with connect(gateway.http_url) as conn:
        conn.sendall(status * 52)
        answer, _ = _read_all(conn)
    assert answer.count(b"HTTP/1.1 ") < 52, "every request was answered: nothing was bounded"
    with httpx.Client(base_url=gateway.http_url, timeout=10) as http:
        assert http.post(PREDICT, content=BODY).status_code == 200


@pytest.mark.parametrize("route", ["hot", "asgi"])
def test_a_request_refused_before_its_body_ends_gets_one_answer(
    tiny_repo: Path, start_gateway: Any, route: str
) -> None:
    """413 from Content-Length, then the body stalls: the connection closes at the body deadline
    without a 408, which would be a second answer to the one request."""
    gateway: RunningGateway = start_gateway(tiny_repo, max_body_bytes=1000, body_timeout_s=0.5)
    path = PREDICT if route == "hot" else f"/v1/models/{MODEL}/metadata"
    with connect(gateway.http_url) as conn:
        conn.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n".encode())
        conn.sendall(b"[" * 100)  # part of the body, then nothing
        answer, waited = _read_all(conn)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:100]
    assert answer.count(b"HTTP/1.1 ") == 1, answer
    assert waited < 10


@pytest.mark.parametrize("running", ["started at once", "started from the queue"])
def test_a_client_that_leaves_with_requests_queued_leaves_no_error(
    slow_repo: Path, running: str
) -> None:
    """The client sends a request with another queued behind it and leaves while the first
    computes. uvicorn marks only the newest request of a connection as disconnected, so the
    running one used to write its answer to the closed transport: under uvloop, an "Exception in
    ASGI application" with a traceback per such client. Now every request of the connection is
    marked, nothing is written, and the gateway goes on serving."""
    gateway = GatewayProcess(slow_repo, "--no-batching")
    body = json.dumps({"instances": sample_images(8).tolist()}).encode()

    def request(path: str) -> bytes:
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
        return head.encode() + body

    # A percent-escape sends a request through uvicorn's ASGI cycle (the hot path has none):
    # it runs at once, or is popped from the queue behind a hot one.
    through_asgi, hot = request("/v1/models/slow%3Apredict"), request("/v1/models/slow:predict")
    sent = [through_asgi, hot] if running == "started at once" else [hot, through_asgi, hot]
    computed = 1 if running == "started at once" else 2  # the last one never starts
    try:
        for expected in (computed, 2 * computed):
            with connect(gateway.http_url) as conn:
                conn.sendall(b"".join(sent))
                time.sleep(0.05)  # 8 images of the slow model compute longer than this
            wait_until(
                lambda n=expected: sum(requests_total(gateway.http_url).values()) >= n,
                what="the computing requests to finish",
            )
    finally:
        gateway.stop()
    wait_until(lambda: "stopped" in "".join(gateway.lines[-3:]), what="the gateway's last log")
    log = "".join(gateway.lines)
    assert "Exception in ASGI application" not in log and "handler is closed" not in log, log

"""Fixtures for the client tests: the loopback servers of ``clients_loopback``."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from http.server import ThreadingHTTPServer

import grpc
import pytest

from tests.clients.clients_loopback import Behaviour, LoopbackServers, _grpc_handlers, _Handler


@pytest.fixture(scope="session")
def loopback_servers() -> Iterator[LoopbackServers]:
    """Both servers, started once; tests reset the behaviour through ``servers``."""
    behaviour = Behaviour()
    handler = type("Handler", (_Handler,), {"behaviour": behaviour})
    http_server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    http_thread = threading.Thread(target=http_server.serve_forever, daemon=True)
    http_thread.start()
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    grpc_server.add_generic_rpc_handlers(_grpc_handlers(behaviour))
    grpc_port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    yield LoopbackServers(
        f"http://127.0.0.1:{http_server.server_address[1]}",
        f"grpc://127.0.0.1:{grpc_port}",
        behaviour,
    )
    grpc_server.stop(grace=None)
    http_server.shutdown()
    http_server.server_close()


@pytest.fixture
def servers(loopback_servers: LoopbackServers) -> LoopbackServers:
    """The loopback servers with fresh behaviour (no failures, no delay, no recorded headers)."""
    behaviour = loopback_servers.behaviour
    with behaviour.lock:
        behaviour.failures.clear()
        behaviour.delay_s = 0.0
        behaviour.predict_calls = 0
        behaviour.headers.clear()
    return loopback_servers

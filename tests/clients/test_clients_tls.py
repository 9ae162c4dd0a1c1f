"""TLS: https:// and grpcs:// targets verify the server against a given CA certificate."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from concurrent import futures
from http.server import ThreadingHTTPServer
from pathlib import Path

import grpc
import numpy as np
import pytest

from clients import Client, RetryPolicy, Unavailable
from tests.clients.clients_loopback import MODEL, Behaviour, _grpc_handlers, _Handler, toy_model

BATCH = np.arange(8, dtype=np.uint8).reshape(2, 2, 2, 1)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (it is its own CA), made by the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def tls_servers(certificate: tuple[Path, Path]) -> Iterator[tuple[str, str]]:
    cert, key = certificate
    behaviour = Behaviour()
    handler = type("Handler", (_Handler,), {"behaviour": behaviour})
    http_server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    http_server.socket = context.wrap_socket(http_server.socket, server_side=True)
    threading.Thread(target=http_server.serve_forever, daemon=True).start()
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    grpc_server.add_generic_rpc_handlers(_grpc_handlers(behaviour))
    credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    port = grpc_server.add_secure_port("127.0.0.1:0", credentials)
    grpc_server.start()
    yield f"https://127.0.0.1:{http_server.server_address[1]}", f"grpcs://127.0.0.1:{port}"
    grpc_server.stop(grace=None)
    http_server.shutdown()
    http_server.server_close()


@pytest.mark.parametrize("scheme", ["https", "grpcs"])
def test_tls_with_the_servers_ca_works(
    tls_servers: tuple[str, str], certificate: tuple[Path, Path], scheme: str
) -> None:
    target = tls_servers[0] if scheme == "https" else tls_servers[1]
    with Client(target, ca_cert=certificate[0]) as client:
        np.testing.assert_allclose(client.predict(MODEL, {"image": BATCH}), toy_model(BATCH))


@pytest.mark.parametrize("scheme", ["https", "grpcs"])
def test_tls_without_trusting_the_server_fails_as_unavailable(
    tls_servers: tuple[str, str], scheme: str
) -> None:
    target = tls_servers[0] if scheme == "https" else tls_servers[1]
    client = Client(target, retry=RetryPolicy(attempts=1), timeout=5)
    with client, pytest.raises(Unavailable):  # gRPC, too, reports a failed handshake so
        client.predict(MODEL, {"image": BATCH})

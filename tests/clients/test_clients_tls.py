"""TLS: https:// and grpcs:// targets verify the server against a given CA certificate.

The gateway itself speaks plain HTTP and gRPC (TLS ends in front of it, at the ingress or proxy
of a deployment), so here a TLS terminator on 127.0.0.1 relays the bytes to the real gateway, as
one would in production: the client's handshake and verification are real, and so is every answer.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from clients import Client, RetryPolicy, Unavailable
from tests.clients.gateways import MODEL, reference
from tests.serving.serving_harness import RunningGateway
from tests.tiny_models import sample_images


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


class TlsTerminator:
    """Accepts TLS on 127.0.0.1 and relays each connection's plain bytes to ``upstream`` (host,
    port), on its own event loop thread. ALPN offers HTTP/2 first (gRPC requires it to be
    negotiated) and HTTP/1.1."""

    def __init__(self, certificate: tuple[Path, Path], upstream: tuple[str, int]) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(*certificate)
        self.context.set_alpn_protocols(["h2", "http/1.1"])
        self.upstream = upstream
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def _connection(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
        await asyncio.gather(
            self._relay(client_reader, upstream_writer),
            self._relay(upstream_reader, client_writer),
        )

    async def _start(self) -> None:
        self._server = await asyncio.start_server(
            self._connection, "127.0.0.1", 0, ssl=self.context
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        relays = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in relays:
            task.cancel()
        await asyncio.gather(*relays, return_exceptions=True)

    def __enter__(self) -> TlsTerminator:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def tls_targets(
    gateway: RunningGateway, certificate: tuple[Path, Path]
) -> Iterator[dict[str, str]]:
    """``https://`` and ``grpcs://`` targets in front of the gateway's two ports."""
    assert gateway.gateway is not None
    http = ("127.0.0.1", gateway.gateway.http_port)
    grpc = ("127.0.0.1", gateway.gateway.grpc_port)
    with TlsTerminator(certificate, http) as https, TlsTerminator(certificate, grpc) as grpcs:
        yield {
            "https": f"https://127.0.0.1:{https.port}",
            "grpcs": f"grpcs://127.0.0.1:{grpcs.port}",
        }


@pytest.mark.parametrize("scheme", ["https", "grpcs"])
def test_tls_with_the_servers_ca_works(
    tls_targets: dict[str, str], certificate: tuple[Path, Path], repository: Path, scheme: str
) -> None:
    images = sample_images(2, seed=7)
    with Client(tls_targets[scheme], ca_cert=certificate[0]) as client:
        result = client.predict(MODEL, {"image": images})
    np.testing.assert_allclose(
        result, reference(repository, MODEL, 2, images), rtol=1e-5, atol=1e-7
    )


@pytest.mark.parametrize("scheme", ["https", "grpcs"])
def test_tls_without_trusting_the_server_fails_as_unavailable(
    tls_targets: dict[str, str], scheme: str
) -> None:
    client = Client(tls_targets[scheme], retry=RetryPolicy(attempts=1), timeout=5)
    with client, pytest.raises(Unavailable):  # gRPC, too, reports a failed handshake so
        client.predict(MODEL, {"image": sample_images(1)})

"""Targets of a benchmark: parsing, probing what a server speaks, starting our gateway.

Probes use httpx and grpc directly (never requests): this module is imported by the parent
process only, and must stay importable next to Locust all the same.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parent.parent


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for child processes (Locust, the gateway): this checkout first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class Server:
    """One server under test: a name for the report, its HTTP base URL and gRPC address."""

    name: str
    http: str | None
    grpc: str | None
    batching: bool | None = None

    def target_for(self, protocol: str) -> str | None:
        """The address a run of ``protocol`` talks to."""
        return self.grpc if protocol in ("grpc", "v2-grpc") else self.http


def parse_server(spec: str, grpc_spec: str | None = None) -> Server:
    """``[NAME=]http://host:port[,grpc_host:grpc_port]`` -> Server.

    Without a gRPC address, an HTTP port 8501 implies gRPC on 8500 on the same host (TF Serving's
    defaults, which the gateway and docker-compose keep).
    """
    name, _, rest = spec.rpartition("=") if "=" in spec.split("://")[0] else ("", "", spec)
    http, _, grpc_address = rest.partition(",")
    grpc_address = grpc_address or grpc_spec or ""
    parts = urlsplit(http)
    if not parts.scheme or not parts.hostname:
        raise ValueError(f"target {spec!r} must look like [NAME=]http://host:port[,host:grpcport]")
    if not grpc_address and parts.port == 8501:
        grpc_address = f"{parts.hostname}:8500"
    return Server(
        name=name or f"{parts.hostname}:{parts.port}",
        http=http.rstrip("/"),
        grpc=grpc_address or None,
    )


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when GET ``url`` answers 200."""
    import httpx

    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def grpc_up(address: str, timeout: float = 2.0) -> bool:
    """True when a gRPC channel to ``address`` becomes ready within ``timeout``."""
    import grpc

    channel = grpc.insecure_channel(address)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
        return True
    except grpc.FutureTimeoutError:
        return False
    finally:
        channel.close()


def v2_grpc_up(address: str, model: str, timeout: float = 2.0) -> bool:
    """True when ``address`` answers KServe V2's gRPC ``ModelReady`` for ``model`` with ready
    (TF Serving does not serve the service: UNIMPLEMENTED)."""
    import grpc

    from clients import v2_grpc

    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(
            v2_grpc.MODEL_READY_METHOD,
            request_serializer=v2_grpc.ModelReadyRequest.SerializeToString,
            response_deserializer=v2_grpc.ModelReadyResponse.FromString,
        )
        try:
            return bool(call(v2_grpc.ModelReadyRequest(name=model), timeout=timeout).ready)
        except grpc.RpcError:
            return False


def model_up(server: Server, model: str) -> bool:
    """TF Serving's model status endpoint answers 200 (both servers serve it)."""
    return server.http is not None and http_ok(f"{server.http}/v1/models/{model}")


def protocols_served(server: Server, model: str, wanted: list[str]) -> list[str]:
    """Which of ``wanted`` this server speaks: TF Serving has neither V2 nor the image endpoint."""
    available = []
    for protocol in wanted:
        if protocol == "rest" and model_up(server, model):
            available.append(protocol)
        elif protocol in ("v2", "image") and server.http:
            if http_ok(f"{server.http}/v2/models/{model}/ready"):
                available.append(protocol)
        elif server.grpc and (
            (protocol == "grpc" and grpc_up(server.grpc))
            or (protocol == "v2-grpc" and v2_grpc_up(server.grpc, model))
        ):
            available.append(protocol)
    return available


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def gateway(
    repository: str | Path,
    batching: bool = True,
    extra_args: list[str] | None = None,
    model: str | None = None,
    startup_timeout: float = 60.0,
    log_path: str | Path | None = None,
) -> Iterator[Server]:
    """Start ``python -m serving`` on free loopback ports, wait until ready, stop it afterwards."""
    http_port, grpc_port = free_port(), free_port()
    command = [
        sys.executable, "-m", "serving",
        "--repository", str(repository),
        "--host", "127.0.0.1",
        "--http-port", str(http_port),
        "--grpc-port", str(grpc_port),
        "--batching" if batching else "--no-batching",
        *(extra_args or []),
    ]  # fmt: skip
    env = child_env()
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = Server(
        name=f"gateway batching={'on' if batching else 'off'}",
        http=f"http://127.0.0.1:{http_port}",
        grpc=f"127.0.0.1:{grpc_port}",
        batching=batching,
    )
    try:
        deadline = time.monotonic() + startup_timeout
        ready_url = (
            f"{server.http}/v2/models/{model}/ready" if model else f"{server.http}/v2/health/ready"
        )
        while not http_ok(ready_url, timeout=1.0):
            if process.poll() is not None:
                raise RuntimeError(f"gateway exited with {process.returncode}: {command}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"gateway not ready after {startup_timeout} s: {command}")
            time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if log is not subprocess.DEVNULL:
            log.close()  # type: ignore[union-attr]

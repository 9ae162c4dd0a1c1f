"""``benchmarks.lab.instructions``' load: the requests it counts reach a real gateway and are
answered with 200 / OK on every protocol it offers (valgrind itself is not needed for this; the
tool's counting needs it and is run by hand, benchmarks/RESULTS.md)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from benchmarks.lab import instructions
from tests.metrics_text import metric_value
from tests.serving.serving_harness import GatewayProcess
from tests.tiny_models import lenet_like, write_version

MODEL = "lenet"


def ok_requests(gateway: GatewayProcess) -> float:
    text = httpx.get(f"{gateway.http_url}/metrics", timeout=10).text
    return metric_value(text, "serving_requests_total", status="OK")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    repo = tmp_path_factory.mktemp("repo")
    write_version(repo, MODEL, 1, lenet_like())
    running = GatewayProcess(repo)
    yield running
    running.stop()


@pytest.mark.parametrize("protocol", instructions.PROTOCOLS)
def test_every_protocol_sends_answered_requests(gateway: GatewayProcess, protocol: str) -> None:
    http_port = int(gateway.http_url.rsplit(":", 1)[1])
    grpc_port = int(gateway.grpc_target.rsplit(":", 1)[1])
    before = ok_requests(gateway)
    instructions.send((http_port, grpc_port), protocol, MODEL, 10, 3)  # raises on any failure
    assert ok_requests(gateway) - before == 10


def test_a_refused_request_fails_the_count(gateway: GatewayProcess) -> None:
    http_port = int(gateway.http_url.rsplit(":", 1)[1])
    grpc_port = int(gateway.grpc_target.rsplit(":", 1)[1])
    with pytest.raises(RuntimeError, match=re.escape("failed")):
        instructions.send((http_port, grpc_port), "V2 binary", "no-such-model", 2, 1)
    with pytest.raises(RuntimeError, match=re.escape("failed calls")):
        instructions.send((http_port, grpc_port), "gRPC", "no-such-model", 2, 1)

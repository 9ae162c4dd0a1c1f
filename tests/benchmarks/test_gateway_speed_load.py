"""The gateway speed benchmark's load generators against a real gateway on 127.0.0.1."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from benchmarks.lab import gateway_speed


@pytest.mark.skipif(
    shutil.which("h2load") is None, reason="h2load missing (Debian nghttp2-client; make setup)"
)
@pytest.mark.parametrize("workers", [1, 2])
def test_h2load_grpc_load_is_counted_and_checked_by_the_gateway(
    tmp_path: Path, workers: int
) -> None:
    repo, _, _ = gateway_speed.prepare_repository(tmp_path)
    server = gateway_speed.start_gateway(repo, [], workers=workers)
    try:
        metrics = server.url + "/metrics"
        assert gateway_speed.grpc_failures(metrics) == 0
        rps, p50, p99, errors, cpu = gateway_speed.h2load_grpc(
            server.grpc, 4, 1, tmp_path, server.process.pid, metrics, server.connections
        )
        assert errors == 0
        assert rps > 0 and 0 < p50 <= p99 and cpu > 0  # with workers: theirs, summed
        # Every request h2load logged reached the model and was answered OK.
        answered = sum(1 for line in (tmp_path / "h2load.log").read_text().splitlines() if line)
        ok = gateway_speed.grpc_status_counts(metrics).get("OK", 0)
        assert ok >= answered > 0
    finally:
        server.stop()


@pytest.mark.skipif(
    shutil.which("h2load") is None, reason="h2load missing (Debian nghttp2-client; make setup)"
)
def test_v2_grpc_is_a_protocol_of_the_speed_benchmarks(tmp_path: Path) -> None:
    """``measure(..., "V2 gRPC", ...)`` loads KServe V2's ModelInfer, answered OK by the model."""
    repo, _, _ = gateway_speed.prepare_repository(tmp_path)
    server = gateway_speed.start_gateway(repo, [])
    try:
        metrics = server.url + "/metrics"
        rps, p50, p99, errors, _ = gateway_speed.measure(server, "V2 gRPC", 4, 1, tmp_path)
        assert errors == 0 and rps > 0 and 0 < p50 <= p99
        answered = sum(1 for line in (tmp_path / "h2load.log").read_text().splitlines() if line)
        ok = gateway_speed.grpc_status_counts(metrics, "v2-grpc").get("OK", 0)
        assert ok >= answered > 0
        assert gateway_speed.grpc_status_counts(metrics).get("OK", 0) == 0  # none went to TF's
    finally:
        server.stop()


@pytest.mark.parametrize("start", ["start_grpc_aio_alone", "start_grpc_transport_alone"])
def test_grpc_transports_alone_answer_predict_like_the_gateway(start: str) -> None:
    """A transport-ceiling server must be a real Predict endpoint, or its number means nothing:
    grpc.aio alone and the gateway's own gRPC transport alone."""
    import grpc
    import numpy as np

    from clients import wire
    from tests.serving.serving_harness import predict_call

    server = getattr(gateway_speed, start)()
    try:
        assert server.grpc and not server.url
        request = wire.build_predict_request("lenet", {"image": gateway_speed.one_image()})
        with grpc.insecure_channel(server.grpc) as channel:
            reply = predict_call(channel)(request, timeout=10)
        assert reply.model_spec.name == "lenet"
        probabilities = np.frombuffer(reply.outputs["probabilities"].tensor_content, np.float32)
        assert probabilities.shape == (10,) and np.isclose(probabilities.sum(), 1.0)
    finally:
        server.stop()

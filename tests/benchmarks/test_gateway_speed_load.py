"""The gateway speed benchmark's load generators against a real gateway on 127.0.0.1."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from benchmarks import gateway_speed


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

"""The gRPC floor of the overload benchmark: a real grpc.aio server that refuses every call."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from benchmarks.lab import overload


@pytest.mark.skipif(
    shutil.which("h2load") is None, reason="h2load missing (Debian nghttp2-client; make setup)"
)
def test_grpc_floor_refuses_every_call_of_a_flood_and_the_probe_sees_it(tmp_path: Path) -> None:
    floor = overload.measure_grpc_floor(clients=8, duration=1, work=tmp_path)
    # h2load's streams all reached the handler and were refused (RESOURCE_EXHAUSTED rides in the
    # trailers of an HTTP 200), and the probe's calls too: none failed in any other way.
    assert floor["refused_per_s"] > 0
    assert floor["other_failures"] == 0
    assert 0 < floor["refused_p50_ms"] <= floor["refused_p99_ms"]
    assert floor["server_cpu_percent"] > 0 and floor["load_generator_cpu_percent"] > 0

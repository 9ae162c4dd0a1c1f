"""serving.metrics' fast updaters (``fast_observe``, ``fast_inc``, ``fast_set``) change exactly
what prometheus_client's own ``observe``, ``inc`` and ``set`` change: the same exposition for the
same updates, in one process and in multiprocess mode (``--workers``). They reach into
prometheus_client's internals, so these tests are what holds the version pin in pyproject.toml."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from serving.metrics import fast_inc, fast_observe, fast_set

BUCKETS = (0.001, 0.005, 0.01, 0.1, 1.0, 10.0)
# below the first bound, on every bound (le: a value equal to a bound is in its bucket), between
# bounds, beyond the last finite bound, zero and negative
AMOUNTS = (0.0, -1.0, 0.0005, *BUCKETS, 0.003, 0.05, 0.5, 5.0, 11.0, 1e9)


def exposition(fast: bool) -> bytes:
    registry = CollectorRegistry()
    latency = Histogram("latency", "h", ["model"], buckets=BUCKETS, registry=registry)
    requests = Counter("requests", "c", ["model"], registry=registry)
    depth = Gauge("depth", "g", ["model"], registry=registry)
    newest = Gauge("newest", "g", ["model"], registry=registry, multiprocess_mode="mostrecent")
    observe = fast_observe(latency.labels("m")) if fast else latency.labels("m").observe
    inc = fast_inc(requests.labels("m")) if fast else requests.labels("m").inc
    set_depth = fast_set(depth.labels("m")) if fast else depth.labels("m").set
    set_newest = fast_set(newest.labels("m")) if fast else newest.labels("m").set
    for amount in AMOUNTS:
        observe(amount)
        inc(1)
    set_depth(7)
    set_newest(3)
    # the _created timestamps differ between the two registries; everything else must not
    lines = generate_latest(registry).splitlines()
    return b"\n".join(line for line in lines if b"_created" not in line)


def test_fast_updaters_expose_what_prometheus_clients_own_do() -> None:
    fast, slow = exposition(fast=True), exposition(fast=False)
    assert fast == slow
    assert b'latency_bucket{le="0.001",model="m"} 4.0' in fast  # -1, 0, 0.0005 and 0.001 itself
    assert b'latency_count{model="m"} 15.0' in fast
    assert b'requests_total{model="m"} 15.0' in fast
    assert b'depth{model="m"} 7.0' in fast


MULTIPROCESS_SCRIPT = """
import sys
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from serving.metrics import fast_inc, fast_observe, fast_set
fast = sys.argv[1] == "fast"
latency = Histogram("latency", "h", ["model"], buckets=(0.01, 0.1, 1.0))
requests = Counter("requests", "c", ["model"])
depth = Gauge("depth", "g", ["model"], multiprocess_mode="livesum")
observe = fast_observe(latency.labels("m")) if fast else latency.labels("m").observe
inc = fast_inc(requests.labels("m")) if fast else requests.labels("m").inc
set_depth = fast_set(depth.labels("m")) if fast else depth.labels("m").set
for amount in (0.005, 0.01, 0.5, 2.0):
    observe(amount)
    inc(1)
set_depth(5)
registry = CollectorRegistry()
MultiProcessCollector(registry)
sys.stdout.write(generate_latest(registry).decode())
"""


def test_fast_updaters_in_multiprocess_mode(tmp_path: Path) -> None:
    outputs = {}
    for mode in ("fast", "slow"):
        directory = tmp_path / mode
        directory.mkdir()
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
        outputs[mode] = subprocess.run(
            [sys.executable, "-c", MULTIPROCESS_SCRIPT, mode],
            capture_output=True, text=True, check=True, env=env, timeout=120,
        ).stdout  # fmt: skip
    # the families' order follows the files' order: compare the lines as sets
    assert sorted(outputs["fast"].splitlines()) == sorted(outputs["slow"].splitlines())
    assert 'latency_bucket{le="0.01",model="m"} 2.0' in outputs["fast"]
    assert 'depth{model="m"} 5.0' in outputs["fast"]


def test_prometheus_client_is_the_pinned_minor_version() -> None:
    # fast_observe & co. read _upper_bounds, _buckets, _sum, _value and _is_most_recent
    assert version("prometheus-client").startswith("0.26."), version("prometheus-client")

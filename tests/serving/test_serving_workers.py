"""``--workers N``: worker processes share both ports, /metrics sums them, SIGTERM drains them all,
and a worker that dies takes the gateway down (exit 1) instead of leaving it half-sized."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from clients import wire
from clients.codec import tensor_proto_to_ndarray
from tests.serving.serving_harness import (
    child_pids,
    predict_call,
    process_running,
    requests_total,
    wait_until,
)
from tests.tiny_models import reference_predict, sample_images

ROOT = Path(__file__).resolve().parents[2]
MODEL = "tiny"


class Supervised:
    """``python -m serving --workers 2`` on ephemeral ports, its log collected."""

    def __init__(self, repo: Path) -> None:
        env = {**os.environ, "SERVING_POLL_INTERVAL_S": "0", "SERVING_DRAIN_TIMEOUT_S": "10"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "serving", "--repository", str(repo), "--host", "127.0.0.1",
             "--http-port", "0", "--grpc-port", "0", "--device", "cpu", "--workers", "2"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        assert self.process.stdout is not None
        ready = None
        for line in self.process.stdout:
            self.lines.append(line)
            ready = re.search(r"all 2 workers ready: HTTP on (http://\S+), gRPC on (\S+)", line)
            if ready:
                break
        assert ready, "".join(self.lines)
        self.http_url, self.grpc_target = ready.group(1), ready.group(2)
        self._reader = threading.Thread(
            target=lambda: self.lines.extend(self.process.stdout or []), daemon=True
        )
        self._reader.start()

    def log(self) -> str:
        """Everything logged so far; once the process has exited, all of it (the reader may
        still be catching up with the pipe when the process is reaped)."""
        if self.process.poll() is not None:
            self._reader.join(10)
        return "".join(self.lines)

    def workers(self) -> list[int]:
        """PIDs of the supervisor's children."""
        return child_pids(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(30)


@pytest.fixture
def supervised(tiny_repo: Path) -> Iterator[Supervised]:
    running = Supervised(tiny_repo)
    yield running
    running.stop()


def test_workers_share_ports_and_metrics_sum_over_them(
    supervised: Supervised, tiny_repo: Path
) -> None:
    assert len(supervised.workers()) == 2
    images = sample_images(3, seed=11)
    expected = reference_predict(tiny_repo / MODEL / "2" / "model.onnx", images)
    for _ in range(24):  # a new connection per request: the kernel spreads them over workers
        reply = httpx.post(
            f"{supervised.http_url}/v1/models/{MODEL}:predict",
            json={"instances": images.tolist()},
            timeout=30,
        )
        assert reply.status_code == 200, reply.text
        np.testing.assert_allclose(reply.json()["predictions"], expected, rtol=1e-5, atol=1e-7)
    request = wire.build_predict_request(MODEL, {"image": images})
    for _ in range(8):
        with grpc.insecure_channel(supervised.grpc_target) as channel:
            call = predict_call(channel)
            outputs = call(request, timeout=30).outputs
        np.testing.assert_allclose(
            tensor_proto_to_ndarray(outputs["probabilities"]), expected, rtol=1e-5, atol=1e-7
        )
    # Whichever worker answers /metrics, it reports every worker's requests.
    for _ in range(6):
        totals = requests_total(supervised.http_url)  # any worker may answer
        assert totals.get(("rest", "OK")) == 24 and totals.get(("grpc", "OK")) == 8, totals


def test_sigterm_stops_every_worker(supervised: Supervised) -> None:
    """SIGTERM as soon as the workers are ready: each drains and logs that it stopped. A worker
    announces its ports before its start-up has finished, and its signal handlers used to be
    installed only then: a SIGTERM in between killed it (this test, run alone, failed so)."""
    workers = supervised.workers()
    supervised.process.send_signal(signal.SIGTERM)
    assert supervised.process.wait(60) == 0, supervised.log()
    # The supervisor waited for (and so reaped) each worker before exiting.
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    log = supervised.log()
    assert log.count("INFO serving: stopped") == 2, log


def test_a_dead_worker_stops_the_gateway(supervised: Supervised) -> None:
    first, second = supervised.workers()
    os.kill(first, signal.SIGKILL)
    assert supervised.process.wait(60) == 1
    assert not Path(f"/proc/{second}").exists()  # stopped and reaped, not left serving alone
    assert "exited with -9; stopping the others" in supervised.log()


def test_workers_do_not_outlive_a_killed_supervisor(supervised: Supervised) -> None:
    workers = supervised.workers()
    supervised.process.kill()  # SIGKILL: no chance to stop them itself
    supervised.process.wait(30)
    wait_until(
        lambda: not any(process_running(pid) for pid in workers),
        what="the orphaned workers to exit",
    )

"""``--workers N``: worker processes share both ports, /metrics sums them, SIGTERM drains them all,
a worker that dies is replaced while the others serve on, and crashes that keep coming stop the
gateway (exit 1) with the reason in its last log line."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from benchmarks.lab.worker_kill import SteadyLoad
from clients import wire
from clients.codec import tensor_proto_to_ndarray
from tests.metrics_text import metric_value
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

    def __init__(
        self, repo: Path, *extra: str, env: dict[str, str] | None = None, wait: bool = True
    ) -> None:
        env = {**os.environ, "SERVING_POLL_INTERVAL_S": "0", "SERVING_DRAIN_TIMEOUT_S": "10",
               **(env or {})}  # fmt: skip
        self.process = subprocess.Popen(
            [sys.executable, "-m", "serving", "--repository", str(repo), "--host", "127.0.0.1",
             "--http-port", "0", "--grpc-port", "0", "--device", "cpu", "--workers", "2", *extra],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        assert self.process.stdout is not None
        ready = None
        for line in self.process.stdout if wait else ():
            self.lines.append(line)
            ready = re.search(r"all 2 workers ready: HTTP on (http://\S+), gRPC on (\S+)", line)
            if ready:
                break
        if wait:
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


def test_a_dead_worker_is_replaced_while_the_other_serves(supervised: Supervised) -> None:
    """kill -9 of one worker under steady load: the survivor serves on, the load loses at most
    the requests the dead worker held (one per load thread), a replacement is ready within the
    bound, and /metrics counts one restart by signal."""
    first, second = supervised.workers()
    body = {"instances": sample_images(1).tolist()}
    load = SteadyLoad(f"{supervised.http_url}/v1/models/{MODEL}:predict", body)
    try:
        wait_until(lambda: load.between(0)[0] >= 20, what="the load to get going")
        killed_at = time.monotonic()
        os.kill(first, signal.SIGKILL)
        wait_until(
            lambda: "in place of a dead one" in supervised.log(),
            what="the replacement to be ready", timeout_s=60,
        )  # fmt: skip
        ready_at = time.monotonic()
        wait_until(lambda: load.between(ready_at)[0] >= 20, what="load after the replacement")
    finally:
        load.stop()
    assert supervised.process.poll() is None  # the gateway stayed up
    before = load.between(0, killed_at)
    after_kill = load.between(killed_at, ready_at)
    after_ready = load.between(ready_at)
    assert before[1] == 0 and after_ready[1] == 0, (before, after_ready)
    # Lost: what the killed worker held, in flight or in its listening socket's queue while the
    # kernel tore it down (a thread can meet both), all within moments of the kill.
    failed_at = [at - killed_at for at, ok in load.outcomes if not ok]
    assert len(failed_at) <= 8 and all(0 <= t < 2 for t in failed_at), failed_at
    assert after_kill[0] > 0  # the survivor served meanwhile
    workers = supervised.workers()
    assert len(workers) == 2 and second in workers and first not in workers
    assert f"(pid {first}) ended with signal SIGKILL" in supervised.log()
    for _ in range(6):  # whichever worker answers
        text = httpx.get(f"{supervised.http_url}/metrics", timeout=10).text
        assert metric_value(text, "serving_worker_restarts", reason="signal SIGKILL") == 1.0


def test_workers_that_die_at_start_every_time_stop_the_gateway(
    tiny_repo: Path, tmp_path: Path
) -> None:
    """A worker that cannot start (here: its interpreter exits 3 before anything else, through a
    sitecustomize that acts in worker processes only) is retried with backoff; past
    --worker-restarts crashes within the window the supervisor exits 1 and says why last."""
    (tmp_path / "sitecustomize.py").write_text(
        "import os\nif os.environ.get('SERVING_SUPERVISOR_PID'):\n    os._exit(3)\n"
    )
    started = time.monotonic()
    failing = Supervised(
        tiny_repo, "--worker-restarts", "3", env={"PYTHONPATH": str(tmp_path)}, wait=False
    )
    try:
        assert failing.process.wait(60) == 1
        elapsed = time.monotonic() - started
        log = failing.log()
        last = log.strip().splitlines()[-1]
        assert "giving up" in last and "exit 3" in last and "--worker-restarts 3" in last, log
        assert log.count("replacing it in") == 3  # crashes 1-3 replaced, the 4th is too many
        # backoff doubling with each crash in the window (two slots, interleaved)
        assert re.findall(r"replacing it in ([0-9.]+) s", log) == ["0.5", "1.0", "2.0"], log
        assert elapsed >= 1.0, elapsed  # the second slot's replacement waited its 1 s
    finally:
        failing.stop()


def test_without_restarts_a_dead_worker_stops_the_gateway(tiny_repo: Path) -> None:
    """--worker-restarts 0: the first crash stops the other worker and exits 1 (the behaviour
    before replacement, for an orchestrator that restarts whole pods)."""
    strict = Supervised(tiny_repo, "--worker-restarts", "0")
    try:
        first, second = strict.workers()
        os.kill(first, signal.SIGKILL)
        assert strict.process.wait(60) == 1
        assert not Path(f"/proc/{second}").exists()  # stopped and reaped, not left serving alone
        assert "giving up" in strict.log() and "signal SIGKILL" in strict.log()
    finally:
        strict.stop()


def test_sigterm_during_a_replacement_drains_every_worker(supervised: Supervised) -> None:
    """SIGTERM while a dead worker's replacement is starting: the supervisor starts nothing
    more, the survivor drains, the replacement (which has received nothing: it binds the ports
    only once its models are loaded) stops too, every process is reaped, exit 0."""
    first, second = supervised.workers()
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: "replacing it in" in supervised.log(), what="the crash to be noticed")
    wait_until(lambda: len(supervised.workers()) == 2, what="the replacement to be started")
    workers = supervised.workers()
    supervised.process.send_signal(signal.SIGTERM)
    assert supervised.process.wait(60) == 0, supervised.log()
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    index = re.search(rf"\[worker (\d)\] .*\[{second}\]", supervised.log())
    assert index, supervised.log()  # uvicorn's "Started server process [pid]" line
    survivor_stopped = rf"\[worker {index.group(1)}\] \S+ \S+ INFO serving: stopped"
    assert re.search(survivor_stopped, supervised.log()), supervised.log()  # drained
    assert "in place of a dead one" not in supervised.log().split("SIGTERM: draining")[1]


def test_workers_do_not_outlive_a_killed_supervisor(supervised: Supervised) -> None:
    workers = supervised.workers()
    supervised.process.kill()  # SIGKILL: no chance to stop them itself
    supervised.process.wait(30)
    wait_until(
        lambda: not any(process_running(pid) for pid in workers),
        what="the orphaned workers to exit",
    )


def test_workers_share_one_access_log_without_tearing_lines(
    tiny_repo: Path, tmp_path: Path
) -> None:
    """Both workers append to one --access-log file (O_APPEND, whole lines per write): after
    concurrent requests spread over the workers and a SIGTERM, every line parses and there is
    one per request, each with its own id."""
    path = tmp_path / "access.jsonl"
    gateway = Supervised(tiny_repo, "--access-log", str(path), "--access-log-sample", "1.0")
    images = sample_images(1, seed=3)
    callers, each = 8, 25
    statuses: list[int] = []

    def caller(index: int) -> None:
        for request in range(each):  # a new connection per request: spread over the workers
            reply = httpx.post(
                f"{gateway.http_url}/v1/models/{MODEL}:predict",
                json={"instances": images.tolist()},
                headers={"x-request-id": f"w-{index}-{request}"},
                timeout=30,
            )
            statuses.append(reply.status_code)

    try:
        threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        gateway.process.send_signal(signal.SIGTERM)  # the writers flush as the workers stop
        assert gateway.process.wait(60) == 0, gateway.log()
    finally:
        gateway.stop()
    assert statuses == [200] * (callers * each)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    predicts = [line for line in lines if line["route"] == "predict"]
    assert sorted(line["id"] for line in predicts) == sorted(
        f"w-{i}-{r}" for i in range(callers) for r in range(each)
    )
    assert all(line["status"] == 200 and line["model"] == MODEL for line in predicts)

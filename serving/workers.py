"""``--workers N``: N gateway processes sharing the HTTP and gRPC ports.

One Python process serves at most one core's worth of HTTP/JSON/gRPC handling, whatever the
accelerator does. The supervisor reserves both ports (a bound, never-listening socket with
SO_REUSEPORT, so port 0 resolves to one port for everybody), starts N ordinary gateways on them with
``--reuse-port``, and the kernel spreads new connections over the workers. Each worker loads every
model and batches its own requests. Metrics go through prometheus_client's multiprocess mode (a
temporary directory the supervisor owns), so ``/metrics`` answers the sum whichever worker serves it.

The supervisor forwards SIGTERM/SIGINT (each worker drains as a single gateway does) and replaces a
worker that dies (an out-of-memory kill, a native fault) while the others serve on: one crash costs
the requests that worker held, not every client of the host. A replacement loads the models before
it binds the ports, so it joins only once ready. Crashes that keep coming (more than
``--worker-restarts`` within ``--worker-restart-window-s``) stop every worker and exit 1 with the
reason in the last log line, so an orchestrator sees a failing container rather than a flapping
one. ``serving_worker_restarts`` counts the replacements by how the dead worker ended.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from serving.metrics import MULTIPROCESS_ENV, WORKER_RESTARTS_ENV
from serving.settings import ServingSettings

log = logging.getLogger("serving.workers")

#: The supervisor's pid, in each worker's environment.
SUPERVISOR_ENV = "SERVING_SUPERVISOR_PID"
#: A worker is ready once it logs where gRPC listens (or, without gRPC, where HTTP does).
READY_LINE = re.compile(r"(gRPC|HTTP) \(.*\) on \S+")


def follow_supervisor() -> None:
    """In a worker: receive SIGTERM (and drain) when the supervisor dies, even by SIGKILL, rather
    than serve on as an orphan nobody will stop. Linux's parent-death signal; a no-op elsewhere."""
    supervisor = int(os.environ.get(SUPERVISOR_ENV, "0"))
    if not supervisor:
        return
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != supervisor:  # it died before the signal was armed
        os.kill(os.getpid(), signal.SIGTERM)


def worker_count(settings: ServingSettings) -> int:
    """``workers`` (validated >= 0 by the settings), with 0 meaning one per CPU core available."""
    if settings.workers:
        return settings.workers
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``(host, port)`` with SO_REUSEPORT that never listens: it fixes the port
    number (port 0 picks a free one) while the workers bind and listen on the same one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


@dataclass(eq=False)
class _Worker:
    """One worker process in its slot (``index``, the tag of its log lines)."""

    index: int
    process: subprocess.Popen[str]
    started: float  # time.monotonic()
    replacement: bool  # started in place of a dead worker


def how_it_ended(returncode: int) -> str:
    """``signal SIGKILL``, ``exit 3``: a metrics label and a log phrase."""
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-returncode).name}"
        return f"signal {-returncode}"
    return f"exit {returncode}"


class Supervisor:
    """Start, watch, replace and stop the worker processes.

    Invariants: at most ``count`` workers live at once, one per slot; a slot whose worker died is
    refilled after a backoff (0.5 s doubling with each crash in the window, at most 30 s) unless
    the supervisor is stopping; more than ``worker_restarts`` crashes within
    ``worker_restart_window_s`` stop every worker (exit 1). A crash is any exit the supervisor did
    not ask for, at start-up included."""

    BACKOFF_S = 0.5
    MAX_BACKOFF_S = 30.0

    def __init__(self, settings: ServingSettings, argv: list[str]) -> None:
        self.settings = settings
        self.argv = argv
        self.count = worker_count(settings)
        self.workers: list[_Worker | None] = [None] * self.count
        self._events: queue.Queue[_Worker] = queue.Queue()  # workers that became ready
        self._stopping = threading.Event()
        self._crashes: list[float] = []  # time.monotonic() of each crash in the window
        #: how a worker ended -> replacements so far (passed to each new worker for /metrics)
        self.restarts: dict[str, int] = {}

    @property
    def processes(self) -> list[subprocess.Popen[str]]:
        """The live slots' processes."""
        return [worker.process for worker in self.workers if worker is not None]

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (0) or until workers crash too often (1)."""
        s = self.settings
        reserved = [reserve_port(s.host, s.http_port)]
        http_port = reserved[0].getsockname()[1]
        grpc_port = s.grpc_port
        if s.grpc_port >= 0:
            reserved.append(reserve_port(s.host, s.grpc_port))
            grpc_port = reserved[1].getsockname()[1]
        self._metrics_dir = Path(tempfile.mkdtemp(prefix="serving-metrics-"))
        self._env = {
            **os.environ, MULTIPROCESS_ENV: str(self._metrics_dir),
            SUPERVISOR_ENV: str(os.getpid()),
        }  # fmt: skip
        # The CLI wins over the environment, and a later option over an earlier one.
        self._command = [
            sys.executable, "-m", "serving", *self.argv, "--workers", "1", "--reuse-port",
            "--http-port", str(http_port), "--grpc-port", str(grpc_port),
        ]  # fmt: skip
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        try:
            for index in range(self.count):
                self._start(index, replacement=False)
            return self._watch(http_port, grpc_port)
        finally:
            self._stop_all()
            for sock in reserved:
                sock.close()
            shutil.rmtree(self._metrics_dir, ignore_errors=True)

    def _start(self, index: int, replacement: bool) -> None:
        env = {**self._env, WORKER_RESTARTS_ENV: json.dumps(self.restarts)}
        process = subprocess.Popen(
            self._command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        worker = _Worker(index, process, time.monotonic(), replacement)
        self.workers[index] = worker
        threading.Thread(target=self._relay, args=(worker,), daemon=True).start()

    def _relay(self, worker: _Worker) -> None:
        """Copy a worker's log to ours, tagged with its slot; notice when it is ready."""
        assert worker.process.stdout is not None
        noticed = False
        for line in worker.process.stdout:
            sys.stdout.write(f"[worker {worker.index}] {line}")
            sys.stdout.flush()
            if (
                not noticed
                and READY_LINE.search(line)
                and ("gRPC" in line or self.settings.grpc_port < 0)
            ):
                noticed = True
                self._events.put(worker)

    def _watch(self, http_port: int, grpc_port: int) -> int:
        ready = 0
        restart_at: dict[int, float] = {}  # empty slot -> when to refill it
        while not self._stopping.is_set():
            with contextlib.suppress(queue.Empty):
                while True:
                    worker = self._events.get_nowait()
                    if worker.replacement:
                        log.info(
                            "worker %d (pid %d) ready %.1f s after it was started in place of "
                            "a dead one", worker.index, worker.process.pid,
                            time.monotonic() - worker.started,
                        )  # fmt: skip
                        continue
                    ready += 1
                    if ready == self.count:
                        grpc = (
                            f", gRPC on {self.settings.host}:{grpc_port}" if grpc_port >= 0 else ""
                        )
                        log.info(
                            "all %d workers ready: HTTP on http://%s:%d%s",
                            self.count, self.settings.host, http_port, grpc,
                        )  # fmt: skip
            now = time.monotonic()
            for index, slot in enumerate(self.workers):
                if slot is None:
                    if now >= restart_at.get(index, now) and not self._stopping.is_set():
                        restart_at.pop(index, None)
                        self._start(index, replacement=True)
                    continue
                code = slot.process.poll()
                if code is None or self._stopping.is_set():
                    continue
                delay = self._crashed(slot, code, now)
                if delay is None:
                    return 1
                self.workers[index] = None
                restart_at[index] = now + delay
            time.sleep(0.05)
        return 0

    def _crashed(self, worker: _Worker, code: int, now: float) -> float | None:
        """Count a crash; the delay before its replacement, or None to give up."""
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(worker.process.pid, str(self._metrics_dir))  # its live gauges go
        ended = how_it_ended(code)
        window = self.settings.worker_restart_window_s
        self._crashes = [t for t in self._crashes if now - t < window] + [now]
        allowed = self.settings.worker_restarts
        if len(self._crashes) > allowed:
            log.error(
                "giving up: worker %d (pid %d) ended with %s, %d crash(es) within %.0f s "
                "(--worker-restarts %d); stopping the others",
                worker.index, worker.process.pid, ended, len(self._crashes), window, allowed,
            )  # fmt: skip
            return None
        self.restarts[ended] = self.restarts.get(ended, 0) + 1
        delay = min(self.MAX_BACKOFF_S, self.BACKOFF_S * 2 ** (len(self._crashes) - 1))
        log.error(
            "worker %d (pid %d) ended with %s after %.1f s; replacing it in %.1f s (crash %d of "
            "at most %d within %.0f s)",
            worker.index, worker.process.pid, ended, now - worker.started, delay,
            len(self._crashes), allowed, window,
        )  # fmt: skip
        return delay

    def _on_signal(self, signum: int, _frame: object) -> None:
        log.info("%s: draining %d workers", signal.Signals(signum).name, len(self.processes))
        self._stopping.set()

    def _stop_all(self) -> None:
        processes = self.processes
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.drain_timeout_s + 10
        for process in processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker pid %d did not stop in time; killing it", process.pid)
                process.kill()
                process.wait()

"""``--workers N``: N gateway processes sharing the HTTP and gRPC ports.

One Python process serves at most one core's worth of HTTP/JSON/gRPC handling, whatever the
accelerator does. The supervisor reserves both ports (a bound, never-listening socket with
SO_REUSEPORT, so port 0 resolves to one port for everybody), starts N ordinary gateways on them with
``--reuse-port``, and the kernel spreads new connections over the workers. Each worker loads every
model and batches its own requests. Metrics go through prometheus_client's multiprocess mode (a
temporary directory the supervisor owns), so ``/metrics`` answers the sum whichever worker serves it.

The supervisor forwards SIGTERM/SIGINT (each worker drains as a single gateway does) and, if one
worker dies, stops the others and exits non-zero: the orchestrator restarts the whole gateway rather
than serving on with less capacity than configured and no one told.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from serving.metrics import MULTIPROCESS_ENV
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


class Supervisor:
    """Start, watch and stop the worker processes."""

    def __init__(self, settings: ServingSettings, argv: list[str]) -> None:
        self.settings = settings
        self.argv = argv
        self.count = worker_count(settings)
        self.processes: list[subprocess.Popen[str]] = []
        self._ready = threading.Semaphore(0)
        self._stopping = threading.Event()

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (0) or until a worker dies (1)."""
        s = self.settings
        reserved = [reserve_port(s.host, s.http_port)]
        http_port = reserved[0].getsockname()[1]
        grpc_port = s.grpc_port
        if s.grpc_port >= 0:
            reserved.append(reserve_port(s.host, s.grpc_port))
            grpc_port = reserved[1].getsockname()[1]
        metrics_dir = Path(tempfile.mkdtemp(prefix="serving-metrics-"))
        env = {**os.environ, MULTIPROCESS_ENV: str(metrics_dir), SUPERVISOR_ENV: str(os.getpid())}
        # The CLI wins over the environment, and a later option over an earlier one.
        command = [
            sys.executable, "-m", "serving", *self.argv, "--workers", "1", "--reuse-port",
            "--http-port", str(http_port), "--grpc-port", str(grpc_port),
        ]  # fmt: skip
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        try:
            for index in range(self.count):
                process = subprocess.Popen(
                    command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
                )
                self.processes.append(process)
                threading.Thread(target=self._relay, args=(index, process), daemon=True).start()
            return self._watch(http_port, grpc_port)
        finally:
            self._stop_all()
            for sock in reserved:
                sock.close()
            shutil.rmtree(metrics_dir, ignore_errors=True)

    def _relay(self, index: int, process: subprocess.Popen[str]) -> None:
        """Copy a worker's log to ours, tagged with its index; notice when it is ready."""
        assert process.stdout is not None
        noticed = False
        for line in process.stdout:
            sys.stdout.write(f"[worker {index}] {line}")
            sys.stdout.flush()
            if (
                not noticed
                and READY_LINE.search(line)
                and ("gRPC" in line or self.settings.grpc_port < 0)
            ):
                noticed = True
                self._ready.release()

    def _watch(self, http_port: int, grpc_port: int) -> int:
        ready = 0
        while not self._stopping.is_set():
            if ready < self.count and self._ready.acquire(timeout=0.2):
                ready += 1
                if ready == self.count:
                    grpc = f", gRPC on {self.settings.host}:{grpc_port}" if grpc_port >= 0 else ""
                    log.info(
                        "all %d workers ready: HTTP on http://%s:%d%s",
                        self.count, self.settings.host, http_port, grpc,
                    )  # fmt: skip
                continue
            for index, process in enumerate(self.processes):
                if process.poll() is not None:
                    log.error(
                        "worker %d (pid %d) exited with %s; stopping the others",
                        index, process.pid, process.returncode,
                    )  # fmt: skip
                    return 1
            time.sleep(0.2)
        return 0

    def _on_signal(self, signum: int, _frame: object) -> None:
        log.info("%s: draining %d workers", signal.Signals(signum).name, self.count)
        self._stopping.set()

    def _stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.drain_timeout_s + 10
        for process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker pid %d did not stop in time; killing it", process.pid)
                process.kill()
                process.wait()

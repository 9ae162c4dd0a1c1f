"""What one worker's death costs under load: ``--workers N``, a steady load, ``kill -9`` of one
worker at a time; per kill, the requests lost and the time until its replacement is ready.

The load is four threads on loopback: three keep-alive clients and one that opens a connection per
request, each TF Serving ``:predict`` of one image. Kills are spaced so that each falls outside
the crash window (``--worker-restart-window-s``), so every replacement waits the first backoff
(0.5 s); the time to ready is that plus loading and warming the models.

    .venv/bin/python -m benchmarks.lab.worker_kill [--repository model_repository] [--kills 5]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[2]


class SteadyLoad:
    """Predict requests from ``keep_alive`` keep-alive clients and one client that opens a
    connection per request, until stopped; every outcome timed."""

    def __init__(self, url: str, body: dict[str, Any], keep_alive: int = 3) -> None:
        self.url, self.body = url, body
        self.outcomes: list[tuple[float, bool]] = []  # (time.monotonic(), succeeded)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._keep_alive) for _ in range(keep_alive)]
        self._threads.append(threading.Thread(target=self._new_connections))
        for thread in self._threads:
            thread.start()

    @property
    def threads(self) -> int:
        return len(self._threads)

    def _one(self, post: Any) -> None:
        try:
            ok = post(self.url, json=self.body, timeout=10).status_code == 200
        except httpx.HTTPError:
            ok = False
        self.outcomes.append((time.monotonic(), ok))

    def _keep_alive(self) -> None:
        with httpx.Client() as client:
            while not self._stop.is_set():
                self._one(client.post)

    def _new_connections(self) -> None:
        while not self._stop.is_set():
            self._one(httpx.post)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def between(self, start: float, end: float = float("inf")) -> tuple[int, int]:
        """(succeeded, failed) among requests that ended in [start, end)."""
        inside = [ok for at, ok in self.outcomes if start <= at < end]
        return sum(inside), len(inside) - sum(inside)


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (Linux)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def measure(repo: Path, model: str, workers: int, kills: int) -> list[dict[str, float]]:
    command = [
        sys.executable, "-m", "serving", "--repository", str(repo), "--host", "127.0.0.1",
        "--http-port", "0", "--grpc-port", "0", "--device", "cpu", "--workers", str(workers),
        "--worker-restart-window-s", "2", "--poll-interval-s", "0",
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    lines: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        if match := re.search(r"workers ready: HTTP on (http://\S+),", line):
            url = match.group(1)
            break
    else:
        sys.exit("the gateway did not start:\n" + "".join(lines))
    threading.Thread(target=lambda: lines.extend(process.stdout or []), daemon=True).start()
    image = np.zeros((28, 28, 1), np.uint8).tolist()
    load = SteadyLoad(f"{url}/v1/models/{model}:predict", {"instances": [image]})
    rows = []
    try:
        for kill in range(kills):
            time.sleep(3)  # outside the 2 s crash window of the previous kill
            victim = children(process.pid)[0]
            replaced = sum("in place of a dead one" in line for line in lines)
            killed_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            while sum("in place of a dead one" in line for line in lines) == replaced:
                if time.monotonic() - killed_at > 120 or process.poll() is not None:
                    sys.exit("no replacement:\n" + "".join(lines[-30:]))
                time.sleep(0.01)
            ready_at = time.monotonic()
            served, lost = load.between(killed_at, ready_at)
            rows.append({"kill": kill + 1, "lost": lost, "served_meanwhile": served,
                         "to_ready_s": ready_at - killed_at})  # fmt: skip
            print(f"kill {kill + 1}: {lost} lost, {served} served by the others, replacement "
                  f"ready {ready_at - killed_at:.2f} s after the kill", flush=True)  # fmt: skip
        time.sleep(2)
    finally:
        load.stop()
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    after = load.between(ready_at)
    print(f"after the last replacement: {after[0]} served, {after[1]} lost; "
          f"load threads {load.threads}; total {len(load.outcomes)} requests")  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, help="default: a tiny LeNet-like model")
    parser.add_argument("--model", default="lenet")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--kills", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        repo = args.repository
        if repo is None:
            from tests.tiny_models import lenet_like, write_version

            repo = Path(scratch)
            write_version(repo, args.model, 1, lenet_like())
        rows = measure(repo, args.model, args.workers, args.kills)
    lost = [row["lost"] for row in rows]
    ready = [row["to_ready_s"] for row in rows]
    print(f"{len(rows)} kills, {args.workers} workers: lost per kill mean {np.mean(lost):.1f}, "
          f"max {max(lost)}; kill -> replacement ready mean {np.mean(ready):.2f} s, "
          f"max {max(ready):.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()

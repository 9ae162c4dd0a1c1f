"""A bounded pool for the CPU-heavy decoding a few requests need (big images, base64 bodies).

Decoding on the event loop would stall every other request for its whole duration (milliseconds
for the largest images admitted: benchmarks/RESULTS.md, "Hostile input"). Here it runs on worker threads (Pillow and base64 release the GIL for the
heavy part) with a lowered CPU priority, so that when the cores are contended the event loop and
ONNX Runtime, which serve everyone, go first. At most ``threads`` decodes run at once and at most
``queue`` more wait; a request beyond that is refused at once with 429, so a flood of expensive
requests costs the others a bounded share of the machine and a bounded amount of memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from serving.errors import ResourceExhausted, Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

#: how much nicer decode threads are than the thread that starts them (Linux: per thread); equal
#: niceness would compete equally with request serving.
DECODE_THREAD_NICENESS = 10


def _lower_priority() -> None:
    """Thread initializer: raise this thread's niceness where the OS allows it (Linux).

    Relative to the niceness it starts with, capped at 19: an absolute value would make decode
    threads of a gateway started under ``nice -n 15`` run before its event loop (as root).
    """
    setpriority = getattr(os, "setpriority", None)
    if setpriority is None:
        return
    thread = threading.get_native_id()
    with contextlib.suppress(OSError):
        current = os.getpriority(os.PRIO_PROCESS, thread)
        setpriority(os.PRIO_PROCESS, thread, min(19, current + DECODE_THREAD_NICENESS))


class DecodePool:
    """``await pool.run(fn, *args)``: ``fn(*args)`` on a low-priority worker thread, bounded."""

    def __init__(self, threads: int, queue: int, name: str = "decode") -> None:
        if threads < 1 or queue < 0:
            raise ValueError(
                f"a decode pool needs threads >= 1 and queue >= 0, got {threads}, {queue}"
            )
        self.threads = threads
        self.queue = queue
        self._executor = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix=name, initializer=_lower_priority
        )
        self._lock = threading.Lock()
        self._admitted = 0  # running or waiting; decremented by the worker when a job ends

    @property
    def admitted(self) -> int:
        """Jobs running or waiting now."""
        return self._admitted

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in the pool; ResourceExhausted at once when the pool is full.

        A cancelled caller (client gone) stops waiting, but a job already started runs to its end
        and keeps its place until then, so the bound holds for the threads' real work.
        """
        with self._lock:
            if self._admitted >= self.threads + self.queue:
                busy = ResourceExhausted(
                    f"decoding is at capacity ({self.threads} running, {self.queue} waiting); "
                    "retry later"
                )
                busy.retry_after_s = 1.0
                raise busy
            self._admitted += 1

        try:
            future = self._executor.submit(fn, *args)
        except RuntimeError:  # the pool is closed: the gateway is stopping
            self._release()
            raise Unavailable("server is shutting down") from None
        # Runs when the job ends, or when it is cancelled before it started (the caller's
        # cancellation reaches a job that has not started): either way its place is freed once.
        future.add_done_callback(lambda _: self._release())
        return await asyncio.wrap_future(future)

    def _release(self) -> None:
        with self._lock:
            self._admitted -= 1

    def close(self) -> None:
        """Stop taking jobs; queued ones are cancelled, running ones finish on their own."""
        self._executor.shutdown(wait=False, cancel_futures=True)

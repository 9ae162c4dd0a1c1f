"""Bounded pools for the CPU-heavy decoding a few requests need (big images, base64 bodies, big
JSON bodies).

Decoding on the event loop would stall every other request for its whole duration (milliseconds
for the largest images admitted, 110 to 350 ms for a JSON batch of 1,024 small images:
benchmarks/RESULTS.md, "Hostile input" and "big JSON bodies off the event loop"). ``DecodePool`` runs it on worker threads where the decoder
releases the GIL for the heavy part (Pillow, base64); ``DecodePool(processes=True)`` in worker
processes where it does not (JSON parsers and the conversion of their output hold the GIL
throughout, so a thread would stall the loop all the same). Workers run at a lowered CPU priority,
so that when the cores are contended the event loop and ONNX Runtime, which serve everyone, go
first. At most ``workers`` decodes run at once and at most ``queue`` more wait; a request beyond
that is refused at once with 429, so a flood of expensive requests costs the others a bounded
share of the machine and a bounded amount of memory.

Worker processes are started with ``spawn`` by ``warm()`` or the first job (a clean interpreter:
forking a process that runs ONNX Runtime's and gRPC's threads is unsafe), import only what the
job's function needs, are replaced if one dies, and exit when the gateway does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
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


def _init_worker_process() -> None:
    """Process initializer: raise the worker's niceness as ``_lower_priority`` does, and end the
    worker when the gateway that started it ends, however it ends. A worker waits on the pool's
    queue, whose pipe it holds both ends of, so it would outlive a gateway that was killed."""
    with contextlib.suppress(OSError, AttributeError):  # AttributeError: no setpriority (Windows)
        current = os.getpriority(os.PRIO_PROCESS, 0)
        os.setpriority(os.PRIO_PROCESS, 0, min(19, current + DECODE_THREAD_NICENESS))
    parent = multiprocessing.parent_process()
    if parent is not None:

        def exit_with_parent() -> None:
            parent.join()  # returns when the parent process has ended
            os._exit(0)

        threading.Thread(target=exit_with_parent, name="exit-with-parent", daemon=True).start()


class DecodePool:
    """``await pool.run(fn, *args)``: ``fn(*args)`` on a low-priority worker, bounded.

    Threads by default; with ``processes=True``, worker processes (``fn`` must then be a
    module-level function, and its arguments, result and errors picklable).
    """

    def __init__(
        self, threads: int, queue: int, name: str = "decode", processes: bool = False
    ) -> None:
        if threads < 1 or queue < 0:
            raise ValueError(
                f"a decode pool needs workers >= 1 and queue >= 0, got {threads}, {queue}"
            )
        self.threads = threads
        self.queue = queue
        self.name = name
        self.processes = processes
        self._closed = False
        self._executor: Executor | None = None  # created by the first job
        self._lock = threading.Lock()
        self._admitted = 0  # running or waiting; decremented by the worker when a job ends
        #: worker processes that died and were replaced (processes=True)
        self.restarts = 0

    def _new_executor(self) -> Executor:
        if not self.processes:
            return ThreadPoolExecutor(
                max_workers=self.threads,
                thread_name_prefix=self.name,
                initializer=_lower_priority,
            )
        return ProcessPoolExecutor(
            max_workers=self.threads,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker_process,
        )

    def warm(self) -> None:
        """Start the workers now instead of on the first job (a worker process takes about a
        second to start; the first big request should not wait for it). Returns at once."""
        with self._lock:
            if self._closed:
                return
            if self._executor is None:
                self._executor = self._new_executor()
            executor = self._executor
        with contextlib.suppress(RuntimeError, BrokenProcessPool):
            for _ in range(self.threads):
                executor.submit(os.getpid)

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
            if self._closed:
                raise Unavailable("server is shutting down")
            if self._admitted >= self.threads + self.queue:
                busy = ResourceExhausted(
                    f"decoding is at capacity ({self.threads} running, {self.queue} waiting); "
                    "retry later"
                )
                busy.retry_after_s = 1.0
                raise busy
            self._admitted += 1
            if self._executor is None:
                self._executor = self._new_executor()
            executor = self._executor
        try:
            future = executor.submit(fn, *args)
        except BrokenProcessPool:  # a worker died since the last job: replace them, refuse this one
            self._release()
            self._replace(executor)
            raise self._worker_died() from None
        except RuntimeError:  # the pool was closed meanwhile: the gateway is stopping
            self._release()
            raise Unavailable("server is shutting down") from None
        # Runs when the job ends, or when it is cancelled before it started (the caller's
        # cancellation reaches a job that has not started): either way its place is freed once.
        future.add_done_callback(lambda _: self._release())
        try:
            return await asyncio.wrap_future(future)
        except BrokenProcessPool:  # a worker died during this job (or one queued with it)
            self._replace(executor)
            raise self._worker_died() from None

    def _worker_died(self) -> Unavailable:
        error = Unavailable(f"a {self.name} worker process died; retry")
        error.retry_after_s = 1.0
        return error

    def _replace(self, broken: Executor) -> None:
        """Drop a broken executor (the next job starts a new one), once however many jobs saw it
        break."""
        with self._lock:
            if self._executor is not broken:
                return
            self._executor = None
            self.restarts += 1
        log.error("a %s worker process died; the next job starts new ones", self.name)
        broken.shutdown(wait=False, cancel_futures=True)

    def _release(self) -> None:
        with self._lock:
            self._admitted -= 1

    def close(self) -> None:
        """Stop taking jobs; queued ones are cancelled, running ones finish on their own."""
        with self._lock:
            self._closed = True
            executor = self._executor
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

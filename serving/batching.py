"""Dynamic batching: merge concurrent requests for one model version into one ONNX Runtime call.

One ``DynamicBatcher`` wraps one runtime. Requests join a queue; a single scheduling task takes a
batch whenever a compute slot is free (``max_concurrent`` slots, each a worker thread), so while
the model computes, the next batch accumulates on its own. ``batch_timeout_us`` adds an explicit wait
for more rows once a slot is free; ``preferred_batch_sizes`` end that wait early. Only requests whose
inputs agree on dtype and non-batch shape are merged. A failing batch fails only its own requests.
A batch of a few rows whose kind measures lighter than the thread hand-off (``inline_compute_us``)
runs on the event loop instead: one client at a time, and gRPC's calls that arrive one by one.

Without an explicit timeout, a free slot may wait for peers: while the event loop is the
bottleneck and requests queue up, for as many rows as were recently inside the batcher at once,
ending early when none arrive (``peer_idle_us``), at most ``peer_wait_us``. One client at a time
never waits. :class:`serving.batching_policy.PeerWaitPolicy` decides (its docstring has the
invariants and the reasons); the scheduler here only arms the timers it asks for.

A request of more rows than ``max_batch_size`` is computed a batch at a time
(``split_large_requests``, TF Serving's ``enable_large_batch_splitting``): one chunk of it is
queued at once and the next joins the back of the queue when it finishes, so requests that
arrived meanwhile wait for one chunk, not for the whole request, and the model sees no batch
larger than ``max_batch_size`` (on a GPU, no new shape). Its answer is the chunks' rows joined.

With ``merge=False`` (batching off) the same queue, bound and deadlines apply, one request per call.

Admission (:meth:`DynamicBatcher.admit`, asked by every transport before it decodes): below
``max_queue_size`` requests join the queue; beyond it a bounded share of arrivals is refused (429
with a retry hint) and the rest wait in an overflow of ``queue_overflow`` requests, so that under a
closed-loop flood refusals cannot take over the event loop. ``max_queue_bytes`` bounds the queued
inputs. The scheduler task is supervised: if it dies, its queue fails at once and it restarts.

Layout: the config, then ``DynamicBatcher`` by concern (admission, supervision, ``infer``, the
chunks of a split request, the scheduler and its two waits, take, launch, finish, drain and
close), each a screen or less. It stays one module of about 620 lines because those concerns
share the queue and its row and byte counters, which a split would pass around on the
per-request path; the peer-wait decision, which keeps state of its own, is the part that moved
out.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serving.batching_policy import NEXT_TURN, PeerWaitPolicy
from serving.errors import DeadlineExceeded, ResourceExhausted, Unavailable
from serving.metrics import GatewayMetrics, fast_observe, fast_set
from serving.observe import BatchRecord, BatchTiming, RequestRecord, current
from serving.runtimes.base import ModelRuntime

log = logging.getLogger(__name__)

Tensors = dict[str, np.ndarray]


@dataclass
class InferenceStats:
    """Cumulative counts of one version since it loaded, for Triton's statistics extension (V2
    ``ModelStatistics`` and ``/v2/models/.../stats``), in its terms: requests that succeeded or
    failed (with their time inside ``DataPlane.predict``), rows inferred, and per request its
    wait in the queue and its batch's three compute phases (input: merging and padding the
    batch's rows; infer: ONNX Runtime; output: handing each request its rows); per batch size
    (rows before padding) the batches run and their phases."""

    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    inference_count: int = 0
    execution_count: int = 0
    #: ONNX Runtime time of every batch run
    compute_ns: int = 0
    #: per request (a split request: per chunk) that reached the model
    queue_count: int = 0
    queue_ns: int = 0
    compute_count: int = 0
    compute_input_ns: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0
    #: wall-clock milliseconds of the last successful request (0: none yet)
    last_inference_ms: int = 0
    #: rows in a batch (before padding) -> [batches, input ns, infer ns, output ns]
    batches: dict[int, list[int]] = field(default_factory=dict)

    def note_request(self, ok: bool, ns: int, rows: int) -> None:
        """One request out of ``DataPlane.predict``."""
        if ok:
            self.success_count += 1
            self.success_ns += ns
            self.inference_count += rows
            self.last_inference_ms = time.time_ns() // 1_000_000
        else:
            self.fail_count += 1
            self.fail_ns += ns

    def note_batch(
        self, rows: int, requests: int, input_ns: int, infer_ns: int, output_ns: int
    ) -> None:
        """One model execution of ``rows`` rows from ``requests`` requests (or chunks)."""
        self.execution_count += 1
        self.compute_ns += infer_ns
        self.compute_count += requests
        self.compute_input_ns += input_ns * requests
        self.compute_infer_ns += infer_ns * requests
        self.compute_output_ns += output_ns * requests
        entry = self.batches.get(rows)
        if entry is None:
            self.batches[rows] = [1, input_ns, infer_ns, output_ns]
        else:
            entry[0] += 1
            entry[1] += input_ns
            entry[2] += infer_ns
            entry[3] += output_ns


@dataclass(frozen=True)
class BatchingConfig:
    """Per-model batching parameters. These defaults are the gateway settings' defaults too
    (``serving/settings.py`` reads them from here)."""

    merge: bool = True
    max_batch_size: int = 32
    batch_timeout_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 256
    #: bytes of queued inputs; an empty queue takes one request of any size (the body limit
    #: bounds it).
    max_queue_bytes: int = 256 * 1024 * 1024
    #: while max_queue_size requests are queued, arrivals are refused (429) up to this many per
    #: request admitted; the others join the queue anyway (pushback: they wait instead of
    #: coming straight back), up to queue_overflow more. A share, not a rate: a refusal costs
    #: about what an admission costs in transport work, so refusals take a bounded share of the
    #: event loop whatever the protocol. None = refuse every arrival beyond max_queue_size.
    refusal_share: float | None = 0.1
    queue_overflow: int = 1024
    max_concurrent: int = 1
    #: a batch of at most INLINE_MAX_ROWS rows runs on the event loop instead of a worker thread
    #: while such batches measure below this (a hand-off to the thread and back costs about
    #: 100 us of latency, more than a light model's compute); 0 = always a worker thread.
    inline_compute_us: int = 100
    #: sizes a batch is padded up to (the smallest that holds it), so the model sees only these
    #: shapes, each warmed at load; () = none. None = decided per runtime: max_batch_size alone
    #: where a change of input shape is costly (``ModelRuntime.new_shapes_are_costly``), none
    #: elsewhere. TF Serving's allowed_batch_sizes.
    allowed_batch_sizes: tuple[int, ...] | None = None
    #: with batch_timeout_us 0, the longest wait for the recent concurrency's rows (0 = never).
    peer_wait_us: int = 3000
    #: a peer wait also ends once no request has arrived for this long (nobody else is coming).
    peer_idle_us: int = 1000
    #: a request of more than max_batch_size rows runs a max_batch_size chunk at a time, the
    #: next chunk queued behind what arrived meanwhile; False = it runs whole, and every request
    #: queued behind it waits for all of it.
    split_large_requests: bool = True
    #: peer waits only while the event loop's thread was at least this busy over a 0.5 s window:
    #: above what a load generator that is itself the bottleneck drives it to, below what a
    #: saturating load does (benchmarks/RESULTS.md, "Gateway speed (serving/), 2026-11-27,
    #: third: batches wait for the peers of a busy load").
    peer_min_loop_busy: float = 0.8


#: the largest batch that may run on the event loop: the batches where a thread hand-off costs
#: most per request (one client at a time; gRPC, whose calls arrive one by one). Larger batches
#: keep decoding on the loop and compute in the thread overlapped.
INLINE_MAX_ROWS = 4


def padded_batch_sizes(config: BatchingConfig, runtime: ModelRuntime) -> tuple[int, ...]:
    """The batch sizes ``runtime`` will be called with (ascending; () = any size)."""
    if config.allowed_batch_sizes is not None:
        return config.allowed_batch_sizes
    # Where every change of shape costs (ONNX Runtime's CUDA convolutions rebuild their cuDNN
    # plans whenever the batch size differs from the previous call), one size is the only set
    # without changes: a light load pays a full batch's compute instead.
    return (config.max_batch_size,) if runtime.new_shapes_are_costly else ()


def warmup_batch_sizes(config: BatchingConfig, runtime: ModelRuntime) -> tuple[int, ...]:
    """What a version runs once before it is ready: every padded size, else 1 and the largest."""
    return padded_batch_sizes(config, runtime) or tuple(
        sorted({1, config.max_batch_size if config.merge else 1})
    )


@dataclass(eq=False)
class _Split:
    """A request of more rows than a batch, computed one chunk at a time (``next_row`` is the
    first row not yet queued); ``pieces`` are the chunks' outputs so far, in order."""

    inputs: Tensors
    rows: int
    nbytes: int
    future: asyncio.Future[Tensors]
    next_row: int = 0
    pieces: list[Tensors] = field(default_factory=list)
    record: RequestRecord | None = None


@dataclass
class _Pending:
    inputs: Tensors
    rows: int
    key: tuple[Any, ...]
    future: asyncio.Future[Tensors]
    #: queued input bytes this entry stands for (a chunk: the rest of its request).
    nbytes: int = 0
    enqueued_ns: int = field(default_factory=time.perf_counter_ns)
    #: set on a chunk of a split request; its future is the whole request's.
    split: _Split | None = None
    #: the request's record (observe.current when it was queued), for its timings
    record: RequestRecord | None = None


def _merge_key(inputs: Tensors) -> tuple[Any, ...]:
    return tuple((name, array.dtype.str, array.shape[1:]) for name, array in sorted(inputs.items()))


class DynamicBatcher:
    """Queue, merge, run in a worker thread, split. One per loaded model version."""

    def __init__(
        self,
        runtime: ModelRuntime,
        model: str,
        version: int,
        config: BatchingConfig,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.runtime = runtime
        self.model = model
        self.version = version
        self.config = config
        self.metrics = metrics
        #: cumulative counts for V2's ModelStatistics (requests counted by the dataplane)
        self.stats = InferenceStats()
        #: called with every batch that ran, when tracing is on (serving.tracing)
        self.on_batch: Callable[[BatchRecord], None] | None = None
        self._queue: collections.deque[_Pending] = collections.deque()
        self._queued_bytes = 0
        # Refusal budget: each admission earns refusal_share of a refusal (up to a burst).
        self._refusal_tokens = 1.0
        self._refusal_burst = max(1.0, 100 * (config.refusal_share or 0))
        #: measured rows per second of compute (moving average), for Retry-After.
        self._rows_per_s = 0.0
        #: compute seconds of batches of at most INLINE_MAX_ROWS rows (moving average; None
        #: until one ran: the first small batches go to the thread and are measured there).
        self._small_batch_s: float | None = None
        self._inline_s = config.inline_compute_us / 1e6
        self._pool = ThreadPoolExecutor(
            max_workers=config.max_concurrent, thread_name_prefix=f"ort-{model}-{version}"
        )
        self._busy = 0
        self._wakeup: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._preferred = frozenset(config.preferred_batch_sizes)
        self._padded_sizes = padded_batch_sizes(config, runtime)
        if self._padded_sizes:
            log.info(
                "model %s v%s: batches padded to %s rows (%s)",
                model, version, ",".join(map(str, self._padded_sizes)), runtime.provider,
            )  # fmt: skip
        self._max_rows = config.max_batch_size if config.merge else 1
        # Requests above this many rows are split into chunks of it (0 = never split).
        self._split_rows = self._max_rows if config.merge and config.split_large_requests else 0
        # Split requests not finished yet (for Retry-After: their rows not yet queued).
        self._splits: set[_Split] = set()
        # Rows queued, computing, and inside infer() right now (the last for the peer wait).
        self._queued_rows = 0
        self._computing_rows = 0
        self._inside_rows = 0
        self._peers = PeerWaitPolicy(
            peer_wait_us=config.peer_wait_us,
            peer_idle_us=config.peer_idle_us,
            min_loop_busy=config.peer_min_loop_busy,
            max_rows=self._max_rows,
            preferred=self._preferred,
        )
        # Bound once: infer() calls it per request.
        self._note_arrival = self._peers.note_arrival
        # The peer wait in progress: what the scheduler awaits, and the timer armed to look again.
        self._peer_wait: asyncio.Future[None] | None = None
        self._peer_timer: asyncio.Handle | None = None
        if metrics is not None:
            # Per request or per batch: the updates without prometheus_client's per-call checks.
            self._set_depth = fast_set(metrics.queue_depth.labels(model))
            self._observe_queue_latency = fast_observe(metrics.queue_latency.labels(model))
            self._observe_batch_size = fast_observe(metrics.batch_size.labels(model))
            self._observe_compute_latency = fast_observe(
                metrics.compute_latency.labels(model, str(version))
            )

    @property
    def queued(self) -> int:
        """Requests waiting for compute."""
        return len(self._queue)

    @property
    def padded_sizes(self) -> tuple[int, ...]:
        """The batch sizes every batch is padded up to (ascending; () = none)."""
        return self._padded_sizes

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing computing."""
        return not self._queue and self._busy == 0

    def admit(self, nbytes: int) -> None:
        """Whether a request of about ``nbytes`` may join the queue: raises ResourceExhausted (or
        Unavailable) when not, in constant time, so a transport asks before it decodes.

        Below ``max_queue_size`` every request is admitted; at or above it, arrivals are refused
        up to ``refusal_share`` per admitted request and the rest admitted into the overflow,
        which is bounded by ``queue_overflow`` requests; ``max_queue_bytes`` bounds the inputs.
        """
        if self._closed:
            raise Unavailable(f"model '{self.model}' version {self.version} is unloading")
        queued = len(self._queue)
        config = self.config
        if queued and self._queued_bytes + nbytes > config.max_queue_bytes:
            raise self._refusal(f"{self._queued_bytes} bytes queued")
        if queued < config.max_queue_size:
            return
        if queued >= config.max_queue_size + config.queue_overflow or self._take_refusal_token():
            raise self._refusal(f"{queued} requests waiting")

    def _take_refusal_token(self) -> bool:
        if self.config.refusal_share is None:
            return True
        if self._refusal_tokens >= 1:
            self._refusal_tokens -= 1
            return True
        return False

    def _refusal(self, why: str) -> ResourceExhausted:
        """429 with how long the queue needs to drain at the measured rate (Retry-After)."""
        rows = self._queued_rows + self._computing_rows
        for split in self._splits:
            rows += split.rows - split.next_row
        drain_s = rows / self._rows_per_s if self._rows_per_s else 1.0
        error = ResourceExhausted(f"model '{self.model}' queue is full ({why}); retry later")
        # At least 100 ms: the measured rate is compute alone, and a retry sooner than that
        # would only meet the same queue.
        error.retry_after_s = max(0.1, drain_s)
        return error

    def _start(self) -> None:
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(self.config.max_concurrent)
        self._start_scheduler()

    def _start_scheduler(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._schedule())
        self._task.add_done_callback(self._scheduler_ended)

    def _scheduler_ended(self, task: asyncio.Task[None]) -> None:
        """Supervision: the scheduler only ends by cancellation (close). If it died of a bug,
        the requests it would have served fail now (503, retryable) instead of waiting for their
        deadlines, and a new scheduler takes over."""
        if task.cancelled() or self._closed:
            return
        error = task.exception()
        log.error(
            "model %s v%s: batch scheduler died, restarting it", self.model, self.version,
            exc_info=error,
        )  # fmt: skip
        self._fail_queued(
            f"model '{self.model}' version {self.version}: the batch scheduler failed and was "
            "restarted; retry"
        )
        # Slots held by batches still computing come back through _finish.
        self._slots = asyncio.Semaphore(max(0, self.config.max_concurrent - self._busy))
        self._start_scheduler()

    def _fail_queued(self, message: str) -> None:
        """Fail every queued request with UNAVAILABLE (retryable) and empty the queue."""
        for item in self._queue:
            if not item.future.done():
                item.future.set_exception(Unavailable(message))
        self._queue.clear()
        self._splits.clear()
        self._queued_rows = self._queued_bytes = 0

    async def infer(self, inputs: Tensors, deadline: float) -> Tensors:
        """Queue ``inputs`` (batch-major arrays) and wait for this request's rows of the result.

        ``deadline`` is a ``time.monotonic()`` instant. Raises ResourceExhausted at once when the
        queue and its overflow are full (transports call :meth:`admit` first, before decoding,
        where the refusal budget applies), DeadlineExceeded when the deadline passes first.
        """
        if self._closed:
            raise Unavailable(f"model '{self.model}' version {self.version} is unloading")
        nbytes = 0
        for array in inputs.values():  # a loop: a generator costs more than the one input
            nbytes += array.nbytes
        queued = len(self._queue)
        if queued >= self.config.max_queue_size + self.config.queue_overflow or (
            queued and self._queued_bytes + nbytes > self.config.max_queue_bytes
        ):
            raise self._refusal(f"{queued} requests, {self._queued_bytes} bytes waiting")
        if self._task is None:
            self._start()
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Tensors] = loop.create_future()
        rows = next(iter(inputs.values())).shape[0]
        record = current.get()
        if record is not None and not record.timed:
            record = None  # nothing reads its times
        if self._split_rows and rows > self._split_rows:
            item = self._split(_Split(inputs, rows, nbytes, future, record=record))
        else:
            item = _Pending(inputs, rows, _merge_key(inputs), future, nbytes, record=record)
        if record is not None:
            record.enqueued_ns = item.enqueued_ns
        self._queue.append(item)
        self._queued_bytes += item.nbytes
        if self.config.refusal_share:
            self._refusal_tokens = min(
                self._refusal_burst, self._refusal_tokens + self.config.refusal_share
            )
        if self.metrics is not None:
            self._set_depth(len(self._queue))
        now = loop.time()
        # What a split request has inside at once is one chunk (and so is its part in the
        # concurrency the peer wait estimates).
        rows = item.rows
        self._queued_rows += rows
        self._inside_rows += rows
        if self._note_arrival(self._inside_rows, self._queued_rows, now):
            wait = self._peer_wait  # the peer wait in progress has its rows
            if wait is not None and not wait.done():
                wait.set_result(None)
        self._wakeup.set()
        # A timer rather than asyncio.wait_for: cheaper, and the request is simply skipped (if
        # still queued) or its rows dropped (if computing) once its future is done.
        timer = loop.call_at(now + max(0.0, deadline - time.monotonic()), self._expire, future)
        try:
            return await future
        finally:
            timer.cancel()
            self._inside_rows -= rows

    def _split(self, split: _Split) -> _Pending:
        """The first chunk of a request larger than a batch; the rest follow from _finish."""
        self._splits.add(split)
        split.future.add_done_callback(lambda _: self._splits.discard(split))
        return self._next_chunk(split)

    def _next_chunk(self, split: _Split) -> _Pending:
        start = split.next_row
        end = split.next_row = min(start + self._split_rows, split.rows)
        chunk = {name: array[start:end] for name, array in split.inputs.items()}
        rest_bytes = split.nbytes * (split.rows - start) // split.rows
        return _Pending(
            chunk, end - start, _merge_key(chunk), split.future, rest_bytes, split=split,
            record=split.record,
        )  # fmt: skip

    def _chunk_done(self, split: _Split, outputs: Tensors) -> None:
        """Keep a chunk's rows; queue the next chunk at the back, or answer the request."""
        split.pieces.append(outputs)
        if split.next_row < split.rows:
            self._requeue(self._next_chunk(split))
            return
        pieces = split.pieces
        split.future.set_result(
            {name: np.concatenate([piece[name] for piece in pieces]) for name in pieces[0]}
        )

    def _requeue(self, item: _Pending) -> None:
        """Queue an entry behind everything waiting (the admission check was the request's)."""
        if self._closed:
            item.future.set_exception(Unavailable(f"model '{self.model}' was unloaded"))
            return
        self._queue.append(item)
        self._queued_rows += item.rows
        self._queued_bytes += item.nbytes
        if self.metrics is not None:
            self._set_depth(len(self._queue))
        assert self._wakeup is not None
        self._wakeup.set()

    def _expire(self, future: asyncio.Future[Tensors]) -> None:
        if not future.done():
            future.set_exception(
                DeadlineExceeded(f"deadline exceeded before model '{self.model}' answered")
            )

    async def _schedule(self) -> None:
        assert self._wakeup is not None and self._slots is not None
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._slots.acquire()
            if self.config.merge and self.config.batch_timeout_us > 0:
                await self._wait_for_more()
            elif self.config.merge and self.config.peer_wait_us > 0:  # else the policy never waits
                await self._wait_for_peers()
            batch = self._take()
            if not batch:
                self._slots.release()
                continue
            self._launch(batch)

    async def _wait_for_peers(self) -> None:
        """Hold the batch back for as long as the peer-wait policy asks (often not at all)."""
        loop = asyncio.get_running_loop()
        first = self._peers.begin(self._queued_rows, self._computing_rows, loop.time())
        if first is None:
            return
        done: asyncio.Future[None] = loop.create_future()
        self._peer_timer = loop.call_at(first, self._look_for_peers, done)
        self._peer_wait = done
        try:
            await done  # ended by _look_for_peers, or by an arrival in infer()
        finally:
            if self._peer_timer is not None:
                self._peer_timer.cancel()
            self._peer_wait = self._peer_timer = None
            self._peers.end()

    def _look_for_peers(self, done: asyncio.Future[None]) -> None:
        """The peer wait's timer: end the wait, or arm the next look where the policy says."""
        if done.done():
            return
        loop = done.get_loop()
        when = self._peers.look(loop.time())
        if when is None:
            done.set_result(None)
        elif when is NEXT_TURN:
            self._peer_timer = loop.call_soon(self._look_for_peers, done)
        else:
            self._peer_timer = loop.call_at(when, self._look_for_peers, done)

    async def _wait_for_more(self) -> None:
        assert self._wakeup is not None
        if not self._queue:
            return
        until = self._queue[0].enqueued_ns / 1e9 + self.config.batch_timeout_us / 1e6
        while True:
            rows = sum(item.rows for item in self._queue)
            if rows >= self._max_rows or rows in self._preferred:
                return
            remaining = until - time.perf_counter()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _take(self) -> list[_Pending]:
        """Pop the oldest live request and every later compatible one that still fits."""
        batch: list[_Pending] = []
        kept: collections.deque[_Pending] = collections.deque()
        rows = 0
        while self._queue:
            item = self._queue.popleft()
            if item.future.done():  # expired while queued
                continue
            if not batch:
                batch.append(item)
                rows = item.rows
            elif item.key == batch[0].key and rows + item.rows <= self._max_rows:
                batch.append(item)
                rows += item.rows
            else:
                kept.append(item)
            if rows >= self._max_rows:
                break
        kept.extend(self._queue)
        self._queue = kept
        self._queued_rows = sum(item.rows for item in kept)
        self._queued_bytes = sum(item.nbytes for item in kept)
        if self.metrics is not None:
            self._set_depth(len(self._queue))
        return batch

    def _launch(self, batch: list[_Pending]) -> None:
        now = time.perf_counter_ns()
        observe = self._observe_queue_latency if self.metrics is not None else None
        waited = 0
        for item in batch:
            wait = now - item.enqueued_ns
            waited += wait
            if item.split is None or not item.split.pieces:  # per request: its first chunk
                if observe is not None:
                    observe(wait / 1e9)
                if item.record is not None:
                    item.record.compute_start_ns = now
        self.stats.queue_count += len(batch)
        self.stats.queue_ns += waited
        if len(batch) == 1:
            feeds = batch[0].inputs
        else:
            feeds = {
                name: np.concatenate([item.inputs[name] for item in batch])
                for name in batch[0].inputs
            }
        rows = sum(item.rows for item in batch)
        # More rows than the largest padded size (batching off, or splitting off) run as they are.
        padded = next((size for size in self._padded_sizes if size >= rows), rows)
        if padded > rows:
            feeds = {
                name: np.concatenate(
                    [array, np.zeros((padded - rows, *array.shape[1:]), array.dtype)]
                )
                for name, array in feeds.items()
            }
        self._busy += 1
        self._computing_rows += rows
        self._peers.note_batch(rows)
        loop = asyncio.get_running_loop()
        if (
            padded <= INLINE_MAX_ROWS
            and self._small_batch_s is not None
            and self._small_batch_s < self._inline_s
        ):
            # Lighter than the hand-off: compute here. A failure still fails only this batch.
            done = loop.create_future()
            try:
                done.set_result(self._compute(feeds))
            except Exception as error:
                done.set_exception(error)
            self._finish(batch, rows, padded, now, done)
            return
        done = loop.run_in_executor(self._pool, self._compute, feeds)
        done.add_done_callback(lambda fut: self._finish(batch, rows, padded, now, fut))

    def _compute(self, feeds: Tensors) -> tuple[Tensors, int, int]:
        """ONNX Runtime on a batch: its outputs and perf_counter_ns at start and end (the same
        clock in every thread)."""
        start = time.perf_counter_ns()
        outputs = self.runtime.predict(feeds)
        return outputs, start, time.perf_counter_ns()

    def _finish(
        self,
        batch: list[_Pending],
        rows: int,
        padded: int,
        launched_ns: int,
        done: asyncio.Future[tuple[Tensors, int, int]],
    ) -> None:
        self._busy -= 1
        self._computing_rows -= rows
        assert self._slots is not None
        self._slots.release()
        if self._closed and self._busy == 0:  # close() left the runtime to the last batch
            self.runtime.close()
        error = done.exception()
        if error is not None:
            # Only this batch's requests fail; the queue carries on.
            log.error(
                "model %s v%s: batch of %d rows failed: %r", self.model, self.version, rows, error
            )
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        outputs, infer_start, infer_end = done.result()
        seconds = (infer_end - infer_start) / 1e9
        if seconds > 0:
            rate = rows / seconds
            self._rows_per_s = rate if not self._rows_per_s else 0.9 * self._rows_per_s + 0.1 * rate
        if padded <= INLINE_MAX_ROWS:
            small = self._small_batch_s
            self._small_batch_s = seconds if small is None else 0.9 * small + 0.1 * seconds
        if self.metrics is not None:
            self._observe_batch_size(rows)
            self._observe_compute_latency(seconds)
        start = 0
        for item in batch:
            end = start + item.rows
            if not item.future.done():
                result = (
                    outputs if len(batch) == 1 and padded == end
                    else {name: array[start:end] for name, array in outputs.items()}
                )  # fmt: skip
                if item.split is None:
                    item.future.set_result(result)
                else:
                    self._chunk_done(item.split, result)
            start = end
        answered = time.perf_counter_ns()
        self.stats.note_batch(
            rows, len(batch), infer_start - launched_ns, infer_end - infer_start,
            answered - infer_end,
        )  # fmt: skip
        records = [item.record for item in batch if item.record is not None]
        if not records:  # no timed request in it
            return
        timing = BatchTiming(infer_start, infer_end, answered, rows, padded)
        for record in records:
            record.batch = timing
        if self.on_batch is not None:
            self.on_batch(
                BatchRecord(
                    self.model, self.version, rows, padded, launched_ns, infer_start,
                    infer_end, answered, records, len(batch),
                )
            )  # fmt: skip

    async def drain(self, timeout: float) -> bool:
        """Wait until queued and running requests are finished; False on timeout."""
        end = time.monotonic() + timeout
        while not self.idle:
            if time.monotonic() > end:
                return False
            await asyncio.sleep(0.01)
        return True

    def close(self) -> None:
        """Stop scheduling; queued requests fail with UNAVAILABLE; free the runtime once no batch
        is computing on it (a batch already running finishes and answers its requests)."""
        self._closed = True
        self._fail_queued(f"model '{self.model}' was unloaded")
        if self._task is not None:
            self._task.cancel()
        self._pool.shutdown(wait=False)
        if self._busy == 0:
            self.runtime.close()

"""The peer wait: when a free compute slot holds its batch back for more rows.

With ``batch_timeout_us`` 0 the scheduler takes whatever is queued once a compute slot frees.
Where requests reach the event loop one at a time (grpc.aio hands calls over singly), few are
queued at that moment, and every small batch costs a worker-thread handoff and its GIL traffic;
fewer, fuller batches leave more CPU for the transport (benchmarks/RESULTS.md, "Gateway speed
(serving/), 2026-11-27, third: batches wait for the peers of a busy load"). A fixed timeout
would delay every lone request, so :class:`PeerWaitPolicy` waits only when it pays.

This module decides and keeps time; it arms no timers and touches no event loop, so it can be
driven by hand with any clock. :class:`serving.batching.DynamicBatcher` calls it and arms the
timers it asks for.
"""

from __future__ import annotations

import enum
import sys
import time
from collections.abc import Callable, Iterable

#: The window over which the loop thread's busy share and the peak of rows inside are measured.
PEER_WINDOW_S = 0.5
#: Peer waits stop once the loop is this much less busy than ``peer_min_loop_busy``.
PEER_BUSY_HYSTERESIS = 0.15
#: Loop turns without an arrival, after the idle gap, before a wait ends: a call that grpc.aio
#: has already read reaches the batcher a turn or two after its I/O, and a loop busy sending
#: replies makes gaps of its own.
QUIET_TURNS = 2

#: No wait in progress: no queue length reaches this target.
_NO_TARGET = sys.maxsize


class Look(enum.Enum):
    """What :meth:`PeerWaitPolicy.look` asks for besides a time: one more turn of the loop."""

    NEXT_TURN = "next turn"


NEXT_TURN = Look.NEXT_TURN


class PeerWaitPolicy:
    """Whether, and for how long, a free compute slot waits for peers. One per batcher.

    Invariants:

    - A wait starts only while the event loop is saturated and requests are queueing up. The
      loop is saturated once its thread's CPU time over a ``PEER_WINDOW_S`` window is at least
      ``min_loop_busy`` of the window, and stays so until a window falls below ``min_loop_busy -
      PEER_BUSY_HYSTERESIS`` (waiting itself makes the loop less busy) or passes without any
      arrival. Requests queue up when the last batch taken had more than one row: one client at
      a time never waits, and clients slower than the gateway leave the loop unsaturated.
    - A wait aims for as many queued rows as were recently inside the batcher at once, less
      those computing, at most ``max_rows``: the concurrency is the peak of this window and the
      last (0.5 to 1 s); a window with no arrival forgets the one before. No wait starts when
      the queued rows already reach that target or are a preferred batch size.
    - A wait ends at the first of: an arrival that brings the queued rows to the target; the
      idle gap, ``peer_idle_us`` without an arrival followed by ``QUIET_TURNS`` loop turns
      without one; ``peer_wait_us`` after it started (no look is asked for later than that).
      With ``peer_wait_us`` 0 no wait starts.

    Time: every ``now`` is the event loop's clock (``loop.time()``); ``cpu_clock`` is the CPU
    time of the thread that calls :meth:`note_arrival` (the event loop's). Given both, every
    decision is deterministic.

    Use: :meth:`note_arrival` per request (constant time: a few counters, and a measurement once
    per window), :meth:`note_batch` per batch launched; when a slot frees, :meth:`begin`, then
    :meth:`look` at each time it names until it says stop or :meth:`note_arrival` says the rows
    are there, then :meth:`end`.
    """

    def __init__(
        self,
        *,
        peer_wait_us: int,
        peer_idle_us: int,
        min_loop_busy: float,
        max_rows: int,
        preferred: Iterable[int] = (),
        cpu_clock: Callable[[], float] = time.thread_time,
    ) -> None:
        self._wait_s = peer_wait_us / 1e6
        self._idle_s = peer_idle_us / 1e6
        self._min_busy = min_loop_busy
        self._max_rows = max_rows
        self._preferred = frozenset(preferred)
        self._cpu_clock = cpu_clock
        # The measurement: this window's and the last window's peak of rows inside, the window's
        # bounds and its starting CPU time, whether the loop counts as saturated.
        self._peak_rows = 0
        self._previous_peak_rows = 0
        self._window_start = 0.0
        self._window_end = 0.0
        self._window_cpu = 0.0
        self._loop_saturated = False
        self._last_batch_rows = 0
        self._arrivals = 0
        self._last_arrival = 0.0
        # The wait in progress: its target, when it gives up, the arrivals counted when it last
        # looked, and the quiet loop turns since.
        self._target = _NO_TARGET
        self._give_up = 0.0
        self._seen = 0
        self._quiet_turns = 0

    @property
    def loop_saturated(self) -> bool:
        """Whether the last window's loop-busy measurement allows waits."""
        return self._loop_saturated

    @property
    def concurrency(self) -> int:
        """The most rows inside the batcher at once over this window and the last."""
        return max(self._peak_rows, self._previous_peak_rows)

    def note_arrival(self, inside_rows: int, queued_rows: int, now: float) -> bool:
        """A request arrived: ``inside_rows`` are now inside the batcher (queued, computing or
        not yet returned), ``queued_rows`` queued. True when a wait in progress has its rows."""
        self._arrivals += 1
        self._last_arrival = now
        if now >= self._window_end:
            self._next_window(now)
        if inside_rows > self._peak_rows:
            self._peak_rows = inside_rows
        return queued_rows >= self._target

    def _next_window(self, now: float) -> None:
        """Close the window (forgetting the last one after a window without arrivals) and
        measure how busy the loop's thread was in it."""
        quiet = now >= self._window_end + PEER_WINDOW_S
        self._previous_peak_rows, self._peak_rows = (0 if quiet else self._peak_rows), 0
        # CPU time, not time runnable (schedstat): counting the run-queue wait made a loop that
        # shares the cores with its load generator look saturated when it was not (RESULTS.md,
        # the section named in the module doc).
        cpu = self._cpu_clock()
        busy = 0.0 if quiet else (cpu - self._window_cpu) / (now - self._window_start)
        if busy >= self._min_busy:
            self._loop_saturated = True
        elif busy < self._min_busy - PEER_BUSY_HYSTERESIS:
            self._loop_saturated = False
        self._window_start, self._window_cpu = now, cpu
        self._window_end = now + PEER_WINDOW_S

    def note_batch(self, rows: int) -> None:
        """A batch of ``rows`` rows was taken for compute."""
        self._last_batch_rows = rows

    def begin(self, queued_rows: int, computing_rows: int, now: float) -> float | None:
        """A compute slot is free with ``queued_rows`` queued and ``computing_rows`` computing:
        None to take the batch now; else a wait has begun, and this is when to :meth:`look`
        first (perhaps already past)."""
        if not self._wait_s:
            return None
        target = min(self._max_rows, self.concurrency - computing_rows)
        # Waiting pays only when the loop is the bottleneck and requests queue up; otherwise the
        # spacing of the arrivals is the clients' own, and waiting would only add latency.
        worth_it = self._loop_saturated and self._last_batch_rows > 1
        if not worth_it or queued_rows >= target or queued_rows in self._preferred:
            return None
        self._target = target
        self._give_up = now + self._wait_s
        self._seen = self._arrivals
        self._quiet_turns = 0
        return min(self._give_up, self._last_arrival + self._idle_s)

    def look(self, now: float) -> float | Look | None:
        """Whether the wait goes on: None when it is over; else when to look again, a time or
        :data:`NEXT_TURN` (after one more turn of the event loop)."""
        if now >= self._give_up:
            return None
        if self._arrivals != self._seen:  # arrivals keep coming: look again an idle gap later
            self._seen = self._arrivals
            self._quiet_turns = 0
            return min(self._give_up, now + self._idle_s)
        if now < self._last_arrival + self._idle_s:
            self._quiet_turns = 0
            return min(self._give_up, self._last_arrival + self._idle_s)
        if self._quiet_turns < QUIET_TURNS:
            self._quiet_turns += 1
            return NEXT_TURN
        return None

    def end(self) -> None:
        """The wait is over (whatever ended it)."""
        self._target = _NO_TARGET

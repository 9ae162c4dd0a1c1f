"""The peer-wait policy on its own, driven by hand: loop time and the loop thread's CPU time are
numbers the test sets, so every decision is checked exactly and nothing sleeps."""

from __future__ import annotations

from typing import Any

import pytest

from serving.batching_policy import NEXT_TURN, PEER_WINDOW_S, QUIET_TURNS, Look, PeerWaitPolicy

WAIT_S = 0.003  # peer_wait_us 3000, the gateway's default
IDLE_S = 0.001  # peer_idle_us 1000, the gateway's default
TURN_S = 0.000_010  # one turn of the event loop, as the simulated timers below take it


def exactly(seconds: float) -> Any:
    """A loop time, up to float rounding (pytest.approx's relative default would hide a turn)."""
    return pytest.approx(seconds, rel=0, abs=1e-9)


class Batcher:
    """What DynamicBatcher tells the policy, by hand: requests arrive at a loop time (the loop's
    thread ``busy`` meanwhile), batches are taken and answered."""

    def __init__(self, **overrides: Any) -> None:
        self.now = 100.0
        self.cpu = 0.0
        self.queued = self.computing = self.inside = 0
        params: dict[str, Any] = {
            "peer_wait_us": int(WAIT_S * 1e6),
            "peer_idle_us": int(IDLE_S * 1e6),
            "min_loop_busy": 0.8,
            "max_rows": 32,
            **overrides,
        }
        self.policy = PeerWaitPolicy(**params, cpu_clock=lambda: self.cpu)

    def advance(self, seconds: float, busy: float = 1.0) -> None:
        self.now += seconds
        self.cpu += seconds * busy

    def arrive(self, after: float = 0.0, busy: float = 1.0) -> bool:
        """One request of one row; True when it completes a wait's rows."""
        self.advance(after, busy)
        self.queued += 1
        self.inside += 1
        return self.policy.note_arrival(self.inside, self.queued, self.now)

    def take(self, rows: int | None = None) -> None:
        rows = self.queued if rows is None else rows
        self.queued -= rows
        self.computing += rows
        self.policy.note_batch(rows)

    def answer(self) -> None:
        self.inside -= self.computing
        self.computing = 0

    def begin(self) -> float | None:
        return self.policy.begin(self.queued, self.computing, self.now)


def busy_load(batcher: Batcher, clients: int = 8, busy: float = 1.0) -> None:
    """``clients`` requests at once, taken as one batch, then a new window begins with the loop
    thread ``busy`` over the last: the policy has seen the concurrency, a batch of more than one
    row and (when ``busy`` is high enough) a saturated loop. One request is queued after it."""
    for _ in range(clients):
        batcher.arrive()
    batcher.take()
    batcher.answer()
    batcher.arrive(after=PEER_WINDOW_S, busy=busy)


def run_wait(batcher: Batcher, arrivals: list[float]) -> tuple[float, str, list[float]]:
    """One wait, with its timers run as DynamicBatcher arms them and requests arriving at the
    given loop times: (the loop time it ended, what ended it, the times it asked to look at).
    A timer due now or earlier runs on the next turn, as asyncio runs it."""
    first = batcher.begin()
    assert first is not None, "no wait began"
    when: float | Look = first
    pending, asked = sorted(arrivals), [first]
    try:
        for _ in range(10_000):
            next_turn = batcher.now + TURN_S
            look_at = next_turn if when is NEXT_TURN else max(when, next_turn)
            while pending and pending[0] <= look_at:
                if batcher.arrive(after=pending.pop(0) - batcher.now):
                    return batcher.now, "rows", asked
            batcher.advance(look_at - batcher.now)
            looked = batcher.policy.look(batcher.now)
            if looked is None:
                return batcher.now, "look", asked
            when = looked
            if when is not NEXT_TURN:
                asked.append(when)
        raise AssertionError(f"the wait never ended; it last asked to look at {when}")
    finally:
        batcher.policy.end()


def test_one_client_at_a_time_never_waits() -> None:
    # A saturated loop, and earlier load taught a concurrency of 8: one client alone makes
    # batches of one, so no batch waits.
    batcher = Batcher()
    busy_load(batcher)
    batcher.take()
    batcher.answer()
    concurrency = []
    for _ in range(20):
        batcher.arrive(after=0.1)
        concurrency.append(batcher.policy.concurrency)
        assert batcher.begin() is None
        batcher.take()
        batcher.answer()
    assert batcher.policy.loop_saturated
    assert concurrency[0] == 8  # the earlier load still counted, and still no wait


@pytest.mark.parametrize(
    ("computing", "max_rows", "target"),
    [(0, 32, 8), (3, 32, 5), (0, 6, 6)],
    ids=["concurrency", "less-computing", "max-rows"],
)
def test_saturated_loop_with_queued_peers_waits_for_the_concurrency_peak(
    computing: int, max_rows: int, target: int
) -> None:
    batcher = Batcher(max_rows=max_rows)
    busy_load(batcher, clients=8)  # one request queued after it
    if computing:
        for _ in range(computing - 1):
            batcher.arrive()
        batcher.take()  # a batch of `computing` rows
        batcher.arrive()
    assert batcher.policy.concurrency == 8
    first = batcher.begin()
    # The first look: an idle gap after the last arrival.
    assert first == exactly(batcher.now + IDLE_S)
    while batcher.queued < target - 1:
        assert not batcher.arrive(after=0.0001)  # short of the target: the wait goes on
    assert batcher.arrive(after=0.0001)  # the target's last row ends the wait
    batcher.policy.end()
    # With no wait in progress, no arrival ends one.
    assert not batcher.arrive() and not batcher.arrive()


def test_queued_rows_at_the_target_or_a_preferred_size_start_no_wait() -> None:
    at_target = Batcher()
    busy_load(at_target, clients=2)
    assert at_target.arrive() is False
    assert at_target.queued == 2 and at_target.begin() is None
    preferred = Batcher(preferred=(1,))
    busy_load(preferred, clients=8)
    assert preferred.queued == 1 and preferred.begin() is None


def test_wait_ends_after_the_idle_gap_and_quiet_loop_turns() -> None:
    batcher = Batcher()
    busy_load(batcher)
    last_arrival = batcher.now
    ended, why, asked = run_wait(batcher, arrivals=[])
    # The first look an idle gap after the last arrival (the one before the wait), then
    # QUIET_TURNS more turns of the loop without an arrival: over, well before peer_wait_us.
    assert why == "look"
    assert asked == [exactly(last_arrival + IDLE_S)]
    assert ended == exactly(last_arrival + IDLE_S + QUIET_TURNS * TURN_S)


def test_a_timer_that_fires_early_looks_again_at_the_idle_gap() -> None:
    # asyncio runs a timer up to its clock resolution early: that look waits for the real gap.
    batcher = Batcher()
    busy_load(batcher)
    first = batcher.begin()
    assert first is not None and first is not NEXT_TURN
    assert batcher.policy.look(first - 1e-6) == first
    assert batcher.policy.look(first) is NEXT_TURN


def test_an_arrival_pushes_the_end_an_idle_gap_later() -> None:
    batcher = Batcher(peer_wait_us=10_000)  # a cap far enough not to end this wait
    busy_load(batcher)
    start = batcher.now
    # One arrival within the idle gap, one between the quiet turns that follow the next gap.
    arrivals = [start + 0.0004, start + 2 * IDLE_S + TURN_S / 2]
    ended, why, asked = run_wait(batcher, arrivals)
    assert why == "look"
    # Each look that finds a new arrival asks to look again an idle gap later, and the quiet
    # turns start over from there.
    assert asked == [
        exactly(start + IDLE_S),
        exactly(start + 2 * IDLE_S),
        exactly(start + 3 * IDLE_S + TURN_S),
    ]
    assert ended == exactly(start + 3 * IDLE_S + (1 + QUIET_TURNS) * TURN_S)
    assert batcher.queued == 3


def test_wait_never_exceeds_peer_wait_us() -> None:
    # Arrivals keep coming (every half idle gap) but never reach the concurrency of 32.
    batcher = Batcher()
    busy_load(batcher, clients=32)
    start = batcher.now
    arrivals = [start + 0.0005 * (k + 1) for k in range(20)]
    ended, why, asked = run_wait(batcher, arrivals)
    assert why == "look"
    assert ended == exactly(start + WAIT_S)
    assert max(asked) <= start + WAIT_S
    assert batcher.queued < 32


def test_no_wait_when_peer_wait_us_is_0() -> None:
    waits, never = Batcher(), Batcher(peer_wait_us=0)
    busy_load(waits)
    busy_load(never)
    assert waits.begin() is not None
    assert never.policy.loop_saturated and never.begin() is None


@pytest.mark.parametrize(("busy", "waits"), [(0.5, False), (0.79, False), (0.8, True), (1.0, True)])
def test_waits_only_while_the_loop_thread_is_busy_enough(busy: float, waits: bool) -> None:
    batcher = Batcher()
    busy_load(batcher, busy=busy)
    assert batcher.policy.loop_saturated is waits
    assert (batcher.begin() is not None) is waits


def test_loop_busy_hysteresis() -> None:
    batcher = Batcher()
    busy_load(batcher, busy=0.9)
    assert batcher.policy.loop_saturated
    # Waiting makes the loop less busy: a window at 0.7 keeps the waits on, one at 0.6 stops them.
    batcher.arrive(after=PEER_WINDOW_S, busy=0.7)
    assert batcher.policy.loop_saturated
    batcher.arrive(after=PEER_WINDOW_S, busy=0.6)
    assert not batcher.policy.loop_saturated
    batcher.arrive(after=PEER_WINDOW_S, busy=0.7)  # not enough to turn them on again
    assert not batcher.policy.loop_saturated
    batcher.arrive(after=PEER_WINDOW_S, busy=0.9)
    assert batcher.policy.loop_saturated


def test_concurrency_is_the_peak_of_this_window_and_the_last() -> None:
    batcher = Batcher()
    busy_load(batcher, clients=8)  # the peak of 8 was in the window before this one
    assert batcher.policy.concurrency == 8
    batcher.arrive(after=PEER_WINDOW_S)  # two windows on: forgotten
    assert batcher.policy.concurrency == batcher.inside == 2


def test_a_window_without_arrivals_forgets_the_load() -> None:
    batcher = Batcher()
    busy_load(batcher, clients=8)
    for _ in range(7):  # the current window's peak is 8 too
        batcher.arrive()
    batcher.take()
    batcher.answer()
    assert batcher.policy.loop_saturated and batcher.policy.concurrency == 8
    # However busy the thread was meanwhile (other work), a gap of a whole window means the
    # load stopped: no saturation, and neither window's concurrency counts any more.
    batcher.arrive(after=2 * PEER_WINDOW_S, busy=1.0)
    assert not batcher.policy.loop_saturated
    assert batcher.policy.concurrency == batcher.inside == 1

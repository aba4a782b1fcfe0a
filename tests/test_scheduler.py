"""Tests of mqsync.scheduler: the grid, overruns, period changes, failures, stop, clock jumps.

Almost all tests drive the scheduler with :class:`FakeClock`, whose ``wait`` advances fake
time instantly, so they are deterministic and take no real time. A few short tests use the
real clock and threads to check the wake-ups that only real threads can show.
"""

from __future__ import annotations

import datetime
import heapq
import itertools
import logging
import random
import re
import threading
import time
from fractions import Fraction
from typing import Callable, Iterable

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqsync.errors import MqsyncError
from mqsync.scheduler import (
    NS_PER_S,
    Scheduler,
    SchedulerStats,
    SystemClock,
    TooManyFailures,
)
from mqsync.timeseries import Timedelta

S = NS_PER_S
MS = 1_000_000
T0 = 5_000 * S  # the fake monotonic clock's start
WALL0 = 1_700_000_123 * S + 300 * MS  # the fake wall clock at T0: ...123.3 s


class FakeClock:
    """A :class:`~mqsync.scheduler.Clock` whose time moves only when told to.

    ``wait`` jumps straight to its timeout, plus ``overshoot()`` ns to simulate a late
    wake-up or a stall, and runs the actions scheduled with :meth:`at` on the way, at their
    time; an action that sets the event ends the wait there. ``advance`` moves time (an
    update "taking" time); ``jump_wall`` steps only the wall clock, like NTP.
    """

    def __init__(self, mono_ns: int = T0, wall_ns: int = WALL0):
        self.mono = mono_ns
        self.wall_offset = wall_ns - mono_ns
        self.overshoot: Callable[[], int] = lambda: 0
        self.overshoots: list[int] = []
        self._actions: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def monotonic_ns(self) -> int:
        return self.mono

    def wall_ns(self) -> int:
        return self.mono + self.wall_offset

    def advance(self, ns: int) -> None:
        self.mono += ns

    def jump_wall(self, ns: int) -> None:
        self.wall_offset += ns

    def at(self, mono_ns: int, action: Callable[[], None]) -> None:
        heapq.heappush(self._actions, (mono_ns, next(self._seq), action))

    def wait(self, event: threading.Event, timeout_s: float | None) -> bool:
        target = None if timeout_s is None else self.mono + round(timeout_s * S)
        while not event.is_set():
            if self._actions and (target is None or self._actions[0][0] <= target):
                when, _, action = heapq.heappop(self._actions)
                self.mono = max(self.mono, when)
                action()
                continue
            if target is None:
                raise AssertionError("wait without timeout and nothing scheduled: would hang")
            extra = self.overshoot()
            self.overshoots.append(extra)
            self.mono = max(self.mono, target + extra)
            return False
        return True


def run_updates(
    scheduler: Scheduler,
    clock: FakeClock,
    count: int,
    durations: Iterable[int] = (),
    fail: Callable[[int], Exception | None] = lambda index: None,
) -> list[int]:
    """Run ``scheduler`` on the fake clock until ``count`` updates began; return their starts.

    Update ``i`` takes the ``i``-th of ``durations`` (0 when exhausted) and raises
    ``fail(i)`` when that is not None.
    """
    starts: list[int] = []
    durations = iter(durations)

    def update() -> None:
        index = len(starts)
        starts.append(clock.monotonic_ns())
        clock.advance(next(durations, 0))
        if len(starts) >= count:
            scheduler.stop()
        error = fail(index)
        if error is not None:
            raise error

    scheduler.run(update)
    return starts


def rel(starts: list[int], origin: int = T0) -> list[float]:
    """Start times in seconds after ``origin``, for readable assertions."""
    return [(start - origin) / S for start in starts]


# -- the grid -------------------------------------------------------------------------------


def test_grid_has_no_drift_over_10000_periods():
    period = 10 * MS
    rng = random.Random(3)
    clock = FakeClock()
    clock.overshoot = lambda: rng.randrange(0, period // 10)
    durations = [rng.randrange(0, period * 85 // 100) for _ in range(10_000)]
    scheduler = Scheduler(0.01, clock=clock, history_size=10_000)

    starts = run_updates(scheduler, clock, 10_000, durations)

    assert len(starts) == 10_000
    # Each update begins on its own slot, late by exactly that wake-up's overshoot: nothing
    # of the update durations or earlier overshoots adds up.
    assert [start - (T0 + k * period) for k, start in enumerate(starts)] == [0] + [
        clock.overshoots[k] for k in range(9_999)
    ]
    assert scheduler.recent_lateness_ns() == tuple(
        s - T0 - k * period for k, s in enumerate(starts)
    )
    assert starts[-1] - (T0 + 9_999 * period) < period // 10
    stats = scheduler.stats()
    assert (stats.updates, stats.missed_slots, stats.overruns, stats.failures) == (10_000, 0, 0, 0)


@settings(max_examples=60, deadline=None)
@given(
    durations=st.lists(st.integers(0, 3_000), max_size=40),
    overshoots=st.lists(st.integers(0, 2_500), max_size=40),
)
def test_any_timing_keeps_the_grid_and_counts_every_skipped_slot(durations, overshoots):
    period = 1_000
    clock = FakeClock()
    extra = iter(overshoots)
    clock.overshoot = lambda: next(extra, 0)
    scheduler = Scheduler(Timedelta(period), clock=clock)

    starts = run_updates(scheduler, clock, 40, durations)

    slots = [(start - T0) // period for start in starts]
    assert slots[0] == 0
    assert all(later > earlier for earlier, later in zip(slots, slots[1:]))
    assert all(start - (T0 + k * period) < period for k, start in zip(slots, starts))
    # No burst: a slot that had already passed when the previous update ended never runs.
    ends = [start + d for start, d in zip(starts, itertools.chain(durations, itertools.repeat(0)))]
    assert all(T0 + k * period >= end for k, end in zip(slots[1:], ends))
    stats = scheduler.stats()
    assert stats.updates == len(starts) == 40
    assert stats.missed_slots == slots[-1] + 1 - len(starts)


# -- overruns -------------------------------------------------------------------------------


def test_overrun_skips_the_missed_slots_counts_them_and_logs_once(caplog):
    caplog.set_level(logging.WARNING, logger="mqsync.scheduler")
    clock = FakeClock()
    scheduler = Scheduler(1, clock=clock, name="src")

    starts = run_updates(scheduler, clock, 5, durations=[0, 3_500 * MS])

    # The update of slot 1 ran until 4.5 s: slots 2, 3, 4 passed and are skipped, no burst.
    assert rel(starts) == [0, 1, 5, 6, 7]
    stats = scheduler.stats()
    assert (stats.missed_slots, stats.overruns) == (3, 1)
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        "src: skipped 3 slots of 1000.000 ms: 2500.000 ms behind schedule "
        "(update() too slow or process stalled; 1 overrun in a row)"
    )


def test_stall_during_the_wait_skips_the_stale_slot_too():
    clock = FakeClock()
    extra = iter([5_500 * MS])
    clock.overshoot = lambda: next(extra, 0)
    scheduler = Scheduler(1, clock=clock)

    starts = run_updates(scheduler, clock, 3)

    # Woke at 6.5 s for slot 1: slots 1 to 6 are gone; the schedule resumes at slot 7.
    assert rel(starts) == [0, 7, 8]
    assert scheduler.stats().missed_slots == 6


def test_a_wake_up_less_than_a_period_late_still_runs_its_slot():
    clock = FakeClock()
    extra = iter([900 * MS])
    clock.overshoot = lambda: next(extra, 0)
    scheduler = Scheduler(1, clock=clock)

    starts = run_updates(scheduler, clock, 3)

    assert rel(starts) == [0, 1.9, 2]
    stats = scheduler.stats()
    assert (stats.missed_slots, stats.last_lateness_ns) == (0, 0)
    assert scheduler.recent_lateness_ns() == (0, 900 * MS, 0)


def test_a_steady_overrun_is_counted_always_but_logged_with_backoff(caplog):
    caplog.set_level(logging.WARNING, logger="mqsync.scheduler")
    clock = FakeClock()
    scheduler = Scheduler(1, clock=clock)

    starts = run_updates(scheduler, clock, 20, durations=[1_500 * MS] * 20)

    assert rel(starts) == [2 * k for k in range(20)]
    assert scheduler.stats().missed_slots == 19
    # Overrun events 1, 2, 4, 8 and 16 of the streak are logged.
    streaks = [re.search(r"(\d+) overruns? in a row", m).group(1) for m in caplog.messages]
    assert streaks == ["1", "2", "4", "8", "16"]


# -- period changes -------------------------------------------------------------------------


def test_period_change_wakes_a_long_wait_and_keeps_the_grid_phase():
    clock = FakeClock()
    scheduler = Scheduler(3600, clock=clock)
    clock.at(T0 + 10_500 * MS, lambda: setattr(scheduler, "period", 1))

    starts = run_updates(scheduler, clock, 3)

    # The new grid is anchored at the last slot (0): the next slot at or after 10.5 s is 11 s.
    assert rel(starts) == [0, 11, 12]
    assert scheduler.period == 1.0


def test_longer_period_counts_from_the_last_slot_that_ran():
    clock = FakeClock()
    scheduler = Scheduler(1, clock=clock)
    clock.at(T0 + 2_500 * MS, lambda: setattr(scheduler, "period", Timedelta(10 * S)))

    starts = run_updates(scheduler, clock, 5)

    assert rel(starts) == [0, 1, 2, 12, 22]
    assert scheduler.stats().missed_slots == 0


def test_period_change_inside_update_applies_to_the_next_slot():
    clock = FakeClock()
    scheduler = Scheduler(1, clock=clock)
    starts: list[int] = []

    def update() -> None:
        starts.append(clock.monotonic_ns())
        if len(starts) == 2:
            scheduler.period = 0.25
        if len(starts) == 5:
            scheduler.stop()

    scheduler.run(update)

    assert rel(starts) == [0, 1, 1.25, 1.5, 1.75]


def test_setting_the_same_period_changes_nothing(caplog):
    caplog.set_level(logging.INFO, logger="mqsync.scheduler")
    scheduler = Scheduler(0.5)
    scheduler.period = Timedelta(500 * MS)
    assert caplog.records == []
    scheduler.period = 2
    assert [r.getMessage() for r in caplog.records] == [
        "period changed from 500.000 ms to 2000.000 ms"
    ]


def test_period_change_from_another_thread_takes_effect_at_once():
    scheduler = Scheduler(3600)
    count = 0
    first, fourth = threading.Event(), threading.Event()

    def update() -> None:
        nonlocal count
        count += 1
        if count == 1:
            first.set()
        elif count == 4:
            fourth.set()

    thread = threading.Thread(target=scheduler.run, args=(update,), name="test-scheduler")
    thread.start()
    try:
        assert first.wait(2)
        changed = time.monotonic()
        scheduler.period = 0.005
        assert fourth.wait(2)
        assert time.monotonic() - changed < 0.5  # three 5 ms periods, not an hour
    finally:
        scheduler.stop()
        thread.join(2)
    assert not thread.is_alive()


def test_no_period_waits_until_one_is_set_and_none_pauses():
    clock = FakeClock()
    scheduler = Scheduler(None, clock=clock)
    clock.at(T0 + 5 * S, lambda: setattr(scheduler, "period", 1))
    clock.at(T0 + 6_500 * MS, lambda: setattr(scheduler, "period", None))
    clock.at(T0 + 20_300 * MS, lambda: setattr(scheduler, "period", 1))

    starts = run_updates(scheduler, clock, 4)

    assert rel(starts) == [5, 6, 21, 22]
    assert scheduler.stats().missed_slots == 0


def test_stop_while_no_period_is_set_returns_at_once():
    scheduler = Scheduler()
    timer = threading.Timer(0.02, scheduler.stop)
    began = time.monotonic()
    timer.start()
    try:
        scheduler.run(lambda: pytest.fail("update() without a period"))
    finally:
        timer.join(2)
    assert time.monotonic() - began < 0.5
    assert scheduler.period is None and scheduler.stats().updates == 0


# -- update() failures ----------------------------------------------------------------------


def test_update_errors_are_logged_counted_and_keep_the_schedule(caplog):
    caplog.set_level(logging.INFO, logger="mqsync.scheduler")
    clock = FakeClock()
    scheduler = Scheduler(1, clock=clock)

    def fail(index: int) -> Exception | None:
        return ValueError(f"sensor {index} gone") if index in (1, 2) else None

    starts = run_updates(scheduler, clock, 5, durations=[0, 200 * MS], fail=fail)

    assert rel(starts) == [0, 1, 2, 3, 4]
    stats = scheduler.stats()
    assert (stats.updates, stats.failures, stats.consecutive_failures) == (5, 2, 0)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "update() failed (1 in a row)",
        "update() failed (2 in a row)",
    ]
    assert all(r.exc_info and isinstance(r.exc_info[1], ValueError) for r in errors)
    assert "update() succeeded after 2 failures in a row" in caplog.messages


def test_too_many_consecutive_failures_raise_with_the_last_error_as_cause():
    clock = FakeClock()
    scheduler = Scheduler(1, clock=clock, max_consecutive_failures=3)

    with pytest.raises(TooManyFailures, match=r"failed 3 times in a row") as caught:
        run_updates(scheduler, clock, 100, fail=lambda i: RuntimeError(f"boom {i}"))

    assert isinstance(caught.value, MqsyncError)
    assert caught.value.failures == 3
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert str(caught.value.__cause__) == "boom 2"
    assert scheduler.stats().updates == 3
    assert not scheduler.running


def test_a_success_resets_the_consecutive_failure_count():
    clock = FakeClock()
    scheduler = Scheduler(1, clock=clock, max_consecutive_failures=3)
    pattern = [True, True, False] * 5  # two failures, then a success

    run_updates(scheduler, clock, 15, fail=lambda i: KeyError(i) if pattern[i] else None)

    stats = scheduler.stats()
    assert (stats.updates, stats.failures, stats.consecutive_failures) == (15, 10, 0)


def test_the_same_error_repeated_is_logged_with_backoff(caplog):
    caplog.set_level(logging.ERROR, logger="mqsync.scheduler")
    clock = FakeClock()
    scheduler = Scheduler(1, clock=clock)

    run_updates(scheduler, clock, 10, fail=lambda i: OSError("no such device"))
    assert [r.getMessage() for r in caplog.records] == [
        f"update() failed ({n} in a row)" for n in (1, 2, 4, 8)
    ]
    assert scheduler.stats().failures == 10

    caplog.clear()
    other = Scheduler(1, clock=clock)
    run_updates(other, clock, 10, fail=lambda i: OSError(f"device {i}"))
    assert len(caplog.records) == 10


def test_base_exceptions_are_not_swallowed():
    clock = FakeClock()
    scheduler = Scheduler(1, clock=clock)

    def update() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        scheduler.run(update)
    assert scheduler.stats().failures == 0
    assert not scheduler.running


# -- stop -----------------------------------------------------------------------------------


def test_stop_interrupts_a_long_sleep_at_once():
    scheduler = Scheduler(3600)
    updates: list[float] = []
    timer = threading.Timer(0.02, scheduler.stop)
    began = time.monotonic()
    timer.start()
    try:
        scheduler.run(lambda: updates.append(time.monotonic()))
    finally:
        timer.join(2)
    assert time.monotonic() - began < 0.5
    assert len(updates) == 1  # the first, at once; none after stop()


def test_stop_before_run_calls_no_update():
    scheduler = Scheduler(1, clock=FakeClock())
    scheduler.stop()
    scheduler.run(lambda: pytest.fail("update() after stop()"))
    scheduler.stop()  # idempotent


def test_stop_during_update_lets_it_finish_and_starts_no_other():
    clock = FakeClock()
    scheduler = Scheduler(1, clock=clock)
    calls = []

    def update() -> None:
        scheduler.stop()
        calls.append(clock.monotonic_ns())
        clock.advance(3 * S)  # even an overrun must not lead to another update

    scheduler.run(update)
    assert calls == [T0]


def test_run_twice_at_the_same_time_is_an_error():
    clock = FakeClock()
    scheduler = Scheduler(1, clock=clock)

    def update() -> None:
        scheduler.stop()
        with pytest.raises(RuntimeError, match="already running"):
            scheduler.run(update)

    scheduler.run(update)
    # run() counts an Exception from update() as a failure and goes on: a wrong error (or
    # pytest.raises' AssertionError for a wrong message) would otherwise pass unseen
    assert (scheduler.stats().updates, scheduler.stats().failures) == (1, 0)


# -- clock jumps and alignment --------------------------------------------------------------


@pytest.mark.parametrize("align", [False, True])
def test_wall_clock_jumps_do_not_move_the_schedule(align):
    clock = FakeClock(wall_ns=1_700_000_000 * S)  # on a whole second: aligned == not aligned
    scheduler = Scheduler(1, clock=clock, align=align)
    clock.at(T0 + 2_500 * MS, lambda: clock.jump_wall(3600 * S))
    clock.at(T0 + 4_500 * MS, lambda: clock.jump_wall(-7200 * S + 123 * MS))

    starts = run_updates(scheduler, clock, 8)

    assert rel(starts) == list(range(8))
    assert scheduler.stats().missed_slots == 0


@pytest.mark.parametrize(
    ("offset", "wall_of_first"),
    [
        (0, 124_000 * MS),
        (0.25, 124_250 * MS),
        (-0.25, 123_750 * MS),
        (Timedelta(3_400 * MS), 123_400 * MS),
    ],
)
def test_align_starts_at_the_next_wall_clock_multiple_plus_offset(offset, wall_of_first):
    clock = FakeClock()  # wall clock at ...123.3 s
    scheduler = Scheduler(1, clock=clock, align=True, offset=offset)

    starts = run_updates(scheduler, clock, 3)

    walls = [start + clock.wall_offset - 1_700_000_000 * S for start in starts]
    assert walls == [wall_of_first, wall_of_first + S, wall_of_first + 2 * S]


def test_align_on_the_exact_multiple_runs_at_once():
    clock = FakeClock(wall_ns=1_700_000_120 * S)
    scheduler = Scheduler(10, clock=clock, align=True)
    assert rel(run_updates(scheduler, clock, 2)) == [0, 10]


def test_period_change_with_align_realigns_to_the_wall_clock():
    clock = FakeClock()  # wall ...123.3 s
    scheduler = Scheduler(1, clock=clock, align=True)
    # After the update at wall 125 s, the wall clock steps by +0.4 s, then the period
    # changes: the new grid follows the wall clock as it is now, the old steps are ignored.
    clock.at(T0 + 2_000 * MS, lambda: clock.jump_wall(400 * MS))
    clock.at(T0 + 2_100 * MS, lambda: setattr(scheduler, "period", 5))

    starts = run_updates(scheduler, clock, 4)

    walls = [(start + clock.wall_offset) / S - 1_700_000_000 for start in starts]
    assert rel(starts) == [0.7, 1.7, 6.3, 11.3]
    assert walls[2:] == [130, 135]


# -- arguments, stats, the system clock -----------------------------------------------------


@pytest.mark.parametrize(
    ("period", "error", "message"),
    [
        (0, ValueError, "period must be positive, got 0 s"),
        (-1, ValueError, "period must be positive, got -1 s"),
        (float("nan"), ValueError, "period must be a finite number of seconds, got nan"),
        (float("inf"), ValueError, "period must be a finite number of seconds, got inf"),
        (1e-12, ValueError, "period must be at least 1 ns, got 1e-12 s"),
        (Timedelta(0), ValueError, r"period must be positive, got Timedelta\(ns=0\)"),
        (Timedelta(-5), ValueError, r"period must be positive, got Timedelta\(ns=-5\)"),
        ("-1s", ValueError, "period must be positive, got '-1s'"),
        ("1S", ValueError, "invalid period '1S': unit must be one of"),
        (True, TypeError, "period must be a Timedelta, .* or a number of seconds; got bool True"),
        ([1], TypeError, r"got list \[1\]"),
    ],
)
def test_invalid_periods_are_rejected_with_a_clear_message(period, error, message):
    with pytest.raises(error, match=message):
        Scheduler(period)
    scheduler = Scheduler(1)
    with pytest.raises(error, match=message):
        scheduler.period = period
    assert scheduler.period_ns == S


@pytest.mark.parametrize(
    ("period", "ns"),
    [(2, 2 * S), (0.01, 10 * MS), (Fraction(1, 3), 333_333_333), (Timedelta(5), 5), (1e-9, 1),
     ("1.5s", 1_500 * MS), (datetime.timedelta(milliseconds=3), 3 * MS)],
)
def test_periods_as_durations_are_accepted(period, ns):
    scheduler = Scheduler(period)
    assert scheduler.period_ns == ns
    assert scheduler.period == ns / S


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"offset": 1}, "offset needs align=True, got offset=1 with align=False"),
        ({"align": True, "offset": float("nan")}, "offset must be a finite number"),
        ({"max_consecutive_failures": 0}, "max_consecutive_failures must be None or an int >= 1"),
        ({"max_consecutive_failures": 2.0}, "got 2.0"),
        ({"history_size": -1}, "history_size must be an int >= 0, got -1"),
    ],
)
def test_invalid_options_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Scheduler(1, **kwargs)


def test_stats_are_a_frozen_snapshot_and_the_history_is_bounded():
    clock = FakeClock()
    scheduler = Scheduler(1, clock=clock, history_size=4)
    assert scheduler.stats() == SchedulerStats(0, 0, 0, 0, 0, None, S)

    run_updates(scheduler, clock, 10)

    stats = scheduler.stats()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        stats.updates = 0  # type: ignore[misc]
    assert stats.updates == 10 and stats.last_lateness_ns == 0
    assert scheduler.recent_lateness_ns() == (0, 0, 0, 0)


def test_system_clock():
    clock = SystemClock()
    before = clock.monotonic_ns()
    event = threading.Event()
    assert clock.wait(event, 0.001) is False
    assert clock.monotonic_ns() - before >= MS
    assert abs(clock.wall_ns() - time.time_ns()) < S
    event.set()
    assert clock.wait(event, 10) is True

"""Drift-free periodic scheduling, independent of any transport.

:class:`Scheduler` calls a function on a fixed grid ``t0 + k·period`` of the monotonic clock.
Deadlines come from the grid, never from "now", so the time an update takes and the lateness
of each wake-up never accumulate. A slot that has already passed when its turn comes is skipped
and counted, never run in a catch-up burst. ``IntervalSource`` runs one scheduler in a thread.

Timing notes, measured with CPython on Linux (see ``bench/bench_interval.py``):

- A wake-up from :meth:`threading.Event.wait` is late by about 0.1-0.3 ms median on an idle
  machine. One CPU-bound Python thread in the same process delays every wake-up by up to the
  interpreter's switch interval (:func:`sys.getswitchinterval`, 5 ms by default), because the
  woken thread must wait for the GIL.
- :class:`SystemClock` waits with :meth:`threading.Event.wait`. On Python >= 3.11 with glibc
  >= 2.30 that timeout runs on ``CLOCK_MONOTONIC`` (bpo-41710); on older Pythons a backward
  step of the wall clock *during* one wait lengthens that wait. The grid itself always lives
  on the monotonic clock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable, Protocol

import attrs

from .errors import TooManyFailures
from .timeseries import DurationLike, Timedelta

__all__ = [
    "Clock",
    "Scheduler",
    "SchedulerStats",
    "SystemClock",
    "TooManyFailures",
]

logger = logging.getLogger(__name__)

NS_PER_S = 1_000_000_000


class Clock(Protocol):
    """The time source and sleeper of a :class:`Scheduler`; tests inject a fake one."""

    def monotonic_ns(self) -> int:
        """Nanoseconds on a clock that never jumps (only differences are meaningful)."""

    def wall_ns(self) -> int:
        """Nanoseconds since the Unix epoch on the wall clock (may jump)."""

    def wait(self, event: threading.Event, timeout_s: float | None) -> bool:
        """Block until ``event`` is set or ``timeout_s`` passed (``None``: no timeout).

        Returns True if the event is set.
        """


class SystemClock:
    """The real clocks: :func:`time.monotonic_ns`, :func:`time.time_ns`, ``Event.wait``."""

    def monotonic_ns(self) -> int:
        return time.monotonic_ns()

    def wall_ns(self) -> int:
        return time.time_ns()

    def wait(self, event: threading.Event, timeout_s: float | None) -> bool:
        return event.wait(timeout_s)


@attrs.frozen
class SchedulerStats:
    """A consistent snapshot of a :class:`Scheduler`'s counters.

    ``updates`` counts calls of ``update()`` begun (failed ones included), ``failures`` the
    calls that raised, ``consecutive_failures`` the current streak, ``missed_slots`` the grid
    slots skipped because they had passed, ``overruns`` the events that skipped slots.
    ``last_lateness_ns`` is how late the last ``update()`` began after its slot (None before the
    first), ``period_ns`` the current period (None while unset).
    """

    updates: int
    failures: int
    consecutive_failures: int
    missed_slots: int
    overruns: int
    last_lateness_ns: int | None
    period_ns: int | None


def _period_ns(period: DurationLike) -> int:
    return Timedelta.coerce(period, name="period", positive=True).ns


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.3f} ms"


class Scheduler:
    """Call ``update()`` on the grid ``t0 + k·period`` of the monotonic clock until stopped.

    :param period: a duration as :meth:`Timedelta.coerce <mqsync.Timedelta.coerce>` takes it
        (a ``Timedelta``, a ``datetime.timedelta``, ``"10s"``, or a number of seconds), at
        least 1 ns; None to wait until :attr:`period` is set.
    :param align: start the grid at a wall-clock multiple of the period plus ``offset``
        (like Telegraf's ``round_interval``), so many hosts sample at the same instants. The
        wall clock is read only when the grid is (re)anchored: at the first slot and on a
        period change. Without ``align`` the first update runs at once.
    :param offset: shift of the aligned grid, a duration as ``period``; may be negative; only
        with ``align``.
    :param max_consecutive_failures: after this many ``update()`` failures in a row,
        :meth:`run` raises :class:`TooManyFailures`; None never gives up.
    :param clock: a :class:`Clock`; :class:`SystemClock` by default.
    :param name: prefixes log messages (e.g. the source's token).
    :param history_size: how many recent lateness samples :meth:`recent_lateness_ns` keeps.

    Rules: a slot that has passed when the next slot is computed (``update()`` overran, or
    the process stalled) is skipped and counted in ``missed_slots``, never run late; a
    wake-up at least one period late skips its own slot too. Setting :attr:`period` takes
    effect at once, even during a long wait. :meth:`stop` interrupts a wait at once; no update
    begins after it returned. Raises TypeError/ValueError for invalid arguments.
    """

    def __init__(
        self,
        period: DurationLike | None = None,
        *,
        align: bool = False,
        offset: DurationLike = 0,
        max_consecutive_failures: int | None = None,
        clock: Clock | None = None,
        name: str = "",
        history_size: int = 1024,
    ):
        offset_ns = Timedelta.coerce(offset, name="offset").ns
        if offset_ns and not align:
            raise ValueError(f"offset needs align=True, got offset={offset!r} with align=False")
        if max_consecutive_failures is not None and (
            not isinstance(max_consecutive_failures, int)
            or isinstance(max_consecutive_failures, bool)
            or max_consecutive_failures < 1
        ):
            raise ValueError(
                "max_consecutive_failures must be None or an int >= 1, "
                f"got {max_consecutive_failures!r}"
            )
        if not isinstance(history_size, int) or history_size < 0:
            raise ValueError(f"history_size must be an int >= 0, got {history_size!r}")
        self._period_ns: int | None = None if period is None else _period_ns(period)
        self._align = bool(align)
        self._offset_ns = offset_ns
        self._max_failures = max_consecutive_failures
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._name = name
        self._label = f"{name}: " if name else ""

        self._lock = threading.Lock()
        # Set on stop() and on a period change: the only thing a waiting run() waits for.
        self._wakeup = threading.Event()
        self._stop_requested = False
        self._period_changed = False
        self._running = False

        self._updates = 0
        self._failures = 0
        self._consecutive_failures = 0
        self._missed_slots = 0
        self._overruns = 0
        self._overrun_streak = 0
        self._last_lateness_ns: int | None = None
        self._lateness: deque[int] = deque(maxlen=history_size)
        self._last_error_key: tuple[type, str] | None = None

    def __repr__(self) -> str:
        return (
            f"<Scheduler {self._name!r} period_ns={self._period_ns} align={self._align} "
            f"running={self._running}>"
        )

    # -- configuration, callable from any thread ------------------------------------------

    @property
    def period(self) -> float | None:
        """The period in seconds, None while unset.

        Set it from any thread, also while :meth:`run` waits, to any duration the constructor
        takes; the next slot then lies on a grid with the new period: anchored at
        the last slot that ran (the next one at or after now), or re-aligned to the wall clock
        with ``align``. Setting None pauses the schedule until a period is set again.
        Setting the current value changes nothing.
        """
        ns = self._period_ns
        return None if ns is None else ns / NS_PER_S

    @period.setter
    def period(self, value: DurationLike | None) -> None:
        ns = None if value is None else _period_ns(value)
        with self._lock:
            old = self._period_ns
            if ns == old:
                return
            self._period_ns = ns
            self._period_changed = True
        self._wakeup.set()
        logger.info(
            "%speriod changed from %s to %s",
            self._label,
            "unset" if old is None else _ms(old),
            "unset" if ns is None else _ms(ns),
        )

    @property
    def period_ns(self) -> int | None:
        """The period in integer nanoseconds, None while unset."""
        return self._period_ns

    @property
    def running(self) -> bool:
        """True while :meth:`run` executes."""
        return self._running

    def stop(self) -> None:
        """Make :meth:`run` return as soon as possible; thread-safe and idempotent.

        A waiting run() wakes at once. An ``update()`` already running is not interrupted;
        none begins after stop() returned. Calling stop() before run() makes run() return
        without calling ``update()``: a scheduler runs once.
        """
        with self._lock:
            self._stop_requested = True
        self._wakeup.set()

    def stats(self) -> SchedulerStats:
        """A consistent snapshot of the counters."""
        with self._lock:
            return SchedulerStats(
                updates=self._updates,
                failures=self._failures,
                consecutive_failures=self._consecutive_failures,
                missed_slots=self._missed_slots,
                overruns=self._overruns,
                last_lateness_ns=self._last_lateness_ns,
                period_ns=self._period_ns,
            )

    def recent_lateness_ns(self) -> tuple[int, ...]:
        """How late each of the last ``history_size`` updates began after its slot, oldest first."""
        with self._lock:
            return tuple(self._lateness)

    # -- the loop --------------------------------------------------------------------------

    def run(self, update: Callable[[], None]) -> None:
        """Call ``update()`` on the grid until :meth:`stop`; blocks the calling thread.

        Exceptions from ``update()`` (``Exception`` subclasses) are logged with traceback and
        counted; the schedule goes on. Raises :class:`TooManyFailures` when
        ``max_consecutive_failures`` is reached, RuntimeError if run() is already running.
        Other BaseExceptions (KeyboardInterrupt, SystemExit) propagate unchanged.
        """
        with self._lock:
            if self._running:
                raise RuntimeError(f"{self._label}Scheduler.run() is already running")
            self._running = True
        try:
            self._loop(update)
        finally:
            with self._lock:
                self._running = False

    def _loop(self, update: Callable[[], None]) -> None:
        clock = self._clock
        deadline: int | None = None  # the next slot, monotonic ns
        last_slot: int | None = None  # the slot the last update ran for
        while True:
            # Clear before reading the state: a stop or change after this point sets the
            # event again, so the wait below returns at once instead of missing it.
            self._wakeup.clear()
            with self._lock:
                if self._stop_requested:
                    return
                period = self._period_ns
                if self._period_changed:
                    self._period_changed = False
                    deadline = None
            if period is None:
                clock.wait(self._wakeup, None)
                continue
            now = clock.monotonic_ns()
            if deadline is None:
                deadline = self._anchor(period, now, last_slot)
            if now < deadline:
                timeout_s = min((deadline - now) / NS_PER_S, threading.TIMEOUT_MAX)
                clock.wait(self._wakeup, timeout_s)
                continue  # re-check stop, period and time: a wait may end early or late
            lateness = now - deadline
            if lateness >= period:
                # Woke a whole period late (the machine stalled): this slot is stale as well.
                deadline = self._skip(deadline, now, period)
                continue
            with self._lock:
                if self._stop_requested:
                    return
                self._updates += 1
                self._last_lateness_ns = lateness
                self._lateness.append(lateness)
            self._call(update)
            if self._stop_requested:
                return  # stopped during update(): nothing after it is missed
            last_slot = deadline
            deadline += period
            now = clock.monotonic_ns()
            if now > deadline:
                deadline = self._skip(deadline, now, period)
            else:
                self._overrun_streak = 0

    def _anchor(self, period: int, now: int, last_slot: int | None) -> int:
        """The first slot of a new grid: at start, after the period was set or changed."""
        if self._align:
            # Time until the next wall-clock multiple of the period (+ offset), in [0, period).
            slot = now + (self._offset_ns - self._clock.wall_ns()) % period
            if last_slot is not None and slot <= last_slot:
                slot += period
            return slot
        if last_slot is None:
            return now
        # Keep the phase of the grid the last update ran on: its next slot at or after now.
        steps = max(1, -(-(now - last_slot) // period))
        return last_slot + steps * period

    def _skip(self, deadline: int, now: int, period: int) -> int:
        """Skip the slots before ``now`` starting at ``deadline``; return the next slot."""
        missed = -(-(now - deadline) // period)
        with self._lock:
            self._missed_slots += missed
            self._overruns += 1
        self._overrun_streak += 1
        # Every overrun is counted; a steady overrun is logged at the 1st, 2nd, 4th, 8th ...
        # event of a streak, so a slow update() at 100 Hz cannot flood the log.
        if _is_power_of_two(self._overrun_streak):
            logger.warning(
                "%sskipped %d slot%s of %s: %s behind schedule "
                "(update() too slow or process stalled; %d overrun%s in a row)",
                self._label,
                missed,
                "" if missed == 1 else "s",
                _ms(period),
                _ms(now - deadline),
                self._overrun_streak,
                "" if self._overrun_streak == 1 else "s",
            )
        return deadline + missed * period

    def _call(self, update: Callable[[], None]) -> None:
        try:
            update()
        except Exception as error:
            self._on_failure(error)
        else:
            with self._lock:
                streak = self._consecutive_failures
                self._consecutive_failures = 0
            self._last_error_key = None
            if streak > 1:
                logger.info("%supdate() succeeded after %d failures in a row", self._label, streak)

    def _on_failure(self, error: Exception) -> None:
        with self._lock:
            self._failures += 1
            self._consecutive_failures += 1
            streak = self._consecutive_failures
        key = (type(error), str(error))
        # The same error again and again is logged at the 1st, 2nd, 4th, 8th ... time of a
        # streak; a new kind of error is logged at once. All are counted.
        if key != self._last_error_key or _is_power_of_two(streak):
            logger.exception("%supdate() failed (%d in a row)", self._label, streak)
        self._last_error_key = key
        if self._max_failures is not None and streak >= self._max_failures:
            raise TooManyFailures(
                f"{self._label}update() failed {streak} times in a row "
                f"(max_consecutive_failures={self._max_failures}); last error: {error!r}",
                failures=streak,
            ) from error

"""Drift-free periodic scheduling, independent of any transport.

A :class:`Grid` is one schedule: the slots ``t0 + k·period`` of the monotonic clock, which
of them is due next, and the counters of what happened to them.  Deadlines come from the
grid, never from "now", so the time an update takes and the lateness of each wake-up never
accumulate.  A slot that has already passed when its turn comes is skipped and counted,
never run in a catch-up burst.

Two drivers run grids:

- :class:`Scheduler` runs one grid in the calling thread (``IntervalSource`` runs one in
  its task thread).
- :class:`MultiScheduler` keeps the time of many grids in one thread and hands their
  updates to a bounded, elastic pool of worker threads: an update that blocks holds one
  worker and delays no other grid, and one grid never has two updates running at once.
  ``mqsync-source --config`` runs every plugin instance of a host on one of these.

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

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from typing import Any, Callable, Hashable, Protocol

import attrs

from .errors import TooManyFailures
from .timeseries import DurationLike, Timedelta

__all__ = [
    "Clock",
    "Grid",
    "MultiScheduler",
    "PoolStats",
    "Scheduler",
    "SchedulerStats",
    "SystemClock",
    "TooManyFailures",
]

logger = logging.getLogger(__name__)

NS_PER_S = 1_000_000_000


class Clock(Protocol):
    """The time source and sleeper of a scheduler; tests inject a fake one."""

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
    """A consistent snapshot of a :class:`Grid`'s counters.

    ``updates`` counts calls of ``update()`` begun (failed ones included), ``failures`` the
    calls that raised, ``consecutive_failures`` the current streak, ``missed_slots`` the grid
    slots skipped because they had passed, ``overruns`` the events that skipped slots.
    ``last_lateness_ns`` is how late the last ``update()`` began after its slot (None before the
    first), ``period_ns`` the current period (None while unset), ``last_error`` the last
    failure as ``"Type: message"`` (None before the first), ``held_slots`` the slots left out
    while a :class:`MultiScheduler` backed off a failing update.
    """

    updates: int
    failures: int
    consecutive_failures: int
    missed_slots: int
    overruns: int
    last_lateness_ns: int | None
    period_ns: int | None
    last_error: str | None = None
    held_slots: int = 0


def _period_ns(period: DurationLike) -> int:
    return Timedelta.coerce(period, name="period", positive=True).ns


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.3f} ms"


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class Grid:
    """One periodic schedule: its slots ``t0 + k·period``, the next one due, its counters.

    A grid is driven by one thread at a time (its scheduler, or the worker running its
    update): :meth:`due`, :meth:`begin`, :meth:`succeeded`, :meth:`failed`, :meth:`advance`
    and :meth:`hold`.  :attr:`period` and :meth:`stats` may be used from any thread.

    :param period: a duration as :meth:`Timedelta.coerce <mqsync.Timedelta.coerce>` takes it
        (a ``Timedelta``, a ``datetime.timedelta``, ``"10s"``, or a number of seconds), at
        least 1 ns; None to wait until :attr:`period` is set.
    :param align: start the grid at a wall-clock multiple of the period plus ``offset``
        (like Telegraf's ``round_interval``), so many hosts sample at the same instants. The
        wall clock is read only when the grid is (re)anchored: at the first slot and on a
        period change. Without ``align`` the first slot is the moment the grid is first asked.
    :param offset: shift of the aligned grid, a duration as ``period``; may be negative; only
        with ``align``.
    :param start_delay: without ``align``: the first slot comes this long after the grid is
        first asked (a duration as ``period``, >= 0), so that many grids started at once
        need not all come due at the same instants.
    :param clock: a :class:`Clock`; :class:`SystemClock` by default.
    :param name: prefixes log messages (e.g. the source's token).
    :param history_size: how many recent lateness samples :meth:`recent_lateness_ns` keeps.
    :param on_change: called (in the setter's thread) after :attr:`period` changed, so the
        driver can wake up and take the new grid at once.
    """

    def __init__(
        self,
        period: DurationLike | None = None,
        *,
        align: bool = False,
        offset: DurationLike = 0,
        start_delay: DurationLike = 0,
        clock: Clock | None = None,
        name: str = "",
        history_size: int = 1024,
        on_change: Callable[[], None] | None = None,
    ):
        offset_ns = Timedelta.coerce(offset, name="offset").ns
        if offset_ns and not align:
            raise ValueError(f"offset needs align=True, got offset={offset!r} with align=False")
        start_delay_ns = Timedelta.coerce(start_delay, name="start_delay", negative=False).ns
        if start_delay_ns and align:
            raise ValueError(f"start_delay is for a grid without align (an aligned one moves "
                             f"with offset), got start_delay={start_delay!r} with align=True")
        self._start_delay_ns = start_delay_ns
        if not isinstance(history_size, int) or history_size < 0:
            raise ValueError(f"history_size must be an int >= 0, got {history_size!r}")
        self._period_ns: int | None = None if period is None else _period_ns(period)
        self._align = bool(align)
        self._offset_ns = offset_ns
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.name = name
        self.label = f"{name}: " if name else ""
        self._on_change = on_change

        self._lock = threading.Lock()
        self._reanchor = False
        # The driver's state: the grid in use, its next slot, the slot the last update ran for.
        self._active_ns: int | None = None
        self._deadline: int | None = None
        self._last_slot: int | None = None

        self._updates = 0
        self._failures = 0
        self._consecutive_failures = 0
        self._missed_slots = 0
        self._overruns = 0
        self._held_slots = 0
        self._overrun_streak = 0
        self._last_lateness_ns: int | None = None
        self._lateness: deque[int] = deque(maxlen=history_size)
        self._last_error: str | None = None
        self._last_error_key: tuple[type, str] | None = None

    def __repr__(self) -> str:
        return f"<Grid {self.name!r} period_ns={self._period_ns} align={self._align}>"

    # -- any thread ------------------------------------------------------------------------

    @property
    def period(self) -> float | None:
        """The period in seconds, None while unset.

        Set it from any thread to any duration the constructor takes; the next slot then
        lies on a grid with the new period: anchored at the last slot that ran (the next
        one at or after now), or re-aligned to the wall clock with ``align``.  Setting None
        pauses the schedule until a period is set again.  Setting the current value changes
        nothing.
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
            self._reanchor = True
        logger.info(
            "%speriod changed from %s to %s",
            self.label,
            "unset" if old is None else _ms(old),
            "unset" if ns is None else _ms(ns),
        )
        if self._on_change is not None:
            self._on_change()

    @property
    def period_ns(self) -> int | None:
        """The period in integer nanoseconds, None while unset."""
        return self._period_ns

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
                last_error=self._last_error,
                held_slots=self._held_slots,
            )

    def recent_lateness_ns(self) -> tuple[int, ...]:
        """How late each of the last ``history_size`` updates began after its slot, oldest first."""
        with self._lock:
            return tuple(self._lateness)

    # -- the driving thread ----------------------------------------------------------------

    def due(self, now: int) -> int | None:
        """The monotonic ns of the next slot, anchoring a new grid when there is none yet
        or the period changed; None while the period is unset."""
        with self._lock:
            period = self._period_ns
            if self._reanchor:
                self._reanchor = False
                self._deadline = None
        self._active_ns = period
        if period is None:
            return None
        if self._deadline is None:
            self._deadline = self._anchor(period, now)
        return self._deadline

    def begin(self, now: int) -> bool:
        """At or after the slot :meth:`due` returned: whether its update runs now.

        True counts the update and its lateness.  False means the slot is stale (``now``
        is a whole period or more after it): it is skipped and counted, and :meth:`due`
        gives the next one.
        """
        period, deadline = self._active_ns, self._deadline
        assert period is not None and deadline is not None, "begin() before due()"
        lateness = now - deadline
        if lateness >= period:
            # Woke a whole period late (the machine stalled): this slot is stale as well.
            self._deadline = self._skip(deadline, now, period)
            return False
        with self._lock:
            self._updates += 1
            self._last_lateness_ns = lateness
            self._lateness.append(lateness)
        return True

    def succeeded(self) -> None:
        """The update begun last returned."""
        with self._lock:
            streak = self._consecutive_failures
            self._consecutive_failures = 0
        self._last_error_key = None
        if streak > 1:
            logger.info("%supdate() succeeded after %d failures in a row", self.label, streak)

    def failed(self, error: BaseException) -> int:
        """The update begun last raised ``error``: count and log it; return the streak."""
        text = f"{type(error).__name__}: {error}"
        with self._lock:
            self._failures += 1
            self._consecutive_failures += 1
            self._last_error = text
            streak = self._consecutive_failures
        key = (type(error), str(error))
        # The same error again and again is logged at the 1st, 2nd, 4th, 8th ... time of a
        # streak; a new kind of error is logged at once. All are counted.
        if key != self._last_error_key or _is_power_of_two(streak):
            logger.error("%supdate() failed (%d in a row)", self.label, streak,
                         exc_info=(type(error), error, error.__traceback__))
        self._last_error_key = key
        return streak

    def advance(self, now: int) -> None:
        """After the update of the current slot: move to the next one, skipping (and
        counting) the slots that passed meanwhile."""
        period, deadline = self._active_ns, self._deadline
        assert period is not None and deadline is not None, "advance() before due()"
        self._last_slot = deadline
        deadline += period
        if now > deadline:
            deadline = self._skip(deadline, now, period)
        else:
            self._overrun_streak = 0
        self._deadline = deadline

    def hold(self, until: int) -> int | None:
        """Leave out the slots before ``until`` (a backoff); they count as ``held_slots``.
        Returns the next slot (None while the period is unset)."""
        period, deadline = self._active_ns, self._deadline
        if period is None or deadline is None or deadline >= until:
            return deadline
        held = _ceil_div(until - deadline, period)
        with self._lock:
            self._held_slots += held
        self._deadline = deadline + held * period
        return self._deadline

    def _anchor(self, period: int, now: int) -> int:
        """The first slot of a new grid: at start, after the period was set or changed."""
        last_slot = self._last_slot
        if self._align:
            # Time until the next wall-clock multiple of the period (+ offset), in [0, period).
            slot = now + (self._offset_ns - self.clock.wall_ns()) % period
            if last_slot is not None and slot <= last_slot:
                slot += period
            return slot
        if last_slot is None:
            return now + self._start_delay_ns
        # Keep the phase of the grid the last update ran on: its next slot at or after now.
        steps = max(1, _ceil_div(now - last_slot, period))
        return last_slot + steps * period

    def _skip(self, deadline: int, now: int, period: int) -> int:
        """Skip the slots before ``now`` starting at ``deadline``; return the next slot."""
        missed = _ceil_div(now - deadline, period)
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
                self.label,
                missed,
                "" if missed == 1 else "s",
                _ms(period),
                _ms(now - deadline),
                self._overrun_streak,
                "" if self._overrun_streak == 1 else "s",
            )
        return deadline + missed * period


def _check_workers(value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"max_workers must be an int >= 1, got {value!r}")


def _check_max_failures(value: int | None, name: str) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                              or value < 1):
        raise ValueError(f"{name} must be None or an int >= 1, got {value!r}")


class Scheduler:
    """Call ``update()`` on the grid ``t0 + k·period`` of the monotonic clock until stopped.

    :param period, align, offset, clock, name, history_size: as :class:`Grid`. Without
        ``align`` the first update runs at once.
    :param max_consecutive_failures: after this many ``update()`` failures in a row,
        :meth:`run` raises :class:`TooManyFailures`; None never gives up.

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
        _check_max_failures(max_consecutive_failures, "max_consecutive_failures")
        # Set on stop() and on a period change: the only thing a waiting run() waits for.
        self._wakeup = threading.Event()
        self._grid = Grid(period, align=align, offset=offset, clock=clock, name=name,
                          history_size=history_size, on_change=self._wakeup.set)
        self._max_failures = max_consecutive_failures
        self._clock = self._grid.clock
        self._name = name
        self._lock = threading.Lock()
        self._stop_requested = False
        self._running = False

    def __repr__(self) -> str:
        return (
            f"<Scheduler {self._name!r} period_ns={self._grid.period_ns} "
            f"align={self._grid._align} running={self._running}>"
        )

    # -- configuration, callable from any thread ------------------------------------------

    @property
    def period(self) -> float | None:
        """The period in seconds, None while unset; settable as :attr:`Grid.period`, also
        while :meth:`run` waits (it takes effect at once)."""
        return self._grid.period

    @period.setter
    def period(self, value: DurationLike | None) -> None:
        self._grid.period = value

    @property
    def period_ns(self) -> int | None:
        """The period in integer nanoseconds, None while unset."""
        return self._grid.period_ns

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
        return self._grid.stats()

    def recent_lateness_ns(self) -> tuple[int, ...]:
        """How late each of the last ``history_size`` updates began after its slot, oldest first."""
        return self._grid.recent_lateness_ns()

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
                raise RuntimeError(f"{self._grid.label}Scheduler.run() is already running")
            self._running = True
        try:
            self._loop(update)
        finally:
            with self._lock:
                self._running = False

    def _loop(self, update: Callable[[], None]) -> None:
        clock, grid = self._clock, self._grid
        while True:
            # Clear before reading the state: a stop or change after this point sets the
            # event again, so the wait below returns at once instead of missing it.
            self._wakeup.clear()
            if self._stop_requested:
                return
            now = clock.monotonic_ns()
            deadline = grid.due(now)
            if deadline is None:
                clock.wait(self._wakeup, None)
                continue
            if now < deadline:
                timeout_s = min((deadline - now) / NS_PER_S, threading.TIMEOUT_MAX)
                clock.wait(self._wakeup, timeout_s)
                continue  # re-check stop, period and time: a wait may end early or late
            with self._lock:
                if self._stop_requested:
                    return
            if not grid.begin(now):
                continue
            self._call(update)
            if self._stop_requested:
                return  # stopped during update(): nothing after it is missed
            grid.advance(clock.monotonic_ns())

    def _call(self, update: Callable[[], None]) -> None:
        try:
            update()
        except Exception as error:
            streak = self._grid.failed(error)
            if self._max_failures is not None and streak >= self._max_failures:
                raise TooManyFailures(
                    f"{self._grid.label}update() failed {streak} times in a row "
                    f"(max_consecutive_failures={self._max_failures}); last error: {error!r}",
                    failures=streak,
                ) from error
        else:
            self._grid.succeeded()


# -- many grids, one timekeeper, a pool of workers ----------------------------------------


@attrs.frozen
class PoolStats:
    """The worker pool of a :class:`MultiScheduler`: ``threads`` alive now, ``peak_threads``
    ever alive at once, ``max_threads`` its bound, ``busy`` updates running now, ``queued``
    updates due but waiting for a free thread, ``saturated`` how often an update had to wait
    so, and ``started_threads`` in all (idle threads end after a while and are started again
    when needed)."""

    threads: int
    peak_threads: int
    max_threads: int
    busy: int
    queued: int
    saturated: int
    started_threads: int


class _Pool:
    """Up to ``max_threads`` threads running jobs; a thread is started when a job finds no
    idle one, and ends after ``idle_s`` seconds without work, or when it is one more than
    a lowered bound allows."""

    def __init__(self, name: str, max_threads: int, idle_s: float):
        self.name = name
        self._max_threads = max_threads
        self._idle_s = idle_s
        self._cond = threading.Condition()
        self._jobs: deque[Callable[[], None]] = deque()
        self._threads: set[threading.Thread] = set()
        self._ended: list[threading.Thread] = []  # ended before stop: joined by stop
        self._idle = 0  # threads waiting for a job
        self._starting = 0  # threads started, not yet looking for a job
        self._running = 0  # jobs running now
        self._stopping = False
        self._numbers = itertools.count(1)
        self._peak = 0
        self._saturated = 0
        self._started = 0

    @property
    def max_threads(self) -> int:
        return self._max_threads

    @max_threads.setter
    def max_threads(self, value: int) -> None:
        with self._cond:
            self._max_threads = value
            self._provide()
            self._cond.notify_all()  # threads beyond a lowered bound end as soon as idle

    def submit(self, job: Callable[[], None]) -> bool:
        """Queue ``job``; False (and not queued) once the pool is stopping."""
        with self._cond:
            if self._stopping:
                return False
            self._jobs.append(job)
            if not self._provide():
                self._saturated += 1
            return True

    def _provide(self) -> bool:
        """Under the lock: a thread for every queued job, idle or new, within the bound;
        whether every job has one."""
        # A notified thread counts as idle until it took its job, a new one as starting.
        if self._idle:
            self._cond.notify(min(self._idle, len(self._jobs)))
        while self._idle + self._starting < len(self._jobs):
            if len(self._threads) >= self._max_threads:
                return False
            self._start_thread()
        return True

    def _start_thread(self) -> None:
        # Threads that ended before stop need no join any more once dead: forget them.
        self._ended = [ended for ended in self._ended if ended.is_alive()]
        thread = threading.Thread(target=self._main, daemon=True,
                                  name=f"{self.name}-{next(self._numbers)}")
        self._threads.add(thread)
        self._starting += 1
        self._started += 1
        self._peak = max(self._peak, len(self._threads))
        thread.start()

    def _main(self) -> None:
        me = threading.current_thread()
        try:
            with self._cond:
                self._starting -= 1
            while True:
                job = self._next_job(me)
                if job is None:
                    return
                try:
                    job()
                except BaseException:  # noqa: BLE001 - a job's bug must not end the thread
                    logger.exception("%s: a scheduled job failed", self.name)
                finally:
                    with self._cond:
                        self._running -= 1
        finally:
            with self._cond:
                self._threads.discard(me)
                self._ended.append(me)

    def _next_job(self, me: threading.Thread) -> Callable[[], None] | None:
        """The next job, or None when this thread should end (stop, idle, surplus)."""
        with self._cond:
            while True:
                if self._stopping or len(self._threads) > self._max_threads:
                    break
                if self._jobs:
                    self._running += 1
                    return self._jobs.popleft()
                self._idle += 1
                woken = self._cond.wait(self._idle_s)
                self._idle -= 1
                if not woken and not self._jobs:
                    break
            self._threads.discard(me)  # now: the next thread's check counts without it
            return None

    def stats(self) -> PoolStats:
        with self._cond:
            return PoolStats(threads=len(self._threads), peak_threads=self._peak,
                             max_threads=self._max_threads, busy=self._running,
                             queued=len(self._jobs), saturated=self._saturated,
                             started_threads=self._started)

    def close(self) -> list[Callable[[], None]]:
        """Take no more jobs; return the queued ones, dropped."""
        with self._cond:
            self._stopping = True
            dropped = list(self._jobs)
            self._jobs.clear()
            self._cond.notify_all()
        return dropped

    def join(self, deadline: float) -> bool:
        """After :meth:`close`: join every thread by ``deadline`` (``time.monotonic()``);
        whether all ended."""
        with self._cond:
            threads = [*self._threads, *self._ended]
        current = threading.current_thread()
        for thread in threads:
            if thread is not current:
                thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in threads if t.is_alive() and t is not current]
        if stuck:
            logger.error("%s: %d update thread(s) still running after stop: %s", self.name,
                         len(stuck), ", ".join(sorted(stuck)))
        return not stuck


class _Entry:
    """One grid of a :class:`MultiScheduler` and its update."""

    __slots__ = ("key", "update", "grid", "busy", "started", "removed", "version", "then",
                 "retry_at", "idle")

    def __init__(self, key: Hashable, update: Callable[[], None], grid: Grid):
        self.key = key
        self.update = update
        self.grid = grid
        self.busy = False  # handed to the pool, not finished
        self.started = False  # its update began (busy and started: it runs)
        self.removed = False
        self.version = 0  # heap items of older versions are stale
        self.then: Callable[[], None] | None = None  # run once removed and idle
        self.retry_at: int | None = None  # monotonic ns of the next try, while backing off
        self.idle = threading.Event()
        self.idle.set()


class Timer:
    """A call :meth:`MultiScheduler.call_later` will make; :meth:`cancel` it before."""

    __slots__ = ("function", "cancelled")

    def __init__(self, function: Callable[[], None]):
        self.function = function
        self.cancelled = False

    def cancel(self) -> None:
        """Do not make the call (if it has not begun, also when it is due and waits for a
        worker)."""
        self.cancelled = True

    def __call__(self) -> None:
        if not self.cancelled:
            self.function()


class _Then:
    """A removed grid's ``then()``, queued for a worker: run at stop if still queued."""

    __slots__ = ("function",)

    def __init__(self, function: Callable[[], None]):
        self.function = function

    def __call__(self) -> None:
        self.function()


class MultiScheduler:
    """Many grids, one thread that keeps their time, a bounded pool of threads that runs
    their updates.

    Each grid keeps :class:`Scheduler`'s guarantees: a fixed grid per grid (no drift),
    stale slots skipped and counted, never a burst, never two updates of one grid at once.
    A slot that comes while the grid's last update still runs is skipped and counted.  An
    update that blocks holds one worker thread and delays no other grid, as long as a
    thread is free: the pool starts threads when updates find none idle, up to
    ``max_workers``, and idle threads end after ``idle_timeout``.  Where every thread is
    busy, due updates wait in a queue (:attr:`PoolStats.saturated` counts it); one that
    waited a whole period is skipped.

    An update that raises is logged and counted; after ``backoff_after`` failures in a
    row the grid backs off: its next slot is the first one at least ``backoff`` later,
    doubling with each further failure up to ``max_backoff``; the slots left out count as
    ``held_slots``.  A success ends the backoff.

    :param max_workers: the most updates that run at once (threads), >= 1.
    :param clock: a :class:`Clock`; :class:`SystemClock` by default.
    :param name: names the threads and prefixes log messages.
    """

    def __init__(
        self,
        *,
        max_workers: int = 8,
        clock: Clock | None = None,
        name: str = "scheduler",
        backoff_after: int | None = 3,
        backoff: DurationLike = 1.0,
        max_backoff: DurationLike = 300.0,
        idle_timeout: DurationLike = 30.0,
    ):
        _check_workers(max_workers)
        _check_max_failures(backoff_after, "backoff_after")
        self._backoff_after = backoff_after
        self._backoff_ns = Timedelta.coerce(backoff, name="backoff", positive=True).ns
        self._max_backoff_ns = Timedelta.coerce(max_backoff, name="max_backoff",
                                                positive=True).ns
        if self._max_backoff_ns < self._backoff_ns:
            raise ValueError(f"max_backoff ({max_backoff!r}) must not be shorter than "
                             f"backoff ({backoff!r})")
        self._clock: Clock = clock if clock is not None else SystemClock()
        self.name = name
        self._pool = _Pool(f"mqsync-{name}-update", max_workers,
                           Timedelta.coerce(idle_timeout, name="idle_timeout", positive=True).s)
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._entries: dict[Hashable, _Entry] = {}
        # removed while their update was handed out: until it finished
        self._removing: dict[Hashable, _Entry] = {}
        self._heap: list[tuple[int, int, int, Any]] = []
        self._dirty: list[_Entry] = []
        self._seq = itertools.count()
        self._stop_requested = False
        self._running = False

    def __repr__(self) -> str:
        return f"<MultiScheduler {self.name!r} grids={len(self._entries)} running={self._running}>"

    # -- grids, from any thread ------------------------------------------------------------

    def add(self, key: Hashable, update: Callable[[], None], period: DurationLike | None, *,
            align: bool = False, offset: DurationLike = 0, start_delay: DurationLike = 0,
            name: str | None = None, history_size: int = 1024) -> Grid:
        """Run ``update()`` on a new grid (arguments as :class:`Grid`); returns the grid,
        whose :attr:`Grid.period` may be set any time.

        Raises:
            KeyError: a grid with this key exists.
        """
        entry: _Entry
        grid = Grid(period, align=align, offset=offset, start_delay=start_delay,
                    clock=self._clock,
                    name=str(key) if name is None else name, history_size=history_size,
                    on_change=lambda: self._changed(entry))
        entry = _Entry(key, update, grid)
        with self._lock:
            if key in self._entries:
                raise KeyError(f"{self.name}: a grid named {key!r} exists")
            self._entries[key] = entry
            self._dirty.append(entry)
        self._wakeup.set()
        return grid

    def remove(self, key: Hashable, then: Callable[[], None] | None = None) -> bool:
        """Stop the grid ``key``: no update of it begins from now on.  ``then()`` runs (on
        a worker) once its running update, if any, returned; at :meth:`stop` at the latest.
        False if there is no such grid.
        """
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is None:
                return False
            entry.removed = True
            entry.version += 1
            if entry.busy:
                entry.then = then
                self._removing[key] = entry
                return True
        if then is not None and not self._pool.submit(_Then(then)):
            then()  # stopping: no worker takes it
        return True

    def wait_idle(self, key: Hashable, timeout: float) -> bool:
        """Wait until no update of ``key`` runs (also of a grid removed meanwhile); whether
        that happened in ``timeout`` s."""
        with self._lock:
            entries = [e for e in (self._entries.get(key), self._removing.get(key)) if e]
        deadline = time.monotonic() + timeout
        return all(entry.idle.wait(max(0.0, deadline - time.monotonic())) for entry in entries)

    def call_later(self, delay: DurationLike, function: Callable[[], None]) -> Timer:
        """Call ``function()`` on a worker ``delay`` from now (once); returns a :class:`Timer`."""
        delay_ns = Timedelta.coerce(delay, name="delay", negative=False).ns
        timer = Timer(function)
        with self._lock:
            heapq.heappush(self._heap, (self._clock.monotonic_ns() + delay_ns, next(self._seq),
                                        0, timer))
        self._wakeup.set()
        return timer

    def grid(self, key: Hashable) -> Grid:
        """The grid ``key`` (KeyError if there is none)."""
        with self._lock:
            return self._entries[key].grid

    def keys(self) -> list[Hashable]:
        """The keys of the grids, in the order they were added."""
        with self._lock:
            return list(self._entries)

    def busy(self, key: Hashable) -> bool:
        """Whether an update of ``key`` is handed out and not finished (also of a grid
        removed meanwhile)."""
        with self._lock:
            return any(e is not None and e.busy
                       for e in (self._entries.get(key), self._removing.get(key)))

    def retry_at(self, key: Hashable) -> int | None:
        """While ``key`` backs off after failures: the monotonic ns of its next try."""
        with self._lock:
            entry = self._entries.get(key)
            return None if entry is None else entry.retry_at

    def pool_stats(self) -> PoolStats:
        """The worker pool's threads and queue."""
        return self._pool.stats()

    @property
    def running(self) -> bool:
        """True while :meth:`run` executes."""
        return self._running

    @property
    def max_workers(self) -> int:
        """The most updates that run at once; settable: a larger bound starts threads for
        the updates that wait, a smaller one ends threads as they become free."""
        return self._pool.max_threads

    @max_workers.setter
    def max_workers(self, value: int) -> None:
        _check_workers(value)
        self._pool.max_threads = value

    def _changed(self, entry: _Entry) -> None:
        """A grid's period changed: re-time it now (unless its update runs: then after)."""
        with self._lock:
            if entry.removed or entry.busy:
                return
            entry.version += 1  # its heap item is stale
            self._dirty.append(entry)
        self._wakeup.set()

    # -- the timekeeper ---------------------------------------------------------------------

    def run(self) -> None:
        """Keep time and hand due updates to the workers until :meth:`stop`; blocks."""
        with self._lock:
            if self._running:
                raise RuntimeError(f"{self.name}: MultiScheduler.run() is already running")
            self._running = True
        try:
            self._loop()
        finally:
            with self._lock:
                self._running = False

    def _loop(self) -> None:
        clock, heap = self._clock, self._heap
        while True:
            self._wakeup.clear()  # before reading the state: see Scheduler._loop
            with self._lock:
                if self._stop_requested:
                    return
                now = clock.monotonic_ns()
                for entry in self._dirty:
                    if not entry.removed and not entry.busy:
                        self._push(entry, now)
                self._dirty.clear()
                due: list[Callable[[], None]] = []
                while heap and heap[0][0] <= now:
                    _, _, version, item = heapq.heappop(heap)
                    if isinstance(item, Timer):
                        if not item.cancelled:
                            due.append(item)  # checks cancelled again when it runs
                    elif version == item.version and not item.removed and not item.busy:
                        item.busy, item.started = True, False
                        item.idle.clear()
                        due.append(self._job(item))
                timeout = None if not heap else \
                    min((heap[0][0] - now) / NS_PER_S, threading.TIMEOUT_MAX)
            for job in due:
                self._pool.submit(job)
            clock.wait(self._wakeup, timeout)

    def _push(self, entry: _Entry, now: int) -> None:
        """Under the lock: put ``entry``'s next slot on the heap (none while unset)."""
        entry.version += 1
        grid = entry.grid
        slot = grid.due(now)
        if slot is None:
            return
        if entry.retry_at is not None and slot < entry.retry_at:
            # re-timed (a period change) while backing off: the backoff still holds
            slot = entry.retry_at = grid.hold(entry.retry_at) or entry.retry_at
        heapq.heappush(self._heap, (slot, next(self._seq), entry.version, entry))

    def _job(self, entry: _Entry) -> Callable[[], None]:
        return lambda: self._run_update(entry)

    def _run_update(self, entry: _Entry) -> None:
        """On a worker: the update of ``entry``'s due slot, unless the slot went stale."""
        grid, clock = entry.grid, self._clock
        try:
            with self._lock:  # against stop(): either it sees started, or this sees it
                if entry.removed or self._stop_requested:
                    return
                entry.started = True
            if not grid.begin(clock.monotonic_ns()):
                return  # waited a whole period for a worker: skipped, counted
            try:
                entry.update()
            except BaseException as error:  # noqa: BLE001 - even SystemExit: one grid's
                self._failed(entry, error)  # failure, not the worker's end
            else:
                grid.succeeded()
                entry.retry_at = None
                grid.advance(clock.monotonic_ns())
        finally:
            self._finish(entry)

    def _failed(self, entry: _Entry, error: BaseException) -> None:
        grid = entry.grid
        streak = grid.failed(error)
        now = self._clock.monotonic_ns()
        grid.advance(now)
        if self._backoff_after is not None and streak >= self._backoff_after:
            delay = min(self._max_backoff_ns,
                        self._backoff_ns << min(streak - self._backoff_after, 40))
            entry.retry_at = grid.hold(now + delay)
            logger.warning("%s%d failures in a row; next try in %.3g s", grid.label, streak,
                           ((entry.retry_at or now) - now) / NS_PER_S)

    def _finish(self, entry: _Entry) -> None:
        """After an update (or instead of it, at stop): free the grid for its next slot,
        or run its ``then()`` if it was removed.  Idempotent."""
        with self._lock:
            if not entry.busy:
                return
            entry.busy = entry.started = False
            then = entry.then if entry.removed else None
            entry.then = None
            if entry.removed:
                if self._removing.get(entry.key) is entry:
                    del self._removing[entry.key]
            else:
                self._dirty.append(entry)
            entry.idle.set()
        self._wakeup.set()
        if then is not None:
            then()

    def halt(self) -> None:
        """Stop handing out updates: none begins from now on; those running go on.
        Idempotent.  The ``then()`` of removed grids run here if no worker ran them yet;
        due calls of :meth:`call_later` are dropped.  :meth:`stop` halts and waits."""
        with self._lock:
            self._stop_requested = True
            waiting = [entry for entry in (*self._entries.values(), *self._removing.values())
                       if entry.busy and not entry.started]
        self._wakeup.set()
        dropped = self._pool.close()
        for entry in waiting:  # handed out, never begun: nothing runs them now
            self._finish(entry)
        for job in dropped:
            if isinstance(job, _Then):
                job()

    def stop(self, timeout: float = 10.0) -> bool:
        """:meth:`halt`, then wait up to ``timeout`` s for the running updates and end the
        workers.  Returns whether every worker ended.  Idempotent; an update running is
        not interrupted."""
        deadline = time.monotonic() + timeout
        self.halt()
        return self._pool.join(deadline)

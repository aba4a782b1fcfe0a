"""Tests of mqsync.scheduler.MultiScheduler: many grids, one timekeeper, a pool of workers.

Most tests run on :class:`QuiescentClock`: fake time that moves only while every update
has finished or is known to block, so which slot each update gets is exact and no test
waits for real time to pass.  A few short tests use the real clock where only real threads
show the behaviour (idle threads ending, stop's timeout); they assert counts and order,
never durations.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import random
import threading
from collections import Counter, defaultdict
from typing import Callable, Hashable, Iterator

import pytest

from mqsync.scheduler import NS_PER_S, MultiScheduler, PoolStats
from tests._support import wait_until

S = NS_PER_S
MS = 1_000_000
T0 = 5_000 * S  # the fake monotonic clock's start
WALL0 = 1_700_000_123 * S + 300 * MS  # the fake wall clock at T0: ...123.3 s
REAL_TIMEOUT = 10.0  # seconds of real time any wait of a test may take before it fails
NAME = "multi"
WORKER_PREFIX = f"mqsync-{NAME}-update"


def ns(seconds: float) -> int:
    """``seconds`` after the fake clock's start, in monotonic ns."""
    return T0 + round(seconds * S)


def rel(starts: list[int]) -> list[float]:
    """Monotonic ns as milliseconds after the fake clock's start (exact for whole ms)."""
    return [(start - T0) / MS for start in starts]


class QuiescentClock:
    """A :class:`~mqsync.scheduler.Clock` for a MultiScheduler whose time moves only while
    the scheduler is quiescent.

    Only the timekeeper calls :meth:`wait`.  It jumps to its timeout (plus ``overshoot()``
    ns, a late wake-up) once nothing runs: every worker that began a job (it read the
    clock) has set the scheduler's wake-up event at its end, unless its update is known to
    block (:meth:`blocking`); every grid whose update was handed out blocks in it; nothing
    waits in the pool's queue unless every thread blocks; no expected call (:meth:`expect`)
    that is due is unfinished.  So the scheduler has taken in every update's end before
    time moves on.  Actions scheduled with :meth:`at` run on the way, at their time, in the
    timekeeper's thread.  Time never moves past ``end``: there the clock freezes and sets
    :attr:`ended`, and the test reads the counters of a system at rest.
    """

    def __init__(self, *, end: float):
        self._cond = threading.Condition()
        self._mono = T0
        self._wall_offset = WALL0 - T0
        self.end_ns = ns(end)
        self.ended = threading.Event()
        self.hooked = threading.Event()  # the timekeeper waited once: its event is known
        self.overshoot: Callable[[], int] = lambda: 0
        self._scheduler: MultiScheduler | None = None
        self._hooked: threading.Event | None = None
        self._pending: set[threading.Thread] = set()  # workers between begin and wake-up
        # worker -> (key of its update, the event it waits for)
        self._blocked: dict[threading.Thread, tuple[Hashable, threading.Event]] = {}
        self._expected: list[tuple[int, threading.Event]] = []
        self._actions: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._version = 0  # bumped by every change the quiescence check depends on

    def attach(self, scheduler: MultiScheduler) -> None:
        self._scheduler = scheduler

    # -- the Clock protocol -----------------------------------------------------------------

    def monotonic_ns(self) -> int:
        with self._cond:
            thread = threading.current_thread()
            # A worker reads the clock first in begin(): from then on it counts as running
            # until it set the wake-up event at the end of its job.
            if thread not in self._pending and thread.name.startswith(WORKER_PREFIX):
                self._pending.add(thread)
                self._bump()
            return self._mono

    def wall_ns(self) -> int:
        with self._cond:
            return self._mono + self._wall_offset

    def wait(self, event: threading.Event, timeout_s: float | None) -> bool:
        self._hook(event)
        with self._cond:
            target = None if timeout_s is None else self._mono + round(timeout_s * S)
        while True:
            if event.is_set():
                return True
            quiet, version = self._quiescent()
            if not quiet:
                with self._cond:
                    if not event.is_set() and version == self._version:
                        self._cond.wait(0.005)  # a change notifies at once
                continue
            action = None
            with self._cond:
                if version != self._version or event.is_set():
                    continue
                when = self._actions[0][0] if self._actions else None
                if when is not None and (target is None or when <= target) \
                        and when <= self.end_ns:
                    _, _, action = heapq.heappop(self._actions)
                    self._mono = max(self._mono, when)
                elif target is not None and target <= self.end_ns:
                    self._mono = max(self._mono, target + self.overshoot())
                    return False
                else:
                    self.ended.set()
            if action is not None:
                action()
            elif event.wait(0.05):  # frozen at the end: only the test moves things now
                return True

    # -- what tests use -----------------------------------------------------------------------

    def now(self) -> int:
        """The fake monotonic time, read without counting as a worker's clock read."""
        with self._cond:
            return self._mono

    def at(self, seconds: float, action: Callable[[], None]) -> None:
        """Run ``action`` in the timekeeper's thread when the fake time reaches ``seconds``."""
        self.at_ns(ns(seconds), action)

    def at_ns(self, when: int, action: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._actions, (when, next(self._seq), action))
            self._bump()

    @contextlib.contextmanager
    def blocking(self, key: Hashable, gate: threading.Event) -> Iterator[None]:
        """Mark the calling worker, running ``key``'s update, as blocked until ``gate`` is
        set: time may move meanwhile.  From the moment ``gate`` is set it counts as running
        again (even before its thread woke up)."""
        thread = threading.current_thread()
        with self._cond:
            self._blocked[thread] = (key, gate)
            self._bump()
        try:
            yield
        finally:
            with self._cond:
                del self._blocked[thread]
                self._bump()

    def expect(self, seconds: float) -> threading.Event:
        """An event a call due at ``seconds`` (e.g. by call_later) sets when it is done:
        time does not move past ``seconds`` until then."""
        done = threading.Event()
        with self._cond:
            self._expected.append((ns(seconds), done))
        return done

    def done(self, event: threading.Event) -> None:
        """Set an event of :meth:`expect` (and let the clock look again at once)."""
        event.set()
        with self._cond:
            self._bump()

    # -- inside ------------------------------------------------------------------------------

    def _bump(self) -> None:
        self._version += 1
        self._cond.notify_all()

    def _hook(self, event: threading.Event) -> None:
        """Learn when a worker sets the wake-up event: the end of its job."""
        if self._hooked is event:
            return
        original = event.set

        def set_and_tell() -> None:
            original()
            with self._cond:
                self._pending.discard(threading.current_thread())
                self._bump()

        event.set = set_and_tell  # type: ignore[method-assign]
        self._hooked = event
        self.hooked.set()

    def _quiescent(self) -> tuple[bool, int]:
        """Whether nothing runs that could change the schedule, and the state version."""
        scheduler = self._scheduler
        assert scheduler is not None, "attach() the scheduler first"
        with self._cond:
            version = self._version
            blocked = {thread: key for thread, (key, gate) in self._blocked.items()
                       if not gate.is_set()}
            if not self._pending <= blocked.keys():
                return False, version
            if any(when <= self._mono and not done.is_set() for when, done in self._expected):
                return False, version
            blocked_keys = list(blocked.values())
        pool = scheduler.pool_stats()
        if pool.queued:
            # Due calls wait in the queue: quiet only while every thread blocks.  (An idle
            # thread may be about to take one; the pool's bound is not trusted.)
            quiet = len(blocked_keys) >= pool.threads
        else:
            # Every grid with an update due or running (handed out, perhaps not yet begun)
            # is one whose update blocks.
            keys = scheduler.keys()
            quiet = all(key in blocked_keys or scheduler.wait_idle(key, 0) for key in keys)
        return quiet, version


class Recorder:
    """Update functions that record when each update began (fake ns), which updates ran
    at once, and that block or fail on demand."""

    def __init__(self, clock: QuiescentClock):
        self.clock = clock
        self._lock = threading.Lock()
        self.starts: dict[Hashable, list[int]] = defaultdict(list)
        self.ends: dict[Hashable, list[int]] = defaultdict(list)
        self.threads: dict[Hashable, list[str]] = defaultdict(list)
        self.log: list[tuple[str, Hashable, int]] = []
        self.running = 0
        self.peak_running = 0
        self.at_start: list[tuple[int, int]] = []  # (fake ns, updates running) at each start
        self.overlaps: list[Hashable] = []
        self.problems: list[str] = []
        self._active: Counter[Hashable] = Counter()
        self._gates: dict[tuple[Hashable, int], threading.Event] = {}

    def block(self, key: Hashable, index: int, until: float | None) -> threading.Event:
        """Let update ``index`` of ``key`` block until fake time ``until`` (None: until
        the test sets the returned event)."""
        gate = threading.Event()
        self._gates[(key, index)] = gate
        if until is not None:
            self.clock.at(until, gate.set)
        return gate

    def release_all(self) -> None:
        for gate in list(self._gates.values()):
            gate.set()

    def update(
        self,
        key: Hashable,
        *,
        takes: Callable[[int], float] | None = None,
        fail: Callable[[int], Exception | None] | None = None,
        during: Callable[[int], None] | None = None,
    ) -> Callable[[], None]:
        """``key``'s update: update ``i`` blocks for ``takes(i)`` fake seconds (or until its
        :meth:`block` gate opens), calls ``during(i)``, raises ``fail(i)`` if not None."""
        clock = self.clock

        def update() -> None:
            now = clock.monotonic_ns()
            # The updates of the timekeeper's first round are handed out before its first
            # wait() shows the clock the wake-up event: they end only after that.
            if not clock.hooked.wait(REAL_TIMEOUT):
                self.problems.append("the timekeeper never waited")
            with self._lock:
                index = len(self.starts[key])
                self.starts[key].append(now)
                self.threads[key].append(threading.current_thread().name)
                self.log.append(("start", key, index))
                self._active[key] += 1
                if self._active[key] > 1:
                    self.overlaps.append(key)
                self.running += 1
                self.peak_running = max(self.peak_running, self.running)
                self.at_start.append((now, self.running))
            try:
                if during is not None:
                    during(index)
                gate = self._gates.get((key, index))
                duration = takes(index) if takes is not None else 0
                if gate is None and duration:
                    gate = threading.Event()
                    self._gates[(key, index)] = gate
                    clock.at_ns(now + round(duration * S), gate.set)
                if gate is not None:
                    with clock.blocking(key, gate):
                        if not gate.wait(REAL_TIMEOUT):
                            self.problems.append(f"update {index} of {key!r} never released")
                error = fail(index) if fail is not None else None
                if error is not None:
                    raise error
            finally:
                with self._lock:
                    self._active[key] -= 1
                    self.running -= 1
                    self.ends[key].append(clock.now())
                    self.log.append(("end", key, index))

        return update


@contextlib.contextmanager
def running(scheduler: MultiScheduler, recorder: Recorder | None = None) -> Iterator[None]:
    """Run ``scheduler``'s timekeeper in a thread; on leaving, open every gate, stop and
    join it, and check that every worker ended."""
    timekeeper = threading.Thread(target=scheduler.run, name="test-timekeeper")
    timekeeper.start()
    stopped = False
    try:
        yield
    finally:
        if recorder is not None:
            recorder.release_all()
        stopped = scheduler.stop(timeout=REAL_TIMEOUT)
        timekeeper.join(REAL_TIMEOUT)
    assert stopped, "a worker thread did not end"
    assert not timekeeper.is_alive()
    assert not scheduler.running
    if recorder is not None:
        assert recorder.problems == []


def fake(end: float, **kwargs) -> tuple[QuiescentClock, MultiScheduler, Recorder]:
    """A MultiScheduler named NAME on a QuiescentClock frozen at ``end``, and a Recorder."""
    clock = QuiescentClock(end=end)
    scheduler = MultiScheduler(clock=clock, name=NAME, **kwargs)
    clock.attach(scheduler)
    return clock, scheduler, Recorder(clock)


def run_until_end(clock: QuiescentClock, scheduler: MultiScheduler) -> None:
    """Wait (real time, bounded) until the fake clock froze at its end."""
    assert clock.ended.wait(REAL_TIMEOUT), (
        f"fake time stuck at {(clock.now() - T0) / S} s: {scheduler.pool_stats()}")


def on_grid(starts: list[int], lateness: tuple[int, ...], t0: int, period: int) -> list[int]:
    """The slot index of each start, asserting it lies on ``t0 + k·period`` plus its
    recorded lateness (less than a period)."""
    assert len(starts) == len(lateness)
    slots = []
    for start, late in zip(starts, lateness):
        assert 0 <= late < period
        k, remainder = divmod(start - late - t0, period)
        assert remainder == 0, f"start {start} - lateness {late} is not on the grid"
        slots.append(k)
    assert slots == sorted(set(slots)), "slots must rise strictly"
    return slots


# -- 1. every grid keeps its own grid ------------------------------------------------------


@pytest.mark.timeout(60)
def test_many_grids_keep_their_own_grids_without_drift_and_record_lateness():
    clock, ms, rec = fake(end=300)
    rng = random.Random(7)
    overshoots: list[int] = []

    def overshoot() -> int:
        overshoots.append(rng.randrange(0, 40 * MS))
        return overshoots[-1]

    clock.overshoot = overshoot
    periods = {"p250": 250 * MS, "p700": 700 * MS, "p1000": S, "p1300": 1300 * MS,
               "p2900": 2900 * MS}
    t0 = {key: T0 for key in periods}
    history = 4096  # every start's lateness is kept
    for key, period in periods.items():
        ms.add(key, rec.update(key), period / S, history_size=history)

    def add_late(key: str, period: int) -> None:
        t0[key] = clock.now()
        ms.add(key, rec.update(key), period / S, history_size=history)

    # Two grids join later, off the others' phases; one more is aligned to the wall clock.
    periods["late"], periods["late2"] = 900 * MS, 333 * MS
    clock.at(3.21, lambda: add_late("late", 900 * MS))
    clock.at(17.777, lambda: add_late("late2", 333 * MS))
    periods["aligned"] = S
    t0["aligned"] = T0 + 700 * MS  # the wall clock reads ...123.3 s at T0
    ms.add("aligned", rec.update("aligned"), 1, align=True, history_size=history)

    with running(ms, rec):
        run_until_end(clock, ms)
        stats = {key: ms.grid(key).stats() for key in periods}
        lateness = {key: ms.grid(key).recent_lateness_ns() for key in periods}

    assert rec.overlaps == []
    for key, period in periods.items():
        starts = rec.starts[key]
        slots = on_grid(starts, lateness[key], t0[key], period)
        # Every slot up to the end ran: none missed, none twice, no drift over 300 s.
        last = (clock.end_ns - t0[key]) // period
        assert slots[: last + 1] == list(range(last + 1)), key
        st = stats[key]
        assert (st.updates, st.missed_slots, st.overruns, st.failures) == (len(starts), 0, 0, 0)
        assert st.last_lateness_ns == lateness[key][-1]
        assert st.period_ns == period
    # The lateness recorded is the fake clock's late wake-ups, nothing added to them.
    assert max(max(lat) for lat in lateness.values()) < 40 * MS
    assert any(any(lat) for lat in lateness.values())
    assert ms.keys() == ["p250", "p700", "p1000", "p1300", "p2900", "aligned", "late", "late2"]


# -- 2. one update at a time per grid; overruns skip ------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "release, resumes, missed",
    [
        (5.5, 6, 3),  # slots 3, 4, 5 came while it ran
        (5.0, 5, 2),  # ended exactly on slot 5: that one runs, on time
        (2.999, 3, 0),  # ended before the next slot: nothing skipped
    ],
)
def test_a_slot_that_comes_while_its_update_runs_is_skipped_and_counted(
        release, resumes, missed):
    clock, ms, rec = fake(end=8)
    rec.block("a", 2, until=release)
    ms.add("a", rec.update("a"), 1)
    ms.add("b", rec.update("b"), 0.5)
    seen: list[tuple[bool, bool]] = []
    clock.at(2.5, lambda: seen.append((ms.busy("a"), ms.busy("b"))))

    with running(ms, rec):
        run_until_end(clock, ms)
        stats = ms.grid("a").stats()

    assert rel(rec.starts["a"]) == [0, 1000, 2000, *range(resumes * 1000, 9000, 1000)]
    assert rec.ends["a"][2] == ns(release)
    assert (stats.missed_slots, stats.overruns) == (missed, 1 if missed else 0)
    assert stats.updates == len(rec.starts["a"])
    # Never two updates of one grid at once, never a burst of late ones after the long one.
    assert rec.overlaps == []
    assert ms.grid("a").recent_lateness_ns() == (0,) * stats.updates
    assert seen == [(True, False)]
    assert rel(rec.starts["b"]) == [500 * k for k in range(17)]


# -- 3. a blocked update delays no other grid ---------------------------------------------


@pytest.mark.timeout(60)
def test_an_update_that_blocks_holds_one_worker_and_delays_no_other_grid():
    clock, ms, rec = fake(end=20, max_workers=3)
    rec.block("stuck", 1, until=10.5)
    ms.add("stuck", rec.update("stuck"), 1)
    ms.add("fast", rec.update("fast"), 0.3)
    ms.add("slow", rec.update("slow"), 0.7)
    ms.add("busy", rec.update("busy", takes=lambda i: 0.2), 0.5)  # each update takes 0.2 s
    seen: list[tuple] = []
    clock.at(5, lambda: seen.append((ms.busy("stuck"), ms.wait_idle("stuck", 0),
                                      ms.wait_idle("fast", 0))))

    with running(ms, rec):
        run_until_end(clock, ms)
        stats = {key: ms.grid(key).stats() for key in ("stuck", "fast", "slow", "busy")}

    # The others kept every slot while "stuck" blocked from 1 s to 10.5 s.
    assert rel(rec.starts["fast"]) == [300 * k for k in range(67)]
    assert rel(rec.starts["slow"]) == [700 * k for k in range(29)]
    assert rel(rec.starts["busy"]) == [500 * k for k in range(41)]
    for key in ("fast", "slow", "busy"):
        assert (stats[key].missed_slots, stats[key].overruns) == (0, 0), key
    # Its own slots 2..10 came while it blocked: skipped and counted; it resumes on its grid.
    assert rel(rec.starts["stuck"]) == [0, 1000, *range(11000, 21000, 1000)]
    assert (stats["stuck"].missed_slots, stats["stuck"].overruns) == (9, 1)
    assert seen == [(True, False, True)]
    assert rec.overlaps == []
    assert ms.pool_stats().peak_threads <= 3


# -- 4. the pool's bounds ------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_when_every_worker_blocks_due_updates_wait_and_a_whole_period_late_one_is_skipped():
    clock, ms, rec = fake(end=8, max_workers=2)
    rec.block("a", 0, until=4.5)  # holds worker 1 from 0 s to 4.5 s
    rec.block("b", 0, until=0.4)  # holds worker 2 from 0 s to 0.4 s ...
    rec.block("b", 1, until=4.2)  # ... and from 2.5 s to 4.2 s
    ms.add("a", rec.update("a"), 10)
    ms.add("b", rec.update("b"), 2.5)
    ms.add("c", rec.update("c"), 1)
    pools: list[PoolStats] = []
    clock.at(3.5, lambda: pools.append(ms.pool_stats()))

    with running(ms, rec):
        run_until_end(clock, ms)
        stats = ms.grid("c").stats()
        lateness = ms.grid("c").recent_lateness_ns()
        pool = ms.pool_stats()

    # c's slot 0 waited 0.4 s for a worker: it ran late, and that was recorded.  Its slot 3
    # waited from 3 s to 4.2 s, more than a period: skipped with slot 4, never run late.
    assert rel(rec.starts["c"]) == [400, 1000, 2000, 5000, 6000, 7000, 8000]
    assert lateness == (400 * MS, 0, 0, 0, 0, 0, 0)
    assert (stats.updates, stats.missed_slots, stats.overruns) == (7, 2, 1)
    assert rel(rec.starts["b"]) == [0, 2500, 5000, 7500]
    [during] = pools
    assert (during.threads, during.queued, during.max_threads) == (2, 1, 2)
    # Twice every worker was held (0 s, 3 s).  (A thread that just finished may count as
    # busy for a moment when the next update comes, so this is a lower bound.)
    assert pool.saturated >= 2
    assert pool.peak_threads == pool.started_threads == 2
    assert rec.peak_running == 2
    assert rec.overlaps == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("max_workers, seed", [(1, 1), (3, 11), (3, 12), (5, 13)])
def test_never_more_updates_at_once_than_max_workers_and_every_start_on_its_grid(
        max_workers, seed):
    clock, ms, rec = fake(end=30, max_workers=max_workers)
    rng = random.Random(seed)
    periods = {f"g{i}": (400 + 150 * i) * MS for i in range(8)}
    durations = {key: [rng.choice([0, 0.1, 0.3, 0.9, 1.7]) for _ in range(200)]
                 for key in periods}
    for key, period in periods.items():
        ms.add(key, rec.update(key, takes=lambda i, key=key: durations[key][i]), period / S)

    with running(ms, rec):
        run_until_end(clock, ms)
        stats = {key: ms.grid(key).stats() for key in periods}
        lateness = {key: ms.grid(key).recent_lateness_ns() for key in periods}
        pool = ms.pool_stats()

    assert rec.peak_running == max_workers
    assert pool.peak_threads == pool.max_threads == max_workers
    assert pool.saturated > 0
    assert rec.overlaps == []
    for key, period in periods.items():
        starts = rec.starts[key]
        slots = on_grid(starts, lateness[key], T0, period)
        st = stats[key]
        assert st.updates == len(starts)
        # Every slot before the last start ran or was counted as missed; the slots counted
        # after it had passed before the clock stopped.
        accounted = st.updates + st.missed_slots
        assert slots[-1] + 1 <= accounted <= (clock.now() - T0) // period + 1, key
        ends = [start + round(d * S) for start, d in zip(starts, durations[key])]
        # No slot that had passed when the previous update ended ran after it.
        for end, slot in zip(ends, slots[1:]):
            assert T0 + slot * period >= end


@pytest.mark.timeout(60)
def test_pool_stats_busy_counts_the_updates_that_run_and_queued_those_that_wait():
    clock, ms, rec = fake(end=2, max_workers=1)
    rec.block("a", 0, until=1.5)
    for key in "abc":
        ms.add(key, rec.update(key), 10)
    seen: list[tuple[PoolStats, int]] = []
    clock.at(1, lambda: seen.append((ms.pool_stats(), rec.running)))

    with running(ms, rec):
        run_until_end(clock, ms)

    [(pool, running_now)] = seen
    assert (pool.threads, pool.queued) == (1, 2)
    assert pool.busy == running_now == 1


@pytest.mark.timeout(60)
def test_idle_threads_end_after_idle_timeout_and_start_again_on_demand():
    # Real clock and real idle timeouts: counts and order only.
    ms = MultiScheduler(max_workers=2, name=NAME, idle_timeout=0.05)
    done = [threading.Event() for _ in range(3)]
    threads: list[str] = []

    def call(i: int) -> Callable[[], None]:
        def function() -> None:
            threads.append(threading.current_thread().name)
            done[i].set()
        return function

    with running(ms):
        ms.call_later(0, call(0))
        assert done[0].wait(REAL_TIMEOUT)
        assert wait_until(lambda: ms.pool_stats().threads == 0, REAL_TIMEOUT)
        assert ms.pool_stats().started_threads == 1
        ms.call_later(0, call(1))
        assert done[1].wait(REAL_TIMEOUT)
        assert wait_until(lambda: ms.pool_stats().threads == 0, REAL_TIMEOUT)
        ms.call_later(0, call(2))
        assert done[2].wait(REAL_TIMEOUT)
        pool = ms.pool_stats()
    assert pool.started_threads == 3
    assert pool.peak_threads == 1
    assert [name.startswith(WORKER_PREFIX) for name in threads] == [True] * 3
    assert len(set(threads)) == 3  # each call on a thread started for it


@pytest.mark.timeout(60)
def test_a_larger_max_workers_takes_effect_for_the_next_updates():
    clock, ms, rec = fake(end=6, max_workers=1)
    rec.block("a", 0, until=5.5)  # holds the only worker
    ms.add("a", rec.update("a"), 10)
    clock.at(1, lambda: setattr(ms, "max_workers", 2))
    clock.at(1.5, lambda: ms.add("b", rec.update("b"), 1))

    with running(ms, rec):
        run_until_end(clock, ms)
        pool = ms.pool_stats()

    assert rel(rec.starts["b"]) == [1500, 2500, 3500, 4500, 5500]
    assert ms.max_workers == pool.max_threads == 2
    assert pool.peak_threads == pool.started_threads == 2
    assert pool.saturated == 0


@pytest.mark.timeout(60)
def test_a_larger_max_workers_starts_the_updates_that_wait_already():
    clock, ms, rec = fake(end=6, max_workers=1)
    rec.block("a", 0, until=5.5)
    ms.add("a", rec.update("a"), 10)
    ms.add("b", rec.update("b"), 1)
    clock.at(0.5, lambda: setattr(ms, "max_workers", 2))

    with running(ms, rec):
        run_until_end(clock, ms)

    # b's slot 0 waits for a worker; at 0.5 s one more is allowed: it runs then, 0.5 s late.
    assert rel(rec.starts["b"]) == [500, 1000, 2000, 3000, 4000, 5000, 6000]


@pytest.mark.timeout(60)
def test_a_smaller_max_workers_bounds_the_updates_that_run_at_once():
    clock, ms, rec = fake(end=4, max_workers=3)
    for key in "abc":
        ms.add(key, rec.update(key, takes=lambda i: 0.5), 1)  # every update takes 0.5 s
    clock.at(0.7, lambda: setattr(ms, "max_workers", 1))

    with running(ms, rec):
        run_until_end(clock, ms)

    assert max(running for _, running in rec.at_start) == 3  # before the change
    assert max(running for at, running in rec.at_start if at > ns(0.7)) <= 1


# -- 5. failures and backoff ---------------------------------------------------------------


@pytest.mark.timeout(60)
def test_failures_back_off_doubling_up_to_max_backoff_and_a_success_ends_it():
    clock, ms, rec = fake(end=21, backoff_after=3, backoff=2, max_backoff=5)
    retry_at_start: list[int | None] = []
    failing = 6

    def fail(i: int) -> Exception | None:
        return ValueError(f"boom {i}") if i < failing else None

    def during(i: int) -> None:
        retry_at_start.append(ms.retry_at("flaky"))

    ms.add("flaky", rec.update("flaky", fail=fail, during=during), 1)
    ms.add("fine", rec.update("fine"), 1)
    seen: list[tuple] = []

    def look() -> None:
        st = ms.grid("flaky").stats()
        seen.append((st.failures, st.consecutive_failures, st.last_error, st.held_slots,
                     ms.retry_at("flaky")))

    clock.at(10, look)

    with running(ms, rec):
        run_until_end(clock, ms)
        stats = ms.grid("flaky").stats()
        retry_at_end = ms.retry_at("flaky")
        fine = ms.grid("fine").stats()

    # Fails at 0, 1, 2: backs off 2 s (slot 3 held); fails at 4: 4 s (5-7 held); at 8:
    # 8 s capped to 5 s (9-12 held); at 13: 5 s (14-17 held); succeeds at 18, then every slot.
    assert rel(rec.starts["flaky"]) == [0, 1000, 2000, 4000, 8000, 13000, 18000, 19000,
                                        20000, 21000]
    assert retry_at_start == [None, None, None, ns(4), ns(8), ns(13), ns(18), None, None, None]
    assert seen == [(5, 5, "ValueError: boom 4", 1 + 3 + 4, ns(13))]
    assert (stats.failures, stats.consecutive_failures, stats.held_slots) == (6, 0, 12)
    assert (stats.updates, stats.missed_slots) == (10, 0)
    assert stats.last_error == "ValueError: boom 5"
    assert retry_at_end is None
    # Counted per grid: the other one never failed and kept every slot.
    assert (fine.failures, fine.held_slots, fine.updates) == (0, 0, 22)
    assert ms.retry_at("fine") is None
    assert ms.retry_at("no such grid") is None


@pytest.mark.timeout(60)
def test_retry_at_is_the_time_of_the_next_try():
    clock, ms, rec = fake(end=4, backoff_after=1, backoff=1.5, max_backoff=5)
    retry_at: list[int | None] = []

    def fail(i: int) -> Exception | None:
        return ValueError("once") if i == 0 else None

    ms.add("a", rec.update("a", fail=fail, during=lambda i: retry_at.append(ms.retry_at("a"))),
           1)
    with running(ms, rec):
        run_until_end(clock, ms)

    # Failed at 0 s: backs off 1.5 s, so the next try is slot 2 s.
    assert rel(rec.starts["a"]) == [0, 2000, 3000, 4000]
    assert retry_at[1] == rec.starts["a"][1]


@pytest.mark.timeout(60)
def test_without_backoff_after_a_failing_grid_keeps_every_slot():
    clock, ms, rec = fake(end=9, backoff_after=None)
    ms.add("a", rec.update("a", fail=lambda i: RuntimeError("no")), 1)

    with running(ms, rec):
        run_until_end(clock, ms)
        stats = ms.grid("a").stats()

    assert rel(rec.starts["a"]) == [1000 * k for k in range(10)]
    assert (stats.failures, stats.consecutive_failures, stats.held_slots) == (10, 10, 0)
    assert stats.last_error == "RuntimeError: no"
    assert ms.retry_at("a") is None


@pytest.mark.timeout(60)
def test_a_failure_is_logged_and_a_failing_timer_keeps_its_worker(caplog):
    caplog.set_level(logging.ERROR, logger="mqsync.scheduler")
    clock, ms, rec = fake(end=3, backoff_after=None)
    ms.add("a", rec.update("a", fail=lambda i: KeyError("k") if i == 1 else None), 1)
    first, second = clock.expect(1.5), clock.expect(2.0)

    def broken() -> None:
        clock.done(first)
        raise ValueError("timer bug")

    ms.call_later(1.5, broken)
    ms.call_later(2.0, lambda: clock.done(second))

    with running(ms, rec):
        run_until_end(clock, ms)

    assert second.is_set()
    assert rel(rec.starts["a"]) == [0, 1000, 2000, 3000]
    messages = [r.getMessage() for r in caplog.records]
    assert "a: update() failed (1 in a row)" in messages
    assert f"{WORKER_PREFIX}: a scheduled job failed" in messages


# -- 6. period changes ---------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_shorter_period_takes_effect_at_once_during_a_long_wait():
    clock, ms, rec = fake(end=13)
    grid = ms.add("a", rec.update("a"), 100)
    clock.at(10, lambda: setattr(grid, "period", 1))

    with running(ms, rec):
        run_until_end(clock, ms)

    # Anchored at the last slot that ran (0 s): the next one at or after 10 s is 10 s.
    assert rel(rec.starts["a"]) == [0, 10000, 11000, 12000, 13000]
    assert grid.stats().period_ns == S


@pytest.mark.timeout(60)
def test_a_longer_period_counts_from_the_last_slot_that_ran():
    clock, ms, rec = fake(end=30)
    grid = ms.add("a", rec.update("a"), 1)
    clock.at(2.5, lambda: setattr(grid, "period", "10s"))

    with running(ms, rec):
        run_until_end(clock, ms)

    assert rel(rec.starts["a"]) == [0, 1000, 2000, 12000, 22000]


@pytest.mark.timeout(60)
def test_a_period_change_while_the_update_runs_applies_after_it():
    clock, ms, rec = fake(end=30)
    rec.block("a", 3, until=4.2)
    grid = ms.add("a", rec.update("a"), 1)
    clock.at(3.5, lambda: setattr(grid, "period", 10))

    with running(ms, rec):
        run_until_end(clock, ms)

    # Slot 4 passed during the update at 3 s (on the old grid); the new grid continues
    # from the slot that ran, 3 s: 13 s, 23 s.
    assert rel(rec.starts["a"]) == [0, 1000, 2000, 3000, 13000, 23000]
    assert rec.overlaps == []


@pytest.mark.timeout(60)
def test_period_none_pauses_a_grid_until_a_period_is_set_again():
    clock, ms, rec = fake(end=23)
    paused = ms.add("a", rec.update("a"), 1)
    later = ms.add("b", rec.update("b"), None)  # no period yet: waits
    clock.at(5.5, lambda: setattr(paused, "period", None))
    clock.at(20, lambda: setattr(paused, "period", 1))
    clock.at(7.25, lambda: setattr(later, "period", 5))
    seen: list[float | None] = []
    clock.at(10, lambda: seen.append(paused.period))

    with running(ms, rec):
        run_until_end(clock, ms)
        stats = paused.stats()

    assert rel(rec.starts["a"]) == [0, 1000, 2000, 3000, 4000, 5000, 20000, 21000, 22000,
                                    23000]
    assert rel(rec.starts["b"]) == [7250, 12250, 17250, 22250]
    assert seen == [None]
    # A pause is not an overrun: nothing was missed.
    assert (stats.missed_slots, stats.overruns) == (0, 0)


# -- 7. remove, call_later, add ------------------------------------------------------------


@pytest.mark.timeout(60)
def test_remove_an_idle_grid_runs_then_at_once_on_a_worker():
    clock, ms, rec = fake(end=8)
    ms.add("a", rec.update("a"), 1)
    ms.add("b", rec.update("b"), 1)
    thens: list[tuple[str, int]] = []
    removed: list[bool] = []
    then_done = clock.expect(3.5)

    def then() -> None:
        thens.append((threading.current_thread().name, clock.now()))
        clock.done(then_done)

    def remove() -> None:
        removed.append(ms.remove("a", then=then))
        removed.append(ms.remove("a", then=then))  # no such grid any more

    clock.at(3.5, remove)

    with running(ms, rec):
        run_until_end(clock, ms)

    assert removed == [True, False]
    assert rel(rec.starts["a"]) == [0, 1000, 2000, 3000]
    assert len(thens) == 1
    assert thens[0][0].startswith(WORKER_PREFIX)
    assert thens[0][1] == ns(3.5)
    assert ms.keys() == ["b"]
    with pytest.raises(KeyError):
        ms.grid("a")
    assert len(rec.starts["b"]) == 9


@pytest.mark.timeout(60)
def test_remove_a_busy_grid_runs_then_once_after_its_update_returned():
    clock, ms, rec = fake(end=8)
    rec.block("a", 2, until=4.5)
    ms.add("a", rec.update("a"), 1)
    then_called = threading.Event()
    thens: list[str] = []

    def then() -> None:
        with rec._lock:
            rec.log.append(("then", "a", len(thens)))
        thens.append(threading.current_thread().name)
        then_called.set()

    clock.at(3, lambda: ms.remove("a", then=then))
    clock.at(4, lambda: rec.log.append(("blocked at 4 s", "a", len(thens))))

    with running(ms, rec):
        run_until_end(clock, ms)
        assert then_called.wait(REAL_TIMEOUT)

    assert rel(rec.starts["a"]) == [0, 1000, 2000]  # no update began after remove()
    assert [entry for entry in rec.log if entry[1] == "a"][-4:] == [
        ("start", "a", 2), ("blocked at 4 s", "a", 0), ("end", "a", 2), ("then", "a", 0)]
    assert len(thens) == 1 and thens[0].startswith(WORKER_PREFIX)


@pytest.mark.timeout(60)
def test_busy_and_wait_idle_still_see_the_running_update_of_a_removed_grid():
    clock, ms, rec = fake(end=3)
    gate = rec.block("a", 0, until=None)
    ms.add("a", rec.update("a"), 10)
    with running(ms, rec):
        run_until_end(clock, ms)
        assert ms.busy("a")
        assert ms.remove("a")
        assert rec.running == 1
        assert ms.busy("a")
        assert ms.wait_idle("a", 0) is False
        gate.set()
        assert ms.wait_idle("a", REAL_TIMEOUT)


@pytest.mark.timeout(60)
def test_remove_from_inside_its_own_update_begins_no_other():
    clock, ms, rec = fake(end=5)
    thens: list[int] = []

    def during(i: int) -> None:
        if i == 1:
            ms.remove("a", then=lambda: thens.append(i))

    ms.add("a", rec.update("a", during=during), 1)

    with running(ms, rec):
        run_until_end(clock, ms)
        assert wait_until(lambda: thens == [1], REAL_TIMEOUT)

    assert rel(rec.starts["a"]) == [0, 1000]


@pytest.mark.timeout(60)
def test_call_later_calls_once_on_a_worker_and_cancel_prevents_it():
    clock, ms, rec = fake(end=6)
    calls: list[tuple[str, str, int]] = []
    done = {name: clock.expect(at) for name, at in (("soon", 0.0), ("later", 2.5))}

    def call(name: str) -> Callable[[], None]:
        def function() -> None:
            calls.append((name, threading.current_thread().name, clock.now()))
            if name in done:
                clock.done(done[name])
        return function

    ms.call_later(2.5, call("later"))
    ms.call_later("0s", call("soon"))
    cancelled = ms.call_later(1.5, call("cancelled"))
    cancelled.cancel()
    clock.at(3, lambda: ms.call_later(1, call("from 3 s")).cancel())
    ms.add("a", rec.update("a"), 1)

    with running(ms, rec):
        run_until_end(clock, ms)

    assert [(name, at) for name, _, at in calls] == [("soon", ns(0)), ("later", ns(2.5))]
    assert all(thread.startswith(WORKER_PREFIX) for _, thread, _ in calls)
    with pytest.raises(ValueError, match="delay"):
        ms.call_later(-1, call("never"))


@pytest.mark.timeout(60)
def test_cancel_stops_a_due_call_that_waits_for_a_worker():
    clock, ms, rec = fake(end=5, max_workers=1)
    rec.block("a", 0, until=3)
    ms.add("a", rec.update("a"), 10)
    calls: list[str] = []
    after = clock.expect(3.0)

    def sentinel() -> None:
        calls.append("sentinel")
        clock.done(after)

    timer = ms.call_later(1, lambda: calls.append("cancelled"))
    ms.call_later(1, sentinel)  # queued behind it on the one worker
    clock.at(2, timer.cancel)  # due, not begun: it waits for a's worker

    with running(ms, rec):
        run_until_end(clock, ms)

    assert calls == ["sentinel"]


def test_add_an_existing_key_raises_key_error_and_keeps_the_grid():
    ms = MultiScheduler(name=NAME)
    grid = ms.add(("host", 1), lambda: None, 1)
    with pytest.raises(KeyError, match=r"\('host', 1\)"):
        ms.add(("host", 1), lambda: None, 2)
    assert ms.grid(("host", 1)) is grid
    assert grid.period == 1
    assert ms.keys() == [("host", 1)]
    assert ms.remove(("host", 1)) is True
    assert ms.keys() == []
    with pytest.raises(KeyError):
        ms.grid(("host", 1))


# -- 8. stop --------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_stop_joins_every_worker_and_no_update_begins_after_it():
    # Real clock: updates every 5 ms on several grids, then stop.
    ms = MultiScheduler(max_workers=3, name=NAME)
    counts: Counter[str] = Counter()
    lock = threading.Lock()

    def update(key: str) -> Callable[[], None]:
        def run() -> None:
            with lock:
                counts[key] += 1
        return run

    for i in range(5):
        ms.add(f"g{i}", update(f"g{i}"), 0.005)
    timekeeper = threading.Thread(target=ms.run, name="test-timekeeper")
    timekeeper.start()
    try:
        assert wait_until(lambda: min(counts[f"g{i}"] for i in range(5)) >= 3, REAL_TIMEOUT)
    finally:
        stopped = ms.stop(timeout=REAL_TIMEOUT)
        timekeeper.join(REAL_TIMEOUT)
    assert stopped
    assert not timekeeper.is_alive()
    with lock:
        at_stop = dict(counts)
    assert not any(t.name.startswith(WORKER_PREFIX) for t in threading.enumerate())
    assert {key: ms.grid(key).stats().updates for key in at_stop} == at_stop
    assert ms.stop() is True  # idempotent
    ms.run()  # a stopped scheduler runs no more: returns at once
    assert dict(counts) == at_stop


@pytest.mark.timeout(60)
def test_stop_reports_an_update_blocked_past_its_timeout_and_drops_the_queued_ones(caplog):
    caplog.set_level(logging.ERROR, logger="mqsync.scheduler")
    clock, ms, rec = fake(end=3, max_workers=1)
    gate = rec.block("a", 0, until=None)  # released by the test only
    ms.add("a", rec.update("a"), 10)
    ms.add("b", rec.update("b"), 1)
    timekeeper = threading.Thread(target=ms.run, name="test-timekeeper")
    timekeeper.start()
    try:
        run_until_end(clock, ms)
        before = ms.pool_stats()
        assert ms.busy("a") and ms.wait_idle("a", 0) is False
        first = ms.stop(timeout=0.2)
    finally:
        gate.set()
        second = ms.stop(timeout=REAL_TIMEOUT)
        timekeeper.join(REAL_TIMEOUT)
    assert (before.threads, before.queued) == (1, 1)  # b waits behind the blocked a
    assert first is False
    assert second is True
    assert not timekeeper.is_alive()
    assert rel(rec.starts["a"]) == [0]
    assert rec.starts["b"] == []  # dropped by stop: never began
    assert rec.problems == []
    assert [r.getMessage() for r in caplog.records] == [
        f"{WORKER_PREFIX}: 1 update thread(s) still running after stop: {WORKER_PREFIX}-1"]


@pytest.mark.timeout(60)
def test_stop_before_run_makes_run_return_without_updates():
    ms = MultiScheduler(name=NAME)
    calls: list[int] = []
    ms.add("a", lambda: calls.append(1), 0.001)
    assert ms.stop() is True
    ms.run()
    assert calls == []
    assert ms.remove("a", then=lambda: calls.append(2)) is True
    assert calls == [2]  # stopped: no worker takes it, so it runs at once


@pytest.mark.timeout(60)
def test_run_twice_at_the_same_time_is_an_error():
    clock, ms, rec = fake(end=1)
    ms.add("a", rec.update("a"), 1)
    with running(ms, rec):
        run_until_end(clock, ms)
        assert ms.running
        with pytest.raises(RuntimeError, match="already running"):
            ms.run()


@pytest.mark.timeout(60)
def test_stop_runs_then_of_a_removed_grid_whose_update_waited_for_a_worker():
    clock, ms, rec = fake(end=3, max_workers=1)
    gate = rec.block("a", 0, until=None)
    ms.add("a", rec.update("a"), 10)
    ms.add("b", rec.update("b"), 1)
    thens: list[str] = []
    timekeeper = threading.Thread(target=ms.run, name="test-timekeeper")
    timekeeper.start()
    try:
        run_until_end(clock, ms)
        assert ms.pool_stats().queued == 1  # b waits behind a
        assert ms.remove("b", then=lambda: thens.append("b closed"))
        assert ms.stop(timeout=0.2) is False  # a still blocks
    finally:
        gate.set()
        stopped = ms.stop(timeout=REAL_TIMEOUT)
        timekeeper.join(REAL_TIMEOUT)
    assert stopped
    assert rec.starts["b"] == []
    assert thens == ["b closed"]


@pytest.mark.timeout(60)
def test_an_update_raising_a_base_exception_does_not_cost_the_pool_a_worker():
    class Fatal(BaseException):
        pass

    clock, ms, rec = fake(end=4, max_workers=1)
    dying: list[threading.Thread] = []

    def during(i: int) -> None:
        if i == 0:
            dying.append(threading.current_thread())
            raise Fatal("sys.exit() in a plugin")

    ms.add("a", rec.update("a", during=during), 10)
    ms.add("b", rec.update("b"), 1)
    with running(ms, rec):
        assert wait_until(lambda: dying and not dying[0].is_alive() or rec.starts["b"],
                          REAL_TIMEOUT)
        alive = [t for t in threading.enumerate() if t.name.startswith(WORKER_PREFIX)]
        assert ms.pool_stats().threads <= len(alive)
        run_until_end(clock, ms)
    assert rel(rec.starts["b"]) == [0, 1000, 2000, 3000, 4000]


# -- 9. bad arguments ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_workers": 0}, "max_workers must be an int >= 1, got 0"),
        ({"max_workers": -3}, "max_workers must be an int >= 1, got -3"),
        ({"max_workers": True}, "max_workers must be an int >= 1, got True"),
        ({"max_workers": 2.0}, "max_workers must be an int >= 1, got 2.0"),
        ({"backoff_after": 0}, "backoff_after must be None or an int >= 1, got 0"),
        ({"backoff_after": 1.5}, "backoff_after must be None or an int >= 1, got 1.5"),
        ({"backoff": 2, "max_backoff": 1},
         "max_backoff (1) must not be shorter than backoff (2)"),
        ({"backoff": "10s", "max_backoff": "9s"},
         "max_backoff ('9s') must not be shorter than backoff ('10s')"),
        ({"backoff": 0}, "backoff"),
        ({"idle_timeout": 0}, "idle_timeout"),
    ],
)
def test_bad_arguments_raise_value_error_with_a_clear_message(kwargs, message):
    with pytest.raises(ValueError) as info:
        MultiScheduler(**kwargs)
    assert message in str(info.value)


@pytest.mark.parametrize("value", [0, -1, False, 1.0, None])
def test_a_bad_max_workers_is_refused_and_the_old_one_kept(value):
    ms = MultiScheduler(max_workers=4)
    with pytest.raises(ValueError, match=f"max_workers must be an int >= 1, got {value!r}"):
        ms.max_workers = value
    assert ms.max_workers == 4


def test_add_refuses_a_bad_period_and_keeps_no_grid():
    ms = MultiScheduler(name=NAME)
    with pytest.raises(ValueError, match="period"):
        ms.add("a", lambda: None, 0)
    with pytest.raises(ValueError, match="offset needs align=True"):
        ms.add("a", lambda: None, 1, offset=0.5)
    assert ms.keys() == []


@pytest.mark.timeout(60)
def test_start_delay_puts_a_grid_at_a_phase_of_its_own():
    clock, ms, rec = fake(end=3)
    ms.add("now", rec.update("now"), 1)
    ms.add("later", rec.update("later"), 1, start_delay=0.25)
    ms.add("short", rec.update("short"), 0.5, start_delay="100ms")

    with running(ms, rec):
        run_until_end(clock, ms)

    assert rel(rec.starts["now"]) == [0, 1000, 2000, 3000]
    assert rel(rec.starts["later"]) == [250, 1250, 2250]
    assert rel(rec.starts["short"]) == [100, 600, 1100, 1600, 2100, 2600]
    with pytest.raises(ValueError, match="start_delay is for a grid without align"):
        ms.add("aligned", lambda: None, 1, align=True, start_delay=0.5)
    with pytest.raises(ValueError, match="start_delay"):
        ms.add("negative", lambda: None, 1, start_delay=-1)

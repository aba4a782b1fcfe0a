"""Benchmark: mqsync's Scheduler against a naive ``while: update(); sleep(period)`` loop.

Both loops run in the same process, one after the other, for the same number of updates
(``rate × seconds``), with an ``update()`` that busy-waits ``--work-ms`` and records the
monotonic time at which it began. For each loop it prints:

- drift after N periods: start of the update for slot N minus ``t0 + N·period``, at 25/50/75/
  100 % of the run. mqsync's slot N is the grid slot the update ran for (skipped slots are
  reported as missed slots, not as drift); the naive loop's i-th update is meant for slot i.
  mqsync's goal: never beyond one period; the naive loop grows linearly, by the update's work
  plus the sleep's overshoot every period.
- lateness of each update's start after its slot (p50/p99/max); for the naive loop that is its
  drift again.
- interval error: time between consecutive starts minus the period (p50/p99).
- missed slots (mqsync skips slots it could not run in time; the naive loop just falls behind).

Load conditions: idle; ``--busy``: a separate process burning a CPU core (on a 2-core machine
the other core); ``--busy-thread``: a CPU-bound Python thread in this process. The latter shows
the GIL effect: a waking thread waits for the GIL up to the switch interval
(``sys.getswitchinterval()``, 5 ms by default; change it with ``--switch-interval``). ``--all``
runs the three conditions in turn.

Usage: ``python bench/bench_interval.py --rate 100 --seconds 60 [--busy | --busy-thread | --all]``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

try:
    from mqsync.scheduler import Scheduler
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from mqsync.scheduler import Scheduler

MS = 1_000_000


def burn_until(stop: Any) -> None:
    """Keep one CPU busy until ``stop`` (an Event) is set."""
    while not stop.is_set():
        for _ in range(100_000):
            pass


def busy_work(ns: int) -> None:
    end = time.perf_counter_ns() + ns
    while time.perf_counter_ns() < end:
        pass


def run_mqsync(period_ns: int, count: int, work_ns: int) -> tuple[list[int], int]:
    """Run the Scheduler for ``count`` updates; return the start times and missed slots."""
    starts: list[int] = []
    scheduler = Scheduler(period_ns / 1e9, name="bench")

    def update() -> None:
        starts.append(time.monotonic_ns())
        busy_work(work_ns)
        if len(starts) >= count:
            scheduler.stop()

    scheduler.run(update)
    return starts, scheduler.stats().missed_slots


def run_naive(period_ns: int, count: int, work_ns: int) -> tuple[list[int], int]:
    """The loop most code starts with; return the start times and 0 (it never skips)."""
    starts: list[int] = []
    period_s = period_ns / 1e9
    while len(starts) < count:
        starts.append(time.monotonic_ns())
        busy_work(work_ns)
        time.sleep(period_s)
    return starts, 0


def percentile(values: list[int], fraction: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def analyse(starts: list[int], missed: int, period_ns: int, on_grid: bool) -> dict[str, Any]:
    """Figures of one run, times in ms. ``on_grid``: slots are grid slots, not call indices."""
    t0 = starts[0]
    count = len(starts)
    # The scheduler never starts an update a whole period late, so the floor is its slot.
    slots = [(s - t0) // period_ns for s in starts] if on_grid else list(range(count))
    lateness = [start - t0 - slot * period_ns for start, slot in zip(starts, slots)]
    intervals = [later - earlier - period_ns for earlier, later in zip(starts, starts[1:])]

    def drift(index: int) -> float:
        return lateness[index] / MS

    checkpoints = {f"{p}%": drift(max(0, round(p / 100 * (count - 1)))) for p in (25, 50, 75)}
    return {
        "updates": count,
        "elapsed_s": (starts[-1] - t0) / 1e9,
        "drift_ms": drift(count - 1),
        "drift_checkpoints_ms": checkpoints,
        "lateness_p50_ms": percentile(lateness, 0.50) / MS,
        "lateness_p99_ms": percentile(lateness, 0.99) / MS,
        "lateness_max_ms": max(lateness) / MS,
        "interval_error_p50_ms": statistics.median(intervals) / MS if intervals else 0.0,
        "interval_error_p99_ms": percentile(intervals, 0.99) / MS if intervals else 0.0,
        "missed_slots": missed,
        "slots_behind": (starts[-1] - t0) // period_ns + 1 - count,
    }


class Load:
    """The background load of one condition; a context manager that ends what it started."""

    def __init__(self, process: bool, thread: bool):
        self.process = process
        self.thread = thread
        self._context = multiprocessing.get_context("spawn")
        self._process_stop = self._context.Event()
        self._thread_stop = threading.Event()
        self._burner: Any = None
        self._busy_thread: threading.Thread | None = None

    @property
    def label(self) -> str:
        parts = []
        if self.process:
            parts.append("another core busy (separate process)")
        if self.thread:
            parts.append("CPU-bound thread in this process")
        return " + ".join(parts) or "idle"

    def __enter__(self) -> Load:
        if self.process:
            self._burner = self._context.Process(
                target=burn_until, args=(self._process_stop,), name="bench-burner", daemon=True
            )
            self._burner.start()
        if self.thread:
            self._busy_thread = threading.Thread(
                target=burn_until, args=(self._thread_stop,), name="bench-busy", daemon=True
            )
            self._busy_thread.start()
        time.sleep(0.2)  # let the load get going
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._thread_stop.set()
        self._process_stop.set()
        if self._busy_thread is not None:
            self._busy_thread.join(5)
        if self._burner is not None:
            self._burner.join(5)
            if self._burner.is_alive():
                self._burner.terminate()
                self._burner.join(5)


def run_condition(args: argparse.Namespace, process: bool, thread: bool) -> dict[str, Any]:
    period_ns = round(1e9 / args.rate)
    count = round(args.rate * args.seconds)
    work_ns = round(args.work_ms * MS)
    runners: dict[str, Callable[[int, int, int], tuple[list[int], int]]] = {
        "mqsync": run_mqsync,
        "naive": run_naive,
    }
    with Load(process, thread) as load:
        results = {}
        for name, runner in runners.items():
            starts, missed = runner(period_ns, count, work_ns)
            results[name] = analyse(starts, missed, period_ns, on_grid=name == "mqsync")
    return {"load": load.label, "period_ms": period_ns / MS, "results": results}


def report(condition: dict[str, Any], args: argparse.Namespace) -> None:
    mq, naive = condition["results"]["mqsync"], condition["results"]["naive"]
    period_ms = condition["period_ms"]
    print(f"\n== load: {condition['load']}")
    rows = [
        ("updates", "updates", "{:d}"),
        ("elapsed s", "elapsed_s", "{:.3f}"),
        ("drift after N periods ms", "drift_ms", "{:.3f}"),
        ("lateness p50 ms", "lateness_p50_ms", "{:.3f}"),
        ("lateness p99 ms", "lateness_p99_ms", "{:.3f}"),
        ("lateness max ms", "lateness_max_ms", "{:.3f}"),
        ("interval error p50 ms", "interval_error_p50_ms", "{:.3f}"),
        ("interval error p99 ms", "interval_error_p99_ms", "{:.3f}"),
        ("missed slots (skipped)", "missed_slots", "{:d}"),
        ("slots behind the grid", "slots_behind", "{:d}"),
    ]
    print(f"{'':28}{'mqsync':>14}{'naive':>14}")
    for label, key, fmt in rows:
        print(f"{label:28}{fmt.format(mq[key]):>14}{fmt.format(naive[key]):>14}")
    for point in ("25%", "50%", "75%"):
        print(
            f"{'  drift at ' + point + ' ms':28}"
            f"{mq['drift_checkpoints_ms'][point]:>14.3f}{naive['drift_checkpoints_ms'][point]:>14.3f}"
        )
    ratio = naive["drift_ms"] / mq["drift_ms"] if mq["drift_ms"] > 0 else float("inf")
    print(f"naive/mqsync drift ratio: {ratio:.0f}x")
    verdict = "yes" if abs(mq["drift_ms"]) < period_ms else "NO"
    print(f"mqsync drift within one period ({period_ms:.3f} ms): {verdict}")
    p99_ok = "yes" if mq["lateness_p99_ms"] < 2.0 else "no"
    print(f"mqsync lateness p99 < 2 ms (goal on an idle machine): {p99_ok}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100.0, help="updates per second (Hz)")
    parser.add_argument("--seconds", type=float, default=60.0, help="duration of each loop")
    parser.add_argument("--work-ms", type=float, default=0.2, help="busy work per update")
    parser.add_argument("--busy", action="store_true", help="burn another core in a process")
    parser.add_argument(
        "--busy-thread", action="store_true", help="run a CPU-bound thread in this process"
    )
    parser.add_argument("--all", action="store_true", help="idle, --busy, --busy-thread in turn")
    parser.add_argument(
        "--switch-interval", type=float, help="sys.setswitchinterval() in seconds, for the test"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.seconds <= 0 or args.work_ms < 0:
        parser.error("--rate and --seconds must be positive, --work-ms not negative")
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)

    print(
        f"mqsync Scheduler vs naive loop: {args.rate:g} Hz for {args.seconds:g} s each, "
        f"{args.work_ms:g} ms work per update"
    )
    print(
        f"Python {platform.python_version()} on {platform.system()}, {os.cpu_count()} CPUs, "
        f"GIL switch interval {sys.getswitchinterval() * 1e3:g} ms, "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    if args.all:
        conditions = [(False, False), (True, False), (False, True)]
    else:
        conditions = [(args.busy, args.busy_thread)]
    figures = []
    for process, thread in conditions:
        condition = run_condition(args, process, thread)
        report(condition, args)
        figures.append(condition)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Small helpers shared by the client tests."""

from __future__ import annotations

import threading
import time
from typing import Callable

import psutil

import mqsync


def wait_until(condition: Callable[[], bool], timeout: float = 10.0,
               interval: float = 0.01) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passed; return the last result."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return condition()
        time.sleep(interval)
    return True


class RecordingSink(mqsync.Sink):
    """A Sink that records every point (metric, int ns, value) and end markers."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.points: list[tuple[str, int, float]] = []
        self.ends = 0
        self._lock = threading.Lock()

    def on_data(self, metric, timestamp, value):
        with self._lock:
            self.points.append((metric, timestamp.posix_ns, value))

    def on_end(self):
        self.ends += 1

    def count(self, metric: str | None = None) -> int:
        with self._lock:
            return sum(1 for p in self.points if metric is None or p[0] == metric)

    def distinct(self, metric: str) -> int:
        """Points of ``metric`` with different timestamps (duplicates counted once)."""
        with self._lock:
            return len({t for m, t, _ in self.points if m == metric})


class PeakRSS:
    """Samples this process's resident set size on a thread while in the with-block;
    ``peak`` is the highest seen, ``growth`` (bytes) how far it rose above the start."""

    def __init__(self, interval: float = 0.01):
        self._process = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.baseline = self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, self._process.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline

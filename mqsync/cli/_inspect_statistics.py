"""What ``mqsync-inspect`` learns about one metric: counts, extremes, means and a sample.

Exact counts, minima, maxima and means cover every point; the histograms and medians come
from a uniform sample of at most :data:`SAMPLE_SIZE` numbers per quantity (algorithm R), so
a long run at a high rate stays in bounded memory.  :meth:`MetricStatistics.to_json` is the
report that ``--json`` prints and the text report is made from.
"""

from __future__ import annotations

import bisect
import collections
import math
import random
import threading
import time
from typing import Any, Sequence

from ..timeseries import Timestamp

__all__ = ["HISTOGRAM_BINS", "SAMPLE_SIZE", "MetricStatistics", "Reservoir", "Summary", "histogram"]

#: Points kept for histograms and medians (a uniform sample of all).
SAMPLE_SIZE = 100_000
HISTOGRAM_BINS = 10


class Reservoir:
    """A uniform sample of at most ``size`` numbers out of any number seen (algorithm R)."""

    def __init__(self, size: int = SAMPLE_SIZE, seed: int | None = None):
        self.size = size
        self.seen = 0
        self.samples: list[float] = []
        self._random = random.Random(seed)

    def add(self, value: float) -> None:
        """Offer ``value``: kept while there is room, later with probability size/seen."""
        self.seen += 1
        if len(self.samples) < self.size:
            self.samples.append(value)
            return
        slot = self._random.randrange(self.seen)
        if slot < self.size:
            self.samples[slot] = value


class Summary:
    """Count, minimum, maximum and mean of a stream, plus a sample for its distribution."""

    def __init__(self, sample_size: int = SAMPLE_SIZE):
        self.count = 0
        self.minimum = math.inf
        self.maximum = -math.inf
        self.total = 0.0
        self.sample = Reservoir(sample_size)

    def add(self, value: float) -> None:
        self.count += 1
        self.minimum = min(self.minimum, value)
        self.maximum = max(self.maximum, value)
        self.total += value
        self.sample.add(value)

    def to_json(self) -> dict[str, Any]:
        """``{"count": 0}``, or count, min, max, mean, median and histogram."""
        if not self.count:
            return {"count": 0}
        ordered = sorted(self.sample.samples)
        return {
            "count": self.count,
            "min": self.minimum,
            "max": self.maximum,
            "mean": self.total / self.count,
            "median": ordered[len(ordered) // 2],
            "histogram": histogram(ordered, HISTOGRAM_BINS),
        }


def histogram(ordered: Sequence[float], bins: int) -> list[dict[str, float]]:
    """``bins`` equal-width bins over sorted ``ordered``: ``[{low, high, count}, ...]``.

    One bin when every value is the same; empty bins are kept (their gaps tell something).
    """
    if not ordered:
        return []
    low, high = ordered[0], ordered[-1]
    if not high > low:
        return [{"low": low, "high": high, "count": len(ordered)}]
    width = (high - low) / bins
    edges = [low + width * i for i in range(bins)] + [high]
    counts = []
    for i in range(bins):
        start = bisect.bisect_left(ordered, edges[i])
        stop = len(ordered) if i == bins - 1 else bisect.bisect_left(ordered, edges[i + 1])
        counts.append(stop - start)
    return [{"low": edges[i], "high": edges[i + 1], "count": counts[i]} for i in range(bins)]


class MetricStatistics:
    """Everything known about the points of one metric so far; thread-safe.

    ``intervals`` are the seconds between consecutive time stamps (across chunks), ``values``
    the finite values (NaN and infinities are only counted), ``delays`` the seconds from a
    chunk's last point to its arrival.
    """

    def __init__(self, sample_size: int = SAMPLE_SIZE):
        self._lock = threading.Lock()
        self.points = 0
        self.chunks = 0
        self.chunk_sizes: collections.Counter[int] = collections.Counter()
        self.intervals = Summary(sample_size)
        self.values = Summary(sample_size)
        self.delays = Summary(sample_size)
        self.nan = 0
        self.positive_infinity = 0
        self.negative_infinity = 0
        self.not_increasing = 0  # time stamps equal to or before the previous one
        self.first_time_ns: int | None = None
        self.last_time_ns: int | None = None
        self.last_value: float | None = None
        self.started = time.monotonic()

    def add_chunk(self, times_ns: Sequence[int], values: Sequence[float], arrived_ns: int) -> None:
        """Count one chunk: times (int ns) with one value each, arrived at ``arrived_ns``
        (wall clock, int ns since the epoch)."""
        with self._lock:
            self.chunks += 1
            self.chunk_sizes[len(times_ns)] += 1
            self._add_times(times_ns)
            self._add_values(values)
            if times_ns:
                self.points += len(times_ns)
                self.last_value = values[-1]
                self.delays.add((arrived_ns - times_ns[-1]) / 1e9)

    def _add_times(self, times_ns: Sequence[int]) -> None:
        previous = self.last_time_ns
        for time_ns in times_ns:
            if previous is not None:
                if time_ns <= previous:
                    self.not_increasing += 1
                self.intervals.add((time_ns - previous) / 1e9)
            previous = time_ns
        if times_ns:
            if self.first_time_ns is None:
                self.first_time_ns = times_ns[0]
            self.last_time_ns = times_ns[-1]

    def _add_values(self, values: Sequence[float]) -> None:
        for value in values:
            if math.isnan(value):
                self.nan += 1
            elif value == math.inf:
                self.positive_infinity += 1
            elif value == -math.inf:
                self.negative_infinity += 1
            else:
                self.values.add(value)

    def progress(self) -> tuple[int, float | None]:
        """``(points so far, last value)``."""
        with self._lock:
            return self.points, self.last_value

    def to_json(self, elapsed_s: float) -> dict[str, Any]:
        """The report of ``elapsed_s`` seconds of inspection, as JSON-ready values."""
        with self._lock:
            return {
                "elapsed_s": elapsed_s,
                "points": self.points,
                "points_per_s": self.points / elapsed_s if elapsed_s > 0 else None,
                "chunks": self.chunks,
                "chunk_sizes": self._chunk_sizes_json(),
                "intervals_s": self.intervals.to_json(),
                "not_increasing": self.not_increasing,
                "values": self.values.to_json(),
                "nan": self.nan,
                "positive_infinity": self.positive_infinity,
                "negative_infinity": self.negative_infinity,
                "delay_s": self.delays.to_json(),
                "first_time": _iso(self.first_time_ns),
                "last_time": _iso(self.last_time_ns),
                "last_value": _json_number(self.last_value),
            }

    def _chunk_sizes_json(self) -> dict[str, Any]:
        counts = sorted(self.chunk_sizes.items())  # (size, chunks of that size)
        return {
            "min": counts[0][0] if counts else None,
            "max": counts[-1][0] if counts else None,
            "mean": (
                sum(size * chunks for size, chunks in counts) / self.chunks if counts else None
            ),
            "counts": {str(size): chunks for size, chunks in counts},
        }


def _iso(time_ns: int | None) -> str | None:
    return Timestamp(time_ns).isoformat() if time_ns is not None else None


def _json_number(value: float | None) -> float | str | None:
    """``value``, or its text for NaN and infinities (which JSON cannot hold)."""
    if value is None or math.isfinite(value):
        return value
    return str(value)

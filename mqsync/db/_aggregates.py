"""The arithmetic of aggregates, without SQL: the rows the store answers with, a mergeable
accumulator, and per-bucket partial aggregates of ordered points (see :mod:`mqsync.db.store`
for the semantics)."""

from __future__ import annotations

import bisect
import math
import operator
from typing import NamedTuple

from ..timeseries import TimeAggregate, Timedelta, Timestamp


class AggregateRow(NamedTuple):
    """An aggregate as the store computes it (see :mod:`mqsync.db.store` for the semantics)."""

    timestamp: int
    """Start of the period, ns since the epoch."""
    minimum: float
    maximum: float
    sum: float
    count: int
    integral: float
    """Value x nanoseconds."""
    active_time: int
    """Nanoseconds in which the metric had a known value within the period."""

    def to_time_aggregate(self) -> TimeAggregate:
        """This aggregate as a :class:`~mqsync.TimeAggregate`."""
        return TimeAggregate(Timestamp(self.timestamp), self.minimum, self.maximum, self.sum,
                             self.count, self.integral, Timedelta(self.active_time))


class _Acc:
    """A mergeable aggregate of a set of raw points, with that set's first point."""

    __slots__ = ("count", "sum", "minimum", "maximum", "integral", "active", "first")

    def __init__(self) -> None:
        self.count = 0
        self.sum = 0.0
        self.minimum = math.inf
        self.maximum = -math.inf
        self.integral = 0.0
        self.active = 0
        self.first: tuple[int, int, float] | None = None  # (time, dt, value)

    def merge_row(self, count: int, total: float, minimum: float, maximum: float,
                  integral: float, active: int, first: tuple[int, int, float] | None) -> None:
        if count == 0:
            return
        self.count += count
        self.sum += total
        self.minimum = min(self.minimum, minimum)
        self.maximum = max(self.maximum, maximum)
        self.integral += integral
        self.active += active
        if self.first is None:
            self.first = first

    def merge(self, other: _Acc) -> None:
        self.merge_row(other.count, other.sum, other.minimum, other.maximum, other.integral,
                       other.active, other.first)

    def add_partial(self, value: float, duration: int) -> None:
        """A value that holds ``duration`` ns inside this period but whose point is not in it."""
        self.integral += value * duration
        self.active += duration
        self.minimum = min(self.minimum, value)
        self.maximum = max(self.maximum, value)

    def cut_before(self, boundary: int) -> int:
        """Remove the part of the first point's interval before ``boundary``; return it in ns."""
        if self.first is None:
            return 0
        time, dt, value = self.first
        if dt == 0 or time - dt >= boundary:
            return 0
        excess = boundary - (time - dt)
        self.integral -= value * excess
        self.active -= excess
        return excess

    def row(self, timestamp: int) -> AggregateRow:
        return AggregateRow(timestamp, self.minimum, self.maximum, self.sum, self.count,
                            self.integral, self.active)


def _nan_if_none(value: float | None) -> float:
    # SQLite turns a NaN result (inf - inf) into NULL.
    return math.nan if value is None else value


def _bucket_points(times: list[int], values: list[float], dts: list[int], width: int
                   ) -> list[tuple]:
    """Per-bucket partial aggregates of ordered points for buckets ``(s, s + width]``.

    Each is ``(start, count, sum, minimum, maximum, integral, active, first_time, first_dt,
    first_value)``.
    """
    partials = []
    i, n = 0, len(times)
    while i < n:
        start = (times[i] - 1) // width * width
        j = bisect.bisect_right(times, start + width, i)
        vs, ds = values[i:j], dts[i:j]
        if ds[0] == 0:  # the metric's first point holds over no time
            integral = sum(map(operator.mul, vs[1:], ds[1:]))
        else:
            integral = sum(map(operator.mul, vs, ds))
        partials.append((start, j - i, sum(vs), min(vs), max(vs), float(integral), sum(ds),
                         times[i], ds[0], vs[0]))
        i = j
    return partials


def _merge_buckets(partials: list[tuple], width: int) -> list[tuple]:
    """Merge ordered partial aggregates of smaller buckets into buckets of ``width``."""
    merged: list[tuple] = []
    for partial in partials:
        start = partial[0] // width * width
        if merged and merged[-1][0] == start:
            previous = merged[-1]
            merged[-1] = (start, previous[1] + partial[1], previous[2] + partial[2],
                          min(previous[3], partial[3]), max(previous[4], partial[4]),
                          previous[5] + partial[5], previous[6] + partial[6], *previous[7:])
        else:
            merged.append((start, *partial[1:]))
    return merged


def _add_partial(accs: dict[int, list], k: int, value: float, duration: int) -> None:
    """Bucket ``k`` had ``value`` for ``duration`` ns, from a point of a later bucket."""
    acc = accs.get(k)
    if acc is None:
        accs[k] = [0, 0.0, value, value, value * duration, duration]
    else:
        acc[2] = min(acc[2], value)
        acc[3] = max(acc[3], value)
        acc[4] += value * duration
        acc[5] += duration


def _spread(accs: dict[int, list], origin: int, width: int, begin: int, end: int,
            value: float) -> None:
    """Add ``value`` holding over ``(begin, end]`` to the buckets it overlaps."""
    k = (begin - origin) // width
    while True:
        bucket_start = origin + k * width
        if bucket_start >= end:
            return
        overlap = min(bucket_start + width, end) - max(bucket_start, begin)
        if overlap > 0:
            _add_partial(accs, k, value, overlap)
        k += 1

"""The arithmetic of aggregates, without SQL: the rows the store answers with, a mergeable
accumulator, and per-bucket partial aggregates of ordered points (see :mod:`mqsync.db.store`
for the semantics).

IEEE 754 throughout: sums and integrals are plain float additions (NaN propagates, +inf plus
-inf is NaN); :func:`_fmin` and :func:`_fmax` ignore NaN unless both sides are NaN; nothing
is ever subtracted from a sum (inf - inf would be NaN): the integral of a run of points leaves
out its first point, whose interval is cut and added last.  Values read from SQLite pass
:func:`nan_if_none` (a NULL value is a NaN) and sums :func:`sum_of`."""

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
    # a field may shadow tuple.count (namedtuple allows it); mypy's NamedTuple check does not
    count: int  # type: ignore[assignment]
    integral: float
    """Value x nanoseconds."""
    active_time: int
    """Nanoseconds in which the metric had a known value within the period."""

    def to_time_aggregate(self) -> TimeAggregate:
        """This aggregate as a :class:`~mqsync.TimeAggregate`."""
        return TimeAggregate(Timestamp(self.timestamp), self.minimum, self.maximum, self.sum,
                             self.count, self.integral, Timedelta(self.active_time))


def _fmin(a: float | None, b: float | None) -> float | None:
    """The smaller of ``a`` and ``b``; NaN only if both are NaN, None (nothing) if both are."""
    if a is None or a != a:
        return a if b is None else b
    if b is None or b != b or not b < a:
        return a
    return b


def _fmax(a: float | None, b: float | None) -> float | None:
    """The larger of ``a`` and ``b``; NaN only if both are NaN, None (nothing) if both are."""
    if a is None or a != a:
        return a if b is None else b
    if b is None or b != b or not b > a:
        return a
    return b


def _held(value: float, duration: int) -> float:
    """``value`` x ``duration``; a value held over no time adds nothing, even inf or NaN."""
    return value * duration if duration else 0.0


def nan_if_none(value: float | None) -> float:
    """A value column read back: SQLite has no NaN, the store keeps it as NULL."""
    return math.nan if value is None else value


def sum_of(terms: int, summed: int, total: float | None) -> float:
    """The IEEE sum of ``terms`` SQL values, from SQLite's ``count()`` and ``sum()`` of them.

    ``summed`` of them are not NULL (a NULL is a NaN); ``total`` is SQLite's sum of those,
    which is NULL where the IEEE sum is NaN (+inf and -inf) and for no values at all.
    """
    if summed < terms or (total is None and summed):
        return math.nan
    return 0.0 if total is None else total


class Accumulator:
    """A mergeable aggregate of consecutive raw points (see :mod:`mqsync.db.store`).

    ``integral`` and ``active`` are those of every point but the first, ``first`` = ``(time,
    dt, value)``: the first point's interval may begin before the range, and :meth:`row` cuts
    it there.  So merging only adds, and no infinite or NaN contribution is ever subtracted.
    ``minimum`` and ``maximum`` are None while no value was seen.
    """

    __slots__ = ("count", "sum", "minimum", "maximum", "integral", "active", "first")

    def __init__(self) -> None:
        self.count = 0
        self.sum = 0.0
        self.minimum: float | None = None
        self.maximum: float | None = None
        self.integral = 0.0
        self.active = 0
        self.first: tuple[int, int, float] | None = None  # (time, dt, value)

    def merge_row(self, count: int, total: float, minimum: float | None,
                  maximum: float | None, integral: float, active: int,
                  first: tuple[int, int, float] | None) -> None:
        """Append ``count`` later points; ``integral`` and ``active`` leave out their ``first``."""
        if count == 0 or first is None:
            return
        if self.first is None:
            self.first = first
            self.integral += integral
            self.active += active
        else:
            _, dt, value = first
            self.integral += integral + _held(value, dt)
            self.active += active + dt
        self._add(count, total, minimum, maximum)

    def extend(self, count: int, total: float, minimum: float | None, maximum: float | None,
               integral: float, active: int) -> None:
        """Append ``count`` points after this run's first one, each with its whole interval."""
        if count == 0:
            return
        assert self.first is not None, "extend() needs a first point"
        self.integral += integral
        self.active += active
        self._add(count, total, minimum, maximum)

    def _add(self, count: int, total: float, minimum: float | None,
             maximum: float | None) -> None:
        self.count += count
        self.sum += total
        self.minimum = _fmin(self.minimum, minimum)
        self.maximum = _fmax(self.maximum, maximum)

    def merge(self, other: Accumulator) -> None:
        self.merge_row(other.count, other.sum, other.minimum, other.maximum, other.integral,
                       other.active, other.first)

    def add_partial(self, value: float, duration: int) -> None:
        """A value that holds ``duration`` ns inside this period but whose point is not in it."""
        self.integral += value * duration
        self.active += duration
        self.minimum = _fmin(self.minimum, value)
        self.maximum = _fmax(self.maximum, value)

    def row(self, timestamp: int, start: int) -> AggregateRow:
        """This aggregate, stamped ``timestamp``, with the first point's interval cut at
        ``start``."""
        integral, active = self.integral, self.active
        if self.first is not None:
            time, dt, value = self.first
            if dt:
                held = time - max(time - dt, start)
                integral += value * held
                active += held
        return AggregateRow(timestamp, math.inf if self.minimum is None else self.minimum,
                            -math.inf if self.maximum is None else self.maximum, self.sum,
                            self.count, integral, active)


def _nanmin(values: list[float]) -> float:
    return min((v for v in values if v == v), default=math.nan)


def _nanmax(values: list[float]) -> float:
    return max((v for v in values if v == v), default=math.nan)


def bucket_points(times: list[int], values: list[float], dts: list[int], width: int
                   ) -> list[tuple]:
    """Per-bucket partial aggregates of ordered points for buckets ``(s, s + width]``.

    Each is ``(start, count, sum, minimum, maximum, integral, active, first_time, first_dt,
    first_value)``, the integral and active time leaving out the first point.
    """
    partials = []
    i, n = 0, len(times)
    while i < n:
        start = (times[i] - 1) // width * width
        j = bisect.bisect_right(times, start + width, i)
        vs, ds = values[i:j], dts[i:j]
        # Python's min() and max() return NaN only if the first value is NaN
        minimum, maximum = min(vs), max(vs)
        if minimum != minimum:
            minimum, maximum = _nanmin(vs), _nanmax(vs)
        integral = float(sum(map(operator.mul, vs[1:], ds[1:])))
        partials.append((start, j - i, float(sum(vs)), minimum, maximum, integral,
                         sum(ds) - ds[0], times[i], ds[0], vs[0]))
        i = j
    return partials


def merge_buckets(partials: list[tuple], width: int) -> list[tuple]:
    """Merge ordered partial aggregates of smaller buckets into buckets of ``width``."""
    merged: list[tuple] = []
    for partial in partials:
        start = partial[0] // width * width
        if merged and merged[-1][0] == start:
            previous = merged[-1]
            # the later part's first point joins the integral and the active time
            merged[-1] = (start, previous[1] + partial[1], previous[2] + partial[2],
                          _fmin(previous[3], partial[3]), _fmax(previous[4], partial[4]),
                          previous[5] + (partial[5] + _held(partial[9], partial[8])),
                          previous[6] + partial[6] + partial[8], *previous[7:])
        else:
            merged.append((start, *partial[1:]))
    return merged


def add_partial(accs: dict[int, list], k: int, value: float, duration: int) -> None:
    """Bucket ``k`` had ``value`` for ``duration`` ns, from a point of a later bucket."""
    acc = accs.get(k)
    if acc is None:
        accs[k] = [0, 0.0, value, value, value * duration, duration]
    else:
        acc[2] = _fmin(acc[2], value)
        acc[3] = _fmax(acc[3], value)
        acc[4] += value * duration
        acc[5] += duration


def spread(accs: dict[int, list], origin: int, width: int, begin: int, end: int,
            value: float) -> None:
    """Add ``value`` holding over ``(begin, end]`` to the buckets it overlaps."""
    k = (begin - origin) // width
    while True:
        bucket_start = origin + k * width
        if bucket_start >= end:
            return
        overlap = min(bucket_start + width, end) - max(bucket_start, begin)
        if overlap > 0:
            add_partial(accs, k, value, overlap)
        k += 1

"""An independent reference for history aggregates, shared by the history tests.

A direct transcription of the definition in mqsync/db/store.py (MetricQ's "last" semantics:
a point holds its value over the time since its predecessor), computed point by point, in time
order: sums with IEEE float addition, minimum and maximum ignoring NaN unless every value is.
"""

from __future__ import annotations

import bisect
import math

import pytest

import mqsync


def reference_aggregate(points, start, end, times=None):
    """(count, sum, minimum, maximum, integral, active) over (start, end] (None: unbounded).

    ``times`` (the points' times) only narrows the loop to the points that can matter.
    """
    lo = -math.inf if start is None else start
    hi = math.inf if end is None else end
    count, total, integral, active = 0, 0.0, 0.0, 0
    contributing = []  # the values minimum and maximum are taken over
    previous = None
    if times is not None:
        first = max(0, bisect.bisect_right(times, lo) - 1)
        if first:
            previous = times[first - 1]
        points = points[first:bisect.bisect_right(times, hi) + 1]
    for time, value in points:
        if lo < time <= hi:
            count += 1
            total += value
            contributing.append(value)
        if previous is not None:
            a, b = max(previous, lo), min(time, hi)
            if b > a:  # this value held over (a, b] inside the range
                integral += value * (b - a)
                active += b - a
                contributing.append(value)
        previous = time
    numbers = [value for value in contributing if not math.isnan(value)]
    if numbers:
        minimum, maximum = min(numbers), max(numbers)
    elif contributing:
        minimum = maximum = math.nan
    else:
        minimum, maximum = math.inf, -math.inf
    return count, total, minimum, maximum, integral, active


def reference_timeline(points, start, end, width):
    """[(bucket start, aggregate...)] of the buckets (k*width, (k+1)*width] covering the
    range, without those where nothing is known."""
    first, last = points[0][0], points[-1][0]
    lo = first - 1 if start is None else max(start, first - 1)
    hi = last if end is None else min(end, last)
    if lo >= hi:
        return []
    result = []
    times = [t for t, _ in points]
    for bucket in range(lo // width * width, -(-hi // width) * width, width):
        aggregate = reference_aggregate(points, bucket, bucket + width, times)
        if aggregate[0] or aggregate[5]:
            result.append((bucket, *aggregate))
    return result


def as_tuple(row):
    """The fields of a store AggregateRow or a TimeAggregate, in reference order."""
    if isinstance(row, mqsync.TimeAggregate):
        return (row.count, row.sum, row.minimum, row.maximum, row.integral_ns,
                row.active_time.ns)
    return (row.count, row.sum, row.minimum, row.maximum, row.integral, row.active_time)


def same(got, expected):
    """Whether two tuples of numbers are equal, a NaN equal to a NaN."""
    return len(got) == len(expected) and all(
        a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a)
                   and math.isnan(b)) for a, b in zip(got, expected))


def assert_aggregate(got, expected, exact=False):
    count, total, minimum, maximum, integral, active = as_tuple(got)
    assert same((count, minimum, maximum, active), (expected[0], *expected[2:4], expected[5]))
    if exact:
        assert same((total, integral), (expected[1], expected[4]))
    else:
        assert total == pytest.approx(expected[1], rel=1e-12, abs=1e-9, nan_ok=True)
        assert integral == pytest.approx(expected[4], rel=1e-12, abs=1e-3, nan_ok=True)

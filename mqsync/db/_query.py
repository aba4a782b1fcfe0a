"""Reading from the store: raw points, counts, and aggregates over a range or as a timeline
of aligned buckets, taken from the rollups where they fit.

A NULL value is a NaN (see :mod:`mqsync.db._schema`); every sum is read with its ``count()``
(:func:`~mqsync.db._aggregates.sum_of`), so a NaN term, +inf and -inf in one sum, and no
terms at all stay apart."""

from __future__ import annotations

import sqlite3
import threading

from ..errors import StoreError, TooMuchData
from ._aggregates import (
    Accumulator,
    AggregateRow,
    add_partial,
    nan_if_none,
    spread,
    sum_of,
)
from ._schema import HELD, INT64_MAX, INT64_MIN


class QueryMixin:
    """The reading half of :class:`~mqsync.db.SqliteStore` (under its read lock)."""

    rollup_widths: tuple[int, ...]
    max_points: int
    max_buckets: int
    _reader: sqlite3.Connection
    _read_lock: threading.Lock
    _read_ids: dict[str, int]

    def metrics(self) -> list[str]:
        """Names of the metrics with stored points, sorted."""
        with self._read_lock:
            return [name for (name,) in self._reader.execute(
                "SELECT name FROM metrics WHERE EXISTS (SELECT 1 FROM points "
                "WHERE points.metric = metrics.id) ORDER BY name")]

    def has_metric(self, metric: str) -> bool:
        """Whether ``metric`` was ever written to this store."""
        with self._read_lock:
            return self._read_id(metric) is not None

    def count(self, metric: str) -> int:
        """Number of stored points of ``metric``."""
        with self._read_lock:
            metric_id = self._read_id(metric)
            if metric_id is None:
                return 0
            return self._reader.execute("SELECT count(*) FROM points WHERE metric = ?",
                                        (metric_id,)).fetchone()[0]

    def span(self, metric: str) -> tuple[int, int] | None:
        """Times ``(first, last)`` of the stored points of ``metric``, or None."""
        with self._read_lock:
            metric_id = self._read_id(metric)
            return None if metric_id is None else self._span(metric_id)

    def last_value(self, metric: str) -> tuple[int, float] | None:
        """The latest point ``(time_ns, value)`` of ``metric``, or None."""
        with self._read_lock:
            metric_id = self._read_id(metric)
            if metric_id is None:
                return None
            row = self._reader.execute(
                "SELECT time, value FROM points WHERE metric = ? ORDER BY time DESC LIMIT 1",
                (metric_id,)).fetchone()
            return None if row is None else (row[0], nan_if_none(row[1]))

    def raw(self, metric: str, start: int | None = None, end: int | None = None
            ) -> tuple[list[int], list[float]]:
        """The points with ``start <= time <= end`` (None: unbounded), as times and values.

        Raises:
            TooMuchData: more than :attr:`max_points` points (counted from the rollups
                before anything is read).
            StoreError: ``start > end``.
        """
        lo, hi = _bounds(start, end, inclusive=True)
        with self._read_lock:
            metric_id = self._read_id(metric)
            if metric_id is None:
                return [], []
            count = self._count(metric_id, lo, hi)
            if count > self.max_points:
                raise TooMuchData(f"{count} points of {metric!r} in the requested range, more "
                                  f"than the {self.max_points} one response may carry; request "
                                  "a shorter range or an aggregate timeline")
            if not count:
                return [], []
            rows = self._reader.execute(
                "SELECT time, value FROM points WHERE metric = ? AND time >= ? AND time <= ? "
                "ORDER BY time", (metric_id, lo, hi)).fetchall()
        times, values = zip(*rows)
        if None in values:  # a NaN
            return list(times), [nan_if_none(value) for value in values]
        return list(times), list(values)

    def count_between(self, metric: str, start: int | None, end: int | None) -> int:
        """Number of points with ``start <= time <= end`` (None: unbounded), from the rollups."""
        lo, hi = _bounds(start, end, inclusive=True)
        with self._read_lock:
            metric_id = self._read_id(metric)
            return 0 if metric_id is None else self._count(metric_id, lo, hi)

    def aggregate(self, metric: str, start: int | None = None, end: int | None = None
                  ) -> AggregateRow:
        """The aggregate over ``(start, end]`` (None: unbounded), stamped ``start`` (or 0).

        Raises:
            StoreError: ``start >= end``.
        """
        lo, hi = _bounds(start, end, inclusive=False)
        timestamp = 0 if start is None else start
        with self._read_lock:
            metric_id = self._read_id(metric)
            span = None if metric_id is None else self._span(metric_id)
            if metric_id is None or span is None:
                return Accumulator().row(timestamp, lo)
            first_time, last_time = span
            # Nothing is known before the first point or after the last one.
            lo, hi = max(lo, first_time - 1), min(hi, last_time)
            acc = Accumulator()
            if lo < hi:
                acc = self._collect(metric_id, lo, hi, len(self.rollup_widths) - 1)
            elif lo >= last_time:
                return acc.row(timestamp, lo)
            following = self._point_after(metric_id, hi)
        if following is not None:
            time, dt, value = following
            overlap = hi - max(lo, time - dt)
            if overlap > 0:
                acc.add_partial(value, overlap)
        return acc.row(timestamp, lo)

    def aggregate_timeline(self, metric: str, start: int | None, end: int | None,
                           interval_max: int) -> tuple[int, list[AggregateRow]]:
        """Aggregates of aligned buckets covering ``(start, end]``, each at most ``interval_max``.

        The bucket width is the largest rollup width not above ``interval_max`` (metricq-db-hta
        picks its aggregation level the same way), or ``interval_max`` itself if that is below
        the smallest rollup width.  Buckets ``(k * width, (k + 1) * width]`` are aligned to the
        epoch and complete (the first and last may reach beyond the range); buckets without
        any known value are left out.  Returns ``(width, aggregates)``.

        Raises:
            StoreError: ``interval_max <= 0`` or ``start >= end``.
            TooMuchData: the range spans more than :attr:`max_buckets` buckets.
        """
        if not isinstance(interval_max, int) or interval_max <= 0:
            raise StoreError(f"interval_max must be a positive number of ns, got {interval_max!r}")
        lo, hi = _bounds(start, end, inclusive=False)
        usable = [w for w in self.rollup_widths if w <= interval_max]
        width = usable[-1] if usable else interval_max
        with self._read_lock:
            metric_id = self._read_id(metric)
            span = None if metric_id is None else self._span(metric_id)
            if metric_id is None or span is None:
                return width, []
            first_time, last_time = span
            lo, hi = max(lo, first_time - 1), min(hi, last_time)
            if lo >= hi:
                return width, []
            origin = lo // width * width
            top = -(-hi // width) * width
            buckets = (top - origin) // width
            if buckets > self.max_buckets:
                raise TooMuchData(
                    f"an aggregate timeline of {metric!r} with buckets of {width} ns would span "
                    f"{buckets} buckets, more than {self.max_buckets}; request a larger "
                    "interval_max or a shorter range")
            if usable:
                rows = self._rollup_buckets(metric_id, origin, width, top)
            else:
                rows = self._grouped_points(metric_id, origin, width, top)
            following = self._point_after(metric_id, top)
        # per bucket: [count, sum, minimum, maximum, integral, active]
        accs: dict[int, list] = {}
        for k, count, total, minimum, maximum, integral, active, ftime, fdt, fvalue in rows:
            # the part of the first point's interval that lies in earlier buckets goes there
            bucket_start = origin + k * width
            first_start = ftime - fdt
            if fdt and first_start < bucket_start:
                begin = max(origin, first_start)
                if begin >= bucket_start - width:  # the common case: only the previous bucket
                    if begin < bucket_start:
                        add_partial(accs, k - 1, fvalue, bucket_start - begin)
                else:
                    spread(accs, origin, width, begin, bucket_start, fvalue)
            accs[k] = [count, total, minimum, maximum, integral, active]
        if following is not None:
            time, dt, value = following
            if time - dt < top:
                spread(accs, origin, width, max(origin, time - dt), top, value)
        return width, [AggregateRow(origin + k * width, acc[2], acc[3], acc[1], acc[0], acc[4],
                                    acc[5])
                       for k, acc in sorted(accs.items()) if acc[0] or acc[5]]

    def _rollup_buckets(self, metric_id: int, origin: int, width: int, top: int
                        ) -> list[tuple]:
        """Per rollup bucket of ``width`` in ``(origin, top]``: ``(k, count, sum, minimum,
        maximum, integral, active, first_time, first_dt, first_value)``, the integral and active
        time of the part inside the bucket."""
        buckets = []
        for k, count, total, minimum, maximum, integral, active, ftime, fdt, fvalue in (
                self._reader.execute(
                    "SELECT (start - ?) / ?, count, sum, minimum, maximum, integral, active, "
                    "first_time, first_dt, first_value FROM rollups WHERE metric = ? AND "
                    "width = ? AND start >= ? AND start < ? ORDER BY start",
                    (origin, width, metric_id, width, origin, top))):
            fvalue, integral = nan_if_none(fvalue), nan_if_none(integral)
            if fdt:
                # a rollup leaves out its first point: add the part of its interval inside
                inside = ftime - max(ftime - fdt, origin + k * width)
                integral += fvalue * inside
                active += inside
            buckets.append((k, count, nan_if_none(total), nan_if_none(minimum),
                            nan_if_none(maximum), integral, active, ftime, fdt, fvalue))
        return buckets

    def _grouped_points(self, metric_id: int, origin: int, width: int, top: int) -> list[tuple]:
        """Per bucket of raw points in ``(origin, top]``: ``(k, count, sum, minimum, maximum,
        integral, active, first_time, first_dt, first_value)``, the integral and active time
        of the part inside the bucket."""
        # the part of a point's interval inside its bucket (only a first point reaches out)
        inside = "time - max(time - dt, ? + (time - 1 - ?) / ? * ?)"
        rows = self._reader.execute(
            "SELECT g.k, g.c, g.cv, g.s, g.mn, g.mx, g.ci, g.i, g.a, g.ft, p.dt, p.value FROM ("
            " SELECT (time - 1 - ?) / ? AS k, count(*) AS c, count(value) AS cv,"
            " sum(value) AS s, min(value) AS mn, max(value) AS mx,"
            f" count({HELD.format(dt=inside, value='value')}) AS ci,"
            f" sum({HELD.format(dt=inside, value='value')}) AS i, sum({inside}) AS a,"
            " min(time) AS ft FROM points WHERE metric = ? AND time > ? AND time <= ?"
            " GROUP BY k) AS g JOIN points AS p ON p.metric = ? AND p.time = g.ft"
            " ORDER BY g.k",
            (origin, width, *(origin, origin, width, width) * 5, metric_id, origin, top,
             metric_id)).fetchall()
        return [(k, count, sum_of(count, counted, total), nan_if_none(minimum),
                 nan_if_none(maximum), sum_of(count, counted_integral, integral), active,
                 ftime, fdt, nan_if_none(fvalue))
                for k, count, counted, total, minimum, maximum, counted_integral, integral,
                active, ftime, fdt, fvalue in rows]

    # -- helpers (under the read lock) ------------------------------------------------

    def _read_id(self, metric: str) -> int | None:
        metric_id = self._read_ids.get(metric)
        if metric_id is None:
            row = self._reader.execute("SELECT id FROM metrics WHERE name = ?",
                                       (metric,)).fetchone()
            if row is None:
                return None
            metric_id = self._read_ids[metric] = row[0]
        return metric_id

    def _span(self, metric_id: int) -> tuple[int, int] | None:
        first = self._reader.execute(
            "SELECT time FROM points WHERE metric = ? ORDER BY time LIMIT 1",
            (metric_id,)).fetchone()
        if first is None:
            return None
        last = self._reader.execute(
            "SELECT time FROM points WHERE metric = ? ORDER BY time DESC LIMIT 1",
            (metric_id,)).fetchone()
        return first[0], last[0]

    def _count(self, metric_id: int, lo: int, hi: int) -> int:
        """Points with ``lo <= time <= hi``."""
        span = self._span(metric_id)
        if span is None:
            return 0
        lo, hi = max(lo, span[0]), min(hi, span[1])
        if lo > hi:
            return 0
        return self._collect(metric_id, lo - 1, hi, len(self.rollup_widths) - 1).count

    def _point_after(self, metric_id: int, time: int) -> tuple[int, int, float] | None:
        row = self._reader.execute(
            "SELECT time, dt, value FROM points WHERE metric = ? AND time > ? ORDER BY time "
            "LIMIT 1", (metric_id, time)).fetchone()
        return None if row is None else (row[0], row[1], nan_if_none(row[2]))

    def _collect(self, metric_id: int, lo: int, hi: int, level: int) -> Accumulator:
        """The aggregate of the raw points in ``(lo, hi]``, from rollups where they fit."""
        acc = Accumulator()
        if lo >= hi:
            return acc
        while level >= 0:
            width = self.rollup_widths[level]
            first_bucket = -(-lo // width) * width
            last_bucket = hi // width * width
            if first_bucket < last_bucket:
                break
            level -= 1
        if level < 0:
            first = self._reader.execute(
                "SELECT time, dt, value FROM points WHERE metric = ? AND time > ? AND time <= ? "
                "ORDER BY time LIMIT 1", (metric_id, lo, hi)).fetchone()
            if first is None:
                return acc
            time, dt, value = first[0], first[1], nan_if_none(first[2])
            acc.merge_row(1, value, value, value, 0.0, 0, (time, dt, value))
            # every later point has dt > 0: value * dt is NULL exactly for a NaN
            count, counted, total, minimum, maximum, integral, active = self._reader.execute(
                "SELECT count(*), count(value), sum(value), min(value), max(value), "
                "sum(value * dt), sum(dt) FROM points WHERE metric = ? AND time > ? AND "
                "time <= ?", (metric_id, time, hi)).fetchone()
            if count:
                acc.extend(count, sum_of(count, counted, total), nan_if_none(minimum),
                           nan_if_none(maximum), sum_of(count, counted, integral), active)
            return acc
        acc.merge(self._collect(metric_id, lo, first_bucket, level - 1))
        head = self._reader.execute(
            "SELECT start, count, sum, minimum, maximum, integral, active, first_time, "
            "first_dt, first_value FROM rollups WHERE metric = ? AND width = ? AND start >= ? "
            "AND start < ? ORDER BY start LIMIT 1",
            (metric_id, width, first_bucket, last_bucket)).fetchone()
        if head is not None:
            start, count, total, minimum, maximum, integral, active, ftime, fdt, fvalue = head
            acc.merge_row(count, nan_if_none(total), nan_if_none(minimum),
                          nan_if_none(maximum), nan_if_none(integral), active,
                          (ftime, fdt, nan_if_none(fvalue)))
            # the later buckets' first points come after this one: their whole intervals count
            row = self._reader.execute(
                "SELECT count(*), sum(count), count(sum), sum(sum), min(minimum), max(maximum), "
                "count(integral), sum(integral), count(first_value), "
                f"sum({HELD.format(dt='first_dt', value='first_value')}), "
                "sum(active) + sum(first_dt) FROM rollups "
                "WHERE metric = ? AND width = ? AND start > ? AND start < ?",
                (metric_id, width, start, last_bucket)).fetchone()
            rows, count, totals, total, minimum, maximum, integrals, integral, firsts, held, \
                active = row
            if rows:
                # rows with all values NaN have a NULL minimum and maximum
                acc.extend(count, sum_of(rows, totals, total), nan_if_none(minimum),
                           nan_if_none(maximum),
                           sum_of(rows, integrals, integral) + sum_of(rows, firsts, held),
                           active)
        acc.merge(self._collect(metric_id, last_bucket, hi, level - 1))
        return acc


def _bounds(start: int | None, end: int | None, *, inclusive: bool) -> tuple[int, int]:
    lo = INT64_MIN if start is None else int(start)
    hi = INT64_MAX if end is None else int(end)
    if lo > hi or (lo == hi and not inclusive):
        raise StoreError(f"invalid time range: start {lo} ns is not before end {hi} ns")
    return lo, hi

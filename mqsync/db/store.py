"""SQLite storage of metric time series, with the aggregates MetricQ history requests ask for.

Layout (one file, WAL journal)::

    metrics(id, name)                          one row per metric
    points(metric, time, value, dt)            PRIMARY KEY (metric, time), WITHOUT ROWID
    rollups(metric, width, start, count, sum, minimum, maximum, integral, active,
            first_time, first_dt, first_value) PRIMARY KEY (metric, width, start), WITHOUT ROWID

``points`` is clustered by (metric, time): a range of one metric is one sequential read.  The
value columns have no declared type, so SQLite keeps every double bit for bit (a ``REAL``
column would store ``-0.0`` as the integer 0).

**Semantics (MetricQ's "last" semantics, as in metricq-db-hta and the official
``TimeAggregate.from_value_pair``)**: a point ``(t_i, v_i)`` says the metric had value ``v_i``
from the previous point ``t_{i-1}`` until ``t_i``, so it holds over ``(t_{i-1}, t_i]``.  Each
stored point keeps ``dt = t_i - t_{i-1}`` (0 for the metric's very first point, which covers no
time), so integrals need no window function.  An aggregate over ``(start, end]``:

* ``count``, ``sum``: of the points with ``start < t <= end``;
* ``integral`` (value x ns) and ``active_time`` (ns): the integral of that step function over
  ``(start, end]``, and the time it is defined there.  The first point's interval is cut at
  ``start``; the first point *after* ``end`` contributes the part of its interval before
  ``end`` (count 0).  Before the metric's first point and after its last one nothing is known,
  so ``active_time`` can be shorter than the range, and ``mean = integral / active_time``;
* ``minimum``, ``maximum``: over every point that contributes (including that partial one, as
  metricq-db-hta does, so that ``minimum <= mean <= maximum`` holds).

An empty aggregate has count 0, sum 0, minimum +inf, maximum -inf, integral 0, active time 0
(the identities of combining aggregates, as in HTA).

**Rollups**: for every width in ``rollup_widths`` (default 1 s, 10 s, ... 100 000 s) the store
keeps, per aligned bucket ``(start, start + width]``, the aggregate of the raw points in it and
its first point.  They are updated in the same transaction as the raw points, so an aggregate
over a day of 1 kHz data reads a few hundred rows instead of 86.4 million, and an aggregate
timeline at a rollup width reads one row per bucket.

**Ingest**: points arrive in order per metric.  As metricq-db-hta does, a point not later than
the metric's last stored point is dropped (a redelivered chunk is thus stored once) and so is
a NaN value; both are counted in :class:`InsertResult`.
"""

from __future__ import annotations

import bisect
import logging
import math
import operator
import sqlite3
import threading
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

from ..errors import ConfigError, MqsyncError
from ..timeseries import TimeAggregate, Timedelta, Timestamp

logger = logging.getLogger(__name__)

__all__ = [
    "AggregateRow",
    "DEFAULT_ROLLUP_WIDTHS",
    "InsertResult",
    "SqliteStore",
    "StoreError",
    "TooMuchData",
]

_S = 1_000_000_000
#: Rollup widths of a new store: 1 s to 100 000 s (about 28 h), each ten times the one before.
DEFAULT_ROLLUP_WIDTHS: tuple[int, ...] = tuple(_S * 10**k for k in range(6))
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS metrics (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS points (
    metric INTEGER NOT NULL, time INTEGER NOT NULL, value NOT NULL, dt INTEGER NOT NULL,
    PRIMARY KEY (metric, time)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rollups (
    metric INTEGER NOT NULL, width INTEGER NOT NULL, start INTEGER NOT NULL,
    count INTEGER NOT NULL, sum, minimum NOT NULL, maximum NOT NULL, integral,
    active INTEGER NOT NULL, first_time INTEGER NOT NULL, first_dt INTEGER NOT NULL,
    first_value NOT NULL,
    PRIMARY KEY (metric, width, start)) WITHOUT ROWID;
"""

# A value holding over no time (the metric's first point) adds nothing to the integral, even
# if it is infinite (inf * 0 would be NaN).
_INTEGRAL = "sum(CASE WHEN dt = 0 THEN 0.0 ELSE value * dt END)"

_UPSERT_ROLLUP = """
INSERT INTO rollups VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (metric, width, start) DO UPDATE SET
    count = count + excluded.count, sum = sum + excluded.sum,
    minimum = min(minimum, excluded.minimum), maximum = max(maximum, excluded.maximum),
    integral = integral + excluded.integral, active = active + excluded.active
"""


class StoreError(MqsyncError):
    """The store cannot answer a request (bad arguments, a corrupt or foreign file)."""


class TooMuchData(StoreError):
    """A request would return more points or buckets than the store's limit allows."""


class InsertResult(NamedTuple):
    """What one :meth:`SqliteStore.insert_many` call did."""

    stored: int
    """Points written."""
    non_monotonic: int
    """Points dropped because they were not later than the metric's last point."""
    nan: int
    """Points dropped because their value was NaN."""


class AggregateRow(NamedTuple):
    """An aggregate as the store computes it (see the module docstring for the semantics)."""

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


class SqliteStore:
    """Metric time series in one SQLite file; thread-safe.

    Writes go through one connection, reads through another (WAL lets them run at the same
    time); each is serialised by a lock of its own.

    Args:
        path: the database file (created with its tables if missing); ``":memory:"`` is
            refused (the two connections must share the data).
        rollup_widths: bucket widths in ns for pre-computed aggregates, ascending, each a
            multiple of the one before.  Only used when the file is new; an existing file keeps
            the widths it was created with.
        max_points: most raw points one request may return (:class:`TooMuchData` beyond).
        max_buckets: most buckets one aggregate timeline may span.
        synchronous: SQLite's ``synchronous`` pragma; ``NORMAL`` (the default) survives a
            crash of the process, ``FULL`` also a power loss.

    Raises:
        ConfigError: the path cannot be opened, or the arguments are invalid.
    """

    def __init__(self, path: str | Path, *, rollup_widths: Sequence[int] | None = None,
                 max_points: int = 2_000_000, max_buckets: int = 1_000_000,
                 synchronous: str = "NORMAL"):
        if str(path) == ":memory:" or not str(path):
            raise ConfigError("SqliteStore needs a file path, got ':memory:'; use a temporary "
                              "file instead")
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ConfigError(f"invalid synchronous {synchronous!r}: expected NORMAL or FULL")
        if not (isinstance(max_points, int) and max_points > 0
                and isinstance(max_buckets, int) and max_buckets > 0):
            raise ConfigError(f"max_points and max_buckets must be positive integers, got "
                              f"{max_points!r} and {max_buckets!r}")
        self.path = Path(path)
        self.max_points = max_points
        self.max_buckets = max_buckets
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        try:
            self._writer = self._connect(synchronous)
            with self._write_lock:
                self._writer.executescript(_SCHEMA)
                self.rollup_widths = self._load_widths(rollup_widths)
            self._reader = self._connect(synchronous)
        except sqlite3.Error as error:
            raise ConfigError(f"cannot open database {self.path}: {error}") from None
        self._ids: dict[str, int] = {}
        self._read_ids: dict[str, int] = {}
        self._last: dict[int, int | None] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"<SqliteStore {str(self.path)!r}>"

    def _connect(self, synchronous: str) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                     timeout=30.0)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(f"PRAGMA synchronous={synchronous.upper()}")
        return connection

    def _load_widths(self, requested: Sequence[int] | None) -> tuple[int, ...]:
        rows = dict(self._writer.execute("SELECT key, value FROM meta").fetchall())
        if "rollup_widths" in rows:
            if rows.get("schema") != _SCHEMA_VERSION:
                raise ConfigError(f"{self.path}: unsupported schema version {rows.get('schema')!r}"
                                  f", expected {_SCHEMA_VERSION}")
            widths = tuple(int(w) for w in rows["rollup_widths"].split(",") if w)
            if requested is not None and tuple(requested) != widths:
                logger.warning("%s keeps the rollup widths it was created with (%s), not %s",
                               self.path, widths, tuple(requested))
            return widths
        widths = _check_widths(DEFAULT_ROLLUP_WIDTHS if requested is None else requested)
        self._writer.executemany("INSERT INTO meta VALUES (?, ?)", [
            ("schema", _SCHEMA_VERSION), ("rollup_widths", ",".join(map(str, widths)))])
        return widths

    def close(self) -> None:
        """Close both connections (idempotent)."""
        if self._closed:
            return
        self._closed = True
        with self._write_lock:
            self._writer.close()
        with self._read_lock:
            self._reader.close()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------

    def insert(self, metric: str, times_ns: Sequence[int], values: Sequence[float]) -> InsertResult:
        """Store points of one metric (one transaction); see :meth:`insert_many`."""
        return self.insert_many([(metric, times_ns, values)])

    def insert_many(self, chunks: Iterable[tuple[str, Sequence[int], Sequence[float]]]
                    ) -> InsertResult:
        """Store the points of many chunks in one transaction, with their rollups.

        ``chunks`` are ``(metric, times_ns, values)``; a metric's points must come in time
        order (later chunks after earlier ones); points not later than the metric's last stored
        point and NaN values are dropped and counted.

        Raises:
            sqlite3.Error: the write failed; nothing of this call is stored.
        """
        grouped: dict[str, tuple[list[int], list[float]]] = {}
        for metric, times_ns, values in chunks:
            if len(times_ns) != len(values):
                raise ValueError(f"chunk of {metric!r} has {len(times_ns)} times but "
                                 f"{len(values)} values")
            entry = grouped.get(metric)
            if entry is None:
                grouped[metric] = (list(times_ns), list(map(float, values)))
            else:
                entry[0].extend(times_ns)
                entry[1].extend(map(float, values))
        stored = non_monotonic = nan = 0
        with self._write_lock:
            self._writer.execute("BEGIN IMMEDIATE")
            try:
                for metric, (times_ns, values) in grouped.items():
                    result = self._insert_metric(metric, times_ns, values)
                    stored += result.stored
                    non_monotonic += result.non_monotonic
                    nan += result.nan
                self._writer.execute("COMMIT")
            except BaseException:
                self._writer.execute("ROLLBACK")
                # the cached ids and last times may name what was rolled back
                self._last.clear()
                self._ids.clear()
                raise
        return InsertResult(stored, non_monotonic, nan)

    def _insert_metric(self, metric: str, times: list[int], values: list[float]) -> InsertResult:
        metric_id = self._write_id(metric)
        last = self._last_time(metric_id)
        n = len(times)
        in_order = (n == 0 or last is None or times[0] > last) and all(
            map(operator.lt, times, times[1:]))
        if not in_order or any(map(math.isnan, values)):
            times, values, dropped_order, dropped_nan = _filter(times, values, last)
            if dropped_order:
                logger.warning("%s: dropped %d point(s) of %r not later than its last point",
                               self.path.name, dropped_order, metric)
        else:
            dropped_order = dropped_nan = 0
        if not times:
            return InsertResult(0, dropped_order, dropped_nan)
        # dt of each point: time since the metric's previous point (0 for its very first one)
        dts = list(map(operator.sub, times, [times[0] if last is None else last, *times]))
        self._writer.executemany(
            "INSERT INTO points VALUES (?, ?, ?, ?)",
            zip([metric_id] * len(times), times, values, dts))
        partials = _bucket_points(times, values, dts, self.rollup_widths[0])
        for level, width in enumerate(self.rollup_widths):
            if level:
                partials = _merge_buckets(partials, width)
            self._writer.executemany(_UPSERT_ROLLUP, [
                (metric_id, width, *partial) for partial in partials])
        self._last[metric_id] = times[-1]
        return InsertResult(len(times), dropped_order, dropped_nan)

    def _write_id(self, metric: str) -> int:
        metric_id = self._ids.get(metric)
        if metric_id is None:
            row = self._writer.execute("SELECT id FROM metrics WHERE name = ?",
                                       (metric,)).fetchone()
            if row is None:
                metric_id = self._writer.execute("INSERT INTO metrics (name) VALUES (?)",
                                                 (metric,)).lastrowid
            else:
                metric_id = row[0]
            self._ids[metric] = metric_id
        return metric_id

    def _last_time(self, metric_id: int) -> int | None:
        if metric_id not in self._last:
            row = self._writer.execute(
                "SELECT time FROM points WHERE metric = ? ORDER BY time DESC LIMIT 1",
                (metric_id,)).fetchone()
            self._last[metric_id] = None if row is None else row[0]
        return self._last[metric_id]

    # -- reading ---------------------------------------------------------------------

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
            return None if row is None else (row[0], row[1])

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
            if span is None:
                return _Acc().row(timestamp)
            first_time, last_time = span
            # Nothing is known before the first point or after the last one.
            lo, hi = max(lo, first_time - 1), min(hi, last_time)
            acc = _Acc()
            if lo < hi:
                acc = self._collect(metric_id, lo, hi, len(self.rollup_widths) - 1)
                acc.cut_before(lo)
            elif lo >= last_time:
                return acc.row(timestamp)
            following = self._point_after(metric_id, hi)
        if following is not None:
            time, dt, value = following
            overlap = hi - max(lo, time - dt)
            if overlap > 0:
                acc.add_partial(value, overlap)
        return acc.row(timestamp)

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
            if span is None:
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
                rows = self._reader.execute(
                    "SELECT (start - ?) / ?, count, sum, minimum, maximum, integral, active, "
                    "first_time, first_dt, first_value FROM rollups WHERE metric = ? AND "
                    "width = ? AND start >= ? AND start < ? ORDER BY start",
                    (origin, width, metric_id, width, origin, top)).fetchall()
            else:
                rows = self._reader.execute(
                    "SELECT g.k, g.c, g.s, g.mn, g.mx, g.i, g.a, g.ft, p.dt, p.value FROM ("
                    " SELECT (time - 1 - ?) / ? AS k, count(*) AS c, sum(value) AS s,"
                    f" min(value) AS mn, max(value) AS mx, {_INTEGRAL} AS i, sum(dt) AS a,"
                    " min(time) AS ft FROM points WHERE metric = ? AND time > ? AND time <= ?"
                    " GROUP BY k) AS g JOIN points AS p ON p.metric = ? AND p.time = g.ft"
                    " ORDER BY g.k",
                    (origin, width, metric_id, origin, top, metric_id)).fetchall()
            following = self._point_after(metric_id, top)
        # per bucket: [count, sum, minimum, maximum, integral, active]
        accs: dict[int, list] = {}
        for k, count, total, minimum, maximum, integral, active, ftime, fdt, fvalue in rows:
            if total is None:  # SQLite's NULL for a NaN sum
                total = math.nan
            if integral is None:
                integral = math.nan
            # the part of the first point's interval that lies in earlier buckets goes there
            bucket_start = origin + k * width
            first_start = ftime - fdt
            if fdt and first_start < bucket_start:
                excess = bucket_start - first_start
                integral -= fvalue * excess
                active -= excess
                begin = max(origin, first_start)
                if begin >= bucket_start - width:  # the common case: only the previous bucket
                    if begin < bucket_start:
                        _add_partial(accs, k - 1, fvalue, bucket_start - begin)
                else:
                    _spread(accs, origin, width, begin, bucket_start, fvalue)
            accs[k] = [count, total, minimum, maximum, integral, active]
        if following is not None:
            time, dt, value = following
            if time - dt < top:
                _spread(accs, origin, width, max(origin, time - dt), top, value)
        return width, [AggregateRow(origin + k * width, acc[2], acc[3], acc[1], acc[0], acc[4],
                                    acc[5])
                       for k, acc in sorted(accs.items()) if acc[0] or acc[5]]

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
        return None if row is None else (row[0], row[1], row[2])

    def _collect(self, metric_id: int, lo: int, hi: int, level: int) -> _Acc:
        """The aggregate of the raw points in ``(lo, hi]``, from rollups where they fit."""
        acc = _Acc()
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
            row = self._reader.execute(
                f"SELECT count(*), sum(value), min(value), max(value), {_INTEGRAL}, sum(dt) "
                "FROM points WHERE metric = ? AND time > ? AND time <= ?",
                (metric_id, lo, hi)).fetchone()
            if row[0]:
                first = self._reader.execute(
                    "SELECT time, dt, value FROM points WHERE metric = ? AND time > ? "
                    "ORDER BY time LIMIT 1", (metric_id, lo)).fetchone()
                acc.merge_row(row[0], _nan_if_none(row[1]), row[2], row[3],
                              _nan_if_none(row[4]), row[5], tuple(first))
            return acc
        acc.merge(self._collect(metric_id, lo, first_bucket, level - 1))
        row = self._reader.execute(
            "SELECT sum(count), sum(sum), count(sum), min(minimum), max(maximum), "
            "sum(integral), count(integral), sum(active), count(*) FROM rollups "
            "WHERE metric = ? AND width = ? AND start >= ? AND start < ?",
            (metric_id, width, first_bucket, last_bucket)).fetchone()
        count, total, totals, minimum, maximum, integral, integrals, active, rows = row
        if count:
            first = self._reader.execute(
                "SELECT first_time, first_dt, first_value FROM rollups WHERE metric = ? "
                "AND width = ? AND start >= ? ORDER BY start LIMIT 1",
                (metric_id, width, first_bucket)).fetchone()
            # sum() skips NULLs, and a NULL sum is a NaN: it must stay NaN
            acc.merge_row(count, total if totals == rows else math.nan, minimum, maximum,
                          integral if integrals == rows else math.nan, active, tuple(first))
        acc.merge(self._collect(metric_id, last_bucket, hi, level - 1))
        return acc


def _check_widths(widths: Sequence[int]) -> tuple[int, ...]:
    widths = tuple(widths)
    if not widths:
        raise ConfigError("rollup_widths must name at least one width in ns")
    for index, width in enumerate(widths):
        if isinstance(width, bool) or not isinstance(width, int) or width <= 0:
            raise ConfigError(f"invalid rollup width {width!r}: must be a positive int of ns")
        if index and width % widths[index - 1]:
            raise ConfigError(f"rollup widths must ascend, each a multiple of the one before; "
                              f"{width} does not follow {widths[index - 1]}")
    if len(set(widths)) != len(widths):
        raise ConfigError(f"rollup widths must be distinct, got {widths}")
    return widths


def _bounds(start: int | None, end: int | None, *, inclusive: bool) -> tuple[int, int]:
    lo = _INT64_MIN if start is None else int(start)
    hi = _INT64_MAX if end is None else int(end)
    if lo > hi or (lo == hi and not inclusive):
        raise StoreError(f"invalid time range: start {lo} ns is not before end {hi} ns")
    return lo, hi


def _filter(times: list[int], values: list[float], last: int | None
            ) -> tuple[list[int], list[float], int, int]:
    """Drop points not later than their predecessor (or ``last``) and NaN values."""
    kept_times: list[int] = []
    kept_values: list[float] = []
    previous = _INT64_MIN - 1 if last is None else last
    dropped_order = dropped_nan = 0
    for time, value in zip(times, values):
        if time <= previous:
            dropped_order += 1
        elif value != value:
            dropped_nan += 1
        else:
            kept_times.append(time)
            kept_values.append(value)
            previous = time
    return kept_times, kept_values, dropped_order, dropped_nan


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

"""SQLite storage of metric time series, with the aggregates MetricQ history requests ask for.

Layout (one file, WAL journal)::

    metrics(id, name)                          one row per metric
    points(metric, time, value, dt)            PRIMARY KEY (metric, time), WITHOUT ROWID
    rollups(metric, width, start, count, sum, minimum, maximum, integral, active,
            first_time, first_dt, first_value) PRIMARY KEY (metric, width, start), WITHOUT ROWID

``points`` is clustered by (metric, time): a range of one metric is one sequential read.  The
value columns have no declared type, so SQLite keeps every double bit for bit (a ``REAL``
column would store ``-0.0`` as the integer 0).  SQLite has no NaN: a NaN is stored as NULL
and read back as NaN (its sign and payload bits are not kept).

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

**NaN and infinities** follow IEEE 754 arithmetic; no request fails because of a value:

* ``sum`` and ``integral`` are IEEE sums: NaN if a NaN contributes or if +inf and -inf both
  do, else +inf or -inf if an infinite value contributes.  A value that holds over no time
  (the metric's first point) adds nothing to the integral, even inf or NaN (inf x 0 is NaN);
* ``minimum`` and ``maximum`` ignore NaN (IEEE 754 minNum/maxNum, C's ``fmin``/``fmax``,
  SQL's ``min``/``max``): they are NaN only if every contributing value is NaN.  So values
  1, NaN, 3 give minimum 1, maximum 3, sum NaN, integral NaN (and mean NaN);
* ``count`` and ``active_time`` count a NaN point like any other;
* finite values whose sum or product exceeds the range of a double give +inf or -inf; the
  store adds in its own order (rollups, SQLite), so rounding, and an overflow met together
  with an infinite value of the other sign, may differ from a sum in time order.

**Rollups**: for every width in ``rollup_widths`` (default 1 s, 10 s, ... 100 000 s) the store
keeps, per aligned bucket ``(start, start + width]``, the aggregate of the raw points in it and
its first point.  A rollup's ``integral`` and ``active`` leave that first point out (its
interval may begin in an earlier bucket), so combining buckets and cutting an interval only
ever add: a subtraction would turn an infinite value into NaN.  They are updated in the same
transaction as the raw points, so an aggregate over a day of 1 kHz data reads a few hundred
rows instead of 86.4 million, and an aggregate timeline at a rollup width reads one row per
bucket.

**Ingest**: points arrive in order per metric.  As metricq-db-hta does, a point not later than
the metric's last stored point is dropped (a redelivered chunk is thus stored once); so is a
point whose time is not within 2**62 ns of the epoch (the years 1823 to 2116, the times an
mqsync Source sends), so that every time difference and bucket bound fits SQLite's int64.
Both are counted in :class:`InsertResult`.  Every value is stored, NaN and infinities too.

**Schema versions**: a file of schema 1 (which dropped NaN values, declared the value columns
NOT NULL and kept the first point in a rollup's integral) is converted to schema 2 when it is
opened; that reads and rewrites the whole file once.

**Layout**: this module holds :class:`SqliteStore` (opening the file, its connections and
locks); ``_schema`` the tables, SQL and rollup widths; ``_ingest`` the writes;
``_query`` the reads; ``_aggregates`` the arithmetic of aggregates, without SQL.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from typing import Sequence

from ..errors import ConfigError, StoreError, TooMuchData
from ._aggregates import AggregateRow
from ._ingest import IngestMixin, InsertResult
from ._query import QueryMixin
from ._schema import (
    DEFAULT_ROLLUP_WIDTHS,
    SCHEMA,
    SCHEMA_VERSION,
    check_widths,
    migrate_from_1,
)

logger = logging.getLogger(__name__)

__all__ = [
    "AggregateRow",
    "DEFAULT_ROLLUP_WIDTHS",
    "InsertResult",
    "SqliteStore",
    "StoreError",
    "TooMuchData",
]


class SqliteStore(IngestMixin, QueryMixin):
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
                self._writer.executescript(SCHEMA)
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
            if rows.get("schema") == "1":
                logger.warning("%s: converting to schema %s (once; this reads the whole "
                               "file)", self.path, SCHEMA_VERSION)
                self._writer.execute("BEGIN IMMEDIATE")
                try:
                    migrate_from_1(self._writer)
                    self._writer.execute("COMMIT")
                except BaseException:
                    self._writer.execute("ROLLBACK")
                    raise
                rows["schema"] = SCHEMA_VERSION
            if rows.get("schema") != SCHEMA_VERSION:
                raise ConfigError(f"{self.path}: unsupported schema version {rows.get('schema')!r}"
                                  f", expected {SCHEMA_VERSION}")
            widths = tuple(int(w) for w in rows["rollup_widths"].split(",") if w)
            if requested is not None and tuple(requested) != widths:
                logger.warning("%s keeps the rollup widths it was created with (%s), not %s",
                               self.path, widths, tuple(requested))
            return widths
        widths = check_widths(DEFAULT_ROLLUP_WIDTHS if requested is None else requested)
        self._writer.executemany("INSERT INTO meta VALUES (?, ?)", [
            ("schema", SCHEMA_VERSION), ("rollup_widths", ",".join(map(str, widths)))])
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

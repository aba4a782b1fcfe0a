"""Writing to the store: points of many chunks in one transaction, with their rollups.

Points out of order, or out of the time range the store can hold, are dropped and counted.
Every value is kept, NaN and infinities too (a NaN is stored as NULL, see
:mod:`mqsync.db._schema`)."""

from __future__ import annotations

import logging
import operator
import sqlite3
import threading
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

from ._aggregates import bucket_points, merge_buckets
from ._schema import TIME_LIMIT, UPSERT_ROLLUP

logger = logging.getLogger(__name__)


class InsertResult(NamedTuple):
    """What one :meth:`SqliteStore.insert_many` call did."""

    stored: int
    """Points written."""
    non_monotonic: int
    """Points dropped because they were not later than the metric's last point."""
    nan: int = 0
    """Always 0: NaN values are stored since schema 2 (kept so that code reading it runs)."""
    out_of_range: int = 0
    """Points dropped because their time was not within ``TIME_LIMIT`` ns of the epoch."""


class IngestMixin:
    """The writing half of :class:`~mqsync.db.SqliteStore` (under its write lock)."""

    path: Path
    rollup_widths: tuple[int, ...]
    _writer: sqlite3.Connection
    _write_lock: threading.Lock
    _ids: dict[str, int]
    _last: dict[int, int | None]

    def insert(self, metric: str, times_ns: Sequence[int], values: Sequence[float]) -> InsertResult:
        """Store points of one metric (one transaction); see :meth:`insert_many`."""
        return self.insert_many([(metric, times_ns, values)])

    def insert_many(self, chunks: Iterable[tuple[str, Sequence[int], Sequence[float]]]
                    ) -> InsertResult:
        """Store the points of many chunks in one transaction, with their rollups.

        ``chunks`` are ``(metric, times_ns, values)``; a metric's points must come in time
        order (later chunks after earlier ones); points not later than the metric's last stored
        point, and points with ``abs(time) >= TIME_LIMIT``, are dropped and counted.  Every
        value is stored, NaN and infinities too.

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
        stored = non_monotonic = out_of_range = 0
        with self._write_lock:
            self._writer.execute("BEGIN IMMEDIATE")
            try:
                for metric, (times_ns, values) in grouped.items():
                    result = self._insert_metric(metric, times_ns, values)
                    stored += result.stored
                    non_monotonic += result.non_monotonic
                    out_of_range += result.out_of_range
                self._writer.execute("COMMIT")
            except BaseException:
                self._writer.execute("ROLLBACK")
                # the cached ids and last times may name what was rolled back
                self._last.clear()
                self._ids.clear()
                raise
        return InsertResult(stored, non_monotonic, 0, out_of_range)

    def _insert_metric(self, metric: str, times: list[int], values: list[float]) -> InsertResult:
        metric_id = self._write_id(metric)
        last = self._last_time(metric_id)
        n = len(times)
        in_order = (n == 0 or last is None or times[0] > last) and all(
            map(operator.lt, times, times[1:]))
        if not in_order or (n and not -TIME_LIMIT < times[0] <= times[-1] < TIME_LIMIT):
            times, values, dropped, out_of_range = _filter(times, values, last)
            if dropped:
                logger.warning("%s: dropped %d point(s) of %r not later than its last point",
                               self.path.name, dropped, metric)
            if out_of_range:
                logger.warning("%s: dropped %d point(s) of %r with a time not within %d ns of "
                               "the epoch", self.path.name, out_of_range, metric, TIME_LIMIT)
        else:
            dropped = out_of_range = 0
        if not times:
            return InsertResult(0, dropped, 0, out_of_range)
        # dt of each point: time since the metric's previous point (0 for its very first one)
        dts = list(map(operator.sub, times, [times[0] if last is None else last, *times]))
        self._writer.executemany(
            "INSERT INTO points VALUES (?, ?, ?, ?)",
            zip([metric_id] * len(times), times, values, dts))
        partials = bucket_points(times, values, dts, self.rollup_widths[0])
        for level, width in enumerate(self.rollup_widths):
            if level:
                partials = merge_buckets(partials, width)
            self._writer.executemany(UPSERT_ROLLUP, [
                (metric_id, width, *partial) for partial in partials])
        self._last[metric_id] = times[-1]
        return InsertResult(len(times), dropped, 0, out_of_range)

    def _write_id(self, metric: str) -> int:
        metric_id = self._ids.get(metric)
        if metric_id is None:
            row = self._writer.execute("SELECT id FROM metrics WHERE name = ?",
                                       (metric,)).fetchone()
            if row is None:
                inserted = self._writer.execute("INSERT INTO metrics (name) VALUES (?)",
                                                (metric,)).lastrowid
                # an INSERT into a table with a rowid always sets lastrowid
                assert inserted is not None
                metric_id = inserted
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


def _filter(times: list[int], values: list[float], last: int | None
            ) -> tuple[list[int], list[float], int, int]:
    """Drop points out of the time range and points not later than their predecessor (or
    ``last``); return the rest and how many were dropped for each reason."""
    kept_times: list[int] = []
    kept_values: list[float] = []
    previous = -TIME_LIMIT if last is None else last
    dropped = out_of_range = 0
    for time, value in zip(times, values):
        if not -TIME_LIMIT < time < TIME_LIMIT:
            out_of_range += 1
        elif time <= previous:
            dropped += 1
        else:
            kept_times.append(time)
            kept_values.append(value)
            previous = time
    return kept_times, kept_values, dropped, out_of_range

"""The file format of :class:`~mqsync.db.SqliteStore`: its tables, the SQL shared by ingest
and queries, the rollup widths and the errors the store raises."""

from __future__ import annotations

import sqlite3
from typing import Sequence

from ..errors import ConfigError
from ..source import TIME_LIMIT_NS
from ._aggregates import sum_of

_S = 1_000_000_000
#: Rollup widths of a new store: 1 s to 100 000 s (about 28 h), each ten times the one before.
DEFAULT_ROLLUP_WIDTHS: tuple[int, ...] = tuple(_S * 10**k for k in range(6))
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
#: Points are stored with ``-TIME_LIMIT < time < TIME_LIMIT`` ns (the years 1823 to 2116), the
#: times a Source sends: every difference of two times, and every bucket bound, fits an int64.
TIME_LIMIT = TIME_LIMIT_NS
_MAX_WIDTH = 2**61
SCHEMA_VERSION = "2"

# Every value column is NULL for NaN: sqlite3 binds a NaN as NULL, and SQLite's arithmetic
# yields NULL where IEEE arithmetic yields NaN (inf - inf, NULL + x).  So NOT NULL is declared
# only on the integer columns.  A rollup's integral and active time leave out its first point,
# whose interval may begin in an earlier bucket: combining buckets then only ever adds.
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS metrics (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS points (
    metric INTEGER NOT NULL, time INTEGER NOT NULL, value, dt INTEGER NOT NULL,
    PRIMARY KEY (metric, time)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rollups (
    metric INTEGER NOT NULL, width INTEGER NOT NULL, start INTEGER NOT NULL,
    count INTEGER NOT NULL, sum, minimum, maximum, integral,
    active INTEGER NOT NULL, first_time INTEGER NOT NULL, first_dt INTEGER NOT NULL,
    first_value,
    PRIMARY KEY (metric, width, start)) WITHOUT ROWID;
"""

# A value holding over no time (the metric's first point) adds nothing, even if it is
# infinite or NaN (inf * 0 would be NaN).
HELD = "CASE WHEN ({dt}) = 0 THEN 0.0 ELSE ({value}) * ({dt}) END"

# A later part of a bucket: its points follow the bucket's first point, so its own first point
# joins the integral and the active time.  min() of SQL is NULL if either side is NULL (all
# NaN): coalesce keeps the other side.
UPSERT_ROLLUP = f"""
INSERT INTO rollups VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (metric, width, start) DO UPDATE SET
    count = count + excluded.count, sum = sum + excluded.sum,
    minimum = coalesce(min(minimum, excluded.minimum), minimum, excluded.minimum),
    maximum = coalesce(max(maximum, excluded.maximum), maximum, excluded.maximum),
    integral = integral + (excluded.integral
                           + {HELD.format(dt="excluded.first_dt", value="excluded.first_value")}),
    active = active + excluded.active + excluded.first_dt
"""

# Schema 1 (before NaN was stored): NOT NULL value columns, and rollups whose integral and
# active time included the first point's whole interval.
_MIGRATE_FROM_1 = f"""
ALTER TABLE points RENAME TO points_v1;
ALTER TABLE rollups RENAME TO rollups_v1;
{SCHEMA}
INSERT INTO points SELECT metric, time, value, dt FROM points_v1;
INSERT INTO rollups SELECT metric, width, start, count, sum, minimum, maximum,
    integral - {HELD.format(dt="first_dt", value="first_value")}, active - first_dt,
    first_time, first_dt, first_value FROM rollups_v1;
DROP TABLE points_v1;
DROP TABLE rollups_v1;
"""


def migrate_from_1(connection: sqlite3.Connection) -> None:
    """Rewrite a schema 1 file as schema 2, in the connection's open transaction.

    A rollup's integral loses its first point's part by a subtraction, which is exact enough
    while that part is finite; where it is not (an infinite value, or a product that
    overflows), the integral is summed again from the bucket's points.
    """
    for statement in _MIGRATE_FROM_1.split(";"):
        if statement.strip():
            connection.execute(statement)
    rows = connection.execute(
        "SELECT metric, width, start, first_time FROM rollups WHERE first_dt > 0 AND "
        "NOT abs(first_value * first_dt) < 9e999").fetchall()
    for metric, width, start, first_time in rows:
        count, counted, integral = connection.execute(
            "SELECT count(*), count(value), sum(value * dt) FROM points WHERE metric = ? AND "
            "time > ? AND time <= ?", (metric, first_time, start + width)).fetchone()
        connection.execute(
            "UPDATE rollups SET integral = ? WHERE metric = ? AND width = ? AND start = ?",
            (sum_of(count, counted, integral), metric, width, start))
    connection.execute("UPDATE meta SET value = '2' WHERE key = 'schema'")


def check_widths(widths: Sequence[int]) -> tuple[int, ...]:
    """Return ``widths`` as a tuple if they can be a new store's rollup widths.

    Raises:
        ConfigError: none given, one not a positive int of at most 2**61 ns, not ascending
            each a multiple of the one before, or not distinct.
    """
    widths = tuple(widths)
    if not widths:
        raise ConfigError("rollup_widths must name at least one width in ns")
    for index, width in enumerate(widths):
        if isinstance(width, bool) or not isinstance(width, int) or not 0 < width <= _MAX_WIDTH:
            raise ConfigError(f"invalid rollup width {width!r}: must be a positive int of ns, "
                              f"at most {_MAX_WIDTH} (about 73 years)")
        if index and width % widths[index - 1]:
            raise ConfigError(f"rollup widths must ascend, each a multiple of the one before; "
                              f"{width} does not follow {widths[index - 1]}")
    if len(set(widths)) != len(widths):
        raise ConfigError(f"rollup widths must be distinct, got {widths}")
    return widths

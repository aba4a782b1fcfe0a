"""The file format of :class:`~mqsync.db.SqliteStore`: its tables, the SQL shared by ingest
and queries, the rollup widths and the errors the store raises."""

from __future__ import annotations

from typing import Sequence

from ..errors import ConfigError, MqsyncError

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

"""A standalone store-and-stream buffer: rows in SQLite, sent periodically.

This is the ``SqliteDataStreamer`` idea with Pythonic names. Define *storages* (tables
of named columns after a ``timestamp``), :meth:`~DataStreamer.store` rows in them, and
:meth:`~DataStreamer.stream` a storage: every ``period`` seconds the rows stored since
the last successful send are passed to a ``formatter`` and its result to a
``destination``. Call :meth:`~DataStreamer.do_updates` from your own loop (it returns when
it next wants to be called), or let :meth:`~DataStreamer.start` run it on a thread.

=====================================  ==========================================
seed                                   here
=====================================  ==========================================
``SqliteDataStreamer(sqlitename=)``    ``DataStreamer(path)``
``addStorage(name, keys, types)``      ``add_storage(name, {key: type, ...})``
``storeData(name, time, *values)``     ``store(name, *values, timestamp=None)``
``stream(name, ..., sqlfilter=)``      ``stream(name, destination, period, formatter,
                                       where=predicate)``
``doUpdates(now, messenger)``          ``do_updates(now=None)``
``stopStream(name)`` → userdata        ``stop_stream(name)`` → userdata
=====================================  ==========================================

Filtering is a Python predicate on each row, not SQL text (the seed's ``sqlfilter``):
no caller-supplied SQL ever reaches the database, so there is nothing to inject and
nothing that can break the streamer's own ``WHERE`` clause (an unparenthesised ``OR``
would silently resend old rows). Only rows newer than the last send are read, so
filtering them in Python costs little.

A destination (or formatter) that raises loses nothing: the error is logged with its
traceback, counted in :attr:`StreamStatus.failures`, and the same rows are sent again at
the next period. Rows are kept after sending; :meth:`~DataStreamer.purge` deletes old
ones.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, Tuple, Union

import attrs

from mqsync.errors import ConfigError, MqsyncError
from mqsync.state import _move_aside

__all__ = ["DataStreamer", "StreamStatus", "StreamerError"]

logger = logging.getLogger(__name__)

Row = Tuple[Any, ...]
ColumnType = Union[str, type]
Columns = Union[Mapping[str, ColumnType], Sequence[Tuple[str, ColumnType]]]

_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,62}\Z")
_RESERVED = {"timestamp"}
# Declared types accepted for columns, mapped to the SQLite type the table is created with.
_SQL_TYPES = {
    "INTEGER": "INTEGER",
    "INT": "INTEGER",
    "BIGINT": "INTEGER",
    "BOOLEAN": "INTEGER",
    "BOOL": "INTEGER",
    "REAL": "REAL",
    "FLOAT": "REAL",
    "DOUBLE": "REAL",
    "TEXT": "TEXT",
    "VARCHAR": "TEXT",
    "CHAR": "TEXT",
    "STRING": "TEXT",
    "BLOB": "BLOB",
    "BYTES": "BLOB",
    "NUMERIC": "NUMERIC",
}
_PYTHON_TYPES = {bool: "INTEGER", int: "INTEGER", float: "REAL", str: "TEXT", bytes: "BLOB"}


class StreamerError(MqsyncError):
    """The streamer's database cannot be used (closed, or a disk error)."""


@attrs.frozen
class StreamStatus:
    """What a stream has done: rows and batches sent, failed sends, its position."""

    name: str
    period: float
    last_id: int
    next_due: float
    sent_batches: int
    sent_rows: int
    failures: int


@attrs.define(eq=False)
class _Stream:
    name: str
    destination: Callable[[Any], object]
    period: float
    formatter: Callable[[list[Row], Any], Any]
    where: Callable[[Row], bool] | None
    userdata: Any
    last_id: int
    next_due: float
    max_rows: int | None
    sent_batches: int = 0
    sent_rows: int = 0
    failures: int = 0


def _check_identifier(kind: str, name: object) -> str:
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise ConfigError(
            f"invalid {kind} name {name!r}: expected a letter followed by up to 62 letters, "
            "digits or underscores"
        )
    if name.lower().startswith("sqlite_"):
        raise ConfigError(f"invalid {kind} name {name!r}: names starting with sqlite_ are SQLite's")
    return name


def _sql_type(column: str, declared: ColumnType) -> str:
    if isinstance(declared, type):
        if declared in _PYTHON_TYPES:
            return _PYTHON_TYPES[declared]
    elif isinstance(declared, str) and declared.strip().upper() in _SQL_TYPES:
        return _SQL_TYPES[declared.strip().upper()]
    raise ConfigError(
        f"invalid type {declared!r} for column {column!r}: expected one of "
        f"{', '.join(sorted(_SQL_TYPES))} or int, float, str, bytes, bool"
    )


def _next_deadline(due: float, period: float, now: float) -> float:
    """The next slot of the schedule ``due + k * period`` after ``now`` (no catch-up burst)."""
    due += period
    if due <= now:
        due += period * (math.floor((now - due) / period) + 1)
    return due


class DataStreamer:
    """Storages of timestamped rows in SQLite, streamed periodically to destinations.

    :param path: the database file (WAL mode), or ``":memory:"``.
    :param clock: seconds since the epoch; used for default timestamps and due times.
    :raises StreamerError: the database cannot be opened.

    Thread-safe: one connection guarded by a lock; destinations and formatters run
    outside the lock, so a slow destination does not block :meth:`store`.
    """

    def __init__(
        self, path: str | os.PathLike[str] = ":memory:", *, clock: Callable[[], float] = time.time
    ) -> None:
        self._in_memory = str(path) == ":memory:"
        self.path = Path(path)
        self.recovered_from: Path | None = None
        self._clock = clock
        self._lock = threading.Lock()
        self._update_lock = threading.Lock()
        self._storages: dict[str, tuple[str, ...]] = {}
        self._streams: dict[str, _Stream] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._wake = threading.Event()
        self._conn: sqlite3.Connection | None = self._open()

    # -- database ------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        target = ":memory:" if self._in_memory else str(self.path)
        conn = sqlite3.connect(target, timeout=5.0, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
        except BaseException:
            conn.close()
            raise
        if problems != ["ok"]:
            conn.close()
            raise sqlite3.DatabaseError(f"integrity check failed: {'; '.join(problems[:3])}")
        return conn

    def _open(self) -> sqlite3.Connection:
        if not self._in_memory:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            try:
                return self._connect()
            except sqlite3.OperationalError:
                raise  # locked, unreadable, ...: not damage, do not move anything
            except sqlite3.DatabaseError as problem:
                self.recovered_from = _move_aside(self.path, ("-wal", "-shm"))
                logger.error(
                    "streamer database %s is damaged (%s): moved it aside to %s and starting "
                    "a fresh one",
                    self.path,
                    problem,
                    self.recovered_from,
                )
                return self._connect()
        except sqlite3.Error as exc:
            raise StreamerError(f"cannot open streamer database {self.path}: {exc}") from exc

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StreamerError(f"streamer database {self.path} is closed")
        return self._conn

    def _columns_of(self, name: str) -> tuple[str, ...]:
        try:
            return self._storages[name]
        except KeyError:
            raise KeyError(f"no storage named {name!r}; add it with add_storage()") from None

    # -- storages ------------------------------------------------------------------------

    def add_storage(self, name: str, columns: Columns) -> None:
        """Create the storage ``name`` with these value columns (after ``timestamp``).

        ``columns`` maps column names to types, or is a sequence of ``(name, type)``;
        types are SQL names (INTEGER, REAL, TEXT, VARCHAR, BLOB, ...) or Python types
        (int, float, str, bytes, bool). An existing table must have the same columns.

        :raises ConfigError: a name is not a plain identifier (letters, digits,
            underscores; this is what keeps SQL out of names), a type is unknown, the
            storage exists with other columns, or a column repeats.
        """
        _check_identifier("storage", name)
        pairs = list(columns.items()) if isinstance(columns, Mapping) else list(columns)
        if not pairs:
            raise ConfigError(f"storage {name!r} needs at least one column")
        names: list[str] = []
        types: list[str] = []
        for column, declared in pairs:
            _check_identifier("column", column)
            if column.lower() in _RESERVED:
                raise ConfigError(f"invalid column name {column!r}: it is added by the streamer")
            if column.lower() in (seen.lower() for seen in names):
                raise ConfigError(f"column {column!r} appears twice in storage {name!r}")
            names.append(column)
            types.append(_sql_type(column, declared))
        wanted = [("_id", "INTEGER"), ("timestamp", "REAL"), *zip(names, types)]
        definition = ", ".join(
            ['"_id" INTEGER PRIMARY KEY AUTOINCREMENT', '"timestamp" REAL NOT NULL']
            + [f'"{column}" {sql_type}' for column, sql_type in zip(names, types)]
        )
        with self._lock:
            conn = self._connection()
            try:
                existing = [
                    (row[1], row[2].upper()) for row in conn.execute(f'PRAGMA table_info("{name}")')
                ]
                if existing and existing != wanted:
                    raise ConfigError(
                        f"storage {name!r} exists in {self.path} with other columns "
                        f"{[column for column, _ in existing[1:]]}, not "
                        f"{['timestamp', *names]}"
                    )
                if not existing:
                    conn.execute(f'CREATE TABLE "{name}" ({definition})')
            except sqlite3.Error as exc:
                raise StreamerError(f"cannot create storage {name!r}: {exc}") from exc
            self._storages[name] = ("timestamp", *names)

    def columns(self, name: str) -> tuple[str, ...]:
        """Return the column names of storage ``name``, ``timestamp`` first (the order of
        the values in every row given to a formatter). Raises KeyError if unknown."""
        with self._lock:
            return self._columns_of(name)

    def store(self, name: str, *values: Any, timestamp: float | None = None) -> int:
        """Store one row in storage ``name``; return its row id.

        ``values`` follow the storage's columns in order; ``timestamp`` defaults to now.

        :raises KeyError: no such storage.
        :raises ValueError: the number of values does not match the columns.
        :raises StreamerError: the write failed.
        """
        stamp = self._clock() if timestamp is None else float(timestamp)
        with self._lock:
            columns = self._columns_of(name)
            if len(values) != len(columns) - 1:
                raise ValueError(
                    f"storage {name!r} takes {len(columns) - 1} values "
                    f"({', '.join(columns[1:])}), got {len(values)}"
                )
            marks = ", ".join("?" * len(columns))
            quoted = ", ".join(f'"{column}"' for column in columns)
            try:
                cursor = self._connection().execute(
                    f'INSERT INTO "{name}" ({quoted}) VALUES ({marks})', (stamp, *values)
                )
            except sqlite3.Error as exc:
                raise StreamerError(f"cannot store a row in {name!r}: {exc}") from exc
            return int(cursor.lastrowid)

    def purge(self, name: str, *, before: float) -> int:
        """Delete the rows of storage ``name`` with a timestamp before ``before``; return
        how many. Rows not yet streamed are deleted too."""
        with self._lock:
            self._columns_of(name)
            try:
                cursor = self._connection().execute(
                    f'DELETE FROM "{name}" WHERE "timestamp" < ?', (before,)
                )
            except sqlite3.Error as exc:
                raise StreamerError(f"cannot purge {name!r}: {exc}") from exc
            return cursor.rowcount

    # -- streams -------------------------------------------------------------------------

    def stream(
        self,
        name: str,
        destination: Callable[[Any], object],
        period: float,
        formatter: Callable[[list[Row], Any], Any],
        *,
        where: Callable[[Row], bool] | None = None,
        userdata: Any = None,
        after_id: int | None = None,
        max_rows: int | None = None,
    ) -> None:
        """Send the new rows of storage ``name`` every ``period`` seconds.

        At each due time the rows stored since the last successful send (each a tuple in
        :meth:`columns` order) that ``where(row)`` accepts are passed as a list to
        ``formatter(rows, userdata)``, and its result to ``destination``. Nothing is sent
        when there are no new rows. ``after_id`` starts after that row id (``0``: all
        rows already stored; ``None``, the default: only rows stored from now on);
        ``max_rows`` bounds one send.

        :raises KeyError: no such storage.
        :raises ValueError: the storage is already streamed, or ``period`` is not > 0.
        """
        if not period > 0:
            raise ValueError(f"invalid stream period {period!r}: expected seconds > 0")
        if max_rows is not None and max_rows < 1:
            raise ValueError(f"invalid max_rows {max_rows!r}: expected an int >= 1 or None")
        with self._lock:
            self._columns_of(name)
            if name in self._streams:
                raise ValueError(f"storage {name!r} is already streamed; stop_stream() it first")
            if after_id is None:
                row = self._connection().execute(f'SELECT max("_id") FROM "{name}"').fetchone()
                after_id = row[0] or 0
            self._streams[name] = _Stream(
                name=name,
                destination=destination,
                period=float(period),
                formatter=formatter,
                where=where,
                userdata=userdata,
                last_id=after_id,
                next_due=self._clock() + period,
                max_rows=max_rows,
            )
        self._wake.set()

    def stop_stream(self, name: str) -> Any:
        """Stop streaming storage ``name`` and return its ``userdata``. Rows not yet sent
        stay stored. Raises KeyError if the storage is not streamed."""
        with self._lock:
            try:
                stream = self._streams.pop(name)
            except KeyError:
                raise KeyError(f"storage {name!r} is not streamed") from None
        return stream.userdata

    def stream_status(self, name: str) -> StreamStatus:
        """Return what the stream of storage ``name`` has done. Raises KeyError."""
        with self._lock:
            try:
                s = self._streams[name]
            except KeyError:
                raise KeyError(f"storage {name!r} is not streamed") from None
            return StreamStatus(
                s.name, s.period, s.last_id, s.next_due, s.sent_batches, s.sent_rows, s.failures
            )

    def _send(self, stream: _Stream) -> None:
        with self._lock:
            if self._streams.get(stream.name) is not stream:
                return  # stopped meanwhile
            columns = self._storages[stream.name]
            quoted = ", ".join(f'"{column}"' for column in columns)
            try:
                fetched = (
                    self._connection()
                    .execute(
                        f'SELECT "_id", {quoted} FROM "{stream.name}" WHERE "_id" > ?'
                        ' ORDER BY "_id" LIMIT ?',
                        (stream.last_id, -1 if stream.max_rows is None else stream.max_rows),
                    )
                    .fetchall()
                )
            except sqlite3.Error as exc:
                raise StreamerError(f"cannot read storage {stream.name!r}: {exc}") from exc
        if not fetched:
            return
        last_id = fetched[-1][0]
        rows = [tuple(row[1:]) for row in fetched]
        try:
            if stream.where is not None:
                rows = [row for row in rows if stream.where(row)]
            if rows:
                stream.destination(stream.formatter(rows, stream.userdata))
        except Exception:
            with self._lock:
                stream.failures += 1
            logger.warning(
                "stream of storage %r: sending %d rows failed (failure %d); they are sent "
                "again at the next period",
                stream.name,
                len(rows),
                stream.failures,
                exc_info=True,
            )
            return
        with self._lock:
            stream.last_id = last_id
            if rows:
                stream.sent_batches += 1
                stream.sent_rows += len(rows)

    def do_updates(self, now: float | None = None, *, force: bool = False) -> float | None:
        """Send every stream that is due at ``now`` (default: the clock); with ``force``,
        every stream. Return the next due time, or ``None`` when nothing is streamed.

        After a missed period the schedule skips to its next future slot; it does not
        send a burst to catch up.
        """
        with self._update_lock:
            now = self._clock() if now is None else now
            with self._lock:
                due = [s for s in self._streams.values() if force or s.next_due <= now]
            for stream in due:
                self._send(stream)
                with self._lock:
                    if stream.next_due <= now:
                        stream.next_due = _next_deadline(stream.next_due, stream.period, now)
            with self._lock:
                return min((s.next_due for s in self._streams.values()), default=None)

    def flush(self) -> None:
        """Send the new rows of every stream now, whatever their period."""
        self.do_updates(force=True)

    # -- background thread ---------------------------------------------------------------

    def start(self) -> None:
        """Run :meth:`do_updates` on a background thread until :meth:`stop`. Idempotent.

        Due times come from the clock, waiting is real time (at most 1 s per wait): with
        an injected fake clock, call :meth:`do_updates` yourself instead.
        """
        with self._lock:
            self._connection()
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping = False
            self._thread = threading.Thread(
                target=self._run, name=f"mqsync-streamer-{self.path.name}", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                next_due = self.do_updates()
            except Exception:
                logger.exception("streamer %s: update failed", self.path)
                next_due = None
            delay = 1.0 if next_due is None else next_due - self._clock()
            if delay > 0 and not self._stopping:
                self._wake.wait(min(delay, 1.0))

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the background thread and join it; return whether it ended in time (it
        cannot while a destination hangs). Idempotent; does not flush."""
        thread = self._thread
        if thread is None:
            return True
        self._stopping = True
        self._wake.set()
        thread.join(timeout)
        if thread.is_alive():
            logger.warning("streamer %s: thread did not stop within %.1f s", self.path, timeout)
            return False
        self._thread = None
        return True

    def close(self) -> None:
        """Stop the thread and close the database (idempotent). Does not flush."""
        self.stop()
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> DataStreamer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

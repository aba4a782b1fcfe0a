"""A standalone store-and-stream buffer: rows in SQLite, sent periodically.

Define *storages* (tables of named columns after a ``timestamp``), store rows in them, and
stream a storage: every ``period`` seconds the rows stored since the last successful send
are passed to a ``formatter`` and its result is sent on. The module has two faces over one
mechanism:

- :class:`DataStreamer`, with Pythonic names: a stream sends to a ``destination``
  callable; call :meth:`~DataStreamer.do_updates` from your own loop (it returns when it
  next wants to be called), or let :meth:`~DataStreamer.start` run it on a thread.
- :class:`SqliteDataStreamer`, the seed's API as it stands, so that an agent written for
  it runs with only its import changed: a stream is addressed to nodes, groups and docks,
  and :meth:`~SqliteDataStreamer.doUpdates` hands each payload to ``messenger.send`` as a
  :class:`StreamMessage`. It is a thin adapter over a :class:`DataStreamer`.

==========================================  ============================================
seed: ``SqliteDataStreamer``                 Pythonic: ``DataStreamer``
==========================================  ============================================
``SqliteDataStreamer(sqlitename=)``          ``DataStreamer(path)``
``threadHack=True``                          (always thread-safe; accepted and ignored)
``addStorage(key, keys, types)``             ``add_storage(name, {key: type, ...})``
``storeData(key, time, *values)``            ``store(name, *values, timestamp=None)``
``stream(key, nodes, groups, docks, ...)``   ``stream(name, destination, period, formatter,
                                             after_id=0)``
rows stored before ``stream()`` are sent     only with ``after_id=0`` (default: from now on)
``sqlfilter="level >= 30"`` (SQL text)       ``where=lambda row: row[3] >= 30``
``formatter(streamer, rows, userdata)``      ``formatter(rows, userdata)``
``doUpdates(now, messenger)``                ``do_updates(now=None)``
``messenger.send(StreamMessage)``            ``destination(payload)``
``stopStream(key)`` → userdata               ``stop_stream(name)`` → userdata
==========================================  ============================================

A seed stream starts at the first row of its storage: rows stored before ``stream()``
are sent (with a database file, also those of earlier runs; delete old ones with
``streamer.purge``). A Pythonic stream starts after the rows already stored unless given
``after_id=0``.

Filtering: the Pythonic ``where`` is a Python predicate on each row, so no caller-supplied
SQL ever reaches the database. The seed's ``sqlfilter`` is SQL text and is trusted: it
must be the application's own condition, written in its code, never built from input that
came over the network (format numbers with ``int()``; for anything else use ``where``). It
is checked when the stream is created and runs on a sub-select that already holds the
streamer's own condition, so an ``OR``, a parenthesis or a ``--`` comment in it cannot widen
that condition and resend old rows; the returned row ids are checked again in Python.

A destination, messenger or formatter that raises loses nothing: the error is logged with
its traceback, counted in :attr:`StreamStatus.failures`, and the same rows are sent again
at the next period. Rows are kept after sending; :meth:`~DataStreamer.purge` deletes old
ones.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping, NoReturn, Sequence, Tuple, Union

import attrs

from mqsync._files import move_aside
from mqsync.errors import ConfigError, StreamerError

__all__ = ["DataStreamer", "SqliteDataStreamer", "StreamMessage", "StreamStatus", "StreamerError"]

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
    sql_filter: str | None = None
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


def _select_query(name: str, columns: Sequence[str], sql_filter: str | None) -> str:
    """The select of a stream's rows: ``_id`` and ``columns`` of the rows with
    ``? < _id <= ?`` (and the filter), oldest first, at most ``?`` of them."""
    quoted = ", ".join(f'"{column}"' for column in columns)
    own = f'SELECT "_id", {quoted} FROM "{name}" WHERE "_id" > ? AND "_id" <= ?'
    if sql_filter is None:
        return f'{own} ORDER BY "_id" LIMIT ?'
    # The application's condition filters a sub-select that holds the streamer's own, on
    # lines of its own: no OR, parenthesis or -- comment in it can reach or widen that one.
    return f'SELECT * FROM ({own}) WHERE (\n{sql_filter}\n) ORDER BY "_id" LIMIT ?'


def _call_destination(stream: _Stream, payload: Any) -> object:
    return stream.destination(payload)


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
                self.recovered_from = move_aside(self.path, ("-wal", "-shm"))
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
            row_id = cursor.lastrowid
            assert row_id is not None  # set by the INSERT just made
            return row_id

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
        rows already stored, as the seed's ``stream`` does; ``None``, the default: only
        rows stored from now on); ``max_rows`` bounds one send.

        :raises KeyError: no such storage.
        :raises ValueError: the storage is already streamed, or ``period`` is not > 0.
        :raises TypeError: ``destination`` or ``formatter`` is not callable.
        """
        self._add_stream(
            name,
            destination,
            period,
            formatter,
            where=where,
            sql_filter=None,
            userdata=userdata,
            after_id=after_id,
            max_rows=max_rows,
        )

    def _add_stream(
        self,
        name: str,
        destination: Callable[[Any], object],
        period: float,
        formatter: Callable[[list[Row], Any], Any],
        *,
        where: Callable[[Row], bool] | None,
        sql_filter: str | None,
        userdata: Any,
        after_id: int | None,
        max_rows: int | None,
    ) -> None:
        """Check a stream of either API and add it; ``sql_filter`` is trusted SQL text.

        :raises ConfigError: ``sql_filter`` is not a valid condition on the storage.
        """
        if not period > 0:
            raise ValueError(f"invalid stream period {period!r}: expected seconds > 0")
        if max_rows is not None and max_rows < 1:
            raise ValueError(f"invalid max_rows {max_rows!r}: expected an int >= 1 or None")
        for kind, function in (("destination", destination), ("formatter", formatter)):
            if not callable(function):
                raise TypeError(f"invalid {kind} {function!r}: expected a callable")
        with self._lock:
            columns = self._columns_of(name)
            if name in self._streams:
                raise ValueError(f"storage {name!r} is already streamed; stop_stream() it first")
            if sql_filter is not None:
                try:  # prepared once here, so a mistake shows now and not at every period
                    self._connection().execute(
                        _select_query(name, columns, sql_filter), (0, 0, 0)
                    ).fetchall()
                except sqlite3.Error as exc:
                    raise ConfigError(
                        f"invalid sqlfilter {sql_filter!r} for storage {name!r}: {exc}; "
                        f"expected an SQL condition on {', '.join(columns)}"
                    ) from exc
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
                sql_filter=sql_filter,
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

    def _send(self, stream: _Stream, deliver: Callable[[_Stream, Any], object]) -> None:
        with self._lock:
            if self._streams.get(stream.name) is not stream:
                return  # stopped meanwhile
            after = stream.last_id
            query = _select_query(stream.name, self._storages[stream.name], stream.sql_filter)
            limit = -1 if stream.max_rows is None else stream.max_rows
            conn = self._connection()
            try:
                newest = conn.execute(f'SELECT max("_id") FROM "{stream.name}"').fetchone()[0]
                if newest is None or newest <= after:
                    return
                fetched = conn.execute(query, (after, newest, limit)).fetchall()
            except sqlite3.Error as exc:
                # e.g. an sqlfilter that fails on some row's data: this stream tries again
                # at its next period, the others go on
                stream.failures += 1
                logger.warning("stream of storage %r: reading its rows failed (failure %d), "
                               "tried again at the next period: %s", stream.name,
                               stream.failures, exc)
                return
        limited = stream.max_rows is not None and len(fetched) >= stream.max_rows
        # Checked again here so that not even a UNION in an sqlfilter can resend a row.
        fetched = [row for row in fetched if after < row[0] <= newest]
        # Rows an sqlfilter left out were looked at too: unless max_rows cut the read
        # short, the stream moves past every row up to ``newest``.
        if not limited:
            examined = newest
        elif fetched:
            examined = fetched[-1][0]
        else:
            examined = after
        rows = [tuple(row[1:]) for row in fetched]
        try:
            if stream.where is not None:
                rows = [row for row in rows if stream.where(row)]
            if rows:
                deliver(stream, stream.formatter(rows, stream.userdata))
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
            stream.last_id = examined
            if rows:
                stream.sent_batches += 1
                stream.sent_rows += len(rows)

    def do_updates(self, now: float | None = None, *, force: bool = False) -> float | None:
        """Send every stream that is due at ``now`` (default: the clock); with ``force``,
        every stream. Return the next due time, or ``None`` when nothing is streamed.

        After a missed period the schedule skips to its next future slot; it does not
        send a burst to catch up.
        """
        return self._update(now, force, _call_destination)

    def _update(
        self, now: float | None, force: bool, deliver: Callable[[_Stream, Any], object]
    ) -> float | None:
        """:meth:`do_updates`, handing each payload to ``deliver(stream, payload)``."""
        with self._update_lock:
            now = self._clock() if now is None else now
            with self._lock:
                due = [s for s in self._streams.values() if force or s.next_due <= now]
            for stream in due:
                self._send(stream, deliver)
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


# -- the seed's API ------------------------------------------------------------------------


def _as_names(value: Any) -> Any:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    try:
        return tuple(value)
    except TypeError:
        return value  # not iterable: _check_names says what is wrong


def _check_names(_instance: object, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, tuple) or not all(isinstance(name, str) for name in value):
        raise TypeError(
            f"invalid {attribute.name} {value!r}: expected a name, a list of names or None"
        )


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


@attrs.frozen
class StreamMessage:
    """What :meth:`SqliteDataStreamer.doUpdates` hands to ``messenger.send``.

    ``nodes``, ``groups`` and ``docks`` are the stream's destination, each a tuple of names
    (given as a list, one name or None); ``data`` is what the stream's formatter returned.

    :raises TypeError: a destination is not a name, a list of names or None.
    """

    nodes: tuple[str, ...] = attrs.field(converter=_as_names, validator=_check_names)
    groups: tuple[str, ...] = attrs.field(converter=_as_names, validator=_check_names)
    docks: tuple[str, ...] = attrs.field(converter=_as_names, validator=_check_names)
    data: Any = attrs.field(default=None, repr=_short_repr)


@attrs.frozen
class _MessengerRoute:
    """The destination of a :class:`SqliteDataStreamer` stream: it needs the messenger
    that :meth:`SqliteDataStreamer.doUpdates` is given."""

    address: StreamMessage

    def message(self, payload: Any) -> StreamMessage:
        return attrs.evolve(self.address, data=payload)

    def __call__(self, payload: Any) -> NoReturn:
        # Reached through DataStreamer.do_updates, flush or start: the rows stay stored.
        raise StreamerError(
            "this stream was made by SqliteDataStreamer.stream and sends through a "
            "messenger: run it with SqliteDataStreamer.doUpdates(now, messenger)"
        )


class SqliteDataStreamer:
    """The seed's store-and-stream API as it stands, over a :class:`DataStreamer`.

    An agent written for the seed runs with only its import changed::

        logstream = SqliteDataStreamer(sqlitename="logging.db", threadHack=True)
        logstream.addStorage("logkey", keys, types)
        logstream.storeData("logkey", time.time(), *values)
        logstream.stream("logkey", nodes, groups, docks, period, formatter,
                         sqlfilter="level >= 30", userdata=userdata)
        nexttime = logstream.doUpdates(time.time(), messenger)
        userdata = logstream.stopStream("logkey")

    :param sqlitename: the database file (WAL mode), or ``":memory:"``.
    :param threadHack: accepted and ignored. The seed needed it to use its SQLite
        connection from several threads; here the one connection is always opened for
        that (``check_same_thread=False``) and every use of it is serialised by the
        streamer's lock, while formatters and messengers run outside the lock. Every
        method may be called from any thread, with ``":memory:"`` too.
    :param clock: seconds since the epoch, for due times (not in the seed).
    :raises StreamerError: the database cannot be opened.

    The seed's methods keep their names and arguments; :attr:`streamer` is the
    :class:`DataStreamer` underneath, for what the seed lacks (``purge``,
    ``stream_status``). :meth:`close` (or a ``with`` block) closes the database.
    """

    def __init__(
        self,
        sqlitename: str | os.PathLike[str] = ":memory:",
        threadHack: bool = False,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.threadHack = threadHack
        self._streamer = DataStreamer(sqlitename, clock=clock)

    @property
    def streamer(self) -> DataStreamer:
        """The :class:`DataStreamer` that stores and sends for this one."""
        return self._streamer

    def addStorage(self, key: str, keys: Sequence[str], types: Sequence[ColumnType]) -> None:
        """Create the storage ``key`` with the columns ``keys`` of the SQL ``types``
        (two parallel lists; ``'VARCHAR'``, ``'INTEGER'``, ...), after a timestamp. An
        existing table must have the same columns.

        :raises ConfigError: the lists differ in length, or as
            :meth:`DataStreamer.add_storage`.
        """
        if isinstance(keys, str) or isinstance(types, str):
            raise ConfigError(
                f"invalid keys {keys!r} or types {types!r} for storage {key!r}: expected two lists"
            )
        keys, types = list(keys), list(types)
        if len(keys) != len(types):
            raise ConfigError(
                f"storage {key!r} has {len(keys)} keys {keys} but {len(types)} types "
                f"{types}: expected one type per key"
            )
        self._streamer.add_storage(key, list(zip(keys, types)))

    def storeData(self, key: str, timestamp: float | None, *values: Any) -> int:
        """Store one row: ``timestamp`` (None: now), then the values in the order of the
        storage's keys. Return the row id.

        :raises KeyError: no such storage.
        :raises ValueError: the number of values does not match the keys.
        :raises StreamerError: the write failed.
        """
        return self._streamer.store(key, *values, timestamp=timestamp)

    def stream(
        self,
        key: str,
        dstnodes: Sequence[str] | str | None,
        dstgroups: Sequence[str] | str | None,
        docks: Sequence[str] | str | None,
        period: float,
        formatter: Callable[[SqliteDataStreamer, list[Row], Any], Any],
        sqlfilter: str | None = None,
        userdata: Any = None,
    ) -> None:
        """Send the rows of storage ``key`` every ``period`` seconds, starting with the
        rows already stored.

        At each due :meth:`doUpdates` the rows not sent yet that ``sqlfilter`` accepts
        (each a tuple: timestamp, then the values in key order) are passed as a list to
        ``formatter(streamer, rows, userdata)``, and a :class:`StreamMessage` with its
        result as ``data`` to ``messenger.send``. Nothing is sent when there are no such
        rows.

        ``sqlfilter`` is an SQL condition on the storage's columns (``"level >= 30"``),
        appended to the select in parentheses. It is the application's own SQL: never
        build it from input that came over the network.

        :raises KeyError: no such storage.
        :raises ValueError: the storage is already streamed, or ``period`` is not > 0.
        :raises ConfigError: ``sqlfilter`` is not a valid condition on the storage.
        :raises TypeError: a destination is not a name, a list of names or None, or
            ``formatter`` is not callable.
        """
        route = _MessengerRoute(StreamMessage(dstnodes, dstgroups, docks))
        if not callable(formatter):
            raise TypeError(f"invalid formatter {formatter!r}: expected a callable")
        if sqlfilter is not None and not isinstance(sqlfilter, str):
            raise TypeError(f"invalid sqlfilter {sqlfilter!r}: expected SQL text or None")
        self._streamer._add_stream(
            key,
            route,
            period,
            functools.partial(formatter, self),
            where=None,
            sql_filter=sqlfilter if sqlfilter and sqlfilter.strip() else None,
            userdata=userdata,
            after_id=0,
            max_rows=None,
        )

    def doUpdates(self, now: float | None, messenger: Any) -> float | None:
        """Send every stream that is due at ``now``: each payload goes to
        ``messenger.send(StreamMessage)``. A send or formatter that raises is logged and
        counted, and its rows are sent again at the next period.

        ``now`` (None: the clock) and the result are seconds on the streamer's clock,
        ``time.time()`` unless ``clock`` was given. Return when a stream is next due, or
        None when nothing is streamed (then call again when you start a stream, or once a
        second).

        :raises TypeError: ``messenger`` has no ``send`` method.
        :raises StreamerError: the database cannot be read.
        """
        send = getattr(messenger, "send", None)
        if not callable(send):
            raise TypeError(f"invalid messenger {messenger!r}: expected a send(message) method")

        def deliver(stream: _Stream, payload: Any) -> object:
            if isinstance(stream.destination, _MessengerRoute):
                return send(stream.destination.message(payload))
            return stream.destination(payload)  # a stream added through .streamer

        return self._streamer._update(now, False, deliver)

    def stopStream(self, key: str) -> Any:
        """Stop streaming storage ``key`` and return the ``userdata`` given to
        :meth:`stream`. Rows not sent yet stay stored. Raises KeyError if not streamed."""
        return self._streamer.stop_stream(key)

    def close(self) -> None:
        """Close the database (idempotent). Does not send what is left."""
        self._streamer.close()

    def __enter__(self) -> SqliteDataStreamer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

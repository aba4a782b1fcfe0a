"""The SQLite store-and-forward buffer under a Source.

Every chunk is written to the spool before it is published and deleted when the broker
confirms it; whatever is left after a crash or an outage is replayed, in order, on
start-up. :class:`Spool` is that table of chunks.

Durability
    The database runs in WAL mode. With ``synchronous="NORMAL"`` (the default) a
    commit survives the application crashing or being killed (``kill -9``) at any
    moment, but the last commits before a power loss or kernel crash may be lost (the
    database stays consistent). ``synchronous="FULL"`` fsyncs every commit, so a commit
    also survives power loss, at the price of one fsync per append and per ack.

Threads
    One connection (``check_same_thread=False``) guarded by one lock: the Source's
    ``send()`` thread appends while its IO thread reads and acks. SQLite serialises
    writers anyway, and a single connection means no ``SQLITE_BUSY`` handling and exact
    in-memory counters (rows, bytes, drops). The file is opened with
    ``locking_mode=EXCLUSIVE``, so a second process using the same spool fails at once
    with :class:`SpoolError` instead of publishing the same chunks twice.

Limits
    ``max_bytes`` bounds the payload bytes held (the file is larger by a few dozen bytes
    per row; freed pages are reused, the file does not shrink). ``max_age`` bounds how old
    a held chunk may be. When a new chunk would exceed ``max_bytes``, or chunks older
    than ``max_age`` exist, the **oldest** chunks are dropped, counted in
    ``dropped_chunks``/``dropped_points``/``dropped_bytes`` and reported in a warning:
    one per drop event, at most one per ``warn_interval`` seconds (drops in between are
    summed into the next warning, or into a last one at :meth:`Spool.close`).

Damage
    A file that is not an SQLite database, fails ``PRAGMA quick_check``, or holds another
    schema is logged as an error naming it, renamed aside to ``<name>.corrupt-<timestamp>``
    (with its ``-wal``/``-shm`` files) and replaced by a fresh spool;
    :attr:`Spool.recovered_from` tells where it went.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Tuple, Union

import attrs

from mqsync._files import move_aside
from mqsync.errors import ConfigError, SpoolError

__all__ = ["DEFAULT_MAX_BYTES", "Spool", "SpoolError", "SpooledChunk"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
"""Default bound on the payload bytes a spool holds (256 MiB)."""

_APPLICATION_ID = 0x6D717370  # "mqsp": marks the file as an mqsync spool
_SCHEMA_VERSION = 1
_COLUMNS = ("id", "metric", "payload", "points", "created")
_SIDECARS = ("-wal", "-shm")
_ID_BATCH = 500  # stays under SQLite's historical limit of 999 bound parameters
_SYNCHRONOUS = ("NORMAL", "FULL")

ChunkItem = Union[Tuple[str, bytes], Tuple[str, bytes, int]]


class _Damaged(Exception):
    """The spool file is not a usable spool (internal: triggers the move aside)."""


def _payload_repr(payload: bytes) -> str:
    return f"<{len(payload)} bytes>"


@attrs.frozen
class SpooledChunk:
    """One chunk held in the spool: its row ``id`` (the replay order), the ``metric``
    it belongs to, the encoded ``payload``, its ``points`` count (0 if the caller did
    not say) and when it was ``created`` (seconds since the epoch)."""

    id: int
    metric: str
    payload: bytes = attrs.field(repr=_payload_repr)
    points: int = 0
    created: float = 0.0


@attrs.define
class _Drop:
    chunks: int = 0
    points: int = 0
    bytes: int = 0
    events: int = 0

    def add(self, other: _Drop) -> None:
        self.chunks += other.chunks
        self.points += other.points
        self.bytes += other.bytes
        self.events += other.events


class Spool:
    """A durable FIFO of encoded chunks, kept in an SQLite file.

    :param path: the database file (created with its directory if missing), or
        ``":memory:"`` for a spool that survives nothing (tests).
    :param max_bytes: bound on the payload bytes held; ``None`` for no bound.
    :param max_age: chunks older than this many seconds are dropped; ``None`` keeps them.
    :param synchronous: ``"NORMAL"`` (survives application crashes) or ``"FULL"``
        (also survives power loss; one fsync per commit).
    :param clock: returns the time in seconds since the epoch (injectable for tests).
    :param warn_interval: at most one drop warning per this many seconds.
    :raises ConfigError: a limit or option is invalid.
    :raises SpoolError: the file cannot be opened, or another process is using it.
    """

    # How long to wait for another process to release the file before giving up.
    _lock_timeout = 1.0

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int | None = DEFAULT_MAX_BYTES,
        max_age: float | None = None,
        synchronous: str = "NORMAL",
        clock: Callable[[], float] = time.time,
        warn_interval: float = 60.0,
    ) -> None:
        if max_bytes is not None and (not isinstance(max_bytes, int) or max_bytes <= 0):
            raise ConfigError(f"invalid spool max_bytes {max_bytes!r}: expected an int > 0")
        if max_age is not None and not max_age > 0:
            raise ConfigError(f"invalid spool max_age {max_age!r}: expected seconds > 0")
        mode = str(synchronous).upper()
        if mode not in _SYNCHRONOUS:
            raise ConfigError(
                f"invalid spool synchronous {synchronous!r}: expected one of NORMAL, FULL"
            )
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.synchronous = mode
        self.dropped_chunks = 0
        self.dropped_points = 0
        self.dropped_bytes = 0
        self.recovered_from: Path | None = None
        self._in_memory = str(path) == ":memory:"
        self.path = Path(path) if not self._in_memory else Path(":memory:")
        self._clock = clock
        self._warn_interval = warn_interval
        self._last_warning: float | None = None
        self._unreported = _Drop()
        self._lock = threading.Lock()
        self._count = 0
        self._bytes = 0
        self._conn: sqlite3.Connection | None = self._open()
        try:
            with self._lock:
                self._count, self._bytes = self._conn.execute(
                    "SELECT count(*), coalesce(sum(length(payload)), 0) FROM chunks"
                ).fetchone()
                # A smaller limit than last time, or an outage longer than max_age.
                self._write(action="apply limits")
        except BaseException as exc:
            self._conn.close()
            self._conn = None
            if isinstance(exc, sqlite3.Error):
                raise SpoolError(f"cannot read spool {self.path}: {exc}") from exc
            raise

    # -- opening -------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        target = ":memory:" if self._in_memory else str(self.path)
        try:
            conn = sqlite3.connect(
                target, timeout=self._lock_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot open spool {self.path}: {exc}") from exc
        try:
            # EXCLUSIVE before the first WAL access: no -shm file, and the lock is ours
            # until close (or until the process dies, when the kernel releases it).
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if not self._in_memory and str(mode).lower() != "wal":
                raise SpoolError(f"cannot switch spool {self.path} to WAL mode (got {mode})")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute("PRAGMA journal_size_limit=8388608")
            # Take the lock now, not at the first append.
            conn.execute("BEGIN EXCLUSIVE")
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            # Locked, I/O error, permissions: a problem of the system, not of the file.
            conn.close()
            if "locked" in str(exc) or "busy" in str(exc):
                raise SpoolError(f"spool {self.path} is in use by another process ({exc})") from exc
            raise SpoolError(f"cannot open spool {self.path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:  # SQLITE_CORRUPT, SQLITE_NOTADB
            conn.close()
            raise _Damaged(str(exc)) from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _check_header(self) -> None:
        """Raise _Damaged if the file is clearly not SQLite, before SQLite opens it (and
        perhaps deletes its -wal file as invalid)."""
        if self._in_memory:
            return
        try:
            with self.path.open("rb") as file:
                header = file.read(16)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise SpoolError(f"cannot read spool {self.path}: {exc}") from exc
        if header and header != b"SQLite format 3\x00":
            raise _Damaged(f"not an SQLite database (starts with {header[:8]!r})")

    def _check(self, conn: sqlite3.Connection) -> None:
        """Raise _Damaged unless ``conn`` holds an intact spool or an empty database."""
        try:
            problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise _Damaged(f"integrity check failed: {'; '.join(problems[:3])}")
            tables = {
                row[0]
                for row in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                    " AND name NOT LIKE 'sqlite_%'"
                )
            }
            if not tables:
                return  # an empty database: becomes a spool
            application_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            columns = tuple(row[1] for row in conn.execute("PRAGMA table_info(chunks)"))
        except sqlite3.DatabaseError as exc:
            raise _Damaged(str(exc)) from exc
        if application_id != _APPLICATION_ID or columns != _COLUMNS:
            raise _Damaged(f"not an mqsync spool (tables: {', '.join(sorted(tables))})")
        if version != _SCHEMA_VERSION:
            raise _Damaged(f"unknown spool schema version {version}")

    def _open(self) -> sqlite3.Connection:
        if not self._in_memory:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn: sqlite3.Connection | None = None
        try:
            self._check_header()
            conn = self._connect()
            self._check(conn)
        except _Damaged as problem:
            if conn is not None:
                conn.close()
            try:
                self.recovered_from = move_aside(self.path, _SIDECARS)
            except OSError as exc:
                raise SpoolError(
                    f"spool file {self.path} is damaged ({problem}) and cannot be moved aside: "
                    f"{exc}"
                ) from exc
            logger.error(
                "spool file %s is damaged (%s): moved it aside to %s and starting a fresh "
                "spool; chunks held in it were not replayed",
                self.path,
                problem,
                self.recovered_from,
            )
            conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(f"PRAGMA application_id={_APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS chunks ("
                " id INTEGER PRIMARY KEY AUTOINCREMENT,"  # never reuses an id
                " metric TEXT NOT NULL,"
                " payload BLOB NOT NULL,"
                " points INTEGER NOT NULL DEFAULT 0,"
                " created REAL NOT NULL)"
            )
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.close()
            raise SpoolError(f"cannot initialise spool {self.path}: {exc}") from exc
        return conn

    # -- helpers (called with self._lock held) ------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise SpoolError(f"spool {self.path} is closed")
        return self._conn

    @contextlib.contextmanager
    def _transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise SpoolError(f"spool {self.path}: {action} failed: {exc}") from exc

    def _drop_expired(self, conn: sqlite3.Connection, now: float) -> _Drop:
        if self.max_age is None:
            return _Drop()
        cutoff = now - self.max_age
        oldest = conn.execute("SELECT created FROM chunks ORDER BY id LIMIT 1").fetchone()
        if oldest is None or oldest[0] >= cutoff:
            return _Drop()
        chunks, size, points = conn.execute(
            "SELECT count(*), coalesce(sum(length(payload)), 0), coalesce(sum(points), 0)"
            " FROM chunks WHERE created < ?",
            (cutoff,),
        ).fetchone()
        conn.execute("DELETE FROM chunks WHERE created < ?", (cutoff,))
        return _Drop(chunks, points, size, 1)

    def _expired_exists(self, conn: sqlite3.Connection) -> bool:
        if self.max_age is None:
            return False
        try:
            oldest = conn.execute("SELECT created FROM chunks ORDER BY id LIMIT 1").fetchone()
        except sqlite3.Error as exc:
            raise SpoolError(f"spool {self.path}: read failed: {exc}") from exc
        return oldest is not None and oldest[0] < self._clock() - self.max_age

    def _drop_for_space(self, conn: sqlite3.Connection, held: int, incoming: int) -> _Drop:
        if self.max_bytes is None or held + incoming <= self.max_bytes:
            return _Drop()
        need = held + incoming - self.max_bytes
        drop = _Drop(events=1)
        last_id = None
        rows = conn.execute("SELECT id, length(payload), points FROM chunks ORDER BY id")
        for row_id, size, points in rows:
            drop.chunks += 1
            drop.bytes += size
            drop.points += points
            last_id = row_id
            if drop.bytes >= need:
                break
        rows.close()
        if last_id is not None:
            conn.execute("DELETE FROM chunks WHERE id <= ?", (last_id,))
        return drop

    def _write(
        self,
        insert: Callable[[], object] | None = None,
        incoming: int = 0,
        count: int = 0,
        action: str = "append",
    ) -> object:
        """Enforce the limits for ``incoming`` new bytes, run ``insert`` in the same
        transaction, then update the counters and warn about drops."""
        conn = self._connection()
        now = self._clock()
        result = None
        with self._transaction(action):
            drop = self._drop_expired(conn, now)
            held = self._bytes - drop.bytes
            space = self._drop_for_space(conn, held, incoming)
            drop.add(space)
            if insert is not None:
                result = insert()
        self._count += count - drop.chunks
        self._bytes += incoming - drop.bytes
        if drop.chunks:
            self._note_drop(drop, now)
        return result

    def _note_drop(self, drop: _Drop, now: float) -> None:
        self.dropped_chunks += drop.chunks
        self.dropped_points += drop.points
        self.dropped_bytes += drop.bytes
        self._unreported.add(drop)
        monotonic = time.monotonic()
        if self._last_warning is not None and monotonic - self._last_warning < self._warn_interval:
            return
        self._last_warning = monotonic
        self._warn_unreported(drop)

    def _warn_unreported(self, last: _Drop | None = None) -> None:
        summary = self._unreported
        self._unreported = _Drop()
        if not summary.chunks:
            return
        reason = []
        if self.max_bytes is not None:
            reason.append(f"max_bytes={self.max_bytes}")
        if self.max_age is not None:
            reason.append(f"max_age={self.max_age}s")
        earlier = ""
        if last is not None and summary.events > 1:
            earlier = (
                f" (with {summary.events - 1} earlier drop events not yet reported:"
                f" {summary.chunks - last.chunks} chunks)"
            )
        logger.warning(
            "spool %s full: dropped the %d oldest chunks (%d points, %d bytes)%s to stay "
            "within %s; %d chunks (%d points) dropped since opening",
            self.path,
            summary.chunks,
            summary.points,
            summary.bytes,
            earlier,
            " and ".join(reason),
            self.dropped_chunks,
            self.dropped_points,
        )

    def _check_size(self, metric: str, payload: bytes) -> None:
        if not isinstance(metric, str):
            raise TypeError(f"spool metric must be str, got {type(metric).__name__}")
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise TypeError(f"spool payload must be bytes, got {type(payload).__name__}")
        if self.max_bytes is not None and len(payload) > self.max_bytes:
            raise ConfigError(
                f"spool {self.path}: a chunk of metric {metric!r} has {len(payload)} bytes, "
                f"more than max_bytes={self.max_bytes}: raise max_bytes"
            )

    # -- public API ----------------------------------------------------------------------

    def append(self, metric: str, payload: bytes, points: int = 0) -> int:
        """Store one chunk, durably; return its id.

        ``points`` (the number of data points in the chunk) only feeds
        ``dropped_points``. The oldest chunks are dropped first if the limits require.

        :raises ConfigError: the payload alone is larger than ``max_bytes``.
        :raises SpoolError: the spool is closed or the write failed (e.g. disk full).
        """
        return self.append_many([(metric, payload, points)])[0]

    def append_many(self, chunks: Iterable[ChunkItem]) -> list[int]:
        """Store several ``(metric, payload)`` or ``(metric, payload, points)`` chunks in
        one transaction; return their ids in order. Raises like :meth:`append`."""
        items: list[tuple[str, bytes, int]] = []
        for item in chunks:
            metric, payload = item[0], item[1]
            self._check_size(metric, payload)
            items.append((metric, bytes(payload), int(item[2]) if len(item) > 2 else 0))
        if not items:
            return []
        created = self._clock()
        with self._lock:
            if self.max_bytes is not None and sum(len(i[1]) for i in items) > self.max_bytes:
                # More than the whole spool holds: one transaction per chunk, so the
                # newest chunks of the batch are kept, as when appending one by one.
                return [self._insert([item], created)[0] for item in items]
            return self._insert(items, created)

    def _insert(self, items: list[tuple[str, bytes, int]], created: float) -> list[int]:
        conn = self._connection()

        def insert() -> list[int]:
            ids = []
            for metric, payload, points in items:
                row_id = conn.execute(
                    "INSERT INTO chunks (metric, payload, points, created) VALUES (?, ?, ?, ?)",
                    (metric, payload, points, created),
                ).lastrowid
                assert row_id is not None  # set by the INSERT just made
                ids.append(row_id)
            return ids

        incoming = sum(len(payload) for _, payload, _ in items)
        return self._write(insert, incoming, len(items))  # type: ignore[return-value]

    def pending(self, limit: int | None = None, after_id: int = 0) -> list[SpooledChunk]:
        """Return up to ``limit`` held chunks with an id above ``after_id``, oldest first
        (the replay order). Chunks older than ``max_age`` are dropped first.

        :raises SpoolError: the spool is closed or the read failed.
        """
        with self._lock:
            conn = self._connection()
            if self._expired_exists(conn):
                self._write(action="expire")
            try:
                rows = conn.execute(
                    "SELECT id, metric, payload, points, created FROM chunks"
                    " WHERE id > ? ORDER BY id LIMIT ?",
                    (after_id, -1 if limit is None else limit),
                ).fetchall()
            except sqlite3.Error as exc:
                raise SpoolError(f"spool {self.path}: read failed: {exc}") from exc
        return [SpooledChunk(*row) for row in rows]

    def ack(self, ids: Iterable[int]) -> int:
        """Delete the chunks with these ids (confirmed by the broker) in one transaction;
        return how many were held. Unknown ids (already acked or dropped) are ignored.

        :raises SpoolError: the spool is closed or the write failed.
        """
        id_list = [int(chunk_id) for chunk_id in ids]
        if not id_list:
            return 0
        removed = freed = 0
        with self._lock:
            with self._transaction("ack") as conn:
                for start in range(0, len(id_list), _ID_BATCH):
                    batch = id_list[start : start + _ID_BATCH]
                    marks = ",".join("?" * len(batch))
                    count, size = conn.execute(
                        "SELECT count(*), coalesce(sum(length(payload)), 0) FROM chunks"
                        f" WHERE id IN ({marks})",
                        batch,
                    ).fetchone()
                    conn.execute(f"DELETE FROM chunks WHERE id IN ({marks})", batch)
                    removed += count
                    freed += size
            self._count -= removed
            self._bytes -= freed
        return removed

    def count(self) -> int:
        """Return the number of chunks held."""
        return self._count

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        # An empty spool is still a spool: ``if spool:`` must not mean "if not empty".
        return True

    def size_bytes(self) -> int:
        """Return the payload bytes held (what ``max_bytes`` bounds)."""
        return self._bytes

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._conn is None

    def close(self) -> None:
        """Close the database (idempotent). Drops not yet reported are logged now."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is None:
                return
            self._warn_unreported()
            conn.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else f"{self._count} chunks, {self._bytes} bytes"
        return f"<Spool {str(self.path)!r} {state}>"

"""Persistent state for sources run from cron (``mqsync-source --once``).

A source that runs, publishes and exits needs to remember where it stopped (the
timestamp of the last record it read, a file offset, ...).  This module keeps such
a state as a small JSON document in a state directory:

* :func:`save_state` writes it **atomically**: the JSON goes to a temporary file in
  the same directory, which is flushed and ``fsync``-ed, then renamed over the old
  file with :func:`os.replace`, and the directory is ``fsync``-ed.  A crash (even
  ``kill -9`` or a power cut) at any moment leaves either the old or the new state,
  never a mix.
* :func:`load_state` returns the saved state, the default state when there is none,
  and the default state when the file is damaged: the damaged file is logged as an
  error and renamed aside to ``<name>.corrupt-<timestamp>`` so it can be inspected.
* :class:`StateMixin` gives a source the three methods of n6's
  ``CollectorWithStateMixin``: ``load_state()``, ``save_state(state)`` and
  ``make_default_state()``.

The format is JSON, never pickle: a state file is data, not code, and a human can read
and repair it. Times (``datetime``, ``date``, ``timedelta``, :class:`~mqsync.Timestamp`,
:class:`~mqsync.Timedelta`) are written as tagged objects such as
``{"$datetime": "2026-11-29T01:02:03+00:00"}`` and load back exactly. The document is
wrapped in an envelope (``{"mqsync_state": 1, "saved_at": ..., "state": ...}``) so that a
truncated file can never parse as a different, valid state.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import tempfile
import time
import zoneinfo
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import quote

from mqsync._files import move_aside
from mqsync.errors import StateError
from mqsync.timeseries import Timedelta, Timestamp

__all__ = [
    "STATE_FORMAT_VERSION",
    "StateError",
    "StateMixin",
    "CollectorWithStateMixin",
    "default_state_dir",
    "load_state",
    "save_state",
    "state_file_path",
]

logger = logging.getLogger(__name__)

STATE_FORMAT_VERSION = 2
"""The version written in every state file's envelope (2: tagged values such as
``{"$datetime": ...}``; a version 1 file is read as plain JSON)."""

_ENVELOPE_KEY = "mqsync_state"
_TEMP_SUFFIX = ".tmp"
# A temporary file left by a process killed mid-write is removed once it is this old.
# A save takes milliseconds, so an older temporary file belongs to no live writer.
_STALE_TEMP_SECONDS = 60.0


def default_state_dir() -> Path:
    """Return the directory for state files.

    ``$MQSYNC_STATE_DIR`` if set, else ``$XDG_STATE_HOME/mqsync`` if that is an absolute
    path, else ``~/.local/state/mqsync`` (the XDG base directory default).
    """
    explicit = os.environ.get("MQSYNC_STATE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "mqsync"
    return Path.home() / ".local" / "state" / "mqsync"


def state_file_path(name: str, state_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the state file for ``name`` (a token or class name) in ``state_dir``.

    The name is percent-encoded, so any token maps to one distinct file name and no
    name can escape the directory. Raises :class:`ValueError` for an empty name.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"invalid state name {name!r}: expected a non-empty string")
    directory = Path(state_dir) if state_dir is not None else default_state_dir()
    return directory / (quote(name, safe="") + ".json")


# Values JSON has no type for are written as one-key objects tagged with their type
# (``{"$datetime": "2026-11-29T01:02:03.000004+01:00"}``) and turned back into the same
# value on load. A dict of the application's own whose only key happens to be a tag is
# wrapped in ``{"$dict": ...}``, so it loads back as written.
_TAG_DICT = "$dict"
_TAG_DATETIME = "$datetime"  # ISO 8601; "zone" keeps a zoneinfo name, "fold" a fold of 1
_TAG_DATE = "$date"
_TAG_TIMEDELTA = "$timedelta"  # datetime.timedelta: [days, seconds, microseconds]
_TAG_TIMESTAMP = "$mqsync.Timestamp"  # nanoseconds since the epoch
_TAG_MQ_TIMEDELTA = "$mqsync.Timedelta"  # nanoseconds
_TAGS = frozenset({_TAG_DICT, _TAG_DATETIME, _TAG_DATE, _TAG_TIMEDELTA, _TAG_TIMESTAMP,
                   _TAG_MQ_TIMEDELTA})


def _encode_datetime(value: datetime.datetime) -> dict[str, Any]:
    tagged: dict[str, Any] = {_TAG_DATETIME: value.isoformat()}
    zone = getattr(value.tzinfo, "key", None)  # a zoneinfo.ZoneInfo: keep its name
    if isinstance(zone, str):
        tagged["zone"] = zone
    if value.fold:
        tagged["fold"] = 1
    return tagged


def _to_json(value: Any, where: str, active: set[int]) -> Any:
    """``value`` as plain JSON types, tagged where JSON has no type for it.

    Raises TypeError naming the first value that cannot be saved and loaded back equal.
    """
    if value is None or isinstance(value, (str, int, float)):
        return value
    if isinstance(value, datetime.datetime):
        return _encode_datetime(value)
    if isinstance(value, datetime.date):
        return {_TAG_DATE: value.isoformat()}
    if isinstance(value, datetime.timedelta):
        return {_TAG_TIMEDELTA: [value.days, value.seconds, value.microseconds]}
    if isinstance(value, Timestamp):
        return {_TAG_TIMESTAMP: value.posix_ns}
    if isinstance(value, Timedelta):
        return {_TAG_MQ_TIMEDELTA: value.ns}
    if isinstance(value, (dict, list, tuple)):
        if id(value) in active:
            raise TypeError(f"state is not JSON-serializable: {where} refers back to itself")
        active.add(id(value))
        try:
            if isinstance(value, dict):
                return _dict_to_json(value, where, active)
            return [_to_json(item, f"{where}[{index}]", active)
                    for index, item in enumerate(value)]
        finally:
            active.discard(id(value))
    raise TypeError(
        f"state is not JSON-serializable: {where} is of type {type(value).__name__}; "
        "expected dict, list, tuple, str, int, float, bool, None, datetime, date, "
        "timedelta, mqsync.Timestamp or mqsync.Timedelta"
    )


def _dict_to_json(value: dict, where: str, active: set[int]) -> dict[str, Any]:
    encoded: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise TypeError(
                f"state is not JSON-serializable: {where} has a key {key!r} of type "
                f"{type(key).__name__}; keys must be str (JSON would turn it into a "
                "string and the loaded state would differ)"
            )
        encoded[key] = _to_json(item, f"{where}[{key!r}]", active)
    if any(key in _TAGS for key in encoded):
        return {_TAG_DICT: encoded}
    return encoded


def _from_json(value: Any) -> Any:
    """A loaded JSON value with its tagged objects turned back into their values."""
    if isinstance(value, list):
        return [_from_json(item) for item in value]
    if not isinstance(value, dict):
        return value
    tags = sorted(_TAGS.intersection(value))
    if not tags:
        return {key: _from_json(item) for key, item in value.items()}
    tag = tags[0]
    tagged = value[tag]
    try:
        if len(tags) > 1:
            raise TypeError(f"more than one tag: {tags}")
        if tag == _TAG_DICT:
            if not isinstance(tagged, dict):
                raise TypeError("expected an object")
            return {key: _from_json(item) for key, item in tagged.items()}
        if tag == _TAG_DATETIME:
            decoded = datetime.datetime.fromisoformat(tagged)
            if "zone" in value:
                decoded = _in_zone(decoded, value["zone"])
            return decoded.replace(fold=value.get("fold", 0))
        if tag == _TAG_DATE:
            return datetime.date.fromisoformat(tagged)
        if tag == _TAG_TIMEDELTA:
            days, seconds, microseconds = tagged
            return datetime.timedelta(days=days, seconds=seconds, microseconds=microseconds)
        if tag == _TAG_TIMESTAMP:
            return Timestamp(_exact_int(tagged))
        return Timedelta(_exact_int(tagged))
    except (TypeError, ValueError, OverflowError, zoneinfo.ZoneInfoNotFoundError) as exc:
        raise ValueError(f"invalid {tag} value {tagged!r} ({exc})") from None


def _in_zone(value: datetime.datetime, zone: str) -> datetime.datetime:
    """``value`` (with the UTC offset it was saved with) in the time zone named ``zone``;
    in that offset when this machine has no such zone (no tzdata): the same instant."""
    try:
        return value.replace(tzinfo=zoneinfo.ZoneInfo(zone))
    except zoneinfo.ZoneInfoNotFoundError:
        logger.warning("state: time zone %r is not known here; %s keeps its UTC offset",
                       zone, value.isoformat())
        return value


def _exact_int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError("expected an integer number of nanoseconds")
    return value


def _encode(state: Any) -> bytes:
    envelope = {
        _ENVELOPE_KEY: STATE_FORMAT_VERSION,
        "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "state": _to_json(state, "state", set()),
    }
    return (json.dumps(envelope, sort_keys=True, indent=1) + "\n").encode("utf-8")


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself survive a power loss. Not possible on Windows, refused by
    # some network file systems: the new state is in place by now, so a failure here
    # only means the rename's durability is the file system's best effort.
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        logger.debug("cannot fsync state directory %s: %s", directory, exc)
    finally:
        os.close(fd)


def save_state(state: Any, path: str | os.PathLike[str]) -> None:
    """Write ``state`` to ``path`` as JSON, atomically and durably.

    The state must consist of dicts with str keys, lists, tuples (loaded back as
    lists), str, int, float, bool and None, and of ``datetime.datetime`` (naive or aware;
    a ``zoneinfo`` zone keeps its name), ``datetime.date``, ``datetime.timedelta``,
    :class:`~mqsync.Timestamp` and :class:`~mqsync.Timedelta`, which are written as
    tagged JSON objects and load back equal, of the same type and zone. Missing parent
    directories are created.

    :raises TypeError: the state holds something else; the message names where it is.
        Nothing is written in that case.
    :raises OSError: the file could not be written; the old state is left intact.
    """
    data = _encode(state)  # before touching any file
    target = Path(path)
    directory = target.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=_TEMP_SUFFIX, dir=directory)
    try:
        with os.fdopen(fd, "wb") as temp_file:
            temp_file.write(data)
            temp_file.flush()
            os.fsync(temp_file.fileno())
        os.replace(temp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise
    _fsync_directory(directory)


def _remove_stale_temp_files(path: Path, older_than: float = _STALE_TEMP_SECONDS) -> int:
    """Remove temporary files of ``path`` left by killed writers; return how many."""
    removed = 0
    now = time.time()
    try:
        candidates = list(path.parent.glob(f".{path.name}.*{_TEMP_SUFFIX}"))
    except OSError:
        return 0
    for candidate in candidates:
        try:
            if now - candidate.stat().st_mtime >= older_than:
                candidate.unlink()
                removed += 1
        except OSError:
            pass  # gone already, or not ours to remove
    return removed


def _decode(data: bytes) -> Any:
    """Return the state in ``data``; raise ValueError if it is not a valid state file."""
    if not data.strip():
        raise ValueError("the file is empty")
    try:
        document = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    if not isinstance(document, dict) or _ENVELOPE_KEY not in document or "state" not in document:
        raise ValueError(f"not an mqsync state file (no {_ENVELOPE_KEY!r} envelope)")
    version = document[_ENVELOPE_KEY]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"invalid format version {version!r}")
    if version > STATE_FORMAT_VERSION:
        raise StateError(
            f"state format version {version} is newer than this mqsync reads "
            f"({STATE_FORMAT_VERSION}); upgrade mqsync or remove the file"
        )
    # version 1 had no tags: an application's own "$date" key there is just a key
    return document["state"] if version == 1 else _from_json(document["state"])


def _load(
    path: str | os.PathLike[str], default_factory: Callable[[], Any] | None
) -> tuple[Any, Path | None]:
    """Load the state at ``path``; return it and where a damaged file was moved, if any."""
    target = Path(path)
    _remove_stale_temp_files(target)

    def default() -> Any:
        return default_factory() if default_factory is not None else None

    try:
        data = target.read_bytes()
    except FileNotFoundError:
        return default(), None
    try:
        return _decode(data), None
    except StateError as exc:
        raise StateError(f"cannot use state file {target}: {exc}") from None
    except ValueError as problem:
        aside = move_aside(target)
        logger.error(
            "state file %s is damaged (%s): moved it aside to %s and starting from the "
            "default state",
            target,
            problem,
            aside,
        )
        return default(), aside


def load_state(
    path: str | os.PathLike[str], default_factory: Callable[[], Any] | None = None
) -> Any:
    """Return the state saved at ``path``.

    A missing file gives ``default_factory()`` (``None`` without a factory). An empty,
    truncated or otherwise invalid file is logged as an error naming it, renamed aside to
    ``<name>.corrupt-<timestamp>``, and the default state is returned.

    :raises StateError: the file was written by a newer mqsync (it is left in place).
    :raises OSError: the file exists but cannot be read (e.g. permissions).
    """
    return _load(path, default_factory)[0]


class StateMixin:
    """Give a source persistent state, as n6's ``CollectorWithStateMixin`` does.

    Call :meth:`load_state` before collecting and :meth:`save_state` after each update
    (to resume right after a crash) or before exiting. Override
    :meth:`make_default_state` for the state of the first run. The file is
    ``<state_dir>/<state_name>.json``; both are attributes that may be set on the class
    or the instance:

    * ``state_dir``: ``None`` (the default) means the ``cache_dir`` key of the object's
      configuration (a plugin source's ``configuration``, from its file and the manager,
      else a client's ``config`` from the manager; n6 reads ``cache_dir`` from the
      collector's config the same way), else :func:`default_state_dir`.  A plugin that
      takes ``cache_dir`` lists it among its configuration keys.
      A source gets its configuration when it connects, so load the state after
      :meth:`~mqsync.Client.start` (or in ``task()`` / ``update()``). :meth:`save_state`
      writes to the file :meth:`load_state` read, so the two always match.
    * ``state_name``: ``None`` means the instance's ``token`` if it has one, else the
      class name.

    The mixin has no ``__init__``, so it combines with any base class, in either order.
    After :meth:`load_state`, ``state_recovered_from`` is the path a damaged state file
    was moved to, or ``None``.

    n6's collector, mapped: ``CollectorWithStateMixin`` is this class (the name is kept as
    an alias); its pickle in ``cache_dir`` is a JSON file here, which holds what n6's
    examples keep (dicts, lists, numbers, strings, and datetimes such as ``time_utc``;
    see :func:`save_state`) but no arbitrary objects.
    """

    state_dir: str | os.PathLike[str] | None = None
    state_name: str | None = None
    state_recovered_from: Path | None = None

    @property
    def state_path(self) -> Path:
        """The file this object's state is kept in."""
        name = self.state_name or getattr(self, "token", None) or type(self).__name__
        directory = self.state_dir
        if directory is None:
            # a plugin source's whole configuration (its file and the manager's), else a
            # client's configuration from the manager
            config = getattr(self, "configuration", None) or getattr(self, "config", None)
            cache_dir = config.get("cache_dir") if isinstance(config, Mapping) else None
            if cache_dir is not None:
                if not isinstance(cache_dir, str) or not cache_dir:
                    raise StateError(f"cache_dir in the configuration must be a directory "
                                     f"path, got {cache_dir!r}")
                directory = Path(cache_dir).expanduser()
        return state_file_path(name, directory)

    def make_default_state(self) -> Any:
        """Return the state of a first run (or after a damaged file). ``None`` by default."""
        return None

    def load_state(self) -> Any:
        """Return the saved state, or :meth:`make_default_state` if there is none or it is
        damaged (see :func:`load_state`)."""
        path = self.state_path
        state, self.state_recovered_from = _load(path, self.make_default_state)
        self._state_loaded_from = path
        return state

    def save_state(self, state: Any) -> None:
        """Save ``state`` atomically (see :func:`save_state`), to the file it was loaded
        from (or :attr:`state_path` when it was never loaded)."""
        save_state(state, getattr(self, "_state_loaded_from", None) or self.state_path)


CollectorWithStateMixin = StateMixin
"""n6's name for :class:`StateMixin`."""

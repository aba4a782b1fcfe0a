"""What the manager keeps: client configurations and metric metadata."""

from __future__ import annotations

import datetime
import logging
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from ..config import read_config_file
from ..errors import ConfigError
from ..state import load_state, save_state

logger = logging.getLogger(__name__)

#: Metadata keys that only the manager sets; a source's values for them are dropped.
RESERVED_KEYS = frozenset({"source", "historic", "date"})


class ConfigStore:
    """Client configurations, looked up by token.

    ``path`` is either a directory of ``<token>.json`` files or one JSON or TOML file
    mapping tokens to configurations.  Files are read at every lookup, so an edited
    configuration is served at the next registration without a restart.  ``None`` serves
    the configurations given in ``configs`` (embedded networks, tests).
    """

    def __init__(self, path: str | Path | None = None,
                 configs: Mapping[str, Mapping[str, Any]] | None = None):
        self.path = Path(path) if path is not None else None
        self._configs = {token: dict(config) for token, config in (configs or {}).items()}
        if self.path is not None and not self.path.exists():
            raise ConfigError(f"configuration path {self.path} does not exist; expected a "
                              "directory of <token>.json files or one .json/.toml file")

    def set(self, token: str, config: Mapping[str, Any]) -> None:
        """Serve ``config`` for ``token`` (overrides the files)."""
        self._configs[token] = dict(config)

    def get(self, token: str) -> dict[str, Any]:
        """The configuration of ``token``; ``{}`` when there is none.

        Raises:
            ConfigError: the file for ``token`` exists but is not a JSON/TOML object.
        """
        if token in self._configs:
            return dict(self._configs[token])
        if self.path is None:
            return {}
        if self.path.is_dir():
            file = self.path / f"{token}.json"
            if not file.exists():
                return {}
            config = read_config_file(file)
        else:
            config = read_config_file(self.path).get(token, {})
        if not isinstance(config, dict):
            raise ConfigError(f"configuration of {token!r} in {self.path} must be an object, "
                              f"got {type(config).__name__}")
        return config


class MetadataStore:
    """Metric metadata, kept in memory and, with a ``path``, in a JSON file.

    The file is rewritten atomically after every change (see :mod:`mqsync.state`), so a
    manager restarted after a crash serves the metadata it had.  A change is all or
    nothing: when the file cannot be written, memory is put back as it was and the error
    raised.  ``on_change(state)`` is then called with the whole state (:meth:`dump`), still
    under the store's lock, so calls come in the order of the changes (a standby manager
    shares the state this way); :meth:`replace` takes such a state back.
    """

    def __init__(self, path: str | Path | None = None,
                 on_change: Callable[[dict[str, Any]], None] | None = None):
        self.path = Path(path) if path is not None else None
        self.on_change = on_change
        self._lock = threading.Lock()
        self._metrics: dict[str, dict[str, Any]] = {}
        self._queues: dict[str, dict[str, Any]] = {}
        self._databases: dict[str, dict[str, list[str]]] = {}
        self._transformers: dict[str, list[str]] = {}
        if self.path is not None:
            saved = load_state(self.path, dict)
            self._metrics = dict(saved.get("metrics", {}))
            self._queues = dict(saved.get("queues", {}))
            self._databases = dict(saved.get("databases", {}))
            self._transformers = dict(saved.get("transformers", {}))
            logger.info("loaded metadata of %d metric(s) from %s", len(self._metrics), self.path)
        self._saved = self._snapshot()

    def declare(self, source: str, metrics: Mapping[str, Mapping[str, Any]]) -> None:
        """Store metadata declared by ``source`` (reserved keys dropped, ``date`` set)."""
        now = datetime.datetime.now(datetime.timezone.utc).isoformat()
        with self._lock:
            for name, metadata in metrics.items():
                entry = {k: v for k, v in metadata.items()
                         if k not in RESERVED_KEYS and not k.startswith("_")}
                entry["date"] = metadata.get("date", now)
                entry["source"] = source
                historic = self._metrics.get(name, {}).get("historic")
                if historic is not None:
                    entry["historic"] = historic
                self._metrics[name] = entry
            self._save()

    def mark_historic(self, names: Iterable[str], historic: bool = True) -> None:
        """Record that a database keeps ``names``."""
        with self._lock:
            for name in names:
                self._metrics[name] = {**self._metrics.get(name, {}), "historic": historic}
            self._save()

    def get(self, name: str) -> dict[str, Any] | None:
        """The metadata of ``name``, or None if never declared."""
        with self._lock:
            entry = self._metrics.get(name)
            return dict(entry) if entry is not None else None

    def items(self) -> list[tuple[str, dict[str, Any]]]:
        """All metrics with their metadata, sorted by name."""
        with self._lock:
            return sorted((name, dict(meta)) for name, meta in self._metrics.items())

    def queue_arguments(self, queue: str) -> dict[str, Any] | None:
        """The arguments a data queue was declared with (to declare it again identically)."""
        with self._lock:
            arguments = self._queues.get(queue)
            return dict(arguments) if arguments is not None else None

    def set_queue_arguments(self, queue: str, arguments: Mapping[str, Any] | None) -> None:
        """Remember (or, with None, forget) a data queue's declaration arguments."""
        with self._lock:
            if arguments is None:
                self._queues.pop(queue, None)
            else:
                self._queues[queue] = dict(arguments)
            self._save()

    def db_bindings(self, token: str) -> dict[str, list[str]] | None:
        """The routing keys a database's queues were bound to last: ``{"data", "history"}``."""
        with self._lock:
            bindings = self._databases.get(token)
            return None if bindings is None else {k: list(v) for k, v in bindings.items()}

    def set_db_bindings(self, token: str, data: Iterable[str], history: Iterable[str]) -> None:
        """Remember a database's bindings (to remove those it drops at its next subscribe)."""
        with self._lock:
            self._databases[token] = {"data": list(data), "history": list(history)}
            self._save()

    def transformer_bindings(self, token: str) -> list[str] | None:
        """The metrics a transformer's data queue was bound to at its last subscribe."""
        with self._lock:
            bindings = self._transformers.get(token)
            return None if bindings is None else list(bindings)

    def set_transformer_bindings(self, token: str, metrics: Iterable[str]) -> None:
        """Remember a transformer's bindings (to remove those it drops at its next
        subscribe)."""
        with self._lock:
            self._transformers[token] = list(metrics)
            self._save()

    def dump(self) -> dict[str, Any]:
        """The whole state as a JSON-ready dict (what the file holds)."""
        with self._lock:
            return {key: dict(value) for key, value in self._dump().items()}

    def replace(self, state: Mapping[str, Any]) -> None:
        """Take ``state`` (a :meth:`dump`) as the whole state; written to the file, but not
        handed to ``on_change`` (it came from there)."""
        with self._lock:
            self._metrics = dict(state.get("metrics", {}))
            self._queues = dict(state.get("queues", {}))
            self._databases = dict(state.get("databases", {}))
            self._transformers = dict(state.get("transformers", {}))
            self._save(announce=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._metrics)

    def _dump(self) -> dict[str, Any]:
        return {"metrics": self._metrics, "queues": self._queues, "databases": self._databases,
                "transformers": self._transformers}

    def _snapshot(self) -> tuple[dict[str, Any], ...]:
        return (dict(self._metrics), dict(self._queues), dict(self._databases),
                dict(self._transformers))

    def _save(self, announce: bool = True) -> None:
        """Write the file, then hand the state to ``on_change``.

        When the file cannot be written, the last saved state is restored (entries are
        replaced, never changed in place, so shallow copies of the maps are snapshots) and
        the error raised.  An ``on_change`` that fails is logged: the change stands here.
        """
        try:
            if self.path is not None:
                save_state(self._dump(), self.path)
        except BaseException:
            metrics, queues, databases, transformers = self._saved
            self._metrics, self._queues, self._databases, self._transformers = \
                dict(metrics), dict(queues), dict(databases), dict(transformers)
            raise
        self._saved = self._snapshot()
        if announce and self.on_change is not None:
            try:
                self.on_change(self._dump())
            except Exception as error:  # noqa: BLE001 - the change is made; say it was not shared
                logger.error("metadata changed, but sharing the change failed: %s", error)

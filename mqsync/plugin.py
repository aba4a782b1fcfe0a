"""Source plugins: pluggy hooks, the entry point group ``mqsync.plugins`` and their loading.

A plugin is a module (usually in a package of its own, named ``mqsync-source-<thing>``)
that implements the hook :func:`Hookspecs.mqsync_source_kinds` and is announced in its
``setup.py`` or ``pyproject.toml``::

    [project.entry-points."mqsync.plugins"]
    mything = "mqsync_source_mything"

Its source classes derive from :class:`PluginSource`: they describe their metrics and
implement ``update()``; scheduling, chunking, reconnects and configuration are the SDK's.
The built-in plugins (dummy, sysinfo, ipmi) register through the same entry points.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import os
import time
from typing import Any, Callable, ClassVar, Iterable, Mapping

import attrs
import pluggy

from ._log import Throttled
from .errors import ConfigError, PluginError
from .interval_source import IntervalSource
from .names import BrokerURL
from .rpc import rpc_handler
from .source import Source
from .timeseries import DurationLike, Timedelta

logger = logging.getLogger(__name__)

PROJECT = "mqsync"
ENTRY_POINT_GROUP = "mqsync.plugins"
#: Comma-separated plugin names; when set, only these entry points are loaded.
LOAD_ENV = "MQSYNC_LOAD_PLUGINS"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@attrs.frozen
class ConfigOption:
    """One configuration key of a source kind, for ``--usage`` and validation."""

    name: str
    default: Any
    description: str
    type: str = "any"  # "int", "float", "str", "bool", "list", "dict", "duration", "any"


@attrs.frozen
class SourceKind:
    """A kind of source a plugin offers: ``mqsync-source --plugin <name>``."""

    name: str
    source_class: type
    description: str
    options: tuple[ConfigOption, ...] = ()

    def default_config(self) -> dict[str, Any]:
        """The configuration a source of this kind starts from."""
        return {option.name: option.default for option in self.options}


class Hookspecs:
    """The hooks a plugin may implement (decorate yours with ``mqsync.plugin.hookimpl``)."""

    @hookspec
    def mqsync_source_kinds(self) -> Iterable[SourceKind]:
        """Return the source kinds this plugin provides.

        Each :class:`SourceKind` names an :class:`PluginSource` subclass; its name is what
        users pass to ``mqsync-source --plugin``.
        """
        raise NotImplementedError  # a specification: pluggy calls the implementations


@attrs.frozen
class LoadedKind:
    """A source kind together with the plugin that provided it."""

    kind: SourceKind
    plugin: str
    package: str
    version: str


@attrs.frozen
class PluginFailure:
    """A plugin that could not be imported or asked for its source kinds."""

    plugin: str
    package: str
    error: str


@attrs.define
class PluginSet:
    """What :func:`load_plugins` found: source kinds by name, and the plugins that failed."""

    kinds: dict[str, LoadedKind] = attrs.Factory(dict)
    failures: list[PluginFailure] = attrs.Factory(list)

    def get(self, name: str) -> LoadedKind:
        """The source kind ``name``.

        Raises:
            PluginError: no plugin provides it (the message lists those that do, and the
                plugins that failed to load).
        """
        if name in self.kinds:
            return self.kinds[name]
        known = ", ".join(sorted(self.kinds)) or "none"
        message = f"no source plugin named {name!r}; available: {known}"
        failed = [f for f in self.failures if f.plugin == name]
        if failed:
            message += f" ({name!r} failed to load: {failed[0].error})"
        raise PluginError(message)


def load_plugins(*, entry_points: bool = True, modules: Iterable[Any] = (),
                 only: Iterable[str] | None = None) -> PluginSet:
    """Load source plugins and collect their source kinds.

    Args:
        entry_points: load every entry point of the group ``mqsync.plugins`` (restricted
            to the names in ``$MQSYNC_LOAD_PLUGINS`` when that is set).
        modules: plugin objects or modules to register directly (tests, embedding).
        only: load only these entry point names.

    A plugin that fails to import, or whose hook raises, is recorded in
    :attr:`PluginSet.failures` with its error and logged; the others still load.
    """
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(Hookspecs)
    result = PluginSet()
    # In registration order (pluggy's own list is a set): the first plugin to offer a
    # source kind name keeps it.
    registered: list[tuple[Any, tuple[str, str, str]]] = []
    if only is None and os.environ.get(LOAD_ENV):
        only = [n.strip() for n in os.environ[LOAD_ENV].split(",") if n.strip()]
    wanted = set(only) if only is not None else None

    if entry_points:
        for entry_point in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP),
                                  key=lambda e: e.name):
            if wanted is not None and entry_point.name not in wanted:
                continue
            package, version = _distribution(entry_point)
            try:
                plugin = entry_point.load()
                manager.register(plugin, name=entry_point.name)
                manager.check_pending()
            except Exception as error:  # noqa: BLE001 - reported, the others still load
                _record_failure(result, entry_point.name, package, error)
                _unregister(manager, entry_point.name)
                continue
            registered.append((plugin, (entry_point.name, package, version)))
    for module in modules:
        name = getattr(module, "__name__", repr(module))
        try:
            manager.register(module, name=name)
            manager.check_pending()
        except Exception as error:  # noqa: BLE001
            _record_failure(result, name, name, error)
            _unregister(manager, name)
            continue
        registered.append((module, (name.rsplit(".", 1)[-1], name, "")))

    for plugin, (plugin_name, package, version) in registered:
        implementation = getattr(plugin, "mqsync_source_kinds", None)
        if implementation is None:
            continue
        try:
            kinds = list(implementation())
            for kind in kinds:
                if not isinstance(kind, SourceKind):
                    raise TypeError(f"mqsync_source_kinds() returned {type(kind).__name__}, "
                                    "expected SourceKind")
                if not (isinstance(kind.source_class, type)
                        and issubclass(kind.source_class, PluginSource)):
                    raise TypeError(f"source kind {kind.name!r}: {kind.source_class!r} is not "
                                    "a PluginSource subclass")
        except Exception as error:  # noqa: BLE001
            _record_failure(result, plugin_name, package, error)
            continue
        for kind in kinds:
            if kind.name in result.kinds:
                other = result.kinds[kind.name]
                _record_failure(result, plugin_name, package, PluginError(
                    f"source kind {kind.name!r} is already provided by {other.package}"))
                continue
            result.kinds[kind.name] = LoadedKind(kind, plugin_name, package, version)
    return result


def _distribution(entry_point: importlib.metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(entry_point, "dist", None)
    if dist is None:
        return entry_point.value.split(":")[0], ""
    return dist.metadata["Name"], dist.version


def _record_failure(result: PluginSet, name: str, package: str, error: BaseException) -> None:
    text = f"{type(error).__name__}: {error}"
    logger.error("source plugin %r (%s) failed to load: %s", name, package, text)
    result.failures.append(PluginFailure(name, package, text))


def _unregister(manager: pluggy.PluginManager, name: str) -> None:
    plugin = manager.get_plugin(name)
    if plugin is not None:
        manager.unregister(plugin)


class PluginSource(IntervalSource):
    """The base of plugin sources: configuration, metric declaration and the schedule.

    Subclasses implement :meth:`configure` (check and take the configuration, open
    devices), :meth:`metrics` (names and metadata to declare) and :meth:`update`
    (measure and :meth:`send`).  The configuration is the kind's defaults, overlaid by
    the ``config`` given to the constructor (a file), overlaid by what the manager sends.
    Its ``rate`` (updates per second) or ``period`` sets the schedule; a ``period`` is a
    duration as :meth:`Timedelta.coerce <mqsync.Timedelta.coerce>` takes it: ``"10s"``,
    ``"100ms"``, or a number of seconds (``period = 5`` is five seconds).

    Args:
        token: the source's token.
        url: the broker URL; ``None`` joins the embedded network.
        config: configuration from a file or the command line.
        period: overrides the configuration's rate/period (a duration, as ``period``).
    """

    #: Defaults for keys the configuration does not give (set by subclasses).
    default_config: ClassVar[Mapping[str, Any]] = {"rate": 1.0}
    #: Seconds between a priming update and the first one that counts, for a source whose
    #: metrics need two samples (rates, CPU usage): ``mqsync-source --once`` runs one
    #: update, drops its points, waits this long and sends the next. ``None``: one update.
    priming_interval: ClassVar[float | None] = None

    def __init__(self, token: str, url: BrokerURL | None = None, *,
                 config: Mapping[str, Any] | None = None, period: DurationLike | None = None,
                 **kwargs: Any):
        super().__init__(token, url, **kwargs)
        self._declare_warning = Throttled(logger)
        self._given_config = dict(config or {})
        self._period_override = period
        self.configuration: dict[str, Any] = {}
        self.apply_config({})  # fail before connecting when the file configuration is bad

    # -- for subclasses --------------------------------------------------------------

    def configure(self, config: Mapping[str, Any]) -> None:
        """Check and take a configuration; raise :class:`ConfigError` when it is bad."""

    def metrics(self) -> Mapping[str, Mapping[str, Any]]:
        """The metrics this source sends, with their metadata."""
        return {}

    def interrupt(self) -> None:
        """Make a running :meth:`update` return soon (kill a child process, cancel a wait).

        Called from another thread when the source stops, or when a
        :class:`~mqsync.host.SourceHost` drops it, while an update may be running.
        """

    def close(self, timeout: float) -> None:
        """Release what :meth:`configure` opened (devices, child processes, sessions).

        Called once, after the last update returned (or ``timeout`` seconds were not
        enough for it), when the source stops or its host drops it.
        """

    def _on_stop(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        # not under the callback lock: an update() may be waiting for a device right now
        guarded(self.interrupt, f"{self.token}: interrupt()")
        try:
            super()._on_stop(timeout)
        finally:
            guarded(lambda: self.close(max(0.0, deadline - time.monotonic())),
                    f"{self.token}: close()")

    # -- in a host ---------------------------------------------------------------------

    def route_to(self, outlet: Source, declare: Callable[..., None],
                 accept: Callable[[str], bool] | None = None) -> None:
        """Send through ``outlet`` instead of a connection of this source's own.

        A :class:`~mqsync.host.SourceHost` runs many plugin sources in one process on its
        one connection pair: it never starts them, but routes their :meth:`send`,
        :meth:`send_many`, :meth:`metric` and :meth:`flush` to itself, and their
        :meth:`declare_metrics` to ``declare``, which declares the metrics under the
        host's token.  ``accept(metric)``, if given, is asked before points of a metric
        are handed on: False drops them (the host counts them), and :meth:`metric`
        raises :class:`~mqsync.errors.ConfigError`.  (``source[name]`` still names this
        source's own handle: hosted sources use :meth:`metric`.)
        """
        def send(metric: str, time: Any, value: float) -> None:
            if accept is None or accept(metric):
                outlet.send(metric, time, value)

        def send_many(metric: str, times: Any, values: Any) -> None:
            if accept is None or accept(metric):
                outlet.send_many(metric, times, values)

        def metric(name: str) -> Any:
            if accept is not None and not accept(name):
                raise ConfigError(f"{self.token}: metric {name!r} is sent by another source "
                                  "of this host")
            return outlet.metric(name)

        def flush(timeout: float | None = None) -> None:
            outlet.flush(timeout)

        for function in (send, send_many, metric, flush):
            setattr(self, function.__name__, function)
        self.declare_metrics = declare  # type: ignore[method-assign]

    # -- configuration ---------------------------------------------------------------

    def apply_config(self, received: Mapping[str, Any]) -> None:
        """Merge defaults, the given configuration and ``received``; configure and re-time."""
        merged = {**self.default_config, **self._given_config, **received}
        merged.pop("from_token", None)
        period = self._period_override
        if period is None:
            period = _period_of(merged)
        self.configure(merged)
        self.configuration = merged
        self.period = period

    @rpc_handler("config")
    def _on_plugin_config(self, from_token: str | None = None, **config: Any) -> None:
        # Also runs at registration (with {} when the manager has no configuration), so
        # every source declares its metrics once connected.
        self.apply_config(config)
        declared = self.metrics()
        if declared and self._connected:
            self.declare_metrics(declared)

    def declare_new_metrics(self, metrics: Mapping[str, Mapping[str, Any]]) -> bool:
        """Declare metrics found during an update; on failure log one warning and return
        False (the caller sends its points anyway and tries again with the next update)."""
        try:
            self.declare_metrics(metrics)
        except Exception as error:  # noqa: BLE001 - send anyway, declare next update
            self._declare_warning.warning("%s: could not declare %d new metrics (%s); "
                                          "retrying with the next update", self.token,
                                          len(metrics), error)
            return False
        return True

    def rate(self) -> float | None:
        """Updates per second, for the metrics' ``rate`` metadata."""
        period = self.period
        return None if period is None or not period.ns else 1e9 / period.ns


def guarded(call: Callable[[], None], what: str) -> bool:
    """Run a plugin's hook; log (with traceback) and swallow anything it raises, even a
    ``SystemExit``: one plugin's cleanup never stops the others'.  Whether it returned."""
    try:
        call()
    except KeyboardInterrupt:
        raise
    except BaseException:  # noqa: BLE001 - logged; the caller goes on
        logger.exception("%s failed", what)
        return False
    return True


def _period_of(config: Mapping[str, Any]) -> Timedelta | None:
    """The schedule a configuration asks for: its ``period`` (a duration), else its ``rate``
    (updates per second), else None.  Raises :class:`ConfigError` for a bad one."""
    if config.get("period") is not None:
        try:
            return Timedelta.coerce(config["period"], name="period", positive=True)
        except (TypeError, ValueError) as error:
            raise ConfigError(str(error)) from None
    rate = config.get("rate")
    if rate is None:
        return None
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < math.inf:
        raise ConfigError(f"invalid rate {rate!r}: expected a positive number of updates "
                          "per second")
    period = Timedelta.from_s(1 / rate)
    if period.ns <= 0:
        raise ConfigError(f"invalid rate {rate!r}: the period would be shorter than 1 ns")
    return period

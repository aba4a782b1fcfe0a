"""SourceHost: many plugin instances in one process, on one connection pair and one schedule.

A host runs every source of a machine from one file, the way an agent runs its inputs::

    token = "source-host-node01"   # optional (default: --token, or source-host-<host>)
    workers = 8                     # optional: at most this many updates run at once

    [[sources.sysinfo]]
    period = "1s"

    [[sources.ipmi]]
    name = "bmc-rack1"              # needed when a kind has more than one instance
    hosts = ["10.0.0.11", "10.0.0.12"]
    period = "10s"

    [[sources.ipmi]]
    name = "bmc-rack2"
    hosts = ["10.0.1.11"]
    period = "10s"

Each ``[[sources.<kind>]]`` table is one instance of a source kind (a plugin); its keys
other than ``name`` are that kind's configuration (``mqsync-source --usage <kind>``).

What a host guarantees:

- **One connection pair, one token.**  The host is one :class:`~mqsync.Source`: one
  management and one data connection, whatever the number of instances, and every
  instance's metrics are declared under the host's token.  Per-instance tokens would
  need a registration, an RPC queue and a data connection each, which is what a host
  saves.  The manager's configuration model is per token: a host takes its instances
  from its file only, and logs a warning if the manager holds a configuration for its
  token.  Two instances may not send the same metric: the second one is refused.
- **One schedule.**  A :class:`~mqsync.scheduler.MultiScheduler` keeps every instance on
  its own drift-free grid, started at a phase of its own (:func:`phase`: instances whose
  periods are multiples of each other do not all come due at one instant), and runs
  updates on a bounded pool of threads (``workers``):
  an instance whose update blocks (an unreachable BMC) holds one thread and delays no
  other instance, and one instance never has two updates running at once.
- **Failure isolation.**  An instance that cannot be configured is reported by name and
  tried again with backoff (1 s, doubling, at most ``max_backoff``); one whose updates
  keep failing (``backoff_after`` in a row) backs off the same way.  The others run on.
- **Reload.**  :meth:`SourceHost.reload` (``mqsync-source`` on SIGHUP) applies a new file:
  instances added, removed or changed are started, dropped or replaced; unchanged ones
  are not touched, so their schedule and their points go on as if nothing happened.  A
  changed instance whose new configuration is refused keeps its old one.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import re
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Collection, Iterable, Mapping

import attrs

from ._log import Throttled
from .config import read_config_file, refuse_unknown_keys
from .errors import ConfigError
from .names import BrokerURL
from .plugin import LoadedKind, PluginSet, PluginSource, guarded
from .rpc import rpc_handler
from .scheduler import NS_PER_S, Clock, Grid, MultiScheduler, PoolStats, SchedulerStats, Timer
from .source import Source
from .timeseries import DurationLike, Timedelta

logger = logging.getLogger(__name__)

#: The keys of a host file's top level.
HOST_KEYS = ("token", "workers", "backoff_after", "max_backoff", "sources")
_NAME = re.compile(r"[A-Za-z0-9_-]+\Z")
#: Seconds a source's ``close()`` gets.
CLOSE_TIMEOUT = 5.0
#: The longest backoff a host file may ask for.
MAX_BACKOFF_LIMIT = Timedelta.from_s(86_400)
#: A host token's length at most, in UTF-8 bytes (its RPC queue name must stay below 255).
MAX_TOKEN_BYTES = 200
#: The counters of an instance whose updates are not scheduled yet (a replacement).
NOT_STARTED = SchedulerStats(updates=0, failures=0, consecutive_failures=0, missed_slots=0,
                             overruns=0, last_lateness_ns=None, period_ns=None)
#: Instances start spread over their first period, or over this much at most (:func:`phase`).
STAGGER = Timedelta.from_s(1)


def phase(name: str, period: Timedelta | None) -> Timedelta:
    """Where in its first period an instance starts: a fraction of ``period`` (of
    :data:`STAGGER` at most) taken from a hash of its name, the same at every start.

    Grids started at one instant would all come due together at the multiples of their
    periods (every second, 24 of 50 instances at once), and wait in turn for the update
    threads; spread, they rarely meet.
    """
    if period is None:
        return Timedelta(0)
    return Timedelta(zlib.crc32(name.encode("utf-8")) * min(period.ns, STAGGER.ns) >> 32)


def is_host_file(data: Mapping[str, Any]) -> bool:
    """Whether a parsed configuration file describes a host (it has ``sources``)."""
    return "sources" in data


@attrs.frozen
class InstanceSpec:
    """One ``[[sources.<kind>]]`` table: the instance's name, its kind and configuration.

    Its repr leaves the configuration out (it may hold passwords).
    """

    name: str
    kind: str
    config: Mapping[str, Any] = attrs.field(converter=dict, repr=False)

    def same_as(self, other: InstanceSpec) -> bool:
        """Whether ``other`` asks for the same instance (NaN equal to NaN: a reload of an
        unchanged file changes nothing)."""
        return (self.name, self.kind) == (other.name, other.kind) and \
            _canonical(self.config) == _canonical(other.config)


def _canonical(config: Mapping[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, default=repr)


@attrs.frozen
class HostConfig:
    """A checked host file."""

    instances: tuple[InstanceSpec, ...]
    token: str | None = None
    workers: int = 8
    backoff_after: int = 3
    max_backoff: Timedelta = Timedelta.from_s(300)

    @classmethod
    def read(cls, path: str | Path, plugins: PluginSet) -> HostConfig:
        """Read and check a host file (TOML or JSON).

        Raises:
            ConfigError: the file cannot be read, or names an unknown key or kind, a bad
                name or a name twice; the message names the file.
        """
        data = read_config_file(path)
        try:
            return cls.from_mapping(data, plugins)
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], plugins: PluginSet) -> HostConfig:
        """Check a parsed host file; see :meth:`read`.  Instance configurations are checked
        by their plugins when the host configures them."""
        refuse_unknown_keys("the host file", data, HOST_KEYS)
        sources = data.get("sources")
        if not isinstance(sources, Mapping) or not sources:
            raise ConfigError("'sources' must hold at least one table [[sources.<kind>]], "
                              "e.g. [[sources.sysinfo]]")
        instances: list[InstanceSpec] = []
        for kind, tables in sources.items():
            try:
                plugins.get(kind)
            except Exception as error:  # noqa: BLE001 - PluginError: said with its place
                raise ConfigError(f"sources.{kind}: {error}") from None
            if isinstance(tables, Mapping):
                tables = [tables]
            if not isinstance(tables, list) or not tables \
                    or not all(isinstance(t, Mapping) for t in tables):
                raise ConfigError(f"sources.{kind} must be a table or a non-empty list of "
                                  f"tables ([[sources.{kind}]]), got {tables!r:.60}")
            for index, table in enumerate(tables):
                config = dict(table)
                name = config.pop("name", None)
                if name is None:
                    if len(tables) > 1:
                        raise ConfigError(f"sources.{kind}[{index}]: {len(tables)} instances "
                                          f"of {kind!r} need a name each (name = \"...\")")
                    name = kind
                if not isinstance(name, str) or not _NAME.match(name):
                    raise ConfigError(f"sources.{kind}[{index}]: invalid name {name!r}: "
                                      "expected letters, digits, '_' and '-', e.g. 'bmc-rack1'")
                instances.append(InstanceSpec(name, kind, config))
        seen: dict[str, str] = {}
        for spec in instances:
            if spec.name in seen:
                raise ConfigError(f"instance name {spec.name!r} is used twice (sources."
                                  f"{seen[spec.name]} and sources.{spec.kind})")
            seen[spec.name] = spec.kind
        token = data.get("token")
        if token is not None and (
                not isinstance(token, str) or not token or not token.isprintable()
                or any(c.isspace() for c in token)
                or len(token.encode("utf-8")) > MAX_TOKEN_BYTES):
            raise ConfigError(f"invalid token {token!r:.60}: expected a printable string "
                              f"without white space, at most {MAX_TOKEN_BYTES} bytes, e.g. "
                              "'source-host-node01'")
        workers = _int_in(data, "workers", 8, 1, 1024)
        backoff_after = _int_in(data, "backoff_after", 3, 1, 1_000_000)
        try:
            max_backoff = Timedelta.coerce(data.get("max_backoff", 300), name="max_backoff",
                                           positive=True)
        except (TypeError, ValueError) as error:
            raise ConfigError(str(error)) from None
        if not NS_PER_S <= max_backoff.ns <= MAX_BACKOFF_LIMIT.ns:
            raise ConfigError(f"invalid max_backoff {data['max_backoff']!r:.40}: expected "
                              f"1s to {MAX_BACKOFF_LIMIT}")
        return cls(tuple(instances), token, workers, backoff_after, max_backoff)


def _int_in(data: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"invalid {key} {value!r:.40}: expected an integer from {low} to "
                          f"{high}")
    return value


@attrs.frozen
class InstanceStats:
    """One instance of a :class:`SourceHost`.

    ``state`` is ``"running"`` (its last update, if any, succeeded), ``"failing"`` (its last
    update failed), ``"backing off"`` (it failed ``backoff_after`` times in a row and waits
    ``retry_in_s``) or ``"unconfigured"`` (its configuration was refused: ``last_error``
    says why; it is tried again in ``retry_in_s``).  ``failures`` counts failed updates
    and failed configurations; ``missed_slots`` the slots skipped because the last update
    still ran or no worker was free for a whole period; ``held_slots`` those left out
    while backing off.
    """

    name: str
    kind: str
    state: str
    period_ns: int | None
    metrics: int
    updates: int
    failures: int
    consecutive_failures: int
    missed_slots: int
    held_slots: int
    last_lateness_ns: int | None
    last_error: str | None
    retry_in_s: float | None


@attrs.frozen
class ReloadReport:
    """What :meth:`SourceHost.reload` did, by instance name."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    #: Changed instances whose new configuration was refused (they keep the old one),
    #: with the reason.
    refused: Mapping[str, str] = attrs.Factory(dict)

    def summary(self) -> str:
        """One line: how many instances of each."""
        parts = [f"{len(self.added)} added", f"{len(self.removed)} removed",
                 f"{len(self.changed)} changed", f"{len(self.unchanged)} unchanged"]
        if self.refused:
            parts.append(f"{len(self.refused)} refused ({', '.join(sorted(self.refused))})")
        return ", ".join(parts)


@attrs.define(eq=False)
class _Instance:
    spec: InstanceSpec
    kind: LoadedKind
    source: PluginSource | None = None
    grid: Grid | None = None  # once its updates were scheduled
    metrics: frozenset[str] = frozenset()  # the metrics it owns
    declared: bool = False
    dropped: bool = False  # no longer the host's: no update of it begins
    closed: bool = False
    error: str | None = None  # why the last configuration failed
    attempts: int = 0  # failed configurations in a row
    timer: Timer | None = None
    retry_at: float | None = None  # time.monotonic() of the next configuration attempt


class SourceHost(Source):
    """Many plugin sources in one process: one token, one connection pair, one schedule.

    Args:
        token: the host's token, under which every instance's metrics are declared.
        url: the broker URL; ``None`` joins the embedded network.
        config: the instances and the pool, e.g. ``HostConfig.read("host.toml", plugins)``.
        plugins: where the instances' source kinds come from (:func:`mqsync.plugin.load_plugins`).
        schedule: run updates on the schedule; ``False`` leaves calling :meth:`update_once`
            to the owner (``mqsync-source --once``).
        backoff: the first wait after a failed configuration, or after ``backoff_after``
            failed updates in a row (a duration; it doubles up to ``max_backoff``).
        clock: the scheduler's clock (tests inject a fake one).

    Other keyword arguments go to :class:`~mqsync.Source`.  The instances are configured
    at once, in the constructor: :meth:`instance_stats` shows which were refused.

    An instance's plugin hooks (``configure``, ``metrics``, ``update``, ``interrupt``,
    ``close``) may raise anything: it is logged and counted against that instance, never
    the host.  Points an instance sends of a metric another instance owns are dropped
    and counted (``foreign_points``).
    """

    def __init__(self, token: str, url: BrokerURL | None = None, *, config: HostConfig,
                 plugins: PluginSet, schedule: bool = True, clock: Clock | None = None,
                 backoff: DurationLike = 1.0, **kwargs: Any):
        super().__init__(token, url, **kwargs)
        self._plugins = plugins
        self._schedule = schedule
        self._config = config
        self._scheduler = MultiScheduler(
            max_workers=config.workers, clock=clock, name=self.token,
            backoff_after=config.backoff_after, backoff=backoff,
            max_backoff=config.max_backoff)
        self._backoff_s = Timedelta.coerce(backoff, name="backoff", positive=True).s
        self._max_backoff_s = config.max_backoff.s
        self._instances: dict[str, _Instance] = {}
        self._owners: dict[str, _Instance] = {}  # metric -> the instance that sends it
        self._leaving: list[_Instance] = []  # dropped, not closed yet
        self._retired: collections.Counter[str] = collections.Counter()  # of dropped ones
        # _host_lock guards the maps above and each instance's fields; _config_lock
        # serializes what configures instances (the constructor, reload, retries).
        self._host_lock = threading.RLock()
        self._config_lock = threading.RLock()
        self._foreign_warning = Throttled(logger)
        self._metrics_warning = Throttled(logger)
        self._shut = False
        for spec in config.instances:
            self._add(spec)

    # -- what runs ---------------------------------------------------------------------

    @property
    def instances(self) -> dict[str, PluginSource | None]:
        """The instances by name: their source, None while its configuration is refused."""
        with self._host_lock:
            return {name: inst.source for name, inst in self._instances.items()}

    def metrics(self) -> dict[str, Mapping[str, Any]]:
        """Every configured instance's metrics with their metadata."""
        with self._host_lock:
            sources = [inst.source for inst in self._instances.values() if inst.source]
        declared: dict[str, Mapping[str, Any]] = {}
        for source in sources:
            declared.update(self._metrics_of(source))
        return declared

    def _metrics_of(self, source: PluginSource) -> Mapping[str, Mapping[str, Any]]:
        """``source.metrics()``; empty (and a warning) if it raises or returns no mapping."""
        try:
            metrics = source.metrics()
            if not isinstance(metrics, Mapping):
                raise TypeError(f"metrics() returned {type(metrics).__name__}, expected a "
                                "mapping of metric names to metadata")
        except KeyboardInterrupt:
            raise
        except BaseException as error:  # noqa: BLE001 - this instance's bug, not the host's
            self._metrics_warning.warning("%s: %s: metrics() failed: %s: %s", self.token,
                                          source.token, type(error).__name__, error)
            return {}
        return metrics

    def instance_stats(self) -> dict[str, InstanceStats]:
        """Each instance's schedule and failures, by name, in file order."""
        with self._host_lock:
            instances = list(self._instances.values())
        now = time.monotonic()
        return {inst.spec.name: self._instance_stats(inst, now) for inst in instances}

    def _instance_stats(self, inst: _Instance, now: float) -> InstanceStats:
        name = inst.spec.name
        if inst.source is None:
            return InstanceStats(
                name=name, kind=inst.spec.kind, state="unconfigured", period_ns=None,
                metrics=0, updates=0, failures=inst.attempts,
                consecutive_failures=inst.attempts, missed_slots=0, held_slots=0,
                last_lateness_ns=None, last_error=inst.error,
                retry_in_s=None if inst.retry_at is None else max(0.0, inst.retry_at - now))
        grid = inst.grid.stats() if inst.grid is not None else NOT_STARTED
        retry_at = self._scheduler.retry_at(name) if inst.grid is not None else None
        state = "failing" if grid.consecutive_failures else "running"
        retry_in = None
        if retry_at is not None:
            state = "backing off"
            retry_in = max(0.0, (retry_at - time.monotonic_ns()) / NS_PER_S)
        return InstanceStats(
            name=name, kind=inst.spec.kind, state=state, period_ns=grid.period_ns,
            metrics=len(inst.metrics), updates=grid.updates, failures=grid.failures,
            consecutive_failures=grid.consecutive_failures, missed_slots=grid.missed_slots,
            held_slots=grid.held_slots, last_lateness_ns=grid.last_lateness_ns,
            last_error=grid.last_error, retry_in_s=retry_in)

    def recent_lateness_ns(self, name: str) -> tuple[int, ...]:
        """How late each recent update of instance ``name`` began after its slot."""
        return self._scheduler.grid(name).recent_lateness_ns()

    def pool_stats(self) -> PoolStats:
        """The update threads: how many, how busy, how often all were."""
        return self._scheduler.pool_stats()

    def stats(self) -> dict[str, int]:
        """Counters of :meth:`Source.stats <mqsync.Source.stats>`, plus the sums over the
        instances, dropped ones included (``updates``, ``update_failures``, ``missed_slots``,
        ``held_slots``), ``instances``, ``instances_failing`` (failing, backing off or
        unconfigured), ``update_threads`` (alive now), ``update_threads_peak`` and
        ``updates_waited`` (updates that found every thread busy); ``foreign_points`` once
        an instance sent points of another's metric.  Per instance: :meth:`instance_stats`."""
        counters = super().stats()
        per_instance = self.instance_stats().values()
        with self._host_lock:
            retired = dict(self._retired)
        counters.update(
            instances=len(per_instance),
            instances_failing=sum(s.state != "running" for s in per_instance),
            updates=retired.get("updates", 0) + sum(s.updates for s in per_instance),
            update_failures=retired.get("update_failures", 0)
            + sum(s.failures for s in per_instance),
            missed_slots=retired.get("missed_slots", 0)
            + sum(s.missed_slots for s in per_instance),
            held_slots=retired.get("held_slots", 0) + sum(s.held_slots for s in per_instance),
        )
        pool = self.pool_stats()
        counters.update(update_threads=pool.threads, update_threads_peak=pool.peak_threads,
                        updates_waited=pool.saturated)
        return counters

    # -- configuring instances (under _config_lock) ----------------------------------------

    def _add(self, spec: InstanceSpec) -> None:
        """Take a new instance: configure it now, or report it and try again later."""
        inst = _Instance(spec, self._plugins.get(spec.kind))
        with self._host_lock:
            self._instances[spec.name] = inst
        self._try_configure(inst)

    def _build(self, inst: _Instance, ignore: Collection[str] = (),
               claimed: Mapping[str, str] | None = None) -> tuple[PluginSource, frozenset[str]]:
        """A configured source for ``inst`` and its metrics, checked against those the
        other instances send (but those of the instances named in ``ignore``) and those
        ``claimed`` by name; raises what its configuration raised."""
        spec = inst.spec
        source = inst.kind.kind.source_class(f"{self.token}/{spec.name}", None,
                                             config=spec.config, schedule=False)
        try:
            declared = source.metrics()
            if not isinstance(declared, Mapping) or not all(isinstance(m, str)
                                                           for m in declared):
                raise ConfigError(f"{spec.kind}: metrics() returned {declared!r:.60}, "
                                  "expected a mapping of metric names to metadata")
            metrics = frozenset(declared)
            with self._host_lock:
                for metric in sorted(metrics):
                    owner = self._owners.get(metric)
                    if owner is not None and owner.spec.name != spec.name \
                            and owner.spec.name not in ignore:
                        raise ConfigError(f"metric {metric!r} is already sent by instance "
                                          f"{owner.spec.name!r}")
                    other = (claimed or {}).get(metric, spec.name)
                    if other != spec.name:
                        raise ConfigError(f"metric {metric!r} is also sent by instance "
                                          f"{other!r}")
        except BaseException:
            guarded(lambda: source.close(CLOSE_TIMEOUT), f"{source.token}: close()")
            raise
        return source, metrics

    def _try_configure(self, inst: _Instance) -> None:
        name = inst.spec.name
        try:
            source, metrics = self._build(inst)
        except KeyboardInterrupt:
            raise
        except BaseException as error:  # noqa: BLE001 - any plugin error: reported, retried
            inst.attempts += 1
            inst.error = f"{type(error).__name__}: {error}"
            if not self._schedule:  # --check, --once: the caller reports it
                logger.info("%s: instance %r (%s) could not be configured: %s", self.token,
                            name, inst.spec.kind, inst.error)
                return
            delay = min(self._max_backoff_s, self._backoff_s * 2 ** min(inst.attempts - 1, 30))
            inst.retry_at = time.monotonic() + delay
            logger.error("%s: instance %r (%s) could not be configured: %s; trying again in "
                         "%.3g s", self.token, name, inst.spec.kind, inst.error, delay)
            inst.timer = self._scheduler.call_later(delay, lambda: self._retry(inst))
            return
        if self._install(inst, source, metrics) and inst.attempts:
            logger.info("%s: instance %r configured after %d failed attempts", self.token, name,
                        inst.attempts)
        inst.attempts, inst.error, inst.retry_at, inst.timer = 0, None, None, None

    def _retry(self, inst: _Instance) -> None:
        with self._config_lock:
            with self._host_lock:
                if self._instances.get(inst.spec.name) is not inst or self._shut:
                    return  # removed or replaced meanwhile
            self._try_configure(inst)
        if inst.source is not None and self._connected:
            self._declare_instance(inst)

    def _install(self, inst: _Instance, source: PluginSource, metrics: frozenset[str],
                 start: bool = True) -> bool:
        """Make ``source`` the configured source of ``inst`` (if ``inst`` is still current)
        and, with ``start``, schedule its updates; whether it was installed."""
        source.route_to(self, lambda declared, timeout=None: self._declare_for(
            inst, declared, timeout), accept=lambda metric: metric in inst.metrics
            or self._accept(inst, metric))
        with self._host_lock:
            current = not self._shut and self._instances.get(inst.spec.name) is inst
            if current:
                for metric in metrics:
                    self._owners[metric] = inst
                inst.source, inst.metrics = source, metrics
        if not current:
            guarded(lambda: source.close(CLOSE_TIMEOUT), f"{source.token}: close()")
            return False
        if start:
            self._start(inst)
        return True

    def _start(self, inst: _Instance) -> None:
        """Schedule the updates of ``inst``, unless it was dropped meanwhile."""
        with self._host_lock:
            source = inst.source
            if self._shut or inst.dropped or inst.grid is not None or source is None:
                return
            name = inst.spec.name
            inst.grid = self._scheduler.add(
                name, lambda: self._update(inst), source.period,
                start_delay=phase(name, source.period), name=f"{self.token}/{name}")

    # -- running instances ---------------------------------------------------------------

    def _update(self, inst: _Instance) -> None:
        """On a worker: one update of ``inst`` (declaring its metrics first, once)."""
        source = inst.source
        if source is None or inst.dropped or self._shut:
            return
        if not inst.declared and self._connected:
            self._declare_instance(inst)
        with source.callback_lock:
            source.update()

    def _declare_instance(self, inst: _Instance) -> None:
        source = inst.source
        if source is not None:
            inst.declared = source.declare_new_metrics(self._metrics_of(source))

    def _declare_for(self, inst: _Instance, metrics: Mapping[str, Mapping[str, Any]],
                     timeout: float | None = None) -> None:
        """Declare metrics of ``inst`` under the host's token; refuse those another
        instance sends.  A dropped instance's late declaration is ignored."""
        name = inst.spec.name
        names = [metric for metric in metrics]
        with self._host_lock:
            if inst.dropped or self._instances.get(name) is not inst:
                return
            for metric in names:
                owner = self._owners.get(metric, inst)
                if owner is not inst and owner.spec.name != name:
                    raise ConfigError(f"{self.token}: instance {name!r} cannot send "
                                      f"{metric!r}: instance {owner.spec.name!r} does")
            for metric in names:
                self._owners[metric] = inst
            inst.metrics = inst.metrics | frozenset(names)
        Source.declare_metrics(self, metrics, timeout)

    def _accept(self, inst: _Instance, metric: str) -> bool:
        """A point of ``metric`` from ``inst`` (not among the metrics it owns yet): take it
        if no other instance sends that metric; else count it and drop it."""
        with self._host_lock:
            owner = self._owners.get(metric)
            if owner is None and not inst.dropped:
                self._owners[metric] = inst
                inst.metrics = inst.metrics | {metric}
                return True
            if owner is None or owner is inst or owner.spec.name == inst.spec.name:
                return True  # a dropped instance's last update, or its successor's metric
        self._count("foreign_points")
        self._foreign_warning.warning("%s: instance %r sent a point of %r, which instance %r "
                                      "sends; dropped", self.token, inst.spec.name, metric,
                                      owner.spec.name)
        return False

    # -- dropping instances ----------------------------------------------------------------

    def _drop(self, name: str) -> None:
        with self._host_lock:
            inst = self._instances.pop(name)
        self._dismiss(inst)

    def _dismiss(self, inst: _Instance, successor: _Instance | None = None) -> None:
        """``inst`` is no longer the host's: no update of it begins from now on, its
        running one is interrupted, its source closed once that returned; then the
        ``successor`` (a replacement) starts.  Its points already sent stay in the host's
        buffers and leave with them."""
        with self._host_lock:
            inst.dropped = True
            for metric in inst.metrics:
                if self._owners.get(metric) is inst:
                    del self._owners[metric]
            inst.metrics = frozenset()
            if inst.source is not None:
                self._leaving.append(inst)
            else:
                self._retired["update_failures"] += inst.attempts
        if inst.timer is not None:
            inst.timer.cancel()

        def retire() -> None:
            self._retire(inst)
            if successor is not None:
                self._start(successor)

        if inst.grid is None or not self._scheduler.remove(inst.spec.name, then=retire):
            retire()
        source = inst.source
        if source is not None:
            guarded(source.interrupt, f"{source.token}: interrupt()")

    def _retire(self, inst: _Instance) -> None:
        """After the last update of a dropped instance: keep its counts, close its source."""
        if inst.grid is not None:
            grid = inst.grid.stats()
            with self._host_lock:
                self._retired.update(updates=grid.updates, update_failures=grid.failures,
                                     missed_slots=grid.missed_slots,
                                     held_slots=grid.held_slots)
        self._close(inst)

    def _close(self, inst: _Instance) -> None:
        """Close the source of ``inst``, once."""
        with self._host_lock:
            source = inst.source
            if inst.closed or source is None:
                return
            inst.closed = True
            if inst in self._leaving:
                self._leaving.remove(inst)
        guarded(lambda: source.close(CLOSE_TIMEOUT), f"{source.token}: close()")

    # -- reload --------------------------------------------------------------------------

    def reload(self, config: HostConfig) -> ReloadReport:
        """Apply a new host file: start added instances, drop removed ones, replace changed
        ones (same name, another kind or configuration).  Unchanged instances are not
        touched.  A changed instance whose new configuration is refused keeps running with
        its old one (see :attr:`ReloadReport.refused`); a replacement starts once the old
        instance's running update returned.  ``workers`` takes effect at once; a new
        ``token``, ``backoff_after`` or ``max_backoff`` needs a restart (logged)."""
        with self._config_lock:
            if self._shut:
                logger.warning("%s: reload ignored: the host is stopping", self.token)
                return ReloadReport()
            for key in ("token", "backoff_after", "max_backoff"):
                new_value, old_value = getattr(config, key), getattr(self._config, key)
                if new_value != old_value and not (key == "token" and new_value is None):
                    logger.warning("%s: the host file now sets %s = %r; that needs a "
                                   "restart (it stays %r)", self.token, key, new_value,
                                   old_value)
            self._scheduler.max_workers = config.workers
            with self._host_lock:
                old = {name: inst.spec for name, inst in self._instances.items()}
            new = {spec.name: spec for spec in config.instances}
            added = [n for n in new if n not in old]
            removed = [n for n in old if n not in new]
            changed = [n for n in new if n in old and not old[n].same_as(new[n])]
            unchanged = [n for n in new if n in old and old[n].same_as(new[n])]
            for name in removed:
                self._drop(name)
            refused = self._replace([new[name] for name in changed])
            for name in added:
                self._add(new[name])
            with self._host_lock:  # in the file's order
                self._instances = {name: self._instances[name] for name in new}
                fresh = [self._instances[name] for name in (*added, *changed)]
            if self._connected:
                for inst in fresh:
                    if inst.source is not None and not inst.declared:
                        self._declare_instance(inst)
            self._config = attrs.evolve(config, token=self._config.token,
                                        backoff_after=self._config.backoff_after,
                                        max_backoff=self._config.max_backoff)
            report = ReloadReport(tuple(added), tuple(removed), tuple(changed),
                                  tuple(unchanged), refused)
            logger.info("%s: reloaded: %s", self.token, report.summary())
            return report

    def _replace(self, specs: list[InstanceSpec]) -> dict[str, str]:
        """Replace the instances ``specs`` name; the refused ones (they keep their old
        configuration) with the reason.  Their old metrics do not count against their new
        ones (two instances may swap a metric), but a refused instance keeps its own."""
        ignore = {spec.name for spec in specs}
        refused: dict[str, str] = {}
        built: dict[str, tuple[_Instance, PluginSource, frozenset[str]]] = {}
        claimed: dict[str, str] = {}
        for spec in specs:
            with self._host_lock:
                old = self._instances[spec.name]
            if old.source is None:  # never configured: start over
                self._drop(spec.name)
                self._add(spec)
                continue
            candidate = _Instance(spec, self._plugins.get(spec.kind))
            try:
                source, metrics = self._build(candidate, ignore, claimed)
            except KeyboardInterrupt:
                raise
            except BaseException as error:  # noqa: BLE001 - keep the old configuration
                refused[spec.name] = f"{type(error).__name__}: {error}"
                continue
            built[spec.name] = (candidate, source, metrics)
            claimed.update(dict.fromkeys(metrics, spec.name))
        clashing = True
        while clashing:  # a refused instance keeps its metrics: who would take one is refused
            clashing = False
            with self._host_lock:
                kept = {metric: name for name in refused
                        for metric in self._instances[name].metrics}
            for name, (_, source, metrics) in list(built.items()):
                clash = sorted(metric for metric in metrics if kept.get(metric, name) != name)
                if clash:
                    refused[name] = (f"ConfigError: metric {clash[0]!r} is still sent by "
                                     f"instance {kept[clash[0]]!r}, whose new configuration "
                                     "was refused")
                    del built[name]
                    guarded(functools.partial(source.close, CLOSE_TIMEOUT),
                            f"{source.token}: close()")
                    clashing = True
        for name, reason in refused.items():
            logger.error("%s: instance %r keeps its configuration: the new one is refused: %s",
                         self.token, name, reason)
        for name, (candidate, source, metrics) in built.items():
            with self._host_lock:
                old = self._instances[name]
                self._instances[name] = candidate
            self._install(candidate, source, metrics, start=False)
            self._dismiss(old, successor=candidate)
        return refused

    # -- one update of each, for --once ------------------------------------------------------

    def update_once(self, names: Iterable[str] | None = None) -> dict[str, BaseException | None]:
        """Run one update of each configured instance (or of ``names``) in this thread;
        returns each one's exception, or None."""
        with self._host_lock:
            chosen = [inst for inst in self._instances.values()
                      if inst.source is not None and (names is None or inst.spec.name in names)]
        results: dict[str, BaseException | None] = {}
        for inst in chosen:
            try:
                self._update(inst)
            except KeyboardInterrupt:
                raise
            except BaseException as error:  # noqa: BLE001 - returned to the caller
                results[inst.spec.name] = error
            else:
                results[inst.spec.name] = None
        return results

    # -- life cycle ----------------------------------------------------------------------

    @rpc_handler("config")
    def _on_host_config(self, from_token: str | None = None, **config: Any) -> None:
        if config:
            logger.warning("%s: the manager holds a configuration for this token; a host "
                           "takes its instances from its file only, so it is ignored",
                           self.token)

    def task(self) -> None:
        with self._host_lock:
            ready = [inst for inst in self._instances.values() if inst.source is not None]
        declared: dict[str, Mapping[str, Any]] = {}
        for inst in ready:
            assert inst.source is not None
            declared.update(self._metrics_of(inst.source))
        if declared:
            try:  # one RPC for all; on failure each instance tries with its next update
                Source.declare_metrics(self, declared)
            except Exception as error:  # noqa: BLE001
                logger.warning("%s: could not declare %d metrics (%s); each instance tries "
                               "again with its next update", self.token, len(declared), error)
            else:
                for inst in ready:
                    inst.declared = True
        if self._schedule:
            self._scheduler.run()

    def _on_stop(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self._shutdown(timeout / 2)
        super()._on_stop(max(0.0, deadline - time.monotonic()))

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        self._shutdown(timeout / 2)  # a host never started still closes its instances

    def _shutdown(self, timeout: float) -> None:
        """No update begins any more; interrupt the running ones, wait for them (up to
        ``timeout``), close every source (also of dropped instances not closed yet)."""
        with self._host_lock:
            if self._shut:
                return
            self._shut = True
            current = list(self._instances.values())
        for inst in current:
            if inst.timer is not None:
                inst.timer.cancel()
        self._scheduler.halt()
        for inst in current:
            if inst.source is not None:
                guarded(inst.source.interrupt, f"{inst.source.token}: interrupt()")
        self._scheduler.stop(timeout)
        with self._host_lock:
            leaving = list(self._leaving)
        for inst in (*current, *leaving):
            self._close(inst)


__all__ = [
    "HostConfig",
    "InstanceSpec",
    "InstanceStats",
    "ReloadReport",
    "SourceHost",
    "is_host_file",
]

"""The ``sysinfo`` source: CPU, memory, swap, disk and network IO and load, from psutil.

Metrics are named ``<prefix>.<host>.<what>`` (prefix ``sysinfo`` and the short host name by
default):

=====================================  ======  ===========================================
``cpu.usage``                          %       all cores together (100 % = every core busy)
``cpu.<n>.usage``                      %       core ``n`` (``per_core: true``)
``mem.<field>``                        B or %  every field of ``psutil.virtual_memory()``
``swap.{total,used,free,percent}``     B or %  ``psutil.swap_memory()``
``swap.{in,out}``                      B/s     bytes swapped in from / out to disk
``disk.<disk>.{read,written}.bytes``   B/s     per disk (``psutil.disk_io_counters``)
``disk.<disk>.{read,written}.count``   1/s     read and write operations per second
``disk.<disk>.busy``                   %       share of the time the disk was busy
``net.<nic>.{sent,recv}.bytes``        B/s     per network interface
``net.<nic>.{sent,recv}.packets``      1/s
``load.{1min,5min,15min}``                     load average
=====================================  ======  ===========================================

Unlike the reference ``metricq-source-sysinfo`` (whose ``cpu.usage`` is the *sum* of the
per-core percentages), ``cpu.usage`` here is their average, 0 to 100.

**Devices come and go.**  Disks and network interfaces are enumerated again on every
update: a device seen for the first time is declared (:meth:`Source.declare_metrics`) and
sends rates from its second sample on; a device that vanished simply sends nothing.
Device names become metric segments with :func:`metric_segment` (``eth0.100`` ->
``eth0_100``); two names that map to the same segment keep the first in sorted order.

**Counters that go down.**  Rates are differences of cumulative kernel counters.  A
counter that is lower than in the previous sample was reset (a device re-created under the
same name, a driver reload) or wrapped around (32-bit counters on 32-bit kernels).  The two
cannot be told apart from the numbers alone, so for that interval *nothing* is sent for
that counter -- never a negative rate, and never the huge one a wrong wrap correction gives
-- and the next interval computes from the new value.  psutil's own wrap compensation
(``nowrap=True``) is switched off: it keeps process-wide state that other code may reset,
and it counts a wrap as a reset anyway.

**Short intervals.**  Rates and CPU usage need at least 50 ms between two samples (CPU
time is counted in 10 ms ticks); above 20 updates per second they are sent every few
updates, each over the time since the last one that gave them.

**One update only.**  ``mqsync-source --once`` gives this source a priming update (its
points are dropped), waits :attr:`SysinfoSource.priming_interval` and sends the second:
every metric, rates and CPU usage included.

The computation (:class:`SysinfoCalculator`) works on :class:`Snapshot` values and knows
nothing of psutil or MetricQ, so it is tested with synthetic snapshots.  Known limit: psutil
numbers CPU cores by position in ``/proc/stat``, so taking a core offline renumbers the
ones after it.
"""

from __future__ import annotations

import logging
from time import monotonic
from types import MappingProxyType, ModuleType
from typing import Any, Callable, Iterable, Mapping

import attrs

from mqsync.errors import ConfigError, PluginError
from mqsync.names import BrokerURL
from mqsync.plugin import ConfigOption, PluginSource, SourceKind, hookimpl
from mqsync.timeseries import Timestamp

from ._common import (
    SCHEDULE_OPTIONS,
    check_bool,
    check_known_keys,
    check_patterns,
    check_prefix,
    check_segment,
    metric_segment,
    selected,
    short_hostname,
    str_tuple,
)

logger = logging.getLogger(__name__)

GROUPS = ("cpu", "mem", "swap", "disk", "net", "load")
#: Shortest interval (s) that gives rates and CPU usage: the kernel counts CPU time in
#: ticks of 10 ms (and disk busy time in ms), so shorter ones are mostly rounding noise.
MIN_INTERVAL_SECONDS = 0.05
DEFAULT_NIC_EXCLUDE = ("lo", "br*", "docker*", "veth*")
DEFAULT_DISK_EXCLUDE = ("loop*", "ram*", "zram*")

OPTIONS = (
    *SCHEDULE_OPTIONS,
    ConfigOption("prefix", "sysinfo", "first part of every metric name", "str"),
    ConfigOption(
        "host",
        None,
        "second part of every metric name; null: this machine's short host name",
        "str",
    ),
    ConfigOption("collect", list(GROUPS), "which groups to measure: " + ", ".join(GROUPS), "list"),
    ConfigOption("per_core", True, "also send the usage of each CPU core", "bool"),
    ConfigOption("nic_include", ["*"], "network interfaces to measure (name patterns)", "list"),
    ConfigOption(
        "nic_exclude",
        list(DEFAULT_NIC_EXCLUDE),
        "network interfaces to skip (name patterns, applied after nic_include)",
        "list",
    ),
    ConfigOption("disk_include", ["*"], "disks to measure (name patterns)", "list"),
    ConfigOption(
        "disk_exclude",
        list(DEFAULT_DISK_EXCLUDE),
        "disks to skip (name patterns, applied after disk_include)",
        "list",
    ),
)

_CPU_IDLE = ("idle", "iowait")
# Linux counts guest time in user and nice already: leave it out of the total.
_CPU_NOT_IN_TOTAL = ("guest", "guest_nice")
_SWAP_GAUGES = ("total", "used", "free", "percent")
_SWAP_RATES = {
    "sin": ("in", "bytes swapped in from disk per second"),
    "sout": ("out", "bytes swapped out to disk per second"),
}
_DISK_RATES = {
    "read_bytes": ("read.bytes", "B/s", "bytes read per second"),
    "write_bytes": ("written.bytes", "B/s", "bytes written per second"),
    "read_count": ("read.count", "1/s", "read operations per second"),
    "write_count": ("written.count", "1/s", "write operations per second"),
}
_NIC_RATES = {
    "bytes_sent": ("sent.bytes", "B/s", "bytes sent per second"),
    "bytes_recv": ("recv.bytes", "B/s", "bytes received per second"),
    "packets_sent": ("sent.packets", "1/s", "packets sent per second"),
    "packets_recv": ("recv.packets", "1/s", "packets received per second"),
}
_LOAD = (("1min", "1 minute"), ("5min", "5 minutes"), ("15min", "15 minutes"))


def import_psutil() -> ModuleType:
    """Import psutil, which mqsync installs only with its ``sysinfo`` extra.

    Imported when a source first reads from it, so that ``import mqsync`` and loading the
    plugins work without it.

    Raises:
        PluginError: psutil cannot be imported; the message says what to install.
    """
    try:
        import psutil
    except ImportError as error:
        raise PluginError(
            f"the sysinfo source needs psutil, which cannot be imported ({error}); "
            "install it with: pip install 'mqsync[sysinfo]'"
        ) from error
    return psutil


def _frozen_mapping(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(value))


def _str_frozenset(values: Iterable[str]) -> frozenset[str]:
    return frozenset(values)


@attrs.frozen
class Snapshot:
    """The counters and gauges of one moment, as plain numbers.

    Attributes:
        time: monotonic seconds when it was taken (only differences matter).
        cpu_total: psutil's ``cpu_times()`` fields (seconds) for all cores together.
        cpu_cores: the same per core, in psutil's order.
        memory: ``virtual_memory()`` fields.
        swap: ``swap_memory()`` fields.
        disks: ``disk_io_counters(perdisk=True)`` fields by disk name.
        nics: ``net_io_counters(pernic=True)`` fields by interface name.
        load: the 1, 5 and 15 minute load averages, or None.
    """

    time: float
    cpu_total: Mapping[str, float] = attrs.field(factory=dict, converter=_frozen_mapping)
    cpu_cores: tuple[Mapping[str, float], ...] = attrs.field(factory=tuple, converter=tuple)
    memory: Mapping[str, float] = attrs.field(factory=dict, converter=_frozen_mapping)
    swap: Mapping[str, float] = attrs.field(factory=dict, converter=_frozen_mapping)
    disks: Mapping[str, Mapping[str, float]] = attrs.field(factory=dict, converter=_frozen_mapping)
    nics: Mapping[str, Mapping[str, float]] = attrs.field(factory=dict, converter=_frozen_mapping)
    load: tuple[float, float, float] | None = None

    @classmethod
    def take(
        cls,
        groups: Iterable[str] = GROUPS,
        *,
        per_core: bool = True,
        psutil_module: ModuleType | None = None,
        clock: Callable[[], float] = monotonic,
        problems: dict[str, str] | None = None,
    ) -> Snapshot:
        """Read the groups ``groups`` from psutil now.

        A group whose psutil call raises is left empty, and the error is logged when it
        differs from the previous one in ``problems`` (group -> last error), so a
        persistent failure is logged once, not on every update.  ``psutil_module``
        replaces :mod:`psutil` (tests).

        Raises:
            PluginError: no ``psutil_module`` was given and psutil is not installed.
        """
        wanted = set(groups)
        values: dict[str, Any] = {"time": clock()}
        problems = {} if problems is None else problems

        def read(group: str, function: Any) -> Any:
            try:
                result = function()
            except Exception as error:  # noqa: BLE001 - a device may vanish mid-read
                text = f"{type(error).__name__}: {error}"
                if problems.get(group) != text:
                    logger.warning("sysinfo: cannot read %s: %s", group, text)
                problems[group] = text
                return None
            if group in problems:
                logger.info("sysinfo: reading %s works again", group)
                del problems[group]
            return result

        ps = psutil_module if psutil_module is not None else import_psutil()
        if "cpu" in wanted:
            total = read("cpu", lambda: ps.cpu_times()._asdict())
            if total is not None:
                values["cpu_total"] = total
            if per_core:
                cores = read("cpu cores", lambda: [t._asdict() for t in ps.cpu_times(percpu=True)])
                values["cpu_cores"] = cores or ()
        if "mem" in wanted:
            values["memory"] = read("mem", lambda: ps.virtual_memory()._asdict()) or {}
        if "swap" in wanted:
            values["swap"] = read("swap", lambda: ps.swap_memory()._asdict()) or {}
        if "disk" in wanted:
            values["disks"] = (
                read(
                    "disk",
                    lambda: {
                        name: counters._asdict()
                        for name, counters in (
                            ps.disk_io_counters(perdisk=True, nowrap=False) or {}
                        ).items()
                    },
                )
                or {}
            )
        if "net" in wanted:
            values["nics"] = (
                read(
                    "net",
                    lambda: {
                        name: counters._asdict()
                        for name, counters in (
                            ps.net_io_counters(pernic=True, nowrap=False) or {}
                        ).items()
                    },
                )
                or {}
            )
        if "load" in wanted:
            load = read("load", ps.getloadavg)
            values["load"] = tuple(load) if load is not None else None
        return cls(**values)


def counter_rate(old: float | None, new: float | None, seconds: float) -> float | None:
    """Per-second increase of a cumulative counter, or None when there is none to tell.

    None when a sample is missing, no time passed, or the counter went down (a reset or
    a wrap-around: see the module documentation).
    """
    if old is None or new is None or not seconds > 0 or new < old:
        return None
    return (new - old) / seconds


def cpu_usage(old: Mapping[str, float], new: Mapping[str, float]) -> float | None:
    """Busy share (0..100 %) between two ``cpu_times`` samples, or None after a reset.

    As psutil's ``cpu_percent``: busy is everything but idle and iowait; guest time is
    already part of user and nice time.
    """
    if not old or not new:
        return None
    deltas = {field: new.get(field, 0.0) - old.get(field, 0.0) for field in new}
    if any(delta < 0 for delta in deltas.values()):
        return None  # counters reset (a core taken offline and back)
    total = sum(delta for field, delta in deltas.items() if field not in _CPU_NOT_IN_TOTAL)
    if not total > 0:
        return None
    idle = sum(deltas.get(field, 0.0) for field in _CPU_IDLE)
    return min(100.0, max(0.0, 100.0 * (total - idle) / total))


@attrs.frozen
class SysinfoCalculator:
    """Turns two :class:`Snapshot` values into ``{metric: value}``, and lists metadata.

    Pure: no psutil, no network, no clock.

    Args:
        prefix: first part of the metric names ('' for none).
        host: second part (one segment).
        groups: which of :data:`GROUPS` to compute.
        per_core: also per-core CPU usage.
        nic_include, nic_exclude, disk_include, disk_exclude: device name patterns.
    """

    prefix: str
    host: str
    groups: frozenset[str] = attrs.field(default=frozenset(GROUPS), converter=_str_frozenset)
    per_core: bool = True
    nic_include: tuple[str, ...] = attrs.field(default=("*",), converter=str_tuple)
    nic_exclude: tuple[str, ...] = attrs.field(default=DEFAULT_NIC_EXCLUDE, converter=str_tuple)
    disk_include: tuple[str, ...] = attrs.field(default=("*",), converter=str_tuple)
    disk_exclude: tuple[str, ...] = attrs.field(
        default=DEFAULT_DISK_EXCLUDE, converter=str_tuple
    )

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SysinfoCalculator:
        """Check a sysinfo configuration.

        Raises:
            ConfigError: a value is of the wrong type or not allowed.
        """
        prefix = check_prefix(config.get("prefix"), allow_empty=True)
        host = config.get("host")
        host = short_hostname() if host is None else check_segment(host, "host")
        groups = check_patterns(config.get("collect"), "collect")
        unknown = sorted(set(groups) - set(GROUPS))
        if unknown:
            raise ConfigError(
                f"invalid collect {list(groups)!r}: unknown {unknown}; expected "
                f"some of {list(GROUPS)}"
            )
        return cls(
            prefix,
            host,
            groups,
            check_bool(config, "per_core"),
            check_patterns(config.get("nic_include"), "nic_include"),
            check_patterns(config.get("nic_exclude"), "nic_exclude"),
            check_patterns(config.get("disk_include"), "disk_include"),
            check_patterns(config.get("disk_exclude"), "disk_exclude"),
        )

    @property
    def base(self) -> str:
        """``<prefix>.<host>``, the start of every metric name."""
        return f"{self.prefix}.{self.host}" if self.prefix else self.host

    def nics(self, snapshot: Snapshot) -> dict[str, str]:
        """Selected interfaces of ``snapshot``: metric segment -> interface name."""
        return _devices(snapshot.nics, self.nic_include, self.nic_exclude)

    def disks(self, snapshot: Snapshot) -> dict[str, str]:
        """Selected disks of ``snapshot``: metric segment -> disk name."""
        return _devices(snapshot.disks, self.disk_include, self.disk_exclude)

    def metadata(self, snapshot: Snapshot, rate: float | None = None) -> dict[str, dict]:
        """Every metric this calculator may send for the devices in ``snapshot``."""
        base = self.base
        result: dict[str, dict[str, Any]] = {}

        def add(name: str, unit: str, description: str) -> None:
            entry: dict[str, Any] = {"unit": unit, "description": description}
            if rate is not None:
                entry["rate"] = rate
            result[f"{base}.{name}"] = entry

        if "cpu" in self.groups:
            if snapshot.cpu_total:
                add("cpu.usage", "%", f"CPU usage of {self.host}, all cores (100 % = all busy)")
            if self.per_core:
                for index, _ in enumerate(snapshot.cpu_cores):
                    add(f"cpu.{index}.usage", "%", f"usage of CPU core {index} of {self.host}")
        if "mem" in self.groups:
            for field in snapshot.memory:
                unit = "%" if field == "percent" else "B"
                add(f"mem.{field}", unit, f"memory {field} of {self.host} (psutil)")
        if "swap" in self.groups and snapshot.swap:
            for field in _SWAP_GAUGES:
                if field in snapshot.swap:
                    unit = "%" if field == "percent" else "B"
                    add(f"swap.{field}", unit, f"swap {field} of {self.host}")
            for field, (name, description) in _SWAP_RATES.items():
                if field in snapshot.swap:
                    add(f"swap.{name}", "B/s", f"{description} on {self.host}")
        if "disk" in self.groups:
            for segment, disk in self.disks(snapshot).items():
                for field, (name, unit, description) in _DISK_RATES.items():
                    if field in snapshot.disks[disk]:
                        add(f"disk.{segment}.{name}", unit, f"{description}, {disk} on {self.host}")
                if "busy_time" in snapshot.disks[disk]:
                    add(
                        f"disk.{segment}.busy", "%", f"share of time {disk} on {self.host} was busy"
                    )
        if "net" in self.groups:
            for segment, nic in self.nics(snapshot).items():
                for field, (name, unit, description) in _NIC_RATES.items():
                    if field in snapshot.nics[nic]:
                        add(f"net.{segment}.{name}", unit, f"{description}, {nic} on {self.host}")
        if "load" in self.groups and snapshot.load is not None:
            for name, span in _LOAD:
                add(f"load.{name}", "", f"load average of {self.host} over {span}")
        return result

    def compute(self, previous: Snapshot | None, current: Snapshot) -> dict[str, float]:
        """The values to send for ``current``; rates and CPU usage need a ``previous``
        snapshot at least :data:`MIN_INTERVAL_SECONDS` older (else only gauges).

        Never returns a negative rate: counters that went down are left out (see the
        module documentation).
        """
        base = self.base
        values: dict[str, float] = {}
        seconds = current.time - previous.time if previous is not None else 0.0
        rates = previous is not None and seconds >= MIN_INTERVAL_SECONDS

        if "cpu" in self.groups and rates:
            assert previous is not None
            usage = cpu_usage(previous.cpu_total, current.cpu_total)
            if usage is not None:
                values[f"{base}.cpu.usage"] = usage
            if self.per_core:
                for index, (old, new) in enumerate(zip(previous.cpu_cores, current.cpu_cores)):
                    usage = cpu_usage(old, new)
                    if usage is not None:
                        values[f"{base}.cpu.{index}.usage"] = usage
        if "mem" in self.groups:
            for field, value in current.memory.items():
                values[f"{base}.mem.{field}"] = float(value)
        if "swap" in self.groups:
            for field in _SWAP_GAUGES:
                if field in current.swap:
                    values[f"{base}.swap.{field}"] = float(current.swap[field])
            if rates:
                assert previous is not None
                for field, (name, _) in _SWAP_RATES.items():
                    rate = counter_rate(previous.swap.get(field), current.swap.get(field), seconds)
                    if rate is not None:
                        values[f"{base}.swap.{name}"] = rate
        if "disk" in self.groups and rates:
            assert previous is not None
            for segment, disk in self.disks(current).items():
                before, after = previous.disks.get(disk), current.disks[disk]
                if before is None:
                    continue  # new disk: rates from its second sample on
                for field, (name, _, _) in _DISK_RATES.items():
                    rate = counter_rate(before.get(field), after.get(field), seconds)
                    if rate is not None:
                        values[f"{base}.disk.{segment}.{name}"] = rate
                busy_ms = counter_rate(before.get("busy_time"), after.get("busy_time"), seconds)
                if busy_ms is not None:
                    # busy_time is in ms: ms per s / 10 = %; clamp the sampling jitter
                    values[f"{base}.disk.{segment}.busy"] = min(100.0, busy_ms / 10.0)
        if "net" in self.groups and rates:
            assert previous is not None
            for segment, nic in self.nics(current).items():
                before, after = previous.nics.get(nic), current.nics[nic]
                if before is None:
                    continue
                for field, (name, _, _) in _NIC_RATES.items():
                    rate = counter_rate(before.get(field), after.get(field), seconds)
                    if rate is not None:
                        values[f"{base}.net.{segment}.{name}"] = rate
        if "load" in self.groups and current.load is not None:
            for (name, _), value in zip(_LOAD, current.load):
                values[f"{base}.load.{name}"] = float(value)
        return values


def _devices(
    devices: Mapping[str, Any], include: Iterable[str], exclude: Iterable[str]
) -> dict[str, str]:
    chosen: dict[str, str] = {}
    for name in sorted(devices):
        if selected(name, include, exclude):
            chosen.setdefault(metric_segment(name), name)
    return chosen


class SysinfoSource(PluginSource):
    """Sends this machine's CPU, memory, swap, disk, network and load metrics.

    Args:
        psutil_module: what to read from instead of :mod:`psutil` (tests).

    Other arguments as :class:`~mqsync.plugin.PluginSource`.

    Raises:
        PluginError: psutil is not installed (``pip install 'mqsync[sysinfo]'``).
    """

    default_config = {option.name: option.default for option in OPTIONS}
    #: Seconds between the two samples of ``mqsync-source --once``: rates and CPU usage
    #: need two, and half a second gives CPU usage a resolution of 2 % per core.
    priming_interval = 0.5

    def __init__(
        self,
        token: str,
        url: BrokerURL | None = None,
        *,
        psutil_module: ModuleType | None = None,
        **kwargs: Any,
    ):
        self._psutil = psutil_module if psutil_module is not None else import_psutil()
        self._calculator: SysinfoCalculator | None = None
        self._previous: Snapshot | None = None
        self._declared: set[str] = set()
        self._problems: dict[str, str] = {}
        super().__init__(token, url, **kwargs)

    @property
    def calculator(self) -> SysinfoCalculator:
        """The computation for the current configuration."""
        assert self._calculator is not None
        return self._calculator

    def configure(self, config: Mapping[str, Any]) -> None:
        check_known_keys("sysinfo", config, OPTIONS)
        self._calculator = SysinfoCalculator.from_config(config)

    def _snapshot(self, calculator: SysinfoCalculator) -> Snapshot:
        return Snapshot.take(
            calculator.groups,
            per_core=calculator.per_core,
            psutil_module=self._psutil,
            problems=self._problems,
        )

    def metrics(self) -> dict[str, dict[str, Any]]:
        calculator = self.calculator
        snapshot = self._snapshot(calculator)
        if self._previous is None:
            # Called at registration: the baseline that lets the first update send rates.
            self._previous = snapshot
        return calculator.metadata(snapshot, self.rate())

    def update(self) -> None:
        calculator = self.calculator
        snapshot = self._snapshot(calculator)
        now = Timestamp.now()
        self._declare_new(calculator.metadata(snapshot, self.rate()))
        previous = self._previous
        values = calculator.compute(previous, snapshot)
        if previous is None or snapshot.time - previous.time >= MIN_INTERVAL_SECONDS:
            # Above 20 Hz the baseline stays until an interval is long enough: rates and
            # CPU usage then come every few updates, each over at least 50 ms.
            self._previous = snapshot
        for metric, value in values.items():
            self.send(metric, now, value)

    def _declare_new(self, metadata: Mapping[str, Mapping[str, Any]]) -> None:
        # update() alone calls it, one at a time (the client's callback lock)
        new = {name: entry for name, entry in metadata.items() if name not in self._declared}
        if not new:
            return
        if not self.declare_new_metrics(new):
            return
        self._declared.update(new)
        logger.info(
            "%s: declared %d metrics (%s ...)", self.token, len(new), ", ".join(sorted(new)[:3])
        )


@hookimpl
def mqsync_source_kinds() -> list[SourceKind]:
    """The ``sysinfo`` source kind."""
    return [
        SourceKind(
            "sysinfo",
            SysinfoSource,
            "this machine's CPU, memory, swap, disk and network IO and load average (psutil)",
            OPTIONS,
        )
    ]

"""The ``ipmi`` source: sensor readings (temperatures, fans, voltages, power) of BMCs.

Configuration::

    {"rate": 0.2,
     "backend": "freeipmi",                  # or "ipmitool", or "pyghmi" (if installed)
     "username": "monitor", "password_file": "/etc/mqsync/bmc.pass",
     "hosts": ["bmc-node01", "bmc-node02",
               {"host": "10.0.0.9", "name": "storage1", "username": "root",
                "password": "..."}]}

Metrics are ``<prefix>.<host name>.<sensor>`` (``ipmi.bmc-node01.cpu1_temp``): the host name
is the entry's ``name``, else the first label of the host name (the whole address, dots as
``_``, for an IP); the sensor part is the sensor's name in lower case with every run of other
characters than letters, digits, ``_`` and ``-`` as one ``_``.  Two sensors of one BMC that
get the same name are told apart by their record id (``temp_12``, ``temp_13``).  Only
sensors with a reading are sent; discrete (state-only) sensors are left out.  A reading of
``N/A`` (or ipmitool's ``na``, ``no reading``, ``disabled``) is sent as NaN.

**Backends.**  ``freeipmi`` runs FreeIPMI's ``ipmi-sensors`` (Debian: ``freeipmi-tools``) for
up to ``hosts_per_process`` hosts sharing credentials in one process (its own fan-out
runs them in parallel), with ``--comma-separated-output --no-header-output
--always-prefix``.  ``ipmitool`` runs ``ipmitool sdr elist full`` (or ``sensor list``) once
per host.  ``pyghmi`` uses the pyghmi package in-process (not a dependency of mqsync;
``pip install pyghmi``); it keeps a session per BMC and runs its own IO thread.

**Credentials** never appear on a command line, in a log, a ``repr`` or an exception
message.  For FreeIPMI, username and password go into a configuration file
(``--config-file``) created with mode 0600 in a private temporary directory, which is
removed when the process ends.  For ipmitool the password goes in the environment
(``-E``: ``IPMI_PASSWORD`` and ``IPMITOOL_PASSWORD``); ipmitool has no way but ``-U`` to take
the *user name*, so with that backend the user name is visible in ``ps``.  Passwords are
held in :class:`Secret` objects whose ``repr`` and ``str`` are masked, and error text from
the tools is scrubbed of them before it is logged.

**Timeouts and failures.**  Every process has a hard ``timeout``; past it its whole
process group is killed.  ``session_timeout`` is handed to the tools so an unreachable BMC
of a group gives up before that.  Hosts are polled concurrently by ``workers`` threads, and
each host's readings are sent as soon as its process ends, so a slow BMC delays nobody
else.  A BMC that does not answer (or answers with no readings) is reported once in the log,
sends NaN for its known metrics on every update, and is retried after 5, 20, 60 and then
every 300 seconds (each retry that fails is logged again); it is logged once more when it
answers again.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import math
import os
import queue
import re
import signal
import subprocess
import tempfile
import threading
import time
from concurrent.futures import Future, as_completed
from concurrent.futures import TimeoutError as FuturesTimeout
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import attrs

from mqsync.errors import ConfigError
from mqsync.plugin import ConfigOption, PluginSource, SourceKind, hookimpl
from mqsync.timeseries import Timestamp

from ._common import (
    SCHEDULE_OPTIONS,
    check_number,
    check_patterns,
    check_prefix,
    check_segment,
    metric_segment,
    selected,
    warn_unknown_keys,
)

logger = logging.getLogger(__name__)

#: Seconds before the 1st, 2nd, 3rd and every later retry of a failed BMC.
BACKOFF_SECONDS = (5.0, 20.0, 60.0, 300.0)
#: Seconds beyond the hard timeout that an update waits for killed processes to be reaped.
GRACE_SECONDS = 2.0
BACKENDS = ("freeipmi", "ipmitool", "pyghmi")
PRIVILEGE_LEVELS = ("USER", "OPERATOR", "ADMIN")
HOST_KEYS = ("host", "name", "port", "username", "password", "password_file")

OPTIONS = (
    ConfigOption("rate", 0.2, "updates per second (ignored when period is set)", "float"),
    *SCHEDULE_OPTIONS[1:],
    ConfigOption("hosts", [], "BMCs: host names or addresses, or objects with host and "
                 "optionally name, port, username, password, password_file", "list"),
    ConfigOption("username", None, "user name for hosts that give none", "str"),
    ConfigOption("password", None, "password for hosts that give none (prefer password_file)",
                 "str"),
    ConfigOption("password_file", None, "file holding the password for hosts that give none",
                 "str"),
    ConfigOption("backend", "freeipmi", "how to read the sensors: " + ", ".join(BACKENDS),
                 "str"),
    ConfigOption("command", None, "path of ipmi-sensors or ipmitool; null: found on PATH",
                 "str"),
    ConfigOption("prefix", "ipmi", "first part of every metric name", "str"),
    ConfigOption("timeout", 10.0, "hard limit in seconds for one poll of a host group; the "
                 "process is killed after it", "float"),
    ConfigOption("session_timeout", 5.0, "IPMI session timeout in seconds handed to the tool "
                 "(below timeout)", "float"),
    ConfigOption("workers", 4, "host groups polled at the same time", "int"),
    ConfigOption("hosts_per_process", 16, "freeipmi: hosts with the same credentials per "
                 "ipmi-sensors process", "int"),
    ConfigOption("ipmi_version", "2.0", "'2.0' (lanplus, LAN_2_0) or '1.5' (lan, LAN)", "str"),
    ConfigOption("privilege_level", "USER", "session privilege: USER, OPERATOR or ADMIN",
                 "str"),
    ConfigOption("sensor_types", [], "only sensors of these types (e.g. Temperature, Fan, "
                 "Voltage, Current); [] for all", "list"),
    ConfigOption("sensors", ["*"], "only sensors whose name matches one of these patterns",
                 "list"),
    ConfigOption("exclude_sensors", [], "leave out sensors whose name matches", "list"),
    ConfigOption("ipmitool_command", "sdr", "ipmitool: 'sdr' (sdr elist full) or 'sensor' "
                 "(sensor list)", "str"),
    ConfigOption("sdr_cache_directory", None, "freeipmi: where to keep SDR caches; null: "
                 "FreeIPMI's default (~/.freeipmi)", "str"),
)


# -- values ------------------------------------------------------------------------------


class Secret:
    """A password: its ``repr`` and ``str`` are masked; :meth:`reveal` gives the text."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        """The secret text itself."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __reduce__(self) -> Any:
        raise TypeError("a Secret cannot be pickled")


@attrs.frozen
class BmcHost:
    """One BMC to poll; the repr shows address and name only."""

    address: str
    name: str
    username: str = attrs.field(repr=False)
    password: Secret = attrs.field(repr=False)
    port: int | None = None

    @property
    def target(self) -> str:
        """The host as the tools take it: ``address``, ``address:port``, ``[v6]:port``."""
        if self.port is None:
            return self.address
        if ":" in self.address:
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"

    @property
    def label(self) -> str:
        """How logs name the host."""
        return self.name if self.name == self.address else f"{self.name} ({self.address})"


@attrs.frozen
class Reading:
    """One sensor reading; ``value`` is NaN when the sensor has none right now."""

    sensor: str
    type: str
    value: float
    unit: str
    record_id: str = ""


@attrs.frozen
class Invocation:
    """A command to run: arguments, extra environment and private files (path -> text).

    Only ``argv`` shows in the repr: the environment and files may hold credentials.
    """

    argv: tuple[str, ...] = attrs.field(converter=tuple)
    env: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    files: Mapping[str, str] = attrs.field(factory=dict, repr=False)


@attrs.frozen
class RunResult:
    """How a command ended: exit status (None if killed), complete output lines, timeout."""

    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool = False


class Cancelled(Exception):
    """The poll was stopped because the source is stopping or reconfigured."""


# -- parsing ----------------------------------------------------------------------------

_NOT_AVAILABLE = {"n/a", "na", "no reading", "disabled", "not readable", "unavailable", ""}
_UNITS = {
    "C": "°C", "degrees C": "°C", "F": "°F", "degrees F": "°F", "K": "K",
    "V": "V", "Volts": "V", "A": "A", "Amps": "A", "W": "W", "Watts": "W",
    "J": "J", "Joules": "J", "RPM": "RPM", "%": "%", "percent": "%", "Hz": "Hz",
    "CFM": "CFM", "unspecified": "", "N/A": "",
}
_HOST_PREFIX = re.compile(r"^(?P<host>[^\s,|]+): (?P<rest>.*)$")
_FREEIPMI_CSV = re.compile(r"^(?P<id>[^,]*),(?P<middle>.*),(?P<event>'.*'|N/A|[^,']*)$")
_NUMBER_AND_UNIT = re.compile(r"^(?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*"
                              r"(?P<unit>.*)$")


def normalize_unit(unit: str) -> str:
    """A tool's unit as MetricQ metadata: ``C``/``degrees C`` -> ``°C``, ``Volts`` -> ``V``."""
    unit = unit.strip()
    return _UNITS.get(unit, unit)


def parse_value(text: str) -> float:
    """A reading as a float; ``N/A``, ``na``, ``no reading``... and anything else -> NaN."""
    text = text.strip()
    if text.lower() in _NOT_AVAILABLE:
        return math.nan
    try:
        return float(text)
    except ValueError:
        return math.nan


def parse_freeipmi(text: str, default_host: str = "") -> dict[str, list[Reading]]:
    """Readings by host from ``ipmi-sensors`` output.

    Takes the comma-separated format (``--comma-separated-output``) and the default
    ``|``-separated one, with or without a header line and ``host: `` prefixes (lines
    without a prefix belong to ``default_host``).  The columns are ``ID, Name, Type,
    Reading, Units, Event``.  Discrete sensors (reading and units ``N/A``) are left out; a
    threshold sensor reading ``N/A`` gives NaN.  Lines that are not sensor lines (errors,
    headers) are skipped.
    """
    readings: dict[str, list[Reading]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        host, rest = default_host, line
        match = _HOST_PREFIX.match(line)
        if match:
            host, rest = match["host"], match["rest"]
        fields = _freeipmi_fields(rest)
        if fields is None:
            continue
        record_id, name, sensor_type, reading, units = fields
        if reading.upper() == "N/A" and units.upper() == "N/A":
            continue
        readings.setdefault(host, []).append(Reading(
            name, sensor_type, parse_value(reading), normalize_unit(units), record_id))
    return readings


def _freeipmi_fields(line: str) -> tuple[str, str, str, str, str] | None:
    if " | " in line or line.count("|") >= 5:
        parts = [part.strip() for part in line.split("|")]
        if len(parts) < 6:
            return None
        record_id, name, sensor_type, reading, units = parts[:5]
    else:
        match = _FREEIPMI_CSV.match(line.strip())
        if not match:
            return None
        middle = match["middle"].rsplit(",", 3)
        if len(middle) != 4:
            return None
        record_id = match["id"].strip()
        name, sensor_type, reading, units = (part.strip() for part in middle)
    if not record_id.isdigit():
        return None  # the header line, or an error message
    return record_id, name, sensor_type, reading, units


def parse_ipmitool(text: str) -> list[Reading]:
    """Readings from ``ipmitool sdr list``, ``sdr elist`` or ``sensor list`` output.

    The format is told by the number of ``|`` columns: 3 (sdr list: name, reading with
    unit, status), 5 (sdr elist: name, sensor number, status, entity, reading with unit) or
    10 and more (sensor: name, value, unit, status, thresholds).  Discrete sensors (a hex
    reading such as ``0x01``, or unit ``discrete``) are left out; ``na``, ``no reading``,
    ``disabled`` give NaN.
    """
    readings: list[Reading] = []
    for line in text.splitlines():
        parts = [part.strip() for part in line.split("|")]
        if len(parts) >= 10:
            name, value, unit = parts[0], parts[1], parts[2]
            if unit.lower() == "discrete" or value.lower().startswith("0x"):
                continue
            readings.append(Reading(name, "", parse_value(value), normalize_unit(unit)))
        elif len(parts) in (3, 5):
            name = parts[0]
            record_id = parts[1].lower() if len(parts) == 5 else ""
            reading = parts[-1] if len(parts) == 5 else parts[1]
            if not name or reading.lower().startswith("0x"):
                continue
            match = _NUMBER_AND_UNIT.match(reading)
            if match:
                value, unit = float(match["number"]), normalize_unit(match["unit"])
            else:
                value, unit = math.nan, ""
            readings.append(Reading(name, "", value, unit, record_id))
    return readings


def sensor_metrics(readings: Iterable[Reading]) -> dict[str, Reading]:
    """Metric name segments for the readings of one BMC (duplicates get the record id)."""
    readings = list(readings)
    segments = [metric_segment(reading.sensor, lower=True, fallback="sensor")
                for reading in readings]
    counts: dict[str, int] = {}
    for segment in segments:
        counts[segment] = counts.get(segment, 0) + 1
    result: dict[str, Reading] = {}
    for segment, reading in zip(segments, readings):
        if counts[segment] > 1:
            suffix = metric_segment(reading.record_id, lower=True, fallback="")
            segment = f"{segment}_{suffix}" if suffix else segment
        unique, number = segment, 2
        while unique in result:
            unique, number = f"{segment}_{number}", number + 1
        result[unique] = reading
    return result


# -- running commands ---------------------------------------------------------------------


class ProcessRunner:
    """Runs commands with a hard timeout; kills what runs when closed.

    Each command gets a session (process group) of its own, so on timeout the tool *and
    anything it started* are killed, and reading its output cannot hang on a pipe held by
    an orphan.  Every wait is bounded.
    """

    def __init__(self, reap_timeout: float = GRACE_SECONDS):
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()
        self._closed = False
        self._reap_timeout = reap_timeout

    def run(self, invocation: Invocation, timeout: float) -> RunResult:
        """Run ``invocation``; write its files (mode 0600) first.

        Raises:
            Cancelled: the runner is closed (before or while the command ran).
            OSError: the command could not be started (e.g. not installed).
        """
        for path, content in invocation.files.items():
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as file:
                file.write(content)
        env = {**os.environ, "LC_ALL": "C", **invocation.env}
        with self._lock:
            if self._closed:
                raise Cancelled("stopped")
            process = subprocess.Popen(
                list(invocation.argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, env=env, text=True, errors="replace",
                start_new_session=True)
            self._running.add(process)
        timed_out = False
        try:
            try:
                stdout, stderr = process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(process)
                stdout, stderr = self._reap(process)
        finally:
            with self._lock:
                self._running.discard(process)
                closed = self._closed
        if closed and (timed_out or process.returncode is None or process.returncode < 0):
            raise Cancelled("stopped")
        if timed_out:
            # Only complete lines: a line cut off mid-number would give a wrong value.
            stdout = stdout[:stdout.rfind("\n") + 1]
            return RunResult(None, stdout, stderr, timed_out=True)
        return RunResult(process.returncode, stdout, stderr)

    def _reap(self, process: subprocess.Popen) -> tuple[str, str]:
        try:
            return process.communicate(timeout=self._reap_timeout)
        except subprocess.TimeoutExpired:
            # Something escaped the group and holds the pipes: give up on the output.
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
            try:
                process.wait(self._reap_timeout)
            except subprocess.TimeoutExpired:
                logger.error("ipmi: process %d did not end after SIGKILL", process.pid)
            return "", ""

    def close(self) -> None:
        """Refuse new commands and kill the running ones (their ``run`` raises Cancelled)."""
        with self._lock:
            self._closed = True
            running = list(self._running)
        for process in running:
            _kill_group(process)


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError:  # the group is gone and its id reused: kill the child alone
        process.kill()


class _WorkerPool:
    """A few named threads taking jobs from a queue; :meth:`close` joins them, bounded."""

    def __init__(self, size: int, name: str):
        self._size = size
        self._name = name
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, function: Callable[..., Any], *args: Any) -> Future:
        """Queue ``function(*args)``; raises RuntimeError once closed."""
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the worker pool is closed")
            if len(self._threads) < self._size:
                thread = threading.Thread(target=self._work, daemon=True,
                                          name=f"{self._name}-{len(self._threads)}")
                self._threads.append(thread)
                thread.start()
            self._jobs.put((future, function, args))
        return future

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, function, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(function(*args))
            except BaseException as error:  # noqa: BLE001 - handed to the waiter
                future.set_exception(error)

    def close(self, timeout: float) -> bool:
        """Cancel queued jobs, let running ones end, join the threads; True if all ended."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[0].cancel()
        for _ in threads:
            self._jobs.put(None)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [thread.name for thread in threads if thread.is_alive()]
        if alive:
            logger.error("ipmi: threads %s did not end within %g s", alive, timeout)
        return not alive


# -- backends -----------------------------------------------------------------------------

PollOutcome = Mapping[BmcHost, "list[Reading] | str"]


def _quote_freeipmi(value: str) -> str:
    # FreeIPMI's config parser: "..." keeps spaces; \ escapes \, " and # (else a comment).
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("#", "\\#")
    return f'"{escaped}"'


def _host_errors(stderr: str, hosts: Sequence[BmcHost]) -> tuple[dict[str, list[str]], list[str]]:
    by_target: dict[str, list[str]] = {}
    general: list[str] = []
    targets = {host.target for host in hosts}
    for line in stderr.splitlines():
        if not line.strip():
            continue
        match = _HOST_PREFIX.match(line)
        if match and match["host"] in targets:
            by_target.setdefault(match["host"], []).append(match["rest"].strip())
        else:
            general.append(line.strip())
    return by_target, general


@attrs.frozen
class FreeIpmiBackend:
    """Runs ``ipmi-sensors`` for a group of hosts that share credentials."""

    command: str = "ipmi-sensors"
    session_timeout: float = 5.0
    ipmi_version: str = "2.0"
    privilege_level: str = "USER"
    sensor_types: tuple[str, ...] = ()
    sdr_cache_directory: str | None = None
    hosts_per_process: int = 16
    uses_processes = True

    def group_key(self, host: BmcHost) -> Any:
        """Hosts with equal keys may share a process."""
        return (host.username, host.password)

    @property
    def max_hosts(self) -> int:
        """Hosts per process."""
        return self.hosts_per_process

    def invocation(self, hosts: Sequence[BmcHost], workdir: Path) -> Invocation:
        """The ``ipmi-sensors`` command for ``hosts`` (credentials in a file in ``workdir``)."""
        config_file = workdir / "freeipmi.conf"
        session_ms = max(1, round(self.session_timeout * 1000))
        argv = [
            self.command,
            f"--config-file={config_file}",
            "--hostname=" + ",".join(host.target for host in hosts),
            f"--fanout={max(1, len(hosts))}",
            "--always-prefix",
            "--comma-separated-output",
            "--no-header-output",
            "--quiet-cache",
            "--sdr-cache-recreate",
            f"--driver-type={'LAN_2_0' if self.ipmi_version == '2.0' else 'LAN'}",
            f"--privilege-level={self.privilege_level}",
            f"--session-timeout={session_ms}",
            f"--retransmission-timeout={max(1, min(1000, session_ms // 4))}",
        ]
        if self.sensor_types:
            argv.append("--sensor-types=" + ",".join(self.sensor_types))
        if self.sdr_cache_directory:
            argv.append(f"--sdr-cache-directory={self.sdr_cache_directory}")
        first = hosts[0]
        content = (f"username {_quote_freeipmi(first.username)}\n"
                   f"password {_quote_freeipmi(first.password.reveal())}\n")
        return Invocation(argv, {}, {str(config_file): content})

    def parse(self, hosts: Sequence[BmcHost], result: RunResult, timeout: float) -> PollOutcome:
        """Readings or an error message for each host."""
        default = hosts[0].target if len(hosts) == 1 else ""
        readings = parse_freeipmi(result.stdout, default_host=default)
        errors, general = _host_errors(result.stderr, hosts)
        outcome: dict[BmcHost, list[Reading] | str] = {}
        for host in hosts:
            found = readings.get(host.target)
            if found:
                outcome[host] = found
            elif result.timed_out:
                outcome[host] = f"no answer within {timeout:g} s (the process was killed)"
            else:
                lines = errors.get(host.target) or general
                outcome[host] = "; ".join(lines[:3]) or (
                    f"no sensor readings (exit status {result.returncode})")
        return outcome

    def poll(self, hosts: Sequence[BmcHost], runner: ProcessRunner, timeout: float) -> PollOutcome:
        """Run the command for ``hosts`` and parse its output."""
        return _run_and_parse(self, hosts, runner, timeout)


@attrs.frozen
class IpmitoolBackend:
    """Runs ``ipmitool`` once per host; the password goes in the environment (``-E``)."""

    command: str = "ipmitool"
    session_timeout: float = 5.0
    ipmi_version: str = "2.0"
    privilege_level: str = "USER"
    sensor_types: tuple[str, ...] = ()
    subcommand: str = "sdr"
    uses_processes = True
    max_hosts = 1

    def group_key(self, host: BmcHost) -> Any:
        """Every host has a process of its own."""
        return host

    def invocation(self, hosts: Sequence[BmcHost], workdir: Path) -> Invocation:
        """The ``ipmitool`` command for the one host in ``hosts``."""
        (host,) = hosts
        privilege = "ADMINISTRATOR" if self.privilege_level == "ADMIN" else self.privilege_level
        argv = [self.command, "-I", "lanplus" if self.ipmi_version == "2.0" else "lan",
                "-H", host.address]
        if host.port is not None:
            argv += ["-p", str(host.port)]
        argv += ["-U", host.username, "-E", "-L", privilege,
                 "-N", str(max(1, math.ceil(self.session_timeout / 2))), "-R", "1"]
        argv += ["sdr", "elist", "full"] if self.subcommand == "sdr" else ["sensor", "list"]
        password = host.password.reveal()
        return Invocation(argv, {"IPMI_PASSWORD": password, "IPMITOOL_PASSWORD": password}, {})

    def parse(self, hosts: Sequence[BmcHost], result: RunResult, timeout: float) -> PollOutcome:
        """Readings or an error message for the host."""
        (host,) = hosts
        readings = parse_ipmitool(result.stdout)
        if readings:
            return {host: readings}
        if result.timed_out:
            return {host: f"no answer within {timeout:g} s (the process was killed)"}
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        return {host: "; ".join(lines[:3]) or f"no sensor readings (exit status "
                      f"{result.returncode})"}

    def poll(self, hosts: Sequence[BmcHost], runner: ProcessRunner, timeout: float) -> PollOutcome:
        """Run the command for ``hosts`` and parse its output."""
        return _run_and_parse(self, hosts, runner, timeout)


def _run_and_parse(backend: Any, hosts: Sequence[BmcHost], runner: ProcessRunner,
                   timeout: float) -> PollOutcome:
    with tempfile.TemporaryDirectory(prefix="mqsync-ipmi-") as workdir:  # mode 0700
        invocation = backend.invocation(hosts, Path(workdir))
        try:
            result = runner.run(invocation, timeout)
        except FileNotFoundError:
            message = (f"command {invocation.argv[0]!r} not found: install it (Debian: "
                       "freeipmi-tools or ipmitool) or set 'command'")
            return {host: message for host in hosts}
    return backend.parse(hosts, result, timeout)


class PyghmiBackend:
    """Reads sensors in-process with pyghmi (optional; ``pip install pyghmi``).

    One ``pyghmi.ipmi.command.Command`` (an IPMI session) is kept per BMC and dropped after
    an error.  pyghmi has timeouts of its own; the source cannot kill a pyghmi call, so a
    hung call keeps its worker busy (that host is not polled again until it returns).
    """

    uses_processes = False
    max_hosts = 1

    def __init__(self, command_module: Any = None, sensor_types: Sequence[str] = ()):
        if command_module is None:
            try:
                from pyghmi.ipmi import command as command_module  # type: ignore[no-redef]
            except ImportError:
                raise ConfigError("backend 'pyghmi' needs the pyghmi package, which is not "
                                  "installed: pip install pyghmi (or use backend "
                                  "'freeipmi')") from None
        self._module = command_module
        self.sensor_types = tuple(sensor_types)
        self._sessions: dict[BmcHost, Any] = {}
        self._lock = threading.Lock()

    def group_key(self, host: BmcHost) -> Any:
        """Every host is polled alone."""
        return host

    def poll(self, hosts: Sequence[BmcHost], runner: ProcessRunner, timeout: float) -> PollOutcome:
        """Read every sensor of the one host in ``hosts``."""
        (host,) = hosts
        with self._lock:
            session = self._sessions.get(host)
        try:
            if session is None:
                kwargs: dict[str, Any] = {"bmc": host.address, "userid": host.username,
                                          "password": host.password.reveal()}
                if host.port is not None:
                    kwargs["port"] = host.port
                session = self._module.Command(**kwargs)
            readings = []
            for data in session.get_sensor_data():
                unavailable = bool(getattr(data, "unavailable", False))
                value = getattr(data, "value", None)
                if value is None and not unavailable:
                    continue  # a discrete sensor: states, no reading
                readings.append(Reading(
                    str(data.name), str(getattr(data, "type", "") or ""),
                    math.nan if unavailable or value is None else float(value),
                    normalize_unit(str(getattr(data, "units", "") or ""))))
        except Exception as error:  # noqa: BLE001 - pyghmi raises many kinds
            with self._lock:
                self._sessions.pop(host, None)
            return {host: f"{type(error).__name__}: {error}"}
        with self._lock:
            self._sessions[host] = session
        return {host: readings} if readings else {host: "no sensor readings"}


# -- polling many hosts -------------------------------------------------------------------


@attrs.define
class HostState:
    """What the collector knows of one BMC."""

    failures: int = 0
    retry_at: float = 0.0
    busy: bool = False
    last_error: str = ""
    metrics: dict[str, dict[str, Any]] = attrs.Factory(dict)


Emit = Callable[[str, float], None]
Declare = Callable[[Mapping[str, Mapping[str, Any]]], bool]


class IpmiCollector:
    """Polls many BMCs concurrently with backoff for failed ones; no MetricQ in here.

    Args:
        hosts: the BMCs.
        backend: a :class:`FreeIpmiBackend`, :class:`IpmitoolBackend` or
            :class:`PyghmiBackend`.
        prefix: first part of the metric names.
        timeout: hard limit (seconds) for one poll of a host group.
        workers: host groups polled at once.
        sensor_include, sensor_exclude, sensor_types: which sensors to send.
        clock: monotonic seconds (tests inject a fake one to drive the backoff).
        backoff: seconds before successive retries of a failed host (the last repeats).
        name: names the worker threads.
    """

    def __init__(self, hosts: Sequence[BmcHost], backend: Any, *, prefix: str = "ipmi",
                 timeout: float = 10.0, workers: int = 4,
                 sensor_include: Sequence[str] = ("*",), sensor_exclude: Sequence[str] = (),
                 sensor_types: Sequence[str] = (),
                 clock: Callable[[], float] = time.monotonic,
                 backoff: Sequence[float] = BACKOFF_SECONDS, name: str = "ipmi"):
        self.hosts = tuple(hosts)
        self.backend = backend
        self.prefix = prefix
        self.timeout = float(timeout)
        self.sensor_include = tuple(sensor_include)
        self.sensor_exclude = tuple(sensor_exclude)
        self.sensor_types = {t.lower() for t in sensor_types}
        self._clock = clock
        self._backoff = tuple(backoff)
        self._runner = ProcessRunner()
        self._pool = _WorkerPool(max(1, workers), f"mqsync-{name}-ipmi")
        self._states = {host: HostState() for host in self.hosts}
        self._declared: set[str] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._secrets = sorted({host.password.reveal() for host in self.hosts
                                if host.password.reveal()}, key=len, reverse=True)

    # -- status --------------------------------------------------------------------------

    def state(self, host: BmcHost | str) -> HostState:
        """A copy of the state of ``host`` (a BmcHost, its address or its name)."""
        for candidate in self.hosts:
            if host in (candidate, candidate.address, candidate.name):
                with self._lock:
                    return attrs.evolve(self._states[candidate],
                                        metrics=dict(self._states[candidate].metrics))
        raise KeyError(host)

    def known_metrics(self) -> dict[str, dict[str, Any]]:
        """Metadata of every metric seen so far."""
        with self._lock:
            return {metric: dict(entry) for state in self._states.values()
                    for metric, entry in state.metrics.items()}

    # -- polling -------------------------------------------------------------------------

    def collect(self, emit: Emit, declare: Declare | None = None) -> None:
        """Poll the hosts that are due, calling ``emit(metric, value)`` per value.

        Each host's values are emitted as soon as its poll ends; hosts waiting for a retry
        emit NaN for their known metrics.  Returns after every poll ended or ``timeout``
        plus a grace period passed.  ``declare(metadata)`` is called first with metrics
        never declared (successfully) before; it returns whether that worked.
        """
        now = self._clock()
        with self._lock:
            if self._closed:
                return
            due = [host for host in self.hosts
                   if not self._states[host].busy and self._states[host].retry_at <= now]
            waiting = [host for host in self.hosts if self._states[host].retry_at > now]
            for host in due:
                self._states[host].busy = True
        futures: dict[Future, list[BmcHost]] = {}
        for group in self._groups(due):
            try:
                futures[self._pool.submit(self._poll, group)] = group
            except RuntimeError:  # closed meanwhile
                with self._lock:
                    for host in group:
                        self._states[host].busy = False
        for host in waiting:
            self._emit_nan(host, emit)
        try:
            for future in as_completed(futures, timeout=self.timeout + GRACE_SECONDS):
                try:
                    outcome = future.result()
                except Exception:  # noqa: BLE001 - _poll catches; cancelled at close
                    continue
                for host, result in outcome.items():
                    if isinstance(result, list):
                        self._emit_readings(host, result, emit, declare)
                    elif result is not None:
                        self._emit_nan(host, emit)
        except FuturesTimeout:
            late = [host.label for future, group in futures.items() if not future.done()
                    for host in group]
            logger.warning("ipmi: polls of %s still running after %g s; not waiting",
                           ", ".join(late), self.timeout + GRACE_SECONDS)

    def _groups(self, hosts: Sequence[BmcHost]) -> list[list[BmcHost]]:
        by_key: dict[Any, list[BmcHost]] = {}
        for host in hosts:
            by_key.setdefault(self.backend.group_key(host), []).append(host)
        size = max(1, self.backend.max_hosts)
        return [members[start:start + size] for members in by_key.values()
                for start in range(0, len(members), size)]

    def _poll(self, group: list[BmcHost]) -> Mapping[BmcHost, list[Reading] | str | None]:
        """Worker thread: poll one group and book success or failure per host."""
        outcome: dict[BmcHost, list[Reading] | str | None]
        try:
            outcome = dict(self.backend.poll(group, self._runner, self.timeout))
        except Cancelled:
            outcome = {host: None for host in group}
        except Exception as error:  # noqa: BLE001 - one group's trouble is not the source's
            outcome = {host: f"{type(error).__name__}: {error}" for host in group}
        except BaseException:
            with self._lock:
                for host in group:
                    self._states[host].busy = False
            raise
        for host in group:
            result = outcome.get(host, "no result")
            if isinstance(result, str):
                result = outcome[host] = self._scrub(result)
            self._book(host, result)
        return outcome

    def _book(self, host: BmcHost, result: list[Reading] | str | None) -> None:
        with self._lock:
            state = self._states[host]
            state.busy = False
            if result is None or self._closed:
                return
            if isinstance(result, list):
                if state.failures:
                    logger.info("ipmi: BMC %s answers again after %d failed attempts",
                                host.label, state.failures)
                state.failures, state.retry_at, state.last_error = 0, 0.0, ""
                return
            state.failures += 1
            delay = self._backoff[min(state.failures, len(self._backoff)) - 1]
            state.retry_at = self._clock() + delay
            state.last_error = result
            failures = state.failures
        if failures == 1:
            logger.warning("ipmi: BMC %s failed: %s; sending NaN, retrying in %g s",
                           host.label, result, delay)
        else:
            logger.warning("ipmi: BMC %s still failing (%d attempts): %s; next retry in %g s",
                           host.label, failures, result, delay)

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "********")
        return text

    def _wanted(self, reading: Reading) -> bool:
        if self.sensor_types and reading.type and reading.type.lower() not in self.sensor_types:
            return False
        return selected(reading.sensor, self.sensor_include, self.sensor_exclude)

    def _emit_readings(self, host: BmcHost, readings: list[Reading], emit: Emit,
                       declare: Declare | None) -> None:
        base = f"{self.prefix}.{host.name}"
        values = {f"{base}.{segment}": reading for segment, reading in
                  sensor_metrics(r for r in readings if self._wanted(r)).items()}
        with self._lock:
            known = self._states[host].metrics
            for metric, reading in values.items():
                if metric not in known:
                    description = f"{reading.sensor}"
                    if reading.type:
                        description += f" ({reading.type})"
                    known[metric] = {"unit": reading.unit,
                                     "description": f"{description} of BMC {host.name}"}
            missing = [metric for metric in known if metric not in values]
            new = {metric: dict(known[metric]) for metric in values
                   if metric not in self._declared}
        if new and declare is not None and declare(new):
            with self._lock:
                self._declared.update(new)
        for metric, reading in values.items():
            emit(metric, reading.value)
        for metric in missing:
            emit(metric, math.nan)

    def _emit_nan(self, host: BmcHost, emit: Emit) -> None:
        with self._lock:
            metrics = list(self._states[host].metrics)
        for metric in metrics:
            emit(metric, math.nan)

    # -- stopping ------------------------------------------------------------------------

    def cancel(self) -> None:
        """Poll nothing more and kill what runs; :meth:`collect` returns soon."""
        with self._lock:
            self._closed = True
        self._runner.close()

    def close(self, timeout: float = 5.0) -> bool:
        """:meth:`cancel`, then join the worker threads (bounded); True if all ended."""
        self.cancel()
        return self._pool.close(timeout)


# -- configuration ------------------------------------------------------------------------


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def _read_password_file(path: Any, where: str) -> Secret:
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{where}: invalid password_file {path!r}: expected a file path")
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise ConfigError(f"{where}: cannot read password_file {path!r}: {reason}") from None
    return _checked_password(text.rstrip("\r\n"), where)


def _checked_password(value: Any, where: str) -> Secret:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: the password must be a string (got {type(value).__name__})")
    if any(c in value for c in "\n\r\0"):
        raise ConfigError(f"{where}: the password contains a line break or NUL, which the "
                          "IPMI tools cannot take")
    return Secret(value)


def hosts_from_config(config: Mapping[str, Any]) -> tuple[BmcHost, ...]:
    """The BMCs of an ipmi configuration, with their credentials.

    Raises:
        ConfigError: no hosts, a malformed entry, a missing username or password, a
            password file that cannot be read, or two hosts with one metric name.  The
            message never contains a password.
    """
    entries = config.get("hosts")
    if isinstance(entries, (str, dict)) or not isinstance(entries, (list, tuple)) \
            or not entries:
        raise ConfigError("invalid hosts: expected a non-empty list of host names or "
                          "{host, username, password | password_file} objects")
    shared_user = config.get("username")
    hosts: list[BmcHost] = []
    for index, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = {"host": entry}
        if not isinstance(entry, Mapping):
            raise ConfigError(f"hosts[{index}]: expected a host name or an object, got "
                              f"{type(entry).__name__}")
        address = entry.get("host")
        if not isinstance(address, str) or not address or any(
                c.isspace() or c in ",[]" for c in address):
            raise ConfigError(f"hosts[{index}]: invalid host {address!r}: expected a host "
                              "name or address without spaces, commas or brackets")
        where = f"host {address!r}"
        unknown = sorted(set(entry) - set(HOST_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown keys {unknown}; known: {list(HOST_KEYS)}")
        name = entry.get("name")
        if name is None:
            name = metric_segment(address if _is_ip(address) else address.split(".")[0],
                                  lower=True)
        else:
            name = check_segment(name, f"name of {where}")
        port = entry.get("port")
        if port is not None and (isinstance(port, bool) or not isinstance(port, int)
                                 or not 0 < port < 65536):
            raise ConfigError(f"{where}: invalid port {port!r}: expected 1 to 65535")
        username = entry.get("username", shared_user)
        if not isinstance(username, str):
            raise ConfigError(f"{where}: no username: give 'username' for the host or for "
                              "all hosts")
        if any(c in username for c in "\n\r\0"):
            raise ConfigError(f"{where}: the username contains a line break or NUL")
        # A host's own password or password_file wins over the shared ones.
        source = entry if "password" in entry or "password_file" in entry else config
        if source.get("password") is not None:
            password = _checked_password(source["password"], where)
        elif source.get("password_file") is not None:
            password = _read_password_file(source["password_file"], where)
        else:
            raise ConfigError(f"{where}: no password: give 'password' or 'password_file' "
                              "for the host or for all hosts")
        hosts.append(BmcHost(address, name, username, password, port))
    seen: dict[str, str] = {}
    for host in hosts:
        for key, what in ((host.target, "host"), (host.name, "metric name")):
            if (what, key) in seen:
                raise ConfigError(f"hosts {seen[(what, key)]!r} and {host.address!r} have the "
                                  f"same {what} {key!r}: give one of them another 'name'")
            seen[(what, key)] = host.address
    return tuple(hosts)


@attrs.frozen
class IpmiSettings:
    """A checked ipmi configuration (hosts and credentials included; the repr hides them)."""

    hosts: tuple[BmcHost, ...]
    backend: str
    command: str | None
    prefix: str
    timeout: float
    session_timeout: float
    workers: int
    hosts_per_process: int
    ipmi_version: str
    privilege_level: str
    sensor_types: tuple[str, ...]
    sensors: tuple[str, ...]
    exclude_sensors: tuple[str, ...]
    ipmitool_command: str
    sdr_cache_directory: str | None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> IpmiSettings:
        """Check an ipmi configuration.

        Raises:
            ConfigError: a value is missing, malformed or out of range.
        """
        backend = config.get("backend")
        if backend not in BACKENDS:
            raise ConfigError(f"invalid backend {backend!r}: expected one of {list(BACKENDS)}")
        command = config.get("command")
        if command is not None and (not isinstance(command, str) or not command):
            raise ConfigError(f"invalid command {command!r}: expected a program path")
        timeout = float(check_number(config, "timeout", positive=True))
        session_timeout = float(check_number(config, "session_timeout", positive=True))
        if session_timeout >= timeout:
            raise ConfigError(f"invalid session_timeout {session_timeout:g}: must be below "
                              f"timeout ({timeout:g} s), so a dead BMC of a group gives up "
                              "before the group's process is killed")
        version = config.get("ipmi_version")
        if version not in ("2.0", "1.5"):
            raise ConfigError(f"invalid ipmi_version {version!r}: expected '2.0' or '1.5'")
        privilege = config.get("privilege_level")
        if not isinstance(privilege, str) or privilege.upper() not in PRIVILEGE_LEVELS:
            raise ConfigError(f"invalid privilege_level {privilege!r}: expected one of "
                              f"{list(PRIVILEGE_LEVELS)}")
        subcommand = config.get("ipmitool_command")
        if subcommand not in ("sdr", "sensor"):
            raise ConfigError(f"invalid ipmitool_command {subcommand!r}: expected 'sdr' or "
                              "'sensor'")
        cache = config.get("sdr_cache_directory")
        if cache is not None and (not isinstance(cache, str) or not cache):
            raise ConfigError(f"invalid sdr_cache_directory {cache!r}: expected a directory")
        sensor_types = check_patterns(config.get("sensor_types"), "sensor_types")
        if any("," in t or not t for t in sensor_types):
            raise ConfigError(f"invalid sensor_types {list(sensor_types)!r}: expected type "
                              "names such as 'Temperature'")
        return cls(
            hosts=hosts_from_config(config), backend=backend, command=command,
            prefix=check_prefix(config.get("prefix")), timeout=timeout,
            session_timeout=session_timeout,
            workers=check_number(config, "workers", integer=True, positive=True),
            hosts_per_process=check_number(config, "hosts_per_process", integer=True,
                                           positive=True),
            ipmi_version=version, privilege_level=privilege.upper(),
            sensor_types=sensor_types,
            sensors=check_patterns(config.get("sensors"), "sensors"),
            exclude_sensors=check_patterns(config.get("exclude_sensors"), "exclude_sensors"),
            ipmitool_command=subcommand, sdr_cache_directory=cache)

    def make_backend(self) -> Any:
        """The backend these settings select.

        Raises:
            ConfigError: the pyghmi backend is chosen but pyghmi is not installed.
        """
        if self.backend == "freeipmi":
            return FreeIpmiBackend(self.command or "ipmi-sensors", self.session_timeout,
                                   self.ipmi_version, self.privilege_level, self.sensor_types,
                                   self.sdr_cache_directory, self.hosts_per_process)
        if self.backend == "ipmitool":
            return IpmitoolBackend(self.command or "ipmitool", self.session_timeout,
                                   self.ipmi_version, self.privilege_level, self.sensor_types,
                                   self.ipmitool_command)
        return PyghmiBackend(sensor_types=self.sensor_types)

    def make_collector(self, *, name: str = "ipmi",
                       clock: Callable[[], float] = time.monotonic) -> IpmiCollector:
        """A collector for these settings."""
        return IpmiCollector(self.hosts, self.make_backend(), prefix=self.prefix,
                             timeout=self.timeout, workers=self.workers,
                             sensor_include=self.sensors, sensor_exclude=self.exclude_sensors,
                             sensor_types=self.sensor_types, clock=clock, name=name)


class IpmiSource(PluginSource):
    """Sends the sensor readings of the configured BMCs.

    Args:
        backoff_clock: monotonic seconds for the retry backoff (tests).

    Other arguments as :class:`~mqsync.plugin.PluginSource`.
    """

    default_config = {option.name: option.default for option in OPTIONS}

    def __init__(self, token: str, url: str | None = None, *,
                 backoff_clock: Callable[[], float] = time.monotonic, **kwargs: Any):
        self._backoff_clock = backoff_clock
        self._settings: IpmiSettings | None = None
        self._collector: IpmiCollector | None = None
        self._collector_lock = threading.Lock()
        super().__init__(token, url, **kwargs)

    @property
    def collector(self) -> IpmiCollector:
        """The collector for the current configuration."""
        assert self._collector is not None
        return self._collector

    def configure(self, config: Mapping[str, Any]) -> None:
        warn_unknown_keys("ipmi", config, OPTIONS)
        settings = IpmiSettings.from_config(config)
        if settings == self._settings:
            return
        collector = settings.make_collector(name=self.token, clock=self._backoff_clock)
        with self._collector_lock:
            old, self._collector, self._settings = self._collector, collector, settings
        if old is not None:
            old.close()
        logger.info("%s: polling %d BMCs with %s", self.token, len(settings.hosts),
                    settings.backend)

    def metrics(self) -> dict[str, dict[str, Any]]:
        metrics = self.collector.known_metrics()
        rate = self.rate()
        if rate is not None:
            for entry in metrics.values():
                entry["rate"] = rate
        return metrics

    def update(self) -> None:
        with self._collector_lock:
            collector = self._collector
        if collector is None:
            return
        now = Timestamp.now()
        collector.collect(lambda metric, value: self.send(metric, now, value), self._declare)

    def _declare(self, metadata: Mapping[str, Mapping[str, Any]]) -> bool:
        rate = self.rate()
        entries = {name: {**entry, **({"rate": rate} if rate is not None else {})}
                   for name, entry in metadata.items()}
        try:
            self.declare_metrics(entries)
        except Exception as error:  # noqa: BLE001 - send anyway, declare next update
            logger.warning("%s: could not declare %d metrics (%s); retrying next update",
                           self.token, len(entries), error)
            return False
        return True

    def _on_stop(self, timeout: float) -> None:
        with self._collector_lock:
            collector = self._collector
        if collector is not None:
            collector.cancel()  # kill running tools so the update returns now
        super()._on_stop(timeout)
        if collector is not None:
            collector.close(timeout)


@hookimpl
def mqsync_source_kinds() -> list[SourceKind]:
    """The ``ipmi`` source kind."""
    return [SourceKind("ipmi", IpmiSource, "sensor readings of BMCs over IPMI (FreeIPMI "
                       "ipmi-sensors, ipmitool or pyghmi)", OPTIONS)]

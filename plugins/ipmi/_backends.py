"""The backends that read a BMC's sensors: ``ipmi-sensors`` and ``ipmitool`` (the commands
they build, with the credentials kept off the command line, and how their output is read)
and pyghmi in-process."""

from __future__ import annotations

import math
import tempfile
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

import attrs

from mqsync.errors import ConfigError

from ._parsing import _HOST_PREFIX, normalize_unit, parse_freeipmi, parse_ipmitool
from ._process import ProcessRunner
from ._values import BmcHost, Invocation, Reading, RunResult

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
        content = (
            f"username {_quote_freeipmi(first.username)}\n"
            f"password {_quote_freeipmi(first.password.reveal())}\n"
        )
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
                    f"no sensor readings (exit status {result.returncode})"
                )
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
        argv = [
            self.command,
            "-I",
            "lanplus" if self.ipmi_version == "2.0" else "lan",
            "-H",
            host.address,
        ]
        if host.port is not None:
            argv += ["-p", str(host.port)]
        argv += [
            "-U",
            host.username,
            "-E",
            "-L",
            privilege,
            "-N",
            str(max(1, math.ceil(self.session_timeout / 2))),
            "-R",
            "1",
        ]
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
        return {
            host: "; ".join(lines[:3]) or f"no sensor readings (exit status {result.returncode})"
        }

    def poll(self, hosts: Sequence[BmcHost], runner: ProcessRunner, timeout: float) -> PollOutcome:
        """Run the command for ``hosts`` and parse its output."""
        return _run_and_parse(self, hosts, runner, timeout)


def _run_and_parse(
    backend: Any, hosts: Sequence[BmcHost], runner: ProcessRunner, timeout: float
) -> PollOutcome:
    with tempfile.TemporaryDirectory(prefix="mqsync-ipmi-") as workdir:  # mode 0700
        invocation = backend.invocation(hosts, Path(workdir))
        try:
            result = runner.run(invocation, timeout)
        except FileNotFoundError:
            message = (
                f"command {invocation.argv[0]!r} not found: install it (Debian: "
                "freeipmi-tools or ipmitool) or set 'command'"
            )
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
                raise ConfigError(
                    "backend 'pyghmi' needs the pyghmi package, which is not "
                    "installed: pip install pyghmi (or use backend "
                    "'freeipmi')"
                ) from None
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
                kwargs: dict[str, Any] = {
                    "bmc": host.address,
                    "userid": host.username,
                    "password": host.password.reveal(),
                }
                if host.port is not None:
                    kwargs["port"] = host.port
                session = self._module.Command(**kwargs)
            readings = []
            for data in session.get_sensor_data():
                unavailable = bool(getattr(data, "unavailable", False))
                value = getattr(data, "value", None)
                if value is None and not unavailable:
                    continue  # a discrete sensor: states, no reading
                readings.append(
                    Reading(
                        str(data.name),
                        str(getattr(data, "type", "") or ""),
                        math.nan if unavailable or value is None else float(value),
                        normalize_unit(str(getattr(data, "units", "") or "")),
                    )
                )
        except Exception as error:  # noqa: BLE001 - pyghmi raises many kinds
            with self._lock:
                self._sessions.pop(host, None)
            return {host: f"{type(error).__name__}: {error}"}
        with self._lock:
            self._sessions[host] = session
        return {host: readings} if readings else {host: "no sensor readings"}

"""Checking an ``ipmi`` configuration: the hosts and their credentials (passwords and
password files), the other settings, and the backend and collector they make."""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import attrs

from mqsync.errors import ConfigError

from .._common import check_number, check_patterns, check_prefix, check_segment, metric_segment
from ._backends import FreeIpmiBackend, IpmitoolBackend, PyghmiBackend
from ._collector import IpmiCollector
from ._options import BACKENDS, HOST_KEYS, PRIVILEGE_LEVELS
from ._values import BmcHost, Secret


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
        raise ConfigError(
            f"{where}: the password contains a line break or NUL, which the IPMI tools cannot take"
        )
    return Secret(value)


def hosts_from_config(config: Mapping[str, Any]) -> tuple[BmcHost, ...]:
    """The BMCs of an ipmi configuration, with their credentials.

    Raises:
        ConfigError: no hosts, a malformed entry, a missing username or password, a
            password file that cannot be read, or two hosts with one metric name.  The
            message never contains a password.
    """
    entries = config.get("hosts")
    if isinstance(entries, (str, dict)) or not isinstance(entries, (list, tuple)) or not entries:
        raise ConfigError(
            "invalid hosts: expected a non-empty list of host names or "
            "{host, username, password | password_file} objects"
        )
    shared_user = config.get("username")
    hosts: list[BmcHost] = []
    for index, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = {"host": entry}
        if not isinstance(entry, Mapping):
            raise ConfigError(
                f"hosts[{index}]: expected a host name or an object, got {type(entry).__name__}"
            )
        address = entry.get("host")
        if (
            not isinstance(address, str)
            or not address
            or any(c.isspace() or c in ",[]" for c in address)
        ):
            raise ConfigError(
                f"hosts[{index}]: invalid host {address!r}: expected a host "
                "name or address without spaces, commas or brackets"
            )
        where = f"host {address!r}"
        unknown = sorted(set(entry) - set(HOST_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown keys {unknown}; known: {list(HOST_KEYS)}")
        name = entry.get("name")
        if name is None:
            name = metric_segment(address if _is_ip(address) else address.split(".")[0], lower=True)
        else:
            name = check_segment(name, f"name of {where}")
        port = entry.get("port")
        if port is not None and (
            isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536
        ):
            raise ConfigError(f"{where}: invalid port {port!r}: expected 1 to 65535")
        username = entry.get("username", shared_user)
        if not isinstance(username, str):
            raise ConfigError(
                f"{where}: no username: give 'username' for the host or for all hosts"
            )
        if any(c in username for c in "\n\r\0"):
            raise ConfigError(f"{where}: the username contains a line break or NUL")
        # A host's own password or password_file wins over the shared ones.
        source = entry if "password" in entry or "password_file" in entry else config
        if source.get("password") is not None:
            password = _checked_password(source["password"], where)
        elif source.get("password_file") is not None:
            password = _read_password_file(source["password_file"], where)
        else:
            raise ConfigError(
                f"{where}: no password: give 'password' or 'password_file' "
                "for the host or for all hosts"
            )
        hosts.append(BmcHost(address, name, username, password, port))
    seen: dict[tuple[str, str], str] = {}
    for host in hosts:
        for key, what in ((host.target, "host"), (host.name, "metric name")):
            if (what, key) in seen:
                raise ConfigError(
                    f"hosts {seen[(what, key)]!r} and {host.address!r} have the "
                    f"same {what} {key!r}: give one of them another 'name'"
                )
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
            raise ConfigError(
                f"invalid session_timeout {session_timeout:g}: must be below "
                f"timeout ({timeout:g} s), so a dead BMC of a group gives up "
                "before the group's process is killed"
            )
        version = config.get("ipmi_version")
        if version not in ("2.0", "1.5"):
            raise ConfigError(f"invalid ipmi_version {version!r}: expected '2.0' or '1.5'")
        privilege = config.get("privilege_level")
        if not isinstance(privilege, str) or privilege.upper() not in PRIVILEGE_LEVELS:
            raise ConfigError(
                f"invalid privilege_level {privilege!r}: expected one of {list(PRIVILEGE_LEVELS)}"
            )
        subcommand = config.get("ipmitool_command")
        if subcommand not in ("sdr", "sensor"):
            raise ConfigError(
                f"invalid ipmitool_command {subcommand!r}: expected 'sdr' or 'sensor'"
            )
        cache = config.get("sdr_cache_directory")
        if cache is not None and (not isinstance(cache, str) or not cache):
            raise ConfigError(f"invalid sdr_cache_directory {cache!r}: expected a directory")
        sensor_types = check_patterns(config.get("sensor_types"), "sensor_types")
        if any("," in t or not t for t in sensor_types):
            raise ConfigError(
                f"invalid sensor_types {list(sensor_types)!r}: expected type "
                "names such as 'Temperature'"
            )
        return cls(
            hosts=hosts_from_config(config),
            backend=backend,
            command=command,
            prefix=check_prefix(config.get("prefix")),
            timeout=timeout,
            session_timeout=session_timeout,
            workers=check_number(config, "workers", integer=True, positive=True),
            hosts_per_process=check_number(
                config, "hosts_per_process", integer=True, positive=True
            ),
            ipmi_version=version,
            privilege_level=privilege.upper(),
            sensor_types=sensor_types,
            sensors=check_patterns(config.get("sensors"), "sensors"),
            exclude_sensors=check_patterns(config.get("exclude_sensors"), "exclude_sensors"),
            ipmitool_command=subcommand,
            sdr_cache_directory=cache,
        )

    def make_backend(self) -> Any:
        """The backend these settings select.

        Raises:
            ConfigError: the pyghmi backend is chosen but pyghmi is not installed.
        """
        if self.backend == "freeipmi":
            return FreeIpmiBackend(
                self.command or "ipmi-sensors",
                self.session_timeout,
                self.ipmi_version,
                self.privilege_level,
                self.sensor_types,
                self.sdr_cache_directory,
                self.hosts_per_process,
            )
        if self.backend == "ipmitool":
            return IpmitoolBackend(
                self.command or "ipmitool",
                self.session_timeout,
                self.ipmi_version,
                self.privilege_level,
                self.sensor_types,
                self.ipmitool_command,
            )
        return PyghmiBackend(sensor_types=self.sensor_types)

    def make_collector(
        self, *, name: str = "ipmi", clock: Callable[[], float] = time.monotonic
    ) -> IpmiCollector:
        """A collector for these settings."""
        return IpmiCollector(
            self.hosts,
            self.make_backend(),
            prefix=self.prefix,
            timeout=self.timeout,
            workers=self.workers,
            sensor_include=self.sensors,
            sensor_exclude=self.exclude_sensors,
            sensor_types=self.sensor_types,
            clock=clock,
            name=name,
        )

"""Constants and the configuration options of the ``ipmi`` source."""

from __future__ import annotations

from mqsync.plugin import ConfigOption

from .._common import SCHEDULE_OPTIONS

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
    ConfigOption(
        "hosts",
        [],
        "BMCs: host names or addresses, or objects with host and "
        "optionally name, port, username, password, password_file",
        "list",
    ),
    ConfigOption("username", None, "user name for hosts that give none", "str"),
    ConfigOption(
        "password", None, "password for hosts that give none (prefer password_file)", "str"
    ),
    ConfigOption(
        "password_file", None, "file holding the password for hosts that give none", "str"
    ),
    ConfigOption("backend", "freeipmi", "how to read the sensors: " + ", ".join(BACKENDS), "str"),
    ConfigOption("command", None, "path of ipmi-sensors or ipmitool; null: found on PATH", "str"),
    ConfigOption("prefix", "ipmi", "first part of every metric name", "str"),
    ConfigOption(
        "timeout",
        10.0,
        "hard limit in seconds for one poll of a host group; the process is killed after it",
        "float",
    ),
    ConfigOption(
        "session_timeout",
        5.0,
        "IPMI session timeout in seconds handed to the tool (below timeout)",
        "float",
    ),
    ConfigOption("workers", 4, "host groups polled at the same time", "int"),
    ConfigOption(
        "hosts_per_process",
        16,
        "freeipmi: hosts with the same credentials per ipmi-sensors process",
        "int",
    ),
    ConfigOption("ipmi_version", "2.0", "'2.0' (lanplus, LAN_2_0) or '1.5' (lan, LAN)", "str"),
    ConfigOption("privilege_level", "USER", "session privilege: USER, OPERATOR or ADMIN", "str"),
    ConfigOption(
        "sensor_types",
        [],
        "only sensors of these types (e.g. Temperature, Fan, Voltage, Current); [] for all",
        "list",
    ),
    ConfigOption("sensors", ["*"], "only sensors whose name matches one of these patterns", "list"),
    ConfigOption("exclude_sensors", [], "leave out sensors whose name matches", "list"),
    ConfigOption(
        "ipmitool_command",
        "sdr",
        "ipmitool: 'sdr' (sdr elist full) or 'sensor' (sensor list)",
        "str",
    ),
    ConfigOption(
        "sdr_cache_directory",
        None,
        "freeipmi: where to keep SDR caches; null: FreeIPMI's default (~/.freeipmi)",
        "str",
    ),
)

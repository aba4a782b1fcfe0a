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

**Layout.**  ``_options`` (constants and options), ``_values`` (:class:`Secret`, hosts,
readings), ``_parsing`` (the tools' output), ``_process`` (subprocesses and worker threads),
``_backends`` (freeipmi, ipmitool, pyghmi), ``_collector`` (per-host state, backoff,
polling), ``_config`` (hosts, credentials, settings) and ``_source`` (:class:`IpmiSource`).
"""

from __future__ import annotations

from mqsync.plugin import SourceKind, hookimpl

from ._backends import FreeIpmiBackend, IpmitoolBackend, PollOutcome, PyghmiBackend
from ._collector import Declare, Emit, HostState, IpmiCollector
from ._config import IpmiSettings, hosts_from_config
from ._options import (
    BACKENDS,
    BACKOFF_SECONDS,
    GRACE_SECONDS,
    HOST_KEYS,
    OPTIONS,
    PRIVILEGE_LEVELS,
)
from ._parsing import normalize_unit, parse_freeipmi, parse_ipmitool, parse_value, sensor_metrics
from ._process import ProcessRunner
from ._source import IpmiSource
from ._values import BmcHost, Cancelled, Invocation, Reading, RunResult, Secret

__all__ = [
    "BACKENDS",
    "BACKOFF_SECONDS",
    "GRACE_SECONDS",
    "HOST_KEYS",
    "OPTIONS",
    "PRIVILEGE_LEVELS",
    "BmcHost",
    "Cancelled",
    "Declare",
    "Emit",
    "FreeIpmiBackend",
    "HostState",
    "Invocation",
    "IpmiCollector",
    "IpmiSettings",
    "IpmiSource",
    "IpmitoolBackend",
    "PollOutcome",
    "ProcessRunner",
    "PyghmiBackend",
    "Reading",
    "RunResult",
    "Secret",
    "hosts_from_config",
    "mqsync_source_kinds",
    "normalize_unit",
    "parse_freeipmi",
    "parse_ipmitool",
    "parse_value",
    "sensor_metrics",
]


@hookimpl
def mqsync_source_kinds() -> list[SourceKind]:
    """The ``ipmi`` source kind."""
    return [
        SourceKind(
            "ipmi",
            IpmiSource,
            "sensor readings of BMCs over IPMI (FreeIPMI ipmi-sensors, ipmitool or pyghmi)",
            OPTIONS,
        )
    ]

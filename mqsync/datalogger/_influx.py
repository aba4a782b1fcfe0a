"""InfluxDB: the line protocol, a file writer and a server writer (the optional ``influxdb``).

Entries become one line each: measurement, tags (sorted by key, empty values left out), fields,
time in nanoseconds. InfluxDB cannot store a name or tag value that ends in a backslash: such
trailing backslashes are left out, with a warning.

Events become lines of the measurement ``events_measurement`` (default ``events``) at their
start time, tagged with their event tags plus ``measurement=<name>``, with the fields ``text``
(string), ``duration`` (seconds) and ``timeEnd`` (end, integer epoch milliseconds), which is
what a Grafana region annotation query reads.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ._core import DataLogger
from ._files import LineAppender, PathLike
from ._records import DataEntry, Event
from ._writer import DatabaseWriter

_log = logging.getLogger(__name__)

_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n"})
_KEY_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "=": r"\=", "\n": r"\n"})


def _no_trailing_backslash(text: str) -> str:
    # InfluxDB reads a backslash as escaping the separator after it, so a name or tag value
    # cannot end in one: it is left out (a backslash anywhere else is kept as it is).
    if text.endswith("\\"):
        _log.warning("line protocol cannot hold a trailing backslash: %r written as %r",
                     text, text.rstrip("\\"))
        return text.rstrip("\\")
    return text


def _key(text: Any) -> str:
    return _no_trailing_backslash(str(text)).translate(_KEY_ESCAPES)


def _field_value(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _line(measurement: str, tags: Mapping[Any, Any], fields: Mapping[Any, Any], time_ns: int
          ) -> str | None:
    tag_part = "".join(
        f",{_key(k)}={_key(v)}" for k, v in sorted((str(k), str(v)) for k, v in tags.items()) if v
    )
    encoded = []
    for name, value in fields.items():
        text = _field_value(value)
        if text is None:
            _log.warning("line protocol cannot hold %r: field %r of %r left out",
                         value, str(name), str(measurement))
            continue
        encoded.append(f"{_key(name)}={text}")
    if not encoded:
        return None
    name = _no_trailing_backslash(str(measurement)).translate(_MEASUREMENT_ESCAPES)
    return f"{name}{tag_part} {','.join(encoded)} {time_ns}"


def to_line_protocol(
    entries: Iterable[DataEntry], events: Iterable[Event] = (), *,
    events_measurement: str = "events",
) -> list[str]:
    """The InfluxDB line protocol lines for ``entries`` and ``events`` (see the module doc).

    A float field that is NaN or infinite cannot be written and is left out with a warning; a
    line with no field left is left out.
    """
    lines = [_line(e.measurement, e.tags, e.fields, e.time_ns) for e in entries]
    for event in events:
        tags = {**event.tags_map, "measurement": event.measurement}
        fields = {"text": event.text, "duration": event.duration,
                  "timeEnd": event.stop_ns // 1_000_000}
        lines.append(_line(events_measurement, tags, fields, event.start_ns))
    return [line for line in lines if line is not None]


class LineProtocolFileWriter(DatabaseWriter):
    """Appends the data and events as InfluxDB line protocol to a file.

    The file can be loaded later with ``influx -import`` or ``curl --data-binary @file``. Safe
    across threads and processes (see LineAppender).
    """

    def __init__(self, path: PathLike, *, events_measurement: str = "events",
                 fsync: bool = False) -> None:
        self._file = LineAppender(path, fsync=fsync)
        self.events_measurement = events_measurement

    @property
    def path(self) -> Path:
        """The file written to."""
        return self._file.path

    def write_data(self, datalogger: DataLogger) -> None:
        self._file.append(to_line_protocol(
            datalogger.dataset, datalogger.events, events_measurement=self.events_measurement))

    def __repr__(self) -> str:
        return f"LineProtocolFileWriter({str(self.path)!r})"


class InfluxDBWriter(DatabaseWriter):
    """Writes the data and events to an InfluxDB server over HTTP.

    Uses the ``influxdb`` client library (``pip install mqsync[influx]``), which talks the 1.x
    HTTP API that InfluxDB 1.x serves and 2.x keeps for compatibility. Give the connection
    (``host``, ``port``, ``database``, ``username``, ``password``, ``ssl``, ``timeout``) or a
    ready ``client`` (an ``influxdb.InfluxDBClient``, which is then not closed by
    :meth:`close`). ``create_database=True`` creates the database before the first write.
    Lines are sent with nanosecond precision in batches of ``batch_size``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8086,
        database: str = "datalogger",
        *,
        username: str | None = None,
        password: str | None = None,
        ssl: bool = False,
        verify_ssl: bool = True,
        timeout: float = 10.0,
        retention_policy: str | None = None,
        create_database: bool = False,
        events_measurement: str = "events",
        batch_size: int = 5000,
        client: Any = None,
    ) -> None:
        if client is None:
            try:
                from influxdb import InfluxDBClient
            except ImportError as error:
                raise ImportError(
                    "InfluxDBWriter needs the influxdb client library: "
                    "pip install 'mqsync[influx]'"
                ) from error
            client = InfluxDBClient(
                host=host, port=port, username=username or "root", password=password or "root",
                database=database, ssl=ssl, verify_ssl=verify_ssl, timeout=timeout,
            )
            self._owns_client = True
            self._where = f"{'https' if ssl else 'http'}://{host}:{port}/{database}"
        else:
            self._owns_client = False
            self._where = f"{type(client).__name__}/{database}"
        self.client = client
        self.database = database
        self.retention_policy = retention_policy
        self.events_measurement = events_measurement
        self.batch_size = batch_size
        self._create_database = create_database

    def write_data(self, datalogger: DataLogger) -> None:
        lines = to_line_protocol(datalogger.dataset, datalogger.events,
                                 events_measurement=self.events_measurement)
        if not lines:
            return
        if self._create_database:
            self.client.create_database(self.database)  # idempotent on the server
            self._create_database = False
        self.client.write_points(
            lines, time_precision="n", database=self.database,
            retention_policy=self.retention_policy, batch_size=self.batch_size, protocol="line",
        )

    def close(self) -> None:
        if self._owns_client:
            self.client.close()

    def __repr__(self) -> str:  # never the password
        return f"InfluxDBWriter({self._where!r})"

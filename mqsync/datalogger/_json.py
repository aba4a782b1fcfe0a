"""JsonFileWriter: every record as one JSON line, appended to a file."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ._core import DataLogger
from ._files import LineAppender, PathLike
from ._writer import DatabaseWriter

_log = logging.getLogger(__name__)


class JsonFileWriter(DatabaseWriter):
    """Appends the dataset and events to a JSON Lines file (one JSON object per line).

    A data line is the entry as influxdb-datalogger 2.4 shaped it, plus ``kind`` and the exact
    time: ``{"kind": "data", "measurement": ..., "fields": {...}, "tags": {...}, "time":
    "2024-05-01 12:00:00.123456", "time_ns": ...}``. An event line: ``{"kind": "event",
    "measurement": ..., "start": ..., "stop": ..., "tags_map": {...}, "text": ..., "start_ns":
    ..., "stop_ns": ...}`` (start/stop in float seconds since the epoch). Appending is safe
    across threads and processes (see LineAppender); read the file back with :meth:`read`.
    Values that JSON cannot hold are written as ``str(value)``.
    """

    def __init__(self, path: PathLike, *, fsync: bool = False) -> None:
        self._file = LineAppender(path, fsync=fsync)

    @property
    def path(self) -> Path:
        return self._file.path

    def write_data(self, datalogger: DataLogger) -> None:
        lines = [
            _dumps({"kind": "data", **entry, "time_ns": entry.time_ns})
            for entry in datalogger.dataset
        ]
        lines += [
            _dumps({"kind": "event", **event, "text": event.text, "start_ns": event.start_ns,
                    "stop_ns": event.stop_ns})
            for event in datalogger.events
        ]
        self._file.append(lines)

    @staticmethod
    def read(path: PathLike) -> list[dict[str, Any]]:
        """All records of a file written by JsonFileWriter, in order.

        A line that is not valid JSON (left by a crash mid-write) is skipped with a warning.
        """
        records = []
        with open(path, encoding="utf-8") as file:
            for number, line in enumerate(file, 1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except ValueError:
                    _log.warning("%s:%d: skipped a line that is not JSON", path, number)
        return records

    def __repr__(self) -> str:
        return f"JsonFileWriter({str(self.path)!r})"


def _dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, default=str, ensure_ascii=False, allow_nan=True)

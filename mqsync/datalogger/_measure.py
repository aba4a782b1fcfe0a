"""Timing: one duration measurement, and the measure_block context manager around it."""

from __future__ import annotations

import datetime
import logging
import time as _time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._model import Field, Measurement

if TYPE_CHECKING:
    from ._core import DataLogger

# log_start/log_end go here when no logger is given: a stable name users can configure
_messages = logging.getLogger("mqsync.datalogger")


def _say(logger: logging.Logger | None, level: int, message: str | None) -> None:
    if message:
        (logger or _messages).log(level, message)


class _Timer:
    """One duration measurement: checked on creation, recorded on stop."""

    def __init__(self, datalogger: DataLogger, measurement: Measurement, field: Any,
                 tag_map: Mapping[Any, Any] | None, event_tags: Mapping[Any, Any] | None,
                 text: str | None) -> None:
        self.datalogger = datalogger
        self.measurement = datalogger._check_measurement(measurement)
        if not isinstance(field, str):
            raise TypeError(f"field must be a Field, got {field!r}")
        self.field = measurement.field(field)
        self.tags = measurement.resolve_tags(tag_map)
        self.event_tags = datalogger._event_tags(event_tags) if event_tags else None
        self.text = text
        self.start_ns = self.stop_ns = 0
        self._started = 0

    def start(self) -> None:
        self.start_ns = _time.time_ns()
        self._started = _time.perf_counter_ns()

    def stop(self) -> float:
        elapsed_ns = _time.perf_counter_ns() - self._started
        self.stop_ns = self.start_ns + elapsed_ns
        duration = elapsed_ns / 1e9
        fields = self.measurement.resolve_fields({self.field: duration})
        event = None
        if self.event_tags:
            event = self.datalogger._event(
                self.measurement, self.start_ns, self.stop_ns, self.event_tags, self.text
            )
        self.datalogger._record(self.measurement, fields, self.tags, event)
        return duration


class BlockMeasurer:
    """The context manager returned by :meth:`DataLogger.measure_block`.

    ``with datalogger.measure_block(m, f, tm) as block:`` - afterwards ``block.duration`` is
    the time in seconds, ``block.start_time``/``block.end_time`` naive UTC datetimes.
    """

    def __init__(
        self,
        datalogger: DataLogger,
        measurement: Measurement,
        field: Field,
        tags_map: Mapping[Any, Any] | None = None,
        event_tags: Mapping[Any, Any] | None = None,
        logger: logging.Logger | None = None,
        log_lvl: int = logging.INFO,
        log_start: str | None = None,
        log_end: str | None = None,
        *,
        text: str | None = None,
    ) -> None:
        self._timer = _Timer(datalogger, measurement, field, tags_map, event_tags, text)
        self.datalogger = datalogger
        self.measurement = measurement
        self.field = field
        self.logger = logger
        self.log_lvl = log_lvl
        if logger is not None:
            log_start = log_start or f"Starting block-measurement for {measurement}"
            log_end = log_end or f"Stopping block-measurement for {measurement}"
        self.log_start, self.log_end = log_start, log_end
        self.duration: float | None = None

    @property
    def start_time(self) -> datetime.datetime | None:
        return _utc(self._timer.start_ns) if self._timer.start_ns else None

    @property
    def end_time(self) -> datetime.datetime | None:
        return _utc(self._timer.stop_ns) if self._timer.stop_ns else None

    def __enter__(self) -> BlockMeasurer:
        _say(self.logger, self.log_lvl, self.log_start)
        self._timer.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.duration = self._timer.stop()
        _say(self.logger, self.log_lvl, self.log_end)


def _utc(time_ns: int) -> datetime.datetime:
    return datetime.datetime(1970, 1, 1) + datetime.timedelta(microseconds=time_ns // 1000)

"""Timing one run of code: the Timer behind ``measure`` and ``measure_block``."""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Mapping
from typing import Any, Callable

from ._model import Field, Measurement, Tag
from ._records import DataEntry, Event, utc_datetime

# log_start/log_end go here when no logger is given: a stable name users can configure
_messages = logging.getLogger("mqsync.datalogger")

Record = Callable[[DataEntry, Event | None], None]
"""Where a Timer hands its entry and (if it has event tags) its event, as one record."""


def say(logger: logging.Logger | None, level: int, message: str | None) -> None:
    """Log ``message`` at ``level`` to ``logger`` (default: ``mqsync.datalogger``); skip None."""
    if message:
        (logger or _messages).log(level, message)


class Timer:
    """Times one run of code and records its duration, in seconds, as one entry.

    Built from a checked measurement, field and tags, so :meth:`stop` records without
    checking them again. The start comes from the wall clock, the duration from the monotonic
    ``perf_counter_ns``. With ``event_tags`` an Event from start to stop is recorded as well.
    """

    def __init__(
        self,
        measurement: Measurement,
        field: Field,
        tags: Mapping[Tag, Any],
        event_tags: Mapping[Tag, Any] | None,
        text: str | None,
        record: Record,
    ) -> None:
        self.measurement = measurement
        self.field = field
        self.tags = tags
        self.event_tags = event_tags
        self.text = text
        self._record = record
        self.start_ns = self.stop_ns = 0
        self._started = 0

    @property
    def start_time(self) -> datetime.datetime | None:
        """When the timer started, a naive UTC datetime; None before :meth:`start`."""
        return utc_datetime(self.start_ns) if self.start_ns else None

    @property
    def end_time(self) -> datetime.datetime | None:
        """When the timer stopped, a naive UTC datetime; None before :meth:`stop`."""
        return utc_datetime(self.stop_ns) if self.stop_ns else None

    def start(self) -> None:
        """Take the start time."""
        self.start_ns = time.time_ns()
        self._started = time.perf_counter_ns()

    def stop(self) -> float:
        """Record the time since :meth:`start` and return it in seconds."""
        elapsed_ns = time.perf_counter_ns() - self._started
        self.stop_ns = self.start_ns + elapsed_ns
        duration = elapsed_ns / 1e9
        fields = self.measurement.resolve_fields({self.field: duration})
        entry = DataEntry(self.measurement, fields, self.tags)
        self._record(entry, self._event())
        return duration

    def _event(self) -> Event | None:
        if not self.event_tags:
            return None
        return Event.from_ns(
            self.measurement, self.start_ns, self.stop_ns, self.event_tags, self.text
        )

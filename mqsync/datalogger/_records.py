"""What was logged: DataEntry and Event records, grouped per measurement in Dataset and Events.

The records are dicts with the keys influxdb-datalogger 2.4 gives them, so writers written for
it (which ``json.dump`` them or read ``entry["fields"]``) keep working; the same values are also
attributes. Times are kept exactly as integer nanoseconds since the epoch (``time_ns``,
``start_ns``, ``stop_ns``); the 2.4 keys carry them as a UTC string (``time``) and float seconds
(``start``, ``stop``).
"""

from __future__ import annotations

import datetime
import time as _time
from typing import Any, Dict, List, Mapping, Protocol, TypeVar, Union

from ._model import Measurement

_EPOCH = datetime.datetime(1970, 1, 1)



class HasPosixNs(Protocol):
    """A point in time with integer nanoseconds since the epoch: an mqsync ``Timestamp``."""

    @property
    def posix_ns(self) -> int: ...


TimeLike = Union[datetime.datetime, int, HasPosixNs, None]
"""A time given to ``log`` or ``log_event``; None means now."""


def to_ns(value: TimeLike) -> int:
    """Nanoseconds since the epoch for a time given to ``log``.

    Accepts None (now), an ``int`` of nanoseconds, a ``datetime`` (naive means UTC, as in
    influxdb-datalogger 2.4) or anything with an integer ``posix_ns`` (an mqsync ``Timestamp``).
    """
    if value is None:
        return _time.time_ns()
    if isinstance(value, datetime.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        delta = value - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
    posix_ns = getattr(value, "posix_ns", value)
    if isinstance(posix_ns, int) and not isinstance(posix_ns, bool):
        return posix_ns
    raise TypeError(
        f"invalid time {value!r} ({type(value).__name__}): expected a datetime, integer "
        f"nanoseconds since the epoch, or a Timestamp"
    )


def utc_datetime(time_ns: int) -> datetime.datetime:
    """Nanoseconds since the epoch as a naive UTC datetime (to the microsecond)."""
    return _EPOCH + datetime.timedelta(microseconds=time_ns // 1000)


def utc_string(time_ns: int) -> str:
    """The time as influxdb-datalogger 2.4 wrote it: ``str()`` of a naive UTC datetime."""
    return str(utc_datetime(time_ns))


def _plain(mapping: Mapping[Any, Any]) -> dict[str, Any]:
    return {str(k): v for k, v in mapping.items()}


class DataEntry(Dict[str, Any]):
    """One logged entry: keys ``measurement``, ``fields``, ``tags``, ``time`` (UTC string).

    ``fields`` and ``tags`` are plain dicts keyed by the measurement's Field and Tag objects
    (which are strings). ``time_ns`` is the exact time in nanoseconds since the epoch.
    """

    __slots__ = ("time_ns",)

    def __init__(
        self,
        measurement: Measurement,
        fields_map: Mapping[Any, Any],
        tags_map: Mapping[Any, Any] | None = None,
        time: TimeLike = None,
    ) -> None:
        time_ns = to_ns(time)
        super().__init__(
            measurement=measurement,
            fields=dict(fields_map or {}),
            tags=dict(tags_map or {}),
            time=utc_string(time_ns),
        )
        self.time_ns = time_ns

    measurement = property(lambda self: self["measurement"], doc="The Measurement.")
    fields = property(lambda self: self["fields"], doc="Field -> value.")
    tags = property(lambda self: self["tags"], doc="Tag -> value.")
    time = property(lambda self: self["time"], doc="The time as a naive UTC string.")

    def __repr__(self) -> str:
        return (f"DataEntry({str(self.measurement)!r}, fields={_plain(self.fields)!r}, "
                f"tags={_plain(self.tags)!r}, time={self.time!r})")


class Event(Dict[str, Any]):
    """A span of time something ran, for event markers (Grafana annotations and the like).

    Keys ``measurement``, ``start``, ``stop`` (float seconds since the epoch) and ``tags_map``
    (a plain dict of the event tags); attributes also ``end`` (= ``stop``), ``tag_map`` and
    ``tags`` (= ``tags_map``), ``text`` (defaults to the measurement name), ``duration``
    (seconds) and the exact ``start_ns``/``stop_ns``.
    """

    __slots__ = ("start_ns", "stop_ns", "text")

    def __init__(
        self,
        measurement: Measurement,
        start: float,
        stop: float,
        tags_map: Mapping[Any, Any] | None = None,
        text: str | None = None,
    ) -> None:
        super().__init__(
            measurement=measurement, start=start, stop=stop, tags_map=dict(tags_map or {})
        )
        self.start_ns = round(start * 1e9)
        self.stop_ns = round(stop * 1e9)
        self.text = str(measurement) if text is None else text

    @classmethod
    def from_ns(
        cls,
        measurement: Measurement,
        start_ns: int,
        stop_ns: int,
        tags_map: Mapping[Any, Any] | None = None,
        text: str | None = None,
    ) -> Event:
        """An event from exact nanosecond times."""
        event = cls(measurement, start_ns / 1e9, stop_ns / 1e9, tags_map, text)
        event.start_ns, event.stop_ns = start_ns, stop_ns
        return event

    measurement = property(lambda self: self["measurement"], doc="The Measurement.")
    start = property(lambda self: self["start"], doc="Start, float seconds since the epoch.")
    stop = property(lambda self: self["stop"], doc="Stop, float seconds since the epoch.")
    end = stop
    tags_map = property(lambda self: self["tags_map"], doc="Event tags, a plain dict.")
    tag_map = tags_map
    tags = tags_map

    @property
    def duration(self) -> float:
        """Seconds from start to stop."""
        return (self.stop_ns - self.start_ns) / 1e9

    def __repr__(self) -> str:
        return (f"Event({str(self.measurement)!r}, start={self.start!r}, stop={self.stop!r}, "
                f"tags_map={_plain(self.tags_map)!r}, text={self.text!r})")


_Record = TypeVar("_Record", bound=Dict[str, Any])


class _Grouped(Dict[Measurement, List[_Record]]):
    """Records grouped by measurement, in the order the measurements first appeared."""

    def append(self, record: _Record) -> None:
        """Add ``record`` after the others of its measurement."""
        self.setdefault(record["measurement"], []).append(record)

    def get_entries_for_measurement(self, measurement: Measurement) -> List[_Record] | None:
        """The records of ``measurement``; None if it has none."""
        return self.get(measurement)

    def as_list(self) -> List[_Record]:
        """All records, grouped by measurement."""
        return [record for records in self.values() for record in records]

    def count(self) -> int:
        """How many records there are (``len`` counts measurements)."""
        return sum(len(records) for records in self.values())


class Dataset(_Grouped[DataEntry]):
    """Measurement -> the DataEntry records logged for it."""

    def log(
        self,
        measurement: Measurement,
        fields_map: Mapping[Any, Any],
        tags_map: Mapping[Any, Any] | None = None,
        time: TimeLike = None,
    ) -> None:
        """Append an entry as given, unchecked (``DataLogger.log`` is the checked way in)."""
        self.append(DataEntry(measurement, fields_map, tags_map, time=time))


class Events(_Grouped[Event]):
    """Measurement -> the Event records logged for it."""

    def log(
        self,
        measurement: Measurement,
        start: float,
        stop: float,
        tags_map: Mapping[Any, Any] | None = None,
    ) -> None:
        """Append an event as given (float seconds since the epoch)."""
        self.append(Event(measurement, start, stop, tags_map))

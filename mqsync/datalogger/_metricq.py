"""MetricQWriter: every measurement/field/tag combination becomes a MetricQ metric.

Metric names (each part sanitised: characters outside ``[A-Za-z0-9_-]`` become ``_``, an empty
part becomes ``_``)::

    data:   <prefix>.<measurement>.<tag value>...<field>
            tag values in the order the tags are declared on the Measurement; an optional
            tag without a value gives ``_``
    events: <event_prefix>.<measurement>.<event tag value>...   (event tags sorted by name;
            event_prefix defaults to <prefix>.events)

A name longer than 255 bytes is cut and ends in ``-`` plus 8 hex digits of its SHA-1. Two
different series that map to one name raise MetricNameCollision; pass ``metric_name`` to map
them apart. Values: numbers as float, bools as 1.0/0.0; other values (strings) cannot be a
MetricQ value and are skipped (counted in ``skipped_values``).

Events become a 0/1 state metric: 1.0 from the start of an event, 0.0 from its end; events of
one metric that overlap are merged. MetricQ needs strictly increasing times per metric, so
points not later than the last one sent for their metric are dropped (counted in
``dropped_points``), and an event interval that begins before it is clipped. That also makes a
retried batch after a partial failure send nothing twice.

Metadata: ``description`` (the Field's ``desc``, else the Measurement's, else "<field> of
<measurement> (tags)"), ``unit`` (the Field's), ``scope`` (``point`` for data, ``next`` for
event state), and ``measurement``, ``field``, ``tags`` naming the origin.
"""

from __future__ import annotations

import hashlib
import logging
import numbers
import re
import threading
from collections.abc import Mapping
from functools import partial
from typing import Any, Callable, Dict, Tuple

from ..errors import MetricNameCollision
from ._core import DataLogger
from ._model import Measurement
from ._writer import DatabaseWriter

_log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\Z")
_NOT_IN_SEGMENT = re.compile(r"[^A-Za-z0-9_-]")
_MAX_NAME_BYTES = 255

MetricNamer = Callable[[Measurement, Any, Mapping[Any, Any]], str]
TagItems = Tuple[Tuple[str, str], ...]
# the series a metric carries: ("data", measurement, field, tags) or ("event", measurement, tags)
Origin = Tuple[Any, ...]
Metadata = Dict[str, Any]


def _segment(value: Any) -> str:
    return _NOT_IN_SEGMENT.sub("_", str(value)) or "_"


def _fit(name: str) -> str:
    if len(name.encode("utf-8")) <= _MAX_NAME_BYTES:
        return name
    digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:8]
    return f"{name[:_MAX_NAME_BYTES - 9]}-{digest}"


def _check_name(what: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or len(name.encode()) > 255:
        raise ValueError(
            f"invalid metric {what} {name!r}: expected dot-separated parts of A-Z, a-z, 0-9, "
            f"'_' and '-', at most 255 bytes"
        )
    return name


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, numbers.Real):
        return float(value)
    return None


class MetricQWriter(DatabaseWriter):
    """Sends the data and events through a running mqsync Source (see the module doc).

    ``source`` needs ``declare_metrics(dict)``, ``send(metric, Timestamp, float)`` and
    ``flush(timeout)``; the writer neither starts nor stops it. Metrics are declared once,
    when first seen. After sending a batch the writer flushes with ``flush_timeout``.
    ``metric_name(measurement, field, tags) -> str`` replaces the naming of data metrics.
    """

    def __init__(
        self,
        source: Any,
        prefix: str,
        *,
        events: bool = True,
        event_prefix: str | None = None,
        flush_timeout: float | None = 30.0,
        metric_name: MetricNamer | None = None,
    ) -> None:
        self.source = source
        self.prefix = _check_name("prefix", prefix)
        self.event_prefix = _check_name("prefix", event_prefix or f"{prefix}.events")
        self.events = events
        self.flush_timeout = flush_timeout
        self._metric_name = metric_name
        self.dropped_points = 0
        self.skipped_values = 0
        self._lock = threading.Lock()
        self._origins: dict[str, Origin] = {}  # declared metric -> the series it carries
        self._last_ns: dict[str, int] = {}  # metric -> time of the last point sent

    def metric_for(self, measurement: Measurement, field: Any, tags: Mapping[Any, Any]) -> str:
        """The metric name of ``field`` of ``measurement`` with these tag values."""
        if self._metric_name is not None:
            return _check_name("name", self._metric_name(measurement, field, tags))
        by_name = {str(k): v for k, v in tags.items()}
        order = [str(t) for t in measurement.tags] if isinstance(measurement, Measurement) \
            else sorted(by_name)
        values = "".join(f".{_segment(by_name.get(t, ''))}" for t in order)
        return _fit(f"{self.prefix}.{_segment(measurement)}{values}.{_segment(field)}")

    def event_metric_for(self, measurement: Any, event_tags: Mapping[Any, Any]) -> str:
        """The name of the 0/1 state metric of events of ``measurement`` with these tags."""
        values = "".join(f".{_segment(v)}" for _, v in sorted(
            (str(k), v) for k, v in event_tags.items()))
        return _fit(f"{self.event_prefix}.{_segment(measurement)}{values}")

    def write_data(self, datalogger: DataLogger) -> None:
        from mqsync.timeseries import Timestamp  # imported late: optional for everything else

        with self._lock:
            new: dict[str, tuple[Origin, Metadata]] = {}
            points: dict[str, list[tuple[int, float]]] = {}
            skipped = 0
            for entry in datalogger.dataset:
                for field, value in entry.fields.items():
                    number = _number(value)
                    if number is None:
                        skipped += 1
                        continue
                    name = self.metric_for(entry.measurement, field, entry.tags)
                    origin: Origin = ("data", str(entry.measurement), str(field),
                                      _tag_items(entry.tags))
                    self._claim(name, origin, new, partial(_data_meta, entry, field))
                    points.setdefault(name, []).append((entry.time_ns, number))
            intervals: dict[str, list[tuple[int, int]]] = {}
            for event in datalogger.events if self.events else ():
                name = self.event_metric_for(event.measurement, event.tags_map)
                origin = ("event", str(event.measurement), _tag_items(event.tags_map))
                self._claim(name, origin, new, partial(_event_meta, event))
                intervals.setdefault(name, []).append((event.start_ns, event.stop_ns))
            if skipped:
                self.skipped_values += skipped
                _log.warning("%d non-numeric values cannot be MetricQ values: skipped", skipped)

            if new:
                self.source.declare_metrics({name: meta for name, (_, meta) in new.items()})
                self._origins.update({name: origin for name, (origin, _) in new.items()})
            for name, spans in intervals.items():
                points.setdefault(name, []).extend(self._state_points(name, spans))
            dropped = 0
            for name, series in points.items():
                series.sort(key=lambda point: point[0])
                for time_ns, value in series:
                    if time_ns <= self._last_ns.get(name, -1):
                        dropped += 1
                        continue
                    self.source.send(name, Timestamp(time_ns), value)
                    self._last_ns[name] = time_ns
            if dropped:
                self.dropped_points += dropped
                _log.warning("%d points not later than their metric's last point: dropped",
                             dropped)
            self.source.flush(timeout=self.flush_timeout)

    def _claim(self, name: str, origin: Origin, new: dict[str, tuple[Origin, Metadata]],
               meta: Callable[[], Metadata]) -> None:
        known = self._origins.get(name) or (new[name][0] if name in new else None)
        if known is None:
            new[name] = (origin, meta())
        elif known != origin:
            raise MetricNameCollision(
                f"metric {name!r} would carry two series, {_describe(known)} and "
                f"{_describe(origin)}; pass metric_name= to MetricQWriter to map them apart"
            )

    def _state_points(self, name: str, series: list[tuple[int, int]]) -> list[tuple[int, float]]:
        merged: list[list[int]] = []
        for start, stop in sorted(series):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], stop)
            else:
                merged.append([start, stop])
        result: list[tuple[int, float]] = []
        last = self._last_ns.get(name, -1)
        for start, stop in merged:
            if stop <= last:
                self.dropped_points += 2
                continue
            start = max(start, last + 1)
            stop = max(stop, start + 1)
            result += [(start, 1.0), (stop, 0.0)]
            last = stop
        return result

    def __repr__(self) -> str:
        return f"MetricQWriter(prefix={self.prefix!r})"


def _tag_items(tags: Mapping[Any, Any]) -> TagItems:
    return tuple(sorted((str(k), str(v)) for k, v in tags.items()))


def _describe(origin: Origin) -> str:
    if origin[0] == "event":
        return f"events of {origin[1]!r} with tags {dict(origin[2])}"
    return f"field {origin[2]!r} of {origin[1]!r} with tags {dict(origin[3])}"


def _tags_text(tags: Mapping[Any, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in _tag_items(tags))


def _data_meta(entry: Any, field: Any) -> dict[str, Any]:
    measurement = entry.measurement
    tags = _tags_text(entry.tags)
    meta: dict[str, Any] = {
        "description": getattr(field, "desc", None) or getattr(measurement, "desc", None)
        or f"{field} of {measurement}" + (f" ({tags})" if tags else ""),
        "scope": "point",
        "measurement": str(measurement),
        "field": str(field),
        "tags": {k: v for k, v in _tag_items(entry.tags)},
    }
    unit = getattr(field, "unit", None)
    if unit is not None:
        meta["unit"] = unit
    return meta


def _event_meta(event: Any) -> dict[str, Any]:
    tags = _tags_text(event.tags_map)
    return {
        "description": f"1 while {event.measurement} runs" + (f" ({tags})" if tags else "")
        + ", else 0 (data logger events)",
        "unit": "",
        "scope": "next",
        "measurement": str(event.measurement),
        "tags": {k: v for k, v in _tag_items(event.tags_map)},
    }

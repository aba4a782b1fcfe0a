"""Parsing the output of FreeIPMI's ``ipmi-sensors`` and of ``ipmitool`` into readings,
and naming the metrics of one BMC's readings."""

from __future__ import annotations

import math
import re
from typing import Iterable

from .._common import metric_segment
from ._values import Reading

_NOT_AVAILABLE = {"n/a", "na", "no reading", "disabled", "not readable", "unavailable", ""}
_UNITS = {
    "C": "°C",
    "degrees C": "°C",
    "F": "°F",
    "degrees F": "°F",
    "K": "K",
    "V": "V",
    "Volts": "V",
    "A": "A",
    "Amps": "A",
    "W": "W",
    "Watts": "W",
    "J": "J",
    "Joules": "J",
    "RPM": "RPM",
    "%": "%",
    "percent": "%",
    "Hz": "Hz",
    "CFM": "CFM",
    "unspecified": "",
    "N/A": "",
}
_HOST_PREFIX = re.compile(r"^(?P<host>[^\s,|]+): (?P<rest>.*)$")
_FREEIPMI_CSV = re.compile(r"^(?P<id>[^,]*),(?P<middle>.*),(?P<event>'.*'|N/A|[^,']*)$")
_NUMBER_AND_UNIT = re.compile(
    r"^(?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*"
    r"(?P<unit>.*)$"
)


def normalize_unit(unit: str) -> str:
    """A tool's unit as MetricQ metadata: ``C``/``degrees C`` -> ``°C``, ``Volts`` -> ``V``."""
    unit = unit.strip()
    return _UNITS.get(unit, unit)


def parse_value(text: str) -> float:
    """A reading as a float; ``N/A``, ``na``, ``no reading``... and anything else -> NaN."""
    text = text.strip()
    if text.lower() in _NOT_AVAILABLE:
        return math.nan
    try:
        return float(text)
    except ValueError:
        return math.nan


def parse_freeipmi(text: str, default_host: str = "") -> dict[str, list[Reading]]:
    """Readings by host from ``ipmi-sensors`` output.

    Takes the comma-separated format (``--comma-separated-output``) and the default
    ``|``-separated one, with or without a header line and ``host: `` prefixes (lines
    without a prefix belong to ``default_host``).  The columns are ``ID, Name, Type,
    Reading, Units, Event``.  Discrete sensors (reading and units ``N/A``) are left out; a
    threshold sensor reading ``N/A`` gives NaN.  Lines that are not sensor lines (errors,
    headers) are skipped.
    """
    readings: dict[str, list[Reading]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        host, rest = default_host, line
        match = _HOST_PREFIX.match(line)
        if match:
            host, rest = match["host"], match["rest"]
        fields = _freeipmi_fields(rest)
        if fields is None:
            continue
        record_id, name, sensor_type, reading, units = fields
        if reading.upper() == "N/A" and units.upper() == "N/A":
            continue
        readings.setdefault(host, []).append(
            Reading(name, sensor_type, parse_value(reading), normalize_unit(units), record_id)
        )
    return readings


def _freeipmi_fields(line: str) -> tuple[str, str, str, str, str] | None:
    if " | " in line or line.count("|") >= 5:
        parts = [part.strip() for part in line.split("|")]
        if len(parts) < 6:
            return None
        record_id, name, sensor_type, reading, units = parts[:5]
    else:
        match = _FREEIPMI_CSV.match(line.strip())
        if not match:
            return None
        middle = match["middle"].rsplit(",", 3)
        if len(middle) != 4:
            return None
        record_id = match["id"].strip()
        name, sensor_type, reading, units = (part.strip() for part in middle)
    if not record_id.isdigit():
        return None  # the header line, or an error message
    return record_id, name, sensor_type, reading, units


def parse_ipmitool(text: str) -> list[Reading]:
    """Readings from ``ipmitool sdr list``, ``sdr elist`` or ``sensor list`` output.

    The format is told by the number of ``|`` columns: 3 (sdr list: name, reading with
    unit, status), 5 (sdr elist: name, sensor number, status, entity, reading with unit) or
    10 and more (sensor: name, value, unit, status, thresholds).  Discrete sensors (a hex
    reading such as ``0x01``, or unit ``discrete``) are left out; ``na``, ``no reading``,
    ``disabled`` give NaN.
    """
    readings: list[Reading] = []
    for line in text.splitlines():
        parts = [part.strip() for part in line.split("|")]
        if len(parts) >= 10:
            name, value, unit = parts[0], parts[1], parts[2]
            if unit.lower() == "discrete" or value.lower().startswith("0x"):
                continue
            readings.append(Reading(name, "", parse_value(value), normalize_unit(unit)))
        elif len(parts) in (3, 5):
            name = parts[0]
            record_id = parts[1].lower() if len(parts) == 5 else ""
            reading = parts[-1] if len(parts) == 5 else parts[1]
            if not name or reading.lower().startswith("0x"):
                continue
            match = _NUMBER_AND_UNIT.match(reading)
            if match:
                number, unit = float(match["number"]), normalize_unit(match["unit"])
            else:
                number, unit = math.nan, ""
            readings.append(Reading(name, "", number, unit, record_id))
    return readings


def sensor_metrics(readings: Iterable[Reading]) -> dict[str, Reading]:
    """Metric name segments for the readings of one BMC (duplicates get the record id)."""
    readings = list(readings)
    segments = [
        metric_segment(reading.sensor, lower=True, fallback="sensor") for reading in readings
    ]
    counts: dict[str, int] = {}
    for segment in segments:
        counts[segment] = counts.get(segment, 0) + 1
    result: dict[str, Reading] = {}
    for segment, reading in zip(segments, readings):
        if counts[segment] > 1:
            suffix = metric_segment(reading.record_id, lower=True, fallback="")
            segment = f"{segment}_{suffix}" if suffix else segment
        unique, number = segment, 2
        while unique in result:
            unique, number = f"{segment}_{number}", number + 1
        result[unique] = reading
    return result

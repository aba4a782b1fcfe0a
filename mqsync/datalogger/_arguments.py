"""How the DataLogger's methods read their arguments, checked in one place.

Each function takes arguments as a caller gave them and returns them checked and normalised,
or raises TypeError naming what was wrong and what is expected. Values that do not fit a
measurement's declaration are the model's business (InvalidMeasurement), not this module's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ._model import Field, Measurement, Tag

TagValues = Mapping[Any, Any]
"""A TagMap, or any mapping of Tag (or tag name) to value."""


def require_measurement(measurement: object) -> Measurement:
    """Return ``measurement`` if it is a Measurement; raise TypeError if not."""
    if not isinstance(measurement, Measurement):
        raise TypeError(
            f"measurement must be a Measurement, got {measurement!r} "
            f"({type(measurement).__name__})"
        )
    return measurement


def require_field(measurement: Measurement, field: object) -> Field:
    """Return the Field of ``measurement`` that ``field`` names.

    Raises TypeError if ``field`` is not a Field (or its name), InvalidMeasurement if the
    measurement declares no such field.
    """
    if not isinstance(field, str):
        raise TypeError(f"field must be a Field, got {field!r} ({type(field).__name__})")
    return measurement.field(field)


def either_tag_map(tag_map: TagValues | None, tags_map: TagValues | None) -> TagValues | None:
    """The tag map given as ``tag_map`` or as ``tags_map`` (the influxdb-datalogger 2.4 name).

    Raises TypeError if both are given.
    """
    if tags_map is None:
        return tag_map
    if tag_map is not None:
        raise TypeError("got both tag_map and tags_map (the 2.4 name); give one")
    return tags_map


def event_tag_values(event_tags: TagValues | None) -> dict[Tag, Any]:
    """Event tags as a plain dict of Tag -> value, None values left out.

    Event tags need not be declared on the measurement: any tag name is taken. Raises
    TypeError if ``event_tags`` is not a mapping.
    """
    if event_tags is None:
        return {}
    if not isinstance(event_tags, Mapping):
        raise TypeError(f"event tags must be a TagMap, got {event_tags!r}")
    return {
        key if isinstance(key, Tag) else Tag(key): value
        for key, value in event_tags.items()
        if value is not None
    }


def call_arguments(
    args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The ``args`` and ``kwargs`` that ``measure`` passes to the measured function.

    Raises TypeError unless ``args`` is a tuple or list and ``kwargs`` a mapping (or None).
    """
    if args is not None and not isinstance(args, (tuple, list)):
        raise TypeError(f"args must be a tuple, got {args!r}")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise TypeError(f"kwargs must be a dict, got {kwargs!r}")
    return tuple(args or ()), dict(kwargs or {})

"""How the DataLogger's methods read their arguments, checked in one place.

Each function takes arguments as a caller gave them and returns them checked and normalised,
or raises TypeError naming what was wrong and what is expected. Values that do not fit a
measurement's declaration are the model's business (InvalidMeasurement), not this module's.

``DataLogger.log`` has two call forms; :func:`resolve_log_call` is the one place that tells
them apart (see there).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import attrs

from ._model import Field, Measurement, Tag
from ._records import TimeLike

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


# -- DataLogger.log ------------------------------------------------------------------------------

ONE_VALUE_FORM = "log(measurement, field, value, tag_map=None, time=None)"
FIELD_MAP_FORM = "log(measurement, fields_map, tags_map=None, time=None)"

_MISSING: Any = object()


@attrs.frozen
class LogCall:
    """The arguments of one ``DataLogger.log`` call after the measurement, in either form."""

    fields: Mapping[Any, Any]
    """Field (or field name) -> value: one item in the one-value form."""
    tag_map: TagValues | None
    time: TimeLike


def resolve_log_call(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> LogCall:
    """Read what ``DataLogger.log`` got after the measurement, in whichever form it was called.

    The second argument alone decides the form:

    - a mapping (a FieldMap), positional or as ``fields_map=``: the influxdb-datalogger 2.4
      form ``log(measurement, fields_map, tags_map=None, time=None)``;
    - anything else: ``log(measurement, field, value, tag_map=None, time=None)``.

    Each form binds its arguments like an ordinary Python signature; in both, the tags may
    also be given under the other form's name (``tag_map=`` or ``tags_map=``, not both).
    Raises TypeError, naming the form, for arguments that fit neither form: a missing field
    or value, a field that is not a Field, too many arguments, an unknown keyword, an
    argument given twice.
    """
    form, text = (
        (_field_map_form, FIELD_MAP_FORM)
        if "fields_map" in kwargs or (args and isinstance(args[0], Mapping))
        else (_one_value_form, ONE_VALUE_FORM)
    )
    try:
        _SIGNATURES[form].bind(*args, **kwargs)
    except TypeError as error:
        raise TypeError(f"{text}: {error}") from None
    return form(*args, **kwargs)


def _one_value_form(
    field: Any = _MISSING,
    value: Any = _MISSING,
    tag_map: TagValues | None = None,
    time: TimeLike = None,
    *,
    tags_map: TagValues | None = None,
) -> LogCall:
    """``log(measurement, field, value, tag_map=None, time=None)``: one field's value."""
    if not isinstance(field, str):
        raise _not_a_field(field)
    if value is _MISSING:
        raise TypeError(f"log() needs a value for field {str(field)!r}: {ONE_VALUE_FORM}")
    return LogCall({field: value}, either_tag_map(tag_map, tags_map), time)


def _not_a_field(field: object) -> TypeError:
    """The error for a one-value call whose second argument is no Field."""
    got = "nothing" if field is _MISSING else f"field={field!r}"
    if isinstance(field, Mapping):
        got += " (give a FieldMap as the second argument or as fields_map=)"
    return TypeError(f"log() needs a Field and a value, or a FieldMap; got {got}")


def _field_map_form(
    fields_map: Mapping[Any, Any],
    tags_map: TagValues | None = None,
    time: TimeLike = None,
    *,
    tag_map: TagValues | None = None,
) -> LogCall:
    """``log(measurement, fields_map, tags_map=None, time=None)``: the 2.4 form."""
    if not isinstance(fields_map, Mapping):
        raise TypeError(
            f"fields_map must be a FieldMap, got {fields_map!r} ({type(fields_map).__name__})"
        )
    return LogCall(fields_map, either_tag_map(tag_map, tags_map), time)


_SIGNATURES: dict[Callable[..., LogCall], inspect.Signature] = {
    form: inspect.signature(form) for form in (_one_value_form, _field_map_form)
}

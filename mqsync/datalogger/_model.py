"""What is measured: Field, Tag, Measurement, and the TagMap/FieldMap that carry values.

``Field``, ``Tag`` and ``Measurement`` are frozen attrs classes that are also ``str`` (their
name), exactly as the classes of influxdb-datalogger 2.4 are strings: they compare equal to and
hash like their name, work as dict keys, and serialise to JSON as the name. attrs adds what a
plain string cannot carry (description, unit, defaults) and makes it read-only.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Callable, ClassVar, Tuple, TypeVar, Union

import attrs

from ..errors import InvalidMeasurement


def _short_repr(obj: Any) -> str:
    """``Field('duration', unit='s')``: the name and the attributes that differ from the default."""
    parts = [repr(obj.name)]
    for attribute in attrs.fields(type(obj))[1:]:
        value = getattr(obj, attribute.name)
        if attribute.default is attrs.NOTHING or value != attribute.default:
            if isinstance(value, tuple) and all(isinstance(v, str) for v in value):
                value = [str(v) for v in value]  # a measurement's fields and tags by name
            parts.append(f"{attribute.name}={value!r}")
    return f"{type(obj).__name__}({', '.join(parts)})"


_PLAIN_NUMBERS: frozenset[type] = frozenset({int, float})


def _check_name(kind: str, name: object) -> None:
    if not isinstance(name, str) or not name.strip():
        raise InvalidMeasurement(f"invalid {kind} name {name!r}: expected a non-empty string")


@attrs.frozen(init=False, eq=False, slots=False, repr=False)
class Field(str):
    """A field of a measurement: one value per entry, e.g. ``Field("duration", unit="s")``.

    ``func`` (called with ``*args_func`` at every log) or ``default`` supply a value when the
    caller gives none. ``numeric=True`` makes ``log`` refuse values that are not numbers (bools
    are not numbers here). ``unit`` and ``desc`` become MetricQ metadata.
    """

    name: str
    args_func: Tuple[Any, ...] = ()
    func: Callable[..., Any] | None = None
    desc: str | None = None
    default: Any = None
    unit: str | None = None
    numeric: bool = False

    def __new__(cls, name: str, *args: Any, **kwargs: Any) -> Field:
        _check_name("field", name)
        return super().__new__(cls, name)

    def __init__(
        self,
        name: str,
        *args_func: Any,
        func: Callable[..., Any] | None = None,
        desc: str | None = None,
        default: Any = None,
        unit: str | None = None,
        numeric: bool = False,
    ) -> None:
        self.__attrs_init__(name, tuple(args_func), func, desc, default, unit, bool(numeric))

    __repr__ = _short_repr

    @property
    def field_name(self) -> str:
        """The name (influxdb-datalogger 2.4 spelling)."""
        return self.name

    def check_value(self, measurement: str, value: Any) -> Any:
        """Return ``value`` as it will be logged; raise InvalidMeasurement if it does not fit."""
        if value is None:
            raise InvalidMeasurement(f"field {self.name!r} of measurement {measurement!r} got None")
        if not self.numeric:
            return value
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise InvalidMeasurement(
                f"field {self.name!r} of measurement {measurement!r} needs a number (int or "
                f"float), got {value!r} ({type(value).__name__})"
            )
        if type(value) in _PLAIN_NUMBERS:
            return value
        # numpy scalars, Fractions and the like become plain Python numbers
        return int(value) if isinstance(value, numbers.Integral) else float(value)


@attrs.frozen(init=False, eq=False, slots=False, repr=False)
class Tag(str):
    """A tag of a measurement: a label that tells entries apart, e.g. ``Tag("hostname")``.

    ``func`` (called with ``*args_func`` at every log) or ``default`` supply a value when the
    caller gives none; giving both is an error.
    """

    name: str
    args_func: Tuple[Any, ...] = ()
    func: Callable[..., Any] | None = None
    desc: str | None = None
    default: Any = None

    def __new__(cls, name: str, *args: Any, **kwargs: Any) -> Tag:
        _check_name("tag", name)
        return super().__new__(cls, name)

    def __init__(
        self,
        name: str,
        *args_func: Any,
        func: Callable[..., Any] | None = None,
        desc: str | None = None,
        default: Any = None,
    ) -> None:
        if func is not None and default is not None:
            raise InvalidMeasurement(f"tag {name!r}: give either func or default, not both")
        self.__attrs_init__(name, tuple(args_func), func, desc, default)

    __repr__ = _short_repr

    @property
    def tag_name(self) -> str:
        """The name (influxdb-datalogger 2.4 spelling)."""
        return self.name


_Key = Union[Field, Tag]
_Map = TypeVar("_Map", bound="_ValueMap")


@attrs.frozen(init=False, eq=False, repr=False)
class _ValueMap(Mapping[Any, Any]):
    """An immutable mapping from Field or Tag to a value, in insertion order.

    Plain strings are accepted as keys and turned into the map's key type. Looking up works by
    the object or by its name. Equal to any mapping with the same items.
    """

    key_type: ClassVar[type] = str
    _data: dict[Any, Any]  # private and never handed out, so the map stays immutable

    def __init__(self, items: Union[Mapping[Any, Any], Iterable[Tuple[Any, Any]], None] = None):
        data: dict[Any, Any] = {}
        pairs = items.items() if isinstance(items, Mapping) else (items or ())
        for key, value in pairs:
            data[self._key(key, value)] = value
        self.__attrs_init__(data)

    @classmethod
    def _key(cls, key: Any, value: Any) -> Any:
        kind = cls.key_type.__name__
        if isinstance(value, (Field, Tag)):
            raise InvalidMeasurement(
                f"{cls.__name__}: the value for {key!r} is the {type(value).__name__} "
                f"{value.name!r}; expected pairs of ({kind}, value)"
            )
        if isinstance(key, cls.key_type):
            return key
        if isinstance(key, (Field, Tag)) or not isinstance(key, str):
            raise InvalidMeasurement(
                f"{cls.__name__}: key {key!r} ({type(key).__name__}) is not a {kind}"
            )
        return cls.key_type(key)

    @classmethod
    def build(cls: type[_Map], *items: Any) -> _Map:
        """Build the map from alternating keys and values: ``build(tag1, v1, tag2, v2)``."""
        if len(items) % 2:
            raise InvalidMeasurement(
                f"{cls.__name__}.build takes ({cls.key_type.__name__}, value) pairs; "
                f"got an odd number of items ({len(items)})"
            )
        return cls(zip(items[0::2], items[1::2]))

    def __getitem__(self, key: Any) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return dict(self._data) == dict(other.items())

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({ {str(k): v for k, v in self._data.items()} !r})"

    def __or__(self: _Map, other: Mapping[Any, Any]) -> _Map:
        """A new map with the items of both; ``other`` wins on equal keys."""
        if not isinstance(other, Mapping):
            return NotImplemented
        return type(self)([*self._data.items(), *other.items()])

    def copy(self: _Map) -> _Map:
        """Return the map itself: it cannot change."""
        return self

    def add(self, key: Any, value: Any) -> None:
        """Refuse: the map is immutable (influxdb-datalogger 2.4 changed it in place)."""
        raise TypeError(
            f"{type(self).__name__} is immutable; build a new one instead: "
            f"mapping | {type(self).__name__}.build(key, value)"
        )


class TagMap(_ValueMap):
    """Tag values of one entry: ``TagMap.build(host_tag, "node01", run_tag, 7)``."""

    key_type = Tag


class FieldMap(_ValueMap):
    """Field values of one entry: ``FieldMap.build(duration, 0.25, passed, True)``."""

    key_type = Field


@attrs.frozen(init=False, eq=False, slots=False, repr=False)
class Measurement(str):
    """A measurement (an InfluxDB measurement; a group of MetricQ metrics) with its fields and tags.

    ``Measurement("time-taken", duration, hostname, optional_tags=[run])``: entries must give a
    value for every tag except the optional ones (or the tag's default/func gives it), and may
    only use the fields and tags declared here. The order of tags is kept: it fixes the MetricQ
    metric names.
    """

    name: str
    fields: Tuple[Field, ...]
    tags: Tuple[Tag, ...]
    optional_tags: Tuple[Tag, ...] = ()
    desc: str | None = None

    def __new__(cls, name: str, *args: Any, **kwargs: Any) -> Measurement:
        _check_name("measurement", name)
        return super().__new__(cls, name)

    def __init__(
        self,
        name: str,
        *fields_and_tags: _Key,
        optional_tags: Iterable[Tag] | None = None,
        desc: str | None = None,
    ) -> None:
        fields: dict[str, Field] = {}
        tags: dict[str, Tag] = {}
        for item in fields_and_tags:
            if isinstance(item, Field):
                fields.setdefault(item.name, item)
            elif isinstance(item, Tag):
                tags.setdefault(item.name, item)
            else:
                raise TypeError(
                    f"measurement {name!r}: {item!r} ({type(item).__name__}) is neither a "
                    f"Field nor a Tag"
                )
        optional: dict[str, Tag] = {}
        for tag in optional_tags or ():
            if not isinstance(tag, Tag):
                raise TypeError(
                    f"measurement {name!r}: optional tag {tag!r} ({type(tag).__name__}) "
                    f"is not a Tag"
                )
            tags.setdefault(tag.name, tag)
            optional.setdefault(tag.name, tag)
        both = sorted(set(fields) & set(tags))
        if both:
            raise InvalidMeasurement(
                f"measurement {name!r}: {', '.join(map(repr, both))} declared as field and tag"
            )
        self.__attrs_init__(
            name, tuple(fields.values()), tuple(tags.values()), tuple(optional.values()), desc
        )

    __repr__ = _short_repr

    @property
    def key_name(self) -> str:
        """The name (influxdb-datalogger 2.4 spelling)."""
        return self.name

    def field(self, name: str) -> Field:
        """Return the declared field called ``name``; raise InvalidMeasurement if there is none."""
        for field in self.fields:
            if field == name:
                return field
        declared = ", ".join(self.fields) or "none"
        raise InvalidMeasurement(
            f"field {str(name)!r} is not declared on measurement {self.name!r} "
            f"(declared fields: {declared})"
        )

    def tag(self, name: str) -> Tag:
        """Return the declared tag called ``name``; raise InvalidMeasurement if there is none."""
        for tag in self.tags:
            if tag == name:
                return tag
        declared = ", ".join(self.tags) or "none"
        raise InvalidMeasurement(
            f"tag {str(name)!r} is not declared on measurement {self.name!r} "
            f"(declared tags: {declared})"
        )

    def get_defaulted_tags(self) -> TagMap:
        """The tags that have a default, with it."""
        return TagMap((t, t.default) for t in self.tags if t.default is not None)

    def get_predefined_tags(self) -> TagMap:
        """The tags that have a func, with its value now."""
        return TagMap((t, t.func(*t.args_func)) for t in self.tags if t.func is not None)

    def get_default_fields(self) -> FieldMap:
        """The fields that have a default, with it."""
        return FieldMap((f, f.default) for f in self.fields if f.default is not None)

    def get_predefined_fields(self) -> FieldMap:
        """The fields that have a func, with its value now."""
        return FieldMap((f, f.func(*f.args_func)) for f in self.fields if f.func is not None)

    def resolve_tags(self, tags: Mapping[Any, Any] | None = None) -> dict[Tag, Any]:
        """Check the tags of one entry and complete them with defaults and funcs.

        Returns a dict keyed by this measurement's own Tag objects; a value of None counts as
        not given. Raises InvalidMeasurement for an undeclared tag or a missing tag value.
        """
        if tags is not None and not isinstance(tags, Mapping):
            raise TypeError(f"tag map for {self.name!r} must be a TagMap, got {tags!r}")
        given = {self.tag(k): v for k, v in (tags or {}).items() if v is not None}
        merged: dict[Tag, Any] = {**self.get_defaulted_tags(), **self.get_predefined_tags()}
        merged.update(given)
        resolved = {self.tag(k): v for k, v in merged.items() if v is not None}
        for tag in self.tags:
            if tag not in resolved and tag not in self.optional_tags:
                raise InvalidMeasurement(
                    f"tag {tag.name!r} of measurement {self.name!r} has no value: give it in the "
                    f"tag map, give the Tag a default or func, or declare it in optional_tags"
                )
        return resolved

    def resolve_fields(self, fields: Mapping[Any, Any]) -> dict[Field, Any]:
        """Check the field values of one entry and complete them with defaults and funcs.

        Returns a dict keyed by this measurement's own Field objects. Raises InvalidMeasurement
        for an undeclared field, no field at all, or a value that its Field refuses.
        """
        given = {self.field(k): v for k, v in fields.items()}
        merged: dict[Field, Any] = {**self.get_default_fields(), **self.get_predefined_fields()}
        merged.update(given)
        if not merged:
            raise InvalidMeasurement(f"no field value given for measurement {self.name!r}")
        return {f: f.check_value(self.name, v) for f, v in merged.items()}

"""Time values of MetricQ: :class:`Timestamp`, :class:`Timedelta`, :class:`TimeValue`,
:class:`TimeAggregate`.

Both time types hold an exact ``int`` number of nanoseconds and are frozen, so they can be
hashed, compared and shared between threads.  Every conversion from text or from a number is
exact: ``Timedelta.from_string("1.5ms").ns == 1_500_000``; a float is taken at its exact binary
value and rounded to the nearest nanosecond (half to even).  Input that would need
sub-nanosecond precision in a *string* is rejected with :class:`ValueError`.

Every duration argument of mqsync's API is read by :meth:`Timedelta.coerce`: a
``Timedelta``, a ``datetime.timedelta``, a string with a unit (``"10s"``) or a number of
**seconds**.  Time arguments are not durations: an ``int`` time is POSIX nanoseconds.
"""

from __future__ import annotations

import datetime
import logging
import math
import numbers
import re
import time
from decimal import Decimal
from fractions import Fraction
from typing import Iterator, TypeGuard, Union, overload

import attrs

__all__ = ["DurationLike", "TimeAggregate", "TimeValue", "Timedelta", "Timestamp"]

logger = logging.getLogger(__name__)

_NS_PER_US = 1_000
_NS_PER_MS = 1_000_000
_NS_PER_S = 1_000_000_000
_NS_PER_MIN = 60 * _NS_PER_S
_NS_PER_H = 60 * _NS_PER_MIN
_NS_PER_D = 24 * _NS_PER_H

# Accepted duration units (case-sensitive), see PROTOCOL.md "Time values".
_UNITS = {
    "": _NS_PER_S,
    "s": _NS_PER_S,
    "second": _NS_PER_S,
    "seconds": _NS_PER_S,
    "ms": _NS_PER_MS,
    "millisecond": _NS_PER_MS,
    "milliseconds": _NS_PER_MS,
    "us": _NS_PER_US,
    "\u03bcs": _NS_PER_US,  # GREEK SMALL LETTER MU, as written in the protocol
    "microsecond": _NS_PER_US,
    "microseconds": _NS_PER_US,
    "ns": 1,
    "nanosecond": 1,
    "nanoseconds": 1,
    "min": _NS_PER_MIN,
    "minute": _NS_PER_MIN,
    "minutes": _NS_PER_MIN,
    "h": _NS_PER_H,
    "hour": _NS_PER_H,
    "hours": _NS_PER_H,
    "d": _NS_PER_D,
    "day": _NS_PER_D,
    "days": _NS_PER_D,
}
# Largest unit first: precise_string picks the first one that divides exactly.
_PRECISE_UNITS = (
    ("d", _NS_PER_D),
    ("h", _NS_PER_H),
    ("min", _NS_PER_MIN),
    ("s", _NS_PER_S),
    ("ms", _NS_PER_MS),
    ("us", _NS_PER_US),
    ("ns", 1),
)
_UNIT_HINT = "unit must be one of ns, us, ms, s, min, h, d"

_DURATION_RE = re.compile(
    r"\s*(?P<sign>[+-]?)(?P<integer>[0-9]*)(?:[.,](?P<fraction>[0-9]*))?\s*(?P<unit>.*?)\s*",
    re.DOTALL,
)
_ISO8601_RE = re.compile(
    r"""
    \s*
    (?P<year>[0-9]{4})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})
    [Tt\ ]
    (?P<hour>[0-9]{2}):(?P<minute>[0-9]{2})
    (?::(?P<second>[0-9]{2})(?:[.,](?P<fraction>[0-9]+))?)?
    (?P<offset>
        [Zz]
        | (?P<offset_sign>[+-])(?P<offset_hour>[0-9]{2})
          (?::?(?P<offset_minute>[0-9]{2})
            (?::(?P<offset_second>[0-9]{2})(?:\.(?P<offset_fraction>[0-9]{1,6}))?)?
          )?
    )?
    \s*
    """,
    re.VERBOSE,
)
_ISO8601_HINT = "expected e.g. '2021-01-02T03:04:05.123456789Z' or '2021-01-02T04:04:05+01:00'"
_EPOCH_NAIVE = datetime.datetime(1970, 1, 1)
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)

_Number = Union[int, float, Decimal, Fraction]
# datetime.timedelta under a name that Timestamp's ``datetime`` property does not hide
_StdTimedelta = datetime.timedelta

#: What :meth:`Timedelta.coerce` accepts for a duration argument: a Timedelta, a
#: datetime.timedelta, a string with a unit (``"10s"``) or a number of seconds.
DurationLike = Union["Timedelta", datetime.timedelta, str, int, float, Decimal, Fraction]


def _shorten(text: str, limit: int = 40) -> str:
    """``repr`` of *text*, cut short so an error message stays readable."""
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _describe(value: object) -> str:
    """Type name and ``repr`` of *value*, for error messages."""
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type(value).__name__} {text}"


def _given(value: object) -> str:
    """A duration argument as the caller wrote it, for error messages."""
    if isinstance(value, str):
        return _shorten(value)
    if isinstance(value, (Timedelta, datetime.timedelta)):
        return repr(value)
    return f"{value!r} s"


def _is_number(value: object) -> TypeGuard[_Number]:
    return isinstance(value, (numbers.Real, Decimal)) and not isinstance(value, bool)


def _exact(value: _Number, what: str) -> Fraction:
    """The exact rational value of a real number; raises TypeError/ValueError otherwise."""
    if not _is_number(value):
        raise TypeError(f"{what} must be a number, got {_describe(value)}")
    if isinstance(value, numbers.Rational):
        return Fraction(value.numerator, value.denominator)
    if not isinstance(value, (float, Decimal)):
        value = float(value)  # e.g. numpy.float32: a Real that Fraction does not take directly
    finite = value.is_finite() if isinstance(value, Decimal) else math.isfinite(value)
    if not finite:
        raise ValueError(f"{what} must be finite, got {value!r}")
    return Fraction(value)


def _scaled_ns(value: _Number, ns_per_unit: int, what: str) -> int:
    """*value* units in nanoseconds, rounded to the nearest ns (half to even)."""
    if type(value) is int:
        return value * ns_per_unit
    return round(_exact(value, what) * ns_per_unit)


def _ns_int(value: object) -> int:
    """An integer count of nanoseconds as an ``int``; anything else raises TypeError."""
    if type(value) is int:
        return value
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)  # int subclasses, numpy integers
    raise TypeError(
        f"nanoseconds must be an int, got {_describe(value)}; "
        "use from_s()/from_posix_seconds() for seconds"
    )


def _timedelta_ns(delta: datetime.timedelta) -> int:
    """Exact nanoseconds of a :class:`datetime.timedelta`."""
    return ((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds) * 1_000


def _other_ns(other: object) -> int | None:
    """Nanoseconds of a Timedelta or datetime.timedelta, ``None`` for any other type."""
    if isinstance(other, Timedelta):
        return other.ns
    if isinstance(other, datetime.timedelta):
        return _timedelta_ns(other)
    return None


class Timedelta:
    """A duration, possibly negative, as an exact integer number of nanoseconds.

    ``Timedelta(ns)`` takes an ``int``; use :meth:`from_s`, :meth:`from_string` or
    :meth:`coerce` for other inputs.  Compares, adds and subtracts with
    :class:`datetime.timedelta` as well.  Immutable, hashable and picklable.

    Raises:
        TypeError: if *ns* is not an integer (``bool``, ``float`` and ``None`` included).
    """

    # Immutable as fractions.Fraction is: the value lives in a private slot behind a
    # read-only property.  A plain slotted class, so that construction from an int costs
    # no more than any slotted object (an attrs frozen class costs twice as much).
    __slots__ = ("_ns", "__weakref__")
    __match_args__ = ("ns",)

    def __init__(self, ns: int) -> None:
        if type(ns) is not int:
            ns = _ns_int(ns)
        self._ns = ns

    @property
    def ns(self) -> int:
        """Number of nanoseconds in this duration."""
        return self._ns

    def __reduce__(self) -> tuple[type[Timedelta], tuple[int]]:
        return type(self), (self._ns,)

    def __setstate__(self, state: dict[str, int]) -> None:
        # pickles made while Timedelta was an attrs class: {"ns": ...}
        self.__init__(state["ns"])  # type: ignore[misc]

    # -- constructors ---------------------------------------------------------------------

    @classmethod
    def from_ns(cls, nanoseconds: _Number) -> Timedelta:
        """A duration of *nanoseconds*; non-integers are rounded to the nearest ns."""
        return cls(_scaled_ns(nanoseconds, 1, "nanoseconds"))

    @classmethod
    def from_us(cls, microseconds: _Number) -> Timedelta:
        """A duration of *microseconds*, rounded to the nearest ns."""
        return cls(_scaled_ns(microseconds, _NS_PER_US, "microseconds"))

    @classmethod
    def from_ms(cls, milliseconds: _Number) -> Timedelta:
        """A duration of *milliseconds*, rounded to the nearest ns."""
        return cls(_scaled_ns(milliseconds, _NS_PER_MS, "milliseconds"))

    @classmethod
    def from_s(cls, seconds: _Number) -> Timedelta:
        """A duration of *seconds*, rounded to the nearest ns.

        Raises:
            TypeError: if *seconds* is not a number.
            ValueError: if *seconds* is NaN or infinite.
        """
        return cls(_scaled_ns(seconds, _NS_PER_S, "seconds"))

    @classmethod
    def from_timedelta(cls, delta: datetime.timedelta) -> Timedelta:
        """The exact duration of a :class:`datetime.timedelta`.

        Raises:
            TypeError: if *delta* is not a :class:`datetime.timedelta`.
        """
        if not isinstance(delta, datetime.timedelta):
            raise TypeError(f"expected a datetime.timedelta, got {_describe(delta)}")
        return cls(_timedelta_ns(delta))

    @classmethod
    def from_string(cls, duration: str) -> Timedelta:
        """Parse a duration string such as ``"10s"``, ``"1.5ms"``, ``"-2 min"`` or ``"60"``.

        The grammar is the one of PROTOCOL.md: an optionally signed decimal number (``.`` or
        ``,`` as the decimal mark), optional whitespace, and a case-sensitive unit: none or
        ``s``/``second(s)``, ``ms``/``millisecond(s)``, ``us``/``μs``/``microsecond(s)``,
        ``ns``/``nanosecond(s)``, ``min``/``minute(s)``, ``h``/``hour(s)``, ``d``/``day(s)``.
        The value is computed exactly.

        Raises:
            TypeError: if *duration* is not a ``str``.
            ValueError: if it does not follow the grammar, or if it is not a whole number of
                nanoseconds (``"1.5ns"``).
        """
        return cls._parse(duration, "duration")

    @classmethod
    def _parse(cls, text: str, name: str) -> Timedelta:
        if not isinstance(text, str):
            raise TypeError(f"{name} string must be a str, got {_describe(text)}")
        match = _DURATION_RE.fullmatch(text)
        integer = match.group("integer") if match else ""
        fraction = (match.group("fraction") if match else None) or ""
        if not match or not (integer or fraction) or re.match(r"[0-9.,+-]", match["unit"]):
            raise ValueError(
                f"invalid {name} {_shorten(text)}: "
                "expected a number and a unit, like '10s', '1.5ms' or '60'"
            )
        ns_per_unit = _UNITS.get(match["unit"])
        if ns_per_unit is None:
            raise ValueError(f"invalid {name} {_shorten(text)}: {_UNIT_HINT}")
        scale = 10 ** len(fraction)
        ns, remainder = divmod(int(integer + fraction or "0") * ns_per_unit, scale)
        if remainder:
            raise ValueError(f"invalid {name} {_shorten(text)}: not a whole number of nanoseconds")
        return cls(-ns if match["sign"] == "-" else ns)

    @classmethod
    def coerce(
        cls,
        value: DurationLike,
        *,
        name: str = "duration",
        positive: bool = False,
        negative: bool = True,
    ) -> Timedelta:
        """Turn a duration argument into a :class:`Timedelta`: the one rule of mqsync's API.

        Every public duration argument (a ``period``, ``expires``, ``interval_max``, a
        plugin's ``period``, a command's duration option, :meth:`Timestamp.from_now` ...)
        goes through this function and accepts:

        - a :class:`Timedelta` (returned as is) or a :class:`datetime.timedelta`;
        - a string with a unit, as :meth:`from_string` reads it: ``"10s"``, ``"100ms"``,
          ``"1.5 min"``, ``"2h"`` (a string without a unit is seconds: ``"60"``);
        - a number (``int``, ``float``, ``Decimal``, ``Fraction``) of **seconds**: ``5`` is
          five seconds, ``0.25`` a quarter of a second (rounded to the nearest ns).

        An ``int`` is a number of nanoseconds only where the name says so (``Timedelta(ns)``,
        ``Timedelta.from_ns``, parameters named ``..._ns``).  A *time* is not a duration:
        ``send(time=...)``, ``start_time`` and the other time arguments take an ``int`` as
        POSIX **nanoseconds**, as the wire format and the official client do, and
        :meth:`Timestamp.from_posix_seconds` for seconds.

        Args:
            value: the argument as given.
            name: the argument's name, for error messages (``"period"``).
            positive: refuse zero and negative durations (also a positive number of
                seconds that rounds to 0 ns).
            negative: ``False`` refuses negative durations, zero stays allowed.

        Raises:
            TypeError: *value* is none of the above (``bool`` and ``None`` included).
            ValueError: a malformed string (see :meth:`from_string`), a NaN or infinite
                number, or a duration of a sign the caller refuses.
        """
        if isinstance(value, Timedelta):
            duration = value
        elif isinstance(value, datetime.timedelta):
            duration = cls(_timedelta_ns(value))
        elif isinstance(value, str):
            duration = cls._parse(value, name)
        elif _is_number(value):
            try:
                duration = cls(_scaled_ns(value, _NS_PER_S, name))
            except ValueError:  # _exact refuses NaN and infinities
                raise ValueError(
                    f"{name} must be a finite number of seconds, got {value!r}"
                ) from None
        else:
            raise TypeError(
                f"{name} must be a Timedelta, a datetime.timedelta, a string with a unit such "
                f"as '10s', or a number of seconds; got {_describe(value)}"
            )
        ns = duration.ns
        if positive and ns <= 0:
            if ns == 0 and _is_number(value) and value > 0:
                raise ValueError(
                    f"{name} must be at least 1 ns, got {value!r} s (rounds to 0 ns)"
                )
            raise ValueError(f"{name} must be positive, got {_given(value)}")
        if not negative and ns < 0:
            raise ValueError(f"{name} must not be negative, got {_given(value)}")
        return duration

    # -- views ----------------------------------------------------------------------------

    @property
    def us(self) -> float:
        """This duration in microseconds."""
        return self.ns / _NS_PER_US

    @property
    def ms(self) -> float:
        """This duration in milliseconds."""
        return self.ns / _NS_PER_MS

    @property
    def s(self) -> float:
        """This duration in seconds."""
        return self.ns / _NS_PER_S

    @property
    def timedelta(self) -> datetime.timedelta:
        """This duration as a :class:`datetime.timedelta`, truncated towards zero to µs.

        Raises:
            OverflowError: beyond ±999999999 days.
        """
        microseconds = abs(self.ns) // _NS_PER_US
        return datetime.timedelta(microseconds=-microseconds if self.ns < 0 else microseconds)

    @property
    def precise_string(self) -> str:
        """The exact duration in the largest unit that holds it as an integer.

        For example ``"1500ns"``, ``"100ms"``, ``"1min"``, ``"-2s"``, ``"0s"``; the result
        parses back to an equal value with :meth:`from_string`.
        """
        if self.ns == 0:
            return "0s"
        unit, ns_per_unit = next(u for u in _PRECISE_UNITS if self.ns % u[1] == 0)
        sign = "-" if self.ns < 0 else ""
        return f"{sign}{abs(self.ns) // ns_per_unit}{unit}"

    def __str__(self) -> str:
        return self.precise_string

    def __repr__(self) -> str:
        return f"Timedelta(ns={self.ns})"

    def __bool__(self) -> bool:
        return self.ns != 0

    # -- comparison -----------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        other_ns = _other_ns(other)
        return NotImplemented if other_ns is None else self.ns == other_ns

    def __ne__(self, other: object) -> bool:
        other_ns = _other_ns(other)
        return NotImplemented if other_ns is None else self.ns != other_ns

    def __lt__(self, other: Timedelta | datetime.timedelta) -> bool:
        other_ns = _other_ns(other)
        return NotImplemented if other_ns is None else self.ns < other_ns

    def __le__(self, other: Timedelta | datetime.timedelta) -> bool:
        other_ns = _other_ns(other)
        return NotImplemented if other_ns is None else self.ns <= other_ns

    def __gt__(self, other: Timedelta | datetime.timedelta) -> bool:
        other_ns = _other_ns(other)
        return NotImplemented if other_ns is None else self.ns > other_ns

    def __ge__(self, other: Timedelta | datetime.timedelta) -> bool:
        other_ns = _other_ns(other)
        return NotImplemented if other_ns is None else self.ns >= other_ns

    def __hash__(self) -> int:
        # Equal values must hash equal, and a Timedelta equals a datetime.timedelta of the
        # same length, so whole microseconds hash like the datetime.timedelta.
        if self.ns % _NS_PER_US == 0:
            try:
                return hash(datetime.timedelta(microseconds=self.ns // _NS_PER_US))
            except OverflowError:
                pass
        return hash(self.ns)

    # -- arithmetic -----------------------------------------------------------------------

    @overload
    def __add__(self, other: Timestamp) -> Timestamp: ...

    @overload
    def __add__(self, other: Timedelta | datetime.timedelta) -> Timedelta: ...

    def __add__(self, other: Timedelta | datetime.timedelta | Timestamp) -> Timedelta | Timestamp:
        if isinstance(other, Timestamp):
            return Timestamp(other.posix_ns + self.ns)
        other_ns = _other_ns(other)
        return NotImplemented if other_ns is None else Timedelta(self.ns + other_ns)

    __radd__ = __add__

    def __sub__(self, other: Timedelta | datetime.timedelta) -> Timedelta:
        other_ns = _other_ns(other)
        return NotImplemented if other_ns is None else Timedelta(self.ns - other_ns)

    def __rsub__(self, other: datetime.timedelta) -> Timedelta:
        other_ns = _other_ns(other)
        return NotImplemented if other_ns is None else Timedelta(other_ns - self.ns)

    def __neg__(self) -> Timedelta:
        return Timedelta(-self.ns)

    def __pos__(self) -> Timedelta:
        return self

    def __abs__(self) -> Timedelta:
        return Timedelta(abs(self.ns))

    def __mul__(self, factor: _Number) -> Timedelta:
        """This duration scaled by a number, rounded to the nearest ns (half to even)."""
        if not _is_number(factor):
            return NotImplemented
        return Timedelta(_scaled_ns(factor, self.ns, "factor"))

    __rmul__ = __mul__

    @overload
    def __truediv__(self, other: Timedelta | datetime.timedelta) -> float: ...

    @overload
    def __truediv__(self, other: _Number) -> Timedelta: ...

    def __truediv__(self, other: Timedelta | datetime.timedelta | _Number) -> float | Timedelta:
        """Ratio of two durations (``float``), or this duration divided by a number.

        A number divisor gives a :class:`Timedelta` rounded to the nearest ns (half to even).
        """
        other_ns = _other_ns(other)
        if other_ns is not None:
            return self.ns / other_ns
        if not _is_number(other):
            return NotImplemented
        return Timedelta(round(self.ns / _exact(other, "divisor")))

    @overload
    def __floordiv__(self, other: Timedelta | datetime.timedelta) -> int: ...

    @overload
    def __floordiv__(self, other: int) -> Timedelta: ...

    def __floordiv__(self, other: Timedelta | datetime.timedelta | int) -> int | Timedelta:
        """How many times *other* fits (``int``), or this duration floor-divided by an int.

        Raises:
            TypeError: for a float divisor; use ``/`` to scale by a non-integer.
        """
        other_ns = _other_ns(other)
        if other_ns is not None:
            return self.ns // other_ns
        if isinstance(other, numbers.Integral) and not isinstance(other, bool):
            return Timedelta(self.ns // int(other))
        if _is_number(other):
            raise TypeError(
                f"Timedelta // needs an int or a duration, got {_describe(other)}; "
                "use / to divide by a non-integer"
            )
        return NotImplemented

    def __mod__(self, other: Timedelta | datetime.timedelta) -> Timedelta:
        """The remainder of dividing by another duration (sign follows *other*)."""
        other_ns = _other_ns(other)
        return NotImplemented if other_ns is None else Timedelta(self.ns % other_ns)

    def __divmod__(self, other: Timedelta | datetime.timedelta) -> tuple[int, Timedelta]:
        other_ns = _other_ns(other)
        if other_ns is None:
            return NotImplemented
        quotient, remainder = divmod(self.ns, other_ns)
        return quotient, Timedelta(remainder)


class Timestamp:
    """A point in time: an exact integer number of nanoseconds since the UNIX epoch (UTC).

    Immutable, hashable and picklable; ``Timestamp(int)`` costs what any slotted object
    does, so building one per data point is cheap.

    Raises:
        TypeError: if *posix_ns* is not an integer (``bool``, ``float`` and ``None`` included).
    """

    # Immutable as Timedelta is (a private slot behind a read-only property).
    __slots__ = ("_ns", "__weakref__")
    __match_args__ = ("posix_ns",)

    def __init__(self, posix_ns: int) -> None:
        if type(posix_ns) is not int:
            posix_ns = _ns_int(posix_ns)
        self._ns = posix_ns

    @property
    def posix_ns(self) -> int:
        """Number of nanoseconds since the UNIX epoch."""
        return self._ns

    def __reduce__(self) -> tuple[type[Timestamp], tuple[int]]:
        return type(self), (self._ns,)

    def __setstate__(self, state: dict[str, int]) -> None:
        # pickles made while Timestamp was an attrs class: {"posix_ns": ...}
        self.__init__(state["posix_ns"])  # type: ignore[misc]

    # -- constructors ---------------------------------------------------------------------

    @classmethod
    def now(cls) -> Timestamp:
        """The current wall-clock time, at the full resolution of :func:`time.time_ns`."""
        # Looked up on the module at each call, so freezegun's patched clock is honoured.
        return cls(time.time_ns())

    @classmethod
    def from_posix_seconds(cls, seconds: _Number) -> Timestamp:
        """The time *seconds* after the epoch, rounded to the nearest ns.

        Raises:
            TypeError: if *seconds* is not a number.
            ValueError: if *seconds* is NaN or infinite.
        """
        return cls(_scaled_ns(seconds, _NS_PER_S, "POSIX seconds"))

    @classmethod
    def from_datetime(cls, dt: datetime.datetime) -> Timestamp:
        """The exact time of an *aware* :class:`datetime.datetime`.

        Raises:
            TypeError: if *dt* is not a :class:`datetime.datetime`.
            ValueError: if *dt* is naive (no ``tzinfo``); use :meth:`from_local_datetime`
                if it is meant as local time.
        """
        if not isinstance(dt, datetime.datetime):
            raise TypeError(f"expected a datetime.datetime, got {_describe(dt)}")
        if dt.utcoffset() is None:
            raise ValueError(
                f"naive datetime {dt.isoformat()!r} has no timezone; pass an aware datetime "
                "(e.g. tzinfo=datetime.timezone.utc) or use Timestamp.from_local_datetime()"
            )
        return cls(_timedelta_ns(dt - _EPOCH))

    @classmethod
    def from_local_datetime(cls, dt: datetime.datetime) -> Timestamp:
        """The time of a *naive* :class:`datetime.datetime` read as the system's local time.

        Raises:
            TypeError: if *dt* is not a :class:`datetime.datetime`.
            ValueError: if *dt* is aware; use :meth:`from_datetime` for that.
        """
        if not isinstance(dt, datetime.datetime):
            raise TypeError(f"expected a datetime.datetime, got {_describe(dt)}")
        if dt.utcoffset() is not None:
            raise ValueError(
                f"datetime {dt.isoformat()!r} is aware; use Timestamp.from_datetime() for it"
            )
        return cls.from_datetime(dt.astimezone())

    @classmethod
    def from_iso8601(cls, text: str) -> Timestamp:
        """Parse an ISO-8601 / RFC 3339 date-time with a UTC offset, exact to the ns.

        Accepts ``"2021-01-02T03:04:05.123456789Z"``, offsets like ``+01:00``, ``+0100`` or
        ``+01``, ``.`` or ``,`` before up to 9 fractional digits (more only if they are
        zeros), and everything :meth:`datetime.datetime.isoformat` produces for an aware
        datetime.

        Raises:
            TypeError: if *text* is not a ``str``.
            ValueError: if it is malformed, has no UTC offset, names an impossible date or
                time, or needs sub-nanosecond precision.
        """
        if not isinstance(text, str):
            raise TypeError(f"ISO-8601 timestamp must be a str, got {_describe(text)}")
        match = _ISO8601_RE.fullmatch(text)
        if not match:
            raise ValueError(f"invalid ISO-8601 timestamp {_shorten(text)}: {_ISO8601_HINT}")
        if match["offset"] is None:
            raise ValueError(
                f"invalid ISO-8601 timestamp {_shorten(text)}: "
                "a UTC offset ('Z' or e.g. '+01:00') is required"
            )
        fraction = match["fraction"] or ""
        if len(fraction) > 9 and fraction[9:].strip("0"):
            raise ValueError(
                f"invalid ISO-8601 timestamp {_shorten(text)}: "
                "more than 9 fractional digits (sub-nanosecond precision)"
            )
        try:
            local = datetime.datetime(
                int(match["year"]),
                int(match["month"]),
                int(match["day"]),
                int(match["hour"]),
                int(match["minute"]),
                int(match["second"] or 0),
            )
        except ValueError as exc:
            raise ValueError(f"invalid ISO-8601 timestamp {_shorten(text)}: {exc}") from None
        offset_ns = 0
        if match["offset_sign"]:
            hours = int(match["offset_hour"])
            minutes = int(match["offset_minute"] or 0)
            seconds = int(match["offset_second"] or 0)
            if hours > 23 or minutes > 59 or seconds > 59:
                raise ValueError(
                    f"invalid ISO-8601 timestamp {_shorten(text)}: UTC offset out of range"
                )
            offset_ns = (hours * 3600 + minutes * 60 + seconds) * _NS_PER_S
            offset_ns += int((match["offset_fraction"] or "").ljust(9, "0"))
            if match["offset_sign"] == "-":
                offset_ns = -offset_ns
        fraction_ns = int(fraction[:9].ljust(9, "0"))
        return cls(_timedelta_ns(local - _EPOCH_NAIVE) + fraction_ns - offset_ns)

    @classmethod
    def from_now(cls, delta: DurationLike) -> Timestamp:
        """The time *delta* from now (anything :meth:`Timedelta.coerce` accepts)."""
        return cls.now() + Timedelta.coerce(delta)

    @classmethod
    def ago(cls, delta: DurationLike) -> Timestamp:
        """The time *delta* before now (anything :meth:`Timedelta.coerce` accepts)."""
        return cls.now() - Timedelta.coerce(delta)

    # -- views ----------------------------------------------------------------------------

    @property
    def posix(self) -> float:
        """Seconds since the epoch."""
        return self.posix_ns / _NS_PER_S

    @property
    def posix_ms(self) -> float:
        """Milliseconds since the epoch."""
        return self.posix_ns / _NS_PER_MS

    @property
    def posix_us(self) -> float:
        """Microseconds since the epoch."""
        return self.posix_ns / _NS_PER_US

    @property
    def datetime(self) -> datetime.datetime:
        """This time as an aware UTC :class:`datetime.datetime`, truncated (floored) to µs.

        Raises:
            OverflowError: outside the years 1 to 9999.
        """
        return _EPOCH + datetime.timedelta(microseconds=self.posix_ns // _NS_PER_US)

    def isoformat(self) -> str:
        """ISO-8601 in UTC with as many fractional digits (0, 3, 6 or 9) as needed.

        For example ``"2021-01-02T03:04:05Z"``, ``"2021-01-02T03:04:05.120Z"``,
        ``"2021-01-02T03:04:05.123456789Z"``; :meth:`from_iso8601` parses it back exactly.

        Raises:
            OverflowError: outside the years 1 to 9999.
        """
        seconds, ns = divmod(self.posix_ns, _NS_PER_S)
        dt = _EPOCH + datetime.timedelta(seconds=seconds)
        if ns == 0:
            fraction = ""
        elif ns % _NS_PER_MS == 0:
            fraction = f".{ns // _NS_PER_MS:03d}"
        elif ns % _NS_PER_US == 0:
            fraction = f".{ns // _NS_PER_US:06d}"
        else:
            fraction = f".{ns:09d}"
        return (
            f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}"
            f"T{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}{fraction}Z"
        )

    @property
    def iso8601(self) -> str:
        """The same as :meth:`isoformat`."""
        return self.isoformat()

    def __str__(self) -> str:
        try:
            return self.isoformat()
        except OverflowError:
            return repr(self)

    def __repr__(self) -> str:
        return f"Timestamp(posix_ns={self.posix_ns})"

    # -- comparison -----------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Timestamp):
            return NotImplemented
        return self.posix_ns == other.posix_ns

    def __ne__(self, other: object) -> bool:
        if not isinstance(other, Timestamp):
            return NotImplemented
        return self.posix_ns != other.posix_ns

    def __lt__(self, other: Timestamp) -> bool:
        if not isinstance(other, Timestamp):
            return NotImplemented
        return self.posix_ns < other.posix_ns

    def __le__(self, other: Timestamp) -> bool:
        if not isinstance(other, Timestamp):
            return NotImplemented
        return self.posix_ns <= other.posix_ns

    def __gt__(self, other: Timestamp) -> bool:
        if not isinstance(other, Timestamp):
            return NotImplemented
        return self.posix_ns > other.posix_ns

    def __ge__(self, other: Timestamp) -> bool:
        if not isinstance(other, Timestamp):
            return NotImplemented
        return self.posix_ns >= other.posix_ns

    def __hash__(self) -> int:
        return hash(self.posix_ns)

    # -- arithmetic -----------------------------------------------------------------------

    def __add__(self, delta: Timedelta | _StdTimedelta) -> Timestamp:
        delta_ns = _other_ns(delta)
        return NotImplemented if delta_ns is None else Timestamp(self.posix_ns + delta_ns)

    __radd__ = __add__

    @overload
    def __sub__(self, other: Timestamp) -> Timedelta: ...

    @overload
    def __sub__(self, other: Timedelta | _StdTimedelta) -> Timestamp: ...

    def __sub__(self, other: Timestamp | Timedelta | _StdTimedelta) -> Timedelta | Timestamp:
        if isinstance(other, Timestamp):
            return Timedelta(self.posix_ns - other.posix_ns)
        delta_ns = _other_ns(other)
        return NotImplemented if delta_ns is None else Timestamp(self.posix_ns - delta_ns)

    def __mod__(self, interval: Timedelta | _StdTimedelta) -> Timedelta:
        """Time since the last multiple of *interval* after the epoch (for aligning ticks)."""
        interval_ns = _other_ns(interval)
        return NotImplemented if interval_ns is None else Timedelta(self.posix_ns % interval_ns)


def _float(value: object) -> float:
    """attrs converter: a real number as ``float`` (NaN and inf allowed, bool and str not)."""
    if type(value) is float:
        return value
    if not _is_number(value):
        raise TypeError(f"expected a number, got {_describe(value)}")
    return float(value)


def _count_int(value: object) -> int:
    """attrs converter: a non-negative integer count."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"count must be an int, got {_describe(value)}")
    if value < 0:
        raise ValueError(f"count must not be negative, got {value}")
    return int(value)


def _check_active_time(_instance: object, _attribute: object, value: Timedelta) -> None:
    if not isinstance(value, Timedelta):
        raise TypeError(
            f"active_time must be a Timedelta, got {_describe(value)}; "
            "wrap nanoseconds as Timedelta(ns)"
        )
    if value.ns < 0:
        raise ValueError(f"active_time must not be negative, got {value}")


@attrs.frozen
class TimeValue:
    """A timestamp and a value; unpacks as ``timestamp, value = tv``."""

    timestamp: Timestamp = attrs.field(validator=attrs.validators.instance_of(Timestamp))
    value: float = attrs.field(converter=_float)

    def __iter__(self) -> Iterator[Timestamp | float]:
        return iter((self.timestamp, self.value))


@attrs.frozen
class TimeAggregate:
    """Summary of a metric's values within a period starting at *timestamp*.

    Raises:
        TypeError: if a field has the wrong type.
        ValueError: if *count* or *active_time* is negative.
    """

    timestamp: Timestamp = attrs.field(validator=attrs.validators.instance_of(Timestamp))
    """Start of the period."""
    minimum: float = attrs.field(converter=_float)
    maximum: float = attrs.field(converter=_float)
    sum: float = attrs.field(converter=_float)
    """Sum of all raw values."""
    count: int = attrs.field(converter=_count_int)
    """Number of raw values."""
    integral_ns: float = attrs.field(converter=_float)
    """Integral of the values over *active_time*, in value × nanoseconds."""
    active_time: Timedelta = attrs.field(validator=_check_active_time)
    """Time covered by values within the period."""

    @classmethod
    def from_value(cls, timestamp: Timestamp, value: float) -> TimeAggregate:
        """An aggregate of a single raw value at *timestamp*, spanning no time."""
        return cls(timestamp, value, value, value, 1, 0.0, Timedelta(0))

    @classmethod
    def from_value_pair(
        cls, timestamp_before: Timestamp, timestamp: Timestamp, value: float
    ) -> TimeAggregate:
        """An aggregate of *value* holding from *timestamp_before* until *timestamp*.

        Raises:
            ValueError: unless *timestamp_before* < *timestamp*.
        """
        if not timestamp_before < timestamp:
            raise ValueError(
                "timestamps must be strictly increasing, got "
                f"{timestamp_before} followed by {timestamp}"
            )
        delta = timestamp - timestamp_before
        return cls(timestamp_before, value, value, value, 1, delta.ns * float(value), delta)

    @property
    def integral_s(self) -> float:
        """Integral of the values over *active_time*, in value × seconds."""
        return self.integral_ns / _NS_PER_S

    @property
    def mean(self) -> float:
        """The mean: :attr:`mean_integral` if any time is covered, else :attr:`mean_sum`."""
        return self.mean_integral if self.active_time.ns > 0 else self.mean_sum

    @property
    def mean_integral(self) -> float:
        """Time-weighted mean, ``integral_ns / active_time``; NaN if no time is covered."""
        if self.active_time.ns == 0:
            return math.nan
        return self.integral_ns / self.active_time.ns

    @property
    def mean_sum(self) -> float:
        """Arithmetic mean of the raw values, ``sum / count``; NaN if there are none."""
        if self.count == 0:
            return math.nan
        return self.sum / self.count

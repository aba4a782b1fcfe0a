"""Tests for mqsync.timeseries: exact durations, timestamps and their string forms."""

from __future__ import annotations

import copy
import datetime
import math
import pickle
import weakref
from decimal import Decimal
from fractions import Fraction

import pytest
from freezegun import freeze_time
from hypothesis import given
from hypothesis import strategies as st

from mqsync.timeseries import TimeAggregate, Timedelta, Timestamp, TimeValue

UTC = datetime.timezone.utc
NS_PER_S = 1_000_000_000
# The range datetime (and so ISO-8601 here) can represent: 0001-01-01 .. 9999-12-31.
MIN_ISO_NS = -62_135_596_800 * NS_PER_S
MAX_ISO_NS = 253_402_300_800 * NS_PER_S - 1
UNIT_ERROR = "unit must be one of ns, us, ms, s, min, h, d"


# -- Timedelta: construction ------------------------------------------------------------------


def test_timedelta_holds_int_ns():
    assert Timedelta(1500).ns == 1500
    assert Timedelta(ns=-3).ns == -3


@pytest.mark.parametrize("value", [1.0, 1.5, None, True, False, "10", Decimal(1)])
def test_timedelta_rejects_non_int(value):
    with pytest.raises(TypeError, match="nanoseconds must be an int"):
        Timedelta(value)


def test_timedelta_is_frozen():
    td = Timedelta(1)
    with pytest.raises(AttributeError):
        td.ns = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del td.ns  # type: ignore[misc]
    with pytest.raises(AttributeError):
        td.seconds = 2  # type: ignore[attr-defined]
    assert td.ns == 1 and hash(td) == hash(Timedelta(1))


@pytest.mark.parametrize("cls", [Timedelta, Timestamp])
def test_time_types_take_integral_types_as_plain_int(cls):
    class MyInt(int):
        pass

    for value in (MyInt(7), MyInt(7) * 1):
        made = cls(value)
        assert made == cls(7) and hash(made) == hash(cls(7))
        assert type(made.ns if cls is Timedelta else made.posix_ns) is int


class MyTimedelta(Timedelta):
    pass


class MyTimestamp(Timestamp):
    pass


@pytest.mark.parametrize(("cls", "sub"), [(Timedelta, MyTimedelta), (Timestamp, MyTimestamp)])
def test_time_types_match_unpickle_and_copy_as_values(cls, sub):
    # a subclass keeps its type through pickle and copy
    for made in (cls(1_609_556_645_123_456_789), sub(-5)):
        assert pickle.loads(pickle.dumps(made)) == made
        assert type(pickle.loads(pickle.dumps(made))) is type(made)
        assert copy.deepcopy(made) == made and copy.copy(made) == made
    match cls(42):
        case Timedelta(ns):
            assert ns == 42
        case Timestamp(posix_ns):
            assert posix_ns == 42
        case _:
            pytest.fail("a time type does not match its own class pattern")


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("60", 60 * NS_PER_S),
        ("1.5", 1_500_000_000),
        ("10s", 10 * NS_PER_S),
        ("1second", NS_PER_S),
        ("2seconds", 2 * NS_PER_S),
        ("1.5ms", 1_500_000),
        ("1millisecond", 1_000_000),
        ("3milliseconds", 3_000_000),
        ("7us", 7_000),
        ("7\u03bcs", 7_000),
        ("1microsecond", 1_000),
        ("2microseconds", 2_000),
        ("42ns", 42),
        ("1nanosecond", 1),
        ("5nanoseconds", 5),
        ("1min", 60 * NS_PER_S),
        ("1minute", 60 * NS_PER_S),
        ("2minutes", 120 * NS_PER_S),
        ("1h", 3600 * NS_PER_S),
        ("1hour", 3600 * NS_PER_S),
        ("0.5hours", 1800 * NS_PER_S),
        ("1d", 86_400 * NS_PER_S),
        ("1day", 86_400 * NS_PER_S),
        ("7days", 7 * 86_400 * NS_PER_S),
    ],
)
def test_from_string_every_unit(text, ns):
    assert Timedelta.from_string(text).ns == ns


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("-1.5s", -1_500_000_000),
        ("-1,5s", -1_500_000_000),
        ("+1.5s", 1_500_000_000),
        ("-0.5s", -500_000_000),
        ("-0s", 0),
        ("1,5ms", 1_500_000),
        ("1 s", NS_PER_S),
        ("1.5 ms", 1_500_000),
        ("  10s  ", 10 * NS_PER_S),
        (".5s", 500_000_000),
        ("5.s", 5 * NS_PER_S),
        ("0.000000001s", 1),
        ("1.000000000000ns", 1),
        ("0.1s", 100_000_000),
        ("0.3s", 300_000_000),
        ("1.1min", 66 * NS_PER_S),
        ("100000000000000000000000d", 100_000_000_000_000_000_000_000 * 86_400 * NS_PER_S),
    ],
)
def test_from_string_sign_decimal_mark_and_exactness(text, ns):
    assert Timedelta.from_string(text).ns == ns


def test_from_string_minus_one_and_a_half_seconds():
    # The official client parses this as -0.5 s.
    assert Timedelta.from_string("-1.5s") == Timedelta.from_s(-1.5)
    assert Timedelta.from_string("-1.5s") == -Timedelta.from_string("1.5s")


@pytest.mark.parametrize("text", ["1 sec", "1m", "10S", "1MS", "1Min", "1secs", "1 µs", "1hr"])
def test_from_string_unknown_unit(text):
    with pytest.raises(ValueError) as info:
        Timedelta.from_string(text)
    assert str(info.value) == f"invalid duration {text!r}: {UNIT_ERROR}"


def test_from_string_message_matches_style_guide():
    with pytest.raises(ValueError, match=r"^invalid duration '10S': unit must be one of ns, us, "):
        Timedelta.from_string("10S")


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "s",
        "ms",
        ".",
        "-",
        "-s",
        "--1s",
        "- 1s",
        "1.5.5s",
        "1,5,5s",
        "abc",
        "1-2s",
        "nan",
        "inf",
        "\u0663s",
    ],
)
def test_from_string_malformed(text):
    with pytest.raises(ValueError, match=r"expected a number and a unit, like '10s'"):
        Timedelta.from_string(text)


@pytest.mark.parametrize("text", ["1.5ns", "0.0000000001s", "1.0001us", "-0.5ns"])
def test_from_string_rejects_sub_nanosecond(text):
    with pytest.raises(ValueError) as info:
        Timedelta.from_string(text)
    assert str(info.value) == f"invalid duration {text!r}: not a whole number of nanoseconds"


def test_from_string_rejects_non_str():
    with pytest.raises(TypeError, match="duration string must be a str, got int 10"):
        Timedelta.from_string(10)  # type: ignore[arg-type]


def test_from_string_shortens_long_input_in_message():
    with pytest.raises(ValueError) as info:
        Timedelta.from_string("1" + "x" * 1000)
    assert len(str(info.value)) < 120


@pytest.mark.parametrize(
    ("factory", "value", "ns"),
    [
        (Timedelta.from_ns, 5, 5),
        (Timedelta.from_ns, 2.5, 2),
        (Timedelta.from_ns, 3.5, 4),
        (Timedelta.from_us, 1.5, 1_500),
        (Timedelta.from_us, 3, 3_000),
        (Timedelta.from_ms, 1.5, 1_500_000),
        (Timedelta.from_ms, -2, -2_000_000),
        (Timedelta.from_s, 1.5, 1_500_000_000),
        (Timedelta.from_s, 0.3, 300_000_000),
        (Timedelta.from_s, 1.1, 1_100_000_000),
        (Timedelta.from_s, -1.5, -1_500_000_000),
        (Timedelta.from_s, Decimal("0.000000001"), 1),
        (Timedelta.from_s, Fraction(1, 3), 333_333_333),
        (Timedelta.from_s, 2**70, 2**70 * NS_PER_S),
    ],
)
def test_from_number_constructors(factory, value, ns):
    result = factory(value)
    assert type(result) is Timedelta
    assert result.ns == ns
    assert type(result.ns) is int


@pytest.mark.parametrize("value", ["1s", None, True, [1]])
def test_from_s_rejects_non_numbers(value):
    with pytest.raises(TypeError, match="seconds must be a number, got"):
        Timedelta.from_s(value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, Decimal("NaN")])
def test_from_s_rejects_non_finite(value):
    with pytest.raises(ValueError, match="seconds must be finite"):
        Timedelta.from_s(value)


def test_from_timedelta_is_exact():
    delta = datetime.timedelta(days=-1, seconds=5, microseconds=7)
    assert Timedelta.from_timedelta(delta).ns == (-86_400 + 5) * NS_PER_S + 7_000
    with pytest.raises(TypeError, match="expected a datetime.timedelta, got int 5"):
        Timedelta.from_timedelta(5)  # type: ignore[arg-type]


# -- Timedelta: coerce ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "ns"),
    [
        (Timedelta(7), 7),
        (2, 2 * NS_PER_S),
        (0.25, 250_000_000),
        (Decimal("0.5"), 500_000_000),
        (datetime.timedelta(milliseconds=3), 3_000_000),
        ("10s", 10 * NS_PER_S),
        ("1.5ms", 1_500_000),
        ("60", 60 * NS_PER_S),
    ],
)
def test_coerce_accepts(value, ns):
    assert Timedelta.coerce(value).ns == ns


def test_coerce_returns_the_same_timedelta():
    td = Timedelta(5)
    assert Timedelta.coerce(td) is td


@pytest.mark.parametrize("value", [None, True, [1], b"10s", object()])
def test_coerce_rejects_other_types(value):
    with pytest.raises(TypeError) as info:
        Timedelta.coerce(value)
    message = str(info.value)
    assert message.startswith(
        "duration must be a Timedelta, a datetime.timedelta, a string with a unit such as "
        "'10s', or a number of seconds; got "
    )
    assert type(value).__name__ in message


def test_coerce_names_the_argument():
    with pytest.raises(TypeError, match=r"^period must be a Timedelta, .*; got NoneType None$"):
        Timedelta.coerce(None, name="period")
    with pytest.raises(ValueError, match=rf"^invalid timeout '5 sec': {UNIT_ERROR}$"):
        Timedelta.coerce("5 sec", name="timeout")
    with pytest.raises(ValueError, match=r"^expires must be a finite number of seconds, got nan$"):
        Timedelta.coerce(math.nan, name="expires")


# -- Timedelta: views and strings ------------------------------------------------------------


def test_unit_properties():
    td = Timedelta(1_500_000_000)
    assert td.ns == 1_500_000_000
    assert td.us == 1_500_000.0
    assert td.ms == 1_500.0
    assert td.s == 1.5
    assert td.timedelta == datetime.timedelta(seconds=1.5)


def test_timedelta_property_truncates_towards_zero():
    assert Timedelta(1_999).timedelta == datetime.timedelta(microseconds=1)
    assert Timedelta(-1_999).timedelta == datetime.timedelta(microseconds=-1)
    assert Timedelta(999).timedelta == datetime.timedelta(0)


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "0s"),
        (1_500, "1500ns"),
        (1, "1ns"),
        (2_000, "2us"),
        (1_500_000, "1500us"),
        (100_000_000, "100ms"),
        (1_500_000_000, "1500ms"),
        (-2 * NS_PER_S, "-2s"),
        (90 * NS_PER_S, "90s"),
        (60 * NS_PER_S, "1min"),
        (90 * 60 * NS_PER_S, "90min"),
        (3600 * NS_PER_S, "1h"),
        (36 * 3600 * NS_PER_S, "36h"),
        (86_400 * NS_PER_S, "1d"),
        (-7 * 86_400 * NS_PER_S, "-7d"),
    ],
)
def test_precise_string(ns, text):
    td = Timedelta(ns)
    assert td.precise_string == text
    assert str(td) == text
    assert Timedelta.from_string(text) == td


@given(st.integers(min_value=-(2**80), max_value=2**80))
def test_precise_string_round_trips(ns):
    assert Timedelta.from_string(Timedelta(ns).precise_string).ns == ns


@given(
    st.integers(min_value=-(10**12), max_value=10**12),
    st.sampled_from(
        [
            ("ns", 1),
            ("us", 1_000),
            ("ms", 10**6),
            ("s", 10**9),
            ("", 10**9),
            ("min", 60 * 10**9),
            ("h", 3600 * 10**9),
            ("d", 86_400 * 10**9),
        ]
    ),
)
def test_from_string_integer_times_unit(number, unit):
    name, ns_per_unit = unit
    assert Timedelta.from_string(f"{number}{name}").ns == number * ns_per_unit


@given(st.decimals(min_value=-(10**9), max_value=10**9, places=9, allow_nan=False))
def test_from_string_decimal_seconds_is_exact(number):
    text = f"{number:f}s"
    assert Timedelta.from_string(text).ns == int(number * NS_PER_S)
    assert Timedelta.from_string(text.replace(".", ",")).ns == int(number * NS_PER_S)


def test_repr():
    assert repr(Timedelta(1_500_000)) == "Timedelta(ns=1500000)"


def test_bool():
    assert not Timedelta(0)
    assert Timedelta(1)
    assert Timedelta(-1)


# -- Timedelta: arithmetic and comparison ----------------------------------------------------


def test_timedelta_addition_and_subtraction():
    a, b = Timedelta.from_ms(3), Timedelta.from_ms(1)
    assert a + b == Timedelta.from_ms(4)
    assert a - b == Timedelta.from_ms(2)
    assert a + datetime.timedelta(milliseconds=1) == Timedelta.from_ms(4)
    assert datetime.timedelta(milliseconds=1) + a == Timedelta.from_ms(4)
    assert a - datetime.timedelta(milliseconds=1) == Timedelta.from_ms(2)
    assert datetime.timedelta(milliseconds=1) - a == Timedelta.from_ms(-2)
    assert type(datetime.timedelta(milliseconds=1) + a) is Timedelta
    assert -a == Timedelta.from_ms(-3)
    assert +a is a
    assert abs(-a) == a
    assert sum([a, b], Timedelta(0)) == Timedelta.from_ms(4)


def test_timedelta_plus_timestamp_is_timestamp():
    result = Timedelta(5) + Timestamp(10)
    assert type(result) is Timestamp
    assert result == Timestamp(15)


@pytest.mark.parametrize("other", [1, 1.5, "1s", None])
def test_timedelta_add_rejects_numbers_and_strings(other):
    with pytest.raises(TypeError):
        Timedelta(1) + other
    with pytest.raises(TypeError):
        other + Timedelta(1)
    with pytest.raises(TypeError):
        Timedelta(1) - other


def test_timedelta_multiplication():
    assert Timedelta(10) * 3 == Timedelta(30)
    assert 3 * Timedelta(10) == Timedelta(30)
    assert Timedelta(10) * 0.25 == Timedelta(2)  # 2.5 rounds half to even
    # 0.35 is really 0.34999999999999997...: the exact product rounds down, 10 * 0.35 would not
    assert Timedelta(10) * 0.35 == Timedelta(3)
    assert Timedelta.from_s(1) * 1.5 == Timedelta.from_ms(1500)
    assert Timedelta(-10) * 0.25 == Timedelta(-2)
    assert Timedelta(-30) * 0.25 == Timedelta(-8)
    # Exact for large values, where a float product would lose nanoseconds.
    big = Timedelta(2**62 + 1)
    assert (big * 1.0).ns == 2**62 + 1
    assert (big * 3).ns == 3 * (2**62 + 1)


def test_timedelta_multiplication_rejects():
    with pytest.raises(TypeError):
        Timedelta(1) * Timedelta(1)
    with pytest.raises(TypeError):
        Timedelta(1) * "2"
    with pytest.raises(TypeError):
        Timedelta(1) * True
    with pytest.raises(ValueError, match="factor must be finite"):
        Timedelta(1) * math.inf


def test_timedelta_true_division():
    assert Timedelta(10) / 4 == Timedelta(2)  # 2.5 rounds half to even
    assert Timedelta(10) / 2.5 == Timedelta(4)
    assert Timedelta.from_s(10) / 3 == Timedelta(3_333_333_333)
    assert Timedelta.from_s(3) / Timedelta.from_s(2) == 1.5
    assert Timedelta.from_s(3) / datetime.timedelta(seconds=2) == 1.5
    assert isinstance(Timedelta(3) / Timedelta(2), float)
    with pytest.raises(ZeroDivisionError):
        Timedelta(1) / 0
    with pytest.raises(ZeroDivisionError):
        Timedelta(1) / Timedelta(0)
    with pytest.raises(TypeError):
        Timedelta(1) / "2"


def test_timedelta_floor_division_and_modulo():
    assert Timedelta(7) // 2 == Timedelta(3)
    assert Timedelta(-7) // 2 == Timedelta(-4)
    assert Timedelta.from_s(10) // Timedelta.from_s(3) == 3
    assert type(Timedelta.from_s(10) // Timedelta.from_s(3)) is int
    assert Timedelta.from_s(10) // datetime.timedelta(seconds=3) == 3
    assert Timedelta.from_s(10) % Timedelta.from_s(3) == Timedelta.from_s(1)
    assert Timedelta(-1) % Timedelta(3) == Timedelta(2)
    assert divmod(Timedelta(7), Timedelta(2)) == (3, Timedelta(1))
    with pytest.raises(TypeError, match=r"needs an int or a duration, got float 0\.5; use /"):
        Timedelta(7) // 0.5
    with pytest.raises(TypeError):
        Timedelta(7) // "2"
    with pytest.raises(TypeError):
        Timedelta(7) % 2
    with pytest.raises(ZeroDivisionError):
        Timedelta(7) // 0


def test_timedelta_ordering_and_equality():
    one, two = Timedelta.from_s(1), Timedelta.from_s(2)
    assert one < two <= two
    assert two > one >= one
    assert one != two
    assert one == Timedelta(NS_PER_S)
    assert sorted([two, one, -two]) == [-two, one, two]
    assert max(one, two) is two


def test_timedelta_compares_with_datetime_timedelta():
    one = Timedelta.from_s(1)
    assert one == datetime.timedelta(seconds=1)
    assert datetime.timedelta(seconds=1) == one
    assert one < datetime.timedelta(seconds=2)
    assert datetime.timedelta(seconds=2) > one
    assert datetime.timedelta(seconds=1) <= one
    # Exact: one ns more is not equal to the whole microseconds.
    assert Timedelta(1_001) != datetime.timedelta(microseconds=1)
    assert Timedelta(1_001) > datetime.timedelta(microseconds=1)


def test_timedelta_equality_with_other_types():
    assert Timedelta(1) != 1
    assert Timedelta(0) != 0
    assert Timedelta(1) != "1ns"
    with pytest.raises(TypeError):
        Timedelta(1) < 2  # noqa: B015


def test_timedelta_hash():
    assert hash(Timedelta(5)) == hash(Timedelta(5))
    assert len({Timedelta(5), Timedelta(5), Timedelta(6)}) == 2
    # Equal to a datetime.timedelta, so it must hash like one.
    assert hash(Timedelta.from_s(1)) == hash(datetime.timedelta(seconds=1))
    assert {Timedelta.from_ms(-3), datetime.timedelta(milliseconds=-3)} == {Timedelta.from_ms(-3)}
    assert isinstance(hash(Timedelta(10**40 * 1000)), int)


def test_timedelta_pickles():
    td = Timedelta(123)
    assert pickle.loads(pickle.dumps(td)) == td


# -- Timestamp -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [1.0, None, True, "0", Timedelta(1)])
def test_timestamp_rejects_non_int(value):
    with pytest.raises(TypeError, match="nanoseconds must be an int"):
        Timestamp(value)


def test_timestamp_is_frozen():
    ts = Timestamp(1)
    with pytest.raises(AttributeError):
        ts.posix_ns = 2  # type: ignore[misc]


def test_now_has_full_ns_resolution_under_freezegun():
    with freeze_time("2021-01-02T03:04:05.123456Z"):
        now = Timestamp.now()
    assert now == Timestamp(1_609_556_645_123_456_000)
    assert type(now.posix_ns) is int


def test_now_ticks_under_freezegun():
    with freeze_time("2021-01-02 03:04:05", tz_offset=0) as frozen:
        before = Timestamp.now()
        frozen.tick(datetime.timedelta(seconds=1.5))
        assert Timestamp.now() - before == Timedelta.from_string("1.5s")
        assert Timestamp.from_now("10s") == Timestamp.now() + Timedelta.from_s(10)
        assert Timestamp.ago(Timedelta.from_s(10)) == Timestamp.now() - Timedelta.from_s(10)
        assert (
            Timestamp.ago(datetime.timedelta(minutes=1)).isoformat() == "2021-01-02T03:03:06.500Z"
        )


def test_now_is_wall_clock_ns():
    import time

    before = time.time_ns()
    now = Timestamp.now()
    after = time.time_ns()
    assert before <= now.posix_ns <= after


def test_from_posix_seconds():
    assert Timestamp.from_posix_seconds(0) == Timestamp(0)
    assert Timestamp.from_posix_seconds(1.5) == Timestamp(1_500_000_000)
    assert Timestamp.from_posix_seconds(-1.5) == Timestamp(-1_500_000_000)
    assert Timestamp.from_posix_seconds(1_609_556_645) == Timestamp(1_609_556_645 * NS_PER_S)
    assert Timestamp.from_posix_seconds(Decimal("1609556645.123456789")) == Timestamp(
        1_609_556_645_123_456_789
    )
    with pytest.raises(TypeError, match="POSIX seconds must be a number"):
        Timestamp.from_posix_seconds("1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="POSIX seconds must be finite"):
        Timestamp.from_posix_seconds(math.nan)


def test_from_datetime():
    dt = datetime.datetime(2021, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    assert Timestamp.from_datetime(dt) == Timestamp(1_609_556_645_123_456_000)
    plus_one = datetime.timezone(datetime.timedelta(hours=1))
    dt_plus_one = datetime.datetime(2021, 1, 2, 4, 4, 5, 123456, tzinfo=plus_one)
    assert Timestamp.from_datetime(dt_plus_one) == Timestamp(1_609_556_645_123_456_000)
    assert Timestamp.from_datetime(datetime.datetime(1, 1, 1, tzinfo=UTC)).posix_ns == MIN_ISO_NS


def test_from_datetime_rejects_naive():
    with pytest.raises(ValueError, match=r"naive datetime '2021-01-02T03:04:05' has no timezone"):
        Timestamp.from_datetime(datetime.datetime(2021, 1, 2, 3, 4, 5))
    with pytest.raises(TypeError, match="expected a datetime.datetime, got date"):
        Timestamp.from_datetime(datetime.date(2021, 1, 2))  # type: ignore[arg-type]


def test_from_local_datetime():
    naive = datetime.datetime(2021, 6, 1, 12, 0, 0)
    assert Timestamp.from_local_datetime(naive) == Timestamp.from_datetime(naive.astimezone())
    with pytest.raises(ValueError, match="is aware; use Timestamp.from_datetime"):
        Timestamp.from_local_datetime(datetime.datetime(2021, 6, 1, tzinfo=UTC))


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("1970-01-01T00:00:00.0Z", 0),
        ("2021-01-02T03:04:05.123456789Z", 1_609_556_645_123_456_789),
        ("2021-01-02T03:04:05,123456789Z", 1_609_556_645_123_456_789),
        ("2021-01-02T03:04:05.123456789000Z", 1_609_556_645_123_456_789),
        ("2021-01-02T03:04:05.1Z", 1_609_556_645_100_000_000),
        ("2021-01-02T03:04:05z", 1_609_556_645_000_000_000),
        ("2021-01-02t03:04:05Z", 1_609_556_645_000_000_000),
        ("2021-01-02 03:04:05Z", 1_609_556_645_000_000_000),
        ("2021-01-02T03:04Z", 1_609_556_640_000_000_000),
        ("2021-01-02T04:04:05.123456789+01:00", 1_609_556_645_123_456_789),
        ("2021-01-02T04:04:05+0100", 1_609_556_645_000_000_000),
        ("2021-01-02T04:04:05+01", 1_609_556_645_000_000_000),
        ("2021-01-02T01:34:05-01:30", 1_609_556_645_000_000_000),
        ("2021-01-02T03:04:05-00:00", 1_609_556_645_000_000_000),
        ("2021-01-02T03:04:05.123456+00:00", 1_609_556_645_123_456_000),
        ("2021-01-02T04:04:06.000001+01:00:01.000001", 1_609_556_645_000_000_000),
        ("  2021-01-02T03:04:05Z ", 1_609_556_645_000_000_000),
        ("1969-12-31T23:59:59.999999999Z", -1),
        ("0001-01-01T00:00:00Z", MIN_ISO_NS),
        ("9999-12-31T23:59:59.999999999Z", MAX_ISO_NS),
    ],
)
def test_from_iso8601(text, ns):
    assert Timestamp.from_iso8601(text).posix_ns == ns


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("2021-01-02T03:04:05", "a UTC offset ('Z' or e.g. '+01:00') is required"),
        ("2021-01-02T03:04:05.123", "a UTC offset ('Z' or e.g. '+01:00') is required"),
        ("2021-01-02", "expected e.g. '2021-01-02T03:04:05.123456789Z'"),
        ("yesterday", "expected e.g. '2021-01-02T03:04:05.123456789Z'"),
        ("", "expected e.g. '2021-01-02T03:04:05.123456789Z'"),
        ("2021-1-2T03:04:05Z", "expected e.g."),
        ("2021-01-02T03:04:05+1:00", "expected e.g."),
        ("2021-01-02T03:04:05Z+01:00", "expected e.g."),
        ("2021-01-02T03:04:05.Z", "expected e.g."),
        ("2021-02-30T00:00:00Z", "day is out of range for month"),
        ("2021-01-02T24:00:00Z", "hour must be in 0..23"),
        ("2021-01-02T03:04:60Z", "second must be in 0..59"),
        ("2021-01-02T03:04:05+24:00", "UTC offset out of range"),
        ("2021-01-02T03:04:05+01:60", "UTC offset out of range"),
        ("2021-01-02T03:04:05.1234567891Z", "more than 9 fractional digits"),
    ],
)
def test_from_iso8601_errors(text, reason):
    with pytest.raises(ValueError) as info:
        Timestamp.from_iso8601(text)
    assert str(info.value).startswith(f"invalid ISO-8601 timestamp {text!r}: ")
    assert reason in str(info.value)


def test_from_iso8601_rejects_non_str():
    with pytest.raises(TypeError, match="ISO-8601 timestamp must be a str, got int 0"):
        Timestamp.from_iso8601(0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "1970-01-01T00:00:00Z"),
        (1_609_556_645_000_000_000, "2021-01-02T03:04:05Z"),
        (1_609_556_645_120_000_000, "2021-01-02T03:04:05.120Z"),
        (1_609_556_645_123_456_000, "2021-01-02T03:04:05.123456Z"),
        (1_609_556_645_123_456_789, "2021-01-02T03:04:05.123456789Z"),
        (1_609_556_645_000_000_001, "2021-01-02T03:04:05.000000001Z"),
        (-1, "1969-12-31T23:59:59.999999999Z"),
        (MIN_ISO_NS, "0001-01-01T00:00:00Z"),
        (MAX_ISO_NS, "9999-12-31T23:59:59.999999999Z"),
    ],
)
def test_isoformat(ns, text):
    ts = Timestamp(ns)
    assert ts.isoformat() == text
    assert ts.iso8601 == text
    assert str(ts) == text


def test_isoformat_out_of_range():
    with pytest.raises(OverflowError):
        Timestamp(MAX_ISO_NS + 1).isoformat()
    assert str(Timestamp(MAX_ISO_NS + 1)) == f"Timestamp(posix_ns={MAX_ISO_NS + 1})"


@given(st.integers(min_value=MIN_ISO_NS, max_value=MAX_ISO_NS))
def test_iso8601_round_trips_exactly(ns):
    ts = Timestamp(ns)
    assert Timestamp.from_iso8601(ts.isoformat()) == ts


_fixed_offsets = st.builds(
    datetime.timezone,
    st.timedeltas(
        min_value=-datetime.timedelta(hours=23, minutes=59, seconds=59),
        max_value=datetime.timedelta(hours=23, minutes=59, seconds=59),
    ),
)


@given(st.datetimes(timezones=_fixed_offsets))
def test_from_iso8601_reads_datetime_isoformat(dt):
    assert Timestamp.from_iso8601(dt.isoformat()) == Timestamp.from_datetime(dt)
    assert Timestamp.from_iso8601(dt.isoformat(sep=" ")) == Timestamp.from_datetime(dt)


@given(
    st.datetimes(
        min_value=datetime.datetime(1, 1, 2),
        max_value=datetime.datetime(9999, 12, 30),
        timezones=_fixed_offsets,
    )
)
def test_datetime_round_trips(dt):
    assert Timestamp.from_datetime(dt).datetime == dt
    assert Timestamp.from_datetime(dt).datetime.tzinfo is UTC


def test_unit_views():
    ts = Timestamp(1_609_556_645_123_456_789)
    assert ts.posix_ns == 1_609_556_645_123_456_789
    assert ts.posix == pytest.approx(1_609_556_645.123_456_789)
    assert ts.posix_ms == pytest.approx(1_609_556_645_123.456_789)
    assert ts.posix_us == pytest.approx(1_609_556_645_123_456.789)
    assert Timestamp(1_500_000_000).posix == 1.5


def test_datetime_view_floors_to_microseconds():
    assert Timestamp(1_609_556_645_123_456_789).datetime == datetime.datetime(
        2021, 1, 2, 3, 4, 5, 123456, tzinfo=UTC
    )
    assert Timestamp(-1).datetime == datetime.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


def test_timestamp_repr():
    assert repr(Timestamp(5)) == "Timestamp(posix_ns=5)"


def test_timestamp_arithmetic():
    ts = Timestamp(1_000)
    assert ts + Timedelta(5) == Timestamp(1_005)
    assert ts + datetime.timedelta(microseconds=1) == Timestamp(2_000)
    assert datetime.timedelta(microseconds=1) + ts == Timestamp(2_000)
    assert ts - Timedelta(5) == Timestamp(995)
    assert ts - datetime.timedelta(microseconds=1) == Timestamp(0)
    difference = Timestamp(3_000) - ts
    assert type(difference) is Timedelta
    assert difference == Timedelta(2_000)
    assert ts - Timestamp(3_000) == Timedelta(-2_000)
    assert Timestamp(7_500) % Timedelta(1_000) == Timedelta(500)


@pytest.mark.parametrize("other", [1, 1.0, "1s", None])
def test_timestamp_arithmetic_rejects(other):
    with pytest.raises(TypeError):
        Timestamp(1) + other
    with pytest.raises(TypeError):
        Timestamp(1) - other
    with pytest.raises(TypeError):
        Timestamp(1) + Timestamp(1)  # type: ignore[operator]


def test_timestamp_ordering_equality_hash():
    a, b = Timestamp(1), Timestamp(2)
    assert a < b <= b
    assert b > a >= a
    assert a != b
    assert a == Timestamp(1)
    assert hash(a) == hash(Timestamp(1))
    assert len({a, Timestamp(1), b}) == 2
    assert sorted([b, a]) == [a, b]
    assert a != 1
    assert a != Timedelta(1)
    with pytest.raises(TypeError):
        a < 2  # noqa: B015
    with pytest.raises(TypeError):
        a < Timedelta(2)  # noqa: B015


def test_timestamp_pickles():
    ts = Timestamp(1_609_556_645_123_456_789)
    assert pickle.loads(pickle.dumps(ts)) == ts


# -- TimeValue and TimeAggregate -------------------------------------------------------------


def test_time_value_unpacks():
    ts = Timestamp(5)
    tv = TimeValue(ts, 42)
    timestamp, value = tv
    assert timestamp is ts
    assert value == 42.0
    assert type(value) is float
    assert tv == TimeValue(Timestamp(5), 42.0)
    assert hash(tv) == hash(TimeValue(Timestamp(5), 42.0))
    assert list(tv) == [ts, 42.0]


def test_time_value_validates():
    with pytest.raises(TypeError):
        TimeValue(5, 1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected a number, got str '1'"):
        TimeValue(Timestamp(5), "1")  # type: ignore[arg-type]
    assert math.isnan(TimeValue(Timestamp(5), math.nan).value)
    with pytest.raises(AttributeError):
        TimeValue(Timestamp(5), 1.0).value = 2.0  # type: ignore[misc]


def test_time_aggregate_fields_and_means():
    aggregate = TimeAggregate(
        timestamp=Timestamp(0),
        minimum=1,
        maximum=3,
        sum=8,
        count=4,
        integral_ns=2.5 * NS_PER_S,
        active_time=Timedelta.from_s(1),
    )
    assert aggregate.minimum == 1.0
    assert aggregate.mean == 2.5
    assert aggregate.mean_integral == 2.5
    assert aggregate.mean_sum == 2.0
    assert aggregate.integral_s == 2.5


def test_time_aggregate_mean_falls_back_to_sum():
    aggregate = TimeAggregate(Timestamp(0), 1, 3, 8, 4, 0, Timedelta(0))
    assert aggregate.mean == 2.0
    assert math.isnan(aggregate.mean_integral)
    empty = TimeAggregate(Timestamp(0), math.nan, math.nan, 0, 0, 0, Timedelta(0))
    assert math.isnan(empty.mean)
    assert math.isnan(empty.mean_sum)


def test_time_aggregate_from_value():
    aggregate = TimeAggregate.from_value(Timestamp(7), 2.5)
    assert aggregate == TimeAggregate(Timestamp(7), 2.5, 2.5, 2.5, 1, 0.0, Timedelta(0))
    assert aggregate.mean == 2.5


def test_time_aggregate_from_value_pair():
    aggregate = TimeAggregate.from_value_pair(Timestamp(10), Timestamp(30), 4.0)
    assert aggregate.timestamp == Timestamp(10)
    assert aggregate.active_time == Timedelta(20)
    assert aggregate.integral_ns == 80.0
    assert (aggregate.minimum, aggregate.maximum, aggregate.sum, aggregate.count) == (4, 4, 4, 1)
    assert aggregate.mean == 4.0


@pytest.mark.parametrize("later", [Timestamp(10), Timestamp(5)])
def test_time_aggregate_from_value_pair_needs_increasing_timestamps(later):
    with pytest.raises(ValueError, match="timestamps must be strictly increasing"):
        TimeAggregate.from_value_pair(Timestamp(10), later, 1.0)


def test_time_aggregate_validates():
    args = dict(timestamp=Timestamp(0), minimum=1, maximum=1, sum=1, count=1, integral_ns=0)
    with pytest.raises(TypeError, match="active_time must be a Timedelta, got int 5"):
        TimeAggregate(**args, active_time=5)
    with pytest.raises(ValueError, match="active_time must not be negative"):
        TimeAggregate(**args, active_time=Timedelta(-1))
    with pytest.raises(ValueError, match="count must not be negative"):
        TimeAggregate(**{**args, "count": -1}, active_time=Timedelta(0))
    with pytest.raises(TypeError, match="count must be an int, got float 1.0"):
        TimeAggregate(**{**args, "count": 1.0}, active_time=Timedelta(0))
    with pytest.raises(TypeError):
        TimeAggregate(**{**args, "timestamp": 0}, active_time=Timedelta(0))


# Made by the attrs-based Timestamp and Timedelta of earlier mqsync versions (protocol 2).
OLD_TIMESTAMP_PICKLE = (b"\x80\x02cmqsync.timeseries\nTimestamp\nq\x00)\x81q\x01}q\x02X\x08\x00"
                        b"\x00\x00posix_nsq\x03\x8a\x08\x15\xffs\xae=KV\x16sb.")
OLD_TIMEDELTA_PICKLE = (b"\x80\x02cmqsync.timeseries\nTimedelta\nq\x00)\x81q\x01}q\x02X\x02\x00"
                        b"\x00\x00nsq\x03J$\xfa\xff\xffsb.")


def test_pickles_of_earlier_versions_still_load():
    assert pickle.loads(OLD_TIMESTAMP_PICKLE) == Timestamp(1_609_556_645_123_456_789)
    assert pickle.loads(OLD_TIMEDELTA_PICKLE) == Timedelta(-1500)


@pytest.mark.parametrize("made", [Timestamp(5), Timedelta(5)], ids=["Timestamp", "Timedelta"])
def test_time_values_can_be_weakly_referenced(made):
    reference = weakref.ref(made)
    assert reference() is made

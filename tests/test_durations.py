"""One rule for every duration argument: Timedelta.coerce, and each public entry point using it.

A duration is a ``Timedelta``, a ``datetime.timedelta``, a string with a unit (``"5s"``) or a
number of **seconds**; a time (``start_time``, ``send(time, ...)``) given as an int stays
POSIX nanoseconds.
"""

from __future__ import annotations

import argparse
import datetime
import math
from decimal import Decimal
from fractions import Fraction

import pytest

import mqsync
from mqsync._proto import HistoryRequest
from mqsync.cli._common import duration_argument
from mqsync.db import Db, SqliteStore
from mqsync.errors import ConfigError
from mqsync.history import HistoryClient, encode_history_request
from mqsync.scheduler import Grid, Scheduler
from mqsync.timeseries import Timedelta, Timestamp
from mqsync_plugins.dummy import DummySource
from tests._support import wait_until

S = 1_000_000_000
MS = 1_000_000
EXPECTED = "a Timedelta, a datetime.timedelta, a string with a unit such as '10s', or a number "\
    "of seconds"


# -- the converter ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "ns"),
    [
        (Timedelta(7), 7),
        (Timedelta(-7), -7),
        (datetime.timedelta(milliseconds=3), 3 * MS),
        (datetime.timedelta(days=1, microseconds=1), 86_400 * S + 1_000),
        ("5s", 5 * S),
        ("100ms", 100 * MS),
        ("1min", 60 * S),
        ("2 h", 7_200 * S),
        ("1d", 86_400 * S),
        ("250us", 250_000),
        ("250μs", 250_000),
        ("42ns", 42),
        ("1.5s", 1_500 * MS),
        ("1,5s", 1_500 * MS),
        ("-2s", -2 * S),
        ("60", 60 * S),  # a string without a unit is seconds, as a number is
        ("3 seconds", 3 * S),
        (5, 5 * S),  # an int is seconds, not nanoseconds
        (0, 0),
        (-1, -S),
        (0.25, 250 * MS),
        (1e-9, 1),
        (Decimal("0.5"), 500 * MS),
        (Fraction(1, 3), 333_333_333),
    ],
)
def test_every_accepted_form(value, ns):
    duration = Timedelta.coerce(value, name="period")
    assert type(duration) is Timedelta and duration.ns == ns


def test_a_timedelta_is_returned_as_is():
    period = Timedelta(5)
    assert Timedelta.coerce(period, name="period", positive=True) is period


@pytest.mark.parametrize(
    ("value", "flags", "error", "message"),
    [
        # not a duration at all
        (True, {}, TypeError, f"period must be {EXPECTED}; got bool True"),
        (False, {}, TypeError, f"period must be {EXPECTED}; got bool False"),
        (None, {}, TypeError, f"period must be {EXPECTED}; got NoneType None"),
        (b"5s", {}, TypeError, f"period must be {EXPECTED}; got bytes b'5s'"),
        ([5], {}, TypeError, f"period must be {EXPECTED}; got list [5]"),
        (Timestamp(5), {}, TypeError, f"period must be {EXPECTED}; got Timestamp "),
        # strings that are no duration
        ("abc", {}, ValueError,
         "invalid period 'abc': expected a number and a unit, like '10s', '1.5ms' or '60'"),
        ("", {}, ValueError,
         "invalid period '': expected a number and a unit, like '10s', '1.5ms' or '60'"),
        ("5S", {}, ValueError,
         "invalid period '5S': unit must be one of ns, us, ms, s, min, h, d"),
        ("5 sec", {}, ValueError,
         "invalid period '5 sec': unit must be one of ns, us, ms, s, min, h, d"),
        ("1.5ns", {}, ValueError, "invalid period '1.5ns': not a whole number of nanoseconds"),
        # numbers that are no duration
        (math.nan, {}, ValueError, "period must be a finite number of seconds, got nan"),
        (math.inf, {}, ValueError, "period must be a finite number of seconds, got inf"),
        (-math.inf, {}, ValueError, "period must be a finite number of seconds, got -inf"),
        (Decimal("NaN"), {}, ValueError,
         "period must be a finite number of seconds, got Decimal('NaN')"),
        # a sign the caller refuses
        (0, {"positive": True}, ValueError, "period must be positive, got 0 s"),
        (-1, {"positive": True}, ValueError, "period must be positive, got -1 s"),
        (1e-12, {"positive": True}, ValueError,
         "period must be at least 1 ns, got 1e-12 s (rounds to 0 ns)"),
        ("0s", {"positive": True}, ValueError, "period must be positive, got '0s'"),
        (Timedelta(0), {"positive": True}, ValueError,
         "period must be positive, got Timedelta(ns=0)"),
        (datetime.timedelta(0), {"positive": True}, ValueError,
         "period must be positive, got datetime.timedelta(0)"),
        (-0.5, {"negative": False}, ValueError, "period must not be negative, got -0.5 s"),
        ("-1ms", {"negative": False}, ValueError, "period must not be negative, got '-1ms'"),
        (Timedelta(-1), {"negative": False}, ValueError,
         "period must not be negative, got Timedelta(ns=-1)"),
    ],
)
def test_every_refused_form_and_its_message(value, flags, error, message):
    with pytest.raises(error) as info:
        Timedelta.coerce(value, name="period", **flags)
    assert type(info.value) is error
    assert str(info.value).startswith(message)


def test_zero_is_allowed_unless_positive_is_asked_for():
    assert Timedelta.coerce(0, name="interval_max", negative=False) == Timedelta(0)
    assert Timedelta.coerce("-1s", name="offset") == Timedelta.from_s(-1)


# -- the entry points ---------------------------------------------------------------------------


FIVE_SECONDS = [5, 5.0, "5s", "5000ms", Timedelta.from_s(5), datetime.timedelta(seconds=5)]


class Ticker(mqsync.IntervalSource):
    def update(self) -> None:
        pass


@pytest.mark.parametrize("period", FIVE_SECONDS)
def test_interval_source_period(period):
    source = Ticker("source-durations", period=period)
    assert source.period == Timedelta.from_s(5)
    source.period = "250ms"
    assert source.period == Timedelta(250 * MS)
    source.period = period
    assert source.period == Timedelta.from_s(5)


def test_interval_source_refuses_what_the_rule_refuses():
    with pytest.raises(ValueError, match=r"^period must be positive, got 0 s$"):
        Ticker("source-durations", period=0)
    with pytest.raises(TypeError, match=r"^period must be .*; got bool True$"):
        Ticker("source-durations", period=True)
    with pytest.raises(ValueError, match=r"^offset must be a finite number of seconds, got nan$"):
        Ticker("source-durations", period=1, align=True, offset=math.nan)
    # offset "-250ms" of an aligned 1 s grid: slots at wall-clock x.750 s
    clock = StoppedClock(mono_ns=7 * S, wall_ns=1_700_000_000 * S)
    assert Grid(1, align=True, offset="-250ms", clock=clock).due(7 * S) == 7 * S + 750 * MS


class StoppedClock:
    """A clock that stands still (a Grid only reads it here)."""

    def __init__(self, mono_ns: int, wall_ns: int):
        self.mono_ns, self.wall = mono_ns, wall_ns

    def monotonic_ns(self) -> int:
        return self.mono_ns

    def wall_ns(self) -> int:
        return self.wall

    def wait(self, event, timeout_s):
        raise AssertionError("a Grid never waits")


@pytest.mark.parametrize("period", FIVE_SECONDS)
def test_scheduler_period(period):
    scheduler = Scheduler(period)
    assert (scheduler.period_ns, scheduler.period) == (5 * S, 5.0)


@pytest.mark.parametrize("expires", FIVE_SECONDS)
def test_subscriber_expires(expires):
    subscriber = mqsync.Subscriber("subscriber-durations", metrics=["a.b"], expires=expires)
    assert subscriber.expires == 5.0


def test_subscriber_refuses_what_the_rule_refuses():
    with pytest.raises(ValueError, match=r"^expires must be positive, got '0s'$"):
        mqsync.Subscriber("subscriber-durations", metrics=["a.b"], expires="0s")
    with pytest.raises(TypeError, match=r"^expires must be .*; got bool True$"):
        mqsync.Subscriber("subscriber-durations", metrics=["a.b"], expires=True)


class _Sent(Exception):
    pass


class CapturingSink(mqsync.Sink):
    """Keeps the arguments of its RPCs instead of sending them."""

    def rpc(self, function, timeout=None, **arguments):
        self.sent = (function, arguments)
        raise _Sent


@pytest.mark.parametrize("expires", FIVE_SECONDS)
def test_sink_subscribe_expires(expires):
    sink = CapturingSink("sink-durations")
    with pytest.raises(_Sent):
        sink.subscribe(["a.b"], expires=expires)
    function, arguments = sink.sent
    assert function == "sink.subscribe" and arguments["expires"] == 5.0


def test_sink_subscribe_refuses_what_the_rule_refuses():
    sink = CapturingSink("sink-durations")
    with pytest.raises(ValueError, match=r"^expires must be positive, got -1 s$"):
        sink.subscribe(["a.b"], expires=-1)
    with pytest.raises(ValueError, match=r"^invalid expires '1 hour later'"):
        sink.subscribe(["a.b"], expires="1 hour later")
    assert not hasattr(sink, "sent")


@pytest.mark.parametrize("interval_max", FIVE_SECONDS)
def test_history_request_interval_max(interval_max):
    request = HistoryRequest.FromString(encode_history_request(interval_max=interval_max))
    assert request.interval_max == 5 * S


def test_history_request_times_are_nanoseconds_and_durations_seconds():
    request = HistoryRequest.FromString(encode_history_request(5, 10, 5))
    assert (request.start_time, request.end_time, request.interval_max) == (5, 10, 5 * S)
    with pytest.raises(ValueError, match=r"^interval_max must not be negative, got -5 s$"):
        encode_history_request(interval_max=-5)
    with pytest.raises(TypeError, match=r"^interval_max must be .*; got bool False$"):
        encode_history_request(interval_max=False)


def test_history_client_interval_max_on_the_embedded_network(tmp_path, unique):
    metric = f"durations.{unique}"
    t0 = 1_700_000_000 * S
    points = [(t0 + i * S, float(i)) for i in range(1, 21)]
    # the store's rollup width is 5 s: a timeline of buckets at most 5 s wide is made of them
    with SqliteStore(tmp_path / "d.db", rollup_widths=(5 * S,)) as store, \
            Db(f"db-{unique}", database=store, metrics=[metric]) as db, \
            mqsync.Source(f"source-{unique}") as source, \
            HistoryClient(f"history-{unique}") as history:
        for t, v in points:
            source.send(metric, t, v)
        source.flush()
        assert wait_until(lambda: db.store.count(metric) == len(points))
        timelines = [
            [(a.timestamp.posix_ns, a.count) for a in history.history_aggregate_timeline(
                metric, interval_max=interval_max, start_time=t0, end_time=t0 + 20 * S)]
            for interval_max in FIVE_SECONDS
        ]
    assert all(timeline == timelines[0] for timeline in timelines)
    assert timelines[0] == [(t0 + k * 5 * S, 5) for k in range(4)]


@pytest.mark.parametrize("period", FIVE_SECONDS[:4])
def test_plugin_period_configuration(period):
    source = DummySource("source-durations", config={"period": period})
    assert source.period == Timedelta.from_s(5)
    source.apply_config({"period": "100ms"})
    assert source.period == Timedelta(100 * MS)
    source.apply_config({"period": None, "rate": 4})
    assert source.period == Timedelta(250 * MS)


def test_plugin_period_override_and_refusals():
    assert DummySource("source-durations", period="2s").period == Timedelta.from_s(2)
    assert DummySource("source-durations", period=2).period == Timedelta.from_s(2)
    for period, message in [(0, "period must be positive, got 0 s"),
                            (True, f"period must be {EXPECTED}; got bool True"),
                            ("5 parsecs", "invalid period '5 parsecs': unit must be one of")]:
        with pytest.raises(ConfigError) as info:
            DummySource("source-durations", config={"period": period})
        assert str(info.value).startswith(message)
    with pytest.raises(ConfigError, match=r"^invalid rate inf: expected a positive number"):
        DummySource("source-durations", config={"rate": math.inf})


@pytest.mark.parametrize(("text", "seconds"), [("5", 5.0), ("5s", 5.0), ("100ms", 0.1),
                                               ("1min", 60.0)])
def test_command_line_durations(text, seconds):
    assert duration_argument(text) == seconds


def test_command_line_durations_refused():
    with pytest.raises(argparse.ArgumentTypeError, match=r"^duration must be positive, got '0'$"):
        duration_argument("0")
    with pytest.raises(argparse.ArgumentTypeError, match=r"^invalid duration '5 S'"):
        duration_argument("5 S")


def test_relative_times_take_durations():
    before = Timestamp.now()
    later, earlier = Timestamp.from_now(5), Timestamp.ago("5s")
    after = Timestamp.now()
    assert before + Timedelta.from_s(5) <= later <= after + Timedelta.from_s(5)
    assert before - Timedelta.from_s(5) <= earlier <= after - Timedelta.from_s(5)


def test_client_and_source_durations_follow_the_rule():
    source = mqsync.Source("source-durations", rpc_timeout="2min", connect_timeout=5,
                           heartbeat=0, reconnect_timeout=mqsync.Timedelta.from_s(90),
                           flush_interval="250ms", send_timeout=datetime.timedelta(seconds=3))
    assert (source.rpc_timeout, source.connect_timeout, source.heartbeat,
            source.reconnect_timeout) == (120.0, 5.0, 0.0, 90.0)
    assert (source.flush_interval, source.send_timeout) == (0.25, 3.0)
    assert mqsync.Source("source-durations", flush_interval=None).flush_interval is None
    with pytest.raises(ValueError, match="flush_interval must be positive"):
        mqsync.Source("source-durations", flush_interval=0)
    with pytest.raises(TypeError, match="rpc_timeout must be"):
        mqsync.Client("client-durations", rpc_timeout=True)
    with pytest.raises(ValueError, match="heartbeat must not be negative"):
        mqsync.Client("client-durations", heartbeat=-1)

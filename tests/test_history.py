"""History requests and the SQLite store: encoding, aggregation math, timeline bucketing.

The aggregates are checked against tests/_history_reference.py, a direct transcription of the
definition computed point by point, without rollups, ``dt`` columns or SQL.
"""

from __future__ import annotations

import math
import random
import sqlite3
import struct
from time import monotonic

import pytest

import mqsync
from mqsync._proto import HistoryRequest
from mqsync._proto import HistoryResponse as ResponseMessage
from mqsync.db import Db, SqliteStore, StoreError, TooMuchData
from mqsync.history import (
    HistoryClient,
    HistoryError,
    HistoryRequestType,
    HistoryResponse,
    HistoryResponseType,
    InvalidHistoryResponse,
    encode_history_request,
)
from tests._history_reference import (
    as_tuple,
    assert_aggregate,
    reference_aggregate,
    reference_timeline,
    same,
)
from tests._support import wait_until

HISTORY_REQUEST_HEX = "0801100218032003"
HISTORY_RESPONSE_HEX = "1203e8070a3a10000000000000f03f0000000000000040"
S = 1_000_000_000


def random_points(seed, count, start=1_000):
    rng = random.Random(seed)
    points, time = [], start
    for index in range(count):
        if rng.random() < 0.9:
            time += rng.choice([1, 2, 3, 7, 13, 50, 400])
        else:
            time += rng.randint(500, 3000)  # gaps spanning several buckets
        points.append((time, rng.choice([0.25, -1.5, 3.0, 2.0, 0.5 * index])))
    return points


@pytest.fixture
def store(tmp_path):
    with SqliteStore(tmp_path / "history.db", rollup_widths=(10, 100, 1000)) as store:
        yield store


def fill(store, metric, points, seed=0):
    rng = random.Random(seed)
    index = 0
    while index < len(points):
        size = rng.randint(1, 200)
        chunk = points[index:index + size]
        store.insert(metric, [t for t, _ in chunk], [v for _, v in chunk])
        index += size


# -- request and response encoding -------------------------------------------------------------


def test_request_encoding_matches_the_golden_vector():
    body = encode_history_request(mqsync.Timestamp(1), 2, mqsync.Timedelta(3),
                                  HistoryRequestType.FLEX_TIMELINE)
    assert body.hex() == HISTORY_REQUEST_HEX
    request = HistoryRequest.FromString(body)
    assert (request.start_time, request.end_time, request.interval_max, request.type) == (
        1, 2, 3, HistoryRequest.FLEX_TIMELINE)


def test_request_encoding_leaves_none_unset_and_checks_arguments():
    assert encode_history_request() == b""  # all unset, type AGGREGATE_TIMELINE (0)
    last = HistoryRequest.FromString(encode_history_request(
        request_type=HistoryRequestType.LAST_VALUE))
    assert (last.start_time, last.end_time, last.type) == (0, 0, HistoryRequest.LAST_VALUE)
    assert HistoryRequest.FromString(encode_history_request(
        interval_max="1min")).interval_max == 60 * S
    assert [t.value for t in HistoryRequestType] == [0, 1, 2, 3]
    assert HistoryRequest.FromString(encode_history_request(
        interval_max=5)).interval_max == 5 * S  # a number is seconds
    with pytest.raises(TypeError, match="interval_max must be a Timedelta"):
        encode_history_request(interval_max=True)
    with pytest.raises(TypeError, match="start_time must be a Timestamp"):
        encode_history_request(start_time=1.5)
    with pytest.raises(ValueError, match="after end_time"):
        encode_history_request(3, 2)
    with pytest.raises(ValueError, match="must not be negative"):
        encode_history_request(interval_max=mqsync.Timedelta(-1))


def test_response_golden_vector_is_read_as_values():
    response = HistoryResponse(ResponseMessage.FromString(bytes.fromhex(HISTORY_RESPONSE_HEX)),
                               0.25)
    assert response.mode is HistoryResponseType.VALUES
    assert list(response.values()) == [mqsync.TimeValue(mqsync.Timestamp(1000), 1.0),
                                       mqsync.TimeValue(mqsync.Timestamp(1010), 2.0)]
    assert response.request_duration == 0.25
    with pytest.raises(ValueError, match="holds VALUES, not aggregates"):
        list(response.aggregates())
    pair, = response.aggregates(convert=True)
    assert pair == mqsync.TimeAggregate(mqsync.Timestamp(1000), 2.0, 2.0, 2.0, 1, 20.0,
                                        mqsync.Timedelta(10))


def test_response_consistency_rules_of_the_official_client():
    with pytest.raises(HistoryError, match="request failed on database: boom"):
        HistoryResponse(ResponseMessage(error="boom"))
    with pytest.raises(InvalidHistoryResponse, match="no value count matches"):
        HistoryResponse(ResponseMessage(time_delta=[1, 2], value=[1.0]))
    with pytest.raises(InvalidHistoryResponse, match="time_delta empty"):
        HistoryResponse(ResponseMessage(value=[1.0]))
    aggregate = ResponseMessage.Aggregate(minimum=1, maximum=3, sum=4, count=2, integral=20,
                                          active_time=10)
    with pytest.raises(InvalidHistoryResponse, match="values and aggregates"):
        HistoryResponse(ResponseMessage(time_delta=[5], aggregate=[aggregate], value=[1.0]))
    response = HistoryResponse(ResponseMessage(time_delta=[5, 10], aggregate=[aggregate] * 2))
    assert response.mode is HistoryResponseType.AGGREGATES
    assert [a.timestamp.posix_ns for a in response.aggregates()] == [5, 15]
    assert [v.value for v in response.values(convert=True)] == [2.0, 2.0]  # integral/active
    assert HistoryResponse(ResponseMessage()).mode is HistoryResponseType.EMPTY
    negative = ResponseMessage.Aggregate(count=1, active_time=-1)
    with pytest.raises(InvalidHistoryResponse, match="invalid aggregate"):
        list(HistoryResponse(ResponseMessage(time_delta=[5], aggregate=[negative])).aggregates())


# -- the store: ingest -------------------------------------------------------------------------


def test_store_keeps_every_double_bit_for_bit_keeps_nan_and_drops_late_points(store):
    values = [-0.0, math.inf, -math.inf, 5e-324, 1.7976931348623157e308, 0.1, 2.0**63, 3]
    result = store.insert("m", list(range(10, 10 + len(values))), values)
    assert result.stored == len(values)
    times, got = store.raw("m")
    assert times == list(range(10, 10 + len(values)))
    assert [struct.pack("<d", v) for v in got] == [struct.pack("<d", v) for v in values]
    assert type(got[-1]) is float
    result = store.insert("m", [12, 17, 18, 19], [1.0, 2.0, math.nan, 4.0])
    assert result[:3] == (2, 2, 0) and result.nan == 0  # nan: kept for old readers, always 0
    times, got = store.raw("m", 18)
    assert times == [18, 19] and math.isnan(got[0]) and got[1] == 4.0
    assert store.last_value("m") == (19, 4.0)
    result = store.insert("m", [20, 21, 22], [math.nan, -math.nan, 5.0])
    assert (result.stored, result.non_monotonic) == (3, 0)
    times, got = store.raw("m", 20)
    assert times == [20, 21, 22] and math.isnan(got[0]) and math.isnan(got[1]) and got[2] == 5.0
    assert all(type(v) is float for v in got)
    assert store.count("m") == len(values) + 5
    store.insert("m", [23], [math.nan])
    time, value = store.last_value("m")
    assert time == 23 and math.isnan(value)


def test_a_redelivered_chunk_is_stored_once_even_after_reopening(tmp_path):
    path = tmp_path / "reopen.db"
    with SqliteStore(path, rollup_widths=(10, 100)) as store:
        store.insert_many([("a", [1, 2, 3], [1.0, 2.0, 3.0]), ("b", [5], [0.5])])
    with SqliteStore(path, rollup_widths=(S,)) as store:
        assert store.rollup_widths == (10, 100)  # the file keeps its widths
        assert store.insert("a", [2, 3, 4], [2.0, 3.0, 4.0]).stored == 1
        assert store.raw("a") == ([1, 2, 3, 4], [1.0, 2.0, 3.0, 4.0])
        assert store.metrics() == ["a", "b"]
        assert store.aggregate("a").integral == 2.0 + 3.0 + 4.0


def test_a_failed_transaction_stores_nothing(store):
    store.insert("a", [1, 2], [1.0, 2.0])
    with pytest.raises(ValueError, match="2 times but 1 values"):
        store.insert_many([("a", [3], [3.0]), ("b", [1, 2], [1.0])])
    assert store.count("a") == 2 and not store.has_metric("b")


# -- the store: aggregation math -----------------------------------------------------------------


def test_aggregate_of_a_hand_computed_example(store):
    # 2.0 holds over (10, 20], 4.0 over (20, 40], -1.0 over (40, 45]
    store.insert("m", [10, 20, 40, 45], [1.0, 2.0, 4.0, -1.0])
    whole = store.aggregate("m")
    assert as_tuple(whole) == (4, 6.0, -1.0, 4.0, 2.0 * 10 + 4.0 * 20 - 1.0 * 5, 35)
    assert whole.timestamp == 0
    assert whole.to_time_aggregate().mean == pytest.approx(95 / 35)
    # (15, 30]: point 20 is in; 2.0 holds over (15, 20], 4.0 over (20, 30] (from point 40)
    part = store.aggregate("m", 15, 30)
    assert as_tuple(part) == (1, 2.0, 2.0, 4.0, 2.0 * 5 + 4.0 * 10, 15)
    assert part.timestamp == 15
    # inside one interval: no point, but a known value
    assert as_tuple(store.aggregate("m", 25, 30)) == (0, 0.0, 4.0, 4.0, 20.0, 5)
    # before the first and after the last point nothing is known
    assert as_tuple(store.aggregate("m", 0, 10)) == (1, 1.0, 1.0, 1.0, 0.0, 0)
    assert as_tuple(store.aggregate("m", 45, 100)) == (0, 0.0, math.inf, -math.inf, 0.0, 0)
    assert as_tuple(store.aggregate("nothing")) == (0, 0.0, math.inf, -math.inf, 0.0, 0)
    with pytest.raises(StoreError, match="start 30 ns is not before end 30 ns"):
        store.aggregate("m", 30, 30)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_aggregates_match_the_reference_over_random_ranges(store, seed):
    points = random_points(seed, 2500)
    fill(store, "m", points, seed)
    rng = random.Random(seed)
    first, last = points[0][0], points[-1][0]
    for _ in range(120):
        start = rng.choice([None, rng.randint(first - 100, last + 100)])
        end = rng.choice([None, rng.randint(first - 100, last + 200)])
        if start is not None and end is not None and start >= end:
            continue
        assert_aggregate(store.aggregate("m", start, end),
                         reference_aggregate(points, start, end))
        # the count of a raw range, from the rollups
        assert store.count_between("m", start, end) == sum(
            1 for t, _ in points if (start is None or start <= t) and (end is None or t <= end))


def test_aggregates_of_dyadic_values_are_exact(store):
    # values k/4 and whole-second steps: every product and sum is exact in a double
    points = [(1_700_000_000 * S + i * S, (i % 37) * 0.25) for i in range(5000)]
    fill(store, "m", points)
    for start, end in [(None, None), (points[100][0] - S // 2, points[4000][0] + 1),
                       (points[7][0], points[8][0])]:
        assert_aggregate(store.aggregate("m", start, end),
                         reference_aggregate(points, start, end), exact=True)


def test_infinite_values_and_nan_sums_stay_visible(store):
    store.insert("m", [1, 2, 3, 4], [1.0, math.inf, -math.inf, 2.0])
    whole = store.aggregate("m")
    assert whole.count == 4 and whole.minimum == -math.inf and whole.maximum == math.inf
    assert math.isnan(whole.sum) and math.isnan(whole.integral)
    assert store.aggregate("m", 3, 4).integral == 2.0


# -- the store: NaN and infinities ---------------------------------------------------------------

T0 = 1_700_000_000 * S


def special_points():
    """1 Hz points with +inf, -inf and NaN in different seconds, then a second holding +inf,
    -inf and NaN together, then a second of only NaN."""
    values = [1.0, math.inf, 2.0, -math.inf, 3.0, math.nan, 4.0, 0.5]
    points = [(T0 + i * S, v) for i, v in enumerate(values)]
    end = points[-1][0]
    points += [(end + S // 4, math.inf), (end + S // 2, -math.inf), (end + 3 * S // 4, math.nan),
               (end + S, 0.25), (end + 2 * S, math.nan), (end + 3 * S, 0.75)]
    return points


@pytest.fixture
def seconds_store(tmp_path):
    """A store with the default rollup widths (1 s to 100 000 s)."""
    with SqliteStore(tmp_path / "seconds.db") as store:
        yield store


def test_infinities_in_different_seconds_aggregate_to_nan(seconds_store):
    # the reported bug: SQLite's sum() of +inf and -inf is NULL, "float += None" failed
    store = seconds_store
    store.insert("m", [T0 + i * S for i in range(6)], [1.0, math.inf, 2.0, -math.inf, 3.0, 4.0])
    whole = store.aggregate("m")
    assert (whole.count, whole.minimum, whole.maximum, whole.active_time) == (
        6, -math.inf, math.inf, 5 * S)
    assert math.isnan(whole.sum) and math.isnan(whole.integral)
    # +inf alone, in whole 1 s rollups and cut at the start of the range: +inf, not NaN
    high = store.aggregate("m", T0 + S // 2, T0 + 2 * S)
    assert as_tuple(high) == (2, math.inf, 2.0, math.inf, math.inf, 3 * S // 2)
    low = store.aggregate("m", T0 + 2 * S, T0 + 5 * S)
    assert as_tuple(low) == (3, -math.inf, -math.inf, 4.0, -math.inf, 3 * S)
    width, rows = store.aggregate_timeline("m", None, None, 10 * S)
    assert width == 10 * S and [row.timestamp for row in rows] == [T0 - 10 * S, T0]
    assert as_tuple(rows[0]) == (1, 1.0, 1.0, 1.0, 0.0, 0)
    assert (rows[1].count, rows[1].minimum, rows[1].maximum) == (5, -math.inf, math.inf)
    assert math.isnan(rows[1].sum) and math.isnan(rows[1].integral)
    _, rows = store.aggregate_timeline("m", None, None, S)
    assert [(row.sum, row.integral) for row in rows[1:]] == [
        (math.inf, math.inf), (2.0, 2.0 * S), (-math.inf, -math.inf), (3.0, 3.0 * S),
        (4.0, 4.0 * S)]


@pytest.mark.parametrize("interval_max", [S // 8, S // 3, S, 10 * S, 100 * S])
def test_timelines_over_nan_and_infinities_match_the_reference(seconds_store, interval_max):
    points = special_points()
    fill(seconds_store, "m", points, seed=interval_max)
    first, last = points[0][0], points[-1][0]
    for start, end in [(None, None), (first + S // 2, last - S // 3), (first + 5 * S, None),
                       (first + 8 * S, first + 9 * S), (last - S, last)]:
        width, rows = seconds_store.aggregate_timeline("m", start, end, interval_max)
        expected = reference_timeline(points, start, end, width)
        assert [row.timestamp for row in rows] == [e[0] for e in expected]
        for row, reference in zip(rows, expected):
            assert_aggregate(row, reference[1:], exact=True)


def test_aggregates_over_nan_and_infinities_match_the_reference(seconds_store):
    points = special_points()
    fill(seconds_store, "m", points)
    times = [t for t, _ in points]
    bounds = sorted({T0 - S, *times, *(t - 1 for t in times), *(t + S // 3 for t in times)})
    for start in [None, *bounds]:
        for end in [None, *bounds]:
            if start is not None and end is not None and start >= end:
                continue
            assert_aggregate(seconds_store.aggregate("m", start, end),
                             reference_aggregate(points, start, end), exact=True)
    got_times, got_values = seconds_store.raw("m")
    assert got_times == times
    assert same(got_values, [v for _, v in points])


def test_minimum_and_maximum_ignore_nan_unless_every_value_is_nan(store):
    store.insert("m", [10, 20, 30, 40], [math.nan, 1.0, math.nan, 3.0])
    whole = store.aggregate("m")
    assert (whole.count, whole.minimum, whole.maximum, whole.active_time) == (4, 1.0, 3.0, 30)
    assert math.isnan(whole.sum) and math.isnan(whole.integral)  # NaN held over (20, 30]
    # the first point holds over no time: even a NaN adds nothing to the integral
    assert same(as_tuple(store.aggregate("m", 0, 20)), (2, math.nan, 1.0, 1.0, 10.0, 10))
    only_nan = store.aggregate("m", 21, 29)  # inside the interval of the NaN at 30
    assert (only_nan.count, only_nan.sum, only_nan.active_time) == (0, 0.0, 8)
    assert all(map(math.isnan, (only_nan.minimum, only_nan.maximum, only_nan.integral)))
    first = store.aggregate("m", 0, 10)
    assert (first.count, first.integral, first.active_time) == (1, 0.0, 0)
    assert all(map(math.isnan, (first.sum, first.minimum, first.maximum)))
    # one rollup bucket from one chunk, NaN first
    store.insert("b", [11, 12, 13, 14], [math.nan, 2.0, math.nan, 1.0])
    (bucket,) = store.aggregate_timeline("b", None, None, 10)[1]
    assert (bucket.timestamp, bucket.count, bucket.minimum, bucket.maximum) == (10, 4, 1.0, 2.0)


def test_rollups_keep_nan_apart_from_numbers_across_chunks(store):
    # one point per insert: every rollup row after the first is an upsert
    points = [(11, math.nan), (12, math.nan), (13, 5.0), (14, math.nan), (21, math.nan),
              (22, math.nan), (31, -2.0), (32, math.inf), (41, 0.0), (51, -math.inf),
              (52, math.inf), (61, 1.0), (1001, math.nan), (1002, 7.0), (2500, 2.0)]
    for time, value in points:
        store.insert("m", [time], [value])
    _, rows = store.aggregate_timeline("m", None, None, 10)
    first = rows[0]  # (10, 20]: NaN, NaN, 5.0, NaN
    assert (first.timestamp, first.count, first.minimum, first.maximum) == (10, 4, 5.0, 5.0)
    assert math.isnan(first.sum) and math.isnan(first.integral)
    only_nan = store.aggregate("m", 20, 22)
    assert only_nan.count == 2 and math.isnan(only_nan.minimum) and math.isnan(only_nan.maximum)
    expected = reference_timeline(points, None, None, 10)
    assert [row.timestamp for row in rows] == [e[0] for e in expected]
    for row, reference in zip(rows, expected):
        assert_aggregate(row, reference[1:], exact=True)
    for interval_max in (100, 1000):
        width, rows = store.aggregate_timeline("m", None, None, interval_max)
        expected = reference_timeline(points, None, None, width)
        assert [row.timestamp for row in rows] == [e[0] for e in expected]
        for row, reference in zip(rows, expected):
            assert_aggregate(row, reference[1:], exact=True)
    for start, end in [(10, 20), (10, 30), (20, 30), (10, 40), (10, 50), (0, 1000), (40, 1000),
                       (500, 2500), (None, None), (1000, 2000), (55, 2499)]:
        assert_aggregate(store.aggregate("m", start, end),
                         reference_aggregate(points, start, end), exact=True)


def test_an_interval_cut_at_the_range_start_is_multiplied_not_subtracted(store):
    store.insert("inf", [10, 20, 30], [1.0, math.inf, 2.0])
    assert as_tuple(store.aggregate("inf", 15, 30)) == (2, math.inf, 2.0, math.inf, math.inf,
                                                        15)
    _, rows = store.aggregate_timeline("inf", 14, 30, 3)  # the raw points, grouped in SQL
    assert [(row.timestamp, row.integral) for row in rows] == [
        (12, 2 * math.inf), (15, math.inf), (18, math.inf), (21, 6.0), (24, 6.0), (27, 6.0)]
    # 1e300 held over 1 s overflows, its last microsecond does not
    store.insert("huge", [0, S], [0.0, 1e300])
    for start in (S - 1000, S - 10, S - 7):
        assert store.aggregate("huge", start, S).integral == 1e300 * (S - start)
    _, rows = store.aggregate_timeline("huge", S - 1000, S, 1000)  # from the 1000 ns rollup
    assert as_tuple(rows[0]) == (1, 1e300, 1e300, 1e300, 1e300 * 1000, 1000)
    assert math.isinf(store.aggregate("huge").integral)


SCHEMA_1_TABLES = """
CREATE TABLE points (
    metric INTEGER NOT NULL, time INTEGER NOT NULL, value NOT NULL, dt INTEGER NOT NULL,
    PRIMARY KEY (metric, time)) WITHOUT ROWID;
CREATE TABLE rollups (
    metric INTEGER NOT NULL, width INTEGER NOT NULL, start INTEGER NOT NULL,
    count INTEGER NOT NULL, sum, minimum NOT NULL, maximum NOT NULL, integral,
    active INTEGER NOT NULL, first_time INTEGER NOT NULL, first_dt INTEGER NOT NULL,
    first_value NOT NULL,
    PRIMARY KEY (metric, width, start)) WITHOUT ROWID;
"""


def test_a_schema_1_file_is_converted_when_opened(tmp_path):
    path = tmp_path / "old.db"
    # schema 1 had no NaN; its rollup integrals included the first point, inf x dt as well
    points = [(i * 7, [0.25, -1.5, 3.0, 2.0][i % 4]) for i in range(1, 400)]
    points[40] = (points[40][0], math.inf)  # the first point of the 10 ns bucket (280, 290]
    points[41] = (points[41][0], -math.inf)
    points[150] = (points[150][0], 1e300)  # 1e300 x 7 ns is finite; 1e308 x 7 ns overflows
    points[200] = (points[200][0], 1e308)
    with SqliteStore(path, rollup_widths=(10, 100, 1000)) as store:
        fill(store, "m", points)
        new_rollups = store._reader.execute("SELECT * FROM rollups ORDER BY 1, 2, 3").fetchall()
    connection = sqlite3.connect(path, isolation_level=None)
    connection.executescript(
        "DROP TABLE points; ALTER TABLE rollups RENAME TO rollups_2;" + SCHEMA_1_TABLES +
        "UPDATE meta SET value = '1' WHERE key = 'schema';"
        "INSERT INTO rollups SELECT metric, width, start, count, sum, minimum, maximum,"
        " integral + CASE WHEN first_dt = 0 THEN 0.0 ELSE first_value * first_dt END,"
        " active + first_dt, first_time, first_dt, first_value FROM rollups_2;"
        "DROP TABLE rollups_2;")
    times = [t for t, _ in points]
    dts = [times[0] - times[0]] + [b - a for a, b in zip(times, times[1:])]
    connection.executemany("INSERT INTO points VALUES (1, ?, ?, ?)",
                           [(t, v, dt) for (t, v), dt in zip(points, dts)])
    with pytest.raises(sqlite3.IntegrityError, match="NOT NULL"):
        connection.execute("INSERT INTO points VALUES (1, 99999, ?, 1)", (math.nan,))
    connection.close()

    with SqliteStore(path) as store:
        assert store.rollup_widths == (10, 100, 1000)
        rollups = store._reader.execute("SELECT * FROM rollups ORDER BY 1, 2, 3").fetchall()
        assert len(rollups) == len(new_rollups)
        for got, expected in zip(rollups, new_rollups):
            assert got[:5] == expected[:5] and got[6:] == expected[6:]
            assert got[5] == pytest.approx(expected[5], rel=1e-12, abs=1e-9), got
        assert dict(store._reader.execute("SELECT key, value FROM meta"))["schema"] == "2"
        for start, end in [(None, None), (270, 300), (200, 1100), (1049, 1410), (2000, 2800)]:
            assert_aggregate(store.aggregate("m", start, end),
                             reference_aggregate(points, start, end))
        assert store.insert("m", [3000, 3001], [math.nan, 1.0]).stored == 2
        assert math.isnan(store.raw("m", 3000, 3000)[1][0])
    with SqliteStore(path) as store:  # converted once
        assert store.count("m") == len(points) + 2


def test_points_out_of_the_time_range_are_dropped_and_counted(store):
    limit = 2**62
    times = [-(2**63), -limit, -limit + 1, 0, limit - 1, limit, 2**63 - 1, 2**64]
    result = store.insert("m", times, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    assert (result.stored, result.non_monotonic, result.out_of_range) == (3, 0, 5)
    assert store.raw("m") == ([-limit + 1, 0, limit - 1], [3.0, 4.0, 5.0])
    assert as_tuple(store.aggregate("m")) == (3, 12.0, 3.0, 5.0, 4.0 * (limit - 1) + 5.0 * (
        limit - 1), 2 * limit - 2)
    assert as_tuple(store.aggregate("m", -(2**63), 2**63 - 1)) == as_tuple(store.aggregate("m"))
    _, rows = store.aggregate_timeline("m", limit - 2000, None, 1000)
    bucket = (limit - 2) // 1000 * 1000
    assert [(row.timestamp, row.count, row.active_time) for row in rows] == [
        (bucket - 2000, 0, 1000), (bucket - 1000, 0, 1000), (bucket, 1, limit - 1 - bucket)]
    assert store.insert("m", [limit - 2, limit - 1, limit], [0.0] * 3) == (0, 2, 0, 1)
    with pytest.raises(mqsync.ConfigError, match="at most 2305843009213693952"):
        SqliteStore(store.path.with_name("wide.db"), rollup_widths=(2**62,))


# -- the store: aggregate timelines --------------------------------------------------------------


@pytest.mark.parametrize("interval_max", [3, 10, 55, 100, 250, 1000, 5000])
def test_timeline_buckets_match_the_reference(store, interval_max):
    points = random_points(7, 2000)
    fill(store, "m", points, 7)
    rng = random.Random(interval_max)
    first, last = points[0][0], points[-1][0]
    reach = 2000 * interval_max  # ranges of at most ~2000 buckets keep the reference quick
    ranges = []
    for _ in range(12):
        length = rng.randint(1, reach)
        point = rng.randint(first - 100, last + 100)
        ranges += [(point, point + length), (None, first + length), (last - length, None)]
    unbounded = [(None, None)] if last - first < reach else []
    for start, end in unbounded + rng.sample(ranges, 12):
        width, rows = store.aggregate_timeline("m", start, end, interval_max)
        # the largest rollup width not above interval_max, else interval_max itself
        assert width == max([w for w in (10, 100, 1000) if w <= interval_max],
                            default=interval_max)
        expected = reference_timeline(points, start, end, width)
        assert [row.timestamp for row in rows] == [e[0] for e in expected]
        for row, reference in zip(rows, expected):
            assert row.timestamp % width == 0
            assert_aggregate(row, reference[1:])


def test_timeline_buckets_cover_the_range_and_span_at_most_interval_max(store):
    points = [(i * 7, float(i % 5)) for i in range(1, 3000)]
    fill(store, "m", points)
    start, end = 1234, 15_000
    width, rows = store.aggregate_timeline("m", start, end, 450)
    assert width == 100 <= 450
    starts = [row.timestamp for row in rows]
    assert starts == list(range(1200, 15_000, 100))  # consecutive, aligned, no gaps
    # the complete buckets hold every point of the range, once
    inside = [t for t, _ in points if starts[0] < t <= starts[-1] + width]
    assert sum(row.count for row in rows) == len(inside)
    assert sum(row.active_time for row in rows) == starts[-1] + width - starts[0]


def test_timeline_limits_and_errors(store):
    store.insert("m", [S, 2 * S, 1000 * S], [1.0, 2.0, 3.0])
    store.max_buckets = 50
    with pytest.raises(TooMuchData, match="more than 50"):
        store.aggregate_timeline("m", None, None, 5)
    with pytest.raises(StoreError, match="interval_max must be a positive"):
        store.aggregate_timeline("m", None, None, 0)
    assert store.aggregate_timeline("unknown", None, None, 10) == (10, [])
    store.max_points = 2
    with pytest.raises(TooMuchData, match="3 points of .m. in the requested range, more than"):
        store.raw("m")
    assert store.raw("m", 2 * S) == ([2 * S, 1000 * S], [2.0, 3.0])


def test_default_rollups_answer_a_day_of_one_hertz_data(tmp_path):
    day = [(1_700_000_000 * S + i * S, float(i % 100)) for i in range(86_400)]
    with SqliteStore(tmp_path / "day.db") as store:
        assert store.insert("m", [t for t, _ in day], [v for _, v in day]).stored == 86_400
        assert_aggregate(store.aggregate("m"), reference_aggregate(day, None, None), exact=True)
        start, end = day[1000][0] + 123, day[80_000][0] - 7
        assert_aggregate(store.aggregate("m", start, end), reference_aggregate(day, start, end),
                         exact=True)
        width, rows = store.aggregate_timeline("m", start, end, 600 * S)
        assert width == 100 * S
        expected = reference_timeline(day, start, end, width)
        assert [(r.timestamp, *as_tuple(r)) for r in rows] == expected


# -- the database's answers ----------------------------------------------------------------------


@pytest.fixture
def db(tmp_path):
    store = SqliteStore(tmp_path / "db.db", rollup_widths=(10, 100))
    store.insert("m", [10, 20, 40, 45], [1.0, 2.0, 4.0, -1.0])
    yield Db("db-unit", database=store)
    store.close()


def answer(db, request_type, start=None, end=None, interval_max=None, metric="m"):
    body = encode_history_request(start, end,
                                  None if interval_max is None else mqsync.Timedelta(interval_max),
                                  request_type)
    return db.history_response(metric, body)


def test_database_answers_each_request_type(db):
    last = answer(db, HistoryRequestType.LAST_VALUE)
    assert (list(last.time_delta), list(last.value), last.metric) == ([45], [-1.0], "m")
    aggregate = answer(db, HistoryRequestType.AGGREGATE, 15, 30)
    assert list(aggregate.time_delta) == [15]
    assert (aggregate.aggregate[0].count, aggregate.aggregate[0].integral,
            aggregate.aggregate[0].active_time) == (1, 50.0, 15)
    raw = answer(db, HistoryRequestType.FLEX_TIMELINE, 20, 45, interval_max=0)
    assert (list(raw.time_delta), list(raw.value)) == ([20, 20, 5], [2.0, 4.0, -1.0])
    timeline = answer(db, HistoryRequestType.AGGREGATE_TIMELINE, interval_max=10)
    assert list(timeline.time_delta) == [0, 10, 10, 10, 10]
    assert [a.count for a in timeline.aggregate] == [1, 1, 0, 1, 1]
    assert [a.active_time for a in timeline.aggregate] == [0, 10, 10, 10, 5]
    # flex: 4 points in (0, 45] are fewer than 45 buckets of 1 ns -> raw values
    assert len(answer(db, HistoryRequestType.FLEX_TIMELINE, interval_max=1).value) == 4
    # ... but more than 2 buckets of 30 ns -> aggregates
    assert len(answer(db, HistoryRequestType.FLEX_TIMELINE, 1, 60, interval_max=30).aggregate)
    empty = answer(db, HistoryRequestType.FLEX_TIMELINE, 100, 200, interval_max=0)
    assert HistoryResponse(empty).mode is HistoryResponseType.EMPTY


def test_database_answers_bad_requests_with_an_error(db):
    def error(response):
        assert not response.time_delta
        return response.error

    assert "unknown metric 'other'" in error(
        answer(db, HistoryRequestType.LAST_VALUE, metric="other"))
    assert "needs interval_max > 0" in error(answer(db, HistoryRequestType.AGGREGATE_TIMELINE))
    assert "not before end" in error(answer(db, HistoryRequestType.AGGREGATE, 30, 30))
    assert "malformed history request" in error(db.history_response("m", b"\xff\xff"))
    assert "unsupported history request type 9" in error(
        db.history_response("m", HistoryRequest(type=9).SerializeToString()))
    db.store.max_points = 1
    assert "more than the 1 one response may carry" in error(
        answer(db, HistoryRequestType.FLEX_TIMELINE, interval_max=0))


def test_database_answers_requests_over_nan_and_infinities(tmp_path):
    points = special_points()
    with SqliteStore(tmp_path / "special.db") as store:
        store.insert("m", [t for t, _ in points], [v for _, v in points])
        db = Db("db-special", database=store)
        start, end = points[0][0] + S // 2, points[-2][0]
        aggregate = answer(db, HistoryRequestType.AGGREGATE, start, end)
        assert not aggregate.error and list(aggregate.time_delta) == [start]
        (got,) = HistoryResponse(aggregate).aggregates()
        assert_aggregate(got, reference_aggregate(points, start, end), exact=True)
        assert math.isnan(got.sum) and (got.minimum, got.maximum) == (-math.inf, math.inf)
        for interval_max, width in [(S, S), (10 * S, 10 * S), (S // 3, S // 3)]:
            timeline = answer(db, HistoryRequestType.AGGREGATE_TIMELINE, start, end,
                              interval_max=interval_max)
            assert not timeline.error
            got = list(HistoryResponse(timeline).aggregates())
            expected = reference_timeline(points, start, end, width)
            assert [a.timestamp.posix_ns for a in got] == [e[0] for e in expected]
            for row, reference in zip(got, expected):
                assert_aggregate(row, reference[1:], exact=True)
        raw = answer(db, HistoryRequestType.FLEX_TIMELINE, start, end, interval_max=0)
        assert not raw.error
        values = [(v.timestamp.posix_ns, v.value) for v in HistoryResponse(raw).values()]
        assert [t for t, _ in values] == [t for t, _ in points if start <= t <= end]
        assert same([v for _, v in values], [v for t, v in points if start <= t <= end])
        store.insert("m", [points[-1][0] + S], [math.nan])
        last = answer(db, HistoryRequestType.LAST_VALUE)
        assert list(last.time_delta) == [points[-1][0] + S] and math.isnan(last.value[0])
        assert "history_request_errors" not in db.stats()


# -- the whole path on the embedded network --------------------------------------------------------


def test_source_db_and_history_client_on_the_embedded_network(tmp_path, unique):
    metric = f"embedded.{unique}"
    points = [(1_700_000_000 * S + i * S // 2, (i % 9) * 0.5) for i in range(500)]
    with Db(f"db-{unique}", database=tmp_path / "e.db", metrics=[metric]) as db, \
            mqsync.Source(f"source-{unique}", chunk_size=64) as source, \
            HistoryClient(f"history-{unique}") as history:
        for t, v in points:
            source.send(metric, t, v)
        source.flush()
        assert wait_until(lambda: db.store.count(metric) == len(points))
        assert history.history_last_value(metric) == mqsync.TimeValue(
            mqsync.Timestamp(points[-1][0]), points[-1][1])
        raw = history.history_raw_timeline(metric)
        assert [(v.timestamp.posix_ns, v.value) for v in raw] == points
        assert_aggregate(history.history_aggregate(metric),
                         reference_aggregate(points, None, None), exact=True)
        timeline = history.history_aggregate_timeline(metric, interval_max="10s")
        expected = reference_timeline(points, None, None, 10 * S)
        assert [(a.timestamp.posix_ns, a.count, a.sum, a.minimum, a.maximum, a.integral_ns,
                 a.active_time.ns) for a in timeline] == expected
        assert metric in history.get_metrics()
        with pytest.raises(mqsync.RPCTimeout, match="no response to the LAST_VALUE"):
            history.history_last_value(f"{metric}.missing", timeout=0.3)
        assert db.stats()["stored_points"] == len(points)


def test_history_requests_wait_the_clients_rpc_timeout_by_default(unique):
    """No database keeps the metric: the request gives up after ``rpc_timeout``."""
    with HistoryClient(f"history-{unique}", rpc_timeout=0.4) as history:
        started = monotonic()
        with pytest.raises(mqsync.RPCTimeout, match="within 0.4 s"):
            history.history_last_value(f"nobody.keeps.{unique}")
        # the old fixed default was 60 s; the timeout, not a broken request, ended the wait
        assert 0.4 <= monotonic() - started < 30


def test_nan_and_infinities_through_source_db_and_history_client_on_the_embedded_network(
        tmp_path, unique):
    metric = f"embedded.{unique}.special"
    points = special_points()
    with Db(f"db-{unique}", database=tmp_path / "e.db", metrics=[metric]) as db, \
            mqsync.Source(f"source-{unique}", chunk_size=3) as source, \
            HistoryClient(f"history-{unique}") as history:
        for t, v in points:
            source.send(metric, t, v)
        source.flush()
        assert wait_until(lambda: db.store.count(metric) == len(points))
        raw = history.history_raw_timeline(metric)
        assert [v.timestamp.posix_ns for v in raw] == [t for t, _ in points]
        assert same([v.value for v in raw], [v for _, v in points])
        first, last = points[0][0], points[-1][0]
        for start, end in [(None, None), (first + S // 2, first + 3 * S), (first + 2 * S, None),
                           (first + 4 * S, first + 6 * S), (last - 4 * S, last - 2 * S)]:
            aggregate = history.history_aggregate(metric, start, end)
            assert_aggregate(aggregate, reference_aggregate(points, start, end), exact=True)
        sums = [history.history_aggregate(metric, first + S // 2, first + 2 * S).sum,
                history.history_aggregate(metric, first + 2 * S, first + 4 * S).sum]
        assert sums == [math.inf, -math.inf]
        assert math.isnan(history.history_aggregate(metric).sum)
        for interval_max, width in [("1s", S), ("10s", 10 * S), ("250ms", S // 4)]:
            timeline = history.history_aggregate_timeline(metric, interval_max=interval_max)
            expected = reference_timeline(points, None, None, width)
            assert [a.timestamp.posix_ns for a in timeline] == [e[0] for e in expected]
            for row, reference in zip(timeline, expected):
                assert_aggregate(row, reference[1:], exact=True)
        assert "history_request_errors" not in db.stats()

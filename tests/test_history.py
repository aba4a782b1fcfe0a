"""History requests and the SQLite store: encoding, aggregation math, timeline bucketing.

The aggregates are checked against tests/_history_reference.py, a direct transcription of the
definition computed point by point, without rollups, ``dt`` columns or SQL.
"""

from __future__ import annotations

import math
import random
import struct

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
    with pytest.raises(TypeError, match="bare number 5"):
        encode_history_request(interval_max=5)
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


def test_store_keeps_every_double_bit_for_bit_and_drops_nan_and_late_points(store):
    values = [-0.0, math.inf, -math.inf, 5e-324, 1.7976931348623157e308, 0.1, 2.0**63, 3]
    result = store.insert("m", list(range(10, 10 + len(values))), values)
    assert result.stored == len(values)
    times, got = store.raw("m")
    assert times == list(range(10, 10 + len(values)))
    assert [struct.pack("<d", v) for v in got] == [struct.pack("<d", v) for v in values]
    assert type(got[-1]) is float
    result = store.insert("m", [12, 17, 18, 19], [1.0, 2.0, math.nan, 4.0])
    assert (result.stored, result.non_monotonic, result.nan) == (1, 2, 1)
    assert store.raw("m", 18)[0] == [19]
    assert store.last_value("m") == (19, 4.0)


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

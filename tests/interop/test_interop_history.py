"""The official metricq 5.4.0 HistoryClient gets correct answers from mqsync-db.

An mqsync Source feeds an mqsync Db through mqsync-manager; the official HistoryClient (its
own venv, tests/interop/peers/official_history.py) registers with ``history.register`` and
sends every request type.  Every answer is compared exactly (int ns, float bits) with the
point-by-point reference of tests/_history_reference.py, also over +inf, -inf and NaN.
"""

from __future__ import annotations

import math

import pytest

import mqsync
from mqsync.db import Db
from tests._history_reference import reference_aggregate, reference_timeline
from tests._support import wait_until
from tests.interop.official import run_peer

pytestmark = [pytest.mark.broker, pytest.mark.interop]

S = 1_000_000_000
T0 = 1_700_000_000 * S


def _hex(value: float) -> str:
    return float(value).hex()


def _expected_aggregate(timestamp, aggregate):
    count, total, minimum, maximum, integral, active = aggregate
    return {"timestamp": timestamp, "minimum": _hex(minimum), "maximum": _hex(maximum),
            "sum": _hex(total), "count": count, "integral_ns": _hex(integral),
            "active_time": active}


def _records(result, event):
    found = [r for r in result.records if r.get("event") == event]
    assert len(found) == 1, result.stdout[-3000:] + result.stderr[-3000:]
    return found[0]


@pytest.fixture
def stored(manager, tmp_path, unique):
    """A metric with two hours of 1 Hz data (and a gap), kept by a running mqsync Db."""
    metric = f"interop.{unique}.history"
    # values k/4: every sum and integral is exact, so the comparison can be bit for bit
    points = [(T0 + i * S, (i * 13 % 29) * 0.25 - 2.0) for i in range(7200)
              if not 1000 <= i < 1300]
    with Db(f"db-{unique}", manager.url, database=tmp_path / "db.sqlite",
            metrics=[metric]) as db:
        with mqsync.Source(f"source-{unique}", manager.url, chunk_size=200) as source:
            source.declare_metrics({metric: {"unit": "W", "rate": 1.0}})
            source.send_many(metric, [t for t, _ in points], [v for _, v in points])
            source.flush()
        assert wait_until(lambda: db.store.count(metric) == len(points), timeout=30)
        yield metric, points


def test_official_history_client_reads_every_request_type(manager, official_python, stored):
    metric, points = stored
    start, end = points[500][0] + S // 4, points[5000][0] - 3
    interval_max = 600 * S  # the Db answers with 100 s buckets, the largest rollup <= 10 min
    result = run_peer("official_history.py", "--url", manager.url, "--metric", metric,
                      "--start-ns", start, "--end-ns", end, "--interval-max-ns", interval_max,
                      "--timeout", 30, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    connected = _records(result, "connected")
    assert connected["history_exchange"] == "metricq.history"
    assert connected["history_queue"].endswith("-hrsp")

    assert _records(result, "last_value")["value"] == {"t": points[-1][0],
                                                        "v": _hex(points[-1][1])}

    aggregate = _records(result, "aggregate")["aggregate"]
    assert aggregate == _expected_aggregate(start, reference_aggregate(points, start, end))

    timeline = _records(result, "aggregate_timeline")["aggregates"]
    expected = reference_timeline(points, start, end, 100 * S)
    assert timeline == [_expected_aggregate(bucket, rest) for bucket, *rest in expected]
    assert len(timeline) > 40 and all(a["timestamp"] % (100 * S) == 0 for a in timeline)

    raw = _records(result, "raw_timeline")["values"]
    assert raw == [{"t": t, "v": _hex(v)} for t, v in points if start <= t <= end]


def test_official_history_client_over_the_whole_metric(manager, official_python, stored):
    """Without start and end (unset on the wire) the Db answers for all stored data."""
    metric, points = stored
    result = run_peer("official_history.py", "--url", manager.url, "--metric", metric,
                      "--request", "aggregate", "--request", "aggregate-timeline",
                      "--request", "raw-timeline", "--interval-max-ns", 3600 * S,
                      "--timeout", 30, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    aggregate = _records(result, "aggregate")["aggregate"]
    assert aggregate == _expected_aggregate(0, reference_aggregate(points, None, None))
    assert not math.isnan(float.fromhex(aggregate["integral_ns"]))
    timeline = _records(result, "aggregate_timeline")["aggregates"]
    expected = reference_timeline(points, None, None, 1000 * S)
    assert timeline == [_expected_aggregate(bucket, rest) for bucket, *rest in expected]
    raw = _records(result, "raw_timeline")["values"]
    assert raw == [{"t": t, "v": _hex(v)} for t, v in points]


def test_official_history_client_sees_database_errors(manager, official_python, stored):
    """A request the Db refuses reaches the official client as a HistoryError (exit 5)."""
    metric, _ = stored
    result = run_peer("official_history.py", "--url", manager.url, "--metric", metric,
                      "--request", "aggregate-timeline", "--interval-max-ns", 0,
                      "--timeout", 30, timeout=120)
    assert result.returncode == 5, result.stdout[-3000:] + result.stderr[-3000:]
    error = _records(result, "error")
    assert "interval_max > 0" in str(error)


@pytest.fixture
def special_stored(manager, tmp_path, unique):
    """A metric with +inf, -inf and NaN in different seconds and in one second, kept by a
    running mqsync Db."""
    metric = f"interop.{unique}.special"
    values = [1.0, math.inf, 2.0, -math.inf, 3.0, math.nan, 4.0, 0.5]
    points = [(T0 + i * S, v) for i, v in enumerate(values)]
    end = points[-1][0]
    points += [(end + S // 4, math.inf), (end + S // 2, -math.inf), (end + 3 * S // 4, math.nan),
               (end + S, 0.25), (end + 2 * S, math.nan), (end + 3 * S, 0.75)]
    with Db(f"db-{unique}", manager.url, database=tmp_path / "db.sqlite",
            metrics=[metric]) as db:
        with mqsync.Source(f"source-{unique}", manager.url, chunk_size=3) as source:
            source.declare_metrics({metric: {"unit": "W", "rate": 1.0}})
            source.send_many(metric, [t for t, _ in points], [v for _, v in points])
            source.flush()
        assert wait_until(lambda: db.store.count(metric) == len(points), timeout=30)
        yield metric, points, db


@pytest.mark.parametrize("interval_max", [S // 4, S, 10 * S])
@pytest.mark.parametrize("bounds", ["all", "inside"])
def test_official_history_client_reads_nan_and_infinities(manager, official_python,
                                                          special_stored, interval_max, bounds):
    """Raw values, an aggregate and a timeline over +inf, -inf and NaN: answers, not errors,
    and IEEE results (sums NaN or infinite; minimum and maximum ignore NaN)."""
    metric, points, db = special_stored
    start, end = (None, None) if bounds == "all" else (points[0][0] + S // 2, points[-2][0])
    window = [] if bounds == "all" else ["--start-ns", start, "--end-ns", end]
    result = run_peer("official_history.py", "--url", manager.url, "--metric", metric, *window,
                      "--interval-max-ns", interval_max, "--timeout", 30, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    assert _records(result, "last_value")["value"] == {"t": points[-1][0],
                                                        "v": _hex(points[-1][1])}
    aggregate = _records(result, "aggregate")["aggregate"]
    assert aggregate == _expected_aggregate(start or 0, reference_aggregate(points, start, end))
    assert aggregate["sum"] == "nan" and aggregate["minimum"] == "-inf"
    timeline = _records(result, "aggregate_timeline")["aggregates"]
    expected = reference_timeline(points, start, end, interval_max)
    assert timeline == [_expected_aggregate(bucket, rest) for bucket, *rest in expected]
    if interval_max == S:  # a bucket for each: +inf, -inf, NaN
        assert {"nan", "inf", "-inf"} <= {a["sum"] for a in timeline}
    raw = _records(result, "raw_timeline")["values"]
    assert raw == [{"t": t, "v": _hex(v)} for t, v in points
                   if (start is None or start <= t) and (end is None or t <= end)]
    assert "history_request_errors" not in db.stats()

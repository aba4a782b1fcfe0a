"""mqsync-db on RabbitMQ: Source -> Db -> HistoryClient, every request type, exact values.

Expected aggregates come from tests/_history_reference.py, computed point by point from what
the Source sent.  The values are chosen so that every sum and integral is exact in a double,
so everything compares with ``==``.
"""

from __future__ import annotations

import math
import signal
import struct
import subprocess
import sys
import threading

import kombu
import pytest

import mqsync
from mqsync._proto.messages import DataChunk
from mqsync.db import Db
from mqsync.history import HistoryClient, HistoryRequestType, HistoryResponseType
from tests._history_reference import as_tuple, reference_aggregate, reference_timeline
from tests._proxy import FaultProxy
from tests._support import wait_until

pytestmark = pytest.mark.broker

S = 1_000_000_000
T0 = 1_700_000_000 * S
SPECIALS = [-0.0, math.inf, -math.inf, 5e-324, 1.7976931348623157e308, 2.2250738585072014e-308,
            1 / 3, -2.5, 0.0]


def bits(values):
    return [struct.pack("<d", v) for v in values]


def send(url, token, points_by_metric, chunk_size=100):
    with mqsync.Source(token, url, chunk_size=chunk_size) as source:
        source.declare_metrics({metric: {"unit": "W", "rate": 1} for metric in points_by_metric})
        for metric, points in points_by_metric.items():
            source.send_many(metric, [t for t, _ in points], [v for _, v in points])
        source.flush()


def test_points_from_a_source_come_back_exactly_through_every_request(manager, tmp_path,
                                                                       unique):
    power, special = f"db.{unique}.power", f"db.{unique}.special"
    # three hours at 1 Hz with a gap of ten minutes; values k/4 keep every sum exact
    power_points = [(T0 + i * S, (i * 7 % 41) * 0.25) for i in range(10_800) if
                    not 3600 <= i < 4200]
    special_points = [(T0 + i * 1_000_003, SPECIALS[i % len(SPECIALS)]) for i in range(900)]
    with Db(f"db-{unique}", manager.url, database=tmp_path / "db.sqlite",
            metrics=[power, special]) as db:
        send(manager.url, f"source-{unique}", {power: power_points, special: special_points})
        assert wait_until(lambda: db.store.count(power) == len(power_points)
                          and db.store.count(special) == len(special_points), timeout=30)
        with HistoryClient(f"history-{unique}", manager.url) as history:
            # last value
            last = history.history_last_value(power)
            assert (last.timestamp.posix_ns, last.value) == power_points[-1]

            # raw values: all, and a range with both ends on a point (inclusive)
            raw = history.history_raw_timeline(special)
            assert [v.timestamp.posix_ns for v in raw] == [t for t, _ in special_points]
            assert bits(v.value for v in raw) == bits(v for _, v in special_points)
            start, end = power_points[100][0], power_points[5000][0]
            raw = history.history_raw_timeline(power, mqsync.Timestamp(start), end)
            assert [(v.timestamp.posix_ns, v.value) for v in raw] == power_points[100:5001]

            # one aggregate: everything, ranges cut inside intervals, the gap, nothing
            ranges = [(None, None), (start + S // 3, end - 7), (T0 + 3599 * S + 1, T0 + 4200 * S),
                      (T0 + 3700 * S, T0 + 3800 * S), (T0 - 10 * S, T0 + 10 * S),
                      (T0 + 20_000 * S, T0 + 30_000 * S)]
            for range_start, range_end in ranges:
                got = history.history_aggregate(power, range_start, range_end)
                assert as_tuple(got) == reference_aggregate(power_points, range_start,
                                                            range_end), (range_start, range_end)
                assert got.timestamp.posix_ns == (range_start or 0)

            # aggregate timelines: from rollups (100 s and 1 000 s buckets) and from raw points
            for interval_max, range_start, range_end, width in [
                    ("10min", None, None, 100 * S), ("1h", start, end, 1000 * S),
                    ("2.5s", start + 11, start + 600 * S, 1 * S),
                    ("700ms", start, start + 300 * S, 700_000_000)]:
                timeline = history.history_aggregate_timeline(
                    power, interval_max=interval_max, start_time=range_start,
                    end_time=range_end)
                expected = reference_timeline(power_points, range_start, range_end, width)
                assert [(a.timestamp.posix_ns, *as_tuple(a)) for a in timeline] == expected
                assert all(a.timestamp.posix_ns % width == 0 for a in timeline)

            # flex: raw values when they are not more than the buckets, else aggregates
            flex = history.history_data_request(power, start, end, "1s",
                                                HistoryRequestType.FLEX_TIMELINE)
            assert flex.mode is HistoryResponseType.VALUES and len(flex) == 4901
            assert 0 < flex.request_duration < 10  # the Db's x-request-duration header
            flex = history.history_data_request(power, start, end, "1min",
                                                HistoryRequestType.FLEX_TIMELINE)
            assert flex.mode is HistoryResponseType.AGGREGATES

            # the metrics are historic now
            assert {power, special} <= set(history.get_metrics())
            assert set(history.get_metrics(prefix=f"db.{unique}.")) == {power, special}
            assert history.get_metrics(prefix=f"db.{unique}.", historic=False) == {}
        stats = db.stats()
        assert stats["stored_points"] == len(power_points) + len(special_points)
        assert stats["history_requests_answered"] >= 15
        assert "history_request_errors" not in stats


def test_errors_and_unknown_metrics(manager, tmp_path, unique):
    metric = f"db.{unique}.x"
    with Db(f"db-{unique}", manager.url, database=tmp_path / "db.sqlite",
            metrics=[metric]) as db, HistoryClient(f"history-{unique}", manager.url) as history:
        assert history.history_last_value(metric) is None  # kept, but no data yet
        assert history.history_raw_timeline(metric) == []
        empty = history.history_aggregate(metric)
        assert (empty.count, empty.minimum, empty.maximum) == (0, math.inf, -math.inf)
        with pytest.raises(mqsync.MqsyncError, match="needs interval_max > 0"):
            history.history_data_request(metric, None, None, None,
                                         HistoryRequestType.AGGREGATE_TIMELINE)
        # no database keeps it: nobody answers
        with pytest.raises(mqsync.RPCTimeout, match=f"'{metric}.none' within 0.5 s"):
            history.history_last_value(f"{metric}.none", timeout=0.5)
        assert db.stats()["history_requests_refused"] == 1


def test_data_sent_while_the_database_is_down_is_stored_after_its_restart(manager, tmp_path,
                                                                          unique):
    metric = f"db.{unique}.durable"
    path = tmp_path / "db.sqlite"
    token = f"db-{unique}"
    first = [(T0 + i * S, float(i)) for i in range(500)]
    second = [(T0 + (500 + i) * S, float(-i)) for i in range(500)]
    with Db(token, manager.url, database=path, metrics=[metric]) as db:
        send(manager.url, f"source-{unique}", {metric: first})
        assert wait_until(lambda: db.store.count(metric) == 500, timeout=30)
    # the durable <token>-data queue keeps what arrives meanwhile
    send(manager.url, f"source-{unique}", {metric: second})
    send(manager.url, f"source-{unique}-again", {metric: second[-10:]})  # a duplicate
    with Db(token, manager.url, database=path, metrics=[metric]) as db, \
            HistoryClient(f"history-{unique}", manager.url) as history:
        assert wait_until(lambda: db.stats().get("non_monotonic_points_dropped") == 10,
                          timeout=30)
        raw = history.history_raw_timeline(metric)
        assert [(v.timestamp.posix_ns, v.value) for v in raw] == first + second


def test_resubscribing_unbinds_the_metrics_dropped(manager, tmp_path, unique):
    kept, dropped = f"db.{unique}.kept", f"db.{unique}.dropped"
    with Db(f"db-{unique}", manager.url, database=tmp_path / "db.sqlite",
            metrics=[kept, dropped]) as db, \
            HistoryClient(f"history-{unique}", manager.url) as history:
        send(manager.url, f"source-{unique}", {kept: [(T0, 1.0)], dropped: [(T0, 2.0)]})
        assert wait_until(lambda: db.store.count(kept) == db.store.count(dropped) == 1)
        db.subscribe([kept])
        assert db.metrics == {kept}
        send(manager.url, f"source-{unique}", {kept: [(T0 + S, 3.0)], dropped: [(T0 + S, 4.0)]})
        assert wait_until(lambda: db.store.count(kept) == 2)
        assert history.history_last_value(kept).value == 3.0
        with pytest.raises(mqsync.RPCTimeout):
            history.history_last_value(dropped, timeout=0.5)
        assert db.store.count(dropped) == 1


def test_db_rpc_reply_shapes(manager, unique):
    token = f"db-{unique}-shapes"
    metric = f"db.{unique}.shaped"
    with mqsync.Source(f"source-{unique}", manager.url) as source:
        source.declare_metrics({metric: {"unit": "K"}})
    with mqsync.Client(token, manager.url) as client:
        register = client.rpc("db.register")
        assert register["dataQueue"] == f"{token}-data"
        assert register["historyQueue"] == f"{token}-hreq"
        assert register["dataExchange"] == "metricq.data"
        assert register["config"] == {}
        assert "dataServerAddress" in register
        reply = client.rpc("db.subscribe", metrics=[metric, {"name": f"{metric}.alias",
                                                             "input": metric}])
        assert set(reply) == {"dataServerAddress", "dataQueue", "historyQueue", "metrics"}
        assert reply["metrics"][metric]["unit"] == "K"
        assert reply["metrics"][metric]["historic"] is True
        assert client.rpc("db.subscribe", metrics=[metric], metadata=False)["metrics"] == [metric]
        with pytest.raises(mqsync.RPCError, match="'metrics' must be an array"):
            client.rpc("db.subscribe", metrics="x")
        with pytest.raises(mqsync.RPCError, match="neither a name nor"):
            client.rpc("db.subscribe", metrics=[{"input": "x"}])
        client.rpc("sink.release", dataQueue=f"{token}-data")
        # the history request queue is no sink's data queue: sink.release refuses it
        with pytest.raises(mqsync.RPCError, match="may not use"):
            client.rpc("sink.release", dataQueue=f"{token}-hreq")
    with kombu.Connection(manager.url) as connection:
        connection.default_channel.queue_delete(f"{token}-hreq")


def test_the_command_line_database_takes_its_metrics_from_the_manager(manager, tmp_path,
                                                                       unique):
    token = f"db-{unique}-cli"
    metric = f"db.{unique}.cli"
    manager.set_config(token, {"metrics": [metric]})
    points = [(T0 + i * S // 10, i * 0.5) for i in range(300)]
    process = subprocess.Popen(
        [sys.executable, "-m", "mqsync.cli.db", "--url", manager.url, "--token", token,
         "--database", str(tmp_path / "cli.sqlite"), "--log-level", "info"],
        stderr=subprocess.PIPE, text=True)
    try:
        with HistoryClient(f"history-{unique}", manager.url) as history:
            assert wait_until(lambda: metric in history.get_metrics(prefix=f"db.{unique}."),
                              timeout=30, interval=0.2), "mqsync-db did not subscribe"
            send(manager.url, f"source-{unique}", {metric: points})
            assert wait_until(lambda: len(history.history_raw_timeline(metric)) == len(points),
                              timeout=30, interval=0.2)
            aggregate = history.history_aggregate(metric)
            assert as_tuple(aggregate) == reference_aggregate(points, None, None)
            # a new configuration (the config RPC) changes the metrics it keeps
            history.rpc_direct(token, "config", metrics=[metric, f"{metric}.more"])
            assert wait_until(lambda: f"{metric}.more" in history.get_metrics(
                prefix=f"db.{unique}."), timeout=10)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        process.stderr.close()


def test_cut_connections_lose_and_duplicate_nothing(manager, tmp_path, unique):
    """The Db and the HistoryClient talk through a proxy that cuts every connection mid-stream:
    unacked chunks come again and are stored once; the history client registers again (its
    auto-delete response queue went with the old connection) and goes on answering."""
    metric = f"db.{unique}.cut"
    points = [(T0 + i * 1000, float(i % 1000)) for i in range(100_000)]
    proxy = FaultProxy()
    try:
        url = proxy.url(manager.url)
        with Db(f"db-{unique}", url, database=tmp_path / "db.sqlite", metrics=[metric],
                reconnect_timeout=30, batch_points=2000) as db, \
                HistoryClient(f"history-{unique}", url, reconnect_timeout=30) as history:
            cutter = threading.Timer(0.2, proxy.cut)
            cutter.start()
            with mqsync.Source(f"source-{unique}", manager.url, chunk_size=100) as source:
                for index in range(0, len(points), 1000):
                    part = points[index:index + 1000]
                    source.send_many(metric, [t for t, _ in part], [v for _, v in part])
                    threading.Event().wait(0.005)  # a stream, not one burst
                source.flush()
            cutter.join()
            assert wait_until(lambda: db.store.count(metric) == len(points), timeout=60)
            assert wait_until(lambda: _answers(history, metric), timeout=60)
            raw = history.history_raw_timeline(metric)
            assert [(v.timestamp.posix_ns, v.value) for v in raw] == points
            assert proxy.cut_connections >= 2, "the cut missed the db or the history client"
            assert db.stats()["reconnects"] + history.stats()["reconnects"] >= 2
    finally:
        proxy.close()


def _answers(history, metric):
    try:
        return history.history_last_value(metric, timeout=2) is not None
    except mqsync.MqsyncError:
        return False


def test_values_and_times_at_the_edges_never_stop_the_database(manager, tmp_path, unique):
    """NaN and infinities are stored and aggregated; times the store cannot hold (a chunk
    from a peer that is not an mqsync Source) are dropped and counted, and the Db goes on."""
    import kombu

    metric = f"db.{unique}.edges"
    with Db(f"db-{unique}", manager.url, database=tmp_path / "db.sqlite",
            metrics=[metric]) as db:
        # times T0, T0 + 2**62 and beyond int64; the last two are out of range
        hostile = DataChunk(time_delta=[T0, 2**62, 2**63 - 1],
                            value=[math.nan, math.inf, -math.inf])
        with kombu.Connection(manager.url) as connection:
            channel = connection.channel()
            channel.basic_publish(channel.prepare_message(hostile.SerializeToString(), None,
                                                          None, None, None, {}),
                                  exchange="metricq.data", routing_key=metric)
        send(manager.url, f"source-{unique}",
             {metric: [(T0 + S, math.inf), (T0 + 2 * S, -math.inf), (T0 + 3 * S, 1.0)]})
        assert wait_until(lambda: db.store.count(metric) == 4, timeout=30)
        assert db.stats().get("out_of_range_points_dropped") == 2 and db.failure is None
        with HistoryClient(f"history-{unique}", manager.url) as history:
            raw = history.history_raw_timeline(metric)
            assert [v.timestamp.posix_ns for v in raw] == [T0 + i * S for i in range(4)]
            assert math.isnan(raw[0].value) and [v.value for v in raw[1:]] == [
                math.inf, -math.inf, 1.0]
            whole = history.history_aggregate(metric)
            assert (whole.count, whole.minimum, whole.maximum, whole.active_time.ns) == (
                4, -math.inf, math.inf, 3 * S)
            assert math.isnan(whole.sum) and math.isnan(whole.integral_ns)
            timeline = history.history_aggregate_timeline(metric, interval_max="1s")
            assert [(a.timestamp.posix_ns, a.sum, a.integral_ns) for a in timeline[1:]] == [
                (T0, math.inf, math.inf), (T0 + S, -math.inf, -math.inf), (T0 + 2 * S, 1.0, 1e9)]
        assert "history_request_errors" not in db.stats()

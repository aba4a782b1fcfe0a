"""Tests of mqsync.streamer: storages of rows streamed periodically to destinations."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest

from mqsync import streamer as streamer_module
from mqsync.errors import ConfigError
from mqsync.streamer import DataStreamer, StreamerError

KEYS = {"name": "VARCHAR", "thread": "VARCHAR", "level": "INTEGER", "msg": "VARCHAR"}


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def streamer(clock):
    with DataStreamer(clock=clock) as instance:
        instance.add_storage("logkey", KEYS)
        yield instance


def formatter(rows, userdata):
    """Shaped like the seed's formatter: the rows plus the column names."""
    return json.dumps({"node": userdata["node"], "data": rows})


def test_public_names_are_in_all():
    assert set(streamer_module.__all__) == {
        "DataStreamer",
        "SqliteDataStreamer",
        "StreamMessage",
        "StreamStatus",
        "StreamerError",
    }


def test_storage_columns_and_store(streamer, clock):
    assert streamer.columns("logkey") == ("timestamp", "name", "thread", "level", "msg")
    first = streamer.store("logkey", "root", "Main", 20, "hello")
    second = streamer.store("logkey", "root", "Main", 30, "again", timestamp=5.0)
    assert second > first
    sent = []
    streamer.stream("logkey", sent.append, 1.0, lambda rows, _: rows, after_id=0)
    streamer.do_updates(clock.now + 1)
    assert sent == [[(1000.0, "root", "Main", 20, "hello"), (5.0, "root", "Main", 30, "again")]]


def test_columns_as_pairs_and_python_types(clock):
    with DataStreamer(clock=clock) as streamer:
        streamer.add_storage("samples", [("value", float), ("ok", bool), ("raw", bytes)])
        streamer.store("samples", 1.5, True, b"\x00")
        sent = []
        streamer.stream("samples", sent.append, 1.0, lambda rows, _: rows, after_id=0)
        streamer.flush()
        assert sent == [[(1000.0, 1.5, 1, b"\x00")]]


def test_store_checks_the_values(streamer):
    with pytest.raises(ValueError, match=r"takes 4 values \(name, thread, level, msg\), got 2"):
        streamer.store("logkey", "a", "b")
    with pytest.raises(KeyError, match="no storage named 'nope'"):
        streamer.store("nope", 1)


@pytest.mark.parametrize(
    "name",
    [
        'x"; DROP TABLE logkey; --',
        "a b",
        "1abc",
        "_hidden",
        "",
        "sqlite_master",
        "naïve",
        "a" * 64,
        None,
    ],
)
def test_invalid_identifiers_are_rejected(streamer, name):
    with pytest.raises(ConfigError, match="invalid storage name"):
        streamer.add_storage(name, {"v": int})
    with pytest.raises(ConfigError, match="invalid column name"):
        streamer.add_storage("ok", {name: int})
    assert streamer.columns("logkey")  # still there


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"v": "INTEGER); DROP TABLE logkey; --"}, "invalid type"),
        ({"v": dict}, "invalid type"),
        ({"timestamp": "REAL"}, "added by the streamer"),
        ([("v", int), ("V", int)], "appears twice"),
        ({}, "at least one column"),
    ],
)
def test_invalid_columns_are_rejected(streamer, columns, message):
    with pytest.raises(ConfigError, match=message):
        streamer.add_storage("other", columns)


def test_existing_storage_must_match(tmp_path):
    path = tmp_path / "streams.db"
    with DataStreamer(path) as streamer:
        streamer.add_storage("logs", {"msg": str})
        streamer.store("logs", "kept", timestamp=1.0)
    with DataStreamer(path) as streamer:
        streamer.add_storage("logs", {"msg": "TEXT"})  # same columns: reopened
        with pytest.raises(ConfigError, match="exists .* with other columns"):
            streamer.add_storage("logs", {"msg": str, "level": int})
        sent = []
        streamer.stream("logs", sent.append, 1.0, lambda rows, _: rows, after_id=0)
        streamer.flush()
        assert sent == [[(1.0, "kept")]]


def test_stream_sends_new_rows_every_period(streamer, clock):
    streamer.store("logkey", "old", "t", 1, "before the stream")
    sent = []
    streamer.stream("logkey", sent.append, 10.0, formatter, userdata={"node": "n1"})
    assert streamer.do_updates(clock.now) == clock.now + 10  # not due yet
    streamer.store("logkey", "a", "t", 1, "one", timestamp=1001.0)
    streamer.store("logkey", "b", "t", 2, "two", timestamp=1002.0)
    assert sent == []
    assert streamer.do_updates(1009.9) == 1010.0
    assert sent == []
    assert streamer.do_updates(1010.0) == 1020.0
    assert [json.loads(payload) for payload in sent] == [
        {"node": "n1", "data": [[1001.0, "a", "t", 1, "one"], [1002.0, "b", "t", 2, "two"]]}
    ]
    assert streamer.do_updates(1020.0) == 1030.0  # no new rows: nothing sent
    assert len(sent) == 1
    streamer.store("logkey", "c", "t", 3, "three", timestamp=1025.0)
    streamer.do_updates(1030.0)
    assert json.loads(sent[-1])["data"] == [[1025.0, "c", "t", 3, "three"]]
    status = streamer.stream_status("logkey")
    assert (status.sent_batches, status.sent_rows, status.failures) == (2, 3, 0)


def test_missed_periods_do_not_burst(streamer, clock):
    sent = []
    streamer.stream("logkey", sent.append, 10.0, formatter, userdata={"node": "n"})
    streamer.store("logkey", "a", "t", 1, "x")
    assert streamer.do_updates(1055.0) == 1060.0  # one send, then the next future slot
    assert len(sent) == 1


def test_destination_failure_keeps_the_rows(streamer, clock, caplog):
    attempts = []

    def flaky(payload):
        attempts.append(payload)
        if len(attempts) < 3:
            raise ConnectionError("network down")

    streamer.stream("logkey", flaky, 1.0, lambda rows, _: list(rows))
    streamer.store("logkey", "a", "t", 1, "first")
    with caplog.at_level(logging.WARNING, logger="mqsync.streamer"):
        streamer.do_updates(1001.0)
        streamer.store("logkey", "b", "t", 1, "second")
        streamer.do_updates(1002.0)
        streamer.do_updates(1003.0)
    assert [len(payload) for payload in attempts] == [1, 2, 2]
    assert attempts[-1] == [(1000.0, "a", "t", 1, "first"), (1000.0, "b", "t", 1, "second")]
    status = streamer.stream_status("logkey")
    assert (status.failures, status.sent_rows) == (2, 2)
    assert len(caplog.records) == 2
    assert "sent again" in caplog.records[0].getMessage()
    assert caplog.records[0].exc_info is not None
    streamer.do_updates(1004.0)
    assert len(attempts) == 3  # nothing new: nothing resent


def test_formatter_failure_is_retried_too(streamer, caplog):
    calls = []

    def picky(rows, userdata):
        calls.append(len(rows))
        if len(calls) == 1:
            raise ValueError("bad row")
        return rows

    sent = []
    caplog.set_level(logging.WARNING)
    streamer.stream("logkey", sent.append, 1.0, picky)
    streamer.store("logkey", "a", "t", 1, "x")
    streamer.do_updates(1001.0)
    streamer.do_updates(1002.0)
    assert calls == [1, 1] and len(sent) == 1


def test_where_predicate_filters_rows(streamer):
    sent = []
    streamer.stream(
        "logkey", sent.append, 1.0, lambda rows, _: rows, where=lambda row: row[3] >= 30
    )
    for level in (10, 30, 20, 40):
        streamer.store("logkey", "n", "t", level, "m")
    streamer.do_updates(1001.0)
    assert [[row[3] for row in rows] for rows in sent] == [[30, 40]]
    streamer.store("logkey", "n", "t", 5, "m")  # filtered out: nothing sent, not resent
    streamer.do_updates(1002.0)
    assert len(sent) == 1
    assert streamer.stream_status("logkey").last_id == 5


def test_max_rows_splits_sends(streamer):
    sent = []
    streamer.stream("logkey", sent.append, 1.0, lambda rows, _: rows, max_rows=2)
    for i in range(5):
        streamer.store("logkey", "n", "t", i, "m")
    for now in (1001.0, 1002.0, 1003.0, 1004.0):
        streamer.do_updates(now)
    assert [len(rows) for rows in sent] == [2, 2, 1]


def test_stop_stream_returns_userdata(streamer):
    userdata = {"level": 20}
    streamer.stream("logkey", print, 1.0, formatter, userdata=userdata)
    with pytest.raises(ValueError, match="already streamed"):
        streamer.stream("logkey", print, 1.0, formatter)
    assert streamer.stop_stream("logkey") is userdata
    with pytest.raises(KeyError, match="not streamed"):
        streamer.stop_stream("logkey")
    assert streamer.do_updates(2000.0) is None


def test_stream_argument_checks(streamer):
    with pytest.raises(ValueError, match="period 0"):
        streamer.stream("logkey", print, 0, formatter)
    with pytest.raises(KeyError):
        streamer.stream("missing", print, 1.0, formatter)
    with pytest.raises(ValueError, match="max_rows 0"):
        streamer.stream("logkey", print, 1.0, formatter, max_rows=0)


def test_next_due_is_the_earliest_stream(clock):
    with DataStreamer(clock=clock) as streamer:
        streamer.add_storage("a", {"v": int})
        streamer.add_storage("b", {"v": int})
        assert streamer.do_updates() is None
        streamer.stream("a", print, 5.0, formatter)
        streamer.stream("b", print, 2.0, formatter)
        assert streamer.do_updates() == 1002.0


def test_purge(streamer):
    for stamp in (1.0, 2.0, 3.0):
        streamer.store("logkey", "n", "t", 1, "m", timestamp=stamp)
    assert streamer.purge("logkey", before=2.5) == 2
    sent = []
    streamer.stream("logkey", sent.append, 1.0, lambda rows, _: rows, after_id=0)
    streamer.flush()
    assert [row[0] for row in sent[0]] == [3.0]


def test_closed_streamer_raises(clock):
    streamer = DataStreamer(clock=clock)
    streamer.add_storage("s", {"v": int})
    streamer.close()
    streamer.close()
    with pytest.raises(StreamerError, match="closed"):
        streamer.store("s", 1)


def test_damaged_database_is_moved_aside(tmp_path, caplog):
    path = tmp_path / "streams.db"
    path.write_bytes(b"definitely not sqlite" * 500)
    with caplog.at_level(logging.ERROR), DataStreamer(path) as streamer:
        assert streamer.recovered_from is not None
        assert streamer.recovered_from.name.startswith("streams.db.corrupt-")
        streamer.add_storage("s", {"v": int})
        streamer.store("s", 1)
    assert str(path) in caplog.records[0].getMessage()


def test_background_thread_streams_and_stops(tmp_path):
    received = []
    arrived = threading.Event()

    def destination(payload):
        received.extend(payload)
        if len(received) >= 3:
            arrived.set()

    with DataStreamer(tmp_path / "bg.db") as streamer:
        streamer.add_storage("s", {"v": int})
        streamer.stream("s", destination, 0.02, lambda rows, _: [row[1] for row in rows])
        streamer.start()
        streamer.start()  # idempotent
        for value in range(3):
            streamer.store("s", value)
            time.sleep(0.01)
        assert arrived.wait(5)
        assert streamer.stop() is True
        assert streamer.stop() is True
    assert received == [0, 1, 2]
    assert not [t for t in threading.enumerate() if t.name.startswith("mqsync-streamer")]


def test_close_stops_the_thread(tmp_path):
    streamer = DataStreamer(tmp_path / "bg.db")
    streamer.start()
    streamer.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("mqsync-streamer")]

"""Tests of mqsync.streamer.SqliteDataStreamer: the seed's API over DataStreamer."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import traceback
from types import SimpleNamespace

import attrs
import pytest

from mqsync import streamer as streamer_module
from mqsync.errors import ConfigError
from mqsync.streamer import SqliteDataStreamer, StreamerError, StreamMessage

try:
    import yaml
except ImportError:  # PyYAML is no dependency of mqsync; JSON is YAML too
    yaml = SimpleNamespace(safe_dump=json.dumps, safe_load=json.loads)

testbed = SimpleNamespace(nodename="node1")


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class RecordingMessenger:
    """The seed's messaging interface: records what it is sent; the first ``failures``
    sends raise."""

    def __init__(self, failures: int = 0):
        self.failures = failures
        self.attempts: list[StreamMessage] = []
        self.sent: list[StreamMessage] = []

    def send(self, message: StreamMessage) -> None:
        self.attempts.append(message)
        if len(self.attempts) <= self.failures:
            raise ConnectionError("messaging daemon unreachable")
        self.sent.append(message)


class LoggingAgent(logging.Handler):
    """The seed's logging agent: its code as written, only the import changed."""

    def __init__(self, sqlitename):
        super().__init__()
        # creates the basic stream based on sqlite as the storage medium (most common)
        # sqlitename can also be :memory: which uses an inmemory database
        self.logstream = SqliteDataStreamer(sqlitename=sqlitename, threadHack=True)
        # Now add specify some data we will store in the table logkey
        self.keys = ["name", "thread", "level", "filename", "fileno", "msg", "exception"]
        types = ["VARCHAR", "VARCHAR", "INTEGER", "VARCHAR", "INTEGER", "VARCHAR", "VARCHAR"]
        self.logstream.addStorage("logkey", self.keys, types)

    def emit(self, record):
        msg = record.getMessage()
        tb = "".join(traceback.format_exception(*record.exc_info)) if record.exc_info else None
        # Here we add some data to the storage, the variable argcount includes
        # a timestamp plus the values in the same order as keys/types
        self.logstream.storeData(
            "logkey",
            time.time(),
            record.name,
            record.threadName,
            record.levelno,
            record.filename,
            record.lineno,
            msg,
            tb,
        )

    def startStream(self, dstnodes, dstgroups, period, level):
        keys = self.keys
        sql = f"level >= {int(level)}"  # the application's own SQL

        # We also want to define a format function to take the table row data array
        # and format it for sending. In this case, our message contains the
        # raw data rows but adds the keys as information for the receiver
        def formatter(self, data, userdata):
            return yaml.safe_dump({testbed.nodename: {"index": ["time"] + keys, "data": data}})

        self.logstream.stream(
            "logkey",
            dstnodes,
            dstgroups,
            ["data", "log"],
            period,
            formatter,
            sqlfilter=sql,
            userdata={"level": level},
        )

    def poll(self, now, messenger):
        # Every once and a while you MUST call doUpdates with a messaging interface
        nexttimestamp = self.logstream.doUpdates(now, messenger)
        return nexttimestamp

    def stop(self):
        # Finally we stop the stream.
        userdata = self.logstream.stopStream("logkey")
        return userdata


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def logstream(clock):
    with SqliteDataStreamer(sqlitename=":memory:", threadHack=True, clock=clock) as instance:
        instance.addStorage("logkey", ["name", "level", "msg"], ["VARCHAR", "INTEGER", "VARCHAR"])
        yield instance


def rows_formatter(streamer, rows, userdata):
    return list(rows)


def sent_rows(messenger: RecordingMessenger) -> list[tuple]:
    return [row for message in messenger.sent for row in message.data]


@pytest.mark.parametrize("sqlitename", ["logging.db", ":memory:"])
def test_seed_logging_agent_runs_as_written(tmp_path, sqlitename):
    agent = LoggingAgent(str(tmp_path / sqlitename) if sqlitename != ":memory:" else sqlitename)
    log = logging.getLogger(f"seed.agent.{sqlitename}")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    log.addHandler(agent)
    try:
        log.info("before the stream")
        log.debug("below the level")
        try:
            raise ZeroDivisionError("division by zero")
        except ZeroDivisionError:
            log.exception("it failed")
        period = 5.0
        agent.startStream(["node2"], ["watchers"], period, logging.INFO)
        messenger = RecordingMessenger()
        now = time.time()
        assert now < agent.poll(now, messenger) <= now + period  # not due yet
        assert messenger.sent == []
        log.warning("after the stream")
        nexttimestamp = agent.poll(now + period, messenger)
        assert now + period < nexttimestamp <= now + 2 * period

        [message] = messenger.sent
        assert (message.nodes, message.groups, message.docks) == (
            ("node2",),
            ("watchers",),
            ("data", "log"),
        )
        document = yaml.safe_load(message.data)
        assert list(document) == ["node1"]
        assert document["node1"]["index"] == ["time", *agent.keys]
        rows = document["node1"]["data"]
        assert [row[6] for row in rows] == ["before the stream", "it failed", "after the stream"]
        assert [row[3] for row in rows] == [logging.INFO, logging.ERROR, logging.WARNING]
        assert rows[0][1:3] == [log.name, "MainThread"]
        assert rows[0][7] is None and "ZeroDivisionError" in rows[1][7]
        assert all(now - 60 < row[0] <= time.time() for row in rows)

        assert agent.poll(now + 2 * period, messenger) == nexttimestamp + period
        assert len(messenger.sent) == 1  # nothing new: nothing sent
        assert agent.stop() == {"level": logging.INFO}
    finally:
        log.removeHandler(agent)
        agent.logstream.close()


def test_rows_stored_before_stream_are_sent(logstream):
    logstream.storeData("logkey", 1.0, "root", 20, "first")
    logstream.storeData("logkey", 2.0, "root", 20, "second")
    messenger = RecordingMessenger()
    logstream.stream("logkey", ["n"], ["g"], ["d"], 10.0, rows_formatter)
    logstream.storeData("logkey", 3.0, "root", 20, "third")
    logstream.doUpdates(1010.0, messenger)
    assert sent_rows(messenger) == [
        (1.0, "root", 20, "first"),
        (2.0, "root", 20, "second"),
        (3.0, "root", 20, "third"),
    ]


def test_rows_of_an_earlier_run_are_sent(tmp_path, clock):
    path = tmp_path / "logging.db"
    with SqliteDataStreamer(sqlitename=str(path), clock=clock) as logstream:
        logstream.addStorage("logkey", ["msg"], ["VARCHAR"])
        logstream.storeData("logkey", 1.0, "stored before a restart")
    with SqliteDataStreamer(sqlitename=str(path), clock=clock) as logstream:
        logstream.addStorage("logkey", ["msg"], ["VARCHAR"])  # reopened
        messenger = RecordingMessenger()
        logstream.stream("logkey", "n", None, "d", 1.0, rows_formatter)
        logstream.doUpdates(1001.0, messenger)
        assert sent_rows(messenger) == [(1.0, "stored before a restart")]


def test_formatter_gets_the_streamer_rows_and_userdata(logstream):
    calls = []

    def formatter(self, data, userdata):
        calls.append((self, data, userdata))
        return "payload"

    userdata = {"level": 20}
    logstream.storeData("logkey", 5.0, "root", 20, "m")
    logstream.stream("logkey", [], [], [], 1.0, formatter, userdata=userdata)
    messenger = RecordingMessenger()
    logstream.doUpdates(1001.0, messenger)
    assert calls == [(logstream, [(5.0, "root", 20, "m")], userdata)]
    assert calls[0][2] is userdata
    assert [message.data for message in messenger.sent] == ["payload"]


def test_message_is_a_frozen_value():
    message = StreamMessage(["a", "b"], "group", None, data={"k": 1})
    assert (message.nodes, message.groups, message.docks) == (("a", "b"), ("group",), ())
    assert message == StreamMessage(("a", "b"), ["group"], [], data={"k": 1})
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        message.data = "other"  # type: ignore[misc]
    assert len(repr(StreamMessage([], [], [], data="x" * 1000))) < 200
    with pytest.raises(TypeError, match=r"invalid docks 5: expected a name, a list of names"):
        StreamMessage([], [], 5)
    with pytest.raises(TypeError, match=r"invalid nodes \('a', 1\)"):
        StreamMessage(["a", 1], [], [])


def test_stream_checks_its_arguments(logstream):
    with pytest.raises(TypeError, match="invalid groups"):
        logstream.stream("logkey", ["n"], [1], ["d"], 1.0, rows_formatter)
    with pytest.raises(TypeError, match="invalid formatter"):
        logstream.stream("logkey", ["n"], [], ["d"], 1.0, "not callable")
    with pytest.raises(ValueError, match="period 0"):
        logstream.stream("logkey", ["n"], [], ["d"], 0, rows_formatter)
    with pytest.raises(KeyError, match="no storage named 'nope'"):
        logstream.stream("nope", ["n"], [], ["d"], 1.0, rows_formatter)
    with pytest.raises(TypeError, match="invalid sqlfilter 3"):
        logstream.stream("logkey", ["n"], [], ["d"], 1.0, rows_formatter, sqlfilter=3)
    logstream.stream("logkey", ["n"], [], ["d"], 1.0, rows_formatter)
    with pytest.raises(ValueError, match="already streamed"):
        logstream.stream("logkey", ["n"], [], ["d"], 1.0, rows_formatter)


def test_addStorage_checks_the_lists(logstream):
    with pytest.raises(ConfigError, match=r"has 2 keys \['a', 'b'\] but 1 types"):
        logstream.addStorage("other", ["a", "b"], ["INTEGER"])
    with pytest.raises(ConfigError, match="expected two lists"):
        logstream.addStorage("other", "a", "INTEGER")
    with pytest.raises(ConfigError, match="invalid type 'NUMBER'"):
        logstream.addStorage("other", ["a"], ["NUMBER"])
    with pytest.raises(ValueError, match="takes 3 values"):
        logstream.storeData("logkey", 1.0, "too few")


def test_sqlfilter_filters_rows(logstream):
    for level in (10, 30, 20, 40):
        logstream.storeData("logkey", float(level), "n", level, "m")
    messenger = RecordingMessenger()
    logstream.stream("logkey", "n", None, "d", 1.0, rows_formatter, sqlfilter="level >= 30")
    logstream.doUpdates(1001.0, messenger)
    assert [row[2] for row in sent_rows(messenger)] == [30, 40]
    logstream.storeData("logkey", 5.0, "n", 5, "filtered out")
    logstream.doUpdates(1002.0, messenger)
    assert len(messenger.sent) == 1
    assert logstream.streamer.stream_status("logkey").last_id == 5  # moved past it
    logstream.storeData("logkey", 6.0, "n", 50, "passes")
    logstream.doUpdates(1003.0, messenger)
    assert [row[2] for row in sent_rows(messenger)] == [30, 40, 50]


@pytest.mark.parametrize(
    "sqlfilter",
    [
        "level >= 30 OR name = 'root'",
        "level >= 30) OR (1 = 1",
        "level >= 30 OR 1 -- and a comment",
        '0) UNION SELECT "_id", "timestamp", name, level, msg FROM logkey WHERE (1',
    ],
)
def test_sqlfilter_cannot_resend_old_rows(logstream, sqlfilter):
    logstream.storeData("logkey", 1.0, "root", 10, "old")
    logstream.storeData("logkey", 2.0, "root", 40, "old")
    messenger = RecordingMessenger()
    logstream.stream("logkey", "n", None, "d", 1.0, rows_formatter, sqlfilter=sqlfilter)
    logstream.doUpdates(1001.0, messenger)
    assert [row[0] for row in sent_rows(messenger)] == [1.0, 2.0]
    logstream.storeData("logkey", 3.0, "root", 50, "new")
    logstream.doUpdates(1002.0, messenger)
    assert [message.data for message in messenger.sent][1:] == [[(3.0, "root", 50, "new")]]
    logstream.doUpdates(1003.0, messenger)
    assert len(messenger.sent) == 2


@pytest.mark.parametrize(
    "sqlfilter",
    ["level >= 30 OR name = 'root'", "level >= 30) OR (1 = 1", "level >= 30 OR 1 -- comment"],
)
def test_sqlfilter_stays_inside_the_streamers_condition(sqlfilter):
    """The select alone, without the check of the row ids in Python, keeps to its range."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute(
            'CREATE TABLE logkey ("_id" INTEGER PRIMARY KEY, "timestamp" REAL, name, level)'
        )
        conn.executemany(
            "INSERT INTO logkey VALUES (?, ?, ?, ?)", [(i, i, "root", 10 * i) for i in (1, 2, 3)]
        )
        query = streamer_module._select_query("logkey", ("timestamp", "name", "level"), sqlfilter)
        assert [row[0] for row in conn.execute(query, (2, 3, -1))] == [3]
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("sqlfilter", "reason"),
    [
        ("levle >= 30", "no such column: levle"),
        ("level >= 30; DROP TABLE logkey", ""),
        ("level >= ?", "bindings"),
        ("level >= 30 /* unterminated", ""),
    ],
)
def test_invalid_sqlfilter_is_refused_by_stream(logstream, sqlfilter, reason):
    with pytest.raises(
        ConfigError, match=rf"invalid sqlfilter .* for storage 'logkey': .*{reason}"
    ):
        logstream.stream("logkey", "n", None, "d", 1.0, rows_formatter, sqlfilter=sqlfilter)
    logstream.storeData("logkey", 1.0, "root", 10, "table still there")
    with pytest.raises(KeyError, match="not streamed"):
        logstream.stopStream("logkey")


@pytest.mark.parametrize("sqlfilter", [None, "", "  "])
def test_empty_sqlfilter_is_no_filter(logstream, sqlfilter):
    logstream.storeData("logkey", 1.0, "root", 10, "m")
    messenger = RecordingMessenger()
    logstream.stream("logkey", "n", None, "d", 1.0, rows_formatter, sqlfilter=sqlfilter)
    logstream.doUpdates(1001.0, messenger)
    assert sent_rows(messenger) == [(1.0, "root", 10, "m")]


def test_doUpdates_returns_the_next_time(logstream, clock):
    messenger = RecordingMessenger()
    assert logstream.doUpdates(1000.0, messenger) is None  # nothing streamed
    logstream.addStorage("other", ["v"], ["INTEGER"])
    logstream.stream("logkey", "n", None, "d", 10.0, rows_formatter)
    logstream.stream("other", "n", None, "d", 4.0, rows_formatter)
    assert logstream.doUpdates(1000.0, messenger) == 1004.0
    logstream.storeData("logkey", 1.0, "root", 10, "m")
    assert logstream.doUpdates(1004.0, messenger) == 1008.0
    assert messenger.sent == []  # logkey is not due before 1010
    assert logstream.doUpdates(1010.0, messenger) == 1012.0
    assert len(messenger.sent) == 1
    assert logstream.doUpdates(1037.0, messenger) == 1040.0  # no burst after a gap
    clock.now = 1041.0
    assert logstream.doUpdates(None, messenger) == 1044.0  # None: the streamer's clock
    logstream.stopStream("other")
    assert logstream.doUpdates(1045.0, messenger) == 1050.0


def test_doUpdates_needs_a_messenger(logstream):
    with pytest.raises(TypeError, match="invalid messenger .*: expected a send"):
        logstream.doUpdates(1000.0, object())


def test_stopStream_returns_userdata(logstream):
    userdata = {"level": 20}
    logstream.stream("logkey", "n", None, "d", 1.0, rows_formatter, userdata=userdata)
    assert logstream.stopStream("logkey") is userdata
    with pytest.raises(KeyError, match="'logkey' is not streamed"):
        logstream.stopStream("logkey")
    messenger = RecordingMessenger()
    logstream.storeData("logkey", 1.0, "root", 10, "after the stop")
    assert logstream.doUpdates(2000.0, messenger) is None
    assert messenger.attempts == []
    logstream.stream("logkey", "n", None, "d", 1.0, rows_formatter)  # streamed again
    assert logstream.stopStream("logkey") is None


def test_memory_database_with_threadHack_is_used_from_two_threads():
    logstream = SqliteDataStreamer(sqlitename=":memory:", threadHack=True)
    try:
        logstream.addStorage("samples", ["writer", "seq"], ["VARCHAR", "INTEGER"])
        logstream.stream("samples", ["n"], None, ["d"], 0.001, rows_formatter)
        messenger = RecordingMessenger()
        writing_done = threading.Event()

        def write(writer: str) -> None:
            for seq in range(200):
                logstream.storeData("samples", time.time(), writer, seq)

        def update() -> None:
            while not writing_done.is_set():
                logstream.doUpdates(time.time(), messenger)
                time.sleep(0.001)

        writers = [threading.Thread(target=write, args=(name,)) for name in ("a", "b")]
        updater = threading.Thread(target=update)
        for thread in (*writers, updater):
            thread.start()
        for thread in writers:
            thread.join(30)
        writing_done.set()
        updater.join(30)
        assert not any(thread.is_alive() for thread in (*writers, updater))
        logstream.doUpdates(time.time() + 1, messenger)  # the rest, from this thread
        received = [(row[1], row[2]) for row in sent_rows(messenger)]
        assert sorted(received) == sorted((w, seq) for w in ("a", "b") for seq in range(200))
    finally:
        logstream.close()


def test_failed_send_resends_the_same_rows_exactly_once(logstream, caplog):
    logstream.storeData("logkey", 1.0, "root", 10, "one")
    logstream.storeData("logkey", 2.0, "root", 20, "two")
    messenger = RecordingMessenger(failures=1)
    logstream.stream("logkey", "n", "g", "d", 1.0, rows_formatter)
    with caplog.at_level(logging.WARNING, logger="mqsync.streamer"):
        logstream.doUpdates(1001.0, messenger)
        assert len(messenger.attempts) == 1 and messenger.sent == []
        logstream.storeData("logkey", 3.0, "root", 30, "three")
        logstream.doUpdates(1002.0, messenger)
        logstream.doUpdates(1003.0, messenger)
    assert [row[0] for row in messenger.attempts[0].data] == [1.0, 2.0]
    assert [row[0] for row in sent_rows(messenger)] == [1.0, 2.0, 3.0]
    assert len(messenger.attempts) == 2
    status = logstream.streamer.stream_status("logkey")
    assert (status.failures, status.sent_batches, status.sent_rows) == (1, 1, 3)
    [record] = caplog.records
    assert "sent again at the next period" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is ConnectionError


def test_failed_formatter_resends_the_same_rows(logstream, caplog):
    calls = []

    def formatter(self, data, userdata):
        calls.append(list(data))
        if len(calls) == 1:
            raise ValueError("cannot format")
        return data

    logstream.storeData("logkey", 1.0, "root", 10, "one")
    messenger = RecordingMessenger()
    caplog.set_level(logging.WARNING, logger="mqsync.streamer")
    logstream.stream("logkey", "n", "g", "d", 1.0, formatter)
    for now in (1001.0, 1002.0, 1003.0):
        logstream.doUpdates(now, messenger)
    assert calls == [[(1.0, "root", 10, "one")]] * 2
    assert sent_rows(messenger) == [(1.0, "root", 10, "one")]
    assert logstream.streamer.stream_status("logkey").failures == 1
    assert len(caplog.records) == 1


def test_seed_stream_run_without_a_messenger_keeps_its_rows(logstream, caplog):
    logstream.storeData("logkey", 1.0, "root", 10, "kept")
    logstream.stream("logkey", "n", "g", "d", 1.0, rows_formatter)
    caplog.set_level(logging.WARNING, logger="mqsync.streamer")
    logstream.streamer.flush()  # the Pythonic loop has no messenger to send with
    assert logstream.streamer.stream_status("logkey").failures == 1
    assert isinstance(caplog.records[0].exc_info[1], StreamerError)
    assert "doUpdates(now, messenger)" in str(caplog.records[0].exc_info[1])
    messenger = RecordingMessenger()
    logstream.doUpdates(1001.0, messenger)
    assert sent_rows(messenger) == [(1.0, "root", 10, "kept")]


def test_doUpdates_also_runs_pythonic_streams(logstream):
    received = []
    logstream.streamer.stream("logkey", received.append, 1.0, lambda rows, _: rows, after_id=0)
    logstream.storeData("logkey", 1.0, "root", 10, "m")
    messenger = RecordingMessenger()
    logstream.doUpdates(1001.0, messenger)
    assert received == [[(1.0, "root", 10, "m")]]
    assert messenger.attempts == []


def test_an_sqlfilter_failing_on_some_rows_holds_back_only_its_own_stream(logstream, caplog):
    # the filter passes the check at stream() (an empty table) but fails on a row's data
    logstream.addStorage("other", ["v"], ["INTEGER"])
    logstream.storeData("logkey", 1.0, "root", 10, "not json")
    logstream.storeData("other", 1.0, 7)
    logstream.stream("logkey", "n", "g", "d", 1.0, rows_formatter,
                     sqlfilter="json_extract(msg, '$.x') > 1")
    logstream.stream("other", "n", "g", "d", 1.0, rows_formatter)
    messenger = RecordingMessenger()
    caplog.set_level(logging.WARNING, logger="mqsync.streamer")
    first = logstream.doUpdates(1001.0, messenger)
    second = logstream.doUpdates(1002.0, messenger)
    assert sent_rows(messenger) == [(1.0, 7)]  # the other stream went on
    assert first == 1002.0 and second == 1003.0  # the failing stream's schedule moves on
    assert logstream.streamer.stream_status("logkey").failures == 2
    assert "reading its rows failed" in caplog.text

"""Tests of mqsync.datalogger (no broker, no InfluxDB server; see test_datalogger_influx.py)."""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import types
from collections import Counter
from pathlib import Path

import attrs
import pytest

import mqsync.datalogger as dl
import mqsync.datalogger as influxdb_datalogger  # the one line a 2.4 user changes
from mqsync.errors import MqsyncError

pytest_plugins = ["pytester"]

logger = logging.getLogger(__name__)
DATA_FILE = "set-per-test-by-the-seed_files-fixture"
EVENT_FILE = "set-per-test-by-the-seed_files-fixture"

DURATION = dl.Field("duration", unit="s", numeric=True)
RESULT = dl.Field("result")
HOST = dl.Tag("hostname")
CASE = dl.Tag("case")
RUN = dl.Tag("run")
STEP = dl.Measurement("step", DURATION, RESULT, HOST, CASE, optional_tags=[RUN])


def tags(**values):
    return dl.TagMap.build(*[x for name, value in values.items() for x in (dl.Tag(name), value)])


class Recorder(dl.DatabaseWriter):
    """A writer that keeps every batch it was given."""

    def __init__(self, fail_times: int = 0):
        self.batches: list[tuple[list, list]] = []
        self.fail_times = fail_times
        self.closed = False

    def write_data(self, datalogger):
        assert isinstance(datalogger, dl.DataLogger)
        if self.fail_times:
            self.fail_times -= 1
            raise ConnectionError("database down")
        self.batches.append((datalogger.dataset, datalogger.events))

    def close(self):
        self.closed = True

    @property
    def entries(self):
        return [e for batch, _ in self.batches for e in batch]

    @property
    def events(self):
        return [e for _, batch in self.batches for e in batch]


# -- the seed's examples (influxdb-datalogger 2.4 README), verbatim but for the import -------


@pytest.fixture(autouse=True)
def seed_files(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "DATA_FILE", str(tmp_path / "data.json"))
    monkeypatch.setattr(sys.modules[__name__], "EVENT_FILE", str(tmp_path / "events.json"))


class DbWriter(influxdb_datalogger.DatabaseWriter):
    def write_data(self, datalogger: influxdb_datalogger.DataLogger):
        dataset = datalogger.dataset
        if os.path.exists(DATA_FILE):
            # If the file exists we are probably writing more than once in a test.
            # Since DbWriter just writes to a JSON file we need to essentially append to the existing data, which is what this does.  # noqa: E501

            loaded_dataset = json.load(open(DATA_FILE))  # noqa: SIM115
            dataset = [*loaded_dataset, *dataset]
        json.dump(dataset, open(DATA_FILE, "w"), indent=2)  # noqa: SIM115


class GrafanaEventWriter(influxdb_datalogger.DatabaseWriter):
    def write_data(self, datalogger: influxdb_datalogger.DataLogger):
        events = datalogger.events
        events_to_write = list()
        logger.info(events)
        for event in events:
            event: influxdb_datalogger.datalogger.Event
            marker_data = dict(time=int(event.start * 1000), timeEnd=int(event.stop * 1000), tags=event.tag_map, text=event.measurement)  # noqa: E501
            events_to_write.append(marker_data)

        if os.path.exists(EVENT_FILE):
            # If the file exists we are probably writing more than once in a test.
            # Since DbWriter just writes to a JSON file we need to essentially append to the existing data, which is what this does.  # noqa: E501

            loaded_events = json.load(open(EVENT_FILE))  # noqa: SIM115
            events_to_write = [*loaded_events, *events_to_write]
        json.dump(events_to_write, open(EVENT_FILE, "w"), indent=2)  # noqa: SIM115


def test_measure():
    f = influxdb_datalogger.Field("duration")
    t = influxdb_datalogger.Tag("identifier")
    m = influxdb_datalogger.Measurement("time-taken", f, t)
    tm = influxdb_datalogger.TagMap.build(t, "test")
    datalogger = influxdb_datalogger.DataLogger(DbWriter())

    def runner(arg1):
        logger.info(f"Taking measurement {m}: {arg1}")

    datalogger.measure(func=runner,
                       measurement=m,
                       field=f,
                       tag_map=tm,
                       logger=logger,
                       log_start=f"Starting {runner.__name__}",
                       log_end=f"Finished {runner.__name__}",
                       args=("test",))

    assert m in datalogger._dataset, f"Measurement {m} not in the dataset"


def test_measure_block():
    f = influxdb_datalogger.Field("duration")
    t = influxdb_datalogger.Tag("identifier")
    m = influxdb_datalogger.Measurement("time-taken", f, t)
    tm = influxdb_datalogger.TagMap.build(t, "test")
    datalogger = influxdb_datalogger.DataLogger()
    with datalogger.measure_block(m, f, tm):
        logger.info(f"Taking measurement {m}")

    assert m in datalogger._dataset, f"Measurement {m} not in the dataset"
    logger.info(datalogger._dataset)


class TestSeedEvents:
    """The seed shows ``test_events`` as a method (it uses ``self``); these are its helpers."""

    def assert_event_file_doesnt_exist(self):
        assert not os.path.exists(EVENT_FILE)

    def load_events_from_event_file(self):
        with open(EVENT_FILE) as file:
            return json.load(file)

    def test_events(self):
        f = influxdb_datalogger.Field("duration")
        t = influxdb_datalogger.Tag("identifier")
        h = influxdb_datalogger.Tag("hostname")

        m = influxdb_datalogger.Measurement("time-taken", f, t)
        etm = influxdb_datalogger.TagMap.build(h, socket.gethostname())

        datalogger = influxdb_datalogger.DataLogger(DbWriter(), GrafanaEventWriter())

        with datalogger.measure_block(m, f, influxdb_datalogger.TagMap.build(t, "first"), event_tags=etm):  # noqa: E501
            logger.info(f"Taking first measurement and logging events {m}")

        with datalogger.measure_block(m, f, influxdb_datalogger.TagMap.build(t, "second"), event_tags=etm):  # noqa: E501
            logger.info(f"Taking second measurement and logging events {m}")

        with datalogger.measure_block(m, f, influxdb_datalogger.TagMap.build(t, "third")):
            logger.info(f"Taking third measurement and NOT logging events {m}")

        self.assert_event_file_doesnt_exist()

        datalogger.write_data()

        loaded_events = self.load_events_from_event_file()
        logger.info(loaded_events)
        assert len(loaded_events) == 2


def test_seed_files_hold_the_2_4_shapes():
    """What the seed's writers stored, checked against the shapes of influxdb-datalogger 2.4."""
    f = influxdb_datalogger.Field("duration")
    t = influxdb_datalogger.Tag("identifier")
    h = influxdb_datalogger.Tag("hostname")
    m = influxdb_datalogger.Measurement("time-taken", f, t)
    datalogger = influxdb_datalogger.DataLogger(DbWriter(), GrafanaEventWriter())
    with datalogger.measure_block(m, f, influxdb_datalogger.TagMap.build(t, "a"),
                                  event_tags=influxdb_datalogger.TagMap.build(h, "node01")):
        pass
    datalogger.write_data()
    datalogger.log(m, influxdb_datalogger.FieldMap.build(f, 2.5),
                   influxdb_datalogger.TagMap.build(t, "b"))
    datalogger.write_data()

    with open(DATA_FILE) as file:
        data = json.load(file)
    assert [d["tags"] for d in data] == [{"identifier": "a"}, {"identifier": "b"}]
    assert all(set(d) == {"measurement", "fields", "tags", "time"} for d in data)
    assert data[1]["fields"] == {"duration": 2.5} and data[1]["measurement"] == "time-taken"
    datetime.datetime.fromisoformat(data[0]["time"])  # str() of a naive UTC datetime
    with open(EVENT_FILE) as file:
        (marker,) = json.load(file)
    assert marker["tags"] == {"hostname": "node01"} and marker["text"] == "time-taken"
    assert 0 <= marker["timeEnd"] - marker["time"] < 1000


# -- Field, Tag, Measurement, TagMap ---------------------------------------------------------


def test_declarations_are_frozen_strings_equal_to_their_name():
    assert DURATION == "duration" and hash(DURATION) == hash("duration")
    assert isinstance(STEP, str) and f"{STEP}" == "step" and json.dumps({STEP: HOST}) == \
        '{"step": "hostname"}'
    assert STEP.fields == (DURATION, RESULT) and STEP.tags == (HOST, CASE, RUN)
    assert STEP.optional_tags == (RUN,) and STEP.key_name == "step"
    assert DURATION.field_name == "duration" and HOST.tag_name == "hostname"
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        DURATION.unit = "ms"
    assert repr(DURATION) == "Field('duration', unit='s', numeric=True)"
    assert repr(dl.Measurement("m", DURATION, HOST)) == \
        "Measurement('m', fields=['duration'], tags=['hostname'])"
    assert dl.Field("x", 1, 2, func=max).args_func == (1, 2)


@pytest.mark.parametrize("make, message", [
    (lambda: dl.Field(""), "invalid field name ''"),
    (lambda: dl.Tag(3), "invalid tag name 3"),
    (lambda: dl.Measurement("  "), "invalid measurement name"),
    (lambda: dl.Tag("t", func=str, default="x"), "either func or default"),
    (lambda: dl.Measurement("m", dl.Field("x"), dl.Tag("x")), "'x' declared as field and tag"),
])
def test_bad_declarations_raise_clear_errors(make, message):
    with pytest.raises(dl.InvalidMeasurement, match=message):
        make()


def test_measurement_rejects_things_that_are_not_fields_or_tags():
    with pytest.raises(TypeError, match="'x' \\(str\\) is neither a Field nor a Tag"):
        dl.Measurement("m", DURATION, "x")
    with pytest.raises(TypeError, match="optional tag"):
        dl.Measurement("m", DURATION, optional_tags=["run"])


def test_measurement_keeps_the_first_of_duplicate_declarations():
    m = dl.Measurement("m", DURATION, dl.Field("duration"), HOST, HOST)
    assert m.fields == (DURATION,) and m.fields[0].unit == "s" and m.tags == (HOST,)


def test_tag_map_is_an_immutable_mapping_by_tag_or_name():
    tm = dl.TagMap.build(HOST, "node01", CASE, 7)
    assert tm[HOST] == "node01" and tm["case"] == 7 and list(tm) == [HOST, CASE]
    assert all(isinstance(k, dl.Tag) for k in dl.TagMap({"hostname": "x"}))
    assert tm == {"hostname": "node01", "case": 7} and hash(tm) == hash(dl.TagMap(dict(tm)))
    assert (tm | dl.TagMap.build(CASE, 8))["case"] == 8 and tm["case"] == 7
    assert tm.copy() is tm and repr(tm) == "TagMap({'hostname': 'node01', 'case': 7})"
    with pytest.raises(TypeError):
        tm[RUN] = 1
    with pytest.raises(TypeError, match="immutable"):
        tm.add(RUN, 1)


@pytest.mark.parametrize("items, message", [
    ((HOST, "a", CASE), "odd number of items \\(3\\)"),
    (("a", HOST), "the value for 'a' is the Tag 'hostname'"),
    ((DURATION, 1.0), "key Field\\('duration'.*is not a Tag"),
    ((5, "x"), "key 5 \\(int\\) is not a Tag"),
])
def test_tag_map_build_rejects_bad_pairs(items, message):
    with pytest.raises(dl.InvalidMeasurement, match=message):
        dl.TagMap.build(*items)


# -- log and its validation ------------------------------------------------------------------


def test_log_one_value_and_the_2_4_field_map_form():
    datalogger = dl.DataLogger()
    datalogger.log(STEP, DURATION, 1.5, tags(hostname="a", case="c1"))
    datalogger.log(STEP, dl.FieldMap.build(DURATION, 2, RESULT, "ok"), tags(hostname="b", case=2))
    datalogger.log(measurement=STEP, fields_map={"duration": 3.0},
                   tags_map={"hostname": "c", "case": "c3", "run": 9})
    first, second, third = datalogger.dataset
    assert first.fields == {"duration": 1.5} and first.tags == {"hostname": "a", "case": "c1"}
    assert second["fields"] == {"duration": 2, "result": "ok"} and second.tags["case"] == 2
    assert third.tags == {"hostname": "c", "case": "c3", "run": 9}
    assert all(type(k) is dl.Field for k in second.fields)
    assert first.time_ns <= second.time_ns <= third.time_ns
    assert first.measurement is STEP and datalogger.last_data_entry is third


def test_log_at_a_given_time():
    datalogger = dl.DataLogger()
    at = datetime.datetime(2024, 5, 1, 12, 0, 0, 250000)
    datalogger.log(STEP, dl.FieldMap.build(DURATION, 1), tags(hostname="a", case="c"), at)
    datalogger.log(STEP, DURATION, 2, tags(hostname="a", case="c"),
                   time=at.replace(tzinfo=datetime.timezone(datetime.timedelta(hours=2))))
    datalogger.log(STEP, DURATION, 3, tags(hostname="a", case="c"), time=1_700_000_000_123_456_789)
    datalogger.log(STEP, DURATION, 4, tags(hostname="a", case="c"),
                   time=types.SimpleNamespace(posix_ns=5))
    first, second, third, fourth = datalogger.dataset
    assert first.time == "2024-05-01 12:00:00.250000"
    assert first.time_ns == 1_714_564_800_250_000_000
    assert second.time_ns == first.time_ns - 2 * 3600 * 10**9
    assert third.time_ns == 1_700_000_000_123_456_789 and fourth.time_ns == 5
    with pytest.raises(TypeError, match="invalid time 1.5"):
        datalogger.log(STEP, DURATION, 2, tags(hostname="a", case="c"), time=1.5)


@pytest.mark.parametrize("call, message", [
    (lambda d: d.log(STEP, dl.Field("speed"), 1.0, tags(hostname="a", case="c")),
     "field 'speed' is not declared on measurement 'step' \\(declared fields: duration, result\\)"),
    (lambda d: d.log(STEP, DURATION, 1.0, tags(hostname="a", case="c", color="red")),
     "tag 'color' is not declared on measurement 'step' \\(declared tags: hostname, case, run\\)"),
    (lambda d: d.log(STEP, DURATION, 1.0, tags(hostname="a")),
     "tag 'case' of measurement 'step' has no value"),
    (lambda d: d.log(STEP, DURATION, "fast", tags(hostname="a", case="c")),
     "field 'duration' of measurement 'step' needs a number \\(int or float\\), got 'fast' \\(str"),
    (lambda d: d.log(STEP, DURATION, True, tags(hostname="a", case="c")),
     "needs a number .*got True \\(bool\\)"),
    (lambda d: d.log(STEP, RESULT, None, tags(hostname="a", case="c")),
     "field 'result' of measurement 'step' got None"),
    (lambda d: d.log(STEP, dl.FieldMap(), tags(hostname="a", case="c")),
     "no field value given for measurement 'step'"),
])
def test_log_rejects_entries_that_do_not_fit(call, message):
    datalogger = dl.DataLogger()
    with pytest.raises(dl.InvalidMeasurement, match=message) as caught:
        call(datalogger)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, MqsyncError)
    assert datalogger.dataset == []


def test_log_rejects_arguments_of_the_wrong_kind():
    datalogger = dl.DataLogger()
    with pytest.raises(TypeError, match="measurement must be a Measurement, got 'step'"):
        datalogger.log("step", DURATION, 1.0)
    with pytest.raises(TypeError, match="needs a value"):
        datalogger.log(STEP, DURATION)
    with pytest.raises(TypeError, match="got both tag_map and tags_map"):
        datalogger.log(STEP, DURATION, 1.0, tags(hostname="a", case="c"), tags_map={})
    with pytest.raises(TypeError, match="needs a Field and a value, or a FieldMap"):
        datalogger.log(STEP, 3, 1.0)


def test_defaults_funcs_and_optional_tags_complete_an_entry():
    calls = []
    build = dl.Field("build", "x", func=lambda *a: calls.append(a) or 42)
    host = dl.Tag("hostname", default="node01")
    m = dl.Measurement("m", DURATION, build, host, dl.Tag("case"), optional_tags=[RUN])
    datalogger = dl.DataLogger()
    datalogger.log(m, DURATION, 0.5, dl.TagMap.build(dl.Tag("case"), "c", RUN, None))
    datalogger.log(m, DURATION, 0.5, dl.TagMap.build(dl.Tag("case"), "c", host, "node02"))
    first, second = datalogger.dataset
    assert first.fields == {"duration": 0.5, "build": 42} and calls == [("x",), ("x",)]
    assert first.tags == {"hostname": "node01", "case": "c"}
    assert second.tags["hostname"] == "node02"


def test_numeric_fields_turn_other_number_types_into_python_numbers():
    fractions = pytest.importorskip("fractions")
    datalogger = dl.DataLogger()
    datalogger.log(STEP, DURATION, fractions.Fraction(1, 4), tags(hostname="a", case="c"))
    assert datalogger.dataset[0].fields["duration"] == 0.25
    assert type(datalogger.dataset[0].fields["duration"]) is float


# -- measure, measure_block, events ----------------------------------------------------------


def test_measure_returns_the_result_and_logs_the_duration_and_an_event(caplog):
    datalogger = dl.DataLogger()
    caplog.set_level(logging.INFO)

    def work(a, b, *, c):
        time.sleep(0.02)
        return a + b + c

    result = datalogger.measure(work, STEP, DURATION, tags(hostname="a", case="c"),
                                event_tags=dl.TagMap.build(dl.Tag("host"), "node01"),
                                log_start="go", log_end="done", args=(1, 2), kwargs={"c": 3},
                                text="work ran")
    assert result == 6
    (entry,) = datalogger.dataset
    (event,) = datalogger.events
    assert 0.02 <= entry.fields["duration"] < 1.0
    assert event.measurement is STEP and event.tag_map == {"host": "node01"}
    assert event.tags_map is event.tag_map and event.end == event.stop and event.text == "work ran"
    assert event.start < event.stop and event.duration == pytest.approx(
        entry.fields["duration"], abs=1e-6)
    assert event.stop_ns - event.start_ns == round(entry.fields["duration"] * 1e9)
    assert [r.message for r in caplog.records] == ["go", "done"]
    assert caplog.records[0].name == "mqsync.datalogger"


def test_measure_logs_the_duration_when_the_function_raises_and_reraises():
    datalogger = dl.DataLogger()

    def broken():
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        datalogger.measure(func=broken, measurement=STEP, field=DURATION,
                           tags_map=tags(hostname="a", case="c"), event_tags={"host": "x"})
    assert len(datalogger.dataset) == 1 and len(datalogger.events) == 1


def test_measure_checks_everything_before_running_the_function():
    datalogger = dl.DataLogger()
    ran = []
    with pytest.raises(dl.InvalidMeasurement, match="tag 'case' .* has no value"):
        datalogger.measure(lambda: ran.append(1), STEP, DURATION, tags(hostname="a"))
    with pytest.raises(dl.InvalidMeasurement, match="field 'speed' is not declared"):
        datalogger.measure(lambda: ran.append(1), STEP, dl.Field("speed"))
    with pytest.raises(TypeError, match="args must be a tuple"):
        datalogger.measure(lambda: ran.append(1), STEP, DURATION, args="ab")
    with pytest.raises(TypeError, match="needs a callable"):
        datalogger.measure(None, STEP, DURATION)
    assert ran == [] and datalogger.dataset == []


def test_measure_of_a_non_numeric_field_is_refused_before_running():
    datalogger = dl.DataLogger()
    m = dl.Measurement("m", RESULT)
    datalogger.measure(lambda: None, m, RESULT)  # a duration fits any field that is not numeric
    assert isinstance(datalogger.dataset[0].fields["result"], float)


def test_measure_block_measures_the_block(caplog):
    datalogger = dl.DataLogger()
    caplog.set_level(logging.DEBUG)
    with datalogger.measure_block(STEP, DURATION, tags(hostname="a", case="c"),
                                  logger=logger, log_lvl=logging.DEBUG) as block:
        time.sleep(0.02)
    (entry,) = datalogger.dataset
    assert entry.fields["duration"] == block.duration and block.duration >= 0.02
    assert block.start_time < block.end_time and datalogger.events == []
    assert [r.message for r in caplog.records] == [
        "Starting block-measurement for step", "Stopping block-measurement for step"]
    assert {r.levelno for r in caplog.records} == {logging.DEBUG}


def test_measure_block_logs_when_the_block_raises_and_does_not_swallow():
    datalogger = dl.DataLogger()
    with pytest.raises(RuntimeError), datalogger.measure_block(
            STEP, DURATION, tag_map=tags(hostname="a", case="c"), event_tags={"x": 1}):
        raise RuntimeError
    assert len(datalogger.dataset) == 1 and datalogger.last_event.tags == {"x": 1}


def test_measure_block_is_checked_when_created():
    with pytest.raises(dl.InvalidMeasurement, match="has no value"):
        dl.DataLogger().measure_block(STEP, DURATION, tags(case="c"))


def test_log_event_takes_datetimes_and_refuses_a_backwards_event():
    datalogger = dl.DataLogger()
    start = datetime.datetime(2024, 1, 1)
    datalogger.log_event(STEP, start, start + datetime.timedelta(seconds=2), {"host": "a"})
    (event,) = datalogger.events
    assert event.start == 1_704_067_200.0 and event.stop == 1_704_067_202.0
    assert event.duration == 2.0 and dict(event) == {
        "measurement": STEP, "start": event.start, "stop": event.stop, "tags_map": {"host": "a"}}
    with pytest.raises(dl.InvalidMeasurement, match="stops before it starts"):
        datalogger.log_event(STEP, start, start - datetime.timedelta(seconds=1))


# -- write_data ------------------------------------------------------------------------------


def test_write_data_hands_each_batch_to_every_writer_once_and_clears_it():
    first, second = Recorder(), Recorder()
    datalogger = dl.DataLogger(first, second)
    datalogger.log(STEP, DURATION, 1.0, tags(hostname="a", case="c"))
    with datalogger.measure_block(STEP, DURATION, tags(hostname="a", case="c"),
                                  event_tags={"h": 1}):
        pass
    datalogger.write_data()
    assert datalogger.dataset == [] and datalogger.events == [] and STEP not in datalogger._dataset
    datalogger.write_data()  # nothing new: writers are not called
    datalogger.log(STEP, DURATION, 2.0, tags(hostname="a", case="c"))
    datalogger.write_data()
    for writer in (first, second):
        assert [len(d) for d, _ in writer.batches] == [2, 1]
        assert [len(e) for _, e in writer.batches] == [1, 0]
        assert [e.fields["duration"] for e in writer.entries][::2] == [1.0, 2.0]


def test_a_failing_writer_keeps_its_batch_and_the_others_get_no_duplicates():
    flaky, healthy = Recorder(fail_times=1), Recorder()
    datalogger = dl.DataLogger(flaky, healthy)
    datalogger.log(STEP, DURATION, 1.0, tags(hostname="a", case="c"))
    with pytest.raises(dl.WriteFailed, match="1 writer\\(s\\) failed.*database down") as caught:
        datalogger.write_data()
    assert caught.value.failures[0][0] is flaky and datalogger.dataset == []
    datalogger.log(STEP, DURATION, 2.0, tags(hostname="a", case="c"))
    datalogger.write_data()
    assert [e.fields["duration"] for e in flaky.entries] == [1.0, 2.0]
    assert [e.fields["duration"] for e in healthy.entries] == [1.0, 2.0]
    assert len(healthy.batches) == 2 and len(flaky.batches) == 1


def test_a_failing_writer_keeps_at_most_max_backlog_records(caplog):
    down = Recorder(fail_times=10)
    datalogger = dl.DataLogger(down, max_backlog=3)
    for value in range(5):
        datalogger.log(STEP, DURATION, float(value), tags(hostname="a", case="c"))
    with pytest.raises(dl.WriteFailed):
        datalogger.write_data()
    assert datalogger.dropped == 2 and "dropped the 2 oldest records" in caplog.text
    down.fail_times = 0
    datalogger.write_data()
    assert [e.fields["duration"] for e in down.entries] == [2.0, 3.0, 4.0]


def test_continuous_write_writes_on_every_log_and_only_warns_on_failure(caplog):
    recorder = Recorder()
    datalogger = dl.DataLogger(recorder, continuous_write=True)
    datalogger.log(STEP, DURATION, 1.0, tags(hostname="a", case="c"))
    assert datalogger.measure(lambda: "r", STEP, DURATION, tags(hostname="a", case="c"),
                              event_tags={"h": 1}) == "r"
    assert [(len(d), len(e)) for d, e in recorder.batches] == [(1, 0), (1, 1)]
    recorder.fail_times = 1
    datalogger.log(STEP, DURATION, 3.0, tags(hostname="a", case="c"))  # does not raise
    assert "continuous write: 1 writer(s) failed" in caplog.text
    datalogger.log(STEP, DURATION, 4.0, tags(hostname="a", case="c"))
    assert [e.fields["duration"] for e in recorder.entries][-2:] == [3.0, 4.0]


def test_the_context_manager_writes_and_closes_the_writers():
    recorder = Recorder()
    with dl.DataLogger(recorder) as datalogger:
        datalogger.log(STEP, DURATION, 1.0, tags(hostname="a", case="c"))
    assert len(recorder.entries) == 1 and recorder.closed


def test_writers_must_be_database_writers():
    with pytest.raises(TypeError, match="does not derive from mqsync.datalogger.DatabaseWriter"):
        dl.DataLogger(object())


def test_post_processing_runs_on_each_batch_and_may_add_entries():
    recorder = Recorder()
    datalogger = dl.DataLogger(recorder)
    total = dl.Measurement("total", DURATION)
    seen = []

    @dl.PostProcessing.register(STEP, total)
    def add_total(batch, **entries):
        seen.append({name: len(found or []) for name, found in entries.items()})
        batch.log(total, DURATION, sum(e.fields["duration"] for e in entries["step"]))

    datalogger.add_post_processing(add_total)
    datalogger.log(STEP, DURATION, 1.0, tags(hostname="a", case="c"))
    datalogger.log(STEP, DURATION, 2.0, tags(hostname="a", case="c"))
    datalogger.write_data()
    assert seen == [{"step": 2, "total": 0}]
    assert recorder.entries[-1].measurement is total and recorder.entries[-1].fields == {
        "duration": 3.0}
    with pytest.raises(TypeError, match="not marked"):
        datalogger.add_post_processing(lambda batch: None)


def test_a_failing_post_processor_gives_the_batch_back():
    recorder = Recorder()
    datalogger = dl.DataLogger(recorder)

    @dl.PostProcessing.register(STEP)
    def broken(batch, **entries):
        raise ValueError("bad post-processing")

    datalogger.add_post_processing(broken)
    datalogger.log(STEP, DURATION, 1.0, tags(hostname="a", case="c"))
    with pytest.raises(ValueError, match="bad post-processing"):
        datalogger.write_data()
    assert len(datalogger.dataset) == 1 and recorder.batches == []


def test_str_is_the_dataset_as_json():
    datalogger = dl.DataLogger()
    datalogger.log(STEP, DURATION, 1.0, tags(hostname="a", case="c"))
    assert json.loads(str(datalogger))["step"][0]["fields"] == {"duration": 1.0}


# -- many threads ----------------------------------------------------------------------------


def test_many_threads_log_while_another_writes_nothing_lost_or_duplicated():
    recorder = Recorder()
    datalogger = dl.DataLogger(recorder)
    threads, per_thread = 8, 1000
    done = threading.Event()
    start = threading.Barrier(threads + 1)

    def log_many(number):
        start.wait()
        for sequence in range(per_thread):
            datalogger.log(STEP, dl.FieldMap.build(DURATION, sequence, RESULT, number),
                           tags(hostname=f"t{number}", case="c"))

    def write_repeatedly():
        start.wait()
        while not done.is_set():
            datalogger.write_data()

    loggers = [threading.Thread(target=log_many, args=(n,)) for n in range(threads)]
    writer = threading.Thread(target=write_repeatedly)
    for thread in [*loggers, writer]:
        thread.start()
    for thread in loggers:
        thread.join(60)
    done.set()
    writer.join(60)
    datalogger.write_data()

    seen = Counter((e.fields["result"], e.fields["duration"]) for e in recorder.entries)
    assert len(recorder.entries) == threads * per_thread
    assert set(seen) == {(n, s) for n in range(threads) for s in range(per_thread)}
    assert max(seen.values()) == 1 and len(recorder.batches) > 1
    for number in range(threads):  # each thread's entries stay in order
        mine = [e.fields["duration"] for e in recorder.entries if e.fields["result"] == number]
        assert mine == list(range(per_thread))


def test_many_threads_measure_with_continuous_write():
    recorder = Recorder()
    datalogger = dl.DataLogger(recorder, continuous_write=True)
    threads, per_thread = 8, 200

    def measure_many(number):
        for sequence in range(per_thread):
            with datalogger.measure_block(STEP, DURATION,
                                          tags(hostname=f"t{number}", case=sequence),
                                          event_tags={"thread": number}):
                pass

    workers = [threading.Thread(target=measure_many, args=(n,)) for n in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(60)
    datalogger.write_data()
    keys = Counter((e.tags["hostname"], e.tags["case"]) for e in recorder.entries)
    assert len(keys) == threads * per_thread and max(keys.values()) == 1
    assert len(recorder.events) == threads * per_thread
    for entries, events in recorder.batches:  # an entry and its event go out together
        assert len(entries) == len(events)


# -- JsonFileWriter --------------------------------------------------------------------------


def test_json_file_writer_appends_json_lines(tmp_path):
    path = tmp_path / "log.jsonl"
    datalogger = dl.DataLogger(dl.JsonFileWriter(path))
    datalogger.log(STEP, dl.FieldMap.build(DURATION, 1.5, RESULT, "ok"), tags(hostname="a", case=1),
                   time=1_000_000_123)
    datalogger.log_event(STEP, 2_000_000_000, 3_500_000_000, {"host": "a"}, text="ran")
    datalogger.write_data()
    datalogger.log(STEP, DURATION, 2.5, tags(hostname="b", case=2))
    datalogger.write_data()
    data, event, later = dl.JsonFileWriter.read(path)
    assert data == {"kind": "data", "measurement": "step", "fields": {"duration": 1.5,
                    "result": "ok"}, "tags": {"hostname": "a", "case": 1},
                    "time": "1970-01-01 00:00:01", "time_ns": 1_000_000_123}
    assert event == {"kind": "event", "measurement": "step", "start": 2.0, "stop": 3.5,
                     "tags_map": {"host": "a"}, "text": "ran", "start_ns": 2_000_000_000,
                     "stop_ns": 3_500_000_000}
    assert later["fields"] == {"duration": 2.5}


def test_json_file_writer_repairs_a_torn_last_line_and_read_skips_it(tmp_path, caplog):
    path = tmp_path / "log.jsonl"
    path.write_text('{"kind": "data", "measurem')
    datalogger = dl.DataLogger(dl.JsonFileWriter(path))
    datalogger.log(STEP, DURATION, 1.0, tags(hostname="a", case="c"))
    datalogger.write_data()
    (record,) = dl.JsonFileWriter.read(path)
    assert record["fields"] == {"duration": 1.0} and "1: skipped a line" in caplog.text


def test_json_file_writer_is_safe_across_threads_and_processes(tmp_path):
    path = tmp_path / "shared.jsonl"
    script = textwrap.dedent(f"""
        import mqsync.datalogger as dl
        m = dl.Measurement("m", dl.Field("n"), dl.Tag("who"))
        d = dl.DataLogger(dl.JsonFileWriter({str(path)!r}))
        for i in range(300):
            d.log(m, dl.Field("n"), i, dl.TagMap.build(dl.Tag("who"), "process"))
            if i % 10 == 9:
                d.write_data()
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen([sys.executable, "-c", script], env=env)

    def in_thread(name):
        m = dl.Measurement("m", dl.Field("n"), dl.Tag("who"))
        d = dl.DataLogger(dl.JsonFileWriter(path))  # one writer (and lock) per thread
        for i in range(300):
            d.log(m, dl.Field("n"), i, dl.TagMap.build(dl.Tag("who"), name))
            if i % 10 == 9:
                d.write_data()

    workers = [threading.Thread(target=in_thread, args=(f"t{n}",)) for n in range(4)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(60)
    assert process.wait(60) == 0
    with open(path) as file:
        lines = file.read().splitlines()
    records = [json.loads(line) for line in lines]  # every line is whole
    counts = Counter(r["tags"]["who"] for r in records)
    assert counts == {"process": 300, "t0": 300, "t1": 300, "t2": 300, "t3": 300}


# -- line protocol ---------------------------------------------------------------------------


def test_line_protocol_escapes_and_types():
    m = dl.Measurement("time taken,x", dl.Field("d u"), dl.Field("n"), dl.Field("ok"),
                       dl.Field("s"), dl.Tag("host name"), dl.Tag("b"),
                       optional_tags=[dl.Tag("empty")])
    entry = dl.DataEntry(m, {"d u": 1.5, "n": 3, "ok": True, "s": 'say "hi" \\ '},
                         {"host name": "a,b=c d", "b": "x", "empty": ""}, time=17)
    (line,) = dl.to_line_protocol([entry])
    assert line == ('time\\ taken\\,x,b=x,host\\ name=a\\,b\\=c\\ d '
                    'd\\ u=1.5,n=3i,ok=true,s="say \\"hi\\" \\\\ " 17')


def test_line_protocol_leaves_out_what_it_cannot_hold(caplog):
    m = dl.Measurement("m", dl.Field("a"), dl.Field("b"))
    lines = dl.to_line_protocol([dl.DataEntry(m, {"a": float("nan"), "b": 1.0}, time=1),
                                 dl.DataEntry(m, {"a": float("inf")}, time=2)])
    assert lines == ["m b=1.0 1"] and "cannot hold nan" in caplog.text


def test_line_protocol_of_events():
    event = dl.Event.from_ns(STEP, 1_000_000_000, 3_500_000_000, {"host": "a"}, "ran it")
    assert dl.to_line_protocol([], [event], events_measurement="markers") == [
        'markers,host=a,measurement=step text="ran it",duration=2.5,timeEnd=3500i 1000000000']


def test_line_protocol_file_writer_appends(tmp_path):
    path = tmp_path / "data.lp"
    datalogger = dl.DataLogger(dl.LineProtocolFileWriter(path))
    for value in (1.0, 2.0):
        datalogger.log(STEP, DURATION, value, tags(hostname="a", case="c"), time=int(value))
        datalogger.write_data()
    assert path.read_text() == ("step,case=c,hostname=a duration=1.0 1\n"
                                "step,case=c,hostname=a duration=2.0 2\n")


def test_influxdb_writer_explains_the_missing_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "influxdb", None)
    with pytest.raises(ImportError, match=r"pip install 'mqsync\[influx\]'"):
        dl.InfluxDBWriter()


def test_influxdb_writer_repr_has_no_password():
    pytest.importorskip("influxdb")
    writer = dl.InfluxDBWriter("127.0.0.1", 1, "db", username="u", password="secret")
    assert "secret" not in repr(writer) and repr(writer) == "InfluxDBWriter('http://127.0.0.1:1/db')"
    writer.close()


# -- MetricQWriter, against a recording stand-in for the Source ------------------------------


class RecordingSourceStandIn:
    """NOT a Source: records the calls MetricQWriter makes on the Source interface only.

    Stands in until mqsync.source exists; a test on an embedded network replaces it.
    """

    def __init__(self):
        self.declared: dict[str, dict] = {}
        self.declare_calls = 0
        self.sent: list[tuple[str, int, float]] = []
        self.flushes: list[float | None] = []

    def declare_metrics(self, metrics):
        self.declare_calls += 1
        self.declared.update(metrics)

    def send(self, metric, time, value):
        assert isinstance(value, float)
        self.sent.append((metric, time.posix_ns, value))

    def flush(self, timeout=None):
        self.flushes.append(timeout)

    def series(self, metric):
        return [(t, v) for m, t, v in self.sent if m == metric]


@pytest.fixture
def timeseries(monkeypatch):
    """mqsync.timeseries, or a stand-in with Timestamp(posix_ns) while it is not written yet."""
    try:
        import mqsync.timeseries as module
    except ImportError:
        module = types.ModuleType("mqsync.timeseries")

        @attrs.frozen
        class Timestamp:
            posix_ns: int

        module.Timestamp = Timestamp
        monkeypatch.setitem(sys.modules, "mqsync.timeseries", module)
    return module


def test_metricq_writer_with_recording_source_stand_in(timeseries):
    source = RecordingSourceStandIn()
    writer = dl.MetricQWriter(source, "lab.tests", flush_timeout=5.0)
    datalogger = dl.DataLogger(writer)
    datalogger.log(STEP, dl.FieldMap.build(DURATION, 1.5, RESULT, True),
                   tags(hostname="node01.example.com", case="c 1"), time=1000)
    datalogger.log(STEP, DURATION, 2.5, tags(hostname="node01.example.com", case="c 1", run=7),
                   time=2000)
    datalogger.log_event(STEP, 100, 400, {"host": "a"})
    datalogger.write_data()

    base = "lab.tests.step.node01_example_com.c_1"
    assert source.series(f"{base}._.duration") == [(1000, 1.5)]
    assert source.series(f"{base}._.result") == [(1000, 1.0)]
    assert source.series(f"{base}.7.duration") == [(2000, 2.5)]
    assert source.series("lab.tests.events.step.a") == [(100, 1.0), (400, 0.0)]
    assert source.declared[f"{base}._.duration"] == {
        "description": "duration of step (case=c 1, hostname=node01.example.com)",
        "unit": "s", "scope": "point", "measurement": "step", "field": "duration",
        "tags": {"case": "c 1", "hostname": "node01.example.com"}}
    assert "unit" not in source.declared[f"{base}._.result"]
    assert source.declared["lab.tests.events.step.a"]["scope"] == "next"
    assert source.flushes == [5.0] and source.declare_calls == 1

    datalogger.log(STEP, DURATION, 3.5, tags(hostname="node01.example.com", case="c 1"), time=3000)
    datalogger.write_data()
    assert source.declare_calls == 1  # already declared
    assert source.series(f"{base}._.duration") == [(1000, 1.5), (3000, 3.5)]


def test_metricq_writer_merges_overlapping_events_and_keeps_time_increasing(timeseries, caplog):
    source = RecordingSourceStandIn()
    datalogger = dl.DataLogger(dl.MetricQWriter(source, "p"))
    for start, stop in [(10, 20), (15, 30), (40, 50)]:
        datalogger.log_event(STEP, start, stop)
    datalogger.log(STEP, DURATION, 1.0, tags(hostname="a", case="c"), time=100)
    datalogger.write_data()
    assert source.series("p.events.step") == [(10, 1.0), (30, 0.0), (40, 1.0), (50, 0.0)]

    datalogger.log_event(STEP, 45, 60)  # began before the last point sent: clipped
    datalogger.log_event(STEP, 5, 8)  # entirely in the past: dropped
    datalogger.log(STEP, DURATION, 2.0, tags(hostname="a", case="c"), time=90)  # too old
    datalogger.write_data()
    assert source.series("p.events.step")[4:] == [(51, 1.0), (60, 0.0)]
    assert source.series("p.step.a.c._.duration") == [(100, 1.0)]
    assert "1 points not later than" in caplog.text


def test_metricq_writer_skips_values_that_are_not_numbers(timeseries):
    source = RecordingSourceStandIn()
    writer = dl.MetricQWriter(source, "p", events=False)
    datalogger = dl.DataLogger(writer)
    datalogger.log(STEP, dl.FieldMap.build(RESULT, "passed", DURATION, 1.0),
                   tags(hostname="a", case="c"))
    datalogger.log_event(STEP, 1, 2)
    datalogger.write_data()
    assert [m for m, _, _ in source.sent] == ["p.step.a.c._.duration"]
    assert writer.skipped_values == 1


def test_metricq_writer_refuses_two_series_on_one_name(timeseries):
    source = RecordingSourceStandIn()
    datalogger = dl.DataLogger(dl.MetricQWriter(source, "p"))
    datalogger.log(STEP, DURATION, 1.0, tags(hostname="a b", case="c"))
    datalogger.log(STEP, DURATION, 1.0, tags(hostname="a_b", case="c"))
    with pytest.raises(dl.WriteFailed) as caught:
        datalogger.write_data()
    error = caught.value.failures[0][1]
    assert isinstance(error, dl.MetricNameCollision)
    assert "metric 'p.step.a_b.c._.duration' would carry two series" in str(error)
    assert source.sent == []


def test_metricq_writer_custom_names_and_long_names(timeseries):
    source = RecordingSourceStandIn()
    named = dl.MetricQWriter(source, "p", metric_name=lambda m, f, t: f"custom.{t['case']}.{f}")
    long_case = "x" * 300
    datalogger = dl.DataLogger(named, dl.MetricQWriter(source, "q"))
    datalogger.log(STEP, DURATION, 1.0, tags(hostname="a", case="short"))
    datalogger.log(STEP, DURATION, 2.0, tags(hostname="a", case=long_case))
    with pytest.raises(dl.WriteFailed, match="invalid metric name 'custom.xxx"):
        datalogger.write_data()  # a custom name is the namer's to keep short
    names = [m for m, _, _ in source.sent]
    assert names[0] == "q.step.a.short._.duration" and len(names[1]) == 255
    assert names[1].startswith("q.step.a.xxx") and names[1][-9] == "-"
    again = dl.MetricQWriter(RecordingSourceStandIn(), "q")
    assert again.metric_for(STEP, DURATION, {"hostname": "a", "case": long_case}) == names[1]
    assert again.metric_for(STEP, DURATION, {"hostname": "a", "case": long_case + "y"}) != \
        names[1]
    with pytest.raises(ValueError, match="invalid metric prefix 'bad prefix'"):
        dl.MetricQWriter(source, "bad prefix")


@pytest.mark.parametrize(
    "network", ["embedded", pytest.param("rabbitmq", marks=pytest.mark.broker)])
def test_metricq_writer_reaches_a_sink(unique, network, request):
    import mqsync
    from tests._support import RecordingSink, wait_until

    url = None if network == "embedded" else request.getfixturevalue("manager").url
    build = dl.Measurement("build", DURATION, HOST)
    with mqsync.Source(f"source-{unique}", url) as source, \
            RecordingSink(f"sink-{unique}", url) as sink:
        writer = dl.MetricQWriter(source, f"test.{unique}", flush_timeout=10.0)
        metric = writer.metric_for(build, DURATION, {"hostname": "n1"})
        state = writer.event_metric_for(build, {"host": "n1"})
        sink.subscribe([metric, state])
        with dl.DataLogger(writer) as datalogger:
            with datalogger.measure_block(build, DURATION, dl.TagMap.build(HOST, "n1"),
                                          event_tags={"host": "n1"}):
                time.sleep(0.01)
            (entry,), (event,) = datalogger.dataset, datalogger.events
        assert wait_until(lambda: sink.count() == 3)
        metadata = source.get_metrics(selector=[metric, state])
    assert metric == f"test.{unique}.build.n1.duration"
    assert metadata[metric]["unit"] == "s" and metadata[metric]["tags"] == {"hostname": "n1"}
    assert metadata[state]["description"] == "1 while build runs (host=n1), else 0 " \
        "(data logger events)"
    assert sorted(sink.points) == sorted([
        (metric, entry.time_ns, entry.fields["duration"]),
        (state, event.start_ns, 1.0), (state, event.stop_ns, 0.0)])


# -- the pytest plugin -----------------------------------------------------------------------


def test_pytest_plugin_writes_at_the_end_of_the_session(pytester):
    pytester.makeconftest('pytest_plugins = ["mqsync.pytest_plugin"]')
    pytester.makepyfile(textwrap.dedent("""
        import mqsync.datalogger as dl

        F = dl.Field("duration")
        M = dl.Measurement("suite", F)

        def test_one(datalogger):
            with datalogger.measure_block(M, F):
                pass

        def test_two(datalogger):
            datalogger.log(M, F, 2.0)
            assert len(datalogger.dataset) == 2
    """))
    out = pytester.path / "out.jsonl"
    lp = pytester.path / "out.lp"
    result = pytester.runpytest_inprocess(f"--datalogger-json={out}",
                                          f"--datalogger-line-protocol={lp}")
    result.assert_outcomes(passed=2)
    records = dl.JsonFileWriter.read(out)
    assert [r["fields"]["duration"] for r in records][1] == 2.0
    assert len(lp.read_text().splitlines()) == 2


def test_pytest_plugin_is_opt_in(pytester):
    # installing mqsync must not add fixtures or options to every pytest run
    pytester.makepyfile(textwrap.dedent("""
        def test_it(datalogger):
            pass
    """))
    result = pytester.runpytest_inprocess()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'datalogger' not found*"])
    assert pytester.runpytest_inprocess("--datalogger-json=x").ret == pytest.ExitCode.USAGE_ERROR
    pytester.runpytest_inprocess("-p", "mqsync.pytest_plugin").assert_outcomes(passed=1)


def test_pytest_plugin_writers_can_come_from_a_fixture(pytester):
    pytester.makeconftest(textwrap.dedent("""
        import pytest
        import mqsync.datalogger as dl
        pytest_plugins = ["mqsync.pytest_plugin"]

        @pytest.fixture(scope="session")
        def datalogger_writers(tmp_path_factory):
            return [dl.JsonFileWriter("custom.jsonl")]
    """))
    pytester.makepyfile(textwrap.dedent("""
        import mqsync.datalogger as dl

        def test_it(datalogger):
            datalogger.log(dl.Measurement("m", dl.Field("x")), dl.Field("x"), 1)
    """))
    pytester.runpytest_inprocess().assert_outcomes(passed=1)
    assert dl.JsonFileWriter.read(pytester.path / "custom.jsonl")[0]["fields"] == {"x": 1}

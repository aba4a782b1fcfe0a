"""The call forms of DataLogger.log (mqsync/datalogger/_arguments.py), through the public API.

``log`` has two forms, told apart by the second argument: a mapping means the
influxdb-datalogger 2.4 form ``log(measurement, fields_map, tags_map=None, time=None)``,
anything else ``log(measurement, field, value, tag_map=None, time=None)``.
"""

from __future__ import annotations

import datetime

import pytest

import mqsync.datalogger as dl

DURATION = dl.Field("duration", numeric=True)
HOST = dl.Tag("host")
STEP = dl.Measurement("step", DURATION, HOST)

TAGS = dl.TagMap.build(HOST, "a")
FIELDS = dl.FieldMap.build(DURATION, 1.5)
AT = 1_700_000_000_000_000_000
AT_DATETIME = datetime.datetime(2023, 11, 14, 22, 13, 20)  # the same instant, naive UTC

ONE_VALUE = "log\\(measurement, field, value, tag_map=None, time=None\\)"
FIELD_MAP = "log\\(measurement, fields_map, tags_map=None, time=None\\)"


@pytest.mark.parametrize("call", [
    # log(measurement, field, value, tag_map=None, time=None)
    lambda d: d.log(STEP, DURATION, 1.5, TAGS, AT),
    lambda d: d.log(STEP, DURATION, 1.5, TAGS, time=AT),
    lambda d: d.log(STEP, DURATION, 1.5, tag_map=TAGS, time=AT_DATETIME),
    lambda d: d.log(STEP, DURATION, 1.5, tags_map=TAGS, time=AT),
    lambda d: d.log(STEP, "duration", 1.5, {"host": "a"}, AT),
    lambda d: d.log(STEP, field=DURATION, value=1.5, tag_map=TAGS, time=AT),
    lambda d: d.log(measurement=STEP, field=DURATION, value=1.5, tag_map=TAGS, time=AT),
    # log(measurement, fields_map, tags_map=None, time=None), as in 2.4
    lambda d: d.log(STEP, FIELDS, TAGS, AT),
    lambda d: d.log(STEP, FIELDS, TAGS, time=AT_DATETIME),
    lambda d: d.log(STEP, FIELDS, tags_map=TAGS, time=AT),
    lambda d: d.log(STEP, FIELDS, tag_map=TAGS, time=AT),
    lambda d: d.log(STEP, {"duration": 1.5}, {"host": "a"}, AT),
    lambda d: d.log(STEP, fields_map=FIELDS, tags_map=TAGS, time=AT),
    lambda d: d.log(measurement=STEP, fields_map=FIELDS, tags_map=TAGS, time=AT),
])
def test_every_accepted_form_logs_the_same_entry(call):
    datalogger = dl.DataLogger()
    call(datalogger)
    (entry,) = datalogger.dataset
    assert entry.measurement is STEP
    assert entry.fields == {"duration": 1.5} and entry.tags == {"host": "a"}
    assert entry.time_ns == AT


@pytest.mark.parametrize("call", [
    lambda d: d.log(STEP, DURATION, 1.5, TAGS),
    lambda d: d.log(STEP, FIELDS, TAGS),
    lambda d: d.log(STEP, fields_map=FIELDS, tags_map=TAGS),
])
def test_without_a_time_the_entry_is_logged_now(call):
    datalogger = dl.DataLogger()
    before = datetime.datetime.now(datetime.timezone.utc).timestamp()
    call(datalogger)
    after = datetime.datetime.now(datetime.timezone.utc).timestamp()
    assert before - 1 <= datalogger.last_data_entry.time_ns / 1e9 <= after + 1


def test_no_tags_are_needed_when_the_measurement_declares_none():
    measurement = dl.Measurement("plain", DURATION)
    datalogger = dl.DataLogger()
    datalogger.log(measurement, DURATION, 1.0)
    datalogger.log(measurement, FIELDS)
    assert [e.fields for e in datalogger.dataset] == [{"duration": 1.0}, {"duration": 1.5}]
    assert [e.tags for e in datalogger.dataset] == [{}, {}]


@pytest.mark.parametrize("call, message", [
    (lambda d: d.log(STEP),
     "log\\(\\) needs a Field and a value, or a FieldMap; got nothing"),
    (lambda d: d.log(STEP, DURATION),
     f"log\\(\\) needs a value for field 'duration': {ONE_VALUE}"),
    (lambda d: d.log(STEP, 3, 1.0),
     "log\\(\\) needs a Field and a value, or a FieldMap; got field=3"),
    (lambda d: d.log(STEP, field=FIELDS),
     "got field=FieldMap.*give a FieldMap as the second argument or as fields_map="),
    (lambda d: d.log(STEP, fields_map=[("duration", 1.5)]),
     "fields_map must be a FieldMap, got \\[\\('duration', 1.5\\)\\] \\(list\\)"),
    (lambda d: d.log(STEP, DURATION, 1.5, TAGS, tags_map=TAGS),
     "got both tag_map and tags_map"),
    (lambda d: d.log(STEP, FIELDS, TAGS, tag_map=TAGS),
     "got both tag_map and tags_map"),
    (lambda d: d.log(STEP, DURATION, 1.5, TAGS, AT, "extra"),
     f"{ONE_VALUE}: too many positional arguments"),
    (lambda d: d.log(STEP, FIELDS, TAGS, AT, "extra"),
     f"{FIELD_MAP}: too many positional arguments"),
    (lambda d: d.log(STEP, FIELDS, TAGS, AT, time=AT),
     f"{FIELD_MAP}: multiple values for argument 'time'"),
    (lambda d: d.log(STEP, FIELDS, value=1.5),
     f"{FIELD_MAP}: got an unexpected keyword argument 'value'"),
    (lambda d: d.log(STEP, DURATION, 1.5, fields_map=FIELDS),
     f"{FIELD_MAP}: multiple values for argument 'fields_map'"),
    (lambda d: d.log(STEP, DURATION, 1.5, color="red"),
     f"{ONE_VALUE}: got an unexpected keyword argument 'color'"),
    (lambda d: d.log("step", DURATION, 1.5, TAGS),
     "measurement must be a Measurement, got 'step' \\(str\\)"),
])
def test_calls_that_fit_neither_form_raise_type_error_and_log_nothing(call, message):
    datalogger = dl.DataLogger()
    with pytest.raises(TypeError, match=message):
        call(datalogger)
    assert datalogger.dataset == []


def test_a_value_of_none_is_a_value_the_field_refuses():
    """None is not "no value": it reaches the field's check (InvalidMeasurement), not TypeError."""
    datalogger = dl.DataLogger()
    with pytest.raises(dl.InvalidMeasurement, match="field 'duration' of .*'step' got None"):
        datalogger.log(STEP, DURATION, None, TAGS)
    assert datalogger.dataset == []


def test_post_processing_may_log_into_the_batch_in_either_form():
    total = dl.Measurement("total", DURATION)

    @dl.PostProcessing.register(STEP)
    def add_totals(batch, step):
        batch.log(total, DURATION, 1.0)
        batch.log(total, dl.FieldMap.build(DURATION, 2.0))

    class Keep(dl.DatabaseWriter):
        def write_data(self, datalogger):
            self.entries = datalogger.dataset

    writer = Keep()
    datalogger = dl.DataLogger(writer)
    datalogger.add_post_processing(add_totals)
    datalogger.log(STEP, FIELDS, TAGS)
    datalogger.write_data()
    assert [e.fields["duration"] for e in writer.entries] == [1.5, 1.0, 2.0]

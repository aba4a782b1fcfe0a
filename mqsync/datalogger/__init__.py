"""The data logger: measure code and log test results as metrics and events.

Declare what you measure, log or time it from any thread, and hand the batch to writers::

    from mqsync import datalogger as dl

    duration = dl.Field("duration", unit="s", numeric=True)
    host = dl.Tag("hostname")
    step = dl.Measurement("build-step", duration, host)

    with dl.DataLogger(dl.JsonFileWriter("results.jsonl")) as logger:
        with logger.measure_block(step, duration, dl.TagMap.build(host, "node01")):
            run_the_build()

Code written for influxdb-datalogger 2.4 runs after changing only its import to
``import mqsync.datalogger as influxdb_datalogger``: the class names, argument names (both
``tag_map`` and the 2.4 ``tags_map``), the dataset and event shapes are the same.

Writers: :class:`JsonFileWriter` (JSON Lines), :class:`LineProtocolFileWriter` and
:class:`InfluxDBWriter` (InfluxDB; the server writer needs ``pip install mqsync[influx]``),
:class:`MetricQWriter` (through an mqsync Source). Write your own by subclassing
:class:`DatabaseWriter`.
"""

from ..errors import DataLoggerError, InvalidMeasurement, MetricNameCollision, WriteFailed
from ._core import BlockMeasurer, DataLogger, PostProcessing
from ._influx import InfluxDBWriter, LineProtocolFileWriter, to_line_protocol
from ._json import JsonFileWriter
from ._metricq import MetricQWriter
from ._model import Field, FieldMap, Measurement, Tag, TagMap
from ._records import DataEntry, Dataset, Event, Events
from ._writer import DatabaseWriter

__all__ = [
    "BlockMeasurer",
    "DataEntry",
    "DataLogger",
    "DataLoggerError",
    "DatabaseWriter",
    "Dataset",
    "Event",
    "Events",
    "Field",
    "FieldMap",
    "InfluxDBWriter",
    "InvalidMeasurement",
    "JsonFileWriter",
    "LineProtocolFileWriter",
    "Measurement",
    "MetricNameCollision",
    "MetricQWriter",
    "PostProcessing",
    "Tag",
    "TagMap",
    "WriteFailed",
    "to_line_protocol",
]

"""Measure code and log test results with mqsync.datalogger.

    python examples/datalogger_example.py [--json FILE] [--line-protocol FILE]
                                          [--influx HOST:PORT/DATABASE]
                                          [--metricq PREFIX [--url AMQP_URL]]

Runs a few pretend build steps on four threads: each is timed with ``measure_block`` (with an
event marker), and its outcome logged with ``log``. Everything is written once at the end by
the chosen writers; with none chosen it goes to a JSON Lines file in a temporary directory,
which is printed. ``--metricq`` sends through an mqsync Source: on the embedded in-process
network unless ``--url`` names a broker.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import socket
import tempfile
import threading
import time
from pathlib import Path

from mqsync import datalogger as dl

DURATION = dl.Field("duration", unit="s", numeric=True, desc="time the step took")
PASSED = dl.Field("passed", desc="1 if the step succeeded")
HOST = dl.Tag("hostname", default=socket.gethostname())
STEP = dl.Tag("step")
WORKER = dl.Tag("worker")
BUILD = dl.Measurement("build", DURATION, PASSED, HOST, STEP, optional_tags=[WORKER])


def build_step(name: str) -> bool:
    time.sleep(random.uniform(0.01, 0.05))
    return random.random() > 0.2


def worker(datalogger: dl.DataLogger, number: int) -> None:
    for step in ("fetch", "compile", "test"):
        tags = dl.TagMap.build(STEP, step, WORKER, number)
        passed = False
        with datalogger.measure_block(BUILD, DURATION, tags, event_tags={"worker": number}):
            passed = build_step(step)
        datalogger.log(BUILD, PASSED, passed, tags)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="append JSON Lines to this file")
    parser.add_argument("--line-protocol", type=Path, help="append InfluxDB line protocol here")
    parser.add_argument("--influx", metavar="HOST:PORT/DATABASE", help="write to InfluxDB")
    parser.add_argument("--metricq", metavar="PREFIX", help="send as MetricQ metrics")
    parser.add_argument("--url", help="broker URL for --metricq (default: embedded network)")
    options = parser.parse_args()

    with contextlib.ExitStack() as stack:
        writers: list[dl.DatabaseWriter] = []
        if options.json:
            writers.append(dl.JsonFileWriter(options.json))
        if options.line_protocol:
            writers.append(dl.LineProtocolFileWriter(options.line_protocol))
        if options.influx:
            address, _, database = options.influx.partition("/")
            host, _, port = address.partition(":")
            writers.append(dl.InfluxDBWriter(host, int(port or 8086), database or "datalogger",
                                             create_database=True))
        if options.metricq:
            import mqsync

            source = stack.enter_context(mqsync.Source("source-datalogger-example", options.url))
            writers.append(dl.MetricQWriter(source, options.metricq))
        if not writers:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            options.json = directory / "results.jsonl"
            writers.append(dl.JsonFileWriter(options.json))

        with dl.DataLogger(*writers) as datalogger:
            threads = [threading.Thread(target=worker, args=(datalogger, n)) for n in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            print(f"logged {len(datalogger.dataset)} entries and {len(datalogger.events)} events")

        if options.json:
            for record in dl.JsonFileWriter.read(options.json):
                print(record)


if __name__ == "__main__":
    main()

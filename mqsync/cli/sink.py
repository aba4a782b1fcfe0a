"""``mqsync-sink``: print or save the live stream of chosen metrics."""

from __future__ import annotations

import csv
import io
import json
import signal
import sys
import threading
import time
from typing import Any, TextIO

from ..errors import MqsyncError
from ..sink import Sink
from ..timeseries import Timestamp
from ._common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_PIPE,
    CommandParser,
    LineWriter,
    ends_quietly_on_closed_stdout,
    failure_message,
    setup_logging,
    start_client,
)

EXAMPLE = """\
examples:
  mqsync-sink --url amqp://user:pass@broker/ sysinfo.node01.cpu.usage
  mqsync-sink --format csv --output power.csv --duration 60 room.power room.temperature
  mqsync-sink --format json --count 100 sysinfo.node01.mem.used

exit codes: 0 stopped cleanly (SIGINT/SIGTERM, --count or --duration reached),
1 the stream broke, 3 no connection to the network, 141 the output was closed by its
reader (as cat: mqsync-sink ... | head).
"""


class StreamSink(Sink):
    """Writes every received point in the chosen format and counts them.

    Sets ``done`` once ``limit`` points are written, or when the reader of ``out`` went
    away (then :attr:`output_closed`).
    """

    def __init__(
        self,
        *args: Any,
        out: TextIO,
        fmt: str,
        limit: int | None,
        done: threading.Event,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self._writer = LineWriter(out, done.set)
        self._format = fmt
        self._limit = limit
        self._done = done
        self.received = 0

    @property
    def output_closed(self) -> bool:
        """Whether the reader of the output went away (``| head`` had enough)."""
        return self._writer.closed

    def on_chunk(self, metric: str, times_ns: Any, values: Any) -> None:
        if self._writer.closed or self._done.is_set():
            return
        take = (
            len(times_ns)
            if self._limit is None
            else min(len(times_ns), self._limit - self.received)
        )
        text = io.StringIO()
        rows = csv.writer(text) if self._format == "csv" else None
        for time_ns, value in zip(times_ns[:take], values[:take]):
            if rows is not None:
                rows.writerow([time_ns, Timestamp(time_ns).isoformat(), metric, repr(value)])
            elif self._format == "json":
                text.write(
                    json.dumps(
                        {
                            "metric": metric,
                            "time": time_ns,
                            "value": value if value == value else None,
                        }
                    )
                    + "\n"
                )
            else:
                text.write(f"{Timestamp(time_ns).isoformat()}  {metric}  {value!r}\n")
        if take and self._writer.write(text.getvalue()):
            self.received += take
        if self._limit is not None and self.received >= self._limit:
            self._done.set()

    def write_header(self) -> None:
        """The CSV header line."""
        text = io.StringIO()
        csv.writer(text).writerow(["time_ns", "time", "metric", "value"])
        self._writer.write(text.getvalue())


@ends_quietly_on_closed_stdout
def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(
        "sink",
        token="sink-mqsync-$USER",
        url_required=False,
        description="Print or save the live values of MetricQ metrics.",
        epilog=EXAMPLE,
    )
    parser.add_argument("metrics", nargs="+", help="metric names to subscribe to")
    parser.add_argument(
        "--format",
        choices=["text", "csv", "json"],
        default="text",
        help="text: '<ISO time>  <metric>  <value>' per line (default); csv: "
        "time_ns,time,metric,value with a header; json: one object per line",
    )
    parser.add_argument("--output", "-o", help="write to this file instead of stdout")
    parser.add_argument("--count", type=int, help="stop after this many points")
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)

    done = threading.Event()
    previous = {
        signum: signal.signal(signum, lambda *_: done.set())
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    out = open(args.output, "w", newline="", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115 - closed in finally
    sink = StreamSink(args.token, args.url, out=out, fmt=args.format, limit=args.count, done=done)
    try:
        if args.format == "csv":
            sink.write_header()
        try:
            failed = start_client("mqsync-sink", sink, args.url,
                                  then=lambda: sink.subscribe(args.metrics))
        except MqsyncError as error:
            print(f"mqsync-sink: {error}", file=sys.stderr)
            return EXIT_FAILURE
        if failed is not None:
            return failed
        _wait(sink, done, args.duration)
        if sink.output_closed:
            return EXIT_PIPE
        if sink.failure is not None:
            print(f"mqsync-sink: {failure_message(sink, args.url)}", file=sys.stderr)
            return EXIT_FAILURE
        return EXIT_OK
    finally:
        sink.stop()
        if out is not sys.stdout:
            out.close()  # silenced already when its reader (a FIFO's) went away
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _wait(sink: StreamSink, done: threading.Event, duration: float | None) -> None:
    """Until ``done`` (a signal, --count, a closed output), ``duration`` seconds, or the
    sink stopped by itself (its connection lost for good)."""
    deadline = None if duration is None else time.monotonic() + duration
    while True:
        step = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
        if step <= 0 or done.wait(step) or sink.wait(0, catch_signals=()):
            return


if __name__ == "__main__":
    sys.exit(main())

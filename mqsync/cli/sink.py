"""``mqsync-sink``: print or save the live stream of chosen metrics."""

from __future__ import annotations

import csv
import json
import signal
import sys
import threading
from typing import Any, TextIO

from ..errors import ConnectFailed, MqsyncError
from ..sink import Sink
from ..timeseries import Timestamp
from ._common import EXIT_CONNECT, EXIT_FAILURE, EXIT_OK, CommandParser, setup_logging

EXAMPLE = """\
examples:
  mqsync-sink --url amqp://user:pass@broker/ sysinfo.node01.cpu.usage
  mqsync-sink --format csv --output power.csv --duration 60 room.power room.temperature
  mqsync-sink --format json --count 100 sysinfo.node01.mem.used

exit codes: 0 stopped cleanly (SIGINT/SIGTERM, --count or --duration reached),
1 the stream broke, 3 no connection to the network.
"""


class StreamSink(Sink):
    """Writes every received point in the chosen format and counts them."""

    def __init__(self, *args: Any, out: TextIO, fmt: str, limit: int | None,
                 done: threading.Event, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._out = out
        self._format = fmt
        self._limit = limit
        self._done = done
        self._csv = csv.writer(out) if fmt == "csv" else None
        self.received = 0

    def on_chunk(self, metric: str, times_ns: Any, values: Any) -> None:
        for time_ns, value in zip(times_ns, values):
            if self._limit is not None and self.received >= self._limit:
                self._done.set()
                return
            if self._csv is not None:
                self._csv.writerow([time_ns, Timestamp(time_ns).isoformat(), metric, repr(value)])
            elif self._format == "json":
                self._out.write(json.dumps({"metric": metric, "time": time_ns,
                                            "value": value if value == value else None}) + "\n")
            else:
                self._out.write(f"{Timestamp(time_ns).isoformat()}  {metric}  {value!r}\n")
            self.received += 1
        self._out.flush()
        if self._limit is not None and self.received >= self._limit:
            self._done.set()


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser("sink", token="sink-mqsync-$USER", url_required=False,
                           description="Print or save the live values of MetricQ metrics.",
                           epilog=EXAMPLE)
    parser.add_argument("metrics", nargs="+", help="metric names to subscribe to")
    parser.add_argument("--format", choices=["text", "csv", "json"], default="text")
    parser.add_argument("--output", "-o", help="write to this file instead of stdout")
    parser.add_argument("--count", type=int, help="stop after this many points")
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)

    done = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: done.set())
                for signum in (signal.SIGINT, signal.SIGTERM)}
    out = open(args.output, "w", newline="", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115 - closed in finally
    sink = StreamSink(args.token, args.url, out=out, fmt=args.format, limit=args.count,
                      done=done)
    try:
        if args.format == "csv":
            csv.writer(out).writerow(["time_ns", "time", "metric", "value"])
        try:
            sink.start()
            sink.subscribe(args.metrics)
        except ConnectFailed as error:
            print(f"mqsync-sink: {error}", file=sys.stderr)
            return EXIT_CONNECT
        except MqsyncError as error:
            print(f"mqsync-sink: {error}", file=sys.stderr)
            return EXIT_FAILURE
        done.wait(args.duration)
        return EXIT_FAILURE if sink.failure is not None else EXIT_OK
    finally:
        sink.stop()
        if out is not sys.stdout:
            out.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())

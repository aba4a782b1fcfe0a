"""``mqsync-export``: the stored points of metrics in a time range, to a CSV or JSON file.

The range is read in pages: one aggregate request counts the points, then raw requests of
at most ``--page-points`` points each (by time slices) stream to the file, so an export of
any length needs bounded memory.  A slice a database still finds too large is halved.
The file appears only when the export is complete (it is written as ``FILE.part`` and
renamed).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import IO, Any, Iterator

from ..errors import ConnectFailed, MqsyncError
from ..history import HistoryClient, HistoryError
from ..names import check_metric_name
from ..timeseries import Timestamp
from ._common import (
    CONNECT_TIMEOUT,
    EXIT_CONNECT,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_PIPE,
    EXIT_USAGE,
    CommandParser,
    connect_failure_message,
    duration_argument,
    setup_logging,
    silence,
    start_client,
    time_argument,
)

EXAMPLE = """\
examples:
  mqsync-export room.power --start -1h                         the last hour, CSV on stdout
  mqsync-export room.power room.temp --start 2024-05-01T00:00:00Z --end 2024-05-02T00:00:00Z \\
      --format json -o may1.jsonl
  mqsync-export --url amqp://user:pass@broker/ room.power --start 1714521600 -o power.csv

Times: 'now', relative (-1h, -30min), POSIX seconds, or ISO 8601.  Both ends are
included.  csv: time_ns,time,metric,value (the format of mqsync-sink --format csv);
json: one object per line, {"metric": ..., "time": <ns>, "value": <number or null>}
(the format of mqsync-sink --format json).

exit codes: 0 exported, 1 a database refused or did not answer, or a metric is not kept
by any database, 2 bad command line or configuration, 3 no connection.
"""

#: A database's refusal of a request that is too large (then the slice is halved).
TOO_LARGE = re.compile(r"more than|too (much|many|large)", re.IGNORECASE)
MAX_SPLITS = 40


class Writer:
    """Writes points as CSV or JSON lines; counts them."""

    def __init__(self, out: IO[str], fmt: str):
        self._out = out
        self._format = fmt
        self._csv = csv.writer(out) if fmt == "csv" else None
        if self._csv is not None:
            self._csv.writerow(["time_ns", "time", "metric", "value"])
        self.points = 0

    def write(self, metric: str, time_ns: int, value: float) -> None:
        if self._csv is not None:
            self._csv.writerow([time_ns, Timestamp(time_ns).isoformat(), metric, repr(value)])
        else:
            self._out.write(json.dumps({"metric": metric, "time": time_ns,
                                        "value": value if math.isfinite(value) else None})
                            + "\n")
        self.points += 1


def read_range(client: HistoryClient, metric: str, start_ns: int, end_ns: int,
               page_points: int, timeout: float) -> Iterator[tuple[int, float]]:
    """The stored points of ``metric`` with ``start_ns <= time <= end_ns``, in time order,
    each once, fetched in slices of about ``page_points`` points.

    Raises:
        HistoryError, RPCTimeout: a database refused or did not answer.
    """
    slices = 1
    try:
        count = client.history_aggregate(metric, start_ns, end_ns, timeout=timeout).count
        slices = max(1, math.ceil(count / page_points))
    except HistoryError:
        pass  # a database without aggregates: one slice, halved when too large
    width = (end_ns - start_ns + 1) / slices
    bounds = [start_ns + round(width * i) for i in range(slices)] + [end_ns + 1]
    last = start_ns - 1
    for low, high in zip(bounds, bounds[1:]):
        if high <= low:
            continue
        for time_ns, value in _read_slice(client, metric, low, high - 1, timeout, 0):
            if time_ns > last:  # a database may repeat a border point, or one before start
                last = time_ns
                yield time_ns, value


def _read_slice(client: HistoryClient, metric: str, low: int, high: int, timeout: float,
                depth: int) -> Iterator[tuple[int, float]]:
    try:
        points = client.history_raw_timeline(metric, low, high, timeout=timeout)
    except HistoryError as error:
        if not TOO_LARGE.search(str(error)) or high <= low or depth >= MAX_SPLITS:
            raise
        middle = low + (high - low) // 2
        yield from _read_slice(client, metric, low, middle, timeout, depth + 1)
        yield from _read_slice(client, metric, middle + 1, high, timeout, depth + 1)
        return
    for point in points:
        time_ns = point.timestamp.posix_ns
        if low <= time_ns <= high:
            yield time_ns, float(point.value)


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(
        "export", token="history-export-$USER-$HOST",
        description="Write the stored points of MetricQ metrics in a time range to a CSV or "
        "JSON file.", epilog=EXAMPLE)
    parser.add_argument("metrics", nargs="+", metavar="METRIC", help="the metrics to export")
    parser.add_argument("--start", type=time_argument, required=True,
                        help="first time included, e.g. -1h, 2024-05-01T00:00:00Z")
    parser.add_argument("--end", type=time_argument, help="last time included (default: now)")
    parser.add_setting("--format", choices=["csv", "json"], default="csv",
                       help="csv (default) or json (one object per line)")
    parser.add_argument("--output", "-o", help="write to this file (default: stdout)")
    parser.add_setting("--page-points", type=int, default=100_000,
                       help="points per raw request (default: 100000)")
    parser.add_setting("--timeout", type=duration_argument, default=60.0,
                       help="seconds to wait for each database answer (default: 60)")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)

    start: Timestamp = args.start
    end: Timestamp = args.end or Timestamp.now()
    try:
        for metric in args.metrics:
            check_metric_name(metric)
        if start > end:
            raise ValueError(f"--start {start.isoformat()} is after --end {end.isoformat()}")
        if args.page_points < 1:
            raise ValueError(f"invalid --page-points {args.page_points}: expected at least 1")
        client = HistoryClient(args.token, args.url, connect_timeout=CONNECT_TIMEOUT,
                               rpc_timeout=args.timeout)
    except (TypeError, ValueError) as error:
        print(f"mqsync-export: {error}", file=sys.stderr)
        return EXIT_USAGE
    failed = start_client("mqsync-export", client)
    if failed is not None:
        return failed
    try:
        return _export(client, args, start, end)
    except BrokenPipeError:  # stdout closed early (| head): stop quietly, as cat does
        silence(sys.stdout)
        return EXIT_PIPE
    except ConnectFailed as error:
        print(f"mqsync-export: {connect_failure_message(error, args.url, client.token)}",
              file=sys.stderr)
        return EXIT_CONNECT
    except MqsyncError as error:
        print(f"mqsync-export: {error}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        client.stop()


def _export(client: HistoryClient, args: Any, start: Timestamp, end: Timestamp) -> int:
    known = client.get_metrics(list(args.metrics), historic=None)
    for metric in args.metrics:
        if not known.get(metric, {}).get("historic"):
            print(f"mqsync-export: no database keeps {metric!r}"
                  + ("" if metric in known else " (the manager does not know it)"),
                  file=sys.stderr)
            return EXIT_FAILURE
    target = Path(args.output) if args.output else None
    partial = target.with_name(target.name + ".part") if target is not None else None
    out = partial.open("w", newline="", encoding="utf-8") if partial else sys.stdout
    done = False
    try:
        writer = Writer(out, args.format)
        for metric in args.metrics:
            for time_ns, value in read_range(client, metric, start.posix_ns, end.posix_ns,
                                             args.page_points, args.timeout):
                writer.write(metric, time_ns, value)
        out.flush()
        done = True
    finally:
        if partial is not None and target is not None:
            out.close()
            if done:
                os.replace(partial, target)
            else:
                partial.unlink(missing_ok=True)
    if target is not None:
        print(f"mqsync-export: {writer.points} point(s) from {start.isoformat()} to "
              f"{end.isoformat()} written to {target}", file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

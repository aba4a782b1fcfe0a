"""``mqsync-inspect``: live statistics of one metric for a while.

Subscribes to the metric and, until ``--duration`` passed (or ``--count`` points arrived,
or Ctrl-C), counts points and chunks, and measures the intervals between consecutive
time stamps, the values, the chunk sizes and the delay from a point's time to its
arrival here.  :mod:`mqsync.cli._inspect_statistics` keeps those figures in bounded
memory, :mod:`mqsync.cli._inspect_report` words them; this module is the command: its
options, the sink that feeds the statistics, and the wait with its live lines.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from argparse import Namespace
from typing import Any, Iterator, Sequence

from ..errors import ConnectFailed, MqsyncError
from ..names import check_metric_name
from ..sink import Sink
from ..timeseries import Timestamp
from ._common import (
    CONNECT_TIMEOUT,
    EXIT_CONNECT,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    CommandParser,
    connect_failure_message,
    duration_argument,
    ends_quietly_on_closed_stdout,
    setup_logging,
)
from ._inspect_report import BAR_WIDTH, MERGE_WITHIN, format_report, json_report, live_line
from ._inspect_statistics import (
    HISTOGRAM_BINS,
    SAMPLE_SIZE,
    MetricStatistics,
    Reservoir,
    Summary,
    histogram,
)

__all__ = [
    "BAR_WIDTH",
    "EXAMPLE",
    "HISTOGRAM_BINS",
    "MERGE_WITHIN",
    "SAMPLE_SIZE",
    "InspectingSink",
    "LiveLines",
    "MetricStatistics",
    "Reservoir",
    "Summary",
    "format_report",
    "histogram",
    "json_report",
    "live_line",
    "main",
]

EXAMPLE = """\
examples:
  mqsync-inspect --url amqp://user:pass@broker/ sysinfo.node01.cpu.usage
  mqsync-inspect room.power --duration 60           a minute of statistics
  mqsync-inspect room.power --count 1000 --json     the first 1000 points, as JSON
  mqsync-inspect room.power --every 0               no live lines, only the report

While it runs, one line per --every seconds goes to stderr; the report (metadata, points/s,
chunk sizes, interval and value histograms, NaN/inf counts, arrival delay) goes to stdout
at the end, also after Ctrl-C.

exit codes: 0 reported, 1 no point arrived, 2 bad command line or configuration,
3 no connection.
"""

#: Seconds the manager's reply to the subscription may take.
RPC_TIMEOUT = 10.0

#: The longest wait between two looks at the sink's failure and the clock.
POLL_INTERVAL = 0.5


# -- the sink and the live lines ---------------------------------------------------------


class InspectingSink(Sink):
    """Feeds every chunk of the inspected metric into ``statistics``.

    With a ``limit``, points beyond the first ``limit`` are left out, and :attr:`done` is
    set once that many arrived.
    """

    def __init__(self, *args: Any, statistics: MetricStatistics, limit: int | None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.statistics = statistics
        #: Set when the inspection should end: ``limit`` points arrived, or a signal.
        self.done = threading.Event()
        self._limit = limit

    def on_chunk(self, metric: str, times_ns: Sequence[int], values: Sequence[float]) -> None:
        arrived = time.time_ns()
        if self._limit is not None:
            room = self._limit - self.statistics.points
            if room <= 0:
                return
            times_ns, values = times_ns[:room], values[:room]
        self.statistics.add_chunk(times_ns, values, arrived)
        if self._limit is not None and self.statistics.points >= self._limit:
            self.done.set()


class LiveLines:
    """Prints :func:`live_line` on stderr every ``every`` seconds (0: never)."""

    def __init__(self, statistics: MetricStatistics, every: float, started: float):
        self._statistics = statistics
        self._every = every
        self._points = 0  # as of the last line
        self._time = started  # time.monotonic() of the last line

    @property
    def next_due(self) -> float:
        """The ``time.monotonic()`` of the next line; infinite when there are none."""
        return self._time + self._every if self._every else float("inf")

    def print_if_due(self, now: float) -> None:
        """Print a line if ``every`` seconds passed since the last one by ``now``."""
        if not self._every or now - self._time < self._every:
            return
        points, last_value = self._statistics.progress()
        line = live_line(Timestamp.now(), points - self._points, now - self._time, last_value)
        print(line, file=sys.stderr, flush=True)
        self._points, self._time = points, now


# -- command -----------------------------------------------------------------------------


@ends_quietly_on_closed_stdout
def main(argv: list[str] | None = None) -> int:
    """Run ``mqsync-inspect`` with ``argv`` (default: the command line); return its exit code."""
    args = _parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        _check_arguments(args)
        sink = _inspecting_sink(args)
    except (TypeError, ValueError) as error:
        return _failed(error, EXIT_USAGE)
    with _signals_set(sink.done), _stopped_at_the_end(sink):
        try:
            metadata = _subscribe(sink, args.metric, args.duration)
        except ConnectFailed as error:
            return _failed(connect_failure_message(error, args.url, sink.token), EXIT_CONNECT)
        except MqsyncError as error:
            return _failed(error, EXIT_FAILURE)
        elapsed = _watch(sink, args.duration, every=0.0 if args.json else args.every)
    report = sink.statistics.to_json(elapsed)
    show = json_report if args.json else format_report
    print(show(args.metric, metadata, report))
    return _exit_code(sink, args.metric, report, elapsed)


def _parser() -> CommandParser:
    parser = CommandParser(
        "inspect",
        token="sink-inspect-$USER-$HOST",
        description="Live statistics of one MetricQ metric: points/s, interval and value "
        "histograms, chunk sizes, NaN/inf counts, arrival delay and its metadata.",
        epilog=EXAMPLE,
    )
    parser.add_argument("metric", help="the metric to inspect")
    parser.add_setting(
        "--duration",
        type=duration_argument,
        default=10.0,
        help="how long to watch, e.g. 30, 2min (default: 10 s)",
    )
    parser.add_argument("--count", type=int, help="stop after this many points")
    parser.add_setting(
        "--every",
        type=float,
        default=1.0,
        help="seconds between live lines on stderr; 0: none (default: 1)",
    )
    parser.add_argument("--json", action="store_true", help="the report as JSON")
    return parser


def _check_arguments(args: Namespace) -> None:
    """Raise TypeError or ValueError for a metric name, ``--count`` or ``--every`` that
    cannot be."""
    check_metric_name(args.metric)
    if args.count is not None and args.count < 1:
        raise ValueError(f"invalid --count {args.count}: expected at least 1")
    if args.every < 0:
        raise ValueError(f"invalid --every {args.every:g}: expected 0 or more seconds")


def _inspecting_sink(args: Namespace) -> InspectingSink:
    """The sink of the inspection; raises TypeError or ValueError for a bad token or URL."""
    return InspectingSink(
        args.token,
        args.url,
        statistics=MetricStatistics(),
        limit=args.count,
        connect_timeout=CONNECT_TIMEOUT,
        rpc_timeout=RPC_TIMEOUT,
    )


def _failed(error: object, exit_code: int) -> int:
    """Say ``error`` on stderr; return ``exit_code``."""
    print(f"mqsync-inspect: {error}", file=sys.stderr)
    return exit_code


@contextlib.contextmanager
def _signals_set(event: threading.Event) -> Iterator[None]:
    """While inside, SIGINT and SIGTERM set ``event``, so that the report still comes."""
    previous = {
        signum: signal.signal(signum, lambda *_: event.set())
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def _stopped_at_the_end(sink: Sink) -> Iterator[None]:
    """Stops ``sink`` when the block ends, however it ends (a failed start included)."""
    try:
        yield
    finally:
        sink.stop()


def _subscribe(sink: Sink, metric: str, duration: float) -> dict[str, Any]:
    """Start ``sink`` and subscribe it to ``metric``; return the metric's metadata.

    Raises ConnectFailed if the broker or the manager cannot be reached, another
    MqsyncError if the manager refuses.
    """
    sink.start()
    reply = sink.subscribe([metric], expires=max(60.0, duration * 2))
    return dict((reply.get("metrics") or {}).get(metric) or {})


def _watch(sink: InspectingSink, duration: float, every: float) -> float:
    """Wait until ``duration`` seconds passed, the sink is done or has failed, printing a
    live line every ``every`` seconds (0: none); return the seconds waited."""
    started = time.monotonic()
    deadline = started + duration
    live_lines = LiveLines(sink.statistics, every, started)
    while not sink.done.is_set() and sink.failure is None:
        now = time.monotonic()
        if now >= deadline:
            break
        step = min(deadline, live_lines.next_due) - now
        if sink.done.wait(max(0.0, min(step, POLL_INTERVAL))):
            break
        live_lines.print_if_due(time.monotonic())
    return time.monotonic() - started


def _exit_code(sink: Sink, metric: str, report: dict[str, Any], elapsed: float) -> int:
    """:data:`EXIT_OK` when points arrived and the sink did not fail, else say why."""
    if sink.failure is not None:
        return _failed(sink.failure, EXIT_FAILURE)
    if not report["points"]:
        return _failed(f"no point of {metric} arrived in {elapsed:.1f} s", EXIT_FAILURE)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

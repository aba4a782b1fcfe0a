"""``mqsync-inspect``: live statistics of one metric for a while.

Subscribes to the metric and, until ``--duration`` passed (or ``--count`` points arrived,
or Ctrl-C), counts points and chunks, and measures the intervals between consecutive
time stamps, the values, the chunk sizes and the delay from a point's time to its
arrival here.  Exact counts, minima, maxima and means cover every point; the histograms
and medians come from a uniform sample of at most ``SAMPLE_SIZE`` points, so a long run
at a high rate stays in bounded memory.
"""

from __future__ import annotations

import bisect
import collections
import json
import math
import random
import signal
import sys
import threading
import time
from typing import Any, Callable, Sequence

from ..client import check_metric_name
from ..errors import ConnectFailed, MqsyncError
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

#: Points kept for histograms and medians (a uniform sample of all).
SAMPLE_SIZE = 100_000
HISTOGRAM_BINS = 10
BAR_WIDTH = 40


class Reservoir:
    """A uniform sample of at most ``size`` numbers out of any number seen (algorithm R)."""

    def __init__(self, size: int = SAMPLE_SIZE, seed: int | None = None):
        self.size = size
        self.seen = 0
        self.samples: list[float] = []
        self._random = random.Random(seed)

    def add(self, value: float) -> None:
        self.seen += 1
        if len(self.samples) < self.size:
            self.samples.append(value)
            return
        slot = self._random.randrange(self.seen)
        if slot < self.size:
            self.samples[slot] = value


class Summary:
    """Count, minimum, maximum and mean of a stream, plus a sample for its distribution."""

    def __init__(self, sample_size: int = SAMPLE_SIZE):
        self.count = 0
        self.minimum = math.inf
        self.maximum = -math.inf
        self.total = 0.0
        self.sample = Reservoir(sample_size)

    def add(self, value: float) -> None:
        self.count += 1
        self.minimum = min(self.minimum, value)
        self.maximum = max(self.maximum, value)
        self.total += value
        self.sample.add(value)

    def to_json(self) -> dict[str, Any]:
        if not self.count:
            return {"count": 0}
        ordered = sorted(self.sample.samples)
        return {
            "count": self.count,
            "min": self.minimum,
            "max": self.maximum,
            "mean": self.total / self.count,
            "median": ordered[len(ordered) // 2],
            "histogram": histogram(ordered, HISTOGRAM_BINS),
        }


def histogram(ordered: Sequence[float], bins: int) -> list[dict[str, float]]:
    """``bins`` equal-width bins over sorted ``ordered``: ``[{low, high, count}, ...]``.

    One bin when every value is the same; empty bins are kept (their gaps tell something).
    """
    if not ordered:
        return []
    low, high = ordered[0], ordered[-1]
    if not high > low:
        return [{"low": low, "high": high, "count": len(ordered)}]
    width = (high - low) / bins
    edges = [low + width * i for i in range(bins)] + [high]
    counts = []
    for i in range(bins):
        start = bisect.bisect_left(ordered, edges[i])
        stop = len(ordered) if i == bins - 1 else bisect.bisect_left(ordered, edges[i + 1])
        counts.append(stop - start)
    return [{"low": edges[i], "high": edges[i + 1], "count": counts[i]} for i in range(bins)]


class MetricStatistics:
    """Everything :class:`InspectingSink` learns about one metric; thread-safe."""

    def __init__(self, sample_size: int = SAMPLE_SIZE):
        self._lock = threading.Lock()
        self.points = 0
        self.chunks = 0
        self.chunk_sizes: collections.Counter[int] = collections.Counter()
        self.intervals = Summary(sample_size)  # seconds between consecutive time stamps
        self.values = Summary(sample_size)  # finite values
        self.delays = Summary(sample_size)  # seconds from a chunk's last point to its arrival
        self.nan = 0
        self.positive_infinity = 0
        self.negative_infinity = 0
        self.not_increasing = 0  # time stamps equal to or before the previous one
        self.first_time_ns: int | None = None
        self.last_time_ns: int | None = None
        self.last_value: float | None = None
        self.started = time.monotonic()

    def add_chunk(self, times_ns: Sequence[int], values: Sequence[float], arrived_ns: int) -> None:
        with self._lock:
            self.chunks += 1
            self.chunk_sizes[len(times_ns)] += 1
            previous = self.last_time_ns
            for time_ns, value in zip(times_ns, values):
                if previous is not None:
                    if time_ns <= previous:
                        self.not_increasing += 1
                    self.intervals.add((time_ns - previous) / 1e9)
                previous = time_ns
                if math.isnan(value):
                    self.nan += 1
                elif value == math.inf:
                    self.positive_infinity += 1
                elif value == -math.inf:
                    self.negative_infinity += 1
                else:
                    self.values.add(value)
            if times_ns:
                self.points += len(times_ns)
                if self.first_time_ns is None:
                    self.first_time_ns = times_ns[0]
                self.last_time_ns = times_ns[-1]
                self.last_value = values[-1]
                self.delays.add((arrived_ns - times_ns[-1]) / 1e9)

    def progress(self) -> tuple[int, float | None]:
        """``(points so far, last value)``."""
        with self._lock:
            return self.points, self.last_value

    def to_json(self, elapsed_s: float) -> dict[str, Any]:
        with self._lock:
            sizes = sorted(self.chunk_sizes.elements())
            return {
                "elapsed_s": elapsed_s,
                "points": self.points,
                "points_per_s": self.points / elapsed_s if elapsed_s > 0 else None,
                "chunks": self.chunks,
                "chunk_sizes": {
                    "min": sizes[0] if sizes else None,
                    "max": sizes[-1] if sizes else None,
                    "mean": sum(sizes) / len(sizes) if sizes else None,
                    "counts": {
                        str(size): count for size, count in sorted(self.chunk_sizes.items())
                    },
                },
                "intervals_s": self.intervals.to_json(),
                "not_increasing": self.not_increasing,
                "values": self.values.to_json(),
                "nan": self.nan,
                "positive_infinity": self.positive_infinity,
                "negative_infinity": self.negative_infinity,
                "delay_s": self.delays.to_json(),
                "first_time": _iso(self.first_time_ns),
                "last_time": _iso(self.last_time_ns),
                "last_value": _json_number(self.last_value),
            }


class InspectingSink(Sink):
    """Feeds every chunk of the inspected metric into a :class:`MetricStatistics`."""

    def __init__(
        self,
        *args: Any,
        statistics: MetricStatistics,
        limit: int | None,
        done: threading.Event,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.statistics = statistics
        self._limit = limit
        self._done = done

    def on_chunk(self, metric: str, times_ns: Sequence[int], values: Sequence[float]) -> None:
        arrived = time.time_ns()
        if self._limit is not None:
            room = self._limit - self.statistics.points
            if room <= 0:
                return
            times_ns, values = times_ns[:room], values[:room]
        self.statistics.add_chunk(times_ns, values, arrived)
        if self._limit is not None and self.statistics.points >= self._limit:
            self._done.set()


# -- output ----------------------------------------------------------------------------


def _iso(time_ns: int | None) -> str | None:
    return Timestamp(time_ns).isoformat() if time_ns is not None else None


def _json_number(value: float | None) -> float | str | None:
    if value is None or math.isfinite(value):
        return value
    return str(value)


#: The interval histogram is one line when every interval is within this fraction of the
#: median: ten bins of jitter say less than "1 s, all within 0.005 %".
MERGE_WITHIN = 0.01

Render = Callable[[float, int], str]
"""Renders a number with a number of significant digits."""


def _seconds_render(values: Sequence[float]) -> Render:
    """Renders seconds in the one unit (s, ms or us) that suits the largest of ``values``."""
    largest = max((abs(value) for value in values), default=0.0)
    scale, unit = 1e-6, "us"
    for candidate_scale, candidate_unit in ((1.0, "s"), (1e-3, "ms")):
        # rounded first, so that 0.99996 s is "1 s", not "1000 ms"
        if largest == 0 or float(f"{largest / candidate_scale:.4g}") >= 1:
            scale, unit = candidate_scale, candidate_unit
            break
    return lambda value, digits: f"{value / scale:.{digits}g} {unit}"


def _number_render(values: Sequence[float]) -> Render:
    return lambda value, digits: f"{value:.{digits}g}"


def _labels(
    values: Sequence[float], render: Render, digits: int, distinct: Sequence[float] | None = None
) -> list[str]:
    """``values`` rendered with ``digits`` significant digits, or more where needed so that
    any two of ``distinct`` (default: ``values``) that differ print differently."""
    for precision in range(digits, 18):
        first_value_of: dict[str, float] = {}
        if all(
            first_value_of.setdefault(render(value, precision), value) == value
            for value in (values if distinct is None else distinct)
        ):
            break
    return [render(value, precision) for value in values]


def _steps(low: float, high: float) -> list[float]:
    """``low`` to ``high`` in :data:`HISTOGRAM_BINS` equal steps: labels that tell these
    apart resolve a tenth of the spread, as the histogram does."""
    return [low + (high - low) * i / HISTOGRAM_BINS for i in range(HISTOGRAM_BINS + 1)]


def _number(value: float) -> str:
    return f"{value:.6g}"


def _summary_line(
    name: str, summary: dict[str, Any], make_render: Callable[..., Render], digits: int
) -> str:
    if not summary.get("count"):
        return f"{name}: none"
    figures = [summary["min"], summary["median"], summary["mean"], summary["max"]]
    low, median, mean, high = _labels(
        figures, make_render(figures), digits, distinct=_steps(figures[0], figures[-1])
    )
    return (
        f"{name}: min {low}, median {median}, mean {mean}, max {high} ({summary['count']} in all)"
    )


def _bars(labels: Sequence[str], counts: Sequence[int]) -> list[str]:
    most = max(counts, default=0) or 1
    width = max((len(label) for label in labels), default=0)
    return [
        f"  {label.rjust(width)}  {'#' * round(BAR_WIDTH * count / most):<{BAR_WIDTH}}  {count}"
        for label, count in zip(labels, counts)
    ]


def _histogram_lines(
    bins: list[dict[str, float]], make_render: Callable[..., Render], digits: int
) -> list[str]:
    """One bar per bin, labelled ``low .. high`` with as many digits as it takes for
    neighbouring bins to read differently."""
    if not bins:
        return []
    edges = [bins[0]["low"]] + [entry["high"] for entry in bins]
    shown = _labels(edges, make_render(edges), digits)
    labels = [
        shown[i] if entry["low"] == entry["high"] else f"{shown[i]} .. {shown[i + 1]}"
        for i, entry in enumerate(bins)
    ]
    return _bars(labels, [int(entry["count"]) for entry in bins])


def _interval_lines(summary: dict[str, Any]) -> list[str]:
    """The interval histogram; a single line when all intervals are within
    :data:`MERGE_WITHIN` of the median."""
    bins = summary.get("histogram", [])
    if not bins:
        return []
    low, high, median = bins[0]["low"], bins[-1]["high"], summary["median"]
    deviation = max(median - low, high - median)
    if not (median > 0 and high > low and deviation <= MERGE_WITHIN * median):
        return _histogram_lines(bins, _seconds_render, 4)
    label = " .. ".join(
        _labels([low, high], _seconds_render([low, high]), 4, distinct=_steps(low, high))
    )
    line = _bars([label], [sum(int(entry["count"]) for entry in bins)])[0]
    return [f"{line}  (all within {deviation / median * 100:.2g} % of the median)"]


def format_report(metric: str, metadata: dict[str, Any], report: dict[str, Any]) -> str:
    """The text report of one inspection."""
    lines = [f"metric: {metric}"]
    if metadata:
        lines.append("metadata:")
        lines += [f"  {key}: {json.dumps(value)}" for key, value in sorted(metadata.items())]
    else:
        lines.append("metadata: none (no source declared this metric)")
    lines.append(f"inspected: {report['elapsed_s']:.1f} s")
    rate = report["points_per_s"]
    lines.append(
        f"points: {report['points']} ({rate:.3g}/s)"
        if rate is not None
        else f"points: {report['points']}"
    )
    if not report["points"]:
        return "\n".join(lines)
    last = report["last_value"]
    lines.append(
        f"last: {_number(last) if isinstance(last, float) else last} at {report['last_time']}"
    )
    sizes = report["chunk_sizes"]
    lines.append(
        f"chunks: {report['chunks']}; size min {sizes['min']}, mean "
        f"{sizes['mean']:.3g}, max {sizes['max']}"
    )
    counts = sizes["counts"]
    if len(counts) <= HISTOGRAM_BINS:
        lines += _bars(list(counts), list(counts.values()))
    lines.append(
        _summary_line("intervals", report["intervals_s"], _seconds_render, 4)
        + (f"; {report['not_increasing']} not increasing" if report["not_increasing"] else "")
    )
    lines += _interval_lines(report["intervals_s"])
    lines.append(_summary_line("values", report["values"], _number_render, 6))
    lines += _histogram_lines(report["values"].get("histogram", []), _number_render, 6)
    lines.append(
        f"NaN: {report['nan']}, +inf: {report['positive_infinity']}, "
        f"-inf: {report['negative_infinity']}"
    )
    lines.append(
        _summary_line("delay (arrival - point time)", report["delay_s"], _seconds_render, 4)
    )
    return "\n".join(lines)


# -- command -----------------------------------------------------------------------------


@ends_quietly_on_closed_stdout
def main(argv: list[str] | None = None) -> int:
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
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        check_metric_name(args.metric)
        if args.count is not None and args.count < 1:
            raise ValueError(f"invalid --count {args.count}: expected at least 1")
        if args.every < 0:
            raise ValueError(f"invalid --every {args.every:g}: expected 0 or more seconds")
    except (TypeError, ValueError) as error:
        print(f"mqsync-inspect: {error}", file=sys.stderr)
        return EXIT_USAGE

    done = threading.Event()
    statistics = MetricStatistics()
    try:
        sink = InspectingSink(
            args.token,
            args.url,
            statistics=statistics,
            limit=args.count,
            done=done,
            connect_timeout=CONNECT_TIMEOUT,
            rpc_timeout=10.0,
        )
    except (TypeError, ValueError) as error:
        print(f"mqsync-inspect: {error}", file=sys.stderr)
        return EXIT_USAGE
    previous = {
        signum: signal.signal(signum, lambda *_: done.set())
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        try:
            sink.start()
            reply = sink.subscribe([args.metric], expires=max(60.0, args.duration * 2))
        except ConnectFailed as error:
            print(f"mqsync-inspect: {connect_failure_message(error, args.url, sink.token)}",
                  file=sys.stderr)
            return EXIT_CONNECT
        except MqsyncError as error:
            print(f"mqsync-inspect: {error}", file=sys.stderr)
            return EXIT_FAILURE
        metadata = dict((reply.get("metrics") or {}).get(args.metric) or {})
        started = time.monotonic()
        _watch(args, statistics, done, started, sink)
        elapsed = time.monotonic() - started
    finally:
        sink.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    report = statistics.to_json(elapsed)
    if args.json:
        print(json.dumps({"metric": args.metric, "metadata": metadata, **report}, indent=2))
    else:
        print(format_report(args.metric, metadata, report))
    if sink.failure is not None:
        print(f"mqsync-inspect: {sink.failure}", file=sys.stderr)
        return EXIT_FAILURE
    if not report["points"]:
        print(
            f"mqsync-inspect: no point of {args.metric} arrived in {elapsed:.1f} s", file=sys.stderr
        )
        return EXIT_FAILURE
    return EXIT_OK


def _watch(
    args: Any, statistics: MetricStatistics, done: threading.Event, started: float, sink: Sink
) -> None:
    """Wait for the end, printing a live line every ``--every`` seconds (not with --json)."""
    deadline = started + args.duration
    every = 0.0 if args.json else args.every
    last_points = 0
    last_line = started
    while not done.is_set() and sink.failure is None:
        now = time.monotonic()
        if now >= deadline:
            return
        step = deadline - now if not every else min(deadline - now, last_line + every - now)
        if done.wait(max(0.0, min(step, 0.5))):
            return
        now = time.monotonic()
        if every and now - last_line >= every:
            points, value = statistics.progress()
            shown = _number(value) if value is not None else "-"
            print(
                f"{Timestamp.now().isoformat()[11:19]}  +{points - last_points} points "
                f"({(points - last_points) / (now - last_line):.3g}/s)  last {shown}",
                file=sys.stderr,
                flush=True,
            )
            last_points, last_line = points, now


if __name__ == "__main__":
    sys.exit(main())

"""``mqsync-check``: is every metric alive?  A monitoring check with an exit code.

For each selected metric the expected time between deliveries comes from its metadata:
``rate`` (Hz) or ``interval`` (a duration such as ``"10s"``), times its ``chunkSize`` (a
source sends a chunk when it is full).  A metric is

* **ok** when a value arrived (live) or the newest one (history) is younger than that
  plus ``--grace``, and is a number;
* **dead** when no value came within that time;
* **nan** when its newest value is NaN or infinite;
* **never-seen** when there is no value at all: the database has none, or (live) no rate or
  interval is declared and no value came during the window;
* **unknown** when its interval is longer than ``--max-wait`` and no value came: not judged.

Metrics a database keeps (``historic``) are asked for their last value there; the others
are subscribed to and watched for the longest expected time plus the grace, at most
``--max-wait``; the watch ends early once every watched metric delivered.
"""

from __future__ import annotations

import json
import math
import re
import sys
import threading
import time
from typing import Any, Iterable, Mapping, Sequence, TypeGuard

import attrs

from ..errors import ConnectFailed, MqsyncError
from ..sink import Sink
from ..timeseries import Timedelta, Timestamp
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
  mqsync-check --url amqp://user:pass@broker/     every metric
  mqsync-check '^sysinfo\\.node01\\.'              those matching a regular expression
  mqsync-check --exclude '^test\\.' --grace 5 --json
  mqsync-check --live --max-wait 2min             no database: watch everything live

statuses: ok; dead (no value within its rate or interval (times chunkSize) plus --grace);
nan (newest value NaN or infinite); never-seen (no value at all, or no value during the
window and no rate or interval to judge by); unknown (interval longer than --max-wait, not
judged).  Problems are listed on stdout, then one summary line; -v lists every metric.

exit codes: 0 every metric ok (or unknown), 1 a metric is dead, nan or never-seen, or no
metric matches, 2 bad command line or configuration, 3 no connection.
"""

PROBLEMS = ("dead", "nan", "never-seen")
STATUSES = ("ok", *PROBLEMS, "unknown")
#: Seconds to watch metrics that declare neither rate nor interval (at least).
UNDECLARED_WINDOW_S = 5.0


@attrs.frozen
class Verdict:
    """What the check found for one metric."""

    metric: str
    status: str
    detail: str
    via: str  # "live" or "history"
    expected_s: float | None = None
    last_time: Timestamp | None = None
    last_value: float | None = None
    age_s: float | None = None

    @property
    def problem(self) -> bool:
        return self.status in PROBLEMS

    def to_json(self) -> dict[str, Any]:
        value = self.last_value
        return {"metric": self.metric, "status": self.status, "detail": self.detail,
                "via": self.via, "expected_s": self.expected_s,
                "last_time": self.last_time.isoformat() if self.last_time else None,
                "last_value": value if value is None or math.isfinite(value) else str(value),
                "age_s": self.age_s}


def expected_interval(metadata: Mapping[str, Any]) -> float | None:
    """Seconds between deliveries declared in ``metadata``, or None when it says nothing.

    ``rate`` (Hz) or ``interval`` (a duration string, or seconds), times ``chunkSize``.
    """
    interval: float | None = None
    rate = metadata.get("rate")
    if _positive_number(rate):
        interval = 1.0 / rate
    else:
        declared = metadata.get("interval")
        try:
            if isinstance(declared, str):
                interval = Timedelta.from_string(declared).s
            elif _positive_number(declared):
                interval = float(declared)
        except ValueError:
            interval = None
        if interval is not None and not interval > 0:
            interval = None
    if interval is None:
        return None
    chunk_size = metadata.get("chunkSize")
    if isinstance(chunk_size, int) and not isinstance(chunk_size, bool) and chunk_size > 1:
        interval *= chunk_size
    return interval


def _positive_number(value: Any) -> TypeGuard[float]:
    """Whether ``value`` is a finite int or float above 0 (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) and value > 0


def _age(time_ns: int, now_ns: int) -> float:
    return (now_ns - time_ns) / 1e9


def judge(metric: str, expected_s: float | None, grace: float, last: tuple[int, float] | None,
          *, via: str, watched_s: float | None = None, now_ns: int | None = None) -> Verdict:
    """The verdict on one metric from its newest known point (``(time ns, value)`` or None).

    ``watched_s`` is how long a live metric was watched; None for a database's answer.
    """
    now_ns = time.time_ns() if now_ns is None else now_ns
    expectation = (f"expected every {_seconds(expected_s)} (+{_seconds(grace)} grace)"
                   if expected_s is not None else "no rate or interval declared")
    if last is None:
        if via == "history":
            return Verdict(metric, "never-seen", f"the database has no value; {expectation}",
                           via, expected_s)
        assert watched_s is not None
        if expected_s is None:
            return Verdict(metric, "never-seen", f"no value within {_seconds(watched_s)}; "
                           f"{expectation}", via)
        if expected_s + grace > watched_s:
            return Verdict(metric, "unknown", f"no value within {_seconds(watched_s)}, but "
                           f"{expectation}: raise --max-wait to judge it", via, expected_s)
        return Verdict(metric, "dead", f"no value within {_seconds(watched_s)}; "
                       f"{expectation}", via, expected_s)
    time_ns, value = last
    age = _age(time_ns, now_ns)
    seen = f"last value {value:.6g} {_seconds(age)} ago"
    if not math.isfinite(value):
        return Verdict(metric, "nan", f"{seen}; {expectation}", via, expected_s,
                       Timestamp(time_ns), value, age)
    if via == "history" and expected_s is not None and age > expected_s + grace:
        return Verdict(metric, "dead", f"{seen}; {expectation}", via, expected_s,
                       Timestamp(time_ns), value, age)
    return Verdict(metric, "ok", f"{seen}; {expectation}", via, expected_s, Timestamp(time_ns),
                   value, age)


def _seconds(value: float) -> str:
    return f"{value:.3g} s" if value >= 1 or value == 0 else f"{value * 1e3:.3g} ms"


# -- live ------------------------------------------------------------------------------


class WatchingSink(Sink):
    """Keeps the newest point of every subscribed metric; :attr:`all_seen` when each has one."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self._watched: set[str] = set()
        self.last: dict[str, tuple[int, float]] = {}
        self.all_seen = threading.Event()

    def watch(self, metrics: Sequence[str], expires: float) -> None:
        with self._lock:
            self._watched = set(metrics)
        self.subscribe(list(metrics), expires=expires, metadata=False)

    def on_chunk(self, metric: str, times_ns: Sequence[int], values: Sequence[float]) -> None:
        if not times_ns:
            return
        with self._lock:
            newest = self.last.get(metric)
            if newest is None or times_ns[-1] >= newest[0]:
                self.last[metric] = (times_ns[-1], values[-1])
            if self._watched and self._watched.issubset(self.last):
                self.all_seen.set()


def live_window(expected: Mapping[str, float | None], grace: float, max_wait: float) -> float:
    """How long to watch: the longest expected interval plus the grace, at most ``max_wait``."""
    longest = [value + grace for value in expected.values() if value is not None]
    if any(value is None for value in expected.values()):
        longest.append(max(UNDECLARED_WINDOW_S, grace))
    return min(max(longest, default=grace), max_wait)


# -- history ---------------------------------------------------------------------------


def history_available() -> bool:
    """Whether this mqsync has a history client (``mqsync.history``)."""
    try:
        from .. import history  # noqa: F401
    except ImportError:
        return False
    return True


def history_last_values(token: str, url: str, metrics: Iterable[str],
                        timeout: float) -> dict[str, tuple[int, float] | None]:
    """The newest point of each metric in the database that keeps it (None: none there).

    Raises:
        ConnectFailed: the network could not be reached.
        RPCError, RPCTimeout: a database refused or did not answer.
    """
    from ..history import HistoryClient

    result: dict[str, tuple[int, float] | None] = {}
    client = HistoryClient(token, url, add_uuid=True, connect_timeout=CONNECT_TIMEOUT,
                           rpc_timeout=timeout)
    with client:
        for metric in metrics:
            last = client.history_last_value(metric, timeout=timeout)
            result[metric] = None if last is None else (last.timestamp.posix_ns,
                                                        float(last.value))
    return result


# -- command ---------------------------------------------------------------------------


def select(metrics: Mapping[str, Any], exclude: str | None) -> dict[str, dict[str, Any]]:
    """``metrics`` without those whose name matches ``exclude`` (a regular expression)."""
    pattern = re.compile(exclude) if exclude else None
    return {name: dict(meta or {}) for name, meta in sorted(metrics.items())
            if pattern is None or not pattern.search(name)}


@ends_quietly_on_closed_stdout
def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(
        "check", token="sink-check-$USER-$HOST",
        description="Check that MetricQ metrics deliver: the newest value's age against the "
        "declared rate or interval; dead, NaN and never-seen metrics make the exit code 1.",
        epilog=EXAMPLE)
    parser.add_argument("pattern", nargs="?",
                        help="check only metrics whose name matches this regular expression")
    parser.add_setting("--exclude", metavar="REGEX",
                       help="leave out metrics whose name matches this regular expression")
    parser.add_setting("--grace", type=duration_argument, default=1.0,
                       help="tolerance on top of the expected interval (default: 1 s)")
    parser.add_setting("--max-wait", type=duration_argument, default=60.0,
                       help="longest live watch; slower metrics are 'unknown' (default: 60 s)")
    parser.add_setting("--live", action="store_true",
                       help="watch every metric live, also those a database keeps")
    parser.add_setting("--timeout", type=duration_argument, default=10.0,
                       help="seconds to wait for the manager and databases (default: 10)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("-v", "--verbose", action="store_true", help="list ok metrics too")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        for regex in (args.pattern, args.exclude):
            if regex:
                re.compile(regex)
    except re.error as error:
        print(f"mqsync-check: invalid regular expression {error.pattern!r}: {error}",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        sink = WatchingSink(args.token, args.url, connect_timeout=CONNECT_TIMEOUT,
                            rpc_timeout=args.timeout)
    except (TypeError, ValueError) as error:
        print(f"mqsync-check: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        try:
            sink.start()
        except ConnectFailed as error:
            print(f"mqsync-check: {connect_failure_message(error, args.url, sink.token)}",
                  file=sys.stderr)
            return EXIT_CONNECT
        verdicts, watched = run_check(sink, args)
    except ConnectFailed as error:
        print(f"mqsync-check: {connect_failure_message(error, args.url, sink.token)}",
              file=sys.stderr)
        return EXIT_CONNECT
    except MqsyncError as error:
        print(f"mqsync-check: {error}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        sink.stop()
    return report(verdicts, watched, args)


def run_check(sink: WatchingSink, args: Any) -> tuple[list[Verdict], float | None]:
    """Select the metrics, ask the databases, watch the rest live.

    Returns one verdict per metric and how long the live metrics were watched (None: none).
    """
    metrics = select(sink.get_metrics(selector=args.pattern or None), args.exclude)
    use_history = not args.live and history_available()
    historic = [n for n, meta in metrics.items() if use_history and meta.get("historic")]
    live = [n for n in metrics if n not in set(historic)]
    expected = {name: expected_interval(meta) for name, meta in metrics.items()}
    window = live_window({n: expected[n] for n in live}, args.grace, args.max_wait)
    started = time.monotonic()
    if live:
        sink.watch(live, expires=window + 60.0)
    verdicts: list[Verdict] = []
    watched: float | None = None
    if historic:
        last = history_last_values(args.token, args.url, historic, args.timeout)
        verdicts += [judge(n, expected[n], args.grace, last[n], via="history")
                     for n in historic]
    if live:
        sink.all_seen.wait(max(0.0, started + window - time.monotonic()))
        if sink.failure is not None:
            raise ConnectFailed(f"the connection broke during the watch: {sink.failure}")
        watched = time.monotonic() - started
        verdicts += [judge(n, expected[n], args.grace, sink.last.get(n), via="live",
                           watched_s=watched) for n in live]
    return sorted(verdicts, key=lambda verdict: verdict.metric), watched


def report(verdicts: list[Verdict], watched: float | None, args: Any) -> int:
    """Print the verdicts and return the exit code."""
    counts = {status: sum(v.status == status for v in verdicts) for status in STATUSES}
    failed = any(v.problem for v in verdicts) or not verdicts
    if args.json:
        print(json.dumps({"ok": not failed, "counts": counts, "watched_s": watched,
                          "metrics": [v.to_json() for v in verdicts]}, indent=2))
    else:
        width = max((len(v.metric) for v in verdicts), default=0)
        for verdict in verdicts:
            if verdict.status != "ok" or args.verbose:
                print(f"{verdict.status.upper():<10}  {verdict.metric:<{width}}  "
                      f"{verdict.detail} ({verdict.via})")
        summary = ", ".join(f"{count} {status}" for status, count in counts.items())
        print(f"mqsync-check: {'PROBLEM' if failed else 'OK'}: {len(verdicts)} metric(s): "
              f"{summary}")
    if not verdicts:
        print("mqsync-check: no metric matches" + (f" {args.pattern!r}" if args.pattern
                                                   else ""), file=sys.stderr)
    return EXIT_FAILURE if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

"""``mqsync-measure``: record metrics around a command's run, undisturbed by the recording.

1. Subscribe to the metrics (a Subscriber with ``--expires``); the connection is closed at
   once and the broker buffers the metrics' points while the command runs.
2. Wait ``--margin`` seconds (data before the run), start the command with this terminal's
   stdin, stdout and stderr, forward SIGINT/SIGTERM to it, wait for its end.
3. Wait ``--margin`` + ``--settle`` seconds (data after the run; chunks on their way), drain
   the buffer, keep the points within the margin of the run, and write the CSV, the summary
   (JSON, and a table on stderr, as ``time`` and ``perf stat`` do, so the command's stdout
   stays its own) and, with matplotlib installed, the plot.

The figures are computed by :mod:`mqsync.measure`.  This module has one section per step:
the settings, the subscription, running the command (with its signals), collecting, and
the report.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Iterator, Mapping, Sequence

import attrs

from .. import embedded
from .._version import __version__
from ..errors import ConfigError, ConnectFailed, MqsyncError, RPCError, RPCTimeout
from ..measure import (
    Measurement,
    MetricSummary,
    Window,
    format_table,
    plot_measurement,
    plotting_available,
)
from ..subscription import Subscriber
from ..timeseries import Timedelta, Timestamp
from ._common import (
    EXIT_CONNECT,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CommandParser,
    connect_failure_message,
    setup_logging,
)

logger = logging.getLogger(__name__)

EXIT_NOT_STARTED = 127
"""The command could not be started (not found, not executable), as in a shell."""

CSV_NAME = "measurement.csv"
SUMMARY_NAME = "summary.json"
PLOT_NAME = "plot.png"
DRAIN_TIMEOUT_S = 60.0
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
ENERGY_METHOD = (
    "integral over the run window: step for scope 'last' (the default) and "
    "'next', trapezoid for scope 'point'; see mqsync.measure"
)

EXAMPLE = """\
examples:
  mqsync-measure --metrics node01.power node01.cpu.usage -- ./benchmark --size 10
  mqsync-measure --metrics room.power --margin 5 --output-dir runs/42 -- make -j8
  mqsync-measure --metrics room.power --csv power.csv --summary power.json --no-plot -- sleep 60

outputs (in --output-dir, default .): measurement.csv (time_ns, time, metric, value),
summary.json (per metric: points, min, max, mean, energy in J for power metrics), plot.png
(needs matplotlib: pip install 'mqsync[plot]').

exit codes: the command's (128+N if it was killed by signal N); 127 the command could not
be started; 2 bad command line; 3 no connection to the network before the command ran;
130 interrupted before the command started.  If the command exited 0 but the measurement
failed afterwards: 3 (connection lost) or 1 (anything else).
"""


class _NotRun(Exception):
    """The command must not run: why (the message to print), and the exit code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """Check the options, subscribe, run the command, collect; return the exit code."""
    parser = make_parser()
    options, command = split_command(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(options)
    if not command:
        parser.error(
            "the command to measure goes after '--', e.g. "
            "mqsync-measure --metrics room.power -- sleep 10"
        )
    setup_logging(args.log_level)
    try:
        settings = read_settings(args, command)
    except ConfigError as error:
        _say(str(error))
        return EXIT_USAGE
    with _network(settings.url):
        return _measure(settings)


def _measure(settings: Settings) -> int:
    """Subscribe, run the command, collect; return the exit code."""
    try:
        with _subscription(settings) as subscriber:
            return _run_and_collect(subscriber, settings)
    except _NotRun as error:
        _say(str(error))
        return error.exit_code


def _run_and_collect(subscriber: Subscriber, settings: Settings) -> int:
    """Wait the margin, run the command, wait the margin and the settling time, collect."""
    for warning in metadata_warnings(subscriber.metrics, subscriber.metadata, settings.wait_after):
        _say(warning)
    if interrupted_within(settings.margin):
        _say("interrupted before the command started")
        return EXIT_INTERRUPTED
    try:
        returncode, start, end = run_command(settings.command)
    except OSError as error:
        _say(f"cannot run {settings.command[0]!r}: {error.strerror or error}")
        return EXIT_NOT_STARTED
    run = Run(shell_exit_code(returncode), Window.of(start, end, settings.margin))
    # A signal now only cuts the wait short: collect what is there.
    interrupted_within(settings.wait_after)
    status = _collect_and_report(subscriber, settings, run)
    # the command's failure is the news; a failed measurement only shows behind a success
    return run.exit_code if run.exit_code != EXIT_OK else status


def _say(message: str) -> None:
    """A line on stderr: stdout is the command's own."""
    print(f"mqsync-measure: {message}", file=sys.stderr)


# -- settings --------------------------------------------------------------------------


def make_parser() -> CommandParser:
    """The options of ``mqsync-measure``; the command after ``--`` is split off first
    (:func:`split_command`)."""
    parser = CommandParser(
        "measure",
        token="sink-measure-$HOST",
        url_required=False,
        usage="%(prog)s --metrics METRIC [METRIC ...] [options] -- COMMAND [ARGS ...]",
        description="Record MetricQ metrics while a command runs; write a CSV, a summary "
        "(with the energy of power metrics) and a plot.",
        epilog=EXAMPLE,
    )
    parser.add_argument(
        "--metrics", nargs="+", required=True, metavar="METRIC", help="the metrics to record"
    )
    parser.add_argument(
        "--expires",
        default="1h",
        help="how long the broker keeps the buffered points if they are "
        "never collected; must exceed the command's run (default: 1h)",
    )
    parser.add_argument(
        "--margin",
        default="1s",
        help="data to keep before and after the run, e.g. 2s, 500ms "
        "(default: 1s); the command starts this much after the subscription",
    )
    parser.add_argument(
        "--settle",
        default="1s",
        help="extra wait after the margin before collecting, so chunks still "
        "on their way arrive (default: 1s)",
    )
    _add_output_options(parser)
    return parser


def _add_output_options(parser: CommandParser) -> None:
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path("."),
        help="where the outputs go (default: the current directory)",
    )
    parser.add_argument("--csv", type=Path, help=f"CSV path (default: <output-dir>/{CSV_NAME})")
    parser.add_argument(
        "--summary", type=Path, help=f"summary JSON path (default: <output-dir>/{SUMMARY_NAME})"
    )
    plot = parser.add_mutually_exclusive_group()
    plot.add_argument(
        "--plot",
        type=Path,
        help=f"plot path, PNG (default: <output-dir>/{PLOT_NAME} when matplotlib is installed)",
    )
    plot.add_argument("--no-plot", action="store_true", help="draw no plot")


def split_command(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """The options before the first ``--`` and the command after it (none without ``--``)."""
    argv = list(argv)
    if "--" not in argv:
        return argv, []
    split = argv.index("--")
    return argv[:split], argv[split + 1 :]


@attrs.frozen
class Settings:
    """What one measurement does: checked before anything connects or runs."""

    command: tuple[str, ...]
    metrics: tuple[str, ...]
    url: str | None
    token: str
    expires: float
    """Seconds the broker keeps the subscription when nobody collects it."""
    margin: float
    """Seconds of data kept before and after the run."""
    settle: float
    """Seconds waited after the margin for chunks still on their way."""
    csv_path: Path
    summary_path: Path
    plot_path: Path | None

    @property
    def wait_after(self) -> float:
        """Seconds waited after the run before collecting."""
        return self.margin + self.settle

    @property
    def outputs(self) -> list[Path]:
        """The files this measurement writes."""
        paths = [self.csv_path, self.summary_path]
        return paths if self.plot_path is None else [*paths, self.plot_path]


def read_settings(args: argparse.Namespace, command: Sequence[str]) -> Settings:
    """The settings of ``command``'s measurement from the parsed command line; makes the
    outputs' directories.

    Raises:
        ConfigError: an option is invalid, or an output's directory cannot be made or written.
    """
    expires = _duration(args.expires, "expires")
    if expires <= 0:
        raise ConfigError(f"--expires must be a positive duration, got {args.expires!r}")
    margin, settle = _duration(args.margin, "margin"), _duration(args.settle, "settle")
    for name, value in (("margin", margin), ("settle", settle)):
        if value < 0:
            raise ConfigError(f"--{name} must not be negative, got {value:g} s")
    settings = Settings(
        command=tuple(command),
        metrics=tuple(args.metrics),
        url=args.url,
        token=args.token,
        expires=expires,
        margin=margin,
        settle=settle,
        csv_path=args.csv or args.output_dir / CSV_NAME,
        summary_path=args.summary or args.output_dir / SUMMARY_NAME,
        plot_path=_plot_path(args),
    )
    for path in settings.outputs:
        _make_directory(path)
    return settings


def _duration(text: str, name: str) -> float:
    try:
        return Timedelta.coerce(text, name=name).s
    except (TypeError, ValueError) as error:
        raise ConfigError(str(error)) from None


def _plot_path(args: argparse.Namespace) -> Path | None:
    """``--plot``; else none with ``--no-plot`` or without matplotlib; else the default."""
    if args.plot is not None:
        if not plotting_available():
            raise ConfigError(
                f"--plot {args.plot} needs matplotlib: pip install "
                "'mqsync[plot]' (or use --no-plot)"
            )
        return Path(args.plot)
    if args.no_plot:
        return None
    if not plotting_available():
        logger.warning("matplotlib is not installed: no plot (pip install 'mqsync[plot]')")
        return None
    return Path(args.output_dir) / PLOT_NAME


def _make_directory(path: Path) -> None:
    """Make sure ``path`` can be written: its directory exists and is writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot create the directory for {path}: {error}") from error
    if not os.access(path.parent, os.W_OK):
        raise ConfigError(f"cannot write {path}: directory {path.parent} is not writable")


# -- the subscription ------------------------------------------------------------------


@contextlib.contextmanager
def _network(url: str | None) -> Iterator[None]:
    """Without a URL: hold the embedded network for the whole run.

    The Subscriber closes its connection at once, and the last client to leave takes the
    embedded network with it.
    """
    if url is not None:
        yield
        return
    _say(
        "no --url (or $MQSYNC_URL): measuring on an embedded in-process network, where "
        "only this process's sources publish"
    )
    embedded.acquire()
    try:
        yield
    finally:
        embedded.release()


@contextlib.contextmanager
def _subscription(settings: Settings) -> Iterator[Subscriber]:
    """The metrics subscribed to; a subscription left uncollected is released on the way out.

    Raises:
        _NotRun: the subscription could not be made.
    """
    try:
        subscriber = Subscriber(
            settings.token,
            settings.url,
            metrics=settings.metrics,
            expires=settings.expires,
            add_uuid=True,
        )
    except (TypeError, ValueError) as error:
        raise _NotRun(str(error), EXIT_USAGE) from error
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(subscriber)
        except (ConnectFailed, RPCTimeout) as error:
            reason = connect_failure_message(error, subscriber.url, subscriber.token)
            raise _NotRun(f"the command was not run: {reason}", EXIT_CONNECT) from error
        except MqsyncError as error:
            raise _NotRun(
                f"the subscription failed, the command was not run: {error}", EXIT_FAILURE
            ) from error
        # a run that never collected (the command did not start, Ctrl-C before it) frees
        # the broker's buffer now instead of after --expires; after a collect: nothing to do
        stack.callback(_release, subscriber)
        yield subscriber


def _release(subscriber: Subscriber) -> None:
    try:
        subscriber.release()
    except MqsyncError as error:
        _say(f"could not release the subscription (the broker drops it after --expires): {error}")


def metadata_warnings(
    metrics: Sequence[str], metadata: Mapping[str, Mapping[str, Any]], wait_after: float
) -> Iterator[str]:
    """What the metrics' metadata warns of: metrics no source declared, and metrics sent in
    chunks that take longer to fill than the ``wait_after`` seconds after the run."""
    for metric in metrics:
        declared = metadata.get(metric) or {}
        if not declared:
            yield f"{metric}: no metadata (has a source declared it?)"
            continue
        chunk_size, rate = declared.get("chunkSize"), declared.get("rate")
        if (
            isinstance(chunk_size, (int, float))
            and isinstance(rate, (int, float))
            and rate > 0
            and chunk_size / rate > wait_after
        ):
            yield (
                f"{metric} is sent in chunks of about {chunk_size / rate:g} s (chunkSize "
                f"{chunk_size} at {rate:g}/s): points near the end of the run may come too "
                "late; raise --settle"
            )


# -- running the command ---------------------------------------------------------------


@attrs.frozen
class Run:
    """How the command ran: its exit code, as a shell gives it, and the window of data kept."""

    exit_code: int
    window: Window


def shell_exit_code(returncode: int) -> int:
    """A :class:`subprocess.Popen` return code as a shell gives it: 128+N when the command
    was killed by signal N."""
    return returncode if returncode >= 0 else 128 - returncode


def interrupted_within(seconds: float) -> bool:
    """Wait ``seconds``, cut short by SIGINT or SIGTERM; return whether one came."""
    interrupt = threading.Event()
    with _signal_handlers(lambda signum, frame: interrupt.set()):
        interrupt.wait(seconds)
    return interrupt.is_set()


def run_command(command: Sequence[str]) -> tuple[int, Timestamp, Timestamp]:
    """Run ``command`` with this process's stdio; return its return code, start and end.

    SIGINT and SIGTERM sent to this process go to the command (from the main thread
    only).  A SIGINT from the terminal (Ctrl-C) already reaches the command, which is in
    the same foreground process group, and is not sent a second time.

    Raises:
        OSError: the command could not be started.
    """
    forwarder = SignalForwarder()
    with _signal_handlers(forwarder) as forwarding:
        start = Timestamp.now()
        child = subprocess.Popen(list(command))
        forwarder.attach(child)
        if forwarding and hasattr(signal, "sigtimedwait"):
            _wait_forwarding(child)
        else:
            child.wait()  # the handlers forward; wait() resumes after each (PEP 475)
        end = Timestamp.now()
    return child.returncode, start, end


class SignalForwarder:
    """A SIGINT/SIGTERM handler that sends the signal on to the command.

    One that comes while the command is being started is sent once it runs
    (:meth:`attach`).
    """

    def __init__(self) -> None:
        self._child: subprocess.Popen[bytes] | None = None
        self._early: list[int] = []

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self._child is not None:
            _send(self._child, signum)
        else:
            self._early.append(signum)

    def attach(self, child: subprocess.Popen[bytes]) -> None:
        """Forward to ``child`` from now on, first the signals that came before it ran."""
        self._child = child
        for signum in self._early:
            _send(child, signum)


@contextlib.contextmanager
def _signal_handlers(handler: Callable[[int, FrameType | None], Any]) -> Iterator[bool]:
    """While inside, ``handler`` takes SIGINT and SIGTERM; yields whether it does (only the
    main thread can set signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    previous = {signum: signal.signal(signum, handler) for signum in FORWARDED_SIGNALS}
    try:
        yield True
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _wait_forwarding(child: subprocess.Popen[bytes]) -> None:
    """Wait for ``child``, forwarding SIGINT/SIGTERM by sender.

    The signals are blocked and taken with ``sigtimedwait``, which tells who sent them; a
    SIGCHLD wakes the wait the moment the command ends, so the run's end is exact.
    """
    watched = {*FORWARDED_SIGNALS, signal.SIGCHLD}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    try:
        while child.poll() is None:
            # A SIGCHLD wakes it at once; the timeout only covers one that went to another
            # thread (threads started before the mask was set do not block it).
            info = signal.sigtimedwait(watched, 0.1)
            if info is None or info.si_signo == signal.SIGCHLD:
                continue
            if info.si_signo == signal.SIGINT and info.si_code > 0 and _in_our_process_group(child):
                # Sent by the kernel, i.e. the terminal: the command had it already.
                logger.info("SIGINT from the terminal: the command got it too")
                continue
            _send(child, info.si_signo)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _in_our_process_group(child: subprocess.Popen[bytes]) -> bool:
    try:
        return os.getpgid(child.pid) == os.getpgrp()
    except OSError:
        return False


def _send(child: subprocess.Popen[bytes], signum: int) -> None:
    if child.poll() is None:
        logger.info("forwarding %s to the command (pid %d)", signal.Signals(signum).name, child.pid)
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)


# -- collecting ------------------------------------------------------------------------


def _collect_and_report(subscriber: Subscriber, settings: Settings, run: Run) -> int:
    """Drain, write the outputs and print the table; return EXIT_OK or a failure code."""
    measurement = Measurement(run.window, subscriber.metrics, subscriber.metadata)
    try:
        kept = collect(subscriber, measurement, settings.csv_path)
    except (MqsyncError, OSError, KeyboardInterrupt) as error:
        message, exit_code = collect_failure(error, settings, run.window)
        _say(message)
        return exit_code
    summaries = measurement.summaries()
    document = summary_document(settings, run, subscriber.subscribed_at, kept, summaries)
    wrote_summary = _write_summary(settings.summary_path, document)
    drew = settings.plot_path is None or _draw(
        settings.plot_path, measurement, _title(settings.command, run.exit_code)
    )
    report(settings, run, kept, summaries, complete=wrote_summary and drew)
    return EXIT_OK if wrote_summary and drew else EXIT_FAILURE


def collect(subscriber: Subscriber, measurement: Measurement, csv_path: Path) -> int:
    """Drain the subscription into ``measurement`` and ``csv_path``; return the points kept.

    The CSV is written as ``<csv_path>.part``, renamed when complete.

    Raises:
        MqsyncError: the data could not be collected (see :meth:`Subscriber.collect_data`).
        OSError: the CSV could not be written.
        KeyboardInterrupt: Ctrl-C while collecting.
    """
    window = measurement.window
    partial = _partial(csv_path)
    with open(partial, "w", newline="", encoding="utf-8") as csv_file:
        points = subscriber.collect_data(
            start=Timestamp(window.keep_from_ns),
            end=Timestamp(window.keep_until_ns),
            timeout=DRAIN_TIMEOUT_S,
        )
        kept = measurement.collect(points, csv_file)
    os.replace(partial, csv_path)
    return kept


def collect_failure(error: BaseException, settings: Settings, window: Window) -> tuple[str, int]:
    """What to say about ``error`` from :func:`collect`, and the exit code."""
    partial = _partial(settings.csv_path)
    if isinstance(error, RPCError):
        hint = _expires_hint(window, settings.expires)
        return f"collecting the data failed: {error}{hint}", EXIT_FAILURE
    if isinstance(error, (ConnectFailed, RPCTimeout)):
        return f"collecting the data failed (partial CSV in {partial}): {error}", EXIT_CONNECT
    if isinstance(error, KeyboardInterrupt):
        return f"interrupted while collecting (partial CSV in {partial})", EXIT_INTERRUPTED
    return f"collecting the data failed: {error}", EXIT_FAILURE


def _expires_hint(window: Window, expires: float) -> str:
    """Why the subscription may be gone: the run outlasted ``--expires``."""
    if window.duration_s < expires:
        return ""
    return (
        f" (the command ran {window.duration_s:.0f} s, longer than --expires "
        f"{expires:g} s: raise --expires)"
    )


def _partial(path: Path) -> Path:
    """Where ``path`` is written until it is complete."""
    return path.with_name(path.name + ".part")


# -- the report ------------------------------------------------------------------------


def summary_document(
    settings: Settings,
    run: Run,
    subscribed_at: Timestamp | None,
    kept: int,
    summaries: Sequence[MetricSummary],
) -> dict[str, Any]:
    """The summary JSON: the run, and per metric its figures (``kept`` points in all)."""
    return {
        "command": list(settings.command),
        "exit_code": run.exit_code,
        "window": run.window.to_dict(),
        "subscribed_at": subscribed_at.isoformat() if subscribed_at else None,
        "points": kept,
        "metrics": [summary.to_dict() for summary in summaries],
        "energy": ENERGY_METHOD,
        "csv": str(settings.csv_path),
        "plot": str(settings.plot_path) if settings.plot_path else None,
        "mqsync_version": __version__,
    }


def _write_summary(path: Path, document: dict[str, Any]) -> bool:
    """Write the summary JSON (complete, or not at all); return whether it was written."""
    partial = _partial(path)
    try:
        partial.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        os.replace(partial, path)
    except OSError as error:
        _say(f"cannot write {path}: {error}")
        return False
    return True


def _draw(path: Path, measurement: Measurement, title: str) -> bool:
    """Draw the plot; return whether it was drawn."""
    try:
        plot_measurement(path, measurement, title=title)
    except Exception as error:  # a plot must never cost the CSV and the summary
        logger.debug("plot failed", exc_info=True)
        _say(f"cannot draw {path}: {error}")
        return False
    return True


def _title(command: Sequence[str], exit_code: int) -> str:
    text = shlex.join(command)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text}  (exit {exit_code})"


def report(
    settings: Settings,
    run: Run,
    kept: int,
    summaries: Sequence[MetricSummary],
    *,
    complete: bool,
) -> None:
    """The run, the table and its notes, and the files written, on stderr.

    The plot is listed when every output was written (``complete``).
    """
    _say(
        f"{shlex.join(settings.command)} ran {run.window.duration_s:.3f} s, exit code "
        f"{run.exit_code}; {kept} point(s) kept"
    )
    print(format_table(summaries), file=sys.stderr)
    for note in notes(summaries, run.window):
        _say(note)
    written = [settings.csv_path, settings.summary_path]
    if settings.plot_path is not None and complete:
        written.append(settings.plot_path)
    _say(f"wrote {', '.join(map(str, written))}")


def notes(summaries: Sequence[MetricSummary], window: Window) -> list[str]:
    """What the table does not say: metrics without points, and figures that rest on
    points outside the run."""
    found = []
    for summary in summaries:
        if summary.collected == 0:
            found.append(
                f"no points of {summary.metric} in the run window or its margins (is a "
                "source sending it?)"
            )
        elif summary.count == 0:
            found.append(_no_point_during_the_run(summary, window))
        if summary.energy_j is not None and summary.coverage < 0.99:
            found.append(
                f"the energy of {summary.metric} covers only {summary.coverage * 100:.1f} % "
                "of the run (raise --margin?)"
            )
    return found


def _no_point_during_the_run(summary: MetricSummary, window: Window) -> str:
    """Where the figures of a metric with points only in the margins come from, if any."""
    duration = f"{window.duration_s:.3g} s"
    if summary.covered_s > 0:  # the run lies between two consecutive points
        estimated = "energy and coverage are" if summary.energy_j is not None else "coverage is"
        return (
            f"no point of {summary.metric} during the run ({duration}, shorter than the "
            f"interval between its points): no min, max or mean; its {estimated} "
            "interpolated from the points just before and after the run"
        )
    return (
        f"no point of {summary.metric} during the run ({duration}), and the "
        f"{summary.collected} in the margins do not cover it: no min, max, mean "
        "or energy (raise --margin or --settle?)"
    )


if __name__ == "__main__":
    sys.exit(main())

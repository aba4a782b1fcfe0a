"""``mqsync-measure``: record metrics around a command's run, undisturbed by the recording.

1. Subscribe to the metrics (a Subscriber with ``--expires``); the connection is closed at
   once and the broker buffers the metrics' points while the command runs.
2. Wait ``--margin`` seconds (data before the run), start the command with this terminal's
   stdin, stdout and stderr, forward SIGINT/SIGTERM to it, wait for its end.
3. Wait ``--margin`` + ``--settle`` seconds (data after the run; chunks on their way), drain
   the buffer, keep the points within the margin of the run, and write the CSV, the summary
   (JSON, and a table on stderr, as ``time`` and ``perf stat`` do, so the command's stdout
   stays its own) and, with matplotlib installed, the plot.

The figures are computed by :mod:`mqsync.measure`.
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
from typing import Any, Iterator, Sequence

from .. import embedded
from .._version import __version__
from ..errors import ConnectFailed, MqsyncError, RPCError, RPCTimeout
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


class UsageError(Exception):
    """The command line is wrong (exit 2)."""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if "--" in argv:
        split = argv.index("--")
        options, command = argv[:split], argv[split + 1 :]
    else:
        options, command = argv, []
    args = parser.parse_args(options)
    if not command:
        parser.error(
            "the command to measure goes after '--', e.g. "
            "mqsync-measure --metrics room.power -- sleep 10"
        )
    setup_logging(args.log_level)
    try:
        settings = _settings(args)
    except (UsageError, TypeError, ValueError) as error:
        print(f"mqsync-measure: {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.url is None:
        print(
            "mqsync-measure: no --url (or $MQSYNC_URL): measuring on an embedded "
            "in-process network, where only this process's sources publish",
            file=sys.stderr,
        )
        # Hold the embedded network for the whole run: the Subscriber closes its
        # connection at once, and the last client to leave takes the network with it.
        embedded.acquire()
    try:
        return _measure(args, command, settings)
    finally:
        if args.url is None:
            embedded.release()


def _parser() -> argparse.ArgumentParser:
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
    return parser


class _Settings:
    def __init__(
        self,
        *,
        expires: float,
        margin: float,
        settle: float,
        csv_path: Path,
        summary_path: Path,
        plot_path: Path | None,
    ):
        self.expires = expires
        self.margin = margin
        self.settle = settle
        self.csv_path = csv_path
        self.summary_path = summary_path
        self.plot_path = plot_path


def _settings(args: argparse.Namespace) -> _Settings:
    """Check the options before anything connects or runs.

    Raises:
        UsageError, ValueError, TypeError: an option is invalid.
    """
    expires = _seconds(args.expires, "expires")
    if expires <= 0:
        raise UsageError(f"--expires must be a positive duration, got {args.expires!r}")
    margin = _seconds(args.margin, "margin")
    settle = _seconds(args.settle, "settle")
    for name, value in (("margin", margin), ("settle", settle)):
        if value < 0:
            raise UsageError(f"--{name} must not be negative, got {value:g} s")
    plot_path: Path | None = None
    if args.plot is not None:
        if not plotting_available():
            raise UsageError(
                f"--plot {args.plot} needs matplotlib: pip install "
                "'mqsync[plot]' (or use --no-plot)"
            )
        plot_path = args.plot
    elif not args.no_plot:
        if plotting_available():
            plot_path = args.output_dir / PLOT_NAME
        else:
            logger.warning("matplotlib is not installed: no plot (pip install 'mqsync[plot]')")
    settings = _Settings(
        expires=expires,
        margin=margin,
        settle=settle,
        csv_path=args.csv or args.output_dir / CSV_NAME,
        summary_path=args.summary or args.output_dir / SUMMARY_NAME,
        plot_path=plot_path,
    )
    for path in (settings.csv_path, settings.summary_path, settings.plot_path):
        if path is None:
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UsageError(f"cannot create the directory for {path}: {error}") from error
        if not os.access(path.parent, os.W_OK):
            raise UsageError(f"cannot write {path}: directory {path.parent} is not writable")
    return settings


def _seconds(text: str, name: str) -> float:
    return Timedelta.coerce(text, name=name).s


def _measure(args: argparse.Namespace, command: list[str], settings: _Settings) -> int:
    try:
        subscriber = Subscriber(
            args.token, args.url, metrics=args.metrics, expires=settings.expires, add_uuid=True
        )
    except (TypeError, ValueError) as error:
        print(f"mqsync-measure: {error}", file=sys.stderr)
        return EXIT_USAGE
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(subscriber)
        except (ConnectFailed, RPCTimeout) as error:
            reason = connect_failure_message(error, subscriber.url, subscriber.token)
            print(f"mqsync-measure: the command was not run: {reason}", file=sys.stderr)
            return EXIT_CONNECT
        except MqsyncError as error:
            print(
                f"mqsync-measure: the subscription failed, the command was not run: {error}",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        # a run that never collected (the command did not start, Ctrl-C before it) frees
        # the broker's buffer now instead of after --expires; after a collect: nothing to do
        stack.callback(_release, subscriber)
        return _run_and_collect(subscriber, command, settings)


def _release(subscriber: Subscriber) -> None:
    try:
        subscriber.release()
    except MqsyncError as error:
        print(f"mqsync-measure: could not release the subscription (the broker drops it "
              f"after --expires): {error}", file=sys.stderr)


def _run_and_collect(subscriber: Subscriber, command: list[str], settings: _Settings) -> int:
    """Wait the margin, run the command, wait the margin and the settling time, collect."""
    _check_metadata(subscriber, settings)
    interrupt = threading.Event()
    with _signals_set(interrupt):
        interrupt.wait(settings.margin)
    if interrupt.is_set():
        print("mqsync-measure: interrupted before the command started", file=sys.stderr)
        return EXIT_INTERRUPTED
    try:
        returncode, start, end = run_command(command)
    except OSError as error:
        print(
            f"mqsync-measure: cannot run {command[0]!r}: {error.strerror or error}", file=sys.stderr
        )
        return EXIT_NOT_STARTED
    exit_code = returncode if returncode >= 0 else 128 - returncode
    with _signals_set(interrupt):
        # A signal now only cuts the wait short: collect what is there.
        interrupt.wait(settings.margin + settings.settle)
    window = Window.of(start, end, settings.margin)
    status = _collect(subscriber, window, command, exit_code, settings)
    return exit_code if exit_code != EXIT_OK or status == EXIT_OK else status


def _check_metadata(subscriber: Subscriber, settings: _Settings) -> None:
    for metric in subscriber.metrics:
        metadata = subscriber.metadata.get(metric) or {}
        if not metadata:
            print(
                f"mqsync-measure: {metric}: no metadata (has a source declared it?)",
                file=sys.stderr,
            )
            continue
        chunk_size, rate = metadata.get("chunkSize"), metadata.get("rate")
        if (
            isinstance(chunk_size, (int, float))
            and isinstance(rate, (int, float))
            and rate > 0
            and chunk_size / rate > settings.margin + settings.settle
        ):
            print(
                f"mqsync-measure: {metric} is sent in chunks of about "
                f"{chunk_size / rate:g} s (chunkSize {chunk_size} at {rate:g}/s): points "
                "near the end of the run may come too late; raise --settle",
                file=sys.stderr,
            )


def run_command(command: Sequence[str]) -> tuple[int, Timestamp, Timestamp]:
    """Run ``command`` with this process's stdio; return its return code, start and end.

    SIGINT and SIGTERM sent to this process go to the command (from the main thread
    only).  A SIGINT from the terminal (Ctrl-C) already reaches the command, which is in
    the same foreground process group, and is not sent a second time.

    Raises:
        OSError: the command could not be started.
    """
    if threading.current_thread() is not threading.main_thread():
        start = Timestamp.now()
        child = subprocess.Popen(list(command))
        child.wait()
        return child.returncode, start, Timestamp.now()
    children: list[subprocess.Popen] = []
    early: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        if children:
            _send(children[0], signum)
        else:
            early.append(signum)

    previous = {signum: signal.signal(signum, forward) for signum in FORWARDED_SIGNALS}
    try:
        start = Timestamp.now()
        child = subprocess.Popen(list(command))
        children.append(child)
        for signum in early:  # arrived while the command was being started
            _send(child, signum)
        if hasattr(signal, "sigtimedwait"):
            _wait_forwarding(child)
        else:
            child.wait()  # the handlers forward; wait() resumes after each (PEP 475)
        end = Timestamp.now()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return child.returncode, start, end


def _wait_forwarding(child: subprocess.Popen) -> None:
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


def _in_our_process_group(child: subprocess.Popen) -> bool:
    try:
        return os.getpgid(child.pid) == os.getpgrp()
    except OSError:
        return False


def _send(child: subprocess.Popen, signum: int) -> None:
    if child.poll() is None:
        logger.info("forwarding %s to the command (pid %d)", signal.Signals(signum).name, child.pid)
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)


@contextlib.contextmanager
def _signals_set(event: threading.Event) -> Iterator[None]:
    """While inside, SIGINT and SIGTERM set ``event`` (from the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {
        signum: signal.signal(signum, lambda *_: event.set()) for signum in FORWARDED_SIGNALS
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _collect(
    subscriber: Subscriber, window: Window, command: list[str], exit_code: int, settings: _Settings
) -> int:
    """Drain, write the outputs and print the table; return EXIT_OK or a failure code."""
    measurement = Measurement(window, subscriber.metrics, subscriber.metadata)
    csv_path = settings.csv_path
    partial = csv_path.with_name(csv_path.name + ".part")
    try:
        with open(partial, "w", newline="", encoding="utf-8") as csv_file:
            points = subscriber.collect_data(
                start=Timestamp(window.keep_from_ns),
                end=Timestamp(window.keep_until_ns),
                timeout=DRAIN_TIMEOUT_S,
            )
            kept = measurement.collect(points, csv_file)
        os.replace(partial, csv_path)
    except RPCError as error:
        hint = ""
        if window.duration_s >= settings.expires:
            hint = (
                f" (the command ran {window.duration_s:.0f} s, longer than --expires "
                f"{settings.expires:g} s: raise --expires)"
            )
        print(f"mqsync-measure: collecting the data failed: {error}{hint}", file=sys.stderr)
        return EXIT_FAILURE
    except (ConnectFailed, RPCTimeout) as error:
        print(
            f"mqsync-measure: collecting the data failed (partial CSV in {partial}): {error}",
            file=sys.stderr,
        )
        return EXIT_CONNECT
    except KeyboardInterrupt:
        print(
            f"mqsync-measure: interrupted while collecting (partial CSV in {partial})",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except (OSError, MqsyncError) as error:
        print(f"mqsync-measure: collecting the data failed: {error}", file=sys.stderr)
        return EXIT_FAILURE

    summaries = measurement.summaries()
    document = {
        "command": command,
        "exit_code": exit_code,
        "window": window.to_dict(),
        "subscribed_at": subscriber.subscribed_at.isoformat() if subscriber.subscribed_at else None,
        "points": kept,
        "metrics": [summary.to_dict() for summary in summaries],
        "energy": "integral over the run window: step for scope 'last' (the default) and "
        "'next', trapezoid for scope 'point'; see mqsync.measure",
        "csv": str(csv_path),
        "plot": str(settings.plot_path) if settings.plot_path else None,
        "mqsync_version": __version__,
    }
    status = EXIT_OK
    try:
        _write_json(settings.summary_path, document)
    except OSError as error:
        print(f"mqsync-measure: cannot write {settings.summary_path}: {error}", file=sys.stderr)
        status = EXIT_FAILURE
    if settings.plot_path is not None:
        try:
            plot_measurement(settings.plot_path, measurement, title=_title(command, exit_code))
        except Exception as error:  # a plot must never cost the CSV and the summary
            logger.debug("plot failed", exc_info=True)
            print(f"mqsync-measure: cannot draw {settings.plot_path}: {error}", file=sys.stderr)
            status = EXIT_FAILURE

    print(
        f"mqsync-measure: {shlex.join(command)} ran {window.duration_s:.3f} s, exit code "
        f"{exit_code}; {kept} point(s) kept",
        file=sys.stderr,
    )
    print(format_table(summaries), file=sys.stderr)
    for note in _notes(summaries, window):
        print(f"mqsync-measure: {note}", file=sys.stderr)
    written = [str(csv_path), str(settings.summary_path)]
    if settings.plot_path is not None and status == EXIT_OK:
        written.append(str(settings.plot_path))
    print(f"mqsync-measure: wrote {', '.join(written)}", file=sys.stderr)
    return status


def _notes(summaries: Sequence[MetricSummary], window: Window) -> list[str]:
    """What the table does not say: metrics without points, and figures that rest on
    points outside the run."""
    notes = []
    for summary in summaries:
        metric = summary.metric
        if summary.collected == 0:
            notes.append(
                f"no points of {metric} in the run window or its margins (is a source sending it?)"
            )
        elif summary.count == 0:
            duration = f"{window.duration_s:.3g} s"
            if summary.covered_s > 0:  # the run lies between two consecutive points
                estimated = (
                    "energy and coverage are" if summary.energy_j is not None else "coverage is"
                )
                notes.append(
                    f"no point of {metric} during the run ({duration}, shorter than the "
                    f"interval between its points): no min, max or mean; its {estimated} "
                    "interpolated from the points just before and after the run"
                )
            else:
                notes.append(
                    f"no point of {metric} during the run ({duration}), and the "
                    f"{summary.collected} in the margins do not cover it: no min, max, mean "
                    "or energy (raise --margin or --settle?)"
                )
        if summary.energy_j is not None and summary.coverage < 0.99:
            notes.append(
                f"the energy of {metric} covers only {summary.coverage * 100:.1f} % "
                "of the run (raise --margin?)"
            )
    return notes


def _title(command: list[str], exit_code: int) -> str:
    text = shlex.join(command)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text}  (exit {exit_code})"


def _write_json(path: Path, document: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".part")
    partial.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(partial, path)


if __name__ == "__main__":
    sys.exit(main())

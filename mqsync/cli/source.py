"""``mqsync-source``: run a source plugin.

Without ``--url`` (and ``$MQSYNC_URL``) the source joins an embedded in-process network
and a sink on that network prints every value it receives: a fresh machine shows live
values with no broker at all.  With a URL it prints one line when it runs (plugin, token,
masked URL, metrics, period) and, with ``--status-interval``, one status line per interval
(points and chunks sent, updates, reconnects, losses) on stderr.

``--once`` runs one update and prints what it sent.  A source class whose first update
cannot send everything (rates need two samples) says so with a ``priming_interval``
attribute (seconds): ``--once`` then runs a priming update whose points it drops, waits
that long, and sends the second.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from ..config import read_config_file
from ..errors import ConfigError, MqsyncError, PluginError
from ..host import HostConfig, SourceHost, is_host_file
from ..plugin import LoadedKind, PluginSet, load_plugins
from ..sink import Sink
from ..timeseries import Timedelta, Timestamp
from ._common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_PIPE,
    EXIT_USAGE,
    CommandParser,
    LineWriter,
    duration_argument,
    ends_quietly_on_closed_stdout,
    failure_message,
    setup_logging,
    start_client,
)

#: Seconds ``--once`` waits after a priming update at most, whatever a plugin asks for.
MAX_PRIMING_SECONDS = 5.0

EXAMPLE = """\
examples:
  mqsync-source --plugin sysinfo                  live values on an embedded network
  mqsync-source --plugin sysinfo --once           one update, printed, then exit
  mqsync-source --list-plugins [--json]           what is installed
  mqsync-source --usage sysinfo                   the plugin's configuration keys
  mqsync-source --plugin sysinfo --url amqp://user:pass@broker/ --config sysinfo.toml
  MQSYNC_URL=amqp://... mqsync-source --plugin dummy --period 100ms --token source-demo
  mqsync-source --config host.toml --url amqp://...   every [[sources.<kind>]] of the file
                                                   in one process; SIGHUP re-reads it

exit codes: 0 stopped cleanly (also on SIGINT/SIGTERM), 1 the source failed,
2 bad command line, plugin or configuration, 3 no connection to the network,
141 standard output was closed by its reader (as cat: mqsync-source ... | head).
"""


class PrintingSink(Sink):
    """Prints every received point as ``<ISO time>  <metric>  <value> <unit>``.

    When the reader of ``out`` goes away (``| head``), ``on_closed`` is called once and
    nothing more is printed.
    """

    def __init__(
        self, *args: Any, out: TextIO, units: dict[str, str], on_closed: Any = None, **kwargs: Any
    ):
        super().__init__(*args, **kwargs)
        self.writer = LineWriter(out, on_closed)
        self._units = units
        self.received = 0

    def on_chunk(self, metric: str, times_ns: Any, values: Any) -> None:
        if self.writer.closed:
            return
        unit = self._units.get(metric, "")
        lines = [
            f"{Timestamp(t).isoformat()}  {metric}  {v:.6g} {unit}".rstrip()
            for t, v in zip(times_ns, values)
        ]
        if self.writer.write("\n".join(lines) + "\n"):
            self.received += len(lines)


def default_token(plugin: str) -> str:
    """``source-<plugin>-<short host name>``."""
    host = socket.gethostname().split(".")[0] or "localhost"
    return f"source-{plugin}-{host}"


@ends_quietly_on_closed_stdout
def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(
        "source", url_required=False, description="Run a MetricQ source plugin.", epilog=EXAMPLE
    )
    parser.add_setting(
        "--token",
        env="MQSYNC_TOKEN",
        help="the source's token (env MQSYNC_TOKEN; default: source-<plugin>-<host>)",
    )
    parser.add_argument("--plugin", help="the source kind to run (see --list-plugins)")
    parser.add_argument("--list-plugins", action="store_true", help="list installed plugins")
    parser.add_argument("--usage", metavar="PLUGIN", help="print a plugin's configuration keys")
    parser.add_argument("--json", action="store_true", help="machine-readable listings")
    parser.add_argument("--config", type=Path, help="configuration file (JSON or TOML)")
    parser.add_argument(
        "--period",
        help="time between updates, e.g. 1s, 100ms (overrides the configuration's rate/period)",
    )
    parser.add_argument("--once", action="store_true", help="one update, print it, exit")
    parser.add_argument(
        "--check", action="store_true", help="check the plugin and configuration, then exit"
    )
    parser.add_setting(
        "--status-interval",
        type=duration_argument,
        metavar="DURATION",
        help="print a status line (points and chunks sent, updates, "
        "reconnects, losses) to stderr this often, e.g. 60s (default: never)",
    )
    args = parser.parse_args(argv)
    setup_logging(args.log_level)

    plugins = load_plugins()
    if args.list_plugins:
        return _list_plugins(plugins, args.json)
    if args.usage:
        return _usage(plugins, args.usage, args.json)
    try:
        config = read_config_file(args.config) if args.config else {}
    except ConfigError as error:
        print(f"mqsync-source: {error}", file=sys.stderr)
        return EXIT_USAGE
    if is_host_file(config):
        return _main_host(args, plugins, config)
    if not args.plugin:
        parser.print_usage(sys.stderr)
        print("mqsync-source: --plugin NAME is required (see --list-plugins), or --config "
              "with a host file of [[sources.<kind>]] tables", file=sys.stderr)
        return EXIT_USAGE
    try:
        loaded = plugins.get(args.plugin)
        period = Timedelta.coerce(args.period, name="period") if args.period else None
        token = args.token or default_token(args.plugin)
        source = _make_source(loaded, token, args.url, config, period, once=args.once)
    except (PluginError, ConfigError, TypeError, ValueError) as error:
        where = f"{args.config}: " if args.config and isinstance(error, ConfigError) else ""
        print(f"mqsync-source: {where}{error}", file=sys.stderr)
        return EXIT_USAGE
    if args.check:
        print(
            f"mqsync-source: {args.plugin} configuration OK; metrics: "
            f"{', '.join(sorted(source.metrics())) or 'none'}"
        )
        return EXIT_OK
    return _run(source, args)


def _main_host(args: argparse.Namespace, plugins: PluginSet, data: dict[str, Any]) -> int:
    """``--config`` names a host file: run every instance it lists in this process."""
    if args.plugin or args.period:
        option = "--plugin" if args.plugin else "--period"
        print(f"mqsync-source: {args.config} is a host file ([[sources.<kind>]] tables): "
              f"{option} does not apply; give each instance its kind and period there",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        config = HostConfig.from_mapping(data, plugins)
    except ConfigError as error:
        print(f"mqsync-source: {args.config}: {error}", file=sys.stderr)
        return EXIT_USAGE
    token = args.token or config.token or default_token("host")
    try:
        host = SourceHost(token, args.url, config=config, plugins=plugins,
                          schedule=not (args.once or args.check))
    except (TypeError, ValueError) as error:
        print(f"mqsync-source: {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.check:
        try:
            return _check_host(host, args)
        finally:
            host.stop()

    def reload() -> None:
        try:
            report = host.reload(HostConfig.read(args.config, plugins))
        except ConfigError as error:
            print(f"mqsync-source: reload refused, the running instances go on: {error}",
                  file=sys.stderr, flush=True)
            return
        except Exception as error:  # noqa: BLE001 - said; the running instances go on
            print(f"mqsync-source: reload failed, the running instances go on: "
                  f"{type(error).__name__}: {error}", file=sys.stderr, flush=True)
            return
        print(f"mqsync-source: reloaded {args.config}: {report.summary()}", file=sys.stderr,
              flush=True)
        for name, reason in sorted(report.refused.items()):
            print(f"mqsync-source: {name} keeps its configuration: {reason}", file=sys.stderr,
                  flush=True)

    return _run(host, args, reload=reload)


def _check_host(host: SourceHost, args: argparse.Namespace) -> int:
    """``--check`` of a host file: one line per instance; exit 2 if any is refused."""
    refused = 0
    for name, stats in host.instance_stats().items():
        if stats.state == "unconfigured":
            refused += 1
            print(f"mqsync-source: {name} ({stats.kind}): {stats.last_error}", file=sys.stderr)
        else:
            source = host.instances[name]
            assert source is not None
            print(f"mqsync-source: {name} ({stats.kind}): configuration OK, every "
                  f"{source.period or 'time a rate or period is set'}; metrics: "
                  f"{', '.join(sorted(source.metrics())) or 'none'}")
    if refused:
        print(f"mqsync-source: {args.config}: {refused} of {len(host.instances)} instance(s) "
              "refused", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def _make_source(
    loaded: LoadedKind,
    token: str,
    url: str | None,
    config: dict[str, Any],
    period: Timedelta | None,
    *,
    once: bool,
) -> Any:
    try:
        return loaded.kind.source_class(token, url, config=config, period=period, schedule=not once)
    except MqsyncError:
        raise
    except (TypeError, ValueError) as error:
        raise ConfigError(f"plugin {loaded.kind.name!r}: {error}") from error


class Reloader:
    """Runs ``reload()`` on a thread of its own when SIGHUP asked for it, one at a time, so
    that a slow plugin configuration never delays the command's answer to SIGTERM."""

    def __init__(self, reload: Any):
        self._reload = reload
        self.requested = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> None:
        """Start a reload if one was asked for and none runs."""
        if not self.requested.is_set() or (self._thread and self._thread.is_alive()):
            return
        self.requested.clear()
        if self._thread is not None:
            self._thread.join()  # ended: reaped
        self._thread = threading.Thread(target=self._reload, name="mqsync-source-reload",
                                        daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        """Wait for a running reload (up to ``timeout`` seconds)."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                print(f"mqsync-source: a reload still runs after {timeout:g} s; leaving it",
                      file=sys.stderr)


def _run(source: Any, args: argparse.Namespace, reload: Any = None) -> int:
    stop = threading.Event()
    reloader = Reloader(reload) if reload is not None else None
    previous = {
        signum: signal.signal(signum, lambda *_: stop.set())
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    if reloader is not None:
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP,
                                                lambda *_: reloader.requested.set())
    printer: PrintingSink | None = None
    try:
        failed = _start(source, args)
        if failed is not None:
            return failed
        if args.once:
            return _once(source, args, stop)
        if args.url is None:
            try:
                printer = _start_printer(source, on_closed=stop.set)
            except MqsyncError as error:
                print(f"mqsync-source: {error}", file=sys.stderr)
                return EXIT_FAILURE
            print(
                f"mqsync-source: {_what(source, args)} on an embedded network (no --url); "
                "printing live values, Ctrl-C to stop",
                file=sys.stderr,
                flush=True,
            )
        else:
            print(f"mqsync-source: {_startup_line(source, args)}", file=sys.stderr, flush=True)
        try:
            _serve(source, printer, stop, args.status_interval,
                   reloader.poll if reloader else None)
        except MqsyncError as error:  # the printer could not subscribe to a new metric
            print(f"mqsync-source: {error}", file=sys.stderr)
            return EXIT_FAILURE
        if printer is not None and printer.writer.closed:
            return EXIT_PIPE
        if source.failure is not None:
            print(f"mqsync-source: {failure_message(source, args.url)}", file=sys.stderr)
            return EXIT_FAILURE
        return EXIT_OK
    finally:
        if printer is not None:
            printer.stop()
        source.stop()
        if reloader is not None:
            reloader.join(5.0)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _start(source: Any, args: argparse.Namespace) -> int | None:
    """Start ``source``; on failure print why, once, and return the exit code."""
    try:
        return start_client("mqsync-source", source, args.url)
    except ConfigError as error:  # the manager's configuration for this token
        print(
            f"mqsync-source: the configuration the manager holds for {source.token!r} is "
            f"invalid: {error}",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    except MqsyncError as error:
        print(f"mqsync-source: {error}", file=sys.stderr)
        return EXIT_FAILURE


def _serve(
    source: Any,
    printer: PrintingSink | None,
    stop: threading.Event,
    status_interval: float | None,
    poll: Any = None,
) -> None:
    """Until a signal, a closed stdout or a failure: subscribe the printer to new metrics,
    print a status line every ``status_interval`` seconds, and call ``poll()`` (a reload
    asked for by SIGHUP) every half second."""
    known = set(source.metrics()) if printer is not None else set()
    every = status_interval or 0.0  # 0: no status lines
    next_status = time.monotonic() + every if every else None
    last: dict[str, Any] = {}
    while True:
        wait = 0.5
        if next_status is not None:
            wait = min(wait, max(0.0, next_status - time.monotonic()))
        # the signals are the command's (stop): source.wait must not take them over
        if stop.wait(wait) or source.wait(0, catch_signals=()):  # stopped by itself
            return
        if poll is not None:
            poll()
        if next_status is not None and time.monotonic() >= next_status:
            for line in _status_lines(source, last):
                print(f"mqsync-source: {line}", file=sys.stderr, flush=True)
            while next_status <= time.monotonic():  # never a burst after a stall
                next_status += every
        if printer is not None:
            current = set(source.metrics())
            if current - known:
                printer.subscribe(sorted(current - known))
                known = current


def _what(source: Any, args: argparse.Namespace) -> str:
    """The plugin, or the host file and its number of instances."""
    if isinstance(source, SourceHost):
        return f"{args.config} ({len(source.instances)} instances)"
    return str(args.plugin)


def _startup_line(source: Any, args: argparse.Namespace) -> str:
    """What runs where: plugin, token, masked URL, how many metrics, how often."""
    count = len(source.metrics())
    if isinstance(source, SourceHost):
        periods = sorted({s.period_ns for s in source.instance_stats().values()
                          if s.period_ns is not None})
        every = (f"every {Timedelta(periods[0])}" if len(periods) == 1 else
                 f"every {Timedelta(periods[0])} to {Timedelta(periods[-1])}" if periods else
                 "no instance configured yet")
    else:
        period = source.period
        every = f"every {period}" if period is not None else "waiting for a rate or period"
    status = (
        f"; a status line every {Timedelta.from_s(args.status_interval)}"
        if args.status_interval
        else ""
    )
    return (
        f"{_what(source, args)} sending {count} metric(s) {every} as {source.token!r} to "
        f"{source.url}{status}"
    )


def _status_lines(source: Any, last: dict[str, Any]) -> list[str]:
    """The status line of counters; for a host, one more line per instance that is not
    running well or skipped slots since the last status.  ``last`` keeps what the previous
    call saw, for the increases."""
    stats = source.stats()
    points = stats["sent_points"]
    parts = [f"status: {points} points in {stats['sent_chunks']} chunks sent "
             f"(+{points - last.get('points', 0)})"]
    last["points"] = points
    if "instances" in stats:
        parts.append(f"{stats['instances']} instances ({stats['instances_failing']} not "
                     f"running well), {stats['update_threads']} update threads")
    if "updates" in stats:
        parts.append(
            f"{stats['updates']} updates ({stats['update_failures']} failed, "
            f"{stats['missed_slots']} slots missed)"
        )
    parts.append(f"{stats.get('reconnects', 0)} reconnects")
    parts.append(f"{stats.get('lost_points', 0)} points lost")
    if stats.get("spooled_points"):
        parts.append(f"{stats['spooled_points']} points spooled")
    lines = [", ".join(parts)]
    if isinstance(source, SourceHost):
        seen = last.setdefault("instances", {})
        for name, instance in source.instance_stats().items():
            before = seen.get(name, (0, 0))
            if instance.failures < before[0] or instance.missed_slots < before[1]:
                before = (0, 0)  # replaced by a reload: counted afresh
            seen[name] = (instance.failures, instance.missed_slots)
            if instance.state == "running" and (instance.failures, instance.missed_slots) \
                    == before:
                continue
            line = (f"status: {name} ({instance.kind}) {instance.state}: "
                    f"{instance.updates} updates, {instance.failures} failed "
                    f"(+{instance.failures - before[0]}), {instance.missed_slots} slots missed "
                    f"(+{instance.missed_slots - before[1]})")
            if instance.last_error and instance.state != "running":
                line += f", last error: {instance.last_error}"
            if instance.retry_in_s is not None:
                line += f", next try in {instance.retry_in_s:.1f} s"
            lines.append(line)
    return lines


def _start_printer(source: Any, on_closed: Any) -> PrintingSink:
    declared = source.metrics()
    units = {name: str(meta.get("unit", "")) for name, meta in declared.items()}
    printer = PrintingSink(
        f"sink-print-{source.token}", None, out=sys.stdout, units=units, on_closed=on_closed
    )
    printer.start()
    try:
        if declared:
            printer.subscribe(sorted(declared))
    except BaseException:
        printer.stop()
        raise
    return printer


def _once(source: Any, args: argparse.Namespace, stop: threading.Event) -> int:
    """One update; print exactly what it sent (for checking a plugin, and for cron).

    A source with a ``priming_interval`` first gets an update whose points are dropped,
    then, that many seconds later, the one that is sent.
    """
    sent: list[tuple[str, int, float]] = []
    send, send_many = source.send, source.send_many
    priming = True

    def tap(metric: str, time: Any, value: float) -> None:
        if priming:
            return
        send(metric, time, value)
        sent.append((metric, int(getattr(time, "posix_ns", time)), float(value)))

    def tap_many(metric: str, times: Any, values: Any) -> None:
        if priming:
            return
        send_many(metric, times, values)
        sent.extend(
            (metric, int(getattr(t, "posix_ns", t)), float(v)) for t, v in zip(times, values)
        )

    source.send, source.send_many = tap, tap_many
    failed: dict[str, BaseException] = {}
    try:
        wait = _priming_seconds(source)
        if wait:
            _update_once(source, primed_only=True)
            if stop.wait(wait):  # SIGINT/SIGTERM while priming: nothing sent
                return EXIT_OK
        priming = False
        failed = _update_once(source)
        source.flush()
    except Exception as error:  # noqa: BLE001 - the exit code and message say it
        print(f"mqsync-source: the update failed: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_FAILURE
    declared = source.metrics()
    units = {name: str(meta.get("unit", "")) for name, meta in declared.items()}
    for metric, time_ns, value in sent:
        print(
            f"{Timestamp(time_ns).isoformat()}  {metric}  {value:.6g} "
            f"{units.get(metric, '')}".rstrip()
        )
    sys.stdout.flush()
    where = "an embedded network" if args.url is None else source.url
    silent = sorted(set(declared) - {metric for metric, _, _ in sent})
    note = ""
    if silent:
        shown = ", ".join(silent[:5]) + (", ..." if len(silent) > 5 else "")
        note = f"; no value for {len(silent)} of {len(declared)} declared metric(s): {shown}"
    print(f"mqsync-source: sent {len(sent)} point(s) to {where}{note}", file=sys.stderr)
    for name, failure in sorted(failed.items()):
        print(f"mqsync-source: the update of {name} failed: {type(failure).__name__}: "
              f"{failure}", file=sys.stderr)
    if isinstance(source, SourceHost):
        for name, stats in source.instance_stats().items():
            if stats.state == "unconfigured":
                failed[name] = ConfigError(str(stats.last_error))
                print(f"mqsync-source: {name} ({stats.kind}) was not configured: "
                      f"{stats.last_error}", file=sys.stderr)
    return EXIT_FAILURE if failed else EXIT_OK


def _update_once(source: Any, primed_only: bool = False) -> dict[str, BaseException]:
    """One update of the source, or of every instance of a host (``primed_only``: of those
    that need a priming update); a host's failed instances by name (a plain source's
    failure raises)."""
    if not isinstance(source, SourceHost):
        source.update()
        return {}
    names = None
    if primed_only:
        names = [name for name, instance in source.instances.items()
                 if instance is not None and _priming_seconds(instance)]
    return {name: error for name, error in source.update_once(names).items()
            if error is not None}


def _priming_seconds(source: Any) -> float:
    """The plugin's ``priming_interval`` in seconds (0: none), at most
    :data:`MAX_PRIMING_SECONDS`; for a host, the longest of its instances'."""
    if isinstance(source, SourceHost):
        return max((_priming_seconds(instance) for instance in source.instances.values()
                    if instance is not None), default=0.0)
    declared = getattr(source, "priming_interval", None)
    if declared is None:
        return 0.0
    seconds = declared.s if isinstance(declared, Timedelta) else float(declared)
    return min(max(seconds, 0.0), MAX_PRIMING_SECONDS)


def _list_plugins(plugins: PluginSet, as_json: bool) -> int:
    rows = [
        {
            "name": name,
            "package": loaded.package,
            "version": loaded.version,
            "description": loaded.kind.description,
        }
        for name, loaded in sorted(plugins.kinds.items())
    ]
    failures = [
        {"name": f.plugin, "package": f.package, "error": f.error} for f in plugins.failures
    ]
    if as_json:
        print(json.dumps({"plugins": rows, "failed": failures}, indent=2))
    else:
        for row in rows:
            print(f"{row['name']:<12} {row['package']} {row['version']}  {row['description']}")
        for failure in failures:
            print(
                f"{failure['name']:<12} FAILED to load ({failure['package']}): {failure['error']}"
            )
    return EXIT_OK


def _usage(plugins: PluginSet, name: str, as_json: bool) -> int:
    try:
        kind = plugins.get(name).kind
    except PluginError as error:
        print(f"mqsync-source: {error}", file=sys.stderr)
        return EXIT_USAGE
    if as_json:
        print(
            json.dumps(
                {
                    o.name: {"default": o.default, "type": o.type, "description": o.description}
                    for o in kind.options
                },
                indent=2,
                default=str,
            )
        )
        return EXIT_OK
    print(f"# {name}: {kind.description}")
    print("# a configuration file for --config (TOML); every key is optional")
    for option in kind.options:
        print(f"\n# {option.description} ({option.type})")
        if option.default is None:  # TOML has no null: show the key, commented out
            print(f"# {option.name} = ...")
        else:
            print(f"{option.name} = {json.dumps(option.default, default=str)}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

"""``mqsync-source``: run a source plugin.

Without ``--url`` (and ``$MQSYNC_URL``) the source joins an embedded in-process network
and a sink on that network prints every value it receives: a fresh machine shows live
values with no broker at all.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

from ..config import read_config_file
from ..errors import ConfigError, ConnectFailed, MqsyncError, PluginError
from ..plugin import LoadedKind, PluginSet, load_plugins
from ..sink import Sink
from ..timeseries import Timedelta, Timestamp
from ._common import (
    EXIT_CONNECT,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    CommandParser,
    setup_logging,
)

EXAMPLE = """\
examples:
  mqsync-source --plugin sysinfo                  live values on an embedded network
  mqsync-source --plugin sysinfo --once           one update, printed, then exit
  mqsync-source --list-plugins [--json]           what is installed
  mqsync-source --usage sysinfo                   the plugin's configuration keys
  mqsync-source --plugin sysinfo --url amqp://user:pass@broker/ --config sysinfo.toml
  MQSYNC_URL=amqp://... mqsync-source --plugin dummy --period 100ms --token source-demo

exit codes: 0 stopped cleanly (also on SIGINT/SIGTERM), 1 the source failed,
2 bad command line, plugin or configuration, 3 no connection to the network.
"""


class PrintingSink(Sink):
    """Prints every received point as ``<ISO time>  <metric>  <value> <unit>``."""

    def __init__(self, *args: Any, out: TextIO, units: dict[str, str], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._out = out
        self._units = units
        self.received = 0
        self._lock = threading.Lock()

    def on_chunk(self, metric: str, times_ns: Any, values: Any) -> None:
        unit = self._units.get(metric, "")
        lines = [f"{Timestamp(t).isoformat()}  {metric}  {v:.6g} {unit}".rstrip()
                 for t, v in zip(times_ns, values)]
        with self._lock:
            self._out.write("\n".join(lines) + "\n")
            self._out.flush()
            self.received += len(lines)


def default_token(plugin: str) -> str:
    """``source-<plugin>-<short host name>``."""
    host = socket.gethostname().split(".")[0] or "localhost"
    return f"source-{plugin}-{host}"


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser("source", url_required=False,
                           description="Run a MetricQ source plugin.", epilog=EXAMPLE)
    parser.add_setting("--token", env="MQSYNC_TOKEN",
                       help="the source's token (env MQSYNC_TOKEN; default: "
                       "source-<plugin>-<host>)")
    parser.add_argument("--plugin", help="the source kind to run (see --list-plugins)")
    parser.add_argument("--list-plugins", action="store_true", help="list installed plugins")
    parser.add_argument("--usage", metavar="PLUGIN", help="print a plugin's configuration keys")
    parser.add_argument("--json", action="store_true", help="machine-readable listings")
    parser.add_argument("--config", type=Path, help="configuration file (JSON or TOML)")
    parser.add_argument("--period", help="time between updates, e.g. 1s, 100ms (overrides "
                        "the configuration's rate/period)")
    parser.add_argument("--once", action="store_true", help="one update, print it, exit")
    parser.add_argument("--check", action="store_true",
                        help="check the plugin and configuration, then exit")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)

    plugins = load_plugins()
    if args.list_plugins:
        return _list_plugins(plugins, args.json)
    if args.usage:
        return _usage(plugins, args.usage, args.json)
    if not args.plugin:
        parser.print_usage(sys.stderr)
        print("mqsync-source: --plugin NAME is required (see --list-plugins)", file=sys.stderr)
        return EXIT_USAGE
    try:
        loaded = plugins.get(args.plugin)
        config = read_config_file(args.config) if args.config else {}
        period = Timedelta.coerce(args.period, name="period") if args.period else None
        token = args.token or default_token(args.plugin)
        source = _make_source(loaded, token, args.url, config, period, once=args.once)
    except (PluginError, ConfigError, TypeError, ValueError) as error:
        print(f"mqsync-source: {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.check:
        print(f"mqsync-source: {args.plugin} configuration OK; metrics: "
              f"{', '.join(sorted(source.metrics())) or 'none'}")
        return EXIT_OK
    return _run(source, args)


def _make_source(loaded: LoadedKind, token: str, url: str | None, config: dict[str, Any],
                 period: Timedelta | None, *, once: bool) -> Any:
    try:
        return loaded.kind.source_class(token, url, config=config, period=period,
                                        schedule=not once)
    except MqsyncError:
        raise
    except (TypeError, ValueError) as error:
        raise ConfigError(f"plugin {loaded.kind.name!r}: {error}") from error


def _run(source: Any, args: argparse.Namespace) -> int:
    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stop.set())
                for signum in (signal.SIGINT, signal.SIGTERM)}
    printer: PrintingSink | None = None
    try:
        try:
            source.start()
            if args.url is None and not args.once:
                printer = _start_printer(source)
        except ConnectFailed as error:
            print(f"mqsync-source: {error}", file=sys.stderr)
            return EXIT_CONNECT
        if args.once:
            return _once(source, args)
        if args.url is None:
            print(f"mqsync-source: {args.plugin} on an embedded network (no --url); "
                  "printing live values, Ctrl-C to stop", file=sys.stderr, flush=True)
        known = set(source.metrics())
        while not stop.wait(0.5):
            if source.wait(0):  # stopped by itself: a failure
                break
            if printer is not None:
                current = set(source.metrics())
                if current - known:
                    printer.subscribe(sorted(current - known))
                    known = current
        if source.failure is not None:
            print(f"mqsync-source: {source.failure}", file=sys.stderr)
            return EXIT_FAILURE
        return EXIT_OK
    finally:
        if printer is not None:
            printer.stop()
        source.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _start_printer(source: Any) -> PrintingSink:
    declared = source.metrics()
    units = {name: str(meta.get("unit", "")) for name, meta in declared.items()}
    printer = PrintingSink(f"sink-print-{source.token}", None, out=sys.stdout, units=units)
    printer.start()
    if declared:
        printer.subscribe(sorted(declared))
    return printer


def _once(source: Any, args: argparse.Namespace) -> int:
    """One update; print exactly what it sent (for checking a plugin, and for cron)."""
    sent: list[tuple[str, int, float]] = []
    send, send_many = source.send, source.send_many

    def tap(metric: str, time: Any, value: float) -> None:
        send(metric, time, value)
        sent.append((metric, int(getattr(time, "posix_ns", time)), float(value)))

    def tap_many(metric: str, times: Any, values: Any) -> None:
        send_many(metric, times, values)
        sent.extend((metric, int(getattr(t, "posix_ns", t)), float(v))
                    for t, v in zip(times, values))

    source.send, source.send_many = tap, tap_many
    try:
        source.update()
        source.flush()
    except Exception as error:  # noqa: BLE001 - the exit code and message say it
        print(f"mqsync-source: the update failed: {type(error).__name__}: {error}",
              file=sys.stderr)
        return EXIT_FAILURE
    units = {name: str(meta.get("unit", "")) for name, meta in source.metrics().items()}
    for metric, time_ns, value in sent:
        print(f"{Timestamp(time_ns).isoformat()}  {metric}  {value:.6g} "
              f"{units.get(metric, '')}".rstrip())
    where = "an embedded network" if args.url is None else source.url
    print(f"mqsync-source: sent {len(sent)} point(s) to {where}", file=sys.stderr)
    return EXIT_OK


def _list_plugins(plugins: PluginSet, as_json: bool) -> int:
    rows = [{"name": name, "package": loaded.package, "version": loaded.version,
             "description": loaded.kind.description}
            for name, loaded in sorted(plugins.kinds.items())]
    failures = [{"name": f.plugin, "package": f.package, "error": f.error}
                for f in plugins.failures]
    if as_json:
        print(json.dumps({"plugins": rows, "failed": failures}, indent=2))
    else:
        for row in rows:
            print(f"{row['name']:<12} {row['package']} {row['version']}  {row['description']}")
        for failure in failures:
            print(f"{failure['name']:<12} FAILED to load ({failure['package']}): "
                  f"{failure['error']}")
    return EXIT_OK


def _usage(plugins: PluginSet, name: str, as_json: bool) -> int:
    try:
        kind = plugins.get(name).kind
    except PluginError as error:
        print(f"mqsync-source: {error}", file=sys.stderr)
        return EXIT_USAGE
    if as_json:
        print(json.dumps({o.name: {"default": o.default, "type": o.type,
                                   "description": o.description} for o in kind.options},
                         indent=2, default=str))
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

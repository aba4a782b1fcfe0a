"""``mqsync-discover``: list the clients of a MetricQ network and how their clocks compare.

A ``discover`` broadcast collects every answer for ``--timeout`` seconds; then each client
that answered is asked once more directly, timed, so its clock offset against this host
is known with a bound: ``offset = its time - (sent + received) / 2``, within half the
round trip.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import attrs

from ..client import Client
from ..errors import ConfigError, ConnectFailed, MqsyncError
from ..timeseries import Timestamp
from ._common import (
    CONNECT_TIMEOUT,
    EXIT_CONNECT,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    CommandParser,
    duration_argument,
    ends_quietly_on_closed_stdout,
    setup_logging,
    start_client,
)

EXAMPLE = """\
examples:
  mqsync-discover --url amqp://user:pass@broker/         every client, as a table
  mqsync-discover --json > clients.json                  save the list (url from the config)
  mqsync-discover --diff clients.json                    who is missing, who is new

--diff FILE takes a saved --json output or a text file with one token per line; clients
with a generated token (a '.<uuid>' suffix, e.g. sinks) are left out of the comparison.

exit codes: 0 listed (with --diff: no difference), 1 with --diff: a client is missing or
new (or nobody answered), 2 bad command line, configuration or FILE, 3 no connection.
"""

#: Tokens ending in a generated UUID (transient sinks, tools like this one).
TRANSIENT_TOKEN = re.compile(r"\.[0-9a-f]{32}$")


@attrs.frozen
class ClientInfo:
    """What one client said about itself, and its clock offset against this host."""

    token: str
    version: str | None
    library: str | None
    hostname: str | None
    uptime_s: float | None
    current_time: Timestamp | None
    offset_s: float | None
    offset_bound_s: float | None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"token": self.token, "version": self.version, "library": self.library,
                "hostname": self.hostname, "uptime_s": self.uptime_s,
                "current_time": self.current_time.isoformat() if self.current_time else None,
                "offset_s": self.offset_s, "offset_bound_s": self.offset_bound_s,
                "error": self.error}


def discover(client: Client, timeout: float, direct_timeout: float = 1.0) -> list[ClientInfo]:
    """Broadcast ``discover`` and describe every client that answered, sorted by token.

    The client running this is left out.
    """
    replies = client.discover(timeout=timeout)
    replies.pop(client.token, None)
    infos = []
    for token in sorted(replies):
        reply = replies[token]
        offset = bound = None
        if "error" not in reply:
            try:
                sent = time.time_ns()
                timed = client.rpc_direct(token, "discover", timeout=direct_timeout)
                received = time.time_ns()
            except MqsyncError:
                pass  # gone since the broadcast, or it does not answer directly
            else:
                their = _timestamp(timed.get("currentTime"))
                if their is not None:
                    reply = timed
                    offset = (their.posix_ns - (sent + received) / 2) / 1e9
                    bound = (received - sent) / 2e9
        infos.append(_describe(token, reply, offset, bound))
    return infos


def _describe(token: str, reply: dict[str, Any], offset: float | None,
              bound: float | None) -> ClientInfo:
    current = _timestamp(reply.get("currentTime"))
    starting = _timestamp(reply.get("startingTime"))
    uptime: float | None = None
    if current is not None and starting is not None:
        uptime = (current - starting).s
    elif isinstance(reply.get("uptime"), (int, float)):
        uptime = reply["uptime"] / 1e9  # the reference clients send nanoseconds
    error = reply.get("error")
    return ClientInfo(
        token=token, version=_text(reply.get("version")),
        library=_text(reply.get("metricqVersion")), hostname=_text(reply.get("hostname")),
        uptime_s=uptime, current_time=current, offset_s=offset, offset_bound_s=bound,
        error=str(error) if error is not None else None)


def _timestamp(value: Any) -> Timestamp | None:
    if not isinstance(value, str):
        return None
    try:
        return Timestamp.from_iso8601(value)
    except ValueError:
        return None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


# -- saved lists -----------------------------------------------------------------------


def read_saved_tokens(path: str | Path) -> set[str]:
    """The tokens in a saved ``--json`` output or a text file with one token per line.

    Raises:
        ConfigError: the file cannot be read or holds neither.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read the saved client list {file}: {error}") from None
    if text.lstrip().startswith(("{", "[")):
        try:
            data = json.loads(text)
        except ValueError as error:
            raise ConfigError(f"saved client list {file} is not valid JSON: {error}") from None
        entries = data.get("clients") if isinstance(data, dict) else data
        if not isinstance(entries, list):
            raise ConfigError(f"saved client list {file} must be the output of "
                              "mqsync-discover --json or a list of tokens")
        tokens = set()
        for entry in entries:
            token = entry.get("token") if isinstance(entry, dict) else entry
            if not isinstance(token, str) or not token:
                raise ConfigError(f"saved client list {file}: entry {entry!r} has no token")
            tokens.add(token)
        return tokens
    return {line.split()[0] for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")}


def compare(expected: set[str], answered: set[str]) -> tuple[list[str], list[str]]:
    """``(missing, new)`` between a saved list and the clients that answered now.

    Transient tokens (with a generated ``.<uuid>`` suffix) are left out on both sides.
    """
    expected = {t for t in expected if not TRANSIENT_TOKEN.search(t)}
    answered = {t for t in answered if not TRANSIENT_TOKEN.search(t)}
    return sorted(expected - answered), sorted(answered - expected)


# -- output ----------------------------------------------------------------------------


def format_duration(seconds: float | None) -> str:
    """``3d 04h``, ``2h 05min``, ``4min 09s``, ``12.3 s``."""
    if seconds is None:
        return "-"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}min"
    if minutes:
        return f"{minutes}min {secs:02d}s"
    return f"{seconds:.1f} s"


def format_offset(offset: float | None, bound: float | None) -> str:
    """``+1.2 ms ±0.3 ms``."""
    if offset is None:
        return "-"

    def ms(value: float) -> str:
        return f"{value * 1e3:.1f} ms" if abs(value) < 10 else f"{value:.1f} s"

    sign = "+" if offset >= 0 else "-"
    return f"{sign}{ms(abs(offset))} ±{ms(bound or 0.0)}"


def print_table(infos: list[ClientInfo]) -> None:
    rows = [("TOKEN", "VERSION", "LIBRARY", "HOST", "UPTIME", "CURRENT TIME (UTC)", "OFFSET")]
    for info in infos:
        current = info.current_time.isoformat()[:23] if info.current_time else "-"
        rows.append((info.token, info.version or "-", info.library or "-", info.hostname or "-",
                     format_duration(info.uptime_s), current,
                     f"error: {info.error}" if info.error
                     else format_offset(info.offset_s, info.offset_bound_s)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])


@ends_quietly_on_closed_stdout
def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(
        "discover", token="client-discover-$USER-$HOST",
        description="List the clients of a MetricQ network: token, version, host, uptime, "
        "current time and clock offset against this host.", epilog=EXAMPLE)
    parser.add_setting("--timeout", type=duration_argument, default=2.0,
                       help="how long to collect answers, e.g. 2, 500ms (default: 2 s)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--diff", metavar="FILE",
                        help="compare with a saved list (--json output or one token per line)")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)

    expected: set[str] | None = None
    if args.diff:
        try:
            expected = read_saved_tokens(args.diff)
        except ConfigError as error:
            print(f"mqsync-discover: {error}", file=sys.stderr)
            return EXIT_USAGE
    try:
        client = Client(args.token, args.url, add_uuid=True, connect_timeout=CONNECT_TIMEOUT,
                        rpc_timeout=10.0)
    except (TypeError, ValueError) as error:
        print(f"mqsync-discover: {error}", file=sys.stderr)
        return EXIT_USAGE
    failed = start_client("mqsync-discover", client)
    if failed is not None:
        return failed
    try:
        infos = discover(client, args.timeout)
    except MqsyncError as error:
        print(f"mqsync-discover: {error}", file=sys.stderr)
        return EXIT_CONNECT if isinstance(error, ConnectFailed) else EXIT_FAILURE
    finally:
        client.stop()

    missing: list[str] = []
    new: list[str] = []
    if expected is not None:
        missing, new = compare(expected, {info.token for info in infos})
    if args.json:
        document: dict[str, Any] = {"clients": [info.to_json() for info in infos]}
        if expected is not None:
            document["missing"] = missing
            document["new"] = new
        print(json.dumps(document, indent=2))
    else:
        print_table(infos)
        for token in missing:
            print(f"missing: {token}  (in {args.diff}, did not answer)")
        for token in new:
            print(f"new:     {token}  (answered, not in {args.diff})")
    if not infos:
        print(f"mqsync-discover: no client answered within {args.timeout:g} s",
              file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_FAILURE if missing or new else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

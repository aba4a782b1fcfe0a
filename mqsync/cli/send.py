"""``mqsync-send``: send one data point, from a script or cron, and wait for the broker.

The point leaves as a chunk of one; the command returns only after the broker confirmed
it, so exit code 0 means the point is on the network.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import ConnectFailed, MqsyncError, PublishFailed, RPCTimeout
from ..source import Source
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
    setup_logging,
    start_client,
    time_argument,
)

logger = logging.getLogger(__name__)

EXAMPLE = """\
examples:
  mqsync-send room.temperature 21.5                       now, url from the config file
  mqsync-send --url amqp://user:pass@broker/ backup.duration 312 --unit s
  mqsync-send job.exit_code 1 --time 2024-05-01T03:00:00Z
  mqsync-send job.finished 1 --time -10min --no-declare
  mqsync-send -- sensor.offset -inf                          (-- before a value like -inf)
  */5 * * * * mqsync-send host.$(hostname).users $(who | wc -l)     (crontab)

VALUE is a number (also nan, inf); --time is 'now' (default), relative (-10s, -1h), POSIX
seconds (as from date +%s) or ISO 8601.  The metric is declared (with --unit and
--description) unless --no-declare, or unless another source declared it already: its
metadata is never overwritten by this command.

exit codes: 0 sent and confirmed by the broker, 1 the manager refused, did not answer in
time, or the broker did not confirm in time, 2 bad command line or configuration, 3 no
connection (also: the token is in use by another client; give another with --token).
"""


def value_argument(text: str) -> float:
    """argparse ``type=`` for a value: any float Python reads (``21.5``, ``-3``, ``nan``)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: expected a number such as 21.5, -3, 1e6 or nan"
        ) from None


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(
        "send",
        token="source-send-$USER-$HOST",
        description="Send one data point of a MetricQ metric and wait until the broker "
        "confirmed it.",
        epilog=EXAMPLE,
    )
    parser.add_argument("metric", help="the metric's name")
    parser.add_argument("value", type=value_argument, help="the value (a number, nan, inf)")
    parser.add_argument("--time", type=time_argument, help="the point's time (default: now)")
    parser.add_argument(
        "--no-declare", action="store_true", help="do not declare the metric to the manager"
    )
    parser.add_argument("--unit", help="unit metadata when declaring, e.g. W, s, %%")
    parser.add_argument("--description", help="description metadata when declaring")
    parser.add_setting(
        "--timeout",
        type=duration_argument,
        default=10.0,
        help="seconds to wait for the manager and the broker's confirm (default: 10)",
    )
    args = parser.parse_args(argv)
    setup_logging(args.log_level)

    timestamp: Timestamp = args.time or Timestamp.now()
    try:
        source = Source(
            args.token,
            args.url,
            chunk_size=1,
            flush_interval=None,
            send_timeout=args.timeout,
            connect_timeout=CONNECT_TIMEOUT,
            rpc_timeout=args.timeout,
        )
        source[args.metric]  # checks the name before connecting
    except (TypeError, ValueError) as error:
        print(f"mqsync-send: {error}", file=sys.stderr)
        return EXIT_USAGE
    failed = start_client("mqsync-send", source, args.url)
    if failed is not None:
        return failed
    try:
        if not args.no_declare:
            _declare(source, args.metric, args.unit, args.description)
        source.send(args.metric, timestamp, args.value)
        source.flush(args.timeout)
    except PublishFailed as error:
        if isinstance(source.failure, ConnectFailed):
            print(
                f"mqsync-send: {connect_failure_message(source.failure, args.url, args.token)}",
                file=sys.stderr,
            )
            return EXIT_CONNECT
        print(f"mqsync-send: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except (ConnectFailed, RPCTimeout) as error:
        print(
            f"mqsync-send: {connect_failure_message(error, args.url, args.token)}", file=sys.stderr
        )
        return EXIT_CONNECT if isinstance(error, ConnectFailed) else EXIT_FAILURE
    except MqsyncError as error:
        print(f"mqsync-send: {error}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        source.stop()
    if source.stats().get("lost_points"):
        print(
            f"mqsync-send: the broker did not confirm the point of {args.metric!r}", file=sys.stderr
        )
        return EXIT_FAILURE
    logger.info(
        "%s = %r at %s confirmed by the broker", args.metric, args.value, timestamp.isoformat()
    )
    return EXIT_OK


def _declare(source: Source, metric: str, unit: str | None, description: str | None) -> None:
    """Declare ``metric``, never overwriting what another source (or an earlier call) said.

    A metric declared by another source is left alone; one declared by this token before
    keeps its metadata and takes ``unit``/``description`` when given.
    """
    known = source.get_metrics([metric])
    given = {
        key: value
        for key, value in (("unit", unit), ("description", description))
        if value is not None
    }
    if metric in known:
        owner = known[metric].get("source")
        if owner not in (None, source.token) or (owner == source.token and not given):
            return
    previous = {
        key: value
        for key, value in known.get(metric, {}).items()
        if key not in ("date", "source", "historic")
    }
    source.declare_metrics({metric: {**previous, **given}})


if __name__ == "__main__":
    sys.exit(main())

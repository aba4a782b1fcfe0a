"""An official metricq HistoryClient: history.register, then history requests for one metric.

Usage:
    official_history.py --url URL --metric M [--start-ns NS] [--end-ns NS]
        [--interval-max-ns NS] [--request last-value|aggregate|aggregate-timeline|
        raw-timeline|all ...] [--register-only] [--timeout S]

Requests (repeat --request; default all four, in this order):
    last-value          history_last_value(metric)
    aggregate           history_aggregate(metric, start, end)
    aggregate-timeline  history_aggregate_timeline(metric, interval_max=..., start, end)
    raw-timeline        history_raw_timeline(metric, start, end)
Each is bounded by --timeout. Without a database bound to ``metricq.history`` for the metric,
a request times out (exit 4).

stdout, one JSON object per line (floats as float.hex, times as int ns):
    {"event": "connected", "token", "history_exchange", "history_queue", "data_server_address"}
    {"event": "last_value", "value": {"t", "v"} | null}
    {"event": "aggregate", "aggregate": {...}}
    {"event": "aggregate_timeline", "aggregates": [{...}, ...]}
    {"event": "raw_timeline", "values": [{"t", "v"}, ...]}
    {"event": "error", ...}                         on failure (see _common.py)
An aggregate is {"timestamp", "minimum", "maximum", "sum", "count", "integral_ns",
"active_time"}.
"""

from __future__ import annotations

import argparse
from typing import Any

import _common
from metricq import HistoryClient, TimeAggregate, Timedelta, Timestamp, TimeValue

REQUESTS = ("last-value", "aggregate", "aggregate-timeline", "raw-timeline")


class PeerHistoryClient(_common.BoundedRpcMixin, HistoryClient):
    pass


def time_value(value: TimeValue | None) -> dict[str, Any] | None:
    if value is None:
        return None
    return {"t": value.timestamp.posix_ns, "v": _common.float_hex(value.value)}


def aggregate(value: TimeAggregate) -> dict[str, Any]:
    return {
        "timestamp": value.timestamp.posix_ns,
        "minimum": _common.float_hex(value.minimum),
        "maximum": _common.float_hex(value.maximum),
        "sum": _common.float_hex(value.sum),
        "count": int(value.count),
        "integral_ns": _common.float_hex(value.integral_ns),
        "active_time": value.active_time.ns,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="official metricq HistoryClient", epilog=_common.EXIT_CODES_HELP
    )
    _common.add_common_arguments(parser, timeout_default=20.0)
    parser.add_argument("--token", default=None, help="client token (default: unique)")
    parser.add_argument("--metric", required=True)
    parser.add_argument("--start-ns", type=int, default=None)
    parser.add_argument("--end-ns", type=int, default=None)
    parser.add_argument(
        "--interval-max-ns",
        type=int,
        default=1_000_000_000,
        help="aggregate-timeline interval_max (default 1 s)",
    )
    parser.add_argument("--request", action="append", choices=REQUESTS + ("all",), default=None)
    parser.add_argument(
        "--register-only", action="store_true", help="only history.register, no requests"
    )
    args = parser.parse_args()
    if not args.request or "all" in args.request:
        args.request = list(REQUESTS)
    return args


async def main(args: argparse.Namespace) -> int:
    token = args.token or _common.default_token("history")
    client = PeerHistoryClient(
        token,
        args.url,
        connection_timeout=_common.STOP_TIMEOUT_S,
        client_version=_common.CLIENT_VERSION,
    )
    client.rpc_timeout = args.rpc_timeout
    start = Timestamp(args.start_ns) if args.start_ns is not None else None
    end = Timestamp(args.end_ns) if args.end_ns is not None else None
    try:
        _common.set_stage("connect")
        await client.connect()
        _common.emit(
            "connected",
            token=client.token,
            history_exchange=client.history_exchange.name if client.history_exchange else None,
            history_queue=(
                client.history_response_queue.name if client.history_response_queue else None
            ),
            data_server_address=_common.masked_url(client.data_server_address),
        )
        if args.register_only:
            return _common.EXIT_OK

        for request in args.request:
            _common.set_stage(request)
            if request == "last-value":
                value = await client.history_last_value(args.metric, timeout=args.timeout)
                _common.emit("last_value", value=time_value(value))
            elif request == "aggregate":
                result = await client.history_aggregate(
                    args.metric, start_time=start, end_time=end, timeout=args.timeout
                )
                _common.emit("aggregate", aggregate=aggregate(result))
            elif request == "aggregate-timeline":
                timeline = await client.history_aggregate_timeline(
                    args.metric,
                    interval_max=Timedelta(args.interval_max_ns),
                    start_time=start,
                    end_time=end,
                    timeout=args.timeout,
                )
                _common.emit("aggregate_timeline", aggregates=[aggregate(a) for a in timeline])
            else:
                values = await client.history_raw_timeline(
                    args.metric, start_time=start, end_time=end, timeout=args.timeout
                )
                _common.emit("raw_timeline", values=[time_value(v) for v in values])
        return _common.EXIT_OK
    finally:
        await _common.stop_quietly(client)


if __name__ == "__main__":
    arguments = parse_args()
    # Several requests, each bounded by --timeout: the overall deadline covers them all.
    _common.run(
        lambda: main(arguments), arguments, wait_budget=arguments.timeout * len(arguments.request)
    )

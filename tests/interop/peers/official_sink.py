"""An official metricq Sink that records every point until N per metric arrived.

Usage:
    official_sink.py --url URL [--token T] --metric M [--metric M2 ...] --count N
        [--timeout S] [--linger S] [--expires S] [--no-metadata] [--durable]
        [--unsubscribe] [--messages] [--quiet]

Start it, wait for the "ready" line, then start the producer. The sink exits 0 when every
metric has at least N points (after --linger more seconds, to catch extra points), 4 when
--timeout seconds after "ready" passed first; either way the summary line comes last.

stdout, one JSON object per line:
    {"event": "config", "config": {...}}                    DurableSink only, from sink.register
    {"event": "ready", "token", "queue", "metrics": <sink.subscribe reply's metrics>,
     "data_server_address"}                                 after subscribe, consuming
    {"event": "point", "metric", "t": int ns, "v": float.hex}
    {"event": "message", "metric", "points", "delivery_mode", "type", "content_type",
     "app_id", "priority", "redelivered"}                   per data message, with --messages
        (aio-pika reports an absent delivery_mode as 1 and an absent priority as 0)
    {"event": "unsubscribed", "response": {...}}            with --unsubscribe (the same
        sink.unsubscribe request Sink.unsubscribe sends, sent via rpc() to print the reply; the
        end marker that follows shows up as a 0-point message of type "end")
    {"event": "summary", "received": {metric: n}, "expected": N, "complete": bool,
     "messages": n, "chunk_sizes": {metric: [points per message, ...]},
     "delivery_modes": [...], "types": [...], "end_markers": n}
    {"event": "error", ...}                                 on failure (see _common.py)
"""

from __future__ import annotations

import argparse
import asyncio
from collections import defaultdict
from typing import Any

import _common
from metricq import DurableSink, Sink, Timestamp, rpc_handler


class _Recording:
    """Shared by both sink kinds: counts points and messages, signals when N per metric are in."""

    def _init_recording(self, metrics: list[str], count: int, quiet: bool, messages: bool) -> None:
        self.expected_metrics = list(metrics)
        self.expected_count = count
        self.quiet = quiet
        self.show_messages = messages
        self.received: dict[str, int] = {metric: 0 for metric in metrics}
        self.chunk_sizes: dict[str, list[int]] = defaultdict(list)
        self.message_count = 0
        self.end_markers = 0
        self.delivery_modes: set[Any] = set()
        self.types: set[Any] = set()
        self.complete: asyncio.Event = asyncio.Event()
        self._check_complete()

    def _check_complete(self) -> None:
        if all(self.received.get(m, 0) >= self.expected_count for m in self.expected_metrics):
            self.complete.set()

    async def _on_data_message(self, message: Any) -> None:
        self.message_count += 1
        delivery_mode = getattr(message.delivery_mode, "value", message.delivery_mode)
        self.delivery_modes.add(delivery_mode)
        self.types.add(message.type)
        self._current_message = message
        await super()._on_data_message(message)  # type: ignore[misc]

    async def _on_data_chunk(self, metric: str, data_chunk: Any) -> None:
        points = len(data_chunk.time_delta)
        if self._current_message.type == "end":
            # The end marker (after sink.unsubscribe) is routed by queue name, not a metric.
            self.end_markers += 1
        else:
            self.chunk_sizes[metric].append(points)
        if self.show_messages:
            message = self._current_message
            _common.emit(
                "message",
                metric=metric,
                points=points,
                delivery_mode=getattr(message.delivery_mode, "value", message.delivery_mode),
                type=message.type,
                content_type=message.content_type,
                app_id=message.app_id,
                priority=message.priority,
                redelivered=message.redelivered,
            )
        await super()._on_data_chunk(metric, data_chunk)  # type: ignore[misc]

    async def on_data(self, metric: str, timestamp: Timestamp, value: float) -> None:
        self.received[metric] = self.received.get(metric, 0) + 1
        if not self.quiet:
            _common.emit("point", **_common.point_record(metric, timestamp.posix_ns, value))
        self._check_complete()


class PeerSink(_common.BoundedRpcMixin, _Recording, Sink):
    pass


class PeerDurableSink(_common.BoundedRpcMixin, _Recording, DurableSink):
    @rpc_handler("config")
    async def on_config(self, **config: Any) -> None:
        config.pop("from_token", None)
        _common.emit("config", config=config)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="official metricq Sink recording every point",
        epilog=_common.EXIT_CODES_HELP,
    )
    _common.add_common_arguments(parser, timeout_default=30.0)
    parser.add_argument(
        "--token",
        default=None,
        help="token (a plain Sink appends '.<uuid>' to it; default: unique)",
    )
    parser.add_argument("--metric", action="append", required=True, help="metric name (repeat)")
    parser.add_argument("--count", type=int, required=True, help="points expected per metric")
    parser.add_argument(
        "--linger",
        type=float,
        default=0.0,
        help="seconds to keep recording after N per metric arrived (catches extras)",
    )
    parser.add_argument("--expires", type=float, default=None, help="sink.subscribe 'expires' (s)")
    parser.add_argument("--no-metadata", action="store_true", help="subscribe with metadata=False")
    parser.add_argument(
        "--durable", action="store_true", help="use metricq.DurableSink (sink.register + config)"
    )
    parser.add_argument(
        "--unsubscribe",
        action="store_true",
        help="call sink.unsubscribe for all metrics before stopping",
    )
    parser.add_argument("--messages", action="store_true", help="print one line per data message")
    parser.add_argument("--quiet", action="store_true", help="no per-point lines")
    args = parser.parse_args()
    if args.count < 0:
        parser.error("--count must be >= 0")
    return args


async def main(args: argparse.Namespace) -> int:
    sink: Sink | None = None
    sink_class = PeerDurableSink if args.durable else PeerSink
    token = args.token or _common.default_token("sink")
    try:
        sink = sink_class(
            token,
            args.url,
            connection_timeout=_common.STOP_TIMEOUT_S,
            client_version=_common.CLIENT_VERSION,
        )
        sink.rpc_timeout = args.rpc_timeout
        sink._init_recording(args.metric, args.count, args.quiet, args.messages)

        _common.set_stage("connect")
        await sink.connect()

        _common.set_stage("subscribe")
        subscribe_kwargs: dict[str, Any] = {}
        if args.expires is not None:
            subscribe_kwargs["expires"] = args.expires
        if args.no_metadata:
            subscribe_kwargs["metadata"] = False
        response = await sink.subscribe(args.metric, **subscribe_kwargs)
        _common.emit(
            "ready",
            token=sink.token,
            queue=sink._data_queue.name if sink._data_queue is not None else None,
            metrics=response.get("metrics"),
            data_server_address=_common.masked_url(sink.data_server_address),
        )

        _common.set_stage("receive")
        code = _common.EXIT_OK
        try:
            await asyncio.wait_for(sink.complete.wait(), args.timeout)
        except asyncio.TimeoutError:
            code = _common.EXIT_TIMEOUT
        if code == _common.EXIT_OK and args.linger > 0:
            await asyncio.sleep(args.linger)

        if args.unsubscribe:
            _common.set_stage("unsubscribe")
            reply = await sink.rpc(
                "sink.unsubscribe", dataQueue=sink._data_queue.name, metrics=list(args.metric)
            )
            _common.emit("unsubscribed", response=reply)

        _common.emit(
            "summary",
            received=sink.received,
            expected=args.count,
            complete=code == _common.EXIT_OK,
            messages=sink.message_count,
            chunk_sizes=dict(sink.chunk_sizes),
            delivery_modes=sorted(sink.delivery_modes, key=repr),
            types=sorted(sink.types, key=repr),
            end_markers=sink.end_markers,
        )
        return code
    finally:
        await _common.stop_quietly(sink)


if __name__ == "__main__":
    arguments = parse_args()
    _common.run(lambda: main(arguments), arguments)

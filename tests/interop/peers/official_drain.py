"""An official metricq Subscriber + Drain: subscribe now, drain the buffered points later.

Usage:
    official_drain.py --url URL [--token T] --metric M [--metric M2 ...] [--expires S]
        [--wait-file PATH | --no-wait] [--timeout S]

1. ``metricq.Subscriber.connect()`` sends ``sink.subscribe`` (with ``expires``) and stops;
   the peer prints "subscribed" with the queue name.
2. It waits for a line (or end of input) on stdin, or for --wait-file to exist, or nothing
   with --no-wait. The producer sends in between.
3. ``Subscriber.collect_data()`` runs a Drain: ``sink.unsubscribe``, consume the queue until
   the end marker (AMQP type "end"), ``sink.release``. Each point is printed as it comes.

The wait for the go and the drain are each bounded by --timeout; a drain that never sees the
end marker prints its summary with "complete": false and exits 4.

stdout, one JSON object per line:
    {"event": "subscribed", "token", "queue", "metadata": {metric: metadata}}
    {"event": "draining"}
    {"event": "point", "metric", "t": int ns, "v": float.hex}
    {"event": "summary", "received": {metric: n}, "points": n, "complete": bool}
    {"event": "error", ...}                                  on failure (see _common.py)
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

import _common
from metricq import Drain, Subscriber


class PeerSubscriber(_common.BoundedRpcMixin, Subscriber):
    """Remembers the Drain that collect_data() makes, so a timeout can stop it."""

    last_drain: Drain | None = None

    def drain(self, **kwargs: Any) -> Drain:
        self.last_drain = super().drain(**kwargs)
        return self.last_drain


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="official metricq Subscriber/Drain", epilog=_common.EXIT_CODES_HELP
    )
    _common.add_common_arguments(parser, timeout_default=30.0)
    parser.add_argument("--token", default=None, help="Subscriber token (default: unique)")
    parser.add_argument("--metric", action="append", required=True, help="metric name (repeat)")
    parser.add_argument(
        "--expires", type=float, default=60.0, help="subscription lifetime in s (default 60)"
    )
    go = parser.add_mutually_exclusive_group()
    go.add_argument("--wait-file", default=None, help="drain once this file exists")
    go.add_argument("--no-wait", action="store_true", help="drain right after subscribing")
    return parser.parse_args()


async def wait_for_go(args: argparse.Namespace) -> None:
    if args.no_wait:
        return
    if args.wait_file is not None:
        deadline = asyncio.get_running_loop().time() + args.timeout
        while not os.path.exists(args.wait_file):
            if asyncio.get_running_loop().time() > deadline:
                raise asyncio.TimeoutError(
                    f"--wait-file {args.wait_file} did not appear within {args.timeout} s"
                )
            await asyncio.sleep(0.05)
        return
    try:
        await _common.StdinLines().readline(args.timeout)
    except asyncio.TimeoutError:
        raise asyncio.TimeoutError(f"no line on stdin within {args.timeout} s") from None


async def main(args: argparse.Namespace) -> int:
    token = args.token or _common.default_token("sink-drain")
    subscriber = PeerSubscriber(
        token,
        args.url,
        metrics=args.metric,
        expires=args.expires,
        connection_timeout=_common.STOP_TIMEOUT_S,
        client_version=_common.CLIENT_VERSION,
    )
    subscriber.rpc_timeout = args.rpc_timeout
    try:
        _common.set_stage("subscribe")
        # Subscriber.connect() subscribes and stops the subscriber again.
        await subscriber.connect()
    except BaseException:
        await _common.stop_quietly(subscriber)
        raise
    _common.emit(
        "subscribed", token=subscriber.token, queue=subscriber.queue, metadata=subscriber.metadata
    )

    _common.set_stage("wait-for-go")
    await wait_for_go(args)

    _common.set_stage("drain")
    _common.emit("draining")
    received: dict[str, int] = {metric: 0 for metric in args.metric}
    total = 0

    async def collect() -> None:
        nonlocal total
        async for metric, timestamp, value in subscriber.collect_data():
            received[metric] = received.get(metric, 0) + 1
            total += 1
            _common.emit("point", **_common.point_record(metric, timestamp.posix_ns, value))

    collector = asyncio.create_task(collect())
    done, _ = await asyncio.wait({collector}, timeout=args.timeout)
    complete = collector in done
    if complete:
        if collector.exception() is not None:
            await _common.stop_quietly(subscriber.last_drain)
            raise collector.exception()  # type: ignore[misc]
    else:
        # The Drain waits for its stop in __aexit__: stop it first, then cancel the iteration.
        await _common.stop_quietly(subscriber.last_drain)
        collector.cancel()
        await asyncio.wait({collector}, timeout=_common.STOP_TIMEOUT_S)
    _common.emit("summary", received=received, points=total, complete=complete)
    return _common.EXIT_OK if complete else _common.EXIT_TIMEOUT


if __name__ == "__main__":
    arguments = parse_args()
    _common.run(lambda: main(arguments), arguments)

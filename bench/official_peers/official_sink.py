"""Benchmark peer: the official metricq Sink timing how fast its on_data sees N points.

Usage: official_sink.py --url URL

Prints ``{"event": "ready"}`` at once, then for every command line on stdin::

    {"queue": Q, "metric": M, "count": N, "timeout": S}

connects a new ``metricq.Sink``, subscribes to ``M`` on the existing (already filled)
data queue ``Q`` (``sink.subscribe`` with ``dataQueue=Q``), and counts the points in
``on_data``.  The clock runs from the first ``on_data`` call to the N-th, so connecting
and subscribing are outside it.  Prints ``{"event": "result", "seconds", "count",
"complete"}`` and stops the sink.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import time
from typing import Any

from _bench_peer import LIFETIME_S, _common, commands
from metricq import Sink, Timestamp


class BenchSink(_common.BoundedRpcMixin, Sink):
    def prepare(self, count: int) -> None:
        self.expected = count
        self.received = 0
        self.first: float | None = None
        self.last: float | None = None
        self.complete = asyncio.Event()

    async def on_data(self, metric: str, timestamp: Timestamp, value: float) -> None:
        if self.received == 0:
            self.first = time.monotonic()
        self.received += 1
        if self.received == self.expected:
            self.last = time.monotonic()
            self.complete.set()


async def run_one(args: argparse.Namespace, command: dict[str, Any]) -> dict[str, Any]:
    # the queue's owner's token (with the uuid the Sink appends): the manager lets it use
    # the queue the benchmark filled
    sink = BenchSink(command.get("token") or _common.default_token("sink-bench"), args.url,
                     connection_timeout=_common.STOP_TIMEOUT_S,
                     client_version=_common.CLIENT_VERSION)
    sink.prepare(int(command["count"]))
    try:
        await sink.connect()
        gc.collect()
        await sink.subscribe([command["metric"]], dataQueue=command["queue"], metadata=False)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(sink.complete.wait(), float(command.get("timeout", 300)))
        complete = sink.last is not None and sink.first is not None
        seconds = sink.last - sink.first if complete else None
        return {"seconds": seconds, "count": sink.received,
                "complete": sink.complete.is_set()}
    finally:
        await _common.stop_quietly(sink)


async def main(args: argparse.Namespace) -> int:
    _common.emit("ready")
    stdin = _common.StdinLines()
    async for command in commands(stdin):
        _common.set_stage("receive")
        _common.emit("result", **await run_one(args, command))
    return _common.EXIT_OK


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="official metricq Sink benchmark peer",
                                     epilog=_common.EXIT_CODES_HELP)
    _common.add_common_arguments(parser, timeout_default=LIFETIME_S)
    arguments = parser.parse_args()
    _common.run(lambda: main(arguments), arguments)

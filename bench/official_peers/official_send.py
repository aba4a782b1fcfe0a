"""Benchmark peer: the official metricq Source timing its own send loop and flush.

Usage: official_send.py --url URL

Connects one ``metricq.Source`` (``source.register``, the data connection), prints
``{"event": "ready"}``, then for every command line on stdin::

    {"metrics": [names], "per_metric": N, "chunk_size": K, "start_ns": T0, "step_ns": S}

builds the points first (point ``i`` of metric ``j``: ``Timestamp(T0 + i*S)``, value
``i*0.5 + j``, interleaved: i = 0 for every metric, then i = 1, ...), then times::

    for metric, timestamp, value in points: await source.send(metric, timestamp, value)
    await source.flush()

and prints ``{"event": "result", "loop_s", "total_s", "start_monotonic", "end_monotonic"}``
(``time.monotonic()`` is system-wide on Linux, so the caller can compare it with its
own clock).  The official client publishes without publisher confirms: ``flush()``
returns once the chunks were handed to the socket, not when the broker has them.
"""

from __future__ import annotations

import argparse
import gc
import time

from _bench_peer import LIFETIME_S, _common, commands, point_value
from metricq import Source, Timestamp


class BenchSource(_common.BoundedRpcMixin, Source):
    async def task(self) -> None:
        assert self.task_stop_future is not None
        await self.task_stop_future


async def run_one(source: BenchSource, command: dict) -> dict:
    metrics = list(command["metrics"])
    per_metric = int(command["per_metric"])
    start_ns, step_ns = int(command["start_ns"]), int(command["step_ns"])
    source.chunk_size = int(command["chunk_size"])
    for metric in metrics:  # fresh per-metric state with this chunk size
        source.metrics.pop(metric, None)
        source[metric]
    points = [(metric, Timestamp(start_ns + i * step_ns), point_value(i, j))
              for i in range(per_metric) for j, metric in enumerate(metrics)]
    send = source.send
    gc.collect()
    started = time.monotonic()
    for metric, timestamp, value in points:
        await send(metric, timestamp, value)
    looped = time.monotonic()
    await source.flush()
    ended = time.monotonic()
    for metric in metrics:
        source.metrics.pop(metric, None)
    return {"loop_s": looped - started, "total_s": ended - started,
            "start_monotonic": started, "end_monotonic": ended, "points": len(points)}


async def main(args: argparse.Namespace) -> int:
    source = BenchSource(_common.default_token("source-bench"), args.url,
                         connection_timeout=_common.STOP_TIMEOUT_S,
                         client_version=_common.CLIENT_VERSION)
    try:
        _common.set_stage("connect")
        await source.connect()
        _common.emit("ready", token=source.token)
        stdin = _common.StdinLines()
        async for command in commands(stdin):
            _common.set_stage("send")
            _common.emit("result", **await run_one(source, command))
        return _common.EXIT_OK
    finally:
        await _common.stop_quietly(source)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="official metricq Source send benchmark peer",
                                     epilog=_common.EXIT_CODES_HELP)
    _common.add_common_arguments(parser, timeout_default=LIFETIME_S)
    arguments = parser.parse_args()
    _common.run(lambda: main(arguments), arguments)

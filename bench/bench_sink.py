"""Benchmark: receiving with mqsync's Sink against the official Sink and raw kombu.

    python bench/bench_sink.py [--quick] [--runs 5] [--url URL] [--profile]

Each run fills a data queue first, then lets one contender consume it, so what is
measured is how fast a sink gets through a backlog:

1. a ``sink.subscribe`` RPC (from a helper client) creates the data queue, bound to a
   metric of the run's own;
2. a plain kombu connection publishes the points there, already encoded, in chunks of
   1, 100 or 1000 points, and the benchmark waits until the queue holds them all;
3. the contender subscribes to that queue (``sink.subscribe`` with ``dataQueue``, under the
   helper's token with a uuid appended: the manager lets only the queue's owner and such
   derived tokens use a queue) and
   consumes it; the clock runs from its first callback to the one that completes the N
   points, so connecting and subscribing are outside it (and so are the transfer and
   decoding of the first message: under 1 % of the messages at the default sizes).

Contenders, each acking every message after its callback:

- **per point**: mqsync ``Sink.on_data`` (one call per point with a ``Timestamp``) vs
  the official ``metricq.Sink.on_data`` (5.4.0, a subprocess in the interop venv); both
  callbacks only count; chunk sizes 1, 100, 1000.
- **bulk**: mqsync ``Sink.on_chunk`` (one call per chunk with lists of int ns and
  floats) vs a raw kombu consumer that decodes each chunk with ``decode_chunk`` and acks
  it (same prefetch, 400); chunks of 1000 points.

``--profile`` skips the timing and runs the mqsync paths under cProfile (every thread).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import kombu  # noqa: E402
from _common import STEP_NS, T0, Result, median  # noqa: E402

import mqsync  # noqa: E402
from mqsync.chunk import decode_chunk, encode_chunk  # noqa: E402
from mqsync.names import derive_address  # noqa: E402

PREFETCH = 400  # mqsync.Sink's default prefetch_count, and the official client's
CHUNK_SIZES = (1, 100, 1000)
TIMEOUT = 300.0


def sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return {"per_point": {1: 3_000, 100: 40_000, 1000: 40_000}, "bulk": 200_000}
    return {"per_point": {1: 20_000, 100: 200_000, 1000: 200_000}, "bulk": 1_000_000}


def make_payloads(points: int, chunk_size: int) -> list[bytes]:
    payloads = []
    for first in range(0, points, chunk_size):
        indices = range(first, min(points, first + chunk_size))
        payloads.append(encode_chunk([T0 + i * STEP_NS for i in indices],
                                     [i * 0.5 for i in indices]))
    return payloads


class _Window:
    """First callback to the one that completes ``expected`` points, on perf_counter."""

    def __init__(self, expected: int):
        self.expected = expected
        self.received = 0
        self.first: float | None = None
        self.last: float | None = None
        self.done = threading.Event()

    def seconds(self, who: str) -> float:
        if not self.done.wait(TIMEOUT) or self.first is None or self.last is None:
            raise RuntimeError(f"{who} got {self.received} of {self.expected} points "
                               f"within {TIMEOUT:g} s")
        return self.last - self.first


class CountingSink(mqsync.Sink):
    """Per point: ``on_data`` counts, as the official peer's does."""

    window: _Window

    def on_data(self, metric: str, timestamp: mqsync.Timestamp, value: float) -> None:
        window = self.window
        if window.received == 0:
            window.first = time.perf_counter()
        window.received += 1
        if window.received == window.expected:
            window.last = time.perf_counter()
            window.done.set()


class ChunkCountingSink(mqsync.Sink):
    """Bulk: ``on_chunk`` counts the points of each chunk."""

    window: _Window

    def on_chunk(self, metric: str, times_ns: Sequence[int], values: Sequence[float]) -> None:
        window = self.window
        if window.received == 0:
            window.first = time.perf_counter()
        window.received += len(times_ns)
        if window.received >= window.expected:
            window.last = time.perf_counter()
            window.done.set()


class Backlog:
    """Makes filled data queues: subscribe by RPC, publish the payloads, wait for them."""

    def __init__(self, url: str, rpc: mqsync.Client, broker: _common.Broker):
        self.url = url
        self.rpc = rpc
        self.broker = broker

    def fill(self, payloads: list[bytes]) -> tuple[str, str]:
        """Return (metric, queue) with ``payloads`` waiting in the queue."""
        metric = f"bench.sink.{uuid.uuid4().hex[:8]}"
        reply = self.rpc.rpc("sink.subscribe", metrics=[metric], expires=600, metadata=False)
        queue = reply["dataQueue"]
        self.broker.publish([(metric, payload) for payload in payloads])
        self.broker.wait_depth(queue, len(payloads))
        return metric, queue

    def release(self, queue: str) -> None:
        """Delete the queue (mqsync sinks release it themselves when they stop)."""
        with contextlib.suppress(mqsync.MqsyncError):
            self.rpc.rpc("sink.release", dataQueue=queue, timeout=10)


def consume_mqsync(url: str, sink_class: type, metric: str, queue: str, points: int,
                   owner: str) -> float:
    window = _Window(points)
    with sink_class(owner, url) as sink:  # owner.<uuid>: may use the owner's queue
        sink.window = window
        sink.subscribe([metric], dataQueue=queue, metadata=False)
        seconds = window.seconds("mqsync sink")
    return seconds


def consume_official(peer: _common.OfficialPeer, metric: str, queue: str, points: int,
                     owner: str) -> float:
    result = peer.run(TIMEOUT + 60, queue=queue, metric=metric, count=points, timeout=TIMEOUT,
                      token=owner)
    if not result.get("complete"):
        raise RuntimeError(f"the official sink got {result.get('count')} of {points} points")
    return float(result["seconds"])


def consume_raw(url: str, rpc: mqsync.Client, metric: str, queue: str, points: int) -> float:
    """kombu consumer + decode_chunk + ack per message, on a connection of its own."""
    reply = rpc.rpc("sink.subscribe", metrics=[metric], dataQueue=queue, metadata=False)
    window = _Window(points)

    def on_message(message: Any) -> None:
        if window.received == 0:
            window.first = time.perf_counter()
        times_ns, _values = decode_chunk(message.body)
        window.received += len(times_ns)
        message.ack()
        if window.received >= window.expected:
            window.last = time.perf_counter()
            window.done.set()

    with kombu.Connection(derive_address(url, reply["dataServerAddress"])) as connection:
        channel = connection.channel()
        channel.basic_qos(prefetch_size=0, prefetch_count=PREFETCH, a_global=False)
        consumer = kombu.Consumer(channel, queues=[kombu.Queue(queue, no_declare=True)],
                                  on_message=on_message, no_ack=False, auto_declare=False)
        deadline = time.monotonic() + TIMEOUT
        with consumer:
            while not window.done.is_set() and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    connection.drain_events(timeout=1)
    return window.seconds("raw kombu consumer")


# -- the benchmarks -----------------------------------------------------------------------


def bench_per_point(url: str, runs: int, quick: bool, backlog: Backlog,
                    official: _common.OfficialPeer | None) -> list[Result]:
    print(f"\nper-point sink (on_data): points/s through a filled queue, median of {runs} runs "
          f"(raw: kombu + decode_chunk + ack, no per-point call: the floor, for reference)")
    print(f"{'chunk':>6} {'points':>8} {'mqsync':>12} {'official':>12} {'vs off':>7} "
          f"{'raw kombu':>12} {'vs raw':>7}")
    results = []
    for chunk_size in CHUNK_SIZES:
        points = sizes(quick)["per_point"][chunk_size]
        payloads = make_payloads(points, chunk_size)
        figures: dict[str, list[float]] = {"mqsync": [], "official": [], "raw": []}
        ways = ["mqsync", "official", "raw"] if official is not None else ["mqsync", "raw"]
        for run in range(runs):
            for way in ways if run % 2 == 0 else ways[::-1]:
                metric, queue = backlog.fill(payloads)
                try:
                    if way == "mqsync":
                        seconds = consume_mqsync(url, CountingSink, metric, queue, points,
                                                 backlog.rpc.token)
                    elif way == "raw":
                        seconds = consume_raw(url, backlog.rpc, metric, queue, points)
                    else:
                        assert official is not None
                        seconds = consume_official(official, metric, queue, points,
                                                   backlog.rpc.token)
                finally:
                    backlog.release(queue)
                figures[way].append(points / seconds)
        mq_rate, raw_rate = median(figures["mqsync"]), median(figures["raw"])
        official_rate = median(figures["official"]) if figures["official"] else None
        vs_official = f"{mq_rate / official_rate:>6.2f}x" if official_rate else f"{'n/a':>7}"
        official_text = f"{official_rate / 1e3:>10.1f} k" if official_rate else f"{'n/a':>12}"
        print(f"{chunk_size:>6} {points:>8} {mq_rate / 1e3:>10.1f} k {official_text} "
              f"{vs_official} {raw_rate / 1e3:>10.1f} k {mq_rate / raw_rate:>6.2f}x", flush=True)
        results.append(Result(f"Sink.on_data chunk {chunk_size}", mq_rate, "points/s",
                              "official Sink", official_rate, target_ratio=3.0))
    return results


def bench_bulk(url: str, runs: int, quick: bool, backlog: Backlog,
               rpc: mqsync.Client) -> list[Result]:
    points = sizes(quick)["bulk"]
    chunk_size = 1000
    payloads = make_payloads(points, chunk_size)
    print(f"\nbulk sink: {points} points in chunks of {chunk_size}, points/s, median of "
          f"{runs} runs")
    figures: dict[str, list[float]] = {"mqsync": [], "raw": []}
    for run in range(runs):
        order = ["mqsync", "raw"] if run % 2 == 0 else ["raw", "mqsync"]
        for way in order:
            metric, queue = backlog.fill(payloads)
            try:
                if way == "mqsync":
                    seconds = consume_mqsync(url, ChunkCountingSink, metric, queue, points,
                                             backlog.rpc.token)
                else:
                    seconds = consume_raw(url, rpc, metric, queue, points)
            finally:
                backlog.release(queue)
            figures[way].append(points / seconds)
    mq_rate, raw_rate = median(figures["mqsync"]), median(figures["raw"])
    print(f"{'mqsync Sink.on_chunk':<40} {mq_rate / 1e6:>8.3f} M")
    print(f"{'raw kombu consume + decode_chunk + ack':<40} {raw_rate / 1e6:>8.3f} M")
    print(f"ratio mqsync / raw: {mq_rate / raw_rate:.2f}x", flush=True)
    return [Result(f"Sink.on_chunk chunk {chunk_size}", mq_rate, "points/s",
                   "raw kombu consume+decode", raw_rate, target_ratio=0.8)]


def profile(url: str, quick: bool) -> None:
    """Run the mqsync sink paths under cProfile (per point at chunk 1 and 1000, bulk)."""
    with mqsync.Client(f"sink-bench-{uuid.uuid4().hex[:6]}", url) as rpc, \
            _common.Broker(url) as broker:
        backlog = Backlog(url, rpc, broker)
        cases = [(CountingSink, 1, sizes(quick)["per_point"][1]),
                 (CountingSink, 1000, sizes(quick)["per_point"][1000]),
                 (ChunkCountingSink, 1000, sizes(quick)["bulk"])]
        for sink_class, chunk_size, points in cases:
            metric, queue = backlog.fill(make_payloads(points, chunk_size))
            try:
                with _common.profile_all_threads(f"{sink_class.__name__}, chunk {chunk_size}, "
                                                 f"{points} points"):
                    consume_mqsync(url, sink_class, metric, queue, points, rpc.token)
            finally:
                backlog.release(queue)


def run(url: str, runs: int, quick: bool) -> list[Result]:
    """Every figure of this benchmark on a network (a vhost with a manager) at ``url``."""
    with mqsync.Client(f"sink-bench-{uuid.uuid4().hex[:6]}", url) as rpc, \
            _common.Broker(url) as broker:
        backlog = Backlog(url, rpc, broker)
        with _common.official_peer("official_sink.py", url) as official:
            results = bench_per_point(url, runs, quick, backlog, official)
        results += bench_bulk(url, runs, quick, backlog, rpc)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _common.add_common_arguments(parser)
    parser.add_argument("--profile", action="store_true",
                        help="profile the mqsync paths instead of timing them")
    args = parser.parse_args(argv)
    _common.check_runs(parser, args.runs)

    def measure(url: str) -> Any:
        if args.profile:
            profile(url, args.quick)
            return None
        return run(url, args.runs, args.quick)

    return _common.run_and_report(args, "sink summary (ratio > 1: mqsync ahead)", measure)


if __name__ == "__main__":
    sys.exit(main())

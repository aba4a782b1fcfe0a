"""Benchmark: draining a buffered subscription with mqsync's Drain vs a raw kombu consumer.

Each run buffers the same points the same way twice (a Subscriber subscribes and
disconnects; an mqsync Source sends ``--points`` points of one metric in chunks of
``--chunk-size`` with ``send_many``; the broker holds every message before the clock
starts), then collects one queue each way:

- **mqsync**: ``for metric, timestamp, value in subscriber.collect_data()`` — connect,
  ``sink.unsubscribe``, consume to the end marker, ``sink.release``; one tuple with a
  ``Timestamp`` per point.
- **raw kombu**: ``sink.unsubscribe`` (over an mqsync Client connected beforehand), a
  fresh kombu connection with the same prefetch count, a ``kombu.Consumer`` whose callback
  decodes each chunk with ``mqsync.chunk.decode_chunk`` (lists of int ns and floats, no
  per-point objects) and acks it, up to the end marker, then ``sink.release``.

The two alternate within each run (which goes first alternates too); the figures are the
medians over ``--runs`` runs.  Needs RabbitMQ (``--url``, default ``$MQSYNC_URL`` or
guest@127.0.0.1); with ``rabbitmqctl`` the benchmark works in a vhost of its own with its
own ``mqsync-manager``, else it expects a manager on the URL's vhost.

Usage: ``python bench/bench_drain.py [--points 500000] [--runs 5] [--chunk-size 1000]``
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

try:
    import mqsync
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import mqsync

import _common  # noqa: E402 - bench/_common.py, next to this script
import kombu

from mqsync.chunk import decode_chunk
from mqsync.names import derive_address

T0 = 1_700_000_000_000_000_000
STEP_NS = 1000
PREFETCH = 400  # mqsync.Sink's default prefetch_count


def _queue_depth(url: str, queue: str) -> int:
    with kombu.Connection(url, connect_timeout=10) as connection:
        channel = connection.channel()
        try:
            return channel.queue_declare(queue=queue, passive=True).message_count
        finally:
            channel.close()


def buffer_points(url: str, metric: str, points: int, chunk_size: int) -> mqsync.Subscriber:
    """Subscribe, disconnect, send ``points`` points and wait until the broker holds them."""
    # one token for every run: the raw drain's client ("sink-bench-drain.<uuid>") may then
    # unsubscribe and release the queue, as a Drain of this Subscriber may
    subscriber = mqsync.Subscriber("sink-bench-drain", url, metrics=[metric], expires=300)
    subscriber.__enter__()
    with mqsync.Source(f"source-bench-{uuid.uuid4().hex[:6]}", url,
                       chunk_size=chunk_size) as source:
        for first in range(0, points, chunk_size):
            indices = range(first, min(points, first + chunk_size))
            source.send_many(metric, [T0 + i * STEP_NS for i in indices],
                             [float(i) for i in indices])
        source.flush()
    messages = -(-points // chunk_size)
    deadline = time.monotonic() + 60
    assert subscriber.queue is not None
    while _queue_depth(url, subscriber.queue) < messages:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{subscriber.queue} did not fill up with {messages} messages")
        time.sleep(0.05)
    return subscriber


def drain_mqsync(subscriber: mqsync.Subscriber) -> int:
    count = 0
    for _metric, _timestamp, _value in subscriber.collect_data(timeout=30):
        count += 1
    return count


def drain_kombu(subscriber: mqsync.Subscriber, rpc: mqsync.Client, url: str) -> int:
    queue = subscriber.queue
    reply = rpc.rpc("sink.unsubscribe", dataQueue=queue, metrics=subscriber.metrics, end=True)
    state: dict[str, Any] = {"count": 0, "end": False}

    def on_message(message: Any) -> None:
        if message.properties.get("type") == "end":
            state["end"] = True
        else:
            times_ns, _values = decode_chunk(message.body)
            state["count"] += len(times_ns)
        message.ack()

    with kombu.Connection(derive_address(url, reply["dataServerAddress"])) as connection:
        channel = connection.channel()
        channel.basic_qos(prefetch_size=0, prefetch_count=PREFETCH, a_global=False)
        consumer = kombu.Consumer(channel, queues=[kombu.Queue(queue, no_declare=True)],
                                  on_message=on_message, no_ack=False, auto_declare=False)
        with consumer:
            while not state["end"]:
                connection.drain_events(timeout=30)
    rpc.rpc("sink.release", dataQueue=queue)
    return state["count"]


def bench(url: str, points: int, runs: int, chunk_size: int) -> None:
    rates: dict[str, list[float]] = {"mqsync": [], "kombu": []}
    # the subscriber's token with a uuid: the manager lets it unsubscribe and release
    with mqsync.Client("sink-bench-drain", url, add_uuid=True) as rpc:
        for run in range(runs):
            order = ["mqsync", "kombu"] if run % 2 == 0 else ["kombu", "mqsync"]
            for way in order:
                metric = f"bench.drain.{uuid.uuid4().hex[:8]}"
                subscriber = buffer_points(url, metric, points, chunk_size)
                try:
                    started = time.perf_counter()
                    if way == "mqsync":
                        count = drain_mqsync(subscriber)
                    else:
                        count = drain_kombu(subscriber, rpc, url)
                    seconds = time.perf_counter() - started
                finally:
                    subscriber.__exit__(None, None, None)
                if count != points:
                    raise RuntimeError(f"{way} drained {count} points, expected {points}")
                rates[way].append(points / seconds)
                print(f"  run {run + 1} {way:<6} {points / seconds / 1e3:8.1f} k points/s "
                      f"({seconds:.2f} s)", flush=True)
    mqsync_rate = statistics.median(rates["mqsync"])
    kombu_rate = statistics.median(rates["kombu"])
    print()
    print(f"{'way':<30} {'median k points/s':>18}")
    print(f"{'mqsync Subscriber/Drain':<30} {mqsync_rate / 1e3:>18.1f}")
    print(f"{'raw kombu + decode_chunk':<30} {kombu_rate / 1e3:>18.1f}")
    print(f"ratio mqsync / raw kombu: {mqsync_rate / kombu_rate:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("MQSYNC_URL")
                        or "amqp://guest:guest@127.0.0.1:5672/", help="RabbitMQ URL")
    parser.add_argument("--points", type=int, default=500_000,
                        help="points buffered per drain (default 500000)")
    parser.add_argument("--runs", type=int, default=5, help="runs, median taken (default 5)")
    parser.add_argument("--chunk-size", type=int, default=1000,
                        help="points per message (default 1000)")
    args = parser.parse_args(argv)
    if args.points < 1 or args.runs < 1 or args.chunk_size < 1:
        parser.error("--points, --runs and --chunk-size must be >= 1")
    started = time.perf_counter()
    print(f"python {platform.python_version()}, kombu {kombu.__version__}, mqsync "
          f"{mqsync.__version__}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; "
          f"{args.points} points in chunks of {args.chunk_size}, prefetch {PREFETCH}, "
          f"median of {args.runs} runs")
    with _common.network(args.url) as url:
        bench(url, args.points, args.runs, args.chunk_size)
    print(f"\n(took {time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

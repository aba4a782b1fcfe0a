"""Benchmark: end-to-end latency Source -> broker -> Sink at a steady rate.

    python bench/bench_latency.py [--quick] [--runs 5] [--rate 1000] [--seconds 5] [--url URL]

An mqsync Source with the default chunking (``chunk_size=1``: every point is published at
once) sends ``--rate`` points per second to one metric, paced by a deadline loop; each
point's time is its send time (``Timestamp(time.time_ns())``).  An mqsync Sink in the
**same process** subscribed to the metric computes ``time.time_ns() - timestamp`` in
``on_data``.  Both share one clock, and also the GIL: the sender, both IO threads and the
sink's worker compete for it, as they would in one application.

The baseline, measured in the same run the same way: raw kombu, a publisher (no
confirms) encoding each point with ``encode_chunk``, and a consumer thread with its own
connection decoding it with ``decode_chunk``: what the broker round trip costs without
mqsync.  The first 10 % of each run is warm-up and not counted.  Figures are the median
over the runs of each run's p50 and p99 (and the worst point seen).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import kombu  # noqa: E402
from _common import Result, median, percentile  # noqa: E402

import mqsync  # noqa: E402
from mqsync.chunk import decode_chunk, encode_chunk  # noqa: E402


def paced(rate: float, count: int, send: Any) -> None:
    """Call ``send(time_ns)`` ``count`` times at ``rate`` per second (deadline loop)."""
    period = 1.0 / rate
    deadline = time.monotonic()
    for _ in range(count):
        pause = deadline - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        send(time.time_ns())
        deadline += period


class LatencySink(mqsync.Sink):
    latencies_ns: list[int]

    def on_data(self, metric: str, timestamp: mqsync.Timestamp, value: float) -> None:
        self.latencies_ns.append(time.time_ns() - timestamp.posix_ns)


def _wait_count(items: list, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while len(items) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"received {len(items)} of {count} points within {timeout:g} s")
        time.sleep(0.01)


def run_mqsync(url: str, rate: float, count: int) -> list[int]:
    metric = f"bench.latency.{uuid.uuid4().hex[:8]}"
    with LatencySink(f"sink-bench-latency-{uuid.uuid4().hex[:6]}", url) as sink:
        sink.latencies_ns = []
        sink.subscribe([metric], metadata=False)
        with mqsync.Source(f"source-bench-latency-{uuid.uuid4().hex[:6]}", url) as source:
            send = source.send
            paced(rate, count, lambda now: send(metric, mqsync.Timestamp(now), 1.0))
            source.flush()
        _wait_count(sink.latencies_ns, count)
        return list(sink.latencies_ns)


class _RawConsumer:
    """A kombu consumer on a thread (and a connection) of its own."""

    def __init__(self, url: str, queue: str):
        self.latencies_ns: list[int] = []
        self._connection = kombu.Connection(url, connect_timeout=10)
        self._connection.connect()
        channel = self._connection.channel()
        channel.basic_qos(prefetch_size=0, prefetch_count=400, a_global=False)
        self._consumer = kombu.Consumer(channel, queues=[kombu.Queue(queue, no_declare=True)],
                                        on_message=self._on_message, no_ack=False,
                                        auto_declare=False)
        self._consumer.consume()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="bench-raw-consumer",
                                        daemon=True)
        self._thread.start()

    def _on_message(self, message: Any) -> None:
        times_ns, _values = decode_chunk(message.body)
        received = time.time_ns()
        self.latencies_ns.extend(received - t for t in times_ns)
        message.ack()

    def _main(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                self._connection.drain_events(timeout=0.2)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        with contextlib.suppress(Exception):
            self._connection.release()


def run_raw(url: str, rate: float, count: int) -> list[int]:
    metric = f"bench.latency.{uuid.uuid4().hex[:8]}"
    queue = f"bench-latency-{uuid.uuid4().hex[:8]}"
    with _common.Broker(url) as broker:
        broker.declare_queue(queue, [metric])
        consumer = _RawConsumer(url, queue)
        try:
            with _common.Broker(url) as publisher:
                channel = publisher.channel

                def send(now: int) -> None:
                    message = channel.prepare_message(encode_chunk([now], [1.0]), None, None,
                                                      None, None, {"delivery_mode": 1})
                    channel.basic_publish(message, exchange="metricq.data", routing_key=metric)

                paced(rate, count, send)
            _wait_count(consumer.latencies_ns, count)
            return list(consumer.latencies_ns)
        finally:
            consumer.close()
            broker.delete(queue)


def run(url: str, runs: int, quick: bool, rate: float = 1000.0,
        seconds: float | None = None) -> list[Result]:
    seconds = seconds if seconds is not None else (1.5 if quick else 5.0)
    count = max(10, round(rate * seconds))
    warmup = count // 10
    print(f"\nlatency Source -> Sink at {rate:g} points/s, chunk_size 1, {seconds:g} s per run "
          f"(first 10 % not counted), median of {runs} runs; sender and receiver in one "
          f"process")
    figures: dict[str, dict[str, list[float]]] = {
        way: {"p50": [], "p90": [], "p99": [], "max": []} for way in ("mqsync", "raw")}
    for index in range(runs):
        order = ["mqsync", "raw"] if index % 2 == 0 else ["raw", "mqsync"]
        for way in order:
            latencies = (run_mqsync if way == "mqsync" else run_raw)(url, rate, count)
            counted = [ns / 1e6 for ns in latencies[warmup:]]
            for name, fraction in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)):
                figures[way][name].append(percentile(counted, fraction))
    print(f"{'way':<44} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for way, label in (("mqsync", "mqsync Source -> Sink (confirms, worker)"),
                       ("raw", "raw kombu publish -> consume (no confirms)")):
        row = figures[way]
        print(f"{label:<44} {median(row['p50']):>8.2f} {median(row['p90']):>8.2f} "
              f"{median(row['p99']):>8.2f} {max(row['max']):>8.2f}")
    mq, raw = figures["mqsync"], figures["raw"]
    return [
        Result(f"latency p50 at {rate:g}/s, chunk 1", median(mq["p50"]), "ms", "raw kombu p50",
               median(raw["p50"]), higher_is_better=False, target_value=5.0,
               note="same process; target p50 < 5 ms"),
        Result(f"latency p99 at {rate:g}/s, chunk 1", median(mq["p99"]), "ms", "raw kombu p99",
               median(raw["p99"]), higher_is_better=False),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _common.add_common_arguments(parser)
    parser.add_argument("--rate", type=float, default=1000.0, help="points per second")
    parser.add_argument("--seconds", type=float, help="seconds per run (default 5, quick 1.5)")
    args = parser.parse_args(argv)
    _common.check_runs(parser, args.runs)
    if args.rate <= 0 or (args.seconds is not None and args.seconds <= 0):
        parser.error("--rate and --seconds must be positive")
    return _common.run_and_report(
        args, "latency summary (ratio > 1: mqsync ahead)",
        lambda url: run(url, args.runs, args.quick, args.rate, args.seconds))

if __name__ == "__main__":
    sys.exit(main())

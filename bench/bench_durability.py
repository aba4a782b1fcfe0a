"""Benchmark: what surviving a broker restart costs.

    python bench/bench_durability.py [--quick] [--runs 5] [--url URL]

mqsync's delivery model publishes chunks persistent (delivery mode 2) into durable sink
queues, so that a broker restart loses nothing (``tests/test_restart.py`` proves it).  The
official client's model is transient chunks in auto-delete queues.  Both run here in the
same process, alternating, on the same broker:

- **durable**: ``Source(persistent=True)`` -> ``Sink(durable=True)`` (mqsync's default);
- **transient**: ``Source(persistent=False)`` -> ``Sink(durable=False)``.

Figures, per chunk size (100 and 1000 points):

- *send*: points/s of the send loop plus ``flush()``, which returns once the broker
  confirmed every chunk (for persistent messages in a durable queue, once they are on disk);
- *end to end*: points/s from the first ``send()`` until the sink's ``on_chunk`` has seen
  the last point.

The ratio is durable / transient: 1.0 means durability is free, 0.8 that it costs 20 %.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
from _common import STEP_NS, T0, Result, median  # noqa: E402

import mqsync  # noqa: E402

TIMEOUT = 120.0
MODELS = {"durable": True, "transient": False}


class _Counter(mqsync.Sink):
    """Counts points per chunk; ``done`` is set at the expected total."""

    def __init__(self, *args, expected: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.expected = expected
        self.received = 0
        self.done = threading.Event()

    def on_chunk(self, metric: str, times_ns: Sequence[int], values: Sequence[float]) -> None:
        self.received += len(times_ns)
        if self.received >= self.expected:
            self.done.set()


def one_run(url: str, durable: bool, points: int, chunk_size: int) -> tuple[float, float]:
    """Send ``points`` through one Source and one Sink; return (send, end-to-end) points/s."""
    tag = uuid.uuid4().hex[:8]
    metric = f"bench.durability.{tag}"
    times = [T0 + i * STEP_NS for i in range(points)]
    values = [i * 0.5 for i in range(points)]
    with _Counter(f"sink-bench-{tag}", url, durable=durable, expected=points) as sink, \
            mqsync.Source(f"source-bench-{tag}", url, chunk_size=chunk_size,
                          persistent=durable) as source:
        sink.subscribe([metric], metadata=False)
        send = source.send
        started = time.perf_counter()
        for t, v in zip(times, values):
            send(metric, t, v)
        source.flush(TIMEOUT)
        sent = time.perf_counter()
        if not sink.done.wait(TIMEOUT):
            raise RuntimeError(f"the sink got {sink.received} of {points} points")
        received = time.perf_counter()
    return points / (sent - started), points / (received - started)


def run(url: str, runs: int, quick: bool) -> list[Result]:
    results: list[Result] = []
    for chunk_size in (100, 1000):
        points = 50_000 if quick else 200_000
        rates: dict[str, dict[str, list[float]]] = {
            model: {"send": [], "end to end": []} for model in MODELS}
        for _ in range(runs):
            for model, durable in MODELS.items():  # alternating, same conditions
                send, end_to_end = one_run(url, durable, points, chunk_size)
                rates[model]["send"].append(send)
                rates[model]["end to end"].append(end_to_end)
        for figure in ("send", "end to end"):
            results.append(Result(
                f"{figure}, chunk {chunk_size}: durable", median(rates["durable"][figure]),
                "points/s", "transient", median(rates["transient"][figure]),
                note=f"{points} points, persistent chunks in a durable queue vs transient "
                     "chunks in an auto-delete one"))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _common.add_common_arguments(parser)
    args = parser.parse_args(argv)
    _common.check_runs(parser, args.runs)
    return _common.run_and_report(
        args, "durability: ratio = durable / transient (1.0: free)",
        lambda url: run(url, args.runs, args.quick))


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark the DataChunk codec: points per second, and vs a bare loop.

    python bench/bench_codec.py [--points N] [--repeat R] [--chunk-sizes 1,100,1000]

For every chunk size it measures, over ``--points`` points cut into chunks of that size:

- encode:  ``encode_chunk(times, values)`` per chunk (absolute times in, payload out)
- decode:  ``decode_chunk(payload)`` per chunk (absolute times and values out)
- buffer:  two list appends per point and ``encode_chunk`` when a chunk is full (what a
  ``SourceMetric`` does per point, without its checks and its lock; ``bench_source.py
  --only floor`` measures the whole ``send()``)

and prints the median of ``--repeat`` runs in points/s, and as a ratio to a baseline measured in
the same run: a bare Python loop that only appends the same (delta, value) pairs to two lists.
The baseline makes figures comparable between machines; the ratio is what to watch.
"""

from __future__ import annotations

import argparse
import gc
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from google.protobuf import __version__ as protobuf_version  # noqa: E402
from google.protobuf.internal import api_implementation  # noqa: E402

from mqsync.chunk import decode_chunk, encode_chunk  # noqa: E402

T0 = 1_700_000_000_000_000_000


def make_points(count: int, seed: int = 1) -> tuple[list[int], list[float]]:
    """Realistic points: ~1 ms apart with jitter, values of a noisy signal."""
    rng = random.Random(seed)
    times = []
    now = T0
    for _ in range(count):
        now += 1_000_000 + rng.randrange(-5_000, 5_000)
        times.append(now)
    values = [rng.gauss(50.0, 10.0) for _ in range(count)]
    return times, values


def median_seconds(run: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def bench(points: int, repeat: int, chunk_sizes: list[int]) -> None:
    times, values = make_points(points)
    deltas = [times[0]] + [b - a for a, b in zip(times, times[1:])]

    def baseline() -> None:
        out_deltas: list[int] = []
        out_values: list[float] = []
        append_delta = out_deltas.append
        append_value = out_values.append
        for delta, value in zip(deltas, values):
            append_delta(delta)
            append_value(value)

    base_rate = points / median_seconds(baseline, repeat)
    print(
        f"python {platform.python_version()}, protobuf {protobuf_version}"
        f" ({api_implementation.Type()}), {points} points, median of {repeat} runs"
    )
    print(f"baseline (append delta and value to two lists): {base_rate / 1e6:8.2f} M points/s")
    print()
    print(f"{'chunk':>6} {'op':>7} {'M points/s':>11} {'vs baseline':>12} {'us/chunk':>10}")

    for size in chunk_sizes:
        chunks = [
            (times[start : start + size], values[start : start + size])
            for start in range(0, points, size)
        ]
        payloads = [encode_chunk(t, v) for t, v in chunks]
        # Sanity: what is measured must be right.
        assert decode_chunk(payloads[-1]) == chunks[-1]

        def encode(chunks=chunks) -> None:
            for chunk_times, chunk_values in chunks:
                encode_chunk(chunk_times, chunk_values)

        def decode(payloads=payloads) -> None:
            for payload in payloads:
                decode_chunk(payload)

        def buffer(size=size) -> None:
            buffered_times: list[int] = []
            buffered_values: list[float] = []
            for time_ns, value in zip(times, values):
                buffered_times.append(time_ns)
                buffered_values.append(value)
                if len(buffered_times) >= size:
                    encode_chunk(buffered_times, buffered_values)
                    buffered_times, buffered_values = [], []
            if buffered_times:
                encode_chunk(buffered_times, buffered_values)

        for name, run in (("encode", encode), ("decode", decode), ("buffer", buffer)):
            seconds = median_seconds(run, repeat)
            rate = points / seconds
            per_chunk = seconds / len(chunks) * 1e6
            print(
                f"{size:>6} {name:>7} {rate / 1e6:>11.2f} {rate / base_rate:>11.2f}x"
                f" {per_chunk:>10.1f}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--points", type=int, default=200_000, help="points per run (default 200000)"
    )
    parser.add_argument("--repeat", type=int, default=7, help="runs per figure (default 7)")
    parser.add_argument(
        "--chunk-sizes",
        default="1,100,1000",
        help="comma-separated chunk sizes (default 1,100,1000)",
    )
    args = parser.parse_args(argv)
    chunk_sizes = [int(size) for size in args.chunk_sizes.split(",")]
    if args.points < 1 or args.repeat < 1 or min(chunk_sizes) < 1:
        parser.error("--points, --repeat and every chunk size must be >= 1")
    started = time.perf_counter()
    bench(args.points, args.repeat, chunk_sizes)
    print(f"\n(took {time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

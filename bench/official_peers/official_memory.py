"""Benchmark peer: the RSS of an official metricq Source holding buffered points.

Usage: official_memory.py --metrics 1000 --points 999 --chunk-size 1000

Creates a ``metricq.Source`` (not connected: buffering needs no connection), measures the
RSS, appends ``--points`` points to each of ``--metrics`` metrics with
``SourceMetric.append`` (what ``send()`` does before a chunk is full; point ``i`` of
metric ``j``: ``Timestamp(T0 + i ms)``, value ``i*0.5 + j``), measures the RSS again and
prints ``{"event": "result", "rss_before", "rss_after", "points"}`` (bytes).
"""

from __future__ import annotations

import argparse
import gc
import json
import os

from _bench_peer import point_value
from metricq import Source, Timestamp

T0 = 1_700_000_000_000_000_000
STEP_NS = 1_000_000


class BenchSource(Source):
    async def task(self) -> None:
        pass


def rss() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    parser = argparse.ArgumentParser(description="official Source buffer memory peer")
    parser.add_argument("--metrics", type=int, default=1000)
    parser.add_argument("--points", type=int, default=999)
    parser.add_argument("--chunk-size", type=int, default=1000)
    args = parser.parse_args()
    source = BenchSource("source-bench-memory", "amqp://localhost/", client_version="bench")
    source.chunk_size = args.chunk_size
    gc.collect()
    before = rss()
    for j in range(args.metrics):
        metric = source[f"bench.memory.m{j}"]
        for i in range(args.points):
            metric.append(Timestamp(T0 + i * STEP_NS), point_value(i, j))
    gc.collect()
    after = rss()
    print(json.dumps({"event": "result", "rss_before": before, "rss_after": after,
                      "points": args.metrics * args.points}), flush=True)


if __name__ == "__main__":
    main()

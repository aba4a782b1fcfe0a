"""Benchmark: the memory a Source's buffers take.

    python bench/bench_memory.py [--runs 5] [--url URL] [--metrics 1000] [--points 999]

A Source with ``chunk_size=1000`` (and ``flush_interval=None``, so nothing leaves on a
timer) holds ``--metrics`` metrics with ``--points`` points each (999: one short of a
full chunk, so everything stays buffered).  Each measurement runs in a fresh process:

- **mqsync**: start the Source (connected, registered), RSS "before"; ``send()`` every
  point (int ns times, float values); ``gc.collect()``; RSS "after".
- **plain lists**: the least Python can do: a dict of two lists (int ns, float) per
  metric, filled with the same points.
- **official**: a ``metricq.Source`` 5.4.0 (interop venv, not connected) buffering the
  same points with ``SourceMetric.append`` (what its ``send()`` does until a chunk is full).

The figure is RSS after minus RSS before, in MB and bytes per point; the point objects
themselves (a 61-bit int of 36 bytes and a float of 24 bytes, plus two list slots) are in
every contender's figure.  Median of ``--runs`` processes per contender, alternating.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
from _common import STEP_NS, T0, Result, median, rss_bytes  # noqa: E402

import mqsync  # noqa: E402

CHUNK_SIZE = 1000


def point_value(index: int, metric_index: int) -> float:
    return index * 0.5 + metric_index


def child_mqsync(url: str, metrics: int, points: int) -> dict[str, Any]:
    with mqsync.Source(f"source-bench-memory-{uuid.uuid4().hex[:6]}", url,
                       chunk_size=CHUNK_SIZE, flush_interval=None) as source:
        gc.collect()
        before = rss_bytes()
        send = source.send
        for j in range(metrics):
            metric = f"bench.memory.m{j}"
            for i in range(points):
                send(metric, T0 + i * STEP_NS, point_value(i, j))
        gc.collect()
        after = rss_bytes()
        if source.sent_points:
            raise RuntimeError(f"{source.sent_points} points left the buffers")
        source.flush(timeout=60)  # leave nothing behind in the benchmark's vhost
    return {"rss_before": before, "rss_after": after, "points": metrics * points}


def child_lists(metrics: int, points: int) -> dict[str, Any]:
    gc.collect()
    before = rss_bytes()
    buffers: dict[str, tuple[list[int], list[float]]] = {}
    for j in range(metrics):
        times: list[int] = []
        values: list[float] = []
        buffers[f"bench.memory.m{j}"] = (times, values)
        for i in range(points):
            times.append(T0 + i * STEP_NS)
            values.append(point_value(i, j))
    gc.collect()
    after = rss_bytes()
    return {"rss_before": before, "rss_after": after, "points": metrics * points}


def _measure(way: str, url: str, metrics: int, points: int) -> dict[str, Any]:
    if way == "official":
        from tests.interop.official import official_python, peer_env

        command = [str(official_python()), str(_common.PEERS_DIR / "official_memory.py"),
                   "--metrics", str(metrics), "--points", str(points), "--chunk-size",
                   str(CHUNK_SIZE)]
        env = peer_env()
    else:
        command = [sys.executable, str(Path(__file__).resolve()), "--child", way, "--url", url,
                   "--metrics", str(metrics), "--points", str(points)]
        env = None
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not records:
        raise RuntimeError(f"the {way} memory child failed ({result.returncode}): "
                           f"{result.stderr[-2000:]}")
    return records[-1]


def run(url: str, runs: int, quick: bool, metrics: int = 1000,
        points: int = CHUNK_SIZE - 1) -> list[Result]:
    unavailable = _common.official_unavailable()
    if unavailable:
        print(f"(the official client is unavailable, no comparison: {unavailable})")
    ways = ["mqsync", "lists"] + ([] if unavailable else ["official"])
    print(f"\nmemory: {metrics} metrics x {points} buffered points (chunk size {CHUNK_SIZE}), "
          f"RSS growth, median of {runs} processes each")
    growth: dict[str, list[float]] = {way: [] for way in ways}
    before: dict[str, list[float]] = {way: [] for way in ways}
    for index in range(runs):
        order = ways if index % 2 == 0 else ways[::-1]
        for way in order:
            record = _measure(way, url, metrics, points)
            growth[way].append(record["rss_after"] - record["rss_before"])
            before[way].append(record["rss_before"])
    total = metrics * points
    print(f"{'who':<40} {'RSS before':>11} {'growth':>10} {'bytes/point':>12}")
    labels = {"mqsync": "mqsync Source (connected)", "lists": "plain lists (dict of 2 lists)",
              "official": "official metricq Source (not connected)"}
    for way in ways:
        print(f"{labels[way]:<40} {median(before[way]) / 1e6:>8.1f} MB "
              f"{median(growth[way]) / 1e6:>7.1f} MB {median(growth[way]) / total:>12.1f}")
    mq = median(growth["mqsync"])
    results = [Result(f"Source buffers {metrics}x{points} points", mq / 1e6, "MB",
                      "plain lists", median(growth["lists"]) / 1e6, higher_is_better=False,
                      note=f"{mq / total:.0f} bytes/point; RSS before "
                           f"{median(before['mqsync']) / 1e6:.0f} MB")]
    if "official" in growth:
        results.append(Result(f"Source buffers {metrics}x{points} points", mq / 1e6, "MB",
                              "official Source", median(growth["official"]) / 1e6,
                              higher_is_better=False))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _common.add_common_arguments(parser)
    parser.add_argument("--metrics", type=int, default=1000, help="metrics (default 1000)")
    parser.add_argument("--points", type=int, default=CHUNK_SIZE - 1,
                        help=f"points per metric (default {CHUNK_SIZE - 1})")
    parser.add_argument("--child", choices=("mqsync", "lists"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 1 <= args.points < CHUNK_SIZE or args.metrics < 1:
        parser.error(f"--metrics must be >= 1 and --points between 1 and {CHUNK_SIZE - 1}")
    if args.child == "mqsync":
        print(json.dumps(child_mqsync(args.url, args.metrics, args.points)))
        return 0
    if args.child == "lists":
        print(json.dumps(child_lists(args.metrics, args.points)))
        return 0
    _common.check_runs(parser, args.runs)
    return _common.run_and_report(
        args, "memory summary (ratio > 1: mqsync smaller)",
        lambda url: run(url, args.runs, args.quick, args.metrics, args.points))

if __name__ == "__main__":
    sys.exit(main())

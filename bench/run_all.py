"""Run every broker benchmark of issue 8 and print one summary table.

    python bench/run_all.py [--quick] [--runs 5] [--only source,sink,latency,memory]
                            [--url URL] [--json results.json]

(``tox -e bench`` runs ``python bench/run_all.py``.)  Needs RabbitMQ (``--url``, default
``$MQSYNC_URL`` or guest@127.0.0.1:5672) and, for the comparison with the official client,
the interop venv of ``tests/interop/official.py`` (built on first use from PyPI; without
it those comparisons are left out and the rest runs).  With ``rabbitmqctl`` on PATH the
benchmarks run in a vhost of their own with their own ``mqsync-manager``, both removed
at the end, also after an error or Ctrl-C.

Every figure is the median of ``--runs`` runs (default 5), and every baseline is
measured in the same runs, alternating with mqsync, so the ratios hold up on a busy
machine better than the absolute figures do.  The full run takes about 5-15 minutes,
``--quick`` (smaller sizes, same number of runs) 1-2 minutes.  Nothing is asserted: the
table shows each target and whether it was met.

The benchmarks, also runnable alone (see their docstrings):

- ``bench_source.py``: per-point ``send()`` vs the official Source and a bare loop; bulk
  ``send_many`` vs raw ``encode_chunk`` + kombu ``basic_publish`` (``--profile``)
- ``bench_sink.py``: per-point ``on_data`` vs the official Sink; bulk ``on_chunk`` vs a
  raw kombu consumer with ``decode_chunk`` (``--profile``)
- ``bench_latency.py``: Source -> Sink latency at 1000 points/s, chunk size 1
- ``bench_memory.py``: RSS of a Source buffering 1000 x 999 points
- ``bench_durability.py``: persistent chunks in durable queues against transient ones in
  auto-delete queues (what surviving a broker restart costs)
- ``bench_host.py``: 50 plugin instances in one ``SourceHost`` process against 50
  ``mqsync-source`` processes (threads, RSS, connections, lateness, drift), and an instance
  whose update blocks among 20 others (one run each, about 4 minutes)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import bench_cluster  # noqa: E402
import bench_durability  # noqa: E402
import bench_host  # noqa: E402
import bench_latency  # noqa: E402
import bench_memory  # noqa: E402
import bench_sink  # noqa: E402
import bench_source  # noqa: E402

BENCHMARKS = {
    "source": bench_source.run,
    "sink": bench_sink.run,
    "latency": bench_latency.run,
    "memory": bench_memory.run,
    "durability": bench_durability.run,
    "host": bench_host.run,
    "cluster": bench_cluster.run,  # its own 3-node cluster (local rabbitmq-server): --only
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _common.add_common_arguments(parser)
    parser.add_argument("--only", default=",".join(n for n in BENCHMARKS if n != "cluster"),
                        help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    args = parser.parse_args(argv)
    _common.check_runs(parser, args.runs)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in BENCHMARKS]
    if unknown or not chosen:
        parser.error(f"--only: unknown benchmark(s) {unknown}; choose from "
                     f"{', '.join(BENCHMARKS)}")
    _common.raise_on_sigterm()
    machine_before = _common.machine_line()
    print(f"mqsync benchmarks ({'quick' if args.quick else 'full'}): {', '.join(chosen)}; "
          f"median of {args.runs} runs")
    print(machine_before)
    started = time.perf_counter()
    results: list[_common.Result] = []
    failures: list[str] = []
    with _common.network(args.url) as url:
        for name in chosen:
            section_started = time.perf_counter()
            print(f"\n######## {name}", flush=True)
            try:
                results += BENCHMARKS[name](url, args.runs, args.quick)
            except KeyboardInterrupt:
                raise
            except Exception as error:  # noqa: BLE001 - the other benchmarks still run
                failures.append(f"{name}: {type(error).__name__}: {error}")
                print(f"!! {name} failed: {type(error).__name__}: {error}", flush=True)
            print(f"(section {name}: {time.perf_counter() - section_started:.0f} s)",
                  flush=True)
    _common.print_results("summary (ratio > 1: mqsync ahead; targets are reported, not "
                          "asserted)", results)
    elapsed = time.perf_counter() - started
    print(f"\nmachine at the start: {machine_before}")
    print(f"machine at the end:   {_common.machine_line()}")
    print(f"took {elapsed:.0f} s")
    _common.write_json(args.json, results, quick=args.quick, runs=args.runs,
                       seconds=elapsed, failures=failures)
    for failure in failures:
        print(f"FAILED {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

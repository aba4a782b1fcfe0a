"""Benchmark mqsync-db: ingest points/s, and history request latency over a 1-day range.

    python bench/bench_history.py [--url URL] [--runs 5] [--quick] [--json FILE]
                                  [--data-dir DIR] [--regenerate]

Three parts, each printed as a table (``_common.print_results``):

1. **Store ingest**: ``SqliteStore.insert_many`` alone (no broker): 10 metrics at 1 kHz,
   batches of 5 000 points per metric (what the Db's writer commits per transaction under
   load), raw points and all six rollup levels.  Median of ``--runs`` runs, a fresh file each.
2. **End-to-end ingest**: an mqsync Source (this process) sends 10 metrics x 100 000 points at
   1 kHz spacing in chunks of 1 000 to ``mqsync-db`` (a subprocess, as deployed) through
   RabbitMQ; the figure is points / (time from the first send until the Db has committed the
   last point), polled through a HistoryClient aggregate count.  Target: 100 000 points/s.
3. **Request latency**: a HistoryClient (this process) asks ``mqsync-db`` (subprocess) about a
   1-day range of a 1 Hz metric (86 400 points) and a 1 kHz metric (86.4 M points): round
   trip in the client (median and p95 of ``--runs`` x 4 requests, at least 5), and the Db's
   own ``x-request-duration``.  Ingesting 86.4 M points through the broker on every run would
   take many minutes, so the data set is written straight into SQLite with the store's batch
   insert (raw points and rollups, exactly what the Db's writer does) and cached in
   ``--data-dir`` (default ``$TMPDIR/mqsync-bench-history``, about 2.5 GB for the full day;
   generating it takes about 3 minutes once).  ``--quick`` uses 2 hours of 1 kHz data instead
   of 24 (``1kHz`` figures then cover that range) and fewer points elsewhere.

A raw timeline of 86.4 M points is more than one response may carry (``max_points``, default
2 M, about 30 MB on the wire), so the 1 kHz raw figure covers 10 minutes (600 000 points), and
the refusal of the full day is timed as well.  Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import kombu  # noqa: E402

import mqsync  # noqa: E402
from mqsync.db import SqliteStore  # noqa: E402
from mqsync.history import HistoryClient, HistoryRequestType  # noqa: E402

S = 1_000_000_000
MS = 1_000_000
DAY = 86_400 * S
T0 = 1_700_006_400 * S  # a UTC midnight (2023-11-15), so day buckets align
HZ_METRIC = "bench.history.1hz"
KHZ_METRIC = "bench.history.1khz"
DATASET_FORMAT = 1


def value_at(index: int) -> float:
    """A cheap deterministic signal (k/4 values, so every sum is exact)."""
    return (index * 7919 % 1000) * 0.25


# -- 1. store ingest --------------------------------------------------------------------------


def store_ingest(runs: int, points: int, directory: Path) -> _common.Result:
    metrics = [f"bench.ingest.m{i}" for i in range(10)]
    per_batch = 5_000
    rates = []
    for run in range(runs):
        path = directory / f"ingest-{run}.db"
        with SqliteStore(path) as store:
            started = time.perf_counter()
            for first in range(0, points // len(metrics), per_batch):
                times = list(range(T0 + first * MS, T0 + (first + per_batch) * MS, MS))
                values = [value_at(first + i) for i in range(per_batch)]
                store.insert_many([(metric, times, values) for metric in metrics])
            rates.append(points / (time.perf_counter() - started))
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    return _common.Result("store ingest (insert_many, 10 metrics)", _common.median(rates),
                          "points/s", target_value=100_000,
                          note=f"{points} points per run, batches of 10 x {per_batch}")


# -- the database subprocess ------------------------------------------------------------------


@contextmanager
def database(url: str, path: Path, metrics: list[str]) -> Iterator[str]:
    """``mqsync-db`` as a subprocess keeping ``metrics`` in ``path``; yields its token."""
    token = f"db-bench-{uuid.uuid4().hex[:8]}"
    log = open(path.with_suffix(".log"), "w+b")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "mqsync.cli.db", "--url", url, "--token", token, "--database",
         str(path), "--metrics", *metrics, "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=log)
    try:
        with mqsync.Client(f"bench-probe-{token}", url) as probe:
            deadline = time.monotonic() + 60
            while not set(metrics) <= set(probe.get_metrics(selector=metrics, historic=True)):
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"mqsync-db did not start: {log.read().decode()[-2000:]}")
                time.sleep(0.1)
        yield token
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()
        # the Db's durable queues would outlive it (no sink's: sink.release refuses them)
        with kombu.Connection(url, connect_timeout=10) as connection:
            for queue in (f"{token}-data", f"{token}-hreq"):
                connection.default_channel.queue_delete(queue)


# -- 2. end-to-end ingest ---------------------------------------------------------------------


def broker_ingest(url: str, runs: int, points: int, directory: Path) -> _common.Result:
    rates = []
    chunk = 1_000
    for run in range(runs):
        metrics = [f"bench.e2e.r{run}.m{i}" for i in range(10)]
        per_metric = points // len(metrics)
        path = directory / f"e2e-{run}.db"
        with database(url, path, metrics), \
                HistoryClient("history-bench", url) as history, \
                mqsync.Source(f"source-bench-{uuid.uuid4().hex[:6]}", url,
                              chunk_size=chunk) as source:
            source.declare_metrics(metrics)
            times = list(range(T0, T0 + per_metric * MS, MS))
            values = [value_at(i) for i in range(per_metric)]
            started = time.perf_counter()
            for first in range(0, per_metric, chunk):
                for metric in metrics:
                    source.send_many(metric, times[first:first + chunk],
                                     values[first:first + chunk])
            source.flush()
            sent = time.perf_counter() - started
            remaining = list(metrics)
            while remaining:
                remaining = [m for m in remaining
                             if history.history_aggregate(m, timeout=30).count < per_metric]
                if remaining:
                    time.sleep(0.02)
            elapsed = time.perf_counter() - started
            rates.append(points / elapsed)
            print(f"  run {run + 1}: sent in {sent:.2f} s, stored after {elapsed:.2f} s")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    return _common.Result("end-to-end ingest (Source -> RabbitMQ -> mqsync-db)",
                          _common.median(rates), "points/s", target_value=100_000,
                          note=f"{points} points per run, 10 metrics, chunks of {chunk}")


# -- 3. request latency -----------------------------------------------------------------------


def dataset(directory: Path, khz_seconds: int, regenerate: bool) -> Path:
    """The latency data set: a day at 1 Hz and ``khz_seconds`` at 1 kHz, built once."""
    path = directory / f"latency-{khz_seconds}s.db"
    marker = path.with_suffix(".json")
    expected = {"format": DATASET_FORMAT, "t0": T0, "khz_seconds": khz_seconds}
    if (not regenerate and marker.exists() and path.exists()
            and json.loads(marker.read_text()) == expected):
        print(f"  reusing {path} ({path.stat().st_size / 1e9:.2f} GB)")
        return path
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    marker.unlink(missing_ok=True)
    started = time.perf_counter()
    with SqliteStore(path) as store:
        store.insert(HZ_METRIC, list(range(T0, T0 + DAY, S)),
                     [value_at(i) for i in range(86_400)])
        batch = 200_000
        total = khz_seconds * 1000
        for first in range(0, total, batch):
            count = min(batch, total - first)
            store.insert(KHZ_METRIC, list(range(T0 + first * MS, T0 + (first + count) * MS, MS)),
                         [value_at(first + i) for i in range(count)])
            if first and first % 10_000_000 == 0:
                rate = first / (time.perf_counter() - started)
                print(f"  generating: {first / 1e6:.0f} M of {total / 1e6:.1f} M points "
                      f"({rate / 1e3:.0f} k points/s)", flush=True)
    elapsed = time.perf_counter() - started
    print(f"  generated {path} in {elapsed:.0f} s ({(86_400 + total) / elapsed / 1e3:.0f} k "
          f"points/s, {path.stat().st_size / 1e9:.2f} GB)")
    marker.write_text(json.dumps(expected))
    return path


def latency(history: HistoryClient, label: str, repeat: int,
            request: Callable[[], Any], note: str = "") -> _common.Result:
    """Round trips of ``request`` (a ``history_data_request``), with the server's time."""
    trips, server = [], []
    entries = 0
    error = ""
    for _ in range(repeat):
        started = time.perf_counter()
        try:
            response = request()
        except mqsync.MqsyncError as failure:
            trips.append(time.perf_counter() - started)
            error = str(failure)
            continue
        trips.append(time.perf_counter() - started)
        entries = len(response)
        if response.request_duration is not None:
            server.append(response.request_duration)
    detail = f"p95 {_common.percentile(trips, 0.95) * 1e3:.1f} ms"
    if server:
        detail += f", in the Db {_common.median(server) * 1e3:.1f} ms"
    detail += f", {entries} entries" if not error else f", refused: {error[:80]}"
    return _common.Result(label, _common.median(trips) * 1e3, "ms", higher_is_better=False,
                          note=f"{detail}{'; ' + note if note else ''}")


def request_latencies(url: str, path: Path, runs: int, khz_seconds: int) -> list[_common.Result]:
    repeat = max(5, runs * 4)
    results = []
    with database(url, path, [HZ_METRIC, KHZ_METRIC]), \
            HistoryClient("history-bench", url) as history:
        for metric, span, tag in [(HZ_METRIC, DAY, "1 Hz"),
                                  (KHZ_METRIC, khz_seconds * S, "1 kHz")]:
            start, end = T0, T0 + span
            cut_start, cut_end = start + 500 * MS + 7, end - 300 * MS - 3
            scope = "1 day" if span == DAY else f"{khz_seconds / 3600:g} h"

            def ask(kind: HistoryRequestType, begin: int | None = None,
                    finish: int | None = None, interval: str | None = None,
                    metric: str = metric) -> Callable[[], Any]:
                return lambda: history.history_data_request(metric, begin, finish, interval,
                                                            kind, timeout=300)

            history.history_last_value(metric)  # warm the Db's caches once
            results += [
                latency(history, f"{tag}: last value", repeat,
                        ask(HistoryRequestType.LAST_VALUE)),
                latency(history, f"{tag}: aggregate, {scope}", repeat,
                        ask(HistoryRequestType.AGGREGATE, start, end)),
                latency(history, f"{tag}: aggregate, {scope}, unaligned ends", repeat,
                        ask(HistoryRequestType.AGGREGATE, cut_start, cut_end)),
                latency(history, f"{tag}: timeline {scope}, interval_max 1h", repeat,
                        ask(HistoryRequestType.AGGREGATE_TIMELINE, start, end, "1h"),
                        "1000 s buckets"),
                latency(history, f"{tag}: timeline {scope}, interval_max 1min", repeat,
                        ask(HistoryRequestType.AGGREGATE_TIMELINE, start, end, "1min"),
                        "10 s buckets"),
                latency(history, f"{tag}: flex {scope}, interval_max 86.4s", repeat,
                        ask(HistoryRequestType.FLEX_TIMELINE, start, end, "86.4s"),
                        "1000 pixels wide"),
            ]
            if metric == HZ_METRIC:
                results.append(latency(history, f"{tag}: raw timeline, 1 day", repeat,
                                       ask(HistoryRequestType.FLEX_TIMELINE, start, end, "0s")))
            else:
                results += [
                    latency(history, f"{tag}: raw timeline, 10 min", max(3, runs),
                            ask(HistoryRequestType.FLEX_TIMELINE, start, start + 600 * S,
                                "0s"), "600 000 points, about 9 MB"),
                    latency(history, f"{tag}: raw timeline, {scope} (refused)", max(3, runs),
                            ask(HistoryRequestType.FLEX_TIMELINE, start, end, "0s"),
                            "more than max_points"),
                    latency(history, f"{tag}: timeline 1 h, interval_max 500ms", max(3, runs),
                            ask(HistoryRequestType.AGGREGATE_TIMELINE, start,
                                start + 3600 * S, "500ms"),
                            "below the smallest rollup: GROUP BY over 3.6 M raw points"),
                ]
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _common.add_common_arguments(parser, runs=3)
    parser.add_argument("--data-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "mqsync-bench-history",
                        help="where the latency data set is cached (default: %(default)s)")
    parser.add_argument("--regenerate", action="store_true",
                        help="build the latency data set again even if cached")
    parser.add_argument("--only", default="store,broker,latency",
                        help="comma-separated parts to run (default: %(default)s)")
    args = parser.parse_args(argv)
    _common.check_runs(parser, args.runs)
    parts = set(args.only.split(","))
    _common.raise_on_sigterm()
    print(_common.machine_line())
    args.data_dir.mkdir(parents=True, exist_ok=True)
    khz_seconds = 2 * 3600 if args.quick else 86_400
    results: list[_common.Result] = []
    scratch = Path(tempfile.mkdtemp(prefix="mqsync-bench-history-"))
    try:
        if "store" in parts:
            print("store ingest ...", flush=True)
            results.append(store_ingest(args.runs, 500_000 if args.quick else 2_000_000,
                                        scratch))
        if parts & {"broker", "latency"}:
            latency_path = dataset(args.data_dir, khz_seconds, args.regenerate) \
                if "latency" in parts else None
            with _common.network(args.url) as url:
                if "broker" in parts:
                    print("end-to-end ingest ...", flush=True)
                    results.append(broker_ingest(url, args.runs,
                                                 200_000 if args.quick else 1_000_000, scratch))
                if latency_path is not None:
                    print("request latency ...", flush=True)
                    results += request_latencies(url, latency_path, args.runs, khz_seconds)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _common.print_results("mqsync-db: ingest and history requests", results)
    _common.write_json(args.json, results, khz_seconds=khz_seconds,
                       cpu_count=os.cpu_count())
    return 0


if __name__ == "__main__":
    sys.exit(main())

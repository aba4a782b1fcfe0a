"""Benchmark: publishing with mqsync's Source against the official client, a bare loop and
raw kombu.

    python bench/bench_source.py [--quick] [--runs 5] [--url URL] [--profile]
                                 [--only per_point,floor,chunk1,bulk]

**Per-point send()**, for 1 and 100 metrics and chunk sizes 1, 100 and 1000: the same
points (point ``i`` of metric ``j``: ``Timestamp(T0 + i ms)``, value ``i*0.5 + j``, sent
metric by metric interleaved, built before the clock starts) go through

- mqsync: ``for ...: source.send(metric, timestamp, value)`` then ``source.flush()``,
  which returns once the broker confirmed every chunk (publisher confirms);
- the official ``metricq.Source`` 5.4.0 (a subprocess in the interop venv, timing its own
  ``await source.send(...)`` loop and ``await source.flush()``).  The official client
  publishes without confirms: its flush returns once the chunks went to the socket, not
  when the broker has them.  So the benchmark also watches the queue and reports when it
  held every official message ("official until queued");
- a bare Python loop that only appends the same (delta, value) pairs to two lists.

Figures: points/s of "send loop + flush", and of mqsync's send loop alone.  A queue bound
to the benchmark's metrics receives everything (purged after each run), so "the broker
has it" means routed and enqueued.  mqsync, official and bare runs alternate.

**Bulk send**: ``Source.send_many(metric, times, values)`` with 1000-point chunks, then
``flush()``, against a raw loop doing only the unavoidable work on a plain kombu
connection: ``encode_chunk`` + ``channel.basic_publish`` per chunk, without confirms
(then one synchronous round trip, so the broker processed them) and with pipelined
confirms (``confirm_select``, publish all, wait for the last ack), as mqsync does.

**The per-point floor**: ``N`` points of one metric, chunk 1000, a new ``Timestamp`` per
point, the send loop alone timed (the chunks go to ``metricq.data`` unrouted: no sink and
no queue take them, so nothing else in the process competes), against a bare loop doing
the minimum a buffered sender must: under a lock, two list appends, and a cut every 1000
points.  Every loop computes its time ``T0 + i * step`` and value the same way.  Figures:
``source.send(metric, Timestamp(t), v)``, the per-metric handle
``metric.send(Timestamp(t), v)`` (``metric = source.metric(name)``), ``send`` with int
nanoseconds, and ``Timestamp(t)`` alone.

**Chunk size 1**: the CPU time of the whole process (every thread: the send loop and the
IO thread's publishing and confirm handling) per ``send()`` with ``chunk_size=1``, from
the first send to the confirmed flush.  The broker round trip is waiting, not CPU, so it
is excluded.  Baseline: raw kombu publishing one encoded point per message, without
confirms, on one connection.

``--profile`` skips the timing and runs the mqsync paths under cProfile (every thread).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
from _common import STEP_NS, T0, Result, median  # noqa: E402

import mqsync  # noqa: E402
from mqsync.chunk import encode_chunk  # noqa: E402

CHUNK_SIZES = (1, 100, 1000)
METRIC_COUNTS = (1, 100)


def sizes(quick: bool) -> dict[str, Any]:
    """Points per run: chunk 1 sends a message per point, so it gets fewer."""
    if quick:
        return {"per_point": {1: 3_000, 100: 40_000, 1000: 40_000}, "bulk": 200_000}
    return {"per_point": {1: 20_000, 100: 200_000, 1000: 200_000}, "bulk": 1_000_000}


def point_value(index: int, metric_index: int) -> float:
    """As ``bench/official_peers/_bench_peer.point_value``."""
    return index * 0.5 + metric_index


class Config:
    """One per-point case: how many metrics, which chunk size, how many points per metric."""

    def __init__(self, metrics: int, chunk_size: int, points: int):
        self.metric_count = metrics
        self.chunk_size = chunk_size
        # at least one full chunk per metric
        self.per_metric = max(points // metrics, chunk_size)
        self.points = self.per_metric * metrics
        self.metrics = [f"bench.source.n{metrics}.c{chunk_size}.m{j}" for j in range(metrics)]
        self.messages = metrics * -(-self.per_metric // chunk_size)

    @property
    def label(self) -> str:
        return f"{self.metric_count} metric{'s' if self.metric_count > 1 else ''}, " \
               f"chunk {self.chunk_size}"

    def points_with_timestamps(self) -> list[tuple[str, mqsync.Timestamp, float]]:
        return [(metric, mqsync.Timestamp(T0 + i * STEP_NS), point_value(i, j))
                for i in range(self.per_metric) for j, metric in enumerate(self.metrics)]

    def deltas(self) -> list[tuple[str, int, float]]:
        return [(metric, T0 if i == 0 else STEP_NS, point_value(i, j))
                for i in range(self.per_metric) for j, metric in enumerate(self.metrics)]


# -- the contenders ---------------------------------------------------------------------


def mqsync_send(source: mqsync.Source, points: list[tuple[str, Any, float]]) -> tuple[float,
                                                                                       float]:
    """Send every point and flush; return (send loop seconds, loop + flush seconds)."""
    send = source.send
    started = time.perf_counter()
    for metric, timestamp, value in points:
        send(metric, timestamp, value)
    looped = time.perf_counter()
    source.flush()
    return looped - started, time.perf_counter() - started


def bare_loop(triples: list[tuple[str, int, float]]) -> None:
    deltas: list[int] = []
    values: list[float] = []
    append_delta = deltas.append
    append_value = values.append
    for _metric, delta, value in triples:
        append_delta(delta)
        append_value(value)


def official_send(peer: _common.OfficialPeer, url: str, queue: str,
                  config: Config) -> tuple[float, float]:
    """Return (send loop + flush seconds, seconds until the queue held every message)."""
    watcher = _common.DepthWatcher(url, queue, config.messages)
    try:
        result = peer.run(300, metrics=config.metrics, per_metric=config.per_metric,
                          chunk_size=config.chunk_size, start_ns=T0, step_ns=STEP_NS)
        reached = watcher.wait()
    finally:
        watcher.close()
    return result["total_s"], max(result["total_s"], reached - result["start_monotonic"])


# -- per-point send ---------------------------------------------------------------------


def bench_per_point(url: str, runs: int, quick: bool, official: _common.OfficialPeer | None,
                    broker: _common.Broker, queue: str) -> list[Result]:
    results: list[Result] = []
    print(f"\nper-point send(): points/s, median of {runs} runs (send loop + flush; mqsync "
          f"waits for publisher confirms, the official flush does not)")
    header = (f"{'case':<22} {'points':>7} {'mqsync':>10} {'mq loop':>10} {'official':>10} "
              f"{'off queued':>10} {'bare loop':>10} {'vs off':>7} {'vs bare':>7} "
              f"{'loop/bare':>9}")
    print(header)
    for metric_count in METRIC_COUNTS:
        for chunk_size in CHUNK_SIZES:
            config = Config(metric_count, chunk_size, sizes(quick)["per_point"][chunk_size])
            results.extend(_per_point_case(url, runs, config, official, broker, queue))
    return results


def _per_point_case(url: str, runs: int, config: Config, official: _common.OfficialPeer | None,
                    broker: _common.Broker, queue: str) -> list[Result]:
    points = config.points_with_timestamps()
    triples = config.deltas()
    figures: dict[str, list[float]] = {"mqsync": [], "loop": [], "official": [], "queued": [],
                                       "bare": []}
    token = f"source-bench-{uuid.uuid4().hex[:6]}"
    with mqsync.Source(token, url, chunk_size=config.chunk_size) as source:
        mqsync_send(source, points[: min(len(points), 1000)])  # warm up: buffers, caches
        if official is not None:  # the same for the official client
            official.run(300, metrics=config.metrics,
                         per_metric=max(1, min(config.per_metric, 1000 // config.metric_count)),
                         chunk_size=config.chunk_size, start_ns=T0, step_ns=STEP_NS)
        time.sleep(0.2)  # the official warm-up is not confirmed: let the broker take it
        broker.purge(queue)
        for run in range(runs):
            order = ["mqsync", "official", "bare"]
            if run % 2:
                order.reverse()
            for way in order:
                if way == "mqsync":
                    gc.collect()  # as _common.timed() does for the others
                    loop_s, total_s = mqsync_send(source, points)
                    broker.wait_depth(queue, config.messages)
                    broker.purge(queue)
                    figures["mqsync"].append(config.points / total_s)
                    figures["loop"].append(config.points / loop_s)
                elif way == "official" and official is not None:
                    total_s, queued_s = official_send(official, url, queue, config)
                    broker.purge(queue)
                    figures["official"].append(config.points / total_s)
                    figures["queued"].append(config.points / queued_s)
                elif way == "bare":
                    figures["bare"].append(
                        _common.rate_of(lambda: bare_loop(triples), config.points))
    rate = {key: median(values) for key, values in figures.items()}
    vs_official = rate["mqsync"] / rate["official"] if figures["official"] else float("nan")
    print(f"{config.label:<22} {config.points:>7} {_k(rate['mqsync'])} {_k(rate['loop'])} "
          f"{_k(rate['official'])} {_k(rate['queued'])} {_k(rate['bare'])} "
          f"{vs_official:>6.2f}x {rate['mqsync'] / rate['bare']:>6.2f}x "
          f"{rate['loop'] / rate['bare']:>8.2f}x", flush=True)
    at_1000 = config.chunk_size == 1000
    results = [
        Result(f"send() {config.label}", rate["mqsync"], "points/s", "official Source",
               rate["official"] if figures["official"] else None,
               target_ratio=3.0 if at_1000 else None,
               note="send loop + flush; mqsync confirmed, official flush not confirmed"
               if config.chunk_size == 1 and config.metric_count == 1 else ""),
        # The per-point target is the floor section's (a bare loop with a lock and a cut,
        # send only); this bare loop only appends, and mqsync's figure includes the flush.
        Result(f"send() {config.label}", rate["mqsync"], "points/s", "bare loop", rate["bare"]),
    ]
    if at_1000:
        results.append(Result(f"send() loop only {config.label}", rate["loop"], "points/s",
                              "bare loop", rate["bare"]))
    return results


def _k(rate: float) -> str:
    if rate != rate:
        return f"{'n/a':>10}"
    return f"{rate / 1e3:>8.1f} k"


# -- the per-point floor ---------------------------------------------------------------

FLOOR_CHUNK = 1000


def floor_bare(points: int) -> None:
    """The minimum per point of a buffered sender: a lock, two appends, a cut per chunk."""
    lock = threading.Lock()
    times: list[int] = []
    values: list[float] = []
    for i in range(points):
        with lock:
            times.append(T0 + i * STEP_NS)
            values.append(i * 0.5)
            if len(times) >= FLOOR_CHUNK:
                times, values = [], []  # the cut: a real sender encodes and hands them over


def floor_timestamps(points: int) -> None:
    timestamp = mqsync.Timestamp
    for i in range(points):
        timestamp(T0 + i * STEP_NS)
        i * 0.5  # noqa: B018 - the same arithmetic as the other loops


def floor_send(source: mqsync.Source, metric: str, points: int) -> None:
    send = source.send
    timestamp = mqsync.Timestamp
    for i in range(points):
        send(metric, timestamp(T0 + i * STEP_NS), i * 0.5)


def floor_send_ns(source: mqsync.Source, metric: str, points: int) -> None:
    send = source.send
    for i in range(points):
        send(metric, T0 + i * STEP_NS, i * 0.5)


def floor_handle(source: mqsync.Source, metric: str, points: int) -> None:
    send = source.metric(metric).send
    timestamp = mqsync.Timestamp
    for i in range(points):
        send(timestamp(T0 + i * STEP_NS), i * 0.5)


def bench_floor(url: str, runs: int, quick: bool) -> list[Result]:
    points = 40_000 if quick else 200_000
    metric = f"bench.floor.{uuid.uuid4().hex[:6]}"  # bound to no queue: dropped unrouted
    print(f"\nper-point floor: {points} points of one metric, chunk {FLOOR_CHUNK}, a "
          f"Timestamp per point, the send loop alone timed; points/s, median of {runs} runs")
    with mqsync.Source(f"source-bench-floor-{uuid.uuid4().hex[:6]}", url,
                       chunk_size=FLOOR_CHUNK) as source:
        has_handle = hasattr(source, "metric")  # (an older mqsync, measured for comparison)
        ways: dict[str, Callable[[], None]] = {
            "bare": lambda: floor_bare(points),
            "timestamp": lambda: floor_timestamps(points),
            "send": lambda: floor_send(source, metric, points),
            "send_ns": lambda: floor_send_ns(source, metric, points),
        }
        if has_handle:
            ways["handle"] = lambda: floor_handle(source, metric, points)
        floor_send(source, metric, 2 * FLOOR_CHUNK)  # warm up
        source.flush()
        figures: dict[str, list[float]] = {way: [] for way in ways}
        for run in range(runs):
            order = list(ways)
            if run % 2:
                order.reverse()
            for way in order:
                figures[way].append(points / _common.timed(ways[way]))
                source.flush()  # not timed: the chunks of this run leave before the next
        rate = {way: median(values) for way, values in figures.items()}
    labels = {"bare": "bare loop: lock, 2 appends, cut per 1000",
              "timestamp": "Timestamp(t) alone",
              "send": "source.send(metric, Timestamp(t), v)",
              "handle": "metric.send(Timestamp(t), v)",
              "send_ns": "source.send(metric, t_ns, v)"}
    print(f"{'loop':<42} {'points/s':>12} {'vs bare':>8} {'ns/point':>9}")
    for way in rate:
        print(f"{labels[way]:<42} {rate[way] / 1e6:>10.3f} M {rate[way] / rate['bare']:>7.2f}x "
              f"{1e9 / rate[way]:>9.0f}")
    results = [
        Result("send(), a Timestamp per point, send only", rate["send"], "points/s",
               "bare loop", rate["bare"], target_ratio=0.4),
        Result("send(), int ns per point, send only", rate["send_ns"], "points/s",
               "bare loop", rate["bare"]),
    ]
    if has_handle:
        results.insert(1, Result("metric.send(), a Timestamp per point, send only",
                                 rate["handle"], "points/s", "bare loop", rate["bare"],
                                 target_ratio=0.5))
    return results


# -- chunk size 1: CPU per send() -------------------------------------------------------


def bench_chunk1_cpu(url: str, runs: int, quick: bool) -> list[Result]:
    points = 3_000 if quick else 20_000
    metric = f"bench.chunk1.{uuid.uuid4().hex[:6]}"  # bound to no queue: dropped unrouted
    print(f"\nchunk size 1: process CPU per point (every thread), {points} points, "
          f"median of {runs} runs")
    figures: dict[str, list[float]] = {"mqsync": [], "raw": []}
    with mqsync.Source(f"source-bench-chunk1-{uuid.uuid4().hex[:6]}", url,
                       chunk_size=1) as source, _common.Broker(url) as raw:

        def run_mqsync() -> None:
            floor_send(source, metric, points)
            source.flush()

        def run_raw() -> None:
            channel = raw.channel
            for i in range(points):  # encoding included, as mqsync's send() does it
                payload = encode_chunk([T0 + i * STEP_NS], [i * 0.5])
                message = channel.prepare_message(payload, None, None, None, None,
                                                  {"delivery_mode": 2})
                channel.basic_publish(message, exchange="metricq.data", routing_key=metric)

        run_mqsync()  # warm up
        ways = {"mqsync": run_mqsync, "raw": run_raw}
        for run in range(runs):
            order = list(ways) if run % 2 == 0 else list(reversed(ways))
            for way in order:
                gc.collect()
                started = time.process_time()
                ways[way]()
                figures[way].append((time.process_time() - started) / points * 1e6)
    cpu = {way: median(values) for way, values in figures.items()}
    print(f"mqsync send() + confirmed flush: {cpu['mqsync']:.1f} us CPU per point; raw kombu "
          f"encode + basic_publish, no confirms: {cpu['raw']:.1f} us")
    return [Result("chunk_size=1: process CPU per send()", cpu["mqsync"], "us",
                   "raw encode+publish", cpu["raw"], higher_is_better=False,
                   note="all threads, from the first send to the confirmed flush")]


# -- bulk send --------------------------------------------------------------------------


def bench_bulk(url: str, runs: int, quick: bool, broker: _common.Broker,
               queue: str) -> list[Result]:
    points = sizes(quick)["bulk"]
    chunk = 1000
    metric = "bench.source.bulk"
    chunks = [([T0 + i * STEP_NS for i in range(first, min(points, first + chunk))],
               [point_value(i, 0) for i in range(first, min(points, first + chunk))])
              for first in range(0, points, chunk)]
    messages = len(chunks)
    print(f"\nbulk send: {points} points of one metric in chunks of {chunk}, points/s, "
          f"median of {runs} runs")
    figures: dict[str, list[float]] = {"mqsync": [], "raw": [], "raw_confirms": []}
    token = f"source-bench-bulk-{uuid.uuid4().hex[:6]}"
    with mqsync.Source(token, url, chunk_size=chunk) as source, \
            _common.Broker(url) as raw, _ConfirmingPublisher(url) as confirming:
        send_many = source.send_many

        def run_mqsync() -> None:
            for times, values in chunks:
                send_many(metric, times, values)
            source.flush()

        def run_raw() -> None:
            channel = raw.channel
            for times, values in chunks:
                message = channel.prepare_message(encode_chunk(times, values), None, None,
                                                  None, None, {"delivery_mode": 1})
                channel.basic_publish(message, exchange="metricq.data", routing_key=metric)
            raw.depth(queue)  # one round trip: the broker has processed the publishes

        def run_confirms() -> None:
            confirming.publish_chunks(metric, chunks)

        run_mqsync()  # warm up
        broker.wait_depth(queue, messages)
        broker.purge(queue)
        ways = {"mqsync": run_mqsync, "raw": run_raw, "raw_confirms": run_confirms}
        for run in range(runs):
            order = list(ways)
            if run % 2:
                order.reverse()
            for way in order:
                seconds = _common.timed(ways[way])
                broker.wait_depth(queue, messages)
                broker.purge(queue)
                figures[way].append(points / seconds)
    rate = {key: median(values) for key, values in figures.items()}
    print(f"{'way':<52} {'points/s':>12} {'mqsync / it':>11}")
    for key, label in (("mqsync", "mqsync send_many + flush (confirmed)"),
                       ("raw", "raw encode_chunk + kombu basic_publish, no confirms"),
                       ("raw_confirms", "raw encode_chunk + basic_publish, pipelined confirms")):
        print(f"{label:<52} {rate[key] / 1e6:>10.3f} M {rate['mqsync'] / rate[key]:>10.2f}x")
    return [
        Result("send_many 1000/chunk", rate["mqsync"], "points/s", "raw encode+publish+confirm",
               rate["raw_confirms"], target_ratio=0.8),
        Result("send_many 1000/chunk", rate["mqsync"], "points/s", "raw encode+publish",
               rate["raw"], target_ratio=0.8, note="raw: no confirms, one round trip at the end"),
    ]


class _ConfirmingPublisher:
    """Raw kombu with pipelined publisher confirms: publish everything, wait for the acks."""

    def __init__(self, url: str):
        self.broker = _common.Broker(url)
        channel = self.broker.channel
        channel.confirm_select()
        self.published = 0
        self.acked = 0
        channel.events["basic_ack"].add(self._on_ack)
        channel.events["basic_nack"].add(self._on_nack)

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        self.acked = delivery_tag if multiple else self.acked + 1

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        raise RuntimeError(f"the broker refused message {delivery_tag}")

    def publish_chunks(self, metric: str, chunks: list[tuple[list[int], list[float]]]) -> None:
        channel = self.broker.channel
        for times, values in chunks:
            message = channel.prepare_message(encode_chunk(times, values), None, None, None,
                                              None, {"delivery_mode": 1})
            channel.basic_publish(message, exchange="metricq.data", routing_key=metric)
        self.published += len(chunks)
        self._wait()

    def _wait(self) -> None:
        deadline = time.monotonic() + 60
        while self.acked < self.published:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.published - self.acked} publishes not confirmed")
            with contextlib.suppress(TimeoutError):
                self.broker.connection.drain_events(timeout=1)

    def __enter__(self) -> _ConfirmingPublisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.broker.close()


# -- profile ----------------------------------------------------------------------------


def profile(url: str, quick: bool) -> None:
    """Run the mqsync send paths under cProfile, one chunk size at a time."""
    for chunk_size in CHUNK_SIZES:
        config = Config(1, chunk_size, sizes(quick)["per_point"][chunk_size])
        points = config.points_with_timestamps()
        with _common.profile_all_threads(f"send() 1 metric, chunk {chunk_size}, "
                                         f"{config.points} points"), \
                mqsync.Source(f"source-profile-{uuid.uuid4().hex[:6]}", url,
                              chunk_size=chunk_size) as source:
            mqsync_send(source, points)
    points = sizes(quick)["bulk"]
    chunks = [([T0 + i * STEP_NS for i in range(first, first + 1000)],
               [float(i) for i in range(first, first + 1000)]) for first in range(0, points, 1000)]
    with _common.profile_all_threads(f"send_many, {points} points in chunks of 1000"), \
            mqsync.Source(f"source-profile-{uuid.uuid4().hex[:6]}", url,
                          chunk_size=1000) as source:
        for times, values in chunks:
            source.send_many("bench.source.bulk", times, values)
        source.flush()


# -- entry points -----------------------------------------------------------------------


SECTIONS = ("per_point", "floor", "chunk1", "bulk")


def run(url: str, runs: int, quick: bool, sections: tuple[str, ...] = SECTIONS) -> list[Result]:
    """The figures of ``sections`` (all by default) on a network (a vhost with a manager)
    at ``url``."""
    queue = f"bench-source-{uuid.uuid4().hex[:6]}"
    results: list[Result] = []
    with _common.Broker(url) as broker:
        broker.declare_queue(queue, ["bench.source.#"])
        try:
            if "per_point" in sections:
                with _common.official_peer("official_send.py", url) as official:
                    results += bench_per_point(url, runs, quick, official, broker, queue)
            if "floor" in sections:
                results += bench_floor(url, runs, quick)
            if "chunk1" in sections:
                results += bench_chunk1_cpu(url, runs, quick)
            if "bulk" in sections:
                results += bench_bulk(url, runs, quick, broker, queue)
        finally:
            broker.delete(queue)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _common.add_common_arguments(parser)
    parser.add_argument("--profile", action="store_true",
                        help="profile the mqsync paths instead of timing them")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {', '.join(SECTIONS)}")
    args = parser.parse_args(argv)
    _common.check_runs(parser, args.runs)
    sections = tuple(name.strip() for name in args.only.split(",") if name.strip())
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown or not sections:
        parser.error(f"--only takes {', '.join(SECTIONS)}; got {args.only!r}")

    def measure(url: str) -> Any:
        if args.profile:
            profile(url, args.quick)
            return None
        return run(url, args.runs, args.quick, sections)

    return _common.run_and_report(args, "source summary (ratio > 1: mqsync ahead)", measure)


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: many plugin instances in one process (``SourceHost``) against one process each.

    python bench/bench_host.py [--seconds 60] [--block-seconds 25] [--instances 50]
                               [--block-instances 20] [--parts a,b] [--quick] [--url URL]
                               [--json FILE]

Two parts, both in a vhost of the benchmark's own with its own ``mqsync-manager``:

**A. One process against one process per instance.**  ``--instances`` (50) ``dummy``
instances, one metric each (distinct prefixes), at periods spread over 100 ms .. 60 s
(0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60 s in turn), run first as one
``mqsync-source --config host.toml`` process (``[[sources.dummy]]`` tables), then as one
``mqsync-source --plugin dummy`` process per instance: one configuration after the other,
never both at once.  A sink in the benchmark's process records the timestamp of every
point (the dummy sends ``Timestamp.now()`` at the start of each update).  Each
configuration's clock starts once every instance has sent its first point, and runs for
``--seconds``; then, before the sources are stopped:

- threads: the sum over the source processes of their ``/proc/<pid>/task`` entries, and
  RSS: the sum of their resident set sizes (both sampled every 5 s; the peak is shown);
- AMQP connections: the broker's connections in the vhost (``rabbitmqctl
  list_connections``) whose peer port is a socket of a source process (the manager's
  and the sink's are not counted);
- CPU time: user + system seconds the source processes used during the window;
- from the received timestamps, per metric with period p and first point t_0:
  k_i = round((t_i - t_0) / p); offset_i = t_i - t_0 - k_i·p; lateness_i = offset_i minus
  the metric's smallest offset; drift from the first point = the offset of the window's
  last slot (it includes how late the first update was: at a host's start every
  instance's first slot comes due at once); drift within the window = the median offset
  of the last quarter of the window's slots minus that of the first quarter (for metrics
  with two slots or more in the window; with few slots, one late point is all it sees);
  missed slots = the slots t_0 + k·p inside the window without a point.  Lateness and
  drift count the points of the window's slots only; t_0 (before the window) anchors them.

The ratio is the figure of the processes (one per instance) over the one process's:
above 1, the host uses or shows that many times less.

**B. An instance whose update blocks.**  A ``SourceHost`` in this process on the
broker: ``--block-instances`` (20) dummy instances at 0.1 .. 1 s, run for
``--block-seconds`` (25) without and then with one more instance of a source kind defined
here, whose update sleeps 10 s every 5 s (so it begins a block twice in 25 s and overruns
its slots).  The other instances' lateness comes from ``host.recent_lateness_ns(name)``
(each update's start after its slot, as the scheduler measured it; the updates of the
first 2 s, which all come due at once, are left out); also shown: the
blocking instance's updates and missed slots and the update pool's peak threads.

The default run takes about 3.5 minutes (``--quick``: 15 s and 12 s, about 1.5).  One
run per configuration: the figures of a busy machine vary; the load average is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Collection, Mapping, Sequence
from urllib.parse import unquote, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import psutil  # noqa: E402
from _common import Result, median, percentile  # noqa: E402

import mqsync  # noqa: E402
from mqsync.host import HostConfig, SourceHost  # noqa: E402
from mqsync.plugin import PluginSource, SourceKind, hookimpl, load_plugins  # noqa: E402

PERIODS_S = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
BLOCK_PERIODS_S = (0.1, 0.2, 0.5, 1.0)
BLOCK_S = 10.0
BLOCK_PERIOD_S = 5.0
#: Part B counts the updates after this many seconds (the start-up's are left out).
WARMUP_S = 2.0
SAMPLE_EVERY_S = 5.0
#: How long the sources run after the window, so that the points of its last slots arrive.
GRACE_S = 1.5
UP_TIMEOUT_S = 180.0
MS = 1_000_000
NS_PER_S = 1_000_000_000


def duration_text(seconds: float) -> str:
    """``100ms``, ``2s``: a duration as the configuration files take it."""
    return f"{round(seconds * 1000)}ms" if seconds < 1 else f"{seconds:g}s"


def spread(count: int, periods: Sequence[float]) -> list[float]:
    """``count`` periods taken from ``periods`` in turn."""
    return [periods[index % len(periods)] for index in range(count)]


# -- the sources' processes -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Instance:
    name: str
    metric: str
    period_s: float

    @property
    def prefix(self) -> str:
        return self.metric.rsplit(".", 1)[0]

    @property
    def period_ns(self) -> int:
        return round(self.period_s * NS_PER_S)


class ProcessGroup:
    """Subprocesses with their logs; on the way out (also on an error or Ctrl-C) each one
    gets SIGTERM, and SIGKILL if it has not ended within the grace."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.processes: list[tuple[subprocess.Popen, Path]] = []
        self._logs: list[Any] = []

    def start(self, command: list[str], log_name: str) -> subprocess.Popen:
        log_path = self.directory / log_name
        log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=log)
        self.processes.append((process, log_path))
        return process

    @property
    def pids(self) -> list[int]:
        return [process.pid for process, _ in self.processes]

    def check_alive(self) -> None:
        """Raise RuntimeError, with the end of its log, if a process has ended."""
        for process, log_path in self.processes:
            code = process.poll()
            if code is not None:
                tail = log_path.read_text(errors="replace")[-1500:]
                raise RuntimeError(f"{' '.join(process.args[-6:])} exited with {code}:\n{tail}")

    def stop(self, grace: float = 15.0) -> None:
        try:
            for process, _ in self.processes:
                if process.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
            for process, _ in self.processes:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(max(0.0, deadline - time.monotonic()))
        finally:  # also when a second Ctrl-C interrupts the wait
            for process, _ in self.processes:
                if process.poll() is None:
                    process.kill()
                    process.wait(5)
            for log in self._logs:
                log.close()
            self._logs.clear()

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def source_command(url: str, *arguments: str) -> list[str]:
    return [sys.executable, "-m", "mqsync.cli.source", "--url", url, *arguments]


def write_host_file(path: Path, token: str, instances: list[Instance]) -> None:
    lines = [f'token = "{token}"', ""]
    for instance in instances:
        lines += ["[[sources.dummy]]", f'name = "{instance.name}"',
                  f'prefix = "{instance.prefix}"', "metrics = 1",
                  f'period = "{duration_text(instance.period_s)}"', ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def start_one_host(url: str, tag: str, instances: list[Instance],
                   group: ProcessGroup) -> None:
    host_file = group.directory / "host.toml"
    write_host_file(host_file, f"source-bench-host-{tag}", instances)
    group.start(source_command(url, "--config", str(host_file)), "host.log")


def start_one_per_instance(url: str, tag: str, instances: list[Instance],
                           group: ProcessGroup) -> None:
    for instance in instances:
        config = group.directory / f"{instance.name}.json"
        config.write_text(json.dumps({"prefix": instance.prefix, "metrics": 1,
                                      "period": duration_text(instance.period_s)}),
                          encoding="utf-8")
        group.start(source_command(url, "--plugin", "dummy", "--config", str(config),
                                   "--token", f"source-bench-host-{tag}-{instance.name}"),
                    f"{instance.name}.log")


# -- what the processes use -------------------------------------------------------------------


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


@dataclasses.dataclass
class Usage:
    threads: int
    rss: int
    cpu_s: float


def usage_of(pids: list[int]) -> Usage:
    threads = rss = 0
    cpu = 0.0
    for pid in pids:
        process = psutil.Process(pid)
        with process.oneshot():
            threads += thread_count(pid)
            rss += process.memory_info().rss
            times = process.cpu_times()
            cpu += times.user + times.system
    return Usage(threads, rss, cpu)


def vhost_of(url: str) -> str:
    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def broker_peer_ports(vhost: str) -> set[int] | None:
    """The client ports of the broker's connections in ``vhost``; None without rabbitmqctl."""
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        return None
    try:
        listing = subprocess.run([ctl, "-q", "list_connections", "--no-table-headers", "vhost",
                                  "peer_port"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if listing.returncode != 0:
        return None
    ports = set()
    for line in listing.stdout.splitlines():
        fields = line.split("\t")
        if len(fields) == 2 and fields[0] == vhost and fields[1].strip().isdigit():
            ports.add(int(fields[1]))
    return ports


def broker_connections(url: str, pids: list[int]) -> tuple[int, str]:
    """How many AMQP connections the processes ``pids`` hold, and how that was counted."""
    broker_port = urlsplit(url).port or 5672
    local_ports = set()
    for pid in pids:
        for connection in psutil.Process(pid).net_connections(kind="tcp"):
            if connection.raddr and connection.raddr.port == broker_port and \
                    connection.status == psutil.CONN_ESTABLISHED:
                local_ports.add(connection.laddr.port)
    listed = broker_peer_ports(vhost_of(url))
    if listed is None:
        return len(local_ports), "TCP sockets of the processes to the broker port"
    return len(local_ports & listed), "rabbitmqctl list_connections, vhost and peer port"


# -- the recording sink and the analysis ----------------------------------------------------


class TimestampSink(mqsync.Sink):
    """Records the time of every received point per metric (int ns)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self._times: dict[str, list[int]] = {}

    def on_chunk(self, metric: str, times_ns: Sequence[int], values: Sequence[float]) -> None:
        with self._lock:
            self._times.setdefault(metric, []).extend(int(t) for t in times_ns)

    def metrics_seen(self) -> int:
        with self._lock:
            return len(self._times)

    def times(self) -> dict[str, list[int]]:
        with self._lock:
            return {metric: sorted(times) for metric, times in self._times.items()}


@dataclasses.dataclass
class MetricFigures:
    lateness_ns: list[int]
    drift_ns: int | None
    window_drift_ns: int | None
    expected: int
    missed: int
    duplicates: int


def analyse(times: list[int], period_ns: int, window: tuple[int, int]) -> MetricFigures:
    """The figures of one metric's point times (wall ns, sorted) in ``window``."""
    start, end = window
    t0 = times[0]
    slots = [(t - t0 + period_ns // 2) // period_ns for t in times]
    offsets = [t - t0 - k * period_ns for t, k in zip(times, slots)]
    first = math.ceil((start - t0) / period_ns)
    last = (end - t0) // period_ns
    floor = min(o for k, o in zip(slots, offsets) if k <= last)
    inside = sorted((k, o) for k, o in zip(slots, offsets) if first <= k <= last)
    seen = {k for k, _ in inside}
    expected = max(0, last - first + 1)
    window_drift = None
    if len(seen) > 1:
        # the median offset of the last quarter of the window's slots minus that of the
        # first: one late point among many is lateness, not drift
        quarter = max(1, len(inside) // 4)
        window_drift = round(median([o for _, o in inside[-quarter:]])
                             - median([o for _, o in inside[:quarter]]))
    return MetricFigures(
        lateness_ns=[o - floor for _, o in inside],
        drift_ns=inside[-1][1] if inside else None,
        window_drift_ns=window_drift,
        expected=expected,
        missed=expected - len(seen),
        duplicates=len(inside) - len(seen),
    )


@dataclasses.dataclass
class ClassFigures:
    """The pooled figures of a set of instances (a period class, or all)."""

    instances: int
    points: int
    lateness_p50_ms: float
    lateness_p99_ms: float
    max_abs_drift_ms: float
    max_abs_window_drift_ms: float
    expected: int
    missed: int
    duplicates: int

    @classmethod
    def pool(cls, figures: list[MetricFigures]) -> ClassFigures:
        lateness = [ns / MS for f in figures for ns in f.lateness_ns]
        drifts = [abs(f.drift_ns) / MS for f in figures if f.drift_ns is not None]
        window_drifts = [abs(f.window_drift_ns) / MS for f in figures
                         if f.window_drift_ns is not None]
        return cls(
            instances=len(figures), points=len(lateness),
            lateness_p50_ms=median(lateness), lateness_p99_ms=percentile(lateness, 0.99),
            max_abs_drift_ms=max(drifts) if drifts else float("nan"),
            max_abs_window_drift_ms=max(window_drifts) if window_drifts else float("nan"),
            expected=sum(f.expected for f in figures), missed=sum(f.missed for f in figures),
            duplicates=sum(f.duplicates for f in figures))


@dataclasses.dataclass
class RunFigures:
    """One configuration of part A."""

    label: str
    processes: int
    up_s: float
    threads: int
    rss: int
    cpu_s: float
    connections: int
    connections_how: str
    classes: dict[float, ClassFigures]
    overall: ClassFigures


# -- part A -----------------------------------------------------------------------------------


def run_configuration(url: str, label: str, instances: list[Instance], seconds: float,
                      start: Callable[[str, str, list[Instance], ProcessGroup], None]
                      ) -> RunFigures:
    """Start the sources, wait until each sent, measure ``seconds``, stop them, analyse."""
    tag = uuid.uuid4().hex[:6]
    tagged = [dataclasses.replace(i, metric=i.metric.replace("TAG", tag)) for i in instances]
    print(f"\n-- {label}: starting", flush=True)
    sink = TimestampSink(f"sink-bench-host-{tag}", url, durable=False)
    sink.start()
    try:
        sink.subscribe([i.metric for i in tagged], metadata=False)
        with tempfile.TemporaryDirectory() as directory, \
                ProcessGroup(Path(directory)) as group:
            started = time.monotonic()
            start(url, tag, tagged, group)
            while sink.metrics_seen() < len(tagged):
                group.check_alive()
                if time.monotonic() - started > UP_TIMEOUT_S:
                    raise RuntimeError(f"{label}: {sink.metrics_seen()} of {len(tagged)} "
                                       f"instances sent within {UP_TIMEOUT_S:g} s")
                time.sleep(0.05)
            up_s = time.monotonic() - started
            print(f"   all {len(tagged)} instances sent after {up_s:.1f} s; measuring "
                  f"{seconds:g} s", flush=True)
            window_start = time.time_ns()
            window_end_mono = time.monotonic() + seconds
            first = usage_of(group.pids)
            peak = dataclasses.replace(first)
            while True:
                left = window_end_mono - time.monotonic()
                if left <= 0:
                    break
                time.sleep(min(SAMPLE_EVERY_S, left))
                group.check_alive()
                now = usage_of(group.pids)
                peak.threads = max(peak.threads, now.threads)
                peak.rss = max(peak.rss, now.rss)
                peak.cpu_s = now.cpu_s
            window_end = time.time_ns()
            # After the window: rabbitmqctl costs a CPU second or two, not to be measured.
            connections, how = broker_connections(url, group.pids)
            time.sleep(max(0.0, GRACE_S - (time.time_ns() - window_end) / NS_PER_S))
            group.check_alive()
            processes = len(group.pids)
        time.sleep(0.5)  # the last points on their way to the sink
    finally:
        sink.stop()
    received = sink.times()
    per_class: dict[float, list[MetricFigures]] = {}
    for instance in tagged:
        times = received.get(instance.metric, [])
        figures = analyse(times, instance.period_ns, (window_start, window_end))
        per_class.setdefault(instance.period_s, []).append(figures)
    classes = {period: ClassFigures.pool(f) for period, f in sorted(per_class.items())}
    overall = ClassFigures.pool([f for group_figures in per_class.values()
                                 for f in group_figures])
    return RunFigures(label=label, processes=processes, up_s=up_s, threads=peak.threads,
                      rss=peak.rss, cpu_s=peak.cpu_s - first.cpu_s, connections=connections,
                      connections_how=how, classes=classes, overall=overall)


def ratio_text(many: float, one: float) -> str:
    if not one or one != one or many != many:
        return "-"
    return f"{many / one:.2f}x"


def print_part_a(one: RunFigures, many: RunFigures, seconds: float) -> None:
    print(f"\n== A. {many.processes} dummy instances, periods "
          f"{', '.join(f'{p:g}' for p in one.classes)} s, {seconds:g} s window")
    print(f"{'':44}{'one process':>14}{f'{many.processes} processes':>16}"
          f"{'ratio':>10}")
    rows: list[tuple[str, float, float, str]] = [
        ("processes", one.processes, many.processes, "{:.0f}"),
        ("threads (sum of /proc/<pid>/task, peak)", one.threads, many.threads, "{:.0f}"),
        ("RSS (sum, peak) MB", one.rss / 1e6, many.rss / 1e6, "{:.1f}"),
        ("AMQP connections", one.connections, many.connections, "{:.0f}"),
        ("CPU time in the window s", one.cpu_s, many.cpu_s, "{:.2f}"),
        ("start until every instance sent s", one.up_s, many.up_s, "{:.1f}"),
        ("points in the window", one.overall.points, many.overall.points, "{:.0f}"),
        ("lateness p50 ms (all instances)", one.overall.lateness_p50_ms,
         many.overall.lateness_p50_ms, "{:.3f}"),
        ("lateness p99 ms (all instances)", one.overall.lateness_p99_ms,
         many.overall.lateness_p99_ms, "{:.3f}"),
        ("max |drift| from the first point ms", one.overall.max_abs_drift_ms,
         many.overall.max_abs_drift_ms, "{:.3f}"),
        ("max |drift| within the window ms", one.overall.max_abs_window_drift_ms,
         many.overall.max_abs_window_drift_ms, "{:.3f}"),
        ("missed slots", one.overall.missed, many.overall.missed, "{:.0f}"),
    ]
    for name, a, b, fmt in rows:
        print(f"{name:<44}{fmt.format(a):>14}{fmt.format(b):>16}{ratio_text(b, a):>10}")
    print(f"(expected slots in the window: {one.overall.expected} and "
          f"{many.overall.expected}; connections counted by {one.connections_how})")
    print(f"\nper period class: lateness p50 / p99 ms, max |drift| ms from the first point "
          f"(drift0) and within the window (driftW), missed/expected slots\n"
          f"({one.label} | {many.label}; nan: no point, or one, in the window)")
    head = f"{'p50':>7} {'p99':>7} {'drift0':>7} {'driftW':>7} {'missed':>9}"
    print(f"{'period':>6} {'inst':>4}  {head}  | {head}  {'p99 ratio':>9}")
    for period, a in one.classes.items():
        b = many.classes[period]

        def cells(f: ClassFigures) -> str:
            return (f"{f.lateness_p50_ms:>7.3f} {f.lateness_p99_ms:>7.3f} "
                    f"{f.max_abs_drift_ms:>7.3f} {f.max_abs_window_drift_ms:>7.3f} "
                    f"{f'{f.missed}/{f.expected}':>9}")

        print(f"{duration_text(period):>6} {a.instances:>4}  {cells(a)}  | {cells(b)}  "
              f"{ratio_text(b.lateness_p99_ms, a.lateness_p99_ms):>9}")
    duplicates = one.overall.duplicates + many.overall.duplicates
    if duplicates:
        print(f"(points sent twice for one slot: {one.overall.duplicates} and "
              f"{many.overall.duplicates})")


def part_a(url: str, count: int, seconds: float) -> list[Result]:
    instances = [Instance(f"i{index:02d}", f"bench.host.TAG.i{index:02d}.0", period)
                 for index, period in enumerate(spread(count, PERIODS_S))]
    one = run_configuration(url, "one process", instances, seconds, start_one_host)
    many = run_configuration(url, f"{count} processes", instances, seconds,
                             start_one_per_instance)
    print_part_a(one, many, seconds)
    baseline = f"{count} processes"
    return [
        Result(f"A: threads, {count} instances", one.threads, "", baseline, many.threads,
               higher_is_better=False),
        Result(f"A: RSS, {count} instances", one.rss / 1e6, "MB", baseline, many.rss / 1e6,
               higher_is_better=False),
        Result(f"A: AMQP connections, {count} instances", one.connections, "", baseline,
               many.connections, higher_is_better=False),
        Result(f"A: CPU time in {seconds:g} s", one.cpu_s, "s", baseline, many.cpu_s,
               higher_is_better=False),
        Result("A: lateness p99, all instances", one.overall.lateness_p99_ms, "ms", baseline,
               many.overall.lateness_p99_ms, higher_is_better=False),
        Result("A: max |drift| from the first point", one.overall.max_abs_drift_ms, "ms",
               baseline, many.overall.max_abs_drift_ms, higher_is_better=False),
        Result("A: max |drift| within the window", one.overall.max_abs_window_drift_ms, "ms",
               baseline, many.overall.max_abs_window_drift_ms, higher_is_better=False),
    ]


# -- part B -----------------------------------------------------------------------------------

BLOCKING_KIND = "bench_blocking"


class BlockingSource(PluginSource):
    """Sends one point, then blocks for ``block`` seconds (until interrupted)."""

    default_config = {"rate": 1.0, "period": None, "prefix": "bench.blocking", "block": BLOCK_S}

    def __init__(self, token: str, url: str | None = None, **kwargs: Any):
        self._interrupted = threading.Event()
        self._metric = ""
        self._block_s = BLOCK_S
        super().__init__(token, url, **kwargs)

    def configure(self, config: Mapping[str, Any]) -> None:
        self._metric = f"{config['prefix']}.0"
        self._block_s = float(config["block"])

    def metrics(self) -> dict[str, dict[str, Any]]:
        return {self._metric: {"unit": ""}}

    def update(self) -> None:
        self.send(self._metric, mqsync.Timestamp.now(), 1.0)
        self._interrupted.wait(self._block_s)

    def interrupt(self) -> None:
        self._interrupted.set()


@hookimpl
def mqsync_source_kinds() -> list[SourceKind]:
    """The blocking source kind of part B."""
    return [SourceKind(BLOCKING_KIND, BlockingSource, "an update that blocks (benchmark)")]


@dataclasses.dataclass
class BlockRun:
    lateness_ms: list[float]
    per_instance_p99_ms: list[float]
    peak_threads: int
    max_threads: int
    saturated: int
    blocking_updates: int | None
    blocking_missed: int | None


def run_block(url: str, count: int, seconds: float, blocking: bool) -> BlockRun:
    tag = uuid.uuid4().hex[:6]
    tables = [{"name": f"i{index:02d}", "prefix": f"bench.block.{tag}.i{index:02d}",
               "metrics": 1, "period": duration_text(period)}
              for index, period in enumerate(spread(count, BLOCK_PERIODS_S))]
    sources: dict[str, Any] = {"dummy": tables}
    if blocking:
        sources[BLOCKING_KIND] = [{"name": "blocking", "prefix": f"bench.block.{tag}.blocking",
                                   "period": duration_text(BLOCK_PERIOD_S), "block": BLOCK_S}]
    plugins = load_plugins(modules=[sys.modules[__name__]])
    config = HostConfig.from_mapping({"sources": sources}, plugins)
    host = SourceHost(f"source-bench-block-{tag}", url, config=config, plugins=plugins)
    names = [t["name"] for t in tables]
    try:
        host.start()
        time.sleep(min(WARMUP_S, seconds / 2))
        before = host.instance_stats()
        time.sleep(seconds - min(WARMUP_S, seconds / 2))
        after = host.instance_stats()
        lateness = {}
        for name in names:  # the updates since the warm-up: the newest of the recent ones
            count = after[name].updates - before[name].updates
            lateness[name] = host.recent_lateness_ns(name)[-count:] if count > 0 else ()
        pool = host.pool_stats()
        stats = after.get("blocking")
    finally:
        host.stop()
    return BlockRun(
        lateness_ms=[ns / MS for values in lateness.values() for ns in values],
        per_instance_p99_ms=[percentile([ns / MS for ns in values], 0.99)
                             for values in lateness.values()],
        peak_threads=pool.peak_threads, max_threads=pool.max_threads,
        saturated=pool.saturated,
        blocking_updates=None if stats is None else stats.updates,
        blocking_missed=None if stats is None else stats.missed_slots)


def part_b(url: str, count: int, seconds: float) -> list[Result]:
    print(f"\n-- B: {count} dummy instances at "
          f"{', '.join(duration_text(p) for p in BLOCK_PERIODS_S)} in one SourceHost, "
          f"{seconds:g} s without, then {seconds:g} s with an instance whose update blocks "
          f"{BLOCK_S:g} s every {BLOCK_PERIOD_S:g} s", flush=True)
    calm = run_block(url, count, seconds, blocking=False)
    blocked = run_block(url, count, seconds, blocking=True)
    print(f"\n== B. lateness of the other {count} instances (host.recent_lateness_ns: each "
          f"update's start after its slot)")
    print(f"{'':44}{'no block':>14}{'one blocks':>14}{'ratio':>10}  (with / without)")
    rows = [
        ("updates measured", len(calm.lateness_ms), len(blocked.lateness_ms), "{:.0f}"),
        ("lateness p50 ms", median(calm.lateness_ms), median(blocked.lateness_ms), "{:.3f}"),
        ("lateness p99 ms", percentile(calm.lateness_ms, 0.99),
         percentile(blocked.lateness_ms, 0.99), "{:.3f}"),
        ("lateness max ms", max(calm.lateness_ms), max(blocked.lateness_ms), "{:.3f}"),
        ("worst instance's p99 ms", max(calm.per_instance_p99_ms),
         max(blocked.per_instance_p99_ms), "{:.3f}"),
        ("update pool: peak threads", calm.peak_threads, blocked.peak_threads, "{:.0f}"),
        ("updates that waited for a thread", calm.saturated, blocked.saturated, "{:.0f}"),
    ]
    for name, a, b, fmt in rows:
        print(f"{name:<44}{fmt.format(a):>14}{fmt.format(b):>14}{ratio_text(b, a):>10}")
    slots = math.floor(seconds / BLOCK_PERIOD_S) + 1
    print(f"blocking instance: {blocked.blocking_updates} updates begun, "
          f"{blocked.blocking_missed} slots missed (of about {slots} slots in {seconds:g} s; "
          f"the slots that come while its update blocks are skipped, and counted when it "
          f"returns)")
    print(f"(each instance starts at a phase of its own within its first period, at most "
          f"1 s, so the {count} instances rarely come due together; 'updates that waited' "
          f"counts those that found all {calm.max_threads} update threads busy)")
    return [
        Result("B: others' lateness p99, one blocks", percentile(blocked.lateness_ms, 0.99),
               "ms", "no block", percentile(calm.lateness_ms, 0.99), higher_is_better=False,
               note="expected ~1: the blocked update holds one thread, the others go on"),
        Result("B: update pool peak threads, one blocks", blocked.peak_threads, "",
               "no block", calm.peak_threads, higher_is_better=False),
    ]


# -- entry points -------------------------------------------------------------------------------


def run(url: str, runs: int, quick: bool, seconds: float | None = None,
        block_seconds: float | None = None, instances: int = 50,
        block_instances: int = 20, parts: Collection[str] = ("a", "b")) -> list[Result]:
    """Parts A and B on the network at ``url``; ``runs`` does not apply (one run each)."""
    seconds = seconds if seconds is not None else (15.0 if quick else 60.0)
    block_seconds = block_seconds if block_seconds is not None else (12.0 if quick else 25.0)
    results: list[Result] = []
    if "a" in parts:
        print(f"\nA. SourceHost: {instances} instances in one process vs one process each "
              f"({seconds:g} s each, one after the other; one run of each)")
        results += part_a(url, instances, seconds)
    if "b" in parts:
        print(f"\nB. SourceHost: a blocking update among {block_instances} instances "
              f"({block_seconds:g} s without, {block_seconds:g} s with; one run of each)")
        results += part_b(url, block_instances, block_seconds)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=_common.default_url(),
                        help="RabbitMQ URL (default $MQSYNC_URL or guest@127.0.0.1)")
    parser.add_argument("--quick", action="store_true",
                        help="shorter windows (15 s and 12 s): a smoke run")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--seconds", type=float,
                        help="part A's window per configuration (default 60, quick 15)")
    parser.add_argument("--block-seconds", type=float,
                        help="part B's run length, each (default 25, quick 12)")
    parser.add_argument("--instances", type=int, default=50, help="part A's instances")
    parser.add_argument("--block-instances", type=int, default=20,
                        help="part B's instances besides the blocking one")
    parser.add_argument("--parts", default="a,b", help="which parts to run: a, b or a,b")
    args = parser.parse_args(argv)
    parts = {part.strip().lower() for part in args.parts.split(",") if part.strip()}
    if not parts or parts - {"a", "b"}:
        parser.error(f"--parts: expected a, b or a,b, got {args.parts!r}")
    if (args.seconds is not None and args.seconds <= 0) or \
            (args.block_seconds is not None and args.block_seconds <= 0):
        parser.error("--seconds and --block-seconds must be positive")
    if args.instances < 1 or args.block_instances < 1:
        parser.error("--instances and --block-instances must be >= 1")
    return _common.run_and_report(
        args, "SourceHost summary (ratio > 1: the one process uses or shows that many "
              "times less)",
        lambda url: run(url, 1, args.quick, args.seconds, args.block_seconds, args.instances,
                        args.block_instances, parts))


if __name__ == "__main__":
    sys.exit(main())

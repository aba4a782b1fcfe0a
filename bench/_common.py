"""Shared plumbing of the broker benchmarks: a network of their own, the official peers,
timing helpers, results with baselines and targets, and thread-wide profiling.

Every broker benchmark runs in a vhost of its own (``rabbitmqctl add_vhost``) with its own
``mqsync-manager`` subprocess, as ``tests/conftest.py`` does; both go away when the
benchmark ends, also on an error, Ctrl-C or SIGTERM.  Without ``rabbitmqctl`` the URL's
vhost is used as given and a manager must already run there.

The official ``metricq`` client runs in the interop virtualenv of
``tests/interop/official.py`` (built on first use), as a long-lived subprocess driven over
stdin with one JSON command per run, so that official and mqsync runs can alternate.
"""

from __future__ import annotations

import contextlib
import cProfile
import dataclasses
import gc
import io
import json
import logging
import os
import platform
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import quote, urlsplit, urlunsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO_ROOT))

import kombu  # noqa: E402

import mqsync  # noqa: E402

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
PEERS_DIR = Path(__file__).resolve().parent / "official_peers"
T0 = 1_700_000_000_000_000_000
"""The first timestamp of generated points (int ns, November 2023)."""
STEP_NS = 1_000_000
"""The time step of generated points (1 ms)."""


def default_url() -> str:
    return os.environ.get("MQSYNC_URL") or os.environ.get("MQSYNC_TEST_URL") or DEFAULT_URL


def add_common_arguments(parser: Any, runs: int = 5) -> None:
    parser.add_argument("--url", default=default_url(),
                        help="RabbitMQ URL (default $MQSYNC_URL or guest@127.0.0.1)")
    parser.add_argument("--runs", type=int, default=runs,
                        help=f"runs per figure, the median is reported (default {runs})")
    parser.add_argument("--quick", action="store_true", help="smaller sizes: a smoke run")
    parser.add_argument("--json", type=Path, help="also write the results to this file")


def check_runs(parser: Any, runs: int) -> None:
    if runs < 1:
        parser.error("--runs must be >= 1")
    if runs < 5:
        print(f"(note: --runs {runs}: the figures are medians of fewer than 5 runs)")


# -- machine and timing -------------------------------------------------------------------


def machine_line() -> str:
    """Python, CPUs and the load average: the load decides how far figures can be trusted."""
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"python {platform.python_version()}, mqsync {mqsync.__version__}, kombu "
            f"{kombu.__version__}, {os.cpu_count()} CPUs, load average {load}")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def timed(run: Callable[[], Any]) -> float:
    """Seconds ``run()`` took, after a garbage collection (so no run pays for another)."""
    gc.collect()
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def rate_of(run: Callable[[], Any], items: int, min_seconds: float = 0.05) -> float:
    """Items per second of ``run()``, repeated until it took ``min_seconds`` (for loops too
    quick to time once)."""
    gc.collect()
    repeats = 0
    started = time.perf_counter()
    while True:
        run()
        repeats += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return items * repeats / elapsed


def rss_bytes() -> int:
    """This process's resident set size (Linux ``/proc``; else the peak from getrusage)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# -- results -----------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    """One figure of the summary: ours, the baseline's, their ratio and the target.

    ``ratio`` is ``value / baseline`` when higher is better, ``baseline / value`` when lower
    is better (so a ratio above 1 always means mqsync is ahead).  ``target`` is a minimum
    ratio, or for absolute targets (``target_value``) a maximum value.
    """

    name: str
    value: float
    unit: str
    baseline_name: str = ""
    baseline: float | None = None
    higher_is_better: bool = True
    target_ratio: float | None = None
    target_value: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or not self.baseline or not self.value:
            return None
        return self.value / self.baseline if self.higher_is_better else self.baseline / self.value

    @property
    def target(self) -> str:
        if self.target_ratio is not None:
            return f">= {self.target_ratio:g}x"
        if self.target_value is not None:
            limit = format_value(self.target_value, self.unit)
            return f"{'>=' if self.higher_is_better else '<'} {limit}"
        return ""

    @property
    def met(self) -> bool | None:
        if self.target_ratio is not None:
            return None if self.ratio is None else self.ratio >= self.target_ratio
        if self.target_value is not None:
            if self.higher_is_better:
                return self.value >= self.target_value
            return self.value < self.target_value
        return None

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "ratio": self.ratio, "target": self.target,
                "met": self.met}


def format_value(value: float | None, unit: str = "") -> str:
    if value is None or value != value:
        return "n/a"
    if unit == "points/s":
        if value >= 1e6:
            return f"{value / 1e6:.2f} M/s"
        return f"{value / 1e3:.1f} k/s"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "MB":
        return f"{value:.1f} MB"
    if unit == "B/point":
        return f"{value:.0f} B/pt"
    return f"{value:g}{(' ' + unit) if unit else ''}"


def print_results(title: str, results: list[Result]) -> None:
    """The summary table: figure, baseline, ratio (>1: mqsync ahead), target, met?"""
    print()
    print(f"== {title}")
    width = max([len(r.name) for r in results] + [20])
    base_width = max([len(r.baseline_name) for r in results] + [8])
    print(f"{'figure':<{width}} {'mqsync':>12}  {'baseline':<{base_width}} {'value':>12} "
          f"{'ratio':>7}  {'target':<10} met")
    for r in results:
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}x"
        met = {True: "yes", False: "NO", None: "-"}[r.met]
        baseline = "" if r.baseline is None else format_value(r.baseline, r.unit)
        print(f"{r.name:<{width}} {format_value(r.value, r.unit):>12}  "
              f"{r.baseline_name:<{base_width}} {baseline:>12} {ratio:>7}  {r.target:<10} {met}")
        if r.note:
            print(f"{'':<{width}}   ({r.note})")


def write_json(path: Path | None, results: list[Result], **extra: Any) -> None:
    if path is None:
        return
    document = {"machine": machine_line(), "results": [r.as_dict() for r in results], **extra}
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


# -- the network -------------------------------------------------------------------------


def _rabbitmqctl(*args: str) -> bool:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        return False
    try:
        return subprocess.run([ctl, *args], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def raise_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so ``finally`` blocks clean up (main thread only)."""
    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_term)


@contextlib.contextmanager
def network(url: str) -> Iterator[str]:
    """A vhost of the benchmark's own with an ``mqsync-manager`` on it; yields its URL.

    The manager is stopped and the vhost deleted on the way out, whatever happened.
    Without ``rabbitmqctl`` the URL is used as given (a manager must run there).
    """
    parts = urlsplit(url)
    vhost = f"mqsync-bench-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    user = parts.username or "guest"
    created = _rabbitmqctl("add_vhost", vhost)
    try:
        if not (created and _rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*",
                                          ".*")):
            print("(no rabbitmqctl: using the URL's vhost and the manager running there)")
            yield url
            return
        bench_url = urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))
        with tempfile.TemporaryDirectory() as directory, \
                _manager(bench_url, Path(directory)) as manager_url:
            yield manager_url
    finally:
        if created:
            _rabbitmqctl("delete_vhost", vhost)


@contextlib.contextmanager
def _manager(url: str, directory: Path) -> Iterator[str]:
    (directory / "clients").mkdir()
    log = open(directory / "manager.log", "w+b")  # noqa: SIM115 - closed below
    manager = subprocess.Popen(
        [sys.executable, "-m", "mqsync.cli.manager", "--url", url, "--config",
         str(directory / "clients"), "--metadata-file", str(directory / "metadata.json")],
        stdout=subprocess.DEVNULL, stderr=log)
    try:
        _wait_for_manager(url, manager, log)
        yield url
    finally:
        manager.terminate()
        try:
            manager.wait(15)
        except subprocess.TimeoutExpired:
            manager.kill()
            manager.wait(5)
        log.close()


def _wait_for_manager(url: str, manager: subprocess.Popen, log: Any,
                      timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    mqsync_logger = logging.getLogger("mqsync")
    level = mqsync_logger.level
    mqsync_logger.setLevel(logging.CRITICAL)  # the probes fail (and log) until it is up
    try:
        while True:
            if manager.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"mqsync-manager exited with {manager.returncode}: "
                                   f"{log.read().decode(errors='replace')[-2000:]}")
            try:
                with mqsync.Client(f"bench-probe-{uuid.uuid4().hex[:6]}", url,
                                   connect_timeout=5) as probe:
                    probe.get_metrics(timeout=5)
                return
            except mqsync.MqsyncError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        mqsync_logger.setLevel(level)


class Broker:
    """A plain kombu connection of the benchmark's own, for queues and raw baselines."""

    def __init__(self, url: str):
        self.connection = kombu.Connection(url, connect_timeout=10)
        self.connection.connect()
        self.channel = self.connection.channel()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.connection.release()

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def declare_queue(self, queue: str, routing_keys: list[str]) -> None:
        """A transient queue bound to the data exchange for ``routing_keys``."""
        self.channel.queue_declare(queue=queue, durable=False, exclusive=False,
                                   auto_delete=False)
        for key in routing_keys:
            self.channel.queue_bind(queue=queue, exchange="metricq.data", routing_key=key)

    def depth(self, queue: str) -> int:
        return self.channel.queue_declare(queue=queue, passive=True).message_count

    def wait_depth(self, queue: str, messages: int, timeout: float = 120.0,
                   interval: float = 0.01) -> float:
        """Wait until ``queue`` holds ``messages``; return ``time.monotonic()`` then."""
        deadline = time.monotonic() + timeout
        while True:
            depth = self.depth(queue)
            if depth >= messages:
                return time.monotonic()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{queue} holds {depth} messages after {timeout:g} s, "
                                   f"expected {messages}")
            time.sleep(interval)

    def purge(self, queue: str) -> None:
        self.channel.queue_purge(queue=queue)

    def delete(self, queue: str) -> None:
        with contextlib.suppress(Exception):
            self.channel.queue_delete(queue=queue)

    def publish(self, payloads: list[tuple[str, bytes]]) -> None:
        """Publish ``(routing_key, body)`` to the data exchange, as a Source would."""
        channel = self.channel
        for key, body in payloads:
            message = channel.prepare_message(body, None, None, None, None, {"delivery_mode": 1})
            channel.basic_publish(message, exchange="metricq.data", routing_key=key)


# -- the official client -----------------------------------------------------------------


def official_unavailable() -> str | None:
    """None when the official client's venv works (it is built on first use), else why not."""
    try:
        from tests.interop.official import official_python

        official_python()
    except Exception as error:  # noqa: BLE001 - reported, the benchmark goes on without it
        return f"{type(error).__name__}: {str(error)[:300]}"
    return None


def official_peer(script: str, url: str) -> contextlib.AbstractContextManager:
    """An :class:`OfficialPeer` running ``script``, or (saying why) ``None`` in a
    ``with`` when the official client is unavailable."""
    unavailable = official_unavailable()
    if unavailable:
        print(f"(the official client is unavailable, no comparison: {unavailable})")
        return contextlib.nullcontext()
    return OfficialPeer(script, "--url", url)


class OfficialPeer:
    """A script of ``bench/official_peers`` running in the interop venv, driven by commands.

    It prints ``{"event": "ready"}`` once connected, then answers every JSON command line
    with one ``{"event": "result", ...}`` line.  Use it as a context manager: on the way
    out stdin is closed (the peer stops its client and exits) and the process is reaped,
    or killed if it does not end.
    """

    def __init__(self, script: str, *args: object, ready_timeout: float = 60.0):
        from tests.interop.official import PeerProcess, official_python

        command = [str(official_python()), str(PEERS_DIR / script), *map(str, args)]
        self.process = PeerProcess(command, script)
        try:
            self.process.wait_for("ready", ready_timeout)
        except BaseException:
            self.process.stop()
            raise

    def run(self, wait: float, **command: Any) -> dict[str, Any]:
        """Send one command; return its result record."""
        self.process.send_line(json.dumps(command))
        return self.process.wait_for("result", wait)

    def close(self) -> None:
        try:
            self.process.finish(timeout=30)
        except Exception as error:  # noqa: BLE001 - killed below anyway
            print(f"(official peer did not end cleanly: {error})")
        finally:
            self.process.stop()

    def __enter__(self) -> OfficialPeer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# -- profiling ---------------------------------------------------------------------------


@contextlib.contextmanager
def profile_all_threads(title: str, top: int = 25,
                        skip_kinds: tuple[str, ...] = ("mgmt", "rpc")) -> Iterator[None]:
    """cProfile the calling thread and every thread started inside the block.

    Threads are profiled from their start until their ``run()`` returns, so stop the
    clients inside the block.  Prints the top functions by own time per thread kind (the
    thread name without the client's token: for a Source ``data`` is its data IO thread;
    for a Sink ``data-io`` is the IO thread and ``data`` the worker running the
    callbacks); the management IO thread and the RPC worker (idle here) are left out.
    cProfile adds a fixed cost per call: small, frequently called functions look more
    expensive than they are; read the ranking, not the absolute figures.
    """
    profiles: list[tuple[str, cProfile.Profile]] = []
    lock = threading.Lock()
    original_run = threading.Thread.run

    def profiled_run(thread: threading.Thread) -> None:
        profile = cProfile.Profile()
        with lock:
            profiles.append((_thread_kind(thread.name), profile))
        profile.enable()
        try:
            original_run(thread)
        finally:
            profile.disable()

    main_profile = cProfile.Profile()
    threading.Thread.run = profiled_run  # type: ignore[method-assign]
    main_profile.enable()
    try:
        yield
    finally:
        main_profile.disable()
        threading.Thread.run = original_run  # type: ignore[method-assign]
        groups: dict[str, list[cProfile.Profile]] = {"main (caller)": [main_profile]}
        for kind, profile in profiles:
            if kind not in skip_kinds:
                groups.setdefault(kind, []).append(profile)
        print(f"\n---- profile: {title}")
        for kind, members in groups.items():
            text = _stats_text(members, "tottime", top)
            if text:
                print(f"-- thread {kind}, by own time")
                print(text)


def _thread_kind(name: str) -> str:
    # mqsync-<token>-data-io -> data-io; the token contains dashes, the kinds are known
    for kind in ("data-io", "data", "mgmt", "rpc", "task"):
        if name.endswith("-" + kind):
            return kind
    return name


def _stats_text(profiles: list[cProfile.Profile], sort: str, top: int) -> str:
    stream = io.StringIO()
    stats: pstats.Stats | None = None
    for profile in profiles:
        try:
            if stats is None:
                stats = pstats.Stats(profile, stream=stream)
            else:
                stats.add(profile)
        except TypeError:  # a profile that recorded nothing
            continue
    if stats is None or not stats.total_calls:  # type: ignore[attr-defined]
        return ""
    stats.strip_dirs().sort_stats(sort).print_stats(top)
    lines = stream.getvalue().splitlines()
    # keep the header line with the totals and the table
    start = next((i for i, line in enumerate(lines) if "function calls" in line), 0)
    return "\n".join(line for line in lines[start:] if line.strip())


class DepthWatcher:
    """Polls a queue's depth on a thread (and a connection) of its own until it holds
    ``messages``; :attr:`reached` is the ``time.monotonic()`` of the first poll that saw it.

    For clients without publisher confirms this is the only way to see when the broker has
    everything; run it for both sides so that both pay for the polling.
    """

    def __init__(self, url: str, queue: str, messages: int, interval: float = 0.005,
                 timeout: float = 300.0):
        self._broker = Broker(url)
        self._queue = queue
        self._messages = messages
        self._interval = interval
        self._timeout = timeout
        self._stop = threading.Event()
        self.reached: float | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="bench-depth-watcher",
                                        daemon=True)
        self._thread.start()

    def _main(self) -> None:
        deadline = time.monotonic() + self._timeout
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                if self._broker.depth(self._queue) >= self._messages:
                    self.reached = time.monotonic()
                    return
                self._stop.wait(self._interval)
        except BaseException as error:  # noqa: BLE001 - handed to the caller in wait()
            self.error = error

    def wait(self, timeout: float = 300.0) -> float:
        """Wait for the queue to fill; return the monotonic time it did. Always cleans up."""
        try:
            self._thread.join(timeout)
            if self.error is not None:
                raise RuntimeError(f"watching {self._queue} failed: {self.error}")
            if self.reached is None:
                raise RuntimeError(f"{self._queue} did not reach {self._messages} messages")
            return self.reached
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._broker.close()


def run_and_report(args: Any, title: str, measure: Callable[[str], Any]) -> int:
    """The end of every benchmark's main(): a network of its own, ``measure(url)``, the table.

    ``measure`` returns the results, or None when it printed something else (profiling).
    """
    raise_on_sigterm()
    print(machine_line())
    started = time.perf_counter()
    with network(args.url) as url:
        results = measure(url)
    if results is None:
        return 0
    print_results(title, results)
    write_json(args.json, results)
    print(f"\n(took {time.perf_counter() - started:.1f} s; {machine_line()})")
    return 0

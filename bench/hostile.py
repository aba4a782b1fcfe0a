"""Hostile input, case by case, on a network of its own: what the target did, whether a good
message sent right after still arrives (and how fast), the target's peak RSS, and its
queue's ready/unacknowledged counts 10 s later.

    python bench/hostile.py [--url URL] [--settle 10]

Needs RabbitMQ and ``rabbitmqctl`` (a vhost of its own with an ``mqsync-manager``
subprocess, as every benchmark here; a second vhost for the cases that stop and start a
manager).  Nothing is asserted: ``tests/test_hostile.py`` and ``tests/test_fuzz.py`` do
that; this prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import subprocess
import sys
import threading
import time
import uuid
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import kombu
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

import mqsync  # noqa: E402
from mqsync.chunk import encode_chunk  # noqa: E402
from mqsync.manager import Manager  # noqa: E402

MB = 1024 * 1024
T0 = 1_700_000_000_000_000_000


@dataclasses.dataclass
class Row:
    case: str
    target: str
    outcome: str
    good_after_s: float | None = None
    peak_rss_mb: float | None = None
    queue: str = ""
    counts: tuple[int, int] | None = None


class PeakRSS:
    """Peak resident set size of ``pid`` (this process by default), sampled every 10 ms."""

    def __init__(self, pid: int | None = None):
        self.process = psutil.Process(pid)
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler")

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def mb(self) -> float:
        return self.peak / MB


def publish_raw(url: str, body: bytes, exchange: str, routing_key: str, *,
                headers: dict | None = None, **properties: Any) -> None:
    with kombu.Connection(url, connect_timeout=10) as connection:
        channel = connection.channel()
        message = channel.prepare_message(body, None, "application/octet-stream", "binary",
                                          headers or {}, properties)
        channel.basic_publish(message, exchange=exchange, routing_key=routing_key)


def zlib_bomb(inflated: int = 512 * MB) -> bytes:
    compressor = zlib.compressobj(9)
    block = bytes(MB)
    return b"".join(compressor.compress(block) for _ in range(inflated // MB)) + \
        compressor.flush()


def queue_counts(url: str, queue: str) -> tuple[int, int] | None:
    vhost = unquote(urlsplit(url).path[1:]) or "/"
    result = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name",
                             "messages_ready", "messages_unacknowledged", "--no-table-headers"],
                            capture_output=True, text=True, timeout=60)
    for line in result.stdout.splitlines():
        fields = line.split("\t")
        if fields[0] == queue:
            return int(fields[1]), int(fields[2])
    return None


def manager_pid(url: str) -> int:
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "mqsync.cli.manager" in cmdline and url in cmdline:
            return process.pid
    raise RuntimeError(f"no mqsync-manager process serves {url}")


class Recorder(mqsync.Sink):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.times: set[int] = set()

    def on_chunk(self, metric: str, times_ns: Any, values: Any) -> None:
        self.times.update(times_ns)


def time_until(condition: Callable[[], bool], timeout: float = 2.0) -> float | None:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            return None
        time.sleep(0.005)
    return time.monotonic() - start


class Cases:
    def __init__(self, url: str, settle: float):
        self.url = url
        self.settle = settle
        self.manager = psutil.Process(manager_pid(url)).pid
        self.rows: list[Row] = []
        self.next_time = T0

    # a good chunk right after, to a sink
    def _good_chunk(self, sink: Recorder, metric: str) -> float | None:
        self.next_time += 1
        stamp = self.next_time
        publish_raw(self.url, encode_chunk([stamp], [1.0]), "metricq.data", metric)
        return time_until(lambda: stamp in sink.times)

    def _good_rpc(self, client: mqsync.Client) -> float | None:
        start = time.monotonic()
        try:
            client.get_metrics(timeout=2, metadata=False)
        except mqsync.MqsyncError:
            return None
        return time.monotonic() - start

    def sink_case(self, case: str, attack: Callable[[str], None], outcome: Callable[
            [mqsync.Sink], str]) -> None:
        metric = f"hostile.{uuid.uuid4().hex[:8]}"
        with Recorder("sink-hostile", self.url) as sink, PeakRSS() as rss:
            sink.subscribe([metric])
            attack(metric)
            good = self._good_chunk(sink, metric)
            time.sleep(self.settle)
            self.rows.append(Row(case, "Sink", outcome(sink), good, rss.mb, "its data queue",
                                 queue_counts(self.url, sink.data_queue or "")))

    def manager_case(self, case: str, attack: Callable[[mqsync.Client], str]) -> None:
        with mqsync.Client("client-hostile", self.url, add_uuid=True, rpc_timeout=10) as client, \
                PeakRSS(self.manager) as rss:
            outcome = attack(client)
            good = self._good_rpc(client)
            time.sleep(self.settle)
        self.rows.append(Row(case, "manager", outcome, good, rss.mb, "management",
                             queue_counts(self.url, "management")))

    def run(self) -> list[Row]:
        bomb = zlib_bomb()
        gzip = {"compression": "application/x-gzip"}
        self.sink_case(
            "poison: compression header, body not compressed",
            lambda m: publish_raw(self.url, b"\x00plain", "metricq.data", m, headers=gzip),
            lambda s: f"refused (refused_messages={s.stats()['refused_messages']}, "
                      f"reconnects={s.stats()['reconnects']})")
        self.sink_case(
            f"bomb: 5 x {len(bomb) / MB:.2f} MB inflating to 512 MiB each",
            lambda m: [publish_raw(self.url, bomb, "metricq.data", m, headers=gzip)
                       for _ in range(5)],
            lambda s: f"refused, never inflated (refused_messages="
                      f"{s.stats()['refused_messages']}, reconnects={s.stats()['reconnects']})")
        self.sink_case(
            "malformed chunk (random bytes)",
            lambda m: publish_raw(self.url, b"\xff" * 64, "metricq.data", m),
            lambda s: f"dropped (malformed_data_messages="
                      f"{s.stats()['malformed_data_messages']})")

        def rpc_bomb(client: mqsync.Client) -> str:
            publish_raw(self.url, bomb, "metricq.management", "get_metrics", headers=gzip,
                        reply_to=client.rpc_queue, correlation_id="x", app_id="attacker")
            return "refused, never inflated"

        def refused(function: str, **arguments: Any) -> Callable[[mqsync.Client], str]:
            def attack(client: mqsync.Client) -> str:
                try:
                    client.rpc(function, **arguments)
                except mqsync.RPCError as error:
                    return "refused: " + str(error).split(": ", 2)[-1][:70]
                return "ANSWERED (not refused)"
            return attack

        def nested(client: mqsync.Client) -> str:
            publish_raw(self.url, b"[" * 200_000 + b"]" * 200_000, "metricq.management",
                        "get_metrics", reply_to=client.rpc_queue, correlation_id="x",
                        app_id="attacker")
            return "dropped as malformed, no traceback"

        def redos(client: mqsync.Client) -> str:
            client.rpc("source.declare_metrics", metrics=["hostile." + "a" * 40 + "!"])
            start = time.monotonic()
            client.get_metrics(selector="(a+)+$", metadata=False)
            return f"answered in {1000 * (time.monotonic() - start):.1f} ms (RE2)"

        def bad_queue_then_work(client: mqsync.Client) -> str:
            outcome = refused("sink.subscribe", metrics=["hostile.x"], dataQueue=5)(client)
            client.rpc("source.declare_metrics", metrics={"hostile.after": {"unit": "V"}})
            with mqsync.Sink("sink-after", self.url) as sink:
                sink.subscribe(["hostile.after"])
            return outcome + "; later saves and subscriptions work"

        def foreign_release(client: mqsync.Client) -> str:
            with Recorder("victim", self.url) as victim:
                victim.subscribe(["hostile.victim"])
                outcome = refused("sink.release", dataQueue=victim.data_queue)(client)
                good = self._good_chunk(victim, "hostile.victim")
            return f"{outcome}; victim still receives ({good * 1000:.0f} ms)" if good \
                else f"{outcome}; VICTIM LOST ITS QUEUE"

        self.manager_case("RPC bomb: compressed get_metrics", rpc_bomb)
        self.manager_case("sink.subscribe with dataQueue: 5", bad_queue_then_work)
        self.manager_case("ReDoS: selector (a+)+$", redos)
        self.manager_case("sink.release of another client's queue", foreign_release)
        self.manager_case("sink.release of 'management'",
                          refused("sink.release", dataQueue="management"))
        self.manager_case("RPC nested 200 000 deep", nested)
        self.manager_case("empty metric name", refused("sink.subscribe", metrics=[""]))
        self.manager_case("get_metrics selector: 5", refused("get_metrics", selector=5))
        return self.rows


@contextlib.contextmanager
def vhost_of_its_own(url: str) -> Iterator[str]:
    parts = urlsplit(url)
    vhost = f"mqsync-hostile-{uuid.uuid4().hex[:6]}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, timeout=60)
    subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", vhost,
                    parts.username or "guest", ".*", ".*", ".*"], check=True, timeout=60)
    try:
        yield urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], timeout=60)


def manager_down_cases(url: str, settle: float) -> list[Row]:
    """A request whose caller gave up while the manager was down, and one still waiting."""
    rows = []
    with vhost_of_its_own(url) as own:
        first = Manager(own, token="manager-hostile")
        first.start()
        first.stop()
        with mqsync.Client("sink-stale", own, rpc_timeout=1) as client, PeakRSS() as rss:
            with contextlib.suppress(mqsync.RPCTimeout):
                client.rpc("sink.subscribe", metrics=["hostile.stale"], timeout=1.0)
            dropped = time_until(lambda: queue_counts(own, "management") == (0, 0), 10)
            replies: list = []
            waiting = threading.Thread(target=lambda: replies.append(client.rpc(
                "sink.subscribe", metrics=["hostile.waiting"], timeout=30)))
            waiting.start()
            time_until(lambda: queue_counts(own, "management") == (1, 0), 10)
            started = time.monotonic()
            second = Manager(own, token="manager-hostile")
            second.start()
            waiting.join(30)
            answered = time.monotonic() - started
            data_queues = [q for q in subprocess.run(
                ["rabbitmqctl", "-q", "list_queues", "-p", urlsplit(own).path[1:], "name",
                 "--no-table-headers"], capture_output=True, text=True,
                timeout=60).stdout.split() if q.endswith("-data")]
            time.sleep(settle)
            counts = queue_counts(own, "management")
            second.stop()
        rows.append(Row("stale RPC (caller timed out, manager down)", "broker/manager",
                        f"expired unread after {dropped:.1f} s; never executed "
                        f"({len(data_queues)} data queue(s) made, the waiting request's)"
                        if dropped is not None else "NOT DROPPED", None, rss.mb, "management",
                        counts))
        rows.append(Row("start-up race (request waiting in the queue)", "manager",
                        f"answered {answered:.2f} s after the manager started" if replies
                        else "NOT ANSWERED", answered if replies else None, None, "management",
                        counts))
    return rows


def secret_row() -> Row:
    password = "Pw#s3cr/et?x"
    try:
        mqsync.Client("client-x", f"amqp://guest:{password}@127.0.0.1:5999/")
    except mqsync.ConfigError as error:
        leaked = any(piece in str(error) for piece in ("Pw", "s3cr", "et?x"))
        return Row("password with # / ? unencoded in the URL", "every client and command",
                   ("LEAKED: " if leaked else "refused, masked: ") + str(error)[:60] + "...")
    return Row("password with # / ? unencoded in the URL", "client", "ACCEPTED")


def database_row(url: str) -> Row:
    """+inf and -inf in different seconds, and NaN, in mqsync-db: aggregates answer."""
    import tempfile

    from mqsync.db.server import Db

    metric = f"hostile.edge.{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory() as directory, \
            Db("db-hostile", url, database=Path(directory) / "edge.sqlite",
               metrics=[metric]) as db, \
            mqsync.Source("source-hostile", url) as source, \
            mqsync.HistoryClient("history-hostile", url) as history, PeakRSS() as rss:
        source.send_many(metric, [T0, T0 + 1_500_000_000, T0 + 3_000_000_000],
                         [math.inf, -math.inf, math.nan])
        source.flush()
        time_until(lambda: db.stats().get("stored_points", 0) >= 2, 10)
        try:
            aggregate = history.history_aggregate(metric, T0 - 1, T0 + 4_000_000_000,
                                                  timeout=10)
            outcome = f"aggregate answered: sum={aggregate.sum} min={aggregate.minimum} " \
                      f"max={aggregate.maximum} count={aggregate.count}"
        except mqsync.MqsyncError as error:
            outcome = f"ERROR: {error}"
    return Row("+inf, -inf in different seconds and NaN", "mqsync-db", outcome, None, rss.mb)


def print_table(rows: list[Row]) -> None:
    print("| case | target | what it did | good message after | peak RSS | queue "
          "ready/unacked after settle |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        good = "-" if row.good_after_s is None else f"{row.good_after_s * 1000:.1f} ms"
        rss = "-" if row.peak_rss_mb is None else f"{row.peak_rss_mb:.0f} MB"
        counts = "-" if row.counts is None else f"{row.queue}: {row.counts[0]}/{row.counts[1]}"
        print(f"| {row.case} | {row.target} | {row.outcome} | {good} | {rss} | {counts} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=_common.default_url())
    parser.add_argument("--settle", type=float, default=10.0,
                        help="seconds to wait before reading the queue counts (default 10)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    print(_common.machine_line())
    with _common.network(args.url) as url:
        rows = Cases(url, args.settle).run()
        rows.append(database_row(url))
    rows.extend(manager_down_cases(args.url, args.settle))
    rows.append(secret_row())
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

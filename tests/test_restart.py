"""Nothing lost, proven: RabbitMQ restarted under a running MetricQ network.

A private RabbitMQ node (tests/_rabbit_node.py; the shared broker is never touched) runs an
``mqsync-manager`` subprocess.  One Source streams 100 000 points at 20 000 points/s
(chunks of 100) to three receivers at once: a Sink, a DurableSink and a Subscriber that
subscribed before the stream and collects after it.  A third of the way through, the node
goes down for at least 5 s (``stop_app``/``start_app``, or a full stop and start) and every
outage is proven (the stop succeeded and the AMQP port refused connections; a full restart
also changed the Erlang VM's pid).  Every receiver must get every point: whole chunks may
arrive twice, none may be missing.

``pytest -s`` prints one row per receiver: setup, outage, sent, received, lost, duplicates
and recovery (seconds from the broker's AMQP port being open again until all points were
received; for the Subscriber, until the source had all of them confirmed, i.e. queued).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest

import mqsync
from tests._rabbit_node import RabbitNode
from tests._stream import (
    CHUNK,
    RATE,
    T0,
    N,
    RecordingDurableSink,
    Streamer,
    analyse,
    print_rows,
    values_match,
)
from tests._support import RecordingSink, wait_until
from tests.conftest import ManagerProcess

pytestmark = [pytest.mark.broker, pytest.mark.slow]

OUTAGE_S = 5.0
#: Bound on every wait for data after the broker is back.
RECOVERY_TIMEOUT = 60.0
RECONNECT_TIMEOUT = 120.0  # clients give up only far beyond any outage here

_ROWS: list[tuple] = []
_HEADER = ("setup", "outage", "receiver", "sent", "received", "lost", "duplicates",
           "recovery s")


def _print_rows(rows: list[tuple]) -> None:
    print_rows(_HEADER, rows, (30, 8, 12, 7, 9, 6, 10, 10), left=3)


# -- the manager on the private node ------------------------------------------------------

class NetworkOnNode:
    """The private node and the manager serving it (restartable)."""

    def __init__(self, node: RabbitNode, directory: Path):
        self.node = node
        self.directory = directory
        (directory / "clients").mkdir(exist_ok=True)
        self.manager = self._start_manager()

    @property
    def url(self) -> str:
        return self.node.url

    def _start_manager(self) -> ManagerProcess:
        manager = ManagerProcess(self.node.url, self.directory / "clients",
                                self.directory / "metadata.json",
                                self.directory / "manager.log")
        try:
            manager.wait_ready(timeout=60)
        except BaseException:
            manager.stop()
            raise
        return manager

    def kill9_manager(self) -> None:
        self.manager.kill9()

    def restart_manager(self) -> None:
        self.manager = self._start_manager()

    def check_manager_alive(self) -> None:
        assert self.manager.process.poll() is None, \
            f"mqsync-manager died: {self.manager.log_tail()}"

    def stop(self) -> None:
        if self.manager.process.poll() is None:
            self.manager.stop()
        elif not self.manager.process.stderr.closed:
            self.manager.process.stderr.close()


@pytest.fixture(scope="module")
def network(rabbit_node, tmp_path_factory):
    network = NetworkOnNode(rabbit_node, tmp_path_factory.mktemp("restart-manager"))
    try:
        yield network
    finally:
        network.stop()
        if _ROWS:
            print("\n\nNothing lost, proven: every receiver of every run")
            _print_rows(_ROWS)


# -- receivers ---------------------------------------------------------------------------

# -- streaming and outages ---------------------------------------------------------------

def _outage(node: RabbitNode, kind: str, during: Callable[[], None] | None = None) -> float:
    """Take the node down for at least OUTAGE_S seconds; return when its AMQP port opened
    again (time.monotonic()).

    The outage is proven by RabbitNode (stop succeeded, port down; a restart changes the
    VM's pid) and counted in ``node.outages``.  ``during()`` runs while it is down.
    """
    before = node.outages
    if kind == "stop_app":
        node.stop_app()
        down = time.monotonic()
        if during is not None:
            during()
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down)))
        node.start_app()
    elif kind == "restart":
        old_pid = node.stop()
        down = time.monotonic()
        if during is not None:
            during()
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down)))
        node.start(old_pid=old_pid)
    else:
        raise ValueError(kind)
    assert node.outages == before + 1, "the outage was not proven"
    assert node.up_at is not None
    back = node.up_at  # the AMQP port accepts connections again
    assert back - down >= OUTAGE_S
    return back


def _confirmed_points(source: mqsync.Source) -> int:
    return int(getattr(source, "sent_points", 0))


RESUBSCRIBED = "is gone; subscribing"  # what a sink logs when its queue had to be recreated


def _run_three_receivers(network: NetworkOnNode, tmp_path: Path, caplog: Any, setup: str,
                         kind: str, spool: bool, *, kill_manager: bool = False) -> list[tuple]:
    """The stream to a Sink, a DurableSink and a Subscriber with one outage; the rows."""
    url = network.url
    u = uuid.uuid4().hex[:8]
    metric = f"restart.{u}.stream"
    common: dict[str, Any] = {"reconnect_timeout": RECONNECT_TIMEOUT, "rpc_timeout": 20,
                              "connect_timeout": 30}
    manager_down_recovery: dict[str, bool] = {}
    with mqsync.Subscriber(f"sub-{u}", url, metrics=[metric], expires=600,
                           **common) as subscriber, \
            RecordingSink(f"sink-{u}", url, **common) as sink, \
            RecordingDurableSink(f"sink-durable-{u}", url, **common) as durable:
        sink.subscribe([metric])
        durable.subscribe([metric])
        with mqsync.Source(f"source-{u}", url, chunk_size=CHUNK,
                           spool=tmp_path / "spool.db" if spool else None,
                           **common) as source:
            source.declare_metrics({metric: {"rate": RATE, "unit": ""}})
            streamer = Streamer(source, metric)
            streamer.start()
            try:
                assert streamer.third.wait(30), "the stream did not reach a third"
                assert streamer.error is None, streamer.error
                during = network.kill9_manager if kill_manager else None
                back = _outage(network.node, kind, during)
            finally:
                streamer.join(60)
            assert not streamer.is_alive(), "the stream did not end"
            if streamer.error is not None:
                raise streamer.error

            # Recovery: first moment each receiver holds everything (bounded).
            done: dict[str, float] = {}
            deadline = back + RECOVERY_TIMEOUT
            checks = {"source confirmed": lambda: _confirmed_points(source) >= N,
                      "Sink": lambda: sink.distinct(metric) == N,
                      "DurableSink": lambda: durable.distinct(metric) == N}
            try:
                while len(done) < len(checks) and time.monotonic() < deadline:
                    for name, check in checks.items():
                        if name not in done and check():
                            done[name] = time.monotonic() - back
                    time.sleep(0.05)
            finally:
                if kill_manager:
                    # everything above happened with no manager: now it comes back
                    manager_down_recovery = {name: name in done for name in checks}
                    network.restart_manager()
            source.flush(timeout=RECOVERY_TIMEOUT)
            source_reconnects = source._data.reconnects
            source_stats = source.stats()
        sink_reconnects = sink._data.reconnects
        durable_reconnects = durable._data.reconnects
        collect_start = time.monotonic()
        collected = [(m, t.posix_ns, v) for m, t, v in subscriber.collect_data(timeout=30)]
        collect_s = time.monotonic() - collect_start
    # released at the end, durable queues too: the sinks' at stop, the Subscriber's by its
    # Drain (and an official sink's auto-delete queue goes with it: see the interop tests)
    assert wait_until(lambda: not [q for q in network.node.list_queues()
                                   if u in q and q.endswith("-data")], timeout=10,
                      interval=0.5), f"data queues left: {network.node.list_queues()}"

    outage = kind + ("+mgr kill-9" if kill_manager else "")
    rows = []
    results = {}
    for name, points, recovery in (
            ("Sink", sink.points, done.get("Sink")),
            ("DurableSink", durable.points, done.get("DurableSink")),
            ("Subscriber", collected, done.get("source confirmed"))):
        times = [t for m, t, _ in points if m == metric]
        received, lost, duplicates = analyse(times)
        results[name] = (lost, values_match(points))
        rows.append((setup, outage, name, N, received, lost, duplicates, recovery))
    _ROWS.extend(rows)
    _print_rows(rows)
    print(f"  source: reconnects {source_reconnects}, stats {source_stats}; sink reconnects "
          f"{sink_reconnects}, durable sink reconnects {durable_reconnects}; collect "
          f"{collect_s:.2f} s; stream late by {streamer.late_s:.2f} s at worst"
          + (f"; recovered without manager: {manager_down_recovery}" if kill_manager else ""))

    network.check_manager_alive()
    assert source_reconnects >= 1, "the source never reconnected: was there an outage?"
    assert sink_reconnects >= 1 and durable_reconnects >= 1
    # durable queues survived: the sinks consumed them again without asking the manager
    assert not [r for r in caplog.records if RESUBSCRIBED in r.getMessage()]
    for name, (_, values_ok) in results.items():
        assert values_ok, f"{name}: a value does not match its timestamp"
    assert {name: lost for name, (lost, _) in results.items()} == \
        {"Sink": 0, "DurableSink": 0, "Subscriber": 0}, "points were lost"
    if kill_manager:
        assert manager_down_recovery.get("Sink") and manager_down_recovery.get("DurableSink"), \
            "the sinks did not recover while the manager was down"
    return rows


# -- the tests ---------------------------------------------------------------------------

@pytest.mark.timeout(150)
@pytest.mark.parametrize("spool", [False, True], ids=["no-spool", "spool"])
@pytest.mark.parametrize("kind", ["stop_app", "restart"])
def test_restart_mid_stream_loses_nothing(network, tmp_path, caplog, kind, spool):
    setup = "Source " + ("with spool" if spool else "without spool")
    _run_three_receivers(network, tmp_path, caplog, setup, kind, spool)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["stop_app", "restart", "kill9"])
def test_waiting_chunks_survive_a_restart(network, kind):
    """1 000 chunks wait in a subscription's queue (nobody consumes yet) across an outage."""
    url = network.url
    u = uuid.uuid4().hex[:8]
    metric = f"restart.{u}.waiting"
    common = {"reconnect_timeout": RECONNECT_TIMEOUT, "rpc_timeout": 20}
    with mqsync.Subscriber(f"sub-{u}", url, metrics=[metric], expires=600,
                           **common) as subscriber:
        with mqsync.Source(f"source-{u}", url, chunk_size=CHUNK, **common) as source:
            for k in range(0, N, CHUNK):
                times = list(range(T0 + k, T0 + k + CHUNK))
                source.send_many(metric, times, [float(t - T0) for t in times])
            source.flush(timeout=60)
        queue = subscriber.queue
        assert wait_until(lambda: network.node.list_queues().get(queue, {}).get(
            "messages_ready") == N // CHUNK, timeout=30), network.node.list_queues().get(queue)
        before = network.node.list_queues()[queue]
        if kind == "stop_app":
            network.node.stop_app()
            network.node.start_app()
        elif kind == "restart":
            network.node.restart()
        else:
            network.node.kill9()
        after = network.node.list_queues().get(queue)
        back = time.monotonic()
        collected = [(m, t.posix_ns, v) for m, t, v in subscriber.collect_data(timeout=30)]
        collect_s = time.monotonic() - back
    times = [t for m, t, _ in collected if m == metric]
    received, lost, duplicates = analyse(times)
    row = ("1000 chunks waiting", kind, "Subscriber", N, received, lost, duplicates, collect_s)
    _ROWS.append(row)
    _print_rows([row])
    print(f"  queue before: {before}; after: {after}")
    network.check_manager_alive()
    assert after is not None, "the queue did not survive the restart"
    assert after["durable"] is True
    assert after["messages_ready"] == N // CHUNK, "waiting chunks were dropped by the restart"
    assert lost == 0 and values_match(collected)


@pytest.mark.timeout(150)
def test_manager_killed_while_the_broker_restarts(network, tmp_path, caplog):
    """kill -9 of the manager while the broker does stop_app/start_app: the sinks recover
    without it (their durable queues are still there), the manager comes back after them."""
    _run_three_receivers(network, tmp_path, caplog, "Source without spool", "stop_app", False,
                         kill_manager=True)


@pytest.mark.timeout(90)
def test_a_transient_sink_gets_its_queue_again_after_a_restart(network, caplog):
    """Sink(durable=False): the official queue model (auto-delete, gone with the broker);
    after the restart the sink finds its queue gone and has the manager declare it again,
    identically (no 406), and receives what is sent from then on."""
    url = network.url
    u = uuid.uuid4().hex[:8]
    metric = f"restart.{u}.transient"
    common = {"reconnect_timeout": RECONNECT_TIMEOUT, "rpc_timeout": 20}
    with RecordingSink(f"sink-{u}", url, durable=False, **common) as sink:
        sink.subscribe([metric])
        queue = sink.data_queue
        declared = network.node.list_queues()[queue]
        assert (declared["durable"], declared["auto_delete"]) == (False, True)
        network.node.stop_app()
        network.node.start_app()
        assert wait_until(lambda: sink._data.reconnects >= 1 and queue in
                          network.node.list_queues(), timeout=30, interval=0.2)
        assert [r for r in caplog.records if RESUBSCRIBED in r.getMessage()], \
            "the sink did not notice that its queue was gone"
        redeclared = network.node.list_queues()[queue]
        assert (redeclared["durable"], redeclared["auto_delete"]) == (False, True)
        with mqsync.Source(f"source-{u}", url, chunk_size=CHUNK, **common) as source:
            for k in range(0, 10 * CHUNK, CHUNK):
                times = list(range(T0 + k, T0 + k + CHUNK))
                source.send_many(metric, times, [float(t - T0) for t in times])
            source.flush(timeout=30)
        assert wait_until(lambda: sink.distinct(metric) == 10 * CHUNK, timeout=30)
    network.check_manager_alive()

"""A MetricQ network on a private 3-node RabbitMQ cluster: quorum queues, clients that fail
over, standby managers.  Nodes are killed with ``kill -9``, for real.

The network: two ``mqsync-manager --standby --queue-type quorum`` processes (the active
one connected to node 1 first, the standby to node 2 first); sinks (a Sink, a DurableSink
and a Subscriber) connected to node 1 first, a Source to node 0 first.  Every queue that
keeps data is a quorum queue, its leader on node 1 (where the manager that declared it is
connected), replicated on all three.

Each stream is 100 000 points at 20 000 points/s in chunks of 100.  A third of the way
through, one node is killed with ``kill -9`` and stays down until the stream is received;
the kill is proven (the Erlang VM's pid is gone, its AMQP port refuses, the other nodes no
longer list it as running), and so is the fail-over (the client's connection count of
fail-overs, and the node the broker lists its connection on).  Every receiver must get
every point; whole chunks may arrive twice (a chunk resent after a fail-over), never parts.

``pytest -s`` prints one row per receiver: the node killed, received, lost, duplicates, the
fail-over time of the clients of the killed node (from the loss of the connection to the
connection to another node being set up again) and the time from the kill until the
receiver had every point.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import mqsync
from tests._rabbit_node import RabbitCluster
from tests._stream import (
    CHUNK,
    RATE,
    N,
    RecordingDurableSink,
    Streamer,
    analyse,
    print_rows,
    values_match,
)
from tests._support import RecordingSink, wait_until
from tests.conftest import StandbyPair

pytestmark = [pytest.mark.broker, pytest.mark.slow]

SOURCE_NODE, SINK_NODE, STANDBY_NODE = 0, 1, 2
#: Bound on every wait for data after the kill.
RECOVERY_TIMEOUT = 90.0
COMMON: dict[str, Any] = {"reconnect_timeout": 120, "rpc_timeout": 20, "connect_timeout": 30}

_ROWS: list[tuple] = []
_HEADER = ("killed", "receiver", "sent", "received", "lost", "duplicates", "fail-over s",
           "complete s")


def _print_rows(rows: list[tuple]) -> None:
    print_rows(_HEADER, rows, (11,) * len(_HEADER))


class ClusterNetwork:
    """The cluster and its two standby managers (started again by :meth:`new_managers`:
    the first one started is the active one)."""

    def __init__(self, cluster: RabbitCluster, directory: Path):
        self.cluster = cluster
        self.directory = directory
        self.pair = self._start_managers()

    def _start_managers(self) -> StandbyPair:
        cluster = self.cluster
        return StandbyPair([cluster.url(first=SINK_NODE), cluster.url(first=STANDBY_NODE)],
                           self.directory, "--queue-type", "quorum",
                           node=cluster.nodes[STANDBY_NODE].name)

    def new_managers(self) -> StandbyPair:
        self.pair.stop()
        self.pair = self._start_managers()
        return self.pair


@pytest.fixture(scope="module")
def network(rabbit_cluster, tmp_path_factory):
    network = ClusterNetwork(rabbit_cluster, tmp_path_factory.mktemp("cluster-managers"))
    try:
        yield network
    finally:
        network.pair.stop()
        if _ROWS:
            print("\n\nA node of the cluster killed with kill -9 mid-stream: every receiver")
            _print_rows(_ROWS)


def _node_index(cluster: RabbitCluster, io: Any) -> int | None:
    """The index of the node an IO thread is connected to (from its connected URL)."""
    url = io.connected_url
    if url is None:
        return None
    port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
    node = cluster.node_of_port(port)
    return None if node is None else cluster.nodes.index(node)


def _stream_through_a_kill(network: ClusterNetwork, killed: int) -> None:
    cluster = network.cluster
    u = uuid.uuid4().hex[:8]
    metric = f"cluster.{u}.stream"
    sinks_url, source_url = cluster.url(first=SINK_NODE), cluster.url(first=SOURCE_NODE)
    with mqsync.Subscriber(f"sub-{u}", sinks_url, metrics=[metric], expires=600,
                           **COMMON) as subscriber, \
            RecordingSink(f"sink-{u}", sinks_url, **COMMON) as sink, \
            RecordingDurableSink(f"sink-durable-{u}", sinks_url, **COMMON) as durable:
        sink.subscribe([metric])
        durable.subscribe([metric])
        queues = cluster.list_queues()
        for queue in (sink.data_queue, durable.data_queue, subscriber.queue):
            assert queues[queue]["type"] == "quorum", queues[queue]
        with mqsync.Source(f"source-{u}", source_url, chunk_size=CHUNK, **COMMON) as source:
            source.declare_metrics({metric: {"rate": RATE, "unit": ""}})
            # where everyone is, as the broker sees it
            assert cluster.node_of_connection(f"mqsync-source-{u}-data") is \
                cluster.nodes[SOURCE_NODE]
            assert cluster.node_of_connection(f"mqsync-{sink.token}-data-io") is \
                cluster.nodes[SINK_NODE]
            victims = [c for c in (source, sink, durable)
                       if _node_index(cluster, c._data) == killed]
            assert victims, "no client is connected to the node to kill"
            streamer = Streamer(source, metric)
            streamer.start()
            try:
                assert streamer.third.wait(30), "the stream did not reach a third"
                assert streamer.error is None, streamer.error
                cluster.kill9(killed, restart=False)
                killed_at = time.monotonic()
                assert cluster.nodes[killed].name not in cluster.running_nodes(), \
                    "the killed node is still listed as running"
            finally:
                streamer.join(60)
            assert not streamer.is_alive(), "the stream did not end"
            if streamer.error is not None:
                raise streamer.error
            done: dict[str, float] = {}
            checks = {"Source confirmed": lambda: getattr(source, "sent_points", 0) >= N,
                      "Sink": lambda: sink.distinct(metric) == N,
                      "DurableSink": lambda: durable.distinct(metric) == N}
            deadline = killed_at + RECOVERY_TIMEOUT
            while len(done) < len(checks) and time.monotonic() < deadline:
                for name, check in checks.items():
                    if name not in done and check():
                        done[name] = time.monotonic() - killed_at
                time.sleep(0.05)
            source.flush(timeout=RECOVERY_TIMEOUT)
            failovers = {type(c).__name__: (c._data.failovers, c._data.last_outage)
                         for c in victims}
            moved_to = {type(c).__name__: _node_index(cluster, c._data) for c in victims}
        collected = [(m, t.posix_ns, v) for m, t, v in subscriber.collect_data(timeout=60)]
    rows = []
    lost = {}
    failover_s = max(outage or 0.0 for _, outage in failovers.values())
    for name, points, complete in (("Sink", sink.points, done.get("Sink")),
                                   ("DurableSink", durable.points, done.get("DurableSink")),
                                   ("Subscriber", collected, done.get("Source confirmed"))):
        received, lost[name], duplicates = analyse([t for m, t, _ in points if m == metric])
        assert values_match(points), f"{name}: a value does not match its time"
        rows.append(({SOURCE_NODE: "source's", SINK_NODE: "sinks'"}.get(killed, str(killed)),
                     name, N, received, lost[name], duplicates, failover_s, complete))
    _ROWS.extend(rows)
    _print_rows(rows)
    print(f"  fail-overs (count, outage s) {failovers}; now on nodes {moved_to}; stream late "
          f"by {streamer.late_s:.2f} s at worst")
    for name, (count, _) in failovers.items():
        assert count >= 1, f"{name} did not fail over to another node"
    for name, index in moved_to.items():
        assert index not in (None, killed), f"{name} is on node {index}"
    assert lost == {"Sink": 0, "DurableSink": 0, "Subscriber": 0}, "points were lost"


@pytest.fixture
def revive(network):
    """Bring every killed node back after the test (and prove it rejoined)."""
    yield
    for i, node in enumerate(network.cluster.nodes):
        if not node.amqp_up():
            network.cluster.restart_node(i)


@pytest.mark.timeout(240)
def test_kill9_of_the_active_manager_mid_stream(network, revive):
    """kill -9 of the active manager (not of a node): new clients register through the
    standby within 5 s (their RPC timeout), and the stream goes on untouched.

    The new sink also leaves mid-stream, and its quorum queue is deleted: RabbitMQ 3.10
    closes a channel that publishes to a quorum queue while it is deleted (541
    INTERNAL_ERROR, a ``case_clause`` in ``rabbit_channel:deliver_to_queues``); a Sink unbinds
    its queue before it has it released, so the source is not disturbed either."""
    cluster = network.cluster
    pair = network.new_managers()
    victim, other = pair.active, pair.standby
    u = uuid.uuid4().hex[:8]
    metric = f"cluster.{u}.managers"
    url = cluster.url(first=SINK_NODE)
    with mqsync.Client(f"probe-{u}", url, **COMMON) as probe, \
            RecordingSink(f"sink-{u}", url, **COMMON) as sink:
        sink.subscribe([metric])
        with mqsync.Source(f"source-{u}", cluster.url(first=SOURCE_NODE), chunk_size=CHUNK,
                           **COMMON) as source:
            source.declare_metrics({metric: {"rate": RATE, "unit": "J"}})
            streamer = Streamer(source, metric)
            streamer.start()
            try:
                assert streamer.third.wait(30)
                victim.kill9()
                killed = time.monotonic()
                metadata = probe.get_metrics(selector=[metric], timeout=20)
                first_answer_s = time.monotonic() - killed
                with RecordingSink(f"late-{u}", url, rpc_timeout=5, connect_timeout=5) \
                        as late:
                    late.subscribe([metric], timeout=5)
                register_s = time.monotonic() - killed
            finally:
                streamer.join(60)
            if streamer.error is not None:
                raise streamer.error
            source.flush(timeout=60)
            stats = source.stats()
        assert wait_until(lambda: sink.distinct(metric) == N, timeout=60), \
            sink.distinct(metric)
        sink_stats = sink.stats()
    received, lost, duplicates = analyse([t for m, t, _ in sink.points if m == metric])
    print(f"\nactive manager killed: the standby answered {first_answer_s:.3f} s after "
          f"the kill, a new sink was registered and subscribed {register_s:.3f} s after "
          f"it; Sink {received}/{N}, {lost} lost, {duplicates} duplicates")
    assert metadata[metric]["unit"] == "J"
    assert "took over" in other.log_tail(50_000)
    assert lost == 0
    assert stats["reconnects"] == 0 and sink_stats["reconnects"] == 0


@pytest.mark.timeout(300)
def test_kill9_of_the_sources_node_loses_nothing(network, revive):
    _stream_through_a_kill(network, SOURCE_NODE)


@pytest.mark.timeout(300)
def test_kill9_of_the_sinks_node_loses_nothing(network, revive):
    """The sinks' node is also where the queues' leaders and the active manager are: the
    queues elect new leaders, the manager's standby takes over, the sinks fail over."""
    standby = network.pair.standby
    _stream_through_a_kill(network, SINK_NODE)
    # the Subscriber's collection asked the manager after the kill: the standby answered
    assert "took over" in standby.log_tail(50_000)

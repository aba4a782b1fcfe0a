"""Broker node lists: a client given several nodes connects to one that accepts and fails
over to the next when its node goes.

The nodes here are two loopback proxies in front of the shared broker (one network seen
through two addresses); a proxy that refuses is a node that is down.  The real thing,
``kill -9`` of a node of a private 3-node cluster, is in tests/test_cluster.py.
"""

from __future__ import annotations

import socket
import uuid

import pytest

import mqsync
from mqsync.connection import IOThread
from mqsync.manager import Manager
from mqsync.names import derive_address, join_urls, split_urls
from tests._proxy import FaultProxy
from tests._support import RecordingSink, wait_until

T0 = 1_700_000_000_000_000_000


def _dead_url() -> str:
    """The URL of a port nobody listens on (a node that is down)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"amqp://guest:secret-x@127.0.0.1:{port}/"


# -- names -----------------------------------------------------------------------------

def test_a_node_list_is_one_string_or_a_list():
    nodes = ["amqp://u:p@h1/", "amqp://u:p@h2:5673/v"]
    assert join_urls(nodes) == "amqp://u:p@h1/;amqp://u:p@h2:5673/v"
    assert split_urls(join_urls(nodes)) == nodes
    assert join_urls("amqp://h/") == "amqp://h/"
    # a ';' inside a password is not a separator: only one before a scheme is
    assert split_urls("amqp://u:a;b@h1/;amqps://h2/") == ["amqp://u:a;b@h1/", "amqps://h2/"]
    with pytest.raises(ValueError, match="empty"):
        join_urls([])
    with pytest.raises(TypeError, match="every broker URL must be a str"):
        join_urls(["amqp://h/", 5])
    with pytest.raises(TypeError, match="a str or a list of str"):
        join_urls(5)  # type: ignore[arg-type]


def test_derive_address_keeps_every_node():
    management = "amqp://u:p%40ss@h1:5672/net;amqp://u:p%40ss@h2:5672/net"
    assert derive_address(management, "vhost:data") == \
        "amqp://u:p%40ss@h1:5672/data;amqp://u:p%40ss@h2:5672/data"
    # a data cluster announced by the manager gets the management credentials
    assert derive_address(management, "amqp://d1/;amqp://other@d2:5673/") == \
        "amqp://u:p%40ss@d1/;amqp://u:p%40ss@d2:5673/"


def test_the_manager_announces_a_data_cluster_without_credentials():
    manager = Manager("amqp://u:p@h1/", data_url=["amqp://u:p@d1/", "amqp://u:p@d2/"])
    assert manager.data_server_address == "amqp://d1/;amqp://d2/"
    shared = Manager(["amqp://u:p@h1/net", "amqp://u:p@h2/net"])
    assert shared.data_server_address == "vhost:net"


def test_a_client_takes_a_list_and_never_shows_its_passwords():
    client = mqsync.Client("c", ["amqp://u:secret-1@h1/", "amqp://u:secret-2@h2/"])
    assert client.url == "amqp://u:******@h1/;amqp://u:******@h2/"
    assert "secret" not in repr(client)
    with pytest.raises(mqsync.ConfigError, match="percent-encoded"):
        mqsync.Client("c", ["amqp://u:ok@h1/", "amqp://u:bad#pw@h2/"])


# -- failing over ----------------------------------------------------------------------

@pytest.mark.broker
@pytest.mark.timeout(60)
def test_a_dead_first_node_is_passed_over(broker_url):
    io = IOThread(join_urls([_dead_url(), broker_url]), "test-failover-io")
    io.start(10)
    try:
        assert io.connected_url is not None
        assert io.connected_url.endswith(broker_url.rsplit("@", 1)[1])
        assert "secret-x" not in io.connected_url
    finally:
        io.stop()
    with pytest.raises(mqsync.ConnectFailed) as caught:
        IOThread(join_urls([_dead_url(), _dead_url()]), "test-failover-none").start(5)
    assert "secret-x" not in str(caught.value)


@pytest.mark.broker
@pytest.mark.timeout(90)
def test_a_source_and_a_sink_fail_over_when_their_node_goes(broker_url, manager):
    """Both connect through proxy A (first in their lists); A then refuses everything: they
    go on through B, with every point delivered."""
    u = uuid.uuid4().hex[:8]
    metric = f"failover.{u}.points"
    a, b = FaultProxy(), FaultProxy()
    try:
        nodes = [a.url(broker_url), b.url(broker_url)]
        with RecordingSink(f"sink-{u}", nodes) as sink:
            sink.subscribe([metric])
            with mqsync.Source(f"source-{u}", nodes, chunk_size=10) as source:
                source.send_many(metric, list(range(T0, T0 + 500)), [1.0] * 500)
                source.flush(timeout=30)
                assert wait_until(lambda: sink.distinct(metric) == 500, timeout=30)
                assert source._data.connected_url.endswith(f":{a.port}/" +
                                                           broker_url.rsplit("/", 1)[1])
                connections_on_b = b.connections
                a.refuse()  # node A is down: every connection through it is cut
                # both connections of both clients: management and data
                assert wait_until(lambda: all(io.failovers >= 1 for io in (
                    source._data, source._management, sink._data, sink._management)),
                    timeout=30)
                source.send_many(metric, list(range(T0 + 500, T0 + 1000)), [2.0] * 500)
                source.flush(timeout=30)
                assert wait_until(lambda: sink.distinct(metric) == 1000, timeout=30), \
                    sink.distinct(metric)
                assert f":{b.port}/" in source._data.connected_url
                assert source._data.last_outage is not None
                stats = source.stats()
        assert a.cut_connections >= 4  # both clients' management and data connections
        assert b.connections >= connections_on_b + 4
        assert stats["lost_points"] == 0 and stats["reconnects"] >= 2
    finally:
        a.close()
        b.close()


@pytest.mark.broker
@pytest.mark.timeout(60)
def test_a_node_that_never_answers_leaves_time_for_the_next(broker_url):
    """The first node accepts TCP but never speaks AMQP (a frozen VM): the round over the
    nodes shares the connect timeout, so the second node is reached within it."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        io = IOThread(join_urls([f"amqp://guest:guest@127.0.0.1:{port}/", broker_url]),
                      "test-failover-silent", connect_timeout=6)
        io.start(5)  # one node alone would have 6 s: the first would use them all
        try:
            assert io.connected_url is not None and f":{port}/" not in io.connected_url
        finally:
            io.stop()

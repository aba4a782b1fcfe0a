"""The private 3-node RabbitMQ cluster fixture (tests/_rabbit_node.py) does what it says.

One cluster for the module (the shared broker is never touched): it formed (``cluster_status``
lists three running nodes on three ports), a quorum queue survives a ``kill -9`` of its leader
(a new leader is elected, all 100 confirmed persistent messages are consumed through another
node) and the killed node rejoins by itself; ``node_of_connection`` finds a client connection
on the node it is connected to; and what RabbitMQ 3.10 answers, through a surviving node, for
the queues of a killed node (an exclusive one, a transient one, a durable classic one).

``pytest -s`` prints the cluster's boot time and how long the quorum queue's leader election
took; they are measured, never asserted.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from typing import Any, Callable, Iterator

import amqp
import kombu
import pytest

from tests._rabbit_node import RabbitCluster, _port_open

pytestmark = [pytest.mark.broker, pytest.mark.slow]

N_MESSAGES = 100
#: Bound on every wait for the cluster to settle (a leader elected, a node seen down).
SETTLE_TIMEOUT = 60.0


def _wait_for(what: str, probe: Callable[[], Any], timeout: float = SETTLE_TIMEOUT,
              interval: float = 0.05) -> Any:
    """Call ``probe`` until it returns something true; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:g} s (last: {result!r})")
        time.sleep(interval)


@contextlib.contextmanager
def _connection(url: str, name: str | None = None) -> Iterator[kombu.Connection]:
    """A connected kombu connection (py-amqp underneath), always released."""
    options = {"client_properties": {"connection_name": name}} if name else {}
    connection = kombu.Connection(url, connect_timeout=10, transport_options=options)
    try:
        connection.connect()
        yield connection
    finally:
        with contextlib.suppress(Exception):
            connection.release()


def _declare(url: str, queue: str, **options: Any) -> str:
    """Declare ``queue`` on a new connection to ``url``; ``"ok"`` or ``"<code> <text>"``."""
    try:
        with _connection(url) as connection:
            connection.channel().queue_declare(queue, **options)
            return "ok"
    except amqp.exceptions.AMQPError as error:
        return f"{error.reply_code} {error.reply_text}"


@pytest.mark.timeout(150)
def test_three_nodes_running_on_three_ports(rabbit_cluster: RabbitCluster) -> None:
    cluster = rabbit_cluster
    print(f"\n3-node cluster booted and joined in {cluster.boot_s:.1f} s")
    assert len(cluster.nodes) == 3
    assert len({node.port for node in cluster.nodes}) == 3
    assert len({node.name for node in cluster.nodes}) == 3
    for i in range(3):  # every member sees all three running
        assert cluster.running_nodes(ask=i) == sorted(cluster.names)
    for node in cluster.nodes:
        assert node.amqp_up()
    # the failover URL: the chosen node first, then the others in order
    ports = [node.port for node in cluster.nodes]
    assert cluster.url(first=1) == ";".join(
        f"amqp://guest:guest@127.0.0.1:{p}/" for p in (ports[1], ports[0], ports[2]))
    assert cluster.url() == ";".join(cluster.urls)


@pytest.mark.timeout(150)
def test_quorum_queue_survives_kill_of_its_leader(rabbit_cluster: RabbitCluster) -> None:
    cluster = rabbit_cluster
    first, second = cluster.nodes[0], cluster.nodes[1]
    queue = f"qq-{uuid.uuid4().hex[:8]}"
    bodies = [f"m{i}".encode() for i in range(N_MESSAGES)]
    with _connection(first.url) as connection:
        channel = connection.channel()
        channel.queue_declare(queue, durable=True, auto_delete=False,
                              arguments={"x-queue-type": "quorum"})
        for body in bodies:  # one by one, each confirmed before the next
            channel.basic_publish_confirm(amqp.Message(body, delivery_mode=2), exchange="",
                                          routing_key=queue, confirm_timeout=30)
        # list_queues' counts of a quorum queue lag (0 right after the publishes, here);
        # a passive declare asks the leader
        assert channel.queue_declare(queue, passive=True).message_count == N_MESSAGES
    info = cluster.list_queues()[queue]
    assert info["type"] == "quorum"
    assert info["leader"] == first.name == info["node"]
    assert sorted(info["members"]) == sorted(cluster.names)

    cluster.kill9(0, restart=False)  # returns once the VM is gone and the port refuses
    killed = time.monotonic()
    assert not first.vm_alive()
    assert not _port_open(first.port)

    # the queue serves again once a new leader is elected: until then a basic_get through
    # node 2 fails with 541 INTERNAL_ERROR "nodedown", which closes the whole connection
    errors: list[str] = []
    deadline = killed + SETTLE_TIMEOUT
    while True:
        try:
            with _connection(second.url) as connection:
                channel = connection.channel()
                message = channel.basic_get(queue, no_ack=False)
                if message is not None:
                    channel.basic_reject(message.delivery_tag, requeue=True)
                    break
                errors.append("empty")
        except amqp.exceptions.AMQPError as error:
            errors.append(f"{error.reply_code} {error.reply_text}")
        if time.monotonic() > deadline:
            pytest.fail(f"no message through node 2 within {SETTLE_TIMEOUT:g} s after the "
                        f"kill: {errors[-3:]}")
        time.sleep(0.02)
    serving = time.monotonic() - killed

    cluster.wait_down(0)  # cluster_status through node 2 no longer lists node 1 as running
    assert cluster.running_nodes(ask=1) == sorted(cluster.names[1:])
    info = cluster.list_queues(ask=1)[queue]
    leader = info["leader"]
    assert leader in cluster.names[1:]
    assert sorted(info["online"]) == sorted(cluster.names[1:])

    got: list[bytes] = []
    with _connection(second.url) as connection:
        channel = connection.channel()
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while len(got) < N_MESSAGES and time.monotonic() < deadline:
            message = channel.basic_get(queue, no_ack=False)
            if message is None:
                time.sleep(0.05)
                continue
            got.append(message.body)
            channel.basic_ack(message.delivery_tag)
        consumed = time.monotonic() - killed
        assert channel.basic_get(queue, no_ack=False) is None
    distinct_errors = sorted(set(errors))
    print(f"\nquorum queue served again through node 2 {serving:.2f} s after kill -9 of its "
          f"leader (new leader {leader}; {len(errors)} failed tries before: "
          f"{distinct_errors}); all {len(got)} messages consumed {consumed:.2f} s after "
          f"the kill")
    assert sorted(got) == sorted(bodies)

    restarted = time.monotonic()
    cluster.restart_node(0)
    print(f"killed node back in the cluster {time.monotonic() - restarted:.2f} s after its "
          f"start")
    for i in range(3):
        assert cluster.running_nodes(ask=i) == sorted(cluster.names)
    _wait_for("the restarted node online as a member again",
              lambda: first.name in (cluster.list_queues(ask=0)[queue].get("online") or ()))
    with _connection(first.url) as connection:  # node 1 serves the queue again: empty
        assert connection.channel().basic_get(queue, no_ack=False) is None


@pytest.mark.timeout(150)
def test_node_of_connection(rabbit_cluster: RabbitCluster) -> None:
    cluster = rabbit_cluster
    names = {i: f"mqtest-conn-{uuid.uuid4().hex[:8]}-{i}" for i in range(3)}
    assert cluster.node_of_connection(names[0]) is None
    with contextlib.ExitStack() as stack:
        for i, name in names.items():
            # through the failover URL: node i first, so the client is on node i
            stack.enter_context(_connection(cluster.url(first=i), name))
        for i, name in names.items():
            assert cluster.node_of_connection(name) is cluster.nodes[i]
    assert _wait_for("the closed connections gone", lambda: all(
        cluster.node_of_connection(name) is None for name in names.values()), timeout=30)


@pytest.mark.timeout(150)
def test_queues_of_a_killed_node(rabbit_cluster: RabbitCluster) -> None:
    """What a surviving node answers for the queues of a node killed with ``kill -9``."""
    cluster = rabbit_cluster
    first, second = cluster.nodes[0], cluster.nodes[1]
    tag = uuid.uuid4().hex[:8]
    exclusive, transient, durable = f"ex-{tag}", f"tr-{tag}", f"du-{tag}"
    exclusive_options = {"exclusive": True, "durable": False, "auto_delete": False}
    with _connection(first.url) as owner:
        channel = owner.channel()
        channel.queue_declare(exclusive, **exclusive_options)
        channel.queue_declare(transient, durable=False, auto_delete=False)
        channel.queue_declare(durable, durable=True, auto_delete=False)
        queues = cluster.list_queues()
        assert {queues[q]["node"] for q in (exclusive, transient, durable)} == {first.name}
        # while its owner lives, nobody else may have the exclusive queue
        assert _declare(second.url, exclusive, **exclusive_options).startswith(
            "405 RESOURCE_LOCKED")
        cluster.kill9(0, restart=False)
    # at once, on new connections through node 2 (the new exclusive queue lives as long as
    # the connection that declared it: it stays open while the queues are listed)
    with _connection(second.url) as new_owner:
        try:
            new_owner.channel().queue_declare(exclusive, **exclusive_options)
            answers = {"exclusive": "ok"}
        except amqp.exceptions.AMQPError as error:
            answers = {"exclusive": f"{error.reply_code} {error.reply_text}"}
        answers.update({
            "transient": _declare(second.url, transient, durable=False, auto_delete=False),
            "durable": _declare(second.url, durable, durable=True, auto_delete=False),
            "durable passive": _declare(second.url, durable, passive=True)})
        queues = cluster.list_queues(ask=1)
    print(f"\ndeclared through node 2 right after kill -9 of node 1: {answers}")
    assert answers["exclusive"] == "ok"
    assert answers["transient"] == "ok"
    assert queues[exclusive]["node"] == queues[transient]["node"] == second.name
    down = (f"404 NOT_FOUND - home node '{first.name}' of durable queue '{durable}' in "
            f"vhost '/' is down or inaccessible")
    assert answers["durable"] == answers["durable passive"] == down
    assert queues[durable]["state"] == "down"
    assert queues[durable]["node"] == first.name

    cluster.restart_node(0)
    assert _declare(second.url, durable, durable=True, auto_delete=False) == "ok"
    assert cluster.list_queues(ask=1)[durable]["state"] == "running"

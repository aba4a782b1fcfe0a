"""tests/_fault_transport.py with plain kombu: routing, confirms, and each fault."""

from __future__ import annotations

import contextlib
import threading

import amqp
import kombu
import pytest

from tests._fault_transport import Published, fault_state

EXCHANGE = kombu.Exchange("ex", "topic")


@pytest.fixture
def state(unique):
    return fault_state(f"t-{unique}")


def open_channel(connection: kombu.Connection, confirms: bool = True):
    """A channel with confirms on; returns it and the (kind, tag, multiple) it is told."""
    channel = connection.channel()
    told: list[tuple[str, int, bool]] = []
    if confirms:
        channel.confirm_select()
        for kind in ("basic_ack", "basic_nack"):
            channel.events[kind].add(lambda tag, multiple, kind=kind:
                                     told.append((kind, tag, multiple)))
    return channel, told


def publish(channel, body: bytes, routing_key: str = "a.b") -> None:
    channel.basic_publish(channel.prepare_message(body, properties={"delivery_mode": 2}),
                          exchange="ex", routing_key=routing_key)


def drain(connection: kombu.Connection, times: int = 3) -> None:
    for _ in range(times):
        with contextlib.suppress(TimeoutError):  # socket.timeout: nothing (more) came
            connection.drain_events(timeout=0.02)


def test_the_alias_and_routing_as_in_memory(state, unique):
    other = fault_state(f"other-{unique}")
    with kombu.Connection(state.url) as connection, kombu.Connection(other.url) as elsewhere:
        channel = connection.channel()
        queue = kombu.Queue("q", EXCHANGE, routing_key="a.#")
        received = []
        with kombu.Consumer(channel, [queue], callbacks=[
                lambda body, message: (received.append(body), message.ack())]):
            kombu.Producer(channel, exchange=EXCHANGE).publish(b"one", routing_key="a.b")
            kombu.Producer(channel, exchange=EXCHANGE).publish(b"lost", routing_key="b.c")
            drain(connection)
        assert received == [b"one"]
        assert "q" not in elsewhere.default_channel.queues  # every name routes on its own
    assert state.connects == 1 and other.connects == 1
    assert [(p.generation, p.tag, p.routing_key, p.body) for p in state.published] == [
        (1, None, "a.b", b"one"), (1, None, "b.c", b"lost")]  # no tags without confirms


def test_auto_confirms_count_tags_per_channel_and_arrive_on_the_draining_thread(state):
    with kombu.Connection(state.url) as connection:
        first, told_first = open_channel(connection)
        second, told_second = open_channel(connection)
        threads = set()
        first.events["basic_ack"].add(lambda *_: threads.add(threading.current_thread()))
        for body in (b"a", b"b", b"c"):
            publish(first, body)
        publish(second, b"d")
        assert told_first == told_second == []  # not before a drain
        worker = threading.Thread(target=drain, args=(connection,), name="drainer")
        worker.start()
        worker.join(5)
    assert told_first == [("basic_ack", 1, False), ("basic_ack", 2, False),
                          ("basic_ack", 3, False)]
    assert told_second == [("basic_ack", 1, False)]
    assert [t.name for t in threads] == ["drainer"]
    assert state.published[0] == Published(1, first.channel_id, 1, "ex", "a.b", b"a",
                                           {"delivery_mode": 2, "priority": 0})


def test_manual_confirms_ack_and_nack_on_the_next_drain(state):
    state.confirms = "manual"
    with kombu.Connection(state.url) as connection:
        channel, told = open_channel(connection)
        for body in (b"a", b"b", b"c", b"d"):
            publish(channel, body)
        drain(connection)
        assert told == []
        state.ack(2, multiple=True)
        state.nack(3)
        assert told == []
        drain(connection)
        assert told == [("basic_ack", 2, True), ("basic_nack", 3, False)]


def test_drop_never_confirms(state):
    state.confirms = "drop"
    with kombu.Connection(state.url) as connection:
        channel, told = open_channel(connection)
        publish(channel, b"a")
        drain(connection)
    assert told == [] and [p.tag for p in state.published] == [1]


@pytest.mark.parametrize("routed", [False, True], ids=["not-routed", "routed"])
def test_a_failed_publish_kills_the_connection_routed_or_not(state, routed):
    with kombu.Connection(state.url) as connection:
        assert issubclass(ConnectionResetError, tuple(connection.connection_errors))
        channel, told = open_channel(connection)
        consumer_channel = connection.channel()
        queue = kombu.Queue("q", EXCHANGE, routing_key="#")(consumer_channel)
        queue.declare()
        state.fail_next_publish(ConnectionResetError("written, then gone"), routed=routed)
        with pytest.raises(ConnectionResetError):
            publish(channel, b"a")
        with pytest.raises(ConnectionResetError):  # the connection stays dead
            connection.drain_events(timeout=0.02)
        with pytest.raises(ConnectionResetError):
            publish(channel, b"b")
    assert told == []  # no confirm for a publish on a dead connection
    assert [(p.tag, p.body) for p in state.published] == ([(1, b"a")] if routed else [])
    with kombu.Connection(state.url) as again:
        assert again.default_channel.queues["q"].qsize() == (1 if routed else 0)
        channel, told = open_channel(again)
        publish(channel, b"c")  # the new connection works, tags from 1 again
        drain(again)
    assert told == [("basic_ack", 1, False)] and state.connects == 2
    assert state.published[-1].generation == 2


def test_a_channel_error_closes_only_the_channel(state):
    with kombu.Connection(state.url) as connection:
        channel, _ = open_channel(connection)
        state.fail_next_publish(amqp.NotFound("no exchange 'ex'"))
        with pytest.raises(tuple(connection.channel_errors)):
            publish(channel, b"a")
        assert not channel.is_open
        fresh, told = open_channel(connection)
        publish(fresh, b"b")
        drain(connection)
    assert told == [("basic_ack", 1, False)]


def test_break_connection_then_refuse_then_accept(state):
    with kombu.Connection(state.url) as connection:
        channel, _ = open_channel(connection)
        state.break_connection()
        with pytest.raises(ConnectionResetError):
            connection.drain_events(timeout=0.02)
        with pytest.raises(ConnectionResetError):
            publish(channel, b"a")
    state.refuse_connections = True
    with pytest.raises(ConnectionRefusedError):
        kombu.Connection(state.url).ensure_connection(max_retries=0,
                                                      reraise_as_library_errors=False)
    assert (state.connects, state.refused) == (1, 1)
    state.refuse_connections = False
    with kombu.Connection(state.url) as connection:
        channel, told = open_channel(connection)
        publish(channel, b"b")
        drain(connection)
    assert told == [("basic_ack", 1, False)] and state.connects == 2
    assert [(p.generation, p.body) for p in state.published] == [(2, b"b")]

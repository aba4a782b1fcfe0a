"""The IO thread reads and writes in batches, on the real broker.

Reading: py-amqp reads many frames per recv.  A client reads what the broker sends
through a proxy that passes it on in small pieces, with pauses shorter and longer than
the IO loop's read timeout (0.05 s), so that frames end up in py-amqp's buffer in parts;
every point must still arrive, exactly once, with no reconnect.

Writing: inside ``IOThread.corked()`` the messages published go out in one write.
"""

from __future__ import annotations

import kombu
import pytest

import mqsync
from mqsync.connection import IOThread
from tests._proxy import FaultProxy
from tests._support import RecordingSink, wait_until

pytestmark = pytest.mark.broker

T0 = 1_700_000_000_000_000_000


@pytest.fixture
def proxy():
    proxy = FaultProxy()
    yield proxy
    proxy.close()


def _data_transport(client: mqsync.Client):
    io = client._io_threads()["data"]
    return io._connection.connection._transport


def test_the_read_ahead_is_installed_on_the_data_connection(manager, unique):
    with RecordingSink(f"sink-{unique}", manager.url) as sink:
        sink.subscribe([f"test.{unique}.a"])
        transport = _data_transport(sink)
        # the loop installs it when it starts, just after start() returned
        assert wait_until(lambda: transport._quick_recv != transport.sock.recv)


@pytest.mark.parametrize(("size", "pause", "points", "chunk"), [
    (1_000, 0.0005, 20_000, 100),    # frames in many small parts, quickly
    (50_000, 0.08, 40_000, 20_000),  # a chunk's frames (320 kB) with waits > 0.05 s between
], ids=["small-pieces", "long-pauses"])
def test_frames_read_in_parts_arrive_whole(manager, proxy, unique, size, pause, points, chunk):
    metric = f"test.{unique}.parts"
    with RecordingSink(f"sink-{unique}", proxy.url(manager.url)) as sink:
        sink.subscribe([metric])
        proxy.trickle(size, pause)
        with mqsync.Source(f"source-{unique}", manager.url, chunk_size=chunk) as source:
            source.send_many(metric, [T0 + i for i in range(points)],
                             [float(i) for i in range(points)])
            source.flush(timeout=60)
        assert wait_until(lambda: sink.count(metric) >= points, timeout=90)
        stats = sink.stats()
    assert proxy.pauses > 0, "the proxy passed everything at once: no frame was split"
    assert sorted(sink.points) == [(metric, T0 + i, float(i)) for i in range(points)]
    assert stats["reconnects"] == 0 and stats.get("malformed_data_messages", 0) == 0


def test_a_burst_of_small_messages_is_read_to_its_end(manager, unique):
    """A drained backlog arrives in bursts: one read takes in many messages, and those
    left in py-amqp's buffer after the socket ran dry must be read before the loop waits
    on the socket again.  Without heartbeats no other byte would ever wake it, so a
    message left behind would stall the drain until its timeout."""
    metric = f"test.{unique}.burst"
    count = 3000
    with mqsync.Subscriber(f"drain-{unique}", manager.url, metrics=[metric],
                           expires=120) as subscriber, \
            mqsync.Source(f"source-{unique}", manager.url) as source:  # a chunk per point
        for i in range(count):
            source.send(metric, T0 + i, float(i))
        source.flush(timeout=60)
    drain = mqsync.Drain(subscriber.token, manager.url, subscriber.queue, [metric],
                         timeout=15, heartbeat=0)
    points = [(m, t.posix_ns, v) for m, t, v in drain]
    assert points == [(metric, T0 + i, float(i)) for i in range(count)]


class CountingWrites:
    """Stands in for py-amqp's socket write, counting the calls and keeping the bytes."""

    def __init__(self, write):
        self.write = write
        self.calls = 0
        self.sent = b""

    def __call__(self, data):
        self.calls += 1
        self.sent += bytes(data)
        self.write(data)


def _receive(url: str, queue: str, count: int) -> list[bytes]:
    """The bodies of ``count`` messages from ``queue`` (fewer if they do not come in 10 s)."""
    bodies: list[bytes] = []
    with kombu.Connection(url) as connection, connection.channel() as channel:
        wait_until(lambda: _take_all(channel, queue, bodies) >= count, timeout=10)
    return bodies


def _take_all(channel, queue: str, bodies: list[bytes]) -> int:
    while (message := channel.basic_get(queue, no_ack=True)) is not None:
        bodies.append(message.body)
    return len(bodies)


@pytest.fixture
def io_and_queue(broker_url, unique):
    queue = f"test-corked-{unique}"
    with kombu.Connection(broker_url) as connection, connection.channel() as channel:
        channel.queue_declare(queue=queue, durable=False, auto_delete=False)
    io = IOThread(broker_url, f"mqsync-test-corked-{unique}", heartbeat=0)
    io.start(10)
    yield io, queue
    io.stop(10)
    with kombu.Connection(broker_url) as connection, connection.channel() as channel:
        channel.queue_delete(queue=queue)


def _publish(channel, queue: str, body: bytes) -> None:
    channel.basic_publish(channel.prepare_message(body), exchange="", routing_key=queue)


@pytest.mark.parametrize("fail", [False, True], ids=["returns", "raises"])
def test_messages_published_corked_leave_in_one_write(io_and_queue, broker_url, fail):
    io, queue = io_and_queue
    bodies = [bytes([i]) * (1000 + i) for i in range(20)]

    def publish_corked(channel):
        transport = io._connection.connection._transport
        counting = transport._write = CountingWrites(transport._write)
        try:
            with io.corked():
                for body in bodies:
                    _publish(channel, queue, body)
                assert counting.calls == 0  # nothing left yet
                if fail:
                    raise RuntimeError("an error inside the block")
        except RuntimeError:
            pass
        restored = transport._write is counting
        transport._write = counting.write
        return counting.calls, restored, all(body in counting.sent for body in bodies)

    calls, restored, complete = io.call(publish_corked, 10)
    assert (calls, restored, complete) == (1, True, True)
    assert _receive(broker_url, queue, len(bodies)) == bodies


def test_a_corked_burst_beyond_the_limit_is_written_in_parts(io_and_queue, broker_url,
                                                            monkeypatch):
    io, queue = io_and_queue
    monkeypatch.setattr("mqsync.connection.CORK_BYTES", 10_000)
    bodies = [bytes([i]) * 3000 for i in range(10)]  # 30 kB: three or four writes

    def publish_corked(channel):
        transport = io._connection.connection._transport
        counting = transport._write = CountingWrites(transport._write)
        with io.corked():
            for body in bodies:
                _publish(channel, queue, body)
        transport._write = counting.write
        return counting.calls

    calls = io.call(publish_corked, 10)
    assert 3 <= calls <= 4
    assert _receive(broker_url, queue, len(bodies)) == bodies

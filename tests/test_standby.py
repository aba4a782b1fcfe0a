"""Standby managers: several mqsync-manager processes on one network, one active at a time.

Each test runs a network of its own (a fresh virtual host on the shared broker): the
``management`` queue of a standby network is declared with ``x-single-active-consumer``,
which the session's network does not have.  A kill is ``kill -9`` of the manager process,
proven by its exit status; that the standby took over is proven by its log line and by its
answers (the metadata declared through the dead manager).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import threading
import time
import uuid

import kombu
import pytest

import mqsync
from mqsync.manager import Manager
from mqsync.manager.manager import MANAGEMENT_QUEUE, STATE_QUEUE, _Ack
from tests._proxy import FaultProxy
from tests._rabbit_node import list_queues
from tests._stream import CHUNK, RATE, N, Streamer, analyse, values_match
from tests._support import RecordingSink, wait_until
from tests.conftest import StandbyPair, vhost_of

pytestmark = [pytest.mark.broker]

TOOK_OVER = "active; took over the metadata"


@pytest.fixture
def pair(vhost_url, tmp_path):
    pair = StandbyPair([vhost_url, vhost_url], tmp_path)
    try:
        yield pair
    finally:
        pair.stop()


@pytest.mark.timeout(120)
def test_the_standby_takes_over_when_the_active_manager_is_killed_mid_stream(pair):
    """kill -9 of the active manager while a Source streams 100 000 points at 20 000/s to
    a Sink: the stream goes on untouched (no reconnect, no point lost), and new clients
    register through the standby, with the metadata declared through the dead one."""
    url = pair.url
    u = uuid.uuid4().hex[:8]
    metric = f"standby.{u}.stream"
    common = {"rpc_timeout": 20, "connect_timeout": 30}
    assert [row["active"] for row in pair.consumers()].count(True) == 1
    with mqsync.Client(f"probe-{u}", url, **common) as probe, \
            RecordingSink(f"sink-{u}", url, **common) as sink:
        sink.subscribe([metric])
        with mqsync.Source(f"source-{u}", url, chunk_size=CHUNK, **common) as source:
            source.declare_metrics({metric: {"rate": RATE, "unit": "W"}})
            streamer = Streamer(source, metric)
            streamer.start()
            try:
                assert streamer.third.wait(30), "the stream did not reach a third"
                pair.active.kill9()
                killed = time.monotonic()
                # the first request after the kill: answered by the standby
                metadata = probe.get_metrics(selector=[metric], timeout=20)
                first_answer_s = time.monotonic() - killed
                # new clients register through the standby (within 5 s, or they fail)
                started = time.monotonic()
                with RecordingSink(f"late-sink-{u}", url, rpc_timeout=5,
                                   connect_timeout=5) as late:
                    late.subscribe([metric], timeout=5)
                    with mqsync.Source(f"late-source-{u}", url, rpc_timeout=5,
                                       connect_timeout=5):
                        register_s = time.monotonic() - started
            finally:
                streamer.join(60)
            assert not streamer.is_alive(), "the stream did not end"
            if streamer.error is not None:
                raise streamer.error
            source.flush(timeout=30)
            source_stats = source.stats()
        assert wait_until(lambda: sink.distinct(metric) == N, timeout=30), sink.distinct(metric)
        sink_stats = sink.stats()
    times = [t for m, t, _ in sink.points if m == metric]
    received, lost, duplicates = analyse(times)
    print(f"\nstandby: first answer {first_answer_s:.3f} s after the kill; a new sink and a "
          f"new source registered in {register_s:.3f} s; Sink received {received} of {N} "
          f"({lost} lost, {duplicates} duplicates); stream late by {streamer.late_s:.3f} s "
          "at worst")
    assert metadata[metric]["unit"] == "W", "the standby did not take over the metadata"
    assert TOOK_OVER in pair.standby.log_tail(20_000)
    assert lost == 0 and values_match(sink.points)
    # not interrupted: no connection of the stream noticed anything
    assert source_stats["reconnects"] == 0 and sink_stats["reconnects"] == 0
    assert source.failure is None and sink.failure is None
    assert [row["active"] for row in pair.consumers()] == [True]


@pytest.mark.timeout(150)
def test_a_request_the_dying_manager_held_is_answered_by_the_standby(pair):
    """The active manager is frozen (SIGSTOP) while it holds a request it was handed, then
    killed: the broker hands the unacknowledged request to the standby, which answers it."""
    url = pair.url
    vhost = vhost_of(url)
    with mqsync.Client(f"probe-{uuid.uuid4().hex[:8]}", url, rpc_timeout=30) as probe:
        os.kill(pair.active.process.pid, signal.SIGSTOP)
        try:
            replies: list = []
            caller = threading.Thread(target=lambda: replies.append(
                probe.get_metrics(timeout=30)), name="test-caller")
            caller.start()
            try:
                assert wait_until(lambda: list_queues(vhost).get(MANAGEMENT_QUEUE, {}).get(
                    "messages_unacknowledged") == 1, timeout=45), list_queues(vhost)
            finally:
                pair.active.kill9()
        finally:
            if pair.active.process.poll() is None:
                os.kill(pair.active.process.pid, signal.SIGCONT)
        caller.join(40)
        assert not caller.is_alive()
    assert replies == [{}]
    assert TOOK_OVER in pair.standby.log_tail(20_000) or \
        "no shared state yet" in pair.standby.log_tail(20_000)


@pytest.mark.timeout(60)
def test_managers_that_disagree_on_the_management_queue_are_refused(vhost_url):
    """A standby manager on a network whose management queue was made without
    single-active-consumer would share the requests round-robin: it refuses to start, and
    says what to do."""
    with Manager(vhost_url):
        pass
    with pytest.raises(mqsync.ConnectFailed) as caught, Manager(vhost_url, standby=True):
        pass
    message = str(caught.value)
    assert "same --queue-type and --standby" in message
    assert "rabbitmqctl delete_queue management" in message
    assert "guest:guest" not in message


@pytest.mark.timeout(60)
def test_the_cli_explains_a_disagreeing_manager(vhost_url):
    with Manager(vhost_url):
        pass
    result = subprocess.run(["mqsync-manager", "--url", vhost_url, "--standby"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "same --queue-type and --standby" in result.stderr, result.stderr
    assert "guest:guest" not in result.stderr


@pytest.mark.timeout(60)
def test_a_graceful_handover_carries_the_metadata(vhost_url, tmp_path):
    """Two in-process standby managers: the first stops, the second takes over with the
    metadata the first kept (and with none of its own file)."""
    u = uuid.uuid4().hex[:8]
    first = Manager(vhost_url, standby=True, metadata_file=tmp_path / "first.json")
    second = Manager(vhost_url, standby=True, metadata_file=tmp_path / "second.json")
    first.start()
    try:
        with mqsync.Client(f"client-{u}", vhost_url) as client:
            client.rpc("source.declare_metrics", metrics={f"handover.{u}": {"unit": "s"}})
            assert first.active and first.takeovers == 1
            second.start()
            assert not second.active
            first.stop()
            assert client.get_metrics()[f"handover.{u}"]["unit"] == "s"
        assert second.active and second.takeovers == 1
        saved = json.loads((tmp_path / "second.json").read_text())
        assert f"handover.{u}" in json.dumps(saved)
    finally:
        first.stop()
        second.stop()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("body", [
    b"{not json", b'{"sequence": 7, "state": {"metrics": [1, 2]}}',
    b'{"sequence": "x", "state": {}}', b'{"sequence": 1, "state": {"transformers": {"t": 1}}}',
], ids=["not-json", "metrics-a-list", "sequence-not-a-number", "bindings-not-a-list"])
def test_a_malformed_shared_state_is_dropped(vhost_url, caplog, body):
    """Garbage in the state queue: logged and dropped (not taken, not put back for the next
    manager); the manager goes on with its own state and shares it."""
    with kombu.Connection(vhost_url) as connection:
        channel = connection.channel()
        channel.queue_declare(queue=STATE_QUEUE, durable=True, exclusive=False,
                              auto_delete=False, arguments={"x-max-length": 1})
        message = channel.prepare_message(body, None, None, None, None,
                                          {"delivery_mode": 2})
        channel.basic_publish(message, exchange="", routing_key=STATE_QUEUE)
        channel.close()
    caplog.set_level(logging.ERROR, logger="mqsync.manager.manager")
    with Manager(vhost_url, standby=True) as manager, \
            mqsync.Client(f"client-{uuid.uuid4().hex[:8]}", vhost_url) as client:
        assert client.get_metrics() == {}
        assert manager.takeovers == 1
    assert any("dropped a malformed message" in r.getMessage() for r in caplog.records)
    state = list_queues(vhost_of(vhost_url))[STATE_QUEUE]
    assert state["messages_ready"] == 1  # the manager's own state replaced the garbage


def test_bad_manager_options_are_refused_at_once():
    with pytest.raises(mqsync.ConfigError, match="expected classic or quorum"):
        Manager("amqp://guest:guest@127.0.0.1/", queue_type="mirrored")
    with pytest.raises(mqsync.ConfigError, match="standby managers need a RabbitMQ broker"):
        Manager("memory://", standby=True)


@pytest.mark.timeout(90)
def test_a_manager_that_lost_its_connection_stands_by(vhost_url):
    """The active manager's connection is cut: the broker makes the other one active, which
    takes over; the first, back on a new connection, stands by and shares nothing, and takes
    over again (with the other's changes) only when the other goes."""
    u = uuid.uuid4().hex[:8]
    proxy = FaultProxy()
    first = Manager(proxy.url(vhost_url), standby=True, reconnect_timeout=60)
    second = Manager(vhost_url, standby=True)
    try:
        first.start()
        with mqsync.Client(f"client-{u}", vhost_url, rpc_timeout=20) as client:
            client.rpc("source.declare_metrics", metrics={f"a.{u}": {}})
            second.start()
            assert first.active and not second.active
            proxy.cut()
            assert wait_until(lambda: first._management.reconnects >= 1, timeout=30)
            client.rpc("source.declare_metrics", metrics={f"b.{u}": {}})
            assert second.active and not first.active, "the reconnected manager took over"
            # what the deposed manager would still share (a handler that was running) is
            # not published over the active one's state
            with pytest.raises(mqsync.ConnectFailed, match="not shared"):
                first._share_state(first.metadata.dump())
            second.stop()
            assert sorted(client.get_metrics()) == [f"a.{u}", f"b.{u}"]
            assert first.active and first.takeovers == 2
    finally:
        first.stop()
        second.stop()
        proxy.close()


@pytest.mark.timeout(60)
def test_a_request_delivered_before_a_reconnect_is_left_to_the_broker(vhost_url):
    """A request still waiting for a worker when its connection went is not served (the
    broker hands it out again): it must not make this manager take over."""
    with Manager(vhost_url, standby=True) as manager:
        io = manager._management
        stale = _Ack(io, message=None)
        stale.generation = io.generation - 1
        manager._serve_request({"function": "get_metrics"}, "someone", "id-1", "nowhere",
                               stale)
        assert manager.takeovers == 0 and not manager.active

"""The core against the real RabbitMQ, through mqsync-manager (a subprocess)."""

from __future__ import annotations

import os

import pytest

import mqsync
from tests._support import RecordingSink, wait_until

pytestmark = pytest.mark.broker

T0 = 1_700_000_000_000_000_000
N = 100_000


def test_100k_points_reach_two_sinks_once_in_order(manager, unique):
    metric = f"test.{unique}.stream"
    with RecordingSink(f"sink-a-{unique}", manager.url) as first, \
            RecordingSink(f"sink-b-{unique}", manager.url) as second:
        first.subscribe([metric])
        second.subscribe([metric])
        with mqsync.Source(f"source-{unique}", manager.url, chunk_size=100) as source:
            source.declare_metrics({metric: {"unit": "V", "rate": 1000}})
            for i in range(N):
                source.send(metric, T0 + i * 1_000_000, i * 0.5)
            source.flush()
            assert source.sent_points == N
        for sink in (first, second):
            assert wait_until(lambda sink=sink: sink.count() >= N, timeout=60)
    expected = [(metric, T0 + i * 1_000_000, i * 0.5) for i in range(N)]
    assert first.points == expected
    assert second.points == expected


def test_metadata_goes_through_the_manager(manager, unique):
    metric = f"test.{unique}.meta"
    with mqsync.Source(f"source-{unique}", manager.url) as source:
        source.declare_metrics({metric: {"unit": "W", "rate": 5, "source": "forged",
                                         "_private": 1, "description": "power"}})
        metadata = source.get_metrics(selector=f"^test\\.{unique}\\.")[metric]
    assert metadata["unit"] == "W" and metadata["rate"] == 5
    assert metadata["source"] == f"source-{unique}"
    assert "_private" not in metadata and metadata["chunkSize"] == 1
    assert mqsync.Timestamp.from_iso8601(metadata["date"])


def test_rpc_errors_and_timeouts_surface_in_the_callers_thread(manager, unique):
    with mqsync.Client(f"client-{unique}", manager.url) as client:
        with pytest.raises(mqsync.RPCError, match="unknown RPC function 'no.such.function'"):
            client.rpc("no.such.function")
        with pytest.raises(mqsync.RPCError, match="invalid .selector"):
            client.get_metrics(selector="(")
        with pytest.raises(mqsync.RPCTimeout):
            client.rpc_direct(f"nobody-{unique}", "discover", timeout=0.3)
        assert isinstance(client.get_metrics(), dict)  # still alive


def test_configuration_comes_from_the_manager(manager, unique):
    token = f"sink-durable-{unique}"
    manager.set_config(token, {"threshold": 7})

    class Durable(mqsync.DurableSink):
        def on_data(self, metric, timestamp, value):
            pass

    with Durable(token, manager.url) as sink:
        assert sink.config == {"threshold": 7}


def test_a_durable_sink_keeps_its_token_unless_asked_for_a_uuid(unique):
    class Durable(mqsync.DurableSink):
        def on_data(self, metric, timestamp, value):
            pass

    assert Durable(f"sink-durable-{unique}").token == f"sink-durable-{unique}"
    token = Durable(f"sink-durable-{unique}", add_uuid=True).token
    assert token.startswith(f"sink-durable-{unique}.") and len(token.rpartition(".")[2]) == 32


def test_malformed_data_is_dropped_not_requeued(manager, unique):
    metric = f"test.{unique}.poison"
    with mqsync.Source(f"source-{unique}", manager.url) as source, \
            RecordingSink(f"sink-{unique}", manager.url) as sink:
        sink.subscribe([metric])
        _publish_raw(manager.url, metric, b"\x0a\xff")
        source.send(metric, T0, 1.0)
        source.flush()
        assert wait_until(lambda: sink.count() == 1)
        assert wait_until(lambda: sink.stats().get("malformed_data_messages") == 1)


def _publish_raw(url: str, metric: str, body: bytes) -> None:
    """Publish a data message that did not come from mqsync."""
    import kombu

    with kombu.Connection(url) as connection:
        channel = connection.channel()
        channel.basic_publish(channel.prepare_message(body, None, None, None, None, {}),
                              exchange="metricq.data", routing_key=metric)


def test_a_client_without_a_manager_fails_to_start_with_a_clear_error(broker_url, unique):
    # a vhost of its own holds no MetricQ exchanges unless a manager declared them
    import subprocess

    vhost = f"mqsync-empty-{unique}"
    subprocess.run(["rabbitmqctl", "add_vhost", vhost], capture_output=True, check=False)
    subprocess.run(["rabbitmqctl", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
                   capture_output=True, check=False)
    try:
        url = broker_url.rsplit("/", 1)[0] + "/" + vhost
        with pytest.raises(mqsync.ConnectFailed, match="is mqsync-manager running"):
            mqsync.Client(f"client-{unique}", url, connect_timeout=10).start()
    finally:
        subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True, check=False)


def test_unreachable_broker_fails_fast():
    with pytest.raises(mqsync.ConnectFailed):
        mqsync.Client("client-x", "amqp://guest:guest@127.0.0.1:1/", connect_timeout=3).start()


def test_a_process_with_more_than_1024_open_files_keeps_its_connections(manager, unique):
    """Defect: select() in the IO loop failed once a descriptor number passed 1024, and
    every IO thread reconnected in a hot loop while every RPC timed out."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.fail(f"the hard limit of open files ({hard}) is too low for this test")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
    filler = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        with mqsync.Source(f"source-{unique}", manager.url) as source:
            assert source._management is not None
            source.get_metrics(timeout=10)
            source.send(f"test.{unique}.fds", 1, 1.0)
            source.flush(10)
            stats = source.stats()
        assert max(filler) > 1024
        assert stats["reconnects"] == 0
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

"""A broker in a memory alarm blocks its publishers (``connection.blocked``): on a private
RabbitMQ node whose memory watermark the test lowers, for real.

Defect guarded against: no write timeout and no ``connection.blocked`` handling, so an
alarm blocked the IO thread in a socket write for good, and ``stop()`` with it.
"""

from __future__ import annotations

import time

import pytest

import mqsync
from tests._support import RecordingSink, wait_until
from tests.conftest import ManagerProcess

pytestmark = [pytest.mark.broker, pytest.mark.slow]

T0 = 1_700_000_000_000_000_000


@pytest.fixture(scope="module")
def manager_on_node(rabbit_node, tmp_path_factory):
    directory = tmp_path_factory.mktemp("blocked-manager")
    (directory / "clients").mkdir()
    manager = ManagerProcess(rabbit_node.url, directory / "clients", directory / "meta.json")
    try:
        manager.wait_ready(timeout=60)
        yield manager
    finally:
        manager.stop()


def _alarm(node, on: bool) -> None:
    # An absolute watermark of 1 byte is always exceeded: the memory alarm goes off at once.
    if on:
        node.ctl("set_vm_memory_high_watermark", "absolute", "1")
    else:
        node.ctl("set_vm_memory_high_watermark", "0.4")


def test_a_memory_alarm_holds_the_data_and_lifting_it_delivers_everything(
        rabbit_node, manager_on_node, unique):
    metric = f"blocked.{unique}"
    with RecordingSink(f"sink-{unique}", rabbit_node.url) as sink, \
            mqsync.Source(f"source-{unique}", rabbit_node.url, chunk_size=10) as source:
        sink.subscribe([metric])
        for i in range(100):
            source.send(metric, T0 + i, float(i))
        source.flush(10)
        _alarm(rabbit_node, True)
        try:
            for i in range(100, 300):  # the broker blocks the connection at its next publish
                source.send(metric, T0 + i, float(i))
            assert wait_until(lambda: source.stats().get("data_blocked", 0) >= 1, 20), \
                "the broker never blocked the source"
            assert source._data is not None and source._data.blocked
            with pytest.raises(mqsync.PublishFailed):
                source.flush(1)  # held back, not lost
            assert source._data.alive
        finally:
            _alarm(rabbit_node, False)
        source.flush(30)
        assert wait_until(lambda: sink.distinct(metric) == 300, 30)
        assert source.stats()["lost_points"] == 0
    assert source.stats()["data_reconnects"] == 0


def test_stop_returns_in_time_while_the_broker_blocks(rabbit_node, manager_on_node,
                                                      unique):
    metric = f"blocked.stop.{unique}"
    source = mqsync.Source(f"source-{unique}", rabbit_node.url, chunk_size=10)
    source.start()
    try:
        source.send(metric, T0, 0.0)
        source.flush(10)
        _alarm(rabbit_node, True)
        for i in range(1, 201):
            source.send(metric, T0 + i, float(i))
        assert wait_until(lambda: source.stats().get("data_blocked", 0) >= 1, 20), \
            "the broker never blocked the source"
        began = time.monotonic()
        source.stop(timeout=2.0)
        took = time.monotonic() - began
    finally:
        _alarm(rabbit_node, False)
        source.stop()
    assert took < 2.0 + 3.0, f"stop(timeout=2) took {took:.1f} s while blocked"
    assert source.stats()["lost_points"] == 200

"""A client's callbacks run one at a time unless it opts out (``serialize_callbacks=False``).

The official client runs RPC handlers, ``update()`` and a sink's ``on_data`` on one event
loop, so a ``config`` handler never changes the configuration in the middle of an update.
mqsync runs them on threads of their own and holds the client's ``callback_lock`` around
each, which keeps that guarantee for code ported from the official client.
"""

from __future__ import annotations

import threading
import time

import pytest

import mqsync
from tests._support import wait_until

UPDATE_SECONDS = 0.03


class Watched:
    """Counts config calls that arrived while a data callback was running."""

    def __init__(self) -> None:
        self.busy = threading.Event()
        self.configs = 0
        self.overlaps = 0
        self.callbacks = 0

    def during_callback(self) -> None:
        self.busy.set()
        time.sleep(UPDATE_SECONDS)  # a slow measurement
        self.callbacks += 1
        self.busy.clear()

    def on_config(self) -> None:
        self.configs += 1
        if self.busy.is_set():
            self.overlaps += 1


def _ticking(watched: Watched, token: str, **kwargs) -> mqsync.IntervalSource:
    class Ticking(mqsync.IntervalSource):
        @mqsync.rpc_handler("config")
        def _on_config(self, **config):
            watched.on_config()

        def update(self):
            watched.during_callback()

    return Ticking(token, period=0.001, **kwargs)


def _configure_repeatedly(target: str, watched: Watched, unique: str, times: int = 15) -> None:
    with mqsync.Client(f"configurer-{unique}") as configurer:
        for _ in range(times):
            assert wait_until(watched.busy.is_set, 10)  # aim at a running callback
            configurer.rpc_direct(target, "config", timeout=10, rate=1)


@pytest.mark.parametrize("serialize", [True, False], ids=["serialized", "opted-out"])
def test_config_never_runs_during_an_update_unless_opted_out(unique, serialize):
    watched = Watched()
    kwargs = {} if serialize else {"serialize_callbacks": False}
    with _ticking(watched, f"source-{unique}", **kwargs) as source:
        assert source.serialize_callbacks is serialize
        _configure_repeatedly(source.token, watched, unique)
    assert watched.configs >= 15 and watched.callbacks >= 1
    if serialize:
        assert watched.overlaps == 0
    else:  # the test would see an overlap: the handlers really do run during updates
        assert watched.overlaps > 0


def test_config_never_runs_during_a_sinks_on_chunk(unique):
    watched = Watched()
    metric = f"test.{unique}.callbacks"

    class Slow(mqsync.Sink):
        @mqsync.rpc_handler("config")
        def _on_config(self, **config):
            watched.on_config()

        def on_data(self, metric, timestamp, value):
            watched.during_callback()

    stop = threading.Event()
    with Slow(f"sink-{unique}") as sink, mqsync.Source(f"source-{unique}", chunk_size=1) as source:
        sink.subscribe([metric])

        def feed():
            i = 0
            while not stop.is_set():
                source.send(metric, mqsync.Timestamp(1_700_000_000_000_000_000 + i), 1.0)
                i += 1
                time.sleep(0.005)

        feeder = threading.Thread(target=feed, name="test-feeder")
        feeder.start()
        try:
            _configure_repeatedly(sink.token, watched, unique, times=10)
        finally:
            stop.set()
            feeder.join(10)
    assert watched.configs >= 10 and watched.overlaps == 0


def test_a_task_can_take_the_lock_around_its_own_steps(unique):
    """task() runs for the client's life, outside the lock; it may hold it per step."""
    watched = Watched()

    class Looping(mqsync.Source):
        @mqsync.rpc_handler("config")
        def _on_config(self, **config):
            watched.on_config()

        def task(self):
            while not self.task_stop_future.done():
                with self.callback_lock:
                    watched.during_callback()
                time.sleep(0.001)

    with Looping(f"source-{unique}") as source:
        _configure_repeatedly(source.token, watched, unique, times=10)
    assert watched.configs >= 10 and watched.overlaps == 0


def test_a_drain_waiting_for_its_reader_still_answers_rpcs(unique):
    """A Drain's on_chunk waits while the collecting loop is behind; that is a hand-off, not
    a user callback, and must not keep the Drain's RPC handlers waiting."""
    from mqsync.subscription import Drain, Subscriber

    metric = f"test.{unique}.drain"
    with mqsync.Source(f"source-{unique}", chunk_size=1) as source, \
            Subscriber(f"drain-{unique}", metrics=[metric], expires=60) as subscriber:
        for i in range(20):
            source.send(metric, mqsync.Timestamp(1_700_000_000_000_000_000 + i), float(i))
        source.flush()
        drain = Drain(subscriber.token, None, subscriber.queue, [metric], buffer_chunks=1,
                      timeout=30)
        points = iter(drain)
        try:
            assert next(points)[2] == 0.0  # connected; the reader now stops reading
            time.sleep(0.3)  # the next chunks fill the buffer: on_chunk waits for room
            with mqsync.Client(f"asker-{unique}") as asker:
                reply = asker.rpc_direct(drain.token, "discover", timeout=5)
            assert reply.get("alive") is True
            assert [v for _, _, v in points] == [float(i) for i in range(1, 20)]
        finally:
            points.close()

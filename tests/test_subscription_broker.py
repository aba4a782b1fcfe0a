"""Subscriber and Drain on RabbitMQ, through mqsync-manager: volume, isolation, expiry."""

from __future__ import annotations

import contextlib
import gc
import threading
import time

import kombu
import pytest

import mqsync
from mqsync import Subscriber
from tests._support import PeakRSS, RecordingSink, wait_until

pytestmark = pytest.mark.broker

T0 = 1_700_000_000_000_000_000
MB = 1024 * 1024


def queue_depth(url: str, queue: str) -> int | None:
    """Messages ready in ``queue`` (a passive declare), or None if it does not exist."""
    with kombu.Connection(url, connect_timeout=10) as connection:
        channel = connection.channel()
        try:
            return channel.queue_declare(queue=queue, passive=True).message_count
        except connection.channel_errors:
            return None
        finally:
            # (a refused passive declare has closed the channel already)
            with contextlib.suppress(*connection.channel_errors, *connection.connection_errors):
                channel.close()


def wait_for_queue_depth(url: str, queue: str, messages: int, timeout: float = 60.0) -> None:
    """Wait until the broker holds ``messages`` in ``queue``: the data is buffered, so
    the test checks the drain, not a race between the source's publishes and the
    manager's end marker (the two come over different connections)."""
    deadline = time.monotonic() + timeout
    while True:
        depth = queue_depth(url, queue)
        if depth is not None and depth >= messages:
            return
        assert time.monotonic() < deadline, f"{queue} holds {depth} messages, expected {messages}"
        time.sleep(0.05)


def test_a_million_points_buffered_while_disconnected_are_all_collected_in_bounded_memory(
        manager, unique):
    metric = f"drain.{unique}.million"
    points, chunk = 1_000_000, 1000
    step_ns = 1000
    with Subscriber(f"sink-drain-{unique}", manager.url, metrics=[metric],
                    expires=600) as subscriber:
        assert not subscriber.running  # the broker buffers; nobody is connected
        with mqsync.Source(f"source-{unique}", manager.url, chunk_size=chunk) as source:
            for first in range(0, points, chunk):
                indices = range(first, first + chunk)
                source.send_many(metric, [T0 + i * step_ns for i in indices],
                                 [float(i) for i in indices])
            source.flush()
        wait_for_queue_depth(manager.url, subscriber.queue, points // chunk)

        gc.collect()
        collected = 0
        wrong: list[tuple[int, str, int, float]] = []
        with PeakRSS() as rss:
            for name, timestamp, value in subscriber.collect_data(timeout=30):
                if (name != metric or timestamp.posix_ns != T0 + collected * step_ns
                        or value != collected) and len(wrong) < 5:
                    wrong.append((collected, name, timestamp.posix_ns, value))
                collected += 1
    assert not wrong, f"out of order or wrong points (index, metric, time, value): {wrong}"
    assert collected == points
    # Holding the points (a tuple, a Timestamp, an int and a float each) takes about 190 MB;
    # the drain keeps at most prefetch_count messages and buffer_chunks decoded chunks
    # (about 11 MB of growth measured).
    assert rss.growth < 100 * MB, f"RSS grew by {rss.growth / MB:.0f} MB during the drain"
    assert queue_depth(manager.url, subscriber.queue) is None  # released


def test_data_sent_after_the_unsubscribe_is_not_collected(manager, unique):
    metric = f"drain.{unique}.after"
    with RecordingSink(f"sink-control-{unique}", manager.url) as control, \
            mqsync.Source(f"source-{unique}", manager.url, chunk_size=1) as source:
        control.subscribe([metric])
        with Subscriber(f"sink-drain-{unique}", manager.url, metrics=[metric],
                        expires=60) as subscriber:
            for i in range(50):
                source.send(metric, T0 + i, float(i))
            source.flush()
            wait_for_queue_depth(manager.url, subscriber.queue, 50)
            points = subscriber.collect_data(timeout=10)
            first = next(points)  # the drain has unsubscribed and consumes now
            for i in range(50, 100):
                source.send(metric, T0 + i, float(i))
            source.flush()
            # the control sink sees the late points: they were on the network
            assert wait_until(lambda: control.count(metric) == 100, timeout=10)
            rest = list(points)
    got = [(t.posix_ns, v) for _, t, v in [first, *rest]]
    assert got == [(T0 + i, float(i)) for i in range(50)]
    assert queue_depth(manager.url, subscriber.queue) is None


def test_two_concurrent_subscribers_do_not_see_each_others_data(manager, unique):
    metric_a, metric_b, other = (f"drain.{unique}.{name}" for name in ("a", "b", "other"))
    count = 2000
    with Subscriber(f"sink-a-{unique}", manager.url, metrics=[metric_a], expires=60) as first, \
            Subscriber(f"sink-b-{unique}", manager.url, metrics=[metric_b],
                       expires=60) as second:
        assert first.queue != second.queue
        with mqsync.Source(f"source-{unique}", manager.url, chunk_size=10) as source:
            for i in range(count):
                source.send(metric_a, T0 + i, float(i))
                source.send(metric_b, T0 + i, -float(i))
                source.send(other, T0 + i, 0.5)
            source.flush()
        for subscriber in (first, second):
            wait_for_queue_depth(manager.url, subscriber.queue, count // 10)

        results: dict[str, list] = {}
        errors: list[BaseException] = []

        def drain(subscriber: Subscriber) -> None:
            try:
                results[subscriber.metrics[0]] = [
                    (m, t.posix_ns, v) for m, t, v in subscriber.collect_data(timeout=20)]
            except BaseException as error:  # noqa: BLE001 - reported by the test thread
                errors.append(error)

        threads = [threading.Thread(target=drain, args=(s,), name=f"drain-{i}")
                   for i, s in enumerate((first, second))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert not errors, errors
    assert results[metric_a] == [(metric_a, T0 + i, float(i)) for i in range(count)]
    assert results[metric_b] == [(metric_b, T0 + i, -float(i)) for i in range(count)]


def test_an_expired_queue_gives_a_clear_error_not_a_hang(manager, unique):
    metric = f"drain.{unique}.expired"
    with mqsync.Source(f"source-{unique}", manager.url) as source, \
            Subscriber(f"sink-drain-{unique}", manager.url, metrics=[metric],
                       expires=1) as subscriber:
        source.send(metric, T0, 1.0)
        source.flush()
        time.sleep(2.5)  # nobody uses the queue: the broker deletes it after 1 s
        started = time.monotonic()
        with pytest.raises(mqsync.RPCError, match="does not exist .*expired"):
            list(subscriber.collect_data(timeout=10))
        assert time.monotonic() - started < 20  # an answer, not a wait for a timeout

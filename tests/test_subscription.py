"""Subscriber and Drain on the embedded network (the seed's how-to, run as written)."""

from __future__ import annotations

import pytest

import mqsync
from mqsync import Subscriber

T0 = 1_700_000_000_000_000_000


def test_the_drain_how_to_runs(unique):
    token = f"drain-example-{unique}"
    server = None  # the embedded network
    metrics = [f"test.{unique}.a", f"test.{unique}.b"]
    with mqsync.Source(f"source-{unique}", chunk_size=10) as source:
        with Subscriber(token, server, metrics=metrics, expires=60) as subscriber:
            assert not subscriber.running  # closed right after subscribing
            for i in range(105):
                source.send(metrics[0], T0 + i, float(i))
                source.send(metrics[1], T0 + i, -float(i))
            source.flush()
            collected = []
            for metric, timestamp, value in subscriber.collect_data():
                collected.append((metric, timestamp.posix_ns, value))
        # sent after the unsubscribe: not collected
        source.send(metrics[0], T0 + 1000, 1.0)
        source.flush()
    assert [c for c in collected if c[0] == metrics[0]] == [
        (metrics[0], T0 + i, float(i)) for i in range(105)]
    assert [c for c in collected if c[0] == metrics[1]] == [
        (metrics[1], T0 + i, -float(i)) for i in range(105)]


def test_time_window_filter(unique):
    metric = f"test.{unique}.window"
    with mqsync.Source(f"source-{unique}", chunk_size=7) as source, \
            Subscriber(f"drain-{unique}", metrics=[metric], expires=60) as subscriber:
        for i in range(100):
            source.send(metric, T0 + i, float(i))
        source.flush()
        got = [v for _, _, v in subscriber.collect_data(
            start=mqsync.Timestamp(T0 + 10), end=mqsync.Timestamp(T0 + 19))]
    assert got == [float(i) for i in range(10, 20)]


def test_expires_is_required_and_checked():
    with pytest.raises(TypeError):
        Subscriber("s", metrics=["a"])  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="expires must be positive, got 0 s"):
        Subscriber("s", metrics=["a"], expires=0)
    with pytest.raises(ValueError, match="at least one metric"):
        Subscriber("s", metrics=[], expires=10)


def test_a_released_queue_gives_a_clear_error(unique):
    metric = f"test.{unique}.gone"
    # the subscriber's token with a uuid: a client the manager lets use its queue
    with mqsync.Client(f"drain-{unique}", add_uuid=True) as holder, \
            Subscriber(f"drain-{unique}", metrics=[metric], expires=60) as subscriber:
        holder.rpc("sink.release", dataQueue=subscriber.queue)
        with pytest.raises(mqsync.RPCError, match="does not exist"):
            list(subscriber.collect_data(timeout=5))


def test_the_drain_how_to_runs_with_collect_data_after_the_block(unique):
    # The official client's Subscriber does nothing on exit, so the how-to's loop may stand
    # after the with-block; the subscription stays until it is collected or expires.
    token = f"drain-example-{unique}"
    metrics = [f"test.{unique}.after"]
    with mqsync.Source(f"source-{unique}", chunk_size=10) as source:
        with Subscriber(token, None, metrics=metrics, expires=60) as subscriber:
            for i in range(25):
                source.send(metrics[0], T0 + i, float(i))
            source.flush()
        collected = [(m, t.posix_ns, v) for m, t, v in subscriber.collect_data()]
    assert collected == [(metrics[0], T0 + i, float(i)) for i in range(25)]


def test_leaving_without_collecting_keeps_the_queue_until_released(unique):
    metric = f"test.{unique}.abandoned"
    with Subscriber(f"drain-{unique}", metrics=[metric], expires=60) as subscriber:
        pass
    # still there after the block: a Drain could collect it
    with mqsync.Client(f"drain-{unique}", add_uuid=True) as holder:
        holder.rpc("sink.unsubscribe", dataQueue=subscriber.queue, metrics=[metric], end=False)
    subscriber.release()
    with pytest.raises(mqsync.RPCError, match="does not exist"):
        list(subscriber.collect_data(timeout=5))
    subscriber.release()  # nothing left to release


def test_a_collected_subscription_has_nothing_to_release(unique):
    metric = f"test.{unique}.collected"
    with Subscriber(f"drain-{unique}", metrics=[metric], expires=60) as subscriber:
        assert list(subscriber.collect_data(timeout=10)) == []
    subscriber.release()  # the Drain released it: no RPC, no error


def test_a_collected_queue_is_gone(unique):
    # the Drain unbinds, then releases: the queue must not outlive it (kombu's memory
    # transport deletes only queues that are still bound)
    metric = f"test.{unique}.drained"
    with Subscriber(f"drain-{unique}", metrics=[metric], expires=60) as subscriber:
        pass
    assert list(subscriber.collect_data(timeout=10)) == []
    with mqsync.Client(f"drain-{unique}", add_uuid=True) as holder, \
            pytest.raises(mqsync.RPCError, match="does not exist"):
        holder.rpc("sink.unsubscribe", dataQueue=subscriber.queue, metrics=[metric])

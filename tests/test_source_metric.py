"""Source.metric(name): the per-metric handle and its chunking, on the embedded network."""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from fractions import Fraction

import pytest

import mqsync
from tests._support import wait_until

T0 = 1_700_000_000_000_000_000


class ChunkSink(mqsync.Sink):
    """Records every chunk as it arrived: (metric, times, values)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.chunks: list[tuple[str, list[int], list[float]]] = []
        self._lock = threading.Lock()

    def on_chunk(self, metric, times_ns, values):
        with self._lock:
            self.chunks.append((metric, list(times_ns), list(values)))

    def points(self) -> int:
        with self._lock:
            return sum(len(times) for _, times, _ in self.chunks)

    def sizes(self) -> list[int]:
        with self._lock:
            return [len(times) for _, times, _ in self.chunks]


@pytest.fixture
def sink(unique):
    with ChunkSink(f"sink-{unique}") as sink:
        yield sink


def test_handle_is_one_object_per_metric_and_getitem_is_the_same(unique):
    with mqsync.Source(f"source-{unique}") as source:
        handle = source.metric(f"test.{unique}.a")
        assert isinstance(handle, mqsync.SourceMetric)
        assert source.metric(f"test.{unique}.a") is handle
        assert source[f"test.{unique}.a"] is handle
        assert handle.name == f"test.{unique}.a"
        assert repr(handle) == f"SourceMetric('test.{unique}.a', chunk_size=1, pending=0)"


@pytest.mark.parametrize("name", ["", "x" * 256, 5, None])
def test_invalid_metric_name_raises_at_once(unique, name):
    with mqsync.Source(f"source-{unique}") as source:
        with pytest.raises((ValueError, TypeError)):
            source.metric(name)
        with pytest.raises((ValueError, TypeError)):
            source.send(name, T0, 1.0)


def test_handle_sends_chunks_of_its_size_with_exact_times(unique, sink):
    metric = f"test.{unique}.h"
    sink.subscribe([metric])
    with mqsync.Source(f"source-{unique}", chunk_size=3) as source:
        handle = source.metric(metric)
        for i in range(7):
            handle.send(mqsync.Timestamp(T0 + i * 1_000_000_007), i / 2)
        assert len(handle) == 1  # two chunks of 3 left, one point waits
        handle.flush()
        assert wait_until(lambda: sink.points() == 7)
    assert sink.sizes() == [3, 3, 1]
    assert [t for _, times, _ in sink.chunks for t in times] == \
        [T0 + i * 1_000_000_007 for i in range(7)]
    assert [v for _, _, values in sink.chunks for v in values] == [i / 2 for i in range(7)]


def test_send_and_handle_share_one_buffer(unique, sink):
    metric = f"test.{unique}.mixed"
    sink.subscribe([metric])
    with mqsync.Source(f"source-{unique}", chunk_size=4) as source:
        handle = source.metric(metric)
        handle.send(T0, 0.0)
        source.send(metric, T0 + 1, 1.0)
        handle.send_many([T0 + 2], [2.0])
        source.send(metric, mqsync.Timestamp(T0 + 3), 3)
        assert wait_until(lambda: sink.points() == 4)
    assert sink.chunks == [(metric, [T0, T0 + 1, T0 + 2, T0 + 3], [0.0, 1.0, 2.0, 3.0])]


def test_source_chunk_size_resizes_metrics_without_a_size_of_their_own(unique, sink):
    a, b = f"test.{unique}.a", f"test.{unique}.b"
    sink.subscribe([a, b])
    with mqsync.Source(f"source-{unique}", chunk_size=None) as source:
        source[b].chunk_size = 5
        handle_a = source.metric(a)
        handle_a.send(T0, 0.0)
        source.chunk_size = 2  # a now leaves in chunks of 2; b keeps its own 5
        assert handle_a.chunk_size == 2 and source[b].chunk_size == 5
        handle_a.send(T0 + 1, 1.0)
        for i in range(4):
            source.send(b, T0 + i, float(i))
        assert wait_until(lambda: sink.points() == 2)
        assert sink.chunks == [(a, [T0, T0 + 1], [0.0, 1.0])]
        assert len(source[b]) == 4
        source.send(b, T0 + 4, 4.0)
        assert wait_until(lambda: sink.points() == 7)
    assert sink.sizes() == [2, 5]


@pytest.mark.parametrize("chunk_size", [0, -1, 1.0, "3", True, 2.5])
def test_invalid_chunk_sizes_raise_and_change_nothing(unique, chunk_size):
    with mqsync.Source(f"source-{unique}", chunk_size=7) as source:
        handle = source.metric(f"test.{unique}.a")
        for target in (source, handle):
            with pytest.raises(ValueError, match="expected an int >= 1, or None"):
                target.chunk_size = chunk_size
        assert source.chunk_size == 7 and handle.chunk_size == 7
    with pytest.raises(ValueError, match="expected an int >= 1, or None"):
        mqsync.Source(f"source-{unique}", chunk_size=chunk_size)


def test_chunk_size_none_waits_for_flush(unique, sink):
    metric = f"test.{unique}.none"
    sink.subscribe([metric])
    with mqsync.Source(f"source-{unique}", chunk_size=None, flush_interval=None) as source:
        handle = source.metric(metric)
        for i in range(10_000):
            handle.send(T0 + i, float(i))
        assert len(handle) == 10_000 and sink.points() == 0
        source.flush()
        assert len(handle) == 0
        assert wait_until(lambda: sink.points() == 10_000)
    assert sink.sizes() == [10_000]


def test_send_many_is_all_or_nothing(unique):
    with mqsync.Source(f"source-{unique}", chunk_size=None) as source:
        handle = source.metric(f"test.{unique}.many")
        handle.send(T0, 0.0)
        with pytest.raises(ValueError, match="2 times but 1 values; expected one value per time"):
            handle.send_many([T0 + 1, T0 + 2], [1.0])
        with pytest.raises(TypeError, match="value must be a real number"):
            handle.send_many([T0 + 1, T0 + 2], [1.0, "two"])
        with pytest.raises(TypeError, match="time must be a Timestamp or int"):
            handle.send_many([T0 + 1, 2.5], [1.0, 2.0])
        with pytest.raises(ValueError, match="out of range"):
            handle.send_many([T0 + 1, 2**62], [1.0, 2.0])
        assert len(handle) == 1
        handle.send_many([], [])
        assert len(handle) == 1


def test_out_of_order_points_keep_the_order_given(unique, sink):
    metric = f"test.{unique}.order"
    sink.subscribe([metric])
    with mqsync.Source(f"source-{unique}", chunk_size=3) as source:
        source.metric(metric).send_many([T0 + 5, T0, T0 + 3], [1.0, 2.0, 3.0])
        assert wait_until(lambda: sink.points() == 3)
    assert sink.chunks == [(metric, [T0 + 5, T0, T0 + 3], [1.0, 2.0, 3.0])]


@pytest.mark.parametrize(("time", "value", "error", "match"), [
    (2**62, 1.0, ValueError, "out of range"),
    (-(2**62), 1.0, ValueError, "out of range"),
    (1.5, 1.0, TypeError, "time must be a Timestamp or int"),
    (True, 1.0, TypeError, "time must be a Timestamp or int"),
    (T0, "1", TypeError, "value must be a real number"),
    (T0, None, TypeError, "value must be a real number"),
])
def test_bad_points_raise_and_leave_nothing(unique, time, value, error, match):
    with mqsync.Source(f"source-{unique}", chunk_size=None) as source:
        handle = source.metric(f"test.{unique}.bad")
        with pytest.raises(error, match=match):
            handle.send(time, value)
        with pytest.raises(error, match=match):
            source.send(handle.name, time, value)
        assert len(handle) == 0


def test_handle_refuses_points_once_the_source_stopped(unique, sink):
    metric = f"test.{unique}.late"
    sink.subscribe([metric])
    source = mqsync.Source(f"source-{unique}", chunk_size=100)
    source.start()
    handle = source.metric(metric)
    handle.send(T0, 1.0)
    source.stop()
    assert wait_until(lambda: sink.points() == 1)  # stop handed the buffered point over
    for send in (lambda: handle.send(T0 + 1, 2.0), lambda: source.send(metric, T0 + 1, 2.0),
                 lambda: handle.send_many([T0 + 1], [2.0])):
        with pytest.raises(mqsync.PublishFailed, match="stopped"):
            send()
        assert len(handle) == 0
    with pytest.raises(mqsync.PublishFailed, match="stopped"):
        source.metric(f"test.{unique}.new")
    assert handle.chunk_size == 100  # a size set now still reads back, and refuses points
    handle.chunk_size = 5
    with pytest.raises(mqsync.PublishFailed):
        handle.send(T0 + 2, 3.0)
    assert source.sent_points == 1


def test_points_of_many_threads_on_one_handle_all_arrive(unique, sink):
    metric = f"test.{unique}.threads"
    sink.subscribe([metric])
    with mqsync.Source(f"source-{unique}", chunk_size=10) as source:
        handle = source.metric(metric)

        def sender(offset: int) -> None:
            for i in range(2_000):
                handle.send(T0 + offset + i * 4, float(offset))

        threads = [threading.Thread(target=sender, args=(k,)) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        source.flush()
        assert wait_until(lambda: sink.points() == 8_000)
    times = sorted(t for _, chunk, _ in sink.chunks for t in chunk)
    assert times == [T0 + k for k in range(8_000)]
    # every chunk pairs each time with the value of the thread that sent it
    assert all(v == float((t - T0) % 4) for _, ts, vs in sink.chunks for t, v in zip(ts, vs))


@pytest.mark.parametrize("attribute", ["metric", "_metric", "_metrics", "_handles"])
def test_a_subclass_attribute_named_like_a_metric_does_not_break_the_source(unique, sink,
                                                                           attribute):
    """Sources commonly keep their metric's name in ``self.metric`` or ``self._metric``:
    mqsync never calls ``self.metric()`` and its own names are mangled, so such a subclass
    sends, declares and flushes as before."""
    name = f"test.{unique}.named"

    class Named(mqsync.Source):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            setattr(self, attribute, name)

    sink.subscribe([name])
    with Named(f"source-{unique}", chunk_size=2) as source:
        source.declare_metrics([name])
        source.send(name, T0, 1.0)
        source.send_many(name, [T0 + 1], [2.0])
        source[name].send(T0 + 2, 3.0)
        source.flush()
        assert wait_until(lambda: sink.points() == 3)


@pytest.mark.parametrize("values", [
    [0, 1, 2, 3],  # ints
    [0.0, True, 2, 3.0],  # a mix, a bool among them
    [Decimal(0), Fraction(1), 2, 3.0],  # other real numbers
], ids=["ints", "mixed", "decimal"])
def test_send_many_of_a_whole_chunk_converts_values_as_send_does(unique, sink, values):
    """A send_many() that fills whole chunks is encoded as given: the values come out
    as the floats send() would have made of them."""
    metric = f"test.{unique}.whole"
    sink.subscribe([metric])
    with mqsync.Source(f"source-{unique}", chunk_size=4) as source:
        source.send_many(metric, [mqsync.Timestamp(T0 + i) for i in range(4)], values)
        assert wait_until(lambda: sink.points() == 4)
    assert sink.chunks == [(metric, [T0 + i for i in range(4)], [0.0, 1.0, 2.0, 3.0])]
    assert all(type(v) is float for v in sink.chunks[0][2])


@pytest.mark.parametrize("bad", ["2", None, b"2", object()])
def test_send_many_of_a_whole_chunk_with_a_bad_value_sends_nothing(unique, sink, bad):
    metric = f"test.{unique}.whole_bad"
    sink.subscribe([metric])
    with mqsync.Source(f"source-{unique}", chunk_size=4) as source:
        with pytest.raises(TypeError, match="value must be a real number"):
            source.send_many(metric, [T0 + i for i in range(4)], [0.0, 1.0, bad, 3.0])
        assert len(source[metric]) == 0
        source.send_many(metric, [T0 + i for i in range(4)], [0.0, 1.0, 2.0, 3.0])
        assert wait_until(lambda: sink.points() == 4)
        assert source.sent_chunks == 1
    assert sink.chunks == [(metric, [T0 + i for i in range(4)], [0.0, 1.0, 2.0, 3.0])]


@pytest.mark.parametrize(("times", "error", "match"), [
    ([T0, True, T0 + 2, T0 + 3], TypeError, "time must be a Timestamp or int"),
    ([T0, 1.7e18, T0 + 2, T0 + 3], TypeError, "time must be a Timestamp or int"),
    ([T0, None, T0 + 2, T0 + 3], TypeError, "time must be a Timestamp or int"),
    ([T0, mqsync.Timestamp(T0 + 1), T0 + 2, "x"], TypeError, "time must be a Timestamp"),
    ([T0, T0 + 1, T0 + 2, 2**62], ValueError, "out of range"),
    ([-(2**62), T0 + 1, T0 + 2, T0 + 3], ValueError, "out of range"),
], ids=["bool", "float", "none", "str", "too-late", "too-early"])
def test_send_many_of_a_whole_chunk_with_a_bad_time_sends_nothing(unique, sink, times, error,
                                                                  match):
    metric = f"test.{unique}.whole_bad_time"
    sink.subscribe([metric])
    with mqsync.Source(f"source-{unique}", chunk_size=4) as source:
        with pytest.raises(error, match=match):
            source.send_many(metric, times, [0.0, 1.0, 2.0, 3.0])
        assert len(source[metric]) == 0 and source.sent_chunks == 0


@pytest.mark.parametrize("times", [
    [-3, -2, 0, 1],  # before the epoch, and the smallest times: checked point by point
    [mqsync.Timestamp(T0 + i) for i in range(4)],
    (T0, T0 + 1, T0 + 2, T0 + 3),  # a tuple
], ids=["small", "timestamps", "tuple"])
def test_send_many_of_a_whole_chunk_takes_every_valid_time(unique, sink, times):
    metric = f"test.{unique}.whole_times"
    sink.subscribe([metric])
    with mqsync.Source(f"source-{unique}", chunk_size=4) as source:
        source.send_many(metric, times, [0.0, 1.0, 2.0, 3.0])
        assert wait_until(lambda: sink.points() == 4)
    expected = [t.posix_ns if isinstance(t, mqsync.Timestamp) else t for t in times]
    assert sink.chunks == [(metric, expected, [0.0, 1.0, 2.0, 3.0])]


def test_send_many_does_not_keep_the_callers_lists(unique, sink):
    metric = f"test.{unique}.reuse"
    sink.subscribe([metric])
    times, values = [T0 + i for i in range(4)], [0.0, 1.0, 2.0, 3.0]
    with mqsync.Source(f"source-{unique}", chunk_size=4) as source:
        source.send_many(metric, times, values)
        times[:] = [0, 0, 0, 0]  # the caller reuses its lists at once
        values[:] = [9.0] * 4
        assert wait_until(lambda: sink.points() == 4)
    assert sink.chunks == [(metric, [T0 + i for i in range(4)], [0.0, 1.0, 2.0, 3.0])]


def test_send_many_of_a_whole_chunk_of_ints_is_encoded_as_given(unique, sink, monkeypatch):
    """The fast way is taken for a list of int times that fills a chunk."""
    import mqsync.source as source_module

    taken = []
    encode_whole = source_module._encode_whole
    monkeypatch.setattr(source_module, "_encode_whole",
                        lambda times, values: taken.append(encode_whole(times, values))
                        or taken[-1])
    metric = f"test.{unique}.fast"
    sink.subscribe([metric])
    with mqsync.Source(f"source-{unique}", chunk_size=4) as source:
        source.send_many(metric, [T0 + i for i in range(4)], [0, 1.0, True, Decimal(3)])
        assert wait_until(lambda: sink.points() == 4)
    assert len(taken) == 1 and taken[0] is not None
    assert sink.chunks == [(metric, [T0 + i for i in range(4)], [0.0, 1.0, 1.0, 3.0])]


def test_flush_of_a_stopped_sources_metric_raises(unique):
    source = mqsync.Source(f"source-{unique}")
    source.start()
    handle = source.metric(f"test.{unique}.a")
    source.stop()
    with pytest.raises(mqsync.PublishFailed, match="stopped"):
        handle.flush()


@pytest.mark.parametrize("lock", ["buffer", "publisher"])
def test_a_lock_left_held_by_an_interrupted_send_does_not_hang_its_thread(unique, sink, lock):
    """send() takes the buffer lock with acquire() and releases it in a finally; a
    KeyboardInterrupt landing between the two leaves the lock held by the main thread (as
    one landing inside threading.Condition.__enter__ does with the publisher's lock).
    That thread can still send, flush and stop the source (the usual way out of a Ctrl-C).
    """
    metric = f"test.{unique}.held"
    sink.subscribe([metric])
    source = mqsync.Source(f"source-{unique}", chunk_size=2)
    source.start()
    try:
        # what the interrupted send() leaves behind
        (source._buffer_lock if lock == "buffer" else source._publisher._cond).acquire()
        handle = source.metric(metric)
        handle.send(T0, 1.0)
        source.send(metric, T0 + 1, 2.0)
        handle.send_many([T0 + 2, T0 + 3], [3.0, 4.0])
        handle.send(T0 + 4, 5.0)
        source.flush(timeout=10)
    finally:
        started = time.monotonic()
        source.stop(timeout=10)
    assert time.monotonic() - started < 10
    assert wait_until(lambda: sink.points() == 5)
    assert [t for _, times, _ in sink.chunks for t in times] == [T0 + i for i in range(5)]


class LabTimestamp(mqsync.Timestamp):
    """An application's own Timestamp subclass."""


def test_a_timestamp_subclass_is_a_time(unique, sink):
    metric = f"test.{unique}.subclass"
    sink.subscribe([metric])
    with mqsync.Source(f"source-{unique}", chunk_size=3) as source:
        source.send(metric, LabTimestamp(T0), 0.0)
        source.metric(metric).send(LabTimestamp(T0 + 1), 1.0)
        source.send_many(metric, [LabTimestamp(T0 + 2)], [2.0])
        assert wait_until(lambda: sink.points() == 3)
    assert sink.chunks == [(metric, [T0, T0 + 1, T0 + 2], [0.0, 1.0, 2.0])]

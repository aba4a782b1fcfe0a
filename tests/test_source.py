"""Source and Sink on the embedded (memory://) network."""

from __future__ import annotations

import math
import struct
import time

import pytest

import mqsync
from mqsync.chunk import encode_chunk
from tests._support import RecordingSink, wait_until

T0 = 1_700_000_000_000_000_000


def test_points_arrive_in_order_with_exact_times_and_values(unique):
    metric = f"test.{unique}.a"
    specials = [math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308, 0.1]
    with mqsync.Source(f"source-{unique}", chunk_size=3) as source:
        source.declare_metrics({metric: {"unit": "W", "rate": 10}})
        with RecordingSink(f"sink-{unique}") as sink:
            reply = sink.subscribe([metric])
            assert reply["metrics"][metric]["unit"] == "W"
            assert reply["metrics"][metric]["chunkSize"] == 3
            for i, value in enumerate(specials):
                source.send(metric, mqsync.Timestamp(T0 + i * 1_000_000_007), value)
            source.flush()
            assert wait_until(lambda: sink.count() == len(specials))
    got = sink.points
    assert [t for _, t, _ in got] == [T0 + i * 1_000_000_007 for i in range(len(specials))]
    pack = struct.Struct("<d").pack
    assert [pack(v) for _, _, v in got] == [pack(v) for v in specials]


def test_flush_interval_sends_a_partial_chunk(unique):
    metric = f"test.{unique}.slow"
    with mqsync.Source(f"source-{unique}", chunk_size=1000, flush_interval=0.05) as source, \
            RecordingSink(f"sink-{unique}") as sink:
        sink.subscribe([metric])
        source.send(metric, T0, 1.0)
        assert wait_until(lambda: sink.count() == 1, timeout=5)


def test_chunk_size_none_waits_for_flush(unique):
    metric = f"test.{unique}.manual"
    with mqsync.Source(f"source-{unique}", chunk_size=None, flush_interval=None) as source, \
            RecordingSink(f"sink-{unique}") as sink:
        sink.subscribe([metric])
        for i in range(10):
            source.send(metric, T0 + i, float(i))
        assert not wait_until(lambda: sink.count() > 0, timeout=0.2)
        source.flush()
        assert wait_until(lambda: sink.count() == 10)


def test_per_metric_chunk_size_is_declared(unique):
    metric = f"test.{unique}.big"
    with mqsync.Source(f"source-{unique}") as source:
        source[metric].chunk_size = 42
        source.declare_metrics([metric])
        assert source.get_metrics(selector=[metric])[metric]["chunkSize"] == 42


def test_send_many_and_stop_flushes(unique):
    metric = f"test.{unique}.bulk"
    with RecordingSink(f"sink-{unique}") as sink:
        sink.subscribe([metric])
        with mqsync.Source(f"source-{unique}", chunk_size=None) as source:
            source.send_many(metric, [T0 + i for i in range(500)], list(range(500)))
        # leaving the with-block stopped the source, which flushed
        assert wait_until(lambda: sink.count() == 500)
    assert sink.points[-1] == (metric, T0 + 499, 499.0)


def test_bad_user_input_raises_at_once(unique):
    with mqsync.Source(f"source-{unique}") as source:
        with pytest.raises(ValueError, match="name .* 1 to 255 UTF-8 bytes, got 256"):
            source.send("m" * 256, T0, 1.0)
        with pytest.raises(ValueError, match="got 0"):
            source.declare_metrics({"": {}})
        with pytest.raises(TypeError, match="value must be a real number, got str"):
            source.send("test.x", T0, "1.0")
        with pytest.raises(TypeError, match="time must be a Timestamp or int"):
            source.send("test.x", 1.5, 1.0)
        with pytest.raises(TypeError, match="metadata of 'a' must be a dict"):
            source.declare_metrics({"a": 1})
    with pytest.raises(ValueError, match="invalid chunk_size 0"):
        mqsync.Source("s", chunk_size=0)


def test_send_after_stop_raises_publish_failed(unique):
    source = mqsync.Source(f"source-{unique}")
    source.start()
    source.stop()
    with pytest.raises(mqsync.PublishFailed, match="stopped"):
        source.send("test.x", T0, 1.0)


def test_malformed_chunks_are_dropped_counted_and_never_requeued(unique):
    metric = f"test.{unique}.poison"
    with mqsync.Source(f"source-{unique}") as source, RecordingSink(f"sink-{unique}") as sink:
        sink.subscribe([metric])
        publish = source._data.publish
        publish(b"\xff\xff\xff garbage", "metricq.data", metric).result(5)
        bad_lengths = encode_chunk([T0], [1.0])[:-9]  # truncated value field
        publish(bad_lengths, "metricq.data", metric).result(5)
        source.send(metric, T0, 7.0)
        source.flush()
        assert wait_until(lambda: sink.count() == 1)
        assert wait_until(lambda: sink.stats().get("malformed_data_messages") == 2)
    assert sink.points == [(metric, T0, 7.0)]


def test_a_raising_callback_drops_its_chunk_and_the_sink_goes_on(unique):
    metric = f"test.{unique}.raise"

    class Fragile(RecordingSink):
        def on_data(self, metric, timestamp, value):
            if value == 13.0:
                raise RuntimeError("unlucky")
            super().on_data(metric, timestamp, value)

    with mqsync.Source(f"source-{unique}") as source, Fragile(f"sink-{unique}") as sink:
        sink.subscribe([metric])
        for i in range(20):
            source.send(metric, T0 + i, float(i))
        source.flush()
        assert wait_until(lambda: sink.count() == 19)
        assert sink.stats()["data_callback_errors"] == 1


def test_unsubscribe_sends_the_end_marker(unique):
    metric = f"test.{unique}.end"
    with mqsync.Source(f"source-{unique}") as source, RecordingSink(f"sink-{unique}") as sink:
        sink.subscribe([metric])
        source.send(metric, T0, 1.0)
        source.flush()
        reply = sink.unsubscribe([metric])
        assert reply["dataQueue"] == sink.data_queue
        assert wait_until(lambda: sink.ends == 1)
        source.send(metric, T0 + 1, 2.0)
        source.flush()
        assert not wait_until(lambda: sink.count() > 1, timeout=0.2)


def test_task_runs_until_stop(unique):
    metric = f"test.{unique}.task"

    class Looping(mqsync.Source):
        def task(self):
            i = 0
            while not self.task_stop_future.done():
                self.send(metric, T0 + i, float(i))
                i += 1
                time.sleep(0.005)

    with RecordingSink(f"sink-{unique}") as sink:
        sink.subscribe([metric])
        with Looping(f"source-{unique}"):
            assert wait_until(lambda: sink.count() >= 5)


def test_durable_sink_gets_its_configuration(unique):
    from mqsync import embedded

    class Configured(mqsync.DurableSink):
        def on_data(self, metric, timestamp, value):
            pass

    with mqsync.Client(f"holder-{unique}"):  # keeps the embedded manager up
        embedded.manager().configs.set(f"sink-{unique}", {"threshold": 3})
        with Configured(f"sink-{unique}") as sink:
            assert sink.token == f"sink-{unique}"
            assert sink.config == {"threshold": 3}


def test_a_raising_callback_counts_the_points_it_dropped(unique):
    """Defect: the counter counted chunks while a whole chunk of points was dropped."""
    metric = f"test.{unique}.raisechunk"

    class Fragile(RecordingSink):
        def on_chunk(self, metric, times_ns, values):
            if 13.0 in values:
                raise RuntimeError("unlucky")
            super().on_chunk(metric, times_ns, values)

    with mqsync.Source(f"source-{unique}", chunk_size=10) as source, \
            Fragile(f"sink-{unique}") as sink:
        sink.subscribe([metric])
        for i in range(30):
            source.send(metric, T0 + i, float(i))
        source.flush()
        assert wait_until(lambda: sink.count() == 20)
        assert wait_until(lambda: sink.stats()["dropped_points"] == 10)
        stats = sink.stats()
    assert stats["data_callback_errors"] == 1
    assert stats["lost_points"] == 0 and "data_reconnects" in stats

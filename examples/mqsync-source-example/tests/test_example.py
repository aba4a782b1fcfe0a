"""Tests of the example plugin: it registers, checks its configuration and sends data.

No broker is needed: a client with ``url=None`` joins mqsync's embedded network.
"""

from __future__ import annotations

import threading
import time
import uuid

import mqsync_source_example
import pytest
from mqsync_source_example import SineSource

import mqsync
from mqsync.plugin import load_plugins


class Collect(mqsync.Sink):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.values: list[float] = []
        self.lock = threading.Lock()

    def on_data(self, metric, timestamp, value):
        with self.lock:
            self.values.append(value)


def test_the_plugin_provides_the_sine_kind():
    plugins = load_plugins(entry_points=False, modules=[mqsync_source_example])
    assert not plugins.failures
    assert plugins.get("sine").kind.source_class is SineSource


def test_bad_configuration_is_refused_before_connecting():
    with pytest.raises(mqsync.ConfigError, match="wave_period"):
        SineSource("source-sine-bad", config={"wave_period": 0})


def test_the_sine_wave_arrives():
    unique = uuid.uuid4().hex[:8]
    metric = f"example.sine.{unique}"
    with Collect(f"sink-{unique}") as sink:
        sink.subscribe([metric])
        config = {"rate": 50, "metric": metric, "amplitude": 2.0, "offset": 5.0}
        with SineSource(f"source-sine-{unique}", config=config):
            deadline = time.monotonic() + 10
            while len(sink.values) < 5 and time.monotonic() < deadline:
                time.sleep(0.01)
    assert len(sink.values) >= 5
    assert all(3.0 <= value <= 7.0 for value in sink.values)

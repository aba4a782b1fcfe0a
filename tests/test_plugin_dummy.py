"""The dummy source plugin: configuration, metadata and random values on the embedded
network."""

from __future__ import annotations

import random

import pytest

import mqsync_plugins.dummy
from mqsync.errors import ConfigError
from mqsync.plugin import load_plugins
from mqsync_plugins.dummy import DummySettings, DummySource
from tests._support import RecordingSink, wait_until


def settings(**overrides) -> DummySettings:
    return DummySettings.from_config({**DummySource.default_config, **overrides})


def test_defaults():
    assert settings() == DummySettings(("dummy.0",), 0.0, 1.0, None, "")
    assert DummySource.default_config["rate"] == 1.0


def test_metric_count_and_names():
    assert settings(metrics=3, prefix="demo.a").metrics == ("demo.a.0", "demo.a.1", "demo.a.2")
    assert settings(metrics=["power", "temp"]).metrics == ("dummy.power", "dummy.temp")
    assert settings(metrics=["x.y", "z"], prefix="").metrics == ("x.y", "z")


@pytest.mark.parametrize(("overrides", "message"), [
    ({"metrics": 0}, "invalid metrics 0"),
    ({"metrics": 2.5}, "expected an integer"),
    ({"metrics": True}, "expected an integer"),
    ({"metrics": 10**9}, "at most"),
    ({"metrics": []}, "at least one name"),
    ({"metrics": ["a", "a"]}, "names repeat"),
    ({"metrics": ["a", ""]}, "non-empty string"),
    ({"prefix": ""}, "needs metrics to be a list"),
    ({"prefix": "a b"}, "invalid prefix"),
    ({"min": 1.0, "max": 1.0}, "min must be below max"),
    ({"min": "low"}, "invalid min"),
    ({"max": float("inf")}, "invalid max"),
    ({"seed": "abc"}, "invalid seed"),
    ({"unit": 3}, "invalid unit"),
    ({"rate": 0}, "invalid rate"),
])
def test_bad_configuration_fails_before_connecting(overrides, message):
    with pytest.raises(ConfigError) as error:
        DummySource("source-dummy-bad", config=overrides)
    assert message in str(error.value)


def test_metadata():
    source = DummySource("source-dummy-meta", config={"rate": 4, "metrics": 2, "min": -1,
                                                      "max": 1, "unit": "W"})
    assert source.metrics() == {
        name: {"unit": "W", "rate": 4.0, "description": "uniform random values between -1 "
               "and 1"} for name in ("dummy.0", "dummy.1")}


def test_the_dummy_kind_documents_every_key():
    plugins = load_plugins(entry_points=False, modules=[mqsync_plugins.dummy])
    assert not plugins.failures
    kind = plugins.get("dummy").kind
    assert kind.source_class is DummySource
    assert kind.default_config() == DummySource.default_config
    assert all(option.description for option in kind.options)


def test_dummy_sends_values_in_range_at_its_rate(unique):
    prefix = f"dummy{unique}"
    config = {"rate": 50, "metrics": 3, "prefix": prefix, "min": 10, "max": 20, "seed": 7}
    names = [f"{prefix}.{i}" for i in range(3)]
    with RecordingSink(f"sink-{unique}") as sink:
        sink.subscribe(names)
        with DummySource(f"source-dummy-{unique}", config=config) as source:
            assert wait_until(lambda: all(sink.count(name) >= 5 for name in names))
            metadata = source.get_metrics(selector=names)
    assert {name: metadata[name]["rate"] for name in names} == dict.fromkeys(names, 50)
    values = [v for _, _, v in sink.points]
    assert all(10.0 <= v <= 20.0 for v in values)
    # seeded: the values are the generator's sequence, metric after metric, update after update
    expected = random.Random(7)
    assert values[:9] == [expected.uniform(10, 20) for _ in range(9)]
    times = [t for _, t, _ in sink.points]
    assert times == sorted(times)


def test_reconfiguration_changes_metrics_and_rate(unique):
    with DummySource(f"source-dummy-{unique}", config={"rate": 20, "prefix": f"d{unique}"}) \
            as source:
        source.apply_config({"metrics": ["a", "b"], "rate": 40})
        assert source.period.ns == 25_000_000
        assert set(source.metrics()) == {f"d{unique}.a", f"d{unique}.b"}

"""SourceHost: many plugin instances in one process, one connection pair, one schedule.

Most tests run a host on the embedded network; the connection count and the reload that
must lose no point run against the real broker.  A test plugin kind, ``controlled``, does
what its test tells it through a :class:`Behaviour`: refuse configurations, fail updates,
block an update until released.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from typing import Any, Mapping
from urllib.parse import unquote, urlsplit

import attrs
import pytest

from mqsync.errors import ConfigError
from mqsync.host import STAGGER, HostConfig, InstanceSpec, SourceHost, phase
from mqsync.plugin import ConfigOption, PluginSource, SourceKind, hookimpl, load_plugins
from mqsync.timeseries import Timedelta, Timestamp
from tests._support import RecordingSink, wait_until

# -- a plugin kind the tests control ------------------------------------------------------


@attrs.define(eq=False)
class Behaviour:
    """What the ``controlled`` instances with this behaviour's key do, and what they saw."""

    refuse_configurations: int = 0  # refuse this many configurations, then accept
    fail_updates: bool = False
    block: bool = False
    release: threading.Event = attrs.Factory(threading.Event)
    blocked: threading.Event = attrs.Factory(threading.Event)  # set while an update blocks
    lock: threading.Lock = attrs.Factory(threading.Lock)
    updates: int = 0
    running: int = 0
    most_running: int = 0
    interrupts: int = 0
    closes: int = 0
    configurations: int = 0
    fail_hooks: set = attrs.Factory(set)  # "interrupt", "close", "metrics" raise
    refuse_with: type = ConfigError  # what a refused configuration raises
    metrics_override: Any = None  # what metrics() returns instead, if set
    foreign_metric: str | None = None  # update() also sends a point of this metric
    interrupt_releases: bool = True


BEHAVIOURS: dict[str, Behaviour] = {}

OPTIONS = (
    ConfigOption("behaviour", "", "key of the test's Behaviour", "str"),
    ConfigOption("prefix", "controlled", "metric prefix", "str"),
    ConfigOption("period", None, "time between updates", "duration"),
    ConfigOption("rate", 1.0, "updates per second", "float"),
)


class ControlledSource(PluginSource):
    default_config = {option.name: option.default for option in OPTIONS}

    def configure(self, config: Mapping[str, Any]) -> None:
        behaviour = BEHAVIOURS[config["behaviour"]]
        with behaviour.lock:
            behaviour.configurations += 1
            if behaviour.refuse_configurations > 0:
                behaviour.refuse_configurations -= 1
                raise behaviour.refuse_with("the device is not ready yet")
        self.behaviour = behaviour
        self.metric_name = f"{config['prefix']}.value"

    def metrics(self) -> Any:
        if "metrics" in self.behaviour.fail_hooks:
            raise RuntimeError("metrics() is broken")
        if self.behaviour.metrics_override is not None:
            return self.behaviour.metrics_override
        return {self.metric_name: {"unit": ""}}

    def update(self) -> None:
        behaviour = self.behaviour
        with behaviour.lock:
            behaviour.updates += 1
            behaviour.running += 1
            behaviour.most_running = max(behaviour.most_running, behaviour.running)
        try:
            if behaviour.block:
                behaviour.blocked.set()
                behaviour.release.wait(30)
                behaviour.blocked.clear()
            if behaviour.fail_updates:
                raise RuntimeError("the sensor does not answer")
            self.send(self.metric_name, Timestamp.now(), float(behaviour.updates))
            if behaviour.foreign_metric is not None:
                self.send(behaviour.foreign_metric, Timestamp.now(), -1.0)
        finally:
            with behaviour.lock:
                behaviour.running -= 1

    def interrupt(self) -> None:
        self.behaviour.interrupts += 1
        if self.behaviour.interrupt_releases:
            self.behaviour.release.set()
        if "interrupt" in self.behaviour.fail_hooks:
            raise RuntimeError("interrupt() is broken")

    def close(self, timeout: float) -> None:
        self.behaviour.closes += 1
        if "close" in self.behaviour.fail_hooks:
            raise SystemExit("close() calls sys.exit()")


class ControlledPlugin:
    @hookimpl
    def mqsync_source_kinds(self) -> list[SourceKind]:
        return [SourceKind("controlled", ControlledSource, "does what the test says", OPTIONS)]


@pytest.fixture
def plugins():
    return load_plugins(modules=[ControlledPlugin()])


@pytest.fixture
def behaviour():
    """A fresh Behaviour and its key; released at the end so no update stays blocked."""
    made: list[Behaviour] = []

    def make(**kwargs: Any) -> tuple[str, Behaviour]:
        key = f"b{len(BEHAVIOURS)}"
        BEHAVIOURS[key] = made_one = Behaviour(**kwargs)
        made.append(made_one)
        return key, made_one

    yield make
    for one in made:
        one.release.set()


def host_config(plugins, sources: dict[str, Any], **top: Any) -> HostConfig:
    return HostConfig.from_mapping({"sources": sources, **top}, plugins)


def dummy(name: str, prefix: str, period: str = "50ms", **more: Any) -> dict[str, Any]:
    return {"name": name, "prefix": prefix, "period": period, **more}


# -- the host file ------------------------------------------------------------------------


def test_a_host_file_lists_instances_by_kind_and_name(plugins):
    config = host_config(plugins, {
        "dummy": [dummy("fast", "a", "100ms"), dummy("slow", "b", "60s", metrics=3)],
        "sysinfo": {"period": "1s"},
    }, token="source-host-test", workers=4, backoff_after=2, max_backoff="1min")
    assert config.instances == (
        InstanceSpec("fast", "dummy", {"prefix": "a", "period": "100ms"}),
        InstanceSpec("slow", "dummy", {"prefix": "b", "period": "60s", "metrics": 3}),
        InstanceSpec("sysinfo", "sysinfo", {"period": "1s"}),
    )
    assert (config.token, config.workers, config.backoff_after, config.max_backoff.s) == \
        ("source-host-test", 4, 2, 60.0)


@pytest.mark.parametrize(("data", "message"), [
    ({}, r"'sources' must hold at least one table"),
    ({"sources": {}}, r"'sources' must hold at least one table"),
    ({"sources": {"dummy": {}}, "worker": 3}, r"unknown key 'worker'.*did you mean 'workers'"),
    ({"sources": {"nosuch": {}}}, r"sources\.nosuch: no source plugin named 'nosuch'; "
                                  r"available: .*dummy"),
    ({"sources": {"dummy": [{}, {}]}}, r"2 instances of 'dummy' need a name each"),
    ({"sources": {"dummy": [{"name": "x"}, {"name": "x"}]}}, r"name 'x' is used twice"),
    ({"sources": {"dummy": {"name": "a b"}}}, r"invalid name 'a b'"),
    ({"sources": {"dummy": "fast"}}, r"sources\.dummy must be a table or a non-empty list "),
    ({"sources": {"dummy": []}}, r"sources\.dummy must be a table or a non-empty list "),
    ({"sources": {"dummy": {}}, "workers": 0}, r"invalid workers 0: expected an integer "
                                               r"from 1 to 1024"),
    ({"sources": {"dummy": {}}, "workers": 10**30}, r"invalid workers 1000000000000000"),
    ({"sources": {"dummy": {}}, "token": "a\x00b"}, r"invalid token 'a\\x00b'"),
    ({"sources": {"dummy": {}}, "token": "x" * 300}, r"at most 200 bytes"),
    ({"sources": {"dummy": {}}, "max_backoff": 1e300}, r"invalid max_backoff 1e\+300: expected "
                                                       r"1s to 1d"),
    ({"sources": {"dummy": {}}, "token": "a b"}, r"invalid token 'a b'"),
    ({"sources": {"dummy": {}}, "max_backoff": "10ms"}, r"invalid max_backoff '10ms'"),
])
def test_a_bad_host_file_is_refused_with_what_was_expected(plugins, data, message):
    with pytest.raises(ConfigError, match=message):
        HostConfig.from_mapping(data, plugins)


def test_reading_a_host_file_names_it_in_errors(plugins, tmp_path):
    path = tmp_path / "host.toml"
    path.write_text('[[sources.dummy]]\nname = "a"\n[[sources.dummy]]\nname = "a"\n')
    with pytest.raises(ConfigError, match=rf"{path}: instance name 'a' is used twice"):
        HostConfig.read(path, plugins)
    path.write_text('[[sources.dummy]]\nname = "a"\nprefix = "x"\n')
    assert HostConfig.read(path, plugins).instances == (InstanceSpec("a", "dummy",
                                                                     {"prefix": "x"}),)


# -- running instances ---------------------------------------------------------------------


def updates(host: SourceHost, name: str) -> int:
    return host.instance_stats()[name].updates


@pytest.mark.timeout(60)
def test_instances_run_on_their_own_periods_and_reach_a_sink(plugins, unique):
    config = host_config(plugins, {"dummy": [dummy("a", f"{unique}.a", "20ms"),
                                             dummy("b", f"{unique}.b", "50ms", metrics=2)]})
    with SourceHost(f"source-host-{unique}", None, config=config, plugins=plugins) as host, \
            RecordingSink(f"sink-{unique}", None) as sink:
        assert set(host.metrics()) == {f"{unique}.a.0", f"{unique}.b.0", f"{unique}.b.1"}
        sink.subscribe(sorted(host.metrics()))
        assert wait_until(lambda: sink.count(f"{unique}.a.0") >= 10
                          and sink.count(f"{unique}.b.1") >= 4, timeout=20)
        stats = host.instance_stats()
        assert [(s.name, s.kind, s.state, s.period_ns, s.metrics) for s in stats.values()] == [
            ("a", "dummy", "running", 20_000_000, 1), ("b", "dummy", "running", 50_000_000, 2)]
        counters = host.stats()
        assert counters["instances"] == 2 and counters["instances_failing"] == 0
        assert counters["updates"] >= 14 and counters["update_threads"] >= 1
    # one token for all: the instances are the host's
    assert {source.token for source in host.instances.values()} == \
        {f"source-host-{unique}/a", f"source-host-{unique}/b"}


@pytest.mark.timeout(60)
def test_two_instances_cannot_send_one_metric(plugins, unique):
    config = host_config(plugins, {"dummy": [dummy("first", unique), dummy("second", unique)]})
    host = SourceHost(f"source-host-{unique}", None, config=config, plugins=plugins,
                      schedule=False)
    try:
        stats = host.instance_stats()
        assert stats["first"].state == "running"
        assert stats["second"].state == "unconfigured"
        assert stats["second"].last_error == (
            f"ConfigError: metric '{unique}.0' is already sent by instance 'first'")
    finally:
        host.stop()


@pytest.mark.timeout(60)
def test_a_refused_instance_is_retried_with_backoff_while_the_others_run(
        plugins, behaviour, unique):
    key, refusing = behaviour(refuse_configurations=2)
    config = host_config(plugins, {
        "dummy": dummy("steady", f"{unique}.steady", "20ms"),
        "controlled": {"name": "late", "behaviour": key, "prefix": f"{unique}.late",
                       "period": "20ms"},
    })
    host = SourceHost(f"source-host-{unique}", None, config=config, plugins=plugins,
                      backoff=0.2)
    late = host.instance_stats()["late"]
    assert (late.state, late.failures, late.last_error) == (
        "unconfigured", 1, "ConfigError: the device is not ready yet")
    assert late.retry_in_s is not None and 0 < late.retry_in_s <= 0.2
    with host:
        assert wait_until(lambda: host.instance_stats()["late"].state == "running", timeout=20)
        # refused twice (at 0 and after 0.2 s), accepted at the third try (after 0.4 s more)
        assert refusing.configurations == 3
        assert wait_until(lambda: updates(host, "late") >= 3, timeout=20)
        assert updates(host, "steady") > updates(host, "late")  # it ran all along
        assert f"{unique}.late.value" in host.metrics()


@pytest.mark.timeout(60)
def test_failing_updates_back_off_and_recover(plugins, behaviour, unique):
    key, flaky = behaviour(fail_updates=True)
    config = host_config(plugins, {"controlled": {"name": "flaky", "behaviour": key,
                                                  "prefix": unique, "period": "20ms"}},
                         backoff_after=2)
    with SourceHost(f"source-host-{unique}", None, config=config, plugins=plugins,
                    backoff=0.3) as host:
        assert wait_until(lambda: host.instance_stats()["flaky"].state == "backing off",
                          timeout=20)
        stats = host.instance_stats()["flaky"]
        assert stats.consecutive_failures >= 2
        assert stats.last_error == "RuntimeError: the sensor does not answer"
        # the next try: the first slot of its 20 ms grid at least 0.3 s after the failure
        assert stats.retry_in_s is not None and stats.retry_in_s <= 0.32
        assert wait_until(lambda: host.instance_stats()["flaky"].held_slots > 0, timeout=20)
        flaky.fail_updates = False
        assert wait_until(lambda: host.instance_stats()["flaky"].state == "running",
                          timeout=20)
        stats = host.instance_stats()["flaky"]
        assert (stats.consecutive_failures, stats.retry_in_s) == (0, None)
        assert stats.failures >= 2


@pytest.mark.timeout(60)
def test_a_blocked_update_delays_no_other_instance(plugins, behaviour, unique):
    key, stuck = behaviour(block=True)
    config = host_config(plugins, {
        "controlled": {"name": "stuck", "behaviour": key, "prefix": f"{unique}.stuck",
                       "period": "20ms"},
        "dummy": [dummy(f"d{i}", f"{unique}.d{i}", "20ms") for i in range(3)],
    })
    with SourceHost(f"source-host-{unique}", None, config=config, plugins=plugins) as host:
        assert stuck.blocked.wait(20)
        before = {f"d{i}": updates(host, f"d{i}") for i in range(3)}
        assert wait_until(lambda: all(updates(host, name) >= count + 10
                                      for name, count in before.items()), timeout=20)
        assert stuck.blocked.is_set()  # still blocked while the others ran on
        stuck.block = False
        stuck.release.set()
        assert wait_until(lambda: updates(host, "stuck") >= 2, timeout=20)
        stats = host.instance_stats()["stuck"]
        # its slots during the block were skipped and counted, never run in a burst
        assert stats.missed_slots >= 5
        assert stuck.most_running == 1
        assert host.pool_stats().peak_threads <= config.workers


@pytest.mark.timeout(60)
def test_stop_interrupts_a_blocked_update_and_closes_every_instance(plugins, behaviour, unique):
    key, stuck = behaviour(block=True)
    other_key, other = behaviour()
    config = host_config(plugins, {"controlled": [
        {"name": "stuck", "behaviour": key, "prefix": f"{unique}.a", "period": "20ms"},
        {"name": "other", "behaviour": other_key, "prefix": f"{unique}.b", "period": "20ms"},
    ]})
    host = SourceHost(f"source-host-{unique}", None, config=config, plugins=plugins)
    host.start()
    try:
        assert stuck.blocked.wait(20)
    finally:
        host.stop()  # the thread-leak check proves the blocked worker ended
    assert (stuck.interrupts, stuck.closes, other.closes) == (1, 1, 1)
    assert not stuck.blocked.is_set()


def test_a_host_never_started_closes_its_instances(plugins, behaviour, unique):
    key, one = behaviour()
    config = host_config(plugins, {"controlled": {"behaviour": key, "prefix": unique}})
    SourceHost(f"source-host-{unique}", None, config=config, plugins=plugins).stop()
    assert one.closes == 1


# -- reload -----------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_reload_adds_removes_and_changes_instances_without_touching_the_others(
        plugins, behaviour, unique):
    kept_key, _ = behaviour()
    gone_key, gone = behaviour()
    config = host_config(plugins, {
        "controlled": [
            {"name": "kept", "behaviour": kept_key, "prefix": f"{unique}.kept",
             "period": "20ms"},
            {"name": "gone", "behaviour": gone_key, "prefix": f"{unique}.gone",
             "period": "20ms"},
        ],
        "dummy": [dummy("changed", f"{unique}.changed", "20ms"),
                  dummy("refused", f"{unique}.refused", "20ms")],
    })
    with SourceHost(f"source-host-{unique}", None, config=config, plugins=plugins) as host:
        kept = host.instances["kept"]
        assert wait_until(lambda: updates(host, "kept") >= 5, timeout=20)
        report = host.reload(host_config(plugins, {
            "controlled": {"name": "kept", "behaviour": kept_key, "prefix": f"{unique}.kept",
                           "period": "20ms"},
            "dummy": [dummy("changed", f"{unique}.changed", "20ms", metrics=2),
                      dummy("refused", f"{unique}.refused", "soon"),
                      dummy("added", f"{unique}.added", "20ms")],
        }))
        assert (report.added, report.removed, report.changed, report.unchanged) == (
            ("added",), ("gone",), ("changed", "refused"), ("kept",))
        assert set(report.refused) == {"refused"} and "invalid period 'soon'" in \
            report.refused["refused"]
        assert "1 refused (refused)" in report.summary()
        assert host.instances["kept"] is kept  # untouched: the same source, the same grid
        assert list(host.instance_stats()) == ["kept", "changed", "refused", "added"]
        assert wait_until(lambda: gone.closes == 1) and gone.interrupts == 1
        assert {f"{unique}.changed.0", f"{unique}.changed.1", f"{unique}.added.0",
                f"{unique}.refused.0"} <= set(host.metrics())
        assert f"{unique}.gone.value" not in host.metrics()
        assert wait_until(lambda: updates(host, "added") >= 3 and updates(host, "changed") >= 3
                          and updates(host, "refused") >= 3, timeout=20)


# -- on the broker ------------------------------------------------------------------------


def broker_connections(url: str) -> list[str]:
    """The names of the broker's connections on ``url``'s vhost."""
    vhost = unquote(urlsplit(url).path[1:]) or "/"
    result = subprocess.run([shutil.which("rabbitmqctl") or "rabbitmqctl", "list_connections",
                             "--formatter", "json", "vhost", "client_properties"],
                            capture_output=True, text=True, timeout=60, check=True)
    names = []
    for row in json.loads(result.stdout):
        if row["vhost"] != vhost:
            continue
        properties = {p[0]: p[2] for p in row["client_properties"]} \
            if isinstance(row["client_properties"], list) else row["client_properties"]
        names.append(properties.get("connection_name", "?"))
    return names


@pytest.mark.broker
@pytest.mark.timeout(120)
def test_one_connection_pair_for_twenty_instances(plugins, manager, unique):
    token = f"source-host-{unique}"
    config = host_config(plugins, {"dummy": [dummy(f"i{i}", f"{unique}.i{i}", "100ms")
                                             for i in range(20)]})
    with SourceHost(token, manager.url, config=config, plugins=plugins) as host:
        assert wait_until(lambda: all(s.updates >= 2 for s in host.instance_stats().values()),
                          timeout=30)
        mine = sorted(name for name in broker_connections(manager.url) if token in name)
        assert mine == [f"mqsync-{token}-data", f"mqsync-{token}-mgmt"]
        with RecordingSink(f"sink-{unique}", manager.url) as sink:
            metadata = sink.get_metrics(prefix=f"{unique}.")
    assert len(metadata) == 20
    assert {entry["source"] for entry in metadata.values()} == {token}


@pytest.mark.broker
@pytest.mark.timeout(120)
def test_a_reload_loses_no_point_of_the_unchanged_instances(plugins, behaviour, manager,
                                                             unique):
    keys = [behaviour()[0] for _ in range(3)]
    unchanged = [{"name": f"kept{i}", "behaviour": keys[i], "prefix": f"{unique}.kept{i}",
                  "period": "20ms"} for i in range(3)]
    first = host_config(plugins, {"controlled": unchanged,
                                  "dummy": [dummy("changed", f"{unique}.changed", "20ms"),
                                            dummy("removed", f"{unique}.removed", "20ms")]})
    second = host_config(plugins, {"controlled": unchanged,
                                   "dummy": [dummy("changed", f"{unique}.changed", "30ms"),
                                             dummy("added", f"{unique}.added", "20ms")]})
    metrics = [f"{unique}.kept{i}.value" for i in range(3)]
    with RecordingSink(f"sink-{unique}", manager.url) as sink:
        sink.subscribe(metrics)
        with SourceHost(f"source-host-{unique}", manager.url, config=first,
                        plugins=plugins) as host:
            assert wait_until(lambda: all(updates(host, f"kept{i}") >= 20 for i in range(3)),
                              timeout=30)
            for _ in range(3):  # back and forth, while the kept instances send
                assert host.reload(second).unchanged == ("kept0", "kept1", "kept2")
                assert host.reload(first).unchanged == ("kept0", "kept1", "kept2")
            assert host.reload(second).changed == ("changed",)
            assert wait_until(lambda: all(updates(host, f"kept{i}") >= 60 for i in range(3)),
                              timeout=30)
        stats = host.instance_stats()
        sent = {metric: stats[f"kept{i}"].updates for i, metric in enumerate(metrics)}
        assert wait_until(lambda: all(sink.count(m) == n for m, n in sent.items()), timeout=20)
    for i, metric in enumerate(metrics):
        times = sorted(t for m, t, _ in sink.points if m == metric)
        assert len(times) == len(set(times)) == stats[f"kept{i}"].updates
        # every slot of the grid is accounted for: sent, or skipped and counted
        slots = round((times[-1] - times[0]) / 20_000_000) + 1
        assert slots == len(times) + stats[f"kept{i}"].missed_slots


# -- hostile plugins, reload corner cases -----------------------------------------------------


def controlled(name: str, key: str, prefix: str, period: str = "20ms", **more: Any) -> dict:
    return {"name": name, "behaviour": key, "prefix": prefix, "period": period, **more}


@pytest.mark.timeout(60)
def test_plugin_hooks_that_raise_stop_neither_the_host_nor_the_others(plugins, behaviour,
                                                                      unique, caplog):
    bad_key, bad = behaviour(fail_hooks={"interrupt", "close"})
    gone_key, gone = behaviour(fail_hooks={"interrupt", "close"})
    good_key, good = behaviour()
    config = host_config(plugins, {"controlled": [
        controlled("bad", bad_key, f"{unique}.bad"),
        controlled("gone", gone_key, f"{unique}.gone"),
        controlled("good", good_key, f"{unique}.good"),
    ]})
    with SourceHost(f"source-host-{unique}", None, config=config, plugins=plugins) as host:
        assert wait_until(lambda: good.updates >= 3 and bad.updates >= 3, timeout=20)
        bad.fail_hooks.add("metrics")  # from now on its metrics() raises too
        assert set(host.metrics()) == {f"{unique}.gone.value", f"{unique}.good.value"}
        report = host.reload(host_config(plugins, {"controlled": [
            controlled("bad", bad_key, f"{unique}.bad"),
            controlled("good", good_key, f"{unique}.good"),
        ]}))
        assert report.removed == ("gone",)
        assert wait_until(lambda: gone.closes == 1)
        assert "gone" not in host.instances
        count = good.updates
        assert wait_until(lambda: good.updates >= count + 3, timeout=20)
    # stopped, every thread joined (the leak check), every source closed once
    assert (bad.interrupts, bad.closes, good.closes, gone.closes) == (1, 1, 1, 1)
    assert "interrupt() failed" in caplog.text and "close() failed" in caplog.text


@pytest.mark.timeout(60)
def test_a_configuration_that_raises_system_exit_is_reported_and_retried(plugins, behaviour,
                                                                         unique):
    key, late = behaviour(refuse_configurations=1, refuse_with=SystemExit)
    config = host_config(plugins, {"controlled": controlled("late", key, unique)})
    host = SourceHost(f"source-host-{unique}", None, config=config, plugins=plugins,
                      backoff=0.05)
    assert host.instance_stats()["late"].last_error == "SystemExit: the device is not ready yet"
    with host:
        assert wait_until(lambda: late.updates >= 2, timeout=20)
        assert late.configurations == 2


def test_metrics_must_be_a_mapping_of_names(plugins, behaviour, unique):
    key, _ = behaviour(metrics_override=[f"{unique}.a"])
    config = host_config(plugins, {"controlled": controlled("odd", key, unique)})
    host = SourceHost(f"source-host-{unique}", None, config=config, plugins=plugins,
                      schedule=False)
    try:
        error = host.instance_stats()["odd"].last_error
        assert error is not None and "expected a mapping of metric names to metadata" in error
    finally:
        host.stop()


@pytest.mark.timeout(60)
def test_a_replacement_starts_only_once_the_old_update_returned(plugins, behaviour, unique):
    key, device = behaviour(block=True, interrupt_releases=False)
    config = host_config(plugins, {"controlled": controlled("dev", key, f"{unique}.a")})
    with SourceHost(f"source-host-{unique}", None, config=config, plugins=plugins) as host:
        assert device.blocked.wait(20)
        old = host.instances["dev"]
        report = host.reload(host_config(plugins, {"controlled": controlled(
            "dev", key, f"{unique}.b")}))
        assert report.changed == ("dev",)
        assert host.instances["dev"] is not old
        # the old update still blocks: the new instance has not begun one
        assert device.updates == 1 and device.interrupts == 1 and device.closes == 0
        device.block = False
        device.release.set()
        assert wait_until(lambda: device.updates >= 4, timeout=20)
        assert device.closes == 1  # the old one, once its update returned
        assert device.most_running == 1
        assert f"{unique}.b.value" in host.metrics()


@pytest.mark.timeout(60)
def test_points_of_another_instances_metric_are_dropped_and_counted(plugins, behaviour, unique):
    owner_key, _ = behaviour()
    intruder_key, intruder = behaviour(foreign_metric=f"{unique}.owner.value")
    config = host_config(plugins, {"controlled": [
        controlled("owner", owner_key, f"{unique}.owner"),
        controlled("intruder", intruder_key, f"{unique}.intruder"),
    ]})
    with SourceHost(f"source-host-{unique}", None, config=config, plugins=plugins) as host, \
            RecordingSink(f"sink-{unique}", None) as sink:
        sink.subscribe([f"{unique}.owner.value"])
        assert wait_until(lambda: intruder.updates >= 5 and sink.count() >= 5, timeout=20)
        assert host.stats()["foreign_points"] >= 4
    assert all(value >= 1.0 for metric, _, value in sink.points)  # none of the intruder's


@pytest.mark.timeout(60)
def test_two_changed_instances_may_swap_their_metrics(plugins, unique):
    config = host_config(plugins, {"dummy": [dummy("x", f"{unique}.m1"),
                                             dummy("y", f"{unique}.m2")]})
    with SourceHost(f"source-host-{unique}", None, config=config, plugins=plugins) as host:
        report = host.reload(host_config(plugins, {"dummy": [dummy("x", f"{unique}.m2"),
                                                             dummy("y", f"{unique}.m1")]}))
        assert report.changed == ("x", "y") and report.refused == {}
        assert wait_until(lambda: updates(host, "x") >= 2 and updates(host, "y") >= 2,
                          timeout=20)
        # a refused change keeps its metrics: a change that takes one of them is refused
        report = host.reload(host_config(plugins, {"dummy": [
            dummy("x", f"{unique}.m1"), dummy("y", f"{unique}.m9", "never")]}))
        assert report.refused["y"].startswith("ConfigError: invalid period 'never'")
        assert report.refused["x"] == (f"ConfigError: metric '{unique}.m1.0' is still sent by "
                                       "instance 'y', whose new configuration was refused")


@pytest.mark.timeout(60)
def test_counters_do_not_go_backwards_across_a_reload(plugins, unique):
    config = host_config(plugins, {"dummy": [dummy("a", f"{unique}.a"), dummy("b", f"{unique}.b")]})
    with SourceHost(f"source-host-{unique}", None, config=config, plugins=plugins) as host:
        assert wait_until(lambda: updates(host, "a") >= 5 and updates(host, "b") >= 5,
                          timeout=20)
        before = host.stats()["updates"]
        host.reload(host_config(plugins, {"dummy": [dummy("a", f"{unique}.a", "30ms")]}))
        assert host.stats()["updates"] >= before


def test_an_unchanged_file_is_unchanged_also_with_nan_in_it(plugins, behaviour, unique):
    key, _ = behaviour()

    def read() -> HostConfig:  # each reading of a file makes a NaN of its own
        return host_config(plugins, {"controlled": controlled("n", key, unique,
                                                              threshold=float("nan"))})

    host = SourceHost(f"source-host-{unique}", None, config=read(), plugins=plugins,
                      schedule=False)
    try:
        assert host.reload(read()).unchanged == ("n",)
    finally:
        host.stop()


def test_the_repr_of_a_host_file_leaves_the_configurations_out(plugins):
    config = host_config(plugins, {"dummy": {"name": "a", "password": "hunter2"}})
    assert "hunter2" not in repr(config)
    assert repr(config.instances[0]) == "InstanceSpec(name='a', kind='dummy')"


def test_instances_start_spread_over_their_first_period_the_same_at_every_start():
    assert phase("bmc-rack1", Timedelta.from_s(10)) == phase("bmc-rack1", Timedelta.from_s(10))
    phases = {phase(f"i{i}", Timedelta.from_s(60)).ns for i in range(50)}
    assert len(phases) == 50 and all(0 <= p < STAGGER.ns for p in phases)
    assert all(0 <= phase(f"i{i}", Timedelta.from_ms(100)).ns < 100_000_000 for i in range(50))
    assert phase("x", None) == Timedelta(0)

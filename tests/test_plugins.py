"""Plugin discovery: the built-ins, broken plugins reported by name while the others load,
and the third-party example package (from a temporary dist-info, or installed)."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import types
import uuid
from pathlib import Path

import pytest

import mqsync_plugins.dummy
import mqsync_plugins.ipmi
import mqsync_plugins.sysinfo
from mqsync.errors import ConfigError, PluginError
from mqsync.plugin import PluginSource, SourceKind, hookimpl, load_plugins
from tests._support import RecordingSink, wait_until
from tests.conftest import IN_CI

BUILTINS = (mqsync_plugins.dummy, mqsync_plugins.sysinfo, mqsync_plugins.ipmi)
BUILTIN_NAMES = {"dummy", "sysinfo", "ipmi"}
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "mqsync-source-example"
OPTION_TYPES = {"int", "float", "str", "bool", "list", "dict", "duration", "any"}

GOOD_PLUGIN = '''
from mqsync.plugin import PluginSource, SourceKind, hookimpl

class GoodSource(PluginSource):
    def update(self):
        pass

@hookimpl
def mqsync_source_kinds():
    return [SourceKind("{kind}", GoodSource, "a plugin that loads")]
'''


@pytest.fixture(autouse=True)
def no_plugin_selection(monkeypatch):
    monkeypatch.delenv("MQSYNC_LOAD_PLUGINS", raising=False)


@pytest.fixture
def distributions(tmp_path, monkeypatch):
    """Makes installed-looking distributions (a dist-info with entry points) on sys.path."""
    created: list[str] = []
    monkeypatch.syspath_prepend(str(tmp_path))

    def make(dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
        for name, source in modules.items():
            (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
            created.append(name)
        info = tmp_path / f"{dist.replace('-', '_')}-0.1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
        (info / "entry_points.txt").write_text(
            "[mqsync.plugins]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))

    yield make
    for name in created:
        sys.modules.pop(name, None)


def unique_name(stem: str) -> str:
    return f"{stem}_{uuid.uuid4().hex[:8]}"


def plugin_module(name: str, hook) -> types.ModuleType:
    module = types.ModuleType(name)
    module.mqsync_source_kinds = hookimpl(hook)
    return module


# -- the built-ins --------------------------------------------------------------------------


def test_builtins_load_as_modules():
    plugins = load_plugins(entry_points=False, modules=BUILTINS)
    assert not plugins.failures
    assert set(plugins.kinds) == BUILTIN_NAMES
    for name in BUILTIN_NAMES:
        loaded = plugins.get(name)
        assert loaded.plugin == name and loaded.package == f"mqsync_plugins.{name}"
        assert issubclass(loaded.kind.source_class, PluginSource)


@pytest.mark.parametrize("module", BUILTINS, ids=lambda m: m.__name__)
def test_every_configuration_key_is_documented(module):
    for kind in module.mqsync_source_kinds():
        names = [option.name for option in kind.options]
        assert len(names) == len(set(names))
        assert set(names) == set(kind.source_class.default_config)
        assert kind.default_config() == dict(kind.source_class.default_config)
        for option in kind.options:
            assert option.description and option.type in OPTION_TYPES, option


@pytest.mark.parametrize("module", BUILTINS, ids=lambda m: m.__name__)
def test_an_unknown_configuration_key_is_an_error_naming_the_keys(module):
    # One rule with cli.toml: a typo fails before anything runs, never a warning only.
    for kind in module.mqsync_source_kinds():
        with pytest.raises(ConfigError) as error:
            kind.source_class("source-test", config={"rat": 2, "zzz_unknown": 1})
        message = str(error.value)
        assert "'rat' (did you mean 'rate'?)" in message and "'zzz_unknown'" in message
        assert all(option.name in message for option in kind.options), message


def test_builtins_are_announced_as_entry_points():
    """Passes once setup.py lists them and mqsync is (re)installed."""
    announced = {ep.name: ep.value
                 for ep in importlib.metadata.entry_points(group="mqsync.plugins")}
    assert {name: announced.get(name) for name in BUILTIN_NAMES} == {
        name: f"mqsync_plugins.{name}" for name in BUILTIN_NAMES}
    plugins = load_plugins(only=sorted(BUILTIN_NAMES))
    assert not plugins.failures
    assert set(plugins.kinds) == BUILTIN_NAMES
    assert {plugins.get(name).package for name in BUILTIN_NAMES} == {"mqsync"}


# -- broken plugins -------------------------------------------------------------------------


def test_a_plugin_that_raises_at_import_is_reported_while_the_others_load(
        distributions, caplog):
    broken, good, kind = unique_name("broken"), unique_name("good"), unique_name("kind")
    distributions("mqsync-source-broken", {broken: broken},
                  {broken: "raise RuntimeError('libfoo.so.1: cannot open shared object')"})
    distributions("mqsync-source-good", {good: good}, {good: GOOD_PLUGIN.format(kind=kind)})
    plugins = load_plugins(only=[broken, good], modules=BUILTINS)
    (failure,) = plugins.failures
    assert failure.plugin == broken and failure.package == "mqsync-source-broken"
    assert failure.error == "RuntimeError: libfoo.so.1: cannot open shared object"
    assert set(plugins.kinds) == BUILTIN_NAMES | {kind}
    assert plugins.get(kind).package == "mqsync-source-good"
    assert plugins.get(kind).version == "0.1.0"
    assert broken in caplog.text and "libfoo" in caplog.text
    with pytest.raises(PluginError, match=f"{broken!r} failed to load: RuntimeError"):
        plugins.get(broken)


def test_a_misspelt_hook_is_reported(distributions):
    name = unique_name("misspelt")
    distributions("mqsync-source-misspelt", {name: name}, {name: """
        from mqsync.plugin import hookimpl

        @hookimpl
        def mqsync_source_kind():
            return []
        """})
    plugins = load_plugins(only=[name])
    (failure,) = plugins.failures
    assert failure.plugin == name and "mqsync_source_kind" in failure.error


def test_load_plugins_environment_selects_entry_points(distributions, monkeypatch):
    broken, good, kind = unique_name("broken"), unique_name("good"), unique_name("kind")
    distributions("mqsync-source-mixed", {broken: broken, good: good},
                  {broken: "raise ImportError('nope')", good: GOOD_PLUGIN.format(kind=kind)})
    monkeypatch.setenv("MQSYNC_LOAD_PLUGINS", good)
    plugins = load_plugins()
    assert not plugins.failures and set(plugins.kinds) == {kind}


class NotAPluginSource:
    pass


@pytest.mark.parametrize(("hook", "error"), [
    (lambda: ["not a kind"], "TypeError: mqsync_source_kinds() returned str, expected SourceKind"),
    (lambda: None, "TypeError"),
    (lambda: 42, "TypeError"),
    (lambda: [SourceKind("junk", NotAPluginSource, "")], "is not a PluginSource subclass"),
    (lambda: 1 / 0, "ZeroDivisionError: division by zero"),
])
def test_a_hook_returning_junk_or_raising_is_reported_by_name(hook, error):
    name = unique_name("junk_plugin")
    plugins = load_plugins(entry_points=False, modules=[plugin_module(name, hook), *BUILTINS])
    (failure,) = plugins.failures
    assert failure.plugin == name and error in failure.error
    assert set(plugins.kinds) == BUILTIN_NAMES


def test_a_second_plugin_with_a_taken_kind_name_is_reported():
    name = unique_name("impostor")
    impostor = plugin_module(name, lambda: [SourceKind("dummy", mqsync_plugins.dummy.DummySource,
                                                       "again")])
    plugins = load_plugins(entry_points=False, modules=[mqsync_plugins.dummy, impostor])
    (failure,) = plugins.failures
    # Which of the two keeps the name is up to pluggy's (unordered) plugin set today.
    winner = plugins.get("dummy").package
    assert {failure.package, winner} == {"mqsync_plugins.dummy", name}
    assert "source kind 'dummy' is already provided by" in failure.error


# -- the third-party example ----------------------------------------------------------------


def test_the_example_package_is_found_through_its_entry_point_and_runs(
        distributions, monkeypatch, unique):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.delitem(sys.modules, "mqsync_source_example", raising=False)
    # the entry point exactly as the example's setup.py declares it
    distributions("mqsync-source-example", {"example": "mqsync_source_example"}, {})
    plugins = load_plugins(only=["example"])
    assert not plugins.failures
    loaded = plugins.get("sine")
    assert (loaded.plugin, loaded.package) == ("example", "mqsync-source-example")
    metric = f"example.sine.{unique}"
    with RecordingSink(f"sink-{unique}") as sink:
        sink.subscribe([metric])
        config = {"rate": 50, "metric": metric, "amplitude": 2.0}
        with loaded.kind.source_class(f"source-sine-{unique}", config=config):
            assert wait_until(lambda: sink.count(metric) >= 3)
    assert all(-2.0 <= value <= 2.0 for _, _, value in sink.points)


def test_the_installed_example_package_is_discovered():
    try:
        importlib.metadata.distribution("mqsync-source-example")
    except importlib.metadata.PackageNotFoundError:
        if IN_CI:
            pytest.fail("mqsync-source-example is not installed; README's test command "
                        "installs it")
        pytest.skip("mqsync-source-example is not installed")
    plugins = load_plugins(only=["example"])
    assert not plugins.failures and plugins.get("sine").package == "mqsync-source-example"


_RUN_INSTALLED = """
import json, time
from mqsync.plugin import load_plugins
from mqsync import Sink

plugins = load_plugins(only=["example"])
loaded = plugins.get("sine")
values = []

class Collect(Sink):
    def on_data(self, metric, timestamp, value):
        values.append(value)

with Collect("sink-installed") as sink:
    sink.subscribe(["example.sine.installed"])
    with loaded.kind.source_class("source-installed",
                                  config={"rate": 50, "metric": "example.sine.installed"}):
        deadline = time.monotonic() + 10
        while len(values) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
print(json.dumps({"package": loaded.package, "version": loaded.version,
                  "values": len(values), "failures": len(plugins.failures)}))
"""


@pytest.mark.slow
def test_pip_installing_the_example_makes_it_a_plugin(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("__pycache__", "build",
                                                                   "*.egg-info"))
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
         str(target), str(source)], capture_output=True, text=True, timeout=300)
    if install.returncode != 0 and "No matching distribution found" in install.stderr:
        pytest.skip(f"pip cannot fetch the build backend: {install.stderr.strip()[-200:]}")
    assert install.returncode == 0, install.stderr
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(target), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("MQSYNC_LOAD_PLUGINS", None)
    run = subprocess.run([sys.executable, "-c", _RUN_INSTALLED], capture_output=True,
                         text=True, timeout=120, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["package"] == "mqsync-source-example" and result["version"] == "0.1.0"
    assert result["values"] >= 3 and result["failures"] == 0


def test_load_failures_are_logged_with_the_plugin_name(caplog):
    caplog.set_level(logging.ERROR)
    name = unique_name("logged")
    load_plugins(entry_points=False, modules=[plugin_module(name, lambda: 1 / 0)])
    assert f"source plugin {name!r}" in caplog.text

"""The distribution: version, py.typed, LICENSE, the ``sysinfo`` extra, and (in CI) that the
tests run against the installed wheel rather than the source tree."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import pytest

import mqsync
import mqsync_plugins
from mqsync.errors import PluginError

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Set by .ci/run, which installs the wheel it built and runs the tests against it.
TESTING_WHEEL = os.environ.get("MQSYNC_TEST_WHEEL") == "1"
EXIT_USAGE = 2  # mqsync.cli's code for a bad command line, configuration or plugin

# Run first in a subprocess: psutil cannot be imported there, as if it were not installed.
WITHOUT_PSUTIL = "import sys\nsys.modules['psutil'] = None\n"


def run_without_psutil(script: str, *args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "MQSYNC_URL"}
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_PSUTIL + script, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        cwd=tmp_path,
    )


def test_the_version_metadata_is_mqsync_version():
    assert importlib.metadata.version("mqsync") == mqsync.__version__


def test_py_typed_is_next_to_the_package():
    assert (Path(mqsync.__file__).parent / "py.typed").is_file()


def test_psutil_comes_only_with_the_sysinfo_and_test_extras():
    requirements = importlib.metadata.requires("mqsync") or []
    psutil = [r for r in requirements if r.replace(" ", "").lower().startswith("psutil")]
    assert psutil and all("extra ==" in requirement for requirement in psutil), psutil
    extras = {requirement.split("extra ==")[1].strip().strip("'\"") for requirement in psutil}
    assert extras == {"sysinfo", "test"}


@pytest.mark.skipif(not TESTING_WHEEL, reason="MQSYNC_TEST_WHEEL=1: only when testing the wheel")
def test_the_installed_wheel_is_what_is_tested():
    for package in (mqsync, mqsync_plugins):
        location = Path(package.__file__).resolve()
        assert not location.is_relative_to(REPO_ROOT), (
            f"{package.__name__} is imported from the source tree ({location}), not the wheel"
        )
    files = {file.as_posix() for file in importlib.metadata.files("mqsync") or []}
    assert "mqsync/py.typed" in files
    licenses = [file for file in files if file.rsplit("/", 1)[-1] == "LICENSE"]
    assert licenses and all(".dist-info/" in file for file in licenses), licenses
    assert importlib.metadata.metadata("mqsync")["License-File"] == "LICENSE"


def test_ci_runs_the_commands_readme_gives():
    readme = (REPO_ROOT / "README.rst").read_text(encoding="utf-8")
    section = readme.split("\nRun the tests\n", 1)[1].split("\n====", 1)[0]
    blocks = re.findall(r"::\n\n((?:    .*\n)+)", section)
    (block,) = [block for block in blocks if "MQSYNC_TEST_WHEEL=1" in block]
    commands = [line.strip() for line in block.splitlines()]
    ci = [line.strip() for line in (REPO_ROOT / ".ci" / "run").read_text().splitlines()]
    assert commands[0] in ci, f".ci/run lacks {commands[0]!r}"
    start = ci.index(commands[0])
    assert ci[start : start + len(commands)] == commands


def test_every_module_imports_and_the_plugins_load_without_psutil(tmp_path):
    script = """
import importlib, pkgutil
import mqsync, mqsync_plugins
from mqsync.plugin import load_plugins
for package in (mqsync, mqsync_plugins):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(module.name)
plugins = load_plugins()
assert "sysinfo" in plugins.kinds, sorted(plugins.kinds)
assert not plugins.failures, plugins.failures
assert sys.modules["psutil"] is None
print("ok")
"""
    result = run_without_psutil(script, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_mqsync_source_says_what_to_install_without_psutil(tmp_path):
    script = """
from importlib.metadata import entry_points
(command,) = entry_points(group="console_scripts", name="mqsync-source")
sys.argv[0] = "mqsync-source"
sys.exit(command.load()())
"""
    result = run_without_psutil(script, "--plugin", "sysinfo", tmp_path=tmp_path)
    assert result.returncode == EXIT_USAGE, result.stderr
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("mqsync-source: the sysinfo source needs psutil"), line
    assert line.endswith("pip install 'mqsync[sysinfo]'"), line


def test_the_sysinfo_source_without_psutil_raises_plugin_error(monkeypatch):
    from mqsync_plugins.sysinfo import Snapshot, SysinfoSource

    monkeypatch.setitem(sys.modules, "psutil", None)
    with pytest.raises(PluginError, match=r"pip install 'mqsync\[sysinfo\]'"):
        SysinfoSource("source-sysinfo-without-psutil")
    with pytest.raises(PluginError, match=r"pip install 'mqsync\[sysinfo\]'"):
        Snapshot.take()
    # a psutil of one's own still works
    snapshot = Snapshot.take(("mem",), psutil_module=_psutil_with(virtual_memory=_Memory))
    assert snapshot.memory == {"total": 8.0, "used": 3.0}


class _Memory(NamedTuple):
    total: float = 8.0
    used: float = 3.0


def _psutil_with(**functions: object) -> ModuleType:
    module = ModuleType("psutil")
    module.__dict__.update(functions)
    return module

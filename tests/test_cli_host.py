"""``mqsync-source --config host.toml``: every instance of a host file in one process."""

from __future__ import annotations

import select
import signal
import time
from pathlib import Path

import pytest

from tests._support import RecordingSink, wait_until
from tests.test_cli_source import cli, running_cli

HOST_FILE = """\
[[sources.dummy]]
name = "fast"
prefix = "{prefix}.fast"
period = "50ms"

[[sources.dummy]]
name = "slow"
prefix = "{prefix}.slow"
metrics = 2
period = "200ms"
"""

REFUSED = """
[[sources.sysinfo]]
period = "1s"
groups = ["cpu"]
"""


def host_file(directory: Path, prefix: str, extra: str = "") -> str:
    path = directory / "host.toml"
    path.write_text(HOST_FILE.format(prefix=prefix) + extra)
    return str(path)


def read_until(stream, condition, timeout: float = 20.0) -> list[str]:
    """Lines of ``stream`` until one satisfies ``condition`` (the lines read so far if none
    did within ``timeout``)."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], 0.2)
        if ready:
            line = stream.readline()
            if not line:
                break
            lines.append(line)
            if condition(line):
                break
    return lines


def test_check_lists_every_instance(tmp_path, unique):
    result = cli("source", "--config", host_file(tmp_path, unique), "--check")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"mqsync-source: fast (dummy): configuration OK, every 50ms; metrics: {unique}.fast.0",
        f"mqsync-source: slow (dummy): configuration OK, every 200ms; metrics: "
        f"{unique}.slow.0, {unique}.slow.1",
    ]


def test_check_names_a_refused_instance_and_exits_2(tmp_path, unique):
    result = cli("source", "--config", host_file(tmp_path, unique, REFUSED), "--check")
    assert result.returncode == 2
    assert "mqsync-source: sysinfo (sysinfo): ConfigError: unknown key 'groups'" in result.stderr
    assert "1 of 3 instance(s) refused" in result.stderr
    assert "fast (dummy): configuration OK" in result.stdout


def test_once_runs_one_update_of_every_instance(tmp_path, unique):
    result = cli("source", "--config", host_file(tmp_path, unique), "--once")
    assert result.returncode == 0, result.stderr
    metrics = sorted(line.split()[1] for line in result.stdout.splitlines())
    assert metrics == [f"{unique}.fast.0", f"{unique}.slow.0", f"{unique}.slow.1"]
    assert "sent 3 point(s) to an embedded network" in result.stderr
    # an instance that cannot be configured: the others' points, then exit 1
    result = cli("source", "--config", host_file(tmp_path, unique, REFUSED), "--once")
    assert result.returncode == 1
    assert len(result.stdout.splitlines()) == 3
    assert "sysinfo (sysinfo) was not configured: ConfigError: unknown key 'groups'" in \
        result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--plugin", "dummy"], "is a host file ([[sources.<kind>]] tables): --plugin does not "
                            "apply"),
    (["--period", "1s"], "--period does not apply"),
])
def test_plugin_options_do_not_apply_to_a_host_file(tmp_path, unique, args, message):
    result = cli("source", "--config", host_file(tmp_path, unique), *args)
    assert result.returncode == 2 and message in result.stderr


def test_a_bad_host_file_exits_2_naming_it(tmp_path):
    path = tmp_path / "host.toml"
    path.write_text('[[sources.dummy]]\nname = "x"\n[[sources.nosuch]]\n')
    result = cli("source", "--config", str(path), "--check")
    assert result.returncode == 2
    assert f"{path}: sources.nosuch: no source plugin named 'nosuch'" in result.stderr
    result = cli("source")
    assert result.returncode == 2 and "or --config with a host file" in result.stderr


@pytest.mark.timeout(90)
def test_sighup_reloads_the_file_and_status_lines_name_failing_instances(tmp_path, unique):
    path = host_file(tmp_path, unique, REFUSED)
    with running_cli("source", "--config", path, "--status-interval", "0.3s") as process:
        seen = read_until(process.stderr, lambda line: "status: sysinfo (sysinfo) "
                          "unconfigured" in line)
        text = "".join(seen)
        assert f"{path} (3 instances) on an embedded network" in text
        assert "3 instances (1 not running well)" in text
        assert "last error: ConfigError: unknown key 'groups'" in seen[-1]
        assert "next try in" in seen[-1]

        # a broken file on SIGHUP: refused, the instances run on
        Path(path).write_text("[[sources.dummy]\n")
        process.send_signal(signal.SIGHUP)
        seen = read_until(process.stderr, lambda line: "reload refused" in line)
        assert "reload refused, the running instances go on" in seen[-1]

        # the fixed file: sysinfo dropped, an instance added, the others untouched
        host_file(tmp_path, unique, f'[[sources.dummy]]\nname = "added"\nprefix = '
                                    f'"{unique}.added"\nperiod = "50ms"\n')
        process.send_signal(signal.SIGHUP)
        seen = read_until(process.stderr, lambda line: "reloaded" in line)
        assert seen[-1].strip() == (f"mqsync-source: reloaded {path}: 1 added, 1 removed, "
                                    "0 changed, 2 unchanged")
        # live values of the new instance reach the printing sink
        lines = read_until(process.stdout, lambda line: f"{unique}.added.0" in line)
        assert f"{unique}.added.0" in lines[-1]
        seen = read_until(process.stderr, lambda line: "status: " in line
                          and "instances" in line)
        assert "3 instances (0 not running well)" in seen[-1]
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0


@pytest.mark.broker
@pytest.mark.timeout(90)
def test_a_host_on_the_broker_sends_every_instance_under_one_token(manager, tmp_path, unique):
    token = f"source-host-{unique}"
    path = host_file(tmp_path, unique)
    with RecordingSink(f"sink-{unique}", manager.url) as sink:
        sink.subscribe([f"{unique}.fast.0", f"{unique}.slow.1"])
        with running_cli("source", "--config", path, "--url", manager.url,
                         "--token", token) as process:
            seen = read_until(process.stderr, lambda line: "sending" in line)
            assert seen and seen[-1].strip() == (
                f"mqsync-source: {path} (2 instances) sending 3 metric(s) every 50ms to "
                f"200ms as {token!r} to {manager.url.replace('guest:guest', 'guest:******')}")
            assert wait_until(lambda: sink.count(f"{unique}.fast.0") >= 5
                              and sink.count(f"{unique}.slow.1") >= 2, timeout=30)
            process.send_signal(signal.SIGTERM)
            assert process.wait(20) == 0
        metadata = sink.get_metrics(prefix=f"{unique}.")
    assert set(metadata) == {f"{unique}.fast.0", f"{unique}.slow.0", f"{unique}.slow.1"}
    assert {entry["source"] for entry in metadata.values()} == {token}



def test_the_example_host_file_checks_out():
    example = Path(__file__).parent.parent / "examples" / "host.toml"
    result = cli("source", "--config", str(example), "--check")
    assert result.returncode == 0, result.stderr
    assert [line.split(":")[1].strip() for line in result.stdout.splitlines()] == [
        "sysinfo (sysinfo)", "fast (dummy)", "slow (dummy)"]

"""mqsync-source, mqsync-sink and mqsync-manager as subprocesses."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from typing import Iterator

import pytest

import mqsync
from tests._support import RecordingSink, wait_until


def cli(module: str, *args: str, timeout: float = 60, env: dict | None = None):
    environment = {k: v for k, v in os.environ.items() if k != "MQSYNC_URL"}
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", f"mqsync.cli.{module}", *args],
                          capture_output=True, text=True, timeout=timeout, env=environment)


@contextlib.contextmanager
def running_cli(module: str, *args: str) -> Iterator[subprocess.Popen]:
    """A command running in the background; killed and reaped if the test leaves it running."""
    environment = {k: v for k, v in os.environ.items() if k != "MQSYNC_URL"}
    process = subprocess.Popen([sys.executable, "-m", f"mqsync.cli.{module}", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=environment)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        process.stdout.close()
        process.stderr.close()


def read_lines(process: subprocess.Popen, count: int, timeout: float) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while len(lines) < count and time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.2)
        if ready:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
    return lines


def test_list_plugins_as_json_names_the_builtins_and_the_example():
    result = cli("source", "--list-plugins", "--json")
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    names = {p["name"]: p for p in listing["plugins"]}
    assert {"dummy", "sysinfo", "ipmi", "sine"} <= set(names)
    assert names["sine"]["package"] == "mqsync-source-example"
    assert listing["failed"] == []


def test_usage_prints_a_sample_configuration():
    result = cli("source", "--usage", "dummy")
    assert result.returncode == 0
    assert "rate = " in result.stdout and result.stdout.startswith("# dummy")


def test_once_on_the_embedded_network_prints_the_points():
    result = cli("source", "--plugin", "dummy", "--once", "--config", os.devnull)
    # /dev/null is not JSON: a clear configuration error, exit code 2
    assert result.returncode == 2 and "cannot read configuration file" in result.stderr
    result = cli("source", "--plugin", "dummy", "--once")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines and all("dummy." in line for line in lines)
    assert "sent 1 point(s) to an embedded network" in result.stderr


def test_sysinfo_once_gives_sane_memory_values():
    import psutil

    result = cli("source", "--plugin", "sysinfo", "--once")
    assert result.returncode == 0, result.stderr
    total = [line for line in result.stdout.splitlines() if ".mem.total " in line]
    assert total, result.stdout
    assert float(total[0].split()[2]) == pytest.approx(psutil.virtual_memory().total, rel=1e-3)


def test_embedded_default_prints_live_values_and_sigterm_ends_it_cleanly():
    with running_cli("source", "--plugin", "dummy", "--period", "50ms") as process:
        lines = read_lines(process, 5, timeout=30)
        assert len(lines) == 5, process.stderr.read() if process.poll() is not None else lines
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0


def test_usage_errors_exit_2():
    assert cli("source", "--plugin", "no-such-plugin").returncode == 2
    assert cli("source").returncode == 2
    result = cli("source", "--plugin", "dummy", "--period", "10S")
    assert result.returncode == 2 and "invalid period '10S'" in result.stderr


def test_unreachable_broker_exits_3():
    result = cli("source", "--plugin", "dummy", "--once", "--url",
                 "amqp://guest:guest@127.0.0.1:1/", timeout=90)
    assert result.returncode == 3, result.stderr


@pytest.mark.broker
def test_once_against_the_broker_reaches_a_sink(manager, unique, tmp_path):
    token = f"source-dummy-{unique}"
    with RecordingSink(f"sink-{unique}", manager.url) as sink:
        sink.subscribe([f"{unique}.0", f"{unique}.1"])
        result = cli("source", "--plugin", "dummy", "--once", "--url", manager.url,
                     "--token", token, "--config", _dummy_config(tmp_path, unique))
        assert result.returncode == 0, result.stderr
        assert wait_until(lambda: sink.count() == 2)
    with mqsync.Client(f"check-{unique}", manager.url) as client:
        metadata = client.get_metrics(prefix=f"{unique}.")
    assert set(metadata) == {f"{unique}.0", f"{unique}.1"}
    assert all(m["source"] == token for m in metadata.values())


@pytest.mark.broker
def test_sigterm_ends_a_source_on_the_broker_cleanly(manager, unique, tmp_path):
    with RecordingSink(f"sink-{unique}", manager.url) as sink:
        sink.subscribe([f"{unique}.0"])
        config = _dummy_config(tmp_path, unique, count=1)
        with running_cli("source", "--plugin", "dummy", "--url", manager.url, "--token",
                         f"source-{unique}", "--config", config, "--period", "10ms") as process:
            assert wait_until(lambda: sink.count() >= 3, timeout=30)
            process.send_signal(signal.SIGTERM)
            assert process.wait(20) == 0
        times = [t for _, t, _ in sink.points]
        assert times == sorted(times)


@pytest.mark.broker
def test_manager_cli_serves_configurations_from_a_toml_file(broker_url, tmp_path, unique):
    import subprocess as sp

    vhost = f"mqsync-cli-{unique}"
    sp.run(["rabbitmqctl", "add_vhost", vhost], capture_output=True, check=False)
    sp.run(["rabbitmqctl", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
           capture_output=True, check=False)
    url = broker_url.rsplit("/", 1)[0] + "/" + vhost
    config = tmp_path / "clients.toml"
    config.write_text(f'["sink-{unique}"]\nthreshold = 5\n')

    class Durable(mqsync.DurableSink):
        def on_data(self, metric, timestamp, value):
            pass

    try:
        with running_cli("manager", "--url", url, "--config", str(config)) as process:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with Durable(f"sink-{unique}", url, connect_timeout=5) as sink:
                        assert sink.config == {"threshold": 5}
                    break
                except mqsync.ConnectFailed:
                    assert time.monotonic() < deadline, process.stderr.read()
                    time.sleep(0.3)
            process.send_signal(signal.SIGTERM)
            assert process.wait(20) == 0
    finally:
        sp.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True, check=False)


def _dummy_config(directory, unique: str, count: int = 2) -> str:
    path = directory / "dummy.json"
    path.write_text(json.dumps({"prefix": unique, "metrics": count}))
    return str(path)


def test_source_sink_and_manager_share_the_cli_configuration_file(tmp_path):
    config = tmp_path / "cli.toml"
    config.write_text('url = "amqp://u:s3cret@broker.invalid/"\n'
                      '[source]\ntoken = "source-from-file-$USER"\n')
    result = cli("source", "--config-file", str(config), "--show-config")
    assert result.returncode == 0, result.stderr
    assert "source-from-file-" in result.stdout and "$USER" not in result.stdout
    assert "s3cret" not in result.stdout + result.stderr
    for command in ("sink", "manager"):
        shown = cli(command, "--config-file", str(config), "--show-config",
                    *(["some.metric"] if command == "sink" else []))
        assert shown.returncode == 0, shown.stderr
        assert "broker.invalid" in shown.stdout and "s3cret" not in shown.stdout

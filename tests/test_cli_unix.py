"""The commands as Unix users meet them: piped into ``head``, run once from cron, watched in a
terminal, started twice with one token, pointed at the wrong port, given a typo in a config.

Every command runs as a subprocess (``python -m mqsync.cli.<command>``) with no ``MQSYNC_*``
variables and an empty home (no cli.toml); its stderr goes to a file, so a command that
writes a traceback per chunk fails the test instead of blocking on a full pipe.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from mqsync.cli._common import (
    EXIT_PIPE,
    LineWriter,
    _ReportedByTheCommand,
    connect_failure_message,
)
from mqsync.cli.send import main as send_main
from mqsync.cli.sink import main as sink_main
from mqsync.cli.source import main as source_main
from mqsync.errors import ConnectFailed, RPCTimeout
from mqsync.names import redact_url
from tests._support import RecordingSink, wait_until

#: Seconds a command may take to end once its reader went away.
PIPE_EXIT_TIMEOUT = 30
#: A port on the loopback interface where nothing listens.
CLOSED_PORT_URL = "amqp://guest:s3cret@127.0.0.1:1/"


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    """A command's environment: no MQSYNC_* of the caller, an empty home (no cli.toml)."""
    home = tmp_path / "home"
    home.mkdir()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MQSYNC_")}
    environment["HOME"] = str(home)
    return environment


def command(module: str, *args: object) -> list[str]:
    return [sys.executable, "-m", f"mqsync.cli.{module}", *map(str, args)]


def run(
    module: str, *args: object, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(module, *args), capture_output=True, text=True, env=env, timeout=timeout
    )


class Running:
    """A command in the background: stdout a pipe we read, stderr a file."""

    def __init__(self, process: subprocess.Popen[str], stderr_path: Path):
        self.process = process
        self.stderr_path = stderr_path

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def read_lines(self, count: int, timeout: float = 30) -> list[str]:
        """Up to ``count`` lines of stdout, waiting at most ``timeout`` seconds."""
        assert self.process.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + timeout
        while len(lines) < count and time.monotonic() < deadline:
            ready, _, _ = select.select([self.process.stdout], [], [], 0.2)
            if ready:
                line = self.process.stdout.readline()
                if not line:
                    break
                lines.append(line)
        return lines

    def close_stdout(self) -> None:
        """What ``head`` does once it has its lines: close the read end of the pipe."""
        assert self.process.stdout is not None
        self.process.stdout.close()

    def wait(self, timeout: float) -> int | None:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None


@contextlib.contextmanager
def running(module: str, *args: object, env: dict[str, str], tmp_path: Path) -> Iterator[Running]:
    """``module`` running; killed and reaped if the test leaves it running."""
    stderr_path = tmp_path / f"{module}-{time.monotonic_ns()}.stderr"
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen(
            command(module, *args), stdout=subprocess.PIPE, stderr=stderr, text=True, env=env
        )
    try:
        yield Running(process, stderr_path)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        if process.stdout is not None and not process.stdout.closed:
            process.stdout.close()


def assert_quiet_end(code: int | None, stderr: str) -> None:
    """Ended as ``cat`` does when its reader went away: 0 or 141, nothing alarming said."""
    assert code is not None, (
        f"still running {PIPE_EXIT_TIMEOUT} s after its stdout closed; stderr: {stderr[-2000:]}"
    )
    assert code in (0, EXIT_PIPE), (code, stderr[-2000:])
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr[-2000:]
    assert "Exception ignored" not in stderr, stderr[-2000:]
    assert len(stderr.splitlines()) <= 3, stderr[-2000:]


def dummy_source(manager: Any, token: str, config: Path) -> tuple[object, ...]:
    """The arguments of ``running``/``run`` for a dummy source on the manager's network."""
    return ("source", "--plugin", "dummy", "--url", manager.url, "--token", token,
            "--config", config)


def dummy_config(tmp_path: Path, prefix: str, metrics: int = 2) -> Path:
    path = tmp_path / f"dummy-{prefix}.json"
    path.write_text(json.dumps({"prefix": prefix, "metrics": metrics}))
    return path


def wait_for_text(running_command: Running, text: str, timeout: float = 30) -> bool:
    return (
        wait_until(
            lambda: text in running_command.stderr or running_command.process.poll() is not None,
            timeout,
            0.05,
        )
        and text in running_command.stderr
    )


# -- 1. a closed stdout ends the command quietly ---------------------------------------


def test_source_piped_into_a_reader_that_stops_after_three_lines_ends_quietly(env, tmp_path):
    with running(
        "source", "--plugin", "sysinfo", "--period", "50ms", env=env, tmp_path=tmp_path
    ) as source:
        lines = source.read_lines(3)
        assert len(lines) == 3, source.stderr
        source.close_stdout()
        code = source.wait(PIPE_EXIT_TIMEOUT)
        assert_quiet_end(code, source.stderr)


def test_source_once_into_a_reader_gone_before_it_printed_ends_quietly(env, tmp_path):
    with running("source", "--plugin", "sysinfo", "--once", env=env, tmp_path=tmp_path) as source:
        source.close_stdout()  # before the update: its first line meets a closed pipe
        code = source.wait(PIPE_EXIT_TIMEOUT)
        assert_quiet_end(code, source.stderr)
        assert code == EXIT_PIPE


@pytest.mark.broker
@pytest.mark.parametrize("output_format", ["text", "csv"])
def test_sink_piped_into_a_reader_that_stops_after_three_lines_ends_quietly(
    manager, unique, env, tmp_path, output_format
):
    config = dummy_config(tmp_path, unique, metrics=1)
    with running(
        *dummy_source(manager, f"source-{unique}", config),
        "--period",
        "10ms",
        env=env,
        tmp_path=tmp_path,
    ) as source:
        assert wait_for_text(source, "sending"), source.stderr
        with running(
            "sink",
            "--url",
            manager.url,
            "--format",
            output_format,
            f"{unique}.0",
            env=env,
            tmp_path=tmp_path,
        ) as sink:
            lines = sink.read_lines(3)
            assert len(lines) == 3, sink.stderr
            sink.close_stdout()
            code = sink.wait(PIPE_EXIT_TIMEOUT)
            assert_quiet_end(code, sink.stderr)
            assert code == EXIT_PIPE


def test_line_writer_stops_at_the_first_broken_pipe():
    class Gone(io.StringIO):
        writes = 0

        def write(self, text):
            Gone.writes += 1
            raise BrokenPipeError(32, "Broken pipe")

    closed = []
    writer = LineWriter(Gone(), lambda: closed.append(True))
    assert writer.write("a\n") is False and writer.write("b\n") is False
    assert writer.closed and closed == [True] and Gone.writes == 1
    good = io.StringIO()
    assert LineWriter(good).write("line\n") and good.getvalue() == "line\n"


# -- 2. --once sends every metric -------------------------------------------------------


def _declared(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 0, result.stderr
    return result.stdout.split("metrics: ", 1)[1].strip().split(", ")


def test_once_sends_every_metric_sysinfo_declares(env):
    declared = _declared(run("source", "--plugin", "sysinfo", "--check", env=env))
    result = run("source", "--plugin", "sysinfo", "--once", env=env)
    assert result.returncode == 0, result.stderr
    sent = [line.split()[1] for line in result.stdout.splitlines()]
    assert sorted(sent) == sorted(declared)
    assert any(name.endswith(".cpu.usage") for name in sent)
    assert f"sent {len(declared)} point(s)" in result.stderr
    assert "no value for" not in result.stderr


@pytest.mark.broker
def test_once_on_the_broker_delivers_every_sysinfo_metric(manager, unique, env, tmp_path):
    config = tmp_path / "sysinfo.toml"
    config.write_text(f'prefix = "t{unique}"\n')
    declared = _declared(
        run("source", "--plugin", "sysinfo", "--config", config, "--check", env=env)
    )
    with RecordingSink(f"sink-{unique}", manager.url) as sink:
        sink.subscribe(declared)
        result = run(
            "source",
            "--plugin",
            "sysinfo",
            "--config",
            config,
            "--once",
            "--url",
            manager.url,
            "--token",
            f"source-sysinfo-{unique}",
            env=env,
        )
        assert result.returncode == 0, result.stderr
        assert wait_until(lambda: sink.count() >= len(declared), timeout=30)
        time.sleep(0.2)
        assert sorted(metric for metric, _, _ in sink.points) == sorted(declared)


# -- 3. a source on the network says that it runs -------------------------------------


@pytest.mark.broker
def test_source_prints_one_startup_line_and_a_status_line_per_interval(
    manager, unique, env, tmp_path
):
    token = f"source-{unique}"
    config = dummy_config(tmp_path, unique)
    with running(
        *dummy_source(manager, token, config),
        "--period",
        "100ms",
        "--status-interval",
        "1s",
        env=env,
        tmp_path=tmp_path,
    ) as source:
        assert wait_until(
            lambda: source.stderr.count("status:") >= 2 or source.process.poll() is not None,
            timeout=30,
        ), source.stderr
        source.process.send_signal(signal.SIGTERM)
        assert source.wait(20) == 0, source.stderr
        lines = source.stderr.splitlines()
    startup = lines[0]
    for expected in (
        "dummy",
        repr(token),
        redact_url(manager.url),
        "2 metric(s)",
        "every 100ms",
        "every 1s",
    ):
        assert expected in startup, (expected, startup)
    status = [line for line in lines if "status:" in line]
    assert len(status) >= 2 and len(lines) == 1 + len(status), lines
    counts = [
        int(re.search(r"status: (\d+) points in (\d+) chunks", line).group(1)) for line in status
    ]
    assert counts[-1] > counts[0] > 0, status
    assert all("reconnects" in line and "lost" in line and "updates" in line for line in status)
    assert ":guest@" not in source.stderr  # the password (guest) is masked


@pytest.mark.broker
def test_source_without_status_interval_prints_only_the_startup_line(
    manager, unique, env, tmp_path
):
    with running(
        *dummy_source(manager, f"source-{unique}", dummy_config(tmp_path, unique)),
        "--period",
        "100ms",
        env=env,
        tmp_path=tmp_path,
    ) as source:
        assert wait_for_text(source, "sending"), source.stderr
        time.sleep(2)
        source.process.send_signal(signal.SIGTERM)
        assert source.wait(20) == 0, source.stderr
        lines = source.stderr.splitlines()
    assert len(lines) == 1 and f"'source-{unique}'" in lines[0], lines


# -- 4. a token in use --------------------------------------------------------------------


@pytest.mark.broker
def test_a_second_client_with_the_same_token_is_told_to_pick_another(
    manager, unique, env, tmp_path
):
    token = f"source-{unique}"
    config = dummy_config(tmp_path, unique)
    with running(
        *dummy_source(manager, token, config),
        env=env,
        tmp_path=tmp_path,
    ) as first:
        assert wait_for_text(first, "sending"), first.stderr
        for module, args in (
            ("source", ("--plugin", "dummy", "--config", config, "--once")),
            ("send", (f"{unique}.0", 1.5)),
        ):
            result = run(module, "--url", manager.url, "--token", token, *args, env=env)
            assert result.returncode == 3, result.stderr
            message = result.stderr.strip()
            assert len(message.splitlines()) == 1, message
            assert repr(token) in message and "in use" in message and "--token" in message
            assert "RESOURCE_LOCKED" not in message and "405" not in message
            assert "-mgmt" not in message and ":guest@" not in message
        assert first.process.poll() is None, first.stderr


# -- 5. a connection error is said once, in the user's terms ----------------------------


@pytest.mark.parametrize(
    "module, args",
    [
        ("source", ("--plugin", "dummy")),
        ("sink", ("some.metric",)),
        ("send", ("some.metric", "1")),
        ("db", ("--database", "{tmp_path}/db.sqlite", "--metrics", "some.metric")),
        ("manager", ()),
        ("inspect_metric", ("some.metric",)),
        ("check", ("some.metric",)),
        ("export", ("some.metric", "--start", "-1h")),
        ("measure", ("--metrics", "some.metric", "--no-plot", "--output-dir", "{tmp_path}",
                     "--", sys.executable, "-c", "pass")),
    ],
)
def test_a_connection_error_is_printed_once_without_internal_names(env, tmp_path, module,
                                                                    args):
    with socket.socket() as probe:  # the test needs a port where nothing listens
        assert probe.connect_ex(("127.0.0.1", 1)) != 0
    args = [arg.format(tmp_path=tmp_path) for arg in args]
    result = run(module, "--url", CLOSED_PORT_URL, *args, env=env)
    assert result.returncode == 3, result.stderr
    # a command may announce itself first (manager, db); the error is one line
    lines = [line for line in result.stderr.strip().splitlines()
             if "(Ctrl-C to stop)" not in line]
    assert len(lines) == 1, lines
    message = lines[0]
    assert message.startswith(f"mqsync-{module.replace('_metric', '')}: ")
    assert "amqp://guest:******@127.0.0.1:1/" in message and "s3cret" not in message
    assert "127.0.0.1:1" in message and "RabbitMQ running" in message
    assert "-mgmt" not in message and "ERROR" not in message


class _Locked(Exception):
    reply_code = 405
    reply_text = "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'x-rpc'"


class _Refused(Exception):
    reply_code = 403
    reply_text = "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN"


class _NoVhost(Exception):
    reply_code = 530
    reply_text = "NOT_ALLOWED - vhost lab not found"


def _failed(cause: BaseException, message: str = "mqsync-tok-mgmt: cannot connect") -> Exception:
    try:
        raise ConnectFailed(message) from cause
    except ConnectFailed as error:
        return error


@pytest.mark.parametrize(
    "cause, url, expected",
    [
        (
            _Locked(),
            "amqp://u:pw@host/",
            ["the token 'tok' is in use", "--token", "amqp://u:******@host/"],
        ),
        (_Refused(), "amqp://alice:pw@host/", ["refused the login of user 'alice'", "password"]),
        (_NoVhost(), "amqp://u:pw@host/lab", ["no virtual host 'lab'", "rabbitmqctl add_vhost"]),
        (
            ConnectionRefusedError(111, "Connection refused"),
            "amqps://u:pw@host/",
            ["nothing accepts connections at host:5671"],
        ),
        (
            socket.gaierror(-2, "Name or service not known"),
            "amqp://u:pw@nohost.invalid/",
            ["'nohost.invalid' does not resolve", "check the host"],
        ),
    ],
)
def test_connect_failure_message_names_the_cause_in_the_users_terms(cause, url, expected):
    message = connect_failure_message(_failed(cause), url, "tok")
    assert all(text in message for text in expected), message
    assert ":pw@" not in message and "mqsync-tok" not in message


def test_connect_failure_message_without_a_known_cause_drops_the_internal_names():
    lost = ConnectFailed(
        "tok: mqsync-tok-data: gave up reconnecting to amqp://u:******@h/ "
        "after 60 s (40 attempts): [Errno 111] Connection refused"
    )
    message = connect_failure_message(lost, "amqp://u:pw@h/", "tok")
    assert message.startswith("lost the connection to the network and gave up reconnecting")
    assert "mqsync-tok" not in message and "tok:" not in message
    timeout = RPCTimeout("tok: no reply to RPC 'source.register' within 10 s")
    message = connect_failure_message(timeout, "amqp://u:pw@h/", "tok")
    assert "manager" in message and "tok:" not in message


def test_the_librarys_error_line_about_a_reported_failure_is_filtered():
    def record(name: str, level: int, message: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, message, args, None)

    failure = ConnectFailed("mqsync-tok-mgmt: cannot connect")
    keep = _ReportedByTheCommand().filter
    assert not keep(record("mqsync.client", logging.ERROR, "%s: start failed: %s", "tok", failure))
    assert not keep(record("mqsync.connection", logging.ERROR, "%s", failure))
    assert keep(record("mqsync.connection", logging.WARNING, "%s: lost: %s", "x", failure))
    assert keep(record("mqsync.source", logging.ERROR, "%s: 3 points lost", "tok"))


# -- 6. one rule for unknown configuration keys ------------------------------------------


def test_an_unknown_key_in_a_plugin_configuration_is_an_error(env, tmp_path):
    config = tmp_path / "sysinfo.toml"
    config.write_text('rate = 2\ncolect = ["cpu"]\n')
    for mode in ("--check", "--once"):
        result = run("source", "--plugin", "sysinfo", "--config", config, mode, env=env)
        assert result.returncode == 2, (mode, result.stdout, result.stderr)
        assert "configuration OK" not in result.stdout
        message = result.stderr.strip()
        assert len(message.splitlines()) == 1, message
        assert str(config) in message and "'colect'" in message
        assert "did you mean 'collect'" in message and "per_core" in message


def test_an_unknown_key_in_cli_toml_is_an_error_of_the_same_kind(env, tmp_path):
    config = tmp_path / "cli.toml"
    config.write_text('[source]\nstatus_intervall = "60s"\n')
    result = run("source", "--config-file", config, "--plugin", "dummy", "--check", env=env)
    assert result.returncode == 2, result.stderr
    assert "unknown key 'status_intervall'" in result.stderr
    assert re.search(r"\bstatus_interval\b", result.stderr.replace("'status_intervall'", ""))


def test_status_interval_comes_from_cli_toml_too(env, tmp_path):
    config = tmp_path / "cli.toml"
    config.write_text('[source]\nstatus_interval = "90s"\n')
    result = run("source", "--config-file", config, "--show-config", env=env)
    assert result.returncode == 0, result.stderr
    assert "status_interval = 90.0" in result.stdout


@pytest.mark.broker
def test_an_unknown_key_from_the_manager_stops_the_source_with_its_name(manager, unique, env):
    token = f"source-{unique}"
    manager.set_config(token, {"prefix": unique, "metricz": 2})
    result = run(
        "source", "--plugin", "dummy", "--url", manager.url, "--token", token, "--once", env=env
    )
    assert result.returncode == 1, result.stderr
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert "manager" in message and "'metricz'" in message and repr(token) in message
    assert "Traceback" not in message


# -- 7. every option has a help line -----------------------------------------------------


@pytest.mark.parametrize("main", [source_main, sink_main, send_main])
def test_every_option_has_a_help_line(main, monkeypatch):
    parsers: list[argparse.ArgumentParser] = []

    def capture(self, *args, **kwargs):
        parsers.append(self)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(SystemExit):
        main([])
    (parser,) = parsers
    missing = [
        action.option_strings
        for action in parser._actions
        if action.option_strings and not action.help
    ]
    assert not missing, missing


def test_a_signal_while_once_primes_ends_it_without_sending():
    import argparse
    import threading

    from mqsync.cli import source as source_cli

    class Priming:
        priming_interval = 5.0  # a signal must not wait this out

        def __init__(self):
            self.updates = 0
            self.sent = []

        def send(self, *point):
            self.sent.append(point)

        send_many = send

        def update(self):
            self.updates += 1
            self.send("m", 1, 1.0)

        def flush(self):
            pass

    fake = Priming()
    stop = threading.Event()
    stop.set()  # SIGINT/SIGTERM came in
    code = source_cli._once(fake, argparse.Namespace(url=None), stop)
    assert code == 0
    assert fake.updates == 1 and fake.sent == []  # the priming update only, nothing sent

"""Shared fixtures: the broker (a vhost of its own per test session), a manager on it,
per-test unique names and a thread-leak check."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import pytest

from tests._support import wait_until

BROKER_URL = os.environ.get("MQSYNC_TEST_URL", "amqp://guest:guest@127.0.0.1:5672/")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# rabbit_node: a private RabbitMQ node for tests that restart or kill their broker
pytest_plugins = ["tests._rabbit_node"]


def _broker_answers(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 2):
            return True
    except OSError:
        return False


def require_broker() -> None:
    """Skip (on a developer's machine) or fail (in CI) when no broker answers."""
    if not _broker_answers(BROKER_URL):
        message = f"no RabbitMQ answers at {urlsplit(BROKER_URL).netloc.split('@')[-1]}"
        if IN_CI:
            pytest.fail(message + " (CI=true: broker tests must run, not skip)")
        pytest.skip(message)


def _rabbitmqctl(*args: str) -> bool:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        return False
    result = subprocess.run([ctl, *args], capture_output=True, text=True, timeout=60)
    return result.returncode == 0


def _own_vhost(prefix: str):
    """Yield the broker URL on a new virtual host (deleted afterwards); the URL as given
    where rabbitmqctl is not available (a remote MQSYNC_TEST_URL)."""
    require_broker()
    vhost = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    parts = urlsplit(BROKER_URL)
    user = parts.username or "guest"
    if _rabbitmqctl("add_vhost", vhost) and _rabbitmqctl("set_permissions", "-p", vhost,
                                                          user, ".*", ".*", ".*"):
        yield urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))
        _rabbitmqctl("delete_vhost", vhost)
    else:
        yield BROKER_URL


@pytest.fixture(scope="session")
def broker_url():
    """A RabbitMQ URL on a virtual host of this test session's own.

    MetricQ's exchange and queue names are fixed, so a fresh vhost keeps this session's
    manager and clients apart from anything else on the broker.
    """
    yield from _own_vhost("mqsync-test")


@pytest.fixture
def vhost_url():
    """A RabbitMQ URL on a virtual host of this test's own (a network of its own, e.g. one
    whose management queue is declared differently)."""
    yield from _own_vhost("mqsync-test-own")


class ManagerProcess:
    """``mqsync-manager`` running as a subprocess on the session's vhost.

    Its log goes to a file (``log_file``, by default ``manager.log`` beside the metadata
    file), never to a pipe nobody reads: a long session would fill the pipe and block the
    manager.
    """

    def __init__(self, url: str, config_dir: Path, metadata_file: Path,
                 log_file: Path | None = None, args: tuple[str, ...] = ()):
        self.url = url
        self.config_dir = config_dir
        self.metadata_file = metadata_file
        self.log_file = log_file or metadata_file.with_name("manager.log")
        with open(self.log_file, "a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mqsync.cli.manager", "--url", url, "--config",
                 str(config_dir), "--metadata-file", str(metadata_file), "--log-level",
                 "info", *args], stdout=log, stderr=log, text=True)
        # wait_ready() reads it on an early exit, stop() closes it
        self.process.stderr = open(self.log_file)  # noqa: SIM115

    def log_tail(self, limit: int = 3000) -> str:
        return self.log_file.read_text(errors="replace")[-limit:]

    def set_config(self, token: str, config: dict) -> None:
        """Serve ``config`` to ``token`` from the next registration on."""
        (self.config_dir / f"{token}.json").write_text(json.dumps(config))

    def wait_ready(self, timeout: float = 30.0) -> None:
        import mqsync

        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"mqsync-manager exited: {self.process.stderr.read()}")
            try:
                with mqsync.Client(f"probe-{uuid.uuid4().hex[:6]}", self.url,
                                   connect_timeout=5) as probe:
                    probe.get_metrics(timeout=5)
                return
            except mqsync.MqsyncError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def kill9(self) -> None:
        """``kill -9`` the manager; proven by its exit status."""
        self.process.kill()
        self.process.wait(15)
        assert self.process.returncode == -signal.SIGKILL, self.process.returncode

    def stop(self) -> None:
        if self.process.poll() is not None:
            self.process.stderr.close()
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.process.stderr.close()


def vhost_of(url: str) -> str:
    """The virtual host of a broker URL (of its first node, for a node list)."""
    return unquote(urlsplit(url.split(";amqp", 1)[0]).path[1:]) or "/"


def management_consumers(url: str, node: str | None = None) -> list[dict]:
    """The consumers of the network's management queue (``active``: the one the broker
    feeds), asked of ``node`` (default: rabbitmqctl's)."""
    result = subprocess.run(["rabbitmqctl", *(["-n", node] if node else []), "list_consumers",
                             "-q", "-p", vhost_of(url), "--formatter", "json", "queue_name",
                             "active"], capture_output=True, text=True, timeout=60, check=True)
    rows = json.loads(result.stdout.strip() or "[]")
    return [row for row in rows if row["queue_name"] == "management"]


class StandbyPair:
    """Two ``mqsync-manager --standby`` processes sharing one configuration directory, the
    first (active) on ``urls[0]``, the second on ``urls[1]``; ``node`` is where rabbitmqctl
    asks (default: rabbitmqctl's)."""

    def __init__(self, urls: list[str], directory: Path, *extra: str, node: str | None = None):
        self.url = urls[0]
        self.node = node
        config = directory / "clients"
        config.mkdir(exist_ok=True)
        self.managers: list[ManagerProcess] = []
        try:
            for name, url in zip("ab", urls):
                manager = ManagerProcess(url, config, directory / f"metadata-{name}.json",
                                         directory / f"manager-{name}.log",
                                         args=("--standby", *extra))
                self.managers.append(manager)
                manager.wait_ready(timeout=60)
            # both consume the management queue; the broker feeds one
            assert wait_until(lambda: len(self.consumers()) == 2, timeout=30), self.consumers()
        except BaseException:
            self.stop()
            raise

    def consumers(self) -> list[dict]:
        return management_consumers(self.url, self.node)

    @property
    def active(self) -> ManagerProcess:
        return self.managers[0]

    @property
    def standby(self) -> ManagerProcess:
        return self.managers[1]

    def stop(self) -> None:
        for manager in self.managers:
            manager.stop()


@pytest.fixture(scope="session")
def manager(broker_url, tmp_path_factory):
    """``mqsync-manager`` serving the session's vhost, as a subprocess."""
    directory = tmp_path_factory.mktemp("manager")
    (directory / "clients").mkdir()
    process = ManagerProcess(broker_url, directory / "clients", directory / "metadata.json")
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture
def unique() -> str:
    """A short unique string for tokens and metric names, so tests never share data."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Fail a test that leaves a thread of its own running after it finished.

    Checked right after the test and its fixtures' teardown, with no grace period: a
    ``stop()``/``close()``/``__exit__`` that returned must have joined its threads, not
    merely asked them to end.
    """
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not leaked, f"threads left running: {[t.name for t in leaked]}"

"""A private RabbitMQ node for tests that stop, restart or kill their broker.

The shared broker on 127.0.0.1:5672 serves every test session on the machine and must never be
restarted; a test that needs an outage starts a node of its own (see /work/shared/FAULTS.md):
a unique node name, free TCP and distribution ports picked at run time, and a temporary
directory (owned by the ``rabbitmq`` user, whom ``rabbitmq-server`` drops to when run as root)
for its database, logs, config and pid file.

Every outage is *proven*, never assumed: ``stop_app``/``stop`` must succeed and the AMQP port
must refuse connections before the node is started again; a full restart and a ``kill -9``
must also change the Erlang VM's OS pid.  ``outages`` counts the proven ones.

Every subprocess call has a timeout; :meth:`RabbitNode.close` stops the node and removes its
directory, and the fixtures always call it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

#: Bound on one rabbitmqctl call that does not wait for a boot.
CTL_TIMEOUT = 60.0
#: Bound on a node's boot (``await_startup``).
BOOT_TIMEOUT = 90.0

_counter = itertools.count(1)


class RabbitNodeError(RuntimeError):
    """The node did not do what was asked (the message has the command's output)."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout):
            return True
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie still answers kill(0); it is dead for our purposes
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0] != "Z"
    return True


class RabbitNode:
    """One private RabbitMQ node, started on construction.

    Attributes:
        name: the Erlang node name, ``mqtest-<pid>-<n>@localhost``.
        port: its AMQP port on 127.0.0.1; ``dist_port`` its Erlang distribution port.
        directory: its private directory (mnesia, logs, config, pid file).
        outages: outages done and proven (stop_app, restart, kill9).
        up_at: when the AMQP port opened again after the last (re)start.
    """

    def __init__(self) -> None:
        for tool in ("rabbitmq-server", "rabbitmqctl"):
            if shutil.which(tool) is None:
                raise RabbitNodeError(f"{tool} is not installed")
        self.name = f"mqtest-{os.getpid()}-{next(_counter)}@localhost"
        self.port = _free_port()
        self.dist_port = _free_port()
        while self.dist_port == self.port:
            self.dist_port = _free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="mqtest-node-"))
        self.directory.chmod(0o755)
        (self.directory / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\nloopback_users = none\n")
        (self.directory / "plugins").touch()
        if os.geteuid() == 0:
            shutil.chown(self.directory, "rabbitmq", "rabbitmq")
            for path in self.directory.iterdir():
                shutil.chown(path, "rabbitmq", "rabbitmq")
        self.outages = 0
        #: When (time.monotonic()) the AMQP port first accepted connections after the last
        #: start: the moment clients can be back, before ``await_startup`` returns.
        self.up_at: float | None = None
        self._closed = False
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"<RabbitNode {self.name} amqp port {self.port}>"

    # -- addresses ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The AMQP URL of the node's default vhost (user guest, allowed off loopback too)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def pid_file(self) -> Path:
        return self.directory / "pid"

    def os_pid(self) -> int | None:
        """The Erlang VM's OS pid from the pid file (None before the first boot wrote it)."""
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def amqp_up(self) -> bool:
        """Whether the AMQP port accepts connections."""
        return _port_open(self.port)

    # -- commands ----------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        d = self.directory
        return {**os.environ,
                "RABBITMQ_NODENAME": self.name,
                "RABBITMQ_NODE_PORT": str(self.port),
                "RABBITMQ_DIST_PORT": str(self.dist_port),
                "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
                "RABBITMQ_LOG_BASE": str(d / "log"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "plugins"),
                "RABBITMQ_PID_FILE": str(self.pid_file),
                "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf")}

    def ctl(self, *args: str, timeout: float = CTL_TIMEOUT, check: bool = True,
            ) -> subprocess.CompletedProcess[str]:
        """Run ``rabbitmqctl -n NODE ARGS`` (bounded); raise on failure when ``check``."""
        return self._run(["rabbitmqctl", "-n", self.name, *args], timeout=timeout, check=check)

    def _run(self, command: list[str], *, timeout: float, check: bool = True,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``command`` (bounded); while it runs, note when the AMQP port opens."""
        with tempfile.TemporaryFile("w+") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                       text=True, env=env)
            deadline = time.monotonic() + timeout
            while process.poll() is None:
                self._note_port()
                if time.monotonic() > deadline:
                    process.kill()
                    process.wait(10)
                    raise RabbitNodeError(f"{' '.join(command)} ran longer than {timeout:g} s")
                time.sleep(0.02)
            out.seek(0)
            output = out.read()
        result = subprocess.CompletedProcess(command, process.returncode, output, "")
        if check and result.returncode != 0:
            raise RabbitNodeError(f"{' '.join(command)} failed ({result.returncode}): "
                                  f"{output[-2000:]}")
        return result

    def _note_port(self) -> None:
        if self.up_at is None and _port_open(self.port, 0.2):
            self.up_at = time.monotonic()

    def _start(self) -> None:
        """Boot the node (same environment and directories every time) and wait for it."""
        self.up_at = None
        self._run(["rabbitmq-server", "-detached"], env=self._env(), timeout=CTL_TIMEOUT)
        self._await_startup()

    def _await_startup(self) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while True:
            # await_startup fails at once while the VM is not yet registered with epmd
            result = self.ctl("await_startup", "--timeout", str(int(BOOT_TIMEOUT)),
                              timeout=BOOT_TIMEOUT + 10, check=False)
            if result.returncode == 0 and self._wait_port(True, deadline - time.monotonic()):
                self._note_port()
                return
            if time.monotonic() > deadline:
                raise RabbitNodeError(f"{self.name} did not boot within {BOOT_TIMEOUT:g} s: "
                                      f"{(result.stdout + result.stderr)[-1000:]}\n"
                                      f"{self._log_tail()}")
            time.sleep(0.3)

    def _wait_port(self, up: bool, timeout: float) -> bool:
        deadline = time.monotonic() + max(0.0, timeout)
        while self.amqp_up() != up:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def _log_tail(self, limit: int = 3000) -> str:
        logs = sorted((self.directory / "log").glob("*.log"))
        return "".join(path.read_text(errors="replace")[-limit:] for path in logs)

    def _prove_down(self, what: str) -> None:
        if not self._wait_port(False, 30.0):
            raise RabbitNodeError(f"{what}: the AMQP port {self.port} still accepts connections")

    def _stop_node(self) -> int | None:
        """``rabbitmqctl stop`` and wait until the VM is gone; return its old OS pid."""
        pid = self.os_pid()
        self.ctl("stop", str(self.pid_file), timeout=CTL_TIMEOUT)
        deadline = time.monotonic() + 30.0
        while pid is not None and _pid_alive(pid):
            if time.monotonic() > deadline:
                raise RabbitNodeError(f"{self.name}: VM pid {pid} still alive after stop")
            time.sleep(0.05)
        self._prove_down("stop")
        return pid

    # -- outages -----------------------------------------------------------------------

    def stop_app(self) -> None:
        """Stop the RabbitMQ application (the VM keeps running); proven by the port closing."""
        self.ctl("stop_app")
        self._prove_down("stop_app")

    def start_app(self) -> None:
        """Start the application again and wait until it serves AMQP."""
        self.up_at = None
        self.ctl("start_app", timeout=BOOT_TIMEOUT)
        self._await_startup()
        self.outages += 1

    def stop(self) -> int | None:
        """Stop the whole node (the VM exits); return the VM's old OS pid."""
        return self._stop_node()

    def start(self, old_pid: int | None = None) -> None:
        """Boot the node again; with ``old_pid`` prove that a new VM runs."""
        self._start()
        new_pid = self.os_pid()
        if old_pid is not None:
            if new_pid is None or new_pid == old_pid:
                raise RabbitNodeError(f"{self.name}: VM pid {new_pid} after the restart, "
                                      f"{old_pid} before: it did not restart")
            self.outages += 1

    def restart(self, down_for: float = 0.0) -> None:
        """Full stop, ``down_for`` seconds down, the same start line again; proven by the pid."""
        old = self._stop_node()
        time.sleep(down_for)
        self.start(old_pid=old)

    def kill9(self, down_for: float = 0.0) -> None:
        """``kill -9`` of the Erlang VM, ``down_for`` seconds down, then start it again."""
        pid = self.os_pid()
        if pid is None:
            raise RabbitNodeError(f"{self.name}: no pid file to kill by")
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30.0
        while _pid_alive(pid):
            if time.monotonic() > deadline:
                raise RabbitNodeError(f"{self.name}: pid {pid} survived kill -9")
            time.sleep(0.05)
        self._prove_down("kill -9")
        time.sleep(down_for)
        self.start(old_pid=pid)

    # -- inspection --------------------------------------------------------------------

    def list_queues(self, vhost: str = "/") -> dict[str, dict[str, Any]]:
        """``{name: {"durable", "auto_delete", "messages_ready", "messages_unacknowledged"}}``
        of the queues in ``vhost``."""
        return list_queues(vhost, node=self.name)

    def uptime_s(self) -> float:
        """Seconds since the Erlang VM started."""
        result = self.ctl("eval", "element(1, erlang:statistics(wall_clock)).")
        return int(result.stdout.strip()) / 1000.0

    # -- the end -----------------------------------------------------------------------

    def close(self) -> None:
        """Stop the node (killing it if it will not stop) and remove its directory."""
        if self._closed:
            return
        self._closed = True
        pid = self.os_pid()
        with contextlib.suppress(RabbitNodeError):
            self.ctl("stop", str(self.pid_file), timeout=CTL_TIMEOUT, check=False)
        if pid is not None and _pid_alive(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10.0
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        shutil.rmtree(self.directory, ignore_errors=True)


def list_queues(vhost: str = "/", node: str | None = None) -> dict[str, dict[str, Any]]:
    """The queues of ``vhost`` on ``node`` (default: rabbitmqctl's default node), by name:
    ``{"name", "durable", "auto_delete", "messages_ready", "messages_unacknowledged"}``."""
    command = ["rabbitmqctl", *(["-n", node] if node else []), "list_queues", "-q", "-p",
               vhost, "--formatter", "json", "name", "durable", "auto_delete",
               "messages_ready", "messages_unacknowledged"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=CTL_TIMEOUT)
    except subprocess.TimeoutExpired as error:
        raise RabbitNodeError(f"{' '.join(command)} ran longer than {CTL_TIMEOUT:g} s") \
            from error
    if result.returncode != 0:
        raise RabbitNodeError(f"{' '.join(command)} failed ({result.returncode}): "
                              f"{(result.stdout + result.stderr)[-2000:]}")
    text = result.stdout.strip()
    rows = json.loads(text) if text else []
    return {row["name"]: row for row in rows}


def _node_or_skip() -> RabbitNode:
    if shutil.which("rabbitmq-server") is None or shutil.which("rabbitmqctl") is None:
        message = "rabbitmq-server is not installed: cannot start a private node"
        if IN_CI:
            pytest.fail(message + " (CI=true: restart tests must run, not skip)", pytrace=False)
        pytest.skip(message)
    return RabbitNode()


@pytest.fixture(scope="module")
def rabbit_node() -> Iterator[RabbitNode]:
    """A private RabbitMQ node for this test module, always stopped and removed after it."""
    node = _node_or_skip()
    try:
        yield node
    finally:
        node.close()

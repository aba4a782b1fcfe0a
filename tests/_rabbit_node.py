"""A private RabbitMQ node for tests that stop, restart or kill their broker.

The shared broker on 127.0.0.1:5672 serves every test session on the machine and must never be
restarted; a test that needs an outage starts a node of its own (see /work/shared/FAULTS.md):
a unique node name, free TCP and distribution ports picked at run time, and a temporary
directory (owned by the ``rabbitmq`` user, whom ``rabbitmq-server`` drops to when run as root)
for its database, logs, config and pid file.

Every outage is *proven*, never assumed: ``stop_app``/``stop`` must succeed and the AMQP port
must refuse connections before the node is started again; a full restart and a ``kill -9``
must also change the Erlang VM's OS pid.  ``outages`` counts the proven ones.

:class:`RabbitCluster` starts several such nodes one after the other and joins them into one
cluster (``join_cluster``), proven by ``cluster_status``; a member killed with ``kill -9`` and
started again (same name, ports and mnesia directory) rejoins by itself.

Every subprocess call has a timeout; :meth:`RabbitNode.close` stops the node and removes its
directory (:meth:`RabbitCluster.close` does so for every member), and the fixtures
(``rabbit_node``, ``rabbit_cluster``) always call it.
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
import threading
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
        pid = self.kill()
        time.sleep(down_for)
        self.start(old_pid=pid)

    def kill(self) -> int:
        """``kill -9`` of the Erlang VM, proven (the pid is gone, the AMQP port refuses
        connections); the node stays down.  Return the killed VM's OS pid (for ``start``)."""
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
        return pid

    def vm_alive(self) -> bool:
        """Whether the node's Erlang VM (by the pid file) runs."""
        pid = self.os_pid()
        return pid is not None and _pid_alive(pid)

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


#: The columns ``list_queues`` asks for by default (every caller relies on these keys).
QUEUE_COLUMNS = ("name", "durable", "auto_delete", "messages_ready", "messages_unacknowledged")


def list_queues(vhost: str = "/", node: str | None = None,
                columns: tuple[str, ...] | list[str] | None = None,
                ) -> dict[str, dict[str, Any]]:
    """The queues of ``vhost`` on ``node`` (default: rabbitmqctl's default node), by name:
    ``{"name", "durable", "auto_delete", "messages_ready", "messages_unacknowledged"}``,
    plus any further ``columns`` (rabbitmqctl list_queues info items, e.g. ``type``,
    ``leader``, ``members``, ``pid``); ``name`` is always asked for."""
    wanted = list(QUEUE_COLUMNS)
    wanted += [c for c in (columns or ()) if c not in wanted]
    command = ["rabbitmqctl", *(["-n", node] if node else []), "list_queues", "-q", "-p",
               vhost, "--formatter", "json", *wanted]
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


class RabbitCluster:
    """A private cluster of ``size`` RabbitMQ nodes (default 3), formed on construction.

    The nodes boot one after the other (two booting at the same moment made one fail here);
    nodes 2..N then join node 1 (``stop_app``, ``join_cluster``, ``start_app``), and the
    cluster is proven formed: ``cluster_status`` on node 1 lists every node as running.

    Attributes:
        nodes: the members, node 1 first (``nodes[0]``).
        boot_s: seconds from the first node's start until the cluster was proven formed.
    """

    def __init__(self, size: int = 3) -> None:
        if size < 1:
            raise ValueError(f"a cluster needs at least one node, not {size}")
        self.nodes: list[RabbitNode] = []
        self.boot_s: float | None = None
        self._killed: dict[int, int] = {}  # node index -> OS pid of the VM killed
        self._closed = False
        started = time.monotonic()
        try:
            for _ in range(size):
                self.nodes.append(RabbitNode())
            first = self.nodes[0]
            for node in self.nodes[1:]:
                node.ctl("stop_app")
                node._prove_down("stop_app before join_cluster")
                node.ctl("join_cluster", first.name)
                node.up_at = None
                node.ctl("start_app", timeout=BOOT_TIMEOUT)
                node._await_startup()
            self._await_running(self.names, ask=first)
        except BaseException:
            self.close()
            raise
        self.boot_s = time.monotonic() - started

    def __repr__(self) -> str:
        return f"<RabbitCluster {[node.name for node in self.nodes]}>"

    def __enter__(self) -> RabbitCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- addresses ---------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """The nodes' Erlang names, in order."""
        return [node.name for node in self.nodes]

    @property
    def urls(self) -> list[str]:
        """Every node's AMQP URL, in order."""
        return [node.url for node in self.nodes]

    def url(self, first: int = 0) -> str:
        """The failover URL ``amqp://...:P1/;amqp://...:P2/;...``: node ``first`` first,
        then the others in order (a client connects to the first one that answers)."""
        order = [first, *(i for i in range(len(self.nodes)) if i != first)]
        return ";".join(self.nodes[i].url for i in order)

    # -- inspection --------------------------------------------------------------------

    def _live(self, prefer: int | RabbitNode | None = None) -> list[RabbitNode]:
        """Nodes whose VM runs, ``prefer`` first."""
        if isinstance(prefer, int):
            prefer = self.nodes[prefer]
        order = ([prefer] if prefer is not None else []) + \
            [node for node in self.nodes if node is not prefer]
        return [node for node in order if node.vm_alive()]

    def _ask(self, *args: str, prefer: int | RabbitNode | None = None,
             ) -> subprocess.CompletedProcess[str]:
        """``rabbitmqctl ARGS`` on the first live node (``prefer`` first) that answers."""
        failures = []
        for node in self._live(prefer):
            result = node.ctl(*args, check=False)
            if result.returncode == 0:
                return result
            failures.append(f"{node.name}: {result.stdout[-500:]}")
        raise RabbitNodeError(f"no live node answered rabbitmqctl {' '.join(args)}: "
                              f"{failures or 'no VM runs'}")

    def cluster_status(self, ask: int | RabbitNode | None = None) -> dict[str, Any]:
        """``cluster_status --formatter json`` of node ``ask`` (default: the first live
        node that answers), parsed."""
        result = self._ask("cluster_status", "--formatter", "json", prefer=ask)
        try:
            return json.loads(result.stdout)
        except ValueError as error:
            raise RabbitNodeError(f"cluster_status: not JSON: {result.stdout[-2000:]}") \
                from error

    def running_nodes(self, ask: int | RabbitNode | None = None) -> list[str]:
        """The names ``cluster_status`` (of node ``ask``, or of any live node) lists as
        running."""
        return sorted(self.cluster_status(ask).get("running_nodes", []))

    def _await_running(self, expected: list[str], ask: int | RabbitNode | None = None,
                       timeout: float = 60.0) -> None:
        """Wait until ``cluster_status`` (of node ``ask``) lists exactly ``expected`` as
        running; raise with the last output otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.cluster_status(ask)
            if sorted(status.get("running_nodes", [])) == sorted(expected):
                return
            if time.monotonic() > deadline:
                raise RabbitNodeError(f"cluster_status does not list {sorted(expected)} as "
                                      f"running after {timeout:g} s: {json.dumps(status)}")
            time.sleep(0.2)

    def node_of_port(self, port: int) -> RabbitNode | None:
        """The node whose AMQP port is ``port``."""
        return next((node for node in self.nodes if node.port == port), None)

    def connections(self) -> list[dict[str, Any]]:
        """Every client connection of the cluster: ``{"name", "port", "client_properties",
        "connection_name", "node"}`` (``node``: the RabbitNode it is connected to).

        On RabbitMQ 3.10 ``list_connections`` lists the connections of the *whole cluster*
        whichever node is asked (checked), and its JSON shows pids without their node, so
        the node is found by ``port``: the AMQP port the connection came in on."""
        result = self._ask("list_connections", "-q", "--formatter", "json", "name", "port",
                           "client_properties")
        text = result.stdout.strip()
        rows = json.loads(text) if text else []
        for row in rows:
            props = row.get("client_properties") or []
            if isinstance(props, dict):
                row["connection_name"] = props.get("connection_name")
            else:  # [[key, type, value], ...]
                row["connection_name"] = next(
                    (item[2] for item in props
                     if isinstance(item, list) and len(item) == 3
                     and item[0] == "connection_name"), None)
            row["node"] = self.node_of_port(int(row.get("port") or 0))
        return rows

    def node_of_connection(self, connection_name: str) -> RabbitNode | None:
        """The node a client connection whose ``connection_name`` client property is
        ``connection_name`` is connected to (None: no such connection); mqsync sets it to
        its IO thread's name, e.g. ``mqsync-<token>-data``."""
        nodes = {id(row["node"]): row["node"] for row in self.connections()
                 if row["connection_name"] == connection_name and row["node"] is not None}
        if len(nodes) > 1:
            raise RabbitNodeError(f"connection {connection_name!r} on several nodes: "
                                  f"{list(nodes.values())}")
        return next(iter(nodes.values()), None)

    def list_queues(self, vhost: str = "/", ask: int | RabbitNode | None = None,
                    ) -> dict[str, dict[str, Any]]:
        """The queues of ``vhost``, by name, as live node ``ask`` (default: the first live
        one) sees them: the keys of :func:`list_queues` plus ``type`` (``classic``/``quorum``),
        ``state`` (``running``; ``down`` for a durable classic queue whose node is down), and

        - quorum queues: ``leader`` (node name), ``members`` and ``online`` (node names);
        - ``node``: the node that hosts a classic queue; a quorum queue's leader.

        What only a down node knows (e.g. its classic queues' message counts) is None.
        """
        node = self._live(ask)
        if not node:
            raise RabbitNodeError("list_queues: no VM of the cluster runs")
        queues = list_queues(vhost, node=node[0].name,
                             columns=("type", "state", "leader", "members", "online"))
        # the JSON formatter drops a pid's node; the plain one shows <node.N.N.N>
        plain = node[0].ctl("list_queues", "-q", "-p", vhost, "--no-table-headers",
                            "name", "pid")
        homes = {}
        for line in plain.stdout.splitlines():
            name, _, pid = line.rpartition("\t")
            if name and pid.startswith("<") and "@" in pid:
                homes[name] = pid.strip("<>").rsplit(".", 3)[0]
        for name, row in queues.items():
            # a queue whose node is down shows "" for what only that node knows
            for key, value in row.items():
                if value == "":
                    row[key] = None
            # ... and its type as the module: rabbit_classic_queue, rabbit_quorum_queue
            kind = row.get("type") or ""
            if kind.startswith("rabbit_") and kind.endswith("_queue"):
                row["type"] = kind[len("rabbit_"):-len("_queue")]
            row["node"] = row["leader"] if row.get("type") == "quorum" else homes.get(name)
        return queues

    # -- outages -----------------------------------------------------------------------

    def kill9(self, i: int, down_for: float = 0.0, restart: bool = True) -> None:
        """``kill -9`` of node ``i``'s Erlang VM, proven (pid gone, AMQP port refusing);
        with ``restart``, ``down_for`` seconds later :meth:`restart_node` (``i``); without,
        the node stays down until the caller calls :meth:`restart_node`."""
        node = self.nodes[i]
        self._killed[i] = node.kill()
        if restart:
            time.sleep(down_for)
            self.restart_node(i)

    def restart_node(self, i: int) -> None:
        """Boot node ``i`` (down: killed or stopped) again; with the same name, ports and
        mnesia directory it rejoins the cluster by itself.  Proven: a new VM pid after a
        kill, and ``cluster_status`` of another live node lists it as running again."""
        node = self.nodes[i]
        node.start(old_pid=self._killed.pop(i, None))
        others = [n for n in self.nodes if n is not node and n.vm_alive()]
        expected = [n.name for n in self.nodes if n.vm_alive()]
        self._await_running(expected, ask=others[0] if others else node)

    def wait_down(self, i: int, timeout: float = 30.0) -> None:
        """Wait until ``cluster_status`` of the other live nodes no longer lists node ``i``
        as running."""
        name = self.nodes[i].name
        deadline = time.monotonic() + timeout
        while name in self.running_nodes(ask=(i + 1) % len(self.nodes)):
            if time.monotonic() > deadline:
                raise RabbitNodeError(f"{name} still listed as running after {timeout:g} s")
            time.sleep(0.1)

    # -- the end -----------------------------------------------------------------------

    def close(self) -> None:
        """Stop every node (killing those that will not stop; dead ones are fine) and remove
        their directories.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []

        def close(node: RabbitNode) -> None:
            try:
                node.close()
            except Exception as error:  # close the others all the same
                errors.append(f"{node.name}: {error!r}")

        # all at once (one by one took ~3.5 s a node); each close is bounded and joined here
        threads = [threading.Thread(target=close, args=(node,), name=f"close-{node.name}")
                   for node in self.nodes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise RabbitNodeError(f"closing the cluster: {errors}")


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


def _cluster_or_skip(size: int = 3) -> RabbitCluster:
    if shutil.which("rabbitmq-server") is None or shutil.which("rabbitmqctl") is None:
        message = "rabbitmq-server is not installed: cannot start a private cluster"
        if IN_CI:
            pytest.fail(message + " (CI=true: cluster tests must run, not skip)", pytrace=False)
        pytest.skip(message)
    return RabbitCluster(size)


@pytest.fixture(scope="module")
def rabbit_cluster() -> Iterator[RabbitCluster]:
    """A private 3-node RabbitMQ cluster for this test module, always stopped and removed
    after it."""
    cluster = _cluster_or_skip()
    try:
        yield cluster
    finally:
        cluster.close()

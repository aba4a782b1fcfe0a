"""Benchmark: quorum queues against classic queues on a private 3-node RabbitMQ cluster.

    python bench/bench_cluster.py [--quick] [--runs 5] [--json results.json]

On a cluster, ``mqsync-manager --queue-type quorum`` declares the sinks' data queues (and
its management queue) as quorum queues: replicated on every node (Raft), every message on
disk, so a node may die without losing data (``tests/test_cluster.py`` proves it).  The
price is paid on the data path, and this benchmark measures it, in one run, against classic
queues on the same cluster:

- a private cluster of 3 nodes (``tests/_rabbit_node.py``: its own names, ports and
  directories on loopback; the shared broker on 5672 is not used at all), stopped and
  removed at the end, also after an error, Ctrl-C or SIGTERM;
- two vhosts on it, each a MetricQ network with an in-process :class:`Manager`:
  **classic** (``queue_type="classic"``) and **quorum** (``queue_type="quorum"``); a
  network's management queue type is fixed, so each queue type needs a vhost of its own;
- per run a ``Source`` (persistent chunks, publisher confirms) connected to node 0, a
  ``Sink`` (durable data queue, mqsync's default) connected to node 1 and the managers
  connected to node 2 (failover URLs with that node first), so that the data crosses the
  cluster as in production.  The data queue is declared by the manager, so the broker puts
  it on the manager's node: a classic queue's home and a quorum queue's leader are node 2
  (checked, printed).  A chunk thus goes source -> node 0 (routing) -> node 2 (the queue;
  for quorum also replicated to nodes 0 and 1 before it is confirmed) -> node 1 -> sink.

Runs alternate classic, quorum, classic, quorum ... (``--runs`` each, default 5; ``--quick``:
2 unless ``--runs`` is given), so both see the same machine.  A run sends 200 000 points in
chunks of 100, or 1 000 000 in chunks of 1000, so that it lasts about half a second
(``--quick``: a quarter of that).  Every run uses a fresh metric, Source and Sink (whose
queue is released at the end); the bench asserts that the sink's queue is of the network's
type and that the sink received exactly every point, in chunks of the chunk size.

Figures, per chunk size (100 and 1000 points):

- *send*: points/s of the send loop (one ``send_many`` of ``chunk size`` points per chunk:
  a ``send_many`` of more points would leave as one bigger chunk) plus
  ``flush()``, which returns once the broker confirmed every chunk (for a quorum queue: once
  a majority of the nodes has it on disk);
- *end to end*: points/s from the first ``send_many`` until the sink's ``on_chunk`` has
  seen the last point.

The ratio is quorum / classic: 1.0 means replication is free, 0.5 that it halves the
throughput.  Also reported: the cluster's boot time (three nodes one after the other, then
joined).  Three Erlang VMs and the Python process share the machine's CPUs, so the absolute
figures depend on the machine and its load more than the ratios do.  The whole run took
40-55 s with ``--quick`` and 77-83 s without on 2 busy CPUs (20-30 s of it the cluster's
boot).  It needs ``rabbitmq-server`` and ``rabbitmqctl`` on this machine (and pytest, which
``tests/_rabbit_node.py`` imports), so ``run_all.py`` runs it only when asked (``--only
cluster``), and it ignores ``--url``: it brings its own cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402  (it puts the repository root on sys.path: mqsync, tests)
from _common import STEP_NS, T0, Result, format_value, median  # noqa: E402

import mqsync  # noqa: E402
from mqsync.manager import Manager  # noqa: E402
from mqsync.manager.manager import MANAGEMENT_QUEUE  # noqa: E402

#: Bound on every wait for the broker or the sink.
TIMEOUT = 120.0
SOURCE_NODE, SINK_NODE, MANAGER_NODE = 0, 1, 2
#: The queue types, in the order they alternate (classic is the baseline).
KINDS = ("classic", "quorum")
#: Points a run per chunk size (full, quick): 2000 chunks of 100, 1000 chunks of 1000, so
#: that a run lasts about half a second, not a tenth (then start-up effects dominate).
POINTS = {100: (200_000, 50_000), 1000: (1_000_000, 250_000)}
CLIENT_OPTIONS: dict[str, Any] = {"connect_timeout": 30, "rpc_timeout": 30}


class _Counter(mqsync.Sink):
    """Counts points and chunks; ``done`` is set (and ``done_at`` noted) at the expected
    total."""

    def __init__(self, *args: Any, expected: int, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.expected = expected
        self.received = 0
        self.chunks = 0
        self.done_at: float | None = None
        self.done = threading.Event()

    def on_chunk(self, metric: str, times_ns: Sequence[int], values: Sequence[float]) -> None:
        self.received += len(times_ns)
        self.chunks += 1
        if self.received >= self.expected and self.done_at is None:
            self.done_at = time.perf_counter()
            self.done.set()


class Network:
    """One vhost of the cluster with its manager: the URLs of its clients."""

    def __init__(self, cluster: Any, kind: str, vhost: str):
        self.cluster = cluster
        self.kind = kind
        self.vhost = vhost

    def url(self, first: int) -> str:
        """The failover URL of this vhost, node ``first`` first."""
        return ";".join(node_url + quote(self.vhost, safe="")  # every node URL ends in "/"
                        for node_url in self.cluster.url(first=first).split(";"))


def _node_index(cluster: Any, name: str | None) -> int | None:
    return cluster.names.index(name) if name in cluster.names else None


def one_run(network: Network, points: int, chunk_size: int, times: list[int],
            values: list[float], check_placement: bool) -> tuple[float, float, int | None]:
    """Send ``points`` from a Source on node 0 to a Sink on node 1; return (send,
    end-to-end) points/s and the node index of the queue's home (classic) or leader
    (quorum)."""
    cluster = network.cluster
    tag = uuid.uuid4().hex[:8]
    metric = f"bench.cluster.{network.kind}.{tag}"
    with _Counter(f"sink-bench-{tag}", network.url(SINK_NODE), expected=points,
                  **CLIENT_OPTIONS) as sink, \
            mqsync.Source(f"source-bench-{tag}", network.url(SOURCE_NODE),
                          chunk_size=chunk_size, **CLIENT_OPTIONS) as source:
        source.declare_metrics([metric])
        sink.subscribe([metric], metadata=False)
        queue = sink.data_queue
        row = cluster.list_queues(network.vhost).get(queue or "")
        assert row is not None, f"{network.kind}: the sink's queue {queue!r} is not listed"
        assert row["type"] == network.kind, (
            f"the sink's queue {queue!r} in the {network.kind} network is of type "
            f"{row['type']!r}, not {network.kind!r}: {row}")
        home = _node_index(cluster, row.get("node"))
        if check_placement:
            connections = {c["connection_name"]: c["node"] for c in cluster.connections()}
            for name, expected in ((f"mqsync-{source.token}-data", SOURCE_NODE),
                                   (f"mqsync-{sink.token}-data-io", SINK_NODE)):
                assert connections.get(name) is cluster.nodes[expected], (
                    f"{name} is connected to {connections.get(name)}, not to node {expected}")
        gc.collect()
        started = time.perf_counter()
        for i in range(0, points, chunk_size):  # one chunk a call (more would be one chunk)
            source.send_many(metric, times[i:i + chunk_size], values[i:i + chunk_size])
        source.flush(TIMEOUT)
        sent = time.perf_counter()
        if not sink.done.wait(TIMEOUT):
            raise RuntimeError(f"{network.kind}: the sink got {sink.received} of {points} "
                               f"points within {TIMEOUT:g} s")
        assert sink.done_at is not None
        received = sink.done_at
        assert sink.received == points, (
            f"{network.kind}: the sink received {sink.received} points, {points} were sent")
        chunks = -(-points // chunk_size)
        assert sink.chunks == chunks, (
            f"{network.kind}: the sink received {sink.chunks} chunks, {chunks} were sent")
    return points / (sent - started), points / (received - started), home


def _log_sizes(cluster: Any) -> dict[Path, int]:
    """The size of every log file of the nodes now (to tell later errors from earlier)."""
    return {path: path.stat().st_size for node in cluster.nodes
            for path in (node.directory / "log").glob("*.log")}


def _log_errors(cluster: Any, since: dict[Path, int], limit: int = 5) -> dict[str, int]:
    """Print the ``[error]`` lines of every node's logs (read before the cluster is
    removed), those of the set-up (boot, join, vhosts, managers) apart from those written
    after it (``since``: :func:`_log_sizes` then); return both counts."""
    found: dict[str, list[str]] = {"set-up": [], "runs": []}
    for index, node in enumerate(cluster.nodes):
        for path in sorted((node.directory / "log").glob("*.log")):
            with contextlib.suppress(OSError):
                data = path.read_bytes()
                offset = since.get(path, 0)
                for phase, text in (("set-up", data[:offset]), ("runs", data[offset:])):
                    found[phase] += [f"node {index}: {line.strip()[:300]}"
                                     for line in text.decode(errors="replace").splitlines()
                                     if "[error]" in line]
    for phase, lines in found.items():
        print(f"\n({len(lines)} [error] line(s) in the nodes' logs during the {phase}"
              f"{'' if not lines else f'; the first {min(limit, len(lines))}:'})")
        for line in lines[:limit]:
            print(f"  {line}")
    return {phase: len(lines) for phase, lines in found.items()}


def run(url: str | None, runs: int, quick: bool) -> list[Result]:
    """The benchmark (``url`` is ignored: it brings its own cluster)."""
    from tests._rabbit_node import RabbitCluster  # here: it imports pytest

    results: list[Result] = []
    print("starting a private 3-node RabbitMQ cluster ...", flush=True)
    with RabbitCluster(3) as cluster, contextlib.ExitStack() as managers:
        boot_s = cluster.boot_s or float("nan")
        print(f"cluster up in {boot_s:.1f} s: {', '.join(cluster.names)}", flush=True)
        networks: dict[str, Network] = {}
        for kind in KINDS:
            network = Network(cluster, kind, f"bench-{kind}")
            cluster.nodes[0].ctl("add_vhost", network.vhost)
            cluster.nodes[0].ctl("set_permissions", "-p", network.vhost, "guest", ".*", ".*",
                                 ".*")
            managers.enter_context(Manager(network.url(MANAGER_NODE), queue_type=kind,
                                           token=f"manager-bench-{kind}", **CLIENT_OPTIONS))
            management = cluster.list_queues(network.vhost).get(MANAGEMENT_QUEUE) or {}
            assert management.get("type") == kind, (
                f"the {kind} network's management queue is of type {management.get('type')!r}")
            networks[kind] = network
        results.append(Result("cluster boot (3 nodes, joined)", round(boot_s, 1), "s",
                              higher_is_better=False,
                              note="one node after the other, then join_cluster"))
        homes: dict[str, set[int | None]] = {kind: set() for kind in KINDS}
        logs_before_runs = _log_sizes(cluster)
        try:
            for chunk_size, (full, few) in POINTS.items():
                points = few if quick else full
                times = [T0 + i * STEP_NS for i in range(points)]
                values = [i * 0.5 for i in range(points)]
                rates = {kind: {"send": [], "end to end": []} for kind in KINDS}
                for i in range(runs):
                    line = []
                    for kind in KINDS:  # alternating, same conditions
                        send, end_to_end, home = one_run(networks[kind], points, chunk_size,
                                                         times, values,
                                                         check_placement=(i == 0))
                        rates[kind]["send"].append(send)
                        rates[kind]["end to end"].append(end_to_end)
                        homes[kind].add(home)
                        line.append(f"{kind} send {format_value(send, 'points/s')}, end to "
                                    f"end {format_value(end_to_end, 'points/s')}")
                    print(f"chunk {chunk_size}, run {i + 1}/{runs}: {'; '.join(line)}",
                          flush=True)
                for figure in ("send", "end to end"):
                    spread = "; ".join(
                        f"{kind} {format_value(min(rates[kind][figure]), 'points/s')}"
                        f"..{format_value(max(rates[kind][figure]), 'points/s')}"
                        for kind in KINDS)
                    results.append(Result(
                        f"{figure}, chunk {chunk_size}: quorum",
                        median(rates["quorum"][figure]), "points/s", "classic",
                        median(rates["classic"][figure]),
                        note=f"{points} points a run; range {spread}"))
            for kind in KINDS:
                where = ", ".join("?" if h is None else f"node {h}" for h in sorted(
                    homes[kind], key=lambda h: -1 if h is None else h))
                print(f"{kind} sink queues: {'leader' if kind == 'quorum' else 'home'} on "
                      f"{where} (manager on node {MANAGER_NODE}, source on node "
                      f"{SOURCE_NODE}, sink on node {SINK_NODE})")
        finally:
            managers.close()  # before the cluster goes
            _log_errors(cluster, logs_before_runs)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _common.add_common_arguments(parser)
    parser.set_defaults(runs=None)  # --quick: 2 unless given
    args = parser.parse_args(argv)
    if args.runs is None:
        args.runs = 2 if args.quick else 5
    _common.check_runs(parser, args.runs)
    _common.raise_on_sigterm()
    print(_common.machine_line())
    started = time.perf_counter()
    results = run(None, args.runs, args.quick)
    _common.print_results("cluster: ratio = quorum / classic (1.0: replication is free)",
                          results)
    _common.write_json(args.json, results, quick=args.quick, runs=args.runs)
    print(f"\n(took {time.perf_counter() - started:.1f} s; {_common.machine_line()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

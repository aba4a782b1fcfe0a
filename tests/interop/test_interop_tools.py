"""The official command-line tools (``metricq-tools`` 1.0.0, in the interop venv) against
mqsync-manager, mqsync-db and an mqsync Source.

* ``metricq-check`` asks the manager for every historic metric and the Db for each one's
  aggregate over all time: it must find the metrics whose minimum or maximum is not finite,
  and get an answer, not an error or a timeout, for every metric.
* ``metricq-summary`` and ``metricq-energy`` wrap a command: an official Subscriber subscribes
  before it, a Drain (the Subscriber's token plus ``.<uuid>``) unsubscribes, collects and
  releases the Subscriber's queue after it. The queue must be gone afterwards.

Each test has a vhost and an mqsync-manager of its own: ``metricq-check`` aggregates every
metric the manager knows, so no other test's metrics may be there. The wrapped command
touches a file when it starts and waits for one before it ends, so the points are sent while
the subscription exists, and the test does not depend on how fast anything starts.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

import mqsync
from mqsync.db import Db
from tests._history_reference import reference_aggregate
from tests._rabbit_node import RabbitNodeError, list_queues
from tests._support import wait_until
from tests.conftest import BROKER_URL, IN_CI, ManagerProcess, require_broker
from tests.interop.official import official_script, peer_env
from tests.test_subscription_broker import wait_for_queue_depth

pytestmark = [pytest.mark.broker, pytest.mark.interop]

S = 1_000_000_000
T0 = 1_700_000_000 * S
TOOL_TIMEOUT_S = 25.0
# the wrapped command's own bound: it ends by itself if the test never lets it
COMMAND_WAIT_S = 20


def _unavailable(message: str) -> None:
    if IN_CI:
        pytest.fail(message + " (CI=true: interop tests must run)", pytrace=False)
    pytest.skip(message)


def _ctl(*args: str) -> None:
    result = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RabbitNodeError(f"rabbitmqctl {' '.join(args)} failed ({result.returncode}): "
                              f"{(result.stdout + result.stderr)[-2000:]}")


class ToolsNetwork:
    """An mqsync-manager on a vhost of its own."""

    def __init__(self, vhost: str, manager: ManagerProcess):
        self.vhost = vhost
        self.manager = manager
        self.url = manager.url

    def queues(self) -> dict[str, dict]:
        return list_queues(self.vhost)


@pytest.fixture
def network(tmp_path: Path) -> Iterator[ToolsNetwork]:
    """A fresh vhost (deleted afterwards) with an mqsync-manager serving it."""
    require_broker()
    if shutil.which("rabbitmqctl") is None:
        _unavailable("rabbitmqctl is missing: cannot make a vhost of the test's own")
    vhost = f"mqsync-tools-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    parts = urlsplit(BROKER_URL)
    try:
        _ctl("add_vhost", vhost)
    except RabbitNodeError as error:
        _unavailable(str(error))
    try:
        _ctl("set_permissions", "-p", vhost, parts.username or "guest", ".*", ".*", ".*")
        directory = tmp_path / "manager"
        (directory / "clients").mkdir(parents=True)
        url = urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))
        manager = ManagerProcess(url, directory / "clients", directory / "metadata.json")
        try:
            manager.wait_ready()
            yield ToolsNetwork(vhost, manager)
        finally:
            manager.stop()
    finally:
        _ctl("delete_vhost", vhost)


def _tool_env() -> dict[str, str]:
    # the tools read every option from METRICQ_* variables too (click's auto_envvar_prefix)
    return {k: v for k, v in peer_env().items() if not k.startswith("METRICQ_")}


class Tool:
    """An official console script running as a subprocess, its output in files."""

    def __init__(self, name: str, *args: object, directory: Path):
        self.name = name
        command = [str(official_script(name)), *(str(arg) for arg in args)]
        self._stdout = open(directory / f"{name}.stdout", "w+", encoding="utf-8")  # noqa: SIM115
        self._stderr = open(directory / f"{name}.stderr", "w+", encoding="utf-8")  # noqa: SIM115
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=self._stdout, stderr=self._stderr,
            env=_tool_env(), cwd=str(directory), text=True)
        self._closed_output: tuple[str, str] | None = None

    @staticmethod
    def _read(handle) -> str:
        handle.flush()
        handle.seek(0)
        return handle.read()

    @property
    def stdout(self) -> str:
        return self._closed_output[0] if self._closed_output else self._read(self._stdout)

    @property
    def stderr(self) -> str:
        return self._closed_output[1] if self._closed_output else self._read(self._stderr)

    def describe(self) -> str:
        return (f"{self.name} (exit {self.process.poll()})\nstdout:\n{self.stdout[-3000:]}\n"
                f"stderr:\n{self.stderr[-3000:]}")

    def finish(self, timeout: float = TOOL_TIMEOUT_S) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"ran longer than {timeout} s: {self.describe()}") from None

    def __enter__(self) -> Tool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self._closed_output = (self.stdout, self.stderr)
        self._stdout.close()
        self._stderr.close()


def _handshake_command(started: Path, go: Path) -> list[str]:
    """The arguments that make a tool run a command that touches ``started``, then waits (at
    most COMMAND_WAIT_S) for ``go``."""
    script = ('touch "$1"; i=0; while [ ! -e "$2" ] && [ "$i" -lt "$3" ]; do sleep 0.05; '
              'i=$((i+1)); done; [ -e "$2" ] && echo wrapped-command-done')
    return ["--", "sh", "-c", script, "sh", str(started), str(go), str(COMMAND_WAIT_S * 20)]


def _wait_started(tool: Tool, started: Path) -> None:
    if not wait_until(lambda: started.exists() or tool.process.poll() is not None,
                      timeout=TOOL_TIMEOUT_S, interval=0.05) or not started.exists():
        raise AssertionError(f"the wrapped command did not start: {tool.describe()}")


def _subscription_queues(network: ToolsNetwork, token: str) -> list[str]:
    # a Subscriber's queue is named after its token (the manager's "<token>-data" or so)
    return [name for name in network.queues() if name.startswith(token)]


# -- metricq-check ---------------------------------------------------------------------------

def _check_metrics(unique: str) -> dict[str, list[tuple[int, float]]]:
    """What the Db keeps: each metric a few seconds of 1 Hz points."""
    finite = [1.0, 2.5, -3.0, 0.5, 4.0, 2.0]

    def series(*values: float) -> list[tuple[int, float]]:
        return [(T0 + i * S, value) for i, value in enumerate(values)]

    return {
        f"tools.{unique}.ordinary": series(*finite),
        f"tools.{unique}.infinities": series(1.0, math.inf, 2.0, -math.inf, 3.0, 0.5),
        f"tools.{unique}.plus-inf": series(1.0, 2.0, math.inf, 3.0),
        f"tools.{unique}.minus-inf": series(-math.inf, 1.0, 2.0),
        # minimum and maximum ignore NaN while a number is there (see _history_reference)
        f"tools.{unique}.nan-among-numbers": series(1.0, math.nan, 2.0, math.nan, 0.25),
        f"tools.{unique}.nan-only": series(math.nan, math.nan, math.nan),
    }


_AGGREGATE = re.compile(r"^(?P<metric>\S+) TimeAggregate\((?P<fields>.*)\)$")


def _printed_aggregates(stdout: str) -> dict[str, dict[str, str]]:
    """metricq-check's report: ``<metric> TimeAggregate(timestamp=..., minimum=..., ...)``."""
    printed = {}
    for line in stdout.splitlines():
        match = _AGGREGATE.match(line.strip())
        if match:
            fields = dict(re.findall(r"(\w+)=([^,()]+(?:\([^)]*\))?)", match["fields"]))
            printed[match["metric"]] = fields
    return printed


def test_metricq_check_finds_the_non_finite_metrics_of_an_mqsync_db(official_python, network,
                                                                    tmp_path, unique):
    metrics = _check_metrics(unique)
    with Db(f"db-{unique}", network.url, database=tmp_path / "db.sqlite",
            metrics=list(metrics)) as db:
        with mqsync.Source(f"source-{unique}", network.url, chunk_size=2) as source:
            source.declare_metrics({metric: {"unit": "W", "rate": 1.0} for metric in metrics})
            for metric, points in metrics.items():
                source.send_many(metric, [t for t, _ in points], [v for _, v in points])
            source.flush()
        assert wait_until(lambda: all(db.store.count(m) == len(p) for m, p in metrics.items()),
                          timeout=20), {m: db.store.count(m) for m in metrics}
        with Tool("metricq-check", "--server", network.url, "--token", f"history-{unique}",
                  "--verbosity", "INFO", directory=tmp_path) as check:
            assert check.finish() == 0, check.describe()
        stats = db.stats()

    # it looked at every metric the Db keeps, and at nothing else
    assert f"Checking {len(metrics)} metrics" in check.stderr, check.describe()
    for line in check.stderr.splitlines():
        assert not re.search(r"\b(error|timeout)\b", line, re.IGNORECASE), check.describe()
    assert "history_request_errors" not in stats, stats

    expected = {}
    for metric, points in metrics.items():
        _, _, minimum, maximum, _, _ = reference_aggregate(points, None, None)
        if not (math.isfinite(minimum) and math.isfinite(maximum)):
            expected[metric] = {"minimum": repr(minimum), "maximum": repr(maximum),
                                "count": str(len(points))}
    assert set(expected) == {f"tools.{unique}.{name}" for name in
                             ("infinities", "plus-inf", "minus-inf", "nan-only")}
    printed = _printed_aggregates(check.stdout)
    assert set(printed) == set(expected), check.describe()
    for metric, fields in expected.items():
        assert {key: printed[metric].get(key) for key in fields} == fields, \
            (metric, printed[metric])


# -- metricq-summary -------------------------------------------------------------------------

_STATISTICS = ("Metric", "Minimum", "Maximum", "Average", "Median", "Standard deviation",
               "Arithmetic mean", "Variance", "Count")


def _statistics(stdout: str, metric: str) -> dict[str, str]:
    """``metricq-summary``'s statistics of ``metric``, as {statistic: cell}.

    Its table (tabulate's ``fancy_grid``) comes transposed: one column per metric, one row
    per statistic in ``_STATISTICS`` order, and a header row that only says ``Metric``.
    """
    rows = [[cell.strip() for cell in line.strip().strip("│").split("│")]
            for line in stdout.splitlines() if line.strip().startswith("│")]
    if len(rows) != 1 + len(_STATISTICS) or rows[0][0] != "Metric" or metric not in rows[1]:
        return {}
    column = rows[1].index(metric)
    return {name: row[column] for name, row in zip(_STATISTICS, rows[1:])}


def test_metricq_summary_drains_an_mqsync_source(official_python, network, tmp_path, unique):
    metric = f"tools.{unique}.summary"
    token = f"sink-summary-{unique}"
    started, go = tmp_path / "started", tmp_path / "go"
    values = [i * 0.5 for i in range(100)]
    with mqsync.Source(f"source-{unique}", network.url, chunk_size=10) as source:
        source.declare_metrics({metric: {"unit": "W", "rate": 100.0}})
        with Tool("metricq-summary", "--server", network.url, "--token", token,
                  "--metric", metric, *_handshake_command(started, go),
                  directory=tmp_path) as summary:
            _wait_started(summary, started)
            queues = _subscription_queues(network, token)
            assert len(queues) == 1, (network.queues(), summary.describe())
            source.send_many(metric, [T0 + i * S // 100 for i in range(len(values))], values)
            source.flush()
            wait_for_queue_depth(network.url, queues[0], 1, timeout=10)  # (one chunk or more)
            go.touch()
            assert summary.finish() == 0, summary.describe()

    assert "wrapped-command-done" in summary.stdout, summary.describe()
    assert f"Statistics of metric {metric!r}:" in summary.stdout, summary.describe()
    row = _statistics(summary.stdout, metric)
    assert row, summary.describe()
    mean = sum(values) / len(values)
    variance = sum((v - mean) ** 2 for v in values) / len(values)
    assert int(row["Count"]) == len(values)
    assert float(row["Minimum"]) == min(values)
    assert float(row["Maximum"]) == max(values)
    assert float(row["Average"]) == pytest.approx(mean)
    assert float(row["Arithmetic mean"]) == pytest.approx(mean)
    assert float(row["Median"]) == pytest.approx(24.75)
    assert float(row["Variance"]) == pytest.approx(variance, rel=1e-5)
    assert float(row["Standard deviation"]) == pytest.approx(math.sqrt(variance), rel=1e-5)
    # the Drain released the Subscriber's queue
    assert wait_until(lambda: not _subscription_queues(network, token), timeout=10,
                      interval=0.2), network.queues()


# -- metricq-energy --------------------------------------------------------------------------

_ENERGY = re.compile(r"duration=(?P<duration>[\d.]+) s number of values=(?P<count>\d+)")


def test_metricq_energy_integrates_an_mqsync_power_metric(official_python, network, tmp_path,
                                                         unique):
    metric = f"tools.{unique}.power"
    token = f"sink-energy-{unique}"
    started, go = tmp_path / "started", tmp_path / "go"
    count, interval = 40, 0.025
    with mqsync.Source(f"source-{unique}", network.url, chunk_size=5) as source:
        source.declare_metrics({metric: {"unit": "W", "rate": 1 / interval}})
        with Tool("metricq-energy", "--server", network.url, "--token", token,
                  "--metric", metric, "--expires", 60, *_handshake_command(started, go),
                  directory=tmp_path) as energy:
            _wait_started(energy, started)
            queues = _subscription_queues(network, token)
            assert len(queues) == 1, (network.queues(), energy.describe())
            # metricq-energy takes the points stamped while the command ran: stamp them now
            for i in range(count):
                source.send(metric, mqsync.Timestamp.now(), 90.0 if i % 2 else 110.0)
                time.sleep(interval)
            source.flush()
            wait_for_queue_depth(network.url, queues[0], count // 5, timeout=10)
            go.touch()
            assert energy.finish() == 0, energy.describe()

    output = energy.stdout
    summary = _ENERGY.search(output)
    assert summary is not None, energy.describe()
    assert int(summary["count"]) == count, energy.describe()
    duration = float(summary["duration"])
    assert duration >= count * interval - 0.1, energy.describe()
    assert f"[metricq-energy] mean of {metric}=100.0 W" in output, energy.describe()
    integral = re.search(rf"integral of {re.escape(metric)}=(?P<joules>[\d.]+) J", output)
    assert integral is not None, energy.describe()
    # 100 W times the duration, which is printed rounded to 0.1 s
    assert abs(float(integral["joules"]) - 100.0 * duration) <= 5.1, energy.describe()
    assert "error" not in energy.stderr.lower(), energy.describe()
    assert wait_until(lambda: not _subscription_queues(network, token), timeout=10,
                      interval=0.2), network.queues()

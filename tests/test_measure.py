"""mqsync.measure (summaries, energy integrals, CSV, plot) and the mqsync-measure CLI.

The CLI runs in-process on the embedded network where it can, as a subprocess for exit
codes and signals, and once as a subprocess against RabbitMQ (marked ``broker``).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

import mqsync
from mqsync.cli import measure as measure_cli
from mqsync.measure import (
    CSV_HEADER,
    Integrator,
    Measurement,
    MetricSummary,
    Window,
    format_table,
    plot_measurement,
    power_factor,
)
from tests._rabbit_node import list_queues
from tests.conftest import IN_CI

S = 1_000_000_000
T0 = 1_700_000_000 * S


def _require_matplotlib() -> None:
    """Skip on a developer's machine without matplotlib; fail in CI, where it must run."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        if IN_CI:
            pytest.fail("matplotlib is missing (CI=true: the plot tests must run); "
                        "pip install 'mqsync[plot]'")
        pytest.skip("matplotlib is not installed")


def _open_image(path: Path):
    import matplotlib.image

    return matplotlib.image.imread(str(path))


# -- integration ---------------------------------------------------------------------------

def test_step_last_integral_cuts_intervals_at_the_window():
    # Values hold over the interval *before* their timestamp (MetricQ's 'last' scope).
    integrator = Integrator(T0 + 1 * S, T0 + 4 * S, "last")
    for second, watts in [(0, 99.0), (2, 10.0), (3, 20.0), (5, 40.0), (6, 1000.0)]:
        integrator.add(T0 + second * S, watts)
    # [1,2] at 10 W, [2,3] at 20 W, [3,4] at 40 W (the point at 5 s holds over (3, 5])
    assert integrator.integral_s == pytest.approx(10 + 20 + 40)
    assert integrator.covered_ns == 3 * S


def test_step_next_integral():
    integrator = Integrator(T0 + 1 * S, T0 + 4 * S, "next")
    for second, watts in [(0, 99.0), (2, 10.0), (3, 20.0), (5, 40.0)]:
        integrator.add(T0 + second * S, watts)
    # [1,2] at 99 W (held since 0 s), [2,3] at 10 W, [3,4] at 20 W
    assert integrator.integral_s == pytest.approx(99 + 10 + 20)
    assert integrator.covered_ns == 3 * S


def test_trapezoid_interpolates_at_the_window_edges():
    integrator = Integrator(T0 + 1 * S, T0 + 3 * S, "point")
    for second, watts in [(0, 0.0), (2, 20.0), (4, 0.0)]:
        integrator.add(T0 + second * S, watts)
    # linear: 10 W at 1 s, 20 W at 2 s, 10 W at 3 s -> 15 + 15
    assert integrator.integral_s == pytest.approx(30.0)
    assert integrator.covered_ns == 2 * S


def test_uncovered_parts_and_nan_and_unordered_points():
    integrator = Integrator(T0, T0 + 10 * S, "last")
    integrator.add(T0 + 2 * S, 5.0)  # nothing before it: [0, 2] is not covered
    integrator.add(T0 + 4 * S, math.nan)  # (2, 4] unknown
    integrator.add(T0 + 6 * S, 1.0)
    integrator.add(T0 + 6 * S, 7.0)  # same time: skipped
    integrator.add(T0 + 5 * S, 7.0)  # backwards: skipped
    integrator.add(T0 + 8 * S, 2.0)
    assert integrator.integral_s == pytest.approx(1.0 * 2 + 2.0 * 2)
    assert integrator.covered_ns == 4 * S
    assert integrator.unordered == 2


def test_invalid_scope_and_window():
    with pytest.raises(ValueError, match="invalid scope 'sometimes'"):
        Integrator(0, 1, "sometimes")
    with pytest.raises(ValueError, match="before its start"):
        Window(10, 5)
    with pytest.raises(ValueError, match="margin must be >= 0"):
        Window(0, 5, -1)


@pytest.mark.parametrize("metadata, factor", [
    ({"unit": "W"}, 1.0), ({"unit": "kW"}, 1e3), ({"unit": "mW"}, 1e-3),
    ({"unit": "", "quantity": "power"}, 1.0), ({"quantity": "Power"}, 1.0),
    ({"unit": "J"}, None), ({"unit": "Wh"}, None), ({}, None), ({"unit": "w"}, None),
])
def test_power_metrics(metadata, factor):
    assert power_factor(metadata) == factor


# -- Measurement ---------------------------------------------------------------------------

def _measurement(margin_s: float = 1.0) -> Measurement:
    window = Window(T0 + 10 * S, T0 + 20 * S, round(margin_s * S))
    metadata = {"node.power": {"unit": "kW", "quantity": "power"},
                "node.temp": {"unit": "degC"},
                "node.sample": {"unit": "W", "scope": "point"}}
    return Measurement(window, ["node.power", "node.temp", "node.sample"], metadata)


def test_summary_of_a_run():
    measurement = _measurement()
    points = []
    for second in range(0, 31):  # 1 point per second from 0 s to 30 s
        points.append(("node.power", T0 + second * S, 2.0 if second <= 15 else 4.0))
        points.append(("node.temp", mqsync.Timestamp(T0 + second * S), float(second)))
        points.append(("node.sample", T0 + second * S, float(second)))
    kept = measurement.collect(points)
    assert kept == 3 * 13  # 9 s .. 21 s, margins included
    power, temp, sample = measurement.summaries()
    assert power == MetricSummary(
        metric="node.power", unit="kW", count=11, minimum=2.0, maximum=4.0,
        mean=(6 * 2.0 + 5 * 4.0) / 11, integral_s=pytest.approx(5 * 2.0 + 5 * 4.0),
        energy_j=pytest.approx((5 * 2.0 + 5 * 4.0) * 1e3), covered_s=10.0, coverage=1.0,
        scope="last", integration="step", collected=13, unordered=0)
    assert temp.energy_j is None and temp.integral_s == pytest.approx(sum(range(11, 21)))
    assert (temp.minimum, temp.maximum, temp.mean) == (10.0, 20.0, 15.0)
    # trapezoid of a ramp: exact
    assert sample.integration == "trapezoid"
    assert sample.energy_j == pytest.approx((10 + 20) / 2 * 10)


def test_empty_and_unknown_metrics():
    measurement = _measurement(margin_s=0)
    assert not measurement.add("node.power", T0, 1.0)  # before the window
    assert measurement.add("other.metric", T0 + 15 * S, 3.0)  # not asked for, still kept
    summaries = {s.metric: s for s in measurement.summaries()}
    assert summaries["node.power"].count == 0
    assert math.isnan(summaries["node.power"].mean)
    assert summaries["node.power"].energy_j is None
    assert summaries["node.power"].to_dict()["mean"] is None
    assert summaries["other.metric"].count == 1
    json.dumps([s.to_dict() for s in summaries.values()], allow_nan=False)


def test_csv_rows_are_exact():
    measurement = _measurement()
    values = [0.1, -0.0, 1e-310, math.inf, 1 / 3]
    points = [("node.temp", T0 + 10 * S + i * 123_456_789, v) for i, v in enumerate(values)]
    points.append(("node.temp", T0 + 30 * S, 1.0))  # beyond the margin: no row
    out = _StringIO()
    measurement.collect(points, out)
    rows = list(csv.reader(out.getvalue().splitlines()))
    assert tuple(rows[0]) == CSV_HEADER
    assert [(int(r[0]), r[2], float(r[3])) for r in rows[1:]] == [
        (t, m, v) for m, t, v in points[:-1]]
    assert [mqsync.Timestamp.from_iso8601(r[1]).posix_ns for r in rows[1:]] == [
        t for _, t, _ in points[:-1]]


def _StringIO():  # noqa: N802 - a factory named like the class it returns
    import io

    return io.StringIO(newline="")


def test_table():
    measurement = _measurement()
    measurement.collect([("node.power", T0 + s * S, 1.5) for s in range(9, 22)])
    table = format_table(measurement.summaries()).splitlines()
    assert table[0].split() == ["metric", "unit", "points", "min", "max", "mean", "energy",
                                "[J]", "coverage"]
    assert table[1].split() == ["node.power", "kW", "11", "1.5", "1.5", "1.5", "15000",
                                "100.0", "%"]
    assert table[2].split()[:3] == ["node.temp", "degC", "0"]


def test_plot_series_stays_bounded():
    window = Window(T0, T0 + 100 * S)
    measurement = Measurement(window, ["a"], plot_points=400)
    for i in range(100_000):
        measurement.add("a", T0 + i * 1000 * 1000, math.sin(i / 1000))
    data = measurement.plot_data()["a"]
    assert data.envelope and len(data.times_ns) <= 100
    assert all(lo <= mean <= hi for lo, mean, hi in zip(data.minima, data.values, data.maxima))
    assert min(data.minima) == pytest.approx(-1, abs=1e-3)


def test_plot_file(tmp_path):
    _require_matplotlib()
    measurement = _measurement()
    measurement.collect([("node.power", T0 + s * S, float(s)) for s in range(0, 31)])
    path = tmp_path / "plot.png"
    plot_measurement(path, measurement, title="sleep 10")
    image = _open_image(path)
    assert image.shape[0] > 300 and image.shape[1] > 500


# -- the CLI on the embedded network, in-process -----------------------------------------------

class PacedSender:
    """Sends ``metric -> value(i)`` at ``rate`` Hz with the current time, on a thread."""

    def __init__(self, source: mqsync.Source, metrics: dict, rate: float = 100.0):
        self.source = source
        self.metrics = metrics
        self.period = 1.0 / rate
        self.sent: list[tuple[str, int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="paced-sender", daemon=True)

    def _run(self):
        i = 0
        next_time = time.monotonic()
        while not self._stop.is_set():
            now = mqsync.Timestamp.now()
            for metric, value in self.metrics.items():
                v = value(i)
                self.source.send(metric, now, v)
                self.sent.append((metric, now.posix_ns, v))
            i += 1
            next_time += self.period
            self._stop.wait(max(0.0, next_time - time.monotonic()))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)


def _read_outputs(directory: Path):
    summary = json.loads((directory / "summary.json").read_text())
    with open(directory / "measurement.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == CSV_HEADER
    points = [(r[2], int(r[0]), float(r[3])) for r in rows[1:]]
    return summary, points


def _check_against_sent(summary, points, sent):
    window = summary["window"]
    low, high = window["keep_from_ns"], window["keep_until_ns"]
    expected = [p for p in sent if low <= p[1] <= high]
    assert points == expected  # CSV rows: arrival order = send order per metric here
    for entry in summary["metrics"]:
        inside = [p for p in sent if p[0] == entry["metric"]
                  and window["start_ns"] <= p[1] <= window["end_ns"]]
        assert entry["count"] == len(inside)
        assert entry["collected"] == sum(1 for p in expected if p[0] == entry["metric"])


def test_cli_in_process_on_the_embedded_network(unique, tmp_path, capsys):
    _require_matplotlib()
    power, counter = f"measure.{unique}.power", f"measure.{unique}.counter"
    with mqsync.Source(f"source-{unique}") as source:  # also holds the embedded network
        source.declare_metrics({power: {"unit": "W", "rate": 100},
                                counter: {"unit": "", "rate": 100}})
        with PacedSender(source, {power: lambda i: 100.0, counter: float}) as sender:
            code = measure_cli.main([
                "--metrics", power, counter, "--margin", "300ms", "--settle", "300ms",
                "--output-dir", str(tmp_path), "--token", f"sink-measure-{unique}",
                "--", sys.executable, "-c", "import time; time.sleep(0.5); raise SystemExit(4)"])
        sent = list(sender.sent)
    assert code == 4
    summary, points = _read_outputs(tmp_path)
    assert summary["exit_code"] == 4
    assert 0.5 <= summary["window"]["duration_s"] < 3
    _check_against_sent(summary, points, sent)
    by_metric = {m["metric"]: m for m in summary["metrics"]}
    # a constant 100 W with data on both sides of the run: exactly 100 W x the run
    assert by_metric[power]["coverage"] == 1.0
    assert by_metric[power]["energy_j"] == pytest.approx(100 * summary["window"]["duration_s"])
    assert by_metric[counter]["energy_j"] is None
    assert _open_image(tmp_path / "plot.png").ndim == 3
    err = capsys.readouterr().err
    assert "energy [J]" in err and power in err


def test_cli_options_are_checked_before_anything_runs(tmp_path, capsys):
    marker = tmp_path / "ran"
    command = ["--", "touch", str(marker)]
    assert measure_cli.main(["--metrics", "a", "--margin=-1s", *command]) == 2
    assert measure_cli.main(["--metrics", "a", "--expires", "10S", *command]) == 2
    assert measure_cli.main(["--metrics", "a" * 300, "--output-dir", str(tmp_path),
                             *command]) == 2
    with pytest.raises(SystemExit) as exited:
        measure_cli.main(["--metrics", "a", "touch", str(marker)])  # no '--'
    assert exited.value.code == 2
    assert not marker.exists()
    err = capsys.readouterr().err
    assert "--margin must not be negative" in err
    assert "invalid expires '10S'" in err
    assert "after '--'" in err


# -- the CLI as a subprocess: exit codes and signals --------------------------------------------

def _measure_command(tmp_path: Path, *command: str, extra: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "mqsync.cli.measure", "--metrics", "nothing.here",
            "--margin", "0", "--settle", "0", "--no-plot", "--output-dir", str(tmp_path),
            *extra, "--", *command]


def _env():
    env = dict(os.environ)
    env.pop("MQSYNC_URL", None)
    return env


def test_exit_codes(tmp_path):
    def run(*command):
        return subprocess.run(_measure_command(tmp_path, *command), env=_env(),
                              capture_output=True, text=True, timeout=60)

    result = run(sys.executable, "-c", "print('out'); raise SystemExit(5)")
    assert result.returncode == 5, result.stderr
    assert result.stdout == "out\n"  # the command's stdout is its own; the table is on stderr
    assert json.loads((tmp_path / "summary.json").read_text())["exit_code"] == 5
    result = run(str(tmp_path / "no-such-program"))
    assert result.returncode == 127
    assert "cannot run" in result.stderr and "No such file" in result.stderr
    result = run(sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert result.returncode == 128 + signal.SIGKILL


CHILD = textwrap.dedent("""
    import signal, sys, time
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(42))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(43))
    print("ready", flush=True)
    time.sleep(30)
    sys.exit(0)
""")


@pytest.mark.parametrize("signum, expected", [(signal.SIGTERM, 42), (signal.SIGINT, 43)])
def test_signals_are_forwarded_to_the_command(tmp_path, signum, expected):
    process = subprocess.Popen(_measure_command(tmp_path, sys.executable, "-c", CHILD),
                               env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        assert process.stdout.readline() == "ready\n"
        process.send_signal(signum)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == expected, err
    assert json.loads((tmp_path / "summary.json").read_text())["exit_code"] == expected


COUNTING_CHILD = textwrap.dedent("""
    import signal, sys, time
    received = []
    signal.signal(signal.SIGINT, lambda *_: received.append(1))
    print("ready", flush=True)
    deadline = time.monotonic() + 20
    while not received and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # a second SIGINT would come now
    sys.exit(40 + len(received))
""")


@pytest.mark.skipif(not hasattr(signal, "sigtimedwait"), reason="needs sigtimedwait (Linux)")
def test_ctrl_c_in_a_terminal_reaches_the_command_once(tmp_path):
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # the child: mqsync-measure in the foreground of a new terminal
        try:
            os.execve(sys.executable, _measure_command(tmp_path, sys.executable, "-c",
                                                       COUNTING_CHILD), _env())
        finally:
            os._exit(99)
    output = b""

    def read(until: bytes | None) -> None:
        nonlocal output
        deadline = time.monotonic() + 30
        with contextlib.suppress(OSError):  # EIO once the terminal's last user is gone
            while until is None or until not in output:
                remaining = deadline - time.monotonic()
                assert remaining > 0, output.decode(errors="replace")
                if select.select([fd], [], [], remaining)[0]:
                    chunk = os.read(fd, 4096)
                    if not chunk:
                        return
                    output += chunk

    try:
        read(b"ready")
        os.write(fd, b"\x03")  # Ctrl-C: the terminal sends SIGINT to the foreground group
        read(None)
    finally:
        deadline = time.monotonic() + 30
        while (reaped := os.waitpid(pid, os.WNOHANG)) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                reaped = os.waitpid(pid, 0)
                break
            time.sleep(0.05)
        status = reaped[1]
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 41, output.decode(errors="replace")


def test_no_broker_gives_exit_3_and_the_command_does_not_run(tmp_path):
    marker = tmp_path / "ran"
    result = subprocess.run(
        _measure_command(tmp_path, "touch", str(marker),
                         extra=("--url", "amqp://guest:guest@127.0.0.1:1/")),
        env=_env(), capture_output=True, text=True, timeout=90)
    assert result.returncode == 3, result.stderr
    assert "the command was not run" in result.stderr
    assert not marker.exists()


# -- against RabbitMQ ---------------------------------------------------------------------------

@pytest.mark.broker
def test_measure_sleep_against_a_source_on_the_broker(manager, unique, tmp_path):
    _require_matplotlib()
    power, load = f"measure.{unique}.power", f"measure.{unique}.load"
    with mqsync.Source(f"source-{unique}", manager.url) as source:
        source.declare_metrics({power: {"unit": "W", "rate": 100, "quantity": "power"},
                                load: {"unit": "%", "rate": 100}})
        with PacedSender(source, {power: lambda i: 50.0 + (i % 7), load: lambda i: i / 3}) \
                as sender:
            result = subprocess.run(
                [sys.executable, "-m", "mqsync.cli.measure", "--url", manager.url,
                 "--metrics", power, load, "--margin", "0.5", "--settle", "0.5",
                 "--output-dir", str(tmp_path), "--", "sleep", "2"],
                capture_output=True, text=True, timeout=120)
            time.sleep(0.2)
        sent = list(sender.sent)
    assert result.returncode == 0, result.stderr
    summary, points = _read_outputs(tmp_path)
    assert 2.0 <= summary["window"]["duration_s"] < 3.0
    _check_against_sent(summary, points, sent)
    by_metric = {m["metric"]: m for m in summary["metrics"]}
    assert by_metric[power]["count"] >= 150  # ~100 Hz for 2 s on a shared machine
    assert by_metric[power]["coverage"] == 1.0
    # the step integral, recomputed from the points sent
    window = summary["window"]
    expected = Integrator(window["start_ns"], window["end_ns"], "last")
    for metric, t, v in sent:
        if metric == power:
            expected.add(t, v)
    assert by_metric[power]["energy_j"] == pytest.approx(expected.integral_s, rel=1e-12)
    image = _open_image(tmp_path / "plot.png")
    assert image.ndim == 3 and image.shape[0] > 200


def test_a_command_that_cannot_start_leaves_no_subscription(manager, tmp_path, unique):
    vhost = unquote(urlsplit(manager.url).path[1:])
    token = f"measure-{unique}"
    result = subprocess.run(
        _measure_command(tmp_path, str(tmp_path / "no-such-program"),
                         extra=("--url", manager.url, "--token", token)),
        env=_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 127, result.stderr
    assert "could not release" not in result.stderr
    # released at once, not left to buffer for --expires
    assert [name for name in list_queues(vhost) if name.startswith(token)] == []

"""What mqsync-inspect and mqsync-measure print for the cases a new user hit first.

mqsync-inspect: histogram labels that read differently and mean something (``1 s .. 1 s``
seven times was neither), and jitter within 1 % of the median as one line.
mqsync-measure: a command shorter than the interval between a metric's points says so
instead of ``points 0 ... coverage 100 %``, and the report has no stray blank line.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mqsync
from mqsync.cli import inspect_metric
from mqsync.cli import measure as measure_cli

S = 1_000_000_000
T0 = 1_700_000_000 * S
LABEL = re.compile(r"^  (?P<label>.+?)  #*\s+(?P<count>\d+)(?P<note>  \(.*\))?$")


def _report(times_ns: list[int], values: list[float]) -> str:
    statistics = inspect_metric.MetricStatistics()
    statistics.add_chunk(times_ns, values, times_ns[-1] + S)
    return inspect_metric.format_report("room.power", {}, statistics.to_json(30.0))


def _section(report: str, title: str) -> tuple[str, list[re.Match]]:
    """The summary line starting with ``title`` and the histogram lines below it."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    bars = []
    for line in lines[start + 1 :]:
        match = LABEL.match(line)
        if match is None:
            break
        bars.append(match)
    return lines[start], bars


def _edges(label: str, unit: str = "") -> tuple[float, float]:
    low, high = label.split(" .. ")
    return float(low.removesuffix(unit)), float(high.removesuffix(unit))


def _jittered_times(count: int, period_ns: int, jitter_ns: int, seed: int = 7) -> list[int]:
    generator = random.Random(seed)
    return [T0 + i * period_ns + generator.randint(-jitter_ns, jitter_ns) for i in range(count)]


# -- mqsync-inspect: the text report, in-process --------------------------------------------


def test_intervals_of_one_second_with_jitter_are_one_line_with_their_exact_spread():
    times = _jittered_times(30, S, 50_000)  # 1 s +- 50 us: intervals 1 s +- 100 us
    intervals = [(b - a) / S for a, b in zip(times, times[1:])]
    report = _report(times, [1.0] * len(times))
    summary, bars = _section(report, "intervals:")
    assert len(bars) == 1, report
    assert int(bars[0]["count"]) == 29
    low, high = _edges(bars[0]["label"], " s")
    spread = max(intervals) - min(intervals)
    # the label resolves the spread, so it tells something "1 s .. 1 s" does not
    assert low < 1 < high, report
    assert abs(low - min(intervals)) <= spread / 10 and abs(high - max(intervals)) <= spread / 10
    median = sorted(intervals)[len(intervals) // 2]
    deviation = max(median - min(intervals), max(intervals) - median) / median * 100
    assert bars[0]["note"] == f"  (all within {deviation:.2g} % of the median)"
    # the summary line resolves the spread too, in one unit: no "1000 ms" beside "1 s"
    figures = re.findall(r"(min|median|mean|max) ([-\d.e+]+) (s|ms|us)", summary)
    assert [unit for _, _, unit in figures] == ["s"] * 4, summary
    shown = {name: float(number) for name, number, _ in figures}
    assert shown["min"] < shown["max"], summary
    assert abs(shown["min"] - min(intervals)) <= spread / 10


@pytest.mark.parametrize(
    "title, values, unit",
    [
        # intervals 1 s +- 1.5 %: ten bins whose edges differ in the 3rd decimal
        ("intervals:", [0.985 + 0.03 * i / 40 for i in range(41)], " s"),
        # values 1000.0000 .. 1000.0010: ten bins that all used to read "1000 .. 1000"
        ("values:", [1000.0 + 0.001 * i / 40 for i in range(41)], ""),
        # values around a million, spread 0.5: "1e+06 .. 1e+06" at six digits
        ("values:", [1e6 + 0.5 * i / 40 for i in range(41)], ""),
    ],
)
def test_histogram_labels_differ_and_read_as_their_edges(title, values, unit):
    if title == "intervals:":
        times, total = [T0], T0
        for interval in values:
            total += round(interval * S)
            times.append(total)
        figures = [(b - a) / S for a, b in zip(times, times[1:])]
        report = _report(times, [1.0] * len(times))
    else:
        figures = values
        report = _report([T0 + i * S for i in range(len(values))], values)
    _, bars = _section(report, title)
    assert len(bars) == inspect_metric.HISTOGRAM_BINS, report
    labels = [bar["label"] for bar in bars]
    assert len(set(labels)) == len(labels), report
    edges = [_edges(label, unit) for label in labels]
    width = (max(figures) - min(figures)) / inspect_metric.HISTOGRAM_BINS
    for i, (low, high) in enumerate(edges):
        assert low < high, report
        assert abs(low - (min(figures) + i * width)) <= width / 2, report
        if i:
            assert low == edges[i - 1][1]  # one edge, one label
    assert sum(int(bar["count"]) for bar in bars) == len(figures)


def test_identical_intervals_stay_one_plain_line():
    report = _report([T0 + i * S // 10 for i in range(11)], [2.0] * 11)
    _, bars = _section(report, "intervals:")
    assert [(bar["label"], bar["count"], bar["note"]) for bar in bars] == [("100 ms", "10", None)]


# -- mqsync-inspect against RabbitMQ, as a subprocess ------------------------------------------


@pytest.mark.broker
def test_inspect_of_a_jittered_one_second_metric(manager, unique, tmp_path):
    metric = f"inspect-{unique}.power"
    env = {key: value for key, value in os.environ.items() if not key.startswith("MQSYNC_")}
    env["HOME"] = str(tmp_path)
    generator = random.Random(3)
    with mqsync.Source(f"source-{unique}", manager.url) as source:
        source.declare_metrics({metric: {"rate": 1, "unit": "W"}})
        inspect = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mqsync.cli.inspect_metric",
                "--url",
                manager.url,
                metric,
                "--count",
                "15",
                "--duration",
                "60",
                "--every",
                "0",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        # points stamped a second apart (+- 50 us), sent faster than that: a 1 Hz metric
        # without waiting 15 s
        stamp = mqsync.Timestamp.now().posix_ns - 600 * S
        deadline = time.monotonic() + 60
        while inspect.poll() is None and time.monotonic() < deadline:
            stamp += S
            source.send(metric, mqsync.Timestamp(stamp + generator.randint(-50_000, 50_000)), 100.0)
            time.sleep(0.02)
        out, err = inspect.communicate(timeout=30)
    assert inspect.returncode == 0, err
    _, bars = _section(out, "intervals:")
    assert len(bars) == 1 and bars[0]["count"] == "14", out
    low, high = _edges(bars[0]["label"], " s")
    assert 0.9998 <= low < 1 < high <= 1.0002, out
    assert "% of the median)" in bars[0]["note"]


# -- mqsync-measure: a command shorter than the interval between points -----------------------


def test_a_run_between_two_points_says_so(unique, tmp_path, capsys, monkeypatch):
    power, silent = f"measure.{unique}.power", f"measure.{unique}.silent"
    with mqsync.Source(f"source-{unique}") as source:  # also holds the embedded network
        source.declare_metrics({power: {"unit": "W", "rate": 1}, silent: {"unit": "W"}})
        run_command = measure_cli.run_command

        def run_between_two_points(command):
            # a point just before and one just after the run, none during it: as a 1 Hz
            # meter does around a 2 ms command, but every time
            source.send(power, mqsync.Timestamp.now(), 100.0)
            result = run_command(command)
            source.send(power, mqsync.Timestamp.now(), 100.0)
            return result

        monkeypatch.setattr(measure_cli, "run_command", run_between_two_points)
        code = measure_cli.main(
            [
                "--metrics",
                power,
                silent,
                "--margin",
                "300ms",
                "--settle",
                "300ms",
                "--no-plot",
                "--output-dir",
                str(tmp_path),
                "--token",
                f"sink-measure-{unique}",
                "--",
                sys.executable,
                "-c",
                "pass",
            ]
        )
    assert code == 0
    err = capsys.readouterr().err
    summary = json.loads((tmp_path / "summary.json").read_text())
    by_metric = {entry["metric"]: entry for entry in summary["metrics"]}
    assert by_metric[power]["count"] == 0 and by_metric[power]["collected"] == 2, err
    # the figures themselves are right: the step integral of the point after the run
    assert by_metric[power]["coverage"] == 1.0
    duration = summary["window"]["duration_s"]
    assert by_metric[power]["energy_j"] == pytest.approx(100.0 * duration)
    # ... and the report says where they come from
    assert (
        f"no point of {power} during the run ({duration:.3g} s, shorter than the "
        "interval between its points): no min, max or mean; its energy and coverage are "
        "interpolated from the points just before and after the run"
    ) in err
    assert f"no points of {power}" not in err and "is a source sending it?" in err
    assert f"no points of {silent} in the run window or its margins" in err
    assert "\n\n" not in err and not err.startswith("\n"), err
    # the table row, too: points 0, coverage marked as interpolated
    row = next(line for line in err.splitlines() if line.startswith(power))
    assert row.endswith("100.0 % (interpolated)"), row


def test_points_only_before_a_run_leave_it_uncovered(unique, tmp_path, capsys, monkeypatch):
    power = f"measure.{unique}.power"
    with mqsync.Source(f"source-{unique}") as source:
        source.declare_metrics({power: {"unit": "W", "rate": 1}})
        run_command = measure_cli.run_command

        def run_after_a_point(command):
            source.send(power, mqsync.Timestamp.now(), 100.0)
            return run_command(command)

        monkeypatch.setattr(measure_cli, "run_command", run_after_a_point)
        code = measure_cli.main(
            [
                "--metrics",
                power,
                "--margin",
                "300ms",
                "--settle",
                "300ms",
                "--no-plot",
                "--output-dir",
                str(tmp_path),
                "--token",
                f"sink-measure-{unique}",
                "--",
                sys.executable,
                "-c",
                "pass",
            ]
        )
    assert code == 0
    err = capsys.readouterr().err
    assert "and the 1 in the margins do not cover it: no min, max, mean or energy" in err, err
    assert "interpolated" not in err and "is a source sending it?" not in err


def test_the_report_has_no_blank_line(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "MQSYNC_URL"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mqsync.cli.measure",
            "--metrics",
            "nothing.here",
            "--margin",
            "0",
            "--settle",
            "0",
            "--no-plot",
            "--output-dir",
            str(tmp_path),
            "--",
            sys.executable,
            "-c",
            "pass",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines and all(line.strip() for line in lines), result.stderr
    assert Path(tmp_path / "summary.json").exists()

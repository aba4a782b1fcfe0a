"""The pieces of mqsync-inspect on their own: the statistics, the reports, the live lines,
the sink's --count, and the command in-process on the embedded network.

tests/test_cli_inspect_measure.py holds the report's histogram labels; tests/test_cli_tools.py
runs the command against RabbitMQ.
"""

from __future__ import annotations

import json
import math
import re
import threading

import pytest

import mqsync
from mqsync.cli import inspect_metric
from mqsync.cli.inspect_metric import (
    HISTOGRAM_BINS,
    InspectingSink,
    LiveLines,
    MetricStatistics,
    Reservoir,
    Summary,
    format_report,
    histogram,
    json_report,
    live_line,
)

S = 1_000_000_000
T0 = 1_700_000_000 * S


# -- statistics ------------------------------------------------------------------------------


def test_a_reservoir_keeps_the_first_values_then_a_bounded_uniform_sample():
    reservoir = Reservoir(size=100, seed=1)
    for value in range(100):
        reservoir.add(value)
    assert reservoir.samples == list(range(100))
    for value in range(100, 100_000):
        reservoir.add(value)
    assert reservoir.seen == 100_000 and len(reservoir.samples) == 100
    assert len(set(reservoir.samples)) == 100
    # uniform: about as many from the first half as from the second
    assert 30 <= sum(value < 50_000 for value in reservoir.samples) <= 70


def test_a_seeded_reservoir_samples_the_same_way_every_time():
    samples = []
    for _ in range(2):
        reservoir = Reservoir(size=10, seed=42)
        for value in range(1000):
            reservoir.add(value)
        samples.append(reservoir.samples)
    assert samples[0] == samples[1]


def test_histogram_bins_cover_the_values_with_equal_widths():
    ordered = [0.0, 0.5, 1.0, 1.0, 2.5, 9.9, 10.0]
    bins = histogram(ordered, 10)
    assert len(bins) == 10
    assert [entry["count"] for entry in bins] == [2, 2, 1, 0, 0, 0, 0, 0, 0, 2]
    assert bins[0]["low"] == 0.0 and bins[-1]["high"] == 10.0
    assert all(a["high"] == b["low"] for a, b in zip(bins, bins[1:]))


def test_histogram_of_nothing_and_of_one_value():
    assert histogram([], 10) == []
    assert histogram([3.0, 3.0, 3.0], 10) == [{"low": 3.0, "high": 3.0, "count": 3}]


def test_a_summary_is_exact_in_count_extremes_and_mean():
    assert Summary().to_json() == {"count": 0}
    summary = Summary(sample_size=2)
    for value in (4.0, -1.0, 2.0, 7.0):
        summary.add(value)
    report = summary.to_json()
    assert (report["count"], report["min"], report["max"], report["mean"]) == (4, -1.0, 7.0, 3.0)
    assert sum(entry["count"] for entry in report["histogram"]) == 2  # from the sample


def test_statistics_count_intervals_across_chunks_and_times_that_do_not_increase():
    statistics = MetricStatistics()
    statistics.add_chunk([T0, T0 + S], [1.0, 2.0], T0 + S + S // 2)
    statistics.add_chunk([T0 + S, T0 + 3 * S], [3.0, 4.0], T0 + 3 * S)
    statistics.add_chunk([], [], T0 + 4 * S)
    report = statistics.to_json(2.0)
    assert (report["points"], report["chunks"], report["points_per_s"]) == (4, 3, 2.0)
    assert report["intervals_s"]["count"] == 3
    assert (report["intervals_s"]["min"], report["intervals_s"]["max"]) == (0.0, 2.0)
    assert report["not_increasing"] == 1
    assert report["chunk_sizes"] == {
        "min": 0,
        "max": 2,
        "mean": 4 / 3,
        "counts": {"0": 1, "2": 2},
    }
    assert (report["delay_s"]["min"], report["delay_s"]["max"]) == (0.0, 0.5)
    assert report["first_time"] == mqsync.Timestamp(T0).isoformat()
    assert report["last_time"] == mqsync.Timestamp(T0 + 3 * S).isoformat()
    assert report["last_value"] == 4.0


def test_statistics_count_nan_and_infinities_apart_from_the_values():
    statistics = MetricStatistics()
    values = [1.0, math.nan, math.inf, -math.inf, math.inf, 3.0]
    statistics.add_chunk([T0 + i for i in range(6)], values, T0 + S)
    report = statistics.to_json(0.0)
    assert (report["nan"], report["positive_infinity"], report["negative_infinity"]) == (1, 2, 1)
    assert report["values"]["count"] == 2 and report["values"]["mean"] == 2.0
    assert report["points_per_s"] is None
    assert statistics.progress() == (6, 3.0)


def test_a_last_value_json_cannot_hold_is_its_text():
    statistics = MetricStatistics()
    statistics.add_chunk([T0], [math.nan], T0)
    assert statistics.to_json(1.0)["last_value"] == "nan"
    statistics.add_chunk([T0 + S], [-math.inf], T0 + S)
    report = statistics.to_json(1.0)
    assert report["last_value"] == "-inf"
    json.loads(json.dumps(report, allow_nan=False))


def test_nothing_seen_is_a_report_of_nothing():
    report = MetricStatistics().to_json(5.0)
    assert report["points"] == 0 and report["points_per_s"] == 0.0
    assert report["chunk_sizes"] == {"min": None, "max": None, "mean": None, "counts": {}}
    assert report["intervals_s"] == report["values"] == report["delay_s"] == {"count": 0}
    assert report["first_time"] is report["last_time"] is report["last_value"] is None


# -- reports ---------------------------------------------------------------------------------


def test_the_report_of_no_point_ends_after_the_count():
    text = format_report("room.power", {}, MetricStatistics().to_json(2.0))
    assert text.splitlines() == [
        "metric: room.power",
        "metadata: none (no source declared this metric)",
        "inspected: 2.0 s",
        "points: 0 (0/s)",
    ]


def test_the_report_names_metadata_sorted_as_json_and_every_section():
    statistics = MetricStatistics()
    statistics.add_chunk([T0, T0 + S, T0], [1.0, math.nan, math.inf], T0 + 2 * S)
    text = format_report("room.power", {"unit": "W", "rate": 1}, statistics.to_json(0.0))
    lines = text.splitlines()
    assert lines[:6] == [
        "metric: room.power",
        "metadata:",
        "  rate: 1",
        '  unit: "W"',
        "inspected: 0.0 s",
        "points: 3",
    ]
    assert lines[6] == f"last: inf at {mqsync.Timestamp(T0).isoformat()}"
    assert lines[7] == "chunks: 1; size min 3, mean 3, max 3"
    assert re.fullmatch(r"  3  #{40}  1", lines[8])
    assert lines[9].startswith("intervals: min -1 s, ") and lines[9].endswith("; 1 not increasing")
    assert "values: min 1, median 1, mean 1, max 1 (1 in all)" in lines
    assert "NaN: 1, +inf: 1, -inf: 0" in lines
    assert lines[-1].startswith("delay (arrival - point time): min 2 s, ")


def test_the_json_report_is_the_statistics_with_metric_and_metadata():
    statistics = MetricStatistics()
    statistics.add_chunk([T0, T0 + S], [1.0, 2.0], T0 + S)
    report = statistics.to_json(1.0)
    assert json.loads(json_report("m", {"unit": "W"}, report)) == {
        "metric": "m",
        "metadata": {"unit": "W"},
        **report,
    }


def test_a_live_line_says_time_of_day_new_points_rate_and_last_value():
    now = mqsync.Timestamp(T0)
    line = live_line(now, 5, 2.0, math.pi)
    assert line == f"{now.isoformat()[11:19]}  +5 points (2.5/s)  last 3.14159"
    assert re.fullmatch(r"\d\d:\d\d:\d\d  \+0 points \(0/s\)  last -", live_line(now, 0, 1, None))


def test_live_lines_come_every_so_many_seconds_with_the_points_since_the_last(capsys):
    statistics = MetricStatistics()
    lines = LiveLines(statistics, every=1.0, started=100.0)
    assert lines.next_due == 101.0
    lines.print_if_due(100.9)
    assert capsys.readouterr().err == ""
    statistics.add_chunk([T0, T0 + S], [1.0, 2.0], T0 + S)
    lines.print_if_due(101.5)
    statistics.add_chunk([T0 + 2 * S], [7.0], T0 + 2 * S)
    assert lines.next_due == 102.5
    lines.print_if_due(103.5)
    first, second = capsys.readouterr().err.splitlines()
    assert first.endswith("  +2 points (1.33/s)  last 2")
    assert second.endswith("  +1 points (0.5/s)  last 7")


def test_no_live_lines_with_every_zero(capsys):
    statistics = MetricStatistics()
    lines = LiveLines(statistics, every=0.0, started=0.0)
    assert lines.next_due == math.inf
    lines.print_if_due(1e9)
    assert capsys.readouterr().err == ""


# -- the sink's --count ----------------------------------------------------------------------


def test_the_sink_takes_count_points_and_then_is_done():
    statistics = MetricStatistics()
    sink = InspectingSink("sink-inspect-test", statistics=statistics, limit=5)
    sink.on_chunk("m", [T0, T0 + 1, T0 + 2], [1.0, 2.0, 3.0])
    assert not sink.done.is_set()
    sink.on_chunk("m", [T0 + 3, T0 + 4, T0 + 5], [4.0, 5.0, 6.0])
    assert sink.done.is_set()
    sink.on_chunk("m", [T0 + 6], [7.0])
    assert statistics.progress() == (5, 5.0)
    assert statistics.to_json(1.0)["chunk_sizes"]["counts"] == {"2": 1, "3": 1}


def test_without_a_count_the_sink_takes_everything():
    sink = InspectingSink("sink-inspect-test", statistics=MetricStatistics(), limit=None)
    for start in range(0, 1000, 100):
        sink.on_chunk("m", list(range(T0 + start, T0 + start + 100)), [1.0] * 100)
    assert sink.statistics.points == 1000 and not sink.done.is_set()


# -- the command, in-process -----------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["--count", "0", "m"], "invalid --count 0: expected at least 1"),
    (["--every", "-1", "m"], "invalid --every -1: expected 0 or more seconds"),
    ([""], "invalid metric name ''"),
])
def test_bad_arguments_are_usage_errors_before_connecting(argv, message, capsys):
    assert inspect_metric.main(["--url", "amqp://127.0.0.1:1/", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mqsync-inspect: {message}"), err


def test_the_command_reports_count_points_as_json(unique, capsys):
    metric = f"inspect.{unique}.power"
    with mqsync.Source(f"source-{unique}") as source:  # also holds the embedded network
        source.declare_metrics({metric: {"unit": "W"}})
        stop = threading.Event()

        def send_until_stopped() -> None:
            while not stop.wait(0.02):
                source.send(metric, mqsync.Timestamp.now(), 1.0)

        sender = threading.Thread(target=send_until_stopped)
        sender.start()
        try:
            code = inspect_metric.main(
                ["--url", "memory://", metric, "--count", "5", "--json", "--duration", "30",
                 "--token", f"sink-inspect-{unique}"]
            )
        finally:
            stop.set()
            sender.join(10)
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out)
    assert (report["metric"], report["metadata"]["unit"]) == (metric, "W")
    assert report["points"] == 5 and report["values"]["mean"] == 1.0
    assert report["elapsed_s"] < 30
    assert HISTOGRAM_BINS >= len(report["intervals_s"]["histogram"]) >= 1

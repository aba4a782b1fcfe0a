"""The words of ``mqsync-inspect``: its text and JSON reports and its live line.

The text report is made from :meth:`MetricStatistics.to_json`'s dict, so both reports say
the same.  Numbers get as many significant digits as it takes to tell apart what differs:
histogram labels resolve a tenth of the spread, as the bins do, and seconds are shown in the
one unit (s, ms or us) that suits the largest of them.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence

from ..timeseries import Timestamp
from ._inspect_statistics import HISTOGRAM_BINS

__all__ = ["BAR_WIDTH", "MERGE_WITHIN", "format_report", "json_report", "live_line"]

BAR_WIDTH = 40

#: The interval histogram is one line when every interval is within this fraction of the
#: median: ten bins of jitter say less than "1 s, all within 0.005 %".
MERGE_WITHIN = 0.01

Render = Callable[[float, int], str]
"""Renders a number with a number of significant digits."""


def json_report(metric: str, metadata: dict[str, Any], report: dict[str, Any]) -> str:
    """The JSON report of one inspection: metric, metadata and ``report``'s entries."""
    return json.dumps({"metric": metric, "metadata": metadata, **report}, indent=2)


def format_report(metric: str, metadata: dict[str, Any], report: dict[str, Any]) -> str:
    """The text report of one inspection."""
    lines = [f"metric: {metric}", *_metadata_lines(metadata), *_count_lines(report)]
    if report["points"]:
        lines += [
            _last_point_line(report),
            *_chunk_lines(report),
            *_interval_lines(report),
            *_value_lines(report),
            f"NaN: {report['nan']}, +inf: {report['positive_infinity']}, "
            f"-inf: {report['negative_infinity']}",
            _summary_line("delay (arrival - point time)", report["delay_s"], _seconds_render, 4),
        ]
    return "\n".join(lines)


def live_line(now: Timestamp, new_points: int, seconds: float, last_value: float | None) -> str:
    """The line printed while watching: the time of day, the points that arrived in the last
    ``seconds``, their rate and the last value."""
    shown = _number(last_value) if last_value is not None else "-"
    return (
        f"{now.isoformat()[11:19]}  +{new_points} points ({new_points / seconds:.3g}/s)"
        f"  last {shown}"
    )


# -- sections of the text report ---------------------------------------------------------


def _metadata_lines(metadata: dict[str, Any]) -> list[str]:
    if not metadata:
        return ["metadata: none (no source declared this metric)"]
    return ["metadata:"] + [
        f"  {key}: {json.dumps(value)}" for key, value in sorted(metadata.items())
    ]


def _count_lines(report: dict[str, Any]) -> list[str]:
    rate = report["points_per_s"]
    points = f"points: {report['points']}" + (f" ({rate:.3g}/s)" if rate is not None else "")
    return [f"inspected: {report['elapsed_s']:.1f} s", points]


def _last_point_line(report: dict[str, Any]) -> str:
    last = report["last_value"]  # a float, or the text of NaN or an infinity
    return f"last: {_number(last) if isinstance(last, float) else last} at {report['last_time']}"


def _chunk_lines(report: dict[str, Any]) -> list[str]:
    """The chunk sizes, with a bar per size when there are few sizes."""
    sizes = report["chunk_sizes"]
    lines = [
        f"chunks: {report['chunks']}; size min {sizes['min']}, mean {sizes['mean']:.3g}, "
        f"max {sizes['max']}"
    ]
    counts = sizes["counts"]
    if len(counts) <= HISTOGRAM_BINS:
        lines += _bars(list(counts), list(counts.values()))
    return lines


def _interval_lines(report: dict[str, Any]) -> list[str]:
    intervals = report["intervals_s"]
    not_increasing = report["not_increasing"]
    summary = _summary_line("intervals", intervals, _seconds_render, 4)
    if not_increasing:
        summary += f"; {not_increasing} not increasing"
    return [summary, *_interval_histogram_lines(intervals)]


def _value_lines(report: dict[str, Any]) -> list[str]:
    values = report["values"]
    return [
        _summary_line("values", values, _number_render, 6),
        *_histogram_lines(values.get("histogram", []), _number_render, 6),
    ]


def _summary_line(
    name: str, summary: dict[str, Any], make_render: Callable[..., Render], digits: int
) -> str:
    if not summary.get("count"):
        return f"{name}: none"
    figures = [summary["min"], summary["median"], summary["mean"], summary["max"]]
    low, median, mean, high = _labels(
        figures, make_render(figures), digits, distinct=_steps(figures[0], figures[-1])
    )
    return (
        f"{name}: min {low}, median {median}, mean {mean}, max {high} ({summary['count']} in all)"
    )


def _interval_histogram_lines(summary: dict[str, Any]) -> list[str]:
    """The interval histogram; a single line when all intervals are within
    :data:`MERGE_WITHIN` of the median."""
    bins = summary.get("histogram", [])
    if not bins:
        return []
    low, high, median = bins[0]["low"], bins[-1]["high"], summary["median"]
    deviation = max(median - low, high - median)
    if not (median > 0 and high > low and deviation <= MERGE_WITHIN * median):
        return _histogram_lines(bins, _seconds_render, 4)
    label = " .. ".join(
        _labels([low, high], _seconds_render([low, high]), 4, distinct=_steps(low, high))
    )
    line = _bars([label], [sum(int(entry["count"]) for entry in bins)])[0]
    return [f"{line}  (all within {deviation / median * 100:.2g} % of the median)"]


def _histogram_lines(
    bins: list[dict[str, float]], make_render: Callable[..., Render], digits: int
) -> list[str]:
    """One bar per bin, labelled ``low .. high`` with as many digits as it takes for
    neighbouring bins to read differently."""
    if not bins:
        return []
    edges = [bins[0]["low"]] + [entry["high"] for entry in bins]
    shown = _labels(edges, make_render(edges), digits)
    labels = [
        shown[i] if entry["low"] == entry["high"] else f"{shown[i]} .. {shown[i + 1]}"
        for i, entry in enumerate(bins)
    ]
    return _bars(labels, [int(entry["count"]) for entry in bins])


def _bars(labels: Sequence[str], counts: Sequence[int]) -> list[str]:
    most = max(counts, default=0) or 1
    width = max((len(label) for label in labels), default=0)
    return [
        f"  {label.rjust(width)}  {'#' * round(BAR_WIDTH * count / most):<{BAR_WIDTH}}  {count}"
        for label, count in zip(labels, counts)
    ]


# -- numbers -----------------------------------------------------------------------------


def _number(value: float) -> str:
    return f"{value:.6g}"


def _seconds_render(values: Sequence[float]) -> Render:
    """Renders seconds in the one unit (s, ms or us) that suits the largest of ``values``."""
    largest = max((abs(value) for value in values), default=0.0)
    scale, unit = 1e-6, "us"
    for candidate_scale, candidate_unit in ((1.0, "s"), (1e-3, "ms")):
        # rounded first, so that 0.99996 s is "1 s", not "1000 ms"
        if largest == 0 or float(f"{largest / candidate_scale:.4g}") >= 1:
            scale, unit = candidate_scale, candidate_unit
            break
    return lambda value, digits: f"{value / scale:.{digits}g} {unit}"


def _number_render(values: Sequence[float]) -> Render:
    return lambda value, digits: f"{value:.{digits}g}"


def _labels(
    values: Sequence[float], render: Render, digits: int, distinct: Sequence[float] | None = None
) -> list[str]:
    """``values`` rendered with ``digits`` significant digits, or more where needed so that
    any two of ``distinct`` (default: ``values``) that differ print differently."""
    for precision in range(digits, 18):
        first_value_of: dict[str, float] = {}
        if all(
            first_value_of.setdefault(render(value, precision), value) == value
            for value in (values if distinct is None else distinct)
        ):
            break
    return [render(value, precision) for value in values]


def _steps(low: float, high: float) -> list[float]:
    """``low`` to ``high`` in :data:`HISTOGRAM_BINS` equal steps: labels that tell these
    apart resolve a tenth of the spread, as the histogram does."""
    return [low + (high - low) * i / HISTOGRAM_BINS for i in range(HISTOGRAM_BINS + 1)]

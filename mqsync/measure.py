"""What ``mqsync-measure`` computes from a command's run: summaries, energy, CSV, plot.

A :class:`Measurement` takes the drained points one at a time and keeps, per metric, only
running figures (count, minimum, maximum, sum, integral) and a plot series of bounded size,
so a run of any length is summarized in bounded memory; the CSV is written as the points
come.

Energy: a metric is a *power* metric when its unit is a (prefixed) watt or its metadata says
``"quantity": "power"``; its energy in joules is the integral of its values over the
command's run window ``[start, end]``.  How the points are joined follows the metric's
``scope`` metadata (MetricQ's convention for what a value stands for):

``last`` (the default, as in MetricQ's ``TimeAggregate`` and databases)
    a value holds over the interval since the previous point: power meters report the
    mean power of their last period, so the **step** integral is exactly the energy they
    measured (a trapezoid would smear each period into its neighbours by half a sample).
``next``
    a value holds from its timestamp until the next point (step integral, the other way).
``point``
    instantaneous samples: the **trapezoid** rule (linear between samples) estimates the
    integral best.

Intervals that straddle the window's edges are cut at the edges, so the energy is that
of the run window alone.  Where no interval of points covers part of the window (no point
before the start, or a NaN value), that part is left out and :attr:`MetricSummary.coverage`
drops below 1: keep a margin of data around the run (``mqsync-measure --margin``).
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, TextIO

import attrs

from .timeseries import Timestamp

logger = logging.getLogger(__name__)

__all__ = [
    "Integrator",
    "Measurement",
    "MetricSummary",
    "Window",
    "format_table",
    "plot_measurement",
    "plotting_available",
    "power_factor",
]

_NS_PER_S = 1_000_000_000

#: Watts per unit of the power units recognized by :func:`power_factor`.
POWER_UNITS: dict[str, float] = {
    "nW": 1e-9, "uW": 1e-6, "\u00b5W": 1e-6, "\u03bcW": 1e-6, "mW": 1e-3, "W": 1.0,
    "kW": 1e3, "MW": 1e6, "GW": 1e9,
}
SCOPES = ("last", "next", "point")
CSV_HEADER = ("time_ns", "time", "metric", "value")


def power_factor(metadata: Mapping[str, Any]) -> float | None:
    """Watts per unit of a power metric (``1.0`` for ``"W"``, ``1e3`` for ``"kW"``), else None.

    A metric is a power metric when its ``unit`` is a (prefixed) watt, or its ``quantity``
    is ``"power"`` (then a unit that is no watt is taken as watts, and logged).
    """
    unit = metadata.get("unit")
    unit = unit.strip() if isinstance(unit, str) else ""
    if unit in POWER_UNITS:
        return POWER_UNITS[unit]
    if str(metadata.get("quantity", "")).strip().lower() == "power":
        if unit:
            logger.warning("power metric with unit %r: its values are taken as watts", unit)
        return 1.0
    return None


def scope_of(metadata: Mapping[str, Any]) -> str:
    """The metric's ``scope`` (``last``, ``next`` or ``point``); ``last`` when unset or unknown."""
    scope = metadata.get("scope", "last")
    if scope not in SCOPES:
        logger.warning("unknown scope %r (expected one of %s): integrating as 'last'", scope,
                       ", ".join(SCOPES))
        return "last"
    return scope


def integration_method(scope: str) -> str:
    """How points of ``scope`` are integrated: ``step`` or ``trapezoid``."""
    return "trapezoid" if scope == "point" else "step"


@attrs.frozen
class Window:
    """A command's run, ``[start_ns, end_ns]``, and the margin of data kept around it."""

    start_ns: int = attrs.field(validator=attrs.validators.instance_of(int))
    end_ns: int = attrs.field(validator=attrs.validators.instance_of(int))
    margin_ns: int = attrs.field(default=0, validator=attrs.validators.instance_of(int))

    def __attrs_post_init__(self) -> None:
        if self.end_ns < self.start_ns:
            raise ValueError(f"window end {self.end_ns} ns is before its start "
                             f"{self.start_ns} ns; expected start <= end")
        if self.margin_ns < 0:
            raise ValueError(f"margin must be >= 0 ns, got {self.margin_ns}")

    @classmethod
    def of(cls, start: Timestamp, end: Timestamp, margin_s: float = 0.0) -> Window:
        """The window from ``start`` to ``end`` with ``margin_s`` seconds kept around it."""
        return cls(start.posix_ns, end.posix_ns, round(margin_s * _NS_PER_S))

    @property
    def keep_from_ns(self) -> int:
        """The earliest time of a point that is kept (start minus margin)."""
        return self.start_ns - self.margin_ns

    @property
    def keep_until_ns(self) -> int:
        """The latest time of a point that is kept (end plus margin)."""
        return self.end_ns + self.margin_ns

    @property
    def duration_s(self) -> float:
        """The run's length in seconds."""
        return (self.end_ns - self.start_ns) / _NS_PER_S

    def to_dict(self) -> dict[str, Any]:
        return {
            "start_ns": self.start_ns, "start": Timestamp(self.start_ns).isoformat(),
            "end_ns": self.end_ns, "end": Timestamp(self.end_ns).isoformat(),
            "duration_s": self.duration_s, "margin_s": self.margin_ns / _NS_PER_S,
            "keep_from_ns": self.keep_from_ns, "keep_until_ns": self.keep_until_ns,
        }


class Integrator:
    """The running integral of one metric's points over ``[start_ns, end_ns]``.

    Feed points in time order with :meth:`add`; :attr:`integral_ns` is in value × ns,
    :attr:`covered_ns` the part of the window the integral covers.  A point whose time is
    not after the previous one is skipped and counted in :attr:`unordered`.
    """

    def __init__(self, start_ns: int, end_ns: int, scope: str = "last"):
        if scope not in SCOPES:
            raise ValueError(f"invalid scope {scope!r}: must be one of {', '.join(SCOPES)}")
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.scope = scope
        self.integral_ns = 0.0
        self.covered_ns = 0
        self.unordered = 0
        self._previous_ns: int | None = None
        self._previous_value = math.nan

    def add(self, time_ns: int, value: float) -> None:
        """Take the next point of the series."""
        previous_ns, previous_value = self._previous_ns, self._previous_value
        if previous_ns is not None and time_ns <= previous_ns:
            self.unordered += 1
            return
        self._previous_ns, self._previous_value = time_ns, value
        if previous_ns is None:
            return
        low, high = max(previous_ns, self.start_ns), min(time_ns, self.end_ns)
        if high <= low:
            return
        if self.scope == "last":
            area = value * (high - low)
        elif self.scope == "next":
            area = previous_value * (high - low)
        else:
            span = time_ns - previous_ns
            slope = (value - previous_value) / span
            at_low = previous_value + slope * (low - previous_ns)
            at_high = previous_value + slope * (high - previous_ns)
            area = (at_low + at_high) / 2 * (high - low)
        if math.isnan(area):
            return  # a NaN value: this stretch is not covered
        self.integral_ns += area
        self.covered_ns += high - low

    @property
    def integral_s(self) -> float:
        """The integral in value × seconds (joules for a power metric in watts)."""
        return self.integral_ns / _NS_PER_S


@attrs.frozen
class MetricSummary:
    """What one metric did during the run window.

    ``count``, ``minimum``, ``maximum`` and ``mean`` (arithmetic, NaN values left out) are
    over the points inside the window; ``integral_s`` (value × s) and ``energy_j`` (power
    metrics only, else None) over the window as described in the module's docstring.
    """

    metric: str
    unit: str
    count: int
    minimum: float
    maximum: float
    mean: float
    integral_s: float | None
    energy_j: float | None
    covered_s: float
    coverage: float
    """``covered_s`` over the window's duration (1.0 for an empty window)."""
    scope: str
    integration: str
    collected: int
    """Points kept including the margins (the CSV rows of this metric)."""
    unordered: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; NaN and infinities become None."""
        return {key: _json_number(value) for key, value in attrs.asdict(self).items()}


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class _MetricState:
    """Running figures of one metric."""

    def __init__(self, window: Window, metadata: Mapping[str, Any], series: _PlotSeries):
        self.metadata = metadata
        self.scope = scope_of(metadata)
        self.factor = power_factor(metadata)
        self.integrator = Integrator(window.start_ns, window.end_ns, self.scope)
        self.series = series
        self.count = 0
        self.numbers = 0
        self.total = 0.0
        self.minimum = math.inf
        self.maximum = -math.inf
        self.collected = 0


class Measurement:
    """Summarizes a run from its points, one at a time, in bounded memory.

    Args:
        window: the run and the margin of data kept around it.
        metrics: the measured metrics (their order is the summaries' order).
        metadata: the metrics' metadata (``unit``, ``quantity``, ``scope``), e.g. a
            Subscriber's :attr:`~mqsync.Subscriber.metadata`.
        plot_points: points per metric the plot series holds before it turns into a
            min/mean/max envelope of ``plot_points // 4`` time buckets.
    """

    def __init__(self, window: Window, metrics: Sequence[str],
                 metadata: Mapping[str, Mapping[str, Any]] | None = None, *,
                 plot_points: int = 8000):
        if plot_points < 8:
            raise ValueError(f"plot_points must be >= 8, got {plot_points}")
        self.window = window
        self.metadata = {name: dict(meta) for name, meta in (metadata or {}).items()}
        self._plot_points = plot_points
        self._states: dict[str, _MetricState] = {}
        for metric in metrics:
            self._state(metric)

    def _state(self, metric: str) -> _MetricState:
        state = self._states.get(metric)
        if state is None:
            series = _PlotSeries(self.window.keep_from_ns, self.window.keep_until_ns,
                                 self._plot_points)
            state = self._states[metric] = _MetricState(
                self.window, self.metadata.get(metric, {}), series)
        return state

    @property
    def metrics(self) -> list[str]:
        """The metrics, measured ones first, then any other that sent points."""
        return list(self._states)

    def add(self, metric: str, time_ns: int, value: float) -> bool:
        """Take one point; return whether it is kept (inside the window with its margins).

        Points of one metric must come in time order (as a Drain yields them).
        """
        window = self.window
        if not window.keep_from_ns <= time_ns <= window.keep_until_ns:
            return False
        state = self._states.get(metric) or self._state(metric)
        state.collected += 1
        state.integrator.add(time_ns, value)
        state.series.add(time_ns, value)
        if window.start_ns <= time_ns <= window.end_ns:
            state.count += 1
            if not math.isnan(value):
                state.numbers += 1
                state.total += value
                state.minimum = min(state.minimum, value)
                state.maximum = max(state.maximum, value)
        return True

    def collect(self, points: Iterable[tuple[str, Timestamp | int, float]],
                csv_file: TextIO | None = None) -> int:
        """Take every point of ``points``; write the kept ones to ``csv_file`` if given.

        The CSV has a header and the columns ``time_ns, time, metric, value`` (ISO-8601
        UTC time; the value as Python's shortest round-trip repr), in arrival order.
        Returns the number of points kept.
        """
        writer = csv.writer(csv_file, lineterminator="\n") if csv_file is not None else None
        if writer is not None:
            writer.writerow(CSV_HEADER)
        kept = 0
        add = self.add
        for metric, timestamp, value in points:
            time_ns = timestamp.posix_ns if isinstance(timestamp, Timestamp) else timestamp
            if add(metric, time_ns, value):
                kept += 1
                if writer is not None:
                    writer.writerow((time_ns, Timestamp(time_ns).isoformat(), metric,
                                     repr(value)))
        return kept

    def summaries(self) -> list[MetricSummary]:
        """One summary per metric, in :attr:`metrics` order."""
        duration_ns = self.window.end_ns - self.window.start_ns
        result = []
        for metric, state in self._states.items():
            integrator = state.integrator
            covered = integrator.covered_ns
            integral = integrator.integral_s if covered else None
            energy = (integral * state.factor
                      if integral is not None and state.factor is not None else None)
            result.append(MetricSummary(
                metric=metric,
                unit=str(state.metadata.get("unit", "")),
                count=state.count,
                minimum=state.minimum if state.numbers else math.nan,
                maximum=state.maximum if state.numbers else math.nan,
                mean=state.total / state.numbers if state.numbers else math.nan,
                integral_s=integral,
                energy_j=energy,
                covered_s=covered / _NS_PER_S,
                coverage=covered / duration_ns if duration_ns else 1.0,
                scope=state.scope,
                integration=integration_method(state.scope),
                collected=state.collected,
                unordered=integrator.unordered,
            ))
        return result

    def plot_data(self) -> dict[str, PlotData]:
        """Per metric, what :func:`plot_measurement` draws."""
        return {metric: state.series.data() for metric, state in self._states.items()}


@attrs.frozen
class PlotData:
    """One metric's plot: ``times_ns``/``values`` as points, or, for a metric with more
    points than the plot holds, per time bucket ``times_ns`` (bucket middles) with
    ``values`` (means), ``minima`` and ``maxima``."""

    times_ns: list[int]
    values: list[float]
    minima: list[float] | None = None
    maxima: list[float] | None = None

    @property
    def envelope(self) -> bool:
        return self.minima is not None


class _PlotSeries:
    """The points of one metric for the plot: raw up to a limit, then bucketed."""

    def __init__(self, low_ns: int, high_ns: int, limit: int):
        self._low = low_ns
        self._span = max(1, high_ns - low_ns)
        self._limit = limit
        self._buckets = max(2, limit // 4)
        self._times: list[int] | None = []
        self._values: list[float] = []
        self._minima: list[float] = []
        self._maxima: list[float] = []
        self._sums: list[float] = []
        self._counts: list[int] = []

    def add(self, time_ns: int, value: float) -> None:
        times = self._times
        if times is not None:
            times.append(time_ns)
            self._values.append(value)
            if len(times) > self._limit:
                self._to_buckets()
            return
        if math.isnan(value):
            return
        index = min(self._buckets - 1, (time_ns - self._low) * self._buckets // self._span)
        self._sums[index] += value
        self._counts[index] += 1
        if value < self._minima[index]:
            self._minima[index] = value
        if value > self._maxima[index]:
            self._maxima[index] = value

    def _to_buckets(self) -> None:
        times, values = self._times or [], self._values
        self._times, self._values = None, []
        self._minima = [math.inf] * self._buckets
        self._maxima = [-math.inf] * self._buckets
        self._sums = [0.0] * self._buckets
        self._counts = [0] * self._buckets
        for time_ns, value in zip(times, values):
            self.add(time_ns, value)

    def data(self) -> PlotData:
        if self._times is not None:
            return PlotData(list(self._times), list(self._values))
        width = self._span / self._buckets
        used = [i for i, count in enumerate(self._counts) if count]
        return PlotData(
            [self._low + round((i + 0.5) * width) for i in used],
            [self._sums[i] / self._counts[i] for i in used],
            [self._minima[i] for i in used],
            [self._maxima[i] for i in used],
        )


def format_table(summaries: Sequence[MetricSummary]) -> str:
    """The summaries as a plain-text table (one line per metric, with a header)."""
    header = ("metric", "unit", "points", "min", "max", "mean", "energy [J]", "coverage")
    rows = [header]
    for summary in summaries:
        rows.append((
            summary.metric, summary.unit or "-", str(summary.count), _number(summary.minimum),
            _number(summary.maximum), _number(summary.mean), _number(summary.energy_j),
            _coverage(summary),
        ))
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [cell.rjust(width) for cell, width in zip(row[2:], widths[2:])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _coverage(summary: MetricSummary) -> str:
    cell = f"{summary.coverage * 100:.1f} %"
    # no point inside the run: what covers it are the points just before and after
    return f"{cell} (interpolated)" if summary.count == 0 and summary.coverage > 0 else cell


def _number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.6g}"


def plotting_available() -> bool:
    """Whether matplotlib can be imported (``pip install 'mqsync[plot]'``)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot_measurement(path: str | Path, measurement: Measurement, *, title: str = "") -> None:
    """Draw every metric over the run (one panel each, time in seconds since the start,
    the start and the end marked) and save it as an image (format from the suffix).

    Raises:
        ImportError: matplotlib is not installed (``pip install 'mqsync[plot]'``).
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("plotting needs matplotlib: pip install 'mqsync[plot]' "
                          "(or pip install matplotlib)") from error
    window = measurement.window
    data = measurement.plot_data()
    metrics = measurement.metrics
    figure = Figure(figsize=(10, 1.0 + 2.2 * max(1, len(metrics))), layout="constrained")
    axes = figure.subplots(max(1, len(metrics)), 1, sharex=True, squeeze=False)[:, 0]
    end_s = window.duration_s
    for ax, metric in zip(axes, metrics):
        series = data[metric]
        seconds = [(t - window.start_ns) / _NS_PER_S for t in series.times_ns]
        if series.envelope:
            ax.fill_between(seconds, series.minima, series.maxima, alpha=0.3, linewidth=0,
                            label="min/max")
            ax.plot(seconds, series.values, linewidth=1.0, label="mean")
        elif seconds:
            ax.plot(seconds, series.values, linewidth=1.0,
                    marker="." if len(seconds) <= 200 else None)
        else:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center")
        ax.axvline(0.0, color="tab:green", linestyle="--", linewidth=1.2, label="start")
        ax.axvline(end_s, color="tab:red", linestyle="--", linewidth=1.2, label="end")
        unit = measurement.metadata.get(metric, {}).get("unit")
        ax.set_ylabel(f"[{unit}]" if unit else "value")
        ax.set_title(metric, fontsize="medium", loc="left")
        ax.grid(True, alpha=0.3)
    axes[0].legend(loc="upper right", fontsize="small")
    axes[-1].set_xlabel(f"seconds since the start ({Timestamp(window.start_ns).isoformat()})")
    if window.keep_until_ns > window.keep_from_ns:
        axes[-1].set_xlim(-window.margin_ns / _NS_PER_S, end_s + window.margin_ns / _NS_PER_S)
    if title:
        figure.suptitle(title)
    figure.savefig(path, dpi=100)

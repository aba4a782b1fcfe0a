"""The pieces of mqsync-measure on their own: settings, the command's run and its signals,
collecting, and the report's text.  The whole command is tested in tests/test_measure.py."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

import attrs
import pytest

from mqsync.cli import measure as measure_cli
from mqsync.cli.measure import (
    EXIT_CONNECT,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    Run,
    Settings,
    SignalForwarder,
)
from mqsync.errors import ConfigError, ConnectFailed, RPCError, RPCTimeout
from mqsync.measure import CSV_HEADER, Measurement, MetricSummary, Window
from mqsync.timeseries import Timestamp

S = 1_000_000_000
T0 = 1_700_000_000 * S


@pytest.fixture(autouse=True)
def no_configuration(monkeypatch, tmp_path):
    """Settings from the command line alone: no $MQSYNC_* and no configuration file."""
    for name in ("MQSYNC_URL", "MQSYNC_TOKEN", "MQSYNC_LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MQSYNC_CONFIG", str(tmp_path / "cli.json"))
    (tmp_path / "cli.json").write_text("{}")


def _settings(*options: str, command: tuple[str, ...] = ("true",)) -> Settings:
    args = measure_cli.make_parser().parse_args(["--metrics", "room.power", *options])
    return measure_cli.read_settings(args, command)


# -- settings -------------------------------------------------------------------------------


def test_the_command_goes_after_the_first_double_dash():
    assert measure_cli.split_command(["--metrics", "a", "--", "sh", "-c", "x -- y", "--"]) == (
        ["--metrics", "a"],
        ["sh", "-c", "x -- y", "--"],
    )
    assert measure_cli.split_command(["--metrics", "a", "sleep"]) == (["--metrics", "a", "sleep"],
                                                                      [])
    assert measure_cli.split_command(("--metrics", "a", "--")) == (["--metrics", "a"], [])


def test_settings_by_default(tmp_path):
    settings = _settings("--output-dir", str(tmp_path / "runs" / "1"), "--no-plot",
                         command=("sleep", "1"))
    assert settings.command == ("sleep", "1") and settings.metrics == ("room.power",)
    assert settings.url is None and settings.token.startswith("sink-measure-")
    assert (settings.expires, settings.margin, settings.settle) == (3600.0, 1.0, 1.0)
    assert settings.wait_after == 2.0
    assert settings.csv_path == tmp_path / "runs" / "1" / "measurement.csv"
    assert settings.summary_path == tmp_path / "runs" / "1" / "summary.json"
    assert settings.plot_path is None
    assert settings.outputs == [settings.csv_path, settings.summary_path]
    assert (tmp_path / "runs" / "1").is_dir()  # made before anything runs
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        settings.margin = 2.0  # type: ignore[misc]


def test_settings_take_durations_and_paths(tmp_path):
    settings = _settings("--expires", "2h", "--margin", "500ms", "--settle", "0",
                         "--csv", str(tmp_path / "a" / "points.csv"),
                         "--summary", str(tmp_path / "b" / "figures.json"), "--no-plot")
    assert (settings.expires, settings.margin, settings.settle) == (7200.0, 0.5, 0.0)
    assert settings.csv_path == tmp_path / "a" / "points.csv"
    assert settings.summary_path == tmp_path / "b" / "figures.json"
    assert (tmp_path / "a").is_dir() and (tmp_path / "b").is_dir()


@pytest.mark.parametrize("options, message", [
    (("--expires", "0"), "--expires must be a positive duration, got '0'"),
    (("--expires", "10S"), "invalid expires '10S'"),
    (("--margin", "-1s"), "--margin must not be negative, got -1 s"),
    (("--settle", "-250ms"), "--settle must not be negative, got -0.25 s"),
    (("--margin", "soon"), "invalid margin 'soon'"),
])
def test_invalid_settings_are_configuration_errors(options, message, tmp_path):
    with pytest.raises(ConfigError) as raised:
        _settings(*options, "--no-plot", "--output-dir", str(tmp_path))
    assert message in str(raised.value)


def test_an_output_directory_that_cannot_be_made_is_a_configuration_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot create the directory for"):
        _settings("--no-plot", "--output-dir", str(blocker / "runs"))


def test_the_plot_by_default_only_with_matplotlib(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(measure_cli, "plotting_available", lambda: True)
    assert _settings("--output-dir", str(tmp_path)).plot_path == tmp_path / "plot.png"
    assert _settings("--plot", str(tmp_path / "p.png")).plot_path == tmp_path / "p.png"
    monkeypatch.setattr(measure_cli, "plotting_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="mqsync.cli.measure"):
        assert _settings("--output-dir", str(tmp_path)).plot_path is None
    assert "matplotlib is not installed: no plot" in caplog.text
    with pytest.raises(ConfigError, match=r"needs matplotlib: pip install 'mqsync\[plot\]'"):
        _settings("--plot", str(tmp_path / "p.png"))


# -- the subscription -----------------------------------------------------------------------


def test_metadata_warnings():
    metadata = {
        "slow": {"rate": 10, "chunkSize": 100},  # a chunk every 10 s
        "fast": {"rate": 100, "chunkSize": 10},
        "odd": {"rate": "10", "chunkSize": 100},  # not numbers: nothing to say
    }
    warnings = list(measure_cli.metadata_warnings(["slow", "fast", "odd", "none"], metadata,
                                                  wait_after=2.0))
    assert warnings == [
        "slow is sent in chunks of about 10 s (chunkSize 100 at 10/s): points near the end "
        "of the run may come too late; raise --settle",
        "none: no metadata (has a source declared it?)",
    ]
    assert list(measure_cli.metadata_warnings(["slow"], metadata, wait_after=10.0)) == []


# -- running the command --------------------------------------------------------------------


def test_exit_codes_as_a_shell_gives_them():
    assert measure_cli.shell_exit_code(0) == 0
    assert measure_cli.shell_exit_code(5) == 5
    assert measure_cli.shell_exit_code(-signal.SIGKILL) == 128 + signal.SIGKILL


def test_run_command_times_the_run_and_restores_the_handlers():
    before = {signum: signal.getsignal(signum) for signum in measure_cli.FORWARDED_SIGNALS}
    returncode, start, end = measure_cli.run_command(
        [sys.executable, "-c", "import time; time.sleep(0.2); raise SystemExit(3)"])
    assert returncode == 3
    assert 0.2 <= (end - start).s < 10
    assert {signum: signal.getsignal(signum) for signum in before} == before


def test_a_command_that_cannot_start_raises_and_restores_the_handlers(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(OSError):
        measure_cli.run_command([str(tmp_path / "no-such-program")])
    assert signal.getsignal(signal.SIGTERM) is before


def test_run_command_off_the_main_thread_forwards_nothing_and_still_runs():
    results = []
    thread = threading.Thread(
        target=lambda: results.append(measure_cli.run_command([sys.executable, "-c", "pass"])))
    thread.start()
    thread.join(60)
    assert results and results[0][0] == 0


def test_a_signal_that_came_while_the_command_started_is_forwarded_once_it_runs():
    forwarder = SignalForwarder()
    forwarder(signal.SIGTERM, None)  # before there is a command: kept
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as child:
        forwarder.attach(child)
        assert child.wait(30) == -signal.SIGTERM


def test_a_signal_after_the_start_goes_straight_to_the_command():
    forwarder = SignalForwarder()
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as child:
        forwarder.attach(child)
        forwarder(signal.SIGINT, None)
        assert child.wait(30) == -signal.SIGINT
        forwarder(signal.SIGTERM, None)  # the command ended: nothing is sent, nothing fails


def test_a_wait_is_cut_short_by_a_signal():
    before = signal.getsignal(signal.SIGTERM)
    started = time.monotonic()
    assert measure_cli.interrupted_within(0.05) is False
    timer = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        assert measure_cli.interrupted_within(30) is True
    finally:
        timer.join()
    assert time.monotonic() - started < 10
    assert signal.getsignal(signal.SIGTERM) is before  # restored


# -- collecting -----------------------------------------------------------------------------


class FakeSubscriber:
    """Hands out given points, or fails as a drain can."""

    def __init__(self, points=(), error: BaseException | None = None):
        self._points = list(points)
        self._error = error
        self.asked = None

    def collect_data(self, *, start, end, timeout):
        self.asked = (start, end)
        yield from self._points
        if self._error is not None:
            raise self._error


def _measurement(duration_s: int = 10) -> Measurement:
    window = Window.of(Timestamp(T0), Timestamp(T0 + duration_s * S), 1.0)
    return Measurement(window, ["room.power"], {"room.power": {"unit": "W"}})


def test_collect_writes_the_csv_of_the_kept_points(tmp_path):
    csv_path = tmp_path / "measurement.csv"
    subscriber = FakeSubscriber([("room.power", Timestamp(T0 + S), 100.0),
                                 ("room.power", Timestamp(T0 + 2 * S), 101.0)])
    assert measure_cli.collect(subscriber, _measurement(), csv_path) == 2
    assert subscriber.asked == (Timestamp(T0 - S), Timestamp(T0 + 11 * S))
    lines = csv_path.read_text().splitlines()
    assert lines[0] == ",".join(CSV_HEADER) and len(lines) == 3
    assert not (tmp_path / "measurement.csv.part").exists()


@pytest.mark.parametrize("error", [ConnectFailed("connection lost"), KeyboardInterrupt()])
def test_a_failed_collect_leaves_only_a_partial_csv(error, tmp_path):
    csv_path = tmp_path / "measurement.csv"
    subscriber = FakeSubscriber([("room.power", Timestamp(T0 + S), 100.0)], error)
    with pytest.raises(type(error)):
        measure_cli.collect(subscriber, _measurement(), csv_path)
    assert not csv_path.exists()  # only a complete CSV gets its name
    assert len((tmp_path / "measurement.csv.part").read_text().splitlines()) == 2


@pytest.mark.parametrize("error, exit_code, message", [
    (RPCError("no such queue"), EXIT_FAILURE,
     "collecting the data failed: no such queue (the command ran 10 s, longer than "
     "--expires 5 s: raise --expires)"),
    (ConnectFailed("connection lost"), EXIT_CONNECT,
     "collecting the data failed (partial CSV in {part}): connection lost"),
    (RPCTimeout("no answer"), EXIT_CONNECT,
     "collecting the data failed (partial CSV in {part}): no answer"),
    (KeyboardInterrupt(), EXIT_INTERRUPTED, "interrupted while collecting (partial CSV in {part})"),
    (PermissionError(13, "Permission denied"), EXIT_FAILURE,
     "collecting the data failed: [Errno 13] Permission denied"),
])
def test_a_failed_collect_says_why_with_its_exit_code(error, exit_code, message, tmp_path):
    settings = _settings("--no-plot", "--output-dir", str(tmp_path), "--expires", "5s")
    window = _measurement(duration_s=10).window
    assert measure_cli.collect_failure(error, settings, window) == (
        message.format(part=tmp_path / "measurement.csv.part"), exit_code)
    if isinstance(error, RPCError):  # a run within --expires: no hint
        short = _measurement(duration_s=2).window
        assert measure_cli.collect_failure(error, settings, short) == (
            "collecting the data failed: no such queue", EXIT_FAILURE)


# -- the report -----------------------------------------------------------------------------


def _summary(**changes) -> MetricSummary:
    fields = dict(metric="room.power", unit="W", count=10, minimum=1.0, maximum=2.0, mean=1.5,
                  integral_s=15.0, energy_j=15.0, covered_s=10.0, coverage=1.0, scope="last",
                  integration="step", collected=12, unordered=0)
    return MetricSummary(**{**fields, **changes})


def test_the_summary_document(tmp_path):
    settings = _settings("--no-plot", "--output-dir", str(tmp_path), command=("sleep", "10"))
    window = Window.of(Timestamp(T0), Timestamp(T0 + 10 * S), 1.0)
    document = measure_cli.summary_document(settings, Run(4, window), None, 12, [_summary()])
    assert list(document) == ["command", "exit_code", "window", "subscribed_at", "points",
                              "metrics", "energy", "csv", "plot", "mqsync_version"]
    assert document["command"] == ["sleep", "10"] and document["exit_code"] == 4
    assert document["window"] == window.to_dict() and document["subscribed_at"] is None
    assert document["points"] == 12 and document["metrics"][0]["energy_j"] == 15.0
    assert document["csv"] == str(tmp_path / "measurement.csv") and document["plot"] is None


def test_notes_say_what_the_table_does_not():
    window = Window.of(Timestamp(T0), Timestamp(T0 + 2 * S), 1.0)
    assert measure_cli.notes([_summary()], window) == []
    assert measure_cli.notes([_summary(count=0, collected=0, covered_s=0.0, coverage=0.0,
                                       energy_j=None)], window) == [
        "no points of room.power in the run window or its margins (is a source sending it?)"]
    assert measure_cli.notes([_summary(count=0, collected=2)], window) == [
        "no point of room.power during the run (2 s, shorter than the interval between its "
        "points): no min, max or mean; its energy and coverage are interpolated from the "
        "points just before and after the run"]
    assert measure_cli.notes([_summary(count=0, collected=1, covered_s=0.0, coverage=0.5)],
                             window) == [
        "no point of room.power during the run (2 s), and the 1 in the margins do not cover "
        "it: no min, max, mean or energy (raise --margin or --settle?)",
        "the energy of room.power covers only 50.0 % of the run (raise --margin?)"]


def test_the_report_lists_the_plot_only_when_every_output_was_written(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(measure_cli, "plotting_available", lambda: True)
    settings = _settings("--output-dir", str(tmp_path), command=("true",))
    run = Run(0, Window.of(Timestamp(T0), Timestamp(T0 + S), 0.0))
    for complete, listed in ((True, f", {tmp_path / 'plot.png'}"), (False, "")):
        measure_cli.report(settings, run, 0, [_summary()], complete=complete)
        out, err = capsys.readouterr()
        assert out == "" and err.startswith("mqsync-measure: true ran 1.000 s, exit code 0; ")
        last = err.splitlines()[-1]
        assert last == (f"mqsync-measure: wrote {tmp_path / 'measurement.csv'}, "
                        f"{tmp_path / 'summary.json'}{listed}")

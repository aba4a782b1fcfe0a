"""Tests of mqsync.state: atomic JSON state files for sources run from cron."""

from __future__ import annotations

import datetime
import json
import logging
import os
import random
import subprocess
import sys
import time
import zoneinfo
from pathlib import Path

import pytest

import mqsync
from mqsync import Timedelta, Timestamp, embedded
from mqsync import state as state_module
from mqsync.errors import MqsyncError
from mqsync.state import (
    CollectorWithStateMixin,
    StateError,
    StateMixin,
    default_state_dir,
    load_state,
    save_state,
    state_file_path,
)

HELPERS = Path(__file__).parent / "crash_helpers"


def corrupt_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.corrupt-*"))


def test_public_names_are_in_all():
    public = {name for name in vars(state_module) if not name.startswith("_")}
    exported = set(state_module.__all__)
    assert exported <= public
    assert {"load_state", "save_state", "StateMixin", "StateError"} <= exported


def test_round_trip(tmp_path):
    path = tmp_path / "source.json"
    state = {"last": 1.5, "seen": ["a", "b"], "nested": {"ok": True, "none": None}}
    save_state(state, path)
    assert load_state(path) == state


def test_tuples_load_as_lists_and_nan_survives(tmp_path):
    path = tmp_path / "s.json"
    save_state({"pair": (1, 2), "value": float("nan")}, path)
    loaded = load_state(path)
    assert loaded["pair"] == [1, 2]
    assert loaded["value"] != loaded["value"]


def test_file_is_readable_json_with_an_envelope(tmp_path):
    path = tmp_path / "s.json"
    save_state({"b": 1, "a": 2}, path)
    document = json.loads(path.read_text())
    assert document["mqsync_state"] == 2
    assert document["state"] == {"a": 2, "b": 1}
    assert "saved_at" in document


def test_missing_file_gives_the_default(tmp_path):
    assert load_state(tmp_path / "none.json") is None
    assert load_state(tmp_path / "none.json", dict) == {}
    assert not list(tmp_path.iterdir())


def test_save_creates_the_directory(tmp_path):
    path = tmp_path / "a" / "b" / "s.json"
    save_state([1], path)
    assert load_state(path) == [1]


@pytest.mark.parametrize(
    ("state", "where", "type_name"),
    [
        ({"seen": {1, 2}}, "state['seen']", "set"),
        ({"a": [1, object()]}, "state['a'][1]", "object"),
        ({"when": b"raw"}, "state['when']", "bytes"),
    ],
)
def test_unencodable_state_names_the_type_and_leaves_the_file(tmp_path, state, where, type_name):
    path = tmp_path / "s.json"
    save_state({"old": True}, path)
    before = path.read_bytes()
    with pytest.raises(TypeError) as raised:
        save_state(state, path)
    assert where in str(raised.value)
    assert type_name in str(raised.value)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]


BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
TIME_VALUES = [
    datetime.datetime(2026, 11, 29, 1, 2, 3, 4),  # naive
    datetime.datetime(2026, 11, 29, 1, 2, 3, 4, tzinfo=datetime.timezone.utc),
    datetime.datetime(2026, 11, 29, 1, 2, 3, tzinfo=datetime.timezone(
        datetime.timedelta(hours=-3, minutes=-30))),
    datetime.datetime(2026, 3, 29, 3, 0, tzinfo=BERLIN),
    datetime.datetime(2026, 10, 25, 2, 30, fold=1, tzinfo=BERLIN),  # the repeated hour
    datetime.date(2026, 11, 29),
    datetime.timedelta(days=-1, seconds=5, microseconds=7),
    Timestamp(1_764_378_123_456_789_123),
    Timestamp(-5),
    Timedelta(-1),
    Timedelta(86_400_000_000_000_123),
]


@pytest.mark.parametrize("value", TIME_VALUES, ids=repr)
def test_time_values_round_trip_exactly(tmp_path, value):
    path = tmp_path / "s.json"
    save_state({"last_utc": value, "history": [value, (value,)]}, path)
    loaded = load_state(path)
    for got in (loaded["last_utc"], loaded["history"][0], loaded["history"][1][0]):
        assert got == value
        assert type(got) is type(value)
        if isinstance(value, datetime.datetime):
            # the same wall time in the same zone, not only the same instant
            assert got.tzinfo == value.tzinfo
            assert (got.isoformat(), got.fold) == (value.isoformat(), value.fold)


def test_time_values_are_readable_tagged_json(tmp_path):
    path = tmp_path / "s.json"
    when = datetime.datetime(2026, 11, 29, 1, 2, 3, tzinfo=BERLIN)
    save_state({"when": when, "ts": Timestamp(5)}, path)
    state = json.loads(path.read_text())["state"]
    assert state == {"when": {"$datetime": "2026-11-29T01:02:03+01:00",
                              "zone": "Europe/Berlin"},
                     "ts": {"$mqsync.Timestamp": 5}}


@pytest.mark.parametrize("own", [
    {"$date": "2026-11-29"},
    {"$dict": {"a": 1}},
    {"$datetime": "not a time", "other": 1},
    {"$mqsync.Timestamp": 1.5},
])
def test_an_applications_dict_that_looks_tagged_loads_back_as_written(tmp_path, own):
    path = tmp_path / "s.json"
    save_state({"own": own, "nested": [{"x": own}]}, path)
    assert load_state(path) == {"own": own, "nested": [{"x": own}]}


@pytest.mark.parametrize("bad", [
    {"$date": "2026-13-01"},
    {"$mqsync.Timestamp": "5"},
    {"$timedelta": [1, 2]},
])
def test_a_damaged_tagged_value_is_a_damaged_file(tmp_path, caplog, bad):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"mqsync_state": 2, "state": {"x": bad}}))
    with caplog.at_level(logging.ERROR, logger="mqsync.state"):
        assert load_state(path, dict) == {}
    assert "invalid $" in caplog.text
    assert len(corrupt_files(tmp_path)) == 1


def test_non_string_keys_are_rejected(tmp_path):
    with pytest.raises(TypeError, match="key 1 of type int"):
        save_state({"per_id": {1: "x"}}, tmp_path / "s.json")
    assert not (tmp_path / "s.json").exists()


def test_circular_state_is_rejected(tmp_path):
    loop: list = []
    loop.append(loop)
    with pytest.raises(TypeError, match="refers back to itself"):
        save_state(loop, tmp_path / "s.json")


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"   \n",
        b'{"mqsync_state": 1, "saved_at": "x", "state": {"n": 4',  # truncated
        b"\xff\xfe\x00garbage",
        b"[1, 2, 3]",  # JSON, but not a state file
        b'{"n": 4}',
        b'{"mqsync_state": "one", "state": 1}',
    ],
    ids=["empty", "blank", "truncated", "binary", "list", "no-envelope", "bad-version"],
)
def test_damaged_file_is_moved_aside_and_logged(tmp_path, caplog, content):
    path = tmp_path / "s.json"
    path.write_bytes(content)
    with caplog.at_level(logging.ERROR, logger="mqsync.state"):
        assert load_state(path, lambda: {"fresh": True}) == {"fresh": True}
    assert not path.exists()
    [aside] = corrupt_files(tmp_path)
    assert aside.name.startswith("s.json.corrupt-")
    assert aside.read_bytes() == content
    [record] = caplog.records
    assert str(path) in record.getMessage()
    assert str(aside) in record.getMessage()
    # The next save and load work normally.
    save_state({"n": 1}, path)
    assert load_state(path) == {"n": 1}


def test_truncated_real_state_at_every_length(tmp_path, caplog):
    path = tmp_path / "s.json"
    save_state({"n": 12345, "items": list(range(20))}, path)
    data = path.read_bytes()
    caplog.set_level(logging.CRITICAL, logger="mqsync.state")
    for length in range(0, len(data) - 1, 7):
        path.write_bytes(data[:length])
        assert load_state(path, lambda: "default") == "default", length
    assert len(corrupt_files(tmp_path)) == len(range(0, len(data) - 1, 7))


def test_newer_format_raises_and_keeps_the_file(tmp_path):
    path = tmp_path / "s.json"
    path.write_text('{"mqsync_state": 99, "state": {}}')
    with pytest.raises(StateError, match=r"version 99 is newer") as raised:
        load_state(path)
    assert str(path) in str(raised.value)
    assert isinstance(raised.value, MqsyncError)
    assert path.exists()


def test_failed_write_keeps_the_old_state_and_removes_the_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "s.json"
    save_state({"n": 1}, path)

    def failing_fsync(fd):
        raise OSError(5, "simulated I/O error")

    monkeypatch.setattr(state_module.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="simulated"):
        save_state({"n": 2}, path)
    monkeypatch.undo()
    assert load_state(path) == {"n": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]


def test_save_fsyncs_the_file_and_the_directory(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.path.isdir(f"/proc/self/fd/{fd}") if os.path.exists("/proc") else None)
        real_fsync(fd)

    monkeypatch.setattr(state_module.os, "fsync", recording_fsync)
    save_state({"n": 1}, tmp_path / "s.json")
    assert len(synced) == (2 if os.name == "posix" else 1)
    if synced[0] is not None:
        assert synced == [False, True]  # the file's data first, then the rename


def test_stale_temp_files_are_removed_on_load(tmp_path):
    path = tmp_path / "s.json"
    save_state({"n": 1}, path)
    stale = tmp_path / ".s.json.abc123.tmp"
    fresh = tmp_path / ".s.json.def456.tmp"
    stale.write_text("{partial")
    fresh.write_text("{partial")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    assert load_state(path) == {"n": 1}
    assert not stale.exists()
    assert fresh.exists()  # may belong to a writer right now


def test_default_state_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MQSYNC_STATE_DIR", str(tmp_path / "explicit"))
    assert default_state_dir() == tmp_path / "explicit"
    monkeypatch.delenv("MQSYNC_STATE_DIR")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_state_dir() == tmp_path / "xdg" / "mqsync"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_state_dir() == tmp_path / "home" / ".local" / "state" / "mqsync"


def test_state_file_names_cannot_escape_the_directory(tmp_path):
    assert state_file_path("source-sysinfo.host1", tmp_path) == tmp_path / (
        "source-sysinfo.host1.json"
    )
    escaped = state_file_path("../../etc/passwd", tmp_path)
    assert escaped.parent == tmp_path
    assert state_file_path("a/b", tmp_path) != state_file_path("a_b", tmp_path)
    with pytest.raises(ValueError, match="non-empty"):
        state_file_path("", tmp_path)


class Collector(StateMixin):
    """Shaped like the n6 seed's example: a dict state with the last timestamp."""

    def __init__(self, token: str | None = None):
        if token is not None:
            self.token = token

    def make_default_state(self):
        return {}

    def run(self, new_time: float) -> None:
        self.state = self.load_state()
        self.state["last_utc"] = new_time
        self.save_state(self.state)


def test_mixin_saves_and_loads_under_the_token(tmp_path, monkeypatch):
    monkeypatch.setenv("MQSYNC_STATE_DIR", str(tmp_path))
    collector = Collector("source-test")
    assert collector.load_state() == {}
    collector.run(10.0)
    assert Collector("source-test").load_state() == {"last_utc": 10.0}
    assert collector.state_path == tmp_path / "source-test.json"
    assert Collector("other").load_state() == {}


def test_mixin_defaults_to_class_name_and_none(tmp_path):
    class Plain(StateMixin):
        state_dir = tmp_path

    plain = Plain()
    assert plain.state_path == tmp_path / "Plain.json"
    assert plain.load_state() is None
    plain.save_state({"x": 1})
    assert plain.load_state() == {"x": 1}


def test_mixin_reports_recovery(tmp_path, caplog):
    collector = Collector("tok")
    collector.state_dir = tmp_path
    collector.state_path.write_text("{not json")
    with caplog.at_level(logging.ERROR):
        assert collector.load_state() == {}
    assert collector.state_recovered_from is not None
    assert collector.state_recovered_from.exists()
    assert collector.load_state() == {}
    assert collector.state_recovered_from is None


def crash_runs() -> int:
    return int(os.environ.get("MQSYNC_CRASH_RUNS", "200"))


def make_state(n: int, items: int) -> dict:
    return {"n": n, "items": [n * 31 + i for i in range(items)], "tag": f"run-{n}"}


def run_helper(path: Path, out: Path, saves: int, items: int) -> subprocess.Popen:
    # The helper imports only mqsync.state and what it needs (mqsync.errors,
    # mqsync.timeseries), not the whole SDK, so one run costs little more than the
    # interpreter.
    return subprocess.Popen(
        [sys.executable, str(HELPERS / "state_runner.py"), str(path), str(saves), str(items)],
        stdout=out.open("w"),
        stderr=subprocess.STDOUT,
    )


def wait_for_line(out: Path, prefix: str, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(line.startswith(prefix) for line in out.read_text().splitlines()):
            return
        if proc.poll() is not None:
            return
        time.sleep(0.001)
    raise AssertionError(f"helper printed no {prefix!r} line in {timeout} s")


@pytest.mark.slow
def test_state_survives_kill_9_at_random_moments(tmp_path):
    """Each run is a cron-style --once process: load, save SAVES times, exit, killed at a
    random moment. After every run the file must load to the state before that run or a
    state the run saved, never a damaged or mixed one. Runs: $MQSYNC_CRASH_RUNS."""
    runs, saves, items = crash_runs(), 4, 2000
    path, out = tmp_path / "state.json", tmp_path / "out.txt"
    rng = random.Random(os.environ.get("MQSYNC_CRASH_SEED", "6"))
    # One undisturbed run measures how long the saves take, to aim the kills at them.
    proc = run_helper(path, out, saves, items)
    wait_for_line(out, "L ", proc)
    started = time.monotonic()
    assert proc.wait(30) == 0, out.read_text()
    window = max(time.monotonic() - started, 0.002)
    previous = saves
    killed = interrupted = 0
    for run in range(runs):
        proc = run_helper(path, out, saves, items)
        if run % 10:  # mostly aim at the writes; sometimes at start-up too
            wait_for_line(out, "L ", proc)
        time.sleep(rng.uniform(0, window))
        proc.kill()
        code = proc.wait(30)
        lines = out.read_text().splitlines()
        assert "BAD" not in lines, f"run {run}: the helper loaded a mixed state"
        reported = [int(line.split()[1]) for line in lines if line.startswith("S ")]
        killed += code == -9
        interrupted += code == -9 and 0 < len(reported) < saves
        assert not corrupt_files(tmp_path), f"run {run}: the state file was damaged"
        loaded = load_state(path)
        n = loaded["n"]
        assert loaded == make_state(n, items), f"run {run}: mixed state"
        assert previous <= n <= previous + saves, (run, previous, n)
        assert n >= max(reported, default=previous), f"run {run}: a reported save was lost"
        previous = n
    # The kills must really land among the saves, or the test proves nothing.
    assert killed >= runs // 4, f"only {killed} of {runs} runs were killed"
    assert interrupted >= runs // 10, f"only {interrupted} of {runs} runs killed between saves"
    # A run killed inside save_state leaves its temporary file; they are removed once stale.
    inside_save = state_module._remove_stale_temp_files(path, older_than=0)
    print(f"{runs} runs: {killed} killed, {interrupted} between two saves, {inside_save} inside")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt", "state.json"]


# n6's stateful collector example, mapped onto mqsync: CollectorWithStateMixin with
# a Source, cache_dir in the source's configuration, a datetime (``time_utc``) in the state.
class Data:
    def __init__(self, time_utc, rows):
        self.time_utc = time_utc
        self.rows = rows


FEED = [Data(datetime.datetime(2026, 11, 29, 0, minute, tzinfo=datetime.timezone.utc),
             [float(minute)]) for minute in range(0, 50, 10)]


class MyStatefullCollector(CollectorWithStateMixin, mqsync.Source):
    def make_default_state(self):
        return {}

    def run(self):
        self.start()  # connect: the configuration (with cache_dir) comes from the manager
        try:
            self.state = self.load_state()
            data = self._collect_data()
            for value in data.rows:
                self.send("test.n6.collector", Timestamp.from_datetime(data.time_utc), value)
            self.flush()
        finally:
            self.stop()
        self.save_state(self.state)

    def _collect_data(self):
        data = self._download(only_newer_than=self.state.get("last_utc"))
        self.state["last_utc"] = data.time_utc
        return data

    def _download(self, only_newer_than):
        newer = [d for d in FEED if only_newer_than is None or d.time_utc > only_newer_than]
        return Data(newer[0].time_utc, newer[0].rows)


def test_the_n6_stateful_collector_resumes_from_its_datetime(tmp_path, unique):
    token = f"collector-{unique}"
    cache_dir = tmp_path / "cache"
    with mqsync.Client(f"holder-{unique}"):
        embedded.manager().configs.set(token, {"cache_dir": str(cache_dir)})
        for run in range(3):  # three cron runs, each a new process in real life
            collector = MyStatefullCollector(token)
            collector.run()
            assert collector.state_path == cache_dir / f"{token}.json"
            saved = load_state(collector.state_path)
            assert saved == {"last_utc": FEED[run].time_utc}
            assert saved["last_utc"].tzinfo is datetime.timezone.utc


def test_the_state_is_saved_where_it_was_loaded_from(tmp_path):
    class Collector(StateMixin):
        config: dict = {}

    collector = Collector()
    collector.state_dir = tmp_path / "first"
    collector.load_state()
    collector.state_dir = tmp_path / "second"  # e.g. a configuration that came later
    collector.save_state({"n": 1})
    assert load_state(tmp_path / "first" / "Collector.json") == {"n": 1}
    assert not (tmp_path / "second").exists()


def test_cache_dir_in_the_configuration_must_be_a_path(tmp_path):
    class Collector(StateMixin):
        config = {"cache_dir": 5}

    with pytest.raises(StateError, match="cache_dir in the configuration must be a directory"):
        Collector().load_state()


def test_a_zone_this_machine_does_not_know_keeps_the_saved_offset(tmp_path, caplog):
    path = tmp_path / "s.json"
    save_state({"n": 5, "t": datetime.datetime(2026, 7, 1, 12, 0, tzinfo=BERLIN)}, path)
    path.write_text(path.read_text().replace("Europe/Berlin", "No/Such_Zone"))
    with caplog.at_level(logging.WARNING, logger="mqsync.state"):
        state = load_state(path, dict)
    assert state["n"] == 5  # not thrown away as damaged
    assert state["t"] == datetime.datetime(2026, 7, 1, 12, 0, tzinfo=BERLIN)  # same instant
    assert state["t"].utcoffset() == datetime.timedelta(hours=2)
    assert "No/Such_Zone" in caplog.text and not corrupt_files(tmp_path)


def test_a_version_1_file_is_read_without_tags(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"mqsync_state": 1, "saved_at": "x",
                                "state": {"own": {"$date": "2026-11-29"}}}))
    assert load_state(path) == {"own": {"$date": "2026-11-29"}}


def test_a_plugin_source_takes_cache_dir_from_its_configuration_file(tmp_path):
    class Stateful(StateMixin, mqsync.PluginSource):
        def configure(self, config):
            self.cache_dir = config.get("cache_dir")

    source = Stateful("source-stateful", config={"cache_dir": str(tmp_path / "cache")})
    source.save_state({"n": 1})
    assert source.state_path == tmp_path / "cache" / "source-stateful.json"
    assert load_state(tmp_path / "cache" / "source-stateful.json") == {"n": 1}

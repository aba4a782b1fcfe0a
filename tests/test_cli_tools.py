"""The operator tools as subprocesses against the real broker, mqsync-manager and a dummy
source: mqsync-discover, -inspect, -send, -check, -export and their shared configuration."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mqsync
from mqsync.cli._common import host_name, user_name
from tests._support import RecordingSink, wait_until

COMMANDS = ("discover", "inspect_metric", "send", "check", "export")

DUMMY_SOURCE = """
import sys
from mqsync_plugins.dummy import DummySource
DummySource(sys.argv[1], sys.argv[2]).run()
"""


@pytest.fixture
def tool_env(tmp_path):
    """The environment of a tool: no MQSYNC_* of the caller, an empty home (no config file)."""
    home = tmp_path / "home"
    home.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith("MQSYNC_")}
    env["HOME"] = str(home)
    return env


def run_tool(command: str, *args: object, env: dict[str, str], timeout: float = 60.0
             ) -> subprocess.CompletedProcess[str]:
    """``python -m mqsync.cli.<command> args...`` to its end, output captured."""
    return subprocess.run([sys.executable, "-m", f"mqsync.cli.{command}", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=timeout)


def start_tool(command: str, *args: object, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", f"mqsync.cli.{command}", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


class DummySourceProcess:
    """The dummy source plugin in a process of its own, configured by the manager."""

    def __init__(self, manager, token: str, config: dict):
        manager.set_config(token, config)
        self.token = token
        self.metrics = [f"{config['prefix']}.{i}" for i in range(config.get("metrics", 1))]
        self.process = subprocess.Popen([sys.executable, "-c", DUMMY_SOURCE, token, manager.url],
                                        stderr=subprocess.PIPE, text=True)
        self._url = manager.url

    def wait_declared(self, timeout: float = 30.0) -> None:
        with mqsync.Client(f"probe-{self.token}", self._url, add_uuid=True) as probe:
            assert wait_until(lambda: set(self.metrics) <= set(probe.get_metrics(
                self.metrics, metadata=False)), timeout), self.describe()

    def describe(self) -> str:
        return f"dummy source {self.token} (exit {self.process.poll()})"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.process.stderr.close()

    def __enter__(self) -> DummySourceProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


# -- help and usage (no broker needed) ---------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_examples_and_exit_codes(command, tool_env):
    result = run_tool(command, "--help", env=tool_env)
    assert result.returncode == 0, result.stderr
    assert "examples:" in result.stdout and "exit codes:" in result.stdout
    assert "mqsync-" in result.stdout and "$MQSYNC_URL" in result.stdout


@pytest.mark.parametrize("command,args", [
    ("discover", []), ("inspect_metric", ["m"]), ("send", ["m", "1"]), ("check", []),
    ("export", ["m", "--start", "-1h"])])
def test_no_url_is_a_usage_error(command, args, tool_env):
    result = run_tool(command, *args, env=tool_env)
    assert result.returncode == 2
    assert "no broker URL" in result.stderr


@pytest.mark.broker
@pytest.mark.broker
@pytest.mark.parametrize("command,args", [
    ("discover", []), ("inspect_metric", ["m", "--duration", "1"]), ("send", ["m", "1"]),
    ("check", []), ("export", ["m", "--start", "-1h"])])
def test_no_connection_is_exit_3_and_hides_the_password(command, args, broker_url, tool_env):
    url = broker_url.replace("guest:guest@", "guest:wrong-secret@")
    result = run_tool(command, "--url", url, *args, env=tool_env)
    assert result.returncode == 3, result.stderr
    assert "wrong-secret" not in result.stdout + result.stderr
    assert "******" in result.stderr


@pytest.mark.broker
def test_bad_arguments_are_usage_errors(tool_env, broker_url):
    assert run_tool("send", "--url", broker_url, "m", "abc", env=tool_env).returncode == 2
    assert run_tool("send", "--url", broker_url, "m", "1", "--time", "yesterday",
                    env=tool_env).returncode == 2
    assert run_tool("check", "--url", broker_url, "(", env=tool_env).returncode == 2
    assert run_tool("inspect_metric", "--url", broker_url, "", env=tool_env).returncode == 2


# -- configuration ---------------------------------------------------------------------


def show_config(command: str, *args: str, env: dict[str, str]) -> dict[str, tuple[str, str]]:
    result = run_tool(command, *args, "--show-config", env=env)
    assert result.returncode == 0, result.stderr
    settings = {}
    for line in result.stdout.splitlines()[1:]:
        key, rest = line.split(" = ", 1)
        value, origin = rest.rsplit("  (", 1)
        settings[key] = (value, origin.rstrip(")"))
    return settings


def test_the_commands_take_a_node_list_from_the_config_file(tmp_path, tool_env):
    config = tmp_path / "cli.toml"
    config.write_text('url = ["amqp://u:file-secret@h1/", "amqp://u:file-secret@h2/"]\n')
    settings = show_config("discover", env={**tool_env, "MQSYNC_CONFIG": str(config)})
    assert settings["url"] == ("'amqp://u:******@h1/;amqp://u:******@h2/'", str(config))
    config.write_text('url = ["amqp://u:file-secret@h1/", 3]\n')
    result = run_tool("discover", "--show-config",
                      env={**tool_env, "MQSYNC_CONFIG": str(config)})
    assert result.returncode == 2
    assert "every broker URL must be a str" in result.stderr
    assert "file-secret" not in result.stderr
    for value in ('[["amqp://u:file-secret@h1/"]]', '{node = "amqp://u:file-secret@h1/"}'):
        config.write_text(f"url = {value}\n")
        result = run_tool("discover", "--show-config",
                          env={**tool_env, "MQSYNC_CONFIG": str(config)})
        assert result.returncode == 2
        assert "file-secret" not in result.stderr, result.stderr


def test_configuration_precedence_cli_env_file_default(tool_env, tmp_path):
    config = tmp_path / "cli.toml"
    config.write_text('url = "amqp://u:file-secret@file-host/"\nlog_level = "info"\n'
                      '[send]\ntoken = "source-send-$USER-${HOST}-x"\ntimeout = 3\n'
                      '[check]\ngrace = "2s"\n')
    env = {**tool_env, "MQSYNC_CONFIG": str(config)}

    from_file = show_config("send", "m", "1", env=env)
    assert from_file["url"] == ("'amqp://u:******@file-host/'", str(config))
    assert from_file["token"] == (f"'source-send-{user_name()}-{host_name()}-x'",
                                  f"{config} [send]")
    assert from_file["timeout"] == ("3.0", f"{config} [send]")
    assert from_file["log_level"][1] == str(config)

    env["MQSYNC_URL"] = "amqp://u:env-secret@env-host/"
    from_env = show_config("send", "m", "1", env=env)
    assert from_env["url"] == ("'amqp://u:******@env-host/'", "$MQSYNC_URL")

    from_cli = show_config("send", "m", "1", "--url", "amqp://cli-host/", "--timeout", "5",
                           env=env)
    assert from_cli["url"] == ("'amqp://cli-host/'", "command line")
    assert from_cli["timeout"] == ("5.0", "command line")

    check = show_config("check", env={**tool_env, "MQSYNC_CONFIG": str(config)})
    assert check["grace"] == ("2.0", f"{config} [check]")
    assert check["max_wait"] == ("60.0", "default")

    # the default place, ~/.config/mqsync/cli.toml, as JSON is fine under --config-file
    json_file = tmp_path / "tools.json"
    json_file.write_text(json.dumps({"url": "amqp://json-host/", "discover": {"timeout": 1}}))
    discover = show_config("discover", "--config-file", str(json_file), env=tool_env)
    assert discover["url"] == ("'amqp://json-host/'", str(json_file))
    assert discover["timeout"] == ("1.0", f"{json_file} [discover]")
    default = Path(tool_env["HOME"]) / ".config" / "mqsync" / "cli.toml"
    default.parent.mkdir(parents=True)
    default.write_text('url = "amqp://default-host/"\n')
    assert show_config("discover", env=tool_env)["url"] == ("'amqp://default-host/'",
                                                            str(default))


def test_configuration_errors_are_usage_errors(tool_env, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("url = \n")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('uri = "amqp://x/"\n')
    unknown_in_table = tmp_path / "table.toml"
    unknown_in_table.write_text('[check]\ngrase = 2\n')
    bad_value = tmp_path / "value.toml"
    bad_value.write_text('[check]\ngrace = "soon"\n')
    bad_token = tmp_path / "token.toml"
    bad_token.write_text('token = "tool-$HOSTNAME"\n')
    for file, message in ((bad, "cannot read configuration file"), (unknown, "'uri'"),
                          (unknown_in_table, "'grase' in table [check]"),
                          (bad_value, "invalid grace 'soon'"),
                          (bad_token, "unknown variable $HOSTNAME"),
                          (tmp_path / "missing.toml", "does not exist")):
        result = run_tool("check", "--config-file", file, "--url", "amqp://x/", env=tool_env)
        assert result.returncode == 2, (file, result.stderr)
        assert message in result.stderr, result.stderr
    missing = run_tool("check", env={**tool_env, "MQSYNC_CONFIG": str(tmp_path / "nope")})
    assert missing.returncode == 2 and "does not exist" in missing.stderr


# -- discover --------------------------------------------------------------------------


@pytest.mark.broker
def test_discover_lists_running_clients_and_diffs(manager, unique, tool_env, tmp_path):
    config = {"rate": 10, "metrics": 1, "prefix": f"discover-{unique}"}
    with DummySourceProcess(manager, f"source-discover-{unique}", config) as source:
        source.wait_declared()
        started = time.monotonic()
        result = run_tool("discover", "--url", manager.url, "--json", "--timeout", "1",
                          env=tool_env)
        took = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        clients = {c["token"]: c for c in json.loads(result.stdout)["clients"]}
        assert {source.token, "manager"} <= set(clients)
        assert not any(t.startswith("client-discover-") for t in clients)  # not itself
        answer = clients[source.token]
        assert answer["hostname"] == socket.gethostname()
        assert answer["library"].startswith("mqsync/")
        assert 0 < answer["uptime_s"] < 120
        assert abs(answer["offset_s"]) < 0.5 and 0 <= answer["offset_bound_s"] < 0.5
        saved = tmp_path / "clients.json"
        saved.write_text(result.stdout)

        table = run_tool("discover", "--url", manager.url, "--timeout", "0.5", env=tool_env)
        assert table.returncode == 0
        header, *rows = table.stdout.splitlines()
        assert header.split()[:4] == ["TOKEN", "VERSION", "LIBRARY", "HOST"]
        assert any(row.split()[0] == source.token for row in rows)

        same = run_tool("discover", "--url", manager.url, "--timeout", "0.5", "--diff", saved,
                        env=tool_env)
        assert same.returncode == 0, same.stdout + same.stderr
    print(f"discover --json --timeout 1 took {took:.2f} s")

    gone = run_tool("discover", "--url", manager.url, "--timeout", "0.5", "--diff", saved,
                    "--json", env=tool_env)
    assert gone.returncode == 1
    assert json.loads(gone.stdout)["missing"] == [source.token]
    listed = tmp_path / "tokens.txt"
    listed.write_text(f"# expected clients\nmanager\nsource-never-{unique}\n")
    text = run_tool("discover", "--url", manager.url, "--timeout", "0.5", "--diff", listed,
                    env=tool_env)
    assert text.returncode == 1
    assert f"missing: source-never-{unique}" in text.stdout
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert run_tool("discover", "--url", manager.url, "--diff", broken,
                    env=tool_env).returncode == 2


# -- send ------------------------------------------------------------------------------


@pytest.mark.broker
def test_send_delivers_one_confirmed_point(manager, unique, tool_env):
    metric = f"send-{unique}.value"
    when = "2024-05-01T12:00:00.123456789Z"
    with RecordingSink(f"sink-{unique}", manager.url) as sink:
        sink.subscribe([metric])
        first = run_tool("send", "--url", manager.url, metric, "21.5", "--time", when,
                         "--unit", "degC", env=tool_env)
        assert first.returncode == 0, first.stderr
        assert first.stdout == ""  # quiet for cron
        second = run_tool("send", "--url", manager.url, "--", metric, "-inf", env=tool_env)
        assert second.returncode == 0, second.stderr
        relative = run_tool("send", "--url", manager.url, metric, "nan", "--time=-10s",
                            env=tool_env)
        assert relative.returncode == 0, relative.stderr
        assert wait_until(lambda: sink.count(metric) == 3, 10)
        before_relative = time.time_ns()
    points = sorted(sink.points, key=lambda p: p[1])
    assert points[0] == (metric, 1714564800123456789, 21.5)
    assert math.isnan(points[1][2]) and before_relative - points[1][1] < 30e9
    assert points[2][2] == -math.inf

    with mqsync.Client(f"probe-{unique}", manager.url) as probe:
        metadata = probe.get_metrics([metric])[metric]
        assert metadata["unit"] == "degC"
        assert metadata["source"] == f"source-send-{user_name()}-{host_name()}"
        # another token does not overwrite the declaration; --no-declare declares nothing
        other = run_tool("send", "--url", manager.url, "--token", f"other-{unique}", metric,
                         "1", "--unit", "K", env=tool_env)
        assert other.returncode == 0, other.stderr
        hidden = run_tool("send", "--url", manager.url, "--no-declare", f"{metric}.x", "1",
                          env=tool_env)
        assert hidden.returncode == 0, hidden.stderr
        assert probe.get_metrics([metric])[metric]["unit"] == "degC"
        assert f"{metric}.x" not in probe.get_metrics([f"{metric}.x"])


# -- inspect ---------------------------------------------------------------------------


@pytest.mark.broker
def test_inspect_reports_rate_intervals_chunks_and_special_values(manager, unique, tool_env):
    metric = f"inspect-{unique}.power"
    cycle = [1.0, math.nan, math.inf, -math.inf]
    with mqsync.Source(f"source-{unique}", manager.url) as source:
        source.declare_metrics({metric: {"rate": 20, "unit": "W"}})
        inspect = start_tool("inspect_metric", "--url", manager.url, metric, "--count", 12,
                             "--json", "--duration", 30, env=tool_env)
        sent = 0
        deadline = time.monotonic() + 40
        while inspect.poll() is None and time.monotonic() < deadline:
            source.send(metric, mqsync.Timestamp.now(), cycle[sent % 4])
            sent += 1
            time.sleep(0.05)
        out, err = inspect.communicate(timeout=30)
    assert inspect.returncode == 0, err
    report = json.loads(out)
    assert report["metric"] == metric
    assert report["metadata"]["rate"] == 20 and report["metadata"]["unit"] == "W"
    assert report["points"] == 12 and report["chunks"] == 12
    assert report["chunk_sizes"]["counts"] == {"1": 12}
    assert (report["nan"], report["positive_infinity"], report["negative_infinity"]) == (3, 3, 3)
    assert report["values"]["count"] == 3 and report["values"]["min"] == 1.0
    assert 0.03 < report["intervals_s"]["median"] < 0.2
    assert report["intervals_s"]["count"] == 11
    assert sum(b["count"] for b in report["intervals_s"]["histogram"]) == 11
    assert 0 <= report["delay_s"]["max"] < 5


@pytest.mark.broker
def test_inspect_text_report_of_a_dummy_source(manager, unique, tool_env):
    config = {"rate": 10, "metrics": 1, "prefix": f"inspect-{unique}"}
    with DummySourceProcess(manager, f"source-inspect-{unique}", config) as source:
        source.wait_declared()
        result = run_tool("inspect_metric", "--url", manager.url, source.metrics[0],
                          "--duration", "1.5", "--every", "0.5", env=tool_env)
    assert result.returncode == 0, result.stderr
    assert "rate: 10" in result.stdout and "intervals: min" in result.stdout
    assert "NaN: 0, +inf: 0, -inf: 0" in result.stdout
    assert result.stderr.count("points (") >= 2  # the live lines
    silent = run_tool("inspect_metric", "--url", manager.url, f"silent-{unique}",
                      "--duration", "0.5", env=tool_env)
    assert silent.returncode == 1 and "no point" in silent.stderr
    assert "metadata: none" in silent.stdout


# -- check -----------------------------------------------------------------------------


@pytest.mark.broker
def test_check_flags_a_stopped_source_dead_within_its_interval_plus_a_second(
        manager, unique, tool_env):
    prefix = f"check-{unique}"
    config = {"rate": 2, "metrics": 2, "prefix": prefix}  # every 0.5 s
    with DummySourceProcess(manager, f"source-check-{unique}", config) as source:
        source.wait_declared()
        alive = run_tool("check", "--url", manager.url, f"^{prefix}\\.", "--json",
                         env=tool_env)
        assert alive.returncode == 0, alive.stdout + alive.stderr
        assert json.loads(alive.stdout)["counts"]["ok"] == 2
    started = time.monotonic()
    dead = run_tool("check", "--url", manager.url, f"^{prefix}\\.", "--json", env=tool_env)
    took = time.monotonic() - started
    assert dead.returncode == 1, dead.stdout + dead.stderr
    result = json.loads(dead.stdout)
    assert [m["status"] for m in result["metrics"]] == ["dead", "dead"]
    assert result["metrics"][0]["expected_s"] == 0.5
    assert 1.5 <= result["watched_s"] < 1.5 + 0.5  # interval + 1 s grace
    print(f"check of a stopped source: watched {result['watched_s']:.2f} s, "
          f"command took {took:.2f} s")
    text = run_tool("check", "--url", manager.url, f"^{prefix}\\.", env=tool_env)
    assert text.returncode == 1
    assert text.stdout.splitlines()[0].startswith("DEAD")
    assert "PROBLEM: 2 metric(s): 0 ok, 2 dead" in text.stdout


@pytest.mark.broker
def test_check_reports_nan_never_seen_and_unmatched(manager, unique, tool_env):
    prefix = f"check2-{unique}"
    with mqsync.Source(f"source-{unique}", manager.url) as source:
        source.declare_metrics({f"{prefix}.nan": {"rate": 10},
                                f"{prefix}.fine": {"interval": "100ms"},
                                f"{prefix}.silent": {},
                                f"{prefix}.slow": {"rate": 0.01},
                                f"{prefix}.excluded": {"rate": 10}})
        check = start_tool("check", "--url", manager.url, f"^{prefix}\\.", "--exclude",
                           "excluded$", "--max-wait", "5", "--json", env=tool_env)
        deadline = time.monotonic() + 30
        while check.poll() is None and time.monotonic() < deadline:
            now = mqsync.Timestamp.now()
            source.send(f"{prefix}.nan", now, math.nan)
            source.send(f"{prefix}.fine", now, 1.0)
            time.sleep(0.05)
        out, err = check.communicate(timeout=30)
    assert check.returncode == 1, err
    statuses = {m["metric"].split(".")[-1]: m["status"] for m in json.loads(out)["metrics"]}
    assert statuses == {"nan": "nan", "fine": "ok", "silent": "never-seen", "slow": "unknown"}

    unmatched = run_tool("check", "--url", manager.url, f"^nothing-{unique}", env=tool_env)
    assert unmatched.returncode == 1 and "no metric matches" in unmatched.stderr




# -- the history database: export and check ------------------------------------------------


class HistoryDbProcess:
    """``mqsync-db`` keeping ``metrics`` in an SQLite file, as a subprocess."""

    def __init__(self, manager, token: str, database: Path, metrics: list[str]):
        self.token = token
        self.metrics = metrics
        self._url = manager.url
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mqsync.cli.db", "--url", manager.url, "--token", token,
             "--database", str(database), "--metrics", *metrics],
            stderr=subprocess.PIPE, text=True)

    def wait_historic(self, timeout: float = 30.0) -> None:
        with mqsync.Client(f"probe-{self.token}", self._url, add_uuid=True) as probe:
            assert wait_until(lambda: set(self.metrics) <= set(probe.get_metrics(
                self.metrics, historic=True, metadata=False)), timeout), \
                f"mqsync-db did not register (exit {self.process.poll()})"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.process.stderr.close()


@pytest.fixture
def history_db(manager, unique, tmp_path):
    """A running mqsync-db keeping the metrics ``<kind>-<unique>.*`` used below."""
    metrics = [f"export-{unique}.{name}" for name in ("power", "temp", "empty")] + \
        [f"check-db-{unique}.{name}" for name in ("fresh", "stale", "empty")]
    db = HistoryDbProcess(manager, f"db-{unique}", tmp_path / "history.db", metrics)
    try:
        db.wait_historic()
        yield db
    finally:
        db.stop()


def wait_stored(url: str, metric: str, time_ns: int, timeout: float = 20.0) -> None:
    """Until the database's last value of ``metric`` is the point at ``time_ns``."""
    from mqsync.history import HistoryClient

    with HistoryClient("probe-history", url) as client:
        def stored() -> bool:
            last = client.history_last_value(metric, timeout=5)
            return last is not None and last.timestamp.posix_ns == time_ns
        assert wait_until(stored, timeout, interval=0.1), f"{metric} not stored"


def parse_csv(text: str) -> list[tuple[str, int, float]]:
    header, *lines = text.splitlines()
    assert header == "time_ns,time,metric,value"
    rows = []
    for line in lines:
        time_ns, iso, metric, value = line.split(",")
        assert mqsync.Timestamp.from_iso8601(iso).posix_ns == int(time_ns)
        rows.append((metric, int(time_ns), float(value)))
    return rows


@pytest.mark.broker
def test_export_round_trips_the_points_sent(manager, unique, history_db, tool_env, tmp_path):
    power, temp, empty = history_db.metrics[:3]
    base = time.time_ns() - 3600 * 10**9
    sent = {power: [(base + i * 997_000_003, i * 0.1 - 17.25) for i in range(700)],
            temp: [(base + i * 5_000_000_000 + 7, -1e300 / (i + 1)) for i in range(150)]}
    with mqsync.Source(f"source-{unique}", manager.url, chunk_size=50) as source:
        source.declare_metrics({power: {"unit": "W"}, temp: {"unit": "K"}})
        for metric, points in sent.items():
            source.send_many(metric, [t for t, _ in points], [v for _, v in points])
        source.flush()
    for metric, points in sent.items():
        wait_stored(manager.url, metric, points[-1][0])
    start = mqsync.Timestamp(base).isoformat()
    end = mqsync.Timestamp(sent[temp][-1][0]).isoformat()  # both ends included

    started = time.monotonic()
    as_csv = run_tool("export", "--url", manager.url, power, temp, "--start", start, "--end",
                      end, "--page-points", 64, env=tool_env)
    took = time.monotonic() - started
    assert as_csv.returncode == 0, as_csv.stderr
    expected = [(m, t, v) for m in (power, temp) for t, v in sent[m]]
    assert parse_csv(as_csv.stdout) == expected
    print(f"export of {len(expected)} points in pages of 64: {took:.2f} s")

    output = tmp_path / "out.jsonl"
    as_json = run_tool("export", "--url", manager.url, power, "--start", start, "--format",
                       "json", "-o", output, env=tool_env)
    assert as_json.returncode == 0, as_json.stderr
    assert f"{len(sent[power])} point(s)" in as_json.stderr
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [(r["metric"], r["time"], r["value"]) for r in lines] == \
        [(power, t, v) for t, v in sent[power]]
    assert not (tmp_path / "out.jsonl.part").exists()

    middle = sent[power][100][0]  # a start exactly on a point includes it
    part = run_tool("export", "--url", manager.url, power, "--start",
                    mqsync.Timestamp(middle).isoformat(), "--end",
                    mqsync.Timestamp(sent[power][199][0]).isoformat(), env=tool_env)
    assert [row[1] for row in parse_csv(part.stdout)] == [t for t, _ in sent[power][100:200]]

    nothing = run_tool("export", "--url", manager.url, empty, "--start", "-1h", env=tool_env)
    assert nothing.returncode == 0 and nothing.stdout == "time_ns,time,metric,value\n"
    not_kept = run_tool("export", "--url", manager.url, f"nowhere-{unique}", "--start", "-1h",
                        env=tool_env)
    assert not_kept.returncode == 1 and "no database keeps" in not_kept.stderr
    backwards = run_tool("export", "--url", manager.url, power, "--start", "-1h", "--end",
                         "-2h", env=tool_env)
    assert backwards.returncode == 2 and "is after --end" in backwards.stderr


@pytest.mark.broker
def test_check_asks_the_database_for_historic_metrics(manager, unique, history_db, tool_env):
    fresh, stale, empty = history_db.metrics[3:]
    now = time.time_ns()
    with mqsync.Source(f"source-{unique}", manager.url) as source:
        source.declare_metrics({fresh: {"rate": 1}, stale: {"rate": 1}, empty: {"rate": 1}})
        source.send(fresh, now, 1.0)
        source.send(stale, now - 60 * 10**9, 2.0)
        source.flush()
    wait_stored(manager.url, fresh, now)
    wait_stored(manager.url, stale, now - 60 * 10**9)
    started = time.monotonic()
    result = run_tool("check", "--url", manager.url, f"^check-db-{unique}\\.", "--grace", 20,
                      "--json", env=tool_env)
    took = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    verdicts = {m["metric"]: m for m in report["metrics"]}
    assert {m: v["status"] for m, v in verdicts.items()} == {
        fresh: "ok", stale: "dead", empty: "never-seen"}
    assert {v["via"] for v in verdicts.values()} == {"history"}
    assert report["watched_s"] is None  # nothing watched live: no waiting
    assert 55 < verdicts[stale]["age_s"] < 120
    assert took < 10
    live = run_tool("check", "--url", manager.url, f"^check-db-{unique}\\.fresh", "--live",
                    "--max-wait", "0.5", "--json", env=tool_env)
    assert json.loads(live.stdout)["metrics"][0]["via"] == "live"


class FakeHistory:
    """Stands in for a HistoryClient whose database refuses more than ``limit`` points."""

    def __init__(self, times: list[int], limit: int, aggregates: bool):
        self.times = times
        self.limit = limit
        self.aggregates = aggregates
        self.requests: list[tuple[int, int]] = []

    def history_aggregate(self, metric, start, end, timeout):
        from mqsync.history import HistoryError

        if not self.aggregates:
            raise HistoryError("request failed on database: aggregates not supported")
        return mqsync.TimeAggregate(mqsync.Timestamp(start), 0.0, 0.0, 0.0,
                                    sum(start < t <= end for t in self.times), 0.0,
                                    mqsync.Timedelta(0))

    def history_raw_timeline(self, metric, start, end, timeout):
        from mqsync.history import HistoryError

        self.requests.append((start, end))
        inside = [t for t in self.times if start <= t <= end]
        if len(inside) > self.limit:
            raise HistoryError(f"request failed on database: more than {self.limit} points")
        before = [t for t in self.times if t < start][-1:]  # as some databases do
        return [mqsync.TimeValue(mqsync.Timestamp(t), float(t)) for t in before + inside]


@pytest.mark.parametrize("aggregates", [True, False])
def test_export_pages_and_halves_slices_a_database_refuses(aggregates):
    from mqsync.cli.export import read_range

    times = [1000 + i * 10 for i in range(100)] + [5000 + i for i in range(50)]  # a dense end
    fake = FakeHistory(times, limit=20, aggregates=aggregates)
    points = list(read_range(fake, "m", 1000, 5049, page_points=15, timeout=1))
    assert [t for t, _ in points] == times
    assert all(value == float(t) for t, value in points)
    assert len(fake.requests) > 1
    assert list(read_range(fake, "m", 1005, 1025, page_points=15, timeout=1)) == \
        [(1010, 1010.0), (1020, 1020.0)]

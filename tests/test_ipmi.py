"""The ipmi source plugin: parsers on recorded output, credentials, the subprocess path with
a fake tool (timeouts, backoff, concurrency), the pyghmi backend with a fake module."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import stat
import sys
import threading
import time
import types
from pathlib import Path

import pytest

import mqsync
from mqsync.errors import ConfigError
from mqsync_plugins import ipmi
from mqsync_plugins.ipmi import (
    BmcHost,
    FreeIpmiBackend,
    IpmiCollector,
    IpmiSettings,
    IpmiSource,
    IpmitoolBackend,
    PyghmiBackend,
    Reading,
    Secret,
    hosts_from_config,
    parse_freeipmi,
    parse_ipmitool,
    parse_value,
    sensor_metrics,
)
from tests._support import RecordingSink, wait_until
from tests.conftest import IN_CI

FIXTURES = Path(__file__).parent / "fixtures" / "ipmi"
PASSWORD = 'S3cr#t "pw" \\x'  # needs FreeIPMI's quoting: space, #, quotes, backslash
USERNAME = "monitor-user"


def config(**overrides):
    return {**IpmiSource.default_config, "username": USERNAME, "password": PASSWORD,
            **overrides}


def host(address: str, name: str | None = None, port: int | None = None) -> BmcHost:
    return BmcHost(address, name or address.split(".")[0], USERNAME, Secret(PASSWORD), port)


def values_by_sensor(readings: list[Reading]) -> dict[str, Reading]:
    return {reading.sensor: reading for reading in readings}


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- parsing --------------------------------------------------------------------------------


def test_freeipmi_csv_with_header_and_no_prefix():
    readings = parse_freeipmi((FIXTURES / "freeipmi_csv.txt").read_text(), default_host="bmc")
    assert list(readings) == ["bmc"]
    by_name = values_by_sensor(readings["bmc"])
    assert by_name["CPU1 Temp"] == Reading("CPU1 Temp", "Temperature", 38.0, "°C", "4")
    assert by_name["12V"].value == 12.06 and by_name["12V"].unit == "V"
    assert by_name["3.3VCC"].value == 3.31
    assert by_name["PS1 Input Power"].unit == "W"
    assert math.isnan(by_name["FAN2"].value) and by_name["FAN2"].unit == "RPM"
    # discrete sensors (reading and units N/A) are not metrics
    assert not {"PS1 Status", "PS2 Status", "Chassis Intru"} & set(by_name)
    assert len(by_name) == 13


def test_freeipmi_csv_with_host_prefixes_and_ports():
    readings = parse_freeipmi((FIXTURES / "freeipmi_csv_hosts.txt").read_text())
    assert set(readings) == {"bmc-r640-01", "10.0.0.12:623"}
    assert len(readings["bmc-r640-01"]) == 9
    exhaust = values_by_sensor(readings["10.0.0.12:623"])["Exhaust Temp"]
    assert math.isnan(exhaust.value) and exhaust.unit == "°C"
    fan = values_by_sensor(readings["bmc-r640-01"])["Fan1B"]
    assert math.isnan(fan.value)


def test_freeipmi_pipe_format_with_headers_per_host():
    readings = parse_freeipmi((FIXTURES / "freeipmi_pipe.txt").read_text())
    assert set(readings) == {"bmc-node01", "bmc-node02"}
    node1 = values_by_sensor(readings["bmc-node01"])
    node2 = values_by_sensor(readings["bmc-node02"])
    assert node1["CPU Temp"] == Reading("CPU Temp", "Temperature", 36.0, "°C", "4")
    assert math.isnan(node1["FAN 2"].value)
    assert node2["FAN 2"].value == 4000.0
    assert "PS Status" not in node1 and len(node1) == 6


def test_freeipmi_lines_that_are_not_sensors_are_skipped():
    text = ("bmc1: ipmi-sensors: connection timeout\n"
            "Caching SDR repository information: /root/.freeipmi/sdr-cache/x\n"
            "ID,Name,Type,Reading,Units,Event\n"
            "garbage\n"
            "bmc2: 5,Odd, Name,Temperature,40.00,C,'Upper Non-critical, going high'\n")
    readings = parse_freeipmi(text)
    assert list(readings) == ["bmc2"]
    (reading,) = readings["bmc2"]
    assert reading.sensor == "Odd, Name" and reading.value == 40.0


def test_ipmitool_sdr_list():
    by_name = values_by_sensor(parse_ipmitool((FIXTURES / "ipmitool_sdr_list.txt").read_text()))
    assert by_name["CPU Temp"].value == 45.0 and by_name["CPU Temp"].unit == "°C"
    assert by_name["Vcore"].value == 0.86 and by_name["Vcore"].unit == "V"
    assert by_name["FAN1"].unit == "RPM"
    assert math.isnan(by_name["FAN 2"].value)
    assert "PS1 Status" not in by_name and "Chassis Intru" not in by_name
    assert len(by_name) == 7


def test_ipmitool_sdr_elist_keeps_sensor_numbers_for_duplicates():
    readings = parse_ipmitool((FIXTURES / "ipmitool_sdr_elist.txt").read_text())
    assert len(readings) == 9
    metrics = sensor_metrics(readings)
    assert metrics["temp_0eh"].value == 45.0 and metrics["temp_0fh"].value == 43.0
    assert metrics["current_1"].unit == "A" and metrics["pwr_consumption"].unit == "W"
    assert math.isnan(metrics["fan1b"].value)


def test_ipmitool_sensor_list():
    by_name = values_by_sensor(parse_ipmitool((FIXTURES / "ipmitool_sensor.txt").read_text()))
    assert set(by_name) == {"CPU Temp", "System Temp", "FAN1", "FAN2", "Vcore"}
    assert by_name["Vcore"].value == 0.864
    assert math.isnan(by_name["FAN2"].value) and by_name["FAN2"].unit == "RPM"


@pytest.mark.parametrize("text", ["N/A", "n/a", "na", "No Reading", "disabled",
                                  "Not Readable", "", "  ", "garbage"])
def test_not_available_readings_become_nan(text):
    assert math.isnan(parse_value(text))


def test_sensor_metric_names():
    readings = [Reading("CPU1 Temp", "", 1.0, ""), Reading("+3.3V", "", 2.0, ""),
                Reading("Temp", "", 3.0, "", "12"), Reading("Temp", "", 4.0, "", "13"),
                Reading("Fan", "", 5.0, ""), Reading("Fan", "", 6.0, ""), Reading("***", "", 7, "")]
    assert {name: reading.value for name, reading in sensor_metrics(readings).items()} == {
        "cpu1_temp": 1.0, "3_3v": 2.0, "temp_12": 3.0, "temp_13": 4.0, "fan": 5.0,
        "fan_2": 6.0, "sensor": 7}


# -- configuration and credentials -----------------------------------------------------------


def test_hosts_with_shared_and_own_credentials(tmp_path):
    password_file = tmp_path / "bmc.pass"
    password_file.write_text("from-file\n")
    hosts = hosts_from_config({
        "username": "shared", "password_file": str(password_file),
        "hosts": ["bmc-node01.example.com", "10.0.0.5",
                  {"host": "10.0.0.9", "name": "storage1", "username": "root",
                   "password": "own", "port": 6230}]})
    assert [(h.address, h.name, h.username, h.password.reveal(), h.port) for h in hosts] == [
        ("bmc-node01.example.com", "bmc-node01", "shared", "from-file", None),
        ("10.0.0.5", "10_0_0_5", "shared", "from-file", None),
        ("10.0.0.9", "storage1", "root", "own", 6230)]
    assert hosts[2].target == "10.0.0.9:6230"
    assert BmcHost("fe80::1", "v6", "u", Secret("p"), 623).target == "[fe80::1]:623"


@pytest.mark.parametrize(("entry", "message"), [
    ({"hosts": []}, "non-empty list"),
    ({"hosts": "bmc1"}, "non-empty list"),
    ({"hosts": ["bmc1"], "password": None}, "no password"),
    ({"hosts": ["bmc1"], "username": None}, "no username"),
    ({"hosts": ["bmc 1"]}, "invalid host"),
    ({"hosts": ["a,b"]}, "invalid host"),
    ({"hosts": [{"host": "bmc1", "pasword": "typo"}]}, "unknown keys ['pasword']"),
    ({"hosts": ["bmc1.a", "bmc1.b"]}, "same metric name 'bmc1'"),
    ({"hosts": ["bmc1", "bmc1"]}, "same host"),
    ({"hosts": [{"host": "bmc1", "port": 70000}]}, "invalid port"),
    ({"hosts": ["bmc1"], "password": "multi\nline"}, "line break"),
    ({"hosts": ["bmc1"], "password_file": "/nonexistent/bmc.pass", "password": None},
     "cannot read password_file '/nonexistent/bmc.pass'"),
])
def test_bad_host_configurations_say_what_is_wrong_without_the_password(entry, message):
    with pytest.raises(ConfigError, match=None) as error:
        IpmiSettings.from_config(config(**entry))
    assert message in str(error.value)
    assert PASSWORD not in str(error.value)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"backend": "snmp"}, "invalid backend"),
    ({"timeout": 0}, "invalid timeout"),
    ({"session_timeout": 10.0, "timeout": 5.0}, "must be below timeout"),
    ({"ipmi_version": 2}, "invalid ipmi_version"),
    ({"privilege_level": "ROOT"}, "invalid privilege_level"),
    ({"workers": 0}, "invalid workers"),
    ({"ipmitool_command": "fru"}, "invalid ipmitool_command"),
    ({"prefix": "a..b"}, "invalid prefix"),
])
def test_bad_options(overrides, message):
    with pytest.raises(ConfigError) as error:
        IpmiSettings.from_config(config(hosts=["bmc1"], **overrides))
    assert message in str(error.value)


def test_reprs_hide_credentials():
    settings = IpmiSettings.from_config(config(hosts=["bmc1", {"host": "bmc2",
                                                               "password": PASSWORD}]))
    for text in (repr(settings), str(settings), repr(settings.hosts[0]),
                 repr(Secret(PASSWORD)), str(Secret(PASSWORD)),
                 repr(FreeIpmiBackend().invocation(settings.hosts, Path("/tmp")))):
        assert PASSWORD not in text and USERNAME not in text
    assert settings.hosts[0].password == Secret(PASSWORD)
    with pytest.raises(TypeError):
        import pickle
        pickle.dumps(Secret(PASSWORD))


def test_freeipmi_command_line_has_no_credentials(tmp_path):
    hosts = [host("bmc1"), host("bmc2", port=6230)]
    backend = FreeIpmiBackend(session_timeout=2.0, sensor_types=("Temperature", "Fan"))
    invocation = backend.invocation(hosts, tmp_path)
    argv = " ".join(invocation.argv)
    assert PASSWORD not in argv and USERNAME not in argv
    assert "--hostname=bmc1,bmc2:6230" in invocation.argv
    assert "--session-timeout=2000" in invocation.argv
    assert "--sensor-types=Temperature,Fan" in invocation.argv
    assert {"--always-prefix", "--comma-separated-output", "--no-header-output"} <= set(
        invocation.argv)
    (path, content), = invocation.files.items()
    assert f"--config-file={path}" in invocation.argv and Path(path).parent == tmp_path
    assert content == ('username "monitor-user"\n'
                       'password "S3cr\\#t \\"pw\\" \\\\x"\n')
    assert not invocation.env


def test_ipmitool_command_line_has_no_password(tmp_path):
    invocation = IpmitoolBackend().invocation([host("bmc1", port=6230)], tmp_path)
    assert PASSWORD not in " ".join(invocation.argv)
    assert invocation.argv[:5] == ("ipmitool", "-I", "lanplus", "-H", "bmc1")
    assert "-E" in invocation.argv and invocation.argv[5:7] == ("-p", "6230")
    assert invocation.argv[-3:] == ("sdr", "elist", "full")
    assert invocation.env == {"IPMI_PASSWORD": PASSWORD, "IPMITOOL_PASSWORD": PASSWORD}
    sensor = IpmitoolBackend(subcommand="sensor", privilege_level="ADMIN").invocation(
        [host("bmc1")], tmp_path)
    assert sensor.argv[-2:] == ("sensor", "list") and "ADMINISTRATOR" in sensor.argv


# -- the subprocess path with a fake tool ----------------------------------------------------


@pytest.fixture
def fake_tools(tmp_path, monkeypatch):
    """``ipmi-sensors`` and ``ipmitool`` on PATH that run fake_ipmi_tool.py."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("ipmi-sensors", "ipmitool"):
        script = bin_dir / tool
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" '
                          f'"{FIXTURES / "fake_ipmi_tool.py"}" {tool} "$@"\n')
        script.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_IPMI_LOG", str(log))
    monkeypatch.setenv("FAKE_IPMI_FIXTURE", str(FIXTURES / "freeipmi_csv.txt"))
    monkeypatch.setenv("FAKE_IPMI_DOWN", str(tmp_path / "down"))

    class Tools:
        down_marker = tmp_path / "down"

        @staticmethod
        def calls() -> list[dict]:
            if not log.exists():
                return []
            return [json.loads(line) for line in log.read_text().splitlines()]

    return Tools


@pytest.fixture
def collectors():
    """Makes IpmiCollectors and closes them after the test."""
    made: list[IpmiCollector] = []

    def make(addresses, **overrides):
        settings = IpmiSettings.from_config(config(hosts=list(addresses), **overrides))
        clock = overrides.pop("clock", None)
        collector = settings.make_collector(**({"clock": clock} if clock else {}))
        made.append(collector)
        return collector

    yield make
    for collector in made:
        assert collector.close(5.0)


class Emitted:
    def __init__(self):
        self.values: dict[str, float] = {}
        self.times: dict[str, float] = {}
        self.declared: dict[str, dict] = {}
        self.started = time.monotonic()

    def emit(self, metric, value):
        self.values[metric] = value
        self.times.setdefault(metric, time.monotonic() - self.started)

    def declare(self, metadata):
        self.declared.update(metadata)
        return True


def test_freeipmi_subprocess_path_end_to_end(fake_tools, collectors):
    collector = collectors(["ok-1.example.com", "ok-2.example.com"], timeout=5.0,
                           session_timeout=1.0)
    emitted = Emitted()
    collector.collect(emitted.emit, emitted.declare)
    assert emitted.values["ipmi.ok-1.cpu1_temp"] == 38.0
    assert emitted.values["ipmi.ok-2.12v"] == 12.06
    assert math.isnan(emitted.values["ipmi.ok-2.fan2"])
    assert len(emitted.values) == 2 * 13
    assert emitted.declared["ipmi.ok-1.cpu1_temp"] == {
        "unit": "°C", "description": "CPU1 Temp (Temperature) of BMC ok-1"}
    (call,) = fake_tools.calls()  # both hosts share credentials: one process
    assert "--hostname=ok-1.example.com,ok-2.example.com" in call["argv"]
    assert PASSWORD not in " ".join(call["argv"]) and USERNAME not in " ".join(call["argv"])
    assert call["config_mode"] == "0o600"
    assert 'password "S3cr\\#t' in call["config"]
    config_file = next(a for a in call["argv"] if a.startswith("--config-file=")).split("=")[1]
    assert not Path(config_file).exists()  # removed with its directory after the run
    assert collector.state("ok-1").failures == 0


def test_ipmitool_subprocess_path_takes_the_password_from_the_environment(
        fake_tools, collectors, monkeypatch):
    monkeypatch.setenv("FAKE_IPMI_FIXTURE", str(FIXTURES / "ipmitool_sdr_elist.txt"))
    collector = collectors(["ok-1", "ok-2"], backend="ipmitool", timeout=5.0,
                           session_timeout=1.0)
    emitted = Emitted()
    collector.collect(emitted.emit, emitted.declare)
    assert emitted.values["ipmi.ok-1.temp_0eh"] == 45.0
    assert emitted.values["ipmi.ok-2.voltage_1"] == 230.0
    calls = fake_tools.calls()
    assert len(calls) == 2  # one process per host
    for call in calls:
        assert PASSWORD not in " ".join(call["argv"])
        assert call["env_password"] == PASSWORD


def test_unreachable_host_is_reported_once_then_retried_with_backoff(
        fake_tools, collectors, caplog):
    clock = FakeClock()
    collector = collectors(["flaky-1", "ok-1"], hosts_per_process=1, clock=clock,
                           timeout=5.0, session_timeout=1.0)
    caplog.set_level(logging.DEBUG)

    def attempts() -> int:
        return sum(1 for call in fake_tools.calls() if "--hostname=flaky-1" in call["argv"])

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and "flaky-1" in r.getMessage()]

    emitted = Emitted()
    collector.collect(emitted.emit, emitted.declare)  # known sensors: 13
    assert emitted.values["ipmi.flaky-1.cpu1_temp"] == 38.0
    fake_tools.down_marker.touch()

    emitted = Emitted()
    collector.collect(emitted.emit, emitted.declare)
    flaky = {m: v for m, v in emitted.values.items() if m.startswith("ipmi.flaky-1.")}
    assert len(flaky) == 13 and all(math.isnan(v) for v in flaky.values())
    assert emitted.values["ipmi.ok-1.cpu1_temp"] == 38.0  # the other host goes on
    assert collector.state("flaky-1").failures == 1
    assert len(warnings()) == 1 and "retrying in 5 s" in warnings()[0]
    assert attempts() == 2

    # Before the retry is due: NaN again, no new attempt, no new log line.
    clock.now += 4.9
    emitted = Emitted()
    collector.collect(emitted.emit, emitted.declare)
    assert math.isnan(emitted.values["ipmi.flaky-1.cpu1_temp"])
    assert attempts() == 2 and len(warnings()) == 1

    for waited, next_delay, expected_attempts in ((0.1, 20, 3), (20, 60, 4), (60, 300, 5),
                                                  (300, 300, 6)):
        clock.now += waited
        collector.collect(Emitted().emit)
        assert attempts() == expected_attempts
        assert f"next retry in {next_delay} s" in warnings()[-1]
    assert len(warnings()) == 5

    clock.now += 299
    collector.collect(Emitted().emit)
    assert attempts() == 6  # still waiting

    fake_tools.down_marker.unlink()
    clock.now += 1
    emitted = Emitted()
    collector.collect(emitted.emit)
    assert emitted.values["ipmi.flaky-1.cpu1_temp"] == 38.0
    assert collector.state("flaky-1").failures == 0
    assert any("answers again after 5 failed attempts" in r.getMessage() for r in caplog.records)


def test_credentials_never_reach_the_logs(fake_tools, collectors, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    collector = collectors(["leaky-1", "down-1", "ok-1"], hosts_per_process=1, timeout=5.0,
                           session_timeout=1.0)
    collector.collect(Emitted().emit)
    assert collector.state("leaky-1").failures == 1
    assert "********" in collector.state("leaky-1").last_error  # the tool's echo, scrubbed
    with pytest.raises(ConfigError):
        IpmiSettings.from_config(config(hosts=["bmc1"], timeout="soon"))
    with pytest.raises(ConfigError):
        IpmiSettings.from_config({**config(hosts=["bmc1"]), "password": None,
                                  "password_file": str(tmp_path / "missing")})
    assert caplog.records
    assert PASSWORD not in caplog.text and USERNAME not in caplog.text
    for record in caplog.records:
        assert PASSWORD not in str(record.args)


class EchoingBackend:
    """Fails every host with a message (the way a tool echoes what it was given)."""

    max_hosts = 1

    def __init__(self, message: str):
        self.message = message

    def group_key(self, host):
        return host

    def poll(self, hosts, runner, timeout):
        return {host: self.message for host in hosts}


def scrubbed(message: str, password: str) -> str:
    """``message`` as the collector keeps and logs it for a host with ``password``."""
    bmc = BmcHost("bmc1", "bmc1", USERNAME, Secret(password))
    collector = IpmiCollector([bmc], EchoingBackend(message), timeout=2.0)
    try:
        collector.collect(Emitted().emit)
    finally:
        assert collector.close(5.0)
    return collector.state("bmc1").last_error


@pytest.mark.parametrize("password", ["o", "en", "sens", "ipmi"])
def test_a_short_password_does_not_garble_words_that_contain_it(password):
    message = "ipmi-sensors: connection timeout; see /etc/ipmi-sensors.conf"
    assert scrubbed(message, password) == message


@pytest.mark.parametrize(("message", "expected"), [
    ("password=sens", "password=********"),
    ("ipmitool -P sens -H bmc1", "ipmitool -P ******** -H bmc1"),
    ("rejected password 'sens'", "rejected password '********'"),
    ('rejected password "sens".', 'rejected password "********".'),
    ("ipmi://admin:sens@10.0.0.1/", "ipmi://admin:********@10.0.0.1/"),
    ("sens", "********"),
    ("auth [sens], retry (sens); sens, sens!", "auth [********], retry (********); ********, "
                                               "********!"),
    ("sens sensor sens.example.com xsens sens_1 sens-2", "******** sensor sens.example.com "
                                                         "xsens sens_1 sens-2"),
])
def test_a_password_standing_alone_is_masked(message, expected):
    assert scrubbed(message, "sens") == expected


def test_a_password_with_regex_metacharacters_is_masked_literally():
    password = "a.b*c("
    assert scrubbed("login a.b*c( failed", password) == "login ******** failed"
    assert scrubbed("password=a.b*c(", password) == "password=********"
    # as a regex "a.b*c(" would not compile; taken literally it matches no look-alike
    assert scrubbed("axbbbc( aXb*c( a.b*c(d", password) == "axbbbc( aXb*c( a.b*c(d"


def test_a_password_with_a_space_is_one_token():
    password = "my pass"
    assert scrubbed("-P 'my pass' rejected", password) == "-P '********' rejected"
    assert scrubbed("password=my pass", password) == "password=********"
    assert scrubbed("my passport and army pass", password) == "my passport and army pass"


def test_escaped_spellings_of_the_password_are_masked():
    # pyghmi's exceptions show a repr; FreeIPMI echoes its configuration file's escapes
    error = repr(KeyError(PASSWORD))
    assert PASSWORD not in error and scrubbed(error, PASSWORD) == "KeyError('********')"
    line = 'config line 2: password "S3cr\\#t \\"pw\\" \\\\x" rejected'
    assert scrubbed(line, PASSWORD) == 'config line 2: password "********" rejected'


def test_an_empty_or_blank_password_masks_nothing():
    message = "ipmi-sensors: connection  timeout"
    assert scrubbed(message, "") == message
    assert scrubbed(message, " ") == message


def test_masked_messages_are_what_is_logged(caplog):
    caplog.set_level(logging.WARNING)
    assert scrubbed("ipmi-sensors: bad password sens", "sens") == (
        "ipmi-sensors: bad password ********")
    (record,) = caplog.records
    assert "ipmi-sensors: bad password ********" in record.getMessage()
    assert " sens" not in record.getMessage()


def test_a_slow_host_does_not_stall_the_others(fake_tools, collectors, caplog):
    collector = collectors(["slow-1", "ok-1", "ok-2"], hosts_per_process=1, timeout=2.0,
                           session_timeout=0.5)
    emitted = Emitted()
    started = time.monotonic()
    collector.collect(emitted.emit, emitted.declare)
    took = time.monotonic() - started
    # ok-1 and ok-2 came in while slow-1 was still running, not after its timeout
    assert emitted.times["ipmi.ok-1.cpu1_temp"] < 1.5
    assert emitted.times["ipmi.ok-2.cpu1_temp"] < 1.5
    # slow-1 (and the grandchild holding its pipes) was killed at the hard timeout
    assert 2.0 <= took < 2.0 + ipmi.GRACE_SECONDS
    state = collector.state("slow-1")
    assert state.failures == 1 and "no answer within 2 s" in state.last_error


def test_missing_tool_fails_the_hosts_not_the_source(collectors, tmp_path):
    collector = collectors(["bmc1"], command=str(tmp_path / "no-such-tool"))
    collector.collect(Emitted().emit)
    state = collector.state("bmc1")
    assert state.failures == 1 and "not found" in state.last_error


def test_sensor_selection(fake_tools, collectors):
    collector = collectors(["ok-1"], sensor_types=["Fan"], exclude_sensors=["FAN3"])
    emitted = Emitted()
    collector.collect(emitted.emit)
    assert set(emitted.values) == {"ipmi.ok-1.fan1", "ipmi.ok-1.fan2"}


def _require_tool(name: str, package: str) -> None:
    """Skip without the tool on a developer's machine; in CI (which installs it) fail."""
    if shutil.which(name) is None:
        message = f"needs {name} (Debian: {package})"
        if IN_CI:
            pytest.fail(message + "; CI=true: .ci/run installs it")
        pytest.skip(message)


def test_real_ipmi_sensors_accepts_the_command_line(collectors, tmp_path):
    _require_tool("ipmi-sensors", "freeipmi-tools")
    # 127.0.0.2 has no BMC: the real tool must take our options and config file and fail
    # with a timeout of its own, well before the hard one.
    collector = collectors(["127.0.0.2"], timeout=5.0, session_timeout=0.5,
                           sdr_cache_directory=str(tmp_path))
    started = time.monotonic()
    collector.collect(Emitted().emit)
    assert time.monotonic() - started < 4.0
    state = collector.state("127.0.0.2")
    assert state.failures == 1
    assert "timeout" in state.last_error and "Config File Error" not in state.last_error


def test_real_ipmitool_accepts_the_command_line(collectors):
    _require_tool("ipmitool", "ipmitool")
    collector = collectors(["127.0.0.2"], backend="ipmitool", timeout=8.0,
                           session_timeout=1.0)
    collector.collect(Emitted().emit)
    state = collector.state("127.0.0.2")
    assert state.failures == 1 and "no answer" not in state.last_error
    assert "usage" not in state.last_error.lower()


# -- pyghmi ----------------------------------------------------------------------------------


def fake_pyghmi(fail_hosts=()):
    class SensorReading:
        def __init__(self, name, value, units, type="Temperature", unavailable=False):
            self.name, self.value, self.units = name, value, units
            self.type, self.unavailable = type, unavailable

    class Command:
        created: list[dict] = []

        def __init__(self, bmc, userid, password, port=623):
            Command.created.append({"bmc": bmc, "userid": userid, "password": password})
            self.bmc = bmc

        def get_sensor_data(self):
            if self.bmc in fail_hosts:
                raise OSError(f"timeout talking to {self.bmc}")
            yield SensorReading("CPU Temp", 40.0, "°C")
            yield SensorReading("Fan 1", None, "RPM", type="Fan", unavailable=True)
            yield SensorReading("PSU Status", None, "", type="Power Supply")

    return types.SimpleNamespace(Command=Command)


def test_pyghmi_backend_with_a_fake_module():
    module = fake_pyghmi(fail_hosts={"bmc2"})
    hosts = [host("bmc1"), host("bmc2")]
    collector = IpmiCollector(hosts, PyghmiBackend(module), timeout=2.0)
    try:
        emitted = Emitted()
        collector.collect(emitted.emit, emitted.declare)
        collector.collect(emitted.emit, emitted.declare)
    finally:
        assert collector.close(5.0)
    assert emitted.values["ipmi.bmc1.cpu_temp"] == 40.0
    assert math.isnan(emitted.values["ipmi.bmc1.fan_1"])
    assert "ipmi.bmc1.psu_status" not in emitted.values
    assert collector.state("bmc2").failures == 1
    # the session of bmc1 is kept; bmc2's failed one is not retried before its backoff
    assert [c["bmc"] for c in module.Command.created] == ["bmc1", "bmc2"]


def test_pyghmi_backend_without_pyghmi_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyghmi", None)
    monkeypatch.setitem(sys.modules, "pyghmi.ipmi", None)
    with pytest.raises(ConfigError, match="pip install pyghmi"):
        IpmiSource("source-ipmi-test", config=config(hosts=["bmc1"], backend="pyghmi"))


# -- the source on the embedded network ------------------------------------------------------


def test_ipmi_source_sends_readings_and_nan(fake_tools, unique):
    source_config = config(hosts=["ok-1", "down-1"], rate=20, timeout=5.0, session_timeout=1.0,
                           hosts_per_process=1, prefix=f"ipmi{unique}")
    with RecordingSink(f"sink-{unique}") as sink:
        sink.subscribe([f"ipmi{unique}.ok-1.cpu1_temp", f"ipmi{unique}.ok-1.fan2"])
        with IpmiSource(f"source-ipmi-{unique}", config=source_config) as source:
            assert wait_until(lambda: sink.count(f"ipmi{unique}.ok-1.fan2") >= 2)
            metadata = source.get_metrics(selector=[f"ipmi{unique}.ok-1.cpu1_temp"])
    assert metadata[f"ipmi{unique}.ok-1.cpu1_temp"]["unit"] == "°C"
    assert metadata[f"ipmi{unique}.ok-1.cpu1_temp"]["rate"] == 20
    temps = [v for m, _, v in sink.points if m.endswith("cpu1_temp")]
    assert temps and all(v == 38.0 for v in temps)
    fans = [v for m, _, v in sink.points if m.endswith("fan2")]
    assert all(math.isnan(v) for v in fans)


def test_stop_kills_a_running_poll(fake_tools, unique):
    source = IpmiSource(f"source-ipmi-{unique}",
                        config=config(hosts=["slow-1"], timeout=60.0, session_timeout=1.0))
    source.start()
    try:
        assert wait_until(lambda: len(fake_tools.calls()) == 1)
    finally:
        started = time.monotonic()
        source.stop()
    assert time.monotonic() - started < 5.0
    # the poll threads are named after the token (the test id in pytest-timeout's timer
    # thread's name contains "ipmi" too)
    assert not [t for t in threading.enumerate() if source.token in t.name]


def test_fake_tool_script_is_executable_python():
    mode = (FIXTURES / "fake_ipmi_tool.py").stat().st_mode
    assert stat.S_ISREG(mode)
    assert mqsync.ConfigError is ConfigError

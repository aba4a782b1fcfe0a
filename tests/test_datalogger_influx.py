"""InfluxDBWriter and the line protocol against a real InfluxDB server on 127.0.0.1.

The ``influxdb_server`` fixture finds ``influxd`` (``$MQSYNC_INFLUXD``, then ``PATH``, then a
copy it unpacked earlier) or unpacks Debian's ``influxdb`` package into a cache directory
(``apt-get download`` + ``dpkg-deb -x``: no service is installed or started, nothing listens
beyond the test). It runs influxd bound to 127.0.0.1 on free ports with a temporary data
directory, waits until it answers, and stops it after the module. Without a server or the
``influxdb`` client library these tests skip, except in CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

import mqsync.datalogger as dl

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

CONFIG = """\
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"
[meta]
  dir = "{root}/meta"
  logging-enabled = false
[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[http]
  bind-address = "127.0.0.1:{http_port}"
  log-enabled = false
  pprof-enabled = false
[logging]
  level = "warn"
"""

DURATION = dl.Field("duration", unit="s", numeric=True)
COUNT = dl.Field("count")
PASSED = dl.Field("passed")
NOTE = dl.Field("note")
HOST = dl.Tag("host name")
CASE = dl.Tag("case")
STEP = dl.Measurement("build step", DURATION, COUNT, PASSED, NOTE, HOST, CASE)


def _unavailable(message: str):
    if IN_CI:
        pytest.fail(f"{message} (CI=true: the InfluxDB tests must run)")
    pytest.skip(message)


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mqsync-tests" / "influxdb"


def install_influxd(target: Path) -> Path:
    """Unpack Debian's influxdb package into ``target``; return the path of influxd.

    Runs ``apt-get update`` once (as root) if the package cannot be downloaded at first.
    Raises LookupError or subprocess.CalledProcessError when that is not possible.
    """
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        raise LookupError("no influxd on PATH, and no apt-get/dpkg-deb to fetch Debian's influxdb")
    with tempfile.TemporaryDirectory() as download:
        fetch = ["apt-get", "download", "-qq", "influxdb"]
        if subprocess.run(fetch, cwd=download, capture_output=True).returncode != 0:
            if os.geteuid() != 0:
                raise LookupError("apt-get download influxdb failed (and not root to update)")
            subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)
            subprocess.run(fetch, cwd=download, check=True, capture_output=True)
        (package,) = Path(download).glob("influxdb_*.deb")
        staging = Path(tempfile.mkdtemp(prefix="influxdb.", dir=target.parent))
        subprocess.run(["dpkg-deb", "-x", str(package), str(staging)], check=True)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)  # all or nothing: a half-unpacked copy is never found
    return target / "usr" / "bin" / "influxd"


def find_influxd() -> str:
    """The influxd to run: $MQSYNC_INFLUXD, PATH, an unpacked copy, or a fresh one."""
    found = os.environ.get("MQSYNC_INFLUXD") or shutil.which("influxd")
    if found:
        return found
    target = _cache_dir()
    binary = target / "usr" / "bin" / "influxd"
    if not binary.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        binary = install_influxd(target)
    return str(binary)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def influxdb_client_class():
    try:
        from influxdb import InfluxDBClient
    except ImportError:
        _unavailable("the influxdb client library is missing (pip install -e '.[influx]')")
    return InfluxDBClient


@pytest.fixture(scope="module")
def influxdb_server(tmp_path_factory, influxdb_client_class):
    """(host, port) of a fresh influxd on 127.0.0.1, for this module only."""
    try:
        influxd = find_influxd()
    except (LookupError, OSError, subprocess.CalledProcessError) as error:
        _unavailable(f"no InfluxDB server to test against: {error}")
    root = tmp_path_factory.mktemp("influxdb")
    http_port, rpc_port = _free_port(), _free_port()
    config = root / "influxdb.conf"
    config.write_text(CONFIG.format(root=root, http_port=http_port, rpc_port=rpc_port))
    log_path = root / "influxd.log"
    try:
        with open(log_path, "wb") as log:
            process = subprocess.Popen([influxd, "run", "-config", str(config)],
                                       stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT)
    except OSError as error:
        pytest.fail(f"cannot run influxd {influxd!r}: {error}")
    client = influxdb_client_class("127.0.0.1", http_port, timeout=2, retries=1)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except Exception:
                if process.poll() is not None or time.monotonic() > deadline:
                    tail = log_path.read_text(errors="replace")[-2000:]
                    pytest.fail(f"influxd ({influxd}) did not answer on 127.0.0.1:{http_port} "
                                f"(exit code {process.poll()}); its log ends:\n{tail}")
                time.sleep(0.1)
        yield "127.0.0.1", http_port
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.fixture
def database(influxdb_server, influxdb_client_class, unique):
    """A fresh database on the test server and a client on it; dropped afterwards."""
    host, port = influxdb_server
    name = f"test_{unique}"
    client = influxdb_client_class(host, port, database=name)
    yield name, client
    client.drop_database(name)
    client.close()


def _points(client, query):
    return list(client.query(query, epoch="ns").get_points())


def test_influxdb_writer_writes_entries_and_events(influxdb_server, database):
    host, port = influxdb_server
    name, client = database
    writer = dl.InfluxDBWriter(host, port, name, create_database=True)
    with dl.DataLogger(writer) as datalogger:
        datalogger.log(STEP, dl.FieldMap.build(DURATION, 1.25, COUNT, 3, PASSED, True,
                                               NOTE, 'said "ok", then = left'),
                       dl.TagMap.build(HOST, "node 01,a=b", CASE, "c1"),
                       time=1_700_000_000_123_456_789)
        with datalogger.measure_block(STEP, DURATION, dl.TagMap.build(HOST, "n2", CASE, "c2"),
                                      event_tags={"runner": "ci 7"}, text="block ran"):
            time.sleep(0.01)
        (entry,), (event,) = datalogger.dataset[1:], datalogger.events
    first, second = _points(client, 'SELECT * FROM "build step" ORDER BY time')
    assert first == {"time": 1_700_000_000_123_456_789, "duration": 1.25, "count": 3,
                     "passed": True, "note": 'said "ok", then = left', "host name": "node 01,a=b",
                     "case": "c1"}
    assert second["time"] == entry.time_ns and second["duration"] == entry.fields["duration"]
    assert second["count"] is None and second["host name"] == "n2"
    (marker,) = _points(client, 'SELECT * FROM "events"')
    assert marker == {"time": event.start_ns, "text": "block ran", "duration": event.duration,
                      "timeEnd": event.stop_ns // 1_000_000, "measurement": "build step",
                      "runner": "ci 7"}


def test_line_protocol_file_is_what_influxdb_parses(influxdb_server, database, tmp_path, caplog):
    host, port = influxdb_server
    name, client = database
    client.create_database(name)
    tricky = ["plain", "with space", "comma,here", "equals=here", 'quote"here', "back\\slash",
              "slash\\,comma", "slash\\ space", "ünïcødé ✓", "trailing\\\\"]
    m = dl.Measurement("m ,=x", dl.Field("v"), dl.Field("s"), dl.Field("f e,=x"),
                       dl.Tag("t ,=x"), dl.Tag("n"))
    path = tmp_path / "data.lp"
    datalogger = dl.DataLogger(dl.LineProtocolFileWriter(path))
    for number, text in enumerate(tricky):
        datalogger.log(m, dl.FieldMap.build(dl.Field("v"), float(number), dl.Field("s"), text,
                                            dl.Field("f e,=x"), -1e-7),
                       dl.TagMap.build(dl.Tag("t ,=x"), text, dl.Tag("n"), number), time=number + 1)
    datalogger.write_data()
    client.write_points(path.read_text().splitlines(), time_precision="n", protocol="line")
    rows = _points(client, 'SELECT * FROM "m ,=x" ORDER BY time')
    assert [r["s"] for r in rows] == tricky
    assert [r["t ,=x"] for r in rows] == [*tricky[:-1], "trailing"]  # see to_line_protocol
    assert "cannot hold a trailing backslash" in caplog.text
    assert [r["f e,=x"] for r in rows] == [-1e-7] * len(tricky)
    assert [r["time"] for r in rows] == list(range(1, len(tricky) + 1))


def test_an_unreachable_server_fails_the_write_and_keeps_the_batch(influxdb_client_class):
    port = _free_port()  # nothing listens there
    client = influxdb_client_class("127.0.0.1", port, timeout=1, retries=1)
    writer = dl.InfluxDBWriter(database="nowhere", client=client)
    datalogger = dl.DataLogger(writer)
    datalogger.log(STEP, DURATION, 1.0, dl.TagMap.build(HOST, "a", CASE, "b"))
    with pytest.raises(dl.WriteFailed, match="InfluxDBWriter"):
        datalogger.write_data()
    assert datalogger._backlog and repr(writer) == "InfluxDBWriter('InfluxDBClient/nowhere')"
    client.close()

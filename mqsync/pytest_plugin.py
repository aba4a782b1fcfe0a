"""pytest plugin: a session-wide ``datalogger`` fixture that writes when the session ends.

The plugin is opt-in: installing mqsync adds nothing to other projects' pytest runs.
Enable it with ``-p mqsync.pytest_plugin`` on the command line or
``pytest_plugins = ["mqsync.pytest_plugin"]`` in the top-level conftest.py. Then::

    def test_upload(datalogger):
        with datalogger.measure_block(UPLOAD, DURATION, TagMap.build(HOST, "node01")):
            upload()

Where the data goes: ``--datalogger-json=PATH`` (JSON Lines) and/or
``--datalogger-line-protocol=PATH`` (InfluxDB line protocol), also as the ini options
``datalogger_json`` and ``datalogger_line_protocol``; both append, so pytest-xdist workers can
share a file. For other writers (InfluxDB server, MetricQ) override the session-scoped
``datalogger_writers`` fixture in conftest.py and return a list of writers. A write that fails
at the end of the session is reported as an error of the last test's teardown.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mqsync.datalogger import DatabaseWriter, DataLogger, JsonFileWriter, LineProtocolFileWriter

_OPTIONS = {
    "datalogger_json": "append the logged data and events as JSON Lines to this file",
    "datalogger_line_protocol": "append the logged data and events as InfluxDB line protocol "
    "to this file",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mqsync-datalogger", "mqsync data logger")
    for name, help_text in _OPTIONS.items():
        group.addoption(f"--{name.replace('_', '-')}", dest=name, metavar="PATH",
                        default=None, help=help_text)
        parser.addini(name, help_text, default=None)


def _option(config: pytest.Config, name: str) -> str | None:
    return config.getoption(name) or config.getini(name) or None


@pytest.fixture(scope="session")
def datalogger_writers(pytestconfig: pytest.Config) -> list[DatabaseWriter]:
    """The writers of the session's ``datalogger``, from the command line or ini options."""
    writers: list[DatabaseWriter] = []
    json_path = _option(pytestconfig, "datalogger_json")
    if json_path:
        writers.append(JsonFileWriter(json_path))
    line_path = _option(pytestconfig, "datalogger_line_protocol")
    if line_path:
        writers.append(LineProtocolFileWriter(line_path))
    return writers


@pytest.fixture(scope="session")
def datalogger(datalogger_writers: list[DatabaseWriter]) -> Iterator[DataLogger]:
    """One DataLogger for the whole session; it writes and closes its writers at the end."""
    logger = DataLogger(*datalogger_writers)
    yield logger
    logger.close()

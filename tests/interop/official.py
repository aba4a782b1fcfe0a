"""Run the official ``metricq`` client (PyPI, 5.4.0) as the other side of an interop test.

The official client pins ``protobuf<3.13,>=3.12`` and mqsync needs ``protobuf>=4.21``, so the two
cannot share an environment. The official client lives in a virtualenv of its own:

* **Where**: ``$MQSYNC_INTEROP_VENV``, or ``<repo>/.interop-venv`` (gitignored).
* **Base interpreter**: ``$MQSYNC_INTEROP_BASE_PYTHON``, else the interpreter running the tests
  when it is Python 3.10 or newer (metricq 5.4.0 requires it), else the first of
  ``python3.13``/``python3.12``/``python3.11``/``python3.10`` on ``PATH``.
* **How**: ``<base> -m venv --clear <venv>``, then ``<venv>/bin/python -m pip install`` of
  ``INTEROP_REQUIREMENTS`` (metricq 5.4.0 and its wire-relevant dependencies, and the official
  tools ``metricq-tools`` 1.0.0 with theirs, pinned to the versions this harness was checked
  with; numpy only from a wheel, python-hostlist, which has none, from its sdist). Extra pip
  options come from pip's own environment
  variables (``PIP_INDEX_URL``, ``PIP_FIND_LINKS``, ...). protobuf 3.12.4 has no binary wheel
  for Python 3.11 and installs as pure Python; the peers run with
  ``PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python`` so a stray C extension is never picked.
* **Check**: the new venv must import ``metricq``, ``aio_pika``, ``google.protobuf`` and the
  tools' ``check``/``summary``/``energy`` modules, have every pinned version and the tools'
  console scripts, and serialize PROTOCOL.md's DataChunk golden vector byte for byte. Only then
  is ``<venv>/.mqsync-interop.json`` written; it records the requirements and the base
  interpreter, and a venv whose record differs (or is missing: a build that died half-way) is
  rebuilt.
* **Once**: the build runs under an exclusive ``fcntl`` lock on a file in the temp directory
  named after the venv path, so pytest processes that race (xdist workers, parallel runs) build
  it once; the others wait and then reuse it. Within a process the result is cached.

``official_python()`` returns the venv's interpreter and raises ``InteropUnavailable`` (with
pip's output) when the venv cannot be built; the ``official_python`` fixture in
``tests/interop/conftest.py`` turns that into a skip on a developer's machine and a failure
when ``CI=true``. ``run_peer``/``start_peer`` run the scripts in ``tests/interop/peers/``
(each prints JSON lines; see their docstrings) with that interpreter and a clean environment;
``official_script`` gives the path of one of the tools' console scripts.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Callable

REPO_ROOT = Path(__file__).resolve().parents[2]
PEERS_DIR = Path(__file__).resolve().parent / "peers"
DEFAULT_VENV = REPO_ROOT / ".interop-venv"

PINNED = {
    "metricq": "5.4.0",
    "protobuf": "3.12.4",
    "aio-pika": "9.6.2",
    "aiormq": "6.9.4",
    "pamqp": "3.3.0",
    # metricq 5.4.0 imports pkg_resources, which venvs of Python 3.12+ no longer come with;
    # 75.8 has it, with no warning printed, and runs on 3.10 to 3.13
    "setuptools": "75.8.2",
}
"""What the venv gets: the official client and the libraries that decide what goes on the wire,
at the versions this harness was checked with. The rest (yarl, multidict, python-dateutil, ...)
floats within metricq's ranges: some have no pure-Python wheel for every interpreter."""

TOOLS_PINNED = {
    "metricq-tools": "1.0.0",
    # the only compiled one: 2.2.6 has manylinux wheels for CPython 3.10 to 3.13, the range
    # _base_python() looks for (2.3 dropped 3.10); it is installed from a wheel or not at all
    "numpy": "2.2.6",
    # no wheel for any version: built from its sdist (pip fetches setuptools for that)
    "python-hostlist": "2.3.0",
    # the tests read what these print (tables, options, logging)
    "click": "8.1.8",
    "click-log": "0.4.0",
    "tabulate": "0.9.0",
    "termplotlib": "0.3.9",
    "humanize": "2.6.0",
    "async-timeout": "3.0.1",
    "python-dotenv": "1.0.1",
}
"""The official command-line tools (``metricq-check``, ``metricq-summary``, ``metricq-energy``,
...; see ``official_script``) and their direct dependencies, pure Python except numpy, at
versions that install on every interpreter the venv may be built from."""

ALL_PINNED = {**PINNED, **TOOLS_PINNED}
INTEROP_REQUIREMENTS = tuple(f"{name}=={version}" for name, version in ALL_PINNED.items())
_BINARY_ONLY = ("numpy",)  # compiling it from source would take minutes and need a toolchain

_MIN_PYTHON = (3, 10)  # metricq 5.4.0's Requires-Python
_MARKER_NAME = ".mqsync-interop.json"
_MARKER_FORMAT = 1
_SCRIPTS = ("metricq-check", "metricq-summary", "metricq-energy")  # checked in a new venv
_BUILD_TIMEOUT_S = 900.0
_LOCK_WAIT_S = 1200.0

# The check run in the new venv: versions, and PROTOCOL.md's first DataChunk golden vector.
_CHECK_SCRIPT = """
import importlib.metadata, json, sys
import aio_pika, metricq
import metricq_tools.check, metricq_tools.energy, metricq_tools.summary
from google.protobuf.internal import api_implementation
from metricq.datachunk_pb2 import DataChunk
chunk = DataChunk()
chunk.time_delta.extend([1000000000, 1000000000])
chunk.value.extend([1.0, 2.5])
print(json.dumps({
    "versions": {name: importlib.metadata.version(name) for name in sys.argv[1:]},
    "python": sys.version.split()[0],
    "protobuf_implementation": api_implementation.Type(),
    "datachunk": chunk.SerializeToString().hex(),
}))
"""
_DATACHUNK_GOLDEN = "0a0a8094ebdc038094ebdc031210000000000000f03f0000000000000440"


class InteropUnavailable(RuntimeError):
    """The official client's virtualenv could not be built or does not work."""


class PeerTimeout(AssertionError):
    """A peer did not finish, or did not print what was awaited, in time."""


def venv_path() -> Path:
    """Where the official client's virtualenv lives."""
    configured = os.environ.get("MQSYNC_INTEROP_VENV")
    return Path(configured).expanduser().resolve() if configured else DEFAULT_VENV


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _base_python() -> str:
    configured = os.environ.get("MQSYNC_INTEROP_BASE_PYTHON")
    if configured:
        return configured
    if sys.version_info[:2] >= _MIN_PYTHON:
        return sys.executable
    for name in ("python3.13", "python3.12", "python3.11", "python3.10"):
        found = shutil.which(name)
        if found:
            return found
    raise InteropUnavailable(
        "metricq 5.4.0 needs Python >= 3.10, the tests run on "
        f"{sys.version_info.major}.{sys.version_info.minor}, and no python3.10+ is on PATH; "
        "set MQSYNC_INTEROP_BASE_PYTHON"
    )


def peer_env() -> dict[str, str]:
    """The environment for the venv's interpreter: this one's, minus anything that could put
    mqsync's packages (protobuf 4, ...) on its path, or keep a peer's own directory (its
    ``_common`` module) off it (``PYTHONSAFEPATH``, set by .ci/run)."""
    unwanted = (
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONSTARTUP",
        "PYTHONSAFEPATH",
        "VIRTUAL_ENV",
        "__PYVENV_LAUNCHER__",
    )
    env = {key: value for key, value in os.environ.items() if key not in unwanted}
    env["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = "python"
    env["PYTHONNOUSERSITE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def _expected_marker() -> dict[str, Any]:
    # The base interpreter is recorded for the reader but not compared: the tests may run
    # from another venv of the same Python; the check catches a base that has gone.
    return {"format": _MARKER_FORMAT, "requirements": list(INTEROP_REQUIREMENTS)}


def _read_marker(venv: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((venv / _MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _check_venv(venv: Path) -> dict[str, Any]:
    """Run the check script in the venv; return what it reported.

    Raises:
        InteropUnavailable: it does not run, or reports other versions or other bytes.
    """
    python = _venv_python(venv)
    if not python.exists():
        raise InteropUnavailable(f"{python} does not exist")
    try:
        result = subprocess.run(
            [str(python), "-c", _CHECK_SCRIPT, *ALL_PINNED],
            capture_output=True,
            text=True,
            timeout=120,
            env=peer_env(),
            cwd=str(venv),
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise InteropUnavailable(f"the check in {venv} did not run: {error}") from error
    if result.returncode != 0:
        raise InteropUnavailable(
            f"the check in {venv} failed (exit {result.returncode}):\n{result.stderr[-4000:]}"
        )
    try:
        report = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as error:
        raise InteropUnavailable(f"the check in {venv} printed {result.stdout!r}") from error
    if report.get("versions") != ALL_PINNED:
        raise InteropUnavailable(
            f"the venv at {venv} has {report.get('versions')}, expected {ALL_PINNED}"
        )
    missing = [name for name in _SCRIPTS if not (venv / "bin" / name).is_file()]
    if missing:
        raise InteropUnavailable(f"the venv at {venv} lacks the console scripts {missing}")
    if report.get("datachunk") != _DATACHUNK_GOLDEN:
        raise InteropUnavailable(
            f"metricq in {venv} serializes the golden DataChunk as {report.get('datachunk')}, "
            f"expected {_DATACHUNK_GOLDEN}"
        )
    return report


def _build(venv: Path, base_python: str) -> None:
    """Create the venv from scratch and install the requirements into it.

    Raises:
        InteropUnavailable: venv creation or pip failed (the message carries their output).
    """
    marker = venv / _MARKER_NAME
    if marker.exists():
        marker.unlink()
    venv.parent.mkdir(parents=True, exist_ok=True)
    steps: list[list[str]] = [
        [base_python, "-m", "venv", "--clear", str(venv)],
        [
            str(_venv_python(venv)),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--quiet",
            "--only-binary",
            ",".join(_BINARY_ONLY),
            *INTEROP_REQUIREMENTS,
        ],
    ]
    env = peer_env()
    for command in steps:
        try:
            result = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=_BUILD_TIMEOUT_S,
                env=env,
                cwd=str(venv.parent),
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise InteropUnavailable(
                f"building the interop venv at {venv} failed: {' '.join(command)}: {error}"
            ) from error
        if result.returncode != 0:
            output = (result.stdout + result.stderr)[-6000:]
            raise InteropUnavailable(
                f"building the interop venv at {venv} failed (exit {result.returncode}): "
                f"{' '.join(command)}\n{output}"
            )


def _lock_file_for(venv: Path) -> Path:
    digest = hashlib.sha256(str(venv).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"mqsync-interop-venv-{digest}.lock"


def _acquire(handle: IO[str], venv: Path) -> None:
    deadline = time.monotonic() + _LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise InteropUnavailable(
                    f"waited {_LOCK_WAIT_S:.0f} s for another process building {venv}"
                ) from None
            time.sleep(0.5)


def ensure_venv() -> Path:
    """Build the official client's venv unless a good one exists; return its interpreter.

    Safe to call from several processes at once: one builds, the others wait and reuse it.

    Raises:
        InteropUnavailable: the venv cannot be built or does not pass its check.
    """
    venv = venv_path()
    base_python = _base_python()
    expected = _expected_marker()
    lock_path = _lock_file_for(venv)
    with open(lock_path, "a", encoding="utf-8") as handle:
        _acquire(handle, venv)
        try:
            marker = _read_marker(venv)
            if marker is not None and all(marker.get(k) == v for k, v in expected.items()):
                try:
                    _check_venv(venv)
                    return _venv_python(venv)
                except InteropUnavailable:
                    pass  # broken since it was built (base interpreter gone, ...): rebuild
            _build(venv, base_python)
            report = _check_venv(venv)
            (venv / _MARKER_NAME).write_text(
                json.dumps({**expected, "base_python": base_python, "report": report}, indent=2),
                encoding="utf-8",
            )
            return _venv_python(venv)
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


_cache_lock = threading.Lock()
_cached: Path | InteropUnavailable | None = None


def official_python() -> Path:
    """The interpreter of the venv with the official ``metricq==5.4.0``, built on first use.

    The result (or the failure) is cached for the life of the process.

    Raises:
        InteropUnavailable: the venv cannot be built; the message says why.
    """
    global _cached
    with _cache_lock:
        if _cached is None:
            try:
                _cached = ensure_venv()
            except InteropUnavailable as error:
                _cached = error
        if isinstance(_cached, InteropUnavailable):
            raise _cached
        return _cached


def official_script(name: str) -> Path:
    """The path of one of the venv's console scripts, e.g. ``official_script("metricq-check")``.

    Run it with ``env=peer_env()``: its ``#!`` line names the venv's interpreter.

    Raises:
        InteropUnavailable: the venv cannot be built.
        FileNotFoundError: the venv has no such script.
    """
    script = official_python().parent / name
    if not script.is_file():
        raise FileNotFoundError(f"the interop venv has no console script {script}")
    return script


def peer_command(script_name: str, *args: object) -> list[str]:
    """The command line that runs ``peers/<script_name>`` with the official interpreter."""
    script = PEERS_DIR / (script_name if script_name.endswith(".py") else script_name + ".py")
    if not script.is_file():
        raise FileNotFoundError(f"no interop peer {script}")
    return [str(official_python()), str(script), *(str(arg) for arg in args)]


def parse_lines(text: str) -> list[dict[str, Any]]:
    """The JSON objects among the lines of a peer's stdout (other lines are skipped)."""
    records = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def run_peer(
    script_name: str, *args: object, timeout: float, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a peer to its end and return it, stdout and stderr captured as text.

    ``result.records`` holds the JSON lines of its stdout (see ``parse_lines``).

    Raises:
        PeerTimeout: it ran longer than ``timeout`` seconds (it is killed; the message has its
            output so far).
    """
    command = peer_command(script_name, *args)
    try:
        result = subprocess.run(
            command,
            input=input if input is not None else "",
            capture_output=True,
            text=True,
            timeout=timeout,
            env=peer_env(),
            cwd=str(PEERS_DIR),
        )
    except subprocess.TimeoutExpired as error:
        raise PeerTimeout(
            f"peer {script_name} ran longer than {timeout} s\n"
            f"stdout: {_tail(error.stdout)}\nstderr: {_tail(error.stderr)}"
        ) from None
    result.records = parse_lines(result.stdout)  # type: ignore[attr-defined]
    return result


def _tail(data: str | bytes | None, limit: int = 4000) -> str:
    if data is None:
        return ""
    if isinstance(data, bytes):
        data = data.decode(errors="replace")
    return data[-limit:]


class PeerProcess(subprocess.Popen):
    """A running peer: stdin and stdout are pipes, stderr goes to a temporary file (so a
    chatty peer can never block on a full pipe).

    Read its JSON lines with ``read_record``/``wait_for``; every read is bounded. Use it as a
    context manager: on exit a peer still running is killed and reaped.
    """

    def __init__(self, command: Sequence[str], script_name: str) -> None:
        self.script_name = script_name
        self._stderr_file = tempfile.TemporaryFile(mode="w+b")  # noqa: SIM115 - closed in stop()
        super().__init__(
            list(command),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr_file,
            env=peer_env(),
            cwd=str(PEERS_DIR),
            bufsize=0,
        )
        self._buffer = b""
        self._eof = False
        self.records: list[dict[str, Any]] = []
        """Every JSON line read so far, in order."""

    def stderr_text(self) -> str:
        self._stderr_file.flush()
        self._stderr_file.seek(0)
        return self._stderr_file.read().decode(errors="replace")

    def describe(self) -> str:
        return (
            f"peer {self.script_name} (pid {self.pid}, exit {self.poll()})\n"
            f"records: {self.records[-20:]}\nstderr: {_tail(self.stderr_text())}"
        )

    def read_line(self, timeout: float) -> str | None:
        """The next stdout line without its newline, or None at end of output.

        Raises:
            PeerTimeout: no full line within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        assert self.stdout is not None
        fd = self.stdout.fileno()
        while b"\n" not in self._buffer and not self._eof:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PeerTimeout(f"no line within {timeout} s from {self.describe()}")
            readable, _, _ = select.select([fd], [], [], remaining)
            if readable:
                chunk = os.read(fd, 65536)
                if chunk:
                    self._buffer += chunk
                else:
                    self._eof = True
        if b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
        elif self._buffer:
            line, self._buffer = self._buffer, b""
        else:
            return None
        return line.decode(errors="replace")

    def read_record(self, timeout: float) -> dict[str, Any] | None:
        """The next JSON line (other lines are skipped), or None at end of output.

        Raises:
            PeerTimeout: none within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            line = self.read_line(max(0.0, deadline - time.monotonic()))
            if line is None:
                return None
            parsed = parse_lines(line)
            if parsed:
                self.records.append(parsed[0])
                return parsed[0]

    def wait_for(
        self, event: str | Callable[[dict[str, Any]], bool], timeout: float
    ) -> dict[str, Any]:
        """Read JSON lines until one has ``"event" == event`` (or satisfies the predicate).

        Raises:
            PeerTimeout: it did not come within ``timeout`` seconds.
            AssertionError: the peer reported an error or ended first.
        """
        matches = event if callable(event) else (lambda record: record.get("event") == event)
        deadline = time.monotonic() + timeout
        while True:
            record = self.read_record(max(0.0, deadline - time.monotonic()))
            if record is None:
                self.wait(timeout=max(1.0, deadline - time.monotonic()))
                raise AssertionError(f"peer ended before {event!r}: {self.describe()}")
            if matches(record):
                return record
            if record.get("event") == "error":
                raise AssertionError(
                    f"peer reported an error waiting for {event!r}: {self.describe()}"
                )

    def iter_records(self, timeout: float) -> Iterator[dict[str, Any]]:
        """Yield JSON lines until end of output, all within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.read_record(max(0.0, deadline - time.monotonic()))
            if record is None:
                return
            yield record

    def send_line(self, text: str = "go") -> None:
        assert self.stdin is not None
        self.stdin.write(text.encode() + b"\n")
        self.stdin.flush()

    def close_stdin(self) -> None:
        if self.stdin is not None and not self.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.stdin.close()

    def finish(self, timeout: float) -> int:
        """Close stdin, read the rest of stdout into ``records`` and wait for the exit.

        Returns the exit code.

        Raises:
            PeerTimeout: it did not end within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        self.close_stdin()
        for _ in self.iter_records(timeout):
            pass
        try:
            return self.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise PeerTimeout(f"did not exit within {timeout} s: {self.describe()}") from None

    def stop(self) -> None:
        """Kill the peer if it still runs, reap it and close its files."""
        if self.poll() is None:
            self.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.wait(timeout=10)
        self.close_stdin()
        if self.stdout is not None:
            self.stdout.close()
        self._stderr_file.close()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_peer(script_name: str, *args: object) -> PeerProcess:
    """Start a peer and return it running (use it as a context manager)."""
    return PeerProcess(peer_command(script_name, *args), script_name)

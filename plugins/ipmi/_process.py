"""Running the IPMI tools: subprocesses with a hard timeout killed by process group, and a
small pool of worker threads that is joined with a bound."""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable

from ._options import GRACE_SECONDS
from ._values import Cancelled, Invocation, RunResult

logger = logging.getLogger(__name__)


class ProcessRunner:
    """Runs commands with a hard timeout; kills what runs when closed.

    Each command gets a session (process group) of its own, so on timeout the tool *and
    anything it started* are killed, and reading its output cannot hang on a pipe held by
    an orphan.  Every wait is bounded.
    """

    def __init__(self, reap_timeout: float = GRACE_SECONDS):
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()
        self._closed = False
        self._reap_timeout = reap_timeout

    def run(self, invocation: Invocation, timeout: float) -> RunResult:
        """Run ``invocation``; write its files (mode 0600) first.

        Raises:
            Cancelled: the runner is closed (before or while the command ran).
            OSError: the command could not be started (e.g. not installed).
        """
        for path, content in invocation.files.items():
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as file:
                file.write(content)
        env = {**os.environ, "LC_ALL": "C", **invocation.env}
        with self._lock:
            if self._closed:
                raise Cancelled("stopped")
            process = subprocess.Popen(
                list(invocation.argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                text=True,
                errors="replace",
                start_new_session=True,
            )
            self._running.add(process)
        timed_out = False
        try:
            try:
                stdout, stderr = process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(process)
                stdout, stderr = self._reap(process)
        finally:
            with self._lock:
                self._running.discard(process)
                closed = self._closed
        if closed and (timed_out or process.returncode is None or process.returncode < 0):
            raise Cancelled("stopped")
        if timed_out:
            # Only complete lines: a line cut off mid-number would give a wrong value.
            stdout = stdout[: stdout.rfind("\n") + 1]
            return RunResult(None, stdout, stderr, timed_out=True)
        return RunResult(process.returncode, stdout, stderr)

    def _reap(self, process: subprocess.Popen) -> tuple[str, str]:
        try:
            return process.communicate(timeout=self._reap_timeout)
        except subprocess.TimeoutExpired:
            # Something escaped the group and holds the pipes: give up on the output.
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
            try:
                process.wait(self._reap_timeout)
            except subprocess.TimeoutExpired:
                logger.error("ipmi: process %d did not end after SIGKILL", process.pid)
            return "", ""

    def close(self) -> None:
        """Refuse new commands and kill the running ones (their ``run`` raises Cancelled)."""
        with self._lock:
            self._closed = True
            running = list(self._running)
        for process in running:
            _kill_group(process)


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError:  # the group is gone and its id reused: kill the child alone
        process.kill()


class _WorkerPool:
    """A few named threads taking jobs from a queue; :meth:`close` joins them, bounded."""

    def __init__(self, size: int, name: str):
        self._size = size
        self._name = name
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, function: Callable[..., Any], *args: Any) -> Future:
        """Queue ``function(*args)``; raises RuntimeError once closed."""
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the worker pool is closed")
            if len(self._threads) < self._size:
                thread = threading.Thread(
                    target=self._work, daemon=True, name=f"{self._name}-{len(self._threads)}"
                )
                self._threads.append(thread)
                thread.start()
            self._jobs.put((future, function, args))
        return future

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, function, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(function(*args))
            except BaseException as error:  # noqa: BLE001 - handed to the waiter
                future.set_exception(error)

    def close(self, timeout: float) -> bool:
        """Cancel queued jobs, let running ones end, join the threads; True if all ended."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[0].cancel()
        for _ in threads:
            self._jobs.put(None)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [thread.name for thread in threads if thread.is_alive()]
        if alive:
            logger.error("ipmi: threads %s did not end within %g s", alive, timeout)
        return not alive

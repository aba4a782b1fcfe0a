"""Appending records to a file so that threads, processes and crashes cannot garble it."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Union

try:
    import fcntl
except ImportError:  # Windows: threads are still serialised, processes are not
    fcntl = None  # type: ignore[assignment]

PathLike = Union[str, "os.PathLike[str]"]


class LineAppender:
    """Appends whole lines to one file.

    Each call is one ``write`` to a file opened in append mode, under a thread lock and an
    exclusive ``flock`` (so several processes, e.g. pytest-xdist workers, can share the file).
    A last line left unfinished by a crash is terminated first, so it cannot swallow the next
    record. ``fsync=True`` also forces the data to disk before returning.
    """

    def __init__(self, path: PathLike, *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._lock = threading.Lock()

    def append(self, lines: list[str]) -> None:
        """Append ``lines`` (without newlines) as one block."""
        if not lines:
            return
        data = ("\n".join(lines) + "\n").encode("utf-8")
        with self._lock, open(self.path, "a+b") as file:
            if fcntl is not None:
                fcntl.flock(file.fileno(), fcntl.LOCK_EX)
            try:
                if file.seek(0, os.SEEK_END) > 0:
                    file.seek(-1, os.SEEK_END)
                    if file.read(1) != b"\n":
                        data = b"\n" + data
                file.write(data)
                file.flush()
                if self.fsync:
                    os.fsync(file.fileno())
            finally:
                if fcntl is not None:
                    fcntl.flock(file.fileno(), fcntl.LOCK_UN)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

"""File helpers shared by the modules that keep data on disk (state, spool, streamer)."""

from __future__ import annotations

import datetime
import os
from pathlib import Path


def move_aside(path: Path, sidecar_suffixes: tuple[str, ...] = ()) -> Path:
    """Rename a damaged ``path`` to ``<name>.corrupt-<UTC timestamp>`` and return the new path.

    Files named ``path`` + suffix (e.g. SQLite's ``-wal`` and ``-shm``) move along
    with it, keeping the same suffix, so tools can still open the set together.
    """
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    counter = 0
    while aside.exists():
        counter += 1
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{counter}")
    os.replace(path, aside)
    for suffix in sidecar_suffixes:
        sidecar = Path(str(path) + suffix)
        if sidecar.exists():
            os.replace(sidecar, Path(str(aside) + suffix))
    return aside

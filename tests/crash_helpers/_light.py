"""Import ``mqsync.<module>`` without running ``mqsync/__init__.py``.

The crash tests start hundreds of short processes; importing the whole SDK (kombu,
protobuf, ...) in each would make them slow. Registering a bare ``mqsync`` package whose
``__path__`` points at the source tree lets ``import mqsync.state`` load just that module
(and ``mqsync.errors`` and ``mqsync.timeseries``), whatever the package's ``__init__`` re-exports.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def install() -> None:
    """Make ``import mqsync.<module>`` load modules from the source tree, skipping
    ``mqsync/__init__.py``."""
    if "mqsync" in sys.modules:
        return
    package = types.ModuleType("mqsync")
    package.__path__ = [str(ROOT / "mqsync")]  # type: ignore[attr-defined]
    sys.modules["mqsync"] = package

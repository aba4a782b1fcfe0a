"""What the official benchmark peers share: the interop peers' plumbing, and the points.

The peers run in the interop virtualenv (``tests/interop/official.py``) and reuse
``tests/interop/peers/_common.py``: JSON lines on stdout, exit codes, a hard deadline that
ends a hung peer, stdin read inside the event loop.  A benchmark peer connects once,
prints ``{"event": "ready"}``, then answers each JSON command line on stdin with one
``{"event": "result", ...}`` line, and stops its client at the end of stdin.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "interop" / "peers"))

import _common  # noqa: E402  (tests/interop/peers/_common.py)

#: How long a peer may live in all (its hard deadline); a full benchmark takes minutes.
LIFETIME_S = 3600.0
#: How long a peer waits for the next command before it gives up.
COMMAND_WAIT_S = 1800.0


def point_value(index: int, metric_index: int) -> float:
    """The value of point ``index`` of metric number ``metric_index`` (as in bench/)."""
    return index * 0.5 + metric_index


async def commands(stdin: _common.StdinLines) -> Any:
    """Yield the JSON commands read from stdin until its end (or an empty line)."""
    while True:
        line = await stdin.readline(COMMAND_WAIT_S)
        if line is None or not line.strip():
            return
        yield json.loads(line)

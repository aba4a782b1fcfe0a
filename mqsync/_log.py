"""Logging helpers: warnings that a remote peer can trigger at any rate."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

#: Seconds between two lines of one :class:`Throttled` warning.
THROTTLE_INTERVAL = 5.0


class Throttled:
    """Logs a warning at most once per ``interval`` seconds and says how many it left out.

    For input from the network (a malformed message, a refused request): each event is
    still counted by its owner, but a peer that sends thousands of them cannot flood the
    log.  The first event is always logged.
    """

    def __init__(self, logger: logging.Logger, interval: float = THROTTLE_INTERVAL):
        self._logger = logger
        self._interval = interval
        self._lock = threading.Lock()
        self._next = 0.0
        self._left_out = 0

    def warning(self, message: str, *args: Any) -> None:
        with self._lock:
            now = time.monotonic()
            if now < self._next:
                self._left_out += 1
                return
            left_out, self._left_out = self._left_out, 0
            self._next = now + self._interval
        if left_out:
            message += "; %d similar warning(s) left out"
            args += (left_out,)
        self._logger.warning(message, *args)

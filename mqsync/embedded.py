"""The embedded network: an in-process manager on kombu's ``memory://`` transport.

A client created without a URL joins it, so a Source and a Sink in one script work with
no broker at all.  The manager starts with the first such client and stops with the
last one; nothing of it outlives the clients that use it.
"""

from __future__ import annotations

import logging
import threading

logger = logging.getLogger(__name__)

URL = "memory://"

_lock = threading.Lock()
_users = 0
_manager = None


def acquire() -> str:
    """Join the embedded network (starting its manager if needed); return its URL."""
    global _users, _manager
    with _lock:
        if _manager is None:
            from .manager import Manager

            manager = Manager(URL, token="manager-embedded")
            manager.start()
            _manager = manager
            logger.info("embedded MetricQ network started (in-process, %s)", URL)
        _users += 1
        return URL


def release() -> None:
    """Leave the embedded network; the last client to leave stops its manager."""
    global _users, _manager
    with _lock:
        _users -= 1
        if _users > 0 or _manager is None:
            return
        manager, _manager = _manager, None
    manager.stop()
    logger.info("embedded MetricQ network stopped")


def manager():
    """The running embedded manager, or None (for configuring it in tests and CLIs)."""
    return _manager

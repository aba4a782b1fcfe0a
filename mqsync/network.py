"""The in-process network seam: where a client without a broker URL connects.

A client created without a URL joins an in-process MetricQ network on kombu's
``memory://`` transport.  The client layer knows only this seam: a provider that hands out
the network's URL when a client starts and is told when the client stops.  The provider
lives a layer above, with the servers: :mod:`mqsync.embedded` runs an in-process manager
from the first client's start to the last client's stop, and importing :mod:`mqsync`
installs it.
"""

from __future__ import annotations

import threading
from typing import Protocol

from .errors import ConfigError


class InProcessNetwork(Protocol):
    """What the seam needs of a provider."""

    def acquire(self) -> str:
        """Join the network (starting it if needed) and return its broker URL."""

    def release(self) -> None:
        """Leave the network (the last client to leave may stop it)."""


_lock = threading.Lock()
_provider: InProcessNetwork | None = None


def install(provider: InProcessNetwork | None) -> InProcessNetwork | None:
    """Make ``provider`` the in-process network of clients without a URL; return the old one.

    ``None`` removes it: a client without a URL then fails to start with a clear error.
    """
    global _provider
    with _lock:
        previous, _provider = _provider, provider
    return previous


def acquire() -> str:
    """Join the in-process network and return its URL.

    Raises:
        ConfigError: no in-process network is installed.
    """
    provider = _provider
    if provider is None:
        raise ConfigError("no broker URL given and no in-process network installed: pass a "
                          "URL such as 'amqp://user:password@host/'")
    return provider.acquire()


def release() -> None:
    """Leave the in-process network joined by :func:`acquire`."""
    provider = _provider
    if provider is not None:
        provider.release()

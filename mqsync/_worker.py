"""A worker thread that runs user callbacks off the IO thread."""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable

logger = logging.getLogger(__name__)

_STOP = object()


class Worker:
    """One daemon thread running submitted calls in order.

    User code (``on_data``, RPC handlers) runs here so that a slow or failing callback
    never stalls the IO thread's heartbeats and acks.  A call that raises is logged with
    its traceback and counted in :attr:`errors`; the worker goes on.
    """

    def __init__(self, name: str):
        self.name = name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._discard = False
        #: Calls that raised.
        self.errors = 0

    def start(self) -> None:
        """Start the thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
            self._thread.start()

    def submit(self, function: Callable[..., Any], *args: Any) -> None:
        """Queue ``function(*args)``; never blocks."""
        self._queue.put((function, args))

    def backlog(self) -> int:
        """Calls queued and not yet started."""
        return self._queue.qsize()

    def stop(self, timeout: float = 10.0, *, finish: bool = True) -> bool:
        """End the thread after the calls queued so far (``finish``) or after the current one.

        Returns whether the thread ended within ``timeout``.  Idempotent.
        """
        thread = self._thread
        if thread is None:
            return True
        self._discard = not finish
        self._queue.put(_STOP)
        if thread is threading.current_thread():
            return False
        thread.join(timeout)
        if thread.is_alive():
            logger.error("%s: worker did not end within %g s (a callback is stuck)", self.name,
                         timeout)
            return False
        return True

    def _main(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._discard:
                continue
            function, args = item
            try:
                function(*args)
            except Exception:
                self.errors += 1
                logger.exception("%s: callback %s failed", self.name,
                                 getattr(function, "__qualname__", function))

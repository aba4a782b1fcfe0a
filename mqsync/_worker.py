"""A worker thread that runs user callbacks off the IO thread."""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable

logger = logging.getLogger(__name__)

_STOP = object()


class Worker:
    """A daemon thread (or ``threads`` of them) running submitted calls.

    With one thread the calls run in the order submitted; with more, each is taken by the
    next free thread.

    User code (``on_data``, RPC handlers) runs here so that a slow or failing callback
    never stalls the IO thread's heartbeats and acks.  A call that raises is logged with
    its traceback and counted in :attr:`errors`; the worker goes on.
    """

    def __init__(self, name: str, threads: int = 1):
        self.name = name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._size = threads
        self._threads: list[threading.Thread] = []
        self._discard = False
        self._errors_lock = threading.Lock()
        #: Calls that raised.
        self.errors = 0

    def start(self) -> None:
        """Start the thread(s) (once)."""
        if not self._threads:
            self._threads = [
                threading.Thread(target=self._main, daemon=True,
                                 name=self.name if self._size == 1 else f"{self.name}-{i}")
                for i in range(self._size)]
            for thread in self._threads:
                thread.start()

    def submit(self, function: Callable[..., Any], *args: Any) -> None:
        """Queue ``function(*args)``; never blocks."""
        self._queue.put((function, args))

    def backlog(self) -> int:
        """Calls queued and not yet started."""
        return self._queue.qsize()

    def stop(self, timeout: float = 10.0, *, finish: bool = True) -> bool:
        """End the threads after the calls queued so far (``finish``) or after the current
        ones.

        Returns whether they ended within ``timeout``.  Idempotent.
        """
        if not self._threads:
            return True
        self._discard = not finish
        for _ in self._threads:
            self._queue.put(_STOP)
        deadline = time.monotonic() + timeout
        current = threading.current_thread()
        for thread in self._threads:
            if thread is not current:
                thread.join(max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in self._threads if thread is not current):
            logger.error("%s: worker did not end within %g s (a callback is stuck)", self.name,
                         timeout)
            return False
        return current not in self._threads

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
                with self._errors_lock:
                    self.errors += 1
                logger.exception("%s: callback %s failed", self.name,
                                 getattr(function, "__qualname__", function))

"""Remote procedure calls: the ``rpc_handler`` decorator, dispatch and reply matching.

MetricQ RPCs are JSON objects with a ``"function"`` key.  A request carries a
``correlation_id`` and a ``reply_to`` queue; the reply goes to that queue through the
default exchange with the same ``correlation_id``.  A reply never has a ``function``
key; a failure is ``{"error": "<text>"}``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import json
import logging
import threading
import uuid
from concurrent.futures import Future
from typing import Any, Callable, ContextManager

from .errors import InvalidMessage, InvalidRequest, RPCError, UnknownFunction

logger = logging.getLogger(__name__)

_MARK = "_mqsync_rpc_functions"


def rpc_handler(*functions: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a method as the handler of the RPCs named ``functions``.

    The method is called on a worker thread with the request's arguments as keyword
    arguments, plus ``from_token`` (the sender's token).  It returns a JSON-serialisable
    ``dict`` (the reply) or ``None`` (reply ``{}``); an exception becomes an
    ``{"error": ...}`` reply.  Raise :class:`~mqsync.errors.InvalidRequest` (or another
    :class:`~mqsync.errors.MqsyncError`) for bad input from the caller: it is logged as one
    WARNING line; any other exception counts as a bug and is logged with its traceback.
    Arguments a handler does not take are refused before any handler runs.  Handlers of
    base classes run first; at most one handler of a function may return a value.

    Example::

        class MySource(mqsync.IntervalSource):
            @mqsync.rpc_handler("config")
            def on_config(self, rate: float = 1.0, **config):
                self.period = 1 / rate
    """
    if not functions or not all(isinstance(f, str) and f for f in functions):
        raise TypeError("rpc_handler() needs one or more RPC function names, e.g. "
                        "@rpc_handler('config')")

    def decorate(method: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(method):
            raise TypeError(
                f"rpc_handler {method.__qualname__} is a coroutine function; mqsync calls "
                "handlers on a worker thread, so define it with plain 'def'")
        setattr(method, _MARK, getattr(method, _MARK, ()) + functions)
        return method

    return decorate


class RPCDispatcher:
    """Collects the ``@rpc_handler`` methods of a class and its bases."""

    _rpc_handlers: dict[str, tuple[str, ...]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        handlers: dict[str, list[str]] = {}
        for klass in reversed(cls.__mro__):
            for name, attribute in vars(klass).items():
                for function in getattr(attribute, _MARK, ()):
                    names = handlers.setdefault(function, [])
                    if name not in names:
                        names.append(name)
        cls._rpc_handlers = {function: tuple(names) for function, names in handlers.items()}

    def rpc_functions(self) -> list[str]:
        """The RPC functions this object answers."""
        return sorted(self._rpc_handlers)

    def rpc_dispatch(self, function: str, **arguments: Any) -> Any:
        """Call every handler of ``function``; return the one non-``None`` result.

        Raises:
            UnknownFunction: no handler is registered for ``function``.
            InvalidRequest: a handler does not take these arguments.
        """
        names = self._rpc_handlers.get(function)
        if not names:
            raise UnknownFunction(f"unknown RPC function {function[:60]!r}", function=function)
        handlers = [getattr(self, name) for name in names]
        for handler in handlers:  # all or none: no handler runs on arguments one refuses
            try:
                _signature(handler).bind(**arguments)
            except TypeError as error:
                raise InvalidRequest(f"{function}: {error}", function=function) from None
        result = None
        with self._callbacks_serialized():
            for handler in handlers:
                value = handler(**arguments)
                if value is not None:
                    if result is not None:
                        raise RPCError(f"more than one handler of {function!r} returned a "
                                       "value", function=function)
                    result = value
        return result

    def _callbacks_serialized(self) -> ContextManager[Any]:
        """The context handlers run in (a :class:`~mqsync.Client` holds its callback lock)."""
        return contextlib.nullcontext()


def _signature(method: Any) -> inspect.Signature:
    """The signature of a handler as called (a bound method: without ``self``)."""
    function = getattr(method, "__func__", None)
    return inspect.signature(method) if function is None else _method_signature(function)


@functools.lru_cache(maxsize=1024)
def _method_signature(function: Callable[..., Any]) -> inspect.Signature:
    signature = inspect.signature(function)
    return signature.replace(parameters=list(signature.parameters.values())[1:])


def encode_json(payload: dict[str, Any]) -> bytes:
    """Serialise an RPC body; NaN and infinity are refused (JSON has no such values)."""
    return json.dumps(payload, allow_nan=False, separators=(",", ":")).encode("utf-8")


def decode_json(body: bytes | str) -> dict[str, Any]:
    """Parse an RPC body into a dict; raise :class:`InvalidMessage` if it is none."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidMessage(f"RPC body is not JSON: {error}") from None
    except RecursionError:
        raise InvalidMessage("RPC body nests too deeply") from None
    if not isinstance(payload, dict):
        raise InvalidMessage(f"RPC body must be a JSON object, got {type(payload).__name__}")
    return payload


class PendingCalls:
    """Matches replies to requests by correlation id.

    Thread-safe: requests are registered on user threads, replies resolved on the IO
    thread.  A call waits on a future; a broadcast collects replies through a callback
    until its owner forgets it.
    """

    def __init__(self, token: str):
        self._prefix = f"mqsync-rpc-{token}-"
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self._waiting: dict[str, tuple[Callable[[str, dict[str, Any]], None],
                                          Future[dict[str, Any]] | None]] = {}
        #: Replies whose correlation id nobody waits for (late, or foreign).
        self.unmatched = 0

    def new_id(self) -> str:
        """A correlation id unique within this process and token."""
        return f"{self._prefix}{uuid.uuid4().hex[:12]}{next(self._counter)}"

    def expect_one(self, correlation_id: str, function: str) -> Future[dict[str, Any]]:
        """Register a call; the future gets the reply dict or an :class:`RPCError`."""
        future: Future[dict[str, Any]] = Future()

        def resolve(from_token: str, reply: dict[str, Any]) -> None:
            self.forget(correlation_id)
            if "error" in reply:
                future.set_exception(
                    RPCError(f"{function} failed at {from_token or 'the responder'}: "
                             f"{reply['error']}", function=function, token=from_token))
            else:
                future.set_result(reply)

        with self._lock:
            self._waiting[correlation_id] = (resolve, future)
        return future

    def expect_many(self, correlation_id: str,
                    callback: Callable[[str, dict[str, Any]], None]) -> None:
        """Register a broadcast; ``callback(from_token, reply)`` runs for every reply."""
        with self._lock:
            self._waiting[correlation_id] = (callback, None)

    def forget(self, correlation_id: str) -> None:
        """Stop waiting for replies to ``correlation_id``."""
        with self._lock:
            self._waiting.pop(correlation_id, None)

    def resolve(self, correlation_id: str | None, from_token: str, reply: dict[str, Any]) -> bool:
        """Hand a reply to whoever waits for it; return whether anyone did."""
        with self._lock:
            callback, _ = self._waiting.get(correlation_id or "", (None, None))
        if callback is None:
            self.unmatched += 1
            logger.debug("reply from %s with unknown correlation id %s", from_token,
                         correlation_id)
            return False
        callback(from_token, reply)
        return True

    @staticmethod
    def fail_unsent(reply: Future[dict[str, Any]], sent: Future[Any]) -> None:
        """Fail ``reply`` with the error of ``sent`` if the request never reached the broker.

        ``sent`` is the future of the request's publish; without this a call whose request
        was refused would wait for its whole timeout.
        """
        def settle(done: Future[Any]) -> None:
            error = done.exception()
            if error is not None and not reply.done():
                reply.set_exception(error)

        sent.add_done_callback(settle)

    def fail_all(self, error: BaseException) -> None:
        """Fail every waiting call (the client stops or lost its connection for good)."""
        with self._lock:
            waiting, self._waiting = self._waiting, {}
        for _, future in waiting.values():
            if future is not None and not future.done():
                future.set_exception(error)

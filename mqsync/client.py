"""Client: a token on a MetricQ network that sends and answers RPCs.

Every other role (Source, Sink, the manager) is a Client.  A Client owns one IO
thread for its management connection and one worker thread for RPC handlers.  Its
blocking calls (:meth:`Client.rpc`, :meth:`Client.get_metrics`, ...) hand the request to
the IO thread and wait for the reply with a timeout, in the caller's thread.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import signal
import socket
import sys
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, ContextManager, Iterable, Iterator, Mapping, Sequence, TypeVar

from . import network
from ._log import Throttled
from ._version import __version__
from ._worker import Worker
from .connection import IOThread, time_left
from .errors import (
    ClientStopped,
    ConnectFailed,
    InvalidMessage,
    InvalidRequest,
    MqsyncError,
    RPCTimeout,
)
from .names import (
    BROADCAST_EXCHANGE,
    MANAGEMENT_EXCHANGE,
    MAX_ROUTING_KEY_BYTES,
    check_metric_name,
    check_url,
    derive_address,
    join_urls,
    redact_url,
)
from .rpc import PendingCalls, RPCDispatcher, decode_json, encode_json, rpc_handler
from .timeseries import DurationLike, Timedelta, Timestamp

logger = logging.getLogger(__name__)

_C = TypeVar("_C", bound="Client")

#: Seconds a worker thread gets to end at stop even when the stop's timeout is used up.
WORKER_GRACE = 0.2


def _nothing() -> None:
    pass


class Client(RPCDispatcher):
    """A participant of a MetricQ network, identified by its token.

    Args:
        token: this client's name on the network, e.g. ``"source-sysinfo-node01"``.
        url: the broker, e.g. ``"amqp://user:pass@host/"``; ``None`` joins the embedded
            in-process network (kombu's ``memory://`` transport with an in-process
            manager), which needs no broker.  The nodes of a RabbitMQ cluster are given
            as a list (or joined with ``;``, ``"amqp://u:p@h1/;amqp://u:p@h2/"``): every
            connection of the client fails over to the next node that accepts when its
            node goes, with the guarantees of a reconnect.
        add_uuid: append ``.<uuid>`` to the token (transient clients such as Sinks).
        rpc_timeout: how long an RPC waits for its reply unless the call says otherwise.
        connect_timeout: how long :meth:`start` waits for the connection and registration.
        heartbeat: the AMQP heartbeat interval (0 turns heartbeats off).
        reconnect_timeout: how long the client goes without a connection before it gives
            up and stops with :class:`~mqsync.errors.ConnectFailed`.  These four are
            durations as :meth:`Timedelta.coerce <mqsync.Timedelta.coerce>` takes them (a
            number of seconds, a string with a unit such as ``"2min"``, a ``Timedelta``);
            their attributes hold float seconds.
        serialize_callbacks: run this client's callbacks one at a time (the default): RPC
            handlers (``config`` among them), :meth:`IntervalSource.update
            <mqsync.IntervalSource.update>` and a Sink's ``on_chunk``/``on_data``/``on_end``
            hold :attr:`callback_lock` while they run, so a configuration never changes in
            the middle of an update, as on the official client's single event loop.
            ``False`` lets them run at the same time, on their own threads.

    Use it as a context manager (``with Client(...) as client:``), or call :meth:`start`
    and :meth:`stop`, or :meth:`run` to serve until SIGINT/SIGTERM.
    """

    #: Threads that run RPC handlers: one keeps them in arrival order.
    rpc_workers = 1

    def __init__(
        self,
        token: str,
        url: str | Sequence[str] | None = None,
        *,
        add_uuid: bool = False,
        rpc_timeout: DurationLike = 60.0,
        connect_timeout: DurationLike = 30.0,
        heartbeat: DurationLike = 20.0,
        reconnect_timeout: DurationLike = 60.0,
        client_version: str | None = None,
        serialize_callbacks: bool = True,
    ):
        if not isinstance(token, str) or not token or any(c.isspace() for c in token):
            raise ValueError(f"invalid token {token!r}: must be a non-empty string without "
                             "white space, e.g. 'source-sysinfo-node01'")
        if url is not None:
            url = check_url(join_urls(url))
        self.token = f"{token}.{_uuid_hex()}" if add_uuid else token
        self._url = url
        self._network_url: str | None = None
        self.rpc_timeout = Timedelta.coerce(rpc_timeout, name="rpc_timeout", positive=True).s
        self.connect_timeout = Timedelta.coerce(connect_timeout, name="connect_timeout",
                                                positive=True).s
        self.heartbeat = Timedelta.coerce(heartbeat, name="heartbeat", negative=False).s
        self.reconnect_timeout = Timedelta.coerce(reconnect_timeout, name="reconnect_timeout",
                                                  positive=True).s
        self.client_version = client_version
        self.starting_time = Timestamp.now()
        #: The configuration received last (``config`` RPC or registration), without
        #: ``from_token``.
        self.config: dict[str, Any] = {}
        #: Held while mqsync runs one of this client's callbacks (unless the client was made
        #: with ``serialize_callbacks=False``).  Reentrant.  A :meth:`Source.task
        #: <mqsync.Source.task>` runs for the client's whole life and so outside it: hold
        #: it (``with self.callback_lock:``) around each step that reads the configuration.
        self.callback_lock = threading.RLock()
        self.serialize_callbacks = bool(serialize_callbacks)
        self._pending = PendingCalls(self.token)
        self._management: IOThread | None = None
        self._rpc_worker = Worker(f"mqsync-{self.token}-rpc", threads=self.rpc_workers)
        self._lifecycle = threading.Lock()
        self._state = "new"  # new -> starting -> running -> stopping -> stopped
        self._stop_requested = False
        self._starter: threading.Thread | None = None
        self._start_done = threading.Event()
        self._stopped_event = threading.Event()
        self._failure: BaseException | None = None
        self._counters: collections.Counter[str] = collections.Counter()
        self._counter_lock = threading.Lock()
        self._remote_log = Throttled(logger)

    def __repr__(self) -> str:
        where = redact_url(self._url) if self._url else "embedded"
        return f"<{type(self).__name__} {self.token!r} {where} {self._state}>"

    # -- names ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The broker URL with any password masked (``memory://`` when embedded)."""
        return redact_url(self._network_url or self._url or "memory://")

    @property
    def rpc_queue(self) -> str:
        """This client's inbox: ``<token>-rpc``."""
        return f"{self.token}-rpc"

    @property
    def failure(self) -> BaseException | None:
        """Why the client stopped by itself (a lost connection, a failing source), or None."""
        return self._failure

    @property
    def running(self) -> bool:
        """Whether the client is started and not stopped."""
        return self._state == "running"

    @property
    def _connected(self) -> bool:
        """Whether RPCs can be made now: running, or registering inside :meth:`start`."""
        return self._state in ("starting", "running") and not self._stop_requested

    def _callbacks_serialized(self) -> ContextManager[Any]:
        """The context a callback runs in: :attr:`callback_lock`, or nothing if opted out."""
        return self.callback_lock if self.serialize_callbacks else contextlib.nullcontext()

    # -- counters ------------------------------------------------------------------

    def _count(self, name: str, amount: int = 1) -> None:
        with self._counter_lock:
            self._counters[name] += amount

    def stats(self) -> dict[str, int]:
        """Counters of what went wrong or was dropped (malformed messages, handler errors...).

        Always present: ``lost_points`` (points this client accepted and will never deliver
        or hand on), ``reconnects`` (all connections) with ``<connection>_reconnects`` per
        connection, ``refused_messages`` (inbound messages refused before decoding, e.g.
        compressed ones), ``rpc_handler_errors`` and ``unmatched_replies``.
        """
        with self._counter_lock:
            counters = dict(self._counters)
        counters.setdefault("lost_points", 0)
        counters["rpc_handler_errors"] = self._rpc_worker.errors
        counters["unmatched_replies"] = self._pending.unmatched
        total = 0
        for name, io in self._io_threads().items():
            reconnects = io.reconnects if io is not None else 0
            counters[f"{name}_reconnects"] = reconnects
            total += reconnects
            if io is not None and io.blocked_count:
                counters[f"{name}_blocked"] = io.blocked_count
        counters["reconnects"] = total
        counters["refused_messages"] = sum(io.refused for io in self._io_threads().values()
                                           if io is not None)
        return counters

    def _io_threads(self) -> dict[str, IOThread | None]:
        """The client's connections by name (subclasses add theirs), for :meth:`stats`."""
        return {"management": self._management}

    # -- life cycle ----------------------------------------------------------------

    def start(self, timeout: float | None = None) -> None:
        """Connect, register and start serving RPCs; return when ready.

        Raises:
            ConnectFailed: the broker or the manager could not be reached in time.
            ClientStopped: :meth:`stop` was called (from another thread) meanwhile.
            RuntimeError: the client was started before.
        """
        with self._lifecycle:
            if self._state != "new":
                raise RuntimeError(f"{self!r} cannot be started again; create a new client")
            self._state = "starting"
            self._starter = threading.current_thread()
        timeout = self.connect_timeout if timeout is None else timeout
        try:
            self._network_url = self._url if self._url is not None else network.acquire()
            self._management = IOThread(
                self._network_url, f"mqsync-{self.token}-mgmt", self._setup_management,
                heartbeat=self.heartbeat, give_up=self.reconnect_timeout,
                connect_timeout=min(timeout, 30.0), on_fatal=self._on_fatal,
                on_reconnect=self._on_management_reconnect,
            )
            self._rpc_worker.start()
            self._raise_if_stop_requested()
            self._management.start(timeout)
            self._raise_if_stop_requested()
            self._on_start()
            with self._lifecycle:
                self._raise_if_stop_requested()
                self._state = "running"
        except BaseException as error:
            if isinstance(error, ClientStopped) and self._stop_requested:
                logger.info("%s: stopped while starting", self.token)
            else:
                logger.error("%s: start failed: %s", self.token, error)
            self._teardown(time.monotonic() + 5.0)
            raise
        finally:
            self._start_done.set()
        logger.info("%s: connected to %s", self.token, self.url)

    def _raise_if_stop_requested(self) -> None:
        if self._stop_requested:
            raise ClientStopped(f"{self.token} was stopped while starting")

    def stop(self, timeout: float = 10.0) -> None:
        """Flush what is pending, close every connection and join every thread.

        Returns within about ``timeout`` seconds, whatever the broker does.  Idempotent;
        safe to call from any thread, including a callback of this client.  Called while
        :meth:`start` runs in another thread, it makes that start fail with
        :class:`ClientStopped` and waits (up to ``timeout``) until it has torn down.
        """
        deadline = time.monotonic() + timeout
        with self._lifecycle:
            state = self._state
            if state == "starting":
                self._stop_requested = True
            elif state == "new":
                self._state = "stopped"
            elif state == "running":
                self._state = "stopping"
        if state == "new":
            self._stopped_event.set()
            return
        if state == "starting":
            self._pending.fail_all(ClientStopped(f"{self.token} was stopped while starting"))
            if threading.current_thread() is not self._starter:
                self._start_done.wait(timeout)
            return
        if state == "running":
            self._teardown(deadline)

    def _teardown(self, deadline: float) -> None:
        """Stop what was built, within ``deadline`` (a ``time.monotonic()`` value)."""
        with self._lifecycle:
            self._state = "stopping"
        try:
            self._on_stop(time_left(deadline))
        except Exception:
            logger.exception("%s: error while stopping", self.token)
        finally:
            self._pending.fail_all(ClientStopped(f"{self.token} stopped"))
            if self._management is not None:
                self._management.stop(time_left(deadline))
            self._rpc_worker.stop(max(time_left(deadline), WORKER_GRACE))
            if self._network_url is not None and self._url is None:
                network.release()
                self._network_url = None
            with self._lifecycle:
                self._state = "stopped"
            self._stopped_event.set()
            logger.info("%s: stopped", self.token)

    def run(self, catch_signals: Iterable[str] = ("SIGINT", "SIGTERM")) -> None:
        """Start, serve until a signal or :meth:`stop`, then stop.

        Signal handlers are installed only when called from the main thread.

        Raises:
            ConnectFailed: the start failed, or the connection was lost for good.
        """
        try:
            with self._stopping_on(catch_signals):
                self.start()
                while not self._stopped_event.wait(0.5) and self._failure is None:
                    pass
        finally:
            self.stop()
        if self._failure is not None:
            raise self._failure

    def wait(self, timeout: float | None = None,
             catch_signals: Iterable[str] = ("SIGINT", "SIGTERM")) -> bool:
        """Block until the client stopped (or failed); return whether it did in time.

        Called from the main thread, a signal in ``catch_signals`` (Ctrl-C, ``kill``)
        stops the client and ends the wait, returning True, instead of raising
        ``KeyboardInterrupt`` out of the wait; ``catch_signals=()`` leaves the signals
        alone.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._stopping_on(catch_signals) as signalled:
            # in slices: a signal handler runs only between the main thread's bytecodes
            while not self._stopped_event.wait(0.5 if deadline is None
                                               else min(0.5, time_left(deadline))):
                if deadline is not None and time.monotonic() >= deadline:
                    break
        if signalled:
            self.stop()
        return self._stopped_event.is_set()

    @contextlib.contextmanager
    def _stopping_on(self, names: Iterable[str]) -> Iterator[list[str]]:
        """While in the block, the signals ``names`` end the client's wait (main thread
        only); yields the list of signals received."""
        received: list[str] = []
        previous: dict[int, Any] = {}

        def on_signal(signum: int, frame: Any) -> None:
            name = signal.Signals(signum).name
            logger.info("%s: received %s, stopping", self.token, name)
            received.append(name)
            self._stopped_event.set()

        if threading.current_thread() is threading.main_thread():
            for name in names:
                signum = getattr(signal, name)
                previous[signum] = signal.signal(signum, on_signal)
        try:
            yield received
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def __enter__(self: _C) -> _C:
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def _on_start(self) -> None:
        """Subclass hook: runs in :meth:`start` once the management connection is up."""

    def _on_stop(self, timeout: float) -> None:
        """Subclass hook: runs first in :meth:`stop` (flush data, stop data threads)."""

    def _on_fatal(self, error: BaseException) -> None:
        self._failure = error
        self._pending.fail_all(error)
        self._stopped_event.set()

    def _on_management_reconnect(self) -> None:
        """Subclass hook: runs on the IO thread after the management connection came back."""

    def _check_running(self) -> None:
        if self._failure is not None:
            raise ConnectFailed(f"{self.token}: {self._failure}")
        self._raise_if_stop_requested()
        # starting: _on_start registers; stopping: _on_stop may still call
        if self._state not in ("starting", "running", "stopping"):
            raise ClientStopped(f"{self.token} is not running ({self._state}); call start() "
                                "or use it as a context manager")

    # -- management connection -----------------------------------------------------

    def _declare_management(self, channel: Any) -> None:
        """Check that the manager's exchanges exist (the manager overrides this)."""
        for exchange, kind in ((MANAGEMENT_EXCHANGE, "topic"), (BROADCAST_EXCHANGE, "fanout")):
            try:
                channel.exchange_declare(exchange=exchange, type=kind, durable=True,
                                         auto_delete=False, passive=True)
            except Exception as error:
                raise ConnectFailed(f"exchange {exchange!r} not found on {self.url}: is "
                                    "mqsync-manager running on this network?") from error

    def _setup_management(self, channel: Any) -> None:
        self._declare_management(channel)
        channel.queue_declare(queue=self.rpc_queue, exclusive=True, auto_delete=False,
                              durable=False)
        channel.queue_bind(queue=self.rpc_queue, exchange=BROADCAST_EXCHANGE, routing_key="#")
        assert self._management is not None
        self._management.consume(self.rpc_queue, self._on_management_message, no_ack=True)

    def _on_management_message(self, message: Any, settle: Callable[[], None] = _nothing,
                               ) -> None:
        """IO thread: a request goes to the RPC worker, a reply resolves its caller.

        ``settle()`` is called once the message is dealt with (a request: after its reply
        was sent); a consumer with acks passes one that acks the message.
        """
        properties = message.properties
        from_token = properties.get("app_id") or ""
        try:
            payload = decode_json(message.body)
        except InvalidMessage as error:
            self._refuse_remote("malformed_rpc_messages", "dropped a message from %r on %s: %s",
                                from_token or "?", self.rpc_queue, error)
            settle()
            return
        correlation_id = properties.get("correlation_id")
        if "function" in payload:
            reply_to = properties.get("reply_to")
            if not reply_to:
                self._refuse_remote("malformed_rpc_messages", "RPC %.60r from %r has no "
                                    "reply_to; ignored", payload.get("function"), from_token)
                settle()
                return
            self._rpc_worker.submit(self._serve_request, payload, from_token, correlation_id,
                                    reply_to, settle)
        else:
            settle()
            self._pending.resolve(correlation_id, from_token, payload)


    def _refuse_remote(self, counter: str, message: str, *args: Any) -> None:
        """Count bad input from the network and log it: one WARNING line, no traceback,
        rate-limited (a peer can send it at any rate)."""
        self._count(counter)
        self._remote_log.warning("%s: " + message + " (%s: %d)", self.token, *args, counter,
                                 self._counters[counter])

    def _serve_request(self, payload: dict[str, Any], from_token: str,
                       correlation_id: str | None, reply_to: str,
                       settle: Callable[[], None] = _nothing) -> None:
        """RPC worker: run the handlers, publish the reply, then ``settle()`` the request.

        Bad input from the caller (an :class:`~mqsync.errors.MqsyncError` such as
        :class:`~mqsync.errors.InvalidRequest`, or arguments the handler does not take) is
        answered and logged as one WARNING line; any other exception is a bug of the handler
        and keeps its traceback (ERROR).
        """
        function = payload.pop("function")
        try:
            if not isinstance(function, str):
                raise InvalidRequest(f"'function' must be a string, got {function!r:.40}")
            if "from_token" in payload:
                raise InvalidRequest(f"{function}: a request must not carry 'from_token' (the "
                                     "receiver sets it from the sender's app_id)")
            self._before_request(settle)
            result = self.rpc_dispatch(function, from_token=from_token, **payload)
            reply = {} if result is None else result
            if not isinstance(reply, Mapping):
                raise TypeError(f"handler of {function!r} returned {type(reply).__name__}, "
                                "expected a dict or None")
            if "function" in reply:
                raise TypeError(f"handler of {function!r} returned a reply with a 'function' "
                                "key, which the receiver would take for a request")
            body = encode_json(dict(reply))
        except Exception as error:
            self._count("rpc_errors_answered")
            if isinstance(error, MqsyncError):
                self._refuse_remote("rpc_requests_refused", "RPC %.60r from %r refused: %s",
                                    function, from_token, error)
            else:
                logger.error("%s: RPC %.60r from %r failed: %s", self.token, function,
                             from_token, error, exc_info=True)
            body = encode_json({"error": str(error) or type(error).__name__})
        if self._management is not None:
            self._management.publish(body, "", reply_to, correlation_id=correlation_id,
                                     app_id=self.token, content_type="application/json")
        settle()

    def _before_request(self, settle: Callable[[], None]) -> None:
        """Subclass hook: runs on the RPC worker before a request's handlers (an exception
        is answered as the handlers' would be); ``settle`` is the request's."""

    # -- built-in handlers ----------------------------------------------------------

    @rpc_handler("discover")
    def _on_discover(self, **_: Any) -> dict[str, Any]:
        now = Timestamp.now()
        response = {
            "alive": True,
            "currentTime": now.datetime.isoformat(),
            "startingTime": self.starting_time.datetime.isoformat(),
            "uptime": (now - self.starting_time).ns,
            "metricqVersion": f"mqsync/{__version__}",
            "pythonVersion": "{}.{}.{}".format(*sys.version_info[:3]),
            "hostname": socket.gethostname(),
        }
        if self.client_version is not None:
            response["version"] = self.client_version
        return response

    @rpc_handler("config")
    def _on_config_store(self, from_token: str | None = None, **config: Any) -> None:
        self.config = config

    # -- calling RPCs ----------------------------------------------------------------

    def rpc(self, function: str, timeout: float | None = None, **arguments: Any) -> dict[str, Any]:
        """Call ``function`` at the manager and return its reply.

        Argument names are sent as given (MetricQ uses camelCase, e.g. ``dataQueue``).

        Raises:
            RPCError: the manager answered with an error.
            RPCTimeout: no reply within ``timeout`` (default :attr:`rpc_timeout`) seconds.
            ClientStopped: the client is not running.
        """
        return self._call(MANAGEMENT_EXCHANGE, function, function, timeout, arguments)

    def rpc_direct(self, token: str, function: str, timeout: float | None = None,
                   **arguments: Any) -> dict[str, Any]:
        """Call ``function`` at the client ``token`` (through its ``<token>-rpc`` queue)."""
        return self._call("", f"{token}-rpc", function, timeout, arguments)

    def rpc_broadcast(self, function: str, timeout: float = 2.0,
                      **arguments: Any) -> dict[str, dict[str, Any]]:
        """Broadcast ``function`` to every client and collect replies for ``timeout`` s.

        Returns ``{token: reply}``; replies that are errors are kept as ``{"error": ...}``.
        """
        self._check_running()
        replies: dict[str, dict[str, Any]] = {}
        lock = threading.Lock()

        def collect(from_token: str, reply: dict[str, Any]) -> None:
            with lock:
                replies[from_token] = reply

        correlation_id = self._pending.new_id()
        self._pending.expect_many(correlation_id, collect)
        try:
            self._publish_request(BROADCAST_EXCHANGE, function, function, correlation_id,
                                  arguments, timeout).result(timeout)
            time.sleep(max(0.0, timeout))
        finally:
            self._pending.forget(correlation_id)
        with lock:
            return dict(replies)

    def discover(self, timeout: float = 2.0) -> dict[str, dict[str, Any]]:
        """Ask every client on the network to introduce itself; ``{token: answer}``."""
        return self.rpc_broadcast("discover", timeout=timeout)

    def get_metrics(
        self,
        selector: str | Sequence[str] | None = None,
        metadata: bool = True,
        historic: bool | None = None,
        timeout: float | None = None,
        prefix: str | None = None,
        infix: str | None = None,
        limit: int | None = None,
        hidden: bool | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Metrics known to the manager, ``{name: metadata}`` (empty dicts without metadata).

        ``selector`` is a regular expression or a list of names; ``prefix`` and ``infix``
        filter by name, ``historic`` by whether a database keeps the metric.
        """
        arguments: dict[str, Any] = {"format": "object" if metadata else "array"}
        for key, value in (("selector", selector if isinstance(selector, (str, type(None)))
                            else list(selector)), ("historic", historic), ("prefix", prefix),
                           ("infix", infix), ("limit", limit), ("hidden", hidden)):
            if value is not None:
                arguments[key] = value
        metrics = self.rpc("get_metrics", timeout=timeout, **arguments)["metrics"]
        if isinstance(metrics, list):
            return {name: {} for name in metrics}
        return dict(metrics)

    def _publish_request(self, exchange: str, routing_key: str, function: str,
                         correlation_id: str, arguments: Mapping[str, Any],
                         timeout: float) -> Future[Any]:
        """Publish a request that expires with its caller's ``timeout``: the broker drops
        it unread (it is never executed) once nobody waits for the reply any more."""
        if "function" in arguments:
            raise TypeError("RPC arguments must not contain 'function'")
        if len(routing_key.encode("utf-8")) > MAX_ROUTING_KEY_BYTES:
            raise ValueError(f"routing key {routing_key[:40]!r}... is longer than "
                             f"{MAX_ROUTING_KEY_BYTES} bytes")
        try:
            body = encode_json({"function": function, **arguments})
        except (TypeError, ValueError) as error:
            raise TypeError(f"arguments of RPC {function!r} are not JSON-serialisable: "
                            f"{error}") from None
        assert self._management is not None
        expiry: dict[str, Any] = {"expiration": str(max(1, math.ceil(timeout * 1000)))} \
            if math.isfinite(timeout) else {}
        return self._management.publish(body, exchange, routing_key,
                                        correlation_id=correlation_id, reply_to=self.rpc_queue,
                                        app_id=self.token, content_type="application/json",
                                        **expiry)

    def _call(self, exchange: str, routing_key: str, function: str, timeout: float | None,
              arguments: Mapping[str, Any]) -> dict[str, Any]:
        self._check_running()
        timeout = self.rpc_timeout if timeout is None else timeout
        correlation_id = self._pending.new_id()
        reply = self._pending.expect_one(correlation_id, function)
        try:
            sent = self._publish_request(exchange, routing_key, function, correlation_id,
                                         arguments, timeout)
        except BaseException:
            self._pending.forget(correlation_id)
            raise
        self._pending.fail_unsent(reply, sent)
        try:
            return reply.result(timeout)
        except TimeoutError:
            raise RPCTimeout(f"{self.token}: no reply to RPC {function!r} within "
                             f"{timeout:g} s") from None
        finally:
            self._pending.forget(correlation_id)



def _uuid_hex() -> str:
    import uuid

    return uuid.uuid4().hex


__all__ = ["Client", "check_metric_name", "derive_address"]

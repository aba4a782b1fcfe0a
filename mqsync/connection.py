"""The IO thread: the only thread that touches one kombu connection.

py-amqp (under kombu) is not thread-safe, so every AMQP operation of a connection runs
on the thread that owns it.  Other threads hand work over with :meth:`IOThread.submit`
(which returns a :class:`concurrent.futures.Future`) and wake the loop through a pipe,
so a publish or an RPC leaves at once instead of after the next poll.

The loop::

    wait until the socket is readable, work was handed over, or a tick is due
    deliver every complete inbound message (callbacks run here: keep them short)
    run the handed-over work in order
    run the periodic ticks (flush timers) and the heartbeat check

On a lost connection the thread reconnects with exponential backoff, re-runs the
``setup`` callback (declarations and consumers) and goes on; after ``give_up`` seconds
without a connection it stops, and every pending and later call fails with
:class:`~mqsync.errors.ConnectFailed`.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import select
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, TypeVar
from urllib.parse import urlsplit, urlunsplit

import kombu

from .errors import ClientStopped, ConnectFailed

logger = logging.getLogger(__name__)

T = TypeVar("T")
Setup = Callable[[Any], None]
"""Called on the IO thread with the channel after every (re)connect."""

#: How long the loop waits for the broker when nothing else is due.  Inbound data wakes it
#: at once on socket transports; only the in-process memory transport polls at this rate.
POLL_INTERVAL = 0.005
#: The longest pause between two reconnect attempts (they start at 0.1 s and double), so a
#: client is back at most this long after its broker.
MAX_RECONNECT_DELAY = 2.0
#: Inbound messages delivered in one round before handed-over work gets its turn.
INBOUND_BUDGET = 256


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``******`` (for logs and reprs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    host = netloc[-1]
    return urlunsplit(parts._replace(netloc=f"{user}:******@{host}"))


class _Tick:
    __slots__ = ("callback", "interval", "due")

    def __init__(self, callback: Callable[[], None], interval: float):
        self.callback = callback
        self.interval = interval
        self.due = time.monotonic() + interval


class IOThread:
    """One thread owning one kombu :class:`~kombu.Connection` and one channel.

    Args:
        url: broker URL (``amqp://``, ``amqps://`` or ``memory://``); credentials stay
            inside this object and are never logged.
        name: thread name, also used in log messages.
        setup: called on the IO thread with the channel after each (re)connect; declares
            queues and starts consumers.  An exception from the first setup fails
            :meth:`start`; after a reconnect it is logged and the connection retried.
        heartbeat: AMQP heartbeat interval in seconds (0 disables).
        give_up: seconds without a connection after which the thread stops for good.
        on_reconnect: called on the IO thread after a successful reconnect and setup.
        on_fatal: called (on the IO thread) with the error when the thread gives up.
    """

    def __init__(
        self,
        url: str,
        name: str,
        setup: Setup | None = None,
        *,
        heartbeat: float = 20.0,
        connect_timeout: float = 10.0,
        give_up: float = 60.0,
        prefetch_count: int = 0,
        on_reconnect: Callable[[], None] | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
    ):
        self._url = url
        self.name = name
        self._setup = setup
        self._heartbeat = heartbeat
        self._connect_timeout = connect_timeout
        self._give_up = give_up
        self._prefetch_count = prefetch_count
        self._on_reconnect = on_reconnect
        self._on_fatal = on_fatal

        self._ops: collections.deque[tuple[Callable[[Any], Any], Future | None]] = \
            collections.deque()
        self._ops_lock = threading.Lock()
        self._wake_pending = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._ticks: list[_Tick] = []
        self._consumers: dict[str, kombu.Consumer] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._connection: kombu.Connection | None = None
        self._channel: Any = None
        self._fatal: BaseException | None = None
        self._closed = False
        self._connection_errors: tuple[type[BaseException], ...] = (OSError,)
        self._channel_errors: tuple[type[BaseException], ...] = ()
        self._socket_transport = False
        #: Number of reconnects after the first connect.
        self.reconnects = 0
        #: Incremented on every (re)connect: work tied to one channel (an ack of a delivery
        #: tag) checks it and is dropped when the channel it belongs to is gone.
        self.generation = 0

    def __repr__(self) -> str:
        return f"<IOThread {self.name} {redact_url(self._url)}>"

    # -- life cycle ---------------------------------------------------------------

    @property
    def url(self) -> str:
        """The broker URL with the password masked."""
        return redact_url(self._url)

    @property
    def channel(self) -> Any:
        """The channel; only valid on the IO thread."""
        return self._channel

    @property
    def alive(self) -> bool:
        """Whether the thread runs and has not given up."""
        return self._thread is not None and self._thread.is_alive() and self._fatal is None

    def start(self, timeout: float = 30.0) -> None:
        """Connect, run ``setup`` and start the loop; raise :class:`ConnectFailed` on failure."""
        if self._thread is not None:
            raise RuntimeError(f"{self.name} was already started")
        started: Future = Future()
        self._thread = threading.Thread(
            target=self._main, args=(started,), name=self.name, daemon=True
        )
        self._thread.start()
        try:
            started.result(timeout)
        except BaseException as error:
            self.stop(timeout=5.0)
            if isinstance(error, ConnectFailed):
                raise
            if isinstance(error, TimeoutError):
                raise ConnectFailed(f"{self.name}: no connection to {self.url} "
                                    f"within {timeout:g} s") from None
            raise ConnectFailed(f"{self.name}: cannot connect to {self.url}: {error}") from error

    def stop(self, timeout: float = 10.0) -> None:
        """Run the work handed over so far, close the connection and join the thread.

        Idempotent.  Work handed over after this call fails with :class:`ClientStopped`.
        """
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            # A final no-op marks the end of the queue: everything before it runs first.
            try:
                self.submit(lambda channel: None).result(timeout)
            except Exception as error:  # noqa: BLE001 - we stop anyway, but say why
                logger.warning("%s: pending work not finished before stop: %s", self.name, error)
        self._stop.set()
        self._wake()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                logger.error("%s: IO thread did not end within %g s", self.name, timeout)
                return
        self._close_pipe()

    # -- handing work over ------------------------------------------------------------

    def submit(self, operation: Callable[[Any], T]) -> Future:
        """Run ``operation(channel)`` on the IO thread; return a future of its result."""
        future: Future = Future()
        if self._fatal is not None:
            future.set_exception(ConnectFailed(f"{self.name}: {self._fatal}"))
            return future
        if self._stop.is_set() or self._closed:
            future.set_exception(ClientStopped(f"{self.name} is stopped"))
            return future
        with self._ops_lock:
            self._ops.append((operation, future))
            wake = not self._wake_pending
            self._wake_pending = True
        if wake:
            self._wake()
        return future

    def post(self, operation: Callable[[Any], Any]) -> None:
        """Run ``operation(channel)`` on the IO thread; nobody waits for the result.

        The data paths use this instead of :meth:`submit` (no future per chunk or ack).
        An error is logged; a connection error runs it again after reconnecting.
        """
        if self._fatal is not None or self._stop.is_set() or self._closed:
            logger.debug("%s: dropped work handed over after the end", self.name)
            return
        with self._ops_lock:
            self._ops.append((operation, None))
            wake = not self._wake_pending
            self._wake_pending = True
        if wake:
            self._wake()

    @property
    def acks_multiple(self) -> bool:
        """Whether ``basic_ack(tag, multiple=True)`` acks every earlier delivery too.

        True on AMQP brokers; kombu's in-process transports ack only the one tag.
        """
        return self._socket_transport

    def call(self, operation: Callable[[Any], T], timeout: float | None) -> T:
        """Run ``operation(channel)`` on the IO thread and wait for its result."""
        if threading.current_thread() is self._thread:
            return operation(self._channel)
        future = self.submit(operation)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise TimeoutError(f"{self.name}: no result within {timeout} s") from None

    def publish(
        self,
        body: bytes,
        exchange: str,
        routing_key: str,
        *,
        headers: dict | None = None,
        content_type: str | None = None,
        content_encoding: str | None = None,
        **properties: Any,
    ) -> Future:
        """Publish one message from the IO thread; the future completes once it is sent."""

        def operation(channel: Any) -> None:
            message = channel.prepare_message(
                body, None, content_type, content_encoding, headers, properties
            )
            channel.basic_publish(message, exchange=exchange, routing_key=routing_key)

        return self.submit(operation)

    def consume(self, queue: str, on_message: Callable[[Any], None], *, no_ack: bool) -> None:
        """Start consuming ``queue``; call on the IO thread (from ``setup`` or an operation).

        ``on_message(message)`` runs on the IO thread with a kombu message and must be
        quick; an exception from it is logged and the message left to its owner.
        """

        def guarded(message: Any) -> None:
            try:
                on_message(message)
            except Exception:
                logger.exception("%s: consumer of %s failed on a message", self.name, queue)

        consumer = kombu.Consumer(
            self._channel, queues=[kombu.Queue(queue, no_declare=True)], on_message=guarded,
            no_ack=no_ack, auto_declare=False,
        )
        consumer.consume()
        self._consumers[queue] = consumer

    def cancel(self, queue: str) -> None:
        """Stop consuming ``queue``; call on the IO thread."""
        consumer = self._consumers.pop(queue, None)
        if consumer is not None:
            consumer.cancel()

    def probe(self, operation: Callable[[Any], Any], timeout: float | None) -> bool:
        """Run ``operation(channel)`` on a temporary channel; False if the broker refused it.

        For checks that fail with a channel error (a passive declare of something missing),
        which would otherwise close the IO thread's own channel.
        """

        def on_temporary_channel(channel: Any) -> bool:
            assert self._connection is not None
            temporary = self._connection.channel()
            try:
                operation(temporary)
                return True
            except self._channel_errors:
                return False
            finally:
                with contextlib.suppress(*self._channel_errors, *self._connection_errors):
                    temporary.close()

        return bool(self.call(on_temporary_channel, timeout))

    def add_tick(self, callback: Callable[[], None], interval: float) -> None:
        """Call ``callback()`` on the IO thread about every ``interval`` seconds."""
        self.submit(lambda channel: self._ticks.append(_Tick(callback, interval)))

    # -- the loop -----------------------------------------------------------------

    def _wake(self) -> None:
        # A closed pipe means the thread is gone: there is nothing to wake.
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\0")

    def _close_pipe(self) -> None:
        if self._closed:
            return
        self._closed = True
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError as error:
                logger.debug("%s: closing wake pipe: %s", self.name, error)

    def _connect(self) -> None:
        connection = kombu.Connection(
            self._url,
            heartbeat=self._heartbeat or None,
            connect_timeout=self._connect_timeout,
            transport_options={"polling_interval": POLL_INTERVAL},
        )
        connection.connect()
        try:
            channel = connection.channel()
            if self._prefetch_count:
                channel.basic_qos(0, self._prefetch_count, False)
            self._connection, self._channel = connection, channel
            self._socket_transport = getattr(connection.connection, "sock", None) is not None
            # py-amqp reads the socket before every publish when the broker may send
            # connection.blocked; this loop reads everything the broker sends anyway.
            capabilities = getattr(connection.connection, "client_properties", {}).get(
                "capabilities")
            if isinstance(capabilities, dict):
                capabilities["connection.blocked"] = False
            self._consumers = {}
            self._connection_errors = (OSError, *connection.connection_errors)
            self._channel_errors = tuple(connection.channel_errors)
            self.generation += 1
            if self._setup is not None:
                self._setup(channel)
        except BaseException:
            self._connection, self._channel = None, None
            _close_quietly(connection)
            raise

    def _main(self, started: Future) -> None:
        try:
            self._connect()
        except BaseException as error:
            started.set_exception(error)
            return
        started.set_result(None)
        while not self._stop.is_set():
            try:
                self._loop()
            except Exception as error:
                if self._stop.is_set():
                    break
                if isinstance(error, _ChannelClosed):
                    logger.warning("%s: the broker closed the channel: %s", self.name,
                                   error.__cause__)
                else:
                    logger.warning("%s: connection to %s lost: %s", self.name, self.url, error)
                if not self._reconnect():
                    break
        self._shutdown()

    def _loop(self) -> None:
        connection = self._connection
        assert connection is not None
        raw = connection.connection
        sock = getattr(raw, "sock", None)
        transport = getattr(raw, "transport", None)
        ssl_pending = getattr(sock, "pending", None)
        waitables = [self._wake_r] if sock is None else [self._wake_r, sock]
        heartbeat_due = time.monotonic()
        while not self._stop.is_set():
            timeout = self._next_timeout()
            readable, _, _ = select.select(waitables, [], [], timeout)
            if self._wake_r in readable:
                self._drain_wake_pipe()
            if sock is None or sock in readable or (ssl_pending and ssl_pending()):
                self._deliver(connection, sock)
            self._run_ops()
            self._run_ticks()
            now = time.monotonic()
            if self._heartbeat and now >= heartbeat_due and transport is not None:
                connection.heartbeat_check()
                heartbeat_due = now + self._heartbeat / 4

    def _next_timeout(self) -> float:
        timeout = POLL_INTERVAL if self._connection_is_polled() else 1.0
        if self._heartbeat:
            timeout = min(timeout, self._heartbeat / 4)
        if self._ticks:
            timeout = min(timeout, max(0.0, min(t.due for t in self._ticks) - time.monotonic()))
        return timeout

    def _connection_is_polled(self) -> bool:
        raw = self._connection.connection if self._connection is not None else None
        return getattr(raw, "sock", None) is None

    def _deliver(self, connection: kombu.Connection, sock: Any) -> None:
        for _ in range(INBOUND_BUDGET):
            try:
                # The socket is readable (or the transport is polled): a frame is there,
                # but a message may span several frames, so allow a little time.
                connection.drain_events(timeout=0.05 if sock is not None else 0)
            except TimeoutError:
                return
            if sock is not None and not _readable(sock):
                return

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _run_ops(self) -> None:
        with self._ops_lock:
            ops, self._ops = self._ops, collections.deque()
            self._wake_pending = False
        while ops:
            operation, future = ops.popleft()
            if future is not None and not future.running() \
                    and not future.set_running_or_notify_cancel():
                continue
            try:
                result = operation(self._channel)
            except self._channel_errors as error:
                _settle_failed(future, error, self.name)
                if not getattr(self._channel, "is_open", True):
                    self._requeue(ops)
                    raise _ChannelClosed(error) from error
            except self._connection_errors:
                # The connection failed under this operation: run it again after reconnecting.
                self._requeue(collections.deque([(operation, future)]) + ops)
                raise
            except BaseException as error:  # noqa: BLE001 - handed to the caller
                _settle_failed(future, error, self.name)
            else:
                if future is not None:
                    future.set_result(result)

    def _requeue(self, ops: collections.deque) -> None:
        with self._ops_lock:
            ops.extend(self._ops)
            self._ops = ops
            self._wake_pending = True

    def _run_ticks(self) -> None:
        now = time.monotonic()
        for tick in self._ticks:
            if now >= tick.due:
                tick.due = now + tick.interval
                try:
                    tick.callback()
                except self._connection_errors:
                    raise
                except Exception:
                    logger.exception("%s: periodic task %r failed", self.name, tick.callback)

    def _reconnect(self) -> bool:
        _close_quietly(self._connection)
        self._connection, self._channel = None, None
        deadline = time.monotonic() + self._give_up
        delay = 0.1
        attempt = 0
        while not self._stop.is_set():
            attempt += 1
            try:
                self._connect()
            except Exception as error:
                if time.monotonic() + delay > deadline:
                    self._fail(ConnectFailed(
                        f"{self.name}: gave up reconnecting to {self.url} after "
                        f"{self._give_up:g} s ({attempt} attempts): {error}"))
                    return False
                logger.info("%s: reconnect attempt %d failed: %s; next in %.1f s",
                            self.name, attempt, error, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, MAX_RECONNECT_DELAY)
                continue
            self.reconnects += 1
            logger.warning("%s: reconnected to %s after %d attempt(s)", self.name, self.url,
                           attempt)
            if self._on_reconnect is not None:
                try:
                    self._on_reconnect()
                except Exception:
                    logger.exception("%s: reconnect callback failed", self.name)
            return True
        return False

    def _fail(self, error: BaseException) -> None:
        logger.error("%s", error)
        self._fatal = error
        with self._ops_lock:
            ops, self._ops = self._ops, collections.deque()
        for _, future in ops:
            if future is not None and not future.done():
                future.set_exception(error)
        if self._on_fatal is not None:
            try:
                self._on_fatal(error)
            except Exception:
                logger.exception("%s: failure callback failed", self.name)

    def _shutdown(self) -> None:
        with self._ops_lock:
            ops, self._ops = self._ops, collections.deque()
        for _, future in ops:
            if future is not None and not future.done():
                future.set_exception(ClientStopped(f"{self.name} stopped"))
        _close_quietly(self._connection)
        self._connection, self._channel = None, None


def _settle_failed(future: Future | None, error: BaseException, name: str) -> None:
    if future is not None:
        future.set_exception(error)
    else:
        logger.error("%s: work on the IO thread failed: %s", name, error, exc_info=error)


class _ChannelClosed(Exception):
    """The broker closed the channel after an error: reconnect to get a fresh one."""


def _readable(sock: Any) -> bool:
    pending = getattr(sock, "pending", None)
    if pending is not None and pending():
        return True
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


def _close_quietly(connection: kombu.Connection | None) -> None:
    if connection is None:
        return
    try:
        connection.release()
    except Exception as error:  # noqa: BLE001 - the connection is going away anyway
        logger.debug("closing connection: %s", error)

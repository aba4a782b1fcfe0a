"""The IO thread: the only thread that touches one kombu connection.

py-amqp (under kombu) is not thread-safe, so every AMQP operation of a connection runs
on the thread that owns it.  Other threads hand work over with :meth:`IOThread.submit`
(which returns a :class:`concurrent.futures.Future`) or :meth:`IOThread.post` (nobody
waits) and wake the loop through a pipe, so a publish or an RPC leaves at once instead
of after the next poll.

The loop::

    wait (selectors) until the socket is readable, work was handed over, or a tick is due
    deliver every complete inbound message (callbacks run here: keep them short)
    run the handed-over work in order
    run the periodic ticks (flush timers) and the heartbeat check

The thread reads and writes in batches, because with the GIL every system call costs a
busy sender thread's switch interval (5 ms) before the IO thread may go on: py-amqp reads
``READ_AHEAD`` bytes per ``recv`` (a burst of deliveries or confirms in one call, not
three calls per frame), and a publisher writes its backlog inside :meth:`IOThread.corked`
(one ``sendall`` per ``CORK_BYTES``, not one per message).

The URL may name several nodes of a RabbitMQ cluster (``amqp://h1/;amqp://h2/``, kombu's
failover form): a connection attempt tries them in turn, from the node used last, and takes
the first that accepts; after a lost connection the next node is tried first, since the
one just lost is the likeliest to be down.  Everything that holds for a reconnect (setup
runs again, work in flight runs again, publishers resend what was not confirmed) holds for
a fail-over to another node.

On a lost connection, and on any unexpected error in the loop, the thread reconnects
with exponential backoff and jitter (``RECONNECT_DELAY_MIN`` doubling up to
``MAX_RECONNECT_DELAY`` seconds between attempts; a connection that dies again soon after
it was made does not reset the backoff), re-runs the ``setup`` callback (declarations,
consumers, resending) and goes on; after ``give_up`` seconds without a connection it
stops, and every pending and later call fails with :class:`~mqsync.errors.ConnectFailed`.

Work handed over with :meth:`submit` that was running when the connection failed runs
again after the reconnect (at least once); work handed over with :meth:`post` is not
run again: its owner restores what it needs in ``setup``.

A broker in a memory or disk alarm sends ``connection.blocked``: :attr:`IOThread.blocked`
turns true, publishers hold their data until ``connection.unblocked`` (the
``on_unblocked`` callback), and every socket write is bounded by ``write_timeout``, so
the thread never hangs in a write.

Nothing that comes off the wire makes the thread reconnect.  kombu would inflate a body
whose ``compression`` header asks for it (a few hundred kilobytes can ask for gigabytes)
and raise inside the loop when it cannot: here no body is ever inflated.  MetricQ never
compresses, so a message with a ``compression`` header, or one kombu cannot take apart, is
refused: logged (one WARNING line, rate-limited), counted in :attr:`IOThread.refused` and
rejected without requeue, never handed to a consumer.

Life cycle: ``new → running → stopping → stopped`` (or ``failed`` after giving up).
:meth:`IOThread.stop` always wins: called at any time, from any thread, any number of
times, it returns within its timeout plus a short grace.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import random
import selectors
import socket
import struct
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Iterator, TypeVar

import kombu
import kombu.message

from ._log import Throttled
from .errors import ClientStopped, ConnectFailed
from .names import check_url, redact_url, split_urls

logger = logging.getLogger(__name__)

T = TypeVar("T")
Setup = Callable[[Any], None]
"""Called on the IO thread with the channel after every (re)connect."""

#: How long the loop waits for the broker when nothing else is due.  Inbound data wakes it
#: at once on socket transports; only the in-process memory transport polls at this rate.
POLL_INTERVAL = 0.005
#: The first pause before a reconnect attempt; it doubles with every failed attempt.
RECONNECT_DELAY_MIN = 0.1
#: The longest pause between two reconnect attempts, so a client is back at most this long
#: after its broker.  Each pause is jittered (between half and all of it), so that many
#: clients of one broker do not reconnect in lockstep.
MAX_RECONNECT_DELAY = 2.0
#: A connection that lived at least this long counts as healthy: the next loss starts the
#: backoff from the beginning.
HEALTHY_AFTER = 10.0
#: Inbound messages delivered in one round before handed-over work gets its turn.
INBOUND_BUDGET = 256
#: Seconds a graceful close may take at stop (within the stop's timeout) before the socket
#: is simply dropped.
CLOSE_TIMEOUT = 1.0
#: Seconds :meth:`IOThread.stop` may exceed its timeout (ending the thread).
STOP_GRACE = 0.5


def time_left(deadline: float) -> float:
    """Seconds from now until ``deadline`` (a :func:`time.monotonic` value), at least 0."""
    return max(0.0, deadline - time.monotonic())


def body_bytes(body: bytes | bytearray | memoryview | str) -> bytes:
    """A message body as bytes (kombu hands over an empty body as ``""`` on some transports)."""
    return body.encode("latin-1") if isinstance(body, str) else bytes(body)


class _Tick:
    __slots__ = ("callback", "interval", "due")

    def __init__(self, callback: Callable[[], None], interval: float):
        self.callback = callback
        self.interval = interval
        self.due = time.monotonic() + interval


class IOThread:
    """One thread owning one kombu :class:`~kombu.Connection` and one channel.

    Args:
        url: broker URL (``amqp://``, ``amqps://`` or ``memory://``), or several nodes'
            URLs joined with ``;`` to fail over between; credentials stay inside this object
            and are never logged.
        name: thread name, also used in log messages.
        setup: called on the IO thread with the channel after each (re)connect; declares
            queues, starts consumers and resends.  An exception from the first setup fails
            :meth:`start`; after a reconnect it is logged and the connection retried.
        heartbeat: AMQP heartbeat interval in seconds (0 disables).
        connect_timeout: seconds one connection attempt may take (with several nodes: one
            round over all of them, each getting its share); also the bound on every socket
            write.
        give_up: seconds without a connection after which the thread stops for good.
        on_reconnect: called on the IO thread after a successful reconnect and setup.
        on_fatal: called (on the IO thread) with the error when the thread gives up.
        on_unblocked: called on the IO thread when the broker lifts ``connection.blocked``.
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
        on_unblocked: Callable[[], None] | None = None,
    ):
        self._url = check_url(url)
        self._urls = split_urls(self._url)
        self._node = 0  # index into _urls of the node used last
        self.name = name
        self._setup = setup
        self._heartbeat = heartbeat
        self._connect_timeout = connect_timeout
        self._give_up = give_up
        self._prefetch_count = prefetch_count
        self._on_reconnect = on_reconnect
        self._on_fatal = on_fatal
        self._on_unblocked = on_unblocked

        # Guards _ops, _wake_pending, _state and the wake pipe's descriptors.
        self._lock = threading.Lock()
        self._ops: collections.deque[tuple[Callable[[Any], Any], Future | None]] = \
            collections.deque()
        self._wake_pending = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._state = "new"
        self._ticks: list[_Tick] = []
        self._consumers: dict[str, kombu.Consumer] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started: Future | None = None
        self._connection: kombu.Connection | None = None
        self._channel: Any = None
        self._fatal: BaseException | None = None
        self._connection_errors: tuple[type[BaseException], ...] = (OSError,)
        self._channel_errors: tuple[type[BaseException], ...] = ()
        self._socket_transport = False
        self._backoff = RECONNECT_DELAY_MIN
        self._connected_at = 0.0
        self._close_deadline: float | None = None  # set by stop(): no close beyond it
        #: Number of reconnects after the first connect.
        self.reconnects = 0
        #: Reconnects that went to another node than the one lost (a cluster fail-over).
        self.failovers = 0
        #: Seconds from the last lost connection until the thread was connected (and set
        #: up) again; None before the first reconnect.
        self.last_outage: float | None = None
        #: Times the broker blocked this connection (a memory or disk alarm).
        self.blocked_count = 0
        #: Whether the broker blocks publishing on this connection right now.
        self.blocked = False
        #: Inbound messages refused before any consumer saw them (compressed, undecodable).
        self.refused = 0
        self._refusal_log = Throttled(logger)
        #: Incremented on every (re)connect: work tied to one channel (an ack of a delivery
        #: tag) checks it and is dropped when the channel it belongs to is gone.
        self.generation = 0

    def __repr__(self) -> str:
        return f"<IOThread {self.name} {redact_url(self._url)} {self._state}>"

    # -- life cycle ---------------------------------------------------------------

    @property
    def url(self) -> str:
        """The broker URL with the password masked."""
        return redact_url(self._url)

    @property
    def connected_url(self) -> str | None:
        """The URL of the node connected to now, password masked (None while connecting)."""
        return redact_url(self._urls[self._node]) if self._connection is not None else None

    @property
    def channel(self) -> Any:
        """The channel; only valid on the IO thread."""
        return self._channel

    @property
    def alive(self) -> bool:
        """Whether the thread runs and has not given up or been stopped."""
        return self._state == "running"

    def start(self, timeout: float = 30.0) -> None:
        """Connect, run ``setup`` and start the loop; raise :class:`ConnectFailed` on failure.

        Raises:
            ConnectFailed: no connection, or ``setup`` failed, within ``timeout`` seconds.
            ClientStopped: :meth:`stop` was called meanwhile.
            RuntimeError: the thread was started before.
        """
        with self._lock:
            if self._state != "new":
                if self._state in ("stopping", "stopped"):
                    raise ClientStopped(f"{self.name} was stopped before it started")
                raise RuntimeError(f"{self.name} was already started")
            self._state = "running"
            started: Future = Future()
            self._started = started
            self._thread = threading.Thread(
                target=self._main, args=(started,), name=self.name, daemon=True
            )
            self._thread.start()
        try:
            started.result(timeout)
        except BaseException as error:
            self.stop(timeout=min(timeout, 5.0))
            if isinstance(error, (ConnectFailed, ClientStopped)):
                raise
            if isinstance(error, TimeoutError):
                raise ConnectFailed(f"{self.name}: no connection to {self.url} "
                                    f"within {timeout:g} s") from None
            raise ConnectFailed(f"{self.name}: cannot connect to {self.url}: {error}") from error

    def stop(self, timeout: float = 10.0) -> bool:
        """Run the work handed over so far, close the connection and join the thread.

        Returns within ``timeout`` seconds plus a short grace, whatever the broker does,
        and says whether the thread ended.  Idempotent and safe from any thread.  Work
        handed over after this call fails with :class:`ClientStopped`.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        with self._lock:
            thread = self._thread
            started = self._started
            # Work is finished only on a connection that is up (not one still connecting).
            finish_work = (self._state == "running" and started is not None and started.done()
                           and started.exception() is None)
            if self._state in ("new", "running"):
                self._state = "stopping"
        if thread is None:
            self._finish_stop()
            return True
        if thread is threading.current_thread():
            self._stop.set()  # the loop ends after the current round; it closes the pipe
            return False
        if finish_work and thread.is_alive():
            # A final no-op marks the end of the queue: everything before it runs first.
            marker: Future[None] = Future()
            self._enqueue(lambda channel: None, marker, force=True)
            try:
                marker.result(time_left(deadline))
            except Exception as error:  # noqa: BLE001 - we stop anyway, but say why
                logger.warning("%s: pending work not finished before stop: %s", self.name,
                               str(error) or type(error).__name__)
        self._close_deadline = deadline
        self._stop.set()
        self._wake()
        thread.join(time_left(deadline) + STOP_GRACE)
        if thread.is_alive():
            logger.error("%s: IO thread did not end within %g s of stop()", self.name, timeout)
            return False
        self._finish_stop()
        return True

    def _finish_stop(self) -> None:
        with self._lock:
            if self._state != "failed":
                self._state = "stopped"
        self._close_pipe()

    def _close_pipe(self) -> None:
        # Under the lock, as every write to it: a closed descriptor number may be reused by
        # another file at once, which must never receive a wake-up byte.
        with self._lock:
            for fd in (self._wake_r, self._wake_w):
                if fd >= 0:
                    try:
                        os.close(fd)
                    except OSError as error:
                        logger.debug("%s: closing wake pipe: %s", self.name, error)
            self._wake_r = self._wake_w = -1

    # -- handing work over ------------------------------------------------------------

    def _enqueue(self, operation: Callable[[Any], Any], future: Future | None,
                 force: bool = False) -> Future | None:
        """Queue ``operation``; fail ``future`` (or drop) when the thread takes no work."""
        with self._lock:
            accepting = self._state == "running" or (force and self._state == "stopping")
            if accepting:
                self._ops.append((operation, future))
                wake = not self._wake_pending
                self._wake_pending = True
        if not accepting:
            if future is not None:
                future.set_exception(self._refusal())
            else:
                logger.debug("%s: dropped work handed over after the end", self.name)
            return future
        if wake:
            self._wake()
        return future

    def _refusal(self) -> Exception:
        if self._fatal is not None:
            return ConnectFailed(f"{self.name}: {self._fatal}")
        return ClientStopped(f"{self.name} is stopped")

    def submit(self, operation: Callable[[Any], T]) -> Future:
        """Run ``operation(channel)`` on the IO thread; return a future of its result.

        If the connection fails while it runs, it runs again after the reconnect.
        """
        future = self._enqueue(operation, Future())
        assert future is not None
        return future

    def post(self, operation: Callable[[Any], Any]) -> None:
        """Run ``operation(channel)`` on the IO thread; nobody waits for the result.

        An error is logged; it is not run again after a reconnect (``setup`` restores
        what the owner needs).  After the end it is dropped.
        """
        self._enqueue(operation, None)

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
        headers: dict[str, Any] | None = None,
        content_type: str | None = None,
        content_encoding: str | None = None,
        **properties: Any,
    ) -> Future[None]:
        """Publish one message from the IO thread; the future completes once it is sent."""

        def operation(channel: Any) -> None:
            message = channel.prepare_message(
                body, None, content_type, content_encoding, headers, properties
            )
            channel.basic_publish(message, exchange=exchange, routing_key=routing_key)

        return self.submit(operation)

    def consume(self, queue: str, on_message: Callable[[Any], None], *, no_ack: bool) -> None:
        """Start consuming ``queue``; call on the IO thread (from ``setup`` or an operation).

        ``on_message(message)`` runs on the IO thread with a kombu message whose body is
        exactly the bytes that came off the wire, and must be quick; an exception from it
        is logged and the message left to its owner.  A message the thread refuses (see
        the module docstring) never reaches it.
        """

        def guarded(message: Any) -> None:
            compression = message.headers.get("compression")
            if compression is not None:
                self._refuse(message, queue, no_ack,
                             f"compressed body ({str(compression)[:40]!r}) is not accepted")
                return
            try:
                on_message(message)
            except Exception:
                logger.exception("%s: consumer of %s failed on a message", self.name, queue)

        def undecodable(message: Any, error: BaseException) -> None:
            self._refuse(message, queue, no_ack, f"undecodable: {error!r:.200}")

        consumer = kombu.Consumer(
            self._channel, queues=[kombu.Queue(queue, no_declare=True)], on_message=guarded,
            no_ack=no_ack, auto_declare=False, on_decode_error=undecodable,
        )
        consumer.consume()
        self._consumers[queue] = consumer

    def _refuse(self, message: Any, queue: str, no_ack: bool, reason: str) -> None:
        self.refused += 1
        sender = getattr(message, "properties", {}).get("app_id")
        self._refusal_log.warning(
            "%s: refused a message on %s from %r: %s (%d refused so far)", self.name, queue,
            sender or "?", reason, self.refused)
        if not no_ack and getattr(message, "delivery_tag", None) is not None:
            with contextlib.suppress(*self._channel_errors):
                message.reject(requeue=False)

    def cancel(self, queue: str) -> None:
        """Stop consuming ``queue``; call on the IO thread."""
        consumer = self._consumers.pop(queue, None)
        if consumer is not None:
            consumer.cancel()

    def probe(self, operation: Callable[[Any], Any], timeout: float | None) -> bool:
        """Run ``operation(channel)`` on a temporary channel; False if the broker refused it.

        For checks that fail with a channel error (a passive declare of something missing),
        which would otherwise close the IO thread's own channel.  May be called on the IO
        thread (from ``setup``) too.
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

    @contextlib.contextmanager
    def corked(self) -> Iterator[None]:
        """On the IO thread: send what is published inside in as few system calls as
        possible (one per ``CORK_BYTES``), as TCP_CORK would.

        py-amqp writes each message with a ``sendall`` of its own, and each releases the
        GIL: with a busy sender thread, the IO thread then waits a switch interval (5 ms)
        to continue after every message.  Corked, a batch of messages costs one write.
        What was written inside is sent when the block ends, also when it raises (the
        messages are whole), so the broker's delivery tags stay those counted inside.
        """
        # _connection, not connection: kombu's property would connect again
        transport: Any = getattr(getattr(self._connection, "_connection", None), "_transport",
                                 None)
        write = getattr(transport, "_write", None)
        if write is None:  # an in-process transport, or no connection
            yield
            return
        parts: list[bytes] = []
        size = 0

        def collect(data: Any) -> None:
            nonlocal size
            parts.append(bytes(data))  # py-amqp reuses the buffer it passes
            size += len(data)
            if size >= CORK_BYTES:
                write(_taken(parts))  # called inside py-amqp's write(): errors handled
                size = 0

        own = "_write" in vars(transport)  # sock.sendall set on the instance, or a method
        transport._write = collect
        try:
            yield
        finally:
            if own:
                transport._write = write
            else:
                del transport._write
            if parts:
                transport.write(_taken(parts))

    def add_tick(self, callback: Callable[[], None], interval: float) -> None:
        """Call ``callback()`` on the IO thread about every ``interval`` seconds."""
        self.submit(lambda channel: self._ticks.append(_Tick(callback, interval)))

    # -- the loop -----------------------------------------------------------------

    def _wake(self) -> None:
        # Under the lock: the pipe's descriptors are closed (and may be reused by another
        # file) only under it too.  A full pipe already wakes the loop.
        with self._lock:
            if self._wake_w >= 0:
                with contextlib.suppress(BlockingIOError):
                    os.write(self._wake_w, b"\0")

    def _connect(self) -> None:
        """Connect to the first node that accepts, from the one used last; raise the last
        node's error when none does."""
        for attempt in range(len(self._urls)):
            try:
                self._connect_to(self._urls[self._node])
                return
            except Exception as error:
                last = attempt + 1 == len(self._urls)
                if not last:
                    logger.info("%s: %s did not accept: %s; trying the next node", self.name,
                                redact_url(self._urls[self._node]),
                                error or type(error).__name__)
                # the next round starts from the node after the one that failed last
                self._node = (self._node + 1) % len(self._urls)
                if last or self._stop.is_set():
                    raise

    def _connect_to(self, url: str) -> None:
        connection = kombu.Connection(
            url,
            heartbeat=self._heartbeat or None,
            # one round over every node within connect_timeout: a node that hangs (a frozen
            # VM, a port that never answers) must leave time for the others
            connect_timeout=self._connect_timeout / len(self._urls),
            # connection_name: the broker lists the connection by its thread's name
            # (mqsync-<token>-mgmt, mqsync-<token>-data), so operators see who is who.
            transport_options={"polling_interval": POLL_INTERVAL,
                               "write_timeout": self._connect_timeout,
                               "client_properties": {"connection_name": self.name}},
        )
        try:
            # One attempt: kombu's own retry would wait 2 s inside it; the backoff is ours.
            connection.ensure_connection(max_retries=0, reraise_as_library_errors=False)
            raw = connection.connection
            channel = connection.channel()
            channel.Message = _uninflated(channel.Message)
            if self._prefetch_count:
                channel.basic_qos(0, self._prefetch_count, False)
            self._connection, self._channel = connection, channel
            self._socket_transport = _socket_of(raw) is not None
            self.blocked = False
            if hasattr(raw, "on_blocked"):
                raw.on_blocked = self._blocked
                raw.on_unblocked = self._unblocked
            # The broker was told at the handshake that we handle connection.blocked; from
            # now on py-amqp need not read the socket before every publish, since this loop
            # reads everything the broker sends anyway.
            capabilities = getattr(raw, "client_properties", {}).get("capabilities")
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
            _close_quietly(connection, CLOSE_TIMEOUT)
            raise
        self._connected_at = time.monotonic()

    def _blocked(self, reason: str) -> None:
        self.blocked = True
        self.blocked_count += 1
        logger.warning("%s: the broker blocks publishing (%s); data waits until it lifts "
                       "the block", self.name, reason)

    def _unblocked(self) -> None:
        self.blocked = False
        logger.warning("%s: the broker lifted the block; publishing again", self.name)
        if self._on_unblocked is not None:
            self._on_unblocked()

    def _main(self, started: Future) -> None:
        try:
            if self._stop.is_set():
                raise ClientStopped(f"{self.name} was stopped while connecting")
            self._connect()
            if self._stop.is_set():
                raise ClientStopped(f"{self.name} was stopped while connecting")
        except BaseException as error:
            started.set_exception(error)
            self._shutdown()
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
                elif isinstance(error, self._connection_errors):
                    logger.warning("%s: connection to %s lost: %s", self.name,
                                   redact_url(self._urls[self._node]),
                                   error or type(error).__name__)
                else:
                    logger.error("%s: unexpected error in the IO loop; reconnecting", self.name,
                                 exc_info=error)
                # a channel the broker closed is no reason to leave a node that works
                if not self._reconnect(move_on=not isinstance(error, _ChannelClosed)):
                    break
        self._shutdown()

    def _loop(self) -> None:
        connection = self._connection
        assert connection is not None
        raw = connection.connection
        sock = _socket_of(raw)
        transport = getattr(raw, "_transport", None)
        with selectors.DefaultSelector() as selector, \
                selectors.DefaultSelector() as socket_only:
            selector.register(self._wake_r, selectors.EVENT_READ)
            if sock is not None:
                selector.register(sock, selectors.EVENT_READ)
                socket_only.register(sock, selectors.EVENT_READ)
            buffered = _read_ahead(transport, sock)

            def readable() -> bool:
                return buffered() or bool(socket_only.select(0))

            heartbeat_due = time.monotonic()
            while not self._stop.is_set():
                events = selector.select(0.0 if buffered() else self._next_timeout())
                woken = socket_ready = False
                for key, _ in events:
                    if key.fileobj is sock:
                        socket_ready = True
                    else:
                        woken = True
                if woken:
                    self._drain_wake_pipe()
                if sock is None:
                    self._deliver(connection, None)
                elif socket_ready or buffered():
                    self._deliver(connection, readable)
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
        raw = self._connection._connection if self._connection is not None else None
        return _socket_of(raw) is None

    def _deliver(self, connection: kombu.Connection,
                 readable: Callable[[], bool] | None) -> None:
        """Deliver what arrived; ``readable`` tells if more waits (None: a polled transport)."""
        for _ in range(INBOUND_BUDGET):
            try:
                # The socket is readable (or the transport is polled): a frame is there,
                # but a message may span several frames, so allow a little time.
                connection.drain_events(timeout=0.05 if readable is not None else 0)
            except TimeoutError:
                return
            if readable is not None and not readable():
                return

    def _drain_wake_pipe(self) -> None:
        # One read: a wake-up writes one byte, and only while none is pending, so this
        # empties the pipe (were anything left, the next select would return at once).
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 4096)

    def _run_ops(self) -> None:
        with self._lock:
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
                # The connection failed under this operation.  Work with a future runs
                # again after the reconnect; posted work was its owner's, who restores
                # it in setup (running it here too would do it twice).
                if future is not None:
                    ops.appendleft((operation, future))
                self._requeue(ops)
                raise
            except BaseException as error:  # noqa: BLE001 - handed to the caller
                _settle_failed(future, error, self.name)
            else:
                if future is not None:
                    future.set_result(result)

    def _requeue(self, ops: collections.deque) -> None:
        with self._lock:
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

    def _next_delay(self) -> float:
        """The jittered pause before the next attempt; the backoff doubles."""
        delay = self._backoff * random.uniform(0.5, 1.0)
        self._backoff = min(self._backoff * 2, MAX_RECONNECT_DELAY)
        return delay

    def _reconnect(self, move_on: bool = True) -> bool:
        lost_at = time.monotonic()
        lost_node = self._node
        _close_quietly(self._connection, 0.0)
        self._connection, self._channel = None, None
        if move_on:  # the node lost is likely down
            self._node = (self._node + 1) % len(self._urls)
        if time.monotonic() - self._connected_at >= HEALTHY_AFTER:
            self._backoff = RECONNECT_DELAY_MIN
        deadline = time.monotonic() + self._give_up
        attempt = 0
        while not self._stop.wait(self._next_delay()):
            attempt += 1
            try:
                self._connect()
            except Exception as error:
                if time.monotonic() + self._backoff / 2 > deadline:
                    self._fail(ConnectFailed(
                        f"{self.name}: gave up reconnecting to {self.url} after "
                        f"{self._give_up:g} s ({attempt} attempts): {error}"))
                    return False
                logger.info("%s: reconnect attempt %d failed: %s", self.name, attempt, error)
                continue
            self.reconnects += 1
            self.last_outage = time.monotonic() - lost_at
            if self._node != lost_node:
                self.failovers += 1
            logger.warning("%s: reconnected to %s after %d attempt(s) (%.2f s)", self.name,
                           redact_url(self._urls[self._node]), attempt, self.last_outage)
            if self._on_reconnect is not None:
                try:
                    self._on_reconnect()
                except Exception:
                    logger.exception("%s: reconnect callback failed", self.name)
            return True
        return False

    def _fail(self, error: BaseException) -> None:
        logger.error("%s", error)
        with self._lock:
            self._fatal = error
            if self._state in ("running", "stopping"):
                self._state = "failed"
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
        with self._lock:
            ops, self._ops = self._ops, collections.deque()
            if self._state in ("running", "stopping"):
                self._state = "stopping"
        for _, future in ops:
            if future is not None and not future.done():
                future.set_exception(ClientStopped(f"{self.name} stopped"))
        close_deadline = self._close_deadline
        close_within = CLOSE_TIMEOUT if close_deadline is None else \
            min(CLOSE_TIMEOUT, close_deadline - time.monotonic())
        _close_quietly(self._connection, close_within)
        self._connection, self._channel = None, None
        self._close_pipe()


class _KeepBody(kombu.message.Message):
    """Hides the ``compression`` header from kombu's constructor, which would inflate the
    body (without any bound) before mqsync sees the message; the header stays readable."""

    def __init__(self, *args: Any, headers: dict[str, Any] | None = None, **kwargs: Any):
        headers = headers or {}
        kwargs["headers"] = {k: v for k, v in headers.items() if k != "compression"}
        super().__init__(*args, **kwargs)
        self.headers = headers


_UNINFLATED: dict[type, type] = {}


def _uninflated(message_class: type) -> type:
    """The transport's message class with :class:`_KeepBody` under it (cached per class)."""
    if issubclass(message_class, _KeepBody):
        return message_class
    if message_class not in _UNINFLATED:
        # MRO: the transport's class, then _KeepBody, then kombu's Message: the transport
        # unpacks its raw message and its super().__init__ reaches _KeepBody first.
        _UNINFLATED[message_class] = type(f"Uninflated{message_class.__name__}",
                                          (message_class, _KeepBody), {})
    return _UNINFLATED[message_class]


def _settle_failed(future: Future | None, error: BaseException, name: str) -> None:
    if future is not None:
        future.set_exception(error)
    else:
        logger.error("%s: work on the IO thread failed: %s", name, error, exc_info=error)


class _ChannelClosed(Exception):
    """The broker closed the channel after an error: reconnect to get a fresh one."""


#: Bytes read from the socket at once: the frames of many messages, or of many confirms.
READ_AHEAD = 65536
#: Bytes written at once by :meth:`IOThread.corked`.
CORK_BYTES = 1 << 20


def _taken(parts: list[bytes]) -> bytes:
    """The parts joined, and the list emptied."""
    data = b"".join(parts)
    parts.clear()
    return data


def _read_ahead(transport: Any, sock: Any) -> Callable[[], bool]:
    """Let py-amqp read ``READ_AHEAD`` bytes per ``recv`` instead of a frame's parts.

    py-amqp reads each frame with three ``recv`` calls of exactly the bytes it needs; it
    keeps any surplus in its read buffer.  Asking for more at once turns a burst of
    deliveries or confirms into one system call (and one release of the GIL, which a busy
    thread then holds for up to a switch interval) instead of three per frame.

    Returns the check whether a frame waits beyond the socket: whole in py-amqp's buffer
    (which always starts at a frame: py-amqp puts a partly read frame back), or in the
    TLS layer; the loop must read those before it selects again.  Installed on py-amqp's
    plain TCP transport only (TLS reads through its own buffer).
    """
    ssl_pending = getattr(sock, "pending", None)
    recv = getattr(sock, "recv", None)
    if type(transport).__name__ == "TCPTransport" and recv is not None \
            and getattr(transport, "_quick_recv", None) == recv \
            and isinstance(getattr(transport, "_read_buffer", None), (bytes, bytearray)):
        transport._quick_recv = lambda size: recv(max(size, READ_AHEAD))

        def frame_buffered() -> bool:
            buffer = transport._read_buffer
            # a frame: type (1 byte), channel (2), payload size (4), payload, end (1)
            return len(buffer) >= 8 and len(buffer) >= 8 + _FRAME_SIZE.unpack_from(buffer, 3)[0]

        return frame_buffered
    if ssl_pending is not None:
        return lambda: bool(ssl_pending())
    return lambda: False


_FRAME_SIZE = struct.Struct(">I")


def _socket_of(raw: Any) -> Any:
    """The socket of a py-amqp connection, or None (in-process transports, or closed).

    Read through ``_transport``: py-amqp's ``sock`` and ``transport`` properties connect
    again when the connection is closed.
    """
    return getattr(getattr(raw, "_transport", None), "sock", None)


def _close_quietly(connection: kombu.Connection | None, within: float) -> None:
    """Close ``connection`` gracefully within ``within`` seconds; <= 0: drop the socket."""
    if connection is None:
        return
    sock = _socket_of(connection._connection)  # not .connection: that would connect again
    if sock is not None:
        with contextlib.suppress(OSError):
            if within <= 0.01:
                sock.shutdown(socket.SHUT_RDWR)
            else:
                sock.settimeout(within)  # a broker that does not answer the close
    try:
        connection.release()
    except Exception as error:  # noqa: BLE001 - the connection is going away anyway
        logger.debug("closing connection: %s", error)

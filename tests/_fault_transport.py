"""A kombu transport for unit tests of the IO thread and the publisher, without a broker.

``mqsync-fault://NAME`` routes messages as ``memory://`` does (exchanges, bindings and queues
of its own per NAME) and adds what RabbitMQ has and the memory transport lacks, steered by
the test through ``state = fault_state(NAME)``:

* publisher confirms: ``channel.confirm_select()``, ``channel.events`` as in py-amqp, a
  delivery tag per publish (1, 2, ... per channel); ``state.confirms`` says whether each
  publish is acked at once (``"auto"``), by the test (``"manual"``: ``state.ack(tag)``,
  ``state.nack(tag)``) or never (``"drop"``).  Confirms reach the handlers during the
  next ``drain_events`` of the connection, on the thread that drains.
* faults: ``state.fail_next_publish(error, routed=False)``, ``state.break_connection()``,
  ``state.refuse_connections``; a connection error kills the connection (every later
  drain or publish raises), a channel error closes the channel (``is_open`` is False).
* records: ``state.published`` (:class:`Published` tuples), ``state.connects``,
  ``state.refused``.

Importing this module registers the ``mqsync-fault`` alias with kombu.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from queue import Empty
from typing import Any, NamedTuple

import amqp
from kombu.transport import TRANSPORT_ALIASES, memory, virtual

SCHEME = "mqsync-fault"
CONFIRM_POLICIES = ("auto", "manual", "drop")


class Published(NamedTuple):
    generation: int  # the connection's: 1 for the first connect, 2 after a reconnect ...
    channel: int  # the channel's id on that connection
    tag: int | None  # the confirm delivery tag; None before confirm_select
    exchange: str
    routing_key: str
    body: bytes
    properties: dict  # the message's properties (delivery_mode, headers...)


class FaultState:
    """The broker side of ``mqsync-fault://<name>``: routing state, faults and records."""

    def __init__(self, name: str):
        self.name = name
        self.url = f"{SCHEME}://{name}"
        self.broker = virtual.BrokerState()  # exchanges and bindings
        self.queues: dict[str, Any] = {}
        self.confirms = "auto"
        self.refuse_connections = False
        self.connects = 0
        self.refused = 0
        self.generation = 0  # of the newest connection
        self.published: list[Published] = []
        self._broken_upto = 0  # connections of this generation or older are dead
        self._publish_failures: collections.deque = collections.deque()
        self._confirm_channel: Channel | None = None
        self._lock = threading.RLock()

    def fail_next_publish(self, error: BaseException, *, routed: bool = False) -> None:
        """The next basic_publish raises ``error``; ``routed``: after delivering the message
        (written, then the connection or channel died before its confirm)."""
        self._publish_failures.append((error, routed))

    def break_connection(self) -> None:
        """The current connection dies: its next drain_events or publish raises."""
        self._break(self.generation)

    def ack(self, tag: int, multiple: bool = False, channel: Channel | None = None) -> None:
        """Confirm ``tag`` (and all before it: ``multiple``) on the newest confirm channel."""
        self._confirm("basic_ack", tag, multiple, channel)

    def nack(self, tag: int, multiple: bool = False, channel: Channel | None = None) -> None:
        self._confirm("basic_nack", tag, multiple, channel)

    def _confirm(self, kind: str, tag: int, multiple: bool, channel: Channel | None) -> None:
        channel = channel or self._confirm_channel
        if channel is None:
            raise RuntimeError(f"{self.name}: no channel called confirm_select()")
        channel.pending_confirms.append((kind, tag, multiple))

    # -- for the transport --------------------------------------------------------------

    def _connect(self) -> int:
        with self._lock:
            if self.refuse_connections:
                self.refused += 1
                raise ConnectionRefusedError(f"{self.url}: connection refused (test)")
            self.connects += 1
            self.generation += 1
            return self.generation

    def _break(self, generation: int) -> None:
        with self._lock:
            self._broken_upto = max(self._broken_upto, generation)

    def _check_alive(self, generation: int) -> None:
        if generation <= self._broken_upto:
            raise ConnectionResetError(f"{self.url}: connection {generation} broken (test)")


_states: dict[str, FaultState] = {}
_states_lock = threading.Lock()
_unnamed = itertools.count(1)


def fault_state(name: str | None = None) -> FaultState:
    """The state of ``mqsync-fault://<name>``, made on first use; without a name a new one.

    ``name`` is a URL's host: letters, digits, ``-`` and ``.``, case-insensitive."""
    with _states_lock:
        if name is None:
            name = f"anon{next(_unnamed)}"
            while name in _states:
                name = f"anon{next(_unnamed)}"
        name = name.lower()
        if name not in _states:
            _states[name] = FaultState(name)
        return _states[name]


class Channel(memory.Channel):
    """A memory channel with confirms, ``is_open`` and the faults of its FaultState."""

    def __init__(self, connection: Transport, **kwargs: Any):
        self.fault: FaultState = connection.fault
        self.queues = self.fault.queues  # the name's queues, not memory://'s global ones
        self.events = {"basic_ack": set(), "basic_nack": set(), "basic_return": set()}
        self.pending_confirms: collections.deque = collections.deque()
        self.is_open = True
        self._next_tag: int | None = None  # set by confirm_select
        super().__init__(connection, **kwargs)

    def confirm_select(self, nowait: bool = False) -> None:
        self._next_tag = 1
        self.fault._confirm_channel = self

    def basic_publish(self, message: dict, exchange: str, routing_key: str, **kwargs: Any):
        fault, generation = self.fault, self.connection.generation
        fault._check_alive(generation)
        failure = fault._publish_failures.popleft() if fault._publish_failures else None
        if failure is not None and not failure[1]:
            self._fail(failure[0])
        body = message["body"]
        properties = {k: v for k, v in message["properties"].items() if k != "delivery_info"}
        if message.get("headers"):
            properties["headers"] = dict(message["headers"])
        tag = self._next_tag
        if tag is not None:
            self._next_tag += 1
        fault.published.append(Published(generation, self.channel_id, tag, exchange,
                                          routing_key, body, properties))
        super().basic_publish(message, exchange, routing_key, **kwargs)
        if failure is not None:
            self._fail(failure[0])
        if tag is not None and fault.confirms == "auto":
            self.pending_confirms.append(("basic_ack", tag, False))

    def _fail(self, error: BaseException) -> None:
        if isinstance(error, Transport.connection_errors):
            self.fault._break(self.connection.generation)  # dead from now on
        elif isinstance(error, Transport.channel_errors):
            self.is_open = False
        raise error

    def deliver_confirms(self) -> int:
        delivered = 0
        while self.pending_confirms:
            kind, tag, multiple = self.pending_confirms.popleft()
            for handler in list(self.events[kind]):
                handler(tag, multiple)
            delivered += 1
        return delivered

    def close(self) -> None:
        self.is_open = False
        super().close()


class Transport(memory.Transport):
    Channel = Channel
    connection_errors = (*memory.Transport.connection_errors, OSError)  # as py-amqp's
    channel_errors = (*memory.Transport.channel_errors, amqp.ChannelError)
    driver_type = driver_name = SCHEME
    polling_interval = 0.01

    def __init__(self, client: Any, **kwargs: Any):
        self.fault = fault_state(client.hostname or "localhost")
        self.generation = 0
        super().__init__(client, **kwargs)
        self.state = self.fault.broker

    def establish_connection(self):
        self.generation = self.fault._connect()
        return super().establish_connection()

    def create_channel(self, connection: Any):
        self.fault._check_alive(self.generation)
        return super().create_channel(connection)

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:
        """Deliver the pending confirms, else one message; TimeoutError after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.fault._check_alive(self.generation)
            if sum(channel.deliver_confirms() for channel in list(self.channels)):
                return
            try:
                self.cycle.get(self._deliver, timeout=timeout)
                return
            except Empty:
                pass
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError()
            time.sleep(self.polling_interval if deadline is None else
                       max(0.0, min(self.polling_interval, deadline - time.monotonic())))


TRANSPORT_ALIASES[SCHEME] = f"{__name__}:Transport"

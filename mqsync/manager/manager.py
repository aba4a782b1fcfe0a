"""mqsync-manager: the coordinator of a MetricQ network.

It declares the network's exchanges and the ``management`` queue, answers the
management RPCs of PROTOCOL.md (``source.register``, ``sink.subscribe``, ...), creates
and binds the sinks' data queues, serves client configurations and keeps metric
metadata.  It keeps no registry of live clients: cleanup rests on queue properties
(``exclusive``, ``auto-delete``, ``x-expires``).

A sink's data queue is declared as the official manager does (``durable=False,
auto_delete=True`` with ``x-expires``: it goes when its sink goes) unless the subscriber asks
for ``durable: true`` (an mqsync extension of ``sink.subscribe``; mqsync's Sink, DurableSink
and Subscriber do): then it is ``durable=True, auto_delete=False`` with ``x-expires``, so the
queue and its bindings survive a broker restart and a sink that lost its connection finds it
again.  How each queue was declared is kept in the metadata store, so a re-subscription
with ``dataQueue`` declares it identically (RabbitMQ refuses any difference with 406).

Every request is checked before it touches any state (:mod:`._requests`): arguments of the
wrong type or shape are refused with an error reply that names them, and a refused request
changes nothing.  A sink may use, unsubscribe and release only data queues it owns (it
subscribed them, or it is the Drain of the Subscriber that did; see :func:`._requests.owns`),
never the manager's own.  ``get_metrics`` selectors are matched with RE2, in time linear in
the names' length whatever the expression.  Handlers run on a small pool of RPC workers, so
one slow request does not hold up the others; queue work is handed to the data IO thread
and waited for.  The management queue is consumed only once the data connection is up, so
a request that waited in it while the manager was down finds the manager ready.

On a RabbitMQ cluster (``queue_type="quorum"``) every queue the manager declares to keep
data or requests is a replicated quorum queue: sinks' data queues (durable ones, and the
official client's transient ones too, which then live until their ``x-expires`` instead of
going with their sink), transformers' and databases' queues, and the ``management`` queue;
quorum queues take ``x-expires`` but are always durable and never auto-delete.  A queue
that exists keeps the type it was made with (a recorded declaration is repeated as
recorded; a database's queues are only declared when missing).  History response queues
stay transient classic ones.

Several managers may serve one network, one active at a time (``standby=True`` on each):
the ``management`` queue is declared with ``x-single-active-consumer``, so the broker hands
requests to one manager and, when its connection goes, to the next.  Requests are acked
only after their reply is sent: the requests a manager held when it died go to the next.
The metadata is shared through the broker: after every change the active manager publishes
the whole of it to the ``mqsync.manager.state`` queue (``x-max-length`` 1: it keeps the
newest), before the reply to the request that made the change; a manager reads it before
the first request it serves after it (re)connected.  Each one's token gets a ``.<uuid>``,
so that their own inboxes do not collide; configurations come from the same ``config``
(a shared directory or file).

Transformers (metricq-cpp's ``Transformer`` and combinators) are answered as metricq-manager
answers them: ``transformer.register`` as ``source.register``, ``transformer.declare_metrics``
as ``source.declare_metrics``, and ``transformer.subscribe`` declares the transformer's one
durable data queue ``<token>-data`` (no uuid, no ``x-expires``: it keeps data while the
transformer restarts), binds it to the metrics asked for, unbinds those of its previous
subscribe that it no longer asks for, and answers like ``sink.subscribe``.  The queue is
declared, recorded and owned like a sink's, so ``sink.subscribe``/``unsubscribe``/``release``
work on it under the same ownership rules.
"""

from __future__ import annotations

import logging
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import unquote, urlsplit, urlunsplit

import kombu.transport.memory
import re2

from ..client import Client
from ..connection import IOThread
from ..errors import ConfigError, ConnectFailed, InvalidMessage, InvalidRequest, RPCError
from ..names import (
    BROADCAST_EXCHANGE,
    DATA_EXCHANGE,
    HISTORY_EXCHANGE,
    MANAGEMENT_EXCHANGE,
    BrokerURL,
    check_url,
    join_urls,
    redact_url,
    split_urls,
)
from ..rpc import decode_json, encode_json, rpc_handler
from . import _requests as check
from .store import ConfigStore, MetadataStore

logger = logging.getLogger(__name__)

MANAGEMENT_QUEUE = "management"
#: Where the active manager keeps the network's metadata for the others (standby mode).
STATE_QUEUE = "mqsync.manager.state"
#: The queue types a manager declares its queues as.
QUEUE_TYPES = ("classic", "quorum")
#: Standby managers on quorum queues: times a request is handed out again (its manager
#: died holding it) before the broker drops it.
MANAGEMENT_DELIVERY_LIMIT = 5
#: Milliseconds an unused data queue lives when the subscriber gives no ``expires``.
DEFAULT_QUEUE_EXPIRES_MS = 600_000
#: RPC handlers that may run at once.
RPC_WORKERS = 4
#: Bytes RE2 may use to compile one ``get_metrics`` selector.
SELECTOR_MAX_MEM = 8 << 20
#: AMQP's reply code for a declare that differs from the existing queue.
_PRECONDITION_FAILED = 406


class Manager(Client):
    """The network's coordinator; run it with ``mqsync-manager`` or embed it.

    Args:
        url: the management broker URL (``memory://`` for an in-process network).
        config: a directory of ``<token>.json`` files, one JSON/TOML file, or a
            :class:`ConfigStore`; ``None`` serves empty configurations.
        metadata_file: where metric metadata persists (JSON); ``None`` keeps it in memory.
        data_url: the data broker (default: the management URL); announced to clients
            without credentials.
        token: the manager's own token.
        queue_type: ``"classic"`` (the default, for one broker node) or ``"quorum"`` (a
            cluster): how the queues that keep data or requests are declared.
        standby: share the network with other managers, one active at a time (see the
            module docstring); needs a RabbitMQ broker.
    """

    rpc_workers = RPC_WORKERS

    def __init__(self, url: BrokerURL, *, config: str | Path | ConfigStore | None = None,
                 metadata_file: str | Path | None = None, data_url: BrokerURL | None = None,
                 token: str = "manager", queue_type: str = "classic", standby: bool = False,
                 **kwargs: Any):
        if queue_type not in QUEUE_TYPES:
            raise ConfigError(f"invalid queue_type {str(queue_type)[:40]!r}: expected "
                              f"{' or '.join(QUEUE_TYPES)}")
        # Its handlers run on a pool, so that one slow request holds up no other; the
        # stores they share guard themselves.
        kwargs.setdefault("serialize_callbacks", False)
        kwargs.setdefault("add_uuid", bool(standby))
        super().__init__(token, url, **kwargs)
        network_url = self._url or ""  # checked, the nodes joined into one string
        if standby and not network_url.startswith(("amqp://", "amqps://")):
            raise ConfigError("standby managers need a RabbitMQ broker (an amqp:// or "
                              f"amqps:// URL), not {redact_url(network_url)!r}")
        self.queue_type = queue_type
        self.standby = bool(standby)
        self.configs = config if isinstance(config, ConfigStore) else ConfigStore(config)
        self.metadata = MetadataStore(metadata_file,
                                      on_change=self._share_state if standby else None)
        data_url = None if data_url is None else check_url(join_urls(data_url))
        self._data_url = data_url or network_url
        self._data_url_given = data_url is not None and data_url != network_url
        self._data: IOThread | None = None
        # standby: the management connection's generation whose state was taken over
        self._active_generation: int | None = None
        self._activation = threading.Lock()
        self._state_sequence = 0
        #: Times this manager took over the network's state (standby mode).
        self.takeovers = 0

    # -- set-up --------------------------------------------------------------------

    def _declare_management(self, channel: Any) -> None:
        for exchange, kind in ((MANAGEMENT_EXCHANGE, "topic"), (BROADCAST_EXCHANGE, "fanout"),
                               (DATA_EXCHANGE, "topic"), (HISTORY_EXCHANGE, "topic")):
            channel.exchange_declare(exchange=exchange, type=kind, durable=True,
                                     auto_delete=False)
        arguments = self._queue_arguments()
        if self.standby:
            arguments["x-single-active-consumer"] = True
            if self.queue_type == "quorum":
                # a request that kills every manager it reaches is dropped after a few
                arguments["x-delivery-limit"] = MANAGEMENT_DELIVERY_LIMIT
        self._declare_own_queue(channel, MANAGEMENT_QUEUE, arguments)
        channel.queue_bind(queue=MANAGEMENT_QUEUE, exchange=MANAGEMENT_EXCHANGE, routing_key="#")
        if self.standby:
            self._declare_own_queue(channel, STATE_QUEUE,
                                    {**self._queue_arguments(), "x-max-length": 1})

    def _declare_own_queue(self, channel: Any, queue: str, arguments: dict[str, Any]) -> None:
        """Declare one of the manager's durable queues; explain a refusal (406: it exists
        with other arguments, made by a manager with another queue type or standby mode)."""
        try:
            channel.queue_declare(queue=queue, durable=True, exclusive=False, auto_delete=False,
                                  arguments=arguments or None)
        except Exception as error:
            if getattr(error, "reply_code", None) != _PRECONDITION_FAILED:
                raise
            raise ConnectFailed(
                f"the queue {queue!r} exists with other arguments than this manager's "
                f"({getattr(error, 'reply_text', error)}): every manager of a network must "
                "run with the same --queue-type and --standby; to change them, stop every "
                f"manager and delete the queue (rabbitmqctl delete_queue {queue})") from None

    def _queue_arguments(self) -> dict[str, Any]:
        """The arguments that make a queue of the manager's queue type."""
        return {"x-queue-type": "quorum"} if self.queue_type == "quorum" else {}

    def _setup_management(self, channel: Any) -> None:
        super()._setup_management(channel)
        if self._data is not None:  # after a reconnect; at start, _on_start consumes
            self._consume_management()

    def _consume_management(self) -> None:
        assert self._management is not None
        # standby: acked once answered, so the requests of a manager that dies go to the next
        if self.standby:
            self._management.consume(MANAGEMENT_QUEUE, self._on_request_acked, no_ack=False)
        else:
            self._management.consume(MANAGEMENT_QUEUE, self._on_management_message, no_ack=True)

    # -- standby -------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Standby mode: whether this manager took over since its management connection was
        made (it serves requests); always True otherwise."""
        io = self._management
        return not self.standby or (io is not None
                                    and self._active_generation == io.generation)

    def _on_request_acked(self, message: Any) -> None:
        """IO thread, standby mode: a request of the management queue, acked once it was
        answered (or refused)."""
        io = self._management
        assert io is not None
        self._on_management_message(message, _Ack(io, message))

    def _serve_request(self, payload: dict[str, Any], from_token: str,
                       correlation_id: str | None, reply_to: str,
                       settle: Callable[[], None] = lambda: None) -> None:
        io = self._management
        if isinstance(settle, _Ack) and io is not None and settle.generation != io.generation:
            # delivered on a connection that is gone: the broker hands it out again, maybe
            # to another manager that is active now; served here, it would make this one
            # take over as well
            logger.info("%s: dropped a request delivered before a reconnect", self.token)
            return
        super()._serve_request(payload, from_token, correlation_id, reply_to, settle)

    def _before_request(self, settle: Callable[[], None]) -> None:
        if isinstance(settle, _Ack):
            self._take_over(settle.generation)

    def _take_over(self, generation: int) -> None:
        """Before the first request of the management connection ``generation``: read the
        network's state that the manager active before left in the state queue."""
        io = self._management
        assert io is not None
        with self._activation:
            if self._active_generation == generation:
                return
            state = io.call(_take_state, self.rpc_timeout)
            if io.generation != generation:
                raise ConnectFailed(f"{self.token}: the management connection was lost while "
                                    "taking over")
            self._active_generation = generation
            if state is not None:
                self._state_sequence = int(state["sequence"])
                self.metadata.replace(state["state"])
                logger.warning("%s: active; took over the metadata of %d metric(s) from %s",
                               self.token, len(self.metadata), state.get("manager", "?"))
            else:
                logger.warning("%s: active; no shared state yet, sharing this manager's",
                               self.token)
                self._share_state(self.metadata.dump())
            self.takeovers += 1

    def _share_state(self, state: dict[str, Any]) -> None:
        """Publish the whole metadata to the state queue (called by the store after every
        change, in order); waits until it left, so the request's reply follows it.

        Only while active on the connection it took over on: a manager that lost its
        connection meanwhile (and so, maybe, its place to another) publishes nothing, and
        what it changed reaches the next active manager as the request, redelivered.
        """
        io = self._management
        if io is None:
            return
        generation = self._active_generation
        self._state_sequence += 1
        body = encode_json({"sequence": self._state_sequence, "manager": self.token,
                            "state": state})

        def publish(channel: Any) -> None:
            if io.generation != generation:
                raise ConnectFailed("the management connection was lost; not shared")
            message = channel.prepare_message(body, None, "application/json", None, None,
                                              {"delivery_mode": 2, "app_id": self.token})
            channel.basic_publish(message, exchange="", routing_key=STATE_QUEUE)

        io.submit(publish).result(self.rpc_timeout)

    def _on_start(self) -> None:
        data = IOThread(self._data_url, f"mqsync-{self.token}-data",
                        heartbeat=self.heartbeat, give_up=self.reconnect_timeout,
                        on_fatal=self._on_fatal)
        data.start(self.connect_timeout)
        self._data = data
        # Only now: requests that waited in the management queue need the data connection.
        assert self._management is not None
        self._management.call(lambda channel: self._consume_management(), self.connect_timeout)

    def _io_threads(self) -> dict[str, IOThread | None]:
        return {**super()._io_threads(), "data": self._data}

    def _on_stop(self, timeout: float) -> None:
        if self._data is not None:
            self._data.stop(timeout)

    @property
    def data_server_address(self) -> str:
        """The data broker as announced to clients.

        ``vhost:<name>`` when data and management share a broker, so each client reaches
        the data vhost the way it reaches the manager (its host, port, TLS, credentials,
        and its list of a cluster's nodes); otherwise the data URL without credentials (the
        nodes of a data cluster joined with ``;``).
        """
        nodes = [urlsplit(node) for node in split_urls(self._data_url)]
        if self._data_url_given:
            return ";".join(urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]))
                            for parts in nodes)
        return "vhost:" + (unquote(nodes[0].path[1:]) or "/")

    def _on_data(self, operation: Any) -> Any:
        assert self._data is not None
        return self._data.call(operation, self.rpc_timeout)

    def _require_queue(self, queue: str, function: str) -> None:
        assert self._data is not None
        if not self._data.probe(_passive_declare(queue), self.rpc_timeout):
            self.metadata.set_queue_arguments(queue, None)
            raise RPCError(f"{function}: data queue {queue!r} does not exist (it expired, or "
                           "was released)")

    # -- sources -------------------------------------------------------------------

    @rpc_handler("source.register")
    def _source_register(self, from_token: str, **_: Any) -> dict[str, Any]:
        return self._register_publisher("source", from_token)

    @rpc_handler("source.declare_metrics")
    def _source_declare_metrics(self, from_token: str, metrics: Any = None, **_: Any) -> None:
        self._declare_metrics("source.declare_metrics", from_token, metrics)

    def _register_publisher(self, kind: str, from_token: str) -> dict[str, Any]:
        """The registration reply of a client that publishes data (a source, a transformer)."""
        logger.info("%s %s registered", kind, from_token)
        return {"dataServerAddress": self.data_server_address, "dataExchange": DATA_EXCHANGE,
                "config": self.configs.get(from_token)}

    def _declare_metrics(self, function: str, from_token: str, metrics: Any) -> None:
        metrics = check.metric_metadata(function, metrics)
        self.metadata.declare(from_token, metrics)
        logger.info("%s declared %d metric(s)", from_token, len(metrics))

    # -- sinks ---------------------------------------------------------------------

    @rpc_handler("sink.register")
    def _sink_register(self, from_token: str, **_: Any) -> dict[str, Any]:
        return {"dataServerAddress": self.data_server_address,
                "config": self.configs.get(from_token)}

    @rpc_handler("sink.subscribe")
    def _sink_subscribe(self, from_token: str, metrics: Any = None, dataQueue: Any = None,  # noqa: N803
                        expires: Any = None, metadata: Any = True, durable: Any = False,
                        **_: Any) -> dict[str, Any]:
        function = "sink.subscribe"
        names = check.metric_names(function, [] if metrics is None else metrics)
        durable = check.boolean(function, "durable", durable)
        metadata = check.boolean(function, "metadata", metadata)
        expires_ms = DEFAULT_QUEUE_EXPIRES_MS if expires is None else \
            max(1, int(check.positive_seconds(function, "expires", expires) * 1000))
        if dataQueue is None:
            queue = f"{from_token}-{uuid.uuid4().hex}-data"
            declaration = None
        else:
            queue = check.queue_name(function, "dataQueue", dataQueue)
            declaration = self._owned_queue(function, from_token, queue)
        self._bind_data_queue(from_token, queue, declaration,
                              self._new_declaration(durable, {"x-expires": expires_ms},
                                                    from_token), names)
        return {"dataServerAddress": self.data_server_address, "dataQueue": queue,
                "metrics": self._metrics_reply(names, metadata)}

    @rpc_handler("sink.unsubscribe")
    def _sink_unsubscribe(self, from_token: str, dataQueue: Any = None,  # noqa: N803
                          metrics: Any = None, end: Any = True, **_: Any) -> dict[str, Any]:
        function = "sink.unsubscribe"
        queue = check.queue_name(function, "dataQueue", dataQueue)
        names = check.metric_names(function, [] if metrics is None else metrics)
        end = check.boolean(function, "end", end)
        self._owned_queue(function, from_token, queue)
        self._require_queue(queue, function)

        def unbind(channel: Any) -> None:
            for name in names:
                channel.queue_unbind(queue=queue, exchange=DATA_EXCHANGE, routing_key=name)
            if end:
                # persistent: in a durable queue the marker survives a broker restart
                message = channel.prepare_message(b"", None, None, None, None,
                                                  {"type": "end", "delivery_mode": 2})
                channel.basic_publish(message, exchange="", routing_key=queue)

        self._on_data(unbind)
        logger.info("%s unsubscribed %d metric(s) from %s", from_token, len(names), queue)
        return {"dataServerAddress": self.data_server_address, "dataQueue": queue,
                "metrics": names}

    @rpc_handler("sink.release")
    def _sink_release(self, from_token: str, dataQueue: Any = None, **_: Any) -> None:  # noqa: N803
        queue = check.queue_name("sink.release", "dataQueue", dataQueue)
        self._owned_queue("sink.release", from_token, queue)
        # Durable and auto-delete queues alike (deleting one that is gone is no error).
        self._on_data(lambda channel: _delete_queue(channel, queue))
        self.metadata.set_queue_arguments(queue, None)
        logger.info("%s released %s", from_token, queue)

    def _bind_data_queue(self, from_token: str, queue: str,
                         declaration: _QueueDeclaration | None, new: _QueueDeclaration,
                         names: list[str], stale: list[str] | None = None) -> None:
        """Declare ``queue`` as recorded (``declaration``) or, if the manager has no record
        of it, as ``new``; bind it to ``names`` on ``metricq.data`` and unbind ``stale``.

        The caller has checked that ``from_token`` may use ``queue`` (:meth:`_owned_queue`).
        """
        is_new = declaration is None
        if is_new and self.queue_type == "quorum" and self._data is not None and \
                self._data.probe(_passive_declare(queue), self.rpc_timeout):
            # made before the network had quorum queues (a transformer's fixed queue): it
            # keeps its type, and the manager, which has no record of it, makes none
            is_new, declaration = False, None
        else:
            declaration = new if declaration is None else declaration

        def declare_and_bind(channel: Any) -> None:
            if declaration is not None:
                declaration.declare(channel, queue)
            for name in names:
                channel.queue_bind(queue=queue, exchange=DATA_EXCHANGE, routing_key=name)
            for name in stale or ():
                channel.queue_unbind(queue=queue, exchange=DATA_EXCHANGE, routing_key=name)

        self._on_data(declare_and_bind)
        if is_new and declaration is not None:
            # remembered once the broker took it: a refused declare leaves no trace
            self.metadata.set_queue_arguments(queue, declaration.dump())
        logger.info("%s subscribed to %d metric(s) on %s (%s)%s", from_token, len(names), queue,
                    "as it was" if declaration is None else
                    "durable" if declaration.durable else "auto-delete",
                    f", {len(stale)} unbound" if stale else "")

    def _new_declaration(self, durable: bool, arguments: Mapping[str, Any],
                         owner: str) -> _QueueDeclaration:
        """How a new data queue is declared: as asked, or as a quorum queue (always
        durable) on a quorum network."""
        if self.queue_type == "quorum":
            return _QueueDeclaration(True, {**arguments, **self._queue_arguments()},
                                     auto_delete=False, owner=owner)
        return _QueueDeclaration(durable, arguments, owner=owner)

    def _owned_queue(self, function: str, from_token: str,
                     queue: str) -> _QueueDeclaration | None:
        """The declaration of ``queue`` (None if the manager has no record of it), after
        checking that ``from_token`` may use it.

        Raises:
            InvalidRequest: ``queue`` belongs to another client, or is not a sink's data
                queue (the manager's own queues, a database's, a client's RPC inbox).
        """
        declaration = _QueueDeclaration.load(self.metadata.queue_arguments(queue))
        if declaration is not None and declaration.owner is not None:
            allowed = check.owns(from_token, declaration.owner)
        else:
            allowed = check.named_for(from_token, queue)
        if not allowed or queue in (MANAGEMENT_QUEUE, self.rpc_queue):
            raise InvalidRequest(f"{function}: {from_token!r} may not use data queue "
                                 f"{queue[:80]!r}: it is not one of its subscriptions",
                                 function=function)
        return declaration

    # -- transformers ----------------------------------------------------------------

    @rpc_handler("transformer.register")
    def _transformer_register(self, from_token: str, **_: Any) -> dict[str, Any]:
        return self._register_publisher("transformer", from_token)

    @rpc_handler("transformer.declare_metrics")
    def _transformer_declare_metrics(self, from_token: str, metrics: Any = None,
                                     **_: Any) -> None:
        self._declare_metrics("transformer.declare_metrics", from_token, metrics)

    @rpc_handler("transformer.subscribe")
    def _transformer_subscribe(self, from_token: str, metrics: Any = None,
                               **_: Any) -> dict[str, Any]:
        """Bind the transformer's durable data queue ``<token>-data`` to ``metrics`` (and
        only to them: metrics of its previous subscribe are unbound); the reply carries the
        metrics' metadata, as metricq-manager's does."""
        function = "transformer.subscribe"
        names = list(dict.fromkeys(check.metric_names(function, metrics)))
        queue = f"{from_token}-data"
        declaration = self._owned_queue(function, from_token, queue)
        wanted = set(names)
        stale = [name for name in self.metadata.transformer_bindings(from_token) or ()
                 if name not in wanted]
        # durable and never expiring, like a database's data queue
        self._bind_data_queue(from_token, queue, declaration,
                              self._new_declaration(True, {}, from_token), names, stale)
        self.metadata.set_transformer_bindings(from_token, names)
        return {"dataServerAddress": self.data_server_address, "dataQueue": queue,
                "metrics": self._metrics_reply(names, True)}

    # -- history -------------------------------------------------------------------

    @rpc_handler("history.register")
    def _history_register(self, from_token: str, **_: Any) -> dict[str, Any]:
        queue = f"{from_token}-hrsp"
        arguments = {"x-expires": DEFAULT_QUEUE_EXPIRES_MS}
        self._on_data(lambda channel: channel.queue_declare(
            queue=queue, durable=False, exclusive=False, auto_delete=True, arguments=arguments))
        return {"historyServerAddress": self.data_server_address,
                "dataServerAddress": self.data_server_address,
                "historyExchange": HISTORY_EXCHANGE, "historyQueue": queue,
                "config": self.configs.get(from_token)}

    # -- databases -------------------------------------------------------------------
    #
    # As metricq-manager does: a database's queues are "<token>-data" and "<token>-hreq",
    # durable and neither exclusive nor auto-delete (they keep data and requests while the
    # database restarts).  db.subscribe binds the data queue to metricq.data and the history
    # request queue to metricq.history for the metrics, removes the bindings of metrics the
    # database no longer keeps, and marks the metrics historic.

    def _declare_db_queues(self, token: str) -> tuple[str, str]:
        data_queue, history_queue = f"{token}-data", f"{token}-hreq"
        arguments = self._queue_arguments()
        assert self._data is not None
        for queue in (data_queue, history_queue):
            # one that exists keeps its type (declared again with another, it would be refused)
            if not arguments or not self._data.probe(_passive_declare(queue), self.rpc_timeout):
                self._on_data(_durable_declare(queue, arguments))
        return data_queue, history_queue

    @rpc_handler("db.register")
    def _db_register(self, from_token: str, **_: Any) -> dict[str, Any]:
        data_queue, history_queue = self._declare_db_queues(from_token)
        logger.info("database %s registered", from_token)
        return {"dataServerAddress": self.data_server_address, "dataExchange": DATA_EXCHANGE,
                "dataQueue": data_queue, "historyExchange": HISTORY_EXCHANGE,
                "historyQueue": history_queue, "config": self.configs.get(from_token)}

    @rpc_handler("db.subscribe")
    def _db_subscribe(self, from_token: str, metrics: Any = None, metadata: Any = True,
                      **_: Any) -> dict[str, Any]:
        data_names, history_names = _db_bindings(metrics)
        metadata = check.boolean("db.subscribe", "metadata", metadata)
        data_queue, history_queue = self._declare_db_queues(from_token)
        previous = self.metadata.db_bindings(from_token) or {"data": [], "history": []}
        stale_data = sorted(set(previous["data"]) - set(data_names))
        stale_history = sorted(set(previous["history"]) - set(history_names))

        def rebind(channel: Any) -> None:
            for name in data_names:
                channel.queue_bind(queue=data_queue, exchange=DATA_EXCHANGE, routing_key=name)
            for name in history_names:
                channel.queue_bind(queue=history_queue, exchange=HISTORY_EXCHANGE,
                                   routing_key=name)
            for name in stale_data:
                channel.queue_unbind(queue=data_queue, exchange=DATA_EXCHANGE, routing_key=name)
            for name in stale_history:
                channel.queue_unbind(queue=history_queue, exchange=HISTORY_EXCHANGE,
                                     routing_key=name)

        self._on_data(rebind)
        self.metadata.set_db_bindings(from_token, data_names, history_names)
        self.metadata.mark_historic(history_names)
        logger.info("database %s keeps %d metric(s) (%d unbound)", from_token,
                    len(history_names), len(stale_history))
        return {"dataServerAddress": self.data_server_address, "dataQueue": data_queue,
                "historyQueue": history_queue,
                "metrics": self._metrics_reply(history_names, metadata)}

    # -- metrics -------------------------------------------------------------------

    @rpc_handler("get_metrics")
    def _get_metrics(self, format: Any = "array", selector: Any = None,  # noqa: A002
                     prefix: Any = None, infix: Any = None, historic: Any = None,
                     hidden: Any = None, limit: Any = None, **_: Any) -> dict[str, Any]:
        """Metrics whose metadata the manager keeps, filtered by every argument given.

        Refused as metricq-manager refuses them: a ``selector`` together with ``prefix`` or
        ``infix``, ``prefix`` together with ``infix``, an empty ``selector`` array, and
        ``historic`` or ``hidden`` that are not booleans.  mqsync's extensions (where
        metricq-manager answers "not yet supported"): ``infix`` without ``historic``, and
        ``hidden`` (true or false) with any other filter.  A ``selector`` regular
        expression is matched anywhere in the name, with RE2.
        """
        function = "get_metrics"
        if format not in ("array", "object"):
            raise InvalidRequest(f"get_metrics: 'format' must be \"array\" or \"object\", got "
                                 f"{str(format)[:40]!r}", function=function)
        selector = check.selector(function, selector)
        prefix = check.optional_string(function, "prefix", prefix)
        infix = check.optional_string(function, "infix", infix)
        if selector is not None and (prefix is not None or infix is not None):
            raise InvalidRequest("get_metrics: 'selector' cannot be combined with 'prefix' or "
                                 "'infix'; give one of them", function=function)
        if prefix is not None and infix is not None:
            raise InvalidRequest("get_metrics: 'prefix' and 'infix' cannot be combined; give "
                                 "one of them", function=function)
        historic = check.optional_boolean(function, "historic", historic)
        hidden = check.optional_boolean(function, "hidden", hidden)
        limit = None if limit is None else check.non_negative_int(function, "limit", limit)
        pattern = _compile_selector(selector) if isinstance(selector, str) else None
        wanted = set(selector) if isinstance(selector, list) else None
        items = [
            (name, metadata) for name, metadata in self.metadata.items()
            if (pattern is None or pattern.search(name))
            and (wanted is None or name in wanted)
            and (prefix is None or name.startswith(prefix))
            and (infix is None or infix in name)
            and (historic is None or bool(metadata.get("historic", False)) == historic)
            and (hidden is None or bool(metadata.get("hidden", False)) == hidden)
        ]
        if limit is not None:
            items = items[:limit]
        if format == "array":
            return {"metrics": [name for name, _ in items]}
        return {"metrics": dict(items)}

    def _metrics_reply(self, names: list[str], metadata: bool) -> Any:
        if not metadata:
            return names
        return {name: self.metadata.get(name) or {} for name in names}


class _QueueDeclaration:
    """How a sink's data queue is declared, remembered per queue in the metadata store."""

    __slots__ = ("durable", "auto_delete", "arguments", "owner")

    def __init__(self, durable: bool, arguments: Mapping[str, Any],
                 auto_delete: bool | None = None, owner: str | None = None):
        self.durable = durable
        #: The token that subscribed the queue (None: stored by an earlier mqsync-manager).
        self.owner = owner
        # the official manager's transient queue is auto-delete; a durable one never is
        self.auto_delete = not durable if auto_delete is None else auto_delete
        self.arguments = dict(arguments)

    @classmethod
    def load(cls, stored: Mapping[str, Any] | None) -> _QueueDeclaration | None:
        if stored is None:
            return None
        if isinstance(stored.get("arguments"), Mapping):
            owner = stored.get("owner")
            return cls(bool(stored.get("durable")), stored["arguments"],
                       bool(stored.get("auto_delete")),
                       owner if isinstance(owner, str) else None)
        # stored by an earlier mqsync-manager: only the arguments, of a queue it declared
        # neither durable nor auto-delete
        return cls(False, stored, auto_delete=False)

    def dump(self) -> dict[str, Any]:
        return {"durable": self.durable, "auto_delete": self.auto_delete,
                "arguments": dict(self.arguments), "owner": self.owner}

    def declare(self, channel: Any, queue: str) -> None:
        channel.queue_declare(queue=queue, durable=self.durable, exclusive=False,
                              auto_delete=self.auto_delete, arguments=dict(self.arguments))


def _compile_selector(selector: str) -> Any:
    """Compile a ``get_metrics`` selector with RE2: linear-time matching, bounded memory."""
    options = re2.Options()
    options.log_errors = False
    options.max_mem = SELECTOR_MAX_MEM
    try:
        return re2.compile(selector, options)
    except re2.error as error:
        reason = error.args[0] if error.args else error
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise InvalidRequest(f"get_metrics: invalid 'selector' {selector[:60]!r}: {reason} "
                             "(RE2 syntax: no back-references or look-around)",
                             function="get_metrics") from None


def _db_bindings(metrics: Any) -> tuple[list[str], list[str]]:
    """Data and history routing keys of db.subscribe's ``metrics``.

    An entry is a metric name, or ``{"name": ..., "input": ...}``: the database keeps
    ``name`` (history requests) and reads it from ``input`` (data; default ``name``).
    """
    if not isinstance(metrics, list):
        raise InvalidRequest("db.subscribe: 'metrics' must be an array of metric names or "
                             f"{{\"name\", \"input\"}} objects, got {check._kind(metrics)}",
                             function="db.subscribe")
    data: list[str] = []
    history: list[str] = []
    for entry in metrics:
        if isinstance(entry, str):
            name = input_name = entry
        elif isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
            name = entry["name"]
            input_name = entry.get("input", name)
        else:
            raise InvalidRequest("db.subscribe: an entry of 'metrics' is neither a name nor "
                                 f"{{\"name\": ..., \"input\": ...}}: {str(entry)[:80]}",
                                 function="db.subscribe")
        data.append(check.metric_name("db.subscribe", input_name))
        history.append(check.metric_name("db.subscribe", name))
    return list(dict.fromkeys(data)), list(dict.fromkeys(history))


def _delete_queue(channel: Any, queue: str) -> None:
    channel.queue_delete(queue=queue)
    if isinstance(channel, kombu.transport.memory.Channel):
        # kombu's memory transport (the embedded network) deletes a queue only through
        # its bindings: one unbound before (a drained subscription) would stay, with its
        # end marker, for the life of the process.
        channel._delete(queue)  # type: ignore[no-untyped-call]  # kombu leaves it unannotated


class _Ack:
    """Acks a request of the management queue on the IO thread, if its channel still is."""

    __slots__ = ("io", "message", "generation")

    def __init__(self, io: IOThread, message: Any):
        self.io = io
        self.message = message
        self.generation = io.generation

    def __call__(self) -> None:
        self.io.post(self._ack)

    def _ack(self, channel: Any) -> None:
        if self.io.generation == self.generation:  # a delivery tag belongs to its channel
            self.message.ack()


def _check_state(state: Any) -> None:
    """Raise InvalidMessage unless ``state`` is a shared state a MetadataStore takes."""
    if not isinstance(state, dict) or not isinstance(state.get("state"), dict):
        raise InvalidMessage("no 'state' object")
    int(state["sequence"])
    maps = state["state"]
    for key in ("metrics", "queues", "databases"):
        value = maps.get(key, {})
        if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
            raise InvalidMessage(f"'{key}' is not an object of objects")
    transformers = maps.get("transformers", {})
    if not isinstance(transformers, dict) or \
            not all(isinstance(v, list) for v in transformers.values()):
        raise InvalidMessage("'transformers' is not an object of arrays")


def _take_state(channel: Any) -> dict[str, Any] | None:
    """IO thread: the newest state in the state queue (left there for the next manager);
    older ones (a requeue can leave two) are acked away, malformed ones dropped."""
    newest: tuple[int, Any, dict[str, Any]] | None = None
    while True:
        message = channel.basic_get(queue=STATE_QUEUE, no_ack=False)
        if message is None:
            break
        tag = message.delivery_info["delivery_tag"]
        try:
            state = decode_json(message.body)
            _check_state(state)
            sequence = int(state["sequence"])
        except (InvalidMessage, KeyError, TypeError, ValueError) as error:
            logger.error("dropped a malformed message in %s: %s", STATE_QUEUE, error)
            channel.basic_reject(tag, requeue=False)
            continue
        if newest is not None and newest[0] > sequence:
            channel.basic_ack(tag)
            continue
        if newest is not None:
            channel.basic_ack(newest[1])
        newest = (sequence, tag, state)
    if newest is None:
        return None
    channel.basic_reject(newest[1], requeue=True)
    return newest[2]


def _passive_declare(queue: str) -> Callable[[Any], None]:
    def declare(channel: Any) -> None:
        channel.queue_declare(queue=queue, passive=True)
    return declare


def _durable_declare(queue: str, arguments: Mapping[str, Any]) -> Callable[[Any], None]:
    def declare(channel: Any) -> None:
        channel.queue_declare(queue=queue, durable=True, exclusive=False, auto_delete=False,
                              arguments=dict(arguments) or None)
    return declare

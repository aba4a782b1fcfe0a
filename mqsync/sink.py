"""Sink and DurableSink: receive the data points of subscribed metrics.

The data path::

    data IO thread: a message from the sink's data queue -> the data worker
    data worker: decode the chunk -> on_chunk() -> on_data() per point -> ack
                 (a malformed chunk or a raising callback -> reject without requeue)

The ack is sent only after the callback returned, so a crash loses nothing the broker
still holds; a message that cannot be handled is dropped (logged and counted), never
requeued in a loop.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Iterable, Sequence

from ._worker import Worker
from .chunk import decode_chunk
from .client import Client
from .connection import IOThread, time_left
from .errors import ClientStopped, InvalidMessage, MqsyncError
from .names import BrokerURL, derive_address, metric_list
from .timeseries import DurationLike, Timedelta, Timestamp

logger = logging.getLogger(__name__)

#: Seconds the queue's release may take at stop when the stop's own time is used up.
RELEASE_GRACE = 1.0


class Sink(Client):
    """A client that receives data points of the metrics it subscribes to.

    Override :meth:`on_data` (one call per point) or, for speed, :meth:`on_chunk` (one
    call per received chunk with lists of int-ns times and float values).  Callbacks
    run on the sink's data worker thread, in the order the points arrived.

    Args:
        token: the sink's token; ``.<uuid>`` is appended unless ``add_uuid=False``.
        url: the broker URL; ``None`` joins the embedded in-process network.
        prefetch_count: messages the broker may hand over before they are acked.
        durable: whether the sink's data queue survives a broker restart (and a lost
            connection of the sink): the manager declares it durable, the data waiting in
            it and its bindings come back with the broker, and the sink consumes it again
            after reconnecting without asking the manager.  ``False`` gives the official
            client's transient queue: auto-delete, gone with the sink's connection or the
            broker, and what was routed meanwhile with it (after a reconnect the sink has
            the manager declare it again, empty).
    """

    def __init__(self, token: str, url: BrokerURL | None = None, *, add_uuid: bool = True,
                 prefetch_count: int = 400, durable: bool = True, **kwargs: Any):
        super().__init__(token, url, add_uuid=add_uuid, **kwargs)
        self.prefetch_count = prefetch_count
        self.durable = bool(durable)
        self.data_queue: str | None = None
        self._subscribed: set[str] = set()
        self._subscribe_args: dict[str, Any] = {}
        self._data: IOThread | None = None
        self._data_worker = Worker(f"mqsync-{self.token}-data")
        self._subscription_lock = threading.Lock()
        self._ack_upto: int | None = None  # IO thread only
        self._ack_scheduled = False

    # -- callbacks -------------------------------------------------------------------

    def on_data(self, metric: str, timestamp: Timestamp, value: float) -> None:
        """Called for every received point; override it (or :meth:`on_chunk`)."""
        raise NotImplementedError(f"{type(self).__name__} must override on_data() or on_chunk()")

    def on_chunk(self, metric: str, times_ns: Sequence[int], values: Sequence[float]) -> None:
        """Called for every received chunk; calls :meth:`on_data` per point by default."""
        on_data = self.on_data
        timestamp = Timestamp
        for time_ns, value in zip(times_ns, values):
            on_data(metric, timestamp(time_ns), value)

    def on_end(self) -> None:
        """Called when the end-of-stream marker arrives (after an unsubscribe)."""

    # -- subscriptions ---------------------------------------------------------------

    @property
    def subscribed_metrics(self) -> frozenset[str]:
        """The metrics subscribed to now."""
        return frozenset(self._subscribed)

    def subscribe(self, metrics: Iterable[str], expires: DurationLike | None = None,
                  metadata: bool | None = None, timeout: float | None = None,
                  **arguments: Any) -> dict[str, Any]:
        """Subscribe to ``metrics``; their points then arrive at the callbacks.

        ``expires`` is how long the broker keeps the data queue while nobody consumes it: a
        positive duration as :meth:`Timedelta.coerce` takes it (``3600``, ``"1h"``, a
        Timedelta).  Returns the manager's reply (with the metrics' metadata unless
        ``metadata=False``).

        Raises:
            ValueError: a metric name or ``expires`` is invalid.
            TypeError: ``expires`` is not a duration.
            RPCError, RPCTimeout: the manager refused or did not answer.
        """
        names = metric_list(metrics)
        with self._subscription_lock:
            if self.data_queue is not None:
                arguments["dataQueue"] = self.data_queue
            if expires is not None:
                arguments["expires"] = Timedelta.coerce(expires, name="expires",
                                                        positive=True).s
            if metadata is not None:
                arguments["metadata"] = bool(metadata)
            arguments["durable"] = self.durable
            reply = self.rpc("sink.subscribe", timeout=timeout, metrics=names, **arguments)
            self._subscribed.update(names)
            self._subscribe_args = {k: v for k, v in arguments.items() if k != "dataQueue"}
            if self._data is None:
                self.data_queue = reply["dataQueue"]
                self._start_data(reply["dataServerAddress"])
            return reply

    def unsubscribe(self, metrics: Iterable[str], timeout: float | None = None,
                    end: bool = True) -> dict[str, Any]:
        """Stop receiving ``metrics``; with ``end`` the end marker follows their last point."""
        names = metric_list(metrics)
        with self._subscription_lock:
            if self.data_queue is None:
                raise ClientStopped(f"{self.token} has no subscription to end")
            reply = self.rpc("sink.unsubscribe", timeout=timeout, dataQueue=self.data_queue,
                             metrics=names, end=end)
            self._subscribed.difference_update(names)
            return reply

    # -- data connection -------------------------------------------------------------

    def _start_data(self, address: str) -> None:
        assert self._network_url is not None
        self._data_worker.start()
        self._data = IOThread(
            derive_address(self._network_url, address), f"mqsync-{self.token}-data-io",
            self._setup_data, heartbeat=self.heartbeat, give_up=self.reconnect_timeout,
            prefetch_count=self.prefetch_count, on_fatal=self._on_fatal)
        self._data.start(self.connect_timeout)

    def _setup_data(self, channel: Any) -> None:
        assert self._data is not None and self.data_queue is not None
        queue = self.data_queue
        if self._data.generation > 1 and self._subscribed and not self._data.probe(
                lambda temporary: temporary.queue_declare(queue=queue, passive=True), None):
            # After a reconnect, with the queue gone (a transient queue after a broker
            # restart, or an expired one): the manager declares it again, with the
            # arguments it had, and binds it.  A queue that still exists (a durable one
            # survives the broker's restart with its bindings and data) is simply consumed
            # again: no manager is needed for that, so the sink recovers while it is down.
            metrics = sorted(self._subscribed)
            logger.warning("%s: data queue %s is gone; subscribing %d metric(s) again",
                           self.token, self.data_queue, len(metrics))
            self.rpc("sink.subscribe", metrics=metrics, dataQueue=self.data_queue,
                     **self._subscribe_args)
        self._data.consume(self.data_queue, self._on_data_message, no_ack=False)

    def _on_data_message(self, message: Any) -> None:
        """Data IO thread: hand the message to the worker with its channel generation."""
        assert self._data is not None
        self._data_worker.submit(self._handle_data, message, self._data.generation)

    def _handle_data(self, message: Any, generation: int) -> None:
        """Data worker: decode, run the callbacks, then ack (or reject without requeue)."""
        metric = message.delivery_info.get("routing_key", "")
        settle = "ack"
        points = 0
        try:
            if message.properties.get("type") == "end":
                with self._callbacks_serialized():
                    self.on_end()
            else:
                times_ns, values = decode_chunk(message.body)
                points = len(times_ns)
                with self._callbacks_serialized():
                    self.on_chunk(metric, times_ns, values)
        except InvalidMessage as error:
            settle = "reject"
            self._refuse_remote("malformed_data_messages", "dropped a malformed data message "
                                "for %.80r from %.80r: %s", metric,
                                message.properties.get("app_id"), error)
        except Exception:
            settle = "reject"
            self._count("data_callback_errors")
            self._count("dropped_points", points)
            logger.exception("%s: callback failed on a chunk of %r; its %d points are dropped",
                             self.token, metric, points)
        self._settle(message, generation, settle)

    def _settle(self, message: Any, generation: int, how: str) -> None:
        data = self._data
        if data is None:
            return

        def settle(channel: Any) -> None:
            if data.generation != generation:
                return  # the channel it came on is gone; the broker redelivers it
            if how == "ack" and data.acks_multiple:
                # Settled in delivery order: one ack with multiple=True per round of the
                # IO loop covers every message handled since the last one.
                self._ack_upto = message.delivery_tag
                if not self._ack_scheduled:
                    self._ack_scheduled = True
                    data.post(lambda channel: self._flush_acks(channel, generation))
                return
            self._flush_acks(channel, generation)
            if how == "ack":
                message.ack()
            else:
                message.reject(requeue=False)

        data.post(settle)

    def _flush_acks(self, channel: Any, generation: int) -> None:
        """IO thread: send the pending multiple-ack, if any."""
        self._ack_scheduled = False
        upto, self._ack_upto = self._ack_upto, None
        if upto is not None and self._data is not None and self._data.generation == generation:
            channel.basic_ack(upto, multiple=True)

    def _on_stop(self, timeout: float) -> None:
        data = self._data
        if data is None:
            return
        deadline = time.monotonic() + timeout
        queue = self.data_queue
        try:
            data.call(lambda channel: data.cancel(queue or ""), time_left(deadline))
        except Exception as error:
            logger.debug("%s: cancelling the consumer: %s", self.token, error)
        self._data_worker.stop(time_left(deadline), finish=True)
        data.stop(time_left(deadline))
        self._release_queue(max(time_left(deadline), RELEASE_GRACE))

    def _io_threads(self) -> dict[str, IOThread | None]:
        return {**super()._io_threads(), "data": self._data}

    def _release_queue(self, timeout: float) -> None:
        """A sink that stops cleanly frees its queue; after a crash it expires instead.

        The queue is unbound before it is deleted, so no publisher routes to it any more:
        RabbitMQ 3.10 closes a channel that publishes to a quorum queue being deleted
        (541 INTERNAL_ERROR), which would make every source of its metrics reconnect.
        """
        if self.data_queue is None or self._failure is not None:
            return
        deadline = time.monotonic() + timeout
        try:
            if self._subscribed:
                self.rpc("sink.unsubscribe", dataQueue=self.data_queue,
                         metrics=sorted(self._subscribed), end=False, timeout=timeout)
            self.rpc("sink.release", dataQueue=self.data_queue,
                     timeout=max(time_left(deadline), RELEASE_GRACE))
        except MqsyncError as error:
            logger.warning("%s: could not release %s (it expires on its own): %s", self.token,
                           self.data_queue, error)


class DurableSink(Sink):
    """A sink with a fixed token and a configuration from the manager (``sink.register``).

    ``add_uuid`` defaults to False: the manager keeps the configuration under the token as
    written.  Other arguments are :class:`Sink`'s.
    """

    def __init__(self, token: str, url: BrokerURL | None = None, *, add_uuid: bool = False,
                 **kwargs: Any):
        super().__init__(token, url, add_uuid=add_uuid, **kwargs)

    def _on_start(self) -> None:
        reply = self.rpc("sink.register")
        self.rpc_dispatch("config", **dict(reply.get("config") or {}))


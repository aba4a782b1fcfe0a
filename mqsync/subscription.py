"""Subscriber and Drain: measure without the measuring disturbing it.

A :class:`Subscriber` subscribes to metrics and closes its connection at once; the broker
buffers the metrics' points in a queue while the measured program runs undisturbed.
:meth:`Subscriber.collect_data` then starts a :class:`Drain`, which unsubscribes (the
manager puts an end marker behind the last point), consumes the queue up to that marker
and releases it::

    with mqsync.Subscriber(token, url, metrics=metrics, expires=3600) as subscriber:
        run_the_workload()
    for metric, timestamp, value in subscriber.collect_data():
        ...

``collect_data()`` works inside the ``with`` block too. A subscription that is never
collected ends by itself ``expires`` seconds after it was made (the broker drops the
queue); :meth:`Subscriber.release` ends it at once.

The subscription's queue is durable (``durable: true`` in ``sink.subscribe``), and so the
data waiting in it survives a restart of the broker.

The Drain streams: at most ``buffer_chunks`` chunks wait between the broker and the
loop, so a run of any length collects in bounded memory.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Iterable, Iterator, Sequence

from .client import Client
from .errors import ClientStopped, RPCTimeout
from .names import BrokerURL, metric_list
from .sink import Sink
from .timeseries import DurationLike, Timedelta, Timestamp

logger = logging.getLogger(__name__)

_END = object()


class Subscriber(Client):
    """Subscribes to ``metrics`` and disconnects; the broker keeps their data for later.

    Args:
        token: the subscriber's token.
        url: the broker URL; ``None`` joins the embedded network.
        metrics: the metric names to buffer.
        expires: how long the broker keeps the queue when nobody collects it, a positive
            duration as :meth:`~mqsync.Timedelta.coerce` takes it (``3600``, ``"1h"``, a
            Timedelta); kept in seconds in :attr:`expires`.  Required, so an abandoned
            measurement never buffers forever.
        metadata: ask for the metrics' metadata (kept in :attr:`metadata`).
    """

    def __init__(self, token: str, url: BrokerURL | None = None, *, metrics: Iterable[str],
                 expires: DurationLike, metadata: bool = True, **kwargs: Any):
        super().__init__(token, url, **kwargs)
        self.metrics = metric_list(metrics)
        if not self.metrics:
            raise ValueError("Subscriber needs at least one metric to subscribe to")
        self.expires = Timedelta.coerce(expires, name="expires", positive=True).s
        self._want_metadata = metadata
        self.queue: str | None = None
        self.metadata: dict[str, dict[str, Any]] = {}
        self.subscribed_at: Timestamp | None = None
        self._collected = False

    def _on_start(self) -> None:
        # durable: the buffered data must outlive a broker restart during the measurement
        reply = self.rpc("sink.subscribe", metrics=self.metrics, expires=self.expires,
                         metadata=self._want_metadata, durable=True)
        self.queue = reply["dataQueue"]
        if isinstance(reply.get("metrics"), dict):
            self.metadata = reply["metrics"]
        self.subscribed_at = Timestamp.now()

    def __enter__(self) -> Subscriber:
        """Subscribe, then close the connection at once (the queue stays on the broker)."""
        self.start()
        self.stop()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        """Nothing to do: the subscription outlives the block.

        :meth:`collect_data` may run inside the ``with`` block or after it. A subscription
        nobody collects ends when the broker drops its queue, ``expires`` seconds after
        the subscribe; :meth:`release` frees it sooner.
        """

    def release(self) -> None:
        """Give up the subscription without collecting it: the broker drops the buffered data.

        Does nothing when there is nothing to release (never subscribed, or collected).

        Raises:
            RPCError: the manager refused (e.g. the queue expired already).
        """
        if self._collected or self.queue is None:
            return
        # the subscriber's token with a uuid: the manager lets it release the queue
        with Client(self.token, self._url, add_uuid=True,
                    connect_timeout=10, rpc_timeout=10) as releaser:
            releaser.rpc("sink.release", dataQueue=self.queue)
        self._collected = True

    def collect_data(self, *, start: Timestamp | None = None, end: Timestamp | None = None,
                     timeout: float = 60.0, buffer_chunks: int = 64,
                     ) -> Iterator[tuple[str, Timestamp, float]]:
        """Drain the buffered points: yields ``(metric, timestamp, value)`` in arrival order.

        ``start``/``end`` keep only points in ``[start, end]`` (the RPC latency at both
        ends of a measurement blurs its edges).  ``timeout`` bounds the wait for each next
        chunk.

        Raises:
            ClientStopped: the subscription was not made (use the Subscriber as a context
                manager first).
            RPCError: the queue is gone (it expired before it was collected).
            RPCTimeout: no data and no end marker within ``timeout`` seconds.
        """
        if self.queue is None:
            raise ClientStopped(f"{self.token} has not subscribed; use it in a with-block")
        self._collected = True
        drain = Drain(self.token, self._url, self.queue, self.metrics, start=start, end=end,
                      timeout=timeout, buffer_chunks=buffer_chunks)
        return iter(drain)


class Drain(Sink):
    """Collects a subscription's queue up to its end marker, then releases it.

    Iterate over it (once) to get ``(metric, timestamp, value)``; it connects on the first
    ``next()`` and disconnects after the end marker, an error, or when the loop is left.
    """

    def __init__(self, token: str, url: str | None, queue_name: str, metrics: Sequence[str],
                 *, start: Timestamp | None = None, end: Timestamp | None = None,
                 timeout: float = 60.0, buffer_chunks: int = 64, **kwargs: Any):
        # Its on_chunk only hands chunks to the collecting loop, and waits while that loop
        # is behind: holding the callback lock then would keep its RPC handlers waiting.
        kwargs.setdefault("serialize_callbacks", False)
        super().__init__(token, url, **kwargs)
        self.data_queue = queue_name
        self._metrics = list(metrics)
        self._start_ns = start.posix_ns if start is not None else None
        self._end_ns = end.posix_ns if end is not None else None
        self._timeout = timeout
        self._chunks: queue.Queue[Any] = queue.Queue(maxsize=buffer_chunks)
        self._closing = threading.Event()

    def on_chunk(self, metric: str, times_ns: Sequence[int], values: Sequence[float]) -> None:
        # Blocks while the loop is behind: the ack waits, and the broker keeps the rest.
        self._put((metric, times_ns, values))

    def on_end(self) -> None:
        self._put(_END)

    def _put(self, item: Any) -> None:
        while not self._closing.is_set():
            try:
                self._chunks.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator[tuple[str, Timestamp, float]]:
        self.start()
        try:
            reply = self.rpc("sink.unsubscribe", dataQueue=self.data_queue,
                             metrics=self._metrics, end=True)
            self._start_data(reply["dataServerAddress"])
            yield from self._points()
            self._finish()
        finally:
            self._closing.set()
            self.stop()

    def _points(self) -> Iterator[tuple[str, Timestamp, float]]:
        low, high = self._start_ns, self._end_ns
        while True:
            try:
                item = self._chunks.get(timeout=self._timeout)
            except queue.Empty:
                raise RPCTimeout(f"{self.token}: no data and no end marker on "
                                 f"{self.data_queue} within {self._timeout:g} s") from None
            if item is _END:
                return
            metric, times_ns, values = item
            timestamp = Timestamp
            for time_ns, value in zip(times_ns, values):
                if (low is None or time_ns >= low) and (high is None or time_ns <= high):
                    yield metric, timestamp(time_ns), value

    def _finish(self) -> None:
        data = self._data
        if data is not None:
            data.call(lambda channel: data.cancel(self.data_queue or ""), self._timeout)
        self.rpc("sink.release", dataQueue=self.data_queue)
        self.data_queue = None  # released: nothing left to release at stop

    def _release_queue(self, timeout: float) -> None:
        """A drain left early (an error, or the loop broke off) keeps its queue to expire:
        its data may still be wanted; a drain that reached the end released it already."""

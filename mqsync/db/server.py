"""Db: a MetricQ database client that stores metrics in SQLite and answers history requests.

Start-up::

    db.register   -> {dataServerAddress, dataQueue "<token>-data", historyQueue "<token>-hreq",
                      config}
    two connections to the data server: one consumes <token>-data, one <token>-hreq (a long
                     history answer never delays the acks of the data path)
    db.subscribe  -> the manager binds <token>-data to metricq.data and <token>-hreq to
                     metricq.history for the metrics, and marks them historic

The data path (points are acked only once they are committed)::

    data IO thread: a chunk from <token>-data -> the writer's queue
    writer thread: take every chunk waiting (up to batch_points) -> decode -> one SQLite
                   transaction -> ack them all (a malformed chunk is rejected, not requeued)

Every chunk on the queue is stored, also of a metric no longer kept (a backlog from before
a restart, a binding just removed): nothing that was bound for the database is lost.

The history path (one request at a time)::

    hreq IO thread: a request from <token>-hreq -> the history worker
    history worker: decode -> query -> HistoryResponse to reply_to (same correlation_id,
                    header x-request-duration in seconds as a string) -> ack the request

A failed write stops the Db with the error (:attr:`Client.failure`); the unacked chunks stay
with the broker and are stored after a restart.  Redelivered chunks are not stored twice: a
point not later than its metric's last point is dropped.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from google.protobuf.message import DecodeError

from .._proto import HistoryRequest, HistoryResponse
from .._worker import Worker
from ..chunk import decode_chunk
from ..client import Client
from ..connection import IOThread, body_bytes
from ..errors import ConfigError, InvalidMessage, RPCError, StoreError
from ..names import BrokerURL, check_metric_name, derive_address
from ..rpc import rpc_handler
from .store import AggregateRow, SqliteStore

logger = logging.getLogger(__name__)

__all__ = ["Db"]


class Db(Client):
    """A database on a MetricQ network: keeps its metrics and answers history requests.

    Args:
        token: the database's token, e.g. ``"db-sqlite-main"`` (fixed: its queues are named
            after it and outlive restarts).
        url: the broker URL; ``None`` joins the embedded in-process network.
        database: the SQLite file (created if missing) or an open :class:`SqliteStore`
            (which the Db then neither creates nor closes).
        metrics: the metrics to keep; ``None`` takes them from the configuration the
            manager serves (``{"metrics": [...]}``), and a later ``config`` RPC with other
            metrics subscribes those.
        batch_points: most points written in one transaction.
        prefetch_count: data messages the broker hands over before they are acked; the
            batches are built from these.
        history_prefetch: history requests handed over before they are answered.

    Other keyword arguments go to :class:`~mqsync.Client` (``rpc_timeout``, ...).
    """

    def __init__(self, token: str, url: BrokerURL | None = None, *,
                 database: str | Path | SqliteStore, metrics: Iterable[str] | None = None,
                 batch_points: int = 50_000, prefetch_count: int = 1000,
                 history_prefetch: int = 8, **kwargs: Any):
        kwargs.pop("add_uuid", None)
        super().__init__(token, url, add_uuid=False, **kwargs)
        if isinstance(metrics, str):
            raise TypeError("metrics must be a list of metric names, not one string")
        self._fixed_metrics = None if metrics is None else [check_metric_name(m)
                                                           for m in metrics]
        if not (isinstance(batch_points, int) and batch_points > 0):
            raise ValueError(f"batch_points must be a positive int, got {batch_points!r}")
        self._database = database
        self.store: SqliteStore | None = database if isinstance(database, SqliteStore) else None
        self._owns_store = not isinstance(database, SqliteStore)
        self.batch_points = batch_points
        self.prefetch_count = prefetch_count
        self.history_prefetch = history_prefetch
        self.data_queue: str | None = None
        self.history_queue: str | None = None
        self._metrics: frozenset[str] = frozenset()
        self._subscribe_lock = threading.Lock()
        self._data: IOThread | None = None
        self._history: IOThread | None = None
        # (message, channel generation) for the writer thread; None stops it
        self._writes: queue.Queue[tuple[Any, int] | None] = queue.Queue()
        self._writer: threading.Thread | None = None
        self._history_worker = Worker(f"mqsync-{self.token}-history")
        self._started = False

    # -- public state -----------------------------------------------------------------

    @property
    def metrics(self) -> frozenset[str]:
        """The metrics this database keeps now."""
        return self._metrics

    # -- life cycle -------------------------------------------------------------------

    def _on_start(self) -> None:
        if self.store is None:
            self.store = SqliteStore(self._database)  # type: ignore[arg-type]
        reply = self.rpc("db.register")
        self.data_queue = reply["dataQueue"]
        self.history_queue = reply["historyQueue"]
        assert self._network_url is not None
        address = derive_address(self._network_url, reply["dataServerAddress"])
        self._writer = threading.Thread(target=self._write_loop, name=f"mqsync-{self.token}-writer",
                                        daemon=True)
        self._writer.start()
        self._history_worker.start()
        self._data = IOThread(address, f"mqsync-{self.token}-data", self._setup_data,
                              heartbeat=self.heartbeat, give_up=self.reconnect_timeout,
                              prefetch_count=self.prefetch_count, on_fatal=self._on_fatal)
        self._data.start(self.connect_timeout)
        self._history = IOThread(address, f"mqsync-{self.token}-hreq", self._setup_history,
                                 heartbeat=self.heartbeat, give_up=self.reconnect_timeout,
                                 prefetch_count=self.history_prefetch, on_fatal=self._on_fatal)
        self._history.start(self.connect_timeout)
        self._started = True
        config = dict(reply.get("config") or {})
        self.rpc_dispatch("config", **config)
        if self._fixed_metrics is not None:
            self.subscribe(self._fixed_metrics)
        if not self._metrics:
            logger.warning("%s: no metrics to keep: pass metrics=[...] or serve a "
                           "configuration with \"metrics\"", self.token)

    def _setup_data(self, channel: Any) -> None:
        assert self._data is not None and self.data_queue is not None
        self._data.consume(self.data_queue, self._on_data_message, no_ack=False)

    def _setup_history(self, channel: Any) -> None:
        assert self._history is not None and self.history_queue is not None
        self._history.consume(self.history_queue, self._on_history_message, no_ack=False)

    def _io_threads(self) -> dict[str, IOThread | None]:
        return {**super()._io_threads(), "data": self._data, "history": self._history}

    def _on_stop(self, timeout: float) -> None:
        for io, queue_name in ((self._history, self.history_queue), (self._data, self.data_queue)):
            if io is None:
                continue
            # bound now: the call may time out and run after the loop has moved on
            def cancel(channel: Any, io: IOThread = io, name: str = queue_name or "") -> None:
                io.cancel(name)

            try:
                io.call(cancel, timeout)
            except Exception as error:
                logger.debug("%s: cancelling the consumer of %s: %s", self.token, queue_name,
                             error)
        self._history_worker.stop(timeout, finish=True)
        writer = self._writer
        if writer is not None:
            self._writes.put(None)
            if writer is not threading.current_thread():
                writer.join(timeout)
                if writer.is_alive():
                    logger.error("%s: writer thread did not end within %g s", self.token,
                                 timeout)
        for io in (self._history, self._data):
            if io is not None:
                io.stop(timeout)
        if self.store is not None and self._owns_store:
            self.store.close()

    # -- subscriptions ------------------------------------------------------------------

    def subscribe(self, metrics: Iterable[str], timeout: float | None = None) -> dict[str, Any]:
        """Keep ``metrics`` (replacing the set kept so far): ``db.subscribe`` at the manager.

        Raises:
            ValueError: a metric name is invalid.
            RPCError, RPCTimeout: the manager refused or did not answer.
        """
        if isinstance(metrics, str):
            raise TypeError("metrics must be a list of metric names, not one string")
        names = sorted({check_metric_name(m) for m in metrics})
        with self._subscribe_lock:
            # accept the new metrics' data before the manager binds them
            self._metrics = self._metrics | frozenset(names)
            reply = self.rpc("db.subscribe", timeout=timeout, metrics=names, metadata=False)
            if (reply.get("dataQueue") != self.data_queue
                    or reply.get("historyQueue") != self.history_queue):
                raise RPCError(f"db.subscribe answered with queues {reply.get('dataQueue')!r} "
                               f"and {reply.get('historyQueue')!r}, but db.register named "
                               f"{self.data_queue!r} and {self.history_queue!r}",
                               function="db.subscribe")
            self._metrics = frozenset(names)
        logger.info("%s: keeping %d metric(s)", self.token, len(names))
        return reply

    @rpc_handler("config")
    def _on_db_config(self, metrics: Any = None, **_: Any) -> None:
        """A configuration's ``metrics`` (a list of names) are the metrics to keep."""
        if metrics is None or self._fixed_metrics is not None:
            return
        if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
            raise ConfigError(f"configuration of {self.token}: 'metrics' must be a list of "
                              f"metric names, got {metrics!r}")
        if self._started and set(metrics) != set(self._metrics):
            self.subscribe(metrics)

    # -- data path ------------------------------------------------------------------------

    def _on_data_message(self, message: Any) -> None:
        """Data IO thread: hand the chunk to the writer with its channel generation."""
        assert self._data is not None
        self._writes.put((message, self._data.generation))

    def _write_loop(self) -> None:
        """Writer thread: batch what is waiting, commit it, ack it; until the stop marker."""
        while True:
            item = self._writes.get()
            if item is None:
                return
            batch = [item]
            points = _points_estimate(item[0])
            stop = False
            while points < self.batch_points:
                try:
                    item = self._writes.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
                points += _points_estimate(item[0])
            try:
                self._write_batch(batch)
            except Exception as error:
                logger.exception("%s: writing %d chunk(s) failed; stopping (the broker keeps "
                                 "them for the next start)", self.token, len(batch))
                self._count("write_errors")
                self._on_fatal(error)
                return
            if stop:
                return

    def _write_batch(self, batch: list[tuple[Any, int]]) -> None:
        assert self.store is not None
        chunks: list[tuple[str, list[int], list[float]]] = []
        settle: list[tuple[Any, int, str]] = []
        for message, generation in batch:
            metric = message.delivery_info.get("routing_key", "")
            if message.properties.get("type") == "end":
                settle.append((message, generation, "ack"))
                continue
            try:
                times_ns, values = decode_chunk(message.body)
            except InvalidMessage as error:
                self._refuse_remote("malformed_data_messages", "dropped a malformed data "
                                    "message for %.80r from %.80r: %s", metric,
                                    message.properties.get("app_id"), error)
                settle.append((message, generation, "reject"))
                continue
            # Everything on this queue was bound for this database at some time (a backlog
            # from before a restart, a binding just removed): keep it, lose nothing.
            chunks.append((metric, times_ns, values))
            settle.append((message, generation, "ack"))
        if chunks:
            result = self.store.insert_many(chunks)
            self._count("stored_points", result.stored)
            if result.non_monotonic:
                self._count("non_monotonic_points_dropped", result.non_monotonic)
            if result.out_of_range:
                self._count("out_of_range_points_dropped", result.out_of_range)
        self._settle(settle)

    def _settle(self, settle: list[tuple[Any, int, str]]) -> None:
        data = self._data
        if data is None or not settle:
            return

        def operation(channel: Any) -> None:
            for message, generation, how in settle:
                if data.generation != generation:
                    continue  # its channel is gone; the broker delivers it again
                if how == "ack":
                    message.ack()
                else:
                    message.reject(requeue=False)

        data.submit(operation)

    # -- history path --------------------------------------------------------------------

    def _on_history_message(self, message: Any) -> None:
        assert self._history is not None
        self._history_worker.submit(self._answer, message, self._history.generation,
                                    time.monotonic())

    def _answer(self, message: Any, generation: int, received: float) -> None:
        """History worker: answer one request and ack it."""
        history = self._history
        assert history is not None
        metric = message.delivery_info.get("routing_key", "")
        properties = message.properties
        reply_to = properties.get("reply_to")
        begin = time.monotonic()
        response = self.history_response(metric, message.body)
        if reply_to:
            body = response.SerializeToString()
            duration = time.monotonic() - received
            history.publish(body, "", reply_to, correlation_id=properties.get("correlation_id"),
                            app_id=self.token, headers={"x-request-duration": repr(duration)})
            self._count("history_requests_answered")
        else:
            self._refuse_remote("malformed_history_requests", "history request for %.80r "
                                "from %.80r has no reply_to; dropped", metric,
                                properties.get("app_id"))
        logger.debug("%s: history request for %r answered in %.3f s", self.token, metric,
                     time.monotonic() - begin)

        def ack(channel: Any) -> None:
            if history.generation == generation:
                message.ack()

        history.submit(ack)

    def history_response(self, metric: str, request_body: bytes | str) -> Any:
        """The ``HistoryResponse`` message for a serialized ``HistoryRequest`` of ``metric``.

        Never raises: a bad request or a failed query is answered with ``error`` set.
        """
        response = HistoryResponse(metric=metric)
        try:
            try:
                request = HistoryRequest.FromString(body_bytes(request_body))
            except DecodeError as error:
                raise StoreError(f"malformed history request: {error}") from None
            self._fill(response, metric, request)
        except StoreError as error:
            self._count("history_requests_refused")
            response = HistoryResponse(metric=metric, error=str(error))
        except Exception as error:
            self._count("history_request_errors")
            logger.exception("%s: history request for %r failed", self.token, metric)
            response = HistoryResponse(metric=metric, error=f"internal error: {error}")
        return response

    def _fill(self, response: Any, metric: str, request: Any) -> None:
        store = self.store
        assert store is not None
        if metric not in self._metrics and not store.has_metric(metric):
            raise StoreError(f"unknown metric {metric!r}: this database does not keep it")
        # proto3 cannot tell an unset time from 0: 0 means "unbounded", as in the official
        # client, which leaves start and end unset for None
        start = request.start_time or None
        end = request.end_time or None
        kind = request.type
        if kind == HistoryRequest.LAST_VALUE:
            last = store.last_value(metric)
            if last is not None:
                response.time_delta.append(last[0])
                response.value.append(last[1])
        elif kind == HistoryRequest.AGGREGATE:
            _add_aggregates(response, [store.aggregate(metric, start, end)])
        elif kind == HistoryRequest.AGGREGATE_TIMELINE:
            if request.interval_max <= 0:
                raise StoreError("AGGREGATE_TIMELINE needs interval_max > 0 ns, got "
                                 f"{request.interval_max}")
            _, rows = store.aggregate_timeline(metric, start, end, request.interval_max)
            _add_aggregates(response, rows)
        elif kind == HistoryRequest.FLEX_TIMELINE:
            self._fill_flex(response, metric, start, end, request.interval_max)
        else:
            raise StoreError(f"unsupported history request type {kind}; expected 0 "
                             "(AGGREGATE_TIMELINE), 1 (AGGREGATE), 2 (LAST_VALUE) or 3 "
                             "(FLEX_TIMELINE)")

    def _fill_flex(self, response: Any, metric: str, start: int | None, end: int | None,
                   interval_max: int) -> None:
        """Raw values when there are no more of them than buckets of interval_max, else
        an aggregate timeline (interval_max <= 0: always raw values)."""
        store = self.store
        assert store is not None
        if interval_max > 0:
            if start is not None and end is not None:
                buckets = -(-(end - start) // interval_max)
            else:
                span = store.span(metric)
                if span is None:
                    return
                lo = span[0] if start is None else start
                hi = span[1] if end is None else end
                buckets = max(0, -(-(hi - lo) // interval_max))
            if store.count_between(metric, start, end) > buckets:
                _, rows = store.aggregate_timeline(metric, start, end, interval_max)
                _add_aggregates(response, rows)
                return
        times, values = store.raw(metric, start, end)
        if times:
            response.time_delta.extend(_deltas(times))
            response.value.extend(values)


def _deltas(times: Sequence[int]) -> list[int]:
    return [times[0]] + [b - a for a, b in zip(times, times[1:])]


def _add_aggregates(response: Any, rows: Sequence[AggregateRow]) -> None:
    if not rows:
        return
    response.time_delta.extend(_deltas([row.timestamp for row in rows]))
    aggregates = response.aggregate
    Aggregate = HistoryResponse.Aggregate  # noqa: N806 - a message class
    aggregates.extend(
        Aggregate(minimum=row.minimum, maximum=row.maximum, sum=row.sum, count=row.count,
                  integral=row.integral, active_time=row.active_time) for row in rows)


def _points_estimate(message: Any) -> int:
    # A DataChunk point takes at least 9 bytes (a varint delta and a double); counting bytes
    # keeps the writer from decoding twice.
    return max(1, len(message.body) // 10)

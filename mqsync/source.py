"""Source: publishes data points of declared metrics.

The data path is short and visible::

    send() -> the metric's two lists of times and values (under the source's one lock)
           -> a full chunk (or one older than flush_interval) is encoded
           -> the publisher's queue (:mod:`mqsync._delivery`) -> the data IO thread
           -> basic_publish to metricq.data, routing key = metric

``send()`` never waits for the network: it appends, and when a chunk is full hands
the encoded payload to the IO thread.  ``source.metric(name)`` (or ``source[name]``)
gives a :class:`SourceMetric` whose ``send(time, value)`` skips the lookup by name: the
fastest way to send one point at a time.  Every chunk is kept until the broker confirmed
it (see :mod:`mqsync._delivery`); at most ``max_pending_chunks`` chunks wait for that,
and beyond that ``send()`` blocks (back-pressure) for up to ``send_timeout`` seconds and
then raises :class:`~mqsync.errors.PublishFailed`: the points of that call are not
accepted and nothing of them stays buffered, so calling ``send()`` again sends them once.
"""

from __future__ import annotations

import logging
import operator
import os
import sys
import threading
import time
from concurrent.futures import Future
from typing import Any, Iterable, Mapping, Sequence, cast

from ._delivery import ChunkPublisher
from .chunk import check_chunk_size, encode_chunk
from .client import Client
from .connection import IOThread, time_left
from .errors import PublishFailed
from .names import DATA_EXCHANGE, BrokerURL, check_metric_name, derive_address
from .spool import Spool
from .timeseries import DurationLike, Timedelta, Timestamp

logger = logging.getLogger(__name__)

#: A Source takes times within ±2**62 ns (±146 years) of the epoch: any two of them then
#: differ by an int64, the type of a chunk's time deltas.
TIME_LIMIT_NS = 2**62


class Source(Client):
    """A client that publishes data points.

    Args:
        token: the source's token, e.g. ``"source-sysinfo-node01"``.
        url: the broker URL; ``None`` joins the embedded in-process network.
        chunk_size: points per published chunk (default 1: every point leaves at once);
            ``None`` sends only on :meth:`flush` or after ``flush_interval``.
        flush_interval: a duration (seconds, ``"500ms"``, a ``Timedelta``) after which a
            partly filled chunk is sent anyway, so a slow metric is not held back; ``None``
            disables the timer.
        max_pending_chunks: chunks handed over and not yet confirmed by the broker before
            :meth:`send` blocks.
        send_timeout: how long :meth:`send` blocks on a full queue before it raises (a
            duration as ``flush_interval``).
        spool: an SQLite file (or an open :class:`~mqsync.spool.Spool`) where every chunk
            waits until the broker confirmed it, so a crash or a long outage loses
            nothing: the next start sends what is left first.
        persistent: publish chunks persistent (delivery mode 2), so that they survive a
            broker restart in the durable queues of mqsync's sinks; ``False`` publishes
            them transient, as the official client does (a little faster, not restart-safe).

    Other keyword arguments go to :class:`~mqsync.Client`.  Override :meth:`task` for a
    loop of your own (it runs on its own thread once the source is connected), or use
    :class:`~mqsync.IntervalSource` for periodic updates.
    """

    def __init__(
        self,
        token: str,
        url: BrokerURL | None = None,
        *,
        chunk_size: int | None = 1,
        flush_interval: DurationLike | None = 1.0,
        max_pending_chunks: int = 10_000,
        send_timeout: DurationLike = 30.0,
        spool: str | os.PathLike[str] | Spool | None = None,
        persistent: bool = True,
        **kwargs: Any,
    ):
        _refuse_update_without_task(type(self))
        super().__init__(token, url, **kwargs)
        check_chunk_size(chunk_size)
        self._chunk_size = chunk_size
        self.flush_interval = None if flush_interval is None else Timedelta.coerce(
            flush_interval, name="flush_interval", positive=True).s
        self.send_timeout = Timedelta.coerce(send_timeout, name="send_timeout", positive=True).s
        self.data_exchange = DATA_EXCHANGE
        self.__handles: dict[str, SourceMetric] = {}
        # Guards every metric's points and _closed; one lock per source, not per metric,
        # so that stop and flush see all of them at once.  The per-point paths take it
        # with acquire() and try/finally, ~80 ns cheaper than "with", which allocates two
        # bound methods per call.  A KeyboardInterrupt can land between acquire() and the
        # try, leaving the lock held by the main thread; a re-entrant lock lets that
        # thread go on sending and stop the source (the usual way out of a Ctrl-C).
        self._buffer_lock = threading.RLock()
        self._max_pending_chunks = max_pending_chunks
        self._spool_spec = spool
        self.persistent = bool(persistent)
        self._publisher: ChunkPublisher | None = None
        # From stop() (or a connection that gave up) on: the source takes no more points.
        self._closed = False
        self._data: IOThread | None = None
        self._task_thread: threading.Thread | None = None
        #: Completed (with ``None``) when the source stops; :meth:`task` loops until then.
        self.task_stop_future: Future[None] = Future()

    # -- chunking ------------------------------------------------------------------

    @property
    def chunk_size(self) -> int | None:
        """Points per chunk of every metric that was not given a size of its own.

        Setting it resizes those metrics at once (a buffer that is then full leaves with
        its next point).
        """
        return self._chunk_size

    @chunk_size.setter
    def chunk_size(self, value: int | None) -> None:
        check_chunk_size(value)
        if not hasattr(self, "_buffer_lock"):  # set by a subclass before __init__()
            self._chunk_size = value
            return
        with self._buffer_lock:
            self._chunk_size = value
            for handle in self.__handles.values():
                if not handle._sized:
                    handle._resize(value)

    def metric(self, name: str) -> SourceMetric:
        """The :class:`SourceMetric` of ``name``, made on first use.

        ``metric.send(time, value)`` is :meth:`send` without the lookup by name; keep the
        handle for a loop that sends one point at a time.

        Raises:
            ValueError, TypeError: ``name`` is not a valid metric name.
            PublishFailed: the source stopped (or failed) and takes no more points.
        """
        return self.__handle(name)

    def __handle(self, name: str) -> SourceMetric:
        # mqsync calls this, never metric(): a subclass may well name an attribute "metric"
        # (or "_metric"); the mangled names of this class cannot clash with a subclass's.
        handle = self.__handles.get(name)
        if handle is not None:
            return handle
        check_metric_name(name)
        with self._buffer_lock:
            if self._closed:
                raise self._not_accepting(name)
            handle = self.__handles.get(name)
            if handle is None:
                handle = self.__handles[name] = SourceMetric(self, name)
            return handle

    def __getitem__(self, name: str) -> SourceMetric:
        """``source[name]`` is :meth:`metric`: set ``source[name].chunk_size`` to size one
        metric alone."""
        return self.__handle(name)

    # -- life cycle ----------------------------------------------------------------

    def _on_start(self) -> None:
        reply = self.rpc("source.register")
        self.data_exchange = reply.get("dataExchange", DATA_EXCHANGE)
        self._start_data(reply["dataServerAddress"])
        self._dispatch_config(reply.get("config") or {})
        if type(self).task is not Source.task:
            self._task_thread = threading.Thread(target=self._run_task,
                                                 name=f"mqsync-{self.token}-task", daemon=True)
            self._task_thread.start()

    def _start_data(self, address: str) -> None:
        assert self._network_url is not None
        spool = self._spool_spec
        if spool is not None and not isinstance(spool, Spool):
            spool = Spool(spool)
        self._publisher = publisher = ChunkPublisher(
            self.token, self.data_exchange, max_pending=self._max_pending_chunks,
            spool=spool, count=self._count, persistent=self.persistent)
        self._data = IOThread(derive_address(self._network_url, address),
                              f"mqsync-{self.token}-data", publisher.setup,
                              heartbeat=self.heartbeat, give_up=self.reconnect_timeout,
                              connect_timeout=min(self.connect_timeout, 30.0),
                              on_fatal=self._on_data_fatal, on_unblocked=publisher.resume)
        publisher.io = self._data
        self._data.start(self.connect_timeout)
        publisher.replay_spool(self.send_timeout)
        if self.flush_interval is not None:
            self._data.add_tick(self._flush_stale, min(self.flush_interval / 2, 0.5))

    def _io_threads(self) -> dict[str, IOThread | None]:
        return {**super()._io_threads(), "data": self._data}

    def _on_fatal(self, error: BaseException) -> None:
        """A connection gave up: refuse new points (the accepted ones still leave while the
        data connection lives, and are settled at stop)."""
        self._failure = error
        if self._publisher is not None:
            self._close_buffers(f"{self.token}: stopped by a lost connection: {error}")
        super()._on_fatal(error)

    def _on_data_fatal(self, error: BaseException) -> None:
        """The data IO thread gave up: refuse new points, settle the accepted ones now."""
        self._on_fatal(error)
        self._account_unconfirmed()

    def _dispatch_config(self, config: Mapping[str, Any]) -> None:
        """Hand a registration's configuration to the ``config`` handlers, in this thread."""
        self.rpc_dispatch("config", **dict(config))

    def _on_stop(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        if not self.task_stop_future.done():
            self.task_stop_future.set_result(None)
        thread = self._task_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(time_left(deadline))
            if thread.is_alive():
                logger.error("%s: task() did not return within %g s of stop()", self.token,
                             timeout)
        publisher = self._publisher
        if publisher is not None and self._data is not None:
            self._close_buffers(f"{self.token} is stopping; the point was not accepted")
            # Keep a little of the time for closing the connections.
            missing = publisher.wait_settled(time_left(deadline - min(1.0, timeout / 2)))
            if missing:
                logger.error("%s: %d chunk(s) not confirmed by the broker within %g s of "
                             "stop()", self.token, missing, timeout)
            if self._data.stop(time_left(deadline)):
                self._account_unconfirmed()
            else:
                logger.error("%s: the data IO thread did not end; %d chunk(s) are unaccounted "
                             "for", self.token, missing)
        if publisher is not None and publisher.spool is not None \
                and self._spool_spec is not publisher.spool:
            publisher.spool.close()

    def _close_buffers(self, reason: str) -> None:
        """Take no more points and hand every buffered one over, beyond ``max_pending``.

        Senders waiting for room are woken first (they raise :class:`PublishFailed` with
        ``reason`` and keep nothing), so the buffer lock is free at once.  Runs at stop,
        and on the IO thread when it gave up (then :meth:`_account_unconfirmed` follows).
        """
        assert self._publisher is not None
        self._publisher.close(PublishFailed, reason)
        with self._buffer_lock:
            self._closed = True
            for handle in self.__handles.values():
                if handle._times:
                    self._publisher.hand(handle.name, *handle._take())
                # The next point fills it: _publish() then refuses it, so send() needs no
                # check of its own per point.
                handle._limit = 0

    def _account_unconfirmed(self) -> None:
        """Once the data IO thread ended: settle and report what was never confirmed."""
        assert self._publisher is not None
        chunks = self._publisher.abandon()
        spooled = sum(c.points for c in chunks if c.spool_id is not None)
        lost = sum(c.points for c in chunks if c.spool_id is None)
        if spooled:
            self._count("spooled_points", spooled)
            logger.warning("%s: %d points not confirmed by the broker; they stay in the spool "
                           "%s and are sent at the next start", self.token, spooled,
                           self._publisher.spool.path)
        if lost:
            self._count("lost_points", lost)
            logger.error("%s: %d points were never confirmed by the broker and are lost%s",
                         self.token, lost,
                         "" if self._publisher.spool is not None else
                         " (use a spool to keep them)")

    def task(self) -> None:
        """Override with a loop that sends data until :attr:`task_stop_future` is done.

        Runs on its own thread after the source connected and got its configuration.  An
        exception is logged; the source keeps serving RPCs.
        """

    def _run_task(self) -> None:
        try:
            self.task()
        except Exception:
            self._count("task_errors")
            logger.exception("%s: task() failed", self.token)

    # -- metrics -------------------------------------------------------------------

    def declare_metrics(self, metrics: Mapping[str, Mapping[str, Any]] | Iterable[str],
                        timeout: float | None = None) -> None:
        """Tell the manager which metrics this source produces, with their metadata.

        ``metrics`` maps names to metadata (``unit``, ``rate``, ``description``, ...), or
        is a list of names.  Each metric's ``chunkSize`` is added unless given.

        Raises:
            ValueError: a metric name is invalid.
            RPCError, RPCTimeout: the manager refused or did not answer.
        """
        if isinstance(metrics, Mapping):
            declared: dict[str, dict[str, Any]] = {}
            for name, metadata in metrics.items():
                check_metric_name(name)
                if not isinstance(metadata, Mapping):
                    raise TypeError(f"metadata of {name!r} must be a dict, got "
                                    f"{type(metadata).__name__}")
                entry = dict(metadata)
                entry.setdefault("chunkSize", self.__handle(name).chunk_size)
                declared[name] = entry
        else:
            declared = {check_metric_name(name): {"chunkSize": self.__handle(name).chunk_size}
                        for name in metrics}
        self.rpc("source.declare_metrics", timeout=timeout, metrics=declared)

    # -- sending -------------------------------------------------------------------

    def send(self, metric: str, time: Timestamp | int, value: float) -> None:
        """Buffer one data point; publish the metric's chunk when it is full.

        ``time`` is a :class:`~mqsync.Timestamp` or int nanoseconds since the epoch, within
        ±2**62 ns (±146 years) of it, so that any two points of a chunk differ by an int64.
        When this returns, the point is accepted: it will be confirmed by the broker, or
        counted in ``stats()["lost_points"]`` (or kept in the spool) with a log line.  When
        it raises, the point was not accepted and nothing of it remains.

        In a loop over one metric, ``metric = source.metric(name)`` and then
        ``metric.send(time, value)`` does the same with less work per point.

        Raises:
            PublishFailed: the source is not running (not started, stopping, or its data
                connection is down for good), or the broker has not confirmed earlier
                chunks for ``send_timeout`` seconds (back-pressure).
            TypeError, ValueError: a bad metric name, time or value.
        """
        # The same lines as SourceMetric.send, inlined: a call less per point.  A
        # Timestamp's slot is read directly: its posix_ns property costs 30 ns more.
        if type(time) is Timestamp:
            time_ns = time._ns
        elif type(time) is int:
            time_ns = time
        else:
            time_ns = _as_ns(time)
        # |time| < TIME_LIMIT_NS, as a literal: abs() of a positive int allocates nothing,
        # and one comparison costs less than a chained one (6 ns a point)
        if not abs(time_ns) < 4611686018427387904:
            raise _time_out_of_range(time_ns)
        if type(value) is not float:
            value = _as_float(value)
        handle = self.__handles.get(metric)
        if handle is None:
            handle = self.__handle(metric)
        lock = self._buffer_lock  # acquire/release: see __init__
        lock.acquire()
        try:
            times = handle._times
            if not times:
                handle._oldest = _monotonic()
            times.append(time_ns)
            handle._values.append(value)
            if len(times) >= handle._limit:
                self._publish(handle, len(times) - 1)
        finally:
            lock.release()

    def send_many(self, metric: str, times: Sequence[Timestamp | int],
                  values: Sequence[float]) -> None:
        """Buffer many points of one metric at once (times as Timestamps or int ns).

        All or nothing: if it raises, none of the points was accepted.
        """
        self.__handle(metric).send_many(times, values)

    def flush(self, timeout: float | None = None) -> None:
        """Publish every buffered point now and wait until the broker confirmed them.

        Raises:
            PublishFailed: not everything was confirmed within ``timeout`` seconds (the
                chunks stay pending and are resent after a reconnect), or there was no
                room for the buffered points (they stay buffered), or the source is not
                running.
        """
        with self._buffer_lock:
            if self._closed:
                raise self._not_accepting("any metric")
            for handle in self.__handles.values():
                if handle._times:
                    self._publish(handle, len(handle._times))
        self._wait_flushed(timeout)

    def _wait_flushed(self, timeout: float | None) -> None:
        if self._publisher is None:
            return
        timeout = self.send_timeout if timeout is None else timeout
        missing = self._publisher.wait_settled(timeout)
        if missing:
            raise PublishFailed(f"{self.token}: {missing} chunk(s) not confirmed by the broker "
                                f"within {timeout:g} s")

    def stats(self) -> dict[str, int]:
        """Counters of :meth:`Client.stats <mqsync.Client.stats>`, plus ``sent_points`` and
        ``sent_chunks`` (confirmed by the broker so far)."""
        counters = super().stats()
        counters["sent_points"] = self.sent_points
        counters["sent_chunks"] = self.sent_chunks
        return counters

    @property
    def sent_points(self) -> int:
        """Points the broker confirmed so far (all published ones, without confirms)."""
        return self._publisher.confirmed_points if self._publisher is not None else 0

    @property
    def sent_chunks(self) -> int:
        """Chunks the broker confirmed so far (all published ones, without confirms)."""
        return self._publisher.confirmed_chunks if self._publisher is not None else 0

    def _not_accepting(self, metric: str) -> Exception:
        if self._failure is not None:
            return PublishFailed(f"{self.token}: cannot send to {metric!r}: {self._failure}")
        return PublishFailed(f"{self.token}: cannot send to {metric!r}: the source is "
                             f"{self._state}")

    def _publish(self, handle: SourceMetric, accepted: int, wait: bool = True,
                 chunk: tuple[bytes, int] | None = None) -> None:
        """Under the buffer lock: hand the metric's points over as one chunk.

        If there is no room (or the source cannot publish), the points after the first
        ``accepted`` (those the caller just added) are taken back and the error raised;
        with ``wait=False`` (the flush timer, on the IO thread) it returns instead.
        ``chunk`` (an encoded payload and its number of points, the buffer being empty)
        is handed over instead of the buffer's points.
        """
        publisher = self._publisher
        try:
            if self._closed or publisher is None:
                raise self._not_accepting(handle.name)
            if not publisher.reserve(self.send_timeout if wait else None):
                if not wait:
                    return
                refused = chunk[1] if chunk else len(handle._times) - accepted
                raise PublishFailed(f"{self.token}: the broker has not confirmed earlier chunks "
                                    f"for {self.send_timeout:g} s; {refused} point(s) of "
                                    f"{handle.name!r} not accepted")
        except BaseException:
            handle._truncate(accepted)
            raise
        publisher.hand(handle.name, *(chunk or handle._take()))

    def _flush_stale(self) -> None:
        """IO thread tick: publish chunks whose first point waited ``flush_interval``."""
        horizon = time.monotonic() - (self.flush_interval or 0.0)
        # A sender may hold the lock while it waits for this very thread to confirm a
        # chunk: never wait for it here; the next tick tries again.
        if not self._buffer_lock.acquire(blocking=False):
            return
        try:
            if self._closed or self._publisher is None or not self._publisher.has_room():
                return
            for handle in self.__handles.values():
                oldest = handle._oldest
                if oldest is not None and oldest <= horizon:
                    self._publish(handle, len(handle._times), wait=False)
        finally:
            self._buffer_lock.release()


class SourceMetric:
    """One metric of a :class:`Source`: its buffered points, its chunk size, and the
    fastest way to send to it.

    Get it with ``source.metric(name)`` or ``source[name]``; it lives as long as the source.
    ``send(time, value)`` is ``source.send(name, time, value)`` without the lookup by name,
    with the same checks and guarantees.  The points wait in two plain lists under the
    source's lock until ``chunk_size`` of them make a chunk.
    """

    __slots__ = ("name", "_source", "_lock", "_times", "_values", "_limit", "_chunk_size",
                 "_sized", "_oldest")

    def __init__(self, source: Source, name: str):
        self.name = name
        self._source = source
        self._lock = source._buffer_lock
        self._times: list[int] = []
        self._values: list[float] = []
        # Set by assigning chunk_size; otherwise the source's chunk_size applies.
        self._sized = False
        self._resize(source.chunk_size)
        # time.monotonic() at the first point since the last chunk, for flush_interval
        self._oldest: float | None = None

    @property
    def chunk_size(self) -> int | None:
        """Points per chunk of this metric; ``None`` sends only on flush (or after the
        source's ``flush_interval``).  Settable; the source's ``chunk_size`` until set."""
        return self._chunk_size

    @chunk_size.setter
    def chunk_size(self, value: int | None) -> None:
        check_chunk_size(value)
        with self._lock:
            self._sized = True
            self._resize(value)

    def _resize(self, chunk_size: int | None) -> None:
        self._chunk_size = chunk_size
        # One compare per point for both cases: sys.maxsize is never reached.
        self._limit = sys.maxsize if chunk_size is None else chunk_size
        if self._source._closed:
            self._limit = 0

    def send(self, time: Timestamp | int, value: float) -> None:
        """Buffer one point of this metric; publish the chunk when it is full.

        The same as :meth:`Source.send` (see there for what is accepted and raised).
        """
        if type(time) is Timestamp:
            time_ns = time._ns
        elif type(time) is int:
            time_ns = time
        else:
            time_ns = _as_ns(time)
        if not abs(time_ns) < 4611686018427387904:  # TIME_LIMIT_NS: see Source.send
            raise _time_out_of_range(time_ns)
        if type(value) is not float:
            value = _as_float(value)
        lock = self._lock
        lock.acquire()  # rather than "with": see Source.__init__
        try:
            times = self._times
            if not times:
                self._oldest = _monotonic()
            times.append(time_ns)
            self._values.append(value)
            if len(times) >= self._limit:
                self._source._publish(self, len(times) - 1)
        finally:
            lock.release()

    def send_many(self, times: Sequence[Timestamp | int], values: Sequence[float]) -> None:
        """Buffer many points of this metric at once (times as Timestamps or int ns).

        All or nothing: if it raises, none of the points was accepted.  The buffer may
        then hold more than ``chunk_size`` points; they leave as one chunk.

        Raises:
            ValueError: the lengths differ, or a time is out of range.
            TypeError: a time or value of the wrong type.
            PublishFailed: as :meth:`Source.send`.
        """
        count = len(times)
        if count != len(values):
            raise ValueError(f"send_many() of {self.name!r}: {count} times but "
                             f"{len(values)} values; expected one value per time")
        if not count:
            return
        if count >= self._limit and not self._times:
            # A chunk of their own (the usual bulk case), encoded outside the lock.
            payload = _encode_whole(times, values)
            if payload is not None:
                with self._lock:
                    if not self._times:  # (else points came meanwhile: the way below)
                        self._source._publish(self, 0, chunk=(payload, count))
                        return
        # A type check per point in C (list.count compares by identity first) for the
        # usual list of ints; anything else is converted and checked point by point.
        times_ns = cast("Sequence[int]", times) if list(map(type, times)).count(int) == count \
            else [_as_ns(t) for t in times]
        # sorted() of ascending times (the usual case) is one pass, cheaper than min+max
        ordered = sorted(times_ns)
        if not (ordered[0] > -TIME_LIMIT_NS and ordered[-1] < TIME_LIMIT_NS):
            raise _time_out_of_range(ordered[0] if ordered[0] <= -TIME_LIMIT_NS
                                     else ordered[-1])
        floats = values if list(map(type, values)).count(float) == count \
            else [_as_float(v) for v in values]
        with self._lock:
            accepted = len(self._times)
            if not accepted:
                self._oldest = _monotonic()
            self._times.extend(times_ns)
            self._values.extend(floats)
            if len(self._times) >= self._limit:
                self._source._publish(self, accepted)

    def flush(self, timeout: float | None = None) -> None:
        """Publish this metric's buffered points now and wait until the broker confirmed
        everything the source handed over (see :meth:`Source.flush`)."""
        source = self._source
        with self._lock:
            if source._closed:
                raise source._not_accepting(self.name)
            if self._times:
                source._publish(self, len(self._times))
        source._wait_flushed(timeout)

    def __len__(self) -> int:
        """Points buffered now (not yet handed over as a chunk)."""
        return len(self._times)

    # Under the source's lock:

    def _truncate(self, length: int) -> None:
        """Drop the points after the first ``length`` (undo a send that was refused)."""
        del self._times[length:]
        del self._values[length:]
        if not self._times:
            self._oldest = None

    def _take(self) -> tuple[bytes, int]:
        """Encode every buffered point as one standalone chunk and empty the buffer.

        Times and values were checked before they were buffered: encoding cannot fail.
        """
        times, values = self._times, self._values
        self._times = []
        self._values = []
        self._oldest = None
        if len(times) != len(values):
            # A KeyboardInterrupt between a send()'s two appends: that send raised, so its
            # half a point was never accepted.
            del times[len(values):], values[len(times):]
        return encode_chunk(times, values), len(times)

    def __repr__(self) -> str:
        return (f"SourceMetric({self.name!r}, chunk_size={self._chunk_size!r}, "
                f"pending={len(self._times)})")


_monotonic = time.monotonic


def _time_out_of_range(time_ns: int) -> ValueError:
    return ValueError(f"time {time_ns} ns is out of range: a Source sends times within "
                      f"±2**62 ns (±146 years) of the epoch, so that a chunk can carry them")


def _as_ns(time: Any) -> int:
    if isinstance(time, Timestamp):  # a subclass (the exact type took the fast way)
        return time.posix_ns
    if not isinstance(time, bool):
        try:
            return operator.index(time)  # int, and integer types such as numpy.int64
        except TypeError:
            pass
    raise TypeError(f"time must be a Timestamp or int nanoseconds since the epoch, got "
                    f"{type(time).__name__} {time!r}")


def _encode_whole(times: Sequence[Any], values: Sequence[Any]) -> bytes | None:
    """Encode points of one metric, checking them on the way: the encoder refuses a time
    that is not an integer and a value that is not a number.  None if they need the
    point-by-point checks, which convert what can be converted and say what is wrong.
    """
    if type(times[0]) is not int:  # Timestamps, numpy integers: checked point by point
        return None
    ints = cast("Sequence[int]", times)  # if not, the encoder raises
    try:
        ordered = sorted(ints)
        # Within the range, and no bool among the times (a bool is an int to sorted()
        # and to the encoder, but not a time): one would make the smallest time <= 1.
        if not (ordered[0] > 1 and ordered[-1] < TIME_LIMIT_NS):
            return None
        return encode_chunk(ints, values)
    except Exception:  # noqa: BLE001 - whatever it is, the careful way says it precisely
        return None


def _as_float(value: Any) -> float:
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"value must be a real number, got {type(value).__name__} {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"value must be a real number, got {type(value).__name__} "
                        f"{value!r}") from None


def _refuse_update_without_task(cls: type[Source]) -> None:
    """Raise at once when ``cls`` defines ``update()`` that nothing would ever call.

    Only :class:`~mqsync.IntervalSource` calls ``update()``; a plain Source subclass with
    ``update()`` and no ``task()`` would connect, send nothing and look healthy.
    """
    if getattr(cls, "update", None) is None or cls.task is not Source.task:
        return  # no update(), or a task() of its own (IntervalSource's calls update())
    raise TypeError(
        f"{cls.__name__} defines update() but subclasses mqsync.Source, which never calls "
        f"it: subclass mqsync.IntervalSource (and set self.period) for periodic updates, or "
        f"override task() with a loop of your own")

"""HistoryClient: ask the network's databases for stored metric data, blocking.

The request path::

    history_*() in the caller's thread: HistoryRequest -> the history IO thread
        -> basic_publish to metricq.history, routing key = metric,
           reply_to = "<token>-hrsp", correlation_id = unique
    a database answers to "<token>-hrsp" with the same correlation_id
    history IO thread: the response's bytes -> the waiting caller (matched by correlation_id)
    caller: parse, check, return -- or RPCTimeout after ``timeout`` seconds

Nothing but matching happens on the IO thread; parsing a large response runs in the caller.
The response queue is made by the manager (``history.register``) and deleted by the broker
when this client disconnects, so after a reconnect the client registers again.
"""

from __future__ import annotations

import datetime
import enum
import logging
import time
from typing import Any, Iterator, Sequence

from google.protobuf.message import DecodeError

from ._proto import HistoryRequest
from ._proto import HistoryResponse as _HistoryResponseMessage
from .client import Client
from .connection import IOThread, body_bytes
from .errors import (
    ClientStopped,
    HistoryError,
    InvalidHistoryResponse,
    RPCTimeout,
)
from .names import HISTORY_EXCHANGE, BrokerURL, check_metric_name, derive_address
from .rpc import PendingCalls
from .timeseries import DurationLike, TimeAggregate, Timedelta, Timestamp, TimeValue

logger = logging.getLogger(__name__)

__all__ = [
    "HistoryClient",
    "HistoryError",
    "HistoryRequestType",
    "HistoryResponse",
    "HistoryResponseType",
    "InvalidHistoryResponse",
    "encode_history_request",
]


class HistoryRequestType(enum.IntEnum):
    """What a history request asks for (the protobuf ``HistoryRequest.RequestType``)."""

    AGGREGATE_TIMELINE = 0
    """Aggregates over consecutive periods of at most ``interval_max`` each."""
    AGGREGATE = 1
    """One aggregate over the whole range."""
    LAST_VALUE = 2
    """The metric's latest point."""
    FLEX_TIMELINE = 3
    """Raw values or aggregates, whichever the database finds fitting for ``interval_max``
    (``interval_max`` 0: raw values)."""


class HistoryResponseType(enum.Enum):
    """What a :class:`HistoryResponse` holds."""

    EMPTY = enum.auto()
    AGGREGATES = enum.auto()
    VALUES = enum.auto()
    LEGACY = enum.auto()
    """min/max/avg lists of old databases."""


def _time_ns(value: Timestamp | int | datetime.datetime | None, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, Timestamp):
        return value.posix_ns
    if isinstance(value, datetime.datetime):
        return Timestamp.from_datetime(value).posix_ns
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise TypeError(f"{name} must be a Timestamp, an aware datetime or int ns since the epoch, "
                    f"got {type(value).__name__} {value!r}")


def encode_history_request(start_time: Timestamp | int | None = None,
                           end_time: Timestamp | int | None = None,
                           interval_max: DurationLike | None = None,
                           request_type: HistoryRequestType = HistoryRequestType.AGGREGATE_TIMELINE
                           ) -> bytes:
    """Serialize a ``HistoryRequest``; arguments left at None stay unset (0 on the wire).

    Times are Timestamps, aware datetimes or int ns since the epoch; ``interval_max`` is a
    duration as :meth:`Timedelta.coerce` takes it (``"1min"``, or a number of seconds), not
    negative.

    Raises:
        TypeError, ValueError: an argument has the wrong type or value.
    """
    request = HistoryRequest()
    start = _time_ns(start_time, "start_time")
    end = _time_ns(end_time, "end_time")
    interval = (None if interval_max is None
                else Timedelta.coerce(interval_max, name="interval_max", negative=False).ns)
    if start is not None:
        request.start_time = start
    if end is not None:
        request.end_time = end
    if start is not None and end is not None and start > end:
        raise ValueError(f"start_time {start} ns is after end_time {end} ns")
    if interval is not None:
        request.interval_max = interval
    request.type = HistoryRequestType(request_type).value
    body: bytes = request.SerializeToString()
    return body


class HistoryResponse:
    """A database's answer: raw values or aggregates, checked for consistency on creation.

    Iterate :meth:`values` or :meth:`aggregates` depending on :attr:`mode`; with
    ``convert=True`` either works for both kinds.

    Raises:
        HistoryError: the database answered with an error.
        InvalidHistoryResponse: the lists' lengths do not fit together.
    """

    def __init__(self, proto: Any, request_duration: float | None = None):
        self.request_duration = request_duration
        """Seconds the database took (its ``x-request-duration`` header), if it said."""
        self.metric: str = proto.metric
        if proto.error:
            raise HistoryError(f"request failed on database: {proto.error}")
        count = len(proto.time_delta)
        lengths = {name: len(getattr(proto, name)) for name in
                   ("value_min", "value_max", "value_avg", "aggregate", "value")}
        if count == 0:
            if any(lengths.values()):
                raise InvalidHistoryResponse("time_delta empty, but values present")
            self._mode = HistoryResponseType.EMPTY
        elif lengths["aggregate"] == count:
            if lengths["value"]:
                raise InvalidHistoryResponse("values and aggregates present")
            self._mode = HistoryResponseType.AGGREGATES
        elif lengths["value"] == count:
            if lengths["aggregate"]:
                raise InvalidHistoryResponse("aggregates and values present")
            self._mode = HistoryResponseType.VALUES
        elif lengths["value_avg"] == count:
            if (lengths["value_min"] != count or lengths["value_max"] != count
                    or lengths["aggregate"] or lengths["value"]):
                raise InvalidHistoryResponse("inconsistent counts in legacy format")
            self._mode = HistoryResponseType.LEGACY
        else:
            raise InvalidHistoryResponse("no value count matches time_delta count")
        self._proto = proto

    def __len__(self) -> int:
        return len(self._proto.time_delta)

    def __repr__(self) -> str:
        return f"<HistoryResponse {self.metric!r} {self._mode.name} {len(self)}>"

    @property
    def mode(self) -> HistoryResponseType:
        """Whether this response holds values, aggregates, nothing, or the legacy format."""
        return self._mode

    def times_ns(self) -> list[int]:
        """The absolute times of the entries (int ns since the epoch)."""
        times = []
        total = 0
        for delta in self._proto.time_delta:
            total += delta
            times.append(total)
        return times

    def values(self, convert: bool = False) -> Iterator[TimeValue]:
        """The raw values; with ``convert`` the means of aggregates (or legacy averages).

        Raises:
            ValueError: the response holds no raw values and ``convert`` is False.
        """
        mode = self._mode
        if mode is HistoryResponseType.EMPTY:
            return iter(())
        if mode is HistoryResponseType.VALUES:
            return (TimeValue(Timestamp(t), v)
                    for t, v in zip(self.times_ns(), self._proto.value))
        if not convert:
            raise ValueError(f"this history response holds {mode.name}, not values; "
                             "use aggregates() or values(convert=True)")
        if mode is HistoryResponseType.AGGREGATES:
            return (TimeValue(a.timestamp, a.mean) for a in self.aggregates())
        return (TimeValue(Timestamp(t), v)
                for t, v in zip(self.times_ns(), self._proto.value_avg))

    def aggregates(self, convert: bool = False) -> Iterator[TimeAggregate]:
        """The aggregates; with ``convert`` raw values become one aggregate per interval
        between consecutive points (the first point starts the first interval).

        Raises:
            ValueError: the response holds no aggregates and ``convert`` is False.
            InvalidHistoryResponse: an aggregate has invalid fields, or raw values to convert
                are not strictly increasing in time.
        """
        mode = self._mode
        if mode is HistoryResponseType.EMPTY:
            return iter(())
        if mode is HistoryResponseType.AGGREGATES:
            return self._iter_aggregates()
        if not convert:
            raise ValueError(f"this history response holds {mode.name}, not aggregates; "
                             "use values() or aggregates(convert=True)")
        if mode is HistoryResponseType.VALUES:
            return self._iter_value_pairs()
        return (TimeAggregate(Timestamp(t), lo, hi, avg, 1, 0.0, Timedelta(0))
                for t, lo, hi, avg in zip(self.times_ns(), self._proto.value_min,
                                          self._proto.value_max, self._proto.value_avg))

    def _iter_aggregates(self) -> Iterator[TimeAggregate]:
        for t, proto in zip(self.times_ns(), self._proto.aggregate):
            try:
                yield TimeAggregate(Timestamp(t), proto.minimum, proto.maximum, proto.sum,
                                    proto.count, proto.integral, Timedelta(proto.active_time))
            except (TypeError, ValueError) as error:
                raise InvalidHistoryResponse(f"invalid aggregate at {t} ns: {error}") from None

    def _iter_value_pairs(self) -> Iterator[TimeAggregate]:
        times = self.times_ns()
        for before, t, value in zip(times, times[1:], self._proto.value[1:]):
            try:
                yield TimeAggregate.from_value_pair(Timestamp(before), Timestamp(t), value)
            except ValueError as error:
                raise InvalidHistoryResponse(str(error)) from None


class HistoryClient(Client):
    """A client that reads stored metric data from the network's databases.

    Every request blocks the calling thread until the answer arrives or ``timeout`` seconds
    passed (:class:`~mqsync.errors.RPCTimeout`); any number of threads may ask at once.

    Args:
        token: the client's token, e.g. ``"history-report"``; ``.<uuid>`` is appended unless
            ``add_uuid=False`` (two clients with one token would share a response queue and
            take each other's answers).
        url: the broker URL; ``None`` joins the embedded in-process network.

    Other keyword arguments go to :class:`~mqsync.Client`.
    """

    def __init__(self, token: str, url: BrokerURL | None = None, *, add_uuid: bool = True,
                 **kwargs: Any):
        super().__init__(token, url, add_uuid=add_uuid, **kwargs)
        self.history_exchange = HISTORY_EXCHANGE
        self.history_queue: str | None = None
        self._history: IOThread | None = None
        self._history_address: str | None = None
        self._requests = PendingCalls(f"{self.token}-history")

    # -- life cycle -------------------------------------------------------------------

    def _register(self) -> dict[str, Any]:
        reply = self.rpc("history.register")
        self.history_exchange = reply.get("historyExchange", HISTORY_EXCHANGE)
        self.history_queue = reply["historyQueue"]
        return reply

    def _on_start(self) -> None:
        reply = self._register()
        assert self._network_url is not None
        self._history_address = derive_address(self._network_url, reply["dataServerAddress"])
        self._history = IOThread(self._history_address, f"mqsync-{self.token}-history",
                                 self._setup_history, heartbeat=self.heartbeat,
                                 give_up=self.reconnect_timeout, on_fatal=self._on_history_fatal)
        self._history.start(self.connect_timeout)
        self.rpc_dispatch("config", **dict(reply.get("config") or {}))

    def _setup_history(self, channel: Any) -> None:
        history = self._history
        assert history is not None
        if history.generation > 1:
            # the broker deleted the auto-delete response queue with the old connection
            self._register()
        channel.exchange_declare(exchange=self.history_exchange, type="topic", durable=True,
                                 auto_delete=False, passive=True)
        assert self.history_queue is not None
        history.consume(self.history_queue, self._on_history_message, no_ack=True)

    def _on_history_fatal(self, error: BaseException) -> None:
        self._requests.fail_all(error)
        self._on_fatal(error)

    def _on_stop(self, timeout: float) -> None:
        self._requests.fail_all(ClientStopped(f"{self.token} stopped"))
        if self._history is not None:
            self._history.stop(timeout)

    def _io_threads(self) -> dict[str, IOThread | None]:
        return {**super()._io_threads(), "history": self._history}

    def stats(self) -> dict[str, int]:
        """Counters of :meth:`Client.stats`, plus ``unmatched_history_responses``."""
        counters = super().stats()
        counters["unmatched_history_responses"] = self._requests.unmatched
        return counters

    # -- receiving -----------------------------------------------------------------------

    def _on_history_message(self, message: Any) -> None:
        """IO thread: hand the response to whoever waits for its correlation id."""
        properties = message.properties
        headers = message.headers or {}
        self._requests.resolve(properties.get("correlation_id"), properties.get("app_id") or "",
                               {"body": message.body,
                                "duration": headers.get("x-request-duration")})

    # -- requests ------------------------------------------------------------------------

    def history_data_request(
        self,
        metric: str,
        start_time: Timestamp | int | None = None,
        end_time: Timestamp | int | None = None,
        interval_max: DurationLike | None = None,
        request_type: HistoryRequestType = HistoryRequestType.AGGREGATE_TIMELINE,
        timeout: float | None = None,
    ) -> HistoryResponse:
        """Send one history request for ``metric`` and return the checked response.

        Times are Timestamps (or int ns since the epoch); None leaves them unset, which
        databases take as "unbounded".  ``interval_max`` is a duration: a Timedelta, a
        ``datetime.timedelta``, a string with a unit (``"1min"``) or a number of seconds.

        Raises:
            ValueError, TypeError: a bad metric name or argument.
            RPCTimeout: no response within ``timeout`` seconds (default: the client's
                ``rpc_timeout``; no database keeps the metric, or it is busy).
            HistoryError: the database answered with an error.
            InvalidHistoryResponse: the response is malformed.
            ClientStopped, ConnectFailed: the client is not running.
        """
        check_metric_name(metric)
        body = encode_history_request(start_time, end_time, interval_max, request_type)
        timeout = self.rpc_timeout if timeout is None else timeout
        self._check_running()
        history = self._history
        assert history is not None and self.history_queue is not None
        correlation_id = self._requests.new_id()
        reply = self._requests.expect_one(correlation_id, "history request")
        sent_at = time.monotonic()
        try:
            sent = history.publish(body, self.history_exchange, metric,
                                   correlation_id=correlation_id, reply_to=self.history_queue,
                                   app_id=self.token)
            self._requests.fail_unsent(reply, sent)
            try:
                answer = reply.result(timeout)
            except TimeoutError:
                raise RPCTimeout(
                    f"{self.token}: no response to the {HistoryRequestType(request_type).name} "
                    f"history request for {metric!r} within {timeout:g} s (does a database "
                    "keep this metric?)") from None
        finally:
            self._requests.forget(correlation_id)
        try:
            proto = _HistoryResponseMessage.FromString(body_bytes(answer["body"]))
        except DecodeError as error:
            raise InvalidHistoryResponse(f"history response for {metric!r} is not a "
                                         f"HistoryResponse: {error}") from None
        duration = answer.get("duration")
        try:
            request_duration = None if duration is None else float(duration)
        except (TypeError, ValueError):
            request_duration = None
        logger.debug("%s: history response for %r after %.3f s", self.token, metric,
                     time.monotonic() - sent_at)
        return HistoryResponse(proto, request_duration)

    def history_aggregate(self, metric: str, start_time: Timestamp | int | None = None,
                          end_time: Timestamp | int | None = None,
                          timeout: float | None = None) -> TimeAggregate:
        """One aggregate of ``metric`` over ``(start_time, end_time]`` (None: unbounded).

        Raises:
            InvalidHistoryResponse: the database did not answer with exactly one aggregate.
            (and see :meth:`history_data_request`)
        """
        response = self.history_data_request(metric, start_time, end_time, None,
                                             HistoryRequestType.AGGREGATE, timeout)
        if len(response) != 1:
            raise InvalidHistoryResponse(f"contains {len(response)} aggregates, expected 1")
        try:
            return next(response.aggregates())
        except ValueError:
            raise InvalidHistoryResponse("AGGREGATE response contains no aggregate") from None

    def history_aggregate_timeline(self, metric: str, *,
                                   interval_max: DurationLike,
                                   start_time: Timestamp | int | None = None,
                                   end_time: Timestamp | int | None = None,
                                   timeout: float | None = None) -> list[TimeAggregate]:
        """Aggregates of consecutive periods, each at most ``interval_max`` long, that together
        cover ``start_time`` to ``end_time``.

        Raises:
            InvalidHistoryResponse: the response holds raw values instead.
            (and see :meth:`history_data_request`)
        """
        if interval_max is None:
            raise TypeError("history_aggregate_timeline needs interval_max, e.g. '1min'")
        response = self.history_data_request(metric, start_time, end_time, interval_max,
                                             HistoryRequestType.AGGREGATE_TIMELINE, timeout)
        try:
            return list(response.aggregates())
        except ValueError:
            raise InvalidHistoryResponse("AGGREGATE_TIMELINE contains no aggregates") from None

    def history_last_value(self, metric: str, timeout: float | None = None) -> TimeValue | None:
        """The latest stored point of ``metric``, or None if it has none.

        Raises:
            InvalidHistoryResponse: the response holds no raw value.
        """
        response = self.history_data_request(metric, None, None, None,
                                             HistoryRequestType.LAST_VALUE, timeout)
        try:
            values = list(response.values())
        except ValueError:
            raise InvalidHistoryResponse("LAST_VALUE response holds no raw value") from None
        if len(values) > 1:
            raise InvalidHistoryResponse(f"LAST_VALUE returned {len(values)} values, expected 1")
        return values[0] if values else None

    def history_raw_timeline(self, metric: str, start_time: Timestamp | int | None = None,
                             end_time: Timestamp | int | None = None,
                             timeout: float | None = None) -> list[TimeValue]:
        """The raw points of ``metric`` from ``start_time`` to ``end_time`` (None: unbounded).

        Raises:
            InvalidHistoryResponse: the response holds aggregates instead.
        """
        response = self.history_data_request(metric, start_time, end_time, Timedelta(0),
                                             HistoryRequestType.FLEX_TIMELINE, timeout)
        try:
            return list(response.values())
        except ValueError:
            raise InvalidHistoryResponse("raw timeline response contained no values") from None

    def get_metrics(
        self,
        selector: str | Sequence[str] | None = None,
        metadata: bool = True,
        historic: bool | None = True,
        timeout: float | None = None,
        prefix: str | None = None,
        infix: str | None = None,
        limit: int | None = None,
        hidden: bool | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Like :meth:`Client.get_metrics`, but only historic metrics unless ``historic`` says
        otherwise (``None``: all)."""
        return super().get_metrics(selector, metadata=metadata, historic=historic,
                                   timeout=timeout, prefix=prefix, infix=infix, limit=limit,
                                   hidden=hidden)

"""The one exception hierarchy of mqsync.

Every error the SDK raises on purpose derives from :class:`MqsyncError`, so
``except mqsync.MqsyncError`` catches them all.  Bad user input additionally
derives from :class:`ValueError` where that is what Python code expects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class MqsyncError(Exception):
    """Base class of every error raised by mqsync."""


class ConnectFailed(MqsyncError):
    """The broker could not be reached, or the connection was lost for good."""


class RPCError(MqsyncError):
    """A remote procedure call was answered with an error.

    ``function`` names the RPC, ``token`` the responder (when known).
    """

    def __init__(self, message: str, *, function: str | None = None, token: str | None = None):
        super().__init__(message)
        self.function = function
        self.token = token


class RPCTimeout(MqsyncError, TimeoutError):
    """No reply to a remote procedure call arrived in time."""


class PublishFailed(MqsyncError):
    """Data could not be handed to the broker."""


class ClientStopped(MqsyncError):
    """The client is not running (never started, stopped, or failed)."""


class ConfigError(MqsyncError, ValueError):
    """A configuration value is missing or malformed."""


class PluginError(MqsyncError):
    """A source plugin failed to import, load or run."""


class InvalidMessage(MqsyncError, ValueError):
    """A message from the network could not be decoded."""


class InvalidRequest(RPCError, ValueError):
    """An RPC request's arguments do not match what the function accepts.

    Raised by RPC handlers on input from the network: the caller gets the message as its
    error reply, and the responder logs one WARNING line without a traceback.
    """


class UnknownFunction(RPCError, KeyError):
    """No handler is registered for an RPC function."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class HistoryError(MqsyncError):
    """A database answered a history request with an error."""


class InvalidHistoryResponse(HistoryError, InvalidMessage):
    """A history response is not what the request asked for, or inconsistent in itself."""


class TooManyFailures(MqsyncError):
    """``update()`` failed ``max_consecutive_failures`` times in a row.

    Raised by :meth:`mqsync.scheduler.Scheduler.run`; the last error is the ``__cause__``.
    ``failures`` is the length of the streak that ended the run.
    """

    def __init__(self, message: str, *, failures: int):
        super().__init__(message)
        self.failures = failures


class StateError(MqsyncError):
    """A state file could not be used and was not moved aside (e.g. a newer format)."""


class SpoolError(MqsyncError):
    """The spool cannot be used: closed, in use by another process, or a disk error."""


class StreamerError(MqsyncError):
    """The streamer's database cannot be used (closed, or a disk error)."""


class StoreError(MqsyncError):
    """The store cannot answer a request (bad arguments, a corrupt or foreign file)."""


class TooMuchData(StoreError):
    """A request would return more points or buckets than the store's limit allows."""


class DataLoggerError(MqsyncError):
    """Base class of the errors of :mod:`mqsync.datalogger`."""


class InvalidMeasurement(DataLoggerError, ValueError):
    """A measurement is declared wrongly, or an entry does not fit its declaration.

    Raised at once by the data logger's ``log``, ``measure`` and ``measure_block`` (before the
    measured code runs), so a wrong entry never reaches a writer.
    """


class MetricNameCollision(DataLoggerError, ValueError):
    """Two different series would be sent under the same MetricQ metric name."""


class WriteFailed(DataLoggerError):
    """One or more data logger writers raised while ``write_data`` handed them a batch.

    ``failures`` lists ``(writer, exception)`` pairs, each writer a
    ``mqsync.datalogger.DatabaseWriter``. The writers that succeeded got the batch once; each
    failed writer keeps its batch and gets it again on the next ``write_data``.
    """

    def __init__(self, failures: Sequence[tuple[Any, BaseException]]) -> None:
        self.failures: list[tuple[Any, BaseException]] = list(failures)
        details = "; ".join(f"{type(w).__name__}: {e!r}" for w, e in self.failures)
        super().__init__(
            f"{len(self.failures)} writer(s) failed, their data is kept for the next write: "
            f"{details}"
        )

"""The errors the data logger raises; all derive from :class:`mqsync.errors.MqsyncError`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from mqsync.errors import MqsyncError

if TYPE_CHECKING:
    from ._writer import DatabaseWriter


class DataLoggerError(MqsyncError):
    """Base class of the data logger's errors."""


class InvalidMeasurement(DataLoggerError, ValueError):
    """A measurement is declared wrongly, or an entry does not fit its declaration.

    Raised at once by ``log``, ``measure`` and ``measure_block`` (before the measured code
    runs), so a wrong entry never reaches a writer.
    """


class MetricNameCollision(DataLoggerError, ValueError):
    """Two different series would be sent under the same MetricQ metric name."""


class WriteFailed(DataLoggerError):
    """One or more writers raised while ``write_data`` handed them a batch.

    ``failures`` lists ``(writer, exception)`` pairs. The writers that succeeded got the batch
    once; each failed writer keeps its batch and gets it again on the next ``write_data``.
    """

    def __init__(self, failures: Sequence[tuple[DatabaseWriter, BaseException]]) -> None:
        self.failures = list(failures)
        details = "; ".join(f"{type(w).__name__}: {e!r}" for w, e in self.failures)
        super().__init__(
            f"{len(self.failures)} writer(s) failed, their data is kept for the next write: "
            f"{details}"
        )

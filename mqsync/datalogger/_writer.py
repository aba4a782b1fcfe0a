"""DatabaseWriter: the interface every writer implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._core import DataLogger


class DatabaseWriter(ABC):
    """Where logged data goes. Subclass it and implement :meth:`write_data`.

    ``write_data`` gets a DataLogger that holds exactly the batch to write (its ``dataset`` and
    ``events``); it has no writers of its own. Calls are serialised per DataLogger. Raise to
    report a failure: the DataLogger keeps the batch for this writer and hands it over again,
    together with newer data, on its next ``write_data``.
    """

    @abstractmethod
    def write_data(self, datalogger: DataLogger) -> None:
        """Write ``datalogger.dataset`` and ``datalogger.events``; raise if that failed."""

    def close(self) -> None:  # noqa: B027 - an optional hook, not an abstract method
        """Release what the writer owns (connections, files). The default does nothing."""

"""Value types of the ``ipmi`` source: the masked :class:`Secret`, a BMC, a reading,
a command to run and how it ended."""

from __future__ import annotations

import hmac
from typing import Any, Mapping

import attrs

from .._common import str_tuple


class Secret:
    """A password: its ``repr`` and ``str`` are masked; :meth:`reveal` gives the text."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        """The secret text itself."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __reduce__(self) -> Any:
        raise TypeError("a Secret cannot be pickled")


@attrs.frozen
class BmcHost:
    """One BMC to poll; the repr shows address and name only."""

    address: str
    name: str
    username: str = attrs.field(repr=False)
    password: Secret = attrs.field(repr=False)
    port: int | None = None

    @property
    def target(self) -> str:
        """The host as the tools take it: ``address``, ``address:port``, ``[v6]:port``."""
        if self.port is None:
            return self.address
        if ":" in self.address:
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"

    @property
    def label(self) -> str:
        """How logs name the host."""
        return self.name if self.name == self.address else f"{self.name} ({self.address})"


@attrs.frozen
class Reading:
    """One sensor reading; ``value`` is NaN when the sensor has none right now."""

    sensor: str
    type: str
    value: float
    unit: str
    record_id: str = ""


@attrs.frozen
class Invocation:
    """A command to run: arguments, extra environment and private files (path -> text).

    Only ``argv`` shows in the repr: the environment and files may hold credentials.
    """

    argv: tuple[str, ...] = attrs.field(converter=str_tuple)
    env: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    files: Mapping[str, str] = attrs.field(factory=dict, repr=False)


@attrs.frozen
class RunResult:
    """How a command ended: exit status (None if killed), complete output lines, timeout."""

    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool = False


class Cancelled(Exception):
    """The poll was stopped because the source is stopping or reconfigured."""

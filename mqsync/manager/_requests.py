"""The manager's checks of RPC arguments: every handler runs them before it touches state.

Each check takes the RPC's name, the argument's name and the value as it came out of the
JSON body, and returns the value in the type the handler works with, or raises
:class:`~mqsync.errors.InvalidRequest` with a message that names the function, the
argument and what was expected.  A failed check changes nothing.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from ..errors import InvalidRequest
from ..names import MAX_ROUTING_KEY_BYTES, check_metric_name

#: How deeply a metric's metadata may nest (objects and arrays).
MAX_METADATA_DEPTH = 32

#: ``<token>.<32 hex digits>``: a token with a uuid appended (``add_uuid``).
_UUID_SUFFIX = re.compile(r"\.[0-9a-f]{32}\Z")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _refuse(function: str, name: str, expected: str, value: Any) -> InvalidRequest:
    return InvalidRequest(f"{function}: '{name}' must be {expected}, got {_kind(value)}",
                          function=function)


def boolean(function: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _refuse(function, name, "true or false", value)
    return value


def optional_boolean(function: str, name: str, value: Any) -> bool | None:
    return None if value is None else boolean(function, name, value)


def optional_string(function: str, name: str, value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise _refuse(function, name, "a string", value)
    return value


def queue_name(function: str, name: str, value: Any) -> str:
    """A queue name: a non-empty string of at most 255 UTF-8 bytes."""
    if not isinstance(value, str) or not value:
        raise _refuse(function, name, "a queue name (a non-empty string)", value)
    if len(value.encode("utf-8")) > MAX_ROUTING_KEY_BYTES:
        raise InvalidRequest(f"{function}: '{name}' is longer than {MAX_ROUTING_KEY_BYTES} "
                             "bytes", function=function)
    return value


def positive_seconds(function: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 2**31:
        raise _refuse(function, name, "a positive number of seconds", value)
    return float(value)


def non_negative_int(function: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _refuse(function, name, "a non-negative integer", value)
    return value


def metric_name(function: str, value: Any, where: str = "metrics") -> str:
    try:
        return check_metric_name(value)
    except (TypeError, ValueError) as error:
        raise InvalidRequest(f"{function}: '{where}' holds an invalid metric name: {error}",
                             function=function) from None


def metric_names(function: str, value: Any, name: str = "metrics") -> list[str]:
    """A JSON array of metric names."""
    if not isinstance(value, list):
        raise _refuse(function, name, "an array of metric names", value)
    return [metric_name(function, entry, name) for entry in value]


def metric_metadata(function: str, value: Any) -> dict[str, dict[str, Any]]:
    """``source.declare_metrics``' metrics: ``{name: metadata object}`` or a list of names."""
    if isinstance(value, list):
        return {name: {} for name in metric_names(function, value)}
    if not isinstance(value, dict):
        raise _refuse(function, "metrics", "an object of {name: metadata} or an array of "
                      "names", value)
    for name, metadata in value.items():
        metric_name(function, name)
        if not isinstance(metadata, dict):
            raise InvalidRequest(f"{function}: metadata of {name[:60]!r} must be an object, "
                                 f"got {_kind(metadata)}", function=function)
        if _depth(metadata) > MAX_METADATA_DEPTH:
            raise InvalidRequest(f"{function}: metadata of {name[:60]!r} nests deeper than "
                                 f"{MAX_METADATA_DEPTH} levels", function=function)
    return value


def selector(function: str, value: Any) -> str | list[str] | None:
    """A regular expression or a non-empty array of metric names."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        if not value:
            raise InvalidRequest(f"{function}: 'selector' must not be an empty array: give "
                                 "at least one metric name, or no selector", function=function)
        return metric_names(function, value, "selector")
    raise _refuse(function, "selector", "a regular expression (a string) or an array of "
                  "metric names", value)


def owner_base(token: str) -> str:
    """``token`` without the ``.<uuid>`` that ``add_uuid`` appends."""
    return _UUID_SUFFIX.sub("", token)


def owns(from_token: str, owner: str) -> bool:
    """Whether ``from_token`` may use a queue ``owner`` subscribed: the owner itself, or a
    client whose token is the owner's with a uuid appended (the Drain of a Subscriber, in
    the official client as in mqsync)."""
    return from_token == owner or owner_base(from_token) == owner


def named_for(from_token: str, queue: str) -> bool:
    """Whether ``queue`` carries the name the manager would give a data queue of
    ``from_token`` (``<token>-data`` or ``<token>-<32 hex digits>-data``), for queues it
    has no record of (a manager that kept its metadata in memory and was restarted)."""
    for token in {from_token, owner_base(from_token)}:
        if re.fullmatch(re.escape(token) + r"(-[0-9a-f]{32})?-data", queue):
            return True
    return False


def _depth(value: Any) -> int:
    # iterative, so a hostile document cannot exhaust the stack
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > MAX_METADATA_DEPTH:
            break
        if isinstance(item, Mapping):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return deepest

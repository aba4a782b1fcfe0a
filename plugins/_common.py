"""Helpers shared by the built-in source plugins: metric name segments and config checks.

Private to ``mqsync_plugins``; third-party plugins should not import it.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import re
import socket
from typing import Any, Iterable, Mapping

from mqsync.config import refuse_unknown_keys
from mqsync.errors import ConfigError
from mqsync.plugin import ConfigOption

logger = logging.getLogger(__name__)

_INVALID = re.compile(r"[^A-Za-z0-9_-]+")

#: Keys every plugin source accepts (handled by :class:`mqsync.plugin.PluginSource`).
SCHEDULE_OPTIONS = (
    ConfigOption("rate", 1.0, "updates per second (ignored when period is set)", "float"),
    ConfigOption("period", None, "time between updates, e.g. '500ms' (overrides rate)", "duration"),
)


def metric_segment(text: str, *, lower: bool = False, fallback: str = "unnamed") -> str:
    """``text`` as one dot-free segment of a metric name.

    Every run of characters other than ASCII letters, digits, ``_`` and ``-`` becomes one
    ``_`` (so ``"eth0.100"`` -> ``"eth0_100"``, ``"CPU1 Temp"`` -> ``"CPU1_Temp"``), and
    leading or trailing ``_`` are dropped; an empty result becomes ``fallback``.
    """
    segment = _INVALID.sub("_", text).strip("_")
    if lower:
        segment = segment.lower()
    return segment or fallback


def short_hostname() -> str:
    """This machine's host name without its domain, as a metric segment (lower case)."""
    return metric_segment(socket.gethostname().split(".")[0], lower=True, fallback="localhost")


def check_prefix(value: Any, option: str = "prefix", *, allow_empty: bool = False) -> str:
    """A metric name prefix: dot-separated segments of letters, digits, ``_`` and ``-``.

    Raises:
        ConfigError: ``value`` is not such a string.
    """
    if isinstance(value, str) and value == "" and allow_empty:
        return value
    if not isinstance(value, str) or not all(
        segment and not _INVALID.search(segment) for segment in value.split(".")
    ):
        raise ConfigError(
            f"invalid {option} {value!r}: expected dot-separated segments of "
            "letters, digits, '_' and '-', e.g. 'sysinfo' or 'site.rack1'"
        )
    return value


def check_segment(value: Any, option: str) -> str:
    """One metric name segment (no dots).

    Raises:
        ConfigError: ``value`` is not a non-empty string of letters, digits, ``_``, ``-``.
    """
    if not isinstance(value, str) or not value or _INVALID.search(value):
        raise ConfigError(
            f"invalid {option} {value!r}: expected letters, digits, '_' and '-' only, e.g. 'node01'"
        )
    return value


def check_patterns(value: Any, option: str) -> tuple[str, ...]:
    """A list of shell-style name patterns (``"eth*"``).

    Raises:
        ConfigError: ``value`` is not a list of strings.
    """
    if (
        isinstance(value, str)
        or not isinstance(value, (list, tuple))
        or not all(isinstance(item, str) for item in value)
    ):
        raise ConfigError(
            f"invalid {option} {value!r}: expected a list of name patterns, e.g. ['eth*', 'en*']"
        )
    return tuple(value)


def check_number(
    config: Mapping[str, Any],
    option: str,
    *,
    minimum: float | None = None,
    positive: bool = False,
    integer: bool = False,
) -> Any:
    """The number ``config[option]``.

    Raises:
        ConfigError: it is not a (finite) number, not an int where one is needed, or out of
            range.
    """
    value = config.get(option)
    kind = "an integer" if integer else "a number"
    if (
        isinstance(value, bool)
        or not isinstance(value, int if integer else (int, float))
        or not math.isfinite(value)
    ):
        raise ConfigError(f"invalid {option} {value!r}: expected {kind}")
    if positive and not value > 0:
        raise ConfigError(f"invalid {option} {value!r}: expected {kind} > 0")
    if minimum is not None and value < minimum:
        raise ConfigError(f"invalid {option} {value!r}: expected {kind} >= {minimum:g}")
    return value


def check_bool(config: Mapping[str, Any], option: str) -> bool:
    """The boolean ``config[option]``.

    Raises:
        ConfigError: it is not ``true`` or ``false``.
    """
    value = config.get(option)
    if not isinstance(value, bool):
        raise ConfigError(f"invalid {option} {value!r}: expected true or false")
    return value


def str_tuple(values: Iterable[str]) -> tuple[str, ...]:
    """``values`` as a tuple: the converter of value classes' fields of strings."""
    return tuple(values)


def selected(name: str, include: Iterable[str], exclude: Iterable[str]) -> bool:
    """Whether ``name`` matches a pattern of ``include`` and none of ``exclude``."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in include) and not any(
        fnmatch.fnmatchcase(name, pattern) for pattern in exclude
    )


def check_known_keys(kind: str, config: Mapping[str, Any], options: Iterable[ConfigOption]) -> None:
    """Refuse configuration keys the source kind does not know (typos, keys of another
    kind), as ``cli.toml`` does.

    Raises:
        ConfigError: naming the unknown keys, the closest known key of each, and the keys
            that exist.
    """
    refuse_unknown_keys(f"the {kind} configuration", config, (o.name for o in options))

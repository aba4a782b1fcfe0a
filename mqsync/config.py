"""Reading configuration files (JSON or TOML) with errors that name the file."""

from __future__ import annotations

import difflib
import json
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

from .errors import ConfigError


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a ``.toml`` file as TOML and anything else as JSON; the top level is an object.

    Raises:
        ConfigError: the file cannot be read, does not parse, or is not an object.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
        if file.suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read configuration file {file}: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"configuration file {file} must hold an object, got "
                          f"{type(data).__name__}")
    return data


def refuse_unknown_keys(where: str, config: Mapping[str, Any], known: Iterable[str]) -> None:
    """Refuse keys of ``config`` that are not ``known`` (typos, keys of another kind).

    Raises:
        ConfigError: naming the unknown keys, the closest known key of each, ``where``
            they are (e.g. "the dummy configuration") and the keys that exist.
    """
    keys = sorted(set(known))
    unknown = sorted((key for key in config if key not in keys), key=str)
    if not unknown:
        return
    described = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), keys, n=1)
        described.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    plural = "s" if len(unknown) > 1 else ""
    raise ConfigError(f"unknown key{plural} {', '.join(described)} in {where}; the keys are "
                      f"{', '.join(keys)}")

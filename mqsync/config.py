"""Reading configuration files (JSON or TOML) with errors that name the file."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

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

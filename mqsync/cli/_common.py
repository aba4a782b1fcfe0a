"""What every mqsync command shares: the network URL, the token, logging, one configuration
file, time arguments and exit codes.

A command built on :class:`CommandParser` resolves each of its settings in this order::

    command line  >  $MQSYNC_<KEY>  >  config file [<command>] table  >  config file top level
                  >  built-in default

The config file is ``--config-file``, else ``$MQSYNC_CONFIG``, else
``~/.config/mqsync/cli.toml`` when it exists; a ``.toml`` file is TOML, anything else JSON::

    url = "amqp://user:secret@broker/"
    log_level = "info"

    [send]
    token = "source-send-$USER-$HOST"

    [check]
    grace = 2.0

``$USER`` and ``$HOST`` (also ``${USER}``, ``${HOST}``) are expanded in tokens.  URLs are
shown with the password masked (``--show-config``, errors).
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import logging
import os
import re
import socket
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Sequence

from ..config import read_config_file
from ..connection import redact_url
from ..errors import ConfigError, ConnectFailed
from ..timeseries import Timedelta, Timestamp

#: Exit codes scripts can rely on.
EXIT_OK = 0
EXIT_FAILURE = 1  # the program ran and something failed (lost connection, failed update)
EXIT_USAGE = 2  # bad command line or configuration, found before connecting
EXIT_CONNECT = 3  # the broker or the manager could not be reached
EXIT_INTERRUPTED = 130

#: Where the configuration file is looked for when neither --config-file nor $MQSYNC_CONFIG
#: names one.
DEFAULT_CONFIG_FILE = Path("~/.config/mqsync/cli.toml")
CONFIG_ENV = "MQSYNC_CONFIG"
#: Keys allowed at the top level of the configuration file (besides per-command tables).
COMMON_KEYS = ("url", "token", "log_level")
LOG_LEVELS = ("debug", "info", "warning", "error")
#: Seconds a command waits for the broker and the manager at start.
CONNECT_TIMEOUT = 10.0

CONFIG_HELP = (
    "configuration: --url, --token and --log-level also come from $MQSYNC_URL, "
    "$MQSYNC_TOKEN and $MQSYNC_LOG_LEVEL, or from a config file (--config-file, else "
    "$MQSYNC_CONFIG, else ~/.config/mqsync/cli.toml; TOML or JSON): top-level url, token, "
    "log_level, and a [{command}] table with any of {keys}.  The command line wins over the "
    "environment, which wins over the file.  $USER and $HOST are expanded in tokens.  "
    "--show-config prints what applies and where it came from.")


def setup_logging(level: str) -> None:
    """Log to stderr with thread names, at ``level``."""
    logging.basicConfig(level=getattr(logging, level.upper()),
                        format="%(asctime)s %(levelname)-7s %(name)s [%(threadName)s] %(message)s")


# -- layered settings ------------------------------------------------------------------


class _Setting:
    """One option that may also come from the environment or the configuration file."""

    def __init__(self, action: argparse.Action, key: str, env: str | None, default: Any,
                 convert: Callable[[Any], Any] | None):
        self.action = action
        self.key = key
        self.env = env
        self.default = default
        self.convert = convert

    @property
    def dest(self) -> str:
        return self.action.dest

    @property
    def is_flag(self) -> bool:
        return isinstance(self.action, argparse._StoreConstAction)  # store_true/false

    def coerce(self, value: Any, where: str) -> Any:
        """A value from the environment (a str) or the file, checked like the command line's."""
        try:
            if self.is_flag:
                value = _as_bool(value)
            elif self.convert is not None:
                value = self.convert(value)
            elif self.action.type is None:
                if not isinstance(value, str):
                    raise TypeError(f"expected a string, got {type(value).__name__}")
            elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
                value = self.action.type(value)
            else:
                raise TypeError(f"expected a string or a number, got {type(value).__name__}")
        except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
            raise ConfigError(f"invalid {self.key} {_shown(self.key, value)} in {where}: "
                              f"{error}") from None
        choices = self.action.choices
        if choices is not None and value not in choices:
            raise ConfigError(f"invalid {self.key} {_shown(self.key, value)} in {where}: "
                              f"expected one of {', '.join(map(str, choices))}")
        return value


class CommandParser(argparse.ArgumentParser):
    """An argument parser whose settings also come from ``$MQSYNC_*`` and a config file.

    Args:
        command: the command's name without ``mqsync-`` (``"check"``): its ``prog`` and the
            name of its table in the configuration file.
        token: the default token (``$USER``/``$HOST`` are expanded); ``None``: no ``--token``.
        url_required: the command needs a broker (no embedded network); without a URL the
            parse fails with exit code 2.

    After :meth:`parse_args` the namespace holds the resolved values, plus
    ``config_sources`` (where each came from) and ``config_file`` (the file read, or None).
    """

    def __init__(self, command: str, *, token: str | None = None, url_required: bool = True,
                 **kwargs: Any):
        kwargs.setdefault("prog", f"mqsync-{command}")
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        if kwargs.get("description"):
            kwargs["description"] = textwrap.fill(kwargs["description"], width=88,
                                                  break_on_hyphens=False)
        super().__init__(**kwargs)
        self._examples = (self.epilog or "").rstrip("\n")
        # "-1h", "-10s", "-2.5e3" are values (times, durations, numbers), never options:
        # argparse itself only takes plain negative numbers for values.
        self._negative_number_matcher = re.compile(r"^-\d")
        self.command = command
        self.url_required = url_required
        self._settings: list[_Setting] = []
        self.add_argument("--config-file", metavar="FILE",
                          help=f"configuration file (default: ${CONFIG_ENV}, else "
                          f"{DEFAULT_CONFIG_FILE} if it exists)")
        self.add_argument("--show-config", action="store_true",
                          help="print the settings that apply and where they come from, then "
                          "exit")
        self.add_setting("--url", env="MQSYNC_URL",
                         help="broker URL, e.g. amqp://user:pass@host/ (env MQSYNC_URL)")
        if token is not None:
            self.add_setting("--token", env="MQSYNC_TOKEN", default=token,
                             help=f"this client's token (env MQSYNC_TOKEN; default: {token})")
        self.add_setting("--log-level", env="MQSYNC_LOG_LEVEL", default="warning",
                         choices=list(LOG_LEVELS), help="log verbosity (default: warning)")

    def format_help(self) -> str:
        """The help, ending with where the settings come from (this command's keys named)."""
        keys = ", ".join(s.key for s in self._settings)
        config = textwrap.fill(CONFIG_HELP.format(command=self.command, keys=keys), width=88,
                               break_on_hyphens=False)
        self.epilog = f"{self._examples}\n\n{config}" if self._examples else config
        return super().format_help()

    def add_setting(self, *flags: str, key: str | None = None, env: str | None = None,
                    default: Any = None, convert: Callable[[Any], Any] | None = None,
                    **kwargs: Any) -> argparse.Action:
        """Add an option that may also be set in the command's table of the config file.

        ``key`` is its name in the file (default: the option's dest, ``log_level``), ``env``
        an environment variable that sets it, ``convert`` checks a value from either (the
        command line uses ``type``).  argparse sees no default, so a value given on the
        command line is told apart from one left out.
        """
        action = self.add_argument(*flags, default=None, **kwargs)
        self._settings.append(_Setting(action, key or action.dest, env, default, convert))
        return action

    def parse_known_args(self, args: Sequence[str] | None = None,
                         namespace: argparse.Namespace | None = None
                         ) -> tuple[argparse.Namespace, list[str]]:
        namespace, extras = super().parse_known_args(args, namespace)
        try:
            self._resolve(namespace)
        except ConfigError as error:
            self.error(str(error))
        if namespace.show_config:
            self._show_config(namespace)
            self.exit(EXIT_OK)
        if self.url_required and not namespace.url:
            self.error("no broker URL: give --url, set $MQSYNC_URL, or put url in the config "
                       "file")
        return namespace, extras

    # -- resolution ----------------------------------------------------------------

    def _config_path(self, given: str | None) -> Path | None:
        """--config-file, else $MQSYNC_CONFIG (both must exist), else the default if it does."""
        if given:
            return Path(given).expanduser()
        if os.environ.get(CONFIG_ENV):
            return Path(os.environ[CONFIG_ENV]).expanduser()
        default = DEFAULT_CONFIG_FILE.expanduser()
        return default if default.is_file() else None

    def _read_file(self, path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        if not path.is_file():
            raise ConfigError(f"configuration file {path} does not exist")
        data = read_config_file(path)
        for key, value in data.items():
            if not isinstance(value, dict) and key not in COMMON_KEYS:
                raise ConfigError(f"unknown key {key!r} in {path}: expected "
                                  f"{', '.join(COMMON_KEYS)} or a table per command, "
                                  f"e.g. [{self.command}]")
        table = data.get(self.command, {})
        known = {setting.key for setting in self._settings}
        for key in table:
            if key not in known:
                raise ConfigError(f"unknown key {key!r} in table [{self.command}] of {path}: "
                                  f"expected one of {', '.join(sorted(known))}")
        top = {key: value for key, value in data.items() if key in COMMON_KEYS}
        return top, table

    def _resolve(self, namespace: argparse.Namespace) -> None:
        path = self._config_path(namespace.config_file)
        top: dict[str, Any] = {}
        table: dict[str, Any] = {}
        if path is not None:
            top, table = self._read_file(path)
        sources: dict[str, str] = {}
        for setting in self._settings:
            value = getattr(namespace, setting.dest)
            if value is not None:
                where = "command line"
            elif setting.env and os.environ.get(setting.env):
                where = f"${setting.env}"
                value = setting.coerce(os.environ[setting.env], where)
            elif setting.key in table:
                where = f"{path} [{self.command}]"
                value = setting.coerce(table[setting.key], where)
            elif setting.key in top:
                where = str(path)
                value = setting.coerce(top[setting.key], where)
            else:
                where = "default"
                value = setting.default
            if setting.key == "token" and value is not None:
                value = expand_token(value)
            setattr(namespace, setting.dest, value)
            sources[setting.dest] = where
        namespace.config_file = path
        namespace.config_sources = sources

    def _show_config(self, namespace: argparse.Namespace) -> None:
        path = namespace.config_file
        print(f"config file: {path if path is not None else 'none'}")
        for setting in self._settings:
            value = getattr(namespace, setting.dest)
            shown = _shown(setting.key, value) if value is not None else "(not set)"
            print(f"{setting.key} = {shown}  ({namespace.config_sources[setting.dest]})")


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _shown(key: str, value: Any) -> str:
    """A value for messages: URLs with the password masked."""
    if isinstance(value, str) and "url" in key:
        return repr(redact_url(value))
    return repr(value)


# -- tokens ----------------------------------------------------------------------------

_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def user_name() -> str:
    """The login name, without white space (``unknown`` when there is none)."""
    try:
        name = getpass.getuser()
    except Exception:  # no $USER and no passwd entry (a bare container)
        name = ""
    return re.sub(r"\s+", "_", name) or "unknown"


def host_name() -> str:
    """This machine's host name without its domain."""
    return socket.gethostname().split(".")[0] or "localhost"


def expand_token(token: str) -> str:
    """``token`` with ``$USER``/``${USER}`` and ``$HOST``/``${HOST}`` replaced.

    Raises:
        ConfigError: it names any other variable (a typo such as ``$HOSTNAME``).
    """
    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name == "USER":
            return user_name()
        if name == "HOST":
            return host_name()
        raise ConfigError(f"invalid token {token!r}: unknown variable ${name}; only $USER and "
                          "$HOST (or ${USER}, ${HOST}) are expanded")

    return _VARIABLE.sub(replace, token)


# -- times -----------------------------------------------------------------------------

_NUMBER = re.compile(r"\d+(\.\d*)?|\.\d+")


def parse_time(text: str, *, now: Timestamp | None = None) -> Timestamp:
    """A point in time from the command line.

    ``now``; a signed duration relative to now (``-1h``, ``-90s``, ``+5min``); POSIX
    seconds (``1700000000``, ``1700000000.25``, as from ``date +%s``); or ISO 8601
    (``2024-05-01T12:00:00Z``, ``2024-05-01T14:00:00+02:00``; without an offset it is
    local time).

    Raises:
        ValueError: none of these.
    """
    text = text.strip()
    now = Timestamp.now() if now is None else now
    if text == "now":
        return now
    if text[:1] in ("+", "-"):
        try:
            return now + Timedelta.from_string(text)
        except ValueError:
            pass
    elif _NUMBER.fullmatch(text):
        return Timestamp.from_posix_seconds(float(text)) if "." in text \
            else Timestamp(int(text) * 1_000_000_000)
    else:
        try:
            return Timestamp.from_iso8601(text)
        except ValueError:
            try:
                local = datetime.datetime.fromisoformat(text)
            except ValueError:
                pass
            else:
                if local.tzinfo is None:
                    return Timestamp.from_local_datetime(local)
    raise ValueError(f"invalid time {text!r}: expected 'now', a relative duration like '-1h' "
                     "or '-30s', POSIX seconds like 1700000000, or ISO 8601 like "
                     "2024-05-01T12:00:00Z")


def time_argument(text: str) -> Timestamp:
    """argparse ``type=`` for a time (see :func:`parse_time`)."""
    try:
        return parse_time(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def duration_argument(text: Any) -> float:
    """argparse ``type=`` for a positive duration: ``10`` (seconds), ``500ms``, ``2min``."""
    try:
        seconds = Timedelta.coerce(text, name="duration").s
    except (TypeError, ValueError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: must be positive")
    return seconds


def start_client(prog: str, client: Any) -> int | None:
    """Start ``client``; on a connection failure print why and return ``EXIT_CONNECT``."""
    try:
        client.start()
    except ConnectFailed as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return EXIT_CONNECT
    return None

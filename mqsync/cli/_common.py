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

Two habits every command shares:

* A closed standard output (``mqsync-sink ... | head -3``) ends the command quietly, as
  ``cat`` does: no traceback, exit code :data:`EXIT_PIPE` (141, the shell's code for a
  program ended by SIGPIPE).  See :class:`LineWriter` and :func:`ends_quietly_on_closed_stdout`.
* A failure to reach the network is said once, in the user's terms: which broker (URL
  masked), what failed and what to try (:func:`connect_failure_message`); the library's
  own ERROR line about it is left out (:func:`setup_logging`).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import getpass
import logging
import os
import re
import signal
import socket
import ssl
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, TextIO, cast
from urllib.parse import unquote, urlsplit

from ..config import read_config_file
from ..errors import ConfigError, ConnectFailed, MqsyncError, RPCTimeout
from ..names import check_url, join_urls, redact_url, split_urls
from ..timeseries import Timedelta, Timestamp

#: Exit codes scripts can rely on.
EXIT_OK = 0
EXIT_FAILURE = 1  # the program ran and something failed (lost connection, failed update)
EXIT_USAGE = 2  # bad command line or configuration, found before connecting
EXIT_CONNECT = 3  # the broker or the manager could not be reached
EXIT_INTERRUPTED = 130
#: Standard output was closed by its reader (``| head``): what a shell reports for a program
#: ended by SIGPIPE, as ``cat`` gives.
EXIT_PIPE = 128 + signal.SIGPIPE

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
    "--show-config prints what applies and where it came from."
)


def setup_logging(level: str) -> None:
    """Log to stderr with thread names, at ``level``.

    Above ``debug``, the library's ERROR lines about a failed connection (a failed start, a
    connection given up) are left out: the command reports that failure itself, once, when
    it ends (:func:`connect_failure_message`).
    """
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s [%(threadName)s] %(message)s",
    )
    if level != "debug":
        for handler in logging.getLogger().handlers:
            if not any(isinstance(f, _ReportedByTheCommand) for f in handler.filters):
                handler.addFilter(_ReportedByTheCommand())


class _ReportedByTheCommand(logging.Filter):
    """Drops the ERROR record a client or its IO thread logs about an error it also raises
    (or stores as its ``failure``) and that ends the command: ``start failed: ...`` and
    ``gave up reconnecting ...``.  Every command prints those itself."""

    _LOGGERS = ("mqsync.client", "mqsync.connection")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or record.exc_info or record.name not in self._LOGGERS:
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        return not any(isinstance(arg, MqsyncError) for arg in args)


# -- standard output -------------------------------------------------------------------


def silence(stream: TextIO) -> None:
    """Point ``stream``'s file descriptor at /dev/null after its reader went away.

    What is still buffered then goes nowhere, so the interpreter's final flush (or a
    ``close()``) raises no second BrokenPipeError ("Exception ignored ... BrokenPipeError").
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        os.dup2(devnull, stream.fileno())
    except (OSError, ValueError):  # no descriptor (a StringIO in tests), or closed already
        pass
    finally:
        os.close(devnull)


class LineWriter:
    """Writes text to a stream from any thread and notices when its reader went away.

    The first BrokenPipeError (``mqsync-sink ... | head -3`` once ``head`` exited) silences
    the stream (:func:`silence`), sets :attr:`closed` and calls ``on_closed`` once; later
    writes are dropped.  That is how a command that prints on a callback thread ends like
    ``cat``: quietly, without a traceback per chunk.
    """

    def __init__(self, out: TextIO, on_closed: Callable[[], None] | None = None):
        self._out = out
        self._on_closed = on_closed
        self._lock = threading.Lock()
        self.closed = False

    def write(self, text: str) -> bool:
        """Write and flush ``text``; return False when the reader is gone."""
        with self._lock:
            if self.closed:
                return False
            try:
                self._out.write(text)
                self._out.flush()
                return True
            except BrokenPipeError:
                self.closed = True
                silence(self._out)
        if self._on_closed is not None:
            self._on_closed()
        return False


def ends_quietly_on_closed_stdout(main: Callable[..., int]) -> Callable[..., int]:
    """Decorate a command's ``main``: a BrokenPipeError from printing ends it with
    :data:`EXIT_PIPE`, no traceback, and nothing more written to stdout."""

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        try:
            return main(*args, **kwargs)
        except BrokenPipeError:
            silence(sys.stdout)
            return EXIT_PIPE

    return wrapper


# -- layered settings ------------------------------------------------------------------


class _Setting:
    """One option that may also come from the environment or the configuration file."""

    def __init__(
        self,
        action: argparse.Action,
        key: str,
        env: str | None,
        default: Any,
        convert: Callable[[Any], Any] | None,
    ):
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
                # argparse's type converts the command line's str; this module's types (int,
                # float, duration_argument) take the config file's numbers as well
                value = cast(Callable[[Any], Any], self.action.type)(value)
            else:
                raise TypeError(f"expected a string or a number, got {type(value).__name__}")
        except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
            raise ConfigError(
                f"invalid {self.key} {_shown(self.key, value)} in {where}: {error}"
            ) from None
        choices = self.action.choices
        if choices is not None and value not in choices:
            raise ConfigError(
                f"invalid {self.key} {_shown(self.key, value)} in {where}: "
                f"expected one of {', '.join(map(str, choices))}"
            )
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

    def __init__(
        self, command: str, *, token: str | None = None, url_required: bool = True, **kwargs: Any
    ):
        kwargs.setdefault("prog", f"mqsync-{command}")
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        if kwargs.get("description"):
            kwargs["description"] = textwrap.fill(
                kwargs["description"], width=88, break_on_hyphens=False
            )
        super().__init__(**kwargs)
        self._examples = (self.epilog or "").rstrip("\n")
        # "-1h", "-10s", "-2.5e3" are values (times, durations, numbers), never options:
        # argparse itself only takes plain negative numbers for values.
        self._negative_number_matcher = re.compile(r"^-\d")
        self.command = command
        self.url_required = url_required
        self._settings: list[_Setting] = []
        self.add_argument(
            "--config-file",
            metavar="FILE",
            help=f"configuration file (default: ${CONFIG_ENV}, else "
            f"{DEFAULT_CONFIG_FILE} if it exists)",
        )
        self.add_argument(
            "--show-config",
            action="store_true",
            help="print the settings that apply and where they come from, then exit",
        )
        self.add_setting(
            "--url",
            env="MQSYNC_URL",
            convert=broker_url_setting,
            help="broker URL, e.g. amqp://user:pass@host/; the nodes of a cluster joined "
            "with ';' (env MQSYNC_URL; in the config file also a list)",
        )
        if token is not None:
            self.add_setting(
                "--token",
                env="MQSYNC_TOKEN",
                default=token,
                help=f"this client's token (env MQSYNC_TOKEN; default: {token})",
            )
        self.add_setting(
            "--log-level",
            env="MQSYNC_LOG_LEVEL",
            default="warning",
            choices=list(LOG_LEVELS),
            help="log verbosity (default: warning)",
        )

    def format_help(self) -> str:
        """The help, ending with where the settings come from (this command's keys named)."""
        keys = ", ".join(s.key for s in self._settings)
        config = textwrap.fill(
            CONFIG_HELP.format(command=self.command, keys=keys), width=88, break_on_hyphens=False
        )
        self.epilog = f"{self._examples}\n\n{config}" if self._examples else config
        return super().format_help()

    def add_setting(
        self,
        *flags: str,
        key: str | None = None,
        env: str | None = None,
        default: Any = None,
        convert: Callable[[Any], Any] | None = None,
        **kwargs: Any,
    ) -> argparse.Action:
        """Add an option that may also be set in the command's table of the config file.

        ``key`` is its name in the file (default: the option's dest, ``log_level``), ``env``
        an environment variable that sets it, ``convert`` checks a value from either (the
        command line uses ``type``).  argparse sees no default, so a value given on the
        command line is told apart from one left out.
        """
        action = self.add_argument(*flags, default=None, **kwargs)
        self._settings.append(_Setting(action, key or action.dest, env, default, convert))
        return action

    def parse_known_args(
        self, args: Iterable[str] | None = None, namespace: Any = None
    ) -> tuple[Any, list[str]]:
        """argparse's parsing, then the settings resolved into the namespace (any object
        that takes attributes, as for argparse; a new :class:`argparse.Namespace` if None).

        Exits with a usage error when a setting is invalid or no broker URL is set, and
        with 0 after ``--show-config`` printed the settings.
        """
        parsed, extras = super().parse_known_args(args, namespace)
        try:
            self._resolve(parsed)
        except ConfigError as error:
            self.error(str(error))
        if parsed.show_config:
            self._show_config(parsed)
            self.exit(EXIT_OK)
        if self.url_required and not parsed.url:
            self.error("no broker URL: give --url, set $MQSYNC_URL, or put url in the config file")
        return parsed, extras

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
                raise ConfigError(
                    f"unknown key {key!r} in {path}: expected "
                    f"{', '.join(COMMON_KEYS)} or a table per command, "
                    f"e.g. [{self.command}]"
                )
        table = data.get(self.command, {})
        known = {setting.key for setting in self._settings}
        for key in table:
            if key not in known:
                raise ConfigError(
                    f"unknown key {key!r} in table [{self.command}] of {path}: "
                    f"expected one of {', '.join(sorted(known))}"
                )
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
    """A value for messages: URLs with the password masked; for a URL key, anything but a
    string or a list of strings is shown by its type only (it may hold a password)."""
    if "url" not in key:
        return repr(value)
    if isinstance(value, str):
        return repr(redact_url(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(repr(redact_url(item)) if isinstance(item, str) else
                               f"<{type(item).__name__}>" for item in value) + "]"
    return f"<{type(value).__name__}>"


def broker_url_setting(value: Any) -> str:
    """A broker URL from the environment or the configuration file: one URL, several
    joined with ``;``, or (in the file) a list of them; checked, returned as one string."""
    return check_url(join_urls(value))


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
        raise ConfigError(
            f"invalid token {token!r}: unknown variable ${name}; only $USER and "
            "$HOST (or ${USER}, ${HOST}) are expanded"
        )

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
        return (
            Timestamp.from_posix_seconds(float(text))
            if "." in text
            else Timestamp(int(text) * 1_000_000_000)
        )
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
    raise ValueError(
        f"invalid time {text!r}: expected 'now', a relative duration like '-1h' "
        "or '-30s', POSIX seconds like 1700000000, or ISO 8601 like "
        "2024-05-01T12:00:00Z"
    )


def time_argument(text: str) -> Timestamp:
    """argparse ``type=`` for a time (see :func:`parse_time`)."""
    try:
        return parse_time(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def duration_argument(text: Any) -> float:
    """argparse ``type=`` for a positive duration, in seconds: ``10`` (seconds), ``500ms``,
    ``2min`` (read by :meth:`Timedelta.coerce`)."""
    try:
        return Timedelta.coerce(text, name="duration", positive=True).s
    except (TypeError, ValueError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def start_client(prog: str, client: Any, url: str | None = None,
                 then: Callable[[], object] | None = None) -> int | None:
    """Start ``client`` (and call ``then``, e.g. a subscribe); on a connection failure
    print why and return ``EXIT_CONNECT``.

    ``url`` is the broker URL the command was given (default: the client's own, masked).
    """
    try:
        client.start()
        if then is not None:
            then()
    except (ConnectFailed, RPCTimeout) as error:
        print(
            f"{prog}: {connect_failure_message(error, url or client.url, client.token)}",
            file=sys.stderr,
        )
        return EXIT_CONNECT
    return None


# -- connection failures in the user's terms -------------------------------------------


def failure_message(client: Any, url: str | None) -> str:
    """Why ``client`` stopped by itself: a lost connection in the user's terms, else its
    failure as it is."""
    failure = client.failure
    if isinstance(failure, (ConnectFailed, RPCTimeout)):
        return connect_failure_message(failure, url, client.token)
    return f"stopped: {failure}"

#: AMQP reply codes (RabbitMQ) behind the usual first-run mistakes.
_ACCESS_REFUSED = 403
_NOT_FOUND = 404
_RESOURCE_LOCKED = 405
_NOT_ALLOWED = 530


def connect_failure_message(error: BaseException, url: str | None, token: str | None = None) -> str:
    """Why a command could not reach the network (or lost it), for its users.

    Names the broker (``url``, the password masked; ``None``: the embedded network), what
    failed in words a user knows (the token in use, the login refused, no such virtual
    host, nothing listening on the port, no manager...) and what to try.  Internal names
    (``mqsync-<token>-mgmt``) are left out.  ``token`` is the client's token, named when
    another client holds it.
    """
    where = redact_url(url) if url else "the embedded network"
    cause = _root_cause(error)
    code = getattr(cause, "reply_code", None)
    text = str(getattr(cause, "reply_text", "") or cause)
    nodes = split_urls(url) if url else []
    parts = urlsplit(nodes[0]) if nodes else None
    if code == _RESOURCE_LOCKED:
        named = f"the token {token!r}" if token else "this client's token"
        return (
            f"{named} is in use by another client on {where}; stop that client, or give "
            "this one another token with --token NAME (or $MQSYNC_TOKEN)"
        )
    if code == _ACCESS_REFUSED and "login" in text.lower():
        user = unquote(parts.username) if parts is not None and parts.username else "guest"
        return (
            f"the broker at {where} refused the login of user {user!r}: check the user "
            "name and password in the URL"
        )
    if code == _ACCESS_REFUSED:
        return (
            f"the broker at {where} refused access: {text} (does the user have "
            "permissions on this virtual host?)"
        )
    if code == _NOT_ALLOWED and "vhost" in text:
        vhost = unquote(parts.path[1:]) if parts is not None and parts.path[1:] else "/"
        return (
            f"the broker at {where} has no virtual host {vhost!r}: check the path at the "
            "end of the URL (an administrator adds one with rabbitmqctl add_vhost)"
        )
    if code == _NOT_FOUND and "metricq." in str(error):
        return (
            f"no MetricQ manager on {where}: its exchanges do not exist; start "
            "mqsync-manager on this network, or check the virtual host in the URL"
        )
    if isinstance(cause, ConnectionRefusedError):
        address = " nor at ".join(_address(urlsplit(node)) for node in nodes) or _address(None)
        return (
            f"cannot connect to {where}: nothing accepts connections at {address}; is "
            "RabbitMQ running there, and is the port right (amqp 5672, amqps 5671)?"
        )
    if isinstance(cause, socket.gaierror):
        host = parts.hostname if parts is not None else None
        return (
            f"cannot connect to {where}: the host name {host!r} does not resolve "
            f"({cause.strerror or cause}); check the host in the URL"
        )
    if isinstance(cause, ssl.SSLError):
        return (
            f"cannot connect to {where}: the TLS handshake failed ({cause}); check "
            "amqps:// against the broker's port and certificate"
        )
    told = _own_words(error, token)
    if isinstance(error, RPCTimeout):
        return (
            f"the MetricQ manager on {where} did not answer in time ({told}); is "
            "mqsync-manager running on this network?"
        )
    if told.startswith("gave up reconnecting"):
        return f"lost the connection to the network and {told}"
    if isinstance(cause, TimeoutError) or (
        told.startswith("no connection to") and " within " in told
    ):
        return (
            f"no connection to {where} in time: a firewall, a wrong host or port, or an "
            "overloaded broker?"
        )
    if where in told:
        return told
    return f"cannot connect to {where}: {told}"


def _root_cause(error: BaseException) -> BaseException:
    seen = {id(error)}
    while True:
        following = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        if following is None or id(following) in seen:
            return error
        seen.add(id(following))
        error = following


def _address(parts: Any) -> str:
    if parts is None:
        return "the embedded network"
    default = 5671 if parts.scheme == "amqps" else 5672
    try:
        port = parts.port or default
    except ValueError:
        port = default
    return f"{parts.hostname or 'localhost'}:{port}"


#: An IO thread's name at the start of a message: ``mqsync-<token>-mgmt: ``.
_CONNECTION_NAME = re.compile(r"mqsync-\S+-(?:mgmt|data|data-io|history): ")


def _own_words(error: BaseException, token: str | None = None) -> str:
    """``error``'s message without the client and connection names it starts with."""
    text = str(error)
    while True:
        if token and text.startswith(f"{token}: "):
            text = text[len(token) + 2 :]
        elif _CONNECTION_NAME.match(text):
            text = _CONNECTION_NAME.sub("", text, count=1)
        else:
            return text

"""Plumbing shared by the interop peers: JSON lines, exit codes and deadlines.

The peers run in the interop virtualenv with the official ``metricq`` client (see
``tests/interop/official.py``). This module uses only the standard library plus metricq's
and aiormq's exception types, so a peer's behaviour on the wire is the official client's.

Every line a peer writes to stdout is one JSON object with an ``"event"`` key. Logging goes
to stderr. Exit codes (also listed in each peer's ``--help``):

====  =============================================================================
0     success
1     unexpected error (traceback on stderr)
2     usage error (argparse), or a setting the peer needs is missing
3     cannot connect, or the MetricQ network is missing (no manager: the passive
      declare of ``metricq.broadcast``/``metricq.management`` fails)
4     a bounded wait ran out (data, an RPC reply, a history response)
5     the other side answered with an error (RPCError, HistoryError)
6     the peer's hard deadline fired: something hung and the process killed itself
====  =============================================================================
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import signal
import sys
import traceback
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiormq.exceptions
import metricq
from metricq.exceptions import AgentStopped, ConnectFailed, HistoryError, RPCError
from yarl import URL

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CONNECT = 3
EXIT_TIMEOUT = 4
EXIT_REMOTE_ERROR = 5
EXIT_HARD_DEADLINE = 6

EXIT_CODES_HELP = (
    "exit codes: 0 ok, 1 unexpected error, 2 usage, 3 cannot connect / no MetricQ network, "
    "4 a bounded wait ran out, 5 remote error reply, 6 hard deadline (peer hung)"
)

# The "version" a peer reports in its discover reply.
CLIENT_VERSION = "mqsync-interop-peer"
# Time allowed on top of a peer's own --timeout for connecting and tearing down.
SETUP_ALLOWANCE_S = 30.0
# Time after the overall deadline at which the process kills itself, whatever it is doing.
HARD_DEADLINE_GRACE_S = 15.0
# Bound on Agent.stop(); the official default (connection_timeout) is 600 s.
STOP_TIMEOUT_S = 10.0

_stage = "start"


def set_stage(stage: str) -> None:
    """Name what the peer is doing now; an error event reports it."""
    global _stage
    _stage = stage


def emit(event: str, **fields: Any) -> None:
    """Write one JSON line to stdout and flush it."""
    print(json.dumps({"event": event, **fields}), flush=True)


def float_hex(value: float) -> str:
    """An exact text form of a double: ``float.hex`` ('nan', 'inf', '-0x0.0p+0', ...)."""
    return float(value).hex()


def point_record(metric: str, timestamp_ns: int, value: float) -> dict[str, Any]:
    return {"metric": metric, "t": int(timestamp_ns), "v": float_hex(value)}


def masked_url(url: str | None) -> str | None:
    if url is None:
        return None
    parsed = URL(url)
    return str(parsed.with_password("***")) if parsed.password else url


def default_token(kind: str) -> str:
    return f"{kind}-mqsync-interop-{uuid.uuid4().hex[:8]}"


def add_common_arguments(parser: Any, *, timeout_default: float = 30.0) -> None:
    parser.add_argument("--url", required=True, help="AMQP URL of the management vhost")
    parser.add_argument(
        "--timeout",
        type=float,
        default=timeout_default,
        help="bound on this peer's main wait in seconds (default %(default)s)",
    )
    parser.add_argument(
        "--rpc-timeout",
        type=float,
        default=20.0,
        help="bound on each RPC this peer sends, in seconds (official default 60)",
    )
    parser.add_argument(
        "--log-level", default="WARNING", help="log level for stderr (default %(default)s)"
    )


class BoundedRpcMixin:
    """Gives every ``Client.rpc`` call a default timeout (it is not sent on the wire).

    The official client waits 60 s for a reply; the peers should fail sooner.
    """

    rpc_timeout: float = 20.0

    async def rpc(self, function: str, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        kwargs.setdefault("timeout", self.rpc_timeout)
        return await super().rpc(function, *args, **kwargs)  # type: ignore[misc]


async def stop_quietly(agent: metricq.Agent | None) -> None:
    """Stop an agent, bounded in time, swallowing any error from the teardown."""
    if agent is None:
        return
    try:
        await asyncio.wait_for(agent.stop(silent=True), STOP_TIMEOUT_S)
    except BaseException as error:  # noqa: BLE001 - teardown must never decide the exit code
        logging.getLogger("peer").warning("stop of %r failed: %r", agent, error)


class PeerSetupError(Exception):
    """A setting the peer needs is missing or wrong (exit 2, like a usage error)."""


def _classify(error: BaseException) -> tuple[int, str]:
    """Map an exception to an exit code and a hint for the reader."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    for item in chain:
        if isinstance(item, aiormq.exceptions.ChannelNotFoundEntity):
            return EXIT_CONNECT, (
                "a MetricQ exchange or queue is missing (NOT_FOUND on a passive declare): "
                "is a manager running on this vhost?"
            )
    for item in chain:
        if isinstance(item, (RPCError, HistoryError)):
            return EXIT_REMOTE_ERROR, "the other side answered with an error"
        if isinstance(item, (asyncio.TimeoutError, TimeoutError)):
            return EXIT_TIMEOUT, "a bounded wait ran out"
        connect_errors = (ConnectFailed, ConnectionError, aiormq.exceptions.AMQPConnectionError)
        if isinstance(item, connect_errors):
            return EXIT_CONNECT, "cannot connect to the broker"
    if isinstance(error, PeerSetupError):
        return EXIT_USAGE, "a setting is missing or wrong"
    if isinstance(error, AgentStopped):
        return EXIT_ERROR, "the agent stopped with an error"
    return EXIT_ERROR, "unexpected error"


def _install_hard_deadline(seconds: float) -> None:
    def on_alarm(signum: int, frame: Any) -> None:
        emit(
            "error",
            stage=_stage,
            type="HardDeadline",
            message=f"peer still running {seconds:.0f} s after start; killing itself",
            exit=EXIT_HARD_DEADLINE,
        )
        sys.stderr.flush()
        os._exit(EXIT_HARD_DEADLINE)

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)


def run(main: Callable[[], Awaitable[int]], args: Any, *, wait_budget: float | None = None) -> None:
    """Run ``main`` under an overall deadline and exit with its code (or the error's).

    The overall deadline is ``wait_budget`` (default ``args.timeout``) plus an allowance for
    connect and teardown; a hard deadline after that ends the process even if the event loop
    is stuck.
    """
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    budget = float(args.timeout if wait_budget is None else wait_budget)
    overall = budget + SETUP_ALLOWANCE_S
    _install_hard_deadline(overall + HARD_DEADLINE_GRACE_S)

    async def guarded() -> int:
        task = asyncio.ensure_future(main())
        done, _ = await asyncio.wait({task}, timeout=overall)
        if not done:
            task.cancel()
            await asyncio.wait({task}, timeout=STOP_TIMEOUT_S)
            emit(
                "error",
                stage=_stage,
                type="TimeoutError",
                message=f"overall deadline of {overall:.0f} s ran out",
                exit=EXIT_TIMEOUT,
            )
            return EXIT_TIMEOUT
        try:
            return task.result()
        except Exception as error:  # noqa: BLE001 - every error becomes an exit code
            code, hint = _classify(error)
            if code == EXIT_ERROR:
                traceback.print_exc(file=sys.stderr)
            message = str(error)
            if not message and code == EXIT_TIMEOUT:
                message = f"timed out during {_stage}"
            emit(
                "error",
                stage=_stage,
                type=type(error).__name__,
                message=message or repr(error),
                cause=repr(error.__cause__) if error.__cause__ else None,
                hint=hint,
                exit=code,
            )
            return code

    try:
        code = asyncio.run(guarded())
    except KeyboardInterrupt:
        code = EXIT_ERROR
    sys.stdout.flush()
    sys.stderr.flush()
    # os._exit: leftover non-daemon threads of a library must not keep the peer alive.
    os._exit(code)


class StdinLines:
    """Read lines from stdin inside the event loop, without a thread (a blocked executor thread
    would keep ``asyncio.run`` from returning)."""

    def __init__(self) -> None:
        self._buffer = b""
        self._eof = False

    def _read_chunk(self) -> None:
        try:
            data = os.read(sys.stdin.fileno(), 65536)
        except (OSError, ValueError):
            data = b""
        if data:
            self._buffer += data
        else:
            self._eof = True

    def _pop_line(self) -> str | None:
        if b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            return line.decode(errors="replace")
        return None

    async def readline(self, timeout: float) -> str | None:
        """The next line without its newline, or None at end of input.

        Raises:
            asyncio.TimeoutError: no full line and no end of input within ``timeout``.
        """
        line = self._pop_line()
        if line is not None:
            return line
        if self._eof:
            return None
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        try:
            fd = sys.stdin.fileno()
        except (OSError, ValueError, AttributeError):
            self._eof = True
            return None

        def on_readable() -> None:
            self._read_chunk()
            if (b"\n" in self._buffer or self._eof) and not done.done():
                done.set_result(None)

        try:
            loop.add_reader(fd, on_readable)
        except (PermissionError, OSError, ValueError):
            # A regular file (or /dev/null) cannot be polled, but never blocks either.
            while b"\n" not in self._buffer and not self._eof:
                self._read_chunk()
        else:
            try:
                await asyncio.wait_for(done, timeout)
            finally:
                loop.remove_reader(fd)
        line = self._pop_line()
        if line is not None:
            return line
        if self._buffer:  # the last line had no newline
            line, self._buffer = self._buffer.decode(errors="replace"), b""
            return line
        return None


SPECIAL_VALUES = (
    math.nan,
    math.inf,
    -math.inf,
    -0.0,
    5e-324,  # smallest subnormal
    1.7976931348623157e308,  # largest finite
    -1.7976931348623157e308,
    2.2250738585072014e-308,  # smallest normal
    0.0,
    -5e-324,
    1.0 / 3.0,
    -2.5,
)


def value_for(index: int, metric_index: int, mode: str) -> float:
    """The deterministic value of point ``index`` of metric number ``metric_index``.

    ``linear``: ``index * 0.5 + metric_index * 1000.0``; ``special``: ``SPECIAL_VALUES``
    cycled, so NaN, ±inf, -0.0, subnormals and the extremes all occur in the first 12 points.
    """
    if mode == "special":
        return SPECIAL_VALUES[index % len(SPECIAL_VALUES)]
    return index * 0.5 + metric_index * 1000.0

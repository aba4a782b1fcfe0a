"""What every mqsync command shares: the network URL, logging and exit codes."""

from __future__ import annotations

import argparse
import logging
import os

#: Exit codes scripts can rely on.
EXIT_OK = 0
EXIT_FAILURE = 1  # the program ran and something failed (lost connection, failed update)
EXIT_USAGE = 2  # bad command line or configuration, found before connecting
EXIT_CONNECT = 3  # the broker or the manager could not be reached
EXIT_INTERRUPTED = 130


def add_common_arguments(parser: argparse.ArgumentParser, *, url_help: str | None = None) -> None:
    """``--url`` (default ``$MQSYNC_URL``), ``--token`` and ``--log-level``."""
    parser.add_argument(
        "--url", default=os.environ.get("MQSYNC_URL") or None,
        help=url_help or "broker URL, e.g. amqp://user:pass@host/ (default: $MQSYNC_URL; "
        "none: an embedded in-process network)")
    parser.add_argument(
        "--log-level", default=os.environ.get("MQSYNC_LOG_LEVEL", "warning"),
        choices=["debug", "info", "warning", "error"], help="log verbosity (default: warning)")


def setup_logging(level: str) -> None:
    """Log to stderr with thread names, at ``level``."""
    logging.basicConfig(level=getattr(logging, level.upper()),
                        format="%(asctime)s %(levelname)-7s %(name)s [%(threadName)s] %(message)s")

"""``mqsync-db``: keep MetricQ metrics in an SQLite file and answer history requests."""

from __future__ import annotations

import logging
import sys

from ..db import Db
from ..errors import ConfigError, ConnectFailed, MqsyncError
from ._common import (
    EXIT_CONNECT,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    CommandParser,
    connect_failure_message,
    setup_logging,
)

logger = logging.getLogger(__name__)

EXAMPLE = """\
examples:
  mqsync-db --url amqp://user:pass@broker/ --token db-sqlite-main --database /var/lib/m.db \\
      --metrics room.power room.temperature
  mqsync-db --url amqp://user:pass@broker/ --token db-sqlite-main --database /var/lib/m.db

Without --metrics the metrics come from the configuration the manager serves for the token,
e.g. {"metrics": ["room.power", "room.temperature"]}; a later configuration change is applied
at once.  The manager binds the queues <token>-data and <token>-hreq (durable: data and
requests wait while the database restarts).

exit codes: 0 stopped by SIGINT/SIGTERM, 1 failed while running (a write failed, the
connection was lost for good), 2 bad arguments or database file, 3 no connection.
"""


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser("db", token="db-mqsync-sqlite", url_required=False,
                           description="Keep MetricQ metrics in SQLite and answer history "
                           "requests for them.", epilog=EXAMPLE)
    parser.add_argument("--database", required=True, help="the SQLite file (created if missing)")
    parser.add_argument("--metrics", nargs="+", metavar="METRIC",
                        help="metrics to keep (default: from the manager's configuration)")
    parser.add_argument("--batch-points", type=int, default=50_000,
                        help="most points per write transaction (default: %(default)s)")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        db = Db(args.token, args.url, database=args.database, metrics=args.metrics,
                batch_points=args.batch_points)
    except (ConfigError, ValueError, TypeError) as error:
        print(f"mqsync-db: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(f"mqsync-db: {args.token} keeping {args.database} on {db.url} (Ctrl-C to stop)",
          file=sys.stderr, flush=True)
    try:
        db.run()
    except ConfigError as error:
        print(f"mqsync-db: {error}", file=sys.stderr)
        return EXIT_USAGE
    except ConnectFailed as error:
        print(f"mqsync-db: {connect_failure_message(error, args.url, db.token)}",
              file=sys.stderr)
        return EXIT_CONNECT
    except MqsyncError as error:
        print(f"mqsync-db: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as error:  # a failed write (sqlite3.Error) ends the run
        print(f"mqsync-db: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

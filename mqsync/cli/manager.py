"""``mqsync-manager``: run the coordinator of a MetricQ network."""

from __future__ import annotations

import logging
import sys

from ..errors import ConfigError, ConnectFailed
from ..manager import ConfigStore, Manager
from ..manager.manager import QUEUE_TYPES
from ._common import (
    EXIT_CONNECT,
    EXIT_OK,
    EXIT_USAGE,
    CommandParser,
    connect_failure_message,
    setup_logging,
)

logger = logging.getLogger(__name__)

EXAMPLE = """\
examples:
  mqsync-manager --url amqp://admin:secret@broker/ --config /etc/mqsync/clients \\
      --metadata-file /var/lib/mqsync/metadata.json
  MQSYNC_URL=amqp://guest:guest@127.0.0.1/ mqsync-manager --config clients.toml
  # on a 3-node cluster, with quorum queues; run the same line on a second machine as standby
  mqsync-manager --url 'amqp://u:p@rabbit1/;amqp://u:p@rabbit2/;amqp://u:p@rabbit3/' \
      --queue-type quorum --standby --config /shared/mqsync/clients

--config is a directory of <token>.json files or one .json/.toml file that maps tokens to
their configuration; it is read at every registration, so edits apply without a restart.
"""


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser("manager", token="manager", description="Coordinate a MetricQ "
                           "network: declare its exchanges, answer management RPCs, serve "
                           "configurations and metric metadata.", epilog=EXAMPLE)
    parser.add_argument("--config", help="client configurations: a directory or a file")
    parser.add_argument("--metadata-file", help="JSON file where metric metadata persists")
    parser.add_argument("--data-url", help="data broker URL, if not the management one")
    parser.add_argument("--queue-type", choices=QUEUE_TYPES, default="classic",
                        help="declare the network's queues as classic (default; one broker "
                        "node) or quorum queues (replicated on a cluster)")
    parser.add_argument("--standby", action="store_true",
                        help="one of several managers of the network: one is active, the "
                        "others take over when it goes (all must be run with --standby)")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        manager = Manager(args.url, config=ConfigStore(args.config) if args.config else None,
                          metadata_file=args.metadata_file, data_url=args.data_url,
                          token=args.token, queue_type=args.queue_type, standby=args.standby)
    except ConfigError as error:
        print(f"mqsync-manager: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        mode = f", {args.queue_type} queues" + (", standby mode" if args.standby else "")
        print(f"mqsync-manager: serving {manager.url}{mode} (Ctrl-C to stop)", file=sys.stderr,
              flush=True)
        manager.run()
    except ConnectFailed as error:
        print(f"mqsync-manager: {connect_failure_message(error, args.url, manager.token)}",
              file=sys.stderr)
        return EXIT_CONNECT
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

"""mqsync-db: a MetricQ database that keeps metrics in SQLite and answers history requests.

:class:`Db` is the network client (run it with ``mqsync-db``), :class:`SqliteStore` the
storage with the aggregation semantics (see :mod:`mqsync.db.store`).

The management RPCs a database uses (as metricq-manager answers them)::

    db.register   request  {}
                  reply    {"dataServerAddress", "dataExchange": "metricq.data",
                            "dataQueue": "<token>-data", "historyExchange": "metricq.history",
                            "historyQueue": "<token>-hreq", "config": {...}}
    db.subscribe  request  {"metrics": ["name" | {"name": ..., "input": ...}, ...],
                            "metadata": true}
                  reply    {"dataServerAddress", "dataQueue", "historyQueue",
                            "metrics": {name: metadata} | [names] (metadata false)}

Both queues are durable and neither exclusive nor auto-delete, so data and requests wait
while the database restarts.  ``db.subscribe`` replaces the database's bindings: the data
queue is bound to ``metricq.data`` with each ``input`` (default ``name``), the request queue
to ``metricq.history`` with each ``name``; bindings of metrics no longer listed are removed;
the metrics are marked historic (``get_metrics(historic=True)``).
"""

from .server import Db
from .store import AggregateRow, InsertResult, SqliteStore, StoreError, TooMuchData

__all__ = ["AggregateRow", "Db", "InsertResult", "SqliteStore", "StoreError", "TooMuchData"]

"""mqsync: a synchronous, thread-based Python SDK for MetricQ networks."""

from . import embedded, network
from ._version import __version__
from .client import Client
from .errors import (
    ClientStopped,
    ConfigError,
    ConnectFailed,
    HistoryError,
    InvalidHistoryResponse,
    InvalidMessage,
    InvalidRequest,
    MqsyncError,
    PluginError,
    PublishFailed,
    RPCError,
    RPCTimeout,
    SpoolError,
    StateError,
    StoreError,
    StreamerError,
    TooManyFailures,
    TooMuchData,
    UnknownFunction,
)
from .history import HistoryClient, HistoryRequestType, HistoryResponse, HistoryResponseType
from .host import HostConfig, SourceHost
from .interval_source import IntervalSource
from .plugin import ConfigOption, PluginSource, SourceKind, hookimpl, load_plugins
from .rpc import rpc_handler
from .sink import DurableSink, Sink
from .source import Source, SourceMetric
from .subscription import Drain, Subscriber
from .timeseries import TimeAggregate, Timedelta, Timestamp, TimeValue

# clients without a broker URL join the in-process network of mqsync.embedded
network.install(embedded)

__all__ = [
    "Client",
    "ClientStopped",
    "ConfigError",
    "ConfigOption",
    "ConnectFailed",
    "Drain",
    "DurableSink",
    "HistoryClient",
    "HistoryError",
    "HistoryRequestType",
    "HistoryResponse",
    "HistoryResponseType",
    "HostConfig",
    "IntervalSource",
    "InvalidHistoryResponse",
    "InvalidMessage",
    "InvalidRequest",
    "MqsyncError",
    "PluginError",
    "PluginSource",
    "PublishFailed",
    "RPCError",
    "RPCTimeout",
    "Sink",
    "Source",
    "SourceHost",
    "SourceKind",
    "SpoolError",
    "StateError",
    "StoreError",
    "StreamerError",
    "SourceMetric",
    "Subscriber",
    "TimeAggregate",
    "TimeValue",
    "Timedelta",
    "Timestamp",
    "TooManyFailures",
    "TooMuchData",
    "UnknownFunction",
    "__version__",
    "hookimpl",
    "load_plugins",
    "rpc_handler",
]

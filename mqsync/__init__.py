"""mqsync: a synchronous, thread-based Python SDK for MetricQ networks."""

from ._version import __version__
from .client import Client
from .errors import (
    ClientStopped,
    ConfigError,
    ConnectFailed,
    InvalidMessage,
    MqsyncError,
    PluginError,
    PublishFailed,
    RPCError,
    RPCTimeout,
)
from .interval_source import IntervalSource
from .rpc import rpc_handler
from .scheduler import TooManyFailures
from .sink import DurableSink, Sink
from .source import Source
from .subscription import Drain, Subscriber
from .timeseries import TimeAggregate, Timedelta, Timestamp, TimeValue

__all__ = [
    "Client",
    "ClientStopped",
    "ConfigError",
    "ConnectFailed",
    "Drain",
    "DurableSink",
    "IntervalSource",
    "InvalidMessage",
    "MqsyncError",
    "PluginError",
    "PublishFailed",
    "RPCError",
    "RPCTimeout",
    "Sink",
    "Source",
    "Subscriber",
    "TimeAggregate",
    "TimeValue",
    "Timedelta",
    "Timestamp",
    "TooManyFailures",
    "__version__",
    "rpc_handler",
]

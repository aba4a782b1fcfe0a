"""The one exception hierarchy of mqsync.

Every error the SDK raises on purpose derives from :class:`MqsyncError`, so
``except mqsync.MqsyncError`` catches them all.  Bad user input additionally
derives from :class:`ValueError` where that is what Python code expects.
"""

from __future__ import annotations


class MqsyncError(Exception):
    """Base class of every error raised by mqsync."""


class ConnectFailed(MqsyncError):
    """The broker could not be reached, or the connection was lost for good."""


class RPCError(MqsyncError):
    """A remote procedure call was answered with an error.

    ``function`` names the RPC, ``token`` the responder (when known).
    """

    def __init__(self, message: str, *, function: str | None = None, token: str | None = None):
        super().__init__(message)
        self.function = function
        self.token = token


class RPCTimeout(MqsyncError, TimeoutError):
    """No reply to a remote procedure call arrived in time."""


class PublishFailed(MqsyncError):
    """Data could not be handed to the broker."""


class ClientStopped(MqsyncError):
    """The client is not running (never started, stopped, or failed)."""


class ConfigError(MqsyncError, ValueError):
    """A configuration value is missing or malformed."""


class PluginError(MqsyncError):
    """A source plugin failed to import, load or run."""


class InvalidMessage(MqsyncError, ValueError):
    """A message from the network could not be decoded."""


class InvalidRequest(RPCError, ValueError):
    """An RPC request's arguments do not match what the function accepts.

    Raised by RPC handlers on input from the network: the caller gets the message as its
    error reply, and the responder logs one WARNING line without a traceback.
    """

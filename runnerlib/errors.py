"""The error tree of runnerlib. Every error a user can see derives from RunnerError."""

from __future__ import annotations


class RunnerError(Exception):
    """Base class of every runnerlib error."""


class StateError(RunnerError):
    """A runner was used in the wrong lifecycle state (called before init, initialised twice)."""


class ConfigError(RunnerError, ValueError):
    """Configuration or resource request that cannot be honoured; the message names the key."""


class RemoteError(RunnerError):
    """An exception raised inside a Runnable whose type cannot be re-raised as a built-in.

    ``remote_type`` is the qualified name of the original exception type and
    ``remote_traceback`` the formatted traceback from the worker.
    """

    def __init__(self, message: str, remote_type: str = "", remote_traceback: str = "") -> None:
        super().__init__(message)
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback


class WorkerDied(RunnerError):
    """The worker process holding this call died before answering it."""


class RunnerTimeout(RunnerError, TimeoutError):
    """A call did not complete within its timeout."""


class RunnerOverloaded(RunnerError):
    """The call was rejected because it could not meet ``max_latency_ms`` (on_overload="reject")."""


class NotFound(RunnerError):
    """Something looked up by name does not exist (a model in the store, a model saved by
    another framework); ``bentoml.exceptions.NotFound``'s counterpart."""


class ServerNotFound(RunnerError):
    """``init_client(spawn=False)`` found no running server for the runner."""


class ProtocolError(RunnerError):
    """Bytes read from shared memory were malformed; the affected call fails, nothing crashes."""


class TransportError(RunnerError):
    """The shared-memory transport could not carry a call (no space, no free channel)."""


class EncodeError(RunnerError, TypeError):
    """A value cannot travel to or from a worker; the message says what is supported."""


__all__ = [
    "RunnerError",
    "StateError",
    "ConfigError",
    "RemoteError",
    "WorkerDied",
    "RunnerTimeout",
    "RunnerOverloaded",
    "NotFound",
    "ServerNotFound",
    "ProtocolError",
    "TransportError",
    "EncodeError",
]

"""runnerlib: BentoML-style runners served to many processes on one host over shared memory.

``Server`` is imported lazily so that ``import runnerlib`` stays cheap in client processes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runnerlib.arrays import shared_array
from runnerlib.errors import (
    ConfigError,
    EncodeError,
    NotFound,
    ProtocolError,
    RemoteError,
    RunnerError,
    RunnerOverloaded,
    RunnerTimeout,
    ServerNotFound,
    StateError,
    TransportError,
    WorkerDied,
)
from runnerlib.runnable import Runnable
from runnerlib.runner import Runner, RunnerMethod
from runnerlib.strategy import DefaultStrategy, Strategy

if TYPE_CHECKING:
    from runnerlib._shm.supervisor import Server

__all__ = [
    "Runnable",
    "shared_array",
    "Runner",
    "RunnerMethod",
    "Server",
    "Strategy",
    "DefaultStrategy",
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

__version__ = "0.1.0"


_SUBMODULES = ("models", "pytorch", "sklearn", "picklable_model", "legacy")
# bentoml.exceptions.NotFound -> runnerlib.errors.NotFound; bentoml.metrics -> prometheus_client
_ALIASES = {"exceptions": "runnerlib.errors", "metrics": "prometheus_client"}


def __getattr__(name: str) -> Any:
    if name == "Server":
        from runnerlib._shm.supervisor import Server

        return Server
    if name in _SUBMODULES or name in _ALIASES:  # imported on first use
        import importlib

        return importlib.import_module(_ALIASES.get(name, f"runnerlib.{name}"))
    raise AttributeError(f"module 'runnerlib' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

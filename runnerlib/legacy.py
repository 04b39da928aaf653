"""``bentoml.legacy``'s counterpart: BentoML 1.2 and later spell the runner API
``bentoml.legacy.Runner`` / ``bentoml.legacy.Runnable``; code written that way ports with
``from runnerlib import legacy`` (or ``import runnerlib.legacy``, or
``import runnerlib as bentoml`` and ``bentoml.legacy.Runner``).

Of the names in BentoML's legacy namespace, runnerlib has ``Runnable``, ``Runner`` and
``Strategy``. ``Service``, ``HTTPServer``, ``GrpcServer`` and ``Resource`` have no counterpart:
using one is an ``AttributeError`` that says what to write instead.
"""

from __future__ import annotations

from typing import Any

from runnerlib.runnable import Runnable
from runnerlib.runner import Runner
from runnerlib.strategy import Strategy

__all__ = ["Runnable", "Runner", "Strategy"]

_INSTEAD = {
    "Service": (
        "runnerlib has no Service (no HTTP layer of its own): serve the runners with "
        "runnerlib.Server([...]) or `python -m runnerlib serve module:runners`, and put the API "
        "in any web framework, calling runner.<method>.async_run(...) (see examples/http_service)"
    ),
    "HTTPServer": (
        "runnerlib has no HTTPServer: start the runners with runnerlib.Server([...]) (or "
        "`python -m runnerlib serve`) and serve HTTP with your web framework "
        "(see examples/http_service)"
    ),
    "GrpcServer": (
        "runnerlib has no GrpcServer: start the runners with runnerlib.Server([...]) and serve "
        "gRPC with grpcio, calling the runners from its handlers"
    ),
    "Resource": (
        "runnerlib has no custom resource registry: DefaultStrategy schedules 'cpu' and "
        "'nvidia.com/gpu'; read other keys of the request in a custom runnerlib.Strategy "
        "(runnerlib.resources.get_resource reads the built-in ones)"
    ),
}


def __getattr__(name: str) -> Any:
    if name in _INSTEAD:
        raise AttributeError(f"runnerlib.legacy.{name}: {_INSTEAD[name]}")
    raise AttributeError(f"module 'runnerlib.legacy' has no attribute {name!r}")

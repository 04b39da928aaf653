"""Resolved settings: what a server, a worker and a client need, with nothing left to look up.

One definition each, shared by the Runner side (which resolves the precedence chain of SPEC
section 4) and the shared-memory runtime (which only reads these structs): the method
descriptor ``MethodSpec`` with its ``MethodKind``, the runner's ``RunnerSettings``, the
client's ``ClientSettings``, the option values of ``on_overload`` (defined by
``batching``, which enforces them), and ``class_ref``, the
one way to name a Runnable class across processes.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from batching.assembler import ON_OVERLOAD, OnOverload

__all__ = [
    "ClientSettings",
    "MethodKind",
    "MethodRef",
    "RunnerRef",
    "MethodSpec",
    "ON_OVERLOAD",
    "OnOverload",
    "RunnerSettings",
    "class_ref",
]



class MethodKind(enum.StrEnum):
    """How a Runnable method is invoked and answered."""

    SYNC = "sync"  # a plain function: one answer
    ASYNC = "async"  # ``async def``: awaited, one answer
    GEN = "gen"  # a generator function: one CHUNK per item, then END
    AGEN = "agen"  # an async generator function: likewise

    @classmethod
    def of(cls, func: Callable[..., Any]) -> MethodKind:
        if inspect.isasyncgenfunction(func):
            return cls.AGEN
        if inspect.isgeneratorfunction(func):
            return cls.GEN
        if inspect.iscoroutinefunction(func):
            return cls.ASYNC
        return cls.SYNC

    @property
    def streams(self) -> bool:
        return self in (MethodKind.GEN, MethodKind.AGEN)


class MethodSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Effective settings of one method (after the precedence chain); sent to each worker."""

    name: str
    kind: MethodKind = MethodKind.SYNC
    batchable: bool = False
    """The method is batchable and batching is enabled for the runner."""
    batch_dim_in: int = 0
    batch_dim_out: int = 0
    max_batch_size: int = 100
    max_latency_ms: float = 60000.0


class ClientSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What a client needs to call a served runner: learnt without running the strategy."""

    timeout: float
    allow_pickle: bool


class RunnerSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Effective settings of one runner: what its server needs, nothing left to look up."""

    name: str
    class_ref: str
    """``module:qualname`` of the Runnable class (to check that a server runs the same one)."""
    cpu: float
    nvidia_gpu: list[int]
    """GPU ids assigned to the runner (used only if its Runnable supports GPUs)."""
    workers_per_resource: int | float
    timeout: float
    batching_enabled: bool
    on_overload: OnOverload
    allow_pickle: bool
    methods: dict[str, MethodSpec]
    worker_count: int
    worker_env: dict[int, dict[str, str]]

    @property
    def client(self) -> ClientSettings:
        return ClientSettings(timeout=self.timeout, allow_pickle=self.allow_pickle)


def class_ref(cls: type) -> str:
    """``module:qualname``: how a Runnable class is named to another process."""
    return f"{cls.__module__}:{cls.__qualname__}"


class MethodRef(Protocol):
    """What a transport needs of a Runner's method (``runner.RunnerMethod`` is one)."""

    name: str
    kind: MethodKind


class RunnerRef(Protocol):
    """What the runtime needs of a ``Runner``: it sits below the public API and never
    imports it (see .importlinter)."""

    name: str
    runnable_class: type
    runnable_init_params: dict[str, Any]

    def settings(self, config: Any = None) -> RunnerSettings: ...

    def client_settings(self) -> ClientSettings: ...

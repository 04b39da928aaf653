"""The one transport interface: how a ``Runner``'s method calls reach its Runnable.

Every way of carrying calls implements ``RunnerHandle``: in-process (``handles.LocalHandle``),
shared memory (``_shm.client.ShmHandle``), and later remote transports beside them.

Contract for every handle: ``timeout=None`` means the runner's configured timeout; a call that
runs out of time raises ``RunnerTimeout``; an exception raised by the Runnable reaches the
caller; every error of the transport itself is a ``RunnerError``; ``async_stream_method`` is a
plain function returning an async iterator, so a state error surfaces at the call, not at the
first iteration.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator

from runnerlib.settings import MethodRef as RunnerMethod

__all__ = ["RunnerHandle"]


class RunnerHandle(abc.ABC):
    """How a Runner's method calls reach the Runnable."""

    @abc.abstractmethod
    def run_method(
        self, method: RunnerMethod, args: tuple[object, ...], kwargs: dict[str, object],
        timeout: float | None,
    ) -> object: ...

    @abc.abstractmethod
    async def async_run_method(
        self, method: RunnerMethod, args: tuple[object, ...], kwargs: dict[str, object],
        timeout: float | None,
    ) -> object: ...

    @abc.abstractmethod
    def async_stream_method(
        self, method: RunnerMethod, args: tuple[object, ...], kwargs: dict[str, object],
        timeout: float | None,
    ) -> AsyncIterator[object]: ...

    @abc.abstractmethod
    async def is_ready(self, timeout: float) -> bool: ...

    @abc.abstractmethod
    def destroy(self) -> None: ...

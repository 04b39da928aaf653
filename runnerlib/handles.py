"""The handles that need no transport: ``UninitializedHandle`` and ``LocalHandle``.

``Runner`` holds exactly one ``RunnerHandle`` (the interface, in ``runnerlib.transport``):
``UninitializedHandle`` until ``init_local`` / ``init_client``, then ``LocalHandle``
(in-process) or ``ShmHandle`` (shared memory, in ``runnerlib._shm.client``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import types
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from runnerlib.errors import RunnerTimeout, StateError
from runnerlib.settings import MethodKind
from runnerlib.settings import MethodRef as RunnerMethod
from runnerlib.transport import RunnerHandle

if TYPE_CHECKING:
    from runnerlib.runner import Runner

__all__ = ["RunnerHandle", "UninitializedHandle", "LocalHandle"]

logger = logging.getLogger("runnerlib")


class UninitializedHandle(RunnerHandle):
    """The handle of a runner that is not initialised: every call says what to do."""

    def __init__(self, runner_name: str) -> None:
        self.runner_name = runner_name

    def _error(self, method: RunnerMethod) -> StateError:
        return StateError(
            f"runner {self.runner_name!r} is not initialised, so {method.name}() cannot run: "
            "call runner.init_local() (in this process, for tests and debugging) or "
            "runner.init_client() (worker processes) first"
        )

    def run_method(
        self, method: RunnerMethod, args: tuple[object, ...], kwargs: dict[str, object],
        timeout: float | None,
    ) -> object:
        raise self._error(method)

    async def async_run_method(
        self, method: RunnerMethod, args: tuple[object, ...], kwargs: dict[str, object],
        timeout: float | None,
    ) -> object:
        raise self._error(method)

    def async_stream_method(
        self, method: RunnerMethod, args: tuple[object, ...], kwargs: dict[str, object],
        timeout: float | None,
    ) -> AsyncIterator[Any]:
        raise self._error(method)

    async def is_ready(self, timeout: float) -> bool:
        return False

    def destroy(self) -> None:
        pass


_END = object()


def _next_or_end(gen: Any) -> Any:
    # StopIteration cannot cross a Future, so the end of a generator is a sentinel.
    try:
        return next(gen)
    except StopIteration:
        return _END


class LocalHandle(RunnerHandle):
    """Runs the Runnable in this process; built by ``Runner.init_local``.

    The Runnable is built at once. Sync methods (and generators) run on one executor thread per
    runner, so calls run one at a time, never block an event loop, and a per-call timeout can
    be honoured by the caller (the call itself runs on; Python threads cannot be interrupted).
    ``async def`` methods run on the caller's event loop; called through ``run`` they run on a
    private loop owned by the executor thread. ``run``/``async_run`` of a generator method
    return the list of its chunks.
    """

    def __init__(self, runner: Runner) -> None:
        self.runner_name = runner.name
        self.default_timeout = runner._effective_timeout()
        self.instance = runner.runnable_class(**runner.runnable_init_params)
        self._bound: dict[str, Callable[..., Any]] = {
            name: rm.func.__get__(self.instance, type(self.instance))
            for name, rm in runner.runnable_class.runnable_methods().items()
        }
        self._thread_id: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix=f"runnerlib-{runner.name}", initializer=self._init_thread
        )
        self._closed = False

    # ----------------------------------------------------------------- executor-side helpers

    def _init_thread(self) -> None:
        self._thread_id = threading.get_ident()

    def _private_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
        return self._loop

    def _call_blocking(self, method: RunnerMethod, args: tuple[object, ...],
                       kwargs: dict[str, object]) -> Any:
        fn = self._bound[method.name]
        if method.kind is MethodKind.AGEN:
            async def collect() -> list[Any]:
                return [x async for x in fn(*args, **kwargs)]
            return self._private_loop().run_until_complete(collect())
        if method.kind is MethodKind.ASYNC:
            return self._private_loop().run_until_complete(fn(*args, **kwargs))
        if method.kind is MethodKind.GEN:
            return list(fn(*args, **kwargs))
        value = fn(*args, **kwargs)
        if isinstance(value, types.GeneratorType):  # a plain method returned a generator
            return list(value)
        if isinstance(value, types.AsyncGeneratorType):
            async def collect_returned() -> list[Any]:
                return [x async for x in value]
            return self._private_loop().run_until_complete(collect_returned())
        return value

    def _close_loop(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.close()

    # --------------------------------------------------------------------------- interface

    def _check(self) -> None:
        if self._closed:
            raise StateError(f"runner {self.runner_name!r} was destroyed")

    def _timeout(self, timeout: float | None) -> float:
        return self.default_timeout if timeout is None else timeout

    def _timed_out(self, method: RunnerMethod, seconds: float) -> RunnerTimeout:
        return RunnerTimeout(
            f"{self.runner_name}.{method.name} did not finish within {seconds:g} s"
        )

    def _on_executor(self) -> bool:
        return threading.get_ident() == self._thread_id

    def run_method(
        self, method: RunnerMethod, args: tuple[object, ...], kwargs: dict[str, object],
        timeout: float | None,
    ) -> object:
        self._check()
        if self._on_executor():  # re-entrant call from the Runnable itself
            return self._call_blocking(method, args, kwargs)
        seconds = self._timeout(timeout)
        fut = self._executor.submit(self._call_blocking, method, args, kwargs)
        done, _ = concurrent.futures.wait([fut], timeout=seconds)
        if not done:
            fut.cancel()
            raise self._timed_out(method, seconds)
        return fut.result()

    async def async_run_method(
        self, method: RunnerMethod, args: tuple[object, ...], kwargs: dict[str, object],
        timeout: float | None,
    ) -> object:
        self._check()
        seconds = self._timeout(timeout)
        fn = self._bound[method.name]
        if self._on_executor():
            return self._call_blocking(method, args, kwargs)
        try:
            async with asyncio.timeout(seconds) as scope:
                if method.kind is MethodKind.AGEN:
                    return [x async for x in fn(*args, **kwargs)]
                if method.kind is MethodKind.ASYNC:
                    return await fn(*args, **kwargs)
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(
                    self._executor, self._call_blocking, method, args, kwargs
                )
        except TimeoutError:
            if scope.expired():
                raise self._timed_out(method, seconds) from None
            raise

    def async_stream_method(
        self, method: RunnerMethod, args: tuple[object, ...], kwargs: dict[str, object],
        timeout: float | None,
    ) -> AsyncIterator[Any]:
        self._check()
        return self._stream(method, args, kwargs, self._timeout(timeout))

    async def _stream(self, method: RunnerMethod, args: tuple[object, ...],
                      kwargs: dict[str, object], seconds: float) -> AsyncIterator[Any]:
        """Yield the method's chunks (a non-generator yields its one result); ``seconds`` bounds
        the whole stream."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        fn = self._bound[method.name]

        async def step(awaitable: Any) -> Any:
            try:
                async with asyncio.timeout_at(deadline) as scope:
                    return await awaitable
            except TimeoutError:
                if scope.expired():
                    raise self._timed_out(method, seconds) from None
                raise

        if method.kind is MethodKind.AGEN:
            result: Any = fn(*args, **kwargs)
        elif method.kind is MethodKind.ASYNC:
            result = await step(fn(*args, **kwargs))
        else:  # a generator function, or a plain method that may return a generator
            result = await step(
                loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs)))
        if isinstance(result, types.AsyncGeneratorType):
            agen = result
            try:
                while True:
                    try:
                        item = await step(agen.__anext__())
                    except StopAsyncIteration:
                        return
                    yield item
            finally:
                await agen.aclose()
        elif isinstance(result, types.GeneratorType):
            gen = result
            try:
                while True:
                    item = await step(loop.run_in_executor(self._executor, _next_or_end, gen))
                    if item is _END:
                        return
                    yield item
            finally:
                with contextlib.suppress(RuntimeError):  # executor already shut down
                    self._executor.submit(gen.close)
        else:
            yield result

    async def is_ready(self, timeout: float) -> bool:
        return not self._closed

    def destroy(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._executor.submit(self._close_loop)
        self._executor.shutdown(wait=False, cancel_futures=False)

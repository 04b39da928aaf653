"""Runnables used by the cross-process tests; importable by worker processes."""

from __future__ import annotations

import asyncio
import os
import time

import runnerlib

# recorded at import time, to prove the worker's environment is set before the import
ENV_AT_IMPORT = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")}


class CustomError(Exception):
    pass


class Echo(runnerlib.Runnable):
    SUPPORTED_RESOURCES = ("cpu",)
    SUPPORTS_CPU_MULTI_THREADING = False

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    @runnerlib.Runnable.method
    def echo(self, *args, **kwargs):
        if kwargs:
            return args, kwargs
        return args[0] if len(args) == 1 else args

    @runnerlib.Runnable.method
    def scaled(self, x):
        return x * self.scale

    @runnerlib.Runnable.method
    def raise_value_error(self, msg):
        raise ValueError(msg)

    @runnerlib.Runnable.method
    def raise_custom(self, msg):
        raise CustomError(msg)

    @runnerlib.Runnable.method
    def sleep(self, seconds):
        time.sleep(seconds)
        return seconds

    @runnerlib.Runnable.method
    def sleep_pid(self, seconds):
        time.sleep(seconds)
        return os.getpid()

    @runnerlib.Runnable.method
    def pid(self):
        return os.getpid()

    @runnerlib.Runnable.method
    def environment(self):
        return {
            "at_import": {k: v or "" for k, v in ENV_AT_IMPORT.items()},
            "affinity": sorted(os.sched_getaffinity(0)),
        }

    @runnerlib.Runnable.method
    def count(self, n):
        yield from range(n)

    @runnerlib.Runnable.method
    async def async_double(self, x):
        await asyncio.sleep(0)
        return x * 2

    @runnerlib.Runnable.method
    async def async_count(self, n):
        for i in range(n):
            await asyncio.sleep(0)
            yield i

    @runnerlib.Runnable.method
    def unsupported_result(self):
        return object.__new__(_Unpicklable)


class _Unpicklable:
    def __reduce__(self):
        raise TypeError("this object cannot be pickled")


class GpuEcho(runnerlib.Runnable):
    """Schedules on NVIDIA GPUs; reports the environment its module was imported under."""

    SUPPORTED_RESOURCES = ("nvidia.com/gpu",)

    @runnerlib.Runnable.method
    def environment(self, hold=0.0):
        time.sleep(hold)  # keeps this worker busy so that the other takes the next calls
        return {k: v or "" for k, v in ENV_AT_IMPORT.items()}


class Other(runnerlib.Runnable):
    @runnerlib.Runnable.method
    def __call__(self, x):
        return x


class BrokenInit(runnerlib.Runnable):
    def __init__(self) -> None:
        raise ValueError("model file missing: /nowhere/model.bin")

    @runnerlib.Runnable.method
    def __call__(self, x):
        return x


class Doubler(runnerlib.Runnable):
    @runnerlib.Runnable.method(batchable=True, batch_dim=0)
    def __call__(self, x):
        return x * 2

    @runnerlib.Runnable.method
    def sleep_pid(self, seconds):
        time.sleep(seconds)
        return os.getpid()

    @runnerlib.Runnable.method
    def pid(self):
        return os.getpid()


def echo_runner(name: str = "echo", **kw) -> runnerlib.Runner:
    kw.setdefault("cpu", 1)
    return runnerlib.Runner(Echo, name=name, **kw)

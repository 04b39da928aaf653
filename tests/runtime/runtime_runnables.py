"""Runnables for the runtime tests; importable by worker processes."""

from __future__ import annotations

import os
import sys
import time

import runnerlib

print("printed at import by runtime_runnables")  # ordinary user code does this


class Printer(runnerlib.Runnable):
    def __init__(self) -> None:
        print("hello from __init__")  # once broke the start-up handshake
        print("and from __init__ on stderr", file=sys.stderr)

    @runnerlib.Runnable.method
    def shout(self, nbytes: int) -> int:
        line = "x" * 1023
        for _ in range(nbytes // 1024):
            print(line)
        print("done shouting", flush=True)
        return nbytes


class Sleeper(runnerlib.Runnable):
    @runnerlib.Runnable.method
    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds


class _DiesWhenEncoded:
    """A result whose encoding (pickle) kills the worker: after its batch ran, before any
    answer of the batch is written."""

    def __reduce__(self):  # noqa: D105
        os._exit(3)


class BatchThenDie(runnerlib.Runnable):
    SUPPORTS_CPU_MULTI_THREADING = True

    @runnerlib.Runnable.method(batchable=True, batch_dim=0)
    def run_then_die(self, xs: list) -> list:
        return [_DiesWhenEncoded() for _ in xs]


class Marker(runnerlib.Runnable):
    @runnerlib.Runnable.method
    def echo(self, value):
        return ("ran", repr(value)[:40])


class Unpicklable:
    """Defined at module level so that pickle could carry it, if allowed."""

    def __init__(self, n: int) -> None:
        self.n = n


class RowCounter(runnerlib.Runnable):
    SUPPORTS_CPU_MULTI_THREADING = True

    @runnerlib.Runnable.method(batchable=True, batch_dim=0)
    def count(self, x):
        return x.sum(axis=1)


class Keeper(runnerlib.Runnable):
    """Keeps every input it is given, as a stateful model keeping reference inputs does."""

    def __init__(self) -> None:
        self.kept: list = []

    @runnerlib.Runnable.method
    def keep(self, x):
        self.kept.append(x)
        return len(self.kept)

    @runnerlib.Runnable.method
    def block(self, n: int, value: float):
        """A result of ``n`` float32 equal to ``value`` (60 KiB for n=15,000)."""
        import numpy as np

        return np.full(n, value, dtype=np.float32)

    @runnerlib.Runnable.method
    def nbytes(self, x) -> int:
        time.sleep(0.05)
        return int(x.nbytes)


class PickleMaker(runnerlib.Runnable):
    """Returns a value only pickle can carry."""

    @runnerlib.Runnable.method
    def make(self, n: int):
        return Unpicklable(n)

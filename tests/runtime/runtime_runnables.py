"""Runnables for the runtime tests; importable by worker processes."""

from __future__ import annotations

import os
import sys
import time

import numpy as np

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


class SharedUser(runnerlib.Runnable):
    """Methods over runnerlib.shared_array arguments and results."""

    def __init__(self) -> None:
        self.kept: list = []

    @runnerlib.Runnable.method
    def probe(self, x):
        """What the worker received: its size, whether it views shared memory (and whose),
        whether it may write."""
        from ipc import shared

        block = shared.block_of(x)
        return (x.nbytes, block.name if block is not None else None, bool(x.flags.writeable),
                os.getpid())

    @runnerlib.Runnable.method
    def size(self, x):
        return x.nbytes

    @runnerlib.Runnable.method
    def echo(self, x):
        return x

    @runnerlib.Runnable.method
    def double(self, x):
        out = runnerlib.shared_array(x.shape, x.dtype)
        import numpy as np

        np.multiply(x, 2, out=out)
        return out

    @runnerlib.Runnable.method
    def fill(self, x, value):
        x[...] = value  # writes into the caller's memory
        return None

    @runnerlib.Runnable.method
    def make(self, n, value):
        out = runnerlib.shared_array((n,), "float32")
        out[:] = value
        return out

    @runnerlib.Runnable.method
    def keep(self, x):
        self.kept.append(x)
        return len(self.kept)

    @runnerlib.Runnable.method
    def kept_sums(self):
        return [float(k.sum()) for k in self.kept]

    @runnerlib.Runnable.method
    def pid(self):
        return os.getpid()


class SharedRows(runnerlib.Runnable):
    SUPPORTS_CPU_MULTI_THREADING = True

    def __init__(self) -> None:
        self.largest = 0

    @runnerlib.Runnable.method(batchable=True, batch_dim=0)
    def plus_one(self, x):
        import numpy as np

        self.largest = max(self.largest, x.shape[0])
        out = runnerlib.shared_array(x.shape, x.dtype)
        np.add(x, 1, out=out)
        return out

    @runnerlib.Runnable.method
    def largest_batch(self):
        return self.largest


class Plain(runnerlib.Runnable):
    """Every outcome of a single call to a plain method (the worker's direct lane)."""

    @runnerlib.Runnable.method
    def echo(self, x):
        return x

    @runnerlib.Runnable.method
    def fail(self, message: str):
        raise ValueError(message)

    @runnerlib.Runnable.method
    def counts(self, n: int):
        return (i for i in range(n))  # not a generator function: returns one, so it streams

    @runnerlib.Runnable.method
    def unencodable(self):
        return lambda: None  # pickle refuses it: the call fails, the worker goes on

    @runnerlib.Runnable.method
    def ones(self, n: int):
        return np.ones(n, dtype=np.float32)  # a small call, an answer as large as asked

    @runnerlib.Runnable.method
    def keep(self, x):
        """Keeps its argument (a view of the call's handoff segment) and returns it."""
        self.__dict__.setdefault("kept", []).append(x)
        return x

    @runnerlib.Runnable.method
    def kept_sums(self):
        return [float(a.sum()) for a in self.__dict__.get("kept", [])]

"""Runnables for the cross-process batching tests; importable by worker processes.

Every batchable method records what each of its invocations (one per batch) saw, so a test
can ask the worker afterwards through ``history``: the rows, the client ids found in the rows
(column 0 of an int64 array, or the ``client`` column of a table), and the worker's pid.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import runnerlib


class Batcher(runnerlib.Runnable):
    SUPPORTED_RESOURCES = ("cpu",)
    SUPPORTS_CPU_MULTI_THREADING = False

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay  # seconds each batch takes, so that calls pile up under load
        self.log: list[dict] = []

    def _record(self, method: str, rows: int, clients=(), **extra) -> None:
        self.log.append({"method": method, "rows": int(rows), "pid": os.getpid(),
                         "clients": sorted({int(c) for c in clients}), **extra})
        if self.delay:
            time.sleep(self.delay)

    # -- ndarray, along axis 0: x is (n, 2) int64 rows [client id, value] -------------------

    @runnerlib.Runnable.method(batchable=True, batch_dim=0)
    def rows(self, x):
        self._record("rows", len(x), x[:, 0])
        return np.column_stack([x, np.full(len(x), os.getpid(), dtype=np.int64)])

    @runnerlib.Runnable.method(batchable=True, batch_dim=0)
    def scale(self, x, factor):
        """A non-batch argument: calls join only when ``factor`` is equal."""
        self._record("scale", len(x), x[:, 0], factors=[factor])
        return x * factor

    @runnerlib.Runnable.method(batchable=True, batch_dim=0)
    def pair(self, x):
        """Tuple result, split element-wise."""
        self._record("pair", len(x), x[:, 0])
        return x + 1, x[:, 1] * 10

    @runnerlib.Runnable.method(batchable=True, batch_dim=0)
    def picky(self, x):
        """Fails any batch holding a negative value: one bad call must fail alone."""
        self._record("picky", len(x), x[:, 0])
        if (x[:, 1] < 0).any():
            raise ValueError("negative value in the batch")
        return x * 2

    @runnerlib.Runnable.method(batchable=True, batch_dim=0)
    def shapes(self, x):
        """Mixed shapes: arrays of different widths are never joined."""
        self._record("shapes", len(x), x[:, 0], widths=[int(x.shape[1])])
        return x * 2

    @runnerlib.Runnable.method(batchable=True, batch_dim=0)
    def sized(self, x):
        """Per-method max_batch_size from the config file."""
        self._record("sized", len(x), x[:, 0])
        return x + 0

    # -- ndarray along axis 1, and (0, 1): input and output dims differ ----------------------

    @runnerlib.Runnable.method(batchable=True, batch_dim=1)
    def columns(self, x):
        """x is (2, n): row 0 the client ids, row 1 the values."""
        self._record("columns", x.shape[1], x[0])
        return x * 3

    @runnerlib.Runnable.method(batchable=True, batch_dim=(0, 1))
    def transpose(self, x):
        """x is (n, 3) joined on axis 0; the result (3, n) is split on axis 1."""
        self._record("transpose", len(x), x[:, 0])
        return np.ascontiguousarray(x.T)

    # -- tables, frames, lists -----------------------------------------------------------------

    @runnerlib.Runnable.method(batchable=True, batch_dim=0)
    def table(self, t):
        self._record("table", t.num_rows, t.column("client").to_pylist(), kind=type(t).__name__)
        doubled = pc.multiply(t.column("value"), 2)
        if isinstance(t, pa.RecordBatch):
            return pa.RecordBatch.from_arrays(
                [t.column("client"), t.column("value"), doubled], ["client", "value", "double"]
            )
        return t.append_column("double", doubled)

    @runnerlib.Runnable.method(batchable=True, batch_dim=0)
    def frame(self, df):
        self._record("frame", len(df), df["client"].tolist())
        return df.assign(double=df["value"] * 2)

    @runnerlib.Runnable.method(batchable=True, batch_dim=0)
    def listed(self, items):
        """items: list of [client, value] pairs."""
        self._record("listed", len(items), [item[0] for item in items])
        return [[c, v * 2] for c, v in items]

    # -- introspection -------------------------------------------------------------------------

    @runnerlib.Runnable.method
    def history(self, clear: bool = True):
        out = list(self.log)
        if clear:
            self.log.clear()
        return out

    @runnerlib.Runnable.method
    def pid(self):
        return os.getpid()


def batch_runner(name: str, **kw) -> runnerlib.Runner:
    kw.setdefault("cpu", 1)
    return runnerlib.Runner(Batcher, name=name, **kw)

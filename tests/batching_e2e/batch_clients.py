"""Client-process bodies for the cross-process batching tests (run under multiprocessing spawn).

Each client sends many concurrent ``async_run`` calls whose rows carry its own id and a
sequence number, and checks that every answer holds exactly the rows it sent, in order.
``start`` is ``(ready, go)``: a client puts its id on ``ready`` once attached, then waits for
``go``, so that all clients call at the same time.
"""

from __future__ import annotations

import asyncio

import numpy as np


def make_rows(client: int, call: int, nrows: int) -> np.ndarray:
    x = np.empty((nrows, 2), dtype=np.int64)
    x[:, 0] = client
    x[:, 1] = call * 1000 + np.arange(nrows)
    return x


def concurrent_calls(name: str, client: int, ncalls: int, concurrency: int, nrows: int,
                     start, out) -> None:
    """``ncalls`` calls of ``rows``, ``concurrency`` at a time; report (status, client, info)."""
    from batch_runnables import batch_runner

    runner = batch_runner(name)
    pids: set[int] = set()
    bad: list[str] = []

    async def worker(k: int) -> None:
        for i in range(k, ncalls, concurrency):
            x = make_rows(client, i, 1 + (i % nrows))
            y = await runner.rows.async_run(x)
            if y.shape != (len(x), 3) or not np.array_equal(y[:, :2], x):
                bad.append(f"call {i}: sent {x.tolist()}, got {y.tolist()}")
            pids.update(int(p) for p in y[:, 2])

    async def main() -> None:
        await asyncio.gather(*(worker(k) for k in range(concurrency)))

    try:
        runner.init_client(spawn=False)
        ready, go = start
        ready.put(client)
        go.wait(30)
        asyncio.run(main())
        out.put(("ok" if not bad else "mismatch", client, bad[:3] or sorted(pids)))
    except BaseException as exc:  # report instead of dying silently
        out.put(("error", client, repr(exc)))
    finally:
        runner.destroy()


def kinds_calls(name: str, client: int, ncalls: int, start, out) -> None:
    """Concurrent calls of every payload kind; each answer checked by content."""
    import pandas as pd
    import pyarrow as pa
    from batch_runnables import batch_runner

    runner = batch_runner(name)
    bad: list[str] = []

    async def one(i: int) -> None:
        n = 1 + i % 3
        values = [client * 1000 + i * 10 + r for r in range(n)]
        clients = [client] * n
        # ndarray along axis 1
        x = np.array([clients, values], dtype=np.int64)
        y = await runner.columns.async_run(x)
        if not np.array_equal(y, x * 3):
            bad.append(f"columns {i}")
        # (0, 1): (n, 3) in, (3, n) out
        x = np.column_stack([clients, values, values]).astype(np.int64)
        y = await runner.transpose.async_run(x)
        if not np.array_equal(y, x.T):
            bad.append(f"transpose {i}")
        # tuple results
        x = np.column_stack([clients, values]).astype(np.int64)
        a, b = await runner.pair.async_run(x)
        if not (np.array_equal(a, x + 1) and np.array_equal(b, x[:, 1] * 10)):
            bad.append(f"pair {i}")
        # Table and RecordBatch
        t = pa.table({"client": pa.array(clients, pa.int64()),
                      "value": pa.array(values, pa.int64())})
        r = await runner.table.async_run(t)
        if not (isinstance(r, pa.Table) and r.column("value").to_pylist() == values
                and r.column("double").to_pylist() == [2 * v for v in values]):
            bad.append(f"table {i}")
        rb = t.to_batches()[0]
        r = await runner.table.async_run(rb)
        if not (isinstance(r, pa.RecordBatch) and r.column(1).to_pylist() == values
                and r.column(2).to_pylist() == [2 * v for v in values]):
            bad.append(f"recordbatch {i}")
        # DataFrame
        df = pd.DataFrame({"client": clients, "value": values})
        r = await runner.frame.async_run(df)
        if not (list(r["value"]) == values and list(r["double"]) == [2 * v for v in values]
                and list(r.index) == list(range(n))):
            bad.append(f"frame {i}")
        # list
        items = [[client, v] for v in values]
        r = await runner.listed.async_run(items)
        if [list(p) for p in r] != [[client, 2 * v] for v in values]:
            bad.append(f"list {i}: {r!r}")

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(ncalls)))

    try:
        runner.init_client(spawn=False)
        ready, go = start
        ready.put(client)
        go.wait(30)
        asyncio.run(main())
        out.put(("ok" if not bad else "mismatch", client, bad[:5]))
    except BaseException as exc:
        out.put(("error", client, repr(exc)))
    finally:
        runner.destroy()

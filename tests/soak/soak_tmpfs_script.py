"""Run inside a private mount namespace whose /dev/shm is a 48 MiB tmpfs: serve a runner and
push calls until the tmpfs is full; the caller must get an error, never die of SIGBUS."""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

if __name__ == "__main__":
    from soak_runnables import soak_runner

    import runnerlib

    os.environ["RUNNERLIB_NAMESPACE"] = f"tmpfs-{os.getpid()}"
    runner = soak_runner("tmpfs")
    try:
        with runnerlib.Server([runner]):
            runner.init_client(spawn=False)
            try:
                for mib in (1, 4, 16, 24, 32, 64):
                    x = np.ones((mib << 20) // 8, dtype=np.int64)
                    y = runner.echo.run(x, _timeout=60)
                    assert np.array_equal(x, y)
                    del y
                    print("passed", mib, "MiB", flush=True)
                print("no exhaustion reached", flush=True)
            except (runnerlib.RunnerError, OSError, MemoryError) as exc:
                print("CLEAR ERROR", type(exc).__name__, exc, flush=True)
            runner.destroy()
    except (runnerlib.RunnerError, OSError) as exc:  # the server itself may not fit
        print("CLEAR ERROR", type(exc).__name__, exc, flush=True)

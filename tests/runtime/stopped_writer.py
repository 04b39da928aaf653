"""A client that stops itself (SIGSTOP) between reserving and committing its second request
record, as Ctrl-Z or a debugger can; once continued it finishes that call (or times out) and
makes one more. Prints "first <outcome>" and "second <value>"."""

from __future__ import annotations

import os
import sys

from runtime_runnables import Keeper

import runnerlib
from runnerlib._shm.protocol import STOP_AFTER_RESERVE_ENV


def main(name: str) -> None:
    runner = runnerlib.Runner(Keeper, name=name, cpu=1)
    runner.init_client(spawn=False)
    assert os.environ.get(STOP_AFTER_RESERVE_ENV) == "2"
    print("ready", runner.block.run(2, 1.0, _timeout=30)[0], flush=True)  # reservation 1
    try:
        first = f"answered {runner.block.run(2, 2.0, _timeout=10)[0]}"  # stops inside
    except runnerlib.RunnerTimeout:
        first = "timed out"
    print("first", first, flush=True)
    print("second", runner.block.run(2, 3.0, _timeout=30)[0], flush=True)
    runner.destroy()


if __name__ == "__main__":
    main(sys.argv[1])

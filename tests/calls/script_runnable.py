"""A Runnable defined in a script's __main__, guarded as SPEC 3 requires."""

import sys

import numpy as np

import runnerlib


class Square(runnerlib.Runnable):
    @runnerlib.Runnable.method
    def __call__(self, x):
        return x * x


if __name__ == "__main__":
    runner = runnerlib.Runner(Square, name=sys.argv[1] if len(sys.argv) > 1 else "square")
    with runnerlib.Server([runner]):
        runner.init_client()
        print("RESULT", runner.run(np.arange(4)).tolist())
        runner.destroy()

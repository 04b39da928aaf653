"""Runnables driven by the suite; a module of their own so worker processes can import them.

Echo and Identity are identity methods: the figures measure the transport and the batcher, not
model code.
"""

from __future__ import annotations

import runnerlib


class Echo(runnerlib.Runnable):
    """Batchable identity along dim 0: the batching-on case."""

    SUPPORTED_RESOURCES = ("cpu",)
    SUPPORTS_CPU_MULTI_THREADING = False

    @runnerlib.Runnable.method(batchable=True, batch_dim=0)
    def __call__(self, x):
        return x


class Identity(runnerlib.Runnable):
    """Non-batchable identity: batching off by construction, whatever the config says."""

    SUPPORTED_RESOURCES = ("cpu",)
    SUPPORTS_CPU_MULTI_THREADING = False

    @runnerlib.Runnable.method(batchable=False)
    def __call__(self, x):
        return x


class SharedOps(runnerlib.Runnable):
    """Methods over a `runnerlib.shared_array` argument (SPEC 6): what crosses is a reference.

    `nbytes` answers with the size only (the array goes in), `identity` returns its argument
    (in and out), `double` writes 2*x into a shared array it makes and returns that.
    """

    SUPPORTED_RESOURCES = ("cpu",)
    SUPPORTS_CPU_MULTI_THREADING = False

    @runnerlib.Runnable.method(batchable=False)
    def nbytes(self, x):
        return int(x.nbytes)

    @runnerlib.Runnable.method(batchable=False)
    def identity(self, x):
        return x

    @runnerlib.Runnable.method(batchable=False)
    def double(self, x):
        import numpy

        out = runnerlib.shared_array(x.shape, x.dtype)
        numpy.multiply(x, 2, out=out)
        return out

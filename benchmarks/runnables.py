"""Runnables driven by the suite; a module of their own so worker processes can import them.

Both are identity methods: the figures measure the transport and the batcher, not model code.
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

"""A Runnable written against BentoML 1.2's ``bentoml.legacy`` spelling that reports its
worker's environment; importable by worker processes."""

from __future__ import annotations

import os

import runnerlib as bentoml

VARS = ("BENTOML_NUM_THREAD", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES")


class EnvProbe(bentoml.legacy.Runnable):
    SUPPORTED_RESOURCES = ("cpu",)
    SUPPORTS_CPU_MULTI_THREADING = True

    @bentoml.legacy.Runnable.method(batchable=False)
    def environment(self):
        return {v: os.environ.get(v) for v in VARS}

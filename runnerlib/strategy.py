"""Scheduling strategies: how many workers a runner gets and the environment of each.

``DefaultStrategy`` reproduces BentoML's rules so a ported runner gets the same worker count and
the same ``CUDA_VISIBLE_DEVICES`` / thread variables. A custom strategy is a subclass of
``Strategy`` with the same two classmethods.

The resource request a strategy receives is the one BentoML passes: the runner's request as
the user gave it, ``None`` when nothing was asked (everything the host has), else a mapping
with a ``"cpu"`` and/or ``"nvidia.com/gpu"`` key in any form the user wrote (``4``, ``"500m"``,
``2``, ``[0, 1]``, ``["0"]``, ``"system"``, ...). ``runnerlib.resources.get_resource`` reads one
kind of it as BentoML's function of that name does.

A worker's environment is a function of the runnable class, the request, the host and the
worker index only: the thread variables are always written (BentoML overwrites them too), so
a variable left in this process's environment never changes what a worker gets.
"""

from __future__ import annotations

import abc
import logging
import math
from typing import Any

from runnerlib.errors import ConfigError
from runnerlib.resources import GPU, normalize_request
from runnerlib.runnable import Runnable

__all__ = ["Strategy", "DefaultStrategy", "THREAD_ENV_VARS"]

logger = logging.getLogger("runnerlib")

THREAD_ENV_VARS: tuple[str, ...] = (
    "BENTOML_NUM_THREAD",  # read by custom Runnable code written for BentoML
    "OMP_NUM_THREADS",  # OpenMP
    "OPENBLAS_NUM_THREADS",  # OpenBLAS
    "MKL_NUM_THREADS",  # MKL
    "VECLIB_MAXIMUM_THREADS",  # Accelerate
    "NUMEXPR_NUM_THREADS",  # numexpr
    "RAYON_RS_NUM_CPUS",  # Rust rayon (Hugging Face fast tokenizers)
    "TF_NUM_INTEROP_THREADS",  # TensorFlow
    "TF_NUM_INTRAOP_THREADS",
)


class Strategy(abc.ABC):
    """Decides worker count and per-worker environment from a resource request: ``None``
    (what the host has) or a mapping such as ``{"cpu": "500m", "nvidia.com/gpu": 2}`` in any
    form BentoML accepts (see the module docstring; ``get_resource`` reads it)."""

    @classmethod
    @abc.abstractmethod
    def get_worker_count(
        cls,
        runnable_class: type[Runnable],
        resource_request: dict[str, Any] | None,
        workers_per_resource: int | float,
    ) -> int: ...

    @classmethod
    @abc.abstractmethod
    def get_worker_env(
        cls,
        runnable_class: type[Runnable],
        resource_request: dict[str, Any] | None,
        workers_per_resource: int | float,
        worker_index: int,
    ) -> dict[str, str]:
        """Environment for worker ``worker_index`` (0-based), set before the Runnable loads."""


def _wpr(value: int | float) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"workers_per_resource: expected a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"workers_per_resource: must be greater than 0, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _gpus_for(runnable_class: type[Runnable], request: dict[str, Any]) -> list[int]:
    """The GPUs this runnable will use: none unless it supports GPUs and some are assigned."""
    gpus = list(request[GPU] or [])
    if gpus and GPU in runnable_class.SUPPORTED_RESOURCES:
        return gpus
    return []


def _cpus_for(runnable_class: type[Runnable], request: dict[str, Any], warn: bool) -> float:
    cpus = request["cpu"]
    if cpus is None or cpus <= 0:
        raise ConfigError(
            f"no usable resource for {runnable_class.__qualname__}: the request names no CPU "
            "and no GPU it can use; add \"cpu\" to the request (or pass None to use what the "
            "host has)"
        )
    if warn and "cpu" not in runnable_class.SUPPORTED_RESOURCES:
        logger.warning(
            "%s supports only %s, which this runner was not given; falling back to CPU",
            runnable_class.__qualname__,
            ", ".join(runnable_class.SUPPORTED_RESOURCES),
        )
    return float(cpus)


class DefaultStrategy(Strategy):
    """BentoML's default strategy.

    - GPU runnable with GPUs assigned: ``ceil(len(gpus) * workers_per_resource)`` workers; an
      integer ``workers_per_resource`` shares each GPU among that many workers, a fraction gives
      each worker ``round(1 / workers_per_resource)`` GPUs.
    - CPU runnable with multi-threading: ``workers_per_resource`` workers whose thread variables
      are ``ceil(cpu)``; otherwise ``ceil(cpu) * workers_per_resource`` single-threaded workers.
      CPU workers get ``CUDA_VISIBLE_DEVICES=-1``. The thread variables (``THREAD_ENV_VARS``,
      ``BENTOML_NUM_THREAD`` among them) are always set, overwriting any the parent has, as
      BentoML does; a custom Strategy can choose otherwise.

    Requests are read as BentoML reads them (``normalize_request``) and checked against the
    host: more CPUs than the host has, more GPUs than are usable, or a GPU id that is not
    usable is a ``ConfigError``.
    """

    @classmethod
    def get_worker_count(
        cls,
        runnable_class: type[Runnable],
        resource_request: dict[str, Any] | None,
        workers_per_resource: int | float,
    ) -> int:
        request = normalize_request(resource_request)
        wpr = _wpr(workers_per_resource)
        gpus = _gpus_for(runnable_class, request)
        if gpus:
            if isinstance(wpr, float) and wpr > 1:
                raise ConfigError(
                    f"workers_per_resource={wpr}: a fraction above 1 cannot share GPUs evenly; "
                    "use an integer or a custom Strategy"
                )
            return max(1, math.ceil(len(gpus) * wpr))
        cpus = _cpus_for(runnable_class, request, warn=True)
        if runnable_class.SUPPORTS_CPU_MULTI_THREADING:
            if isinstance(wpr, float):
                raise ConfigError(
                    f"workers_per_resource={wpr}: a fraction is not supported for a "
                    "multi-threaded CPU runnable; use an integer"
                )
            return wpr
        return max(1, math.ceil(math.ceil(cpus) * wpr))

    @classmethod
    def get_worker_env(
        cls,
        runnable_class: type[Runnable],
        resource_request: dict[str, Any] | None,
        workers_per_resource: int | float,
        worker_index: int,
    ) -> dict[str, str]:
        request = normalize_request(resource_request)
        wpr = _wpr(workers_per_resource)
        if worker_index < 0:
            raise ValueError(f"worker_index must be >= 0, got {worker_index}")
        env: dict[str, str] = {}
        gpus = _gpus_for(runnable_class, request)
        if gpus:
            if isinstance(wpr, float):
                if wpr > 1:
                    raise ConfigError(
                        f"workers_per_resource={wpr}: a fraction above 1 cannot share GPUs "
                        "evenly; use an integer or a custom Strategy"
                    )
                per_worker = round(1 / wpr)
                if len(gpus) < per_worker:
                    raise ConfigError(
                        f"workers_per_resource={wpr} gives each worker {per_worker} GPUs but only "
                        f"{len(gpus)} are assigned ({gpus})"
                    )
                assigned = gpus[per_worker * worker_index : per_worker * (worker_index + 1)]
                if not assigned:
                    raise ConfigError(
                        f"worker {worker_index}: no GPU left to assign ({len(gpus)} GPUs, "
                        f"{per_worker} per worker)"
                    )
                env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, assigned))
            else:
                idx = worker_index // wpr
                if idx >= len(gpus):
                    raise ConfigError(
                        f"worker {worker_index}: only {len(gpus)} GPUs ({gpus}) for "
                        f"workers_per_resource={wpr}"
                    )
                env["CUDA_VISIBLE_DEVICES"] = str(gpus[idx])
            return env
        cpus = _cpus_for(runnable_class, request, warn=False)
        env["CUDA_VISIBLE_DEVICES"] = "-1"
        threads = str(math.ceil(cpus)) if runnable_class.SUPPORTS_CPU_MULTI_THREADING else "1"
        for var in THREAD_ENV_VARS:
            env[var] = threads
        return env

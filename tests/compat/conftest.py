"""Compatibility tests: BentoML's documented behaviour, ported by changing the import.

Like tests/foundation, they run against a known host unless a test says otherwise: no GPUs (a
fake NVML), no configuration file, no CUDA_VISIBLE_DEVICES or thread variables inherited
from the shell.
"""

from __future__ import annotations

import pytest

from runnerlib import resources
from runnerlib.strategy import THREAD_ENV_VARS

_ENV = ("RUNNERLIB_CONFIG", "RUNNERLIB_CONFIG_OPTIONS", "BENTOML_CONFIG",
        "BENTOML_CONFIG_OPTIONS", "CUDA_VISIBLE_DEVICES", *THREAD_ENV_VARS)


@pytest.fixture(autouse=True)
def _known_host(monkeypatch: pytest.MonkeyPatch):
    for var in _ENV:
        monkeypatch.delenv(var, raising=False)
    with resources.use_nvml(resources.FakeNvml(0)):
        yield


@pytest.fixture
def gpus():
    """``with gpus(4): ...`` makes the host look like it has 4 GPUs (a fake NVML)."""
    return lambda n, **kw: resources.use_nvml(resources.FakeNvml(n, **kw))


@pytest.fixture
def cpus(monkeypatch: pytest.MonkeyPatch):
    """``cpus(8)`` makes the host look like it has 8 usable CPUs (no cgroup quota)."""

    def set_cpus(n: int) -> None:
        monkeypatch.setattr(resources, "available_cpus", lambda: list(range(n)))
        monkeypatch.setattr(resources, "cgroup_cpu_limit", lambda cgroup_root=None: None)

    return set_cpus

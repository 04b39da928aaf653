"""DefaultStrategy: BentoML's worker counts and per-worker environments (SPEC section 5)."""

from __future__ import annotations

import pytest

from runnerlib import ConfigError, DefaultStrategy, Runnable, Runner, Strategy, resources
from runnerlib.config import parse_config
from runnerlib.strategy import THREAD_ENV_VARS

GPU = "nvidia.com/gpu"


@pytest.fixture(autouse=True)
def _roomy_host(cpus):
    """Requests in these tests name up to 8 CPUs and GPU ids up to 15: the strategy checks
    them against the host (as BentoML does), so the host has 16 CPUs and, where a test says
    so, 16 GPUs."""
    cpus(16)


def many_gpus():
    return resources.use_nvml(resources.FakeNvml(16))


class CpuRunnable(Runnable):
    SUPPORTED_RESOURCES = ("cpu",)
    SUPPORTS_CPU_MULTI_THREADING = False

    @Runnable.method
    def f(self):
        pass


class MtRunnable(Runnable):
    SUPPORTED_RESOURCES = ("cpu",)
    SUPPORTS_CPU_MULTI_THREADING = True

    @Runnable.method
    def f(self):
        pass


class GpuRunnable(Runnable):
    SUPPORTED_RESOURCES = ("nvidia.com/gpu", "cpu")
    SUPPORTS_CPU_MULTI_THREADING = True

    @Runnable.method
    def f(self):
        pass


class GpuOnlyRunnable(Runnable):
    SUPPORTED_RESOURCES = ("nvidia.com/gpu",)

    @Runnable.method
    def f(self):
        pass


def count(cls, request, wpr=1):
    return DefaultStrategy.get_worker_count(cls, request, wpr)


def envs(cls, request, wpr=1):
    n = count(cls, request, wpr)
    return [DefaultStrategy.get_worker_env(cls, request, wpr, i) for i in range(n)]


def devices(runner):
    return [e["CUDA_VISIBLE_DEVICES"] for e in runner.scheduled_worker_env_map.values()]


def threads(env):
    return {env[v] for v in THREAD_ENV_VARS}


def test_thread_variable_list():
    assert THREAD_ENV_VARS == (
        "BENTOML_NUM_THREAD", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
        "VECLIB_MAXIMUM_THREADS",
        "NUMEXPR_NUM_THREADS", "RAYON_RS_NUM_CPUS", "TF_NUM_INTEROP_THREADS",
        "TF_NUM_INTRAOP_THREADS",
    )


def test_cpu_runnable_one_worker_per_cpu():
    es = envs(CpuRunnable, {"cpu": 4})
    assert len(es) == 4
    for e in es:
        assert e["CUDA_VISIBLE_DEVICES"] == "-1" and threads(e) == {"1"}
        assert set(e) == {"CUDA_VISIBLE_DEVICES", *THREAD_ENV_VARS}


def test_cpu_runnable_workers_per_resource():
    assert count(CpuRunnable, {"cpu": 4}, 2) == 8
    assert count(CpuRunnable, {"cpu": 4}, 0.5) == 2
    assert count(CpuRunnable, {"cpu": 2.5}) == 3


def test_multithreading_runnable_one_worker_many_threads():
    es = envs(MtRunnable, {"cpu": 4})
    assert len(es) == 1
    assert threads(es[0]) == {"4"} and es[0]["CUDA_VISIBLE_DEVICES"] == "-1"
    assert count(MtRunnable, {"cpu": 4}, 2) == 2
    assert threads(envs(MtRunnable, {"cpu": 2.5})[0]) == {"3"}


def test_multithreading_fraction_rejected():
    with pytest.raises(ConfigError, match="fraction"):
        count(MtRunnable, {"cpu": 4}, 0.5)


def test_half_a_cpu():
    assert count(CpuRunnable, {"cpu": 0.5}) == 1
    assert threads(envs(MtRunnable, {"cpu": 0.5})[0]) == {"1"}


def test_parent_thread_variable_is_overwritten(monkeypatch):
    # BentoML overwrites them: a worker's environment never depends on this process's
    before = envs(CpuRunnable, {"cpu": 2})[0]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv("BENTOML_NUM_THREAD", "7")
    e = envs(CpuRunnable, {"cpu": 2})[0]
    assert e == before and threads(e) == {"1"}
    assert threads(envs(MtRunnable, {"cpu": 2})[0]) == {"2"}


def test_gpu_runnable_one_worker_per_gpu():
    with many_gpus():
        es = envs(GpuRunnable, {"cpu": 8, GPU: [0, 1]})
        assert [e["CUDA_VISIBLE_DEVICES"] for e in es] == ["0", "1"]
        assert all(set(e) == {"CUDA_VISIBLE_DEVICES"} for e in es)


def test_gpu_ids_are_passed_through():
    with many_gpus():
        es = envs(GpuRunnable, {"cpu": 8, GPU: [2, 5]})
        assert [e["CUDA_VISIBLE_DEVICES"] for e in es] == ["2", "5"]


def test_gpu_shared_by_integer_workers_per_resource():
    with many_gpus():
        es = envs(GpuRunnable, {"cpu": 8, GPU: [0, 1]}, 2)
        assert [e["CUDA_VISIBLE_DEVICES"] for e in es] == ["0", "0", "1", "1"]
        assert count(GpuRunnable, {GPU: [0, 1]}, 2.0) == 4  # an integral float counts as an int


def test_fractional_workers_per_resource_groups_gpus():
    with many_gpus():
        es = envs(GpuRunnable, {"cpu": 8, GPU: [0, 1, 2, 3]}, 0.5)
        assert [e["CUDA_VISIBLE_DEVICES"] for e in es] == ["0,1", "2,3"]
        es = envs(GpuRunnable, {"cpu": 8, GPU: [0, 1, 2, 3]}, 0.25)
        assert [e["CUDA_VISIBLE_DEVICES"] for e in es] == ["0,1,2,3"]


def test_fraction_with_too_few_gpus():
    with many_gpus():
        assert count(GpuRunnable, {GPU: [0]}, 0.5) == 1
        with pytest.raises(ConfigError, match="2 GPUs"):
            DefaultStrategy.get_worker_env(GpuRunnable, {GPU: [0]}, 0.5, 0)


def test_fraction_above_one_rejected():
    with many_gpus():
        with pytest.raises(ConfigError, match="fraction"):
            count(GpuRunnable, {GPU: [0, 1]}, 1.5)


def test_worker_index_beyond_gpus():
    with many_gpus():
        with pytest.raises(ConfigError, match="worker 2"):
            DefaultStrategy.get_worker_env(GpuRunnable, {GPU: [0, 1]}, 1, 2)


@pytest.mark.parametrize("bad", [0, -1, "2", True, float("nan")])
def test_bad_workers_per_resource(bad):
    with pytest.raises(ConfigError, match="workers_per_resource"):
        count(CpuRunnable, {"cpu": 2}, bad)


def test_cpu_runnable_ignores_gpus():
    with many_gpus():
        es = envs(CpuRunnable, {"cpu": 2, GPU: [0, 1, 2]})
        assert len(es) == 2 and es[0]["CUDA_VISIBLE_DEVICES"] == "-1"


def test_gpu_runnable_without_gpus_uses_cpu():
    es = envs(GpuRunnable, {"cpu": 4, GPU: []})
    assert len(es) == 1 and es[0]["CUDA_VISIBLE_DEVICES"] == "-1" and threads(es[0]) == {"4"}


def test_gpu_only_runnable_falls_back_to_cpu_with_warning(logs):
    es = envs(GpuOnlyRunnable, {"cpu": 2, GPU: []})
    assert len(es) == 2 and es[0]["CUDA_VISIBLE_DEVICES"] == "-1"
    assert "falling back to CPU" in logs.text


def test_no_cpu_in_request():
    with pytest.raises(ConfigError, match="no usable resource"):
        count(CpuRunnable, {GPU: []})


def test_none_request_means_the_host(cpus, gpus):
    cpus(3)
    with gpus(2):
        assert count(CpuRunnable, None) == 3
        assert count(GpuRunnable, None) == 2
        assert DefaultStrategy.get_worker_env(GpuRunnable, None, 1, 1) == {
            "CUDA_VISIBLE_DEVICES": "1"
        }


# ----------------------------------------------------------------------- through a Runner


def test_runner_cpu_4(cpus):
    cpus(8)
    r = Runner(CpuRunnable, cpu=4)
    assert r.scheduled_worker_count == 4
    assert all(threads(e) == {"1"} for e in r.scheduled_worker_env_map.values())
    assert sorted(r.scheduled_worker_env_map) == [0, 1, 2, 3]
    r = Runner(MtRunnable, cpu=4)
    assert r.scheduled_worker_count == 1 and threads(r.scheduled_worker_env_map[0]) == {"4"}


def test_runner_cpu_millicores(cpus):
    cpus(8)
    assert Runner(CpuRunnable, cpu="500m").scheduled_worker_count == 1
    assert Runner(CpuRunnable, cpu="2000m").scheduled_worker_count == 2


def test_runner_defaults_to_host_cpus(cpus):
    cpus(6)
    assert Runner(CpuRunnable).scheduled_worker_count == 6
    assert Runner(MtRunnable).scheduled_worker_env_map[0]["OMP_NUM_THREADS"] == "6"


def test_runner_gpus(gpus, cpus):
    cpus(8)
    with gpus(4):
        r = Runner(GpuRunnable, nvidia_gpu=2)
        assert r.scheduled_worker_count == 2
        assert devices(r) == ["0", "1"]
        r = Runner(GpuRunnable, nvidia_gpu=2, workers_per_resource=2)
        assert devices(r) == [
            "0", "0", "1", "1"
        ]
        r = Runner(GpuRunnable, workers_per_resource=0.5)
        assert devices(r) == [
            "0,1", "2,3"
        ]
        r = Runner(GpuRunnable, nvidia_gpu=[3, 1])
        assert devices(r) == ["3", "1"]
        assert r.settings().nvidia_gpu == [3, 1]
        r = Runner(GpuRunnable, nvidia_gpu=0, cpu=2)
        assert r.scheduled_worker_env_map == {0: r.scheduled_worker_env_map[0]}
        assert r.scheduled_worker_env_map[0]["CUDA_VISIBLE_DEVICES"] == "-1"


def test_runner_gpus_restricted_by_parent_cuda_visible_devices(gpus, cpus, monkeypatch):
    cpus(8)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    with gpus(4):
        r = Runner(GpuRunnable)
        assert devices(r) == ["2", "3"]
        assert Runner(GpuRunnable, nvidia_gpu=1).settings().nvidia_gpu == [2]
        with pytest.raises(ConfigError, match=r"\[0\]"):
            Runner(GpuRunnable, nvidia_gpu=[0]).settings()
        with pytest.raises(ConfigError, match="3 GPU"):
            Runner(GpuRunnable, nvidia_gpu=3).settings()


def test_runner_explicit_gpu_request_unmet(cpus):
    cpus(4)
    with pytest.raises(ConfigError, match="nvidia_gpu: 2 GPU"):
        Runner(GpuRunnable, nvidia_gpu=2).settings()
    with pytest.raises(ConfigError, match="nvidia_gpu"):
        Runner(GpuRunnable, nvidia_gpu=[0]).settings()


def test_runner_gpu_only_on_gpu_less_host(cpus, logs):
    cpus(2)
    r = Runner(GpuOnlyRunnable)
    assert r.scheduled_worker_count == 2
    assert r.scheduled_worker_env_map[0]["CUDA_VISIBLE_DEVICES"] == "-1"
    assert "falling back to CPU" in logs.text


def test_runner_resources_from_config(gpus, cpus):
    cpus(8)
    cfg = parse_config({"runners": {"gpurunnable": {"nvidia_gpu": 2, "workers_per_resource": 2}},
                        "runner_defaults": {"cpu": 3}})
    with gpus(2):
        s = Runner(GpuRunnable).settings(cfg)
    assert s.worker_count == 4 and s.nvidia_gpu == [0, 1] and s.cpu == 3
    assert [e["CUDA_VISIBLE_DEVICES"] for e in s.worker_env.values()] == ["0", "0", "1", "1"]
    assert Runner(CpuRunnable).settings(cfg).worker_count == 3


def test_custom_strategy():
    class Fixed(Strategy):
        @classmethod
        def get_worker_count(cls, runnable_class, resource_request, workers_per_resource):
            return 3

        @classmethod
        def get_worker_env(cls, runnable_class, resource_request, workers_per_resource,
                           worker_index):
            return {"WORKER": worker_index}

    r = Runner(CpuRunnable, scheduling_strategy=Fixed)
    assert r.scheduled_worker_count == 3
    assert r.scheduled_worker_env_map == {0: {"WORKER": "0"}, 1: {"WORKER": "1"},
                                          2: {"WORKER": "2"}}
    with pytest.raises(TypeError):
        Strategy()  # type: ignore[abstract]


# ------------------------------------------------------------------------------ properties

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@given(st.lists(st.integers(0, 15), unique=True, min_size=1, max_size=8), st.integers(1, 4))
def test_integer_sharing_uses_every_gpu_equally(gpu_ids, wpr):
    with many_gpus():
        es = envs(GpuRunnable, {"cpu": 1, GPU: gpu_ids}, wpr)
    assert len(es) == len(gpu_ids) * wpr
    used = [int(e["CUDA_VISIBLE_DEVICES"]) for e in es]
    assert all(used.count(g) == wpr for g in gpu_ids)


@given(st.integers(1, 8), st.sampled_from([0.5, 0.25]))
def test_fractional_sharing_never_overlaps(n_gpus, wpr):
    per_worker = round(1 / wpr)
    request = {"cpu": 1, GPU: list(range(n_gpus))}
    if n_gpus < per_worker:
        with pytest.raises(ConfigError), many_gpus():
            envs(GpuRunnable, request, wpr)
        return
    with many_gpus():
        es = envs(GpuRunnable, request, wpr)
    groups = [e["CUDA_VISIBLE_DEVICES"].split(",") for e in es]
    flat = [g for grp in groups for g in grp]
    assert len(flat) == len(set(flat)) == n_gpus
    assert all(len(grp) <= per_worker for grp in groups)

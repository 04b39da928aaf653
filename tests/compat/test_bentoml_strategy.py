"""DefaultStrategy and custom strategies take BentoML's resource requests (BentoML's
``bentoml._internal.runner.strategy`` and ``resource`` modules, as documented and as they
behave), and a Runner hands a strategy the request in the shape BentoML does."""

from __future__ import annotations

import pytest

import runnerlib as bentoml
from runnerlib import ConfigError
from runnerlib.config import parse_config
from runnerlib.resources import get_resource, system_resources
from runnerlib.strategy import DefaultStrategy

GPU = "nvidia.com/gpu"


class GPURunnable(bentoml.Runnable):
    SUPPORTED_RESOURCES = ("nvidia.com/gpu",)

    @bentoml.Runnable.method
    def f(self):
        pass


class TorchLike(bentoml.Runnable):
    SUPPORTED_RESOURCES = ("nvidia.com/gpu", "cpu")
    SUPPORTS_CPU_MULTI_THREADING = True

    @bentoml.Runnable.method
    def f(self):
        pass


class SingleThreadRunnable(bentoml.Runnable):
    SUPPORTED_RESOURCES = ("cpu",)
    SUPPORTS_CPU_MULTI_THREADING = False

    @bentoml.Runnable.method
    def f(self):
        pass


class MultiThreadRunnable(bentoml.Runnable):
    SUPPORTED_RESOURCES = ("cpu",)
    SUPPORTS_CPU_MULTI_THREADING = True

    @bentoml.Runnable.method
    def f(self):
        pass


def count(cls, request, wpr=1):
    return DefaultStrategy.get_worker_count(cls, request, wpr)


def env(cls, request, wpr, index):
    return DefaultStrategy.get_worker_env(cls, request, wpr, index)


def devices(cls, request, wpr=1):
    return [env(cls, request, wpr, i)["CUDA_VISIBLE_DEVICES"]
            for i in range(count(cls, request, wpr))]


# ------------------------------------------------------------------------- request forms


def test_gpu_count_form(gpus):
    with gpus(4):
        assert count(GPURunnable, {GPU: 2}) == 2
        assert count(GPURunnable, {GPU: 2}, 2) == 4
        assert devices(GPURunnable, {GPU: 2}) == ["0", "1"]
        assert devices(GPURunnable, {GPU: 2}, 2) == ["0", "0", "1", "1"]
        assert devices(GPURunnable, {GPU: "2"}) == ["0", "1"]  # a count as a string


def test_gpu_id_list_forms(gpus):
    with gpus(10):
        assert devices(GPURunnable, {GPU: [2, 7]}) == ["2", "7"]
        assert devices(GPURunnable, {GPU: ["2", "7"]}) == ["2", "7"]  # ids as strings
        assert devices(GPURunnable, {GPU: [2, 7]}, 2) == ["2", "2", "7", "7"]
        assert count(GPURunnable, {GPU: [2, 7]}, 0.5) == 1
        assert count(GPURunnable, {GPU: [2, 7, 9]}, 0.5) == 2
        assert devices(GPURunnable, {GPU: [2, 7, 8, 9]}, 0.5) == ["2,7", "8,9"]
        assert devices(GPURunnable, {GPU: [2, 6, 7, 8, 9]}, 0.4) == ["2,6", "7,8"]
        assert env(GPURunnable, {GPU: [2, 6, 7, 8, 9]}, 0.4, 2)["CUDA_VISIBLE_DEVICES"] == "9"
        assert devices(GPURunnable, {GPU: [2, 7, 8, 9]}, 0.25) == ["2,7,8,9"]


def test_gpu_system_form(gpus, cpus):
    cpus(4)
    with gpus(3):
        assert devices(GPURunnable, {GPU: "system"}) == ["0", "1", "2"]
        assert devices(GPURunnable, "system") == ["0", "1", "2"]  # the whole request
        assert devices(GPURunnable, None) == ["0", "1", "2"]


@pytest.mark.parametrize("none", [0, -1, "-1", "0", []])
def test_no_gpu_forms(none, gpus, cpus):
    cpus(4)
    with gpus(2):
        # a GPU-capable runnable given no GPU runs on the CPU
        assert devices(TorchLike, {"cpu": 2, GPU: none}) == ["-1"]
        # with no CPU either, nothing can run it (BentoML: ValueError)
        with pytest.raises(ValueError, match="no usable resource"):
            count(GPURunnable, {GPU: none})


def test_cpu_forms(cpus):
    cpus(4)
    assert count(SingleThreadRunnable, {"cpu": 2}) == 2
    assert count(SingleThreadRunnable, {"cpu": 2.0}) == 2
    assert count(SingleThreadRunnable, {"cpu": "2"}) == 2
    assert count(SingleThreadRunnable, {"cpu": "500m"}) == 1
    assert count(SingleThreadRunnable, {"cpu": "1500m"}) == 2
    assert count(SingleThreadRunnable, {"cpu": 0.5}) == 1
    assert count(SingleThreadRunnable, {"cpu": 2}, 2) == 4
    assert count(SingleThreadRunnable, {"cpu": "system"}) == 4
    assert count(SingleThreadRunnable, "system") == 4
    assert count(SingleThreadRunnable, None) == 4
    assert count(MultiThreadRunnable, {"cpu": 4}) == 1
    assert count(MultiThreadRunnable, {"cpu": 4}, 2) == 2


def test_bentoml_num_thread(cpus):
    cpus(4)
    e = env(SingleThreadRunnable, {"cpu": 4}, 1, 0)
    assert e["CUDA_VISIBLE_DEVICES"] == "-1" and e["BENTOML_NUM_THREAD"] == "1"
    assert env(SingleThreadRunnable, {"cpu": 4}, 1, 1)["BENTOML_NUM_THREAD"] == "1"
    assert env(MultiThreadRunnable, {"cpu": 4}, 1, 0)["BENTOML_NUM_THREAD"] == "4"
    assert env(MultiThreadRunnable, {"cpu": 3.5}, 1, 1)["BENTOML_NUM_THREAD"] == "4"
    assert env(MultiThreadRunnable, {"cpu": "500m"}, 1, 0)["OMP_NUM_THREADS"] == "1"


def test_a_key_left_out_is_not_requested(gpus, cpus):
    # BentoML: resources {cpu: 2} for a GPU-capable runnable schedules CPU workers only
    cpus(4)
    with gpus(2):
        assert devices(TorchLike, {"cpu": 2}) == ["-1"]
        assert devices(TorchLike, {GPU: 1}) == ["0"]


def test_other_resource_keys_are_left_to_custom_strategies(cpus):
    cpus(4)
    assert count(SingleThreadRunnable, {"cpu": 2, "custom_resources": {"tpu": 1}}) == 2


# ------------------------------------------------------------------------------ validation


def test_cpu_above_the_host_is_rejected(cpus):
    cpus(2)
    with pytest.raises(ConfigError, match="64 CPUs requested but this host has 2"):
        count(SingleThreadRunnable, {"cpu": 64})
    with pytest.raises(ConfigError, match="CPUs requested"):
        env(MultiThreadRunnable, {"cpu": "3000m"}, 1, 0)
    assert count(SingleThreadRunnable, {"cpu": 2}) == 2


def test_cpu_above_the_host_through_a_runner(cpus):
    cpus(2)
    runner = bentoml.Runner(SingleThreadRunnable, name="greedy", cpu=64)
    with pytest.raises(ConfigError, match="runners.greedy.cpu: 64 CPUs requested"):
        _ = runner.scheduled_worker_count
    cfg = parse_config({"runners": {"greedy": {"resources": {"cpu": 64}}}})
    with pytest.raises(ConfigError, match="64 CPUs requested"):
        bentoml.Runner(SingleThreadRunnable, name="greedy").settings(cfg)


@pytest.mark.parametrize("bad", [-2, "-2", [-1], ["x"], "many", [0, 0]])
def test_bad_gpu_values(bad, gpus):
    with gpus(2), pytest.raises(ConfigError):
        count(GPURunnable, {GPU: bad})


def test_gpus_the_host_lacks_are_rejected(gpus):
    with gpus(2):
        with pytest.raises(ConfigError, match="3 GPU"):
            count(GPURunnable, {GPU: 3})
        with pytest.raises(ConfigError, match=r"\[7\]"):
            count(GPURunnable, {GPU: [0, 7]})
    with pytest.raises(ConfigError, match="no GPUs found"):
        count(GPURunnable, {GPU: 1})


def test_cuda_visible_devices_of_the_parent_restricts(gpus, monkeypatch):
    # a difference on purpose: BentoML ignores CUDA_VISIBLE_DEVICES, runnerlib honours it
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    with gpus(4):
        assert devices(GPURunnable, {GPU: 2}) == ["2", "3"]
        assert devices(GPURunnable, None) == ["2", "3"]
        with pytest.raises(ConfigError):
            count(GPURunnable, {GPU: [0]})


def test_real_pynvml_path():
    # no fake: whatever NVML says (none on a GPU-less host, never an exception)
    previous = bentoml.resources.set_nvml(bentoml.resources._PYNVML)
    try:
        host = system_resources()
        assert isinstance(host[GPU], list)
        assert count(SingleThreadRunnable, {"cpu": 1}) == 1
    finally:
        bentoml.resources.set_nvml(previous)


# ----------------------------------------------------------------------------- get_resource


def test_get_resource_reads_like_bentoml(gpus, cpus):
    cpus(4)
    with gpus(3):
        assert get_resource({"cpu": "500m"}, "cpu") == 0.5
        assert get_resource({"cpu": 2}, "cpu") == 2.0
        assert get_resource({"cpu": "system"}, "cpu") == 4.0
        assert get_resource({GPU: 2}, GPU) == [0, 1]
        assert get_resource({GPU: ["1", "2"]}, GPU) == [1, 2]
        assert get_resource({GPU: -1}, GPU) == []
        assert get_resource({GPU: "system"}, GPU) == [0, 1, 2]
        assert get_resource({"cpu": 1}, GPU) is None
        assert get_resource({GPU: [5, 7]}, GPU, validate=False) == [5, 7]
        assert get_resource({"cpu": 16}, "cpu", validate=False) == 16.0
        with pytest.raises(ConfigError, match="unknown resource kind"):
            get_resource({"mem": 1}, "mem")


# ---------------------------------------------------------------- what a strategy receives


class Recorder(bentoml.Strategy):
    seen: list = []

    @classmethod
    def get_worker_count(cls, runnable_class, resource_request, workers_per_resource):
        cls.seen.append(resource_request)
        return 1

    @classmethod
    def get_worker_env(cls, runnable_class, resource_request, workers_per_resource,
                       worker_index):
        cls.seen.append(resource_request)
        if resource_request is not None:
            resource_request["tampered"] = True  # a strategy cannot change the runner's
        return {}


def received(runner, config=None):
    """The request the runner's strategy was given (the same, and a fresh copy, each call)."""
    Recorder.seen = []
    runner.settings(parse_config(config or {}))
    count_request, env_request = Recorder.seen
    if count_request is not None:
        assert "tampered" not in count_request and env_request.pop("tampered")
    assert count_request == env_request
    return count_request


def test_custom_strategy_gets_none_when_nothing_is_asked():
    r = bentoml.Runner(SingleThreadRunnable, name="plain", scheduling_strategy=Recorder)
    assert received(r) is None


def test_custom_strategy_gets_the_bentoml_resources_block_as_written(gpus, cpus):
    cpus(8)
    r = bentoml.Runner(TorchLike, name="clf", scheduling_strategy=Recorder)
    with gpus(2):
        got = received(r, {"runners": {"clf": {"resources": {"cpu": "500m", GPU: ["1"]}}}})
        assert got == {"cpu": "500m", GPU: ["1"]}
        # BentoML merges the runners-wide block into the runner's, key by key
        got = received(r, {"runners": {"resources": {"cpu": 4, GPU: 2},
                                       "clf": {"resources": {GPU: 1}}}})
        assert got == {"cpu": 4, GPU: 1}
        assert received(r, {"runners": {"clf": {"resources": "system"}}}) is None


def test_custom_strategy_gets_runner_arguments_in_bentoml_keys(cpus):
    cpus(8)
    r = bentoml.Runner(TorchLike, name="clf", cpu="2", nvidia_gpu=0,
                       scheduling_strategy=Recorder)
    assert received(r) == {"cpu": "2", GPU: 0}
    # runnerlib's own cpu=/nvidia_gpu=: an unset one is "system" (what the host has)
    r = bentoml.Runner(TorchLike, name="clf", cpu=2, scheduling_strategy=Recorder)
    assert received(r) == {"cpu": 2, GPU: "system"}


def test_precedence_of_request_layers(cpus):
    cpus(8)
    cfg = {"runner_defaults": {"cpu": 1},
           "runners": {"clf": {"resources": {"cpu": 2}}}}
    r = bentoml.Runner(TorchLike, name="clf", scheduling_strategy=Recorder)
    assert received(r, cfg) == {"cpu": 2}  # the runner's entry beats runner_defaults
    r = bentoml.Runner(TorchLike, name="clf", cpu=3, scheduling_strategy=Recorder)
    assert received(r, cfg) == {"cpu": 3}  # code beats the file


def test_runner_settings_follow_the_bentoml_block(gpus, cpus):
    cpus(8)
    with gpus(2):
        s = bentoml.Runner(TorchLike, name="clf").settings(
            parse_config({"runners": {"clf": {"resources": {"cpu": 4}}}}))
        assert s.cpu == 4.0 and s.nvidia_gpu == [] and s.worker_count == 1
        assert s.worker_env[0]["CUDA_VISIBLE_DEVICES"] == "-1"
        s = bentoml.Runner(TorchLike, name="clf").settings(
            parse_config({"runners": {"clf": {"resources": {GPU: [1]}}}}))
        assert s.nvidia_gpu == [1] and s.worker_env == {0: {"CUDA_VISIBLE_DEVICES": "1"}}
        # runnerlib's own keys: an unset GPU request is what the host has
        s = bentoml.Runner(TorchLike, name="clf", cpu=2).settings(parse_config({}))
        assert s.nvidia_gpu == [0, 1] and s.worker_count == 2


# --------------------------------------------------------------- environment independence


def test_worker_env_does_not_depend_on_the_parent_or_the_order(cpus, monkeypatch):
    cpus(4)
    a = bentoml.Runner(SingleThreadRunnable, name="a", cpu=2)
    b = bentoml.Runner(MultiThreadRunnable, name="b", cpu=3)
    first = (a.scheduled_worker_env_map, b.scheduled_worker_env_map)
    for var in ("OMP_NUM_THREADS", "BENTOML_NUM_THREAD", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, "13")
    again = (b.scheduled_worker_env_map, a.scheduled_worker_env_map)
    assert first == again[::-1]
    assert all(v == "1" for e in first[0].values() for k, v in e.items()
               if k != "CUDA_VISIBLE_DEVICES")
    assert first[1][0]["BENTOML_NUM_THREAD"] == "3"

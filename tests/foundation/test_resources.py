"""Host resources: CPUs from affinity and cgroup quota, GPUs from (a fake) NVML."""

from __future__ import annotations

import os
import sys

import pytest

from runnerlib import ConfigError, resources
from runnerlib.resources import (
    FakeNvml,
    available_cpus,
    cgroup_cpu_limit,
    parse_cpu,
    parse_nvidia_gpu,
    resolve_resource_request,
    set_nvml,
    system_cpu_count,
    system_resources,
    use_nvml,
    visible_gpu_ids,
)


def test_available_cpus_is_the_affinity_list():
    assert available_cpus() == sorted(os.sched_getaffinity(0))


# ---------------------------------------------------------------------------------- cgroup


@pytest.mark.parametrize(
    "content, expected",
    [("200000 100000\n", 2.0), ("50000 100000", 0.5), ("max 100000\n", None), ("150000", 1.5),
     ("garbage here", None), ("", None)],
)
def test_cgroup_v2(tmp_path, content, expected):
    (tmp_path / "cpu.max").write_text(content)
    assert cgroup_cpu_limit(tmp_path) == expected


@pytest.mark.parametrize("sub", ["cpu", "cpu,cpuacct"])
def test_cgroup_v1(tmp_path, sub):
    d = tmp_path / sub
    d.mkdir()
    (d / "cpu.cfs_quota_us").write_text("300000\n")
    (d / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path) == 3.0
    (d / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_cgroup_v1_shares_ignored(tmp_path):
    d = tmp_path / "cpu"
    d.mkdir()
    (d / "cpu.shares").write_text("1024\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_no_cgroup_files(tmp_path):
    assert cgroup_cpu_limit(tmp_path) is None
    assert system_cpu_count(tmp_path) == len(available_cpus())


def test_quota_caps_cpu_count(tmp_path, monkeypatch):
    monkeypatch.setattr(resources, "available_cpus", lambda: list(range(16)))
    (tmp_path / "cpu.max").write_text("150000 100000")
    assert system_cpu_count(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("3200000 100000")
    assert system_cpu_count(tmp_path) == 16
    monkeypatch.setattr(resources, "CGROUP_ROOT", str(tmp_path))
    (tmp_path / "cpu.max").write_text("200000 100000")
    assert system_resources()["cpu"] == 2.0


# ---------------------------------------------------------------------------- parse values


@pytest.mark.parametrize(
    "value, expected",
    [(None, None), ("system", None), (4, 4.0), (0.5, 0.5), ("500m", 0.5), ("2", 2.0),
     ("2500m", 2.5), (" 1 ", 1.0)],
)
def test_parse_cpu(value, expected):
    assert parse_cpu(value) == expected


@pytest.mark.parametrize("value", [0, -1, "0m", "abc", "m", True, [1], float("inf")])
def test_parse_cpu_errors(value):
    with pytest.raises(ConfigError, match="cpu"):
        parse_cpu(value)


@pytest.mark.parametrize(
    "value, expected",
    [(None, None), ("system", None), (0, 0), (2, 2), ("3", 3), (2.0, 2), ([1, 0], [1, 0]),
     ((3,), [3])],
)
def test_parse_nvidia_gpu(value, expected):
    assert parse_nvidia_gpu(value) == expected
    assert parse_nvidia_gpu(value, bentoml=True) == expected


@pytest.mark.parametrize(
    "value, expected",
    # BentoML's forms: -1 means none, ids may be strings
    [(-1, 0), ("-1", 0), (["0", "2"], [0, 2]), ([1, "3"], [1, 3]), ([2.0], [2])],
)
def test_parse_nvidia_gpu_bentoml_forms(value, expected):
    assert parse_nvidia_gpu(value, bentoml=True) == expected
    with pytest.raises(ConfigError, match="nvidia_gpu"):
        parse_nvidia_gpu(value)  # runnerlib's own Runner(nvidia_gpu=...) takes counts and ids


def test_minus_one_error_says_what_to_write():
    with pytest.raises(ConfigError, match="write 0 for no GPU"):
        parse_nvidia_gpu(-1)


@pytest.mark.parametrize(
    "value", [-2, True, "many", [0, 0], [0, "0"], [-1], ["-1"], ["x"], [True], 1.5, {"a": 1}]
)
def test_parse_nvidia_gpu_errors(value):
    with pytest.raises(ConfigError, match="nvidia_gpu"):
        parse_nvidia_gpu(value, bentoml=True)


# ------------------------------------------------------------------------------------ NVML


def test_fake_nvml_counts():
    with use_nvml(FakeNvml(4)) as fake:
        assert visible_gpu_ids() == [0, 1, 2, 3]
        assert system_resources()["nvidia.com/gpu"] == [0, 1, 2, 3]
        assert fake.initialised == 0  # every nvmlInit was paired with nvmlShutdown


@pytest.mark.parametrize(
    "cvd, expected",
    [("2,3", [2, 3]), ("3, 1", [3, 1]), ("", []), ("-1", []), ("1,7,2", [1]), ("0,0", [0]),
     ("GPU-00000002", [2]), ("GPU-0000000", []), ("MIG-abc", [])],
)
def test_cuda_visible_devices_restricts(cvd, expected):
    with use_nvml(FakeNvml(4)):
        assert visible_gpu_ids({"CUDA_VISIBLE_DEVICES": cvd}) == expected


def test_cuda_visible_devices_from_environment(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    with use_nvml(FakeNvml(2)):
        assert visible_gpu_ids() == [1]


def test_nvml_init_failure_means_no_gpus():
    with use_nvml(FakeNvml(4, fail_init=True)):
        assert visible_gpu_ids() == []


def test_no_nvml_library_means_no_gpus():
    with use_nvml(None):
        assert visible_gpu_ids() == []


def test_pynvml_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    previous = set_nvml(resources._PYNVML)
    try:
        assert visible_gpu_ids() == []
    finally:
        set_nvml(previous)


def test_real_pynvml_path_never_raises():
    previous = set_nvml(resources._PYNVML)
    try:
        ids = visible_gpu_ids()
    finally:
        set_nvml(previous)
    assert isinstance(ids, list) and all(isinstance(i, int) for i in ids)


def test_nvml_failing_midway():
    class Broken(FakeNvml):
        def nvmlDeviceGetCount(self):
            raise self.NVMLError("boom")

    with use_nvml(Broken(2)):
        assert visible_gpu_ids() == []


def test_bytes_uuid():
    class Old(FakeNvml):
        def nvmlDeviceGetUUID(self, handle):
            return super().nvmlDeviceGetUUID(handle).encode()

    with use_nvml(Old(2)):
        assert visible_gpu_ids({"CUDA_VISIBLE_DEVICES": "GPU-00000001"}) == [1]


# -------------------------------------------------------------------------------- requests


def test_resolve_request(monkeypatch):
    monkeypatch.setattr(resources, "system_cpu_count", lambda cgroup_root=None: 8.0)
    with use_nvml(FakeNvml(4)):
        assert resolve_resource_request() == {"cpu": 8.0, "nvidia.com/gpu": [0, 1, 2, 3]}
        assert resolve_resource_request("500m", 2) == {"cpu": 0.5, "nvidia.com/gpu": [0, 1]}
        assert resolve_resource_request(2, 0)["nvidia.com/gpu"] == []
        assert resolve_resource_request(2, [3])["nvidia.com/gpu"] == [3]
        with pytest.raises(ConfigError, match="5 GPU"):
            resolve_resource_request(None, 5)
        with pytest.raises(ConfigError, match=r"\[4\]"):
            resolve_resource_request(None, [1, 4])
    with pytest.raises(ConfigError, match="no GPUs found"):
        resolve_resource_request(None, 1)


def test_resolve_request_rejects_more_cpus_than_the_host(monkeypatch):
    monkeypatch.setattr(resources, "system_cpu_count", lambda cgroup_root=None: 2.0)
    assert resolve_resource_request(2)["cpu"] == 2.0
    assert resolve_resource_request("2000m")["cpu"] == 2.0
    with pytest.raises(ConfigError, match=r"runner\.cpu: 64 CPUs requested but this host has 2"):
        resolve_resource_request(64)
    with pytest.raises(ConfigError, match="2.5 CPUs"):
        resolve_resource_request(2.5)


def test_resolve_whole_request(monkeypatch):
    monkeypatch.setattr(resources, "system_cpu_count", lambda cgroup_root=None: 4.0)
    with use_nvml(FakeNvml(2)):
        # a mapping is read as BentoML reads it: a resource it leaves out is not requested
        assert resolve_resource_request({"cpu": 2}) == {"cpu": 2.0, "nvidia.com/gpu": []}
        assert resolve_resource_request({"nvidia.com/gpu": 1}) == {
            "cpu": 4.0, "nvidia.com/gpu": [0]}
        assert resolve_resource_request({"cpu": "system", "nvidia.com/gpu": "system"}) == {
            "cpu": 4.0, "nvidia.com/gpu": [0, 1]}
        with pytest.raises(TypeError):
            resolve_resource_request({"cpu": 2}, 1)



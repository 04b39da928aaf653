"""What the host offers (CPUs, NVIDIA GPUs) and how a runner's resource request is read.

CPUs come from the process's affinity mask capped by the cgroup v2/v1 CPU quota, so a
container limited to 2 CPUs on a 64-core host schedules 2 workers, not 64. GPUs come from NVML
through a replaceable module-level seam (``set_nvml`` / ``use_nvml``), so every GPU path can be
tested on a machine without a GPU. A ``CUDA_VISIBLE_DEVICES`` already set in the parent
restricts the GPUs a runner may use (BentoML ignores it).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from runnerlib.errors import ConfigError

__all__ = [
    "CGROUP_ROOT",
    "GPU",
    "FakeNvml",
    "available_cpus",
    "cgroup_cpu_limit",
    "system_cpu_count",
    "parse_cpu",
    "parse_nvidia_gpu",
    "set_nvml",
    "use_nvml",
    "nvml_gpus",
    "visible_gpu_ids",
    "system_resources",
    "resolve_resource_request",
    "resource_request",
    "split_cpus",
]

logger = logging.getLogger("runnerlib")

GPU = "nvidia.com/gpu"
CGROUP_ROOT = "/sys/fs/cgroup"
"""Where cgroup files are read; functions take a ``cgroup_root`` argument to point elsewhere."""


# --------------------------------------------------------------------------------------- CPUs


def available_cpus() -> list[int]:
    """The CPU ids this process may run on (its affinity mask), sorted; used for pinning."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return list(range(os.cpu_count() or 1))


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def cgroup_cpu_limit(cgroup_root: str | os.PathLike[str] | None = None) -> float | None:
    """The CPU quota (in CPUs, may be fractional) from cgroup v2 ``cpu.max`` or v1
    ``cpu.cfs_quota_us / cpu.cfs_period_us``; ``None`` when there is no quota.

    ``cpu.shares`` is deliberately ignored: it is a relative weight, not a limit (its default of
    1024 would read as "1 CPU").
    """
    root = Path(cgroup_root if cgroup_root is not None else CGROUP_ROOT)
    cpu_max = root / "cpu.max"
    try:
        fields = cpu_max.read_text().split()
    except OSError:
        fields = []
    if fields:
        if len(fields) >= 1 and fields[0] == "max":
            return None
        try:
            quota = int(fields[0])
            period = int(fields[1]) if len(fields) > 1 else 100_000
        except ValueError:
            return None
        return quota / period if quota > 0 and period > 0 else None
    for sub in ("cpu", "cpu,cpuacct", "cpuacct,cpu", "."):
        quota_v1 = _read_int(root / sub / "cpu.cfs_quota_us")
        period_v1 = _read_int(root / sub / "cpu.cfs_period_us")
        if quota_v1 is None or period_v1 is None:
            continue
        if quota_v1 <= 0 or period_v1 <= 0:  # -1 means unlimited
            return None
        return quota_v1 / period_v1
    return None


def system_cpu_count(cgroup_root: str | os.PathLike[str] | None = None) -> float:
    """CPUs this process can use: the affinity count, capped by the cgroup quota."""
    count = float(len(available_cpus()))
    limit = cgroup_cpu_limit(cgroup_root)
    if limit is not None:
        count = min(count, limit)
    return count


def parse_cpu(value: Any, key: str = "cpu") -> float | None:
    """A CPU request: a positive number, ``"500m"`` (millicores), or ``"system"``/``None``
    (what the host has, returned as ``None``)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a number, '<n>m' or 'system', got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if text == "system":
            return None
        try:
            number = float(text[:-1]) / 1000.0 if text.endswith("m") else float(text)
        except ValueError:
            raise ConfigError(
                f"{key}: expected a number, '<n>m' or 'system', got {value!r}"
            ) from None
    elif isinstance(value, (int, float)):
        number = float(value)
    else:
        raise ConfigError(f"{key}: expected a number, '<n>m' or 'system', got {value!r}")
    if not math.isfinite(number) or number <= 0:
        raise ConfigError(f"{key}: must be greater than 0, got {value!r}")
    return number


def parse_nvidia_gpu(value: Any, key: str = "nvidia_gpu") -> int | list[int] | None:
    """A GPU request: a count, a list of GPU ids, or ``"system"``/``None`` (returned as None)."""
    if value is None or value == "system":
        return None
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a count, a list of GPU ids or 'system', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{key}: must be >= 0, got {value}")
        return value
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    if isinstance(value, str):
        try:
            return parse_nvidia_gpu(int(value), key)
        except ValueError:
            pass
    if isinstance(value, (list, tuple)):
        ids: list[int] = []
        for i, v in enumerate(value):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"{key}[{i}]: expected a GPU id (int >= 0), got {v!r}")
            if v in ids:
                raise ConfigError(f"{key}[{i}]: GPU {v} is listed twice")
            ids.append(v)
        return ids
    raise ConfigError(f"{key}: expected a count, a list of GPU ids or 'system', got {value!r}")


def split_cpus(cpus: Sequence[int], n: int) -> list[list[int]]:
    """Cut ``cpus`` into ``n`` CPU sets for pinning: disjoint and as even as possible when there
    are at least ``n`` CPUs, else one CPU each, reused round-robin."""
    if n <= 0:
        return []
    cpus = list(cpus)
    if not cpus:
        return [[] for _ in range(n)]
    if len(cpus) < n:
        return [[cpus[i % len(cpus)]] for i in range(n)]
    base, extra = divmod(len(cpus), n)
    out: list[list[int]] = []
    start = 0
    for i in range(n):
        size = base + (1 if i < extra else 0)
        out.append(cpus[start : start + size])
        start += size
    return out


# --------------------------------------------------------------------------------------- GPUs


class _Pynvml:
    """Marker for "import pynvml on first use" (the default seam value)."""


_PYNVML = _Pynvml()
_nvml: Any = _PYNVML


def set_nvml(nvml: Any) -> Any:
    """Replace the NVML module used to find GPUs; returns the previous one.

    ``nvml`` needs ``nvmlInit``, ``nvmlShutdown``, ``nvmlDeviceGetCount``,
    ``nvmlDeviceGetHandleByIndex`` and ``nvmlDeviceGetUUID`` (see ``FakeNvml``); ``None`` means
    no NVML library (no GPUs).
    """
    global _nvml
    previous = _nvml
    _nvml = nvml
    return previous


@contextlib.contextmanager
def use_nvml(nvml: Any) -> Iterator[Any]:
    """``set_nvml`` for the duration of a ``with`` block."""
    previous = set_nvml(nvml)
    try:
        yield nvml
    finally:
        set_nvml(previous)


def _load_nvml() -> Any:
    if not isinstance(_nvml, _Pynvml):
        return _nvml
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pynvml's own deprecation notice
            import pynvml
    except Exception:
        return None
    return pynvml


def nvml_gpus() -> list[tuple[int, str]]:
    """``(index, uuid)`` of every GPU NVML sees; empty when NVML is missing or fails."""
    nvml = _load_nvml()
    if nvml is None:
        return []
    try:
        nvml.nvmlInit()
    except Exception as exc:
        logger.debug("NVML unavailable (%s): no GPUs", exc)
        return []
    try:
        out: list[tuple[int, str]] = []
        for i in range(int(nvml.nvmlDeviceGetCount())):
            uuid: Any = ""
            try:
                uuid = nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i))
            except Exception:
                pass
            if isinstance(uuid, bytes):
                uuid = uuid.decode("ascii", "replace")
            out.append((i, str(uuid)))
        return out
    except Exception as exc:
        logger.warning("NVML failed while listing GPUs (%s): assuming none", exc)
        return []
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def visible_gpu_ids(environ: Mapping[str, str] | None = None) -> list[int]:
    """NVML GPU indices this process may use: all of them, or those named by
    ``CUDA_VISIBLE_DEVICES`` (indices or ``GPU-<uuid>`` prefixes; as CUDA does, the list stops
    at the first entry that names no device; ``""`` or ``-1`` means none)."""
    env = os.environ if environ is None else environ
    gpus = nvml_gpus()
    spec = env.get("CUDA_VISIBLE_DEVICES")
    if spec is None:
        return [i for i, _ in gpus]
    by_index = {i for i, _ in gpus}
    out: list[int] = []
    for raw in spec.split(","):
        entry = raw.strip()
        match: int | None = None
        if entry.lstrip("-").isdigit():
            n = int(entry)
            match = n if n in by_index else None
        elif entry.startswith("GPU-"):
            hits = [i for i, u in gpus if u.startswith(entry)]
            match = hits[0] if len(hits) == 1 else None
        if match is None:
            break
        if match not in out:
            out.append(match)
    return out


def system_resources() -> dict[str, Any]:
    """What the host offers this process: ``{"cpu": float, "nvidia.com/gpu": [ids]}``."""
    return {"cpu": system_cpu_count(), GPU: visible_gpu_ids()}


def resolve_resource_request(
    cpu: Any = None, nvidia_gpu: Any = None, *, owner: str = "runner"
) -> dict[str, Any]:
    """Turn a runner's ``cpu``/``nvidia_gpu`` into the request a Strategy reads:
    ``{"cpu": float, "nvidia.com/gpu": [GPU ids]}``.

    An unset key means what the host has. An explicit GPU request the host cannot meet (more
    GPUs than visible, or an id that is not visible) is a ``ConfigError``.
    """
    cpus = parse_cpu(cpu, f"{owner}.cpu")
    gpus = parse_nvidia_gpu(nvidia_gpu, f"{owner}.nvidia_gpu")
    request: dict[str, Any] = {"cpu": cpus if cpus is not None else system_cpu_count()}
    if gpus is None:
        request[GPU] = visible_gpu_ids()
    elif isinstance(gpus, int):
        if gpus == 0:
            request[GPU] = []
        else:
            visible = visible_gpu_ids()
            if gpus > len(visible):
                raise ConfigError(
                    f"{owner}.nvidia_gpu: {gpus} GPU(s) requested but this host has "
                    f"{len(visible)} usable ({_describe(visible)})"
                )
            request[GPU] = visible[:gpus]
    else:
        visible = visible_gpu_ids()
        missing = [g for g in gpus if g not in visible]
        if missing:
            raise ConfigError(
                f"{owner}.nvidia_gpu: GPU id(s) {missing} requested but not usable on this host "
                f"({_describe(visible)})"
            )
        request[GPU] = list(gpus)
    return request


resource_request = resolve_resource_request
"""Alias of ``resolve_resource_request``."""


def _describe(visible: list[int]) -> str:
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = f"ids {visible}" if visible else "no GPUs found"
    return f"{ids}; CUDA_VISIBLE_DEVICES={cvd!r}" if cvd is not None else ids


# ------------------------------------------------------------------------------ test double


class FakeNvml:
    """A stand-in for pynvml with ``count`` GPUs (for tests and GPU-less development).

    ``fail_init=True`` behaves like a host whose NVML library is missing.
    """

    class NVMLError(Exception):
        pass

    def __init__(
        self, count: int = 0, *, uuids: Sequence[str] | None = None, fail_init: bool = False
    ) -> None:
        self.count = count
        self.uuids = list(uuids) if uuids is not None else [
            f"GPU-{i:08x}-0000-0000-0000-000000000000" for i in range(count)
        ]
        self.fail_init = fail_init
        self.initialised = 0

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise self.NVMLError("NVML Shared Library Not Found")
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.initialised -= 1

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if not 0 <= index < self.count:
            raise self.NVMLError(f"invalid index {index}")
        return index

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return self.uuids[handle]

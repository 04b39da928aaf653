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
    "RESOURCE_KINDS",
    "check_cpu",
    "resolve_gpus",
    "get_resource",
    "normalize_request",
    "requested_resources",
    "resolve_resource_request",
    "resource_request",
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


def _gpu_id(value: Any, key: str, bentoml: bool) -> int:
    """One GPU id of a list: an int >= 0 (with ``bentoml``, also an integral float or a string
    of digits, as BentoML reads them)."""
    number: Any = value
    if bentoml and not isinstance(value, bool):
        if isinstance(value, str) and value.strip().isdigit():
            number = int(value.strip())
        elif isinstance(value, float) and value.is_integer():
            number = int(value)
    if isinstance(number, bool) or not isinstance(number, int) or number < 0:
        raise ConfigError(f"{key}: expected a GPU id (int >= 0), got {value!r}")
    return number


def parse_nvidia_gpu(
    value: Any, key: str = "nvidia_gpu", *, bentoml: bool = False
) -> int | list[int] | None:
    """A GPU request: a count, a list of GPU ids, or ``"system"``/``None`` (returned as None).

    With ``bentoml`` (where BentoML's forms are read: configuration files, the request a
    Strategy is given), values are read as BentoML reads them as well: ``-1`` (or ``"-1"``)
    means no GPU, like 0, and ids may be strings (``["0", "1"]``).
    """
    if value is None or value == "system":
        return None
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a count, a list of GPU ids or 'system', got {value!r}")
    if isinstance(value, int):
        if value == -1 and bentoml:
            return 0
        if value < 0:
            hint = " (or -1 for none)" if bentoml else "; write 0 for no GPU"
            raise ConfigError(f"{key}: must be >= 0{hint}, got {value}")
        return value
    if isinstance(value, float) and value.is_integer():
        return parse_nvidia_gpu(int(value), key, bentoml=bentoml)
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            return parse_nvidia_gpu(int(text), key, bentoml=bentoml)
    if isinstance(value, (list, tuple)):
        ids: list[int] = []
        for i, v in enumerate(value):
            gpu = _gpu_id(v, f"{key}[{i}]", bentoml)
            if gpu in ids:
                raise ConfigError(f"{key}[{i}]: GPU {gpu} is listed twice")
            ids.append(gpu)
        return ids
    raise ConfigError(f"{key}: expected a count, a list of GPU ids or 'system', got {value!r}")


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


RESOURCE_KINDS: tuple[str, ...] = ("cpu", GPU)
"""The resource kinds ``DefaultStrategy`` schedules (BentoML's built-in ones)."""


def system_resources() -> dict[str, Any]:
    """What the host offers this process: ``{"cpu": float, "nvidia.com/gpu": [ids]}``."""
    return {"cpu": system_cpu_count(), GPU: visible_gpu_ids()}


def check_cpu(cpus: float, key: str = "cpu") -> float:
    """``cpus`` if the host has that many, else ``ConfigError`` (BentoML rejects a CPU request
    above what the system has, too)."""
    host = system_cpu_count()
    if cpus > host and not math.isclose(cpus, host):
        raise ConfigError(
            f"{key}: {cpus:g} CPUs requested but this host has {host:g} usable (CPU affinity and "
            f"cgroup quota); ask for at most {host:g}, or leave it unset (or 'system') to use "
            "what the host has"
        )
    return cpus


def resolve_gpus(gpus: int | list[int] | None, key: str = "nvidia_gpu") -> list[int]:
    """The GPU ids of a parsed GPU request (``parse_nvidia_gpu``): ``None`` is every usable
    GPU, a count the first that many, a list those ids. A request the host cannot meet (more
    GPUs than usable, an id that is not usable) is a ``ConfigError``."""
    if gpus is None:
        return visible_gpu_ids()
    if isinstance(gpus, int):
        if gpus == 0:
            return []
        visible = visible_gpu_ids()
        if gpus > len(visible):
            raise ConfigError(
                f"{key}: {gpus} GPU(s) requested but this host has {len(visible)} usable "
                f"({_describe(visible)})"
            )
        return visible[:gpus]
    visible = visible_gpu_ids()
    missing = [g for g in gpus if g not in visible]
    if missing:
        raise ConfigError(
            f"{key}: GPU id(s) {missing} requested but not usable on this host "
            f"({_describe(visible)})"
        )
    return list(gpus)


def _label(owner: str | None, kind: str) -> str:
    name = "nvidia_gpu" if kind == GPU else kind
    return f"{owner}.{name}" if owner else name


def get_resource(
    request: Mapping[str, Any] | None, kind: str, validate: bool = True, *,
    owner: str | None = None,
) -> Any:
    """The value of one resource kind in a resource request, as BentoML's ``get_resource``
    returns it: ``None`` when the request does not name ``kind``; for ``"cpu"`` a float, for
    ``"nvidia.com/gpu"`` a list of GPU ids.

    Every form BentoML accepts is read: ``"system"`` (what the host has), CPUs as a number or
    ``"500m"``, GPUs as a count, a list of ids, either as strings, ``-1`` for none. With
    ``validate`` (the default), a request the host cannot meet is a ``ConfigError``: more CPUs
    than it has, more GPUs than are usable, an id that is not usable. A custom ``Strategy``
    can call this to read the request it is given.
    """
    if kind not in RESOURCE_KINDS:
        raise ConfigError(
            f"unknown resource kind {kind!r}: DefaultStrategy schedules "
            f"{', '.join(map(repr, RESOURCE_KINDS))}; use a custom Strategy for others"
        )
    if request is None or kind not in request:
        return None
    value = request[kind]
    label = _label(owner, kind)
    if kind == "cpu":
        cpus = parse_cpu(value, label)
        if cpus is None:
            return system_cpu_count()
        return check_cpu(cpus, label) if validate else cpus
    gpus = parse_nvidia_gpu(value, label, bentoml=True)
    if validate or gpus is None:
        return resolve_gpus(gpus, label)
    return list(range(gpus)) if isinstance(gpus, int) else gpus


def normalize_request(request: Any, *, owner: str | None = None) -> dict[str, Any]:
    """A resource request in any accepted form, read: ``{"cpu": float | None,
    "nvidia.com/gpu": [ids] | None}`` (``None``: not requested).

    ``None`` or ``"system"`` means everything the host has. A mapping is read key by key as
    ``get_resource`` does (validated against the host), so a key it leaves out is not
    requested, as in BentoML; keys other than ``cpu`` and ``nvidia.com/gpu`` are left for
    custom strategies.
    """
    if request is None or request == "system":
        return system_resources()
    if not isinstance(request, Mapping):
        raise ConfigError(
            f"{owner or 'resource request'}: expected a mapping such as "
            f"{{'cpu': 2, 'nvidia.com/gpu': 1}}, 'system' or None, got {request!r}"
        )
    return {kind: get_resource(request, kind, owner=owner) for kind in RESOURCE_KINDS}


def requested_resources(request: Any, *, owner: str | None = None) -> dict[str, Any]:
    """``normalize_request`` with what is not requested filled in: CPUs the host's count,
    GPUs none. This is what a runner is given (``RunnerSettings.cpu``/``nvidia_gpu``)."""
    read = normalize_request(request, owner=owner)
    return {
        "cpu": read["cpu"] if read["cpu"] is not None else system_cpu_count(),
        GPU: list(read[GPU] or []),
    }


def resolve_resource_request(
    cpu: Any = None, nvidia_gpu: Any = None, *, owner: str = "runner"
) -> dict[str, Any]:
    """Turn a runner's ``cpu``/``nvidia_gpu`` into ``{"cpu": float, "nvidia.com/gpu": [ids]}``.

    An unset key means what the host has. A request the host cannot meet (more CPUs than it
    has, more GPUs than visible, an id that is not visible) is a ``ConfigError``.

    ``cpu`` may instead be a whole resource request, a mapping as a Strategy receives it
    (``{"cpu": "500m", "nvidia.com/gpu": 1}``): read as ``requested_resources`` reads it.
    """
    if isinstance(cpu, Mapping):
        if nvidia_gpu is not None:
            raise TypeError("pass either a resource request mapping or cpu/nvidia_gpu values")
        return requested_resources(cpu, owner=owner)
    return requested_resources(
        {"cpu": "system" if cpu is None else cpu,
         GPU: "system" if nvidia_gpu is None else nvidia_gpu},
        owner=owner,
    )


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

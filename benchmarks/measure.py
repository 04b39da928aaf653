"""Shared helpers: payloads, percentiles, machine facts and /proc process accounting.

Kept free of runnerlib imports so the floors and baselines run before (and without) the core.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
import time
from collections.abc import Iterable

import numpy as np

#: payload name -> shape of the float32 array sent in the sequential scenarios
PAYLOADS: dict[str, tuple[int, ...]] = {
    "f32_1x16": (1, 16),
    "f32_1x3x224x224": (1, 3, 224, 224),
    "f32_64MiB": (4096, 4096),
}
PAYLOAD_LABELS = {
    "f32_1x16": "float32[1,16]",
    "f32_1x3x224x224": "float32[1,3,224,224]",
    "f32_64MiB": "64 MiB float32",
}
MIB64 = 64 * 1024 * 1024


def make_payload(name: str) -> np.ndarray:
    """Random contents, never zero pages: untouched zero pages would make copies look free."""
    rng = np.random.default_rng(0)
    return rng.random(PAYLOADS[name], dtype=np.float32)


def summarize_ns(samples: Iterable[int] | np.ndarray) -> dict[str, float]:
    """p50/p99/mean/min/max in microseconds; medians are what the table quotes."""
    a = np.asarray(samples, dtype=np.float64)
    if a.size == 0:
        return {"n": 0}
    us = a / 1e3
    p50, p99 = np.percentile(us, [50, 99])
    return {
        "n": int(a.size),
        "p50_us": float(p50),
        "p99_us": float(p99),
        "mean_us": float(us.mean()),
        "min_us": float(us.min()),
        "max_us": float(us.max()),
    }


WARMUP_S = 0.2


def time_calls(
    fn, arg, n: int, warmup: int, cpus: list[int] | None = None, pause_s: float = 0.0
) -> np.ndarray:
    """Per-call wall time in ns of `fn(arg)`, after `warmup` untimed calls and at least
    WARMUP_S seconds of them (the kernel needs a few milliseconds to spread a new client and
    its worker over two CPUs; a run measured before that is mostly the same-CPU case). With
    `cpus`, the CPU this process runs on is appended to it every 64 calls (outside the timed
    region). With `pause_s`, the caller sleeps that long before every call (untimed): the
    first call after an idle pause, when both sides have stopped spinning."""
    until = time.monotonic() + WARMUP_S
    done = 0
    while done < warmup or time.monotonic() < until:
        if pause_s:
            time.sleep(pause_s)
        r = fn(arg)
        del r
        done += 1
    out = np.empty(n, dtype=np.int64)
    clock = time.perf_counter_ns
    every = 7 if pause_s else 63  # sample the CPU more often when calls are few and slow
    for i in range(n):
        if cpus is not None and not i & every:
            cpu = current_cpu()
            if cpu is not None:
                cpus.append(cpu)
        if pause_s:
            time.sleep(pause_s)
        t0 = clock()
        r = fn(arg)
        out[i] = clock() - t0
        del r  # drop result views before the next call so slots can be reused
    return out


async def time_async_calls(
    fn, arg, n: int, warmup: int, cpus: list[int] | None = None
) -> np.ndarray:
    """`time_calls` for a coroutine function: sequential awaits in the running event loop."""
    until = time.monotonic() + WARMUP_S
    done = 0
    while done < warmup or time.monotonic() < until:
        r = await fn(arg)
        del r
        done += 1
    out = np.empty(n, dtype=np.int64)
    clock = time.perf_counter_ns
    for i in range(n):
        if cpus is not None and not i & 63:
            cpu = current_cpu()
            if cpu is not None:
                cpus.append(cpu)
        t0 = clock()
        r = await fn(arg)
        out[i] = clock() - t0
        del r
    return out


def current_cpu() -> int | None:
    """The CPU this process last ran on (field 39 of /proc/<pid>/stat), or None."""
    f = _stat_fields(os.getpid())
    try:
        return int(f[36]) if f is not None else None  # _stat_fields starts at field 3
    except (ValueError, IndexError):
        return None


def machine_info() -> dict[str, object]:
    """What a reader needs to compare runs: CPU, cores, Python and library versions, date."""
    cpu_model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, object] = {
        "cpu_model": cpu_model,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    for mod in ("numpy", "pyarrow", "msgspec", "posix_ipc", "uvloop", "runnerlib"):
        info[mod] = _version_of(mod)
    return info


def _version_of(mod: str) -> str | None:
    try:
        m = __import__(mod)
    except Exception:  # noqa: BLE001 - a broken or absent module is just "no version"
        return None
    v = getattr(m, "__version__", None) or getattr(m, "VERSION", None)
    return str(v) if v is not None else "unknown"


# ---- /proc accounting (no runnerlib internals: workers are found as our descendants) ----


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    # the command name may hold spaces or parentheses: split after the last ')'
    return data[data.rindex(")") + 2 :].split()


def process_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, session id) for every visible process that has not exited. A zombie
    (state Z: it exited, and its parent, often init after a re-parenting, has not reaped it
    yet) runs nothing and holds nothing: Ray Serve's replicas end as such."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = _stat_fields(int(entry))
            if f is not None and f[0] not in ("Z", "X"):
                table[int(entry)] = (int(f[1]), int(f[3]))
    return table


def descendants(root: int | None = None) -> set[int]:
    """Every live process below `root` (default: this process), at any depth."""
    root = os.getpid() if root is None else root
    children: dict[int, list[int]] = {}
    for pid, (ppid, _sid) in process_table().items():
        children.setdefault(ppid, []).append(pid)
    out: set[int] = set()
    stack = [root]
    while stack:
        for c in children.get(stack.pop(), []):
            if c not in out:
                out.add(c)
                stack.append(c)
    return out


def scenario_processes(root: int) -> set[int]:
    """Live processes below `root` or in its session (a scenario's, for the leftover sweep)."""
    table = process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _sid) in table.items():
        children.setdefault(ppid, []).append(pid)
    below: set[int] = set()
    stack = [root]
    while stack:
        for c in children.get(stack.pop(), []):
            if c not in below:
                below.add(c)
                stack.append(c)
    return below | {pid for pid, (_p, s) in table.items() if s == root}


def session_members(sid: int) -> set[int]:
    """Live processes in session `sid` (how the suite finds what a scenario left running)."""
    return {pid for pid, (_p, s) in process_table().items() if s == sid and pid != os.getpid()}


def cpu_ns(pid: int) -> int | None:
    """CPU time of all threads of `pid` in ns: schedstat (ns) where present, else clock ticks."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        return total
    except (OSError, ValueError, IndexError):
        pass
    f = _stat_fields(pid)
    if f is None:
        return None
    return (int(f[11]) + int(f[12])) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

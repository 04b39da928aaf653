"""runnerlib scenarios, each against an embedded Server started here, through the public API only.

Configurations (documented here because they shape the figures):
- sequential: `Identity`, a non-batchable identity method (batching off by construction), one
  worker (cpu=1), one call at a time from this process; float32[1,16] also with the client
  pinned apart from the worker, through `async_run` under uvloop, and after 1 ms idle.
- shared: `SharedOps` (three non-batchable methods), one worker, a 64 MiB float32 argument
  made with `runnerlib.shared_array`.
- concurrency: 4 client processes x 16 coroutines of `async_run`, float32[1,16]. Batching on:
  `Echo` (batchable, batch_dim 0) with max_batch_size=64, max_latency_ms=10, cpu=1 (one worker).
  Batching off: `Identity` with cpu=1.
- scaling: the batching-on configuration with 1, 2 and 4 client processes (16 coroutines each)
  against 1 and 2 workers, set by `Runner(..., cpu=1, workers_per_resource=W)` (SPEC 5: a CPU
  runnable without multi-threading gets ceil(cpu) * workers_per_resource workers).
- idle: server CPU over an idle window after some traffic; workers are this process's
  descendants found through /proc, and the embedded server's threads count via this process.
Mean batch size comes from the runner's counters (the snapshots behind `python -m runnerlib
status`), as the change in rows over the change in batches during the measuring window; when
they cannot be read it is omitted.
"""

from __future__ import annotations

import os
import time
import traceback

import numpy as np

from .load import run_load
from .measure import (
    MIB64,
    PAYLOADS,
    cpu_ns,
    descendants,
    make_payload,
    summarize_ns,
    time_async_calls,
    time_calls,
)

RUN_TIMEOUT_S = 30  # a hung call fails its row instead of hanging the suite


def _runner(runnable: str, name: str, **kwargs):
    import runnerlib

    from . import runnables

    return runnerlib.Runner(getattr(runnables, runnable), name=name, **kwargs)


def worker_cpus() -> list[int]:
    """The CPUs the runnerlib workers below this process are pinned to."""
    cpus: set[int] = set()
    for pid in descendants():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"runnerlib._shm.worker" not in f.read():
                    continue
            cpus |= os.sched_getaffinity(pid)
        except OSError:
            continue
    return sorted(cpus)


def _check(got, x, label: str) -> None:
    if not isinstance(got, np.ndarray) or got.shape != x.shape or got.dtype != x.dtype:
        raise AssertionError(
            f"{label}: identity returned {type(got).__name__} "
            f"{getattr(got, 'shape', '')} {getattr(got, 'dtype', '')}"
        )
    if x.size <= 1 << 20 and not np.array_equal(got, x):
        raise AssertionError(f"{label}: identity returned different values")
    if not (got.flat[0] == x.flat[0] and got.flat[-1] == x.flat[-1]):
        raise AssertionError(f"{label}: identity returned different values")


def _timed(out: dict, key: str, samples, cpus: list[int], **extra) -> None:
    out[key] = summarize_ns(samples)
    out[key]["client_cpu_samples"] = cpus
    out[key].update(extra)


def sequential(plan, progress) -> dict:
    """Round trip of `runner.run(x)` per payload, one call at a time, batching off.

    float32[1,16] is measured four ways: with the client unpinned (as users run it: the kernel
    places it, sometimes on the worker's CPU), with the client pinned to a CPU apart from the
    worker's, through `async_run` awaited in sequence in one uvloop event loop, and as the
    first call after 1 ms idle (both sides past their spin windows).
    """
    import uvloop

    import runnerlib

    runner = _runner("Identity", "bench-seq", cpu=1, timeout=RUN_TIMEOUT_S)
    out: dict = {"config": "Identity (batchable=False), cpu=1 -> 1 worker, sync run()"}
    progress("starting server")
    with runnerlib.Server([runner]):
        runner.init_client()
        try:
            small = make_payload("f32_1x16")
            _check(runner.run(small), small, "f32_1x16")
            out["worker_cpus"] = worker_cpus()
            for name in PAYLOADS:
                n, warm = plan.seq_iters[name], plan.seq_warmup[name]
                progress(f"run() {name} x{n}")
                x = make_payload(name)
                got = runner.run(x)
                _check(got, x, name)
                del got
                cpus: list[int] = []  # the client's CPU, sampled every 64 calls
                _timed(out, name, time_calls(runner.run, x, n, warm, cpus), cpus, pinned=None)
                if name == "f32_1x16":
                    _small_variants(runner, x, plan, progress, out, uvloop)
        finally:
            runner.destroy()
    big = out["f32_64MiB"]
    big["gb_s"] = MIB64 / (big["p50_us"] * 1e-6) / 1e9  # payload bytes / round-trip p50
    return out


def _small_variants(runner, x, plan, progress, out: dict, uvloop) -> None:
    """float32[1,16]: client pinned, async_run under uvloop, first call after 1 ms idle."""
    n, warm = plan.seq_iters["f32_1x16"], plan.seq_warmup["f32_1x16"]
    saved = os.sched_getaffinity(0)
    apart = [c for c in sorted(saved) if c not in out["worker_cpus"]]
    if out["worker_cpus"] and apart:
        progress(f"run() f32_1x16 x{n}, client pinned to CPU {apart[0]}")
        try:
            os.sched_setaffinity(0, {apart[0]})
            cpus: list[int] = []
            samples = time_calls(runner.run, x, n, warm, cpus)
        finally:
            os.sched_setaffinity(0, saved)
        _timed(out, "f32_1x16_pinned", samples, cpus, pinned=apart[0])
    else:
        why = "the worker is not pinned" if not out["worker_cpus"] else "no CPU apart from it"
        out["f32_1x16_pinned"] = {"skipped": f"client not pinned: {why}"}

    async def drive(cpus):
        got = await runner.async_run(x)
        _check(got, x, "f32_1x16 async_run")
        del got
        return await time_async_calls(runner.async_run, x, n, warm, cpus)

    progress(f"async_run() f32_1x16 x{n}, uvloop")
    cpus = []
    _timed(out, "f32_1x16_async", uvloop.run(drive(cpus)), cpus, loop="uvloop", pinned=None)

    n_idle = plan.seq_iters["f32_1x16_idle1ms"]
    progress(f"run() f32_1x16 after 1 ms idle x{n_idle}")
    cpus = []
    samples = time_calls(runner.run, x, n_idle, plan.seq_warmup["f32_1x16_idle1ms"], cpus, 0.001)
    _timed(out, "f32_1x16_idle1ms", samples, cpus, pause_s=0.001, pinned=None)


SHARED_CASES = {
    # key -> (method, what the row says)
    "in": ("nbytes", "in (the method returns x.nbytes)"),
    "in_out": ("identity", "in and out (the method returns x)"),
    "method_writes": ("double", "the method writes 2*x into one it makes"),
}


def shared(plan, progress) -> dict:
    """64 MiB float32 made with `runnerlib.shared_array` (SPEC 6): a reference crosses, not
    the bytes. Skipped, with the reason in the row, when runnerlib has no shared_array."""
    import runnerlib

    make = getattr(runnerlib, "shared_array", None)
    if make is None:
        return {"skipped": "runnerlib.shared_array not available"}
    runner = _runner("SharedOps", "bench-shared", cpu=1, timeout=RUN_TIMEOUT_S)
    out: dict = {"config": "SharedOps (batchable=False), cpu=1 -> 1 worker, sync run()"}
    n, warm = plan.seq_iters["shared_64MiB"], plan.seq_warmup["shared_64MiB"]
    progress("starting server")
    with runnerlib.Server([runner]):
        runner.init_client()
        try:
            x = make(PAYLOADS["f32_64MiB"], dtype=np.float32)
            x[...] = make_payload("f32_64MiB")
            out["array_type"] = f"{type(x).__module__}.{type(x).__name__}"
            for key, (method_name, _what) in SHARED_CASES.items():
                method = getattr(runner, method_name)
                progress(f"{method_name}.run(shared 64 MiB) x{n}")
                try:
                    _check_shared(key, method.run(x), x)
                    cpus: list[int] = []
                    _timed(out, key, time_calls(method.run, x, n, warm, cpus), cpus)
                    out[key]["method"] = method_name
                except Exception as e:  # noqa: BLE001 - one failed row, the others go on
                    out[key] = {
                        "error": f"{type(e).__name__}: {e}",
                        "traceback": traceback.format_exc(),
                    }
            del x
        finally:
            runner.destroy()
    return out


def _check_shared(key: str, got, x) -> None:
    if key == "in":
        if got != x.nbytes:
            raise AssertionError(f"shared {key}: method returned {got!r}, not {x.nbytes}")
        return
    label = f"shared {key}"
    if key == "in_out":
        _check(got, x, label)
        return
    if not isinstance(got, np.ndarray) or got.shape != x.shape or got.dtype != x.dtype:
        raise AssertionError(
            f"{label}: returned {type(got).__name__} "
            f"{getattr(got, 'shape', '')} {getattr(got, 'dtype', '')}"
        )
    idx = (0, 1, x.size // 2, x.size - 1)
    want = [2 * x.flat[i] for i in idx]
    if [got.flat[i] for i in idx] != want:
        raise AssertionError(f"{label}: returned values are not 2*x")


def _served_load(
    name: str, runnable: str, runner_kwargs: dict, client_counts, duration, plan, progress
) -> dict:
    """One server for `runnable`, then one load run per client-process count."""
    import runnerlib

    kwargs = dict(runner_kwargs, timeout=RUN_TIMEOUT_S)
    runner = _runner(runnable, name, **kwargs)
    progress(f"starting server {name}")
    out: dict = {"runnable": runnable, "runner_kwargs": kwargs}
    with runnerlib.Server([runner]):
        runner.init_client()
        try:
            x = np.ones((1, 16), dtype=np.float32)
            _check(runner.run(x), x, name)  # fail fast before spawning clients
            out["scheduled_worker_count"] = getattr(runner, "scheduled_worker_count", None)
            spec = {
                "name": runner.name,
                "runnable": runnable,
                "runner_kwargs": kwargs,
                "coroutines": plan.coroutines_per_client,
                "warmup_rounds": plan.load_warmup_rounds,
                "duration": duration,
            }
            for n in client_counts:
                before = batch_stats(runner)
                try:
                    res = run_load(spec, n, progress)
                except Exception as e:  # noqa: BLE001 - one failed case, the others go on
                    res = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
                mb = mean_batch(before, batch_stats(runner))
                if mb is not None:
                    res["mean_batch_size"] = mb
                out[f"clients_{n}"] = res
        finally:
            runner.destroy()
    return out


def concurrency(plan, progress) -> dict:
    """64 concurrent async_run callers over 4 client processes, batching on and off."""
    procs = plan.callers // plan.coroutines_per_client
    cases = {
        "batched": ("Echo", {"max_batch_size": 64, "max_latency_ms": 10, "cpu": 1}),
        "unbatched": ("Identity", {"cpu": 1}),
    }
    out = {}
    for label, (runnable, kwargs) in cases.items():
        try:
            r = _served_load(
                f"bench-{label}", runnable, kwargs, [procs], plan.load_duration, plan, progress
            )
            res = r.pop(f"clients_{procs}")
            res.update(r)
        except Exception as e:  # noqa: BLE001
            res = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        out[label] = res
    return out


def scaling(plan, progress) -> dict:
    """req/s for 1, 2, 4 client processes x 1, 2 workers, batching on."""
    out = {}
    for w in (1, 2):
        kwargs = {"max_batch_size": 64, "max_latency_ms": 10, "cpu": 1, "workers_per_resource": w}
        try:
            out[f"workers_{w}"] = _served_load(
                f"bench-scale-{w}w", "Echo", kwargs, (1, 2, 4), plan.scale_duration, plan, progress
            )
        except Exception as e:  # noqa: BLE001
            out[f"workers_{w}"] = {
                "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(),
            }
    return out


def idle(plan, progress) -> dict:
    """CPU used by a running, idle server, as % of one core."""
    import runnerlib

    before = descendants()
    runner = _runner("Identity", "bench-idle", cpu=1, timeout=RUN_TIMEOUT_S)
    progress("starting server")
    with runnerlib.Server([runner]):
        runner.init_client()
        try:
            x = make_payload("f32_1x16")
            for _ in range(200):
                runner.run(x)
            time.sleep(0.5)  # past every spin-before-block window
            pids = descendants() - before
            me = os.getpid()
            progress(f"idle {plan.idle_s:.1f} s, {len(pids)} server process(es)")
            t0 = {p: cpu_ns(p) for p in pids | {me}}
            w0 = time.monotonic_ns()
            time.sleep(plan.idle_s)
            t1 = {p: cpu_ns(p) for p in pids | {me}}
            wall = time.monotonic_ns() - w0
        finally:
            runner.destroy()

    def pct(ps):
        used = sum(t1[p] - t0[p] for p in ps if t0.get(p) is not None and t1.get(p) is not None)
        return 100.0 * used / wall

    workers = pct(pids)
    host = pct({me})
    return {
        "server_processes": len(pids),
        "workers_pct_core": workers,
        "host_process_pct_core": host,
        "total_pct_core": workers + host,
        "idle_s": wall / 1e9,
    }


# ---- batch statistics, from the counters `python -m runnerlib status` shows ----


def batch_stats(runner) -> dict[str, float] | None:
    try:  # the counters `python -m runnerlib status` shows (SPEC 10), read from shared memory
        from runnerlib import stats as rl_stats

        ns = os.environ.get("RUNNERLIB_NAMESPACE")
        for snap in rl_stats.collect():
            if snap.get("runner") == runner.name and ns in (None, snap.get("namespace")):
                return _flatten(snap) or None
    except Exception:  # noqa: BLE001 - stats are optional
        pass
    return None


def _flatten(obj, prefix: str = "", depth: int = 0) -> dict[str, float]:
    if depth > 4:
        return {}
    if isinstance(obj, bool):
        return {}
    if isinstance(obj, int | float):
        return {prefix: float(obj)}
    if not isinstance(obj, dict):
        return {}
    out: dict[str, float] = {}
    for k, v in obj.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k), depth + 1))
    return out


def _pick(stats: dict[str, float], names: tuple[str, ...]) -> float | None:
    """The shallowest counter whose last path component is one of `names` (totals first)."""
    for name in names:
        keys = [k for k in stats if k.rsplit(".", 1)[-1] == name]
        keys.sort(key=lambda k: k.count("."))
        if keys:
            return stats[keys[0]]
    return None


def mean_batch(before: dict | None, after: dict | None) -> float | None:
    """Rows per batch over the measuring window, or the runner's own mean if that is all."""
    if after is None:
        return None
    b1 = _pick(after, ("batches",))
    r1 = _pick(after, ("rows", "requests", "calls"))
    if b1 is not None and r1 is not None:
        b0 = _pick(before or {}, ("batches",)) or 0.0
        r0 = _pick(before or {}, ("rows", "requests", "calls")) or 0.0
        if b1 - b0 > 0:
            return (r1 - r0) / (b1 - b0)
    return _pick(after, ("mean_batch_size",))

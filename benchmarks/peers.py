"""Peers measured in the same run, when installed (`benchmarks/run --peers`: the `peers`
extra, in a virtual environment of its own), so that the table shows ratios measured on the
reader's own machine. Never required: a peer that is not installed gives a 'skipped: not
installed' row, one that fails a 'FAILED: why' row.

- bentoml: BentoML 1.4's legacy runner hop alone. A runner server process serves an identity
  `bentoml.legacy.Runnable` the way `bentoml start-runner-server` does (`RunnerAppFactory`'s
  ASGI app under uvicorn), on a Unix socket; this process is its remote client
  (`Runner.init_client()` with the runner mapped to `file://<socket>`), which is what a
  BentoML API server does: HTTP over the Unix socket, arguments pickled (protocol 5). Calls are
  `await runner.async_run(x)` in sequence in one uvloop loop (BentoML's sync `run()` only works
  from a thread that anyio started, as in its API server, where it hops to the same loop).
- ray_serve: a Ray Serve deployment on a local Ray started here (no HTTP proxy), called through
  its handle: `handle.remote(x).result()`.

Both also run the 64-caller load (4 client processes x 16 coroutines, batching with at most 64
rows and 10 ms), like runnerlib's `concurrency` scenario. A refused call (BentoML answers 503
when its dispatcher predicts that the 10 ms budget is spent) counts as an error and is not in
the latencies or req/s, which count answered calls; its caller waits 10 ms before the next.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import socket
import tempfile
import time
import traceback
import warnings

import numpy as np

from .measure import PAYLOADS, make_payload, summarize_ns, time_calls

_START_TIMEOUT_S = 120.0


def _not_installed(dist: str, module: str) -> dict | None:
    if importlib.util.find_spec(module) is None:
        return {"skipped": f"{dist} not installed (benchmarks/run --peers)"}
    return None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _check(got, x, label: str) -> None:
    if not isinstance(got, np.ndarray) or got.shape != x.shape or got.dtype != x.dtype:
        raise AssertionError(f"{label}: the peer returned {type(got).__name__}")
    if not (got.flat[0] == x.flat[0] and got.flat[-1] == x.flat[-1]):
        raise AssertionError(f"{label}: the peer returned different values")
    if x.size <= 1 << 20 and not np.array_equal(got, x):
        raise AssertionError(f"{label}: the peer returned different values")


def _quiet_child(log_path: str) -> None:
    """A peer's server or client process: its chatter goes to a log file, not the table."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    warnings.simplefilter("ignore")


def _log_tail(path: str, lines: int = 5) -> str:
    try:
        with open(path, errors="replace") as f:
            return " | ".join(f.read().strip().splitlines()[-lines:])
    except OSError:
        return ""


def _load_case(label: str, fn) -> dict:
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - one failed case, the others go on
        return {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}


def _load_spec(plan, **extra) -> dict:
    return {
        "coroutines": plan.coroutines_per_client,
        "warmup_rounds": plan.load_warmup_rounds,
        "duration": plan.load_duration,
        "warmup_errors_ok": True,
        "error_backoff_s": 0.01,  # a refused caller waits one batching window (10 ms)
        **extra,
    }


# ---------------------------------------------------------------- BentoML


def _bento_runner(name: str, batched: bool):
    """An identity runner, built the same way in the server, the scenario and the clients."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BentoML 1.4 flags the legacy runner API deprecated
        import bentoml

        legacy = getattr(bentoml, "legacy", bentoml)

        class BenchIdentity(legacy.Runnable):
            SUPPORTED_RESOURCES = ("cpu",)
            SUPPORTS_CPU_MULTI_THREADING = False

            @legacy.Runnable.method(batchable=batched, batch_dim=0)
            def __call__(self, x):
                return x

        kwargs = {"max_batch_size": 64, "max_latency_ms": 10} if batched else {}
        return legacy.Runner(BenchIdentity, name=name, **kwargs)


def _bento_server(sock_path: str, name: str, batched: bool, log_path: str) -> None:
    """Runner server process: what `bentoml start-runner-server` runs, on a Unix socket."""
    _quiet_child(log_path)
    import uvicorn
    from bentoml._internal.server.runner_app import RunnerAppFactory

    app = RunnerAppFactory(_bento_runner(name, batched), worker_index=1)()
    config = uvicorn.Config(app, uds=sock_path, log_config=None, timeout_keep_alive=1800)
    uvicorn.Server(config).run()


def _bento_client(name: str, sock_path: str, batched: bool):
    from bentoml._internal.configuration.containers import BentoMLContainer

    BentoMLContainer.remote_runner_mapping.set({name: f"file://{sock_path}"})
    runner = _bento_runner(name, batched)
    runner.init_client()
    return runner


async def _bento_ready(runner) -> None:
    import asyncio

    deadline = time.monotonic() + _START_TIMEOUT_S
    while not await runner.runner_handle_is_ready(1):
        if time.monotonic() > deadline:
            raise TimeoutError("BentoML runner server never became ready")
        await asyncio.sleep(0.05)


def _bento_load_client(idx: int, spec: dict, messages, start) -> None:
    """A load client process (benchmarks.load protocol) calling the BentoML runner server."""
    try:
        _quiet_child(spec["log"])
        import uvloop

        from .load import _drive

        runner = _bento_client(spec["name"], spec["sock"], True)

        async def main():
            await _bento_ready(runner)
            return await _drive(runner, idx, spec, messages, start)

        messages.put(("result", idx, uvloop.run(main())))
    except BaseException:  # noqa: BLE001 - reported to the scenario, which fails the row
        messages.put(("error", idx, traceback.format_exc()))


@contextlib.contextmanager
def _bento_served(home: str, name: str, batched: bool):
    import multiprocessing as mp

    sock_path = os.path.join(home, f"{name}.sock")
    log_path = os.path.join(home, f"{name}.log")
    proc = mp.get_context("spawn").Process(
        target=_bento_server, args=(sock_path, name, batched, log_path), daemon=True
    )
    proc.start()
    try:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not _accepts(sock_path):
            if not proc.is_alive():
                raise RuntimeError(f"BentoML runner server exited: {_log_tail(log_path)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"BentoML runner server did not listen: {_log_tail(log_path)}")
            time.sleep(0.05)
        yield sock_path, log_path
    finally:
        proc.terminate()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()


def _accepts(path: str) -> bool:
    if not os.path.exists(path):
        return False
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(path)
            return True
        except OSError:
            return False


def bentoml_runner(plan, progress) -> dict:
    """BentoML 1.4 legacy runner hop: sequential calls per payload, then the 64-caller load."""
    skipped = _not_installed("bentoml", "bentoml")
    if skipped:
        return skipped
    home = tempfile.mkdtemp(prefix="rlbench-bentoml-")
    os.environ["BENTOML_HOME"] = home  # its model store and config, not the user's
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    out: dict = {
        "peer": "BentoML legacy runner hop, HTTP over a Unix socket, pickle 5",
        "version": _version("bentoml"),
    }
    try:
        progress(f"starting a BentoML {out['version']} runner server")
        with _bento_served(home, "bench-identity", False) as (sock, _log):
            import uvloop

            runner = _bento_client("bench-identity", sock, False)

            async def sequential():
                await _bento_ready(runner)
                for name in PAYLOADS:
                    out[name] = await _bento_sequential(runner, name, plan, progress)

            uvloop.run(sequential())
        out["batched"] = _load_case("batched", lambda: _bento_load(home, plan, progress))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return out


async def _bento_sequential(runner, name: str, plan, progress) -> dict:
    from .measure import time_async_calls

    n, warm = plan.seq_iters[f"peer_{name}"], plan.seq_warmup[f"peer_{name}"]
    progress(f"BentoML runner async_run() {name} x{n}")
    x = make_payload(name)
    try:
        _check(await runner.async_run(x), x, name)
        res = summarize_ns(await time_async_calls(runner.async_run, x, n, warm))
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    res["call"] = "await runner.async_run(x), uvloop"
    return res


def _bento_load(home: str, plan, progress) -> dict:
    from .load import run_load

    procs = plan.callers // plan.coroutines_per_client
    progress("starting a batching BentoML runner server (max 64 rows, 10 ms)")
    with _bento_served(home, "bench-batched", True) as (sock, log):
        spec = _load_spec(plan, name="bench-batched", sock=sock, log=log + ".clients")
        res = run_load(spec, procs, progress, target=_bento_load_client)
    res["batching"] = {"max_batch_size": 64, "max_latency_ms": 10}
    return res


# ---------------------------------------------------------------- Ray Serve


def _ray_deployments():
    from ray import serve

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class BenchIdentity:
        def __call__(self, x):
            return x

    @serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
    class BenchBatched:
        @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.01)
        async def __call__(self, xs):
            return xs

    return BenchIdentity, BenchBatched


class _RayCaller:
    """`async_run` over a deployment handle, so benchmarks.load._drive can drive it."""

    def __init__(self, handle) -> None:
        self.handle = handle

    def async_run(self, x):
        return self.handle.remote(x)  # a DeploymentResponse: awaitable inside an event loop


def _ray_load_client(idx: int, spec: dict, messages, start) -> None:
    try:
        _quiet_child(spec["log"])
        import asyncio

        import ray
        from ray import serve

        from .load import _drive

        ray.init(address=spec["address"], namespace=spec["namespace"], log_to_driver=False)
        try:
            caller = _RayCaller(serve.get_app_handle(spec["app"]))
            result = asyncio.run(_drive(caller, idx, spec, messages, start))
        finally:
            ray.shutdown()
        messages.put(("result", idx, result))
    except BaseException:  # noqa: BLE001
        messages.put(("error", idx, traceback.format_exc()))


def ray_serve(plan, progress) -> dict:
    """Ray Serve handle: sequential `handle.remote(x).result()` per payload, then the load."""
    skipped = _not_installed("ray[serve]", "ray") or _not_installed("ray[serve]", "ray.serve")
    if skipped:
        return skipped
    tmp = tempfile.mkdtemp(prefix="rlb-ray-", dir="/tmp")  # short: Ray puts sockets in it
    out: dict = {"peer": "Ray Serve deployment handle", "version": _version("ray")}
    progress(f"starting Ray {out['version']} and Serve")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import ray
        from ray import serve
    for logger in ("ray", "ray.serve"):
        logging.getLogger(logger).setLevel(logging.WARNING)
    try:
        ctx = ray.init(
            num_cpus=len(os.sched_getaffinity(0)),
            include_dashboard=False,
            log_to_driver=False,
            namespace="rlbench",
            _temp_dir=tmp,
        )
        serve.start(http_options={"location": "NoServer"})
        identity, batched = _ray_deployments()
        handle = serve.run(identity.bind(), name="bench-identity", route_prefix=None)
        for name in PAYLOADS:
            out[name] = _ray_sequential(handle, name, plan, progress)
        progress("Ray Serve: batching deployment (max 64 rows, 10 ms)")
        serve.run(batched.bind(), name="bench-batched", route_prefix=None)
        address = ctx.address_info.get("gcs_address") or ctx.address_info.get("address")
        spec = _load_spec(
            plan,
            address=address,
            namespace="rlbench",
            app="bench-batched",
            log=os.path.join(tmp, "clients.log"),
        )
        procs = plan.callers // plan.coroutines_per_client

        def load():
            from .load import run_load

            res = run_load(spec, procs, progress, target=_ray_load_client)
            res["batching"] = {"max_batch_size": 64, "batch_wait_timeout_s": 0.01}
            return res

        out["batched"] = _load_case("batched", load)
    finally:
        progress("stopping Ray")
        ray.shutdown()  # takes Serve's actors with it (serve.shutdown() first only adds noise)
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _ray_sequential(handle, name: str, plan, progress) -> dict:
    n, warm = plan.seq_iters[f"peer_{name}"], plan.seq_warmup[f"peer_{name}"]
    progress(f"Ray Serve handle.remote(x).result() {name} x{n}")
    x = make_payload(name)

    def call(a):
        return handle.remote(a).result()

    try:
        _check(call(x), x, name)
        res = summarize_ns(time_calls(call, x, n, warm))
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    res["call"] = "handle.remote(x).result()"
    return res

"""The supervisor: ``Server`` starts the pinned worker processes of some runners and keeps
them serving.

For each runner it creates a control segment and a request ring, starts the workers the
strategy schedules (environment set before the Runnable's module is imported, CPUs pinned),
waits until every worker has built its Runnable, and publishes the runner in the registry.
A supervisor thread then restarts dead workers (answering the calls they held with
``WorkerDied``), reclaims the channels of dead client processes, and on ``stop()`` drains
in-flight calls before it unlinks every segment.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import pickle
import select
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ipc import codec
from ipc.doorbell import Doorbell
from ipc.errors import IpcError
from ipc.ring import Ring
from ipc.segment import cleanup_stale, remove_owned_by
from runnerlib import registry
from runnerlib._shm import budget, startup
from runnerlib._shm import protocol as P
from runnerlib._shm.control import (
    H_NWORKERS,
    READY,
    STOPPED,
    STOPPING,
    W_CPUMASK,
    W_DEAD,
    W_GPU,
    W_INFLIGHT,
    W_PID,
    W_RESTARTS,
    W_STARTING,
    W_STATE,
    WORKERS_BELL_OFFSET,
    ChannelCache,
    Control,
)
from runnerlib.errors import ConfigError, RunnerError, WorkerDied
from runnerlib.settings import MethodSpec, RunnerSettings
from runnerlib.settings import RunnerRef as Runner

if TYPE_CHECKING:
    from runnerlib.config import Config

log = logging.getLogger("runnerlib.server")

#: Request ring per runner on a roomy host, prefaulted (a smaller shared-memory budget gives a
#: smaller one: runnerlib._shm.budget). Calls up to half of it travel in the ring, larger ones
#: through handoff segments (ipc.handoff).
REQUEST_RING_BYTES = 64 << 20
START_TIMEOUT = float(os.environ.get("RUNNERLIB_START_TIMEOUT", "300"))
DRAIN_TIMEOUT = 10.0
SUPERVISE_INTERVAL = 0.05  # only where pidfds are unavailable
RECLAIM_INTERVAL = 1.0
#: The longest the supervisor waits for room in one client's channel to tell it a call failed:
#: a full channel never delays restarting a worker.
ANSWER_WAIT = 0.2


class AlreadyServed(RunnerError):
    """Another live server already serves a runner of this name in this namespace."""


class _WorkerProc:
    def __init__(self, index: int, env: dict[str, str], cpus: list[int]) -> None:
        self.index = index
        self.env = env
        self.cpus = cpus
        self.launched: startup.Launched | None = None
        self.ready = False

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.launched.proc if self.launched is not None else None


class _Served:
    """One runner as served: its segments and workers."""

    def __init__(self, runner: Runner, settings: RunnerSettings, server: Server) -> None:
        self.runner = runner
        self.name: str = runner.name
        self.settings = settings
        self.server = server
        self.log = logging.getLogger(f"runnerlib.runner.{self.name}")
        self.methods: list[MethodSpec] = list(settings.methods.values())
        self.ctl = Control.create()
        budget.publish(self.ctl, server.sizes)
        try:
            self.requests = Ring.create(server.sizes.request_ring, tag="req")
        except BaseException:  # out of space or descriptors: leave nothing behind
            self.ctl.segment.unlink()
            self.ctl.close()
            raise
        try:
            self.bell = Doorbell.create(self.ctl.segment, WORKERS_BELL_OFFSET)
        except BaseException:
            self.requests.unlink()
            self.requests.close()
            self.ctl.segment.unlink()
            self.ctl.close()
            raise
        self.workers: list[_WorkerProc] = []
        self.channels = ChannelCache(self.ctl)
        self.namespace = server.namespace

    # -- workers ----------------------------------------------------------------------------

    def spec_for(self, w: _WorkerProc) -> startup.WorkerSpec:
        main = sys.modules.get("__main__")
        main_path = getattr(main, "__file__", None)
        return startup.WorkerSpec(
            runner=self.name,
            index=w.index,
            class_ref=self.settings.class_ref,
            init_params=pickle.dumps(self.runner.runnable_init_params or {}),
            methods=self.methods,
            control=self.ctl.name,
            request_ring=self.requests.name,
            cpus=w.cpus,
            main_path=os.path.abspath(main_path) if main_path else None,
            sys_path=[p for p in sys.path if p],
            allow_pickle=self.settings.allow_pickle,
            batching_enabled=self.settings.batching_enabled,
            on_overload=self.settings.on_overload,
            log_level=logging.getLogger("runnerlib").getEffectiveLevel(),
        )

    def launch(self, w: _WorkerProc) -> None:
        w.ready = False
        row = self.ctl.workers[w.index]
        row[W_STATE] = W_STARTING
        row[W_CPUMASK] = sum(1 << c for c in w.cpus if c < 63)
        gpu = w.env.get("CUDA_VISIBLE_DEVICES", "-1").split(",")[0]
        row[W_GPU] = int(gpu) if gpu.lstrip("-").isdigit() else -1
        if w.launched is not None:
            w.launched.close()
        w.launched = startup.launch(self.spec_for(w), w.env, f"{self.name}:{w.index}")
        row[W_PID] = w.launched.pid

    def await_ready(self, w: _WorkerProc, deadline: float) -> None:
        """Wait for the worker's answer; raise the Runnable's own error if it failed."""
        assert w.launched is not None
        startup.await_ready(w.launched, self.name, w.index, deadline,
                            f"{START_TIMEOUT:.0f} s (RUNNERLIB_START_TIMEOUT)")
        w.ready = True

    def start_workers(self) -> None:
        env_map, cpu_sets = _plan_workers(self.runner, self.settings, self.server.cpus)
        self.workers = [_WorkerProc(i, env_map[i], cpu_sets[i]) for i in range(len(env_map))]
        self.ctl.header[H_NWORKERS] = len(self.workers)
        for w in self.workers:
            self.launch(w)
        deadline = time.monotonic() + START_TIMEOUT
        for w in self.workers:
            self.await_ready(w, deadline)
        self.ctl.state = READY

    def on_death(self, w: _WorkerProc) -> None:
        """A worker died: fail the calls it held, then start a new one in its place."""
        assert w.proc is not None
        code = w.proc.returncode
        row = self.ctl.workers[w.index]
        row[W_STATE] = W_DEAD
        row[W_INFLIGHT] = 0
        held = self._fail_held(w, f"worker {w.index} of runner {self.name!r} died "
                               f"(exit code {code}) while running this call")
        self.log.warning(
            "worker %d (pid %d) died with code %s holding %d call(s); restarting",
            w.index, w.proc.pid, code, held,
        )
        row[W_RESTARTS] += 1
        remove_owned_by(w.proc.pid)  # its handoff pool; readers' mappings stay valid
        if w.launched is not None:
            w.launched.close(output_wait=0.5)
        w.launched = None
        threading.Thread(target=self._restart, args=(w,), daemon=True).start()

    def _restart(self, w: _WorkerProc) -> None:
        try:
            self.launch(w)
            self.await_ready(w, time.monotonic() + START_TIMEOUT)
            self.server.wake_supervisor()  # watch the new worker's pidfd
        except Exception as exc:
            self.log.error("worker %d could not be restarted: %s", w.index, exc)
            if w.proc is not None and w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()

    # -- answering and reclaiming -------------------------------------------------------------

    def answer(self, tag: int, head: bytes | memoryview, kind: int, message: str) -> None:
        """Fail one call with a runtime error; waits at most ANSWER_WAIT for room. ``head``:
        the first bytes of the request record, whose prefix holds the calling channel's full
        generation: only that channel gets the answer, never a later owner of its slot."""
        payload = P.runner_error_payload(WorkerDied if kind == P.DIED else RunnerError, message)
        slot, gen, mask = P.request_route(tag, head)
        ch = self.channels.get(slot, gen, mask)
        if ch is None:
            return
        ring, bell = ch
        try:
            P.send(ring, bell, kind, tag, codec.encode(payload), timeout=ANSWER_WAIT,
                   handoffs=None, alive=lambda: self.ctl.channel_live(slot, gen, mask))
        except (IpcError, ValueError) as e:  # a vanished or stalled client: it times out
            self.log.debug("could not answer call %x: %s", tag, e)

    def reclaim_dead_clients(self) -> None:
        """Free the channel slots of dead client processes and remove what they owned: their
        response rings, doorbell FIFOs and handoff pools."""
        for slot, owner, _gen in self.ctl.open_channels():
            if registry.pid_alive(owner):
                continue
            self.ctl.free_channel(slot)
            self.channels.drop(slot)
            remove_owned_by(owner)
            self.log.info("reclaimed channel %d of dead client pid %d", slot, owner)

    # -- stopping -----------------------------------------------------------------------------

    def stop(self, drain: float) -> None:
        self.ctl.state = STOPPING
        registry.withdraw(self.name, self.namespace, os.getpid())
        running = [(w, w.proc) for w in self.workers if w.proc is not None]
        for _w, p in running:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        self.bell.ring()
        deadline = time.monotonic() + drain
        for w, p in running:
            try:
                p.wait(max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                self.log.warning("worker pid %d did not drain in %.1f s; killing", p.pid, drain)
                p.kill()
                p.wait()
                self._fail_held(w, f"worker {w.index} of runner {self.name!r} was stopped at "
                                f"the drain deadline ({drain:g} s) while running this call")
        for w in self.workers:
            if w.launched is not None:
                w.launched.close()
        try:
            self._fail_queued()
        finally:  # whatever the ring holds, the segments go
            self.ctl.state = STOPPED
            with contextlib.suppress(Exception):
                self.channels.close()
            with contextlib.suppress(Exception):
                self.bell.unlink()
            with contextlib.suppress(Exception):
                self.bell.close()
            with contextlib.suppress(Exception):
                self.requests.unlink()
            with contextlib.suppress(Exception):
                self.requests.close()
            with contextlib.suppress(Exception):
                self.ctl.segment.unlink()
            self.ctl.close()

    def _fail_held(self, w: _WorkerProc, message: str) -> int:
        """Fail with WorkerDied every call a dead worker held; returns how many."""
        try:
            held = self.requests.release_taken_with_head(w.index + 1, P.PREFIX_SIZE)
        except Exception as exc:  # hostile bytes in the ring: the worker restarts all the same
            self.log.error("cannot find the calls worker %d held: %s", w.index, exc)
            return 0
        for _kind, tag, head in held:
            self.answer(tag, head, P.DIED, message)
        return len(held)

    def _fail_queued(self) -> None:
        """Answer the calls still queued: nobody will run them now. A corrupt ring (hostile
        bytes) resynchronises after an error; one that keeps failing is given up on."""
        errors = 0
        while errors < 3:
            try:
                rec = self.requests.take(taker=0)
            except Exception as exc:
                errors += 1
                self.log.warning("draining the request ring of runner %r: %s", self.name, exc)
                continue
            if rec is None:
                return
            tag = rec.tag
            head = bytes(memoryview(rec.buffer)[: P.PREFIX_SIZE])
            rec.release()
            self.answer(tag, head, P.ERROR, f"runner {self.name!r}: the server is stopping: "
                        "this call was queued and did not run; call again once a server runs")


def _plan_workers(
    runner: Runner, settings: RunnerSettings, cpus: CpuDealer
) -> tuple[list[dict[str, str]], list[list[int]]]:
    """Per-worker environment as the strategy scheduled it, and the CPUs each worker is
    pinned to: its share of the runner's ``cpu`` request, dealt from the server's CPUs so
    that workers of every runner of the server are disjoint while CPUs last."""
    count = int(settings.worker_count)
    if count < 1:
        raise ConfigError(f"runner {runner.name!r}: the strategy scheduled no worker")
    envs = [dict(settings.worker_env.get(i, {})) for i in range(count)]
    want = settings.cpu / count if settings.cpu else 1.0
    per = max(1, min(cpus.total, -(-int(want * 1000) // 1000)))  # ceil, no float dust
    return envs, [cpus.deal(per) for _ in range(count)]


class CpuDealer:
    """Hands out this process's CPUs round robin, highest first (CPU 0 is where the
    application's own processes most often run)."""

    def __init__(self) -> None:
        from runnerlib import resources

        self.cpus = sorted(resources.available_cpus(), reverse=True) or [0]
        self.total = len(self.cpus)
        self.next = 0

    def deal(self, n: int) -> list[int]:
        got = [self.cpus[(self.next + i) % self.total] for i in range(n)]
        self.next = (self.next + n) % self.total
        return sorted(set(got))


def _close_fds(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class Server:
    """Serves runners to every process of this user and namespace on the host."""

    def __init__(self, runners: Runner | Sequence[Runner], config: Config | str | None = None, *,
                 namespace: str | None = None) -> None:
        if not isinstance(runners, (list, tuple)):
            runners = [runners]  # type: ignore[list-item]
        names = [r.name for r in runners]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"runner names must be unique within a server; repeated: {dupes}")
        self.runners = list(runners)
        self.config = config
        self.namespace = namespace or registry.namespace()
        self.served: list[_Served] = []
        self.cpus = CpuDealer()
        self._stop = threading.Event()
        # wakes the supervisor early (a stop, a restarted worker's pidfd to watch); closed
        # with the Server object, so that no late wake-up can write into a reused fd number
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        weakref.finalize(self, _close_fds, self._wake_r, self._wake_w)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.started = False
        self._pid = os.getpid()  # the process that started it: the only one that stops it
        self.sizes: budget.Sizes  # what each runner may use, set by start()

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self.started:
            raise RunnerError("server already started")
        from runnerlib.config import load_config

        cfg = self.config
        if cfg is not None and not hasattr(cfg, "runners"):
            cfg = load_config(cfg)
        removed = cleanup_stale()
        if removed:
            log.info("removed %d stale segment(s) of dead processes", len(removed))
        from runnerlib import config as _config

        chosen = _config.shm_budget(cfg if isinstance(cfg, _config.Config) else None)
        self.sizes = budget.plan(chosen if chosen is not None else budget.default_budget(),
                                 len(self.runners), request_cap=REQUEST_RING_BYTES)
        log.debug("shared-memory budget %d bytes (%s): %s", self.sizes.budget,
                  "set" if chosen is not None else "half of /dev/shm's free space", self.sizes)
        self.started = True
        self._pid = os.getpid()
        try:
            for runner in self.runners:
                with registry.spawn_lock(runner.name, self.namespace):
                    existing = registry.find(runner.name, self.namespace)
                    if existing is not None and existing.server_pid != os.getpid():
                        raise AlreadyServed(
                            f"runner {runner.name!r} is already served by pid "
                            f"{existing.server_pid} in namespace {self.namespace!r}"
                        )
                    self._serve(runner, runner.settings(cfg))
        except IpcError as exc:  # out of shared memory or descriptors: a RunnerError
            self.stop()
            raise P.runner_error(exc) from exc
        except BaseException:
            self.stop()
            raise
        self._thread = threading.Thread(target=self._supervise, name="runnerlib-supervisor",
                                        daemon=True)
        self._thread.start()
        atexit.register(self.stop)

    def _serve(self, runner: Runner, settings: RunnerSettings) -> None:
        served = _Served(runner, settings, self)
        self.served.append(served)
        served.start_workers()
        registry.publish(
            registry.ServerInfo(
                runner=runner.name,
                namespace=self.namespace,
                server_pid=os.getpid(),
                control=served.ctl.name,
                request_ring=served.requests.name,
                class_ref=settings.class_ref,
                methods=[m.name for m in served.methods],
                started=time.time(),
            )
        )
        served.log.info("serving with %d worker(s)", len(served.workers))

    def _supervise(self) -> None:
        """Wait on the workers' pidfds (a death wakes us at once; an idle server costs no
        CPU), reclaiming dead clients' channels every RECLAIM_INTERVAL."""
        next_reclaim = 0.0
        pidfds: dict[int, int] = {}
        try:
            while not self._stop.is_set():
                with self._lock:
                    if self._stop.is_set():
                        return
                    watching = self._check_workers(pidfds)
                    now = time.monotonic()
                    if now >= next_reclaim:
                        next_reclaim = now + RECLAIM_INTERVAL
                        for s in self.served:
                            try:
                                s.reclaim_dead_clients()
                            except Exception:
                                log.exception("reclaiming client channels failed")
                timeout = max(next_reclaim - time.monotonic(), 0.0)
                if not watching:  # no pidfd support: poll
                    timeout = min(timeout, SUPERVISE_INTERVAL)
                ready, _, _ = select.select([*pidfds.values(), self._wake_r], [], [], timeout)
                if self._wake_r in ready:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
        finally:
            for fd in pidfds.values():
                os.close(fd)

    def _check_workers(self, pidfds: dict[int, int]) -> bool:
        """Handle dead workers; keep a pidfd open for each live ready one. False when pidfds
        are not available here."""
        live = set()
        ok = True
        for s in self.served:
            for w in s.workers:
                p = w.proc
                if p is None or not w.ready:
                    continue
                if p.poll() is not None:
                    try:
                        s.on_death(w)
                    except Exception:  # the supervisor must outlive any one failure
                        log.exception("handling the death of worker %d failed", w.index)
                    continue
                live.add(p.pid)
                if p.pid not in pidfds:
                    try:
                        pidfds[p.pid] = os.pidfd_open(p.pid)
                    except (OSError, AttributeError):
                        ok = False
        for pid in [pid for pid in pidfds if pid not in live]:
            os.close(pidfds.pop(pid))
        return ok

    def wake_supervisor(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\0")

    def request_stop(self) -> None:
        """Ask ``wait()`` to return (safe from a signal handler); ``stop()`` then drains."""
        self._stop.set()
        self.wake_supervisor()

    def stop(self, drain: float = DRAIN_TIMEOUT) -> None:
        """Drain in-flight calls (up to ``drain`` seconds), stop the workers, unlink segments.
        Only in the process that started the server: a forked child inherits this object and
        its atexit hook, and must leave its parent's server alone."""
        if not self.started or os.getpid() != self._pid:
            return
        self.started = False
        atexit.unregister(self.stop)
        self.request_stop()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._lock:
            for s in self.served:
                try:
                    s.stop(drain)
                except Exception:
                    log.exception("stopping runner %r failed", s.name)
            self.served.clear()

    def wait(self) -> None:
        """Block until ``stop()`` is called (from a signal handler or another thread)."""
        while not self._stop.wait(0.5):
            pass


def spawn_embedded(runner: Runner) -> Server | None:
    """Start a server for ``runner`` owned by this process: what ``init_client()`` hands the
    client to call when no server is running. None when another process won the race."""
    server = Server([runner], namespace=registry.namespace())
    try:
        server.start()
    except AlreadyServed:
        return None
    return server

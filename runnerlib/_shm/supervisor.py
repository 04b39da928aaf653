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
from ipc.errors import IpcError, RingFull
from ipc.liveness import is_mine
from ipc.ring import Ring
from ipc.segment import cleanup_stale, remove_dead_owner
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
    HeldCalls,
)
from runnerlib.errors import ConfigError, RunnerError, WorkerDied
from runnerlib.settings import MethodSpec, RunnerSettings
from runnerlib.settings import RunnerRef as Runner

if TYPE_CHECKING:
    from runnerlib.config import Config

log = logging.getLogger("runnerlib.server")

#: Request ring per runner on a roomy host, prefaulted (a smaller shared-memory budget gives a
#: smaller one: runnerlib._shm.budget). Calls up to protocol.INLINE_LIMIT travel in the ring
#: (workers copy them out and give the record back before running them), larger ones through
#: handoff segments (ipc.handoff).
REQUEST_RING_BYTES = 64 << 20
START_TIMEOUT = float(os.environ.get("RUNNERLIB_START_TIMEOUT", "300"))
DRAIN_TIMEOUT = 10.0
SUPERVISE_INTERVAL = 0.05  # only where pidfds are unavailable
RECLAIM_INTERVAL = 1.0
#: The supervisor never waits for room in a client's channel to tell it a call failed (a full
#: channel never delays restarting a worker): such answers are retried this often until they
#: fit or their call's deadline passes.
RETRY_STALLED = 0.01
#: The deadline of an answer whose call's own deadline is unknown (a record never decoded).
UNKNOWN_DEADLINE = 5.0
#: A reservation at the head of the request ring's reclaim that is not committed for this long
#: belongs to a stopped writer (SIGSTOP, a debugger): the runner then moves to a fresh request
#: ring, so that it never stops everyone else (docs/design.md, "Memory").
STALE_RESERVATION = 1.0
#: How long a request ring the runner moved away from stays mapped here (workers drain it of
#: what was committed into it meanwhile).
RETIRED_GRACE = 30.0
#: How long the handoff segments of a dead worker outlive it: an answer it committed just
#: before it died names one, and its caller opens it within microseconds unless it is stopped.
HANDOFF_GRACE = 10.0


class AlreadyServed(RunnerError):
    """Another live server already serves a runner of this name in this namespace."""


class _WorkerProc:
    def __init__(self, index: int, env: dict[str, str], cpus: list[int]) -> None:
        self.index = index
        self.env = env
        self.cpus = cpus
        self.launched: startup.Launched | None = None
        self.ready = False
        self.held: HeldCalls | None = None  # the calls it holds, for when it dies

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
        self.ctl.publish_request_ring(self.requests.name)
        #: request rings moved away from, with when: kept mapped for RETIRED_GRACE
        self.retired: list[tuple[Ring, float]] = []
        self._stuck: tuple[int, float] | None = None  # (position, since) of a reservation
        self.workers: list[_WorkerProc] = []
        self.channels = ChannelCache(self.ctl)
        self.namespace = server.namespace
        #: pids of dead workers whose segments go once HANDOFF_GRACE has passed, with when
        self.dead_workers: list[tuple[int, float]] = []
        #: failure answers waiting for room: (slot, gen, mask, tag, kind, plan, deadline)
        self.stalled: list[tuple[int, int, int, int, int, codec.Encoded, float]] = []

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
            held=w.held.segment.name if w.held is not None else "",
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
        if w.held is None:
            w.held = HeldCalls.create()
        else:
            w.held.clear()  # what the previous worker held was answered in on_death
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
        self.bell.forget_waiter(w.index)  # it may have died asleep on the workers' doorbell
        held = self._fail_held(w, f"worker {w.index} of runner {self.name!r} died "
                               f"(exit code {code}) while running this call")
        self.log.warning(
            "worker %d (pid %d) died with code %s holding %d call(s); restarting",
            w.index, w.proc.pid, code, held,
        )
        row[W_RESTARTS] += 1
        # its handoff pool, a little later: an answer it committed names one of them, and
        # the caller must still be able to open it (readers' mappings stay valid anyway; a
        # live process of another PID namespace with the same pid keeps its segments: its
        # liveness lock is held)
        self.dead_workers.append((w.proc.pid, time.monotonic()))
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

    def answer(self, tag: int, kind: int, message: str, gen: int, mask: int = -1,
               deadline: float = 0.0) -> None:
        """Fail one call with a runtime error, in the channel of generation ``gen`` (compared
        under ``mask``). Never waits: a full channel gets it from ``retry_stalled``."""
        payload = P.runner_error_payload(WorkerDied if kind == P.DIED else RunnerError, message)
        item = (P.slot_of(tag), gen, mask, tag, kind, codec.encode(payload),
                deadline or time.monotonic() + UNKNOWN_DEADLINE)
        if not self._try_answer(item):
            self.stalled.append(item)

    def _try_answer(self, item: tuple[int, int, int, int, int, codec.Encoded, float]) -> bool:
        """One attempt; True when written or when it can never be (the caller is gone)."""
        slot, gen, mask, tag, kind, plan, _deadline = item
        ch = self.channels.get(slot, gen, mask)
        if ch is None:
            return True
        ring, bell = ch
        try:
            P.send(ring, bell, kind, tag, plan, timeout=0.0, handoffs=None, alive=None)
        except RingFull:
            return False
        except (IpcError, ValueError) as e:  # a vanished or hostile channel: it times out
            self.log.debug("could not answer call %x: %s", tag, e)
        return True

    def retry_stalled(self) -> None:
        now = time.monotonic()
        self.stalled = [item for item in self.stalled
                        if now <= item[6] and not self._try_answer(item)]

    # -- the request ring ------------------------------------------------------------------

    def check_request_ring(self) -> None:
        """Move to a fresh request ring when a reservation has stood uncommitted at the head
        of its reclaim for STALE_RESERVATION (its writer is stopped: the ring would fill
        behind it). The stopped writer keeps its mapping of the old ring, never anyone
        else's bytes: nothing in the old ring is reused, it is only drained and dropped."""
        now = time.monotonic()
        for item in [r for r in self.retired if now - r[1] > RETIRED_GRACE]:
            self.retired.remove(item)
            item[0].close()
        at = self.requests.oldest_reservation()
        if at is None:
            self._stuck = None
            return
        if self._stuck is None or self._stuck[0] != at[0]:
            self._stuck = (at[0], now)
            return
        if now - self._stuck[1] < STALE_RESERVATION:
            return
        try:
            fresh = Ring.create(self.requests.capacity, tag="req")
        except IpcError as exc:  # no room for a second ring: try again later
            self.log.error("request ring pinned by a stopped writer (pid %d), and no room for "
                           "a fresh one: %s", at[1], exc)
            self._stuck = (at[0], now)
            return
        old, self.requests = self.requests, fresh
        self.ctl.publish_request_ring(fresh.name)
        self.bell.ring()
        with contextlib.suppress(Exception):
            old.unlink()  # the name goes now; the memory once every mapping is dropped
        self.retired.append((old, now))
        self._stuck = None
        self.log.warning(
            "request ring: a record reserved by pid %d has not been committed for %.0f s (that "
            "process is stopped or in a debugger); calls now go through a fresh ring", at[1],
            STALE_RESERVATION)

    def all_request_rings(self) -> list[Ring]:
        return [self.requests, *(r for r, _ in self.retired)]

    def remove_dead_workers_segments(self, now: float | None = None) -> None:
        """Unlink the handoff segments of workers dead for HANDOFF_GRACE (all, with None)."""
        keep = []
        for pid, since in self.dead_workers:
            if now is not None and now - since < HANDOFF_GRACE:
                keep.append((pid, since))
            else:
                remove_dead_owner(pid)
        self.dead_workers = keep

    def reclaim_dead_clients(self) -> None:
        """Free the channel slots of dead client processes and remove what they owned: their
        response rings, doorbell FIFOs and handoff pools."""
        self.remove_dead_workers_segments(time.monotonic())
        for slot, owner in self.ctl.channel_claims():
            # judged by the client's liveness lock, which works across PID namespaces
            if owner is None or registry.owner_alive(owner):
                continue
            if self.ctl.claimant(slot) != owner:  # freed and claimed again
                continue
            self.ctl.free_channel(slot)
            self.channels.drop(slot)
            remove_dead_owner(owner.pid, owner.id)
            self.log.info("reclaimed channel %d of dead client pid %d", slot, owner.pid)

    # -- stopping -----------------------------------------------------------------------------

    def stop(self, drain: float) -> None:
        self.ctl.state = STOPPING
        registry.withdraw(self.name, self.namespace, self.ctl.name)
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
                self.dead_workers.append((p.pid, 0.0))
        self.remove_dead_workers_segments()
        for w in self.workers:
            if w.launched is not None:
                w.launched.close()
            if w.held is not None:
                with contextlib.suppress(Exception):
                    w.held.segment.unlink()
                w.held.close()
                w.held = None
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
            for ring in self.all_request_rings():
                with contextlib.suppress(Exception):
                    ring.unlink()
                with contextlib.suppress(Exception):
                    ring.close()
            self.retired.clear()
            with contextlib.suppress(Exception):
                self.ctl.segment.unlink()
            self.ctl.close()

    def _fail_held(self, w: _WorkerProc, message: str) -> int:
        """Fail with WorkerDied every call a dead worker held; returns how many. Its
        held-calls table names them (full generation and deadline); a record it had taken
        but not yet given back (it died in between) is found in the ring too."""
        calls: dict[int, tuple[int, int, float]] = {}
        if w.held is not None:
            try:
                for tag, gen, deadline in w.held.snapshot():
                    calls[tag] = (gen, -1, deadline)
            except Exception as exc:  # the worker restarts all the same
                self.log.error("cannot read the calls worker %d held: %s", w.index, exc)
        for ring in self.all_request_rings():
            try:
                for _kind, tag, head in ring.release_taken_with_head(w.index + 1,
                                                                     P.PREFIX_SIZE):
                    _slot, gen, mask = P.request_route(tag, head)
                    calls.setdefault(tag, (gen, mask, 0.0))
            except Exception as exc:  # hostile bytes in the ring
                self.log.error("cannot find the records worker %d held: %s", w.index, exc)
        for tag, (gen, mask, deadline) in calls.items():
            self.answer(tag, P.DIED, message, gen, mask, deadline)
        return len(calls)

    def _fail_queued(self) -> None:
        """Answer the calls still queued: nobody will run them now. A corrupt ring (hostile
        bytes) resynchronises after an error; one that keeps failing is given up on."""
        for ring in self.all_request_rings():
            self._drain(ring)

    def _drain(self, ring: Ring) -> None:
        errors = 0
        while errors < 3:
            try:
                rec = ring.take_past_reservations(taker=0)
            except Exception as exc:
                errors += 1
                self.log.warning("draining the request ring of runner %r: %s", self.name, exc)
                continue
            if rec is None:
                return
            tag = rec.tag
            _slot, gen, mask = P.request_route(tag, memoryview(rec.buffer)[: P.PREFIX_SIZE])
            rec.release()
            self.answer(tag, P.ERROR, f"runner {self.name!r}: the server is stopping: this call "
                        "was queued and did not run; call again once a server runs", gen, mask)


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
                    if existing is not None and not is_mine(existing.control):
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
                    stalled = False
                    for s in self.served:
                        if s.stalled:
                            s.retry_stalled()
                            stalled = stalled or bool(s.stalled)
                    now = time.monotonic()
                    if now >= next_reclaim:
                        next_reclaim = now + RECLAIM_INTERVAL
                        for s in self.served:
                            try:
                                s.reclaim_dead_clients()
                            except Exception:
                                log.exception("reclaiming client channels failed")
                            try:
                                s.check_request_ring()
                            except Exception:
                                log.exception("checking the request ring failed")
                timeout = max(next_reclaim - time.monotonic(), 0.0)
                if not watching:  # no pidfd support: poll
                    timeout = min(timeout, SUPERVISE_INTERVAL)
                if stalled:
                    timeout = min(timeout, RETRY_STALLED)
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

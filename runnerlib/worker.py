"""The worker process: takes calls from the runner's request ring, batches them, runs the
Runnable, and writes each answer into the calling client's channel ring.

It is started by the server as ``python -m runnerlib.worker`` with its environment already set
(CUDA_VISIBLE_DEVICES, thread variables), reads its ``WorkerSpec`` as JSON on stdin, pins
itself, and only then imports the Runnable's module, so the module sees the environment.
It answers ``{"ok": true}`` on stdout once the Runnable is built, or the error that stopped it.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import pickle
import runpy
import signal
import sys
import time
import traceback
from typing import Any

import msgspec
import pyarrow as pa

from batching import (
    Assembler,
    Overloaded,
    PendingCall,
    call_signature,
    join_results,
    run_batch,
    run_batch_async,
    split_call,
)
from ipc import codec
from ipc.doorbell import Doorbell
from ipc.errors import CorruptRecord, EncodeError, RingFull
from ipc.handoff import HandoffPool, HandoffReader
from ipc.ring import Ring
from runnerlib import protocol as P
from runnerlib.control import (
    H_NWORKERS,
    W_BATCH_HIST,
    W_BATCHES,
    W_CALLS,
    W_ERRORS,
    W_EXEC_NS,
    W_HIST,
    W_INFLIGHT,
    W_QUEUED,
    W_READY,
    W_REQUESTS,
    W_ROWS,
    W_STATE,
    W_STOPPED,
    W_WAIT_NS,
    WORKERS_BELL_OFFSET,
    ChannelCache,
    Control,
    hist_bucket,
)

log = logging.getLogger("runnerlib.worker")  # replaced by the runner's logger in main()

SYNC, ASYNC, GEN, AGEN = "sync", "async", "gen", "agen"
IDLE_WAKE = 1.0  # seconds between liveness checks of the parent while idle
#: How long a worker spins for the next call before it sleeps (a wake-up between CPUs costs
#: 25-40 us; spinning is what makes back-to-back calls fast).
SPIN = float(os.environ.get("RUNNERLIB_WORKER_SPIN_US", "150")) * 1e-6


class MethodSpec(msgspec.Struct, frozen=True):
    name: str
    kind: str = SYNC
    batchable: bool = False
    batch_dim_in: int = 0
    batch_dim_out: int = 0
    max_batch_size: int = 100
    max_latency_ms: float = 60000.0


class WorkerSpec(msgspec.Struct, frozen=True):
    runner: str
    index: int
    class_ref: str
    init_params: bytes
    methods: list[MethodSpec]
    control: str
    request_ring: str
    cpus: list[int] = []
    main_path: str | None = None
    sys_path: list[str] = []
    allow_pickle: bool = True
    batching_enabled: bool = True
    on_overload: str = "queue"
    log_level: int = logging.WARNING


def import_class(ref: str, main_path: str | None) -> type:
    """Import ``module:qualname``; a class of the parent's ``__main__`` is found by running the
    parent's script as ``__mp_main__`` (its ``if __name__ == "__main__":`` block stays idle)."""
    module_name, _, qualname = ref.partition(":")
    if module_name == "__main__":
        if "__mp_main__" not in sys.modules:
            if not main_path:
                raise ImportError(
                    f"{ref}: the Runnable is defined in __main__ of an interactive session; "
                    "define it in an importable module"
                )
            mod_globals = runpy.run_path(main_path, run_name="__mp_main__")
            module = type(sys)("__mp_main__")
            module.__dict__.update(mod_globals)
            sys.modules["__mp_main__"] = module
        module = sys.modules["__mp_main__"]
    else:
        module = importlib.import_module(module_name)
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _many_entries(buf: pa.Buffer) -> list[tuple[int, int, float, pa.Buffer]]:
    """(tag, method index, deadline, message) of each call in a CALL | MANY record; every
    count, offset and length is checked against the record."""
    size = buf.size
    head = P.PREFIX_SIZE + P.MANY_HEAD.size
    if size < head:
        raise ValueError("MANY record shorter than its header")
    (n,) = P.MANY_HEAD.unpack_from(buf, P.PREFIX_SIZE)
    if n == 0 or head + n * P.ENTRY.size > size:
        raise ValueError(f"MANY record claims {n} calls, which do not fit in {size} bytes")
    out = []
    at = head
    for _ in range(n):
        tag, midx, deadline, off, length = P.ENTRY.unpack_from(buf, at)
        at += P.ENTRY.size
        if off < head + n * P.ENTRY.size or off + length > size:
            raise ValueError(f"MANY record entry at {off}+{length} lies outside the record")
        out.append((tag, midx, deadline, buf.slice(off, length)))
    return out


def error_payload(exc: BaseException) -> dict[str, str]:
    # the transport's own errors reach callers as the types they document
    if isinstance(exc, EncodeError):
        module, name = "builtins", "TypeError"
    elif isinstance(exc, CorruptRecord):
        module, name = "runnerlib.errors", "ProtocolError"
    else:
        module, name = type(exc).__module__, type(exc).__qualname__
    return {
        "type": name,
        "module": module,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
    }


class _Job:
    """One client call inside this worker, possibly split into several batch parts."""

    __slots__ = ("tag", "record", "sent", "parts", "results", "failed", "method")

    def __init__(self, tag: int, record: Any, sent: float, nparts: int, method: int) -> None:
        self.tag = tag
        self.record = record
        self.sent = sent
        self.parts = nparts
        self.results: list[Any] = [None] * nparts
        self.failed: BaseException | None = None
        self.method = method


class Worker:
    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.ppid = os.getppid()
        self.stopping = False
        runnable_class = import_class(spec.class_ref, spec.main_path)
        init_params = pickle.loads(spec.init_params) if spec.init_params else {}
        self.runnable = runnable_class(**init_params)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.methods = spec.methods
        self.fns = [getattr(self.runnable, m.name) for m in spec.methods]
        self.ctl = Control.attach(spec.control)
        # this worker's counters, as a memoryview of the same shared words: a Python int per
        # update, at half the cost of a numpy scalar (several updates per call)
        self.row = memoryview(self.ctl.workers[spec.index])
        self.requests = Ring.attach(spec.request_ring)
        self.bell = Doorbell.attach(self.ctl.segment, WORKERS_BELL_OFFSET)
        self.taker = spec.index + 1
        self.channels = ChannelCache(self.ctl)
        self.handoffs = HandoffPool()
        self.handoff_reader = HandoffReader()
        self.outbox: dict[int, list[tuple[int, int, Any]]] | None = None
        self.assemblers: dict[int, Any] = {}
        self._read_ahead = sum(m.max_batch_size for m in spec.methods if m.batchable) or 1
        if spec.batching_enabled:
            for i, m in enumerate(spec.methods):
                if m.batchable:
                    self.assemblers[i] = Assembler(
                        m.max_batch_size, m.max_latency_ms, on_overload=spec.on_overload
                    )

    # -- main loop ------------------------------------------------------------------------

    def serve(self) -> None:
        self.row[W_STATE] = W_READY
        self.row[W_QUEUED] = 0
        requests = self.requests
        while True:
            took = False
            while self._want_more():
                try:
                    rec = requests.take(taker=self.taker)
                except CorruptRecord as exc:  # foreign bytes in the ring: it resynchronised
                    log.error("request ring: %s", exc)
                    continue
                if rec is None:
                    break
                took = True
                self._accept(rec)
                if not self.assemblers:
                    break
            ran = self._dispatch_ready(force=self.stopping)
            if took or ran:
                continue
            if self.stopping:
                return
            wait = IDLE_WAKE
            for asm in self.assemblers.values():
                t = asm.time_to_next()
                if t is not None:
                    wait = min(wait, max(t, 0.0))
            if wait > 0:
                self.bell.wait(requests.has_pending, spin=min(SPIN, wait), timeout=wait)
            if os.getppid() != self.ppid:
                log.warning("server process died; worker %d exits", self.spec.index)
                self.stopping = True

    def _want_more(self) -> bool:
        """Take another call from the shared request ring now?

        Calls taken into this worker's assemblers can only run here. So take one only where
        holding it gains something: while every batch this worker is putting together can
        still grow (the call may join it; a call waiting in the ring is company for sure).
        Once a batch is full or other calls queue behind it, it is ready to run and anything
        more would only wait here while another worker could serve it (SPEC 7: no worker idles
        while calls wait that it could take). A worker with no live sibling keeps reading
        ahead, up to one full batch per batchable method, to group mixed shapes better.
        """
        held = [a for a in self.assemblers.values() if a.pending()]
        if not held or all(a.can_grow() for a in held):
            return True
        if sum(a.pending_rows() for a in held) >= self._read_ahead:
            return False
        return not self._siblings_ready()

    def _siblings_ready(self) -> bool:
        """Is another worker of this runner ready to take calls?"""
        n = min(int(self.ctl.header[H_NWORKERS]), len(self.ctl.workers))
        states = self.ctl.workers[:n, W_STATE]
        return bool(((states == W_READY).sum() - (states[self.spec.index] == W_READY
                                                     if self.spec.index < n else 0)) > 0)

    # -- one incoming record ---------------------------------------------------------------

    def _accept(self, rec: Any) -> None:
        kind, tag = rec.kind, rec.tag
        midx = kind & P.METHOD_MASK
        try:
            if kind & P.TYPE_MASK != P.CALL or midx >= len(self.methods):
                raise ValueError(f"unexpected request record kind {kind:#x}")
            buf = rec.buffer
            sent, deadline = P.PREFIX.unpack_from(buf, 0)
            if kind & P.MANY:
                calls = _many_entries(buf)
            else:
                body = buf.slice(P.PREFIX_SIZE)
                if kind & P.BIG:
                    body = self._open_big(body)
                calls = [(tag, midx, deadline, body)]
        except Exception as exc:  # corrupt or hostile bytes: this record fails alone
            rec.release()
            self._answer(tag, P.ERROR, error_payload(exc))
            return
        copy = self.requests.used_fraction() > 0.5
        for tag, midx, deadline, body in calls:
            try:
                if midx >= len(self.methods):
                    raise ValueError(f"no method with index {midx}")
                args, kwargs = codec.decode(body, copy=copy)
            except Exception as exc:
                self._answer(tag, P.ERROR, error_payload(exc))
                continue
            del body
            if deadline and time.monotonic() > deadline:
                continue  # the caller has given up already
            self.row[W_REQUESTS] += 1
            self.row[W_INFLIGHT] += 1
            asm = self.assemblers.get(midx)
            if asm is None:
                self._run_single(_Job(tag, rec, sent, 1, midx), args, kwargs)
            else:
                self._enqueue(asm, self.methods[midx], rec, tag, sent, midx, args, kwargs)
            del args, kwargs

    def _enqueue(self, asm, spec, rec, tag, sent, midx, args, kwargs) -> None:  # type: ignore[no-untyped-def]
        try:
            key, rows = call_signature(args, kwargs, spec.batch_dim_in)
            if rows > spec.max_batch_size:
                parts = split_call(args, kwargs, spec.batch_dim_in, spec.max_batch_size)
                sizes = [call_signature(a, k, spec.batch_dim_in)[1] for a, k in parts]
            else:
                parts, sizes = [(args, kwargs)], [rows]
        except Exception as exc:
            # not batchable as sent (ragged arguments, say): run it on its own
            log.debug("call %x not batchable: %s", tag, exc)
            self._run_single(_Job(tag, rec, sent, 1, midx), args, kwargs)
            return
        now = time.monotonic()
        # The caller's send time (CLOCK_MONOTONIC is system-wide), so that the deadline, the
        # overload check and the arrival statistics count the time spent in the request ring;
        # a value from shared memory is trusted only when plausible.
        arrived = sent if now - 3600.0 < sent <= now else now
        job = _Job(tag, rec, sent, len(parts), midx)
        try:
            asm.add_all([
                PendingCall(rows=n, key=key, arrived=arrived, payload=(job, i, a, k))
                for i, ((a, k), n) in enumerate(zip(parts, sizes, strict=True))
            ])
        except Overloaded as exc:
            from runnerlib.errors import RunnerOverloaded

            self._finish_error(job, RunnerOverloaded(str(exc)))
            return
        except Exception as exc:  # nothing was queued
            self._finish_error(job, exc)
            return
        self.row[W_QUEUED] += len(parts)

    def _open_big(self, body: pa.Buffer) -> pa.Buffer:
        return self.handoff_reader.open(body)

    # -- running -----------------------------------------------------------------------------

    def _call(self, midx: int, args: tuple, kwargs: dict) -> Any:
        fn = self.fns[midx]
        if self.methods[midx].kind == ASYNC:
            return self._loop().run_until_complete(fn(*args, **kwargs))
        return fn(*args, **kwargs)

    def _loop(self) -> asyncio.AbstractEventLoop:
        if self.loop is None:
            self.loop = asyncio.new_event_loop()
        return self.loop

    def _run_single(self, job: _Job, args: tuple, kwargs: dict) -> None:
        kind = self.methods[job.method].kind
        t0 = time.monotonic()
        try:
            if kind == GEN:
                for chunk in self.fns[job.method](*args, **kwargs):
                    self._answer(job.tag, P.CHUNK, chunk)
                result = None
            elif kind == AGEN:
                result = None
                agen = self.fns[job.method](*args, **kwargs)
                loop = self._loop()
                while True:
                    try:
                        chunk = loop.run_until_complete(agen.__anext__())
                    except StopAsyncIteration:
                        break
                    self._answer(job.tag, P.CHUNK, chunk)
            else:
                result = self._call(job.method, args, kwargs)
        except Exception as exc:
            del args, kwargs
            self._finish_error(job, exc)
            return
        del args, kwargs
        self._account(1, 1, time.monotonic() - t0)
        self._finish_ok(job, result, P.END if kind in (GEN, AGEN) else P.OK)

    def _dispatch_ready(self, force: bool = False) -> bool:
        ran = False
        for midx, asm in self.assemblers.items():
            while True:
                batch = asm.next_batch() if not force else asm.next_batch(force=True)
                if not batch:
                    break
                ran = True
                self._run_batch(midx, asm, batch)
        return ran

    def _run_batch(self, midx: int, asm: Any, batch: list) -> None:  # type: ignore[type-arg]
        spec = self.methods[midx]
        self.row[W_QUEUED] -= len(batch)
        # Chunks of a split call that has failed already were answered: drop them (their
        # arguments may be views of a request record released since).
        live = []
        for pc in batch:
            if pc.payload[0].failed is None:
                live.append(pc)
            else:
                pc.payload = None
        if not live:
            asm.record(0, 0.0, ran=False)
            return
        calls = [(pc.payload[2], pc.payload[3]) for pc in live]
        rows = sum(pc.rows for pc in live)
        t0 = time.monotonic()
        wait_ns = sum(int(max(t0 - pc.arrived, 0.0) * 1e9) for pc in live)
        if spec.kind == ASYNC:
            outcomes = self._loop().run_until_complete(
                run_batch_async(self.fns[midx], calls, spec.batch_dim_in, spec.batch_dim_out)
            )
        else:
            outcomes = run_batch(self.fns[midx], calls, spec.batch_dim_in, spec.batch_dim_out)
        elapsed = time.monotonic() - t0
        asm.record(rows, elapsed)  # before any answer: see batching.assembler
        self._account(1, rows, elapsed, wait_ns, calls=len(live))
        del calls
        self.outbox = {}
        try:
            self._settle(spec, live, outcomes)
        finally:
            self._flush_outbox()

    def _settle(self, spec: MethodSpec, live: list, outcomes: list) -> None:  # type: ignore[type-arg]
        for pc, outcome in zip(live, outcomes, strict=True):
            job, part = pc.payload[0], pc.payload[1]
            pc.payload = None
            if job.failed is not None:
                continue
            if outcome.error is not None:
                job.failed = outcome.error
                self._finish_error(job, outcome.error)
                continue
            job.results[part] = outcome.value
            job.parts -= 1
            if job.parts == 0:
                try:
                    value = (
                        job.results[0]
                        if len(job.results) == 1
                        else join_results(job.results, spec.batch_dim_out)
                    )
                except Exception as exc:  # chunks whose results do not join back
                    job.failed = exc
                    self._finish_error(job, exc)
                    continue
                finally:
                    job.results = []
                self._finish_ok(job, value, P.OK)

    def _account(self, batches: int, rows: int, seconds: float, wait_ns: int = 0,
                 calls: int | None = None) -> None:
        row = self.row
        row[W_BATCHES] += batches
        row[W_CALLS] += batches if calls is None else calls
        row[W_ROWS] += rows
        row[W_EXEC_NS] += int(seconds * 1e9)
        row[W_WAIT_NS] += wait_ns
        row[W_BATCH_HIST + hist_bucket(rows)] += 1

    # -- answering ---------------------------------------------------------------------------

    def _finish_ok(self, job: _Job, value: Any, kind: int) -> None:
        if self.outbox is not None:
            self.outbox.setdefault(job.tag >> P.SEQ_BITS, []).append((job.tag, kind, value))
        else:
            self._answer_or_error(job.tag, kind, value)
        self._done(job)

    def _answer_or_error(self, tag: int, kind: int, value: Any) -> None:
        try:
            self._answer(tag, kind, value)
        except TypeError as exc:  # a result the codec cannot carry
            self._answer(tag, P.ERROR, error_payload(exc))
            self.row[W_ERRORS] += 1

    def _finish_error(self, job: _Job, exc: BaseException) -> None:
        self.row[W_ERRORS] += 1
        if self.outbox is not None:
            self.outbox.setdefault(job.tag >> P.SEQ_BITS, []).append(
                (job.tag, P.ERROR, error_payload(exc)))
        else:
            self._answer(job.tag, P.ERROR, error_payload(exc))
        self._done(job)

    def _done(self, job: _Job) -> None:
        self.row[W_INFLIGHT] -= 1
        micros = (time.monotonic() - job.sent) * 1e6
        self.row[W_HIST + hist_bucket(micros)] += 1
        # the request record is released when its last view dies, never earlier: a
        # Runnable may keep views of its inputs
        job.record = None

    def _flush_outbox(self) -> None:
        """Send the answers a batch produced: one record (and one wake-up) per channel."""
        outbox, self.outbox = self.outbox, None
        if not outbox:
            return
        for answers in outbox.values():
            if len(answers) == 1:
                self._answer_or_error(*answers[0])
                continue
            try:
                self._answer(0, P.MULTI, answers, route=answers[0][0])
            except TypeError:  # one value the codec cannot carry: answer one by one
                for a in answers:
                    self._answer_or_error(*a)

    def _answer(self, tag: int, kind: int, value: Any, route: int | None = None) -> None:
        answer(self.ctl, self.channels.get, tag, kind, value, self.spec.allow_pickle, self.handoffs,
               route)


def answer(ctl: Control, channel_of: Any, tag: int, kind: int, value: Any,
           allow_pickle: bool = True, handoffs: Any = None, route: int | None = None) -> bool:
    """Encode ``value`` straight into the calling channel's ring and wake its owner.

    Shared by workers and the supervisor (which answers the calls of dead workers). A value
    larger than a ring record goes through a handoff segment of ``handoffs``. Returns False
    when the caller is gone (its channel was closed or reclaimed)."""
    slot, gen, _ = P.split_tag(tag if route is None else route)
    ch = channel_of(slot, gen)
    if ch is None:
        return False
    ring, bell = ch
    plan = codec.encode(value, allow_pickle=allow_pickle)
    nbytes = plan.nbytes
    ref = None
    if nbytes > ring.max_record:
        if handoffs is None:
            raise ValueError(f"an answer of {nbytes} bytes needs a handoff pool")
        ref, view = handoffs.acquire(nbytes)
        plan.write_into(view)
        kind |= P.BIG
        nbytes = len(ref)
    try:
        res = ring.reserve(nbytes, kind=kind, tag=tag, alive=lambda: ctl.channel_live(slot, gen))
    except RingFull:
        if ref is not None:
            handoffs.cancel(ref)
        return False
    if ref is None:
        plan.write_into(res.buf)
    else:
        res.buf[:nbytes] = ref
    res.commit()
    bell.ring()
    return True


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle
    global log
    spec = msgspec.json.decode(sys.stdin.buffer.read(), type=WorkerSpec)
    log = logging.getLogger(f"runnerlib.runner.{spec.runner}")  # one logger per runner
    logging.basicConfig(level=spec.log_level, format=f"%(name)s[{spec.runner}:{spec.index}] "
                        "%(levelname)s %(message)s")
    if spec.cpus:
        try:
            os.sched_setaffinity(0, spec.cpus)
        except OSError as exc:
            log.warning("cannot pin to CPUs %s: %s", spec.cpus, exc)
    for p in reversed(spec.sys_path):
        if p not in sys.path:
            sys.path.insert(0, p)
    out = sys.stdout
    try:
        worker = Worker(spec)
    except BaseException as exc:
        out.write(msgspec.json.encode({"ok": False, **error_payload(exc)}).decode() + "\n")
        out.flush()
        sys.exit(1)
    out.write('{"ok": true}\n')
    out.flush()

    def on_term(signum: int, frame: Any) -> None:
        worker.stopping = True

    signal.signal(signal.SIGTERM, on_term)
    try:
        worker.serve()
    finally:
        worker.row[W_STATE] = W_STOPPED
        worker.handoffs.close()


if __name__ == "__main__":
    main()

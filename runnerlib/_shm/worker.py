"""The worker process: takes calls from the runner's request ring, batches them, runs the
Runnable, and writes each answer into the calling client's channel ring.

Started by the supervisor (see ``startup``), which has set its environment; it reads its
``WorkerSpec`` from its control channel, pins itself, and only then imports the Runnable's
module, so the module sees the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import pickle
import signal
import socket
import sys
import time
import types
from collections import deque
from collections.abc import Callable
from typing import Any

from batching import (
    Assembler,
    Outcome,
    Overloaded,
    PendingCall,
    call_signature,
    join_results,
    run_batch,
    run_batch_async,
    split_call,
)
from ipc import codec, fastpath, shared
from ipc.codec import echo
from ipc.doorbell import Doorbell
from ipc.errors import CorruptRecord, EncodeError, IpcError, RingFull
from ipc.handoff import HandoffPool, HandoffReader, Lease
from ipc.ring import CopiedRecord, Record, Ring
from runnerlib import errors
from runnerlib._shm import budget, startup
from runnerlib._shm import protocol as P
from runnerlib._shm.control import (
    BATCH_HIST_BUCKETS,
    H_NWORKERS,
    H_REQ_EPOCH,
    H_SHM_BUDGET,
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
    HeldCalls,
    hist_bucket,
)
from runnerlib.settings import MethodKind, MethodSpec

log = logging.getLogger("runnerlib.worker")  # replaced by the runner's logger in main()

IDLE_WAKE = 1.0  # seconds between liveness checks of the parent while idle
#: How long a worker spins for the next call before it sleeps (a wake-up between CPUs costs
#: 25-40 us; spinning is what makes back-to-back calls fast).
SPIN = float(os.environ.get("RUNNERLIB_WORKER_SPIN_US", "150")) * 1e-6
#: How often a worker retries answers whose channel was full (the client is busy, stopped or
#: in a debugger). It never waits for one client: those answers wait in its memory, in order,
#: until they fit or their call's deadline passes.
RETRY_STALLED = 0.002
#: How long a worker keeps draining a request ring the server moved away from.
RETIRED_GRACE = 30.0
OLD_RING_POLL = 0.05  # how often it looks into those meanwhile
#: How long an answer to a record that failed before its deadline could be read may wait.
UNREAD_DEADLINE = 5.0
#: Calls a worker keeps room for in its held-calls table before it stops taking more (at least
#: the most calls one MANY record may carry).
HELD_RESERVE = 512
STOPPING = "the server is stopping: this call was queued and did not run; call again once " \
    "a server runs"
STOPPING_PAYLOAD = P.runner_error_payload(errors.RunnerError, STOPPING)

Args = tuple[tuple[object, ...], dict[str, object]]
#: (tag, kind, value, deadline, held-table entry or -1)
Answer = tuple[int, int, object, float, int]
#: A batch's answers, per calling channel: (slot, full generation) -> answers
Outbox = dict[tuple[int, int], list[Answer]]
#: What a method may return to stream its result (a generator, or an async generator)
_STREAMS = (types.GeneratorType, types.AsyncGeneratorType)
#: The batch-size histogram's word for a batch of one row
_ONE_ROW_BUCKET = W_BATCH_HIST + min(hist_bucket(1), BATCH_HIST_BUCKETS - 1)


class _Job:
    """One client call inside this worker, possibly split into several batch parts."""

    __slots__ = ("tag", "gen", "held", "sent", "deadline", "parts", "results", "failed",
                 "method")

    def __init__(self, tag: int, gen: int, held: int, sent: float, deadline: float,
                 nparts: int, method: int) -> None:
        self.tag = tag
        self.gen = gen
        self.held = held  # its entry in the held-calls table, until its answer is written
        self.sent = sent
        self.deadline = deadline
        self.parts = nparts
        self.results: list[object] = [None] * nparts
        self.failed: BaseException | None = None
        self.method = method


class _Part:
    """One batch part of a job, as the assembler carries it."""

    __slots__ = ("job", "index", "args", "kwargs")

    def __init__(self, job: _Job, index: int, args: tuple[object, ...], kwargs: dict[str, object]):
        self.job = job
        self.index = index
        self.args = args
        self.kwargs = kwargs


class Worker:
    def __init__(self, spec: startup.WorkerSpec) -> None:
        self.spec = spec
        self.ppid = os.getppid()
        self.stopping = False
        runnable_class = startup.import_class(spec.class_ref, spec.main_path)
        init_params = pickle.loads(spec.init_params) if spec.init_params else {}
        self.runnable = runnable_class(**init_params)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.methods: list[MethodSpec] = spec.methods
        self.fns: list[Callable[..., Any]] = [getattr(self.runnable, m.name) for m in spec.methods]
        self.allow_pickle = spec.allow_pickle
        self.ctl = Control.attach(spec.control)
        # this worker's counters, as a memoryview of the same shared words: a Python int per
        # update, at half the cost of a numpy scalar (several updates per call)
        self.row = memoryview(self.ctl.workers[spec.index])
        self.req_epoch, current = self.ctl.request_ring()
        self.requests = Ring.attach(current or spec.request_ring)
        #: request rings the server has moved away from (a stopped writer pinned them), still
        #: drained of what was committed into them for RETIRED_GRACE: (ring, when retired)
        self.old_requests: list[tuple[Ring, float]] = []
        self._header = self.ctl.header.data
        self.bell = Doorbell.attach(self.ctl.segment, WORKERS_BELL_OFFSET)
        self.taker = spec.index + 1
        self.channels = ChannelCache(self.ctl)
        self.handoffs = HandoffPool(budget.handoff_keep(self.ctl))
        self.message_limit = budget.message_limit(self.ctl)  # the server's budget, 0: none
        shared.set_limit(int(self.ctl.header[H_SHM_BUDGET]))  # runnerlib.shared_array's cap
        self.handoff_reader = HandoffReader(budget.reader_keep(self.ctl))
        self.held = HeldCalls.attach(spec.held) if spec.held else None
        self.outbox: Outbox | None = None
        #: answers waiting for room in their channel, per (slot, full generation), in order
        self.stalled: dict[tuple[int, int], deque[_Stalled]] = {}
        self.assemblers: dict[int, Assembler] = {}
        self._read_ahead = sum(m.max_batch_size for m in spec.methods if m.batchable) or 1
        if spec.batching_enabled:
            for i, m in enumerate(spec.methods):
                if m.batchable:
                    self.assemblers[i] = Assembler(
                        m.max_batch_size, m.max_latency_ms, on_overload=spec.on_overload
                    )
        #: the record kinds ``_direct`` serves: a single call (inline, or by handoff: BIG) to
        #: a method that is neither batched nor async
        self.direct = frozenset(P.CALL | big | i for i, m in enumerate(spec.methods)
                                if i not in self.assemblers and m.kind is not MethodKind.ASYNC
                                for big in (0, P.BIG))

    # -- main loop ------------------------------------------------------------------------

    def serve(self) -> None:
        self.row[W_STATE] = W_READY
        self.row[W_QUEUED] = 0
        requests = self.requests
        direct = self.direct
        while True:
            if self._header[H_REQ_EPOCH] != self.req_epoch:
                requests = self._follow_requests()
            took = drained = False
            while not self.stopping and self._want_more():
                try:
                    got = requests.take_copy(taker=self.taker, max_copy=COPY_MAX, release=False)
                except CorruptRecord as exc:  # foreign bytes in the ring: it resynchronised
                    log.error("request ring: %s", exc)
                    continue
                if type(got) is tuple and got[0] in direct:  # the usual call
                    took = True
                    self._direct(requests, *got)
                    del got
                    if requests.has_pending():
                        continue
                    drained = True  # nothing more: straight to the wait below
                    break
                try:
                    rec: Record | CopiedRecord | None = (
                        CopiedRecord(got[0], got[1], got[2], requests, got[3])
                        if isinstance(got, tuple) else got)
                    if rec is None and self.old_requests:
                        rec = self._take_old()
                except CorruptRecord as exc:  # foreign bytes in the ring: it resynchronised
                    log.error("request ring: %s", exc)
                    continue
                if rec is None:
                    break
                took = True
                self._accept(rec)
                if not self.assemblers:
                    break
            if self.stopping:
                self._fail_queued()
                while self.stalled:  # bounded by their deadlines (and the drain deadline)
                    self._retry_stalled()
                    if self.stalled:
                        time.sleep(RETRY_STALLED)
                return
            ran = self._dispatch_ready() if self.assemblers else False
            if self.stalled:
                self._retry_stalled()
            if ran or took and not drained:
                continue
            wait = RETRY_STALLED if self.stalled else IDLE_WAKE
            for asm in self.assemblers.values():
                t = asm.time_to_next()
                if t is not None:
                    wait = min(wait, max(t, 0.0))
            if self.old_requests:  # a late commit into an old ring rings no condition here
                wait = min(wait, OLD_RING_POLL)
            if wait > 0:
                shared.sweep()  # give back shared arrays let go of (cheap when there are none)
                self.bell.wait(requests.has_pending, spin=min(SPIN, wait), timeout=wait,
                               waiter=self.spec.index, spinner=requests.spin_pending)
            if os.getppid() != self.ppid:
                log.warning("server process died; worker %d exits", self.spec.index)
                self.stopping = True

    def _follow_requests(self) -> Ring:
        """The server moved the runner to a fresh request ring: take from it from now on,
        and drain the old one of what was committed into it for RETIRED_GRACE."""
        epoch, name = self.ctl.request_ring()
        try:
            ring = Ring.attach(name)
        except Exception as exc:  # noqa: BLE001 - try again on the next round
            log.error("cannot attach the new request ring %s: %s", name, exc)
            return self.requests
        self.old_requests.append((self.requests, time.monotonic()))
        self.requests, self.req_epoch = ring, epoch
        return ring

    def _take_old(self) -> Record | None:
        now = time.monotonic()
        for i, (ring, since) in enumerate(self.old_requests):
            rec = ring.take_past_reservations(taker=self.taker)
            if rec is not None:
                return rec
            if now - since > RETIRED_GRACE:
                del self.old_requests[i]
                ring.close()
                break
        return None

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
        if self.held is not None and self.held.free < HELD_RESERVE:
            return False  # answer some first: each call taken needs an entry
        if not self.assemblers:
            return True  # nothing is held back for a batch here
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
        mine = int(states[self.spec.index] == W_READY) if self.spec.index < n else 0
        return int((states == W_READY).sum()) - mine > 0

    # -- one incoming record ---------------------------------------------------------------

    def _accept(self, rec: Record | CopiedRecord) -> None:
        try:
            calls = P.read_calls(rec, self.handoff_reader,  # type: ignore[arg-type]
                                 len(self.methods))
        except Exception as exc:  # corrupt or hostile bytes: this record fails alone
            rec.release()
            # no prefix to trust: route by the generation bits of the record's tag
            self._answer(rec.tag, P.ERROR, P.error_payload(exc),
                         time.monotonic() + UNREAD_DEADLINE, P.split_tag(rec.tag)[1], P.GEN_MASK)
            return
        if self.stopping:  # taken while the server stops: these calls were only queued
            rec.release()
            for call in calls:
                self._answer(call.tag, P.ERROR, STOPPING_PAYLOAD, call.deadline, call.channel_gen)
            return
        # Inline arguments are copied out as they are decoded and the record goes back to the
        # ring below, before anything runs: a Runnable that keeps its inputs keeps private
        # memory (or a handoff segment of its own), never ring space. Which calls this worker
        # holds is recorded in its held-calls table first, for the supervisor.
        decoded = []
        now = time.monotonic()  # one look for the whole record: its calls came together
        try:
            for call in calls:
                try:
                    if call.method >= len(self.methods):
                        raise CorruptRecord(f"no method with index {call.method}")
                    args, kwargs = P.decode_arguments(call.body, copy=call.inline,
                                                      allow_pickle=self.allow_pickle)
                except Exception as exc:
                    self._answer(call.tag, P.ERROR, P.error_payload(exc), call.deadline,
                                 call.channel_gen)
                    continue
                if call.deadline and now > call.deadline:
                    continue  # the caller has given up already
                held = -1 if self.held is None else self.held.add(call.tag, call.channel_gen,
                                                                   call.deadline)
                decoded.append((call, held, args, kwargs))
                del args, kwargs
        finally:
            del calls
            rec.release()
        row = self.row
        row[W_REQUESTS] += len(decoded)
        row[W_INFLIGHT] += len(decoded)
        for call, held, args, kwargs in decoded:
            job = _Job(call.tag, call.channel_gen, held, call.sent, call.deadline, 1,
                       call.method)
            asm = self.assemblers.get(call.method)
            if asm is None:
                self._run_single(job, args, kwargs)
            else:
                self._enqueue(asm, self.methods[call.method], job, args, kwargs)
            del args, kwargs, job
        del decoded

    def _direct(self, ring: Ring, kind: int, tag: int, data: bytes, pos: int) -> None:
        """A single call to a plain method (``direct``: not batched, not async; inline or by
        handoff), from its record to its answer in one frame: what ``_accept``,
        ``_run_single`` and ``_answer`` do, for the usual call. Where it turns unusual (a
        record that does not read, an error, a stream, a result the fast send does not take,
        a full channel) the general path takes over from that point."""
        lease: Lease | None = None  # by handoff: the segment, where an echo can answer
        try:
            if kind & P.BIG:  # the prefix and a handoff's reference: opened below
                sent, deadline, gen = P.read_prefix(data)
                body, lease = self.handoff_reader.open_lease(
                    memoryview(data)[P.PREFIX_SIZE:])
            else:
                sent, deadline, gen, args, kwargs = P.read_single(
                    data, allow_pickle=self.allow_pickle)
        except Exception:  # read again by the general path, which answers the error
            self._accept(CopiedRecord(kind, tag, data, ring, pos))
            return
        ring.release_at(pos)
        del data
        if kind & P.BIG:  # opened: from here on its errors are answered, never read twice
            try:
                args, kwargs = P.decode_arguments(body, copy=False,
                                                  allow_pickle=self.allow_pickle)
            except Exception as exc:
                del body
                self._answer(tag, P.ERROR, P.error_payload(exc), deadline, gen)
                return
            del body
        now = time.monotonic()
        if deadline and now > deadline:
            return  # the caller has given up already
        held = -1 if self.held is None else self.held.add(tag, gen, deadline)
        row = self.row
        row[W_REQUESTS] += 1
        row[W_INFLIGHT] += 1
        midx = kind & P.METHOD_MASK
        try:
            result = self.fns[midx](*args, **kwargs)
        except Exception as exc:
            del args, kwargs
            self._finish_error(_Job(tag, gen, held, sent, deadline, 1, midx), exc)
            return
        del args, kwargs
        if isinstance(result, _STREAMS):  # a method that returns a generator streams
            self._finish_stream(_Job(tag, gen, held, sent, deadline, 1, midx), result, now)
            return
        row[W_EXEC_NS] += int((time.monotonic() - now) * 1e9)  # _account(1, 1, ...) inline
        row[W_BATCHES] += 1
        row[W_CALLS] += 1
        row[W_ROWS] += 1
        row[_ONE_ROW_BUCKET] += 1
        slot = P.slot_of(tag)
        try:
            plan = P.encode(result, allow_pickle=self.allow_pickle, limit=self.message_limit)
        except (EncodeError, IpcError, errors.TransportError):  # answered as an error
            self._finish_ok(_Job(tag, gen, held, sent, deadline, 1, midx), result, P.OK)
            return
        ch = None if self.stalled else self.channels.get(slot, gen)
        if ch is not None and (fastpath.send(ch[0], ch[1], P.OK, tag, plan, None,
                                             P.INLINE_LIMIT)
                               or lease is not None and self._echo(ch, tag, plan, lease)):
            if held >= 0:
                self.held.remove(held)  # type: ignore[union-attr]
        else:  # the general send: a large answer (no room for it is answered as an
            # error), a full or closed channel
            self._answer_or_error(tag, P.OK, result, deadline, gen, held=held, plan=plan)
        row[W_INFLIGHT] -= 1
        row[W_HIST + hist_bucket((time.monotonic() - sent) * 1e6)] += 1

    @staticmethod
    def _echo(ch: tuple[Ring, Doorbell], tag: int, plan: codec.Encoded, lease: Lease) -> bool:
        """An answer that is an array of the call's own handoff, as it came: written around
        that array in the same segment and handed back to the caller (ipc.codec.echo), so
        that nothing is copied back; False where it is not one, or the record does not go."""
        n = echo.write_around(plan, lease.message())
        if n is None:
            return False
        ref = lease.hand_back(n)
        if fastpath.send(ch[0], ch[1], P.OK | P.BIG, tag, codec.Encoded(len(ref), ref, []),
                         None, P.INLINE_LIMIT):
            return True
        lease.keep()  # the segment is ours again; the answer goes the general way
        return False

    def _enqueue(self, asm: Assembler, spec: MethodSpec, job: _Job, args: tuple[object, ...],
                 kwargs: dict[str, object]) -> None:
        try:
            key, rows = call_signature(args, kwargs, spec.batch_dim_in)
            if rows > spec.max_batch_size:
                parts = split_call(args, kwargs, spec.batch_dim_in, spec.max_batch_size)
                sizes = [call_signature(a, k, spec.batch_dim_in)[1] for a, k in parts]
            else:
                parts, sizes = [(args, kwargs)], [rows]
        except Exception as exc:
            # not batchable as sent (ragged arguments, say): run it on its own
            log.debug("call %x not batchable: %s", job.tag, exc)
            self._run_single(job, args, kwargs)
            return
        now = time.monotonic()
        # The caller's send time (CLOCK_MONOTONIC is system-wide), so that the deadline, the
        # overload check and the arrival statistics count the time spent in the request ring;
        # a value from shared memory is trusted only when plausible.
        arrived = job.sent if now - 3600.0 < job.sent <= now else now
        if len(parts) == 1:  # the usual case
            pending = [PendingCall(rows, key, arrived, _Part(job, 0, args, kwargs))]
        else:
            job.parts = len(parts)
            job.results = [None] * len(parts)
            pending = [PendingCall(n, key, arrived, _Part(job, i, a, k))
                       for i, ((a, k), n) in enumerate(zip(parts, sizes, strict=True))]
        try:
            asm.add_all(pending)
        except Overloaded as exc:
            self._finish_error(job, errors.RunnerOverloaded(str(exc)))
            return
        except Exception as exc:  # nothing was queued
            self._finish_error(job, exc)
            return
        self.row[W_QUEUED] += len(parts)

    # -- running -----------------------------------------------------------------------------

    def _loop(self) -> asyncio.AbstractEventLoop:
        if self.loop is None:
            self.loop = asyncio.new_event_loop()
        return self.loop

    def _run_single(self, job: _Job, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
        kind = self.methods[job.method].kind
        fn = self.fns[job.method]
        t0 = time.monotonic()
        try:
            result = fn(*args, **kwargs)
            if kind is MethodKind.ASYNC:
                result = self._loop().run_until_complete(result)
        except Exception as exc:
            del args, kwargs
            self._finish_error(job, exc)
            return
        del args, kwargs
        # a generator function, or any method that returns a generator, streams
        # (one isinstance on the hot path: inspect's checks cost more per call)
        if isinstance(result, _STREAMS):
            self._finish_stream(job, result, t0)
            return
        self._account(1, 1, time.monotonic() - t0)
        self._finish_ok(job, result, P.OK)

    def _finish_stream(self, job: _Job, result: types.GeneratorType[Any, None, None]
                       | types.AsyncGeneratorType[Any, None], t0: float) -> None:
        """Answer each item of a streamed result as a CHUNK, then END (or the error that
        ended it); the method ran from ``t0``."""
        try:
            if isinstance(result, types.GeneratorType):
                for chunk in result:
                    self._answer_or_error(job.tag, P.CHUNK, chunk, job.deadline, job.gen)
            else:
                loop = self._loop()
                while True:
                    try:
                        chunk = loop.run_until_complete(result.__anext__())
                    except StopAsyncIteration:
                        break
                    self._answer_or_error(job.tag, P.CHUNK, chunk, job.deadline, job.gen)
        except Exception as exc:
            self._finish_error(job, exc)
            return
        self._account(1, 1, time.monotonic() - t0)
        self._finish_ok(job, None, P.END)

    def _fail_queued(self) -> None:
        """The server is stopping: calls still waiting for a batch fail now, with an error
        that says so (a call whose batch is running already finishes first)."""
        self.outbox = {}
        try:
            for asm in self.assemblers.values():
                while True:
                    batch = asm.next_batch(force=True)
                    if not batch:
                        break
                    self.row[W_QUEUED] -= len(batch)
                    for pc in batch:
                        part: _Part = pc.payload
                        pc.payload = None
                        job = part.job
                        if job.failed is None:
                            job.failed = errors.RunnerError(STOPPING)
                            self.row[W_ERRORS] += 1
                            self._post(self.outbox, job, P.ERROR, STOPPING_PAYLOAD)
                            self._done(job)
                    asm.record(0, 0.0, ran=False)
        finally:
            self._flush_outbox()

    def _dispatch_ready(self, force: bool = False) -> bool:
        ran = False
        for midx, asm in self.assemblers.items():
            while True:
                batch = asm.next_batch(force=force)
                if not batch:
                    break
                ran = True
                self._run_batch(midx, asm, batch)
        return ran

    def _run_batch(self, midx: int, asm: Assembler, batch: list[PendingCall]) -> None:
        spec = self.methods[midx]
        self.row[W_QUEUED] -= len(batch)
        # Chunks of a split call that has failed already were answered: drop them (their
        # arguments may be views of a request record released since).
        live: list[_Part] = []
        rows = 0
        for pc in batch:
            part: _Part = pc.payload
            pc.payload = None
            if part.job.failed is None:
                live.append(part)
                rows += pc.rows
        if not live:
            asm.record(0, 0.0, ran=False)
            return
        calls = [(p.args, p.kwargs) for p in live]
        for p in live:
            p.args, p.kwargs = (), {}
        t0 = time.monotonic()
        wait_ns = sum(int(max(t0 - pc.arrived, 0.0) * 1e9) for pc in batch)
        outcomes: list[Outcome]
        if spec.kind is MethodKind.ASYNC:
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

    def _settle(self, spec: MethodSpec, live: list[_Part], outcomes: list[Outcome]) -> None:
        for part, outcome in zip(live, outcomes, strict=True):
            job = part.job
            if job.failed is not None:
                continue
            if outcome.error is not None:
                job.failed = outcome.error
                self._finish_error(job, outcome.error)
                continue
            job.results[part.index] = outcome.value
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
        if wait_ns:
            row[W_WAIT_NS] += wait_ns
        row[W_BATCH_HIST + min(hist_bucket(rows), BATCH_HIST_BUCKETS - 1)] += 1

    # -- answering ---------------------------------------------------------------------------

    @staticmethod
    def _post(outbox: Outbox, job: _Job, kind: int, value: object) -> None:
        """Hold an answer for the end of the batch, with the others to the same channel."""
        slot = P.slot_of(job.tag)
        outbox.setdefault((slot, job.gen), []).append(
            (job.tag, kind, value, job.deadline, job.held))
        job.held = -1  # the answer owns the entry now

    def _finish_ok(self, job: _Job, value: object, kind: int) -> None:
        if self.outbox is not None:
            self._post(self.outbox, job, kind, value)
        else:
            held, job.held = job.held, -1
            self._answer_or_error(job.tag, kind, value, job.deadline, job.gen, held=held)
        self._done(job)

    def _answer_or_error(self, tag: int, kind: int, value: object, deadline: float, gen: int,
                         held: int = -1, plan: codec.Encoded | None = None) -> None:
        try:
            self._answer(tag, kind, value, deadline, gen, held=held, plan=plan)
        except (EncodeError, IpcError, errors.TransportError) as exc:
            # a result the codec cannot carry, or that shared memory cannot hold
            self._answer(tag, P.ERROR, P.error_payload(exc), deadline, gen, held=held)
            self.row[W_ERRORS] += 1

    def _finish_error(self, job: _Job, exc: BaseException) -> None:
        self.row[W_ERRORS] += 1
        if self.outbox is not None:
            self._post(self.outbox, job, P.ERROR, P.error_payload(exc))
        else:
            held, job.held = job.held, -1
            self._answer(job.tag, P.ERROR, P.error_payload(exc), job.deadline, job.gen,
                         held=held)
        self._done(job)

    def _done(self, job: _Job) -> None:
        self.row[W_INFLIGHT] -= 1
        micros = (time.monotonic() - job.sent) * 1e6
        self.row[W_HIST + hist_bucket(micros)] += 1

    def _flush_outbox(self) -> None:
        """Send the answers a batch produced: one record (and one wake-up) per channel."""
        outbox, self.outbox = self.outbox, None
        if not outbox:
            return
        for (_slot, gen), answers in outbox.items():
            self._answer_group(answers, gen)

    def _answer_group(self, answers: list[Answer], gen: int) -> None:
        """Answers to one channel as MULTI records, each within an inline record's size (a
        kept result then never holds a large shared record alive); an answer too large for
        one travels alone."""
        if len(answers) == 1:
            tag, kind, value, deadline, held = answers[0]
            self._answer_or_error(tag, kind, value, deadline, gen, held=held)
            return
        try:
            plans = [P.encode(a[2], allow_pickle=self.allow_pickle, limit=self.message_limit)
                     for a in answers]
        except (EncodeError, IpcError, errors.TransportError):  # one value the codec or
            # shared memory cannot carry: answer one by one
            for tag, kind, value, deadline, held in answers:
                self._answer_or_error(tag, kind, value, deadline, gen, held=held)
            return
        for start, end in P.multi_groups([p.nbytes for p in plans], P.INLINE_LIMIT):
            group = answers[start:end]
            if end - start == 1:
                tag, kind, value, deadline, held = group[0]
                self._answer_or_error(tag, kind, value, deadline, gen, held=held,
                                      plan=plans[start])
                continue
            plan = P.multi_plan([(a[0], a[1], p)
                                 for a, p in zip(group, plans[start:end], strict=True)])
            self._deliver(P.slot_of(group[0][0]), gen, -1, 0, P.MULTI, plan,
                          max(a[3] for a in group), [a[4] for a in group])

    def _answer(self, tag: int, kind: int, value: object, deadline: float, gen: int,
                mask: int = -1, held: int = -1, plan: codec.Encoded | None = None) -> None:
        """Encode ``value`` (an EncodeError reaches the caller), unless ``plan`` is its
        message already, and deliver it."""
        if plan is None:
            plan = P.encode(value, allow_pickle=self.allow_pickle, limit=self.message_limit)
        self._deliver(P.slot_of(tag), gen, mask, tag, kind, plan, deadline, [held])

    def _deliver(self, slot: int, gen: int, mask: int, tag: int, kind: int,
                 plan: codec.Encoded, deadline: float, held: list[int]) -> None:
        """Write an answer into the calling channel's ring and wake its owner, if the channel
        still has the call's full generation ``gen`` (compared under ``mask``: a reused slot
        never gets a stale answer). Never waits: when the ring is full the answer waits in
        ``stalled``, behind any earlier one to the same channel, until it fits or its
        deadline passes (the caller has then given up)."""
        stalled = self.stalled
        key = (slot, gen)
        if (not stalled or key not in stalled) and self._try_send(slot, gen, mask, tag, kind,
                                                                  plan, held):
            return  # the usual case: straight into the ring
        if not deadline:  # no deadline was sent: keep it a short while only
            deadline = time.monotonic() + UNREAD_DEADLINE
        item = _Stalled(tag, kind, plan, deadline, mask, held)
        queue = stalled.get(key)
        if queue is None:
            stalled[key] = deque([item])
        else:
            queue.append(item)

    def _try_send(self, slot: int, gen: int, mask: int, tag: int, kind: int,
                  plan: codec.Encoded, held: list[int]) -> bool:
        """One attempt; True when the answer is written or can never be (caller gone), its
        held-calls entries then cleared."""
        ch = self.channels.get(slot, gen, mask)
        if ch is not None and not fastpath.send(ch[0], ch[1], kind, tag, plan, None,
                                                P.INLINE_LIMIT):
            try:
                P.send(ch[0], ch[1], kind, tag, plan, timeout=0.0, handoffs=self.handoffs,
                       alive=None, limit=self.message_limit)
            except RingFull:
                return False
        self._release_held(held)
        return True

    def _release_held(self, held: list[int]) -> None:
        if self.held is not None:
            for i in held:
                self.held.remove(i)

    def _retry_stalled(self) -> None:
        now = time.monotonic()
        for key in list(self.stalled):
            queue = self.stalled[key]
            while queue:
                item = queue[0]
                if now > item.deadline:  # the caller has given up: forget the answer
                    log.warning("answer to call %x dropped: its caller's channel stayed full "
                                "until the call's deadline", item.tag)
                    self._release_held(item.held)
                    queue.popleft()
                    continue
                try:
                    if not self._try_send(*key, item.mask, item.tag, item.kind, item.plan,
                                          item.held):
                        break
                except Exception as exc:  # noqa: BLE001 - no room for a handoff now, say
                    log.warning("answer to call %x dropped: %s", item.tag, exc)
                    self._release_held(item.held)
                queue.popleft()
            if not queue:
                del self.stalled[key]


#: Request records up to this size are copied out by the C take (ipc.ring.take_copy); the
#: record stays taken (the supervisor's view of what this worker holds) until its calls are
#: in the held-calls table.
COPY_MAX = P.INLINE_LIMIT + 4096


class _Stalled:
    """An answer waiting for room in its channel."""

    __slots__ = ("tag", "kind", "plan", "deadline", "mask", "held")

    def __init__(self, tag: int, kind: int, plan: codec.Encoded, deadline: float, mask: int,
                 held: list[int]) -> None:
        self.tag = tag
        self.kind = kind
        self.plan = plan
        self.deadline = deadline
        self.mask = mask
        self.held = held


def main(argv: list[str] | None = None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle
    global log
    parser = argparse.ArgumentParser(prog=startup.WORKER_MODULE)
    parser.add_argument("--control-fd", type=int, required=True)
    opts = parser.parse_args(argv)
    control = socket.socket(fileno=opts.control_fd)
    spec = startup.receive_spec(control)
    log = logging.getLogger(f"runnerlib.runner.{spec.runner}")  # one logger per runner
    logging.basicConfig(level=spec.log_level, format="%(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    if spec.cpus:
        try:
            os.sched_setaffinity(0, spec.cpus)
        except OSError as exc:
            log.warning("cannot pin to CPUs %s: %s", spec.cpus, exc)
    for p in reversed(spec.sys_path):
        if p not in sys.path:
            sys.path.insert(0, p)
    try:
        worker = Worker(spec)
    except BaseException as exc:
        startup.answer_ready(control, P.error_payload(exc))
        sys.exit(1)
    startup.answer_ready(control)

    def on_term(signum: int, frame: object) -> None:
        worker.stopping = True

    signal.signal(signal.SIGTERM, on_term)
    try:
        worker.serve()
    finally:
        worker.row[W_STATE] = W_STOPPED
        worker.handoffs.close()
        if worker.held is not None:
            worker.held.close()


if __name__ == "__main__":
    main()

"""The client role: ``ShmHandle``, the side of a runner served over shared memory that calls.

Each thread that calls ``run`` and each event loop that calls ``async_run`` owns a *channel*:
a response ring and a doorbell registered in the runner's control segment. A sync caller has
one call in flight, so it waits on its own channel with no locks and no hand-off between
threads; an event loop's channel serves all its coroutines through one reader callback.
Requests are encoded straight into the runner's request ring. An answer up to
``protocol.INLINE_LIMIT`` is copied out of the channel's ring as it is decoded, and its record
given back at once; a larger one arrives in a handoff segment of its own, as a zero-copy view
that owns that segment. Results kept forever therefore never hold ring space.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import math
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from ipc import codec, fastpath
from ipc.doorbell import Doorbell
from ipc.errors import CorruptRecord, IpcError, RingFull
from ipc.handoff import HandoffPool, HandoffReader
from ipc.ring import CopiedRecord, Record, Ring, current_cpu
from runnerlib import errors, registry
from runnerlib._shm import budget
from runnerlib._shm import protocol as P
from runnerlib._shm.control import (
    C_BELL_OFFSET,
    H_NWORKERS,
    H_REQ_EPOCH,
    H_STATE,
    READY,
    STOPPED,
    W_CPUMASK,
    W_READY,
    W_STATE,
    WORKERS_BELL_OFFSET,
    Control,
)
from runnerlib.settings import MethodRef as RunnerMethod
from runnerlib.settings import RunnerRef as Runner
from runnerlib.settings import class_ref
from runnerlib.transport import RunnerHandle

log = logging.getLogger("runnerlib.client")


class OwnedServer(Protocol):
    """A server this process started for itself (see ``Spawn``)."""

    def stop(self) -> None: ...


#: Starts a server for a runner in this process (the embedded default of ``init_client``);
#: returns None when another process won the race to start one.
Spawn = Callable[[Runner], OwnedServer | None]

#: Response ring per channel, prefaulted: it only ever holds answers that arrived and are not
#: yet decoded, each at most protocol.INLINE_LIMIT (larger ones travel in handoff segments,
#: ipc.handoff, reused while warm), so a small ring serves any number of results kept. A
#: server with a small shared-memory budget asks for smaller ones (its control header:
#: _shm.budget).
CHANNEL_RING_BYTES = 1 << 20
#: The most calls one CALL | MANY record carries, and its largest size: a worker needs one
#: held-calls entry per call, and a record is written in one short burst.
MANY_MAX_CALLS = 256
MANY_MAX_BYTES = 1 << 20
SPIN_SYNC = 200e-6  # a back-to-back caller spins this long before it sleeps...
SPIN_PER_BYTE = 1e-9  # ...plus this per byte sent, so large calls do not sleep mid-copy
SPIN_ASYNC = 30e-6  # an event loop spins less: other coroutines may be runnable
WAKE = 0.25  # seconds between liveness checks of the server while waiting
HOP_EVERY = 0.01  # a thread found beside a pinned worker steps aside at most this often

#: Every live handle of this process, so that a forked child can forget what is its parent's.
_HANDLES: weakref.WeakSet[ShmHandle] = weakref.WeakSet()


#: Answer records up to this size are copied out of the channel ring by the C take, the
#: record given back at once (every inline answer and handoff reference: ipc.ring.take_copy)
COPY_MAX = P.INLINE_LIMIT + 4096


class _Channel:
    """A response ring plus doorbell owned by one thread or one event loop."""

    def __init__(self, ctl: Control) -> None:
        self.ctl = ctl
        self.slot, self.gen = ctl.claim_channel()
        ring = None
        try:
            ring = self.ring = Ring.create(budget.channel_ring(ctl, CHANNEL_RING_BYTES),
                                           tag="ch")
            self.bell = Doorbell.create(ctl.segment, ctl.channel_offset(self.slot) + C_BELL_OFFSET)
        except BaseException:
            ctl.free_channel(self.slot)
            if ring is not None:  # the doorbell failed: the ring goes too
                ring.unlink()
                ring.close()
            raise
        ctl.open_channel(self.slot, self.ring.name)
        self.seq = 0
        self._tag_base = P.make_tag(self.slot, self.gen, 0)  # slot and generation bits
        self.closed = False
        self.busy = False  # its owner is inside a call: destroy() leaves its memory mapped
        # a thread that ends drops its channel: give the slot and segments back then too
        self._finalizer = weakref.finalize(
            self, _close_channel, ctl, self.slot, self.ring, self.bell, os.getpid()
        )

    @property
    def in_use(self) -> bool:
        """A call of its owner is inside it: destroy() must leave its memory mapped."""
        return self.busy

    def next_tag(self) -> int:
        self.seq += 1
        return self._tag_base | (self.seq & P.SEQ_MASK)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._finalizer()

    def forget(self) -> None:
        """In a forked child: let go of this channel without freeing its slot or unlinking
        its ring and doorbell (they are the parent's, who keeps using them)."""
        self.closed = True
        self._finalizer.detach()


def _close_channel(ctl: Control, slot: int, ring: Ring, bell: Doorbell, owner: int) -> None:
    if os.getpid() != owner:  # a forked child's copy of a channel its fork handler missed
        return
    with contextlib.suppress(Exception):
        ctl.free_channel(slot)
    with contextlib.suppress(Exception):
        bell.unlink()
        bell.close()
    with contextlib.suppress(Exception):
        ring.unlink()
        ring.close()


class _LoopChannel(_Channel):
    """A channel serving every coroutine of one event loop through one reader callback."""

    def __init__(self, ctl: Control, loop: asyncio.AbstractEventLoop, handle: ShmHandle) -> None:
        super().__init__(ctl)
        self.loop = loop
        self.handle = handle
        self.pending: dict[int, Any] = {}  # tag -> Future, or asyncio.Queue for streams
        #: coroutines inside async_run on this loop, answered or not: one whose answer came
        #: is still here until it resumes, so that a caller that finds others here knows
        #: the loop has work besides its own call (it must not spin; see async_run_method)
        self.callers = 0
        self.outgoing: list[P.Outgoing] = []  # calls waiting for the flush
        self.flush_scheduled = False
        self.envelopes: OrderedDict[int, list[int]] = OrderedDict()  # MANY record -> tags
        self.armed = False
        #: the deadline of each awaited future, and one timer for all of them (``watch``)
        self.deadlines: dict[int, float] = {}
        self.watch_timer: asyncio.TimerHandle | None = None
        self.watch_at = math.inf
        loop.add_reader(self.bell.fileno(), self.on_readable)

    @property
    def in_use(self) -> bool:
        return self.busy or bool(self.pending)

    def queue(self, call: P.Outgoing) -> None:
        self.outgoing.append(call)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Send the calls queued during this tick (those still awaited) in one record."""
        self.flush_scheduled = False
        calls = [c for c in self.outgoing if c.tag in self.pending]
        self.outgoing = []
        if not calls:
            return
        envelopes = self.envelopes
        while envelopes:  # forget envelopes whose calls have all been answered
            first = next(iter(envelopes.values()))
            if any(t in self.pending for t in first):
                break
            envelopes.popitem(last=False)
        try:
            self.handle.send_many(self, calls)
        except errors.RunnerTimeout:
            # the request ring is full: back-pressure, try again shortly (calls past their
            # deadline are dropped by their own waits)
            self.outgoing = calls + self.outgoing
            self.flush_scheduled = True
            self.loop.call_later(0.001, self.flush)
        except Exception as exc:
            if isinstance(exc, IpcError):
                exc = P.runner_error(exc)
            for call in calls:
                fut = self.pending.get(call.tag)
                if fut is not None and not fut.done():
                    fut.set_exception(exc)

    def on_readable(self) -> None:
        if self.closed:  # forgotten in a forked child: the bell and ring are the parent's
            return
        self.bell.drain()
        # Woken by a worker's FIFO write, a synchronous wake-up: the kernel queues this thread
        # on that worker's CPU, where the two take turns (docs/design.md, "Sixth step")
        handle = self.handle
        if handle._beside_worker():
            handle._step_aside()
        self.dispatch()

    def dispatch(self) -> None:
        take = self.ring.take_copy
        faults = 0
        while True:
            try:
                got = take(max_copy=COPY_MAX, release=True)
            except CorruptRecord as exc:  # foreign bytes in our ring: it resynchronised
                log.error("response ring: %s", exc)
                faults += 1
                if faults > 8:
                    break
                continue
            if got is None:
                break
            rec: Record | CopiedRecord
            if isinstance(got, tuple):
                kind, tag, data, _pos = got
                if kind & P.TYPE_MASK != P.MULTI and tag in self.pending:  # the usual case
                    try:
                        value = self.handle.decode_copy(kind, data)
                        kind &= P.TYPE_MASK
                    except Exception as exc:
                        value, kind = self.handle.undecodable(exc), P.UNDECODABLE
                    self.deliver(tag, kind, value)
                    continue
                rec = CopiedRecord(kind, tag, data)
            else:
                rec = got
            if rec.kind & P.TYPE_MASK == P.MULTI:
                try:
                    answers = self.handle.decode_multi(rec)
                    for tag, kind, value in answers:
                        self.deliver(tag, kind, value)
                except Exception as exc:  # a malformed multi-answer: nobody can be matched
                    log.error("malformed answer record: %s", exc)
                continue
            target = self.pending.get(rec.tag)
            if target is None and rec.tag not in self.envelopes:
                self.handle.discard(rec)  # answer to a call that timed out or was cancelled
                continue
            kind = rec.kind & P.TYPE_MASK
            try:
                value = self.handle.decode(rec)
            except Exception as exc:
                value, kind = self.handle.undecodable(exc), P.UNDECODABLE
            self.deliver(rec.tag, kind, value)
        self.update_arm()

    def deliver(self, tag: int, kind: int, value: object) -> None:
        target = self.pending.get(tag)
        if target is None:
            carried = self.envelopes.pop(tag, None)
            if carried is not None:  # an error for a whole MANY record (its worker died)
                for t in carried:
                    self.deliver(t, kind, value)
            return
        if isinstance(target, asyncio.Queue):
            if kind == P.CHUNK:
                target.put_nowait((True, value))
                return
            del self.pending[tag]
            if kind == P.END:
                target.put_nowait((False, None))
            else:
                target.put_nowait((False, P.answer_error(kind, value)))
            return
        if target.done():
            del self.pending[tag]
            return
        if kind == P.OK:
            del self.pending[tag]
            target.set_result(value)
        elif kind == P.CHUNK:  # a generator method called with async_run: collect
            target.chunks = getattr(target, "chunks", [])
            target.chunks.append(value)
        elif kind == P.END:
            del self.pending[tag]
            target.set_result(getattr(target, "chunks", []))
        else:
            del self.pending[tag]
            target.set_exception(P.answer_error(kind, value))

    def update_arm(self) -> None:
        want = bool(self.pending)
        if want != self.armed:
            self.armed = want
            if want:
                self.bell.arm()
                self.dispatch_once_more()
            else:
                self.bell.disarm()

    # -- deadlines: one timer per channel, not one per call ----------------------------------
    def watch(self, tag: int, deadline: float) -> None:
        """Fail the future of call ``tag`` at ``deadline`` (a ``RunnerTimeout``), or as soon
        as its answer can no longer come (the server stopped or died, the runner was
        destroyed): the channel's timer looks every WAKE seconds, and at the earliest
        deadline."""
        self.deadlines[tag] = deadline
        if deadline < self.watch_at:
            self._watch_at(min(deadline, time.monotonic() + WAKE))

    def _watch_at(self, when: float) -> None:
        if self.watch_timer is not None:
            self.watch_timer.cancel()
        self.watch_at = when
        self.watch_timer = self.loop.call_later(max(when - time.monotonic(), 0.0),
                                                self._on_watch)

    def _on_watch(self) -> None:
        self.watch_timer, self.watch_at = None, math.inf
        if not self.deadlines or self.closed:
            return
        if self.ring.has_pending():  # an answer whose wake-up was lost
            self.dispatch()
        try:
            self.handle._check_server()
        except Exception as exc:  # noqa: BLE001 - every call waiting here gets it (its own)
            for tag in list(self.deadlines):
                try:
                    own: BaseException = type(exc)(*exc.args)
                except Exception:  # noqa: BLE001 - an exception type with its own signature
                    own = exc
                self._fail(tag, own)
            return
        now = time.monotonic()
        nxt = now + WAKE
        for tag, deadline in list(self.deadlines.items()):
            if deadline <= now:
                self._fail(tag, errors.RunnerTimeout(
                    f"runner {self.handle.name!r}: no answer within the call's timeout"))
            elif deadline < nxt:
                nxt = deadline
        if self.deadlines:
            self._watch_at(nxt)

    def _fail(self, tag: int, exc: BaseException) -> None:
        del self.deadlines[tag]
        fut = self.pending.get(tag)
        if fut is not None and not isinstance(fut, asyncio.Queue) and not fut.done():
            fut.set_exception(exc)

    def dispatch_once_more(self) -> None:
        # after arming: an answer committed just before the worker saw us armed is in the
        # ring already and rings no bell
        if self.ring.has_pending():
            self.dispatch()

    def close(self) -> None:
        if self.closed:
            return
        with contextlib.suppress(Exception):
            if not self.loop.is_closed():
                self.loop.remove_reader(self.bell.fileno())
        if self.armed:
            with contextlib.suppress(Exception):
                self.bell.disarm()
        if self.watch_timer is not None:
            self.watch_timer.cancel()
            self.watch_timer = None
        super().close()


class ShmHandle(RunnerHandle):
    """Calls a runner's workers through shared memory; spawns an embedded server if needed."""

    def __init__(self, runner: Runner, *, spawn: Spawn | None, timeout: float | None = None
                 ) -> None:
        try:
            self._attach(runner, spawn, timeout)
        except IpcError as exc:
            raise P.runner_error(exc) from exc

    def _attach(self, runner: Runner, spawn: Spawn | None, timeout: float | None) -> None:
        self.runner = runner
        self.name = runner.name
        settings = runner.client_settings()
        self.timeout = float(timeout if timeout is not None else settings.timeout)
        self.allow_pickle = bool(settings.allow_pickle)
        ns = registry.namespace()
        self.server: OwnedServer | None = None
        info = registry.find(runner.name, ns)
        if info is None:
            if spawn is None:
                raise errors.ServerNotFound(
                    f"no server is running runner {runner.name!r} in namespace {ns!r}; start "
                    "one (runnerlib.Server or `python -m runnerlib serve`) or call "
                    "init_client() with spawn=True"
                )
            # None: another process won the race to spawn; attach to its server
            self.server = spawn(runner)
            info = registry.find(runner.name, ns)
            if info is None:
                raise errors.ServerNotFound(f"the server for runner {runner.name!r} vanished")
        want = class_ref(runner.runnable_class)
        if info.class_ref != want:
            self._stop_own_server()
            raise errors.RunnerError(
                f"runner {runner.name!r} is served by pid {info.server_pid} with Runnable "
                f"{info.class_ref}, not {want}; give this runner another name"
            )
        self.method_index = {name: i for i, name in enumerate(info.methods)}
        self.info = info
        self.ctl = Control.attach(info.control)
        self._req_epoch, current = self.ctl.request_ring()
        self.requests = Ring.attach(current or info.request_ring)
        #: request rings the server moved away from, kept mapped until this handle is
        #: released (a thread may still be leaving a wait on one)
        self._old_requests: list[Ring] = []
        self.workers_bell = Doorbell.attach(self.ctl.segment, WORKERS_BELL_OFFSET)
        self._local = threading.local()
        self._channels: weakref.WeakSet[_Channel] = weakref.WeakSet()
        self._loop_channels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop,
                                                       _LoopChannel] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self.handoffs = HandoffPool(budget.handoff_keep(self.ctl))
        # answers lent back into our own segments are read through our pool
        self.handoff_reader = HandoffReader(budget.reader_keep(self.ctl), own=self.handoffs)
        self.message_limit = budget.message_limit(self.ctl)  # the server's budget, 0: none
        self.closed = False
        self._released = False
        # the header words as a memoryview: reading the server state costs a list index
        self._header = self.ctl.header.data
        #: the CPUs this process may run on (when it attached), and the CPUs the workers are
        #: pinned to where that leaves room elsewhere (0: never beside a worker): _beside_worker
        try:
            self._allowed = sum(1 << c for c in os.sched_getaffinity(0) if c < 63)
        except (AttributeError, OSError):  # pragma: no cover - no affinity on this platform
            self._allowed = 0
        self._pins = 0
        self._pins_until = 0.0
        _HANDLES.add(self)

    def _forget_after_fork(self) -> None:
        """Run in the child of a fork: everything per-process that the child inherited is the
        parent's (its channels, handoff pool, embedded server), and the parent keeps using it.
        Drop it all without freeing or unlinking anything; the child claims channels of its
        own on first use. The shared control segment and request ring stay mapped: the child
        calls through them like any other client process."""
        for ch in list(self._channels):
            ch.forget()  # never remove_reader: the loop's epoll instance is the parent's too
        self._channels = weakref.WeakSet()
        self._loop_channels = weakref.WeakKeyDictionary()
        self._local = threading.local()
        self._lock = threading.Lock()  # another thread of the parent may have held it
        self.server = None  # the parent's: the child must never stop it
        # the pool's segments carry the parent's pid and are reused by the parent
        self.handoffs = HandoffPool(self.handoffs.keep)
        self.handoff_reader = HandoffReader(self.handoff_reader.keep, own=self.handoffs)

    # -- channels ------------------------------------------------------------------------------

    def _thread_channel(self) -> _Channel:
        ch = getattr(self._local, "channel", None)
        if ch is None or ch.closed:
            with self._lock:  # never while destroy() unmaps the control segment
                self._check_open()
                ch = _Channel(self.ctl)
                self._channels.add(ch)
            self._local.channel = ch
        return ch

    def _loop_channel(self) -> _LoopChannel:
        loop = asyncio.get_running_loop()
        ch = self._loop_channels.get(loop)
        if ch is None or ch.closed:
            self._check_open()
            for old_loop, old in list(self._loop_channels.items()):
                if old_loop.is_closed():  # asyncio.run() leaves one closed loop per run
                    old.close()
                    del self._loop_channels[old_loop]
            with self._lock:  # never while destroy() unmaps the control segment
                self._check_open()
                ch = _LoopChannel(self.ctl, loop, self)
                self._loop_channels[loop] = ch
                self._channels.add(ch)
        return ch

    def _check_open(self) -> None:
        if self.closed:
            raise errors.StateError(f"runner {self.runner.name!r} was destroyed")

    # -- sending -------------------------------------------------------------------------------

    def _index(self, method: RunnerMethod) -> int:
        try:
            return self.method_index[method.name]
        except KeyError:
            raise errors.RunnerError(
                f"the server of runner {self.name!r} has no method {method.name!r}"
            ) from None

    def server_alive(self) -> bool:
        return self.ctl.state == READY and registry.owner_alive(self.ctl.name)

    def _encode(self, args: tuple[object, ...], kwargs: dict[str, object]) -> codec.Encoded:
        """Plan the call's message; an unsupported value is a TypeError at the call site."""
        return P.encode((args, kwargs), allow_pickle=self.allow_pickle, limit=self.message_limit)

    def _send(self, ch: _Channel, call: P.Outgoing, wait_until: float | None = None) -> None:
        """Write one call into the request ring, waiting for room until ``wait_until``
        (default: the call's deadline); into the fresh ring when the server moves to one."""
        self._check_serving()
        while True:
            if self._header[H_REQ_EPOCH] != self._req_epoch:
                self._follow_requests()
            now = time.monotonic()
            if not P._stop_after and fastpath.send(
                    self.requests, self.workers_bell, P.CALL | call.method, call.tag, call.plan,
                    P.PREFIX.pack(now, call.deadline, ch.gen), P.INLINE_LIMIT):
                return  # the usual case: one C call (ipc.fastpath)
            wait = max((wait_until or call.deadline) - now, 0.0)
            try:
                P.send(self.requests, self.workers_bell, P.CALL | call.method, call.tag,
                       call.plan, timeout=wait, alive=self._may_wait, handoffs=self.handoffs,
                       prefix=(now, call.deadline, ch.gen), limit=self.message_limit)
                return
            except RingFull:
                if self._header[H_REQ_EPOCH] == self._req_epoch:
                    raise self._ring_full() from None

    def _may_wait(self) -> bool:
        """Go on waiting for room in the request ring: the server lives and has not moved
        the runner to a fresh ring."""
        return self._header[H_REQ_EPOCH] == self._req_epoch and self.server_alive()

    def _follow_requests(self) -> None:
        """The server moved the runner to a fresh request ring (a stopped writer pinned the
        old one): send into it from now on."""
        with self._lock:
            epoch, name = self.ctl.request_ring()
            if epoch == self._req_epoch:
                return
            ring = Ring.attach(name)
            self._old_requests.append(self.requests)
            self.requests, self._req_epoch = ring, epoch

    def _ring_full(self) -> errors.RunnerError:
        if not self.server_alive():
            return errors.WorkerDied(f"the server of runner {self.name!r} stopped")
        return errors.RunnerTimeout(
            f"runner {self.name!r}: the request ring stayed full until the call's timeout "
            "(workers are overloaded)")

    def send_many(self, ch: _LoopChannel, calls: list[P.Outgoing]) -> None:
        """Send the calls one event-loop tick produced as one CALL | MANY record: one ring
        reservation and one wake-up for all of them."""
        if len(calls) == 1:
            self._send(ch, calls[0], time.monotonic())
            return
        if len(calls) > MANY_MAX_CALLS or P.many_size(calls)[1] > min(
                MANY_MAX_BYTES, self.requests.max_record):  # too big together: halves
            half = len(calls) // 2
            self.send_many(ch, calls[:half])
            self.send_many(ch, calls[half:])
            return
        self._check_serving()
        if self._header[H_REQ_EPOCH] != self._req_epoch:
            self._follow_requests()
        envelope = ch.next_tag()
        try:
            P.send_many(self.requests, self.workers_bell, envelope, ch.gen, calls,
                        timeout=0.0, alive=self._may_wait)
        except RingFull:
            raise self._ring_full() from None
        ch.envelopes[envelope] = [c.tag for c in calls]

    # -- receiving ---------------------------------------------------------------------------

    def decode(self, rec: Record | CopiedRecord) -> object:
        return P.open_answer(rec, self.handoff_reader,  # type: ignore[arg-type]
                             allow_pickle=self.allow_pickle)

    def decode_copy(self, kind: int, data: bytes) -> object:
        """An answer (not MULTI) from the private copy ``Ring.take_copy`` made, decoded as
        ``open_answer`` decodes a record: an inline answer copied out (so values are what
        they always were: pickled buffers writable, each array its own memory), a handoff's
        a zero-copy view of its own segment."""
        if kind & P.BIG:
            return codec.decode(self.handoff_reader.open(data), copy=False,
                                allow_pickle=self.allow_pickle)
        return codec.decode(data, copy=True, allow_pickle=self.allow_pickle)

    def decode_multi(self, rec: Record | CopiedRecord) -> list[tuple[int, int, object]]:
        return P.open_multi(rec, allow_pickle=self.allow_pickle)

    def discard(self, rec: Record | CopiedRecord) -> None:
        P.discard_answer(rec, self.handoff_reader)  # type: ignore[arg-type]

    @staticmethod
    def undecodable(exc: Exception) -> BaseException:
        return P.runner_error(exc) if isinstance(exc, IpcError) else exc

    def _timeout_of(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else float(timeout)

    def run_method(self, method: RunnerMethod, args: tuple[object, ...], kwargs: dict[str, object],
                   timeout: float | None) -> object:
        try:
            ch = self._thread_channel()
        except IpcError as exc:
            raise P.runner_error(exc) from exc
        ch.busy = True
        try:
            self._check_open()  # after marking busy: destroy() now keeps the memory mapped
            return self._run(ch, method, args, kwargs, timeout)
        except IpcError as exc:
            raise P.runner_error(exc) from exc
        finally:
            ch.busy = False
            self._call_done(ch)

    def _call_done(self, ch: _Channel) -> None:
        """After each call: a destroyed runner unmaps once its last call has left."""
        if self.closed:
            self._release_if_idle()
        elif isinstance(ch, _LoopChannel):
            ch.update_arm()

    def _run(self, ch: _Channel, method: RunnerMethod, args: tuple[object, ...],
             kwargs: dict[str, object], timeout: float | None) -> object:
        midx = self._index(method)
        tag = ch.next_tag()
        now = time.monotonic()
        deadline = now + self._timeout_of(timeout)
        plan = self._encode(args, kwargs)
        header = self._header
        # the usual call in one C call (ipc.fastpath), the checks of _send inline; else _send
        if (header[H_STATE] != READY or header[H_REQ_EPOCH] != self._req_epoch
                or P._stop_after or not fastpath.send(
                    self.requests, self.workers_bell, P.CALL | midx, tag, plan,
                    P.PREFIX.pack(now, deadline, ch.gen), P.INLINE_LIMIT)):
            self._send(ch, P.Outgoing(tag, midx, plan, deadline))
        spin = SPIN_SYNC + SPIN_PER_BYTE * plan.nbytes
        del plan
        chunks: list[object] = []
        while True:
            kind, value = self._wait_sync(ch, tag, deadline, spin)
            if kind == P.CHUNK:
                chunks.append(value)
                continue
            if kind == P.OK:
                return value
            if kind == P.END:
                return chunks
            raise P.answer_error(kind, value)

    def _wait_sync(self, ch: _Channel, tag: int, deadline: float,
                   spin: float = SPIN_SYNC) -> tuple[int, object]:
        ring = ch.ring
        # just sent (spin > 0): the answer is not there yet, so the first look is the wait's
        # (ring.has_pending, cheaper than a take)
        fresh = spin > 0
        while True:
            got = None if fresh else ring.take_copy(max_copy=COPY_MAX, release=True)
            rec: Record | CopiedRecord | None
            if isinstance(got, tuple):  # the usual case: a private copy, the record given back
                kind = got[0]
                if got[1] == tag and kind & P.TYPE_MASK != P.MULTI:
                    try:
                        if kind & P.BIG:
                            return kind & P.TYPE_MASK, self.decode_copy(kind, got[2])
                        return kind & P.TYPE_MASK, codec.decode(
                            got[2], copy=True, allow_pickle=self.allow_pickle)
                    except Exception as exc:
                        return P.UNDECODABLE, self.undecodable(exc)
                rec = CopiedRecord(got[0], got[1], got[2])
            else:
                rec = got
            if rec is not None:
                if rec.kind & P.TYPE_MASK == P.MULTI:  # one thread, one call: rare, but valid
                    try:
                        answers = self.decode_multi(rec)
                        for t, kind, value in answers:
                            if t == tag:
                                return kind, value
                    except Exception as exc:
                        return P.UNDECODABLE, self.undecodable(exc)
                    continue
                if rec.tag != tag:
                    self.discard(rec)  # a late answer to an earlier call that timed out
                    continue
                try:
                    return rec.kind & P.TYPE_MASK, self.decode(rec)
                except Exception as exc:
                    return P.UNDECODABLE, self.undecodable(exc)
            left = deadline - time.monotonic()
            if left <= 0:
                if fresh:  # look once before giving up
                    fresh = False
                    continue
                raise errors.RunnerTimeout(
                    f"runner {self.name!r}: no answer within the call's timeout")
            fresh = False
            if spin and self._beside_worker():
                self._step_aside()
            if not ch.bell.wait(ring.has_pending, spin=spin, timeout=min(left, WAKE),
                                spinner=ring.spin_pending):
                self._check_server()

    def _beside_worker(self) -> bool:
        """Does this thread run on a CPU a worker is pinned to, while other CPUs were open to
        this process? (Cheap: the workers' pins are read once a second, the CPU is a vDSO
        call.)"""
        now = time.monotonic()
        if now >= self._pins_until:  # workers restart and re-pin: look again each second
            self._pins_until = now + 1.0
            ctl = self.ctl
            mask = 0
            for i in range(min(int(ctl.header[H_NWORKERS]), len(ctl.workers))):
                mask |= int(ctl.workers[i, W_CPUMASK])
            self._pins = mask if self._allowed & ~mask else 0
        if not self._pins:
            return False
        cpu = current_cpu()
        return 0 <= cpu < 63 and bool(self._pins >> cpu & 1)

    def _step_aside(self) -> None:
        """Move this thread off the CPU of a pinned worker, once, leaving its affinity as it
        was. A worker wakes a sleeping client with a FIFO write, a *synchronous* wake-up,
        which asks the kernel to run the client on the worker's CPU; the worker keeps
        spinning there, and both then share one CPU (each turn of either spin another trip
        through the scheduler, and the load balancer leaves a cache-hot task where it is):
        such runs were three times slower. Narrowing the thread's mask to the other CPUs
        moves it at once; restoring the mask right after does not move it back."""
        local = self._local
        now = time.monotonic()
        if now < getattr(local, "next_hop", 0.0):
            return
        local.next_hop = now + HOP_EVERY
        try:
            mine = os.sched_getaffinity(0)
            away = {c for c in mine if c >= 63 or not self._pins >> c & 1}
            if not away or len(away) == len(mine):
                return  # pinned there by its owner (or nowhere else to go): leave it
            os.sched_setaffinity(0, away)
            os.sched_setaffinity(0, mine)
        except (AttributeError, OSError):  # pragma: no cover - no affinity on this platform
            pass

    def _check_serving(self) -> None:
        """Before a call is sent: fail at once unless the server takes calls."""
        if self._header[H_STATE] == READY:
            return
        if self.closed:
            raise errors.StateError(f"runner {self.name!r} was destroyed")
        raise errors.RunnerError(
            f"runner {self.name!r}: the server is stopping or stopped; this call was not sent "
            "(start a server, then init_client() again)")

    def _check_server(self) -> None:
        """Called while an answer is awaited: fail when it can no longer come."""
        if self.closed:
            raise errors.StateError(f"runner {self.name!r} was destroyed while this call "
                                    "waited for its answer")
        if self._header[H_STATE] == STOPPED:
            raise errors.RunnerError(f"runner {self.name!r}: the server stopped before it "
                                     "answered this call")
        if not registry.owner_alive(self.ctl.name):
            raise errors.WorkerDied(
                f"the server process (pid {self.ctl.server_pid}) of runner "
                f"{self.name!r} died")

    async def async_run_method(self, method: RunnerMethod, args: tuple[object, ...],
                               kwargs: dict[str, object], timeout: float | None) -> object:
        try:
            ch = self._loop_channel()
            midx = self._index(method)
            plan = self._encode(args, kwargs)
        except IpcError as exc:
            raise P.runner_error(exc) from exc
        tag = ch.next_tag()
        deadline = time.monotonic() + self._timeout_of(timeout)
        call = P.Outgoing(tag, midx, plan, deadline)
        fut = ch.loop.create_future()
        ch.pending[tag] = fut
        ch.callers += 1
        try:
            self._check_open()  # after registering: destroy() now keeps the memory mapped
            # Alone: no other call of this loop is in flight or about to resume
            alone = ch.callers == 1 and len(ch.pending) == 1
            if (ch.outgoing or not alone) and plan.nbytes <= P.INLINE_LIMIT:
                # leave with the others at the end of this tick, in one record
                ch.queue(call)
                ch.update_arm()
            else:
                try:
                    self._send(ch, call, wait_until=time.monotonic())  # one try, never blocks
                except errors.RunnerTimeout:  # the request ring is full: retry, yielding
                    await self._send_async(ch, call)
            if alone:
                # A short inline spin: a back-to-back answer arrives before a wake-up would
                # (from another CPU than the worker's: _step_aside). Never with company: the
                # spin would hold up the loop's other coroutines, and under load it burns the
                # CPU that the other client processes need. Coroutines ready to run go first
                # (the loop cannot be asked whether it has any): one that calls too is company.
                await asyncio.sleep(0)
                if ch.callers == 1 and not fut.done():  # still alone, still unanswered
                    if self._beside_worker():
                        self._step_aside()
                    spin_until = time.monotonic() + SPIN_ASYNC
                    while not fut.done():
                        left = spin_until - time.monotonic()
                        if left <= 0 or not ch.ring.spin_pending(left):  # in C, no GIL held
                            break
                        ch.dispatch()
            del call, plan
            if not fut.done():
                ch.update_arm()
                ch.watch(tag, deadline)
                return await fut
            return fut.result()
        except IpcError as exc:
            raise P.runner_error(exc) from exc
        finally:
            ch.callers -= 1
            ch.pending.pop(tag, None)
            ch.deadlines.pop(tag, None)
            self._call_done(ch)

    async def _send_async(self, ch: _LoopChannel, call: P.Outgoing) -> None:
        # back-pressure must not block the loop: try briefly, then yield and retry
        while True:
            try:
                self._send(ch, call, wait_until=time.monotonic())  # one try, never blocks
                return
            except errors.RunnerTimeout:
                if time.monotonic() >= call.deadline:
                    raise
                await asyncio.sleep(0.001)

    def async_stream_method(self, method: RunnerMethod, args: tuple[object, ...],
                            kwargs: dict[str, object], timeout: float | None
                            ) -> AsyncIterator[object]:
        self._check_open()
        return self._stream(method, args, kwargs, timeout)

    async def _stream(self, method: RunnerMethod, args: tuple[object, ...],
                      kwargs: dict[str, object], timeout: float | None
                      ) -> AsyncIterator[object]:
        try:
            ch = self._loop_channel()
            midx = self._index(method)
            tag = ch.next_tag()
            deadline = time.monotonic() + self._timeout_of(timeout)
            queue: asyncio.Queue[tuple[bool, object]] = asyncio.Queue()
            ch.pending[tag] = queue
        except IpcError as exc:
            raise P.runner_error(exc) from exc
        try:
            await self._send_async(ch, P.Outgoing(tag, midx, self._encode(args, kwargs),
                                                  deadline))
            ch.update_arm()
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise errors.RunnerTimeout(
                        f"runner {self.name!r}: stream not finished within its timeout")
                try:
                    more, value = await asyncio.wait_for(queue.get(), min(left, WAKE))
                except TimeoutError:
                    if ch.ring.has_pending():
                        ch.dispatch()
                    self._check_server()
                    continue
                if more:
                    yield value
                elif isinstance(value, BaseException):  # what deliver() queues to end it
                    raise value
                else:
                    return
        except IpcError as exc:
            raise P.runner_error(exc) from exc
        finally:
            ch.pending.pop(tag, None)
            self._call_done(ch)

    # -- lifecycle --------------------------------------------------------------------------

    async def is_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if self.server_alive() and any(
                # the live supervisor marks a dead worker's row at once: no pid to judge
                int(self.ctl.workers[i, W_STATE]) == W_READY
                for i in range(int(self.ctl.header[H_NWORKERS]))
            ):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)

    def _stop_own_server(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def destroy(self) -> None:
        """Detach. Calls running in other threads fail with StateError (within WAKE); the
        shared memory they use stays mapped until the last of them has left."""
        if self.closed:
            return
        self.closed = True
        self._release_if_idle()
        with self._lock:
            busy = [ch for ch in self._channels if ch.in_use]
        for ch in busy:  # wake their waits, so that they see the runner is destroyed
            with contextlib.suppress(Exception):
                ch.bell.ring()
        self._stop_own_server()

    def _release_if_idle(self) -> None:
        """Unmap everything once the runner is destroyed and no call is inside it."""
        with self._lock:
            if self._released or any(ch.in_use for ch in self._channels):
                return
            self._released = True
            channels = list(self._channels)
            self._channels = weakref.WeakSet()
            self._loop_channels = weakref.WeakKeyDictionary()
        for ch in channels:
            ch.close()
        self.handoffs.close()
        self.handoff_reader.close()
        self.workers_bell.close()
        self.requests.close()
        for ring in self._old_requests:
            ring.close()
        self.ctl.close()


def _after_fork_in_child() -> None:
    for handle in list(_HANDLES):
        with contextlib.suppress(Exception):
            handle._forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _at_exit() -> None:
    """A process that exits (normally) with runners still attached leaves no handoff segment
    behind: nobody reclaims them otherwise when its channels were freed by their finalizers
    (a process killed outright is cleaned up by the supervisor's reclaim instead)."""
    for handle in list(_HANDLES):
        with contextlib.suppress(Exception):
            handle.handoffs.close()


atexit.register(_at_exit)

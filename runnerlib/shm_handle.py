"""``ShmHandle``: the client side of a runner served over shared memory.

Each thread that calls ``run`` and each event loop that calls ``async_run`` owns a *channel*:
a response ring and a doorbell registered in the runner's control segment. A sync caller has
one call in flight, so it waits on its own channel with no locks and no hand-off between
threads; an event loop's channel serves all its coroutines through one reader callback.
Requests are encoded straight into the runner's request ring; answers are decoded as
zero-copy views of the channel's ring (copied out when the ring runs more than half full, so
results that are kept forever never stall it).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

import pyarrow as pa

from ipc import codec
from ipc.doorbell import Doorbell
from ipc.errors import CorruptRecord, RingFull
from ipc.handoff import HandoffPool, HandoffReader
from ipc.ring import Ring
from runnerlib import errors, registry
from runnerlib import protocol as P
from runnerlib.control import (
    C_BELL_OFFSET,
    H_NWORKERS,
    READY,
    W_PID,
    W_READY,
    W_STATE,
    WORKERS_BELL_OFFSET,
    Control,
)
from runnerlib.handles import RunnerHandle

log = logging.getLogger("runnerlib.client")

#: Response ring per channel, prefaulted: answers up to half of it travel in the ring, larger
#: ones through handoff segments (ipc.handoff) that are reused while warm.
CHANNEL_RING_BYTES = 16 << 20
SPIN_SYNC = 200e-6  # a back-to-back caller spins this long before it sleeps...
SPIN_PER_BYTE = 1e-9  # ...plus this per byte sent, so large calls do not sleep mid-copy
SPIN_ASYNC = 30e-6  # an event loop spins less: other coroutines may be runnable
WAKE = 0.25  # seconds between liveness checks of the server while waiting


def rebuild_exception(payload: Any, prefix: str = "") -> BaseException:
    """The exception a remote error payload stands for, with the remote traceback."""
    if not isinstance(payload, dict):
        return errors.ProtocolError(f"{prefix}malformed error answer: {payload!r:.200}")
    mod = str(payload.get("module", ""))
    typ = str(payload.get("type", ""))
    msg = str(payload.get("message", ""))
    tb = str(payload.get("traceback", ""))
    text = prefix + msg + (f"\n\nRemote traceback:\n{tb}" if tb else "")
    cls: Any = None
    if mod == "builtins":
        cls = getattr(builtins, typ, None)
    elif mod == "runnerlib.errors":
        cls = getattr(errors, typ, None)
    if (
        isinstance(cls, type)
        and issubclass(cls, Exception)
        and not issubclass(cls, (SystemExit, KeyboardInterrupt, GeneratorExit))
    ):
        try:
            return cls(text)
        except Exception:
            pass
    return errors.RemoteError(f"{mod}.{typ}: {text}", remote_type=f"{mod}.{typ}",
                              remote_traceback=tb)


class _Channel:
    """A response ring plus doorbell owned by one thread or one event loop."""

    def __init__(self, ctl: Control) -> None:
        self.ctl = ctl
        self.slot, self.gen = ctl.claim_channel()
        try:
            self.ring = Ring.create(CHANNEL_RING_BYTES, tag="ch")
            self.bell = Doorbell.create(ctl.segment, ctl.channel_offset(self.slot) + C_BELL_OFFSET)
        except BaseException:
            ctl.free_channel(self.slot)
            raise
        ctl.open_channel(self.slot, self.ring.name)
        self.seq = 0
        self.closed = False
        # a thread that ends drops its channel: give the slot and segments back then too
        self._finalizer = weakref.finalize(
            self, _close_channel, ctl, self.slot, self.ring, self.bell
        )

    def next_tag(self) -> int:
        self.seq += 1
        return P.make_tag(self.slot, self.gen, self.seq)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._finalizer()


def _close_channel(ctl: Control, slot: int, ring: Any, bell: Any) -> None:
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
        self.outgoing: list[tuple[int, int, Any, float]] = []  # calls waiting for the flush
        self.flush_scheduled = False
        self.envelopes: OrderedDict[int, list[int]] = OrderedDict()  # MANY record -> tags
        self.armed = False
        loop.add_reader(self.bell.fileno(), self.on_readable)

    def queue(self, tag: int, midx: int, plan: Any, deadline: float) -> None:
        self.outgoing.append((tag, midx, plan, deadline))
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Send the calls queued during this tick (those still awaited) in one record."""
        self.flush_scheduled = False
        calls = [c for c in self.outgoing if c[0] in self.pending]
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
            for tag, *_ in calls:
                fut = self.pending.get(tag)
                if fut is not None and not fut.done():
                    fut.set_exception(exc)

    def on_readable(self) -> None:
        self.bell.drain()
        self.dispatch()

    def dispatch(self) -> None:
        take = self.ring.take
        faults = 0
        while True:
            try:
                rec = take()
            except CorruptRecord as exc:  # foreign bytes in our ring: it resynchronised
                log.error("response ring: %s", exc)
                faults += 1
                if faults > 8:
                    break
                continue
            if rec is None:
                break
            if rec.kind & P.TYPE_MASK == P.MULTI:
                try:
                    answers = self.handle.decode(self, rec)
                except Exception as exc:  # a malformed multi-answer: nobody can be matched
                    log.error("malformed answer record: %s", exc)
                    continue
                for tag, kind, value in answers:
                    self.deliver(tag, kind, value)
                continue
            target = self.pending.get(rec.tag)
            if target is None and rec.tag not in self.envelopes:
                self.handle.discard(rec)  # answer to a call that timed out or was cancelled
                continue
            kind = rec.kind & P.TYPE_MASK
            try:
                value = self.handle.decode(self, rec)
            except Exception as exc:
                value, kind = exc, -1
            self.deliver(rec.tag, kind, value)
        self.update_arm()

    def deliver(self, tag: int, kind: int, value: Any) -> None:
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
                target.put_nowait((False, self.handle.error_of(kind, value)))
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
            target.set_exception(self.handle.error_of(kind, value))

    def update_arm(self) -> None:
        want = bool(self.pending)
        if want != self.armed:
            self.armed = want
            if want:
                self.bell.arm()
                self.dispatch_once_more()
            else:
                self.bell.disarm()

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
        super().close()


class ShmHandle(RunnerHandle):
    """Calls a runner's workers through shared memory; spawns an embedded server if needed."""

    def __init__(self, runner: Any, *, spawn: bool = True, timeout: float | None = None) -> None:
        from runnerlib.server import AlreadyServed, Server, class_ref

        self.runner = runner
        settings = runner.settings()
        self.timeout = float(timeout if timeout is not None else settings.timeout)
        self.allow_pickle = bool(settings.allow_pickle)
        ns = registry.namespace()
        self.server: Server | None = None
        info = registry.find(runner.name, ns)
        if info is None:
            if not spawn:
                raise errors.ServerNotFound(
                    f"no server is running runner {runner.name!r} in namespace {ns!r}; start "
                    "one (runnerlib.Server or `python -m runnerlib serve`) or call "
                    "init_client() with spawn=True"
                )
            server = Server([runner], namespace=ns)
            try:
                server.start()
                self.server = server
            except AlreadyServed:
                pass  # another process won the race to spawn: attach to its server
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
        self.requests = Ring.attach(info.request_ring)
        self.workers_bell = Doorbell.attach(self.ctl.segment, WORKERS_BELL_OFFSET)
        self._local = threading.local()
        self._channels: weakref.WeakSet[_Channel] = weakref.WeakSet()
        self._loop_channels: weakref.WeakKeyDictionary[Any, _LoopChannel] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        self.handoffs = HandoffPool()
        self.handoff_reader = HandoffReader()
        self.closed = False

    # -- channels ------------------------------------------------------------------------------

    def _thread_channel(self) -> _Channel:
        ch = getattr(self._local, "channel", None)
        if ch is None or ch.closed:
            self._check_open()
            ch = _Channel(self.ctl)
            self._local.channel = ch
            with self._lock:
                self._channels.add(ch)
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
            ch = _LoopChannel(self.ctl, loop, self)
            with self._lock:
                self._loop_channels[loop] = ch
                self._channels.add(ch)
        return ch

    def _check_open(self) -> None:
        if self.closed:
            raise errors.StateError(f"runner {self.runner.name!r} was destroyed")

    # -- sending -------------------------------------------------------------------------------

    def _index(self, method: Any) -> int:
        try:
            return self.method_index[method.name]
        except KeyError:
            raise errors.RunnerError(
                f"the server of runner {self.runner.name!r} has no method {method.name!r}"
            ) from None

    def server_alive(self) -> bool:
        return self.ctl.state == READY and registry.pid_alive(self.ctl.server_pid)

    def _encode(self, args: tuple, kwargs: dict) -> Any:
        """Plan the call's message; an unsupported value is a TypeError at the call site."""
        return codec.encode((args, kwargs), allow_pickle=self.allow_pickle)

    def _send(self, ch: _Channel, tag: int, midx: int, args: tuple, kwargs: dict,
              deadline: float, wait_until: float | None = None) -> int:
        """Encode the call into the request ring; wait for space until ``wait_until``
        (default: the call's deadline). Returns the size of the encoded call."""
        plan = self._encode(args, kwargs)
        self._send_plan(tag, midx, plan, deadline, wait_until)
        return int(plan.nbytes)

    def _reserve(self, size: int, kind: int, tag: int, wait_until: float) -> Any:
        try:
            return self.requests.reserve(size, kind=kind, tag=tag,
                                         timeout=max(wait_until - time.monotonic(), 0.0),
                                         alive=self.server_alive)
        except RingFull:
            if not self.server_alive():
                raise errors.WorkerDied(
                    f"the server of runner {self.runner.name!r} stopped") from None
            raise errors.RunnerTimeout(
                f"runner {self.runner.name!r}: the request ring stayed full until the call's "
                "timeout (workers are overloaded)") from None

    def _send_plan(self, tag: int, midx: int, plan: Any, deadline: float,
                   wait_until: float | None = None) -> None:
        ring = self.requests
        size = P.PREFIX_SIZE + plan.nbytes
        kind = P.CALL | midx
        ref = None
        if size > ring.max_record:
            ref, view = self.handoffs.acquire(plan.nbytes)
            plan.write_into(view)
            size = P.PREFIX_SIZE + len(ref)
            kind |= P.BIG
        try:
            res = self._reserve(size, kind, tag, wait_until or deadline)
        except BaseException:
            if ref is not None:
                self.handoffs.cancel(ref)
            raise
        buf = res.buf
        P.PREFIX.pack_into(buf, 0, time.monotonic(), deadline)
        if ref is None:
            plan.write_into(buf[P.PREFIX_SIZE:])
        else:
            buf[P.PREFIX_SIZE:size] = ref
        res.commit()
        self.workers_bell.ring()

    def send_many(self, ch: _LoopChannel, calls: list[tuple[int, int, Any, float]]) -> None:
        """Send the calls one event-loop tick produced as one CALL | MANY record: one ring
        reservation and one wake-up for all of them (see protocol.MANY_HEAD)."""
        if len(calls) == 1:
            tag, midx, plan, deadline = calls[0]
            self._send_plan(tag, midx, plan, deadline, time.monotonic() + 0.002)
            return
        n = len(calls)
        pos = P.PREFIX_SIZE + P.MANY_HEAD.size + P.ENTRY.size * n
        offsets = []
        for _tag, _midx, plan, _deadline in calls:
            pos = (pos + 63) & -64
            offsets.append(pos)
            pos += plan.nbytes
        if pos > self.requests.max_record:  # too big together: halves, until they fit
            half = n // 2
            self.send_many(ch, calls[:half])
            self.send_many(ch, calls[half:])
            return
        envelope = ch.next_tag()
        res = self._reserve(pos, P.CALL | P.MANY, envelope, time.monotonic() + 0.002)
        buf = res.buf
        P.PREFIX.pack_into(buf, 0, time.monotonic(), max(c[3] for c in calls))
        P.MANY_HEAD.pack_into(buf, P.PREFIX_SIZE, n)
        at = P.PREFIX_SIZE + P.MANY_HEAD.size
        for (tag, midx, plan, deadline), off in zip(calls, offsets, strict=True):
            P.ENTRY.pack_into(buf, at, tag, midx, deadline, off, plan.nbytes)
            at += P.ENTRY.size
            plan.write_into(buf[off : off + plan.nbytes])
        res.commit()
        self.workers_bell.ring()
        ch.envelopes[envelope] = [c[0] for c in calls]

    # -- receiving ---------------------------------------------------------------------------

    def decode(self, ch: _Channel, rec: Any) -> Any:
        body: pa.Buffer = rec.buffer
        if rec.kind & P.BIG:
            body = self.handoff_reader.open(body)
        return codec.decode(body, copy=ch.ring.used_fraction() > 0.5)

    def discard(self, rec: Any) -> None:
        """Drop an answer nobody waits for (its call timed out); frees a handoff it names."""
        if rec.kind & P.BIG:
            self.handoff_reader.discard(rec.buffer)

    def error_of(self, kind: int, value: Any) -> BaseException:
        if kind == -1:
            return value
        if kind in (P.ERROR, P.DIED):
            return rebuild_exception(value)
        return errors.ProtocolError(f"unexpected answer kind {kind:#x}")

    def _timeout_of(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else float(timeout)

    def run_method(self, method: Any, args: tuple, kwargs: dict, timeout: float | None) -> Any:
        ch = self._thread_channel()
        midx = self._index(method)
        tag = ch.next_tag()
        deadline = time.monotonic() + self._timeout_of(timeout)
        spin = SPIN_SYNC + SPIN_PER_BYTE * self._send(ch, tag, midx, args, kwargs, deadline)
        chunks: list[Any] = []
        while True:
            kind, value = self._wait_sync(ch, tag, deadline, spin)
            if kind == P.CHUNK:
                chunks.append(value)
                continue
            if kind == P.OK:
                return value
            if kind == P.END:
                return chunks
            raise self.error_of(kind, value)

    def _wait_sync(self, ch: _Channel, tag: int, deadline: float,
                   spin: float = SPIN_SYNC) -> tuple[int, Any]:
        ring = ch.ring
        while True:
            rec = ring.take()
            if rec is not None:
                if rec.kind & P.TYPE_MASK == P.MULTI:  # one thread, one call: rare, but valid
                    try:
                        answers = self.decode(ch, rec)
                    except Exception as exc:
                        return -1, exc
                    for t, kind, value in answers:
                        if t == tag:
                            return kind, value
                    continue
                if rec.tag != tag:
                    self.discard(rec)  # a late answer to an earlier call that timed out
                    continue
                try:
                    return rec.kind & P.TYPE_MASK, self.decode(ch, rec)
                except Exception as exc:
                    return -1, exc
            left = deadline - time.monotonic()
            if left <= 0:
                raise errors.RunnerTimeout(
                    f"runner {self.runner.name!r}: no answer within the call's timeout")
            if not ch.bell.wait(ring.has_pending, spin=spin, timeout=min(left, WAKE)):
                self._check_server()

    def _check_server(self) -> None:
        if not registry.pid_alive(self.ctl.server_pid):
            raise errors.WorkerDied(
                f"the server process (pid {self.ctl.server_pid}) of runner "
                f"{self.runner.name!r} died")

    async def async_run_method(self, method: Any, args: tuple, kwargs: dict,
                               timeout: float | None) -> Any:
        ch = self._loop_channel()
        midx = self._index(method)
        plan = self._encode(args, kwargs)
        tag = ch.next_tag()
        deadline = time.monotonic() + self._timeout_of(timeout)
        fut = ch.loop.create_future()
        ch.pending[tag] = fut
        try:
            if (ch.outgoing or len(ch.pending) > 1) and (
                P.PREFIX_SIZE + plan.nbytes <= self.requests.max_record
            ):
                # other calls of this loop are in flight: leave with them at the end of this
                # tick, in one record
                ch.queue(tag, midx, plan, deadline)
                ch.update_arm()
            else:
                await self._send_plan_async(tag, midx, plan, deadline)
                # a short inline spin: a back-to-back answer arrives before a wake-up would
                spin_until = time.monotonic() + SPIN_ASYNC
                while not fut.done() and time.monotonic() < spin_until:
                    if ch.ring.has_pending():
                        ch.dispatch()
            if not fut.done():
                ch.update_arm()
                await self._await(fut, ch, deadline)
            return fut.result()
        finally:
            ch.pending.pop(tag, None)
            ch.update_arm()

    async def _send_plan_async(self, tag: int, midx: int, plan: Any, deadline: float) -> None:
        # back-pressure must not block the loop: try briefly, then yield and retry
        while True:
            try:
                self._send_plan(tag, midx, plan, deadline,
                                wait_until=min(deadline, time.monotonic() + 0.002))
                return
            except errors.RunnerTimeout:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.001)

    async def _await(self, fut: Any, ch: _LoopChannel, deadline: float) -> None:
        while not fut.done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise errors.RunnerTimeout(
                    f"runner {self.runner.name!r}: no answer within the call's timeout")
            done, _ = await asyncio.wait([fut], timeout=min(left, WAKE))
            if not done:
                if ch.ring.has_pending():
                    ch.dispatch()
                self._check_server()

    async def async_stream_method(self, method: Any, args: tuple, kwargs: dict,
                                  timeout: float | None) -> AsyncIterator[Any]:
        ch = self._loop_channel()
        midx = self._index(method)
        tag = ch.next_tag()
        deadline = time.monotonic() + self._timeout_of(timeout)
        queue: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue()
        ch.pending[tag] = queue
        try:
            await self._send_plan_async(tag, midx, self._encode(args, kwargs), deadline)
            ch.update_arm()
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise errors.RunnerTimeout(
                        f"runner {self.runner.name!r}: stream not finished within its timeout")
                try:
                    more, value = await asyncio.wait_for(queue.get(), min(left, WAKE))
                except TimeoutError:
                    if ch.ring.has_pending():
                        ch.dispatch()
                    self._check_server()
                    continue
                if more:
                    yield value
                elif value is None:
                    return
                else:
                    raise value
        finally:
            ch.pending.pop(tag, None)
            ch.update_arm()

    # -- lifecycle --------------------------------------------------------------------------

    async def is_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if self.server_alive() and any(
                int(self.ctl.workers[i, W_STATE]) == W_READY
                and registry.pid_alive(int(self.ctl.workers[i, W_PID]))
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
        if self.closed:
            return
        self.closed = True
        with self._lock:
            channels = list(self._channels)
            self._channels = weakref.WeakSet()
            self._loop_channels = weakref.WeakKeyDictionary()
        for ch in channels:
            ch.close()
        self.handoffs.close()
        self.handoff_reader.close()
        self.workers_bell.close()
        self.requests.close()
        self.ctl.close()
        self._stop_own_server()

"""A multi-producer multi-consumer ring of variable-length records in one shared segment.

Records are written and read in place (zero copy). Allocation and taking are serialised by a
robust spin lock (CAS of the holder's pid and thread id; a dead holder's lock is broken).
Releases come in any order, from any thread, with a release store; producers that need space
sweep the free cursor over contiguous released records. Byte layout: docs/wire-format-ring.md,
and ipc/ring_layout.py for the constants, which this module takes from there only.

Two implementations: this module's Python code (the reference: it handles every case) and the
optional C hot paths of ipc._fastring, used when the extension is built, matches
ipc.ring_layout (checked at import) and RUNNERLIB_PURE_PYTHON is unset. Each operation picks
one of them in one place (see "dispatch" below); the C code answers with a named
ipc.ring_layout.Outcome and hands whatever it does not finish to the Python code.

Nothing read from shared memory is trusted: every header is validated before use, and a
corrupt one raises CorruptRecord after the ring resynchronises, never an out-of-bounds access.
"""

from __future__ import annotations

import importlib
import os
import struct
import sys
import time
import warnings
from collections.abc import Callable
from threading import get_native_id
from typing import cast

import pyarrow as pa

from ipc import atomics, liveness, ring_layout
from ipc.errors import CorruptRecord, FastPathDisabled, IpcError, RingFull, SegmentError
from ipc.names import LOCK_TAG, SHM_DIR, Owner
from ipc.ring_layout import (
    ALIGN,
    COMMITTED,
    EARLY_WRAP,
    EMPTY,
    HEADER_SIZE,
    LOCK_PID_MASK,
    MAGIC,
    MIN_CAPACITY,
    PENDING_PEEK,
    RECORD_HEADER_SIZE,
    RELEASED,
    RESERVED,
    SCAN_LIMIT,
    SKIP,
    TAKEN,
    USER_OFFSET,
    USER_SIZE,
    VERSION,
    FastRing,
    Outcome,
    State,
)
from ipc.segment import Segment, pid_alive

__all__ = [
    "Ring",
    "Reservation",
    "Record",
    "CopiedRecord",
    "HEADER_SIZE",
    "RECORD_HEADER_SIZE",
    "ALIGN",
    "USER_OFFSET",
    "USER_SIZE",
]

if sys.byteorder != "little":  # pragma: no cover
    raise ImportError("ipc.ring lays records out little-endian and needs a little-endian host")


def _load_fast() -> FastRing | None:
    """The C hot paths: None when not built, not wanted (RUNNERLIB_PURE_PYTHON) or built for
    another layout. A mismatch warns (FastPathDisabled) instead of failing the import: the
    Python paths are complete and speak ipc.ring_layout, so this process stays correct, only
    slower, and so do the processes it shares rings with (each checks its own extension)."""
    if os.environ.get("RUNNERLIB_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        ext = importlib.import_module("ipc._fastring")
    except ImportError:  # pragma: no cover - no compiler where it was installed
        return None
    problems = ring_layout.mismatches(ext)
    if problems:
        warnings.warn(
            f"ipc._fastring ({getattr(ext, '__file__', '?')}) was built from sources that "
            f"disagree with ipc/ring_layout.py ({'; '.join(problems)}); the ring runs its "
            "pure-Python paths, correct but slower. Rebuild the extension: "
            "`pip install -e . --no-build-isolation` or `python setup.py build_ext --inplace`",
            FastPathDisabled,
            stacklevel=2,
        )
        return None
    return cast(FastRing, ext)


#: The C hot paths, or None (tests set it to None to run the Python paths).
_fast: FastRing | None = _load_fast()
# the whole-message paths (newer than the FastRing API: absent from an older build)
_put = getattr(_fast, "put", None)
_take_copy = getattr(_fast, "take_copy", None)
_spin_pending = getattr(_fast, "spin_pending", None)
_current_cpu = getattr(_fast, "current_cpu", None)


def current_cpu() -> int:
    """The CPU this thread runs on now (-1 where unknown: no C extension)."""
    return _current_cpu() if _current_cpu is not None else -1  # type: ignore[no-any-return]

#: The Python paths order their publishing stores and observing loads explicitly (through
#: ipc.atomics) where plain memoryview accesses are not already release stores and acquire
#: loads (everywhere but x86-64). docs/wire-format-ring.md, "Memory ordering".
_ORDERED = not atomics.PLAIN_ACCESS_ORDERED

# ring header and record header, as indices of u64 words
_H_MAGIC = ring_layout.OFF_MAGIC // 8
_H_VERSION = ring_layout.OFF_VERSION // 8
_H_HEADER = ring_layout.OFF_HEADER_SIZE // 8
_H_CAPACITY = ring_layout.OFF_CAPACITY // 8
_H_MAXREC = ring_layout.OFF_MAX_RECORD // 8
_H_CREATOR = ring_layout.OFF_CREATOR_PID // 8
_H_LOCK = ring_layout.OFF_LOCK // 8
_H_HEAD = ring_layout.OFF_HEAD // 8  # next byte position to allocate (monotonic)
_H_READ = ring_layout.OFF_READ // 8  # next position to take from (monotonic)
_H_FREE = ring_layout.OFF_FREE // 8  # everything before it is free (monotonic)
_R_STATE = ring_layout.REC_STATE // 8
_R_POS = ring_layout.REC_POS // 8
_R_SPAN = ring_layout.REC_SPAN // 8
_R_NBYTES = ring_layout.REC_NBYTES // 8
_R_KIND = ring_layout.REC_KIND // 8
_R_TAG = ring_layout.REC_TAG // 8
_R_PID = ring_layout.REC_PRODUCER_PID // 8
_R_TAKER = ring_layout.REC_TAKER // 8
_R_WORDS = RECORD_HEADER_SIZE // 8
_STATE_OFF = ring_layout.REC_STATE  # byte offset of the state word in a record header
_RH = struct.Struct(f"<{_R_WORDS}Q")  # a record header, word by word

_STATES = frozenset(int(s) for s in State if s != EMPTY)
_PASSED = frozenset((TAKEN, RELEASED, SKIP))  # states the read cursor steps over

# C outcomes, as plain ints for the hot paths
_OK = int(Outcome.OK)
_EMPTY = int(Outcome.EMPTY)
_BLOCKED = int(Outcome.BLOCKED)

_CLOSED = memoryview(b"")  # the byte view of a closed ring: every use raises ValueError
_CLOSED.release()

_LIVENESS_TTL = 0.01  # seconds a pid liveness answer is reused
_U32 = 1 << 32
_U64 = 1 << 64

# Who this process is to the other users of a ring, in the words it writes there: a record's
# producer field holds pid | owner id << 32, the lock word owner id | thread id << 32. The
# owner id names its liveness lock (ipc.liveness), which is how another process, in any PID
# namespace, tells a dead producer or lock holder from a live one: never by a bare pid.
_PID = os.getpid()
_OWNER_ID = 0  # 32 bits; 0 until this process first uses a ring (and after a fork)
_PRODUCER = 0
_MASK32 = 0xFFFF_FFFF


def _identity() -> int:
    """This process's owner id (becoming an owner on first use); sets _PRODUCER too."""
    global _PID, _OWNER_ID, _PRODUCER
    owner = liveness.me()
    _PID = os.getpid()
    _OWNER_ID = int(owner.id, 16) or 1
    _PRODUCER = (_PID & _MASK32) | _OWNER_ID << 32
    return _OWNER_ID


def _after_fork() -> None:
    global _PID, _OWNER_ID, _PRODUCER
    _PID = os.getpid()
    _OWNER_ID = _PRODUCER = 0  # the child becomes an owner of its own on first use


os.register_at_fork(after_in_child=_after_fork)


def _owner_dead(owner: Owner) -> bool:
    """Provably dead, or gone (no lock file: every live user of a ring holds one)."""
    return liveness.verdict(owner) is not liveness.Verdict.ALIVE


def _producer_dead_value(value: int) -> bool:
    """A record's producer field: pid | owner id << 32 (owner id 0: a bare pid, judged as a
    pid in this namespace)."""
    oid, pid = value >> 32, value & _MASK32
    if oid == 0:
        return pid != os.getpid() and not pid_alive(pid)
    if oid == _OWNER_ID:
        return False
    return _owner_dead(Owner(pid, f"{oid:08x}"))


def _holder_dead(word: int) -> bool:
    """The lock word's holder (owner id | thread id << 32) is dead. Its pid is not in the
    word: its lock file is found by owner id."""
    oid = word & LOCK_PID_MASK
    if oid == (_OWNER_ID or _identity()):
        return False
    suffix = f".{oid:08x}.{LOCK_TAG}"
    try:
        names = [n for n in os.listdir(SHM_DIR) if n.endswith(suffix)]
    except OSError:
        return False
    for name in names:
        try:
            pid = int(name.split(".")[1])
        except (IndexError, ValueError):
            continue
        if not _owner_dead(Owner(pid, f"{oid:08x}")):
            return False
    return True  # no live owner with that id (or its lock file is gone)


class _Corrupt(Exception):
    """Internal: a record header failed validation at `pos`."""

    def __init__(self, pos: int, why: str) -> None:
        super().__init__(pos, why)
        self.pos = pos
        self.why = why


class _SlotToken:
    """Keeps a taken slot (and the mapping) alive; releases the slot when the last view dies.

    Holds its own memoryview of the record header: closing the segment while views live then
    raises BufferError inside Segment.close (which defers the unmap) instead of unmapping, so
    the header's address stays valid for the release, whichever path makes it.
    """

    __slots__ = ("_hdr", "_addr", "_pos", "_released")

    def __init__(self, hdr: memoryview, addr: int, pos: int) -> None:
        self._hdr = hdr
        self._addr = addr
        self._pos = pos
        self._released = False

    def release(
        self,
        _pos: int = _R_POS,
        _state: int = _R_STATE,
        _taken: int = TAKEN,
        _released: int = RELEASED,
        _ordered: bool = _ORDERED,
        _store_release: Callable[[int, int], None] = atomics.store_release,
        _state_off: int = _STATE_OFF,
    ) -> None:
        """Dispatch point of release: the C path, or the Python one. Either is a release store
        of RELEASED, so that every read of the payload comes before the bytes can be reused.
        The Python one uses only ints, the header's own view and default arguments: safe
        from any thread and at interpreter shutdown."""
        if self._released:
            return
        self._released = True
        try:
            fast = _fast
            if fast is not None:
                fast.release(self._addr, self._pos)
                return
            hdr = self._hdr
            if hdr[_pos] == self._pos and hdr[_state] == _taken:
                if _ordered:
                    _store_release(self._addr + _state_off, _released)
                else:
                    hdr[_state] = _released
        except Exception:  # noqa: BLE001 - a released view or a closed ring: nothing to do
            pass

    def __del__(self) -> None:
        self.release()


class CopiedRecord:
    """A record taken with a private copy of its payload (``Ring.take_copy``), in the shape of
    a ``Record`` for receive paths. With ``ring``, the take kept the record (``release=False``)
    and ``release()`` gives it back at ``pos``; without, it was given back already."""

    __slots__ = ("kind", "tag", "_data", "_ring", "_pos")

    def __init__(self, kind: int, tag: int, data: bytes, ring: Ring | None = None,
                 pos: int = 0) -> None:
        self.kind = kind
        self.tag = tag
        self._data = data
        self._ring = ring
        self._pos = pos

    @property
    def buffer(self) -> pa.Buffer:
        return pa.py_buffer(self._data)

    @property
    def data(self) -> bytes:
        """The private copy itself (immutable: decoded arrays may view it)."""
        return self._data

    @property
    def nbytes(self) -> int:
        return len(self._data)

    def release(self) -> None:
        ring, self._ring = self._ring, None
        if ring is not None:
            ring.release_at(self._pos)

    def __del__(self) -> None:
        self.release()  # a kept record dropped unreleased (an exception on the way) goes back


class Record:
    """A taken record: read its payload through `buffer` (zero copy), then let it go."""

    __slots__ = ("kind", "tag", "nbytes", "_addr", "_token", "_buffer")

    def __init__(self, kind: int, tag: int, nbytes: int, addr: int, token: _SlotToken) -> None:
        self.kind = kind
        self.tag = tag
        self.nbytes = nbytes
        self._addr = addr
        self._token = token
        self._buffer: pa.Buffer | None = None

    @property
    def buffer(self) -> pa.Buffer:
        """Zero-copy pyarrow view of the payload; it keeps the slot from being reused."""
        buf = self._buffer
        if buf is None:
            if self._token._released:
                raise IpcError("record already released")
            buf = self._buffer = pa.foreign_buffer(self._addr, self.nbytes, base=self._token)
        return buf

    @property
    def released(self) -> bool:
        return self._token._released

    def release(self) -> None:
        """Give the slot back now (idempotent); views made earlier must not be used after."""
        self._buffer = None
        self._token.release()

    def __repr__(self) -> str:
        return f"<Record kind={self.kind} tag={self.tag} nbytes={self.nbytes}>"


class Reservation:
    """Space reserved in the ring; write `buf` in place, then commit (or abort)."""

    __slots__ = ("buf", "nbytes", "kind", "tag", "_ring", "_idx", "_addr", "_pos", "_done")

    def __init__(
        self, ring: Ring, pos: int, idx: int, addr: int, buf: memoryview, kind: int, tag: int
    ) -> None:
        self.buf = buf
        self.nbytes = len(buf)
        self.kind = kind
        self.tag = tag
        self._ring = ring
        self._idx = idx  # the record header, as a word index into the segment
        self._addr = addr  # ... and as an address
        self._pos = pos
        self._done = False

    def _finish(self, state: int) -> None:
        """Dispatch point of commit and abort: the C path, or the Python one."""
        if self._done:
            raise IpcError("reservation already committed or aborted")
        self._done = True
        q = self._ring._q  # open ring; `buf` (alive until below) keeps the mapping anyway
        if q is not None:
            # a release store: it publishes the payload (commit) or gives the bytes back
            fast = _fast
            if fast is not None:
                fast.finish(self._addr, self._pos, state)
            elif q[self._idx + _R_POS] == self._pos:
                if _ORDERED:
                    atomics.store_release(self._addr + _STATE_OFF, state)
                else:
                    q[self._idx + _R_STATE] = state
        try:
            self.buf.release()
        except BufferError:
            pass  # the writer kept an export (a numpy view...): harmless, the mapping stays

    def commit(self) -> None:
        """Publish the record to consumers."""
        self._finish(COMMITTED)

    def abort(self) -> None:
        """Give the space back unpublished."""
        self._finish(RELEASED)

    @property
    def done(self) -> bool:
        return self._done

    def __del__(self) -> None:
        if not self._done:
            try:
                self._finish(RELEASED)
            except Exception:  # noqa: BLE001 - interpreter shutdown
                pass


class Ring:
    """Variable-length records in one Segment; see the module docstring."""

    def __init__(self, segment: Segment) -> None:
        self.segment = segment
        self.name = segment.name
        size = segment.size
        if size < HEADER_SIZE + MIN_CAPACITY or size % 8:
            raise SegmentError(f"segment {segment.name} is too small for a ring ({size} bytes)")
        b = segment.buf
        q = b.cast("Q")
        try:
            if q[_H_MAGIC] != MAGIC or q[_H_VERSION] != VERSION:
                raise SegmentError(f"segment {segment.name} does not hold a version-{VERSION} ring")
            cap = q[_H_CAPACITY]
            if q[_H_HEADER] != HEADER_SIZE or cap != size - HEADER_SIZE or cap % ALIGN:
                raise CorruptRecord(f"ring header of {segment.name} has a bad geometry")
            if q[_H_MAXREC] != cap // 2 - RECORD_HEADER_SIZE:
                raise CorruptRecord(f"ring header of {segment.name} has a bad max_record")
        except BaseException:
            q.release()
            raise
        self.capacity: int = cap
        self.max_record: int = cap // 2 - RECORD_HEADER_SIZE
        # past this offset a producer wraps as soon as the start of the ring is free
        self._early_wrap = min(EARLY_WRAP, cap // 4)
        self.user_offset = USER_OFFSET
        self._b: memoryview = b  # _CLOSED once closed
        self._q: memoryview | None = q
        self._lock_addr = segment.address + _H_LOCK * 8
        self._lock_word = atomics.AtomicWord(self._lock_addr)
        self._base = segment.address
        self._alive_cache: dict[int, tuple[bool, float]] = {}

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def create(cls, capacity: int, *, tag: str = "ring", prefault: int | None = None) -> Ring:
        """A new ring of `capacity` data bytes (rounded up to 64) in a new segment."""
        cap = max(MIN_CAPACITY, (int(capacity) + ALIGN - 1) // ALIGN * ALIGN)
        seg = Segment.create(
            HEADER_SIZE + cap,
            tag=tag,
            prefault=None if prefault is None else HEADER_SIZE + prefault,
        )
        try:
            q = seg.buf.cast("Q")
            q[_H_HEADER] = HEADER_SIZE
            q[_H_CAPACITY] = cap
            q[_H_MAXREC] = cap // 2 - RECORD_HEADER_SIZE
            q[_H_CREATOR] = os.getpid()
            q[_H_VERSION] = VERSION
            q[_H_MAGIC] = MAGIC  # last: attachers check it
            q.release()
            return cls(seg)
        except BaseException:
            seg.close()
            seg.unlink()
            raise

    @classmethod
    def attach(cls, name: str) -> Ring:
        """Map an existing ring, validating its header."""
        seg = Segment.attach(name)
        try:
            return cls(seg)
        except BaseException:
            seg.close()
            raise

    def close(self) -> None:
        """Unmap (deferred by the segment while records or reservations are still viewed)."""
        q, self._q = self._q, None
        b, self._b = self._b, _CLOSED
        if q is not None:
            try:
                q.release()
            except BufferError:
                pass
        del b
        self.segment.close()

    def unlink(self) -> None:
        self.segment.unlink()

    def __enter__(self) -> Ring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Ring {self.name} capacity={self.capacity}>"

    # -- lock (the Python paths; the C ones take and give it back themselves) --------------------
    def _lock(self, me: int) -> None:
        """Take the ring lock with the word `me` = pid | thread id << 32.

        The pid (low half) is what liveness checks use; the thread id lets the caller's
        `finally` tell whether it holds the lock, even when an exception (Ctrl-C) lands
        between the CAS and the `try`. The CAS is sequentially consistent: an acquire.
        """
        if self._lock_word.cas_value(0, me) != 0:
            self._lock_slow(me)

    def _lock_slow(self, me: int) -> None:
        addr = self._lock_addr
        word = self._lock_word
        spins = 0
        next_check = time.monotonic() + 0.001
        delay = 20e-6
        while True:
            holder = word.cas_value(0, me)
            if holder == 0:
                return
            spins += 1
            napping = spins >= 4000
            if not napping:
                # the lock is held for about a microsecond: yield (letting a preempted holder
                # on this CPU run) rather than sleep, whose shortest nap is ~50 us
                os.sched_yield()
                if spins & 255:
                    continue
            now = time.monotonic()
            if now >= next_check:
                next_check = now + 0.002
                if _holder_dead(holder):
                    # The holder died inside a critical section. Every critical section keeps
                    # the cursors consistent after each single store, so taking over is safe.
                    if atomics.cas64(addr, holder, me):
                        return
                    continue
            if not napping:
                continue
            time.sleep(delay)
            delay = min(delay * 2, 1e-3)

    def _unlock(self, me: int) -> None:
        """Give the lock back with a release store: it publishes every store of the critical
        section to the next holder (a plain aligned store is one on x86-64)."""
        q = self._q
        if q is not None and q[_H_LOCK] == me:
            if _ORDERED:
                atomics.store_release(self._lock_addr, 0)
            else:
                q[_H_LOCK] = 0

    def _check_open(self) -> memoryview:
        q = self._q
        if q is None:
            raise SegmentError(f"ring {self.name} is closed")
        return q

    # -- validation -----------------------------------------------------------------------------
    def _cursors(self, q: memoryview) -> tuple[int, int, int]:
        """The validated cursors (under the lock). Cursors out of order can only come from
        foreign writes: they are reset to an empty ring (the records in it are lost, their
        callers time out) and the caller gets one CorruptRecord, instead of a ring that
        refuses every later operation."""
        head, read, free = q[_H_HEAD], q[_H_READ], q[_H_FREE]
        if (
            not free <= read <= head
            or head - free > self.capacity
            or (head | read | free) & (ALIGN - 1)
        ):
            top = max(head, read, free)
            fresh = 0 if top >= 1 << 62 else (top // self.capacity + 1) * self.capacity
            q[_H_READ] = fresh
            q[_H_FREE] = fresh
            q[_H_HEAD] = fresh
            raise CorruptRecord(
                f"ring {self.name}: cursors out of order (free={free} read={read} head={head}); "
                "reset to an empty ring, records in it were dropped"
            )
        return head, read, free

    def _header(self, pos: int, head: int) -> tuple[int, ...]:
        """Validated record header at `pos` (< head); raises _Corrupt."""
        cap = self.capacity
        off = pos % cap
        h = _RH.unpack_from(self._b, HEADER_SIZE + off)
        st, p, span, n = h[_R_STATE], h[_R_POS], h[_R_SPAN], h[_R_NBYTES]
        if p != pos:
            raise _Corrupt(pos, f"header names position {p}")
        if st not in _STATES:
            raise _Corrupt(pos, f"unknown state {st}")
        if span < RECORD_HEADER_SIZE or span % ALIGN or off + span > cap or pos + span > head:
            raise _Corrupt(pos, f"bad span {span}")
        if st == SKIP:
            if off + span != cap:
                raise _Corrupt(pos, "skip marker does not reach the end of the ring")
        elif n > span - RECORD_HEADER_SIZE:
            raise _Corrupt(pos, f"payload length {n} exceeds its span {span}")
        return h

    def _producer_dead(self, value: int) -> bool:
        if value == _PRODUCER:
            return False
        now = time.monotonic()
        hit = self._alive_cache.get(value)
        if hit is not None and now - hit[1] < _LIVENESS_TTL:
            return not hit[0]
        alive = not _producer_dead_value(value)
        if len(self._alive_cache) > 256:
            self._alive_cache.clear()
        self._alive_cache[value] = (alive, now)
        return not alive

    # -- producer side --------------------------------------------------------------------------
    def reserve(
        self,
        nbytes: int,
        *,
        kind: int = 0,
        tag: int = 0,
        timeout: float | None = None,
        alive: Callable[[], bool] | None = None,
    ) -> Reservation:
        """Reserve `nbytes` of payload; waits while the ring is full (back-pressure)."""
        if not 0 <= nbytes <= self.max_record:
            if nbytes < 0:
                raise ValueError(f"negative record size {nbytes}")
            raise ValueError(
                f"record of {nbytes} bytes exceeds this ring's max_record ({self.max_record}); "
                "the caller must use a dedicated segment for it"
            )
        if not 0 <= kind < _U32:
            raise ValueError(f"kind must be a u32, got {kind}")
        if not 0 <= tag < _U64:
            raise ValueError(f"tag must be a u64, got {tag}")
        span = (nbytes + RECORD_HEADER_SIZE + ALIGN - 1) & -ALIGN
        q = self._q  # held across the C call: a live view keeps the mapping (see Segment.close)
        # dispatch point of allocation: the C path, then the Python one for what it left
        fast = _fast
        if fast is not None and q is not None:
            got = fast.alloc(
                self._base,
                self.capacity,
                span,
                nbytes,
                kind,
                tag,
                _PRODUCER or (_identity() and _PRODUCER),
                _OWNER_ID | get_native_id() << 32,
                self._early_wrap,
            )
            # FULL: the Python path also sweeps the read cursor; SLOW: it handles the rest
            pos = got.pos if got.outcome == _OK else self._alloc_py(span, nbytes, kind, tag, False)
        else:
            pos = self._alloc_py(span, nbytes, kind, tag, False)
        if pos is None:
            pos = self._wait_alloc(span, nbytes, kind, tag, timeout, alive)
        start = HEADER_SIZE + pos % self.capacity
        return Reservation(
            self,
            pos,
            start >> 3,
            self._base + start,
            self._b[start + RECORD_HEADER_SIZE : start + RECORD_HEADER_SIZE + nbytes],
            kind,
            tag,
        )

    def _wait_alloc(
        self,
        span: int,
        nbytes: int,
        kind: int,
        tag: int,
        timeout: float | None,
        alive: Callable[[], bool] | None,
    ) -> int:
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        spin_until = now + 200e-6
        delay = 50e-6
        while True:
            if alive is not None and not alive():
                raise RingFull(f"ring {self.name} is full and its consumer is gone")
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise RingFull(
                    f"ring {self.name} stayed full for {timeout} s "
                    f"(needs {span} bytes, {self.used_fraction():.0%} used)"
                )
            if now < spin_until:
                os.sched_yield()
            else:
                nap = delay if deadline is None else min(delay, max(deadline - now, 0.0))
                time.sleep(nap)
                delay = min(delay * 2, 2e-3)
            pos = self._alloc_py(span, nbytes, kind, tag, True)
            if pos is not None:
                return pos

    def _alloc_py(self, span: int, nbytes: int, kind: int, tag: int, reap: bool) -> int | None:
        """Allocate under the lock (Python path); the record position, or None when full."""
        q = self._check_open()
        b = self._b
        cap = self.capacity
        me = (_OWNER_ID or _identity()) | get_native_id() << 32
        try:
            self._lock(me)
            head, read, free = self._cursors(q)
            off = head % cap
            if free != read:
                # reclaim what was released since: a ring in steady use then keeps going back
                # to its first bytes, which are warm in the caches, instead of walking cold
                # memory (a fresh page costs a fault and a zero-fill, ten times a warm write)
                free = self._sweep_free(q, free, read, head)
            if free == head and off:
                # empty ring: start again at offset 0
                head += cap - off
                read = free = head
                q[_H_READ] = head
                q[_H_FREE] = head
                off = 0
            if off >= self._early_wrap and head + cap - off + span - free <= cap:
                pad = cap - off  # the start of the ring is free: wrap early, stay warm
            else:
                pad = cap - off if off + span > cap else 0
            if head + pad + span - free > cap:
                self._sweep(q, head, reap)
                head, read, free = self._cursors(q)
                off = head % cap
                pad = cap - off if off + span > cap else 0
                if head + pad + span - free > cap:
                    return None
            if pad:
                if free == head:
                    # empty ring: jump every cursor to the start instead of writing a marker
                    head += pad
                    q[_H_READ] = head
                    q[_H_FREE] = head
                else:
                    _RH.pack_into(b, HEADER_SIZE + off, SKIP, head, pad, 0, 0, 0, _PRODUCER, 0)
                    head += pad
                off = 0
            _RH.pack_into(b, HEADER_SIZE + off, RESERVED, head, span, nbytes, kind, tag,
                          _PRODUCER, 0)
            q[_H_HEAD] = head + span
            return head
        finally:
            self._unlock(me)

    def _sweep(self, q: memoryview, head: int, reap: bool) -> None:
        """Under the lock: advance the read cursor over dead records, then the free cursor."""
        try:
            read = self._advance_read(q, head, reap)
        except CorruptRecord:
            read = q[_H_READ]  # resynchronised; a consumer's problem, not this producer's
        self._sweep_free(q, q[_H_FREE], read, head)

    def _sweep_free(self, q: memoryview, free: int, read: int, head: int) -> int:
        """Under the lock: advance the free cursor over released records (each is stepped
        over once; the walk stops at the first record still in use). Stores the cursor only
        when it moved: the header line is shared with every process of the ring."""
        start = free
        try:
            while free < read:
                h = self._header(free, head)
                if h[_R_STATE] != RELEASED and h[_R_STATE] != SKIP:
                    break
                free += h[_R_SPAN]
        except _Corrupt:
            free = read  # resynchronise: everything before the read cursor is reclaimed
        if free != start:
            if _ORDERED:
                # pairs with the release store of abort/release: the reads of whoever had
                # these bytes come before this producer's writes into them
                atomics.fence_acquire()
            q[_H_FREE] = free
        return free

    def _advance_read(self, q: memoryview, head: int, reap: bool) -> int:
        """Under the lock: step the read cursor over taken/released/skip records."""
        read = q[_H_READ]
        try:
            while read < head:
                h = self._header(read, head)
                st = h[_R_STATE]
                if st in _PASSED:
                    read += h[_R_SPAN]
                    continue
                if st == RESERVED and reap and self._producer_dead(h[_R_PID]):
                    q[((HEADER_SIZE + read % self.capacity) >> 3) + _R_STATE] = RELEASED
                    read += h[_R_SPAN]
                    continue
                break
        except _Corrupt as exc:
            q[_H_READ] = head
            raise CorruptRecord(
                f"ring {self.name}: corrupt record header at {exc.pos} ({exc.why}); "
                f"resynchronised, {head - exc.pos} bytes of records dropped"
            ) from None
        q[_H_READ] = read
        return read

    # -- consumer side --------------------------------------------------------------------------
    def take(self, *, taker: int = 0) -> Record | None:
        """The oldest committed record, or None. `taker` (a pid, say) is kept for reclaims.

        Dispatch point of take: the C path, then the Python one where it answered SLOW or was
        blocked by a reservation whose producer is dead (the Python path reclaims it)."""
        if not 0 <= taker < _U64:
            raise ValueError(f"taker must be a u64, got {taker}")
        q = self._check_open()
        me = (_OWNER_ID or _identity()) | get_native_id() << 32
        fast = _fast
        if fast is not None:
            got = fast.take(self._base, self.capacity, taker, me)
            outcome = got.outcome
            if outcome == _OK:
                pos = got.pos
                i = (HEADER_SIZE + pos % self.capacity) >> 3
                addr = self._base + (i << 3)
                return Record(
                    got.kind,
                    got.tag,
                    got.nbytes,
                    addr + RECORD_HEADER_SIZE,
                    _SlotToken(q[i : i + _R_WORDS], addr, pos),
                )
            if outcome == _EMPTY or (
                outcome == _BLOCKED and not self._producer_dead(got.producer_pid)
            ):
                return None
        return self._take_py(q, taker, me)

    def take_copy(self, *, taker: int = 0, max_copy: int, release: bool
                  ) -> tuple[int, int, bytes, int] | Record | None:
        """take(), and for a record of at most ``max_copy`` payload bytes a private copy of
        its payload, in one C call: ``(kind, tag, bytes, pos)``, the record given back at
        once when ``release`` is true (else it stays taken: ``release_at(pos)``). A larger
        record, and every record where the C path is not used, comes back as the ``Record``
        take() gives; None: nothing to take."""
        q = self._q  # held across the C call: a live view keeps the mapping
        if _fast is not None and _take_copy is not None and q is not None:
            got = _take_copy(self._base, self.capacity, taker,
                             _OWNER_ID or _identity(), max_copy,  # C adds the thread id
                             release)
            if got is None:
                return None
            if type(got) is tuple:
                if type(got[2]) is bytes:
                    return got  # type: ignore[no-any-return]
                kind, tag, nbytes, pos = got  # taken, too large to copy: the usual Record
                i = (HEADER_SIZE + pos % self.capacity) >> 3
                addr = self._base + (i << 3)
                return Record(kind, tag, nbytes, addr + RECORD_HEADER_SIZE,
                              _SlotToken(q[i : i + _R_WORDS], addr, pos))
        return self.take(taker=taker)

    def release_at(self, pos: int) -> None:
        """Give back the record at ``pos`` that take_copy(release=False) left taken."""
        q = self._q
        if q is None:
            return
        i = (HEADER_SIZE + pos % self.capacity) >> 3
        fast = _fast
        if fast is not None:
            fast.release(self._base + (i << 3), pos)
        elif q[i + _R_POS] == pos and q[i + _R_STATE] == TAKEN:
            if _ORDERED:
                atomics.store_release(self._base + (i << 3) + _STATE_OFF, RELEASED)
            else:
                q[i + _R_STATE] = RELEASED

    def put(self, nbytes: int, kind: int, tag: int, pieces: tuple[tuple[int, object], ...],
            bell_addr: int) -> int | None:
        """Reserve, write and commit a record of ``nbytes`` payload bytes in one C call:
        ``pieces`` are (offset, buffer) pairs in increasing order, every byte between them
        zeroed. With ``bell_addr`` (a doorbell block's address; 0: none) the answer is the
        number of wake-up bytes to write (the doorbell's sleepers, after a full fence). None:
        nothing done (no C path, ring full, lock busy...): use reserve()."""
        q = self._q  # held across the C call: a live view keeps the mapping
        if _fast is None or _put is None or q is None:
            return None
        n: int = _put(self._base, self.capacity, self._early_wrap,
                      _PRODUCER or (_identity() and _PRODUCER),
                      _OWNER_ID, kind, tag, nbytes, pieces, bell_addr)  # C adds the thread id
        return None if n < 0 else n

    def spin_pending(self, seconds: float) -> bool:
        """Spin up to ``seconds`` until has_pending() would say True (in C, the GIL released,
        where built; else the Python loop of sched_yield and has_pending)."""
        q = self._q  # held across the C call: a live view keeps the mapping
        if q is None:
            return False
        if _fast is not None and _spin_pending is not None:
            return bool(_spin_pending(self._base, self.capacity, max(int(seconds * 1e9), 0)))
        end = time.perf_counter() + seconds
        while True:
            if self.has_pending():
                return True
            if time.perf_counter() >= end:
                return False
            os.sched_yield()

    def take_past_reservations(self, *, taker: int = 0) -> Record | None:
        """Like take(), but looking past any number of unfinished reservations (take() looks
        past SCAN_LIMIT records): for draining a ring a stopped writer pinned, whose
        committed records may lie anywhere behind its reservation. Python path; slow."""
        q = self._check_open()
        me = (_OWNER_ID or _identity()) | get_native_id() << 32
        return self._take_py(q, taker, me, limit=1 << 62)

    def _take_py(self, q: memoryview, taker: int, me: int, limit: int = SCAN_LIMIT
                 ) -> Record | None:
        """Take under the lock (Python path)."""
        cap = self.capacity
        try:
            self._lock(me)
            head, read, free = self._cursors(q)
            if read == head:
                return None
            pos = read
            advancing = True  # the read cursor follows while nothing blocks it
            steps = 0
            try:
                while pos < head and steps < limit:
                    h = self._header(pos, head)
                    st = h[_R_STATE]
                    span = h[_R_SPAN]
                    if st == COMMITTED:
                        if _ORDERED:
                            # pairs with the commit's release store: the payload is visible
                            atomics.fence_acquire()
                        i = (HEADER_SIZE + pos % cap) >> 3
                        q[i + _R_TAKER] = taker
                        q[i + _R_STATE] = TAKEN
                        if advancing:
                            q[_H_READ] = pos + span
                        addr = self._base + (i << 3)
                        return Record(
                            h[_R_KIND],
                            h[_R_TAG],
                            h[_R_NBYTES],
                            addr + RECORD_HEADER_SIZE,
                            _SlotToken(q[i : i + _R_WORDS], addr, pos),
                        )
                    if st == RESERVED:
                        if self._producer_dead(h[_R_PID]):
                            q[((HEADER_SIZE + pos % cap) >> 3) + _R_STATE] = RELEASED
                        elif advancing:
                            advancing = False
                            q[_H_READ] = pos
                    pos += span
                    steps += 1
                if advancing:
                    q[_H_READ] = pos
            except _Corrupt as exc:
                q[_H_READ] = head
                raise CorruptRecord(
                    f"ring {self.name}: corrupt record header at {exc.pos} ({exc.why}); "
                    f"resynchronised, {head - exc.pos} bytes of records dropped"
                ) from None
            return None
        finally:
            self._unlock(me)

    def has_pending(self) -> bool:
        """Lock-free hint that take() may return a record (for doorbell waits).

        Dispatch point of the pending check: the C path, or the Python one."""
        q = self._q  # held across the C call: a live view keeps the mapping
        if q is None:
            return False
        fast = _fast
        if fast is not None:
            return fast.has_pending(self._base, self.capacity)
        read, head = q[_H_READ], q[_H_HEAD]
        if read >= head:
            return False
        if head - read > self.capacity or read & (ALIGN - 1):
            return True  # let take() report the corruption
        cap = self.capacity
        pos = read
        for _ in range(PENDING_PEEK):
            if pos >= head:
                return False
            off = pos % cap
            h = _RH.unpack_from(self._b, HEADER_SIZE + off)
            st, p, span = h[_R_STATE], h[_R_POS], h[_R_SPAN]
            if st != RESERVED or p != pos:
                return True  # committed, or something take() must step over or report
            if span < RECORD_HEADER_SIZE or span % ALIGN or off + span > cap:
                return True
            pos += span
        return True

    def used_fraction(self) -> float:
        """Fraction of the data area held by records not yet released.

        Lock-free while under half full; above that, released records are swept first, so
        the answer does not count space that is free but not yet reclaimed."""
        q = self._q
        if q is None:
            return 0.0
        used = (q[_H_HEAD] - q[_H_FREE]) / self.capacity
        if used > 0.5:
            me = (_OWNER_ID or _identity()) | get_native_id() << 32
            try:
                self._lock(me)
                self._sweep(q, q[_H_HEAD], False)
            finally:
                self._unlock(me)
            used = (q[_H_HEAD] - q[_H_FREE]) / self.capacity
        return min(max(used, 0.0), 1.0)

    def oldest_reservation(self) -> tuple[int, int] | None:
        """(position, producer pid) of the record at the read cursor when it is still being
        written (RESERVED): reclaim cannot pass it. None otherwise. A reservation that stays
        there for long is a stopped writer's (SIGSTOP, a debugger): see runnerlib's request
        ring rotation."""
        q = self._check_open()
        me = (_OWNER_ID or _identity()) | get_native_id() << 32
        try:
            self._lock(me)
            head = q[_H_HEAD]
            self._sweep(q, head, True)  # a dead producer's reservation is released here
            read = q[_H_READ]
            if read >= head:
                return None
            try:
                h = self._header(read, head)
            except _Corrupt:
                return None
            return (read, h[_R_PID]) if h[_R_STATE] == RESERVED else None
        finally:
            self._unlock(me)

    def release_taken_by(self, taker: int) -> list[tuple[int, int]]:
        """Force-release the records taken by `taker` (a dead consumer); their (kind, tag)."""
        return [(kind, tag) for kind, tag, _ in self.release_taken_with_head(taker, 0)]

    def release_taken_with_head(self, taker: int, nbytes: int) -> list[tuple[int, int, bytes]]:
        """Like ``release_taken_by``, with a copy of the first ``nbytes`` of each payload (fewer
        when the payload is shorter), read before the record is released: what the caller
        needs to route an answer (a session prefix) without keeping the slot."""
        q = self._check_open()
        cap = self.capacity
        out: list[tuple[int, int, bytes]] = []
        me = (_OWNER_ID or _identity()) | get_native_id() << 32
        try:
            self._lock(me)
            head, read, free = self._cursors(q)
            pos = free
            try:
                while pos < head:
                    h = self._header(pos, head)
                    if h[_R_STATE] == TAKEN and h[_R_TAKER] == taker:
                        start = HEADER_SIZE + pos % cap + RECORD_HEADER_SIZE
                        peek = bytes(self._b[start : start + min(nbytes, h[_R_NBYTES])])
                        q[((HEADER_SIZE + pos % cap) >> 3) + _R_STATE] = RELEASED
                        out.append((h[_R_KIND], h[_R_TAG], peek))
                    pos += h[_R_SPAN]
            except _Corrupt:
                pass  # take()/sweep resynchronise; nothing more can be found safely
            return out
        finally:
            self._unlock(me)

    def pending_count(self) -> int:
        """Committed records not yet taken (the queue depth), counted under the lock."""
        q = self._check_open()
        me = (_OWNER_ID or _identity()) | get_native_id() << 32
        n = 0
        try:
            self._lock(me)
            head, read, _free = self._cursors(q)
            pos = read
            try:
                while pos < head:
                    h = self._header(pos, head)
                    n += h[_R_STATE] == COMMITTED
                    pos += h[_R_SPAN]
            except _Corrupt:
                pass
            return n
        finally:
            self._unlock(me)

    def stats(self) -> dict[str, int]:
        """Cursor positions, for debugging and counters."""
        q = self._check_open()
        return {
            "capacity": self.capacity,
            "head": q[_H_HEAD],
            "read": q[_H_READ],
            "free": q[_H_FREE],
            "lock_holder": q[_H_LOCK],
        }

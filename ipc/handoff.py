"""Handoff segments: messages too large for a ring record travel in a segment of their own.

The sender writes the message into a segment from its pool and puts only a small reference
(size and name) in the ring; the receiver maps the segment (and keeps it mapped for the next
time) and reads the message in place. Creating and first touching a large segment costs ten
times more than writing warm memory, so segments are reused: the first 8 bytes are a state
word that the sender sets to BUSY before the hand-over and the receiver sets back to FREE when
the last view of the message dies. Only a FREE segment is reused, so a receiver that keeps
its result forever never sees it overwritten. Segments belong to the sender (its pid is in
the name): ``cleanup_stale()`` removes those of a dead sender.

Ordering (docs/wire-format-ring.md, "Memory ordering"): the message is published by the ring
record that carries its reference (a release store at commit); the receiver's FREE is a release
store after its last read of the message, and the sender reads the state word with an acquire
load before it writes into the segment again. On x86-64 plain accesses already are both.
"""

from __future__ import annotations

import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

import pyarrow as pa

from ipc import atomics
from ipc.errors import CorruptRecord, SegmentError
from ipc.segment import Segment

__all__ = ["HandoffPool", "HandoffReader", "REF", "HEADER_SIZE"]

HEADER_SIZE = 64
#: The state word: FREE (the sender may reuse it), BUSY (handed over, not yet mapped by the
#: receiver), OPENED (mapped by the receiver, which frees it when its last view dies). The
#: sender never unlinks a BUSY segment: its name is all the receiver has until it maps it.
FREE, BUSY, OPENED = 0, 1, 2
#: A segment BUSY for this long was never taken (its receiver is gone): unlinked when trimmed.
STALE_BUSY = 120.0
#: The reference that travels in the ring: payload size, then the segment name (ASCII).
REF = struct.Struct("<Q")
_ROUND = 64 << 10  # a kept message holds at most this much more than its size
# explicit acquire/release through ipc.atomics where plain accesses are not already (not x86-64)
_ORDERED = not atomics.PLAIN_ACCESS_ORDERED


class HandoffPool:
    """Sender side: hands out warm segments whose previous message has been let go."""

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self._segments: list[Segment] = []
        self._handed: dict[str, float] = {}  # segment name -> when it was last handed over
        self._lock = threading.Lock()

    def acquire(self, nbytes: int) -> tuple[bytes, memoryview]:
        """A segment for an ``nbytes`` message, marked BUSY: (ring reference, payload view)."""
        with self._lock:
            return self._acquire(nbytes)

    def _acquire(self, nbytes: int) -> tuple[bytes, memoryview]:
        need = nbytes + HEADER_SIZE
        best = None
        for seg in self._segments:
            if need <= seg.size <= 2 * need + _ROUND and _is_free(seg):
                if best is None or seg.size < best.size:
                    best = seg
        if best is None:
            self._trim()
            size = (need + _ROUND - 1) // _ROUND * _ROUND
            best = Segment.create(size, tag="hand")  # prefaulted: the copy finds warm pages
            self._segments.append(best)
        _state(best)[0] = BUSY
        self._handed[best.name] = time.monotonic()
        ref = REF.pack(nbytes) + best.name.encode("ascii")
        return ref, best.buf[HEADER_SIZE:need]

    def cancel(self, ref: bytes) -> None:
        """The hand-over did not happen: make the segment reusable again."""
        name = bytes(ref[REF.size :]).decode("ascii", "replace")
        for seg in self._segments:
            if seg.name == name:
                _state(seg)[0] = FREE

    def _trim(self) -> None:
        """Keep at most ``keep`` idle segments; unlink opened ones beyond twice that (their
        receivers' mappings stay valid, the memory goes when they let go). A segment not yet
        opened by its receiver stays, unless it was handed over STALE_BUSY ago."""
        free = [s for s in self._segments if _is_free(s)]
        for seg in free[: max(0, len(free) - self.keep + 1)]:
            self._drop(seg)
        opened = [s for s in self._segments if _state_of(s) == OPENED]
        for seg in opened[: max(0, len(opened) - 2 * self.keep)]:
            self._drop(seg)
        now = time.monotonic()
        for seg in [s for s in self._segments if _state_of(s) == BUSY
                    and now - self._handed.get(s.name, now) > STALE_BUSY]:
            self._drop(seg)

    def _drop(self, seg: Segment) -> None:
        self._segments.remove(seg)
        self._handed.pop(seg.name, None)
        seg.unlink()
        seg.close()

    def close(self) -> None:
        with self._lock:
            for seg in list(self._segments):
                self._drop(seg)


class HandoffReader:
    """Receiver side: maps handed-over segments (a few stay mapped for reuse) and returns
    the message as a zero-copy buffer that frees the segment when its last view dies."""

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self._maps: OrderedDict[str, Segment] = OrderedDict()
        self._lock = threading.Lock()

    def open(self, ref: bytes | memoryview | pa.Buffer) -> pa.Buffer:
        with self._lock:
            return self._open(ref)

    def _open(self, ref: bytes | memoryview | pa.Buffer) -> pa.Buffer:
        raw = bytes(ref)
        if len(raw) <= REF.size:
            raise CorruptRecord("handoff reference is too short")
        (nbytes,) = REF.unpack_from(raw)
        try:
            name = raw[REF.size :].decode("ascii")
        except UnicodeDecodeError:
            raise CorruptRecord("handoff reference names no segment") from None
        seg = self._maps.get(name)
        if seg is None or seg.closed:
            try:
                seg = Segment.attach(name)
            except SegmentError as exc:
                raise CorruptRecord(f"handoff segment unavailable: {exc}") from exc
            self._maps[name] = seg
            while len(self._maps) > self.keep:
                _, old = self._maps.popitem(last=False)
                old.close()  # deferred by CPython while views of it live
        else:
            self._maps.move_to_end(name)
        if nbytes + HEADER_SIZE > seg.size:
            raise CorruptRecord(f"handoff of {nbytes} bytes exceeds segment {name}")
        state = _state(seg)
        state[0] = OPENED  # mapped: the sender may unlink its name from now on
        token = _Release(state, seg.address)
        return pa.foreign_buffer(seg.address + HEADER_SIZE, nbytes, base=token)

    def discard(self, ref: bytes | memoryview | pa.Buffer) -> None:
        """Let a message go unread (an answer nobody waits for any more)."""
        try:
            self.open(ref)
        except CorruptRecord:
            pass

    def close(self) -> None:
        with self._lock:
            while self._maps:
                _, seg = self._maps.popitem()
                seg.close()


class _Release:
    """Base of a handed-over message's buffer: frees the segment when the last view dies.
    Holds a view of the mapping, so the mapping outlives every view of the message (and the
    state word's address stays valid)."""

    __slots__ = ("_q", "_addr")

    def __init__(self, q: memoryview, addr: int) -> None:
        self._q = q
        self._addr = addr

    def __del__(
        self,
        _free: int = FREE,
        _ordered: bool = _ORDERED,
        _store_release: Callable[[int, int], None] = atomics.store_release,
    ) -> None:
        # a release store: every read of the message comes before the sender reuses it
        try:
            if _ordered:
                _store_release(self._addr, _free)
            else:
                self._q[0] = _free
        except Exception:  # noqa: BLE001 - mapping already gone at interpreter exit
            pass


def _state(seg: Segment) -> memoryview:
    return seg.buf[:8].cast("Q")


def _state_of(seg: Segment) -> int:
    if _ORDERED:
        return atomics.load_acquire(seg.address)
    return int(_state(seg)[0])


def _is_free(seg: Segment) -> bool:
    """The state word is FREE: an acquire load, paired with the receiver's release store."""
    if _ORDERED:
        return atomics.load_acquire(seg.address) == FREE
    return _state(seg)[0] == FREE

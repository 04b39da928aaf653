"""Handoff segments: messages too large for a ring record travel in a segment of their own.

The sender writes the message into a segment from its pool and puts only a small reference
(size and name) in the ring; the receiver maps the segment (and keeps it mapped for the next
time) and reads the message in place. Creating and first touching a large segment costs ten
times more than writing warm memory, so segments are reused: the first 8 bytes are a state
word that the sender sets to BUSY before the hand-over and the receiver sets back to FREE when
the last view of the message dies. Only a FREE segment is reused, so a receiver that keeps
its result forever never sees it overwritten. Segments belong to the sender (its pid is in
the name): ``cleanup_stale()`` removes those of a dead sender.

A receiver that answers with one of the message's arrays as it came writes the answer around
it in the same segment (ipc.codec.echo) and lends the segment back: it sets the second header
word, BACK, before the answer's record goes, and the sender's reader opens that answer through
its own pool (``HandoffPool.open_back``), its last view clearing BACK. The receiver's own hold
(the state word) is unchanged, so a receiver that keeps the array keeps the segment; the
sender reuses it once FREE and BACK are both 0. Nothing is copied back.

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

__all__ = ["HandoffPool", "HandoffReader", "Lease", "REF", "HEADER_SIZE"]

HEADER_SIZE = 64
#: The state word: FREE (the sender may reuse it), BUSY (handed over, not yet mapped by the
#: receiver), OPENED (mapped by the receiver, which frees it when its last view dies). The
#: sender never unlinks a BUSY segment: its name is all the receiver has until it maps it.
FREE, BUSY, OPENED = 0, 1, 2
#: Header word 1, BACK: set by the receiver when it answers the sender with an array of the
#: message as it came, written in this very segment (ipc.codec.echo); cleared by the sender
#: when its last view of that answer dies. The sender reuses a segment only when FREE and 0.
_BACK_WORD = 1
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
        #: segments taken out of use while a receiver holds them: name unlinked, our mapping
        #: kept, since the receiver may still lend an answer back in one (``open_back``);
        #: closed once FREE with BACK 0
        self._retired: dict[str, Segment] = {}
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

    def open_back(self, name: str, nbytes: int) -> pa.Buffer | None:
        """An answer lent back in one of this pool's segments (``Lease.hand_back``), as a
        buffer whose last view clears the BACK word; None when ``name`` is not ours."""
        with self._lock:
            for seg in self._segments:
                if seg.name == name:
                    break
            else:
                retired = self._retired.get(name)
                if retired is None:
                    return None
                seg = retired
            if nbytes + HEADER_SIZE > seg.size or not _lent(seg):
                raise CorruptRecord(f"answer of {nbytes} bytes in segment {name} was not "
                                    "lent back")
            return pa.foreign_buffer(seg.address + HEADER_SIZE, nbytes, base=_BackHold(seg))

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
        opened = [s for s in self._segments if _state_of(s) == OPENED or _lent(s)]
        for seg in opened[: max(0, len(opened) - 2 * self.keep)]:
            self._retire(seg)
        for name, seg in list(self._retired.items()):
            if _is_free(seg):  # nobody holds it any more, nor can lend anything back in it
                del self._retired[name]
                seg.close()
        now = time.monotonic()
        for seg in [s for s in self._segments if _state_of(s) == BUSY
                    and now - self._handed.get(s.name, now) > STALE_BUSY]:
            self._drop(seg)

    def _drop(self, seg: Segment) -> None:
        self._segments.remove(seg)
        self._handed.pop(seg.name, None)
        seg.unlink()
        seg.close()

    def _retire(self, seg: Segment) -> None:
        """Out of use and its name unlinked (the receiver's mapping stays valid, the memory
        goes when everyone lets go), our mapping kept for an answer lent back in it."""
        self._segments.remove(seg)
        self._handed.pop(seg.name, None)
        seg.unlink()
        self._retired[seg.name] = seg

    def close(self) -> None:
        with self._lock:
            for seg in list(self._segments):
                self._drop(seg)
            while self._retired:  # unlinked already; views alive keep their mapping
                self._retired.popitem()[1].close()


class HandoffReader:
    """Receiver side: maps handed-over segments (a few stay mapped for reuse) and returns
    the message as a zero-copy buffer that frees the segment when its last view dies."""

    def __init__(self, keep: int = 4, own: HandoffPool | None = None) -> None:
        self.keep = keep
        #: this process's pool: an answer may name one of its segments, lent back
        self.own = own
        self._maps: OrderedDict[str, Segment] = OrderedDict()
        self._lock = threading.Lock()

    def open(self, ref: bytes | memoryview | pa.Buffer) -> pa.Buffer:
        with self._lock:
            return self._open(ref)[0]

    def open_lease(self, ref: bytes | memoryview | pa.Buffer
                   ) -> tuple[pa.Buffer, Lease | None]:
        """``open``, and the lease on the segment that the buffer's views hold: through it a
        receiver may answer in the same segment (``Lease.hand_back``); None for an answer
        lent back into a segment of ``own``."""
        with self._lock:
            return self._open(ref)

    def _open(self, ref: bytes | memoryview | pa.Buffer) -> tuple[pa.Buffer, Lease | None]:
        raw = bytes(ref)
        if len(raw) <= REF.size:
            raise CorruptRecord("handoff reference is too short")
        (nbytes,) = REF.unpack_from(raw)
        try:
            name = raw[REF.size :].decode("ascii")
        except UnicodeDecodeError:
            raise CorruptRecord("handoff reference names no segment") from None
        if self.own is not None:
            back = self.own.open_back(name, nbytes)
            if back is not None:  # an answer in our own segment, lent back
                return back, None
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
        token = Lease(seg, nbytes)
        token._q[0] = OPENED  # mapped: the sender may unlink its name from now on
        return pa.foreign_buffer(seg.address + HEADER_SIZE, nbytes, base=token), token

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


class Lease:
    """Base of a handed-over message's buffer: frees the segment when the last view dies.
    Holds a view of the mapping, so the mapping outlives every view of the message (and the
    state word's address stays valid).

    A receiver that answers with an array of the message as it came (``ipc.codec.echo``)
    writes the answer in this segment and lends it back (``hand_back``: the BACK word set);
    the sender's pool reuses the segment only once this lease's views and the sender's views
    of the answer have all died."""

    __slots__ = ("_q", "_addr", "_seg", "_nbytes")

    def __init__(self, seg: Segment, nbytes: int) -> None:
        self._q = _state(seg)
        self._addr = seg.address
        self._seg = seg
        self._nbytes = nbytes

    def message(self) -> memoryview:
        """The message, writable: where an answer around one of its arrays is written."""
        return self._seg.buf[HEADER_SIZE:HEADER_SIZE + self._nbytes]

    def hand_back(self, nbytes: int) -> bytes:
        """Set the BACK word (an answer of ``nbytes`` bytes in this segment, for its sender):
        the reference to put in the answer's record, which publishes both."""
        _store(self._q, self._addr, _BACK_WORD, 1)
        return REF.pack(nbytes) + self._seg.name.encode("ascii")

    def keep(self) -> None:
        """Undo ``hand_back``: the answer did not go."""
        _store(self._q, self._addr, _BACK_WORD, 0)

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
    """The segment's header words: [0] the state, [1] BACK."""
    return seg.buf[:16].cast("Q")


def _store(q: memoryview, addr: int, word: int, value: int) -> None:
    if _ORDERED:
        atomics.store_release(addr + 8 * word, value)
    else:
        q[word] = value


class _BackHold:
    """Base of the sender's view of an answer lent back in its own segment: clears the BACK
    word when the last view dies (a release store after its last read). Holds a view of the
    mapping, as ``Lease`` does."""

    __slots__ = ("_q", "_addr")

    def __init__(self, seg: Segment) -> None:
        self._q = _state(seg)
        self._addr = seg.address

    def __del__(self) -> None:
        try:
            _store(self._q, self._addr, _BACK_WORD, 0)
        except Exception:  # noqa: BLE001 - mapping already gone at interpreter exit
            pass


def _state_of(seg: Segment) -> int:
    if _ORDERED:
        return atomics.load_acquire(seg.address)
    return int(_state(seg)[0])


def _is_free(seg: Segment) -> bool:
    """The state word is FREE and no answer lent back views it: acquire loads, paired with
    the receiver's and the answer's release stores (the state first: BACK is set before the
    receiver's FREE)."""
    return _state_of(seg) == FREE and not _lent(seg)


def _lent(seg: Segment) -> bool:
    """An answer lent back in this segment may still be viewed (its BACK word is set)."""
    if _ORDERED:
        return atomics.load_acquire(seg.address + 8 * _BACK_WORD) != 0
    return _state(seg)[_BACK_WORD] != 0

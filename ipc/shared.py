"""Shared arrays: ndarrays whose memory is a shared-memory segment of their own, so that a
call passes a reference to them (segment name, offset, layout) instead of their bytes.

Lifetime follows Python references in every process (docs/design.md, "Shared arrays"). The
segment's header holds one count, ``refs``: one for each process that holds the segment (its
creator while any of its arrays lives, each receiver while any view it decoded lives) and one
for each reference in flight (added by the sender before the message goes, taken over by the
receiver when it decodes it). The creator never reuses or unlinks a segment while ``refs``
is above zero, so nobody's view is ever overwritten; a segment that stays referenced for
``LINGER`` seconds after its creator let go (a holder that keeps it for ever, or died with a
count it never gave back) is unlinked by name, which frees nothing anybody still maps. A
process that dies (even by SIGKILL) takes its mappings with it; the names it created are
removed by the server's sweep of dead owners (ipc.segment.remove_dead_owner).

Segments whose count has fallen to zero stay mapped in their creator for reuse (``KEEP`` of
them): creating and first touching a large segment costs about as much as writing it, so a
method that returns a fresh shared array on every call writes into warm memory. Like
``numpy.empty``, a shared array's contents are undefined until written.

Header (64 bytes, little-endian u64 words): 0 magic ``RLSHARR1``, 1 ``refs`` (bit 63:
UNLINKED, set by the creator before it unlinks the name; a sender that sees it sends the
bytes instead), 2 the data size; the data starts at byte 64.
"""

from __future__ import annotations

import atexit
import math
import os
import threading
import time
import weakref
from collections import OrderedDict, deque
from typing import Any, Literal

import numpy as np

from ipc import atomics
from ipc.errors import CorruptRecord, OverLimit, SegmentError, TooLarge
from ipc.names import SHM_DIR, parse_name
from ipc.segment import Segment

__all__ = [
    "SharedBlock", "empty", "copy_of", "block_of", "open_view", "sweep", "trim", "set_limit",
    "owned_bytes", "TAG", "HEADER_SIZE", "LINGER", "KEEP", "MAP_KEEP",
]

TAG = "arr"
HEADER_SIZE = 64
MAGIC = int.from_bytes(b"RLSHARR1", "little")
UNLINKED = 1 << 63
COUNT_MASK = (1 << 32) - 1
#: Seconds a segment whose creator let go may stay referenced before its name is unlinked
#: (a test seam: RUNNERLIB_SHARED_LINGER sets it in this process and in those it starts).
LINGER_ENV = "RUNNERLIB_SHARED_LINGER"
LINGER = float(os.environ.get(LINGER_ENV, "") or 60.0)
#: Idle segments (count zero) a creator keeps mapped for reuse.
KEEP = 2
#: Mappings of others' segments a receiver keeps after its views died, so that an array
#: passed again is not mapped (and its pages faulted in: ~8 ms for 64 MiB) afresh. Dropped
#: as soon as their segment is seen unlinked (each receive, each sweep).
MAP_KEEP = 4
_ROUND = 64 << 10  # segment sizes are rounded up to this (and reused up to twice the need)
_OFF_REFS = 8

_lock = threading.RLock()
_pid = os.getpid()  # this process (updated in a forked child)
#: name -> the live block of this process (creator's or receiver's): one mapping and one
#: count per process, however many arrays view it
_live: weakref.WeakValueDictionary[str, SharedBlock] = weakref.WeakValueDictionary()
#: segments this process created whose block died: (segment, when it was let go); blocks
#: dying put theirs in ``_let_go`` (a deque: appends need no lock), sweeps move them here
_idle: list[tuple[Segment, float]] = []
_let_go: deque[tuple[Segment, float]] = deque()
#: every segment this process created and has not unlinked, by name
_mine: dict[str, Segment] = {}
#: mappings of segments other processes created, most recently used last
_mapped: OrderedDict[str, Segment] = OrderedDict()
#: bytes of the segments this process created and has not unlinked
_owned = 0
#: the most bytes of segments this process may create (0: no limit but /dev/shm's room)
_limit = 0


class SharedBlock:
    """One process's hold on a shared array segment: the base of every array viewing it
    here. When the last of them dies the hold goes (the count drops by one)."""

    __slots__ = ("name", "segment", "address", "size", "pid", "creator", "dead", "_pin",
                 "__weakref__")

    def __init__(self, segment: Segment, size: int, creator: bool) -> None:
        self.name = segment.name
        self.segment = segment
        # an export of the mapping: closing the segment cannot unmap it while we live (our
        # arrays reach the memory by address, through __array_interface__)
        self._pin = memoryview(segment.buf)
        self.address = segment.address
        self.size = size
        self.pid = _pid
        self.creator = creator
        #: set first thing in __del__: the weak table still returns a block while its
        #: __del__ runs (another thread may look it up then), and it must not be reused
        self.dead = False

    @property
    def __array_interface__(self) -> dict[str, Any]:
        return {"shape": (self.size,), "typestr": "|u1", "version": 3,
                "data": (self.address + HEADER_SIZE, False)}

    def share(self) -> bool:
        """Count one reference about to be sent; False when it cannot be (the name is gone
        or going, or this block is a forked parent's): then the bytes travel instead."""
        if self.pid != _pid:
            return False
        if not self.creator and not os.path.exists(SHM_DIR + self.name):
            return False  # its creator died and was swept: a receiver could not map it
        addr = self.address + _OFF_REFS
        seen = atomics.load64(addr)
        while not seen & UNLINKED:
            got = atomics.cas64_value(addr, seen, seen + 1)
            if got == seen:
                return True
            seen = got
        return False

    def unshare(self) -> None:
        """Take back a count of ``share`` whose message was never sent."""
        atomics.fetch_add64(self.address + _OFF_REFS, -1)

    def __del__(self) -> None:
        self.dead = True
        try:
            if self.pid != _pid:
                return  # a forked child's copy: the hold is the parent's
            atomics.fetch_add64(self.address + _OFF_REFS, -1)  # the mapping is pinned until now
            if self.creator and not self.segment.closed:  # closed: unlinked while we lived
                # no lock here: __del__ may run inside a sweep of this thread
                _let_go.append((self.segment, time.monotonic()))
            elif not self.creator and _mapped.get(self.name) is not self.segment:
                self.segment.close()  # not kept for reuse (kept ones close when dropped)
        except Exception:  # noqa: BLE001 - interpreter shutdown: the mapping may be gone
            pass

    def __repr__(self) -> str:
        return f"<SharedBlock {self.name} {self.size} bytes>"


def set_limit(nbytes: int) -> None:
    """Cap the bytes of shared-array segments this process may create (0: no cap)."""
    global _limit
    _limit = max(int(nbytes), 0)


def owned_bytes() -> int:
    """Bytes of the segments this process created and has not unlinked (idle ones too)."""
    return _owned


def empty(shape: int | tuple[int, ...], dtype: Any = np.float32, *, limit: int | None = None
          ) -> np.ndarray:
    """A writable C-contiguous array in a shared segment of its own (contents undefined).
    Raises SegmentError when /dev/shm has no room for it, OverLimit past ``limit`` bytes of
    this process's segments (default: what ``set_limit`` set; 0: no limit)."""
    dt = np.dtype(dtype)
    if dt.hasobject or dt.fields is not None or dt.subdtype is not None:
        raise TypeError(f"a shared array holds plain numbers, not {dt}")
    shape_t = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    if any(int(d) < 0 for d in shape_t):
        raise ValueError(f"negative dimensions are not allowed: {shape_t}")
    shape_t = tuple(int(d) for d in shape_t)
    nbytes = math.prod(shape_t) * dt.itemsize
    block = _allocate(max(nbytes, 1), _limit if limit is None else limit)
    return np.ndarray(shape_t, dt, buffer=np.asarray(block), order="C")


def _allocate(nbytes: int, limit: int) -> SharedBlock:
    global _owned
    need = nbytes + HEADER_SIZE
    with _lock:
        _sweep_locked(time.monotonic())
        best = None
        for i, (seg, _since) in enumerate(_idle):
            if need <= seg.size <= 2 * need + _ROUND and _count(seg) == 0:
                if best is None or seg.size < _idle[best][0].size:
                    best = i
        if best is not None:
            seg, _ = _idle.pop(best)
            if atomics.cas64_value(seg.address + _OFF_REFS, 0, 1) == 0:
                _words(seg)[2] = nbytes
                block = SharedBlock(seg, nbytes, creator=True)
                _live[block.name] = block
                return block
            _idle.append((seg, time.monotonic()))  # taken meanwhile: a stale count
        size = (need + _ROUND - 1) // _ROUND * _ROUND
        if limit and _owned + size > limit:
            _drop_idle_locked()  # room kept warm is room we may give back first
            if _owned + size > limit:
                raise OverLimit(
                    f"a shared array of {nbytes} bytes would bring this process's shared "
                    f"arrays to {_owned + size} bytes, over its limit of {limit} bytes")
        seg = Segment.create(size, tag=TAG)  # prefaulted: no SIGBUS later on a full tmpfs
        _owned += size
        _mine[seg.name] = seg
        words = _words(seg)
        words[1] = 1  # the creator's hold
        words[2] = nbytes
        words[0] = MAGIC
        block = SharedBlock(seg, nbytes, creator=True)
        _live[block.name] = block
        return block


def _words(seg: Segment) -> memoryview:
    return seg.buf[:24].cast("Q")


def _count(seg: Segment) -> int:
    return int(atomics.load64(seg.address + _OFF_REFS) & COUNT_MASK)


def sweep() -> None:
    """Reuse-or-release pass over the segments this process let go: keep ``KEEP`` idle ones
    warm, unlink the rest, and unlink those still referenced ``LINGER`` after they were let
    go. Called on each allocation and by a worker's idle loop; cheap when nothing is idle."""
    if _idle or _let_go or _mapped:
        with _lock:
            _sweep_locked(time.monotonic())
            _drop_unlinked_maps(check_names=True)


def _take_let_go() -> None:
    """Move what blocks let go of into ``_idle``: once each, and not when the segment came
    back meanwhile (``_revive``: a live block holds it again)."""
    while _let_go:
        seg, since = _let_go.popleft()
        live = _live.get(seg.name)
        if (live is not None and not live.dead) or any(s is seg for s, _ in _idle):
            continue
        _idle.append((seg, since))


def _sweep_locked(now: float) -> None:
    _take_let_go()
    free = 0
    keep: list[tuple[Segment, float]] = []
    for seg, since in reversed(_idle):  # the newest first: they stay warm
        refs = _count(seg)
        if refs == 0 and free < KEEP:
            free += 1
            keep.append((seg, since))
        elif refs == 0 or now - since > LINGER:
            _unlink(seg)
        else:
            keep.append((seg, since))
    keep.reverse()
    _idle[:] = keep


def trim(*, everything: bool = False) -> None:
    """Unlink the idle segments kept warm and drop kept mappings of others' (with
    ``everything``, also unlink ours still referenced elsewhere: their holders' mappings stay
    valid, only references not yet received fail)."""
    with _lock:
        _sweep_locked(time.monotonic())
        _drop_idle_locked(everything)
        while _mapped:
            _mapped.popitem()[1].close()


def _drop_idle_locked(everything: bool = False) -> None:
    keep = []
    for seg, since in _idle:
        if everything or _count(seg) == 0:
            _unlink(seg)
        else:
            keep.append((seg, since))
    _idle[:] = keep


def _unlink(seg: Segment) -> None:
    """Mark the name gone (senders send bytes from now on), unlink it, drop our mapping."""
    global _owned
    if seg.closed:
        return
    _mine.pop(seg.name, None)
    addr = seg.address + _OFF_REFS
    seen = atomics.load64(addr)
    while not seen & UNLINKED:
        got = atomics.cas64_value(addr, seen, seen | UNLINKED)
        if got == seen:
            break
        seen = got
    try:
        seg.unlink()
    except SegmentError:
        pass
    _owned -= seg.size
    seg.close()


def block_of(a: np.ndarray) -> SharedBlock | None:
    """The shared block an array views, or None (walks numpy's chain of bases)."""
    base = a.base
    while base is not None:
        if type(base) is SharedBlock:
            return base
        if not isinstance(base, np.ndarray):
            return None
        base = base.base
    return None


def open_view(name: str, offset: int, dtype: np.dtype[Any], shape: tuple[int, ...],
              strides: tuple[int, ...], writeable: bool) -> np.ndarray:
    """The array a received reference names, taking over the count its sender added. Every
    field is checked (it came from shared memory): CorruptRecord otherwise."""
    with _lock:
        block = _live.get(name)
        if block is not None and not block.dead and block.pid == _pid:
            atomics.fetch_add64(block.address + _OFF_REFS, -1)  # this process holds it already
        elif name in _mine:
            block = _revive(_mine[name])
        else:
            block = _attach(name)
    lo, hi = _extent(offset, shape, strides, dtype.itemsize)
    if lo < 0 or hi > block.size:
        raise CorruptRecord(
            f"corrupt message: a view of {shape} at {offset} lies outside shared array {name}")
    a: np.ndarray = np.ndarray(shape, dtype, buffer=np.asarray(block), offset=offset,
                               strides=strides)
    if not writeable:
        a.flags.writeable = False
    return a


def _revive(seg: Segment) -> SharedBlock:
    """One of our own segments coming back (a method returned what we passed it): hold it
    again, with the count its sender added, instead of mapping it a second time."""
    _take_let_go()
    for i, (s, _since) in enumerate(_idle):
        if s is seg:
            del _idle[i]
            break
    block = SharedBlock(seg, int(_words(seg)[2]), creator=True)
    _live[seg.name] = block
    return block


def copy_of(a: np.ndarray, limit: int = 0) -> np.ndarray:
    """A read-only copy of ``a`` in a shared segment (same shape, native byte order, C or F
    order): how a large plain array travels, so that a method returning it sends it back
    without a copy. TooLarge past ``limit`` bytes (0: none)."""
    if limit and a.nbytes > limit:
        raise TooLarge(a.nbytes, limit)
    order: Literal["C", "F"] = (
        "F" if a.ndim > 1 and not a.flags.c_contiguous and a.flags.f_contiguous else "C")
    dt = a.dtype if a.dtype.isnative else a.dtype.newbyteorder("=")
    block = _allocate(max(a.nbytes, 1), _limit)
    out: np.ndarray = np.ndarray(a.shape, dt, buffer=np.asarray(block), order=order)
    np.copyto(out, a, casting="equiv")
    out.flags.writeable = False
    return out


def _attach(name: str) -> SharedBlock:
    parsed = parse_name(name)  # (names in our own tables were checked when they got there)
    if parsed is None or not parsed.is_segment or parsed.tag != TAG:
        raise CorruptRecord(f"corrupt message: {name!r} names no shared array")
    _drop_unlinked_maps()
    seg = _mapped.get(name)
    if seg is not None:
        _mapped.move_to_end(name)
        size = int(_words(seg)[2])  # its creator may have reused it for another size
        if size > seg.size - HEADER_SIZE:
            raise CorruptRecord(f"corrupt message: shared array {name} claims {size} bytes")
        block = SharedBlock(seg, size, creator=False)
        _live[name] = block
        return block
    try:
        seg = Segment.attach(name)
    except SegmentError as exc:
        raise CorruptRecord(
            f"shared array {name} is gone: the process that made it has exited or let it go "
            f"more than {LINGER:.0f} s ago ({exc})") from exc
    try:
        if seg.size < HEADER_SIZE or _words(seg)[0] != MAGIC:
            raise CorruptRecord(f"corrupt message: {name} is not a shared array segment")
        size = int(_words(seg)[2])
        if size > seg.size - HEADER_SIZE:
            raise CorruptRecord(f"corrupt message: shared array {name} claims {size} bytes")
    except BaseException:
        seg.close()
        raise
    block = SharedBlock(seg, size, creator=False)
    _live[name] = block
    _mapped[name] = seg
    while len(_mapped) > MAP_KEEP:
        _mapped.popitem(last=False)[1].close()  # a live block's pin keeps it mapped for it
    return block


def _drop_unlinked_maps(check_names: bool = False) -> None:
    """Forget kept mappings whose creator unlinked the segment (its UNLINKED bit; with
    ``check_names``, also a name gone from /dev/shm: its creator died and was swept)."""
    for name, seg in list(_mapped.items()):
        if (atomics.load64(seg.address + _OFF_REFS) & UNLINKED
                or (check_names and not os.path.exists(SHM_DIR + name))):
            del _mapped[name]
            seg.close()


def _extent(offset: int, shape: tuple[int, ...], strides: tuple[int, ...], item: int
            ) -> tuple[int, int]:
    """The bytes [lo, hi) a strided view at ``offset`` spans (nothing: (0, 0))."""
    lo = hi = offset
    for d, s in zip(shape, strides, strict=True):
        if d == 0:
            return 0, 0
        if s >= 0:
            hi += (d - 1) * s
        else:
            lo += (d - 1) * s
    return lo, hi + item


def _after_fork_in_child() -> None:
    """The parent's blocks and idle segments are the parent's: this process starts with none
    (inherited arrays still work here; they travel as bytes, see SharedBlock.share)."""
    global _lock, _pid, _live, _idle, _let_go, _mapped, _mine, _owned
    _lock = threading.RLock()
    _pid = os.getpid()
    _mine = {}
    _live = weakref.WeakValueDictionary()
    _idle = []
    _let_go = deque()
    _mapped = OrderedDict()  # the parent's mappings stay mapped here: inherited arrays use them
    _owned = 0


os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _unlink_at_exit() -> None:
    """Names of what this process made go with it (mappings elsewhere stay valid)."""
    with _lock:
        _sweep_locked(time.monotonic())
        for seg, _ in _idle:
            _unlink(seg)
        _idle.clear()
        for block in list(_live.values()):
            if block.creator and block.pid == os.getpid():
                try:
                    block.segment.unlink()
                except SegmentError:
                    pass

"""Memory fences and 64-bit atomics on shared memory, through ctypes and libatomic.

Python has no fence of its own, and the "declare sleep, fence, re-check" handshake and the
robust ring lock need one (x86 reorders a store with a later load). libatomic ships with gcc.
This module never uses the optional C extension (ipc._fastring): it works wherever libatomic
does.

Release stores and acquire loads (``store_release``, ``load_acquire``, ``fence_acquire``)
are what the ring and handoff protocols publish and observe data with; docs/wire-format-ring.md,
"Memory ordering", says which store pairs with which load. Where plain aligned 8-byte accesses
already have those semantics (x86-64: ``PLAIN_ACCESS_ORDERED``), the hot paths of ipc.ring and
ipc.handoff keep their cheaper plain memoryview stores and loads; elsewhere (aarch64 and other
weakly ordered machines) they call these functions. On a machine without lock-free 64-bit
atomics (``LOCK_FREE_64`` false: 32-bit ones), libatomic falls back to locks private to each
process, which order nothing between processes: importing this module warns
(``ipc.errors.OrderingWarning``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap as _mmap
import platform
import sys
import threading
import warnings

from ipc.errors import OrderingWarning

__all__ = [
    "fence",
    "fence_acquire",
    "fence_release",
    "cas64",
    "cas64_value",
    "fetch_add64",
    "load64",
    "store64",
    "load_acquire",
    "store_release",
    "address_of",
    "AtomicWord",
    "PLAIN_ACCESS_ORDERED",
    "LOCK_FREE_64",
]

# the C11 memory orders, as libatomic takes them
_ACQUIRE = 2
_RELEASE = 3
_SEQ_CST = 5


def _load_libatomic() -> ctypes.CDLL:
    names = ["libatomic.so.1"]
    found = ctypes.util.find_library("atomic")
    if found and found not in names:
        names.append(found)
    errors = []
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError as exc:  # pragma: no cover - depends on the host
            errors.append(f"{name}: {exc}")
    raise ImportError(
        "ipc.atomics needs libatomic (libatomic.so.1), which ships with gcc; install gcc or "
        "the libatomic1 package (e.g. `apt-get install libatomic1`). Tried: " + "; ".join(errors)
    )


_lib = _load_libatomic()
# The calls are a few instructions and never block: keep the GIL (PyDLL) so that the shared
# `expected` cell below cannot race between threads, and skip the GIL release/acquire cost.
_plib = ctypes.PyDLL(_lib._name)

_fence = _plib.atomic_thread_fence
_fence.argtypes = [ctypes.c_int]
_fence.restype = None

_cas = _plib.__atomic_compare_exchange_8
_cas.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.c_int]
_cas.restype = ctypes.c_bool

_fadd = _plib.__atomic_fetch_add_8
_fadd.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int]
_fadd.restype = ctypes.c_uint64

_load = _plib.__atomic_load_8
_load.argtypes = [ctypes.c_void_p, ctypes.c_int]
_load.restype = ctypes.c_uint64

_store = _plib.__atomic_store_8
_store.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int]
_store.restype = None

_MASK = (1 << 64) - 1


def _is_lock_free_64() -> bool:
    try:
        is_lock_free = _plib.__atomic_is_lock_free
    except AttributeError:  # pragma: no cover - a libatomic without it: judge by word size
        return sys.maxsize > 2**32
    is_lock_free.argtypes = [ctypes.c_size_t, ctypes.c_void_p]
    is_lock_free.restype = ctypes.c_bool
    return bool(is_lock_free(8, None))


def ordering_problem(machine: str, pointer_bits: int, lock_free_64: bool) -> str | None:
    """Why the shared-memory protocol cannot be ordered on such a machine, or None.

    Two things must hold for every process of a ring: aligned 8-byte loads and stores do not
    tear (the Python paths make them through memoryviews and struct), and libatomic's 8-byte
    operations are lock-free (its lock-based fallback locks inside one process only)."""
    if pointer_bits < 64 or not lock_free_64:
        return (
            f"this machine ({machine or 'unknown'}, {pointer_bits}-bit) has no lock-free "
            "64-bit atomics: rings, doorbells and handoff segments shared between processes "
            "may tear words or see them out of order; use a 64-bit machine"
        )
    return None


#: Aligned 8-byte plain loads are acquire loads and plain stores are release stores in
#: hardware (total store order): true on x86-64. A plain memoryview access then orders as
#: the protocol needs (the compiler cannot move it across the interpreter's calls either).
PLAIN_ACCESS_ORDERED = platform.machine().lower() in ("x86_64", "amd64") and sys.maxsize > 2**32
#: libatomic's 8-byte operations are lock-free, so they are atomic between processes.
LOCK_FREE_64 = _is_lock_free_64()

_problem = ordering_problem(platform.machine(), 64 if sys.maxsize > 2**32 else 32, LOCK_FREE_64)
if _problem is not None:  # pragma: no cover - 64-bit test hosts only
    warnings.warn(_problem, OrderingWarning, stacklevel=2)


def fence() -> None:
    """Full (sequentially consistent) memory fence."""
    _fence(_SEQ_CST)


def fence_acquire() -> None:
    """Acquire fence: loads before it are ordered before every load and store after it."""
    _fence(_ACQUIRE)


def fence_release() -> None:
    """Release fence: loads and stores before it are ordered before every store after it."""
    _fence(_RELEASE)


# The same function without argtypes, called with prebuilt ctypes objects: half the cost.
_cas_raw = ctypes.PyDLL(_lib._name).__atomic_compare_exchange_8
_cas_raw.restype = ctypes.c_bool
_U64 = ctypes.c_uint64


_tls = threading.local()


def _cell() -> tuple[ctypes.c_uint64, ctypes.c_void_p]:
    """The `expected` in/out cell of CAS, one per thread: a failed CAS writes into it."""
    try:
        return _tls.cell
    except AttributeError:
        value = ctypes.c_uint64(0)
        cell = _tls.cell = (value, ctypes.c_void_p(ctypes.addressof(value)))
        return cell


def cas64(addr: int, expected: int, desired: int) -> bool:
    """Atomically replace the u64 at `addr` with `desired` if it equals `expected`."""
    value, ptr = _cell()
    value.value = expected & _MASK
    return _cas(addr, ptr, desired & _MASK, _SEQ_CST, _SEQ_CST)


def cas64_value(addr: int, expected: int, desired: int) -> int:
    """Like cas64 but returns the value seen (== expected exactly when the swap happened)."""
    value, ptr = _cell()
    value.value = expected & _MASK
    _cas(addr, ptr, desired & _MASK, _SEQ_CST, _SEQ_CST)
    return value.value


class AtomicWord:
    """One fixed shared u64 with its ctypes pointer built once: the lock word's fast path."""

    __slots__ = ("addr", "_ptr", "_desired")

    def __init__(self, addr: int) -> None:
        if addr % 8:
            raise ValueError("an atomic word must be 8-byte aligned")
        self.addr = addr
        self._ptr = ctypes.c_void_p(addr)
        self._desired = (0, _U64(0))  # last desired value and its ctypes object, swapped whole

    def cas_value(self, expected: int, desired: int) -> int:
        """CAS; returns the value seen (== expected exactly when the swap happened)."""
        d = self._desired
        if d[0] != desired:
            d = self._desired = (desired, _U64(desired & _MASK))
        try:
            value, ptr = _tls.cell
        except AttributeError:
            value, ptr = _cell()
        value.value = expected & _MASK
        _cas_raw(self._ptr, ptr, d[1], _SEQ_CST, _SEQ_CST)
        return value.value

    def load(self) -> int:
        return _load(self.addr, _SEQ_CST)

    def store(self, value: int) -> None:
        _store(self.addr, value & _MASK, _SEQ_CST)


def fetch_add64(addr: int, delta: int) -> int:
    """Atomically add `delta` (may be negative, wraps mod 2**64); returns the old value."""
    return _fadd(addr, delta & _MASK, _SEQ_CST)


def load64(addr: int) -> int:
    """Sequentially consistent aligned 8-byte load (unsigned)."""
    return _load(addr, _SEQ_CST)


def store64(addr: int, value: int) -> None:
    """Sequentially consistent aligned 8-byte store."""
    _store(addr, value & _MASK, _SEQ_CST)


def load_acquire(addr: int) -> int:
    """Acquire load of the aligned u64 at `addr`: later loads and stores stay after it, so
    whatever the matching release store published is visible once its value is seen."""
    return _load(addr, _ACQUIRE)


def store_release(addr: int, value: int) -> None:
    """Release store to the aligned u64 at `addr`: every earlier load and store of this
    thread is visible to whoever reads `value` there with an acquire load (or fence)."""
    _store(addr, value & _MASK, _RELEASE)


def address_of(buf: memoryview | _mmap.mmap, offset: int = 0) -> int:
    """Address of byte `offset` of a writable, contiguous buffer (memoryview or mmap)."""
    size = buf.nbytes if isinstance(buf, memoryview) else len(buf)
    if not 0 <= offset <= size or size == 0:
        raise ValueError(f"offset {offset} outside a buffer of {size} bytes")
    cell = ctypes.c_char.from_buffer(buf)  # raises TypeError on read-only buffers
    try:
        return ctypes.addressof(cell) + offset
    finally:
        del cell

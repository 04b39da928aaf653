"""The ring's byte layout and the contract between its two implementations, in one place.

``ipc/ring.py`` takes every offset, size, state value and magic number it uses from here.
``ipc/_fastring.c`` compiles in its own copies of the ones its hot paths use and reports them
through ``_fastring.layout()``; at import, ``ipc.ring`` compares that report with
:func:`description` (see :func:`mismatches`) and, on any difference, runs without the C paths
and says so with a :class:`~ipc.errors.FastPathDisabled` warning. The prose version, for
implementations in other languages, is docs/wire-format-ring.md; tests/ipc/test_ring_layout.py
checks its tables against these constants.

Also here: what the C functions return (:class:`Outcome`, :class:`AllocResult`,
:class:`TakeResult`) and the version of that calling convention (:data:`API_VERSION`).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum
from typing import NamedTuple, Protocol

__all__ = [
    "MAGIC",
    "VERSION",
    "HEADER_SIZE",
    "RECORD_HEADER_SIZE",
    "ALIGN",
    "MIN_CAPACITY",
    "USER_OFFSET",
    "USER_SIZE",
    "State",
    "Outcome",
    "AllocResult",
    "TakeResult",
    "FastRing",
    "API_VERSION",
    "description",
    "mismatches",
]

# -- segment ----------------------------------------------------------------------------------
MAGIC = int.from_bytes(b"RLRING01", "little")  #: header word 0; written last at creation
VERSION = 1  #: header word 1
HEADER_SIZE = 1024  #: bytes of ring header; the data area starts here
RECORD_HEADER_SIZE = 64  #: bytes of header at the start of every record
ALIGN = 64  #: record positions and spans are multiples of this
MIN_CAPACITY = 512  #: smallest data area
USER_OFFSET = 512  #: header bytes USER_OFFSET.. are the ring user's (doorbell blocks)
USER_SIZE = 512

# -- ring header: byte offsets of its u64 words (each shared counter on its own 64-byte line) --
OFF_MAGIC = 0
OFF_VERSION = 8
OFF_HEADER_SIZE = 16
OFF_CAPACITY = 24  #: data area size; segment size - HEADER_SIZE
OFF_MAX_RECORD = 32  #: capacity // 2 - RECORD_HEADER_SIZE
OFF_CREATOR_PID = 40
OFF_LOCK = 64  #: 0 = free, else holder pid | holder thread id << 32
OFF_HEAD = 128  #: position of the next allocation (monotonic)
OFF_READ = 192  #: position from which consumers look for committed records (monotonic)
OFF_FREE = 256  #: every position below it is free for reuse (monotonic)

LOCK_PID_MASK = 0xFFFFFFFF  #: the holder's pid: the low half of the lock word

# -- record header: byte offsets of its u64 words, from the record's start -------------------
REC_STATE = 0
REC_POS = 8  #: the record's own position (validation)
REC_SPAN = 16  #: bytes occupied including the header
REC_NBYTES = 24  #: payload length
REC_KIND = 32  #: u32 chosen by the ring's user
REC_TAG = 40  #: u64 chosen by the ring's user
REC_PRODUCER_PID = 48
REC_TAKER = 56  #: u64 given by the consumer that took it


class State(IntEnum):
    """The value of a record's ``state`` word."""

    EMPTY = 0  #: never valid below ``head``
    RESERVED = 1  #: being written by its producer
    COMMITTED = 2  #: ready to take
    TAKEN = 3  #: being read by a consumer (zero-copy views may be alive)
    RELEASED = 4  #: space may be reused
    SKIP = 5  #: wrap marker reaching the end of the data area


# plain ints for the hot paths (an IntEnum compares slower)
EMPTY, RESERVED, COMMITTED, TAKEN, RELEASED, SKIP = (int(s) for s in State)

# -- behaviour both implementations share ----------------------------------------------------
SCAN_LIMIT = 256  #: records a take may look past unfinished reservations
PENDING_PEEK = 16  #: records the lock-free pending check looks at before answering "maybe"
EARLY_WRAP = 256 << 10  #: wrap early past min(EARLY_WRAP, capacity // 4) when the start is free


# -- the C functions' calling convention -------------------------------------------------------
#: Bumped whenever the arguments or results of a _fastring function change: a build of the
#: extension from other sources then disagrees here and is left unused.
API_VERSION = 2


class Outcome(IntEnum):
    """What a C hot path did, in the ``outcome`` field of its result.

    A C function that cannot finish an operation the common way changes nothing that the
    Python path would not also change (it may sweep the free cursor over released records) and
    answers SLOW or FULL: the caller then runs the Python path, which handles every case.
    """

    #: Done. ``alloc``: the record is RESERVED at ``pos``. ``take``: the record at ``pos`` is
    #: now TAKEN; ``kind``, ``tag`` and ``nbytes`` are its header's.
    OK = 0
    #: ``alloc`` only: no room even after sweeping the free cursor. The Python path also
    #: advances the read cursor (and, waiting, reaps dead producers' reservations).
    FULL = 1
    #: ``take`` only: nothing committed and no unfinished reservation between read and head.
    EMPTY = 2
    #: ``take`` only: nothing committed, but the walk passed over at least one unfinished
    #: reservation; ``producer_pid`` names the producer of the first one. If that process is
    #: dead the caller runs the Python path, which reclaims the reservation.
    BLOCKED = 3
    #: Not attempted or given up: the lock was not free within a short spin (its holder may
    #: be dead: Python breaks such locks), the cursors or a record header failed validation
    #: (Python resynchronises and raises CorruptRecord), or the walk reached SCAN_LIMIT.
    SLOW = 4


class AllocResult(NamedTuple):
    """``_fastring.alloc(...)``: a struct sequence with these fields."""

    outcome: int  #: Outcome.OK, FULL or SLOW
    pos: int  #: the reserved record's position when OK, else 0


class TakeResult(NamedTuple):
    """``_fastring.take(...)``: a struct sequence with these fields (all 0 where unused)."""

    outcome: int  #: Outcome.OK, EMPTY, BLOCKED or SLOW
    pos: int  #: OK: the taken record's position
    kind: int  #: OK: its kind
    tag: int  #: OK: its tag
    nbytes: int  #: OK: its payload length
    producer_pid: int  #: BLOCKED: producer of the first unfinished reservation passed over


class FastRing(Protocol):
    """The functions of ipc._fastring, as ipc.ring calls them (addresses are absolute)."""

    def layout(self) -> dict[str, int]: ...

    def alloc(
        self,
        base: int,
        capacity: int,
        span: int,
        nbytes: int,
        kind: int,
        tag: int,
        pid: int,
        me: int,
        early_wrap: int,
        /,
    ) -> AllocResult: ...

    def take(self, base: int, capacity: int, taker: int, me: int, /) -> TakeResult: ...

    def finish(self, record: int, pos: int, state: int, /) -> None: ...

    def release(self, record: int, pos: int, /) -> None: ...

    def has_pending(self, base: int, capacity: int, /) -> bool: ...


#: The result types the extension must export, with their field names in order.
RESULT_TYPES: dict[str, tuple[str, ...]] = {
    "AllocResult": AllocResult._fields,
    "TakeResult": TakeResult._fields,
}
#: The functions the extension must export.
FUNCTIONS = ("layout", "alloc", "take", "has_pending", "finish", "release")


def description() -> dict[str, int]:
    """The constants that the C extension compiles in, as ``_fastring.layout()`` names them.

    Read at call time, so that a test may change a constant above and see the check fail.
    The rest of the layout (magic, version, header geometry, user area) is read only by the
    Python side, which validates it on attach before handing an address to C.
    """
    return {
        "api_version": API_VERSION,
        "header_size": HEADER_SIZE,
        "record_header_size": RECORD_HEADER_SIZE,
        "align": ALIGN,
        "off_lock": OFF_LOCK,
        "off_head": OFF_HEAD,
        "off_read": OFF_READ,
        "off_free": OFF_FREE,
        "rec_state": REC_STATE,
        "rec_pos": REC_POS,
        "rec_span": REC_SPAN,
        "rec_nbytes": REC_NBYTES,
        "rec_kind": REC_KIND,
        "rec_tag": REC_TAG,
        "rec_producer_pid": REC_PRODUCER_PID,
        "rec_taker": REC_TAKER,
        "state_empty": EMPTY,
        "state_reserved": RESERVED,
        "state_committed": COMMITTED,
        "state_taken": TAKEN,
        "state_released": RELEASED,
        "state_skip": SKIP,
        "scan_limit": SCAN_LIMIT,
        "pending_peek": PENDING_PEEK,
        "outcome_ok": Outcome.OK,
        "outcome_full": Outcome.FULL,
        "outcome_empty": Outcome.EMPTY,
        "outcome_blocked": Outcome.BLOCKED,
        "outcome_slow": Outcome.SLOW,
    }


def mismatches(ext: object) -> list[str]:
    """Every way in which the extension module `ext` disagrees with this description (an
    empty list when it may be used)."""
    missing = [name for name in FUNCTIONS if not callable(getattr(ext, name, None))]
    if missing:
        return [f"missing functions {', '.join(missing)} (built from older sources?)"]
    layout = getattr(ext, "layout", None)
    assert callable(layout)  # checked above
    reported = layout()
    if not isinstance(reported, Mapping):
        return [f"layout() returned {type(reported).__name__}, not a mapping"]
    expected = description()
    problems = []
    for key in sorted(expected.keys() | reported.keys()):
        want, got = expected.get(key), reported.get(key)
        if want != got:
            problems.append(
                f"{key}: C has {'nothing' if got is None else got}, "
                f"Python {'nothing' if want is None else int(want)}"
            )
    for name, fields in RESULT_TYPES.items():
        got_fields = getattr(getattr(ext, name, None), "__match_args__", None)
        if got_fields != fields:
            problems.append(f"{name} fields: C has {got_fields}, Python {fields}")
    return problems

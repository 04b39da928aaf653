"""The session protocol: every byte a client, a worker and the supervisor exchange over rings.

This module is the only place that packs or parses session records; the process roles call
its one send path (``send``, ``send_many``) and its receive paths (``read_calls`` for the
request ring, ``open_answer`` for a channel ring). Byte layout: docs/wire-format-session.md.

A ring record carries two integers besides its payload (docs/wire-format-ring.md): ``kind``
(u32) says what the record is, ``tag`` (u64) which call it belongs to.

Request ring (clients -> workers):
    CALL | method                 payload = PREFIX + codec message of (args, kwargs)
    CALL | BIG | method           payload = PREFIX + name of a handoff segment holding it
    CALL | MANY                   payload = PREFIX + MANY_HEAD + n ENTRY + n messages
Arrays of SHARE_ABOVE bytes or more, and runnerlib.shared_array views, travel inside any of
these messages by reference to a shared-array segment (ipc.shared; "Shared arrays" there).
Channel ring (worker or supervisor -> one client):
    OK / ERROR / CHUNK / END / DIED, optionally | BIG, tag = the call's tag
    MULTI, tag = 0                payload = MULTI_HEAD + n MULTI_ENTRY + n messages
"""

from __future__ import annotations

import builtins
import os
import signal
import struct
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import pyarrow as pa

from ipc import codec, fastpath
from ipc import errors as ipc_errors
from ipc.doorbell import Doorbell
from ipc.errors import CorruptRecord, IpcError
from ipc.handoff import HandoffPool, HandoffReader
from ipc.ring import CopiedRecord, Record, Ring
from ipc.segment import SHM_DIR
from runnerlib import errors

#: Bumped whenever a byte below changes meaning; checked on attach (control header).
PROTOCOL_VERSION = 6

#: The largest message that travels inside a ring record. Larger ones go through a handoff
#: segment of their own (ipc.handoff). A receiver copies an inline message out of the ring as
#: it decodes it and gives the record back at once, so no view a caller or a Runnable keeps
#: ever pins a ring: ring space is borrowed for microseconds, never for as long as a value
#: lives (docs/design.md, "Memory"). Copying 64 KiB costs a few microseconds, about what a
#: handoff costs; above it the handoff's zero-copy view wins.
INLINE_LIMIT = 64 << 10

#: Fault injection for tests: a process with this variable set to N stops itself (SIGSTOP)
#: between reserving and committing its N-th request record, as a debugger or Ctrl-Z can.
STOP_AFTER_RESERVE_ENV = "RUNNERLIB_FAULT_STOP_AFTER_RESERVE"
_stop_after = int(os.environ.get(STOP_AFTER_RESERVE_ENV, "0") or 0)


def _reserved() -> None:
    global _stop_after
    _stop_after -= 1
    if _stop_after == 0:
        os.kill(os.getpid(), signal.SIGSTOP)

# -- record kinds: the high byte is the message type, bits 16-23 flags, low 16 bits the method
CALL = 0x01 << 24
OK = 0x02 << 24
ERROR = 0x03 << 24
CHUNK = 0x04 << 24
END = 0x05 << 24
DIED = 0x06 << 24
MULTI = 0x07 << 24
TYPE_MASK = 0x7F << 24
BIG = 0x01 << 16  # the payload names a handoff segment instead of holding the message
MANY = 0x02 << 16  # a CALL record carrying several calls of one channel
METHOD_MASK = 0xFFFF
MAX_METHODS = METHOD_MASK + 1
#: An answer that could not be decoded on the client side (not a wire value).
UNDECODABLE = -1

# -- tags: channel slot | channel generation (low bits) | per-channel sequence number
SLOT_BITS = 12
GEN_BITS = 20
SEQ_BITS = 32
SLOT_MASK = (1 << SLOT_BITS) - 1
GEN_MASK = (1 << GEN_BITS) - 1
SEQ_MASK = (1 << SEQ_BITS) - 1
MAX_CHANNELS = 1 << SLOT_BITS


def make_tag(slot: int, gen: int, seq: int) -> int:
    return ((slot & SLOT_MASK) << (GEN_BITS + SEQ_BITS)) | ((gen & GEN_MASK) << SEQ_BITS) | (
        seq & SEQ_MASK
    )


_SLOT_SHIFT = GEN_BITS + SEQ_BITS


def slot_of(tag: int) -> int:
    """The channel slot of a tag (``split_tag(tag)[0]``, once per answer)."""
    return (tag >> _SLOT_SHIFT) & SLOT_MASK


def split_tag(tag: int) -> tuple[int, int, int]:
    """(channel slot, generation mod 2**GEN_BITS, sequence)."""
    return (tag >> _SLOT_SHIFT) & SLOT_MASK, (tag >> SEQ_BITS) & GEN_MASK, tag & SEQ_MASK


# -- the request prefix: send time, absolute deadline (CLOCK_MONOTONIC, shared by every process
# of the host) and the sending channel's full 64-bit generation, padded to 64 bytes so that the
# codec message after it keeps 64-byte alignment.
PREFIX = struct.Struct("<ddQ40x")
PREFIX_SIZE = PREFIX.size

def request_route(tag: int, head: bytes | memoryview | pa.Buffer) -> tuple[int, int, int]:
    """(channel slot, generation, mask) to answer a request record with, from its tag and the
    first bytes of its payload: the prefix's full 64-bit generation (mask -1), or, when the
    record is too short to hold a prefix (hostile bytes), the tag's low GEN_BITS of it."""
    slot, gen, _ = split_tag(tag)
    raw = bytes(head[:PREFIX_SIZE])
    if len(raw) < PREFIX_SIZE:
        return slot, gen, GEN_MASK
    return slot, PREFIX.unpack_from(raw, 0)[2], -1


#: A CALL | MANY record: PREFIX, the call count, then one ENTRY per call (its tag, method index,
#: deadline, and the offset and length of its message counted from the payload start), then the
#: messages, each 64-byte aligned. The record's own tag is an *envelope* tag of the channel: a
#: worker that dies holding the record is answered under it, and the client fails every call
#: the envelope carried.
MANY_HEAD = struct.Struct("<I4x")
ENTRY = struct.Struct("<QI4xdQQ")

#: A MULTI record (the answers one batch produced for one channel): the answer count, one
#: MULTI_ENTRY per answer (its call's tag, its kind, the offset and length of its message
#: counted from the payload start), then the messages, each 64-byte aligned. Each answer is
#: the message it would be on its own, so both sides keep the codec's remembered plans for it.
MULTI_HEAD = struct.Struct("<I4x")
MULTI_ENTRY = struct.Struct("<QI4xQQ")


class Call(NamedTuple):
    """One call read from the request ring."""

    tag: int
    method: int
    sent: float
    deadline: float
    channel_gen: int
    body: pa.Buffer | bytes  # bytes: a private copy of the record's (ipc.ring.CopiedRecord)
    inline: bool  # the body lies in the ring record: decode it as a copy, then release


class Outgoing(NamedTuple):
    """One call waiting to be sent: its tag, method index, encoded message and deadline."""

    tag: int
    method: int
    plan: codec.Encoded
    deadline: float


# -- errors: the one table from ipc's errors to runnerlib's, and error payloads ---------------

#: What to do when shared memory is short (the hint of every error that says so).
SHM_FIX = ("give /dev/shm more room (`docker run --shm-size=1g`; in Kubernetes an emptyDir "
           "volume with medium: Memory and a larger sizeLimit mounted on /dev/shm) and raise "
           "shm_budget (RUNNERLIB_SHM_BUDGET) to match")
SHORTAGE = "<shm shortage>"  # a hint filled in with /dev/shm's figures when the error is made

#: Most specific first. Every ``ipc`` error that reaches a runnerlib caller goes through it.
IPC_ERRORS: tuple[tuple[type[IpcError], type[errors.RunnerError], str], ...] = (
    (ipc_errors.EncodeError, errors.EncodeError, ""),
    (ipc_errors.CorruptRecord, errors.ProtocolError, ""),
    (ipc_errors.RingFull, errors.RunnerTimeout, ""),
    (ipc_errors.OverLimit, errors.TransportError,
     " (the shared-memory budget: let go of shared arrays you no longer need, or raise "
     "shm_budget / RUNNERLIB_SHM_BUDGET)"),
    (ipc_errors.SegmentError, errors.TransportError, SHORTAGE),
    (IpcError, errors.TransportError, ""),
)


def shm_space() -> tuple[int, int]:
    """(bytes free, bytes in all) of /dev/shm; (0, 0) where it cannot be read."""
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return 0, 0
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _hint(hint: str) -> str:
    if hint != SHORTAGE:
        return hint
    free, total = shm_space()
    return f" (shared memory is short: /dev/shm has {mib(free)} free of {mib(total)}; {SHM_FIX})"


def too_large(nbytes: int, limit: int) -> errors.TransportError:
    """A message larger than the server's budget lets one be: what it is, and what to do."""
    free, total = shm_space()
    return errors.TransportError(
        f"a message of {mib(nbytes)} does not fit in shared memory: this server takes messages "
        f"up to {mib(limit)}, a quarter of its shared-memory budget (/dev/shm: {mib(free)} free of "
        f"{mib(total)}); send less per call, or {SHM_FIX}")


def _mapped(exc: IpcError) -> tuple[type[errors.RunnerError], str]:
    for ipc_type, runner_type, hint in IPC_ERRORS:
        if isinstance(exc, ipc_type):
            return runner_type, hint
    raise TypeError(f"not an ipc error: {exc!r}")  # pragma: no cover - IpcError is last


def runner_error(exc: IpcError) -> errors.RunnerError:
    """The runnerlib error an ipc error stands for; raise it ``from exc``."""
    runner_type, hint = _mapped(exc)
    return runner_type(f"{exc}{_hint(hint)}")


ErrorPayload = dict[str, str]


def error_payload(exc: BaseException) -> ErrorPayload:
    """How an exception travels: its type, module, message and formatted traceback."""
    message = str(exc)
    if isinstance(exc, IpcError):  # the transport's own errors travel as runnerlib's
        runner_type, hint = _mapped(exc)
        module, name, message = "runnerlib.errors", runner_type.__qualname__, message + _hint(hint)
    else:
        module, name = type(exc).__module__, type(exc).__qualname__
    return {
        "type": name,
        "module": module,
        "message": message,
        "traceback": "".join(traceback.format_exception(exc)),
    }


def runner_error_payload(error: type[errors.RunnerError], message: str) -> ErrorPayload:
    """A runnerlib error raised by the runtime itself (no remote traceback)."""
    return {"type": error.__qualname__, "module": "runnerlib.errors", "message": message,
            "traceback": ""}


_NOT_REBUILT = (SystemExit, KeyboardInterrupt, GeneratorExit)


def rebuild_exception(payload: Any, prefix: str = "") -> BaseException:
    """The exception a remote error payload stands for, with the remote traceback.

    Built-in exception types and runnerlib's errors are rebuilt as themselves; anything else
    becomes ``RemoteError`` naming the original type. Never trusts the payload's shape."""
    if not isinstance(payload, dict):
        return errors.ProtocolError(f"{prefix}malformed error answer: {payload!r:.200}")
    mod = str(payload.get("module", ""))
    typ = str(payload.get("type", ""))
    msg = str(payload.get("message", ""))
    tb = str(payload.get("traceback", ""))
    text = prefix + msg + (f"\n\nRemote traceback:\n{tb}" if tb else "")
    cls: object = None
    if mod == "builtins":
        cls = getattr(builtins, typ, None)
    elif mod == "runnerlib.errors":
        cls = getattr(errors, typ, None)
    if isinstance(cls, type) and issubclass(cls, Exception) and not issubclass(cls, _NOT_REBUILT):
        try:
            return cls(text)
        except Exception:  # noqa: BLE001 - a type whose constructor wants other arguments
            pass
    return errors.RemoteError(f"{mod}.{typ}: {text}", remote_type=f"{mod}.{typ}",
                              remote_traceback=tb)


def answer_error(kind: int, value: object) -> BaseException:
    """The exception a non-OK answer stands for."""
    if kind == UNDECODABLE and isinstance(value, BaseException):
        return value
    if kind in (ERROR, DIED):
        return rebuild_exception(value)
    return errors.ProtocolError(f"unexpected answer kind {kind:#x}")


# -- the send path ---------------------------------------------------------------------------


#: Arrays of this many bytes or more travel as shared arrays (ipc.shared): copied once by
#: their sender, then passed back and forth by reference. Below it the Python cost of a
#: reference exceeds the copy it saves: one hop of the 602 KB image in one process took 96 us
#: by reference against 27 us by handoff (allocation, counts and the view are Python).
SHARE_ABOVE = 1 << 20


def encode(value: object, *, allow_pickle: bool, limit: int = 0) -> codec.Encoded:
    """Plan a message. Arrays of ``SHARE_ABOVE`` bytes or more travel as shared arrays
    (copied once into a segment of their own, then passed back and forth by reference); one
    over ``limit`` bytes (the server's budget; 0: none) is the TransportError of a message
    too large, before any shared memory is taken."""
    try:
        return codec.encode(value, allow_pickle=allow_pickle, share_above=SHARE_ABOVE,
                            share_limit=limit)
    except ipc_errors.TooLarge as exc:
        raise too_large(exc.nbytes, exc.limit) from None


def send(
    ring: Ring,
    bell: Doorbell,
    kind: int,
    tag: int,
    plan: codec.Encoded,
    *,
    timeout: float,
    alive: Callable[[], bool] | None,
    handoffs: HandoffPool | None,
    prefix: tuple[float, float, int] | None = None,
    limit: int = 0,
) -> None:
    """Write one record: inline, or through a handoff segment when it is larger than a ring
    record; reserve, write, commit, ring the peer's doorbell. ``prefix`` (send time, deadline,
    channel generation) is written first on the request ring. Raises ``RingFull`` when the
    ring stays full for ``timeout`` seconds (or ``alive`` turns False); nothing is left
    behind then. A message over ``limit`` bytes (the server's budget; 0: none) is a
    ``TransportError`` before any shared memory is taken."""
    head = PREFIX_SIZE if prefix is not None else 0
    size = head + plan.nbytes
    ref = None
    if plan.nbytes > INLINE_LIMIT or size > ring.max_record:
        if handoffs is None:
            raise ValueError(f"a message of {plan.nbytes} bytes needs a handoff pool")
        if limit and plan.nbytes > limit:
            raise too_large(plan.nbytes, limit)
        ref, view = handoffs.acquire(plan.nbytes)
        plan.write_into(view)
        size = head + len(ref)
        kind |= BIG
    try:
        res = ring.reserve(size, kind=kind, tag=tag, timeout=timeout, alive=alive)
    except BaseException:
        if ref is not None and handoffs is not None:
            handoffs.cancel(ref)
        raise
    try:
        if _stop_after and prefix is not None:
            _reserved()
        buf = res.buf
        if prefix is not None:
            PREFIX.pack_into(buf, 0, *prefix)
        if ref is None:
            plan.write_into(buf[head:] if head else buf)
        else:
            buf[head:size] = ref
    except BaseException:  # Ctrl-C mid-write: give the space back, never half a message
        res.abort()
        if ref is not None and handoffs is not None:
            handoffs.cancel(ref)
        raise
    res.commit()
    bell.ring()


def multi_plan(answers: Sequence[tuple[int, int, codec.Encoded]]) -> codec.Encoded:
    """The payload of a MULTI record carrying these ``(tag, kind, message)`` answers."""
    pos = MULTI_HEAD.size + MULTI_ENTRY.size * len(answers)
    head = [MULTI_HEAD.pack(len(answers))]
    parts = []
    for tag, kind, plan in answers:
        pos = (pos + 63) & -64
        head.append(MULTI_ENTRY.pack(tag, kind, pos, plan.nbytes))
        parts.append((pos, plan))
        pos += plan.nbytes
    return codec.combine(b"".join(head), parts, pos)


def multi_groups(sizes: Sequence[int], limit: int) -> list[tuple[int, int]]:
    """Consecutive ``[start, end)`` runs of answers (message sizes ``sizes``) whose MULTI
    payload stays within ``limit`` bytes (counting each answer's entry and the most padding
    before its message); an answer too large for any is a run of its own."""
    out = []
    start, total = 0, MULTI_HEAD.size
    for i, size in enumerate(sizes):
        cost = MULTI_ENTRY.size + 63 + size
        if i > start and total + cost > limit:
            out.append((start, i))
            start, total = i, MULTI_HEAD.size
        total += cost
    if sizes:
        out.append((start, len(sizes)))
    return out


def many_size(calls: Sequence[Outgoing]) -> tuple[list[int], int]:
    """Offsets of each message in a MANY record, and the record's payload size."""
    pos = PREFIX_SIZE + MANY_HEAD.size + ENTRY.size * len(calls)
    offsets = []
    for call in calls:
        pos = (pos + 63) & -64
        offsets.append(pos)
        pos += call.plan.nbytes
    return offsets, pos


def many_plan(calls: Sequence[Outgoing], channel_gen: int) -> codec.Encoded:
    """The payload of a CALL | MANY record carrying ``calls`` (they must fit: ``many_size``),
    each call's message placed with its own plan."""
    offsets, size = many_size(calls)
    head = [PREFIX.pack(time.monotonic(), max(c.deadline for c in calls), channel_gen),
            MANY_HEAD.pack(len(calls))]
    head.extend(ENTRY.pack(c.tag, c.method, c.deadline, off, c.plan.nbytes)
                for c, off in zip(calls, offsets, strict=True))
    return codec.combine(b"".join(head), list(zip(offsets, (c.plan for c in calls),
                                                   strict=True)), size)


def send_many(
    ring: Ring,
    bell: Doorbell,
    envelope: int,
    channel_gen: int,
    calls: Sequence[Outgoing],
    *,
    timeout: float,
    alive: Callable[[], bool] | None,
) -> None:
    """Write several calls of one channel as one CALL | MANY record (they must fit: see
    ``many_size``): one reservation and one wake-up for all of them, in one C call where the
    messages' buffers allow (``ipc.fastpath``)."""
    plan = many_plan(calls, channel_gen)
    if fastpath.send(ring, bell, CALL | MANY, envelope, plan, None, ring.max_record):
        return
    res = ring.reserve(plan.nbytes, kind=CALL | MANY, tag=envelope, timeout=timeout,
                       alive=alive)
    try:
        plan.write_into(res.buf)
    except BaseException:  # Ctrl-C mid-write: give the space back, never half a record
        res.abort()
        raise
    res.commit()
    bell.ring()


# -- the receive paths -----------------------------------------------------------------------


def read_calls(rec: Record | CopiedRecord, reader: HandoffReader, methods: int) -> list[Call]:
    """The calls a request record carries, every count, offset and length checked against the
    record. Raises ``CorruptRecord`` (or ``ValueError``) for a record that fails alone."""
    kind, tag = rec.kind, rec.tag
    midx = kind & METHOD_MASK
    if kind & TYPE_MASK != CALL:
        raise CorruptRecord(f"unexpected request record kind {kind:#x}")
    # a private copy is read as its bytes (slices of it are bytes of their own, which the
    # decoder's arrays view); a record in the ring through its zero-copy buffer
    data = rec.data if type(rec) is CopiedRecord else None
    buf: Any = data if data is not None else rec.buffer  # bytes or a pyarrow.Buffer
    size = len(data) if data is not None else buf.size
    if size < PREFIX_SIZE:
        raise CorruptRecord(f"request record of {size} bytes is shorter than its prefix")
    sent, deadline, gen = PREFIX.unpack_from(buf, 0)
    if not kind & MANY:
        if midx >= methods:
            raise CorruptRecord(f"no method with index {midx}")
        if kind & BIG:
            return [Call(tag, midx, sent, deadline, gen,
                         reader.open(rec.buffer.slice(PREFIX_SIZE)), False)]
        if data is not None:
            return [Call(tag, midx, sent, deadline, gen, data[PREFIX_SIZE:], True)]
        return [Call(tag, midx, sent, deadline, gen, buf.slice(PREFIX_SIZE), True)]
    if kind & BIG:
        raise CorruptRecord("a MANY record cannot be BIG (its calls travel inline)")
    head = PREFIX_SIZE + MANY_HEAD.size
    if size < head:
        raise CorruptRecord("MANY record shorter than its header")
    (n,) = MANY_HEAD.unpack_from(buf, PREFIX_SIZE)
    table_end = head + n * ENTRY.size
    if n == 0 or table_end > size:
        raise CorruptRecord(f"MANY record claims {n} calls, which do not fit in {size} bytes")
    out = []
    at = head
    for _ in range(n):
        ctag, cmidx, cdeadline, off, length = ENTRY.unpack_from(buf, at)
        at += ENTRY.size
        if off < table_end or off + length > size:
            raise CorruptRecord(f"MANY record entry at {off}+{length} lies outside the record")
        out.append(Call(ctag, cmidx, sent, cdeadline, gen,
                        data[off:off + length] if data is not None else buf.slice(off, length),
                        True))
    return out


def decode_arguments(
    body: pa.Buffer, *, copy: bool, allow_pickle: bool
) -> tuple[tuple[object, ...], dict[str, object]]:
    """A call's ``(args, kwargs)``; anything else in the message is a ``CorruptRecord``."""
    return _arguments(codec.decode(body, copy=copy, allow_pickle=allow_pickle))


def read_single(data: bytes, *, allow_pickle: bool
                ) -> tuple[float, float, int, tuple[object, ...], dict[str, object]]:
    """(sent, deadline, channel generation, args, kwargs) of a record of kind ``CALL | method``
    (no flags) from its private copy: what ``read_calls`` and ``decode_arguments`` give for
    it, the message decoded in place after the prefix (the worker's usual record, in one
    call). Raises as they do."""
    sent, deadline, gen = read_prefix(data)
    args, kwargs = _arguments(codec.decode_at(data, PREFIX_SIZE, allow_pickle=allow_pickle))
    return sent, deadline, gen, args, kwargs


def read_prefix(data: bytes) -> tuple[float, float, int]:
    """(sent, deadline, channel generation) of a request record's private copy."""
    if len(data) < PREFIX_SIZE:
        raise CorruptRecord(f"request record of {len(data)} bytes is shorter than its prefix")
    return PREFIX.unpack_from(data, 0)  # type: ignore[return-value]


def _arguments(value: Any) -> tuple[tuple[object, ...], dict[str, object]]:
    if (
        type(value) is not tuple
        or len(value) != 2
        or type(value[0]) is not tuple
        or type(value[1]) is not dict
        or value[1] and any(type(k) is not str for k in value[1])
    ):
        raise CorruptRecord("a call message must hold (args tuple, kwargs dict with str keys)")
    return value[0], value[1]


def open_answer(rec: Record, reader: HandoffReader, *, allow_pickle: bool) -> object:
    """Decode an answer record and give the record back: an inline answer is copied out of
    the ring, a handoff's is a zero-copy view of its own segment (freed when its last view
    dies). A MULTI record gives its list."""
    try:
        body: pa.Buffer = rec.buffer
        if rec.kind & BIG:
            return codec.decode(reader.open(body), copy=False, allow_pickle=allow_pickle)
        return codec.decode(body, copy=True, allow_pickle=allow_pickle)
    finally:
        rec.release()


def open_multi(rec: Record | CopiedRecord, *, allow_pickle: bool
               ) -> list[tuple[int, int, object]]:
    """The ``(tag, kind, value)`` answers a MULTI record carries, decoded as ``open_answer``
    decodes one (a private copy's arrays view it), every count, offset and length checked
    against the record (a ``CorruptRecord`` otherwise: the record came from shared memory)."""
    try:
        if rec.kind & BIG:
            raise CorruptRecord("a MULTI record is never BIG (its answers travel inline)")
        data: bytes | pa.Buffer = rec.data if type(rec) is CopiedRecord else rec.buffer
        size = len(data) if isinstance(data, bytes) else data.size
        if size < MULTI_HEAD.size:
            raise CorruptRecord("MULTI record shorter than its header")
        (n,) = MULTI_HEAD.unpack_from(data, 0)
        table_end = MULTI_HEAD.size + n * MULTI_ENTRY.size
        if n == 0 or table_end > size:
            raise CorruptRecord(f"MULTI record claims {n} answers, which do not fit in "
                                f"{size} bytes")
        out = []
        for at in range(MULTI_HEAD.size, table_end, MULTI_ENTRY.size):
            tag, kind, off, length = MULTI_ENTRY.unpack_from(data, at)
            if off < table_end or off + length > size:
                raise CorruptRecord(f"MULTI record entry at {off}+{length} lies outside the "
                                    "record")
            body = data[off:off + length] if isinstance(data, bytes) else data.slice(off, length)
            out.append((tag, kind, codec.decode(body, copy=True, allow_pickle=allow_pickle)))
        return out
    finally:
        rec.release()


def discard_answer(rec: Record, reader: HandoffReader) -> None:
    """Drop an answer nobody waits for (its call timed out); frees a handoff it names."""
    try:
        if rec.kind & BIG:
            reader.discard(rec.buffer)
    finally:
        rec.release()

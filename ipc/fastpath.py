"""One C call per small message: a planned message written into a ring and committed, and its
doorbell checked, by ``ipc.ring.Ring.put`` (``ipc._fastring.put``).

A plan (``ipc.codec.Encoded``) is a head of bytes and, per out-of-band buffer, where it goes
and the writer that copies it. Where every writer is one whose bytes are plain byte strings
(a tensor's prefix then its C-contiguous native data, or a bytes buffer), the message is a
list of (offset, buffer) pieces with zeros between them: the C code reserves, copies the
pieces, zeroes the gaps, commits and reads the doorbell's sleepers under one call, instead of
a dozen Python-level steps. Anything else (another writer, a non-contiguous array, a message
that must travel in a handoff segment, no C extension) answers False and the caller takes
its general path, which writes the very same bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ipc.codec.native import fastcodec
from ipc.codec.plan import Encoded, write_bytes
from ipc.codec.tensor import write_tensor
from ipc.doorbell import Doorbell
from ipc.ring import Ring

__all__ = ["pieces", "send"]

_ndarray = np.ndarray
Pieces = tuple[tuple[int, Any], ...]


def _plain(arr: Any, order: str) -> bool:
    """An array the C put can copy as it is: a C-ordered, C-contiguous, native-endian ndarray
    of at least one dimension."""
    return (order == "C" and type(arr) is _ndarray and bool(arr.ndim)
            and arr.flags.c_contiguous and arr.dtype.isnative)


def pieces(plan: Encoded, at: int, prefix: bytes | None = None) -> Pieces | None:
    """The (offset, buffer) pieces of ``plan`` written at offset ``at`` of a payload (after
    ``prefix`` at offset 0), or None when one of its buffers needs its own writer."""
    bufs = plan._bufs
    if len(bufs) == 1 and bufs[0][2] is write_tensor:  # one array: most messages
        off, _length, _writer, (arr, (head, plen, _dtype, order)) = bufs[0]
        off += at
        if not arr.nbytes:
            one: Pieces = ((at, plan._head), (off, head))
        elif not _plain(arr, order):
            return None
        else:
            one = ((at, plan._head), (off, head), (off + plen, arr))
        return one if prefix is None else ((0, prefix), *one)
    out: list[tuple[int, Any]] = [(at, plan._head)]
    if prefix is not None:
        out.insert(0, (0, prefix))
    for off, _length, writer, payload in bufs:
        if writer is write_tensor:
            arr, entry = payload
            head, plen, _dtype, order = entry
            out.append((at + off, head))
            if arr.nbytes:
                if not _plain(arr, order):
                    return None
                out.append((at + off + plen, arr))
        elif writer is write_bytes:
            out.append((at + off, payload))
        else:
            return None
    return tuple(out)


#: ``pieces`` in one C call (ipc.codec._fastcodec) where built; tests set it to ``pieces``
pieces_of: Callable[[Encoded, int, bytes | None], Pieces | None] = (
    pieces if fastcodec is None else fastcodec.pieces)


def send(ring: Ring, bell: Doorbell, kind: int, tag: int, plan: Encoded,
         prefix: bytes | None, max_inline: int) -> bool:
    """Write ``plan`` (after ``prefix``) as one record of ``ring`` and ring ``bell``, in one C
    call; False when nothing was written (use the general path). ``max_inline``: the largest
    message that travels inside a record."""
    at = 0 if prefix is None else len(prefix)
    nbytes = at + plan.nbytes
    if plan.nbytes > max_inline or nbytes > ring.max_record:
        return False
    parts = pieces_of(plan, at, prefix)
    if parts is None:
        return False
    bq = bell._q  # held across the call: keeps the doorbell's block mapped
    try:
        n = ring.put(nbytes, kind, tag, parts, bell.block_address if bq is not None else 0)
    except (BufferError, TypeError, ValueError):
        return False  # a buffer that does not export plain bytes: the writers handle it
    if n is None:
        return False
    if n:
        bell.wake(n)
    return True

"""The encode plan: a message sized up front, written in place later.

:class:`Encoded` holds the head (preamble, buffer table, envelope) as bytes and, per
out-of-band buffer, where it goes and the writer that copies it there, so that the producer
reserves exactly ``nbytes`` and the one copy of array data goes straight into the ring.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ipc.codec.wire import (
    ALIGNMENT,
    ENTRY_SIZE,
    MAGIC,
    PRE_SIZE,
    VERSION,
    ZEROS,
    pack_preamble,
    table_struct,
)

if TYPE_CHECKING:
    from typing_extensions import Buffer

#: ``writer(dest, offset, length, payload)`` writes one buffer of ``length`` bytes at
#: ``offset`` of ``dest`` (zeroing any padding it leaves inside ``length``)
Writer = Callable[[memoryview, int, int, Any], None]
#: ``add(length, writer, payload) -> buffer index``: how a walk collects its buffers
Add = Callable[[int, Writer, Any], int]
#: a buffer before placement: (length, writer, payload)
Pending = tuple[int, Writer, Any]
#: a placed buffer: (offset, length, writer, payload)
Placed = tuple[int, int, Writer, Any]


class Encoded:
    """A planned message: ``nbytes`` known up front, ``write_into`` does the data copies."""

    __slots__ = ("nbytes", "_head", "_bufs")

    def __init__(self, nbytes: int, head: bytes, bufs: list[Placed]) -> None:
        self.nbytes = nbytes
        self._head = head
        self._bufs = bufs

    def __repr__(self) -> str:
        return f"<Encoded nbytes={self.nbytes} buffers={len(self._bufs)}>"

    def to_bytes(self) -> bytes:
        """The message as bytes (tests, debugging, non-ring transports)."""
        out = bytearray(self.nbytes)
        self.write_into(memoryview(out))
        return bytes(out)

    def write_into(self, buf: Buffer) -> None:
        """Write exactly ``nbytes`` at the start of ``buf`` (padding is zeroed)."""
        mv = buf if type(buf) is memoryview else memoryview(buf)
        if mv.format != "B" or mv.ndim != 1:
            mv = mv.cast("B")
        if mv.readonly:
            raise ValueError("write_into needs a writable buffer")
        if len(mv) < self.nbytes:
            raise ValueError(f"buffer of {len(mv)} bytes < message of {self.nbytes}")
        head = self._head
        pos = len(head)
        mv[:pos] = head
        for off, length, writer, payload in self._bufs:
            if off > pos:
                mv[pos:off] = ZEROS[: off - pos]
            writer(mv, off, length, payload)
            pos = off + length


def write_bytes(mv: memoryview, off: int, length: int, data: Buffer) -> None:
    mv[off : off + length] = data


def place(env: bytes, bufs: list[Pending]) -> Encoded:
    """The plan of a message with envelope ``env`` and these buffers, each placed at the first
    multiple of ``ALIGNMENT`` after the previous one (after the envelope for the first)."""
    n = len(bufs)
    pos = PRE_SIZE + ENTRY_SIZE * n + len(env)
    if not n:
        return Encoded(pos, pack_preamble(MAGIC, VERSION, 0, 0, len(env), 0) + env, [])
    table: list[int] = []
    placed: list[Placed] = []
    for length, writer, payload in bufs:
        pos = (pos + ALIGNMENT - 1) & -ALIGNMENT
        table.append(pos)
        table.append(length)
        placed.append((pos, length, writer, payload))
        pos += length
    head = b"".join(
        (pack_preamble(MAGIC, VERSION, 0, 0, len(env), n), table_struct(n).pack(*table), env)
    )
    return Encoded(pos, head, placed)


def combine(head: bytes, parts: Sequence[tuple[int, Encoded]], nbytes: int) -> Encoded:
    """One plan that writes ``head`` at offset 0 and each part's message at its offset (in
    ascending order, none overlapping), the gaps zeroed: a framing that carries several
    messages in one record, each keeping its own plan (and so the fast paths that know it)."""
    bufs: list[Placed] = []
    for at, part in parts:
        bufs.append((at, len(part._head), write_bytes, part._head))
        bufs.extend((at + off, length, writer, payload)
                    for off, length, writer, payload in part._bufs)
    return Encoded(nbytes, head, bufs)

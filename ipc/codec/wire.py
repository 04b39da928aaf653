"""What the encoder and the decoder share: the format's constants (``docs/wire-format.md``),
the msgpack envelope's extension codes, the dtype whitelist, and the state of one decode."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any, Literal

import msgspec
import numpy as np
import pyarrow as pa

from ipc.errors import CorruptRecord

MAGIC = b"RLCW"
VERSION = 1
ALIGNMENT = 64

# Preamble: magic, version u8, flags u8, reserved u16, envelope length u32, buffer count u32.
PRE = struct.Struct("<4sBBHII")
PRE_SIZE = PRE.size  # 16
COUNTS = struct.Struct("<II")  # envelope length, buffer count (preamble bytes 8..15)
ENTRY_SIZE = 16  # buffer table entry: offset u64, length u64
ZEROS = bytes(ALIGNMENT)
U32 = struct.Struct("<I")
_TABLES = [struct.Struct(f"<{2 * n}Q") for n in range(17)]


def table_struct(n: int) -> struct.Struct:
    """The struct of a buffer table of ``n`` entries."""
    return _TABLES[n] if n < len(_TABLES) else struct.Struct(f"<{2 * n}Q")


# msgpack extension codes of the envelope (see docs/wire-format.md, "Envelope").
EXT_TUPLE = 1
EXT_TENSOR = 2
EXT_NDARRAY = 3
EXT_TABLE = 4
EXT_RECORD_BATCH = 5
EXT_DATAFRAME = 6
EXT_PICKLE = 7
EXT_BYTES = 8
EXT_SCALAR = 9
EXT_SHARED = 10

INT_MIN = -(1 << 63)
UINT_MAX = (1 << 64) - 1
MAX_NDIM = 64

# Arrow IPC encapsulated messages: the continuation marker, and a stream's end-of-stream marker.
CONT = 0xFFFFFFFF
EOS = struct.pack("<Ii", CONT, 0)

# dtype (native, little-endian) by its numpy type string; the wire names dtypes this way.
TENSOR_DTYPES: dict[str, np.dtype[Any]] = {
    np.dtype(t).str: np.dtype(t)
    for t in (
        "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
        "float16", "float32", "float64",
    )
}
RAW_DTYPES: dict[str, np.dtype[Any]] = {
    np.dtype(t).str: np.dtype(t) for t in ("bool", "complex64", "complex128")
}
ALL_DTYPES = {**TENSOR_DTYPES, **RAW_DTYPES}
TENSOR_DTYPE_SET = frozenset(TENSOR_DTYPES.values())
RAW_DTYPE_SET = frozenset(RAW_DTYPES.values())

msgpack_encoder = msgspec.msgpack.Encoder()
msgpack_decoder = msgspec.msgpack.Decoder()  # descriptors inside ext data: no extension hook
Ext = msgspec.msgpack.Ext

# The hot methods of the objects above, bound once, for the other modules to import and call:
# CPython 3.11 compiles ``name.method(...)`` on a name bound by ``from ... import`` as an
# attribute load plus a call (it takes the name for a module), which builds a bound method
# object on every call (about 50 ns); an imported function is called directly.
pack_u32 = U32.pack
unpack_u32 = U32.unpack
pack_preamble = PRE.pack
unpack_preamble = PRE.unpack_from
unpack_counts = COUNTS.unpack_from
encode_msgpack = msgpack_encoder.encode
decode_msgpack = msgpack_decoder.decode  # ext descriptors: no extension hook
dtype_named = ALL_DTYPES.get

#: the memory order of an array written contiguously
Order = Literal["C", "F"]
#: a buffer table: (offset, length) of each buffer, checked against the message
Table = list[tuple[int, int]]
#: a checked Arrow tensor layout: (dtype, shape, strides or None for C order, offset of the
#: data in the tensor message, bytes of the message it needs)
TensorLayout = tuple[np.dtype[Any], tuple[int, ...], tuple[int, ...] | None, int, int]


def corrupt(msg: str) -> CorruptRecord:
    return CorruptRecord(f"corrupt message: {msg}")


def contiguous_strides(shape: tuple[int, ...], item: int, order: str) -> list[int]:
    strides = [0] * len(shape)
    acc = item
    dims = range(len(shape) - 1, -1, -1) if order == "C" else range(len(shape))
    for i in dims:
        strides[i] = acc
        acc *= max(shape[i], 1)
    return strides


def private_frames(length: int, frames: Iterable[tuple[int, bytes]]) -> pa.Buffer:
    """A private buffer of ``length`` bytes holding the given (offset, bytes) frames; the rest
    is left unwritten: a large allocation maps its pages lazily, so this costs the frames."""
    private = pa.allocate_buffer(length)
    mv = memoryview(private).cast("B")
    for at, data in frames:
        mv[at : at + len(data)] = data
    return private


class Ctx:
    """The state of one decode, handed to each extension decoder."""

    __slots__ = ("buffer", "mv", "table", "copy", "allow_pickle", "seen")

    def __init__(
        self, buffer: pa.Buffer, mv: memoryview, table: Table, copy: bool, allow_pickle: bool
    ) -> None:
        self.buffer = buffer  # the message (keeps the ring slot alive for the views)
        self.mv = mv  # its bytes, format "B"
        self.table = table
        self.copy = copy
        self.allow_pickle = allow_pickle
        # (table index, tensor prefix bytes, tensor layout) of each tensor decoded, in order;
        # None once the message holds anything else (then it is not one for the fast path)
        self.seen: list[tuple[int, bytes, TensorLayout]] | None = []


def buffer_ref(ctx: Ctx, data: memoryview) -> tuple[int, int]:
    """The (offset, length) of the buffer an ext payload of one u32 index names."""
    if len(data) != 4:
        raise corrupt("buffer reference is not 4 bytes")
    i: int = U32.unpack(data)[0]
    if i >= len(ctx.table):
        raise corrupt(f"buffer index {i} out of range ({len(ctx.table)} buffers)")
    return ctx.table[i]

"""Shared arrays on the wire (ext 10): a reference to an array's shared segment (ipc.shared)
instead of its bytes, in both directions.

A reference is sent only when the sender could count it (``SharedBlock.share``); otherwise
the array travels as bytes like any other. The receiver takes the count over as it decodes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ipc import shared
from ipc.codec.wire import (
    EXT_SHARED,
    MAX_NDIM,
    Ctx,
    Ext,
    corrupt,
    decode_msgpack,
    dtype_named,
    encode_msgpack,
)


def shared_ext(a: np.ndarray) -> tuple[Ext, shared.SharedBlock] | None:
    """The envelope value of a view of a shared array, with the block whose count it took;
    None when the array must travel as bytes (not shared, dtype not on the wire, the name
    gone)."""
    block = shared.block_of(a)
    if block is None:
        return None
    dt = a.dtype
    if not dt.isnative or dtype_named(dt.str) is None:
        return None
    offset = a.__array_interface__["data"][0] - block.address - shared.HEADER_SIZE
    if not block.share():
        return None
    meta = [block.name, offset, dt.str, list(a.shape), list(a.strides), bool(a.flags.writeable)]
    return Ext(EXT_SHARED, encode_msgpack(meta)), block


def copied_ext(a: np.ndarray, limit: int) -> tuple[Ext, shared.SharedBlock] | None:
    """A large plain array's envelope value: a reference to a read-only copy of it in a
    shared segment; None when its dtype is not on the wire."""
    native = a.dtype if a.dtype.isnative else a.dtype.newbyteorder("=")
    if dtype_named(native.str) is None:
        return None
    return shared_ext(shared.copy_of(a, limit))


def dec_shared(ctx: Ctx, data: memoryview) -> np.ndarray:
    meta: Any = decode_msgpack(data)
    if type(meta) is not list or len(meta) != 6:
        raise corrupt("shared array reference is not [name, offset, dtype, shape, strides, "
                      "writeable]")
    name, offset, dstr, shape, strides, writeable = meta
    dtype = dtype_named(dstr) if type(dstr) is str else None
    if dtype is None:
        raise corrupt(f"unsupported dtype {dstr!r}")
    if (type(name) is not str or type(offset) is not int or offset < 0
            or type(writeable) is not bool or type(shape) is not list
            or type(strides) is not list or len(shape) != len(strides) or len(shape) > MAX_NDIM
            or any(type(d) is not int or d < 0 for d in shape)
            or any(type(s) is not int for s in strides)):
        raise corrupt("malformed shared array reference")
    return shared.open_view(name, offset, dtype, tuple(shape), tuple(strides), writeable)

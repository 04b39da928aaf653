"""numpy arrays and scalars on the wire: Arrow IPC tensor messages (ext 2), raw arrays for the
dtypes Arrow's tensors lack (ext 3), numpy scalars (ext 9); both directions.

Arrow writes the tensor message header; it is cached per (dtype, shape, order), and the
array is then copied with one byte copy (or ``np.copyto``) straight into the destination.
Reading, pyarrow parses each distinct prefix once, from a private copy; the layout it finds
is checked and cached per the exact prefix bytes, and later messages get numpy views built
from it without Arrow's Python layer.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pyarrow as pa

from ipc.codec.cache import BoundedCache
from ipc.codec.plan import Add
from ipc.codec.wire import (
    ALIGNMENT,
    CONT,
    EXT_NDARRAY,
    EXT_SCALAR,
    EXT_TENSOR,
    MAX_NDIM,
    RAW_DTYPE_SET,
    TENSOR_DTYPE_SET,
    ZEROS,
    Ctx,
    Ext,
    Order,
    TensorLayout,
    buffer_ref,
    contiguous_strides,
    corrupt,
    decode_msgpack,
    dtype_named,
    encode_msgpack,
    pack_u32,
    private_frames,
    unpack_u32,
)

#: (Arrow tensor message prefix, its length, native dtype, order)
TensorEntry = tuple[bytes, int, np.dtype[Any], Order]

# --------------------------------------------------------------------------------- encoding

# (dtype, shape, order) -> (the tensor message's prefix entry, the message's total length).
# Built once by letting Arrow write the header of a dummy.
headers: BoundedCache[tuple[np.dtype[Any], tuple[int, ...], Order], tuple[TensorEntry, int]] = (
    BoundedCache()
)


def tensor_header(
    dtype: np.dtype[Any], shape: tuple[int, ...], order: Order
) -> tuple[TensorEntry, int]:
    """Arrow IPC tensor message header for a contiguous array, cached (Arrow-made, not ours)."""
    key = (dtype, shape, order)
    hit = headers.get(key)
    if hit is not None:
        return hit
    native = dtype.newbyteorder("=")
    dummy = np.empty(shape, native, order=order)  # never touched: only its header is written
    tensor = pa.Tensor.from_numpy(dummy)
    total: int = pa.ipc.get_tensor_size(tensor)
    scratch = bytearray(min(total, 1 << 16))
    try:
        pa.ipc.write_tensor(tensor, pa.FixedSizeBufferWriter(pa.py_buffer(scratch)))
    except OSError:
        if total <= len(scratch):
            raise
        # expected: the body did not fit into the scratch; the header did
    cont, mlen = struct.unpack_from("<Ii", scratch)
    plen = 8 + mlen
    if cont != CONT or mlen <= 0 or plen > len(scratch) or plen + dummy.nbytes > total:
        raise RuntimeError("unexpected Arrow tensor message layout")
    value = ((bytes(scratch[:plen]), plen, native, order), total)
    headers.put(key, value)
    return value


def write_tensor(
    mv: memoryview, off: int, length: int, payload: tuple[np.ndarray, TensorEntry]
) -> None:
    arr, entry = payload
    prefix, plen, dtype, order = entry
    mv[off : off + plen] = prefix
    n = arr.nbytes
    start = off + plen
    if n:
        if order == "C" and arr.ndim and arr.flags.c_contiguous and arr.dtype.isnative:
            mv[start : start + n] = arr.data.cast("B")  # a plain byte copy: no array built
        else:
            dst = np.ndarray(arr.shape, dtype, buffer=mv, offset=start, order=order)
            np.copyto(dst, arr, casting="equiv")
    tail = start + n
    end = off + length
    if end > tail:
        mv[tail:end] = ZEROS[: end - tail] if end - tail <= ALIGNMENT else bytes(end - tail)


def write_raw(
    mv: memoryview, off: int, length: int, payload: tuple[np.ndarray, np.dtype[Any], Order]
) -> None:
    arr, dtype, order = payload
    if length:
        dst = np.ndarray(arr.shape, dtype, buffer=mv, offset=off, order=order)
        np.copyto(dst, arr, casting="equiv")


def ndarray_ext(add: Add, a: np.ndarray) -> Ext | None:
    """The envelope value of an array (its data an out-of-band buffer), or None if its dtype
    has no array form on the wire."""
    dt = a.dtype
    native = dt if dt.isnative else dt.newbyteorder("=")
    order: Order = (
        "F" if (a.ndim > 1 and not a.flags.c_contiguous and a.flags.f_contiguous) else "C"
    )
    if native in TENSOR_DTYPE_SET:
        entry, total = tensor_header(dt, a.shape, order)
        return Ext(EXT_TENSOR, pack_u32(add(total, write_tensor, (a, entry))))
    if native in RAW_DTYPE_SET:
        shape = a.shape
        strides = contiguous_strides(shape, native.itemsize, order)
        idx = add(a.nbytes, write_raw, (a, native, order))
        return Ext(EXT_NDARRAY, encode_msgpack([idx, native.str, list(shape), strides]))
    return None


def scalar_ext(v: np.generic) -> Ext | None:
    """The envelope value of a numpy scalar, or None if its dtype is not on the wire."""
    d = v.dtype.newbyteorder("=")
    if d in TENSOR_DTYPE_SET or d in RAW_DTYPE_SET:
        return Ext(EXT_SCALAR, encode_msgpack([d.str, np.asarray(v, d).tobytes()]))
    return None


# --------------------------------------------------------------------------------- decoding

# Arrow tensor message prefix bytes -> its checked layout, learned from pyarrow's own parser
# the first time a prefix is seen.
layouts: BoundedCache[bytes, TensorLayout] = BoundedCache()


def check_layout(
    dtype: np.dtype[Any], shape: object, strides: object, avail: int
) -> tuple[tuple[int, ...], tuple[int, ...] | None, int]:
    """Validate a layout against ``avail`` bytes; returns (shape, strides or None for C order,
    bytes it spans)."""
    if not isinstance(shape, (list, tuple)) or not isinstance(strides, (list, tuple)):
        raise corrupt("array shape/strides are not lists")
    if len(shape) > MAX_NDIM or len(strides) != len(shape):
        raise corrupt(f"array of {len(shape)} dims with {len(strides)} strides")
    item = dtype.itemsize
    count = 1
    extent = item
    for d, s in zip(shape, strides, strict=True):
        if type(d) is not int or type(s) is not int or d < 0 or s < 0:
            raise corrupt(f"bad array dimension {d!r} / stride {s!r}")
        count *= d
        extent += (d - 1) * s if d else 0
    if count == 0:
        extent = 0
    if count * item > avail or extent > avail:
        raise corrupt(f"array {tuple(shape)} of {dtype} needs more than the {avail} bytes there")
    shape_t: tuple[int, ...] = tuple(shape)
    strides_t: tuple[int, ...] | None = tuple(strides)
    if strides_t == tuple(contiguous_strides(shape_t, item, "C")):
        strides_t = None  # numpy builds C-contiguous views faster without explicit strides
    return shape_t, strides_t, max(extent, count * item)


def make_array(
    ctx: Ctx, dtype: np.dtype[Any], shape: tuple[int, ...], strides: tuple[int, ...] | None,
    off: int,
) -> np.ndarray:
    a: np.ndarray = np.ndarray(shape, dtype, buffer=ctx.mv, offset=off, strides=strides)
    if ctx.copy:
        a = np.array(a, order="K", copy=True)
    # read-only, a copy too: a value reads the same whatever its size (the receiver copies
    # small messages out of the ring, docs/design.md "Memory")
    a.flags.writeable = False
    return a


def tensor_layout(ctx: Ctx, off: int, length: int) -> tuple[bytes, TensorLayout]:
    """(the message's prefix bytes as read, once, from shared memory; the layout they give)"""
    mv = ctx.mv
    if length < 8:
        raise corrupt("tensor message shorter than its prefix")
    cont, mlen = struct.unpack_from("<Ii", mv, off)
    if cont != CONT or mlen <= 0 or 8 + mlen > length:
        raise corrupt("bad Arrow tensor message prefix")
    key = bytes(mv[off : off + 8 + mlen])
    hit = layouts.get(key)
    if hit is not None:  # learned from these very bytes: their prefix was checked then
        return key, hit
    if struct.unpack_from("<Ii", key) != (cont, mlen):
        raise corrupt("Arrow tensor prefix changed while it was read")
    # pyarrow verifies the flatbuffer and then reads it again: it must parse a private copy,
    # or a writer scribbling between the two reads sends it out of bounds. The body is left
    # unwritten (its bytes are never read here; only the layout is learned).
    private = private_frames(length, ((0, key),))
    try:
        tensor = pa.ipc.read_tensor(pa.BufferReader(private))
        view = tensor.to_numpy()
        dtype = view.dtype
        shape = tensor.shape
        strides = tensor.strides
    except Exception as e:  # noqa: BLE001 - pyarrow fails in many ways on hostile metadata
        raise corrupt(f"Arrow tensor message: {type(e).__name__}: {e}") from e
    if dtype not in TENSOR_DTYPE_SET:
        raise corrupt(f"tensor dtype {dtype} is not supported")
    if view.size:
        data_off = view.__array_interface__["data"][0] - private.address
        if not 0 <= data_off <= length:
            raise corrupt("tensor data does not lie inside the message")
    else:
        data_off = 8 + mlen
    shape_t, strides_t, span = check_layout(dtype, shape, strides, length - data_off)
    layout = (dtype, shape_t, strides_t, data_off, data_off + span)
    layouts.put(key, layout)
    return key, layout


def dec_tensor(ctx: Ctx, data: memoryview) -> np.ndarray:
    off, length = buffer_ref(ctx, data)
    prefix, layout = tensor_layout(ctx, off, length)
    dtype, shape, strides, data_off, need = layout
    if need > length:
        raise corrupt("tensor data runs past its buffer")
    if ctx.seen is not None:
        ctx.seen.append((unpack_u32(data)[0], prefix, layout))
    return make_array(ctx, dtype, shape, strides, off + data_off)


def dec_ndarray(ctx: Ctx, data: memoryview) -> np.ndarray:
    meta = decode_msgpack(data)
    if type(meta) is not list or len(meta) != 4 or type(meta[0]) is not int:
        raise corrupt("ndarray descriptor is not [index, dtype, shape, strides]")
    idx, dstr, shape, strides = meta
    if not 0 <= idx < len(ctx.table):
        raise corrupt(f"buffer index {idx} out of range")
    dtype = dtype_named(dstr) if type(dstr) is str else None
    if dtype is None:
        raise corrupt(f"unsupported dtype {dstr!r}")
    off, length = ctx.table[idx]
    shape_t, strides_t, _ = check_layout(dtype, shape, strides, length)
    return make_array(ctx, dtype, shape_t, strides_t, off)


def dec_scalar(ctx: Ctx, data: memoryview) -> np.generic:
    meta = decode_msgpack(data)
    if type(meta) is not list or len(meta) != 2 or type(meta[1]) is not bytes:
        raise corrupt("scalar descriptor is not [dtype, bytes]")
    dtype = dtype_named(meta[0]) if type(meta[0]) is str else None
    if dtype is None or len(meta[1]) != dtype.itemsize:
        raise corrupt(f"bad numpy scalar {meta[0]!r}")
    scalar: np.generic = np.frombuffer(meta[1], dtype)[0]
    return scalar

"""Decoding, and the checks that keep hostile bytes from crashing the reader.

Nothing read is trusted: every length, offset, index, dtype and shape is checked against the
buffer and failures raise :class:`ipc.errors.CorruptRecord`. Shared memory can change under
the reader, so what is checked must be what is used: the head (preamble, buffer table,
envelope) is read once into private bytes, and each extension decoder reads its metadata
once the same way.

The fast path: a message whose head and size equal those of a message decoded and validated
before, and whose tensor prefixes are byte-equal to that message's, decodes to the same
structure; only the array views are new. It is keyed by those bytes, so nothing unvalidated
is trusted.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np
import pyarrow as pa

from ipc.codec.arrow import dec_stream
from ipc.codec.cache import BoundedCache
from ipc.codec.native import fastcodec
from ipc.codec.pickled import dec_pickle
from ipc.codec.reference import dec_shared
from ipc.codec.tensor import dec_ndarray, dec_scalar, dec_tensor
from ipc.codec.wire import (
    ALIGNMENT,
    ENTRY_SIZE,
    EXT_BYTES,
    EXT_DATAFRAME,
    EXT_NDARRAY,
    EXT_PICKLE,
    EXT_RECORD_BATCH,
    EXT_SCALAR,
    EXT_SHARED,
    EXT_TABLE,
    EXT_TENSOR,
    EXT_TUPLE,
    MAGIC,
    PRE_SIZE,
    VERSION,
    Ctx,
    Table,
    TensorLayout,
    buffer_ref,
    corrupt,
    table_struct,
    unpack_counts,
    unpack_preamble,
)
from ipc.errors import CorruptRecord

if TYPE_CHECKING:
    from typing_extensions import Buffer

_tls = threading.local()  # .ctx: the Ctx of the decode running in this thread


def _dec_bytes(ctx: Ctx, data: memoryview) -> bytes:
    off, length = buffer_ref(ctx, data)
    return bytes(ctx.mv[off : off + length])


def _ext_hook(code: int, data: memoryview) -> Any:
    ctx: Ctx = _tls.ctx
    if code == EXT_TUPLE:
        v = _decoder.decode(data)
        if type(v) is not list:
            raise corrupt("tuple payload is not an array")
        return tuple(v)
    if code == EXT_TENSOR:
        return dec_tensor(ctx, data)
    ctx.seen = None
    if code == EXT_NDARRAY:
        return dec_ndarray(ctx, data)
    if code in (EXT_TABLE, EXT_RECORD_BATCH, EXT_DATAFRAME):
        return dec_stream(ctx, data, code)
    if code == EXT_PICKLE:
        return dec_pickle(ctx, data)
    if code == EXT_BYTES:
        return _dec_bytes(ctx, data)
    if code == EXT_SCALAR:
        return dec_scalar(ctx, data)
    if code == EXT_SHARED:
        return dec_shared(ctx, data)
    raise corrupt(f"unknown extension code {code}")


_decoder = msgspec.msgpack.Decoder(ext_hook=_ext_hook)


def copy_head(mv: memoryview) -> bytes:
    """The message's head (preamble, buffer table, envelope), read once into private bytes:
    what is checked is then what is used, whatever another process writes meanwhile."""
    size = len(mv)
    if size < PRE_SIZE:
        raise corrupt(f"{size} bytes is shorter than the preamble")
    env_len, n = unpack_counts(mv, 8)
    env_end = PRE_SIZE + ENTRY_SIZE * n + env_len
    if env_end > size:
        raise corrupt(f"envelope/table end {env_end} past the {size}-byte message")
    return mv[:env_end].tobytes()


def parse_head(mv: memoryview, size: int | None = None) -> tuple[int, int, Table]:
    """(envelope start, envelope end, buffer table) of a message of ``size`` bytes (default:
    ``len(mv)``) whose head, at least, is ``mv``."""
    if size is None:
        size = len(mv)
    if len(mv) < PRE_SIZE:
        raise corrupt(f"{len(mv)} bytes is shorter than the preamble")
    magic, version, flags, _res, env_len, n = unpack_preamble(mv)
    if magic != MAGIC:
        raise corrupt(f"bad magic {magic!r}")
    if version != VERSION:
        raise corrupt(f"unsupported version {version}")
    if flags:
        raise corrupt(f"unknown flags {flags:#x}")
    env_at = PRE_SIZE + ENTRY_SIZE * n
    env_end = env_at + env_len
    if env_end > len(mv):
        raise corrupt(f"envelope/table end {env_end} past the {len(mv)}-byte message head")
    table: Table = []
    if n:
        words = table_struct(n).unpack_from(mv, PRE_SIZE)
        prev = env_end
        for i in range(n):
            off = words[2 * i]
            length = words[2 * i + 1]
            if off % ALIGNMENT or off < prev or off + length > size:
                raise corrupt(f"buffer {i} at {off}+{length} is misplaced")
            prev = off + length
            table.append((off, length))
    return env_at, env_end, table


# (head bytes, size) -> (is a call, ((offset, prefix bytes, layout) of each tensor, ...))
_FastDecode = tuple[bool, tuple[tuple[int, bytes, TensorLayout], ...]]
fast_decodes: BoundedCache[tuple[bytes, int], _FastDecode] = BoundedCache()
_fast_decode_of = fast_decodes.get  # bound once: a hit is one dict lookup, no attribute
_FAST_HEAD_MAX = 512


def _fast_decode(
    src: memoryview | bytes, size: int, copy: bool
) -> np.ndarray | tuple[tuple[np.ndarray, ...], dict[str, Any]] | None:
    """The value, or None when the message is not one seen before. ``src`` is the message as
    an unsigned-byte memoryview, or as ``bytes``: immutable memory of this process's own (a
    record's private copy), which the arrays then view whatever ``copy`` says, read-only as
    every array of a message is (a second copy would only cost time)."""
    env_len, n = unpack_counts(src, 8)
    end = PRE_SIZE + ENTRY_SIZE * n + env_len
    if end > _FAST_HEAD_MAX or end > size:
        return None
    private = type(src) is bytes
    hit = _fast_decode_of((bytes(src[:end]), size))  # (bytes of bytes: the same object)
    if hit is None:
        return None
    is_call, tensors = hit
    out = []
    for off, prefix, (dtype, shape, strides, data_off, _need) in tensors:
        if bytes(src[off : off + len(prefix)]) != prefix:
            return None  # (as bytes: a memoryview compares item by item, 4x slower)
        # positional arguments: numpy parses keywords at twice the cost of the whole view
        a: np.ndarray = np.ndarray(shape, dtype, src, off + data_off, strides)
        if private:  # a view of immutable bytes is read-only already
            out.append(a)
            continue
        if copy:
            a = a.copy(order="K")
        a.flags.writeable = False  # a copy too: a value reads the same whatever its size
        out.append(a)
    return (tuple(out), {}) if is_call else out[0]


#: ``remembered(data, at, cache)``: ``_fast_decode`` of the bytes ``data[at:]`` in one C call
#: (arrays view ``data``), or None; tests set it to None to run the Python path.
remembered: Callable[[bytes, int, dict[Any, Any]], Any] | None = (
    None if fastcodec is None else fastcodec.remembered)
_fast_decodes_dict = fast_decodes._data  # the dict itself: clear() keeps it


def _remember_decode(
    head: bytes, size: int, table: Table, seen: list[tuple[int, bytes, TensorLayout]],
    value: Any,
) -> None:
    """After a full decode: remember the message's shape if it is one of the fast ones. The
    key is made of the very bytes that were checked (the head, the tensor prefixes)."""
    if len(head) > _FAST_HEAD_MAX or not seen or len(seen) != len(table):
        return
    t = type(value)
    if t is np.ndarray:
        if len(seen) != 1:
            return
        is_call = False
    elif (t is tuple and len(value) == 2 and type(value[0]) is tuple and value[1] == {}
          and type(value[1]) is dict and len(value[0]) == len(seen)
          and all(type(a) is np.ndarray for a in value[0])):
        is_call = True
    else:
        return
    tensors = tuple((table[idx][0], prefix, layout) for idx, prefix, layout in seen)
    fast_decodes.put((head, size), (is_call, tensors))


def decode_at(data: bytes, at: int, *, allow_pickle: bool = True) -> Any:
    """``decode(data[at:], copy=True)`` of a private copy (bytes), read in place where the
    message's shape is remembered: a receiver's record after its prefix, with no slice."""
    fast = remembered
    if fast is not None and len(data) - at >= PRE_SIZE:
        value = fast(data, at, _fast_decodes_dict)
        if value is not None:
            return value
    return decode(data[at:], copy=True, allow_pickle=allow_pickle)


def decode(
    buffer: pa.Buffer | Buffer, *, copy: bool = False, allow_pickle: bool = True
) -> Any:
    """Decode one message; arrays/tables are read-only views of ``buffer`` unless copy=True.

    ``buffer`` is a ``pyarrow.Buffer`` (a ring record: the views keep it alive) or any
    object exporting the buffer protocol. ``bytes`` are immutable and this process's own (a
    record's private copy, say): arrays the fast path decodes view them even with copy=True."""
    tried = type(buffer) is bytes  # the fast path, once: the same bytes miss it again
    if type(buffer) is bytes and len(buffer) >= PRE_SIZE:
        fast = remembered
        value = (_fast_decode(buffer, len(buffer), copy) if fast is None
                 else fast(buffer, 0, _fast_decodes_dict))
        if value is not None:
            return value
    if not isinstance(buffer, pa.Buffer):
        buffer = pa.py_buffer(buffer)
    mv = memoryview(buffer)
    if mv.format != "B":
        mv = mv.cast("B")  # pyarrow exports signed bytes; compare and slice as unsigned
    size = len(mv)
    if not tried and size >= PRE_SIZE:
        value = _fast_decode(mv, size, copy)
        if value is not None:
            return value
    head = copy_head(mv)
    env_at, env_end, table = parse_head(memoryview(head), size)
    prev = getattr(_tls, "ctx", None)
    ctx = _tls.ctx = Ctx(buffer, mv, table, copy, allow_pickle)
    try:
        value = _decoder.decode(memoryview(head)[env_at:env_end])
        if ctx.seen is not None:
            _remember_decode(head, size, table, ctx.seen, value)
        return value
    except CorruptRecord:
        raise
    except msgspec.DecodeError as e:
        raise corrupt(f"envelope: {e}") from e
    except RecursionError as e:
        raise corrupt("envelope nests too deeply") from e
    except (ValueError, TypeError, OverflowError, IndexError, struct.error) as e:
        raise corrupt(f"{type(e).__name__}: {e}") from e
    finally:
        _tls.ctx = prev

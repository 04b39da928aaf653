"""Arrow tables, record batches and pandas DataFrames on the wire (ext 4, 5, 6): one Arrow IPC
stream each, in an out-of-band buffer; both directions.

Reading: Arrow parses only private bytes. Each message's metadata is read once out of shared
memory, checked there (framing, bounds, no compression) and handed to pyarrow as a private
copy. A stream is learned per (length, every metadata bytes): a stream whose columns all have
fixed-width types gets views of the message built straight from the learned buffer offsets;
any other (offsets, indices a writer could rewrite after validation) is read from a private
copy of the whole stream.
"""

from __future__ import annotations

import enum
import struct
from typing import Any, Final

import pyarrow as pa

from ipc.codec.cache import BoundedCache
from ipc.codec.plan import Add, write_bytes
from ipc.codec.wire import (
    CONT,
    EOS,
    EXT_DATAFRAME,
    EXT_RECORD_BATCH,
    Ctx,
    Ext,
    buffer_ref,
    corrupt,
    pack_u32,
    private_frames,
)
from ipc.errors import CorruptRecord

STREAM_STAGE_MAX = 256 << 10  # tables smaller than this are serialised once, then copied

# --------------------------------------------------------------------------------- encoding


def write_stream(
    mv: memoryview, off: int, length: int, obj: pa.Table | pa.RecordBatch
) -> None:
    """Writer of a large table or batch: Arrow writes the stream straight into ``mv``."""
    sink = pa.FixedSizeBufferWriter(pa.py_buffer(mv[off : off + length]))
    with pa.ipc.new_stream(sink, obj.schema) as writer:
        writer.write(obj)
    if sink.tell() != length:  # Arrow changed its mind about the size: never silently truncate
        raise RuntimeError(f"Arrow stream wrote {sink.tell()} bytes, planned {length}")


def stream_ext(add: Add, obj: pa.Table | pa.RecordBatch, code: int) -> Ext:
    """The envelope value of a ``pyarrow.Table`` or ``RecordBatch`` (``code`` 4, 5 or 6)."""
    if obj.get_total_buffer_size() <= STREAM_STAGE_MAX:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, obj.schema) as w:
            w.write(obj)
        data = memoryview(sink.getvalue()).cast("B")
        return Ext(code, pack_u32(add(len(data), write_bytes, data)))
    mock = pa.MockOutputStream()
    with pa.ipc.new_stream(mock, obj.schema) as w:
        w.write(obj)
    return Ext(code, pack_u32(add(mock.size(), write_stream, obj)))


class Unconvertible(Exception):
    """A DataFrame Arrow cannot convert; ``reason`` says why ("" for not a DataFrame)."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


def from_pandas(df: object) -> pa.Table:
    """The Arrow table of a pandas DataFrame (imports pandas: only call it for one)."""
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        raise Unconvertible()
    try:
        return pa.Table.from_pandas(df)
    except (pa.ArrowException, ValueError, TypeError) as e:
        raise Unconvertible(f"DataFrame Arrow cannot convert ({e})") from e


# --------------------------------------------------------------------------------- decoding


class _Read(enum.Enum):
    COPY = "copy"


#: the layout of a stream that must be read from a private copy of it
COPY: Final = _Read.COPY
#: a learned fixed-width stream: (schema, per batch, per column: (type, length, null count,
#: offset, per buffer: None or (offset in the stream, size)))
StreamLayout = tuple[Any, tuple[tuple[tuple[Any, int, int, int, tuple[Any, ...]], ...], ...]]

# Learned from checked private bytes, keyed by those bytes: Arrow message metadata (with its
# prefix) -> body length; (stream length, every metadata of a stream) -> its layout.
frame_bodies: BoundedCache[bytes, int] = BoundedCache()
stream_layouts: BoundedCache[tuple[int, tuple[bytes, ...]], StreamLayout | _Read] = (
    BoundedCache()
)


def stream_frames(mv: memoryview) -> list[tuple[int, bytes]]:
    """Walk an Arrow stream's framing: (offset, continuation + metadata bytes) of each message,
    each metadata read once into private bytes and checked there. Compressed batches are
    refused before Arrow would inflate them."""
    frames: list[tuple[int, bytes]] = []
    pos = 0
    n = len(mv)
    while True:
        if pos + 8 > n:
            raise corrupt("Arrow stream ends without its end-of-stream marker")
        cont, mlen = struct.unpack_from("<Ii", mv, pos)
        if cont != CONT:
            raise corrupt("Arrow stream message lacks the continuation marker")
        if mlen == 0:
            frames.append((pos, EOS))
            return frames
        if mlen < 0 or pos + 8 + mlen > n:
            raise corrupt("Arrow stream message metadata runs past its buffer")
        meta = mv[pos : pos + 8 + mlen].tobytes()
        body = frame_bodies.get(meta)
        if body is None:
            if struct.unpack_from("<Ii", meta) != (cont, mlen):
                raise corrupt("Arrow stream message prefix changed while it was read")
            compressed, body = fb_batch_info(memoryview(meta)[8:])
            if compressed:
                raise corrupt("compressed Arrow streams are not accepted")
            frame_bodies.put(meta, body)
        frames.append((pos, meta))
        pos += 8 + mlen + body
        if body < 0 or pos > n:
            raise corrupt("Arrow stream message body runs past its buffer")


def fb_batch_info(fb: memoryview) -> tuple[bool, int]:
    """(carries BodyCompression, bodyLength) of one Message flatbuffer, bounds-checked."""
    n = len(fb)

    def u32(p: int) -> int:
        if p < 0 or p + 4 > n:
            raise corrupt("flatbuffer offset out of range")
        value: int = struct.unpack_from("<I", fb, p)[0]
        return value

    def field(table: int, fid: int) -> int:
        """Absolute position of field ``fid`` of the table at ``table``, or 0 if absent."""
        vt = table - struct.unpack_from("<i", fb, table)[0] if 0 <= table <= n - 4 else -1
        if vt < 0 or vt + 4 > n:
            raise corrupt("flatbuffer vtable out of range")
        vsize = struct.unpack_from("<H", fb, vt)[0]
        slot = 4 + 2 * fid
        if slot + 2 > vsize or vt + slot + 2 > n:
            return 0
        rel = struct.unpack_from("<H", fb, vt + slot)[0]
        return table + rel if rel else 0

    def child(table: int, fid: int) -> int:
        p = field(table, fid)
        return p + u32(p) if p else 0

    root = u32(0)
    body_at = field(root, 3)  # Message.bodyLength (long)
    if body_at and body_at + 8 > n:
        raise corrupt("flatbuffer field out of range")
    body = struct.unpack_from("<q", fb, body_at)[0] if body_at else 0
    header = child(root, 2)  # Message.header
    htype_at = field(root, 1)  # Message.header_type (ubyte)
    if not header or not htype_at or htype_at >= n:
        return False, body
    htype = fb[htype_at] & 0xFF
    if htype == 2:  # DictionaryBatch: its RecordBatch is field 1
        header = child(header, 1)
        if not header:
            return False, body
    elif htype != 3:
        return False, body
    return field(header, 3) != 0, body  # RecordBatch.compression


def flat_type(t: pa.DataType) -> bool:
    """Fixed-width types: whatever bytes their buffers hold, reading them stays in bounds."""
    return (pa.types.is_primitive(t) or pa.types.is_decimal(t)
            or pa.types.is_fixed_size_binary(t) or pa.types.is_null(t))


def read_batches(buf: pa.Buffer) -> tuple[pa.Schema, list[pa.RecordBatch]]:
    reader = pa.ipc.open_stream(pa.BufferReader(buf))
    return reader.schema, list(reader)


def learn_stream(length: int, frames: list[tuple[int, bytes]]) -> StreamLayout | _Read:
    """The layout of a stream with these (checked, private) metadata frames: COPY when a
    column is not of a fixed-width type; else the schema and, per batch, per column, what
    ``pa.Array.from_buffers`` needs, found by letting pyarrow read the metadata over an
    unwritten body."""
    schema = pa.ipc.read_schema(pa.py_buffer(frames[0][1]))
    if not all(flat_type(f.type) for f in schema):
        return COPY
    private = private_frames(length, frames)
    schema, batches = read_batches(private)
    layout = []
    for batch in batches:
        cols = []
        for col in batch.columns:
            bufs: list[tuple[int, int] | None] = []
            for b in col.buffers():
                if b is None or b.size == 0:
                    bufs.append(None if b is None else (0, 0))
                    continue
                rel = b.address - private.address
                if not 0 <= rel <= length - b.size:
                    raise corrupt("Arrow stream buffer lies outside the message")
                bufs.append((rel, b.size))
            cols.append((col.type, len(col), col.null_count, col.offset, tuple(bufs)))
        layout.append(tuple(cols))
    return schema, tuple(layout)


def build_batches(
    layout: StreamLayout, shared: pa.Buffer
) -> tuple[pa.Schema, list[pa.RecordBatch]]:
    """The batches of a fixed-width stream, as views of ``shared`` (the stream's bytes)."""
    schema, batch_layouts = layout
    batches = []
    for cols in batch_layouts:
        arrays = [
            pa.Array.from_buffers(
                typ, n, [None if b is None else shared.slice(b[0], b[1]) for b in bufs],
                null_count=nulls, offset=offset)
            for typ, n, nulls, offset, bufs in cols
        ]
        batches.append(pa.RecordBatch.from_arrays(arrays, schema=schema))
    return schema, batches


def dec_stream(ctx: Ctx, data: memoryview, code: int) -> Any:
    """Arrow parses only private bytes: metadata read from shared memory is copied once and
    checked there. Columns of fixed-width types then view shared memory (no copy); any other
    column (strings, lists, dictionaries: offsets a scribbler could turn into out-of-bounds
    reads long after validation) makes the whole stream a private copy."""
    off, length = buffer_ref(ctx, data)
    frames = stream_frames(ctx.mv[off : off + length])
    try:
        key = (length, tuple(meta for _at, meta in frames))
        layout = stream_layouts.get(key)
        if layout is None:
            layout = learn_stream(length, frames)
            stream_layouts.put(key, layout)
        if ctx.copy or layout is COPY:
            private = pa.py_buffer(ctx.mv[off : off + length].tobytes())
            stream_frames(memoryview(private))  # the copy may differ from what was walked
            schema, batches = read_batches(private)
        else:
            schema, batches = build_batches(layout, ctx.buffer.slice(off, length))
        if code == EXT_RECORD_BATCH:
            if len(batches) != 1:
                raise corrupt(f"record batch stream holds {len(batches)} batches, not one")
            obj = batches[0]
        else:
            obj = pa.Table.from_batches(batches, schema=schema)
        obj.validate(full=True)
    except CorruptRecord:
        raise
    except Exception as e:  # noqa: BLE001 - pyarrow fails in many ways on hostile metadata
        raise corrupt(f"Arrow stream: {type(e).__name__}: {e}") from e
    if code == EXT_DATAFRAME:
        try:
            return obj.to_pandas()
        except Exception as e:  # noqa: BLE001 - hostile pandas metadata can fail anywhere
            raise corrupt(f"DataFrame metadata: {e!r}") from e
    return obj

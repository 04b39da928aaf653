"""The pickle fallback (ext 7): protocol 5, its ``PickleBuffer``s carried out of band (so an
array inside an object still travels as one copy and decodes as a view); both directions.

Unpickling runs code named by the bytes: this is only as safe as the writers of the ring
(same user only, SPEC section 9), and :func:`ipc.codec.decode` refuses it under
``allow_pickle=False``.
"""

from __future__ import annotations

import pickle
import struct

from ipc.codec.plan import Add, write_bytes
from ipc.codec.wire import EXT_PICKLE, Ctx, Ext, corrupt


def pickle_ext(add: Add, v: object) -> Ext:
    """The envelope value of ``v`` pickled; raises whatever pickling raises."""
    oob: list[memoryview] = []

    def on_buffer(pb: pickle.PickleBuffer) -> bool:
        try:
            m = pb.raw()
        except BufferError:
            return True  # not contiguous: let pickle keep it in-band
        oob.append(m)
        return False

    data = pickle.dumps(v, protocol=5, buffer_callback=on_buffer)
    parts = [add(len(data), write_bytes, data), len(oob)]
    for m in oob:
        parts.append(add(m.nbytes, write_bytes, m))
    return Ext(EXT_PICKLE, struct.pack(f"<{len(parts)}I", *parts))


def dec_pickle(ctx: Ctx, data: memoryview) -> object:
    if not ctx.allow_pickle:
        raise corrupt("pickled value refused (allow_pickle=False)")
    if len(data) < 8 or len(data) % 4:
        raise corrupt("pickle descriptor has a bad length")
    words = struct.unpack(f"<{len(data) // 4}I", data)
    idx, count = words[0], words[1]
    if count != len(words) - 2:
        raise corrupt("pickle descriptor count does not match")
    table = ctx.table
    if idx >= len(table) or any(i >= len(table) for i in words[2:]):
        raise corrupt("pickle buffer index out of range")
    mv = ctx.mv
    off, length = table[idx]
    payload = mv[off : off + length]
    spans = [table[i] for i in words[2:]]
    oob: list[bytearray] | list[memoryview]
    if ctx.copy:
        oob = [bytearray(mv[o : o + n]) for o, n in spans]
    else:
        oob = [mv[o : o + n].toreadonly() for o, n in spans]
    try:
        return pickle.loads(payload, buffers=oob)
    except RecursionError as e:
        raise corrupt("pickled value nests too deeply") from e
    except Exception as e:  # noqa: BLE001 - unpickling hostile bytes can raise anything
        raise corrupt(f"pickled value could not be loaded: {e!r}") from e

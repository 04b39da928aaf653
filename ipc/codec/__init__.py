"""The wire codec: Python values to one self-contained message in ring memory, and back.

Two-phase so that a producer reserves exactly the bytes it needs and writes in place::

    plan = encode(value)               # sizes everything, copies no array data
    res = ring.reserve(plan.nbytes)
    plan.write_into(res.buf)           # the one copy of array data, straight into the ring
    ...
    value = decode(record.buffer)      # arrays/tables are read-only views of the record

Layout, tags and checks are specified in ``docs/wire-format.md``; keep the two in step.
Nothing read by :func:`decode` is trusted: every length, offset, index, dtype and shape is
checked against the buffer and failures raise :class:`ipc.errors.CorruptRecord`. The one
exception is the pickle fallback, which (like any unpickling) runs code named by the bytes; it
is only as safe as the writers of the ring (same user only, SPEC section 9), and can be refused
with ``decode(..., allow_pickle=False)``.

The modules, one idea each: ``wire`` (the format's constants, shared by both directions),
``plan`` (:class:`Encoded`: buffer placement and ``write_into``), ``encoder`` (the walk and
the remembered plans), ``decoder`` (head checks, the extension hook, the remembered message
shapes), ``native`` (the optional C extension ``_fastcodec``: the remembered encode, ring
pieces and decode in one call each), ``tensor`` (numpy arrays and scalars),
``arrow`` (Arrow streams: tables, record batches, DataFrames), ``pickled`` (the pickle
fallback), ``cache`` (the one bounded cache type every learned table uses).
"""

from ipc.codec.decoder import decode, decode_at
from ipc.codec.encoder import encode
from ipc.codec.plan import Encoded, combine
from ipc.codec.wire import ALIGNMENT, MAGIC, VERSION

__all__ = ["ALIGNMENT", "MAGIC", "VERSION", "Encoded", "combine", "decode", "decode_at", "encode"]

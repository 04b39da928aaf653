"""An array that goes back the way it came: a message written around bytes already in place.

A receiver that answers with one of the arrays it was sent (a method that returns its
argument, as the image and 64 MiB echoes do) need not copy it: the array's tensor buffer, its
Arrow prefix and its data, already lies in the message it came in. ``write_around`` writes the
answer's head over the head of that message (bytes nobody reads once it is decoded) and points
the head's one buffer entry at the tensor where it lies, so that the first ``n`` bytes of that
memory are the answer's message, as ``decode`` reads any other (the bytes between the head and
the buffer are left as they are; nothing reads them).
"""

from __future__ import annotations

import numpy as np

from ipc.codec.plan import Encoded
from ipc.codec.tensor import write_tensor
from ipc.codec.wire import ALIGNMENT, ENTRY_SIZE, PRE_SIZE, table_struct, unpack_counts

__all__ = ["write_around"]


def write_around(plan: Encoded, message: memoryview) -> int | None:
    """Make ``message[:n]`` the message ``plan`` describes, its one tensor buffer being the
    bytes already in ``message`` where the plan's array lies; only the head is written, within
    the head of the message now there (the one the array came in). Returns n, or None where
    that cannot be: a plan of another shape than one tensor, an array not inside ``message``
    (or not C-contiguous), the bytes before it not its tensor prefix, no room for the head."""
    if len(message) < PRE_SIZE:
        return None
    env_len, n = unpack_counts(message, 8)
    head_room = PRE_SIZE + ENTRY_SIZE * n + env_len  # the arriving message's head: read
    bufs = plan._bufs
    if len(bufs) != 1:
        return None
    _off, length, writer, payload = bufs[0]
    if writer is not write_tensor:
        return None
    arr, entry = payload
    prefix, plen = entry[0], entry[1]
    if type(arr) is not np.ndarray or not arr.flags.c_contiguous or entry[3] != "C":
        return None
    base = np.frombuffer(message, dtype=np.uint8)  # its address; no copy
    at = arr.__array_interface__["data"][0] - base.__array_interface__["data"][0] - plen
    head = plan._head
    if (at % ALIGNMENT or len(head) > head_room or len(head) > at
            or at + length > len(message) or arr.nbytes + plen > length):
        return None
    if bytes(message[at:at + plen]) != prefix:
        return None
    table = table_struct(1).pack(at, length)
    message[:PRE_SIZE] = head[:PRE_SIZE]
    message[PRE_SIZE:PRE_SIZE + ENTRY_SIZE] = table
    message[PRE_SIZE + ENTRY_SIZE:len(head)] = head[PRE_SIZE + ENTRY_SIZE:]
    return at + length

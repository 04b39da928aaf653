"""Message kinds and fixed headers exchanged over the rings.

A ring record carries two small integers besides its payload (see docs/wire-format-ring.md):
``kind`` says what the record is, ``tag`` says which call it belongs to.

Request ring (clients -> workers):
    kind = CALL | method index            payload = PREFIX + codec message of (args, kwargs)
    kind = CALL | BIG | method index      payload = PREFIX + name of a dedicated segment
Response rings (worker or supervisor -> one client channel):
    kind = OK / ERROR / CHUNK / END / DIED / BIG flag as above
    kind = MULTI, tag = 0                 payload = codec message of [(tag, kind, value), ...]:
                                          the answers of one batch to one channel, so a batch
                                          costs one record and one wake-up per client

A call tag packs the caller's channel slot and generation with a per-channel sequence number,
so the supervisor can answer the calls of a dead worker from the tag alone.
"""

from __future__ import annotations

import struct

# record kinds: high byte is the message type, low 16 bits the method index
CALL = 0x01 << 24
OK = 0x02 << 24
ERROR = 0x03 << 24
CHUNK = 0x04 << 24
END = 0x05 << 24
DIED = 0x06 << 24
MULTI = 0x07 << 24  # several answers for one channel in one record: [(tag, kind, value), ...]
TYPE_MASK = 0x7F << 24
BIG = 0x01 << 16  # payload names a dedicated segment instead of holding the message
MANY = 0x02 << 16  # a CALL record carrying several calls of one channel (see MANY_HEAD)
METHOD_MASK = 0xFFFF

#: Request prefix: send time and absolute deadline (CLOCK_MONOTONIC, shared by all processes),
#: padded to 64 bytes so the codec message after it keeps 64-byte alignment.
PREFIX = struct.Struct("<dd48x")
PREFIX_SIZE = PREFIX.size

#: A CALL | MANY record: PREFIX, then the call count, then one ENTRY per call (its tag,
#: method index, deadline, and the offset and length of its codec message, counted from the
#: start of the payload), then the messages, each 64-byte aligned. The record's own tag is
#: an *envelope* tag of the sending channel: a worker that dies holding the record is
#: answered under it, and the client fails every call the envelope carried.
MANY_HEAD = struct.Struct("<I4x")
ENTRY = struct.Struct("<QI4xdQQ")

SLOT_BITS = 20
GEN_BITS = 12
SEQ_BITS = 32


def make_tag(slot: int, gen: int, seq: int) -> int:
    return (
        ((slot & ((1 << SLOT_BITS) - 1)) << (GEN_BITS + SEQ_BITS))
        | ((gen & ((1 << GEN_BITS) - 1)) << SEQ_BITS)
        | (seq & ((1 << SEQ_BITS) - 1))
    )


def split_tag(tag: int) -> tuple[int, int, int]:
    """Return (channel slot, generation mod 2**GEN_BITS, sequence)."""
    return (
        tag >> (GEN_BITS + SEQ_BITS),
        (tag >> SEQ_BITS) & ((1 << GEN_BITS) - 1),
        tag & ((1 << SEQ_BITS) - 1),
    )

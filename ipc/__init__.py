"""Shared-memory transport: segments, atomics, the record ring, doorbells (and the codec).

Standalone: never imports runnerlib or batching.
"""

from ipc.atomics import AtomicWord, address_of, cas64, fence, fetch_add64, load64, store64
from ipc.codec import Encoded, decode, encode
from ipc.doorbell import Doorbell
from ipc.errors import CorruptRecord, EncodeError, IpcError, RingFull, SegmentError
from ipc.liveness import owner_alive
from ipc.names import parse_name
from ipc.ring import Record, Reservation, Ring
from ipc.segment import Segment, cleanup_stale, list_segments, owner_pid, pid_alive

__all__ = [
    "AtomicWord",
    "CorruptRecord",
    "Doorbell",
    "Encoded",
    "EncodeError",
    "IpcError",
    "Record",
    "Reservation",
    "Ring",
    "RingFull",
    "Segment",
    "SegmentError",
    "address_of",
    "cas64",
    "cleanup_stale",
    "decode",
    "encode",
    "fence",
    "fetch_add64",
    "list_segments",
    "load64",
    "owner_alive",
    "owner_pid",
    "parse_name",
    "pid_alive",
    "store64",
]

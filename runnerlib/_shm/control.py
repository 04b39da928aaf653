"""The control segment of one served runner: workers, client channels and counters.

It is the only state a client, a worker, the supervisor and ``python -m runnerlib status``
share besides the rings, so everything in it is a fixed-size table of aligned 8-byte words.
Each row has a single writer (a worker writes its own counters, a client its own channel
slot, the supervisor the worker pids), so plain aligned stores suffice; the one contended
operation, claiming a free channel slot, uses compare-and-swap.

Layout (all little-endian int64 words):
    [0, 4096)                   header
    [4096, +MAX_WORKERS*512)    worker table, one 512-byte row per worker
    [..., +MAX_CHANNELS*256)    channel table, one 256-byte row per client channel
"""

from __future__ import annotations

import os

import numpy as np

from ipc import atomics, liveness
from ipc.doorbell import Doorbell
from ipc.names import Owner
from ipc.ring import Ring
from ipc.segment import Segment
from runnerlib import errors
from runnerlib._shm.protocol import MAX_CHANNELS, PROTOCOL_VERSION

MAGIC = int.from_bytes(b"RNLCTRL1", "little")  # the bytes read "RNLCTRL1" in memory
VERSION = PROTOCOL_VERSION

HEADER_SIZE = 4096
MAX_WORKERS = 64
WORKER_ROW = 512
CHANNEL_ROW = 256
HIST_BUCKETS = 32  # log2 buckets of microseconds: bucket i holds [2**(i-1), 2**i) us

WORKERS_OFFSET = HEADER_SIZE
CHANNELS_OFFSET = WORKERS_OFFSET + MAX_WORKERS * WORKER_ROW
SIZE = CHANNELS_OFFSET + MAX_CHANNELS * CHANNEL_ROW

# header words
H_MAGIC, H_VERSION, H_SERVER_PID, H_STATE, H_NWORKERS = 0, 1, 2, 3, 4
# the server's shared-memory budget and the sizes that follow from it (runnerlib._shm.budget);
# 0 where a server predates them
H_SHM_BUDGET, H_REQUEST_RING, H_CHANNEL_RING, H_HANDOFF_KEEP, H_MESSAGE_LIMIT = 5, 6, 7, 8, 9
#: Bumped each time the server moves the runner to a fresh request ring (see Control
#: .publish_request_ring); the ring's name is at REQUEST_RING_NAME_OFFSET.
H_REQ_EPOCH = 10
WORKERS_BELL_OFFSET = 512  # the doorbell idle workers sleep on (64 bytes)
REQUEST_RING_NAME_OFFSET = 576  # the current request ring's name, NUL-padded (64 bytes)
REQUEST_RING_NAME_SIZE = 64

# server states
STARTING, READY, STOPPING, STOPPED = 0, 1, 2, 3

# worker row words
W_PID, W_STATE, W_RESTARTS, W_CPUMASK, W_GPU = 0, 1, 2, 3, 4
W_REQUESTS, W_BATCHES, W_ROWS, W_ERRORS, W_EXEC_NS, W_WAIT_NS, W_INFLIGHT = 5, 6, 7, 8, 9, 10, 11
# W_CALLS: calls run in batches (a call split into chunks counts once per chunk), so
# W_CALLS / W_BATCHES is the mean calls per batch; W_QUEUED: calls (chunks) the worker holds
# in its batch assemblers right now, waiting for their batch (a gauge, not a counter).
W_CALLS, W_QUEUED = 12, 13
W_HIST = 16  # HIST_BUCKETS words of end-to-end latency (send to answer), in worker's view
W_BATCH_HIST = W_HIST + HIST_BUCKETS  # rows-per-batch, log2 buckets, to the end of the row
#: Buckets of the batch-size histogram: the words left in a worker row (the last one also
#: counts every larger batch, so a batch of any size has a bucket).
BATCH_HIST_BUCKETS = WORKER_ROW // 8 - W_BATCH_HIST

# worker states
W_STARTING, W_READY, W_DEAD, W_STOPPED = 0, 1, 2, 3

# channel row: words 0-3, then the ring name (bytes 64-127) and the doorbell (bytes 128-191).
# C_OWNER is the client's pid (for display; 0 = free), C_OWNER_ID its liveness owner id
# (ipc.liveness, the 8 hex digits as an integer): the supervisor judges the client by it.
C_OWNER, C_GEN, C_STATE, C_OWNER_ID = 0, 1, 2, 3
C_NAME_OFFSET = 64
C_NAME_SIZE = 64
C_BELL_OFFSET = 128

# channel states
C_FREE, C_CLAIMED, C_OPEN = 0, 1, 2
_CHANNEL_WORDS = CHANNEL_ROW // 8


class Control:
    """Typed access to a control segment; works for the creator and for attachers."""

    def __init__(self, segment: Segment) -> None:
        self.segment = segment
        buf = segment.buf
        self.header = np.frombuffer(buf, dtype="<i8", count=HEADER_SIZE // 8)
        self.workers = np.frombuffer(
            buf, dtype="<i8", count=MAX_WORKERS * WORKER_ROW // 8, offset=WORKERS_OFFSET
        ).reshape(MAX_WORKERS, WORKER_ROW // 8)
        self.channels = np.frombuffer(
            buf, dtype="<i8", count=MAX_CHANNELS * CHANNEL_ROW // 8, offset=CHANNELS_OFFSET
        ).reshape(MAX_CHANNELS, CHANNEL_ROW // 8)
        # the same words as a flat memoryview: an item read there costs a fraction of numpy's
        # (channel_live runs for every answer)
        self._channel_words = buf[CHANNELS_OFFSET:CHANNELS_OFFSET + MAX_CHANNELS * CHANNEL_ROW
                                  ].cast("q")
        self._base = segment.address

    @classmethod
    def create(cls) -> Control:
        seg = Segment.create(SIZE, tag="ctl")
        ctl = cls(seg)
        ctl.header[H_MAGIC] = MAGIC
        ctl.header[H_VERSION] = VERSION
        ctl.header[H_SERVER_PID] = os.getpid()
        ctl.header[H_STATE] = STARTING
        return ctl

    @classmethod
    def attach(cls, name: str) -> Control:
        seg = Segment.attach(name)
        if seg.size < SIZE:
            seg.close()
            raise errors.ProtocolError(
                f"control segment {name} is too small ({seg.size} bytes) for protocol version "
                f"{VERSION}: its server runs another runnerlib version; run the same version in "
                "every process of a namespace")
        ctl = cls(seg)
        magic, version = int(ctl.header[H_MAGIC]), int(ctl.header[H_VERSION])
        if magic != MAGIC or version != VERSION:
            ctl.close()
            what = (f"speaks session protocol version {version}, this process {VERSION}"
                    if magic == MAGIC else "is not a runnerlib control segment")
            raise errors.ProtocolError(
                f"{name} {what}: run the same runnerlib version in every process of a namespace")
        return ctl

    @property
    def name(self) -> str:
        return self.segment.name

    @property
    def state(self) -> int:
        return int(self.header[H_STATE])

    @state.setter
    def state(self, value: int) -> None:
        self.header[H_STATE] = value

    @property
    def server_pid(self) -> int:
        return int(self.header[H_SERVER_PID])

    # -- the request ring -----------------------------------------------------------------

    def publish_request_ring(self, name: str) -> None:
        """Name the runner's current request ring: the name first, then (after a fence) the
        epoch, so that whoever sees the new epoch reads the new name."""
        raw = name.encode("ascii")
        if len(raw) >= REQUEST_RING_NAME_SIZE:
            raise ValueError(f"ring name too long: {name}")
        at = REQUEST_RING_NAME_OFFSET
        self.segment.buf[at : at + REQUEST_RING_NAME_SIZE] = raw.ljust(REQUEST_RING_NAME_SIZE,
                                                                       b"\0")
        atomics.fence()
        self.header[H_REQ_EPOCH] += 1

    def request_ring(self) -> tuple[int, str]:
        """(epoch, name) of the current request ring."""
        epoch = int(self.header[H_REQ_EPOCH])
        atomics.fence()
        at = REQUEST_RING_NAME_OFFSET
        raw = bytes(self.segment.buf[at : at + REQUEST_RING_NAME_SIZE]).split(b"\0", 1)[0]
        try:
            return epoch, raw.decode("ascii")
        except UnicodeDecodeError:
            return epoch, ""

    # -- channels -------------------------------------------------------------------------

    def channel_offset(self, slot: int) -> int:
        return CHANNELS_OFFSET + slot * CHANNEL_ROW

    def claim_channel(self) -> tuple[int, int]:
        """Claim a free channel slot for this process; returns (slot, generation)."""
        me = liveness.me()
        for slot in range(MAX_CHANNELS):
            if self.channels[slot, C_OWNER] != 0:
                continue
            addr = self._base + self.channel_offset(slot) + C_OWNER * 8
            if atomics.cas64(addr, 0, me.pid):
                # before CLAIMED: a row with an owner but no owner id is left alone by reclaim
                self.channels[slot, C_OWNER_ID] = int(me.id, 16)
                gen = int(self.channels[slot, C_GEN]) + 1
                self.channels[slot, C_GEN] = gen
                self.channels[slot, C_STATE] = C_CLAIMED
                return slot, gen
        raise errors.TransportError(
            f"all {MAX_CHANNELS} client channels of this runner are in use (one per calling "
            "thread and event loop): use fewer threads, or a thread pool")

    def open_channel(self, slot: int, ring_name: str) -> None:
        raw = ring_name.encode("ascii")
        if len(raw) >= C_NAME_SIZE:
            raise ValueError(f"ring name too long: {ring_name}")
        start = self.channel_offset(slot) + C_NAME_OFFSET
        self.segment.buf[start : start + C_NAME_SIZE] = raw.ljust(C_NAME_SIZE, b"\0")
        atomics.fence()
        self.channels[slot, C_STATE] = C_OPEN

    def channel_ring_name(self, slot: int) -> str:
        start = self.channel_offset(slot) + C_NAME_OFFSET
        raw = bytes(self.segment.buf[start : start + C_NAME_SIZE]).split(b"\0", 1)[0]
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            return ""

    def channel_live(self, slot: int, gen: int, mask: int = -1) -> bool:
        """True while the channel is open and still belongs to the call's generation: the
        full 64-bit one a request prefix carries, or (``mask=GEN_MASK``) the bits of a tag."""
        if not 0 <= slot < MAX_CHANNELS:
            return False
        words = self._channel_words
        at = slot * _CHANNEL_WORDS
        return (
            words[at + C_STATE] == C_OPEN
            and (words[at + C_GEN] & mask) == (gen & mask)
            and words[at + C_OWNER] != 0
        )

    def free_channel(self, slot: int) -> None:
        """Give a slot back: state first, so workers stop writing before the owner is cleared."""
        self.channels[slot, C_STATE] = C_FREE
        self.channels[slot, C_OWNER_ID] = 0
        atomics.fence()
        self.channels[slot, C_OWNER] = 0

    def open_channels(self) -> list[tuple[int, int, int]]:
        """(slot, owner pid, generation) of every claimed slot, read from a private snapshot
        (clients change the table meanwhile): each row is judged on its own copied words."""
        rows = self.channels[:, : C_STATE + 1].copy()
        claimed = np.nonzero(rows[:, C_OWNER] > 0)[0]
        return [(int(s), int(rows[s, C_OWNER]), int(rows[s, C_GEN])) for s in claimed]

    def channel_claims(self) -> list[tuple[int, Owner | None]]:
        """(slot, owner) of every claimed slot, from a private snapshot like open_channels;
        owner None while a claim is under way (its owner id not written yet) or when the
        row's words are not a valid owner (foreign writes): such a row is not judged."""
        rows = self.channels[:, : C_OWNER_ID + 1].copy()
        return [(int(s), _owner(rows[s])) for s in np.nonzero(rows[:, C_OWNER] > 0)[0]]

    def claimant(self, slot: int) -> Owner | None:
        """The owner of one slot now (None: free, being claimed, or not a valid owner)."""
        return _owner(self.channels[slot, : C_OWNER_ID + 1].copy())

    def close(self) -> None:
        self._channel_words.release()
        del self.header, self.workers, self.channels
        self.segment.close()


class ChannelCache:
    """Client channels (response ring + doorbell) attached by slot, for the processes that
    answer calls: workers and the supervisor. An entry is dropped as soon as its slot's
    generation changes or the channel closes, so a reused slot never gets a stale answer."""

    def __init__(self, ctl: Control) -> None:
        self.ctl = ctl
        self._by_slot: dict[int, tuple[int, Ring, Doorbell]] = {}

    def get(self, slot: int, gen: int, mask: int = -1) -> tuple[Ring, Doorbell] | None:
        """The channel's ring and doorbell while it belongs to ``gen`` (compared under
        ``mask``), else None."""
        ctl = self.ctl
        cached = self._by_slot.get(slot)
        live = ctl.channel_live(slot, gen, mask)
        if cached is not None:
            if (cached[0] & mask) == (gen & mask) and live:
                return cached[1], cached[2]
            self.drop(slot)
        if not live:
            return None
        try:
            ring = Ring.attach(ctl.channel_ring_name(slot))
            bell = Doorbell.attach(ctl.segment, ctl.channel_offset(slot) + C_BELL_OFFSET)
        except Exception:  # the client went away meanwhile, or its entry is hostile
            return None
        if not ctl.channel_live(slot, gen, mask):  # reclaimed while we attached
            ring.close()
            bell.close()
            return None
        self._by_slot[slot] = (int(ctl.channels[slot, C_GEN]), ring, bell)
        return ring, bell

    def drop(self, slot: int) -> None:
        cached = self._by_slot.pop(slot, None)
        if cached is not None:
            cached[1].close()
            cached[2].close()

    def close(self) -> None:
        for slot in list(self._by_slot):
            self.drop(slot)


def _owner(row: np.ndarray) -> Owner | None:
    pid, oid = int(row[C_OWNER]), int(row[C_OWNER_ID])
    if 0 < pid < 1 << 31 and 0 < oid < 1 << 32:
        return Owner(pid, f"{oid:08x}")
    return None


def hist_bucket(micros: float) -> int:
    """Index of the log2 bucket for a latency in microseconds."""
    b = int(micros).bit_length()
    return b if b < HIST_BUCKETS else HIST_BUCKETS - 1


def percentile_from_hist(hist: np.ndarray, q: float) -> float:
    """Upper bound (in the histogram's unit) of the bucket holding quantile q; 0 when empty."""
    total = int(hist.sum())
    if total == 0:
        return 0.0
    target = q * total
    running = 0
    for i, n in enumerate(hist):
        running += int(n)
        if running >= target:
            return float(1 << i)
    return float(1 << (len(hist) - 1))


class HeldCalls:
    """The calls one worker holds, in a small segment of its own that the supervisor creates
    and reads only once the worker is dead, to answer each of them with WorkerDied.

    A worker copies its calls out of the request ring and gives the records back at once, so
    the ring never says what a worker holds; this table does, until the answer is written.
    One writer (the worker) while it lives, one reader (the supervisor) after it died: no
    locks. An entry is (tag, full channel generation, deadline in ns); the tag is written last
    and a zero tag marks a free entry, so a worker killed mid-write leaves at most one entry
    that the reader skips or that fails the generation check harmlessly.

    Layout: 64-byte header (magic "RLHELD01", capacity), then ``capacity`` 32-byte entries
    (u64 tag, u64 generation, i64 deadline ns, u64 unused).
    """

    MAGIC = int.from_bytes(b"RLHELD01", "little")
    HEADER_WORDS = 8
    ENTRY_WORDS = 4
    CAPACITY = 8192

    def __init__(self, segment: Segment) -> None:
        self.segment = segment
        self._q = segment.buf.cast("Q")
        self.capacity = min(int(self._q[1]), (segment.size // 8 - self.HEADER_WORDS)
                            // self.ENTRY_WORDS)
        self._free = list(range(self.capacity - 1, -1, -1))

    @classmethod
    def create(cls, capacity: int = CAPACITY) -> HeldCalls:
        seg = Segment.create(8 * (cls.HEADER_WORDS + cls.ENTRY_WORDS * capacity), tag="held")
        q = seg.buf.cast("Q")
        q[1] = capacity
        q[0] = cls.MAGIC
        q.release()
        return cls(seg)

    @classmethod
    def attach(cls, name: str) -> HeldCalls:
        seg = Segment.attach(name)
        if seg.size < 64 or int.from_bytes(seg.buf[:8], "little") != cls.MAGIC:
            seg.close()
            raise errors.ProtocolError(f"{name} is not a held-calls table")
        return cls(seg)

    @property
    def free(self) -> int:
        """Entries this (writing) process can still fill."""
        return len(self._free)

    def add(self, tag: int, gen: int, deadline: float) -> int:
        """Record a call; its entry index, or -1 when the table is full (the call is then
        not answered if this worker dies: the worker stops taking calls well before)."""
        if not self._free:
            return -1
        i = self._free.pop()
        at = self.HEADER_WORDS + i * self.ENTRY_WORDS
        q = self._q
        q[at + 1] = gen & 0xFFFF_FFFF_FFFF_FFFF
        q[at + 2] = max(int(deadline * 1e9), 0) & 0x7FFF_FFFF_FFFF_FFFF
        q[at] = tag
        return i

    def remove(self, i: int) -> None:
        if i < 0:
            return
        self._q[self.HEADER_WORDS + i * self.ENTRY_WORDS] = 0
        self._free.append(i)

    def snapshot(self) -> list[tuple[int, int, float]]:
        """(tag, generation, deadline) of every entry, from a private copy (the supervisor,
        after the worker died)."""
        words = np.frombuffer(self.segment.buf, dtype="<u8", offset=8 * self.HEADER_WORDS,
                              count=self.capacity * self.ENTRY_WORDS).reshape(
                                  self.capacity, self.ENTRY_WORDS).copy()
        return [(int(t), int(g), int(d) / 1e9) for t, g, d, _ in words if t]

    def clear(self) -> None:
        self.segment.buf[8 * self.HEADER_WORDS:] = bytes(self.segment.size
                                                         - 8 * self.HEADER_WORDS)
        self._free = list(range(self.capacity - 1, -1, -1))

    def close(self) -> None:
        try:
            self._q.release()
        except BufferError:
            pass
        self.segment.close()

"""Child-process bodies for the ipc tests (importable under the spawn start method)."""

from __future__ import annotations

import os
import random
import struct
import threading
import time
import zlib

from ipc.doorbell import Doorbell
from ipc.ring import Ring
from ipc.segment import Segment

STOP = 0xFFFF
DATA = 1
REC = struct.Struct("<IIII")  # producer, seq, body length, crc32 of the body


def body_for(producer: int, seq: int) -> bytes:
    rnd = random.Random(producer * 1_000_003 + seq)
    n = rnd.choice((0, 1, 7, 8, 63, 64, 65, 200, 500, 1000, rnd.randrange(0, 3000)))
    return rnd.randbytes(n)


def producer(ring_name: str, seg_name: str, producer_id: int, count: int) -> None:
    """Write `count` records, each a checked body, ringing the consumers' doorbell."""
    ring = Ring.attach(ring_name)
    seg = Segment.attach(seg_name)
    bell = Doorbell.attach(seg, 0)
    try:
        for seq in range(count):
            body = body_for(producer_id, seq)
            res = ring.reserve(
                REC.size + len(body), kind=DATA, tag=producer_id << 32 | seq, timeout=60
            )
            REC.pack_into(res.buf, 0, producer_id, seq, len(body), zlib.crc32(body))
            res.buf[REC.size :] = body
            res.commit()
            bell.ring()
    finally:
        bell.close()
        seg.close()
        ring.close()


def consumer(ring_name: str, seg_name: str, out_q) -> None:
    """Take records until a STOP record; report (ids seen, bad count) through out_q."""
    ring = Ring.attach(ring_name)
    seg = Segment.attach(seg_name)
    bell = Doorbell.attach(seg, 0)
    ids = []
    bad = 0
    me = os.getpid()
    try:
        while True:
            rec = ring.take(taker=me)
            if rec is None:
                bell.wait(ring.has_pending, spin=50e-6, timeout=1.0)
                continue
            if rec.kind == STOP:
                rec.release()
                break
            mv = memoryview(rec.buffer)
            p, seq, n, crc = REC.unpack_from(mv, 0)
            body = mv[REC.size :]
            if (
                len(body) != n
                or zlib.crc32(body) != crc
                or rec.tag != (p << 32 | seq)
                or rec.nbytes != REC.size + n
            ):
                bad += 1
            ids.append(p << 32 | seq)
            del body, mv
            if random.random() < 0.3:
                rec.release()  # explicit; the rest are released when `rec` dies
            del rec
        out_q.put((ids, bad))
    finally:
        bell.close()
        seg.close()
        ring.close()


def die_mid_reservation(ring_name: str, nbytes: int) -> None:
    """Reserve and die before commit."""
    ring = Ring.attach(ring_name)
    res = ring.reserve(nbytes)
    res.buf[:] = b"x" * nbytes
    os._exit(0)


def die_holding_lock(ring_name: str) -> None:
    """Take the ring lock and die inside the critical section."""
    ring = Ring.attach(ring_name)
    ring._lock(os.getpid() | threading.get_native_id() << 32)
    os._exit(0)


def die_after_take(ring_name: str, taker: int, n: int) -> None:
    """Take n records, keep them, die."""
    ring = Ring.attach(ring_name)
    kept = [ring.take(taker=taker) for _ in range(n)]
    assert all(r is not None for r in kept)
    os._exit(0)


def leave_segments(conn) -> None:
    """Create a segment and a doorbell FIFO, report their names, exit without cleanup."""
    seg = Segment.create(4096, tag="stale")
    bell = Doorbell.create(seg, 0)
    conn.send((seg.name, bell.path))
    conn.close()
    os._exit(0)


def bell_echo(seg_name: str, rounds: int) -> None:
    """Ping-pong: wait for word 16 (at byte 128) to reach i, answer in word 24 (byte 192)."""
    seg = Segment.attach(seg_name)
    ping = Doorbell.attach(seg, 0)
    pong = Doorbell.attach(seg, 64)
    q = seg.buf.cast("Q")
    try:
        for i in range(1, rounds + 1):
            if not ping.wait(lambda i=i: q[16] >= i, spin=0, timeout=30):
                return
            q[24] = i
            pong.ring()
    finally:
        q.release()
        ping.close()
        pong.close()
        seg.close()


def bell_ringer(seg_name: str, rounds: int, delay: float) -> None:
    """Set word 16 to 1..rounds, ringing each time; wait for the ack in word 24 between."""
    seg = Segment.attach(seg_name)
    ping = Doorbell.attach(seg, 0)
    pong = Doorbell.attach(seg, 64)
    q = seg.buf.cast("Q")
    try:
        for i in range(1, rounds + 1):
            time.sleep(delay)
            q[16] = i
            ping.ring()
            if not pong.wait(lambda i=i: q[24] >= i, spin=0, timeout=30):
                return
    finally:
        q.release()
        ping.close()
        pong.close()
        seg.close()

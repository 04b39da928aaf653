"""Micro-benchmarks of the ring transport (pytest-benchmark); no speed assertions here."""

from __future__ import annotations

import numpy as np
import pytest

from ipc import atomics
from ipc.doorbell import Doorbell
from ipc.ring import Ring
from ipc.segment import Segment


@pytest.fixture
def ring():
    r = Ring.create(16 * 1024 * 1024)
    yield r
    r.close()
    r.unlink()


@pytest.fixture
def bell():
    seg = Segment.create(4096, tag="bench")
    b = Doorbell.create(seg, 0)
    yield b
    b.close()
    b.unlink()
    seg.close()
    seg.unlink()


def _round_trip(ring: Ring, data: np.ndarray | None, nbytes: int) -> None:
    res = ring.reserve(nbytes, kind=1, tag=2)
    if data is not None:
        np.frombuffer(res.buf, dtype=np.uint8)[:] = data
    res.commit()
    rec = ring.take(taker=1)
    buf = rec.buffer
    assert buf.size == nbytes
    rec.release()


def test_ring_round_trip_64b(benchmark, ring):
    """reserve + write 64 B + commit + take + zero-copy buffer + release."""
    data = np.arange(64, dtype=np.uint8)
    benchmark(_round_trip, ring, data, 64)


def test_ring_round_trip_64b_no_write(benchmark, ring):
    """The same without the payload write: the ring's own overhead."""
    benchmark(_round_trip, ring, None, 64)


def test_ring_round_trip_64b_no_write_pure_python(benchmark, ring, monkeypatch):
    """The same through the pure-Python reference (without the C hot paths of ipc._fastring)."""
    from ipc import ring as ring_module

    monkeypatch.setattr(ring_module, "_fast", None)
    benchmark(_round_trip, ring, None, 64)


def test_ring_take_empty(benchmark, ring):
    """take() on an empty ring: a consumer's poll (the lock, the cursors, an EMPTY outcome)."""
    benchmark(ring.take, taker=1)


def test_ring_round_trip_1mib(benchmark, ring):
    """reserve + write 1 MiB (one copy into shared memory) + commit + take + release."""
    data = np.random.default_rng(0).integers(0, 255, 1 << 20, dtype=np.uint8)
    benchmark(_round_trip, ring, data, 1 << 20)


def test_ring_round_trip_1mib_no_write(benchmark, ring):
    """A 1 MiB record without the copy: costs the same as a small one."""
    benchmark(_round_trip, ring, None, 1 << 20)


def test_doorbell_ring_no_sleeper(benchmark, bell):
    """ring() with nobody asleep: a fence and a load, no system call."""
    benchmark(bell.ring)


def test_fence(benchmark):
    benchmark(atomics.fence)

"""The whole-message paths: Ring.put / ipc.fastpath.send, Ring.take_copy / release_at and
Ring.spin_pending, in C (when built) and on the Python fallbacks, against the general paths."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from ipc import codec, fastpath
from ipc import ring as ring_module
from ipc.doorbell import Doorbell
from ipc.ring import Record, Ring

IMPLS = ["c", "python"] if ring_module._fast is not None else ["python"]


@pytest.fixture(params=IMPLS)
def impl(request, monkeypatch):
    if request.param == "python":
        monkeypatch.setattr(ring_module, "_fast", None)
    return request.param


@pytest.fixture
def ring(impl):
    r = Ring.create(1 << 16)
    yield r
    r.close()
    r.unlink()


@pytest.fixture
def bell(ring):
    b = Doorbell.create(ring.segment, ring.user_offset)
    yield b
    b.close()
    b.unlink()


def _payload(ring: Ring) -> tuple[int, int, bytes]:
    rec = ring.take()
    assert rec is not None
    out = (rec.kind, rec.tag, rec.buffer.to_pybytes())
    rec.release()
    return out


VALUES = [
    ((np.arange(16, dtype=np.float32).reshape(1, 16),), {}),
    ((np.arange(7, dtype=np.int64), np.ones((3, 5), np.float64)), {}),
    np.arange(12, dtype=np.uint8).reshape(3, 4),
    (((np.zeros((0, 4), np.float32)),), {}),
    {"a": b"bytes buffer" * 20, "b": [1, 2.5, "x"]},
    np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),  # F order: its writer
    np.arange(20, dtype=np.float32)[::2],  # not contiguous: copied by the codec first
]


@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
@pytest.mark.parametrize("prefix", [None, b"P" * 24 + bytes(40)])
def test_send_writes_what_the_general_path_writes(ring, bell, impl, value, prefix):
    for _ in range(2):  # the second time through, the codec's remembered plans
        plan = codec.encode(value)
        want = (prefix or b"") + plan.to_bytes()
        if fastpath.send(ring, bell, 7, 99, plan, prefix, 1 << 16):
            assert impl == "c"
            assert _payload(ring) == (7, 99, want)
        else:  # the general path writes it
            res = ring.reserve(len(want), kind=7, tag=99)
            at = 0 if prefix is None else len(prefix)
            if prefix is not None:
                res.buf[:at] = prefix
            plan.write_into(res.buf[at:])
            res.commit()
            assert _payload(ring) == (7, 99, want)
        assert not ring.has_pending()
    if impl == "python":
        assert ring.put(8, 1, 1, ((0, b"x"),), 0) is None


def test_put_zeroes_gaps_and_counts_sleepers(ring, bell, impl):
    if impl == "python":
        pytest.skip("the C path only")
    ring.reserve(16).abort()  # a dirty ring: gaps must come out zero anyway
    assert ring.put(64, 3, 4, ((0, b"ab"), (10, b"cd")), bell.block_address) == 0
    assert _payload(ring) == (3, 4, b"ab" + bytes(8) + b"cd" + bytes(52))
    bell.arm()
    try:
        assert ring.put(8, 3, 5, (), bell.block_address) == 1
        assert ring.put(8, 3, 6, (), 0) == 0  # no doorbell: nothing counted
    finally:
        bell.disarm()
    for bad in [((4, b"abcd"), (2, b"x")), ((60, b"123456789"),)]:
        with pytest.raises(ValueError):
            ring.put(64, 3, 7, bad, 0)
    with pytest.raises(TypeError):
        ring.put(64, 3, 7, ((0, object()),), 0)
    assert ring.put(ring.max_record + 1, 3, 8, (), 0) is None  # too large: the general path
    assert [_payload(ring)[1] for _ in range(2)] == [5, 6]
    assert ring.take() is None


def test_send_declines_a_full_ring(ring, bell, impl):
    plan = codec.encode(np.zeros(1000, np.float32))
    sent = 0
    while fastpath.send(ring, bell, 1, sent, plan, None, 1 << 16):
        sent += 1
    if impl == "c":
        assert sent and ring.used_fraction() > 0.9
    while (rec := ring.take()) is not None:
        rec.release()


@pytest.mark.parametrize("release", [True, False])
def test_take_copy(ring, impl, release):
    assert ring.take_copy(max_copy=1024, release=release) is None
    for tag, n in [(1, 10), (2, 2000)]:
        res = ring.reserve(n, kind=5, tag=tag)
        res.buf[:] = bytes([tag]) * n
        res.commit()
    got = ring.take_copy(taker=3, max_copy=1024, release=release)
    if impl == "python":
        assert isinstance(got, Record) and got.nbytes == 10
        got.release()
    else:
        assert type(got) is tuple
        kind, tag, data, pos = got
        assert (kind, tag, data) == (5, 1, b"\x01" * 10)
        if not release:  # still taken by us: nothing behind it is reclaimed before release_at
            assert ring.release_taken_by(3) == [(5, 1)]
            ring.release_at(pos)  # already given back: harmless
    big = ring.take_copy(max_copy=1024, release=release)  # too large to copy: a Record
    assert isinstance(big, Record) and big.nbytes == 2000 and big.tag == 2
    assert big.buffer.to_pybytes() == b"\x02" * 2000
    big.release()
    assert ring.take_copy(max_copy=1024, release=release) is None
    assert ring.release_taken_by(3) == [] and ring.release_taken_by(0) == []


def test_release_at(ring, impl):
    res = ring.reserve(10, kind=1, tag=1)
    res.commit()
    got = ring.take_copy(max_copy=1024, release=False)
    if impl == "python":
        assert isinstance(got, Record)
        got.release()
        return
    pos = got[3]
    ring.release_at(pos)
    ring.release_at(pos)  # idempotent
    assert ring.take() is None
    assert ring.release_taken_by(0) == []  # nothing left taken


def test_spin_pending(ring, impl):
    assert ring.spin_pending(0.0) is False
    t0 = time.monotonic()
    assert ring.spin_pending(0.002) is False
    assert time.monotonic() - t0 >= 0.0015

    def later():
        time.sleep(0.01)
        ring.reserve(8).commit()

    th = threading.Thread(target=later)
    th.start()
    try:
        assert ring.spin_pending(10.0) is True  # the GIL is free meanwhile: the thread runs
    finally:
        th.join()
    assert ring.spin_pending(1.0) is True
    rec = ring.take()
    assert rec is not None
    rec.release()
    closed = Ring.create(4096)
    closed.close()
    closed.unlink()
    assert closed.spin_pending(0.01) is False


def test_doorbell_wait_with_spinner(ring, bell):
    def later():
        time.sleep(0.005)
        ring.reserve(8).commit()
        bell.ring()

    th = threading.Thread(target=later)
    th.start()
    try:
        assert bell.wait(ring.has_pending, spin=0.001, timeout=10.0, spinner=ring.spin_pending)
    finally:
        th.join()
    assert not bell.wait(lambda: False, spin=0.001, timeout=0.01, spinner=lambda s: False)
    while (rec := ring.take()) is not None:
        rec.release()

"""ipc.shared and its wire form (ext 10) in one process: counts, reuse, LINGER, fallbacks to
bytes, and hostile references refused with CorruptRecord."""

from __future__ import annotations

import gc

import msgspec
import numpy as np
import pytest

from ipc import codec, shared
from ipc.codec.wire import EXT_SHARED
from ipc.errors import CorruptRecord, OverLimit
from ipc.segment import Segment


def _roundtrip(value):
    plan = codec.encode(value)
    buf = bytearray(plan.nbytes)
    plan.write_into(memoryview(buf))
    return codec.decode(bytes(buf), copy=True), plan.nbytes


def _refs(a) -> int:
    return shared._count(shared.block_of(a).segment)


def test_a_reference_is_counted_until_received_and_the_receiver_shares_the_block():
    x = shared.empty((8, 8), np.float64)
    x[:] = np.arange(64).reshape(8, 8)
    assert _refs(x) == 1
    plan = codec.encode(((x[2:, ::-1].T,), {}))
    assert _refs(x) == 2  # one in flight
    assert plan.nbytes < 256  # a reference, not 512 bytes of data
    buf = bytearray(plan.nbytes)
    plan.write_into(memoryview(buf))
    (y,), _ = codec.decode(bytes(buf), copy=True)
    assert _refs(x) == 1  # taken over by this process's hold
    np.testing.assert_array_equal(y, x[2:, ::-1].T)
    assert np.shares_memory(x, y) and y.flags.writeable
    del x, y


def test_a_failed_encode_gives_its_counts_back():
    x = shared.empty(4)
    with pytest.raises(TypeError):
        codec.encode([x, object()], allow_pickle=False)
    assert _refs(x) == 1
    del x


def test_let_go_segments_are_reused_warm_and_kept_at_most_keep():
    names = []
    for _ in range(5):
        a = shared.empty(1000)
        names.append(shared.block_of(a).name)
        del a
    assert len(set(names)) == 1  # each let go, then reused
    arrays = [shared.empty(1000) for _ in range(4)]
    del arrays
    gc.collect()
    shared.sweep()
    assert len(shared._idle) == shared.KEEP
    shared.trim()
    assert not shared._idle and shared.owned_bytes() == 0


def test_a_segment_still_referenced_is_not_reused_then_unlinked_after_linger(monkeypatch):
    x = shared.empty(16)
    x[:] = 1
    plan = codec.encode(x)  # a reference nobody ever receives (a lost message)
    name = shared.block_of(x).name
    seg = shared.block_of(x).segment
    del x
    gc.collect()
    y = shared.empty(16)
    assert shared.block_of(y).name != name  # counted elsewhere: never reused
    monkeypatch.setattr(shared, "LINGER", 0.0)
    shared.sweep()
    with pytest.raises(CorruptRecord, match="is gone"):
        _roundtrip_plan(plan)
    assert seg.closed
    del y


def _roundtrip_plan(plan):
    buf = bytearray(plan.nbytes)
    plan.write_into(memoryview(buf))
    return codec.decode(bytes(buf))


def test_an_unlinked_shared_array_travels_as_bytes():
    x = shared.empty(32)
    x[:] = 4
    block = shared.block_of(x)
    shared._unlink(block.segment)  # what LINGER does to a segment still referenced
    value, nbytes = _roundtrip(x)
    assert nbytes > x.nbytes and shared.block_of(value) is None
    np.testing.assert_array_equal(value, x)
    del x, block, value


def test_the_limit_counts_what_this_process_made():
    shared.trim()
    shared.set_limit(1 << 20)
    try:
        a = shared.empty(100_000)  # 400 KB -> 448 KiB segment
        with pytest.raises(OverLimit, match="over its limit"):
            shared.empty(200_000)
        with pytest.raises(OverLimit, match="over its limit"):
            codec.encode(np.ones(200_000, np.float32), share_above=1024)
        assert shared.empty(200_000, limit=0) is not None  # an explicit limit wins
        del a
        gc.collect()
        b = shared.empty(200_000)  # the idle ones are given back first
        del b
    finally:
        shared.set_limit(0)


def _ref(meta) -> bytes:
    """A message whose envelope is one ext-10 reference with the given fields."""
    good = shared.empty(4)
    plan = codec.encode(good)
    shared.block_of(good).unshare()
    env = msgspec.msgpack.encode(msgspec.msgpack.Ext(EXT_SHARED, msgspec.msgpack.encode(meta)))
    buf = bytearray(plan.nbytes)
    plan.write_into(memoryview(buf))
    head = bytes(buf[:16])
    import struct

    pre = struct.pack("<4sBBHII", head[:4], head[4], 0, 0, len(env), 0)
    return pre + env


@pytest.mark.parametrize("mutate", [
    lambda m: m[:5],
    lambda m: [m[0] + "x", *m[1:]],
    lambda m: ["/rl.1.0000000000000000.ring", *m[1:]],
    lambda m: [m[0], -8, *m[2:]],
    lambda m: [m[0], 1 << 40, *m[2:]],
    lambda m: [m[0], m[1], "|O", *m[3:]],
    lambda m: [m[0], m[1], m[2], [1 << 30], m[4], m[5]],
    lambda m: [m[0], m[1], m[2], [4], [-8], m[5]],
    lambda m: [m[0], m[1], m[2], [4, 4], [4], m[5]],
    lambda m: [m[0], m[1], m[2], m[3], m[4], 1],
])
def test_hostile_references_are_refused(mutate):
    x = shared.empty(4)
    meta = [shared.block_of(x).name, 0, "<f4", [4], [4], True]
    ok = codec.decode(_ref(meta))
    np.testing.assert_array_equal(ok, x)
    shared.block_of(x).share()  # the count the next message "carries"
    with pytest.raises(CorruptRecord):
        codec.decode(_ref(mutate(meta)))
    del x, ok


def test_a_reference_to_another_kind_of_segment_is_refused():
    seg = Segment.create(4096, tag="arr")  # the right tag, but no shared-array header
    try:
        msg = _ref([seg.name, 0, "<f4", [4], [4], True])
        with pytest.raises(CorruptRecord, match="not a shared array"):
            codec.decode(msg)
    finally:
        seg.unlink()
        seg.close()


@pytest.mark.parametrize("make", [
    lambda: np.arange(40_000, dtype=np.float32),
    lambda: np.asfortranarray(np.arange(40_000, dtype=np.float64).reshape(200, 200)),
    lambda: np.arange(40_000, dtype=">i4"),  # big-endian: arrives native
    lambda: np.arange(40_000, dtype=np.float64)[::3],  # strided
    lambda: (np.arange(80_000) % 3 == 0),  # 80 KB of bool
    lambda: np.arange(40_000, dtype=np.complex64),
])
def test_large_plain_arrays_travel_as_read_only_shared_copies(make):
    a = make()
    value, nbytes = _roundtrip_share(a)
    assert nbytes < 512  # a reference
    assert shared.block_of(value) is not None and not value.flags.writeable
    np.testing.assert_array_equal(value, a)
    assert value.dtype == a.dtype.newbyteorder("=")
    if a.flags.f_contiguous and not a.flags.c_contiguous:
        assert value.flags.f_contiguous
    # sent back: the same memory, no second copy
    again, _ = _roundtrip_share(value)
    assert shared.block_of(again) is shared.block_of(value)
    del value, again


def test_small_arrays_and_unsupported_dtypes_still_travel_as_bytes():
    small = np.arange(10, dtype=np.float32)
    value, nbytes = _roundtrip_share(small)
    assert shared.block_of(value) is None and nbytes > small.nbytes
    dates = np.arange(40_000).astype("datetime64[s]")  # not on the wire: pickled
    value, _ = _roundtrip_share(dates)
    np.testing.assert_array_equal(value, dates)


def _roundtrip_share(value):
    plan = codec.encode(value, share_above=64 << 10)
    buf = bytearray(plan.nbytes)
    plan.write_into(memoryview(buf))
    return codec.decode(bytes(buf), copy=True), plan.nbytes

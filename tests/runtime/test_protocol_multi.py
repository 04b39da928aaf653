"""The MULTI answer record (protocol version 5) and MANY request bodies, through a real ring:
what a worker writes (``multi_plan``, in one C ``put`` or by the general writers) is what a
client reads back (``open_multi``), from a private copy or from the record itself; every
count, offset and length is checked; and a batch's answers split into records that fit."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipc import codec, fastpath
from ipc import ring as ring_module
from ipc.doorbell import Doorbell
from ipc.errors import CorruptRecord
from ipc.ring import CopiedRecord, Ring
from runnerlib._shm import protocol as P


@pytest.fixture
def ring(request):
    """A 1 MiB ring (its doorbell in the ``bell`` fixture), gone after the test."""
    r = Ring.create(1 << 20)
    request.addfinalizer(lambda: (r.close(), r.unlink()))
    return r


@pytest.fixture
def bell(ring, request):
    b = Doorbell.create(ring.segment, ring.user_offset)
    request.addfinalizer(lambda: (b.close(), b.unlink()))
    return b


ANSWERS = [
    (P.make_tag(3, 7, 1), P.OK, np.arange(16, dtype=np.float32).reshape(1, 16)),
    (P.make_tag(3, 7, 2), P.OK, np.arange(48, dtype=np.float32).reshape(3, 16)),
    (P.make_tag(3, 7, 3), P.ERROR, P.error_payload(ValueError("bad row"))),
    (P.make_tag(3, 7, 4), P.CHUNK, {"text": "chunk", "n": [1, 2.5]}),
    (P.make_tag(3, 7, 5), P.END, None),
    (P.make_tag(3, 7, 6), P.OK, np.asfortranarray(np.arange(12.0).reshape(3, 4))),
    (P.make_tag(3, 7, 7), P.OK, np.zeros((0, 16), np.float32)),
]
#: what the one C put carries (an F-order array takes its own writer: the general path)
C_ANSWERS = [a for i, a in enumerate(ANSWERS) if i != 5]


def _plan(answers):
    return P.multi_plan([(t, k, P.encode(v, allow_pickle=False)) for t, k, v in answers])


def _same(got, want):
    assert [(t, k) for t, k, _ in got] == [(t, k) for t, k, _ in want]
    for (_, _, a), (_, _, b) in zip(got, want, strict=True):
        if isinstance(b, np.ndarray):
            assert isinstance(a, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)
            assert not a.flags.writeable  # as every decoded array
        else:
            assert a == b


def _take_copy(ring):
    got = ring.take_copy(max_copy=1 << 20, release=True)
    if not isinstance(got, tuple):  # no C extension: the copy the C take would have made
        data = got.buffer.to_pybytes()
        got.release()
        return CopiedRecord(got.kind, got.tag, data)
    return CopiedRecord(got[0], got[1], got[2])


@pytest.mark.parametrize("how", ["put", "general"])
@pytest.mark.parametrize("read", ["copy", "record"])
def test_multi_round_trip(ring, bell, how, read):
    answers = C_ANSWERS if how == "put" else ANSWERS
    plan = _plan(answers)
    if how == "put":
        if ring_module._fast is None:
            pytest.skip("no C ring extension: the general writers are the only path")
        assert fastpath.send(ring, bell, P.MULTI, 0, plan, None, P.INLINE_LIMIT)
    else:
        P.send(ring, bell, P.MULTI, 0, plan, timeout=0.0, alive=None, handoffs=None)
    rec = _take_copy(ring) if read == "copy" else ring.take()
    got = P.open_multi(rec, allow_pickle=False)
    _same(got, answers)
    assert ring.take() is None  # given back: the ring is empty again


def test_multi_bytes_are_the_same_by_both_writers(ring, bell):
    plan = _plan(C_ANSWERS)
    if ring_module._fast is None:
        pytest.skip("no C ring extension")
    assert fastpath.send(ring, bell, P.MULTI, 0, plan, None, P.INLINE_LIMIT)
    rec = ring.take()
    assert rec.buffer.to_pybytes() == plan.to_bytes()
    rec.release()


def test_each_answer_is_the_message_it_would_be_alone():
    """A reader (the C client to come, say) decodes each entry as a single answer."""
    raw = _plan(ANSWERS).to_bytes()
    (n,) = P.MULTI_HEAD.unpack_from(raw, 0)
    assert n == len(ANSWERS)
    for i, (tag, kind, value) in enumerate(ANSWERS):
        etag, ekind, off, length = P.MULTI_ENTRY.unpack_from(
            raw, P.MULTI_HEAD.size + i * P.MULTI_ENTRY.size)
        assert (etag, ekind) == (tag, kind)
        assert off % 64 == 0
        assert raw[off:off + length] == P.encode(value, allow_pickle=False).to_bytes()


def _corrupt(raw: bytes, what: str) -> bytes:
    b = bytearray(raw)
    entry = P.MULTI_HEAD.size
    if what == "count":
        struct.pack_into("<I", b, 0, 10_000)
    elif what == "zero":
        struct.pack_into("<I", b, 0, 0)
    elif what == "offset":
        struct.pack_into("<Q", b, entry + 16, len(raw) + 64)
    elif what == "length":
        struct.pack_into("<Q", b, entry + 24, len(raw))
    elif what == "into-table":
        struct.pack_into("<Q", b, entry + 16, 0)
    elif what == "short":
        return bytes(b[:4])
    return bytes(b)


@pytest.mark.parametrize("what", ["count", "zero", "offset", "length", "into-table", "short"])
def test_a_corrupt_multi_record_fails_alone_and_is_given_back(ring, what):
    raw = _corrupt(_plan(ANSWERS[:3]).to_bytes(), what)
    res = ring.reserve(len(raw), kind=P.MULTI, tag=0, timeout=0.0)
    res.buf[:len(raw)] = raw
    res.commit()
    rec = ring.take()
    with pytest.raises(CorruptRecord):
        P.open_multi(rec, allow_pickle=False)
    assert ring.take() is None
    with pytest.raises(CorruptRecord):  # the same bytes as a private copy
        P.open_multi(CopiedRecord(P.MULTI, 0, raw), allow_pickle=False)


def test_a_big_multi_record_is_refused():
    raw = _plan(ANSWERS[:2]).to_bytes()
    with pytest.raises(CorruptRecord, match="never BIG"):
        P.open_multi(CopiedRecord(P.MULTI | P.BIG, 0, raw), allow_pickle=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 70_000), min_size=1, max_size=80),
       st.sampled_from([4096, P.INLINE_LIMIT]))
def test_multi_groups_fit_and_keep_order(sizes, limit):
    groups = P.multi_groups(sizes, limit)
    assert [i for a, b in groups for i in range(a, b)] == list(range(len(sizes)))
    for a, b in groups:
        assert b > a
        if b - a > 1:  # a group of several fits; one too large travels alone
            plans = [(i, P.OK, codec.Encoded(n, b"", [])) for i, n in enumerate(sizes[a:b])]
            assert P.multi_plan(plans).nbytes <= limit
        if b < len(sizes):  # greedy: the next answer might not have fitted
            worst = P.MULTI_HEAD.size + sum(P.MULTI_ENTRY.size + 63 + n for n in sizes[a:b + 1])
            assert worst > limit


def test_many_bodies_of_a_private_copy_are_its_own_bytes(ring, bell):
    """A MANY record taken as a private copy gives each call its own bytes (the decoder's
    arrays view them), with the same arguments the record itself gives."""
    calls = [P.Outgoing(P.make_tag(1, 2, i), 0,
                        P.encode(((np.full((1, 16), i, np.float32),), {}), allow_pickle=False),
                        1e12) for i in range(5)]
    for _ in range(2):
        P.send_many(ring, bell, P.make_tag(1, 2, 99), 2, calls, timeout=0.0, alive=None)
    copied = P.read_calls(_take_copy(ring), None, 1)
    rec = ring.take()
    direct = P.read_calls(rec, None, 1)
    for a, b, i in zip(copied, direct, range(5), strict=True):
        assert type(a.body) is bytes
        assert (a.tag, a.method, a.deadline) == (b.tag, b.method, b.deadline) == (
            calls[i].tag, 0, 1e12)
        (x,), _ = P.decode_arguments(a.body, copy=True, allow_pickle=False)
        (y,), _ = P.decode_arguments(b.body, copy=True, allow_pickle=False)
        np.testing.assert_array_equal(x, np.full((1, 16), i, np.float32))
        np.testing.assert_array_equal(x, y)
    del direct
    rec.release()


def test_a_whole_batch_is_one_c_put(ring, bell):
    """A MULTI record of 40 answers and a MANY record of 40 calls (three pieces each: over the
    16 a put keeps on its stack) are each written by one C put, byte for byte what the
    general writers write."""
    if ring_module._fast is None:
        pytest.skip("no C ring extension")
    answers = [(P.make_tag(2, 5, i), P.OK, np.full((1, 16), i, np.float32)) for i in range(40)]
    plan = _plan(answers)
    assert fastpath.send(ring, bell, P.MULTI, 0, plan, None, P.INLINE_LIMIT)
    rec = ring.take()
    assert rec.buffer.to_pybytes() == plan.to_bytes()
    _same(P.open_multi(rec, allow_pickle=False), answers)

    calls = [P.Outgoing(P.make_tag(2, 5, 100 + i), 0,
                        P.encode(((np.full((1, 16), i, np.float32),), {}), allow_pickle=False),
                        1e12) for i in range(40)]
    many = P.many_plan(calls, 5)
    assert fastpath.send(ring, bell, P.CALL | P.MANY, P.make_tag(2, 5, 99), many, None,
                         ring.max_record)
    rec = ring.take()
    assert rec.buffer.to_pybytes()[P.PREFIX_SIZE:] == many.to_bytes()[P.PREFIX_SIZE:]
    got = P.read_calls(rec, None, 1)
    assert [c.tag for c in got] == [c.tag for c in calls]
    for i, c in enumerate(got):
        (x,), _ = P.decode_arguments(c.body, copy=True, allow_pickle=False)
        np.testing.assert_array_equal(x, np.full((1, 16), i, np.float32))
    del got, c
    rec.release()

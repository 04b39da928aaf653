"""ipc.handoff: large messages in pooled segments, reused only once the receiver let go."""

from __future__ import annotations

import gc
import multiprocessing as mp
import os

import numpy as np
import pytest

from ipc import codec
from ipc.errors import CorruptRecord
from ipc.handoff import REF, HandoffPool, HandoffReader


def _send(pool: HandoffPool, value) -> bytes:
    plan = codec.encode(value)
    ref, view = pool.acquire(plan.nbytes)
    plan.write_into(view)
    return ref


def test_round_trip_is_zero_copy_and_read_only():
    pool, reader = HandoffPool(), HandoffReader()
    try:
        x = np.arange(1 << 18, dtype=np.float64)
        buf = reader.open(_send(pool, x))
        y = codec.decode(buf)
        np.testing.assert_array_equal(x, y)
        assert not y.flags.writeable
        lo, hi = buf.address, buf.address + buf.size
        assert lo <= y.__array_interface__["data"][0] < hi  # a view of the segment
    finally:
        reader.close()
        pool.close()


def test_segment_is_reused_only_after_the_last_view_dies():
    pool, reader = HandoffPool(), HandoffReader()
    try:
        ref1 = _send(pool, np.full(1 << 18, 1.0))
        first = codec.decode(reader.open(ref1))
        ref2 = _send(pool, np.full(1 << 18, 2.0))
        assert ref1[REF.size :] != ref2[REF.size :]  # the first is still in use
        assert float(first[0]) == 1.0 and float(first[-1]) == 1.0  # and was not overwritten
        del first
        gc.collect()
        second = codec.decode(reader.open(ref2))
        del second
        gc.collect()
        ref3 = _send(pool, np.full(1 << 18, 3.0))
        assert ref3[REF.size :] in (ref1[REF.size :], ref2[REF.size :])  # warm segment reused
        np.testing.assert_array_equal(codec.decode(reader.open(ref3)), np.full(1 << 18, 3.0))
    finally:
        reader.close()
        pool.close()


def test_cancelled_handoff_is_reusable():
    pool = HandoffPool()
    try:
        ref = _send(pool, np.zeros(1 << 16))
        pool.cancel(ref)
        assert _send(pool, np.zeros(1 << 16))[REF.size :] == ref[REF.size :]
    finally:
        pool.close()


def test_pool_stays_bounded_when_receivers_hold_everything():
    pool, reader = HandoffPool(keep=2), HandoffReader(keep=2)
    held = []
    try:
        for i in range(10):
            held.append(codec.decode(reader.open(_send(pool, np.full(1 << 16, float(i))))))
        mine = [n for n in os.listdir("/dev/shm") if n.startswith(f"rl.{os.getpid()}.")]
        assert len([n for n in mine if n.endswith(".hand")]) <= 2 * 2 + 1
        for i, arr in enumerate(held):  # every held message kept its own bytes
            assert float(arr[0]) == float(i)
    finally:
        held.clear()
        reader.close()
        pool.close()


@pytest.mark.parametrize("ref", [b"", b"\x01", REF.pack(10) + b"/rl.1.zz", REF.pack(1 << 40)])
def test_bad_references_are_clean_errors(ref):
    reader = HandoffReader()
    try:
        with pytest.raises(CorruptRecord):
            reader.open(ref)
    finally:
        reader.close()


def test_size_beyond_the_segment_is_rejected():
    pool, reader = HandoffPool(), HandoffReader()
    try:
        ref = _send(pool, np.zeros(1024))
        forged = REF.pack(1 << 40) + ref[REF.size :]
        with pytest.raises(CorruptRecord, match="exceeds"):
            reader.open(forged)
    finally:
        reader.close()
        pool.close()


def _receive(ref: bytes, out) -> None:
    reader = HandoffReader()
    arr = codec.decode(reader.open(ref))
    out.put(float(arr.sum()))
    del arr
    reader.close()


def test_another_process_reads_and_frees_it():
    pool = HandoffPool()
    try:
        x = np.ones(1 << 20)
        ref = _send(pool, x)
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        p = ctx.Process(target=_receive, args=(ref, out))
        p.start()
        assert out.get(timeout=60) == float(x.sum())
        p.join(30)
        assert _send(pool, x)[REF.size :] == ref[REF.size :]  # freed by the other process
    finally:
        pool.close()


def _lend_back(pool: HandoffPool, worker: HandoffReader, x) -> tuple[bytes, object]:
    """A call ((x,), {}) by handoff, its receiver answering with the argument as it came:
    the answer written around it in the same segment and lent back (ipc.codec.echo)."""
    from ipc.codec import echo

    body, lease = worker.open_lease(_send(pool, ((x,), {})))
    (arg,), _kwargs = codec.decode(body)
    n = echo.write_around(codec.encode(arg), lease.message())
    assert n is not None
    return lease.hand_back(n), arg


@pytest.mark.parametrize("sender_first", [True, False])
def test_an_answer_lent_back_is_read_in_place_and_frees_when_both_let_go(sender_first):
    pool = HandoffPool()
    worker, caller = HandoffReader(), HandoffReader(own=pool)
    try:
        x = np.arange(1 << 16, dtype=np.float32).reshape(4, -1)
        ref, arg = _lend_back(pool, worker, x)
        answer = codec.decode(caller.open(ref))
        np.testing.assert_array_equal(answer, x)
        assert not answer.flags.writeable
        at = answer.__array_interface__["data"][0]  # in the caller's own mapping of it
        assert any(seg.address <= at < seg.address + seg.size for seg in pool._segments)
        held = [answer, arg] if sender_first else [arg, answer]
        del answer, arg
        name = ref[REF.size:]
        for _ in range(2):  # either side still holds it: the segment is not reused
            assert _send(pool, np.ones(1 << 16, dtype=np.float32))[REF.size:] != name
            del held[0]
            gc.collect()
        assert _send(pool, np.ones(1 << 16, dtype=np.float32))[REF.size:] == name  # reused
    finally:
        worker.close()
        caller.close()
        pool.close()


def test_only_an_argument_as_it_came_is_written_around():
    from ipc.codec import echo

    pool, worker = HandoffPool(), HandoffReader()
    try:
        x = np.arange(1 << 16, dtype=np.float32).reshape(4, -1)
        body, lease = worker.open_lease(_send(pool, ((x,), {})))
        (arg,), _ = codec.decode(body)
        message = lease.message()
        for other in (arg[1:], arg[:, ::2], np.asfortranarray(arg), arg.copy(),
                      arg.reshape(-1)):  # a view, strided, F order, a copy, a new shape
            assert echo.write_around(codec.encode(other), message) is None
        np.testing.assert_array_equal(arg, x)  # nothing written
        n = echo.write_around(codec.encode((arg, 1)), message)  # one tensor in any value
        assert n is not None
        y, one = codec.decode(message[:n])
        np.testing.assert_array_equal(y, x)
        assert one == 1
        np.testing.assert_array_equal(arg, x)  # only the head was written
        assert echo.write_around(codec.encode((arg, arg)), message) is None  # two buffers
        del arg, y, body, lease
    finally:
        worker.close()
        pool.close()


def test_an_answer_not_lent_back_is_refused():
    pool = HandoffPool()
    caller = HandoffReader(own=pool)
    try:
        ref = _send(pool, np.ones(1 << 16, dtype=np.float32))  # ours, never lent back
        with pytest.raises(CorruptRecord, match="not lent back"):
            caller.open(ref)
    finally:
        caller.close()
        pool.close()


def test_an_answer_lent_back_is_found_after_the_pool_took_its_segment_out_of_use():
    """The sender's pool takes segments its receivers hold out of use past its bound (the
    trim, when it must make a new one); an answer lent back in one of them before that is
    still read, from the mapping the pool keeps until nobody holds the segment."""
    pool = HandoffPool(keep=2)
    worker, caller = HandoffReader(keep=16), HandoffReader(own=pool)
    try:
        x = np.arange(1 << 16, dtype=np.float32)
        ref, arg = _lend_back(pool, worker, x)  # its answer not read yet
        del arg
        gc.collect()
        held = [codec.decode(worker.open(_send(pool, np.full(1 << 16, float(i),
                                                             dtype=np.float32))))
                for i in range(2 * pool.keep + 1)]  # receivers hold these: all in use
        _send(pool, np.ones(1 << 16, dtype=np.float32))  # a new segment: the trim runs
        assert all(seg.name != ref[REF.size:].decode() for seg in pool._segments)
        np.testing.assert_array_equal(codec.decode(caller.open(ref)), x)
        del held
        gc.collect()
    finally:
        worker.close()
        caller.close()
        pool.close()

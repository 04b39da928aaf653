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

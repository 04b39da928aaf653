"""Segments: naming, mode, attach validation, safe close, stale cleanup."""

from __future__ import annotations

import multiprocessing as mp
import os
import stat

import ipc_test_workers as workers
import numpy as np
import pyarrow as pa
import pytest

from ipc.errors import SegmentError
from ipc.segment import Segment, cleanup_stale, list_segments, owner_pid

CTX = mp.get_context("spawn")


@pytest.fixture
def seg():
    s = Segment.create(64 * 1024, tag="t")
    yield s
    s.close()
    s.unlink()


def test_create_names_mode_and_attach(seg):
    base = seg.name[1:]
    pid, token, tag = base.split(".")[1:]
    assert base.startswith("rl.") and int(pid) == os.getpid() and tag == "t"
    assert len(token) == 16 and int(token, 16) >= 0
    st = os.stat("/dev/shm/" + base)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert owner_pid(seg.name) == os.getpid()
    assert seg.name in list_segments()
    assert seg.size == 64 * 1024 and seg.address > 0
    other = Segment.attach(seg.name)
    try:
        other.buf[100:105] = b"hello"
        assert bytes(seg.buf[100:105]) == b"hello"
    finally:
        other.close()


def test_unique_names_and_prefault_variants():
    segs = [Segment.create(10_000, prefault=p) for p in (None, 0, 5000)]
    try:
        assert len({s.name for s in segs}) == 3
        for s in segs:
            s.buf[-1] = 1
    finally:
        for s in segs:
            s.close()
            s.unlink()


@pytest.mark.parametrize(
    "name",
    [
        "rl.1.0123456789abcdef",  # no slash
        "/rl.x.0123456789abcdef",
        "/rl.1.0123456789ABCDEF",
        "/rl.1.0123",
        "/other",
        "/rl.1.0123456789abcdef.bad/tag",
        "/rl.1.0123456789abcdef.bell",
        "/rl.1.0123456789abcdef/../../etc",
    ],
)
def test_attach_rejects_foreign_names(name):
    with pytest.raises(SegmentError):
        Segment.attach(name)


def test_attach_missing_segment():
    with pytest.raises(SegmentError):
        Segment.attach(f"/rl.{os.getpid()}.0123456789abcdef")


def test_bad_tag_and_size():
    with pytest.raises(ValueError):
        Segment.create(4096, tag="a/b")
    with pytest.raises(ValueError):
        Segment.create(4096, tag="bell")
    with pytest.raises(ValueError):
        Segment.create(0)


def test_close_with_live_views_does_not_segfault():
    s = Segment.create(1 << 20)
    try:
        s.buf[0:4] = b"abcd"
        arr = np.frombuffer(s.buf, dtype=np.uint8)  # an export of the segment's own view
        view = s.buf[0:4]
        token = s.buf[0:16]
        fb = pa.foreign_buffer(s.address, 4, base=token)
        del token
    finally:
        s.close()
        s.unlink()
    # the mapping stays alive while views do
    assert bytes(view) == b"abcd"
    assert arr[:4].tobytes() == b"abcd"
    assert fb.to_pybytes() == b"abcd"
    with pytest.raises(SegmentError):
        _ = s.buf
    s.close()  # idempotent
    s.unlink()


def test_cleanup_stale_removes_dead_owner_only():
    mine = Segment.create(4096, tag="mine")
    try:
        parent, child = CTX.Pipe()
        p = CTX.Process(target=workers.leave_segments, args=(child,))
        p.start()
        seg_name, bell_path = parent.recv()
        p.join(30)
        assert p.exitcode == 0
        assert os.path.exists("/dev/shm" + seg_name) and os.path.exists(bell_path)
        assert owner_pid(seg_name) == p.pid and owner_pid(os.path.basename(bell_path)) == p.pid
        removed = cleanup_stale()
        assert seg_name in removed
        assert os.path.basename(bell_path) in removed
        assert not os.path.exists("/dev/shm" + seg_name) and not os.path.exists(bell_path)
        assert os.path.exists("/dev/shm" + mine.name)
        assert mine.name not in removed
    finally:
        mine.close()
        mine.unlink()

"""The ring's two implementations as a pair: one layout description (ipc.ring_layout) that the
C extension is checked against at import, the named results of the C paths, the documented
tables, and the explicitly ordered Python paths that machines other than x86-64 run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from ipc import atomics, ring_layout
from ipc import ring as ring_module
from ipc.ring import Ring
from ipc.ring_layout import Outcome, State

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "wire-format-ring.md"

try:
    from ipc import _fastring
except ImportError:  # pragma: no cover - no compiler where it was installed
    _fastring = None

needs_c = pytest.mark.skipif(_fastring is None, reason="the C extension is not built")


# Loads ipc submodules without running ipc/__init__.py (which imports ipc.ring), so that a test
# can change them before ipc.ring is first imported.
PRELOAD = """
import importlib.util, sys
def preload(name):
    spec = importlib.util.spec_from_file_location("ipc." + name, f"ipc/{name}.py")
    module = sys.modules["ipc." + name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
"""


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (the import-time checks run again there)."""
    environ = {k: v for k, v in os.environ.items() if k != "RUNNERLIB_PURE_PYTHON"}
    environ.update(env)
    environ["PYTHONPATH"] = str(ROOT) + os.pathsep + environ.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-c", PRELOAD + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env=environ,
        cwd=ROOT,
    )


# -- the description and the extension -----------------------------------------------------------


@needs_c
def test_the_built_extension_matches_the_description():
    assert ring_layout.mismatches(_fastring) == []
    assert _fastring.layout() == ring_layout.description()
    if os.environ.get("RUNNERLIB_PURE_PYTHON", "") in ("", "0"):
        assert ring_module._fast is _fastring


def test_ring_takes_its_constants_from_the_description():
    for name in ("HEADER_SIZE", "RECORD_HEADER_SIZE", "ALIGN", "USER_OFFSET", "USER_SIZE"):
        assert getattr(ring_module, name) == getattr(ring_layout, name)
    assert ring_module._H_HEAD * 8 == ring_layout.OFF_HEAD
    assert ring_module._H_LOCK * 8 == ring_layout.OFF_LOCK
    assert ring_module._R_TAKER * 8 == ring_layout.REC_TAKER
    assert [int(s) for s in State] == list(range(6))
    # every shared counter of the ring header on its own 64-byte line, inside the header
    offsets = [ring_layout.OFF_LOCK, ring_layout.OFF_HEAD, ring_layout.OFF_READ]
    offsets.append(ring_layout.OFF_FREE)
    assert len({o // 64 for o in offsets}) == 4 and ring_layout.OFF_FREE < ring_layout.USER_OFFSET


class FakeExtension(SimpleNamespace):
    """An extension module as mismatches() sees it; by default a faithful one."""

    def __init__(self, **changes: object) -> None:
        layout = ring_layout.description()
        fields = {
            "AllocResult": SimpleNamespace(__match_args__=ring_layout.AllocResult._fields),
            "TakeResult": SimpleNamespace(__match_args__=ring_layout.TakeResult._fields),
        }
        funcs = {name: (lambda *a: None) for name in ring_layout.FUNCTIONS}
        funcs["layout"] = lambda: dict(layout)
        super().__init__(**{**funcs, **fields, **changes})


def test_mismatches_names_each_difference():
    assert ring_layout.mismatches(FakeExtension()) == []

    moved = {**ring_layout.description(), "off_head": 136, "state_taken": 7}
    problems = ring_layout.mismatches(FakeExtension(layout=lambda: moved))
    assert problems == [
        f"off_head: C has 136, Python {ring_layout.OFF_HEAD}",
        "state_taken: C has 7, Python 3",
    ]

    extra = {**ring_layout.description(), "new_field": 1}
    del extra["scan_limit"]
    problems = ring_layout.mismatches(FakeExtension(layout=lambda: extra))
    assert problems == [
        "new_field: C has 1, Python nothing",
        "scan_limit: C has nothing, Python 256",
    ]

    older = {**ring_layout.description(), "api_version": 1}
    assert ring_layout.mismatches(FakeExtension(layout=lambda: older)) == [
        f"api_version: C has 1, Python {ring_layout.API_VERSION}"
    ]


def test_mismatches_of_result_types_and_functions():
    renamed = FakeExtension(TakeResult=SimpleNamespace(__match_args__=("outcome", "pos")))
    (problem,) = ring_layout.mismatches(renamed)
    assert problem.startswith("TakeResult fields: C has ('outcome', 'pos'), Python (")

    stale = FakeExtension(finish=None, release=None)  # an extension built before they existed
    assert ring_layout.mismatches(stale) == [
        "missing functions finish, release (built from older sources?)"
    ]
    assert ring_layout.mismatches(SimpleNamespace()) != []  # not an extension at all


@needs_c
def test_a_mismatch_disables_the_c_paths_with_a_warning():
    """The Python description says `head` lives at byte 136: the extension (compiled for 128)
    is left unused, the import warns, and the Python paths run the described layout."""
    proc = run_python(
        """
        import struct, warnings
        ring_layout = preload("ring_layout")
        ring_layout.OFF_HEAD = 136
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from ipc import ring
        from ipc.errors import FastPathDisabled
        assert ring._fast is None, ring._fast
        (w,) = [w for w in caught if issubclass(w.category, FastPathDisabled)]
        text = str(w.message)
        assert "off_head: C has 128, Python 136" in text, text
        assert "build_ext --inplace" in text, text
        r = ring.Ring.create(8192)
        try:
            res = r.reserve(5, tag=9)
            res.buf[:] = b"hello"
            res.commit()
            # the Python paths follow the description: head is the word at byte 136
            assert struct.unpack_from("<Q", r.segment.buf, 136)[0] == 128
            assert struct.unpack_from("<Q", r.segment.buf, 128)[0] == 0
            rec = r.take()
            assert rec.tag == 9 and rec.buffer.to_pybytes() == b"hello"
            rec.release()
        finally:
            r.close()
            r.unlink()
        print("ok")
        """
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


@needs_c
def test_an_outcome_renumbered_in_python_is_a_mismatch_too():
    proc = run_python(
        """
        import warnings
        ring_layout = preload("ring_layout")
        ring_layout.Outcome = ring_layout.IntEnum(
            "Outcome", {"OK": 0, "FULL": 1, "EMPTY": 3, "BLOCKED": 2, "SLOW": 4}
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from ipc import ring
        assert ring._fast is None
        text = " ".join(str(w.message) for w in caught)
        assert "outcome_empty: C has 2, Python 3" in text, text
        assert "outcome_blocked: C has 3, Python 2" in text, text
        print("ok")
        """
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_a_matching_import_is_silent():
    proc = run_python(
        "import ipc.ring, ipc.handoff, ipc.doorbell; print(ipc.ring._fast is not None)",
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.strip() == str(_fastring is not None)
    proc = run_python("import ipc.ring; print(ipc.ring._fast)", RUNNERLIB_PURE_PYTHON="1")
    assert proc.returncode == 0 and proc.stdout.strip() == "None", proc.stderr


# -- the named results of the C paths --------------------------------------------------------------


@pytest.fixture
def ring():
    r = Ring.create(8192)
    yield r
    r.close()
    r.unlink()


def _me() -> int:
    return os.getpid() | threading.get_native_id() << 32


@needs_c
def test_alloc_results(ring):
    f = _fastring
    args = (ring._base, ring.capacity)
    got = f.alloc(*args, 128, 64, 1, 2, os.getpid(), _me(), ring._early_wrap)
    assert isinstance(got, f.AllocResult)
    assert (got.outcome, got.pos) == (Outcome.OK, 0)
    assert repr(got) == "AllocResult(outcome=0, pos=0)"
    big = ring.max_record + 64  # a span of half the ring
    got = f.alloc(*args, big, big - 64, 1, 2, os.getpid(), _me(), ring._early_wrap)
    assert (got.outcome, got.pos) == (Outcome.OK, 128)
    full = f.alloc(*args, big, big - 64, 1, 2, os.getpid(), _me(), ring._early_wrap)
    assert (full.outcome, full.pos) == (Outcome.FULL, 0)
    # a lock held by somebody else: C gives up at once, changing nothing
    q = ring._q
    q[ring_module._H_LOCK] = 12345
    try:
        busy = f.alloc(*args, 128, 64, 1, 2, os.getpid(), _me(), ring._early_wrap)
        assert busy.outcome == Outcome.SLOW
    finally:
        q[ring_module._H_LOCK] = 0
    assert ring.stats()["head"] == 128 + big


@needs_c
def test_take_results(ring):
    f = _fastring
    args = (ring._base, ring.capacity)
    empty = f.take(*args, 7, _me())
    assert isinstance(empty, f.TakeResult)
    assert (empty.outcome, empty.pos, empty.producer_pid) == (Outcome.EMPTY, 0, 0)

    held = ring.reserve(10, kind=3, tag=4)  # unfinished: blocks what comes after it
    ring.reserve(20, kind=5, tag=6).abort()
    blocked = f.take(*args, 7, _me())
    # the producer field: pid | owner id << 32 (ipc.ring, "who this process is")
    assert (blocked.outcome, blocked.producer_pid & 0xFFFF_FFFF) == (Outcome.BLOCKED, os.getpid())
    assert blocked.producer_pid >> 32 == ring_module._OWNER_ID != 0
    held.commit()
    got = f.take(*args, 7, _me())
    assert got.outcome == Outcome.OK
    assert (got.pos, got.kind, got.tag, got.nbytes) == (0, 3, 4, 10)
    assert "TakeResult(outcome=0, pos=0, kind=3, tag=4, nbytes=10" in repr(got)
    # the C take marked it TAKEN for taker 7: release it through the C path
    state_at = (ring_layout.HEADER_SIZE + ring_layout.REC_STATE) // 8
    assert ring._q[state_at] == State.TAKEN
    f.release(ring._base + ring_layout.HEADER_SIZE, 0)
    assert ring._q[state_at] == State.RELEASED
    assert f.take(*args, 7, _me()).outcome == Outcome.EMPTY

    q = ring._q
    q[ring_module._H_HEAD] = 3  # misaligned cursors: the Python path resynchronises
    assert f.take(*args, 7, _me()).outcome == Outcome.SLOW


@needs_c
def test_finish_refuses_other_states_and_stale_positions(ring):
    res = ring.reserve(10)
    with pytest.raises(ValueError, match="COMMITTED or RELEASED"):
        _fastring.finish(res._addr, res._pos, State.TAKEN)
    _fastring.finish(res._addr, res._pos + 64, State.COMMITTED)  # not this record: no store
    assert ring._q[res._idx] == State.RESERVED
    res.commit()
    assert ring._q[res._idx] == State.COMMITTED


@needs_c
def test_a_reservation_of_a_dead_producer_blocks_c_then_python_reclaims_it(ring):
    """BLOCKED names the producer; a dead one sends take() down the Python path."""
    ring.reserve(10, tag=1)  # dropped: aborted
    res = ring.reserve(10, tag=2)
    ring._q[res._idx + ring_module._R_PID] = 0x7FFFFFFE  # no such process
    blocked = _fastring.take(ring._base, ring.capacity, 0, _me())
    assert (blocked.outcome, blocked.producer_pid) == (Outcome.BLOCKED, 0x7FFFFFFE)
    assert ring.take() is None
    assert ring._q[res._idx] == State.RELEASED  # reclaimed by the Python path
    assert ring.stats()["read"] == ring.stats()["head"]
    res.abort()
    ring.reserve(ring.max_record, timeout=0).abort()  # all the space came back


# -- the documentation ---------------------------------------------------------------------------


def _table(section: str) -> list[list[str]]:
    text = DOC.read_text()
    start = text.index(section)
    end = text.find("\n#", start + len(section))
    rows = []
    for line in text[start : end if end >= 0 else None].splitlines():
        if line.startswith("|") and not line.startswith("| ---"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows[1:]  # without the heading row


def test_the_documented_ring_header_is_the_description():
    fields = {}
    for offset, field, *_meaning in _table("## Ring header"):
        name = field.strip("`")
        if re.fullmatch(r"\d+", offset) and re.fullmatch(r"[a-z_]+", name):
            fields[name] = int(offset)
    assert fields == {
        "magic": ring_layout.OFF_MAGIC,
        "version": ring_layout.OFF_VERSION,
        "header_size": ring_layout.OFF_HEADER_SIZE,
        "capacity": ring_layout.OFF_CAPACITY,
        "max_record": ring_layout.OFF_MAX_RECORD,
        "creator_pid": ring_layout.OFF_CREATOR_PID,
        "lock": ring_layout.OFF_LOCK,
        "head": ring_layout.OFF_HEAD,
        "read": ring_layout.OFF_READ,
        "free": ring_layout.OFF_FREE,
    }
    text = DOC.read_text()
    assert f"`{ring_layout.MAGIC:#018x}`" in text and '"RLRING01"' in text
    assert f"| {ring_layout.USER_OFFSET}–{ring_layout.HEADER_SIZE - 1} | user area |" in text


def test_the_documented_record_header_and_states_are_the_description():
    fields = {row[1].strip("`"): int(row[0]) for row in _table("## Record header")}
    assert fields == {
        "state": ring_layout.REC_STATE,
        "pos": ring_layout.REC_POS,
        "span": ring_layout.REC_SPAN,
        "nbytes": ring_layout.REC_NBYTES,
        "kind": ring_layout.REC_KIND,
        "tag": ring_layout.REC_TAG,
        "producer_pid": ring_layout.REC_PRODUCER_PID,
        "taker": ring_layout.REC_TAKER,
    }
    states = {row[1].strip("`"): int(row[0]) for row in _table("### States")}
    assert states == {s.name: int(s) for s in State}
    outcomes = {}
    for row in _table("## The two implementations in one process"):
        value, name = row[0].split()
        outcomes[name.strip("`")] = int(value)
    assert outcomes == {o.name: int(o) for o in Outcome}


# -- memory ordering -----------------------------------------------------------------------------


def test_ordering_is_plain_on_x86_64_and_explicit_elsewhere():
    assert atomics.ordering_problem("x86_64", 64, True) is None
    assert atomics.ordering_problem("aarch64", 64, True) is None  # libatomic orders it
    for machine, bits, lock_free in (("armv7l", 32, False), ("i686", 32, True), ("odd", 64, False)):
        problem = atomics.ordering_problem(machine, bits, lock_free)
        assert problem is not None and "lock-free 64-bit atomics" in problem and machine in problem
    import platform

    if platform.machine() == "x86_64":
        assert atomics.PLAIN_ACCESS_ORDERED and not ring_module._ORDERED
    assert atomics.LOCK_FREE_64


def test_ordered_helpers_on_shared_memory():
    from ipc.segment import Segment

    seg = Segment.create(4096, tag="atom")
    try:
        addr = seg.address + 64
        atomics.store_release(addr, 2**64 - 1)
        assert atomics.load_acquire(addr) == 2**64 - 1
        atomics.store_release(addr, -1 & 0xFF)
        assert seg.buf[64] == 0xFF and atomics.load_acquire(addr) == 0xFF
        atomics.fence_acquire()
        atomics.fence_release()
    finally:
        seg.close()
        seg.unlink()


def test_the_explicitly_ordered_python_paths():
    """What aarch64 runs, on this machine: ipc.atomics reports plain accesses as unordered
    before ipc.ring and ipc.handoff are imported, so every publishing store of the Python paths
    goes through store_release and every observing load through an acquire; the same random
    operations then leave the same bytes as the C paths (or the plain Python paths)."""
    proc = run_python(
        """
        import collections, gc, random
        preload("errors")
        atomics = preload("atomics")
        atomics.PLAIN_ACCESS_ORDERED = False
        calls = collections.Counter()
        def counted(name):
            inner = getattr(atomics, name)
            def f(*a):
                calls[name] += 1
                return inner(*a)
            return f
        for name in ("store_release", "load_acquire", "fence_acquire"):
            setattr(atomics, name, counted(name))
        from ipc import handoff, ring
        assert ring._ORDERED and handoff._ORDERED
        fast = ring._fast

        def run(impl):
            ring._fast = impl
            r = ring.Ring.create(16384)
            rng = random.Random(7)
            live, states = [], []
            try:
                for i in range(1500):
                    try:
                        res = r.reserve(rng.choice([0, 16, 100, 1500, 5000]), tag=i, timeout=0)
                    except ring.RingFull:
                        if live:
                            live.pop(rng.randrange(len(live))).release()
                        else:
                            live.append(r.take(taker=3))
                        continue
                    res.buf[:] = random.Random(i).randbytes(len(res.buf))
                    res.abort() if rng.random() < 0.1 else res.commit()
                    if rng.random() < 0.8 and (rec := r.take(taker=3)) is not None:
                        data = random.Random(rec.tag).randbytes(rec.nbytes)
                        assert rec.buffer.to_pybytes() == data
                        live.append(rec)
                    while live and rng.random() < 0.5:
                        live.pop(rng.randrange(len(live))).release()
                    states.append((tuple(r.stats().values()), r.has_pending()))
                states.append(bytes(r.segment.buf))
            finally:
                live.clear()
                gc.collect()
                r.close()
                r.unlink()
            return states

        ordered = run(None)
        assert calls["store_release"] > 3000 and calls["fence_acquire"] > 500, calls
        if fast is not None:
            assert run(fast) == ordered

        pool, reader = handoff.HandoffPool(), handoff.HandoffReader()
        try:
            for n in (10, 5000, 10):
                ref, view = pool.acquire(n)
                view[:] = b"x" * n
                del view
                buf = reader.open(ref)
                assert buf.to_pybytes() == b"x" * n
                del buf  # FREE, with a release store
                gc.collect()
            assert calls["load_acquire"] >= 2, calls
            assert len(pool._segments) == 1  # the freed segment was reused each time
        finally:
            reader.close()
            pool.close()
        print("ok")
        """
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr

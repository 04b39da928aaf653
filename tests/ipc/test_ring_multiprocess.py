"""3 producer and 2 consumer processes move 100,000 checked records through one ring.

Run twice where the C extension is built: every process with the C hot paths, and a mix in
which one producer and one consumer run the pure-Python ring (RUNNERLIB_PURE_PYTHON=1), so
the two implementations contend for one lock and one set of cursors."""

from __future__ import annotations

import gc
import multiprocessing as mp

import ipc_test_workers as workers
import pytest

from ipc import ring as ring_module
from ipc.doorbell import Doorbell
from ipc.ring import Ring
from ipc.segment import Segment

CTX = mp.get_context("spawn")

PRODUCERS = 3
CONSUMERS = 2
TOTAL = 100_000


def _start(proc, pure: bool, monkeypatch) -> None:
    """Start `proc`, with the pure-Python ring if `pure` (the child reads the environment
    when it imports ipc.ring)."""
    if pure:
        monkeypatch.setenv("RUNNERLIB_PURE_PYTHON", "1")
    try:
        proc.start()
    finally:
        monkeypatch.delenv("RUNNERLIB_PURE_PYTHON", raising=False)


@pytest.mark.parametrize("mix", ["same", "mixed"] if ring_module._fast is not None else ["same"])
def test_many_producers_many_consumers_nothing_lost_or_duplicated(mix, monkeypatch):
    ring = Ring.create(256 * 1024)  # small: many wrap-arounds and some back-pressure
    seg = seg_bell = None
    procs = []
    try:
        seg = Segment.create(4096, tag="bells")
        seg_bell = Doorbell.create(seg, 0)
        per = [TOTAL // PRODUCERS + (1 if i < TOTAL % PRODUCERS else 0) for i in range(PRODUCERS)]
        out_q = CTX.Queue()
        consumers = [
            CTX.Process(target=workers.consumer, args=(ring.name, seg.name, out_q))
            for _ in range(CONSUMERS)
        ]
        producers = [
            CTX.Process(target=workers.producer, args=(ring.name, seg.name, i, per[i]))
            for i in range(PRODUCERS)
        ]
        procs = consumers + producers
        for i, p in enumerate(procs):
            # mixed: the first consumer and the first producer run the pure-Python ring
            _start(p, mix == "mixed" and i in (0, CONSUMERS), monkeypatch)
        for p in producers:
            p.join(120)
            assert p.exitcode == 0, f"producer exit code {p.exitcode}"
        for _ in range(CONSUMERS):
            ring.reserve(0, kind=workers.STOP, timeout=60).commit()
            seg_bell.ring()
        results = [out_q.get(timeout=120) for _ in range(CONSUMERS)]
        for p in consumers:
            p.join(60)
            assert p.exitcode == 0
        ids = [i for got, _ in results for i in got]
        assert sum(bad for _, bad in results) == 0
        assert len(ids) == TOTAL
        expected = {p << 32 | s for p in range(PRODUCERS) for s in range(per[p])}
        assert set(ids) == expected  # nothing lost, and with len == TOTAL nothing duplicated
        assert all(len(got) > 0 for got, _ in results)  # both consumers took part
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(10)
        gc.collect()
        if seg_bell is not None:
            seg_bell.close()
            seg_bell.unlink()
        if seg is not None:
            seg.close()
            seg.unlink()
        ring.close()
        ring.unlink()

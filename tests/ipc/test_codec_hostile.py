"""Decoding while another process writes into the message (SPEC 8, 9: nothing read from shared
memory is trusted, and hostile bytes never crash a process).

Validating bytes that stay in shared memory is not enough: a writer can change them between
the check and the use. pyarrow verifies a flatbuffer and then reads it again, and a string
column's offsets are read long after `validate()`. So Arrow must parse private copies of the
metadata, and only buffers of fixed-width values may stay zero-copy views."""

from __future__ import annotations

import decimal
import multiprocessing as mp
import random
import time

import numpy as np
import pyarrow as pa
import pytest

from ipc.codec import arrow, decode, decoder, encode, tensor
from ipc.errors import CorruptRecord

CTX = mp.get_context("spawn")


def _message(value) -> bytearray:
    plan = encode(value)
    raw = bytearray(plan.nbytes)
    plan.write_into(memoryview(raw))
    return raw


def _values() -> dict:
    return {
        "tensor": np.arange(48, dtype=np.float32).reshape(3, 16),
        "table": pa.table({"i": np.arange(6), "s": ["a", "bb", None, "dddd", "", "ff"],
                           "l": [[1], [], [2, 3], None, [4], [5, 6, 7]]}),
        "flat": pa.table({"i": np.arange(6), "f": np.ones(6), "b": [True, False] * 3}),
        "mixed": {"k": [1, "two", (3.0,)], "t": np.arange(4.0), "r": pa.record_batch(
            {"s": ["x", "y"]})},
    }


def _forget_layouts() -> None:
    for cache in (decoder.fast_decodes, tensor.layouts, arrow.stream_layouts,
                  arrow.frame_bodies):
        cache.clear()


@pytest.fixture(autouse=True)
def _cold_caches():
    """Each test sees the slow (parsing) path, not the layouts learned before."""
    _forget_layouts()
    yield
    _forget_layouts()


@pytest.mark.parametrize("kind", list(_values()))
def test_arrow_parses_only_private_memory(kind, monkeypatch):
    raw = _message(_values()[kind])
    shared = pa.py_buffer(raw)
    seen: list[pa.Buffer] = []
    real = pa.BufferReader

    def spy(buf):
        seen.append(buf)
        return real(buf)

    monkeypatch.setattr(pa, "BufferReader", spy)
    decode(shared)
    assert seen, "pyarrow parsed nothing"
    for b in seen:
        assert not (shared.address <= b.address < shared.address + shared.size), \
            "pyarrow parsed bytes in the shared buffer"


def test_variable_width_table_does_not_view_shared_memory():
    table = _values()["table"]
    raw = _message(table)
    out = decode(pa.py_buffer(raw))
    raw[:] = b"\xff" * len(raw)  # a hostile writer rewrites every offset after validation
    assert out.to_pylist() == table.to_pylist()


def test_fixed_width_table_stays_a_view():
    table = _values()["flat"]
    raw = _message(table)
    shared = pa.py_buffer(raw)
    out = decode(shared)
    assert out.equals(table)
    data = out.column("f").chunk(0).buffers()[1]
    assert shared.address <= data.address < shared.address + shared.size


def test_a_learned_stream_layout_views_each_new_message():
    """The second table of the same shape decodes from the learned layout: it must show its
    own bytes (not the first table's) and view its own buffer."""
    first = pa.table({"i": np.arange(5), "f": np.ones(5)})
    second = pa.table({"i": np.arange(5, 10), "f": np.full(5, 2.0)})
    for make in (lambda t: t, lambda t: t.to_batches()[0],
                 lambda t: pa.concat_tables([t.slice(0, 2), t.slice(2)])):
        assert decode(pa.py_buffer(_message(make(first)))).equals(make(first))
        shared = pa.py_buffer(_message(make(second)))
        out = decode(shared)
        assert out.equals(make(second))
        data = (out.column("i").chunk(0) if isinstance(out, pa.Table) else out.column("i"))
        assert shared.address <= data.buffers()[1].address < shared.address + shared.size


def test_odd_fixed_width_types_round_trip_as_views():
    table = pa.table({
        "dec": pa.array([decimal.Decimal("1.25"), None], pa.decimal128(6, 2)),
        "fsb": pa.array([b"abcd", b"wxyz"], pa.binary(4)),
        "nul": pa.nulls(2),
        "dur": pa.array([1, 2], pa.duration("ms")),
        "h": pa.array(np.array([1.5, -2.0], np.float16)),
    })
    for value in (table, table.to_batches()[0], table.slice(1)):
        shared = pa.py_buffer(_message(value))
        out = decode(shared)
        assert out.equals(value) and type(out) is type(value)
        dec = out.column("dec")
        data = (dec.chunk(0) if isinstance(dec, pa.ChunkedArray) else dec).buffers()[1]
        assert shared.address <= data.address < shared.address + shared.size


def _scribble(name: str, lo: int, hi: int, seconds: float, seed: int) -> None:
    from ipc.segment import Segment

    seg = Segment.attach(name)
    buf = seg.buf
    rng = random.Random(seed)
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        off = rng.randrange(lo, hi)
        n = min(rng.randint(1, 4), hi - off)
        buf[off : off + n] = rng.randbytes(n)
    del buf
    seg.close()


def _decode_while_scribbled(kind: str, seconds: float, out) -> None:
    """In a child process: a crash shows as its exit code, not as a dead test run."""
    from ipc.segment import Segment

    value = _values()[kind]
    good = bytes(_message(value))
    _, _, table = decoder.parse_head(memoryview(good))
    lo = table[0][0]
    hi = min(lo + 512, lo + table[0][1])  # the first Arrow message's metadata and more
    seg = Segment.create(1 << 16)
    try:
        view = seg.buf[: len(good)]
        p = CTX.Process(target=_scribble, args=(seg.name, lo, hi, seconds, 7))
        p.start()
        decodes = failed = 0
        while p.is_alive():
            if decodes % 4 == 0:
                view[:] = good
            if decodes % 2 == 0:  # the parsing path, then the learned-layout path
                _forget_layouts()
            try:
                got = decode(pa.py_buffer(view))
            except CorruptRecord:
                failed += 1
            else:
                if isinstance(got, (pa.Table, pa.RecordBatch)):
                    try:  # reads every value: a crash here is what the test is for
                        got.to_pylist()
                    except Exception:  # noqa: BLE001 - a scribbled value (a date out of
                        pass  # range, say) may fail to convert; only a crash fails the test
            decodes += 1
        p.join()
        del view
        out.put((decodes, failed))
    finally:
        seg.close()
        seg.unlink()


def _race(kind: str, seconds: float) -> None:
    out = CTX.Queue()
    p = CTX.Process(target=_decode_while_scribbled, args=(kind, seconds, out))
    p.start()
    p.join(seconds + 60)
    assert p.exitcode == 0, f"the decoding process died with exit code {p.exitcode}"
    decodes, failed = out.get(timeout=5)
    assert decodes > failed  # some decodes got through between the scribbles


@pytest.mark.parametrize("kind", ["tensor", "table"])
def test_decoding_survives_a_concurrent_scribbler(kind):
    _race(kind, seconds=3)


@pytest.mark.soak
@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", list(_values()))
def test_decoding_survives_a_concurrent_scribbler_soak(kind):
    _race(kind, seconds=30)

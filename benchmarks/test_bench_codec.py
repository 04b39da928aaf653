"""Codec micro-benchmarks (pytest-benchmark). Run:

    python -m pytest benchmarks/test_bench_codec.py -p no:cacheprovider -o addopts=""

Goals (checked here by eye, never asserted): float32[1,16] encode+decode < 10 us; encoding
64 MiB <= 1.3x one numpy.copyto of 64 MiB (exactly one copy); decoding 64 MiB < 20 us.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from ipc.codec import decode, encode

MiB = 1 << 20


def _dest(nbytes: int) -> memoryview:
    """A warm, 64-aligned destination (a ring slot that has been used before)."""
    raw = np.ones(nbytes + 64, np.uint8)
    start = (-raw.ctypes.data) % 64
    return memoryview(raw[start : start + nbytes])


def _roundtrip(value):
    dest = _dest(encode(value).nbytes)
    buf = pa.py_buffer(dest)

    def run():
        encode(value).write_into(dest)
        return decode(buf)

    return run


@pytest.mark.benchmark(group="small")
def test_encode_decode_f32_1x16(benchmark):
    a = np.random.rand(1, 16).astype(np.float32)
    out = benchmark(_roundtrip(a))
    assert np.array_equal(out, a)


@pytest.mark.benchmark(group="small")
def test_call_envelope_f32_1x16(benchmark):
    a = np.random.rand(1, 16).astype(np.float32)
    dest = _dest(encode(((a,), {})).nbytes)
    buf = pa.py_buffer(dest)

    def run():
        encode(((a,), {})).write_into(dest)
        return decode(buf)

    args, kwargs = benchmark(run)
    assert np.array_equal(args[0], a) and kwargs == {}


@pytest.mark.benchmark(group="small")
def test_encode_f32_1x16(benchmark):
    a = np.random.rand(1, 16).astype(np.float32)
    dest = _dest(encode(a).nbytes)
    benchmark(lambda: encode(a).write_into(dest))


@pytest.mark.benchmark(group="small")
def test_decode_f32_1x16(benchmark):
    a = np.random.rand(1, 16).astype(np.float32)
    buf = pa.py_buffer(encode(a).to_bytes())
    benchmark(decode, buf)


@pytest.mark.benchmark(group="image")
def test_encode_decode_f32_1x3x224x224(benchmark):
    a = np.random.rand(1, 3, 224, 224).astype(np.float32)
    out = benchmark(_roundtrip(a))
    assert np.array_equal(out, a)


@pytest.mark.benchmark(group="table")
def test_encode_decode_table_3cols(benchmark):
    t = pa.table({"i": np.arange(16), "f": np.random.rand(16), "s": [str(i) for i in range(16)]})
    out = benchmark(_roundtrip(t))
    assert out.equals(t)


@pytest.mark.benchmark(group="64MiB")
def test_numpy_copyto_64mib(benchmark):
    src = np.random.rand(64 * MiB // 8)
    dst = np.ndarray(src.shape, src.dtype, buffer=_dest(64 * MiB))
    benchmark(np.copyto, dst, src)


@pytest.mark.benchmark(group="64MiB")
def test_encode_64mib(benchmark):
    src = np.random.rand(64 * MiB // 8)
    dest = _dest(encode(src).nbytes)
    benchmark(lambda: encode(src).write_into(dest))


@pytest.mark.benchmark(group="64MiB")
def test_decode_64mib(benchmark):
    src = np.random.rand(64 * MiB // 8)
    dest = _dest(encode(src).nbytes)
    encode(src).write_into(dest)
    buf = pa.py_buffer(dest)
    out = benchmark(decode, buf)
    assert out.nbytes == 64 * MiB

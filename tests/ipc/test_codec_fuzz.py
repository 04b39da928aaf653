"""Hostile bytes fed to ipc.codec.decode: only CorruptRecord may come out (SPEC sections 8, 9).

Mutated messages are decoded with allow_pickle=False: unpickling hostile bytes runs code by
design (see docs/wire-format.md), so the fuzzing covers everything but the unpickler itself.
"""

from __future__ import annotations

import random
import struct

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipc.codec import decode, encode, wire
from ipc.errors import CorruptRecord

SETTINGS = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)


class Thing:
    def __init__(self, a):
        self.a = a


def corpus() -> list[bytes]:
    pd = pytest.importorskip("pandas")
    values = [
        None,
        [1, "two", 3.0, b"four", (5, (6,))],
        {"k": (1, 2), 7: [None, True]},
        np.arange(16, dtype=np.float32).reshape(1, 16),
        np.asfortranarray(np.arange(12, dtype=np.int64).reshape(3, 4)),
        np.zeros((0, 4), np.uint16),
        np.array(2.5),
        np.array([True, False, True]),
        np.arange(6, dtype=np.complex128).reshape(2, 3).T,
        (np.float16(1.0), np.int8(-1)),
        b"\x01" * 5000,
        pa.table({"i": [1, None, 3], "s": ["a", None, "ccc"], "l": [[1], [], [2, 3]]}),
        pa.record_batch({"d": pa.array(["x", "y", "x"]).dictionary_encode()}),
        pd.DataFrame({"a": [1, 2]}, index=["r", "s"]),
        (Thing(np.arange(10)),),
        ((np.ones(3, np.float64), 4), {"x": np.ones(2, np.int32)}),
    ]
    return [encode(v).to_bytes() for v in values]


CORPUS: list[bytes] = []


def valid() -> list[bytes]:
    if not CORPUS:
        CORPUS.extend(corpus())
    return CORPUS


def touch(v) -> None:
    """Read every byte of a decoded value, so an out-of-bounds view would show up here."""
    if isinstance(v, np.ndarray):
        bytes(np.ascontiguousarray(v))
    elif isinstance(v, (pa.Table, pa.RecordBatch)):
        v.to_pylist()
    elif isinstance(v, (list, tuple)):
        for x in v:
            touch(x)
    elif isinstance(v, dict):
        for x in v.values():
            touch(x)
    elif type(v).__name__ == "DataFrame":
        v.to_dict()


def must_reject_or_decode(data: bytes) -> None:
    try:
        out = decode(pa.py_buffer(data), allow_pickle=False)
    except CorruptRecord:
        return
    touch(out)
    touch(decode(pa.py_buffer(data), allow_pickle=False, copy=True))


@SETTINGS
@given(st.binary(max_size=600))
def test_random_bytes(data):
    must_reject_or_decode(data)


@SETTINGS
@given(st.binary(max_size=400))
def test_random_bytes_after_valid_preamble(data):
    must_reject_or_decode(wire.PRE.pack(wire.MAGIC, wire.VERSION, 0, 0, len(data), 0) + data)


@SETTINGS
@given(st.integers(0, 15), st.data())
def test_random_lengths_in_header(which, data):
    msg = bytearray(valid()[which])
    n = struct.unpack_from("<I", msg, 12)[0]
    fields = [8, 12] + [16 + 8 * k for k in range(2 * n)]
    at = data.draw(st.sampled_from(fields))
    width = 4 if at < 16 else 8
    value = data.draw(
        st.integers(0, 2 ** (8 * width) - 1)
        | st.integers(0, len(msg) + 128)
        | st.sampled_from([0, 1, 63, 64, 2**31, 2**32 - 1])
    )
    msg[at : at + width] = (value % 2 ** (8 * width)).to_bytes(width, "little")
    must_reject_or_decode(bytes(msg))


FLIPS = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7)), max_size=8)


@SETTINGS
@given(st.integers(0, 15), FLIPS)
def test_bit_flips(which, flips):
    msg = bytearray(valid()[which])
    for pos, bit in flips:
        msg[pos % len(msg)] ^= 1 << bit
    must_reject_or_decode(bytes(msg))


@SETTINGS
@given(st.integers(0, 15), st.integers(0, 10**6))
def test_truncation(which, cut):
    msg = valid()[which]
    must_reject_or_decode(msg[: cut % len(msg)])


def test_thousands_of_random_mutations():
    rng = random.Random(20261121)
    msgs = valid()
    for i in range(4000):
        msg = bytearray(rng.choice(msgs))
        kind = i % 6
        if kind == 0:  # bit flips
            for _ in range(rng.randint(1, 6)):
                msg[rng.randrange(len(msg))] ^= 1 << rng.randrange(8)
        elif kind == 1:  # truncation
            del msg[rng.randrange(len(msg)) :]
        elif kind == 2:  # a random 4/8-byte little-endian length somewhere
            width = rng.choice((4, 8))
            at = rng.randrange(max(1, len(msg) - width))
            value = rng.choice((0, 1, 7, 64, len(msg), 2**31 - 1, 2**32 - 1, 2**63, 2**64 - 1))
            msg[at : at + width] = (value % 2 ** (8 * width)).to_bytes(width, "little")
        elif kind == 3:  # a run of random bytes
            at = rng.randrange(len(msg))
            msg[at : at + rng.randint(1, 32)] = rng.randbytes(rng.randint(1, 32))
        elif kind == 4:  # byte set to an edge value
            msg[rng.randrange(len(msg))] = rng.choice((0x00, 0x7F, 0x80, 0xFF, 0xC1, 0xD9, 0xDD))
        else:  # bytes spliced from another message
            other = rng.choice(msgs)
            at = rng.randrange(len(msg))
            src = rng.randrange(len(other))
            msg[at : at + 16] = other[src : src + 16]
        must_reject_or_decode(bytes(msg))


def test_hostile_shapes_do_not_allocate():
    """A raw ndarray claiming a huge shape over a few bytes is rejected before any allocation."""
    env = wire.msgpack_encoder.encode(
        wire.Ext(wire.EXT_NDARRAY, wire.msgpack_encoder.encode([0, "<c16", [2**40, 2**40], [0, 0]]))
    )
    head = wire.PRE.pack(wire.MAGIC, wire.VERSION, 0, 0, len(env), 1)
    msg = head + struct.pack("<QQ", 64, 16) + env
    msg += bytes(64 - len(msg)) + bytes(16)
    with pytest.raises(CorruptRecord, match="needs more"):
        decode(pa.py_buffer(msg), copy=True)


def test_deep_nesting_is_rejected_not_crashing():
    deep = b"\x91" * 100_000 + b"\xc0"  # 100k nested msgpack arrays
    msg = wire.PRE.pack(wire.MAGIC, wire.VERSION, 0, 0, len(deep), 0) + deep
    with pytest.raises(CorruptRecord):
        decode(pa.py_buffer(msg))
    # nested tuples go through the extension hook, i.e. Python recursion
    v = None
    for _ in range(5000):
        v = wire.Ext(wire.EXT_TUPLE, wire.msgpack_encoder.encode([v]))
    env = wire.msgpack_encoder.encode(v)
    msg = wire.PRE.pack(wire.MAGIC, wire.VERSION, 0, 0, len(env), 0) + env
    with pytest.raises(CorruptRecord):
        decode(pa.py_buffer(msg))


def test_compressed_arrow_stream_is_rejected():
    t = pa.table({"a": np.zeros(100_000, np.int64)})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, t.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as w:
        w.write(t)
    stream = sink.getvalue().to_pybytes()
    env = wire.msgpack_encoder.encode(wire.Ext(wire.EXT_TABLE, (0).to_bytes(4, "little")))
    head = wire.PRE.pack(wire.MAGIC, wire.VERSION, 0, 0, len(env), 1)
    msg = head + struct.pack("<QQ", 64, len(stream)) + env
    msg += bytes(64 - len(msg)) + stream
    with pytest.raises(CorruptRecord, match="compressed"):
        decode(pa.py_buffer(msg))

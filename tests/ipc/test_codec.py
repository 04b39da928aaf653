"""Round trips, zero-copy and error behaviour of ipc.codec (the wire format of SPEC section 6)."""

from __future__ import annotations

import datetime
import decimal
import math
import pickle

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ipc import codec
from ipc.codec import arrow, decode, decoder, encode, encoder, wire
from ipc.errors import CorruptRecord, EncodeError

DTYPES = [
    np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
    np.float16, np.float32, np.float64, np.complex64, np.complex128,
]
SETTINGS = settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)


def to_buffer(value, *, pad: int = 8, **kw) -> pa.Buffer:
    """Encode into the middle of a larger buffer, as the ring does (8-aligned, not 64)."""
    plan = encode(value, **kw)
    raw = bytearray(b"\xaa" * (plan.nbytes + 2 * pad))
    plan.write_into(memoryview(raw)[pad : pad + plan.nbytes])
    assert raw[:pad] == b"\xaa" * pad and raw[pad + plan.nbytes :] == b"\xaa" * pad
    return pa.py_buffer(raw).slice(pad, plan.nbytes)


def roundtrip(value, **kw):
    return decode(to_buffer(value), **kw)


def same(a, b) -> bool:
    """Structural equality that also checks types, NaNs, dtypes, shapes and layouts."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return (
            a.dtype == b.dtype
            and a.shape == b.shape
            and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()
        )
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and str(a) == str(b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (pa.Table, pa.RecordBatch)):
        return a.equals(b) and a.schema.equals(b.schema, check_metadata=True)
    if isinstance(a, np.generic):
        return a.dtype == b.dtype and a.tobytes() == b.tobytes()
    return a == b


def inside(arr: np.ndarray, buf: pa.Buffer) -> bool:
    addr = arr.__array_interface__["data"][0]
    return buf.address <= addr and addr + arr.nbytes <= buf.address + buf.size


# ---------------------------------------------------------------------------------- arrays

layouts = st.sampled_from(["C", "F", "strided", "transposed", "negative"])


@st.composite
def any_array(draw, dtypes=st.sampled_from(DTYPES)):
    dtype = np.dtype(draw(dtypes))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
    arr = draw(hnp.arrays(dtype, shape))
    layout = draw(layouts)
    if layout == "F":
        arr = np.asfortranarray(arr)
    elif layout == "strided" and arr.ndim:
        big = np.repeat(arr, 2, axis=-1)
        arr = big[..., ::2]
    elif layout == "transposed":
        arr = arr.T
    elif layout == "negative" and arr.ndim:
        arr = arr[::-1]
    return arr


@SETTINGS
@given(any_array())
def test_ndarray_roundtrip(arr):
    buf = to_buffer(arr)
    out = decode(buf)
    assert same(arr, out)
    assert not out.flags.writeable
    if out.size:
        assert inside(out, buf)  # zero-copy view of the message
    assert out.flags.c_contiguous or out.flags.f_contiguous
    if arr.ndim > 1 and arr.flags.f_contiguous and not arr.flags.c_contiguous:
        assert out.flags.f_contiguous


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (1, 16), (4, 5, 3)])
def test_ndarray_every_dtype_and_shape(dtype, shape):
    arr = (np.arange(math.prod(shape)) % 7).astype(dtype).reshape(shape)
    for a in (arr, np.asfortranarray(arr)):
        out = roundtrip(a)
        assert same(a, out)
        assert out.flags.f_contiguous == a.flags.f_contiguous


def test_big_endian_and_non_native_become_native():
    a = np.arange(10, dtype=">f8")
    out = roundtrip(a)
    assert out.dtype == np.dtype("<f8") and np.array_equal(a, out)
    c = np.arange(4, dtype=">c16")
    assert np.array_equal(roundtrip(c), c)


def test_tensor_is_a_real_arrow_ipc_tensor_message():
    """Arrow-supported dtypes travel as an Arrow IPC tensor message a foreign reader can read."""
    a = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    buf = to_buffer(a)
    env_at, env_end, table = decoder.parse_head(memoryview(buf))
    (off, length), = table
    assert off % 64 == 0
    tensor = pa.ipc.read_tensor(pa.BufferReader(buf.slice(off, length)))
    assert np.array_equal(tensor.to_numpy(), a)
    assert pa.ipc.get_tensor_size(pa.Tensor.from_numpy(a)) == length


def test_decoder_reads_foreign_tensor_message():
    """A message built by hand with pyarrow's writer (not our cached headers) decodes too."""
    a = np.arange(6, dtype=np.int32).reshape(2, 3)
    sink = pa.BufferOutputStream()
    pa.ipc.write_tensor(pa.Tensor.from_numpy(a), sink)
    tensor_msg = sink.getvalue().to_pybytes()
    env = wire.msgpack_encoder.encode(wire.Ext(wire.EXT_TENSOR, (0).to_bytes(4, "little")))
    head = wire.PRE.pack(codec.MAGIC, codec.VERSION, 0, 0, len(env), 1)
    off = (len(head) + 16 + len(env) + 63) // 64 * 64
    import struct

    msg = head + struct.pack("<QQ", off, len(tensor_msg)) + env
    msg += bytes(off - len(msg)) + tensor_msg
    assert np.array_equal(decode(pa.py_buffer(msg)), a)


def test_buffers_are_64_aligned_within_message():
    value = [np.zeros(3, np.int8), np.ones(5, np.bool_), b"x" * 5000, pa.table({"a": [1]})]
    buf = to_buffer(value)
    _, _, table = decoder.parse_head(memoryview(buf))
    assert len(table) == 4
    assert all(off % 64 == 0 for off, _ in table)


def test_plan_size_is_exact_and_padding_zeroed():
    value = {"a": np.arange(3, dtype=np.uint8), "b": np.ones(2, np.complex64)}
    plan = encode(value)
    raw = bytearray(b"\xff" * plan.nbytes)
    plan.write_into(memoryview(raw))
    assert bytes(raw) == plan.to_bytes()
    with pytest.raises(ValueError):
        plan.write_into(memoryview(bytearray(plan.nbytes - 1)))


def test_numpy_scalars():
    for v in (np.float32(1.5), np.int64(-3), np.bool_(True), np.complex128(1 + 2j), np.uint8(7)):
        out = roundtrip(v)
        assert type(out) is type(v) and out == v


# ------------------------------------------------------------------------ envelope values

plain_ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
scalars = (
    st.none() | st.booleans() | plain_ints | st.floats(allow_nan=True) | st.text(max_size=20)
    | st.binary(max_size=20) | st.binary(min_size=4096, max_size=5000)
)
leaves = scalars | any_array()
trees = st.recursive(
    leaves,
    lambda kids: st.lists(kids, max_size=4)
    | st.lists(kids, max_size=4).map(tuple)
    | st.dictionaries(st.text(max_size=5) | plain_ints, kids, max_size=4),
    max_leaves=12,
)


@SETTINGS
@given(trees)
def test_nested_roundtrip(value):
    assert same(value, roundtrip(value))
    assert same(value, roundtrip(value, copy=True))


def test_tuples_stay_tuples_and_int_keys():
    value = ((1, (2, [3, (4,)])), {1: (), "1": [()], -5: {"x": (None,)}}, [])
    out = roundtrip(value)
    assert out == value
    assert type(out) is tuple and type(out[0][1]) is tuple and type(out[0][1][1][1]) is tuple
    assert type(out[1][1]) is tuple and list(out[1]) == [1, "1", -5]


def test_int_limits():
    for v in (-(2**63), 2**64 - 1, 0, -1):
        assert roundtrip(v) == v
    for v in (2**64, -(2**63) - 1, 10**30):  # outside msgpack: pickle keeps them exact
        assert roundtrip(v) == v
        with pytest.raises(EncodeError, match="int"):
            encode(v, allow_pickle=False)


@SETTINGS
@given(st.lists(plain_ints, max_size=3), st.dictionaries(st.text(max_size=4), scalars, max_size=3))
def test_call_envelope(args, kwargs):
    arr = np.arange(4, dtype=np.float32)
    args = (arr, *args)
    value = (args, kwargs)
    plan = encode(value)
    out = decode(pa.py_buffer(plan.to_bytes()))
    assert same(value, out)
    # the call envelope is the plain encoding of (args, kwargs), fast path or not
    assert plan.to_bytes() == encoder.general_plan(value, True).to_bytes()


# -------------------------------------------------------------------------------- arrow


@st.composite
def tables(draw):
    n = draw(st.integers(0, 20))
    ints = draw(st.lists(st.none() | st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n))
    floats = draw(st.lists(st.none() | st.floats(allow_nan=False), min_size=n, max_size=n))
    strs = draw(st.lists(st.none() | st.text(max_size=8), min_size=n, max_size=n))
    lists = draw(st.lists(st.lists(st.integers(-5, 5), max_size=3), min_size=n, max_size=n))
    bools = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    t = pa.table(
        {
            "i": pa.array(ints, pa.int64()),
            "f": pa.array(floats, pa.float64()),
            "s": pa.array(strs, pa.string()),
            "l": pa.array(lists, pa.list_(pa.int8())),
            "b": pa.array(bools, pa.bool_()),
            "d": pa.array([s or "" for s in strs]).dictionary_encode(),
            "t": pa.array([datetime.datetime(2020, 1, 1)] * n, pa.timestamp("us")),
        }
    )
    if draw(st.booleans()) and n > 1:  # several chunks
        t = pa.concat_tables([t.slice(0, n // 2), t.slice(n // 2)])
    return t


@SETTINGS
@given(tables(), st.booleans())
def test_table_and_batch_roundtrip(table, as_batch):
    value = table.combine_chunks().to_batches()[0] if as_batch and table.num_rows else table
    buf = to_buffer({"x": value})
    out = decode(buf)["x"]
    assert type(out) is type(value)
    assert out.equals(value)
    # the table holds strings, lists and dictionaries: offsets a writer to shared memory could
    # turn into out-of-bounds reads after validation, so it is decoded from a private copy
    for b in _data_buffers(out):
        assert not buf.address <= b.address < buf.address + buf.size


def _data_buffers(t) -> list:
    cols = t.columns if isinstance(t, pa.RecordBatch) else [c for c in t.columns]
    out = []
    for col in cols:
        for chunk in col.chunks if isinstance(col, pa.ChunkedArray) else [col]:
            out += [b for b in chunk.buffers() if b is not None and b.size]
    return out


@SETTINGS
@given(tables(), st.booleans())
def test_fixed_width_tables_are_zero_copy(table, as_batch):
    table = table.select(["i", "f", "b", "t"])
    value = table.combine_chunks().to_batches()[0] if as_batch and table.num_rows else table
    buf = to_buffer({"x": value})
    out = decode(buf)["x"]
    assert type(out) is type(value)
    assert out.equals(value) and out.schema.equals(value.schema, check_metadata=True)
    for b in _data_buffers(out):
        assert buf.address <= b.address < buf.address + buf.size  # zero-copy


def test_large_table_goes_through_mock_sizing():
    t = pa.table({"a": np.arange(100_000, dtype=np.int64), "b": np.ones(100_000)})
    assert t.nbytes > arrow.STREAM_STAGE_MAX
    assert roundtrip(t).equals(t)
    assert roundtrip(t.to_batches()[0]).equals(t.to_batches()[0])


def test_dataframe_roundtrip():
    pd = pytest.importorskip("pandas")
    frames = [
        pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", None], "c": [1.5, np.nan, 3.0]}),
        pd.DataFrame({"a": [1, 2]}, index=pd.Index(["r1", "r2"], name="key")),
        pd.DataFrame({"a": [1.0, 2.0]}, index=pd.RangeIndex(10, 14, 2)),
        pd.DataFrame({"v": [1, 2, 3, 4]}, index=pd.MultiIndex.from_product([["a", "b"], [1, 2]])),
        pd.DataFrame(),
    ]
    for df in frames:
        for copy in (False, True):
            out = roundtrip({"df": df}, copy=copy)["df"]
            assert isinstance(out, pd.DataFrame)
            pd.testing.assert_frame_equal(out, df)


# ------------------------------------------------------------------------------- pickle


class Blob:
    """A user type: pickled, with its arrays out of band."""

    def __init__(self, arrays, note):
        self.arrays = arrays
        self.note = note

    def __eq__(self, other):
        return (
            type(other) is Blob
            and self.note == other.note
            and all(same(a, b) for a, b in zip(self.arrays, other.arrays, strict=True))
        )


@SETTINGS
@given(st.lists(any_array(st.sampled_from([np.float32, np.int64, np.bool_])), max_size=3))
def test_pickle_roundtrip_with_out_of_band_buffers(arrays):
    obj = Blob(arrays, "n")
    assert roundtrip([obj, (obj,)]) == [obj, (obj,)]


def test_pickle_buffers_out_of_band_and_zero_copy():
    big = np.arange(10_000, dtype=np.float64)
    value = {"blob": Blob([big], "x"), "ba": bytearray(b"q" * 9000)}
    buf = to_buffer(value)
    _, _, table = decoder.parse_head(memoryview(buf))
    assert len(table) >= 3  # pickle stream + the array + the bytearray
    out = decode(buf)
    assert out["blob"] == value["blob"] and out["ba"] == value["ba"]
    arr = out["blob"].arrays[0]
    assert inside(arr, buf) and not arr.flags.writeable


def test_pickle_of_other_types():
    value = [{1, 2}, frozenset({3}), decimal.Decimal("1.5"), datetime.date(2020, 1, 2),
             {(1, 2): "tuple key"}, np.arange(3).astype("datetime64[D]"), range(3)]
    out = roundtrip(value)
    assert out[:5] == value[:5] and np.array_equal(out[5], value[5]) and out[6] == value[6]


def test_allow_pickle_false_errors_name_type_and_path():
    with pytest.raises(EncodeError) as ei:
        encode(((1, {"x": [0, Blob([], "")]}), {}), allow_pickle=False)
    msg = str(ei.value)
    assert "Blob" in msg and "value[0][1]['x'][1]" in msg and "numpy.ndarray" in msg
    assert isinstance(ei.value, TypeError)
    with pytest.raises(EncodeError, match=r"value\[1\]\['k'\]"):
        encode(((), {"k": {1, 2}}), allow_pickle=False)
    with pytest.raises(EncodeError, match=r"value\[0\]\[2\]"):
        encode([(1, 2, object())], allow_pickle=False)
    with pytest.raises(EncodeError, match="datetime64"):
        encode(np.zeros(2, "datetime64[s]"), allow_pickle=False)


def test_unpicklable_value_names_path():
    with pytest.raises(EncodeError, match=r"value\['f'\]") as ei:
        encode({"f": lambda: 1})
    assert isinstance(ei.value, TypeError)


def test_decode_refuses_pickle_when_asked():
    buf = to_buffer({1, 2})
    with pytest.raises(CorruptRecord, match="pickle"):
        decode(buf, allow_pickle=False)


# --------------------------------------------------------------------------------- copy


def test_copy_true_values_own_their_memory():
    value = {
        "a": np.arange(12, dtype=np.float32).reshape(3, 4),
        "c": np.ones((2, 2), np.complex64),
        "t": pa.table({"x": [1, 2, 3], "s": ["a", "b", "c"]}),
        "p": Blob([np.arange(5000, dtype=np.int64)], "p"),
        "b": b"z" * 5000,
    }
    raw = bytearray(encode(value).to_bytes())
    buf = pa.py_buffer(raw)
    out = decode(buf, copy=True)
    expect = pickle.loads(pickle.dumps(out))
    for arr in (out["a"], out["c"], out["p"].arrays[0]):
        assert not inside(arr, buf)
    assert out["a"].flags.owndata and out["c"].flags.owndata
    # a copied array reads like a view (read-only), whatever the size that made it a copy
    assert not out["a"].flags.writeable and not out["c"].flags.writeable
    raw[:] = bytes(len(raw))  # the ring slot is reused
    assert same(out["a"], expect["a"]) and same(out["c"], expect["c"])
    assert out["t"].equals(value["t"]) and out["p"] == value["p"] and out["b"] == value["b"]


def test_views_keep_buffer_alive():
    buf = to_buffer(np.arange(100, dtype=np.int64))
    arr = decode(buf)
    del buf
    assert arr.sum() == 4950


def test_write_into_accepts_reservation_like_views():
    plan = encode(np.arange(5, dtype=np.int16))
    raw = bytearray(plan.nbytes)
    plan.write_into(raw)  # any writable buffer works, not only memoryview
    assert np.array_equal(decode(pa.py_buffer(raw)), np.arange(5, dtype=np.int16))
    with pytest.raises(ValueError):
        plan.write_into(memoryview(bytes(plan.nbytes)))


def test_decode_accepts_bytes():
    assert decode(encode([1, "a"]).to_bytes()) == [1, "a"]


def test_pandas_not_imported_for_other_values():
    import subprocess
    import sys

    code = (
        "import sys, numpy as np; from ipc.codec import encode, decode;"
        "decode(encode([np.zeros(3), {'a': (1,)}, {1, 2}]).to_bytes());"
        "sys.exit(1 if 'pandas' in sys.modules else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "bad",
    [b"", b"RLCW", b"XXXX" + bytes(12), wire.PRE.pack(b"RLCW", 9, 0, 0, 0, 0)],
)
def test_bad_preamble(bad):
    with pytest.raises(CorruptRecord):
        decode(pa.py_buffer(bad))


def test_through_a_real_ring():
    """Encode into a ring reservation, decode the record zero-copy, slot freed when views die."""
    ring_mod = pytest.importorskip("ipc.ring")
    ring = ring_mod.Ring.create(1 << 20, tag="codectest")
    try:
        value = ((np.arange(48, dtype=np.float32).reshape(3, 16), {"t": pa.table({"a": [1]})}), {})
        plan = encode(value)
        res = ring.reserve(plan.nbytes)
        plan.write_into(res.buf)
        res.commit()
        rec = ring.take()
        args, _ = decode(rec.buffer)
        arr = args[0]
        assert same(arr, value[0][0]) and inside(arr, rec.buffer) and not arr.flags.writeable
        assert args[1]["t"].equals(value[0][1]["t"])
        del args, arr, rec
    finally:
        ring.close()
        ring.unlink()


# -- the cached fast paths ------------------------------------------------------------------------

FAST_DTYPES = [np.int8, np.uint16, np.int32, np.int64, np.float16, np.float32, np.float64]


def _slow_bytes(value) -> bytes:
    """The message as the general walk writes it (no cached plan involved)."""
    return encoder.general_plan(value, True).to_bytes()


@SETTINGS
@given(
    arrays=st.lists(
        hnp.arrays(st.sampled_from(FAST_DTYPES), hnp.array_shapes(min_dims=0, max_dims=4,
                                                                  min_side=0, max_side=5)),
        min_size=1, max_size=3,
    ),
    fortran=st.booleans(),
    as_call=st.booleans(),
)
def test_fast_encode_writes_the_same_bytes_as_the_walk(arrays, fortran, as_call):
    if fortran:
        arrays = [np.asfortranarray(a) for a in arrays]
    value = (tuple(arrays), {}) if as_call else arrays[0]
    first = encode(value).to_bytes()  # plans, and remembers the plan
    again = encode(value).to_bytes()  # from the remembered plan
    assert first == again == _slow_bytes(value)


def test_fast_decode_equals_full_decode_and_views_are_fresh():
    x = np.arange(48, dtype=np.float32).reshape(3, 16)
    buf1 = to_buffer(((x, x[:1]), {}))
    first = decode(buf1)  # full decode: remembered
    assert any(size == len(buf1) for _head, size in decoder.fast_decodes.keys())
    y = x + 100
    buf2 = to_buffer(((y, y[:1]), {}))
    second = decode(buf2)  # same head: the fast path
    assert type(second) is tuple and type(second[0]) is tuple and second[1] == {}
    np.testing.assert_array_equal(first[0][0], x)
    np.testing.assert_array_equal(second[0][0], y)
    np.testing.assert_array_equal(second[0][1], y[:1])
    assert not second[0][0].flags.writeable
    assert second[0][0].ctypes.data != first[0][0].ctypes.data  # views of their own buffer
    copied = decode(buf2, copy=True)
    assert not copied[0][0].flags.writeable and copied[0][0].flags.owndata
    np.testing.assert_array_equal(copied[0][0], y)


def test_fast_decode_of_private_bytes_views_them_read_only():
    """A record's private copy (bytes: immutable, this process's own) decodes by the fast path
    to read-only views of those bytes, even with copy=True: a second copy would buy nothing.
    An F-ordered argument too; a changed prefix still takes the full decoder."""
    x = np.arange(48, dtype=np.float32).reshape(3, 16)
    f = np.asfortranarray(np.arange(12, dtype=np.int64).reshape(3, 4))
    raw = encode(((x, f), {})).to_bytes()
    decode(raw, copy=True)  # full decode: remembered
    for copy in (True, False):
        got = decode(raw, copy=copy)
        args, kwargs = got
        assert kwargs == {} and len(args) == 2
        np.testing.assert_array_equal(args[0], x)
        np.testing.assert_array_equal(args[1], f)
        for a in args:
            assert not a.flags.writeable
            assert not a.flags.owndata and inside(a, pa.py_buffer(raw))
    y = x + 1
    raw2 = encode(((y, f), {})).to_bytes()
    np.testing.assert_array_equal(decode(raw2, copy=True)[0][0], y)  # same head, new data
    bad = bytearray(raw)
    off = int.from_bytes(bad[wire.PRE.size : wire.PRE.size + 8], "little")
    bad[off + 8 : off + 24] = b"\xff" * 16
    with pytest.raises(CorruptRecord):
        decode(bytes(bad), copy=True)


def test_fast_decode_never_trusts_a_changed_tensor_prefix():
    """Same head bytes, different (corrupt) Arrow tensor metadata: the full decoder runs and
    reports it, instead of the remembered layout being applied."""
    x = np.ones((2, 8), np.float64)
    good = bytearray(encode(x).to_bytes())
    decode(bytes(good))
    decode(bytes(good))  # remembered
    table_off = wire.PRE.size
    off = int.from_bytes(good[table_off : table_off + 8], "little")
    bad = bytearray(good)
    bad[off + 8 : off + 24] = b"\xff" * 16  # inside the tensor's flatbuffer metadata
    with pytest.raises(CorruptRecord):
        decode(bytes(bad))
    np.testing.assert_array_equal(decode(bytes(good)), x)


def test_fast_paths_leave_other_messages_alone():
    values = [
        (np.ones(3, np.float32), 1),
        ((np.ones(3, np.float32),), {"k": np.ones(2, np.int8)}),
        ((np.ones(3, np.float32), 2.5), {}),
        ((np.ones(3, np.bool_),), {}),
        [np.ones(2, np.int16)],
    ]
    for v in values:
        for _ in range(3):
            got = decode(encode(v).to_bytes())
            assert type(got) is type(v)
            assert encode(v).to_bytes() == _slow_bytes(v)

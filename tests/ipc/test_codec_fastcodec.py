"""The codec's C remembered plans (ipc.codec._fastcodec) against the Python paths they replace.

Each (the encode of a remembered signature, the ring pieces of a plan, the decode of a
message seen before) must agree with its Python path byte for byte and value for value, and
must refuse (None: the Python path runs) whatever is not exactly what was checked before.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ipc import fastpath
from ipc.codec import decode, decoder, encode, encoder, native

pytestmark = pytest.mark.skipif(
    native.fastcodec is None,
    reason="ipc.codec._fastcodec is not built (no compiler or numpy headers), or is turned off",
)

DTYPES = st.sampled_from([np.float32, np.float64, np.int8, np.int64, np.uint16, np.bool_])


def _remembered(data: bytes, at: int = 0, cache: dict | None = None):
    return native.fastcodec.remembered(
        data, at, decoder._fast_decodes_dict if cache is None else cache)


def test_the_c_paths_are_the_ones_the_codec_uses_when_built():
    assert decoder.remembered is native.fastcodec.remembered
    assert encoder.planned is native.fastcodec.planned
    assert fastpath.pieces_of is native.fastcodec.pieces


@settings(max_examples=60, deadline=None)
@given(
    arrays=st.lists(hnp.arrays(DTYPES, hnp.array_shapes(min_dims=1, max_dims=3, max_side=5)),
                    min_size=1, max_size=4),
    as_call=st.booleans(),
    fortran=st.booleans(),
    lead=st.integers(0, 80),
)
def test_c_and_python_decode_a_remembered_message_alike(arrays, as_call, fortran, lead):
    if fortran:
        arrays = [np.asfortranarray(a) for a in arrays]
    if not as_call:
        arrays = arrays[:1]
    value = (tuple(arrays), {}) if as_call else arrays[0]
    raw = encode(value).to_bytes()
    decoder.fast_decodes.clear()
    decode(bytes(raw))  # the full decode: remembered if it is one of the fast shapes
    py = decoder._fast_decode(raw, len(raw), True)
    padded = b"\x07" * lead + raw  # the message after a prefix, as in a request record
    c = _remembered(padded, lead)
    if py is None:
        assert c is None
        return
    assert c is not None
    if as_call:
        assert type(c) is tuple and len(c) == 2 and type(c[0]) is tuple and c[1] == {}
        got, want = c[0], py[0]
    else:
        got, want = (c,), (py,)
    assert len(got) == len(want)
    for g, w, a in zip(got, want, arrays, strict=True):
        assert type(g) is np.ndarray and g.dtype == w.dtype and g.shape == w.shape
        assert g.strides == w.strides and not g.flags.writeable
        for flag in ("C_CONTIGUOUS", "F_CONTIGUOUS", "OWNDATA"):
            assert g.flags[flag] == w.flags[flag], flag
        # (``py`` views the message at offset 0, ``c`` after ``lead`` bytes)
        assert g.flags.aligned == (g.ctypes.data % g.dtype.alignment == 0 or not g.size)
        np.testing.assert_array_equal(g, a)
        assert g.base is padded  # a view of the private copy, no copy made


def test_a_changed_prefix_size_or_head_is_refused():
    x = np.arange(32, dtype=np.float32).reshape(2, 16)
    raw = encode(x).to_bytes()
    decoder.fast_decodes.clear()
    decode(raw)
    assert _remembered(raw) is not None
    off = int.from_bytes(raw[16:24], "little")  # the tensor's buffer: its prefix first
    bad = bytearray(raw)
    bad[off + 9] ^= 0xFF
    assert _remembered(bytes(bad)) is None  # the prefix differs: the full decoder decides
    assert _remembered(raw + b"\0" * 64) is None  # another size: another key
    assert _remembered(raw[:-1]) is None
    assert _remembered(raw[:10]) is None  # shorter than a preamble
    head = bytearray(raw)
    head[8:12] = (10_000).to_bytes(4, "little")  # an envelope past any remembered head
    assert _remembered(bytes(head)) is None


def _remembered_entry(x: np.ndarray):
    """(message, key, is_call, tensors): the one decoder cache entry of a lone array."""
    raw = encode(x).to_bytes()
    decoder.fast_decodes.clear()
    decode(raw)
    [(key, (is_call, tensors))] = list(decoder.fast_decodes._data.items())
    return raw, key, is_call, tensors


def test_entries_of_another_shape_are_refused_not_trusted():
    """The cache is the decoder's; an entry in a shape it never stores, or one whose offsets
    lie outside the message, is left to the Python path instead of being read."""
    raw, key, is_call, tensors = _remembered_entry(np.ones(8, np.float64))
    (off, prefix, layout) = tensors[0]
    dtype, shape, strides, data_off, need = layout
    bad_entries = [
        "not a tuple",
        (is_call,),
        (is_call, ()),
        (is_call, (("x", prefix, layout),)),
        (is_call, ((off, "not bytes", layout),)),
        (is_call, ((off, prefix, (dtype, shape, strides, data_off)),)),
        (is_call, ((len(raw), prefix, layout),)),  # the prefix outside the message
        (is_call, ((off, prefix, (dtype, shape, strides, data_off, len(raw))),)),
        (is_call, ((off, prefix, (dtype, shape, strides, need + 1, need)),)),
        (False, tensors * 2),  # a lone array with two tensors
    ]
    for entry in bad_entries:
        assert _remembered(raw, 0, {key: entry}) is None, entry
    assert _remembered(raw, 0, {key: (is_call, tensors)}) is not None


def test_bad_arguments_are_type_errors():
    remembered = native.fastcodec.remembered

    with pytest.raises(TypeError):
        remembered(bytearray(64), 0, {})
    with pytest.raises(TypeError):
        remembered(b"\0" * 64, 0, [])
    with pytest.raises(ValueError):
        remembered(b"\0" * 64, 65, {})
    with pytest.raises(TypeError):
        remembered(b"\0" * 64, 0, {}, np.ndarray)


def test_layouts_that_reach_outside_their_tensor_are_refused():
    """An array is made straight from the bytes, so its whole extent is checked: strides or a
    shape that reach past the tensor, a negative extent, or a dtype holding objects."""
    raw, key, is_call, tensors = _remembered_entry(np.arange(12, dtype=np.float32).reshape(3, 4))
    (off, prefix, layout) = tensors[0]
    dtype, shape, strides, data_off, need = layout
    for bad in [
        (dtype, (3, 5), strides, data_off, need),  # one row too long for the tensor
        (dtype, shape, (1 << 20, 4), data_off, need),
        (dtype, shape, (-16, 4), data_off, need),  # backwards, before the tensor's start
        (dtype, (-1, 4), None, data_off, need),
        (dtype, shape, (16,), data_off, need),  # strides of another rank
        (np.dtype(object), (1,), None, data_off, need),
        ("float32", shape, strides, data_off, need),  # not a dtype object
        (dtype, (1 << 62, 1 << 62), None, data_off, need),  # an extent past any size
    ]:
        assert _remembered(raw, 0, {key: (is_call, ((off, prefix, bad),))}) is None, bad
    got = _remembered(raw, 0, {key: (is_call, ((off, prefix, (dtype, (0, 4), None, data_off,
                                                                 need)),))})
    assert got is not None and got.shape == (0, 4)  # an empty array touches nothing


# ---------------------------------------------------------------------------- the encode


def _python_encode(value, monkeypatch, **kw):
    with monkeypatch.context() as m:
        m.setattr(encoder, "planned", None)
        return encode(value, **kw)


@settings(max_examples=60, deadline=None)
@given(
    arrays=st.lists(hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0,
                                                        max_side=5)),
                    min_size=1, max_size=4),
    as_call=st.booleans(),
    layout=st.sampled_from(["c", "fortran", "view", "strided"]),
)
def test_c_and_python_encode_a_remembered_signature_alike(arrays, as_call, layout):
    if layout == "fortran":
        arrays = [np.asfortranarray(a) for a in arrays]
    elif layout == "view":
        arrays = [a.reshape(-1).reshape(a.shape) for a in arrays]  # base is not None
    elif layout == "strided":
        arrays = [np.repeat(a, 2, axis=-1)[..., ::2] if a.ndim else a for a in arrays]
    if not as_call:
        arrays = arrays[:1]
    value = (tuple(arrays), {}) if as_call else arrays[0]
    encoder.plans.clear()
    first = encode(value)  # the Python path plans and remembers it
    mp = pytest.MonkeyPatch()
    try:
        py = _python_encode(value, mp)
    finally:
        mp.undo()
    c = native.fastcodec.planned(value, 0, encoder._plans_dict)
    if c is None:  # a signature the walk must always plan (not all tensors)
        assert encoder.plans.get(encoder._fast_signature(value, 0) if as_call
                                 else (encoder._array_sig(value),)) is None
        return
    assert c.nbytes == py.nbytes and c._head == py._head
    assert c.to_bytes() == py.to_bytes() == first.to_bytes()
    assert [b[:3] for b in c._bufs] == [b[:3] for b in py._bufs]
    assert all(b[3][0] is a for b, a in zip(c._bufs, arrays, strict=True))


def test_the_c_encode_leaves_other_values_to_the_python_path(monkeypatch):
    import runnerlib

    x = np.ones((2, 3), np.float32)
    planned = native.fastcodec.planned
    for v in [x, ((x,), {}), ((x, x), {})]:
        encode(v)
        assert planned(v, 0, encoder._plans_dict) is not None
    shared = runnerlib.shared_array((2, 3))
    try:
        class Sub(np.ndarray):
            pass

        for v in [
            x.view(Sub),  # a subclass
            ((x,), {"k": 1}),  # kwargs
            ((x,) * 9, {}),  # more arguments than the encoder remembers
            ((x, 1), {}),  # not all arrays
            ((), {}),
            ([x], {}),  # a list of arguments
            (x,),  # not (args, kwargs)
            shared, shared[:1], ((shared,), {}),  # by reference, never a plan
            np.ones((2, 3), np.float64),  # unseen
            "x", None,
        ]:
            assert planned(v, 0, encoder._plans_dict) is None, v
        assert planned(x, x.nbytes, encoder._plans_dict) is None  # big enough to share
        assert planned(x, x.nbytes + 1, encoder._plans_dict) is not None
        sig = (encoder._array_sig(x),)
        for bad in ["not a plan", (1, 2), (1, b"", ()), (1, b"", ((0, 1),))]:
            assert planned(x, 0, {sig: bad}) is None, bad
        with pytest.raises(TypeError):
            planned(x, 0, [])
        with pytest.raises(TypeError):
            planned(x, 0)
    finally:
        del shared


def test_c_and_python_pieces_agree():
    values = [
        ((np.arange(16, dtype=np.float32).reshape(1, 16),), {}),
        ((np.arange(7, dtype=np.int64), np.ones((3, 5), np.float64)), {}),
        np.arange(12, dtype=np.uint8).reshape(3, 4),
        ((np.zeros((0, 4), np.float32),), {}),
        {"a": b"bytes buffer" * 400, "b": [1, 2.5, "x"]},  # a bytes buffer
        np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),  # F order: None
        np.arange(20, dtype=np.float32)[::2],
        np.arange(4, dtype=">f4"),  # not native: None
        {"t": (1, 2)},  # no buffers at all
    ]
    for value in values:
        for _ in range(2):
            plan = encode(value)
            for at, prefix in [(0, None), (24, b"P" * 24)]:
                assert (native.fastcodec.pieces(plan, at, prefix)
                        == fastpath.pieces(plan, at, prefix)), value
    assert native.fastcodec.pieces("not a plan", 0, None) is None

"""The C remembered decode (ipc.codec._fastdecode) against the Python one it replaces.

Both read a message seen before into the same structure; the C one must agree byte for byte,
and must refuse (None: the full decoder runs) whatever is not exactly what was checked before.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ipc.codec import decode, decoder, encode

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ipc.codec._fastdecode") is None,
    reason="ipc.codec._fastdecode is not built (no compiler)",
)

DTYPES = st.sampled_from([np.float32, np.float64, np.int8, np.int64, np.uint16, np.bool_])


def _remembered(data: bytes, at: int = 0, cache: dict | None = None):
    from ipc.codec._fastdecode import remembered

    return remembered(data, at, decoder._fast_decodes_dict if cache is None else cache,
                      np.ndarray)


def test_the_c_path_is_the_one_decode_uses_when_built():
    from ipc.codec._fastdecode import remembered

    assert decoder.remembered is remembered


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


def test_entries_of_another_shape_are_refused_not_trusted():
    """The cache is the decoder's; an entry in a shape it never stores, or one whose offsets
    lie outside the message, is left to the Python path instead of being read."""
    x = np.ones(8, np.float64)
    raw = encode(x).to_bytes()
    decoder.fast_decodes.clear()
    decode(raw)
    [(key, (is_call, tensors))] = list(decoder.fast_decodes._data.items())
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
    from ipc.codec._fastdecode import remembered

    with pytest.raises(TypeError):
        remembered(bytearray(64), 0, {}, np.ndarray)
    with pytest.raises(TypeError):
        remembered(b"\0" * 64, 0, [], np.ndarray)
    with pytest.raises(ValueError):
        remembered(b"\0" * 64, 65, {}, np.ndarray)
    with pytest.raises(TypeError):
        remembered(b"\0" * 64, 0, {})

"""Joining calls and splitting results, per payload kind."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batching import (
    call_signature,
    join,
    join_calls,
    join_results,
    split_call,
    split_result,
)

sizes_st = st.lists(st.integers(min_value=0, max_value=5), min_size=1, max_size=6)


def _arrays(sizes, width=3, offset=0):
    out, start = [], offset
    for n in sizes:
        flat = np.arange(start * width, (start + n) * width, dtype=np.float32)
        out.append(flat.reshape(n, width))
        start += n
    return out


def _key(*args, batch_dim=0, **kwargs):
    return call_signature(args, kwargs, batch_dim)[0]


# -- call_signature ----------------------------------------------------------------------------


def test_signature_rows_and_equal_keys_for_joinable_arrays():
    a = np.zeros((2, 3), np.float32)
    b = np.ones((5, 3), np.float32)
    ka, rows_a = call_signature((a,), {}, 0)
    kb, rows_b = call_signature((b,), {}, 0)
    assert (rows_a, rows_b) == (2, 5)
    assert ka == kb and hash(ka) == hash(kb)


@pytest.mark.parametrize("other", [
    np.zeros((2, 4), np.float32),          # non-batch dimension differs
    np.zeros((2, 3), np.float64),          # dtype differs
    np.zeros((2, 3, 1), np.float32),       # rank differs
    [[0.0] * 3, [0.0] * 3],                # kind differs
])
def test_signature_mixed_shapes_and_dtypes_differ(other):
    assert _key(np.zeros((2, 3), np.float32)) != _key(other)


def test_signature_batch_dim_other_than_zero():
    key_a, rows = call_signature((np.zeros((3, 7, 2)),), {}, 1)
    key_b, _ = call_signature((np.zeros((3, 1, 2)),), {}, 1)
    assert rows == 7 and key_a == key_b
    assert key_a != call_signature((np.zeros((4, 7, 2)),), {}, 1)[0]
    assert call_signature((np.zeros((3, 7, 2)),), {}, -1)[1] == 2


class _SubArray(np.ndarray):
    """An ndarray subclass: call_signature takes its general walk for it."""


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=4),
       dtype=st.sampled_from([np.float32, np.int64, np.uint8, np.bool_]),
       batch_dim=st.integers(min_value=-5, max_value=4))
def test_signature_one_array_fast_key_is_the_walks(shape, dtype, batch_dim):
    """The one-array shortcut gives exactly the key and rows of the general walk (so calls
    keyed either way still join), and the walk's error for an axis the array lacks."""
    a = np.zeros(shape, dtype)
    if -a.ndim <= batch_dim < a.ndim:
        fast = call_signature((a,), {}, batch_dim)
        walked = call_signature((a.view(_SubArray),), {}, batch_dim)
        assert fast == walked and hash(fast[0]) == hash(walked[0])
        assert type(fast[1]) is int
    else:
        with pytest.raises(ValueError, match="has no axis"):
            call_signature((a,), {}, batch_dim)


def test_signature_non_batch_values_equal_vs_different():
    x = np.zeros((1, 2))
    assert _key(x, 0.5, mode="fast") == _key(x, 0.5, mode="fast")
    assert _key(x, 0.5, mode="fast") != _key(x, 0.5, mode="slow")
    assert _key(x, 1) != _key(x, 1.0) != _key(x, True)
    assert _key(x, float("nan")) == _key(x, float("nan"))
    assert _key(x, (1, "a", None, b"z")) == _key(x, (1, "a", None, b"z"))
    assert _key(x, {"k": (1, 2)}) == _key(x, {"k": (1, 2)})
    assert _key(x, {"k": 1}) != _key(x, {"k": 2})
    assert _key(x, np.float32(2)) == _key(x, np.float32(2))
    assert _key(x, y=1) != _key(x, z=1)
    assert _key(x) != _key(x, None)


def test_signature_unknown_values_are_never_joined():
    marker = object()
    x = np.zeros((1, 2))
    assert _key(x, marker) != _key(x, marker)
    assert _key(x, (np.zeros(2),)) != _key(x, (np.zeros(2),))


def test_signature_kwargs_order_does_not_matter():
    x = np.zeros((1, 2))
    assert call_signature((), {"a": x, "b": 1}, 0)[0] == call_signature((), {"b": 1, "a": x}, 0)[0]


def test_signature_rows_must_agree_and_names_the_arguments():
    with pytest.raises(ValueError, match=r"argument 0 has 2 rows, argument 'mask' has 3"):
        call_signature((np.zeros((2, 1)),), {"mask": [1, 2, 3]}, 0)


def test_signature_needs_a_batchable_argument():
    with pytest.raises(ValueError, match="at least one argument to batch"):
        call_signature((1, "a"), {}, 0)


def test_signature_tables_and_frames_need_batch_dim_zero():
    for value in (pa.table({"a": [1]}), pd.DataFrame({"a": [1]}), [1, 2]):
        with pytest.raises(ValueError, match="batch_dim must be 0"):
            call_signature((value,), {}, 1)
    with pytest.raises(ValueError, match="no axis 2"):
        call_signature((np.zeros((2, 2)),), {}, 2)


def test_signature_tables_by_schema_ignoring_metadata():
    t1 = pa.table({"a": [1, 2], "b": ["x", "y"]})
    t2 = pa.table({"a": [3], "b": ["z"]}).replace_schema_metadata({"k": "v"})
    t3 = pa.table({"a": [1.0], "b": ["z"]})
    assert _key(t1) == _key(t2)
    assert _key(t1) != _key(t3)
    assert _key(t1) != _key(t1.to_batches()[0])
    assert call_signature((t1,), {}, 0)[1] == 2


def test_signature_frames_by_columns_and_dtypes():
    f1 = pd.DataFrame({"a": [1, 2], "b": [0.5, 1.5]})
    assert _key(f1) == _key(pd.DataFrame({"a": [3], "b": [2.5]}))
    assert _key(f1) != _key(pd.DataFrame({"a": [1.0], "b": [2.5]}))
    assert _key(f1) != _key(pd.DataFrame({"b": [2.5], "a": [1]}))


# -- join_calls / split_result, per kind ------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(sizes=sizes_st, axis=st.integers(min_value=0, max_value=1))
def test_ndarray_roundtrip_each_caller_gets_its_rows(sizes, axis):
    parts = [np.moveaxis(a, 0, axis) for a in _arrays(sizes)]
    args, kwargs, got_sizes = join_calls([((p,), {"scale": 2}) for p in parts], axis)
    assert got_sizes == sizes and kwargs == {"scale": 2}
    out = split_result(args[0] * kwargs["scale"], got_sizes, axis)
    assert len(out) == len(parts)
    for part, result in zip(parts, out, strict=True):
        np.testing.assert_array_equal(result, part * 2)


@settings(max_examples=40, deadline=None)
@given(sizes=sizes_st, batch_dim=st.sampled_from([0, 1, -1, -2]))
def test_lone_array_calls_join_and_split_as_the_general_walk(sizes, batch_dim):
    # calls of one array and no kwargs take a shorter path (no call per call): same answers
    parts = [np.moveaxis(a, 0, batch_dim % 2) for a in _arrays(sizes)]
    args, kwargs, got_sizes = join_calls([((p,), {}) for p in parts], batch_dim)
    assert got_sizes == sizes and kwargs == {} and len(args) == 1
    np.testing.assert_array_equal(args[0], np.concatenate(parts, axis=batch_dim % 2))
    out = split_result(args[0] + 1, got_sizes, batch_dim)
    for part, result in zip(parts, out, strict=True):
        np.testing.assert_array_equal(result, part + 1)


def test_lone_array_calls_that_differ_are_refused_not_promoted():
    # equal shapes but two dtypes: np.concatenate alone would promote them silently
    with pytest.raises(ValueError, match="cannot be joined"):
        join_calls([((np.zeros((1, 2), np.float32),), {}),
                    ((np.zeros((1, 2), np.float64),), {})], 0)
    with pytest.raises(ValueError, match="cannot be joined"):
        join_calls([((np.zeros((1, 2)),), {}), ((np.zeros((2, 3)),), {})], 0)
    with pytest.raises(ValueError, match="cannot be joined"):
        join_calls([((np.zeros((1, 2)),), {}), ((np.zeros((1, 2)).tolist(),), {})], 0)


@settings(max_examples=30, deadline=None)
@given(sizes=sizes_st)
def test_table_and_record_batch_roundtrip(sizes):
    rows = iter(range(1000))
    schema = pa.schema([("x", pa.int64())])
    tables = [pa.table({"x": [next(rows) for _ in range(n)]}, schema=schema) for n in sizes]
    for values in (tables, [t.combine_chunks().to_batches(max_chunksize=max(n, 1))[0]
                            if n else pa.RecordBatch.from_pylist([], schema=t.schema)
                            for t, n in zip(tables, sizes, strict=True)]):
        args, _, got = join_calls([((v,), {}) for v in values], 0)
        assert type(args[0]) is type(values[0]) and got == sizes
        out = split_result(args[0], got, 0)
        for value, result in zip(values, out, strict=True):
            assert type(result) is type(value)
            assert result.to_pydict() == value.to_pydict()


@settings(max_examples=30, deadline=None)
@given(sizes=sizes_st)
def test_dataframe_roundtrip_with_default_index(sizes):
    start, frames = 0, []
    for n in sizes:
        frames.append(pd.DataFrame({"x": np.arange(start, start + n, dtype=np.int64)}))
        start += n
    args, _, got = join_calls([((f,), {}) for f in frames], 0)
    assert list(args[0].index) == list(range(sum(sizes)))
    out = split_result(args[0], got, 0)
    for frame, result in zip(frames, out, strict=True):
        pd.testing.assert_frame_equal(result, frame)


def test_dataframe_custom_index_survives():
    f1 = pd.DataFrame({"x": [1, 2]}, index=["a", "b"])
    f2 = pd.DataFrame({"x": [3]}, index=["c"])
    args, _, sizes = join_calls([((f1,), {}), ((f2,), {})], 0)
    out = split_result(args[0], sizes, 0)
    pd.testing.assert_frame_equal(out[0], f1)
    pd.testing.assert_frame_equal(out[1], f2)


@settings(max_examples=30, deadline=None)
@given(parts=st.lists(st.lists(st.integers(), max_size=4), min_size=1, max_size=5))
def test_list_roundtrip(parts):
    args, _, sizes = join_calls([((p,), {}) for p in parts], 0)
    assert args[0] == [x for p in parts for x in p]
    assert split_result(args[0], sizes, 0) == parts


def test_tuple_results_split_element_wise():
    a, b = _arrays([2, 3])
    args, _, sizes = join_calls([((a,), {}), ((b,), {})], 0)
    joined = args[0]
    result = (joined + 1, pa.table({"n": joined[:, 0]}), list(joined[:, 1]))
    out = split_result(result, sizes, 0)
    assert [type(o) for o in out] == [tuple, tuple]
    for part, (arr, table, lst) in zip((a, b), out, strict=True):
        np.testing.assert_array_equal(arr, part + 1)
        assert table.column("n").to_pylist() == list(part[:, 0])
        assert lst == list(part[:, 1])


def test_batch_of_one_is_not_copied():
    a = np.zeros((4, 2))
    args, _, sizes = join_calls([((a,), {})], 0)
    assert args[0] is a
    assert split_result(a, sizes, 0)[0] is a


def test_split_wrong_length_raises():
    with pytest.raises(ValueError, match="3 rows .* 4 rows in 2 calls"):
        split_result(np.zeros((3, 1)), [2, 2], 0)
    with pytest.raises(ValueError, match="2 rows"):
        split_result((np.zeros((4, 1)), [1, 2]), [2, 2], 0)
    with pytest.raises(TypeError, match="cannot split a result of type int"):
        split_result(7, [1], 0)


def test_join_calls_refuses_calls_that_differ():
    with pytest.raises(ValueError, match="cannot be joined"):
        join_calls([((np.zeros((1, 2)),), {}), ((np.zeros((1, 3)),), {})], 0)
    with pytest.raises(ValueError, match="cannot be joined"):
        join_calls([((np.zeros((1, 2)), 1), {}), ((np.zeros((1, 2)), 2), {})], 0)


def test_join_primitive_returns_sizes():
    joined, sizes = join([[1], [2, 3]], 0)
    assert joined == [1, 2, 3] and sizes == [1, 2]


# -- split_call / join_results -----------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(min_value=0, max_value=23), max_rows=st.integers(min_value=1, max_value=7))
def test_split_call_chunks_fit_and_rejoin(rows, max_rows):
    x = np.arange(rows * 2).reshape(rows, 2)
    frame = pd.DataFrame({"v": np.arange(rows)})
    chunks = split_call((x, "k"), {"f": frame, "l": list(range(rows))}, 0, max_rows)
    assert all(call_signature(a, k, 0)[1] <= max_rows for a, k in chunks)
    assert all(a[1] == "k" for a, _ in chunks)
    results = [(a[0] * 10, k["f"], k["l"]) for a, k in chunks]
    arr, frame_back, lst = join_results(results, 0)
    np.testing.assert_array_equal(arr, x * 10)
    pd.testing.assert_frame_equal(frame_back, frame)
    assert lst == list(range(rows))


def test_split_call_axis_one():
    x = np.arange(30).reshape(3, 10)
    chunks = split_call((x,), {}, 1, 4)
    assert [c[0][0].shape for c in chunks] == [(3, 4), (3, 4), (3, 2)]
    np.testing.assert_array_equal(join_results([c[0][0] for c in chunks], 1), x)


def test_import_does_not_pull_pandas_runnerlib_or_ipc():
    code = ("import sys, numpy, batching; "
            "bad = [m for m in ('pandas', 'runnerlib', 'ipc') if m in sys.modules]; "
            "assert not bad, bad; "
            "batching.join_calls([((numpy.zeros((1, 2)),), {})] * 2, 0); "
            "assert 'pandas' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=_repo_root())


def _repo_root():
    from pathlib import Path

    return str(Path(__file__).resolve().parents[2])

"""run_batch: one call of the method per batch, and failures isolated to the bad calls."""

from __future__ import annotations

import asyncio

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from batching import Outcome, run_batch, run_batch_async


class Counting:
    def __init__(self, fn):
        self.fn = fn
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def _calls(n, bad=()):
    out = []
    for i in range(n):
        x = np.full((i % 3 + 1, 2), float(i))
        if i in bad:
            x[0, 0] = -1.0
        out.append(((x,), {"scale": 2.0}))
    return out


def _positive_only(x, scale):
    if (x < 0).any():
        raise ValueError("negative input")
    return x * scale


def test_batch_runs_once_and_each_caller_gets_its_rows():
    fn = Counting(_positive_only)
    calls = _calls(7)
    outcomes = run_batch(fn, calls, 0, 0)
    assert fn.calls == 1
    for (args, _), outcome in zip(calls, outcomes, strict=True):
        np.testing.assert_array_equal(outcome.result(), args[0] * 2.0)


def test_one_bad_call_fails_alone():
    fn = Counting(_positive_only)
    calls = _calls(16, bad={11})
    outcomes = run_batch(fn, calls, 0, 0)
    assert [o.ok for o in outcomes] == [i != 11 for i in range(16)]
    assert isinstance(outcomes[11].error, ValueError)
    for (args, _), outcome in zip(calls, outcomes, strict=True):
        if outcome.ok:
            np.testing.assert_array_equal(outcome.value, args[0] * 2.0)
    assert fn.calls <= 1 + 2 * 4  # bisection: two runs per level


def test_a_call_that_cannot_join_runs_apart():
    calls = _calls(5)
    calls[2] = ((np.zeros((1, 3)),), {"scale": 2.0})  # wrong width slipped into the batch
    outcomes = run_batch(_positive_only, calls, 0, 0)
    assert all(o.ok for o in outcomes)
    assert outcomes[2].value.shape == (1, 3)

    def two_columns(x, scale):
        if x.shape[1] != 2:
            raise ValueError("expected 2 columns")
        return x

    outcomes = run_batch(two_columns, calls, 0, 0)
    assert [o.ok for o in outcomes] == [True, True, False, True, True]


def test_wrong_result_length_fails_every_call():
    fn = Counting(lambda x, scale: x[:-1])
    outcomes = run_batch(fn, _calls(4), 0, 0)
    assert all(isinstance(o.error, ValueError) for o in outcomes)
    assert fn.calls == 7  # 1 + 2 + 4


def test_batch_of_one_failing_returns_its_exception():
    fn = Counting(_positive_only)
    [outcome] = run_batch(fn, _calls(1, bad={0}), 0, 0)
    assert fn.calls == 1 and not outcome.ok
    with pytest.raises(ValueError, match="negative"):
        outcome.result()


def test_empty_batch():
    assert run_batch(_positive_only, [], 0, 0) == []


def test_tuple_results_split_element_wise():
    def fn(x, scale):
        return x * scale, pa.table({"first": x[:, 0]}), list(x[:, 1])

    calls = _calls(3)
    outcomes = run_batch(fn, calls, 0, 0)
    for (args, _), outcome in zip(calls, outcomes, strict=True):
        arr, table, lst = outcome.result()
        np.testing.assert_array_equal(arr, args[0] * 2.0)
        assert table.column("first").to_pylist() == list(args[0][:, 0])
        assert lst == list(args[0][:, 1])


def test_different_input_and_output_dims():
    calls = [((np.arange(6).reshape(3, 2) + 10 * i,), {}) for i in range(3)]
    outcomes = run_batch(lambda x: x.T, calls, 0, 1)
    for (args, _), outcome in zip(calls, outcomes, strict=True):
        np.testing.assert_array_equal(outcome.value, args[0].T)


def test_dataframe_and_record_batch_calls():
    frames = [pd.DataFrame({"a": [i, i + 1]}) for i in range(3)]
    outcomes = run_batch(lambda df: df * 2, [((f,), {}) for f in frames], 0, 0)
    for frame, outcome in zip(frames, outcomes, strict=True):
        pd.testing.assert_frame_equal(outcome.value, frame * 2)
    batches = [pa.record_batch({"a": [i, i]}) for i in range(3)]
    outcomes = run_batch(lambda rb: rb, [((b,), {}) for b in batches], 0, 0)
    assert [o.value.to_pydict() for o in outcomes] == [b.to_pydict() for b in batches]


def test_async_variant_isolates_too():
    async def fn(x, scale):
        await asyncio.sleep(0)
        return _positive_only(x, scale)

    calls = _calls(6, bad={0, 5})
    outcomes = asyncio.run(run_batch_async(fn, calls, 0, 0))
    assert [o.ok for o in outcomes] == [False, True, True, True, True, False]
    np.testing.assert_array_equal(outcomes[3].value, calls[3][0][0] * 2.0)


def test_outcome_result():
    assert Outcome(value=3).result() == 3
    with pytest.raises(KeyError):
        Outcome(error=KeyError("k")).result()

"""The dispatch rule of SPEC section 7, on a fake clock."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batching import ArrivalEstimator, Assembler, LatencyModel, Overloaded, PendingCall


class Clock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def trained_model(fixed=0.005, per_row=0.0001) -> LatencyModel:
    """A model that has learned a + b*rows, so waiting for another call can pay."""
    model = LatencyModel()
    for rows in (1, 8, 1, 8):
        model.observe(rows, fixed + per_row * rows)
    return model


def busy_stream(last=-0.001, gap=0.001) -> ArrivalEstimator:
    """An estimator that has seen overlapping arrivals every ``gap`` seconds until ``last``."""
    est = ArrivalEstimator()
    for i in range(4, -1, -1):
        est.observe(last - i * gap, overlapped=True)
    return est


def make(clock, max_rows=8, max_ms=10.0, **kw) -> Assembler[int | None]:
    return Assembler(max_rows, max_ms, clock=clock, **kw)


def call(clock, rows=1, key="k", payload=None) -> PendingCall[int | None]:
    return PendingCall(rows, key, clock.t, payload)


def test_lone_first_call_dispatches_at_once():
    clock = Clock()
    asm = make(clock, model=trained_model())
    assert asm.next_batch() is None and asm.time_to_next() is None
    c = call(clock)
    asm.add(c)
    assert asm.time_to_next() == 0.0
    assert asm.next_batch() == [c]
    assert asm.pending() == 0


def test_sequential_caller_never_waits_even_when_batching_would_pay():
    # Model: 50 ms fixed cost; the caller sends its next call 0.1 ms after each result, so its
    # gaps are far shorter than what a join would save. It still must not wait: it never
    # overlaps, so nobody else is coming.
    clock = Clock()
    asm = make(clock, max_ms=200.0, model=trained_model(fixed=0.050))
    for i in range(100):
        asm.add(call(clock, payload=i))
        assert asm.time_to_next() == 0.0
        batch = asm.next_batch()  # at once: on the clock of its arrival
        assert batch is not None and [c.payload for c in batch] == [i]
        clock.t += 0.001  # execution
        asm.record(1, 0.001)
        clock.t += 0.0001  # reply and the caller's turn-around


def test_first_call_after_idle_pause_does_not_wait():
    clock = Clock()
    asm = make(clock, model=trained_model(), arrivals=busy_stream())
    clock.t = 2.0
    asm.add(call(clock))
    assert asm.next_batch() is not None


def test_waits_for_expected_calls_then_dispatches_at_the_deadline():
    clock = Clock()
    model = trained_model()  # predict(rows) = 5 ms + 0.1 ms * rows
    asm = make(clock, max_ms=10.0, model=model, arrivals=busy_stream())
    calls = []
    for t in (0.0, 0.001, 0.002, 0.003):
        clock.t = t
        calls.append(call(clock))
        asm.add(calls[-1])
        assert asm.next_batch() is None
    # Latest useful moment: oldest + 10 ms - predict(4) - one expected gap (1 ms).
    expected = 0.010 - model.predict(4) - 0.001
    assert asm.time_to_next() == pytest.approx(expected - 0.003)
    clock.t = expected - 0.0001
    assert asm.next_batch() is None
    clock.t = expected
    assert asm.next_batch() == calls
    assert clock.t - calls[0].arrived + model.predict(4) <= 0.010 + 1e-9


def test_stops_waiting_when_the_stream_stalls():
    clock = Clock()
    asm = make(clock, max_ms=100.0, model=trained_model(), arrivals=busy_stream())
    c = call(clock)
    asm.add(c)
    assert asm.next_batch() is None
    # Three mean gaps (3 ms) after the last arrival nothing came: dispatch.
    assert asm.time_to_next() == pytest.approx(0.003)
    clock.t = 0.003
    assert asm.next_batch() == [c]


def test_full_batch_dispatches_at_once():
    clock = Clock()
    asm = make(clock, max_rows=4, max_ms=100.0, model=trained_model(), arrivals=busy_stream())
    for i in range(3):
        clock.t = i * 0.001
        asm.add(call(clock, payload=i))
        assert asm.next_batch() is None
    clock.t = 0.003
    asm.add(call(clock, payload=3))
    assert asm.time_to_next() == 0.0  # the stream is live and the deadline far, but full
    batch = asm.next_batch()
    assert [c.payload for c in batch] == [0, 1, 2, 3]


def test_never_over_max_rows_and_fifo_when_the_next_call_does_not_fit():
    clock = Clock()
    asm = make(clock, max_rows=8)
    for i, rows in enumerate((3, 3, 3, 8, 1)):
        asm.add(call(clock, rows=rows, payload=i))
    got = []
    while (batch := asm.next_batch()) is not None:
        assert sum(c.rows for c in batch) <= 8
        got.append([c.payload for c in batch])
    assert got == [[0, 1], [2], [3], [4]]


def test_call_larger_than_max_is_refused():
    asm = make(Clock(), max_rows=4)
    with pytest.raises(ValueError, match="split_call"):
        asm.add(PendingCall(5, "k", 0.0, None))


def test_different_keys_are_batched_apart_in_fifo_order():
    clock = Clock()
    asm = make(clock, max_rows=8, model=trained_model(), arrivals=busy_stream())
    for i, key in enumerate("abab"):
        asm.add(call(clock, key=key, payload=i))
    first = asm.next_batch()  # another key waits behind it: no point waiting
    second = asm.next_batch(force=True)
    assert [(c.key, c.payload) for c in first] == [("a", 0), ("a", 2)]
    assert [(c.key, c.payload) for c in second] == [("b", 1), ("b", 3)]
    assert asm.pending() == 0


def test_oldest_key_goes_first_after_partial_dispatch():
    clock = Clock()
    asm = make(clock, max_rows=2)
    for i, key in enumerate("aabaa"):
        asm.add(call(clock, key=key, payload=i))
    order = []
    while (batch := asm.next_batch()) is not None:
        order.append([c.payload for c in batch])
    assert order == [[0, 1], [2], [3, 4]]


def test_overload_reject_when_the_queue_ahead_is_too_long():
    clock = Clock()
    model = trained_model(fixed=0.005, per_row=0.0001)  # a full batch of 8: 5.8 ms
    asm = make(clock, max_rows=8, max_ms=20.0, model=model, on_overload="reject")
    for _ in range(3):
        asm.add(call(clock, rows=8))  # 3 full batches queued: 17.4 ms
    with pytest.raises(Overloaded, match="max_latency_ms 20"):
        asm.add(call(clock, rows=8))
    with pytest.raises(Overloaded):
        asm.add(call(clock, rows=1))  # 17.4 + 5.1 ms
    assert len(asm.next_batch()) == 1
    with pytest.raises(Overloaded):
        asm.add(call(clock, rows=1))  # the running batch still counts: 5.8 + 11.6 + 5.1 ms
    clock.t += 0.0058
    asm.record(8, 0.0058)
    asm.add(call(clock, rows=1))  # 11.6 + 5.1 ms
    assert asm.pending() == 3 and asm.pending_rows() == 17


def test_overload_queue_mode_accepts_everything():
    clock = Clock()
    asm = make(clock, max_rows=8, max_ms=1.0, model=trained_model())
    for _ in range(10):
        asm.add(call(clock, rows=8))
    assert asm.pending() == 10


def test_overload_reject_with_no_knowledge_admits():
    clock = Clock()
    asm = make(clock, max_rows=8, max_ms=1.0, on_overload="reject")
    for _ in range(10):
        asm.add(call(clock, rows=8))
    assert asm.pending() == 10


def test_bad_config_is_refused():
    with pytest.raises(ValueError):
        Assembler(0, 10)
    with pytest.raises(ValueError):
        Assembler(4, -1)
    with pytest.raises(ValueError):
        Assembler(4, 10, on_overload="drop")


# -- a small event simulation of a one-thread worker ------------------------------------------


def simulate(arrivals, max_rows, max_ms, exec_time):
    """Feed ``arrivals`` ((time, rows, key) sorted by time) to a worker loop; return batches as
    (dispatch time, idle since, calls) and the assembler."""
    clock = Clock()
    asm: Assembler[int] = Assembler(max_rows, max_ms, clock=clock)
    batches, i, idle_since = [], 0, 0.0
    while True:
        while i < len(arrivals) and arrivals[i][0] <= clock.t:
            t, rows, key = arrivals[i]
            asm.add(PendingCall(rows, key, t, payload=i))
            i += 1
        batch = asm.next_batch()
        if batch:
            batches.append((clock.t, idle_since, batch))
            seconds = exec_time(sum(c.rows for c in batch))
            clock.t += seconds
            asm.record(sum(c.rows for c in batch), seconds)
            idle_since = clock.t
            continue
        wait = asm.time_to_next()
        upcoming = arrivals[i][0] if i < len(arrivals) else math.inf
        if wait is None and upcoming == math.inf:
            return batches, asm
        clock.t = min(upcoming, clock.t + wait if wait is not None else math.inf)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), max_rows=st.integers(1, 16), keys=st.integers(1, 3),
       rate=st.sampled_from([50.0, 500.0, 3000.0]))
def test_simulated_load_keeps_every_rule(seed, max_rows, keys, rate):
    rng = random.Random(seed)
    t, arrivals = 0.0, []
    for _ in range(300):
        t += rng.expovariate(rate)
        arrivals.append((t, rng.randint(1, max_rows), f"k{rng.randrange(keys)}"))
    max_ms = 20.0
    batches, asm = simulate(arrivals, max_rows, max_ms, lambda rows: 0.001 + 0.00005 * rows)
    seen = []
    for when, idle_since, batch in batches:
        assert sum(c.rows for c in batch) <= max_rows
        assert len({c.key for c in batch}) == 1
        # The assembler itself never holds a call past its latency budget.
        assert when - max(idle_since, batch[0].arrived) <= max_ms / 1000 + 1e-9
        seen.extend(c.payload for c in batch)
    assert sorted(seen) == list(range(len(arrivals)))
    for key in {a[2] for a in arrivals}:
        mine = [p for p in seen if arrivals[p][2] == key]
        assert mine == sorted(mine), "FIFO within a key"
    assert asm.pending() == 0


def test_simulated_burst_batches_calls_together():
    rng = random.Random(1)
    t, arrivals = 0.0, []
    for _ in range(400):
        t += rng.expovariate(4000.0)  # about 4 calls per ms; one call costs 1 ms alone
        arrivals.append((t, 1, "k"))
    batches, asm = simulate(arrivals, 32, 20.0, lambda rows: 0.001 + 0.00002 * rows)
    assert sum(len(b) for _, _, b in batches) == 400
    assert 400 / len(batches) > 3  # mean rows per batch (one row per call)
    assert all(sum(c.rows for c in b) <= 32 for _, _, b in batches)


def test_keys_from_call_signature_keep_shapes_and_dtypes_apart():
    import numpy as np

    from batching import call_signature

    clock = Clock()
    asm = make(clock, max_rows=16)
    values = [np.zeros((2, 3), np.float32), np.zeros((1, 3), np.float64),
              np.zeros((3, 3), np.float32), np.zeros((1, 4), np.float32)]
    for i, value in enumerate(values):
        key, rows = call_signature((value,), {"mode": "a"}, 0)
        asm.add(PendingCall(rows, key, clock.t, payload=i))
    batches = []
    while (batch := asm.next_batch()) is not None:
        batches.append([c.payload for c in batch])
    assert batches == [[0, 2], [1], [3]]


def test_chunks_of_a_split_call_are_admitted_all_or_none():
    clock = Clock()
    model = trained_model(fixed=0.005, per_row=0.0001)  # a full batch of 8: 5.8 ms
    asm = make(clock, max_rows=8, max_ms=15.0, model=model, on_overload="reject")
    asm.add_all([call(clock, rows=8), call(clock, rows=8)])  # 11.6 ms: admitted
    assert asm.pending() == 2
    with pytest.raises(Overloaded):
        asm.add_all([call(clock, rows=1), call(clock, rows=1)])  # 11.6 + 5.2 ms
    assert asm.pending() == 2  # neither chunk was queued
    with pytest.raises(ValueError, match="split"):
        asm.add_all([call(clock, rows=1), call(clock, rows=9)])
    assert asm.pending() == 2


def test_time_already_waited_counts_against_the_deadline():
    clock = Clock(1.0)
    model = trained_model(fixed=0.005, per_row=0.0001)
    asm = make(clock, max_rows=8, max_ms=10.0, model=model, on_overload="reject")
    with pytest.raises(Overloaded):  # sent 8 ms ago (it waited in the transport) + 5.1 ms
        asm.add(PendingCall(1, "k", clock.t - 0.008, None))
    asm.add(PendingCall(1, "k", clock.t - 0.001, None))


def test_can_grow_until_full_or_backlogged():
    clock = Clock()
    asm = make(clock, max_rows=4)
    asm.add(call(clock, rows=3))
    assert asm.can_grow()  # one more row would join it
    asm.add(call(clock, rows=1))
    assert not asm.can_grow()  # full
    asm.next_batch()
    asm.add(call(clock, rows=1, key="a"))
    asm.add(call(clock, rows=1, key="b"))
    assert not asm.can_grow()  # a batch is ready with work behind it
    assert asm.time_to_next() == 0.0


def test_a_dropped_batch_teaches_the_model_nothing():
    clock = Clock()
    asm = make(clock, max_rows=4)
    asm.add(call(clock, rows=2))
    asm.next_batch()
    asm.record(2, 0.0, ran=False)
    assert asm.model.samples == 0
    # nothing counts as running any more: a later lone call is not taken for company
    clock.t = 1.0
    asm.add(call(clock, rows=1))
    assert asm.arrivals.overlap < asm.arrivals.min_overlap
    assert asm.time_to_next() == 0.0

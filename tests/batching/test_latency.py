"""The latency model and the arrival-rate estimator."""

from __future__ import annotations

import pytest

from batching import ArrivalEstimator, LatencyModel


def test_model_starts_optimistic():
    model = LatencyModel()
    assert model.predict(1) == 0.0 and model.predict(1000) == 0.0
    assert model.fixed_cost() == 0.0
    assert LatencyModel(initial=0.25).predict(3) == 0.25


def test_model_learns_a_line_and_extrapolates():
    model = LatencyModel()
    for _ in range(3):
        for rows in (1, 2, 4, 8):
            model.observe(rows, 0.005 + 0.001 * rows)
    assert model.predict(100) == pytest.approx(0.105, rel=1e-6)
    assert model.predict(3) == pytest.approx(0.008, rel=1e-6)
    assert model.fixed_cost() == pytest.approx(0.005, rel=1e-6)


def test_model_one_size_predicts_the_upper_bound_and_no_fixed_cost():
    model = LatencyModel()
    model.observe(4, 0.004)
    assert model.predict(4) == 0.004
    assert model.predict(8) == pytest.approx(0.008)  # could all be per-row cost
    assert model.predict(2) == pytest.approx(0.004)  # could all be fixed cost
    assert model.fixed_cost() == 0.0


def test_model_per_size_ewma_wins_where_seen():
    model = LatencyModel(alpha=0.5)
    model.observe(1, 0.010)
    model.observe(8, 0.010)
    model.observe(8, 0.020)
    assert model.predict(8) == pytest.approx(0.015)
    assert model.predict(1) == pytest.approx(0.010)


def test_model_never_fits_negative_cost():
    falling = LatencyModel()
    falling.observe(1, 0.010)
    falling.observe(10, 0.005)  # noise: bigger batch faster
    assert falling.predict(100) >= 0.005 and falling.fixed_cost() >= 0
    steep = LatencyModel()
    steep.observe(10, 0.001)
    steep.observe(20, 0.010)  # line would cross zero at 9 rows
    assert steep.fixed_cost() == 0.0
    assert steep.predict(1) >= 0.0


def test_model_ignores_bad_samples():
    model = LatencyModel()
    model.observe(1, float("nan"))
    model.observe(1, -1.0)
    assert model.samples == 0 and model.predict(1) == 0.0


def test_model_adapts_when_cost_changes():
    model = LatencyModel()
    for _ in range(20):
        model.observe(4, 0.004)
    for _ in range(20):
        model.observe(4, 0.001)
    assert model.predict(4) < 0.0015


def test_arrivals_no_history_expects_nothing():
    est = ArrivalEstimator()
    assert est.live_until() is None
    est.observe(0.0)
    assert est.live_until() is None and est.gap is None  # one arrival measures no gap


def test_arrivals_regular_overlapping_stream():
    est = ArrivalEstimator()
    for i in range(10):
        est.observe(i * 0.001, overlapped=True)
    assert est.gap == pytest.approx(0.001)
    # Live until three mean gaps pass without an arrival; then the stream has stopped.
    assert est.live_until() == pytest.approx(0.012)


def test_arrivals_sequential_caller_is_never_expected():
    est = ArrivalEstimator()
    for i in range(50):
        est.observe(i * 0.0001, overlapped=False)
    assert est.gap == pytest.approx(0.0001)
    assert est.live_until() is None  # short gaps, but it never overlaps: nobody else is coming


def test_arrivals_idle_gap_is_capped_and_out_of_order_is_harmless():
    est = ArrivalEstimator(horizon=1.0, alpha=1.0)
    est.observe(0.0)
    est.observe(100.0)
    assert est.gap == 1.0
    est.observe(99.0)  # stamped earlier by another process
    assert est.gap == 0.0 and est.last == 100.0

"""Counters of served runners, read from their control segments by any process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from runnerlib import registry
from runnerlib._shm.control import (
    H_NWORKERS,
    HIST_BUCKETS,
    W_BATCH_HIST,
    W_BATCHES,
    W_CALLS,
    W_CPUMASK,
    W_ERRORS,
    W_EXEC_NS,
    W_GPU,
    W_HIST,
    W_INFLIGHT,
    W_PID,
    W_QUEUED,
    W_REQUESTS,
    W_RESTARTS,
    W_ROWS,
    W_STATE,
    W_WAIT_NS,
    Control,
    percentile_from_hist,
)

WORKER_STATES = {0: "starting", 1: "ready", 2: "dead", 3: "stopped"}
SERVER_STATES = {0: "starting", 1: "ready", 2: "stopping", 3: "stopped"}


def _cpus(mask: int) -> list[int]:
    return [i for i in range(63) if mask >> i & 1]


def snapshot(info: registry.ServerInfo) -> dict[str, Any]:
    """One runner's counters as plain data."""
    from ipc.ring import Ring

    ctl = Control.attach(info.control)
    try:
        n = int(ctl.header[H_NWORKERS])
        rows = ctl.workers[:n].copy()
        state = SERVER_STATES.get(ctl.state, "unknown")
        channels = len(ctl.open_channels())
    finally:
        ctl.close()
    queue_depth = 0
    try:
        ring = Ring.attach(info.request_ring)
        try:
            queue_depth = ring.pending_count()
        finally:
            ring.close()
    except Exception:
        queue_depth = -1
    hist = rows[:, W_HIST : W_HIST + HIST_BUCKETS].sum(axis=0) if n else np.zeros(HIST_BUCKETS)
    bhist = (rows[:, W_BATCH_HIST : W_BATCH_HIST + HIST_BUCKETS].sum(axis=0) if n
             else np.zeros(HIST_BUCKETS, dtype=np.int64))
    batches = int(rows[:, W_BATCHES].sum()) if n else 0
    rows_total = int(rows[:, W_ROWS].sum()) if n else 0
    calls_total = int(rows[:, W_CALLS].sum()) if n else 0
    return {
        "runner": info.runner,
        "namespace": info.namespace,
        "server_pid": info.server_pid,
        "state": state,
        "runnable": info.class_ref,
        "clients": channels,
        "queue_depth": queue_depth,
        "requests": int(rows[:, W_REQUESTS].sum()) if n else 0,
        "errors": int(rows[:, W_ERRORS].sum()) if n else 0,
        "batches": batches,
        "rows": rows_total,
        "mean_batch_size": rows_total / batches if batches else 0.0,
        "exec_seconds": float(rows[:, W_EXEC_NS].sum()) / 1e9 if n else 0.0,
        "batch_wait_seconds": float(rows[:, W_WAIT_NS].sum()) / 1e9 if n else 0.0,
        # calls per batch (a call split into chunks counts once per chunk); calls the workers
        # hold in their batch assemblers, on top of queue_depth still in the request ring
        "batch_calls": calls_total,
        "mean_batch_calls": calls_total / batches if batches else 0.0,
        "batch_queue_depth": int(np.clip(rows[:, W_QUEUED], 0, None).sum()) if n else 0,
        "started": info.started,
        "latency_us": {
            "p50": percentile_from_hist(hist, 0.50),
            "p90": percentile_from_hist(hist, 0.90),
            "p99": percentile_from_hist(hist, 0.99),
        },
        # raw log2 bucket counts: latency bucket i counts calls under 2**i us, batch bucket i
        # batches of [2**(i-1), 2**i) rows; the last bucket also holds everything larger
        "latency_hist": [int(c) for c in hist],
        "batch_rows_hist": [int(c) for c in bhist],
        "batch_size_hist": {
            f"<{1 << i}": int(c)
            for i, c in enumerate(bhist)
            if c
        },
        "workers": [
            {
                "index": i,
                "pid": int(r[W_PID]),
                "state": WORKER_STATES.get(int(r[W_STATE]), "unknown"),
                "cpus": _cpus(int(r[W_CPUMASK])),
                "gpu": int(r[W_GPU]) if int(r[W_GPU]) >= 0 else None,
                "in_flight": int(r[W_INFLIGHT]),
                "requests": int(r[W_REQUESTS]),
                "batches": int(r[W_BATCHES]),
                "rows": int(r[W_ROWS]),
                "queued": max(int(r[W_QUEUED]), 0),
                "restarts": int(r[W_RESTARTS]),
            }
            for i, r in enumerate(rows)
        ],
    }


def collect() -> list[dict[str, Any]]:
    out = []
    for info in registry.all_servers():
        try:
            out.append(snapshot(info))
        except Exception as exc:  # a server that stopped between listing and reading
            out.append({"runner": info.runner, "namespace": info.namespace, "error": str(exc)})
    return out


def prometheus_text(snapshots: list[dict[str, Any]]) -> str:
    """The same counters in Prometheus text exposition format (through prometheus-client).

    Runner-level series carry the labels ``runner`` and ``namespace``; per-worker series add
    ``worker`` (the index; counters survive restarts of the worker). Latency is exported as a
    histogram in seconds (the log2 buckets of the control segment), batch size as a histogram
    of rows per batch, and the status command's percentiles as
    ``runnerlib_latency_quantile_seconds``.
    """
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    labels = ["runner", "namespace"]
    wlabels = labels + ["worker"]

    class _Collector:
        def collect(self) -> Iterator[Any]:
            fams: dict[str, Any] = {
                "requests": CounterMetricFamily(
                    "runnerlib_requests", "calls received by the runner's workers", labels=labels),
                "errors": CounterMetricFamily(
                    "runnerlib_errors", "calls that failed", labels=labels),
                "batches": CounterMetricFamily(
                    "runnerlib_batches", "batches (Runnable invocations) run", labels=labels),
                "exec_seconds": CounterMetricFamily(
                    "runnerlib_exec_seconds", "time spent in the Runnable", labels=labels),
                "batch_wait_seconds": CounterMetricFamily(
                    "runnerlib_batch_wait_seconds", "time calls waited for their batch",
                    labels=labels),
                "mean_batch_size": GaugeMetricFamily(
                    "runnerlib_mean_batch_size", "mean rows per batch", labels=labels),
                "queue_depth": GaugeMetricFamily(
                    "runnerlib_queue_depth", "calls waiting in the request ring", labels=labels),
                "batch_queue_depth": GaugeMetricFamily(
                    "runnerlib_batch_queue_depth", "calls the workers hold waiting for a batch",
                    labels=labels),
                "mean_batch_calls": GaugeMetricFamily(
                    "runnerlib_mean_batch_calls", "mean calls per batch", labels=labels),
                "clients": GaugeMetricFamily(
                    "runnerlib_clients", "open client channels", labels=labels),
            }
            restarts = CounterMetricFamily(
                "runnerlib_worker_restarts", "times the worker was restarted", labels=wlabels)
            w_requests = CounterMetricFamily(
                "runnerlib_worker_requests", "calls received by the worker", labels=wlabels)
            w_inflight = GaugeMetricFamily(
                "runnerlib_worker_in_flight", "calls the worker holds", labels=wlabels)
            w_up = GaugeMetricFamily(
                "runnerlib_worker_up", "1 when the worker is ready", labels=wlabels)
            w_pid = GaugeMetricFamily(
                "runnerlib_worker_pid", "process id of the worker", labels=wlabels)
            quant = GaugeMetricFamily(
                "runnerlib_latency_quantile_seconds",
                "upper bound of the log2 bucket holding the latency quantile",
                labels=labels + ["quantile"])
            latency = HistogramMetricFamily(
                "runnerlib_latency_seconds", "call latency, send to answer", labels=labels)
            bsize = HistogramMetricFamily(
                "runnerlib_batch_size_rows", "rows per batch", labels=labels)
            for snap in snapshots:
                if "error" in snap:
                    continue
                lv = [snap["runner"], snap["namespace"]]
                for key, fam in fams.items():
                    fam.add_metric(lv, snap[key])
                for w in snap["workers"]:
                    wl = lv + [str(w["index"])]
                    restarts.add_metric(wl, w["restarts"])
                    w_requests.add_metric(wl, w["requests"])
                    w_inflight.add_metric(wl, w["in_flight"])
                    w_up.add_metric(wl, 1 if w["state"] == "ready" else 0)
                    w_pid.add_metric(wl, w["pid"])
                for q, v in snap["latency_us"].items():
                    quant.add_metric(lv + ["0." + q[1:]], v / 1e6)
                hist = snap.get("latency_hist") or [0] * HIST_BUCKETS
                # the control segment keeps bucket counts only, so no _sum series for latency
                latency.add_metric(lv, _cumulative(hist, lambda i: (1 << i) / 1e6),
                                   sum_value=None)
                bh = snap.get("batch_rows_hist") or [0] * HIST_BUCKETS
                bsize.add_metric(lv, _cumulative(bh, lambda i: (1 << i) - 1),
                                 sum_value=snap["rows"])
            yield from fams.values()
            yield from (restarts, w_requests, w_inflight, w_up, w_pid, quant, latency, bsize)

    reg = CollectorRegistry()
    reg.register(_Collector())  # type: ignore[arg-type]
    return generate_latest(reg).decode()


def _cumulative(hist: list[int], bound: Callable[[int], float]) -> list[tuple[str, float]]:
    """Prometheus buckets ``(le, cumulative count)`` from log2 bucket counts; the last bucket
    of the control segment also holds everything larger, so it becomes ``+Inf``."""
    out: list[tuple[str, float]] = []
    running = 0
    for i, n in enumerate(hist[:-1]):
        running += int(n)
        out.append((repr(float(bound(i))), running))
    out.append(("+Inf", running + int(hist[-1])))
    return out

"""Counters of served runners, read from their control segments by any process."""

from __future__ import annotations

from typing import Any

import numpy as np

from runnerlib import registry
from runnerlib.control import (
    H_NWORKERS,
    HIST_BUCKETS,
    W_BATCH_HIST,
    W_BATCHES,
    W_CPUMASK,
    W_ERRORS,
    W_EXEC_NS,
    W_GPU,
    W_HIST,
    W_INFLIGHT,
    W_PID,
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
    batches = int(rows[:, W_BATCHES].sum()) if n else 0
    rows_total = int(rows[:, W_ROWS].sum()) if n else 0
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
        "mean_batch_size": rows_total / batches if batches else 0.0,
        "exec_seconds": float(rows[:, W_EXEC_NS].sum()) / 1e9 if n else 0.0,
        "batch_wait_seconds": float(rows[:, W_WAIT_NS].sum()) / 1e9 if n else 0.0,
        "latency_us": {
            "p50": percentile_from_hist(hist, 0.50),
            "p90": percentile_from_hist(hist, 0.90),
            "p99": percentile_from_hist(hist, 0.99),
        },
        "batch_size_hist": {
            f"<{1 << i}": int(c)
            for i, c in enumerate(rows[:, W_BATCH_HIST : W_BATCH_HIST + HIST_BUCKETS].sum(axis=0))
            if c
        } if n else {},
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
    """The same counters in Prometheus text exposition format (through prometheus-client)."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    reg = CollectorRegistry()
    labels = ["runner", "namespace"]
    gauges = {
        key: Gauge(f"runnerlib_{key}", help_, labels, registry=reg)
        for key, help_ in [
            ("requests", "calls received by the runner's workers"),
            ("errors", "calls that failed"),
            ("batches", "batches run"),
            ("mean_batch_size", "mean rows per batch"),
            ("queue_depth", "calls waiting in the request ring"),
            ("clients", "open client channels"),
        ]
    }
    restarts = Gauge("runnerlib_worker_restarts", "worker restarts", labels, registry=reg)
    lat = Gauge("runnerlib_latency_us", "latency percentile upper bound (us)",
                labels + ["quantile"], registry=reg)
    for snap in snapshots:
        if "error" in snap:
            continue
        lv = [snap["runner"], snap["namespace"]]
        for key, g in gauges.items():
            g.labels(*lv).set(snap[key])
        restarts.labels(*lv).set(sum(w["restarts"] for w in snap["workers"]))
        for q, v in snap["latency_us"].items():
            lat.labels(*lv, q).set(v)
    return generate_latest(reg).decode()

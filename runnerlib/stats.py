"""Counters of served runners, read from their control segments by any process.

``prometheus_text`` renders them in the Prometheus text exposition format;
``MetricsEndpoint`` serves them over HTTP (``serve --metrics-port``) with prometheus-client's
own request handler, beside ``/readyz`` and ``/livez`` (``/healthz``) probes for container
orchestrators.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from runnerlib import registry
from runnerlib._shm import budget
from runnerlib._shm.control import (
    BATCH_HIST_BUCKETS,
    H_NWORKERS,
    H_SHM_BUDGET,
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
from runnerlib._shm.protocol import shm_space

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
        owners = {owner for _slot, owner, _gen in ctl.open_channels()}
        channels = len(ctl.open_channels())
        request_ring = ctl.request_ring()[1] or info.request_ring  # the current one
        shm_budget = int(ctl.header[H_SHM_BUDGET])
        limit = budget.message_limit(ctl)
    finally:
        ctl.close()
    free, total = shm_space()
    users = {info.server_pid, *owners, *(int(p) for p in rows[:, W_PID] if p > 0)}
    queue_depth = 0
    try:
        ring = Ring.attach(request_ring)
        try:
            queue_depth = ring.pending_count()
        finally:
            ring.close()
    except Exception:
        queue_depth = -1
    hist = rows[:, W_HIST : W_HIST + HIST_BUCKETS].sum(axis=0) if n else np.zeros(HIST_BUCKETS)
    bhist = (rows[:, W_BATCH_HIST : W_BATCH_HIST + BATCH_HIST_BUCKETS].sum(axis=0) if n
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
        # shared memory: the server's budget (0: a server that predates it), the bytes its
        # processes' segments occupy (server, workers, clients: shared by every runner of the
        # server), the largest message, and /dev/shm itself
        "shm": {
            "budget": shm_budget,
            "used": budget.used_by(users),
            "message_limit": limit,
            "dev_shm_free": free,
            "dev_shm_size": total,
        },
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

    reg = CollectorRegistry()
    reg.register(RunnerCollector(lambda: snapshots))  # type: ignore[arg-type]
    return generate_latest(reg).decode()


class RunnerCollector:
    """A prometheus-client collector of the runners' counters, read at each scrape from the
    snapshots ``source()`` returns (see ``prometheus_text`` for the series)."""

    def __init__(self, source: Callable[[], Iterable[dict[str, Any]]]) -> None:
        self.source = source

    def describe(self) -> list[Any]:
        return []  # registering must not read the counters (they may not exist yet)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        snapshots = list(self.source())
        labels = ["runner", "namespace"]
        wlabels = labels + ["worker"]
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


# ------------------------------------------------------------------------------ HTTP endpoint


class MetricsEndpoint:
    """``/metrics`` (prometheus-client's ``MetricsHandler`` on a registry holding a
    ``RunnerCollector``, the process collector and, given ``multiprocess_dir``, the metrics
    worker processes write there), ``/readyz`` and ``/livez`` (also ``/healthz``) on
    ``host:port``, served by a daemon thread.

    ``ready()`` and ``live()`` return ``(ok, message)``: 200 with the message when ok, else
    503. Port 0 picks a free port (``port`` tells which).
    """

    def __init__(
        self,
        host: str,
        port: int,
        snapshots: Callable[[], Iterable[dict[str, Any]]],
        ready: Callable[[], tuple[bool, str]],
        live: Callable[[], tuple[bool, str]],
        multiprocess_dir: str | None = None,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        from http.server import ThreadingHTTPServer
        from urllib.parse import urlsplit

        from prometheus_client import CollectorRegistry, MetricsHandler, ProcessCollector

        registry = CollectorRegistry()
        registry.register(RunnerCollector(snapshots))  # type: ignore[arg-type]
        ProcessCollector(registry=registry)
        if multiprocess_dir is not None:
            # metrics the Runnables create (runnerlib.metrics / prometheus_client) in workers
            # started with PROMETHEUS_MULTIPROC_DIR set to this directory
            from prometheus_client import multiprocess

            multiprocess.MultiProcessCollector(registry, path=multiprocess_dir)
        probes = {"/readyz": ready, "/livez": live, "/healthz": live}

        class Handler(MetricsHandler):  # type: ignore[misc]
            def do_GET(self) -> None:
                path = urlsplit(self.path).path.rstrip("/") or "/"
                probe = probes.get(path)
                if probe is not None:
                    try:
                        ok, message = probe()
                    except Exception as exc:  # a probe that fails is a failed probe
                        ok, message = False, f"{type(exc).__name__}: {exc}"
                    self._plain(200 if ok else 503, message)
                elif path in ("/metrics", "/"):
                    super().do_GET()
                else:
                    self._plain(404, "not found: try /metrics, /readyz or /livez")

            def _plain(self, code: int, message: str) -> None:
                body = (message.rstrip("\n") + "\n").encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # probes every few seconds would flood the server's log

        Handler.registry = registry
        self._http = ThreadingHTTPServer((host, port), Handler)
        self._http.daemon_threads = True
        self.host = host
        self.port = int(self._http.server_address[1])
        self._on_stop = on_stop
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True,
                                        name="runnerlib-metrics")

    def start(self) -> MetricsEndpoint:
        self._thread.start()
        return self

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._http.shutdown()
        self._http.server_close()
        self._thread.join(timeout=5)
        if self._on_stop is not None:
            self._on_stop()


def readiness(snapshots: Iterable[dict[str, Any]], names: Iterable[str]) -> tuple[bool, str]:
    """Ready when every runner of ``names`` is served, its server is ready and at least one
    of its workers is ready; the message says which are not."""
    by_name = {s["runner"]: s for s in snapshots}
    waiting = []
    for name in names:
        snap = by_name.get(name)
        if snap is None:
            waiting.append(f"{name}: not served yet")
        elif "error" in snap:
            waiting.append(f"{name}: unreadable ({snap['error']})")
        elif snap["state"] != "ready":
            waiting.append(f"{name}: server {snap['state']}")
        else:
            ready = sum(w["state"] == "ready" for w in snap["workers"])
            if not ready:
                waiting.append(f"{name}: no worker ready")
    if waiting:
        return False, "not ready: " + "; ".join(waiting)
    return True, "ready"

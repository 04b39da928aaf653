"""``python -m runnerlib serve|status|cleanup``.

Exit codes: 0 success; 1 the server failed (a Runnable that cannot be built, a runner already
served, a runtime error); 2 a usage error (bad target, bad configuration file, missing
optional dependency, a metrics port that cannot be bound).

``serve --metrics-port PORT`` also serves, on ``--metrics-host`` (default 0.0.0.0):
``/metrics`` (Prometheus, through prometheus-client's own handler: this server's runner
counters and the process's), ``/readyz`` (200 once every runner has a ready worker, else
503 with what is missing) and ``/livez`` or ``/healthz`` (200 while the server runs, 503 once
it is stopping), for container orchestrators' probes. The endpoint answers from the start,
so readiness reads 503 while the workers load their models.

Metrics a Runnable creates with ``runnerlib.metrics`` (prometheus-client, as
``bentoml.metrics`` is) show on the same ``/metrics``: the workers are started with
``PROMETHEUS_MULTIPROC_DIR`` (a private directory, unless it is already set) and the endpoint
aggregates what they write there.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import time
from typing import Any

log = logging.getLogger("runnerlib.cli")


class CliError(Exception):
    """A user error: printed as one line to stderr, exit code ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def _load_target(target: str) -> list[Any]:
    """The Runner or list of Runners named by ``MODULE:ATTR`` (ATTR may be dotted)."""
    from runnerlib.runner import Runner

    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise CliError(f"expected MODULE:ATTR (for example app.runners:runner), got {target!r}")
    # like `python -m`: modules of the current directory are importable, in the workers too
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise CliError(
                f"cannot import module {module_name!r} of {target!r}: no such module "
                f"(current directory {cwd}; set PYTHONPATH or cd to where it lives)"
            ) from None
        raise CliError(f"importing {module_name!r} failed: {exc}") from exc
    except Exception as exc:
        raise CliError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CliError(f"module {module_name!r} has no attribute {attr!r}") from None
    runners = list(obj) if isinstance(obj, (list, tuple)) else [obj]
    if not runners:
        raise CliError(f"{target} is an empty list: nothing to serve")
    for r in runners:
        if not isinstance(r, Runner):
            raise CliError(
                f"{target} must be a runnerlib.Runner or a list of them, found "
                f"{type(r).__name__}"
            )
    return runners


def cmd_serve(args: argparse.Namespace) -> int:
    from runnerlib._shm.supervisor import Server
    from runnerlib.config import load_config
    from runnerlib.errors import ConfigError, RunnerError

    runners = _load_target(args.target)
    config: Any = None
    if args.config is not None:
        if not os.path.isfile(args.config):
            raise CliError(f"configuration file {args.config!r} does not exist")
        try:
            config = load_config(args.config)
        except (ConfigError, ValueError, OSError) as exc:
            raise CliError(f"configuration file {args.config}: {exc}") from exc
    server = Server(runners, config=config)
    signals: list[int] = []
    stopping: list[bool] = []  # probes read it: readiness and liveness fail once it is set
    endpoint = _metrics_endpoint(args, server, [r.name for r in runners], stopping)

    def stop(signum: int, frame: Any) -> None:
        if signals:
            log.warning("already stopping (draining in-flight calls)")
        signals.append(signum)
        stopping.append(True)
        server.request_stop()

    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            server.start()
        except ConfigError as exc:
            raise CliError(str(exc)) from exc
        except RunnerError as exc:
            raise CliError(str(exc), code=1) from exc
        except Exception as exc:  # a Runnable whose __init__ raised, re-raised as its own type
            raise CliError(f"could not start: {type(exc).__name__}: {exc}", code=1) from exc
        names = ", ".join(r.name for r in runners)
        print(f"runnerlib: serving {names} (pid {os.getpid()}, namespace "
              f"{server.namespace}); Ctrl-C or SIGTERM to stop", flush=True)
        try:
            server.wait()
        finally:
            stopping.append(True)
            server.stop()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if endpoint is not None:
            endpoint.stop()
    why = f" on {signal.Signals(signals[0]).name}" if signals else ""
    print(f"runnerlib: stopped{why}", flush=True)
    return 0


def _metrics_endpoint(args: argparse.Namespace, server: Any, names: list[str],
                      stopping: list[bool]) -> Any:
    """The ``--metrics-port`` endpoint of ``serve``, started (None without the option)."""
    if args.metrics_port is None:
        return None
    try:
        import prometheus_client  # noqa: F401

        from runnerlib import stats
    except ImportError:
        raise CliError("serve --metrics-port needs prometheus-client: "
                       "pip install prometheus-client") from None
    pid = os.getpid()

    def ours() -> list[dict[str, Any]]:
        return [s for s in stats.collect()
                if s.get("runner") in names and s.get("namespace") == server.namespace
                and s.get("server_pid", pid) == pid]

    def ready() -> tuple[bool, str]:
        if stopping:
            return False, "stopping"
        return stats.readiness(ours(), names)

    def live() -> tuple[bool, str]:
        return (False, "stopping") if stopping else (True, "live")

    shared = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    own = None
    if not shared:
        import tempfile

        own = tempfile.mkdtemp(prefix="runnerlib-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = own  # inherited by the workers
    try:
        endpoint = stats.MetricsEndpoint(
            args.metrics_host, args.metrics_port, ours, ready, live,
            multiprocess_dir=shared or own, on_stop=lambda: _remove_dir(own),
        ).start()
    except OSError as exc:
        _remove_dir(own)
        raise CliError(f"--metrics-port {args.metrics_port}: cannot listen on "
                       f"{args.metrics_host}:{args.metrics_port}: {exc.strerror or exc}"
                       ) from None
    print(f"runnerlib: metrics on http://{args.metrics_host}:{endpoint.port}/metrics, probes "
          "/readyz and /livez", flush=True)
    return endpoint


def _remove_dir(path: str | None) -> None:
    if path is not None:
        import shutil

        shutil.rmtree(path, ignore_errors=True)


def _ranges(cpus: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    if not cpus:
        return "-"
    out: list[str] = []
    start = prev = cpus[0]
    for c in [*cpus[1:], None]:
        if c is not None and c == prev + 1:
            prev = c
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if c is not None:
            start = prev = c
    return ",".join(out)


def _us(v: float) -> str:
    if v >= 1_000_000:
        return f"{v / 1e6:.3g} s"
    if v >= 1000:
        return f"{v / 1000:.3g} ms"
    return f"{v:.0f} us"


def _fmt(snap: dict[str, Any]) -> str:
    if "error" in snap:
        return f"{snap['runner']} [{snap['namespace']}]: unreadable ({snap['error']})"
    lat = snap["latency_us"]
    up = max(0.0, time.time() - snap.get("started", time.time()))
    queue = "?" if snap["queue_depth"] < 0 else str(snap["queue_depth"])
    if snap.get("batch_queue_depth"):
        queue += f" (+{snap['batch_queue_depth']} in batchers)"
    if snap["requests"] and any(lat.values()):
        latency = (f"p50 < {_us(lat['p50'])}  p90 < {_us(lat['p90'])}  "
                   f"p99 < {_us(lat['p99'])}")
    else:
        latency = "- (no calls yet)"
    lines = [
        f"runner {snap['runner']}  (namespace {snap['namespace']}, server pid "
        f"{snap['server_pid']}, {snap['state']}, up {up:.0f} s)",
        f"  runnable    {snap['runnable']}",
        f"  requests    {snap['requests']}   errors {snap['errors']}   queue depth {queue}   "
        f"clients {snap['clients']}",
        f"  batches     {snap['batches']}   mean batch size {snap['mean_batch_size']:.2f}",
        f"  latency     {latency}",
        f"  restarts    {sum(w['restarts'] for w in snap['workers'])}",
        _fmt_shm(snap.get("shm")),
        "  workers",
        f"    {'#':>3} {'pid':>8} {'state':<9} {'cpus':<10} {'gpu':<4} {'requests':>9} "
        f"{'batches':>8} {'in-flight':>9} {'restarts':>8}",
    ]
    for w in snap["workers"]:
        gpu = "-" if w["gpu"] is None else str(w["gpu"])
        lines.append(
            f"    {w['index']:>3} {w['pid']:>8} {w['state']:<9} {_ranges(w['cpus']):<10} "
            f"{gpu:<4} {w['requests']:>9} {w['batches']:>8} {w['in_flight']:>9} "
            f"{w['restarts']:>8}"
        )
    return "\n".join(lines)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _fmt_shm(shm: dict[str, int] | None) -> str:
    """The shared-memory line: the server's budget, what its processes use, /dev/shm."""
    if not shm:
        return "  shm         -"
    mib = _mib
    budget = mib(shm["budget"]) if shm["budget"] else "- (server predates budgets)"
    return (f"  shm         budget {budget}   used {mib(shm['used'])}   largest message "
            f"{mib(shm['message_limit']) if shm['message_limit'] else '-'}   /dev/shm "
            f"{mib(shm['dev_shm_free'])} free of {mib(shm['dev_shm_size'])}")


def cmd_status(args: argparse.Namespace) -> int:
    from runnerlib import stats

    snaps = stats.collect()
    if args.prometheus:
        try:
            text = stats.prometheus_text(snaps)
        except ImportError:
            raise CliError("status --prometheus needs prometheus-client: "
                           "pip install prometheus-client") from None
        sys.stdout.write(text)
    elif args.json:
        sys.stdout.write(json.dumps(snaps, indent=2) + "\n")
    elif not snaps:
        sys.stdout.write("no runnerlib server is running for this user\n")
    else:
        sys.stdout.write("\n\n".join(_fmt(s) for s in snaps) + "\n")
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    from ipc.segment import cleanup_stale

    removed = cleanup_stale(legacy=args.legacy)
    for name in removed:
        print(f"removed {name}")
    print(f"{len(removed)} stale segment(s) removed")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runnerlib",
                                     description="Serve and inspect runnerlib runners.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log at INFO level (default WARNING)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="serve a Runner (or a list) until SIGTERM/Ctrl-C")
    p.add_argument("target", help="MODULE:ATTR naming a Runner or a list of Runners")
    p.add_argument("--config", help="YAML, TOML or JSON configuration file")
    p.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="serve /metrics (Prometheus), /readyz and /livez on this port")
    p.add_argument("--metrics-host", default="0.0.0.0", metavar="HOST",
                   help="address for --metrics-port (default 0.0.0.0)")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("status", help="show every running server of this user")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON")
    fmt.add_argument("--prometheus", action="store_true", help="Prometheus text exposition")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("cleanup", help="remove segments left by dead processes")
    p.add_argument("--legacy", action="store_true",
                   help="also remove segments of runnerlib versions without liveness locks "
                        "whose pid is dead in this pid namespace (only where all of them ran "
                        "in this one)")
    p.set_defaults(func=cmd_cleanup)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"python -m runnerlib {args.command}: error: {exc}", file=sys.stderr)
        return exc.code
    except BrokenPipeError:  # `status | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0

"""``python -m runnerlib serve|status|cleanup``."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import signal
import sys
from typing import Any


def _load_target(target: str) -> list[Any]:
    from runnerlib.runner import Runner

    module_name, sep, attr = target.partition(":")
    if not sep or not attr:
        raise SystemExit(f"serve: expected MODULE:ATTR (for example app.runners:runner), got "
                         f"{target!r}")
    if "" not in sys.path:
        sys.path.insert(0, "")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    runners = obj if isinstance(obj, (list, tuple)) else [obj]
    for r in runners:
        if not isinstance(r, Runner):
            raise SystemExit(f"serve: {target} must be a runnerlib.Runner or a list of them, "
                             f"found {type(r).__name__}")
    return list(runners)


def cmd_serve(args: argparse.Namespace) -> int:
    from runnerlib.server import Server

    runners = _load_target(args.target)
    server = Server(runners, config=args.config)

    def stop(signum: int, frame: Any) -> None:
        server._stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.start()
    names = ", ".join(r.name for r in runners)
    print(f"runnerlib: serving {names} (pid {__import__('os').getpid()}); Ctrl-C to stop",
          flush=True)
    try:
        server.wait()
    finally:
        server.stop()
    print("runnerlib: stopped", flush=True)
    return 0


def _fmt(snap: dict[str, Any]) -> str:
    if "error" in snap:
        return f"{snap['runner']} [{snap['namespace']}]: unreadable ({snap['error']})"
    lat = snap["latency_us"]
    lines = [
        f"{snap['runner']} [{snap['namespace']}] server pid {snap['server_pid']} "
        f"{snap['state']} runnable {snap['runnable']}",
        f"  requests {snap['requests']}  errors {snap['errors']}  batches {snap['batches']}  "
        f"mean batch {snap['mean_batch_size']:.2f}  queue {snap['queue_depth']}  "
        f"clients {snap['clients']}",
        f"  latency p50 <{lat['p50']:.0f} us  p90 <{lat['p90']:.0f} us  p99 <{lat['p99']:.0f} us",
    ]
    for w in snap["workers"]:
        gpu = "-" if w["gpu"] is None else w["gpu"]
        lines.append(
            f"  worker {w['index']}: pid {w['pid']} {w['state']} cpus {w['cpus']} gpu {gpu} "
            f"requests {w['requests']} in-flight {w['in_flight']} restarts {w['restarts']}"
        )
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    from runnerlib import stats

    snaps = stats.collect()
    if args.prometheus:
        try:
            print(stats.prometheus_text(snaps), end="")
        except ImportError:
            print("status --prometheus needs prometheus-client: pip install prometheus-client",
                  file=sys.stderr)
            return 2
    elif args.json:
        print(json.dumps(snaps, indent=2))
    elif not snaps:
        print("no runnerlib server is running for this user")
    else:
        print("\n\n".join(_fmt(s) for s in snaps))
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    from ipc.segment import cleanup_stale

    removed = cleanup_stale()
    for name in removed:
        print(f"removed {name}")
    print(f"{len(removed)} stale segment(s) removed")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runnerlib",
                                     description="Serve and inspect runnerlib runners.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="serve a Runner (or a list) until SIGTERM/Ctrl-C")
    p.add_argument("target", help="MODULE:ATTR naming a Runner or a list of Runners")
    p.add_argument("--config", help="YAML, TOML or JSON configuration file")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("status", help="show every running server of this user")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--prometheus", action="store_true", help="Prometheus text exposition")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("cleanup", help="remove segments left by dead processes")
    p.set_defaults(func=cmd_cleanup)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(name)s %(levelname)s %(message)s")
    return int(args.func(args))

"""`python -m benchmarks`: run the scenarios, each isolated in its own process, and report.

Each scenario runs in a fresh spawn-context process that starts its own session, so that a
scenario that hangs or crashes (the runnerlib core not being ready, say) is killed with
everything it started, its leftovers are swept, and the suite goes on with the next one.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
import traceback

from . import report
from .measure import machine_info, pid_alive, scenario_processes, session_members


@dataclasses.dataclass
class Plan:
    """Iteration counts and durations; --quick and --scale shrink them."""

    quick: bool = False
    seq_iters: dict = dataclasses.field(default_factory=dict)
    seq_warmup: dict = dataclasses.field(default_factory=dict)
    pingpong_iters: int = 20_000
    pingpong_warmup: int = 500
    copyto_reps: int = 20
    image_copy_iters: int = 2_000
    image_copy_warmup: int = 200
    callers: int = 64
    coroutines_per_client: int = 16
    load_duration: float = 10.0
    load_warmup_rounds: int = 20
    scale_duration: float = 3.0
    pool_duration: float = 3.0
    idle_s: float = 2.0

    @classmethod
    def make(cls, quick: bool, scale: float) -> Plan:
        if quick:
            p = cls(
                quick=True,
                pingpong_iters=3_000,
                pingpong_warmup=200,
                copyto_reps=5,
                image_copy_iters=300,
                image_copy_warmup=50,
                load_duration=1.0,
                load_warmup_rounds=5,
                scale_duration=0.5,
                pool_duration=0.5,
                idle_s=0.5,
            )
            iters = {"f32_1x16": 300, "f32_1x3x224x224": 100, "f32_64MiB": 3}
            warm = {"f32_1x16": 50, "f32_1x3x224x224": 10, "f32_64MiB": 0}
            iters.update(f32_1x16_idle1ms=100, shared_64MiB=5)
            warm.update(f32_1x16_idle1ms=10, shared_64MiB=1)
            peer = {"f32_1x16": (200, 20), "f32_1x3x224x224": (50, 5), "f32_64MiB": (2, 0)}
        else:
            p = cls()
            iters = {"f32_1x16": 2_000, "f32_1x3x224x224": 500, "f32_64MiB": 20}
            warm = {"f32_1x16": 200, "f32_1x3x224x224": 50, "f32_64MiB": 2}
            iters.update(f32_1x16_idle1ms=500, shared_64MiB=20)
            warm.update(f32_1x16_idle1ms=20, shared_64MiB=2)
            peer = {"f32_1x16": (1000, 50), "f32_1x3x224x224": (200, 10), "f32_64MiB": (5, 1)}
        for name, (n_peer, w_peer) in peer.items():  # the peers are 50-1000x slower per call
            iters[f"peer_{name}"], warm[f"peer_{name}"] = n_peer, w_peer

        def n(v: int) -> int:
            return max(1 if v else 0, round(v * scale))

        def t(v: float) -> float:
            return max(0.2, v * scale)

        p.seq_iters = {k: n(v) for k, v in iters.items()}
        p.seq_warmup = {k: n(v) for k, v in warm.items()}
        p.pingpong_iters, p.pingpong_warmup = n(p.pingpong_iters), n(p.pingpong_warmup)
        p.copyto_reps = n(p.copyto_reps)
        p.image_copy_iters, p.image_copy_warmup = n(p.image_copy_iters), n(p.image_copy_warmup)
        p.load_warmup_rounds = n(p.load_warmup_rounds)
        p.load_duration, p.scale_duration = t(p.load_duration), t(p.scale_duration)
        p.pool_duration, p.idle_s = t(p.pool_duration), t(p.idle_s)
        return p


# name -> (module:function, what it measures, time limit in seconds given the plan)
SCENARIOS: dict[str, tuple[str, str, object]] = {
    "floors": (
        "floors:run",
        "semaphore and busy-poll ping-pong, numpy.copyto",
        lambda p: 60,
    ),
    "baseline": (
        "baseline:run",
        "multiprocessing.Pool(1), pickle over pipes",
        lambda p: 120 + 2 * p.pool_duration,
    ),
    "sequential": ("runner_scenarios:sequential", "runnerlib run() round trips", lambda p: 150),
    "shared": (
        "runner_scenarios:shared",
        "64 MiB runnerlib.shared_array in, in and out, written by the method",
        lambda p: 120,
    ),
    "concurrency": (
        "runner_scenarios:concurrency",
        "64 async_run callers, batching on/off",
        lambda p: 2 * (p.load_duration + 90),
    ),
    "scaling": (
        "runner_scenarios:scaling",
        "1/2/4 clients x 1/2 workers",
        lambda p: 6 * (p.scale_duration + 45),
    ),
    "idle": ("runner_scenarios:idle", "idle server CPU", lambda p: 60 + p.idle_s),
    # peers: measured when installed (benchmarks/run --peers), a status row otherwise
    "bentoml": (
        "peers:bentoml_runner",
        "BentoML 1.4 legacy runner hop, HTTP over its Unix socket",
        lambda p: 240 + 2 * p.load_duration,
    ),
    "ray_serve": (
        "peers:ray_serve",
        "Ray Serve deployment handle",
        lambda p: 300 + 2 * p.load_duration,
    ),
}
GROUPS = {
    "runnerlib": ["sequential", "shared", "concurrency", "scaling", "idle"],
    "peers": ["bentoml", "ray_serve"],
}


def _scenario_process(name: str, plan: Plan, conn) -> None:
    """Child entry point: own session (so the suite can kill its tree), stdout kept clean."""
    os.setsid()
    os.dup2(2, 1)  # anything the scenario or runnerlib prints must not land in the table
    try:
        import importlib

        modname, fn = SCENARIOS[name][0].split(":")
        func = getattr(importlib.import_module(f"benchmarks.{modname}"), fn)
        result = func(plan, lambda msg: conn.send(("progress", msg)))
        conn.send(("result", result))
    except BaseException as e:  # noqa: BLE001 - reported in the table row
        conn.send(("error", (f"{type(e).__name__}: {e}", traceback.format_exc())))
    finally:
        conn.close()


class Progress:
    """One status line on stderr: rewritten in place on a terminal, plain lines otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.t0 = time.monotonic()

    def __call__(self, text: str) -> None:
        line = f"[{time.monotonic() - self.t0:6.1f}s] {text}"
        if self.tty:
            sys.stderr.write("\r\x1b[K" + line[:160])
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self.tty:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def run_scenario(name: str, plan: Plan, progress: Progress, prefix: str) -> dict:
    """Run one scenario in its own process; never raises for a scenario failure."""
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_scenario_process, args=(name, plan, send), name=f"bench-{name}")
    shm_before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    limit = float(SCENARIOS[name][2](plan))
    t0 = time.monotonic()
    out: dict = {"ok": False, "error": None, "results": None}
    proc.start()
    send.close()
    seen: set[int] = set()  # every process seen in the scenario's tree or session
    try:
        progress(f"{prefix} {name}: starting")
        while True:
            seen |= scenario_processes(proc.pid)
            if time.monotonic() - t0 > limit:
                out["error"] = f"TimeoutError: scenario exceeded its {limit:.0f} s limit"
                break
            if not recv.poll(0.2):
                continue
            try:
                kind, payload = recv.recv()
            except EOFError:
                out["error"] = f"scenario process died (exit code {proc.exitcode})"
                break
            if kind == "progress":
                progress(f"{prefix} {name}: {payload}")
            elif kind == "result":
                out.update(ok=True, results=payload)
                break
            else:
                out["error"], out["traceback"] = payload
                break
    finally:
        proc.join(15 if out["ok"] or out["error"] is None else 2)
        out["seconds"] = round(time.monotonic() - t0, 2)
        left = _reap(proc)
        if left:
            out["leftover_processes"] = left
        leaked = _sweep_shm(proc.pid, shm_before, seen | {proc.pid})
        if leaked:
            out["leaked_shm"] = leaked
        recv.close()
    return out


def _reap(proc) -> list[int]:
    """Kill whatever is left in the scenario's session; returns the pids that were left."""
    sid = proc.pid
    left = sorted(session_members(sid))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not left and not proc.is_alive():
            break
        try:
            os.killpg(sid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        for pid in session_members(sid):  # members that left the process group
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and (session_members(sid) or proc.is_alive()):
            time.sleep(0.05)
            proc.join(0)
    proc.join(1)
    return [p for p in left if p != sid]


def _sweep_shm(pid: int, before: set[str], ours: set[int]) -> list[str]:
    """Unlink our semaphores left by `pid`; report stale runnerlib segments that appeared.

    Stale means named `rl.<owner pid>.*` (docs/design.md), new since the scenario began, with a
    dead owner that was one of the scenario's processes (`ours`: other programs on the host
    keep their entries): removed with the public `python -m runnerlib cleanup` (which also knows
    the doorbell FIFOs), then directly if that could not.
    """
    for path in glob.glob(f"/dev/shm/sem.rlbench-{pid}-*"):
        try:
            os.unlink(path)
        except OSError:
            pass
    if not os.path.isdir("/dev/shm"):
        return []
    stale = []
    for entry in set(os.listdir("/dev/shm")) - before:
        parts = entry.split(".")
        if parts[0] == "rl" and len(parts) > 2 and parts[1].isdigit():
            if int(parts[1]) in ours and not pid_alive(int(parts[1])):
                stale.append(entry)
    if stale:
        try:
            subprocess.run(
                [sys.executable, "-m", "runnerlib", "cleanup"],
                timeout=30,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            pass
        for entry in stale:  # what the CLI could not remove: new here, owner dead
            try:
                os.unlink(os.path.join("/dev/shm", entry))
            except OSError:
                pass
    return sorted(stale)


def _status(res: dict) -> str:
    if not res["ok"]:
        return f"FAILED ({res['error'].splitlines()[0]})"
    if isinstance(res["results"], dict) and res["results"].get("skipped"):
        return f"skipped: {res['results']['skipped']}"
    bad = [path for path, _ in report.case_errors(res["results"])]
    return f"done, but {', '.join(bad)} failed" if bad else "ok"


def parse_args(argv=None) -> argparse.Namespace:
    names = ", ".join([*SCENARIOS, *GROUPS])
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="runnerlib benchmark suite: runnerlib beside a multiprocessing baseline, "
        "the same-run floors, the targets and BentoML's reference figures.",
    )
    ap.add_argument("--quick", action="store_true", help="fewer iterations (about 20 s)")
    ap.add_argument(
        "--json",
        metavar="FILE",
        default="benchmark-results.json",
        help="write every figure and machine info here ('' to skip; default %(default)s)",
    )
    ap.add_argument(
        "--png",
        metavar="FILE",
        default="benchmark-results.png",
        help="chart, when matplotlib is installed ('' to skip; default %(default)s)",
    )
    ap.add_argument("--only", metavar="NAME,...", help=f"run only these: {names}")
    ap.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply iteration counts and durations (smoke runs: 0.1)",
    )
    ap.add_argument(
        "--strict", action="store_true", help="exit 1 if a scenario failed or a target was missed"
    )
    args = ap.parse_args(argv)
    if args.only:
        chosen: list[str] = []
        for item in (s.strip() for s in args.only.split(",") if s.strip()):
            if item in GROUPS:
                chosen += GROUPS[item]
            elif item in SCENARIOS:
                chosen.append(item)
            else:
                ap.error(f"unknown scenario {item!r}; choose from {names}")
        args.scenarios = [s for s in SCENARIOS if s in chosen]
    else:
        args.scenarios = list(SCENARIOS)
    if args.scale <= 0:
        ap.error("--scale must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    plan = Plan.make(args.quick, args.scale)
    # Servers of this run live in their own namespace: no clash with anything else running.
    os.environ.setdefault("RUNNERLIB_NAMESPACE", f"bench-{os.getpid()}")
    progress = Progress()
    doc: dict = {
        "machine": machine_info(),
        "plan": dataclasses.asdict(plan),
        "namespace": os.environ["RUNNERLIB_NAMESPACE"],
        "scenarios": {},
    }
    total = len(args.scenarios)
    try:
        for i, name in enumerate(args.scenarios, 1):
            res = run_scenario(name, plan, progress, f"[{i}/{total}]")
            doc["scenarios"][name] = res
            progress(f"[{i}/{total}] {name}: {_status(res)} in {res['seconds']:.1f} s")
            if progress.tty:
                sys.stderr.write("\n")  # keep each scenario's final line
    finally:
        progress.done()

    rows = report.build_rows(doc)
    doc["table"] = rows
    print(report.render(doc, rows))
    if args.json:
        report.write_json(doc, args.json)
        print(f"\nJSON: {args.json}", file=sys.stderr)
    if args.png:
        note = report.write_png(doc, args.png)
        print(f"chart: {note}", file=sys.stderr)
    failed = [n for n, r in doc["scenarios"].items() if not r["ok"]]
    missed = [r["figure"] for r in rows if r.get("verdict") == "MISS"]
    if args.strict and (failed or missed):
        return 1
    return 0

"""The worker start-up handshake: how the supervisor starts a worker and learns it is ready.

The supervisor runs ``python -m runnerlib._shm.worker --control-fd N`` with the worker's
environment already set (CUDA_VISIBLE_DEVICES, thread variables). Fd N is one end of a private
socket pair, the worker's control channel: the supervisor writes the ``WorkerSpec`` as one JSON
line on it, the worker pins itself, imports the Runnable's module (which then sees the
environment), builds the Runnable and answers one JSON line, ``{"ok": true}`` or the error that
stopped it. The Runnable's stdout and stderr are a separate pipe that the supervisor copies to
its own stderr, each line prefixed with ``[runner:worker]``, so that no amount of printing can
touch the handshake or block a call.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import runpy
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import BinaryIO, TextIO

import msgspec

from runnerlib import errors
from runnerlib._shm.protocol import ErrorPayload, rebuild_exception
from runnerlib.settings import MethodSpec, OnOverload

WORKER_MODULE = "runnerlib._shm.worker"
_PKG_ROOT = str(Path(__file__).resolve().parent.parent.parent)


class WorkerSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a worker needs, sent over its control channel at start."""

    runner: str
    index: int
    class_ref: str
    init_params: bytes
    methods: list[MethodSpec]
    control: str
    request_ring: str
    held: str = ""  # the worker's held-calls table (control.HeldCalls), made by the supervisor
    cpus: list[int] = []
    main_path: str | None = None
    sys_path: list[str] = []
    allow_pickle: bool = True
    batching_enabled: bool = True
    on_overload: OnOverload = "queue"
    log_level: int = logging.WARNING


class Ready(msgspec.Struct, frozen=True, kw_only=True):
    """The worker's one answer: ok, or the payload of the error that stopped it."""

    ok: bool
    error: ErrorPayload | None = None


def import_class(ref: str, main_path: str | None) -> type:
    """Import ``module:qualname``; a class of the parent's ``__main__`` is found by running the
    parent's script as ``__mp_main__`` (its ``if __name__ == "__main__":`` block stays idle)."""
    module_name, _, qualname = ref.partition(":")
    module: ModuleType
    if module_name == "__main__":
        if "__mp_main__" not in sys.modules:
            if not main_path:
                raise ImportError(
                    f"{ref}: the Runnable is defined in __main__ of an interactive session; "
                    "define it in an importable module"
                )
            mod_globals = runpy.run_path(main_path, run_name="__mp_main__")
            module = ModuleType("__mp_main__")
            module.__dict__.update(mod_globals)
            sys.modules["__mp_main__"] = module
        module = sys.modules["__mp_main__"]
    else:
        module = importlib.import_module(module_name)
    obj: object = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise TypeError(f"{ref} is not a class")
    return obj


# -- the supervisor's side -------------------------------------------------------------------


class Launched:
    """A started worker process: its Popen, its control channel, its output pump."""

    def __init__(self, proc: subprocess.Popen[bytes], control: socket.socket,
                 pump: threading.Thread) -> None:
        self.proc = proc
        self.control = control
        self.pump = pump

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close(self, output_wait: float = 5.0) -> None:
        """Close the control channel; once the process has exited, wait (a bounded time) for
        the last of its output to be copied, so that its pipe is closed too."""
        with contextlib.suppress(OSError):
            self.control.close()
        if self.proc.poll() is not None:
            self.pump.join(output_wait)


def launch(spec: WorkerSpec, env: dict[str, str], label: str, sink: TextIO | None = None
           ) -> Launched:
    """Start a worker process for ``spec`` with ``env`` added to this process's environment;
    its output goes to ``sink`` (default: this process's stderr), prefixed with ``label``."""
    full_env = dict(os.environ)
    full_env.update(env)
    full_env["PYTHONPATH"] = os.pathsep.join(
        [_PKG_ROOT] + [p for p in full_env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    full_env["PYTHONUNBUFFERED"] = "1"  # a print shows when it happens, not at exit
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    out_r, out_w = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", WORKER_MODULE, "--control-fd", str(theirs.fileno())],
            stdin=subprocess.DEVNULL,
            stdout=out_w,
            stderr=out_w,
            env=full_env,
            pass_fds=(theirs.fileno(),),
        )
    except BaseException:
        ours.close()
        os.close(out_r)
        raise
    finally:
        theirs.close()
        os.close(out_w)
    pump = threading.Thread(target=_pump, args=(out_r, f"[{label}] ", sink), daemon=True,
                            name=f"runnerlib-output-{label}")
    pump.start()
    ours.sendall(msgspec.json.encode(spec) + b"\n")
    return Launched(proc, ours, pump)


def _pump(fd: int, prefix: str, sink: TextIO | None) -> None:
    """Copy a worker's output to ``sink`` line by line, prefixed, until the worker exits."""
    with os.fdopen(fd, "rb") as src:
        for line in src:
            out = sink if sink is not None else sys.stderr
            with contextlib.suppress(Exception):  # a closed or broken sink loses output only
                out.write(prefix + line.decode("utf-8", "replace").rstrip("\n") + "\n")
                out.flush()


def await_ready(w: Launched, runner: str, index: int, deadline: float, timeout_hint: str
                ) -> None:
    """Wait for the worker's answer; raise the Runnable's own error if it failed to start."""
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise errors.RunnerError(
                f"runner {runner!r}: worker {index} did not build its Runnable within "
                f"{timeout_hint}"
            )
        w.control.settimeout(min(left, 0.5))
        try:
            chunk = w.control.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            code = w.proc.wait()
            raise errors.RunnerError(
                f"runner {runner!r}: worker {index} exited with code {code} before it was ready "
                "(its output is above, prefixed with the runner and worker)"
            )
        line += chunk
    try:
        msg = msgspec.json.decode(line, type=Ready)
    except msgspec.DecodeError as exc:
        w.proc.kill()
        w.proc.wait()
        raise errors.ProtocolError(f"runner {runner!r}: worker {index} answered {line!r:.200}"
                                   ) from exc
    if not msg.ok:
        w.proc.wait()
        raise rebuild_exception(msg.error, f"runner {runner!r} failed to start: ")


# -- the worker's side -----------------------------------------------------------------------


def receive_spec(control: socket.socket) -> WorkerSpec:
    f: BinaryIO = control.makefile("rb")
    return msgspec.json.decode(f.readline(), type=WorkerSpec)


def answer_ready(control: socket.socket, error: ErrorPayload | None = None) -> None:
    control.sendall(msgspec.json.encode(Ready(ok=error is None, error=error)) + b"\n")

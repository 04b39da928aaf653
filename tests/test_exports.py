"""The public names of ``runnerlib``, ``ipc`` and ``batching``, pinned.

A name added to or removed from an ``__all__`` is an API change: it must show up here too.
``ipc`` and ``batching`` are standalone layers: importing either one loads neither runnerlib
nor the other (checked in a fresh interpreter, since this one has imported everything).
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

RUNNERLIB = [
    "ConfigError",
    "DefaultStrategy",
    "EncodeError",
    "NotFound",
    "ProtocolError",
    "TransportError",
    "RemoteError",
    "Runnable",
    "shared_array",
    "Runner",
    "RunnerError",
    "RunnerMethod",
    "RunnerOverloaded",
    "RunnerTimeout",
    "Server",  # lazy: imported on first access (module __getattr__)
    "ServerNotFound",
    "StateError",
    "Strategy",
    "WorkerDied",
]

IPC = [
    "AtomicWord",
    "CorruptRecord",
    "Doorbell",
    "EncodeError",
    "Encoded",
    "IpcError",
    "Record",
    "Reservation",
    "Ring",
    "RingFull",
    "Segment",
    "SegmentError",
    "address_of",
    "cas64",
    "cleanup_stale",
    "decode",
    "encode",
    "fence",
    "fetch_add64",
    "list_segments",
    "load64",
    "owner_alive",
    "owner_pid",
    "parse_name",
    "pid_alive",
    "store64",
]

BATCHING = [
    "ArrivalEstimator",
    "Assembler",
    "BatchingError",
    "LatencyModel",
    "Outcome",
    "Overloaded",
    "PendingCall",
    "call_signature",
    "join",
    "join_calls",
    "join_results",
    "kind_of",
    "run_batch",
    "run_batch_async",
    "split",
    "split_call",
    "split_result",
]

EXPORTS = {"runnerlib": RUNNERLIB, "ipc": IPC, "batching": BATCHING}


@pytest.mark.parametrize("package", sorted(EXPORTS))
def test_all_is_exactly_the_pinned_names(package):
    names = importlib.import_module(package).__all__
    assert len(names) == len(set(names)), f"{package}.__all__ lists a name twice"
    assert sorted(names) == sorted(EXPORTS[package])


@pytest.mark.parametrize(
    ("package", "name"), [(p, n) for p, names in sorted(EXPORTS.items()) for n in names]
)
def test_every_public_name_is_importable(package, name):
    module = importlib.import_module(package)
    assert getattr(module, name) is not None
    namespace: dict[str, object] = {}
    exec(f"from {package} import {name}", namespace)  # the form users write
    assert namespace[name] is getattr(module, name)


@pytest.mark.parametrize(
    ("package", "others"),
    [("ipc", ("runnerlib", "batching")), ("batching", ("runnerlib", "ipc"))],
)
def test_standalone_layer_imports_neither_runnerlib_nor_the_other(package, others):
    code = (
        f"import sys, {package}\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {others!r})\n"
        f"assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr

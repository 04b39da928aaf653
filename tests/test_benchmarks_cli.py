"""The benchmark suite's CLI runs end to end (floors and baseline only) and writes its JSON.

No timing assertions: speed goals are judged by the suite's table, never by tests (SPEC 11).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_floors_and_baseline_write_expected_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            "--scale",
            "0.05",
            "--only",
            "floors,baseline",
            "--json",
            str(out),
            "--png",
            str(tmp_path / "b.png"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr
    assert "| figure" in proc.stdout  # the table went to stdout
    if importlib.util.find_spec("matplotlib") is not None:
        png = (tmp_path / "b.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 10_000
    else:
        assert "matplotlib is not installed" in proc.stdout
    doc = json.loads(out.read_text())

    assert {"machine", "plan", "scenarios", "table"} <= doc.keys()
    for key in ("cpu_model", "cores", "python", "numpy", "pyarrow", "date"):
        assert doc["machine"][key], key
    assert list(doc["scenarios"]) == ["floors", "baseline"]
    for name, scen in doc["scenarios"].items():
        assert scen["ok"], (name, scen.get("traceback"))

    floors = doc["scenarios"]["floors"]["results"]
    assert {"sem_pingpong_same_cpu", "copyto_64MiB"} <= floors.keys()
    if len(os.sched_getaffinity(0)) >= 2:
        assert floors["sem_pingpong_diff_cpu"]["p50_us"] > 0
    assert floors["copyto_64MiB"]["gb_s"] > 0

    base = doc["scenarios"]["baseline"]["results"]
    for payload in ("f32_1x16", "f32_1x3x224x224", "f32_64MiB"):
        assert {"p50_us", "p99_us", "n"} <= base["sequential"][payload].keys()
    assert base["throughput"]["errors"] == 0
    assert base["throughput"]["req_s"] > 0

    figures = {row["key"]: row for row in doc["table"]}
    assert "sequential.f32_1x16" in figures and "floors.copyto_64MiB" in figures
    assert figures["sequential.f32_1x16"]["runnerlib"] == "not run"


def test_unknown_scenario_is_a_usage_error():
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--only", "nope"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "unknown scenario" in proc.stderr


def test_report_names_a_client_that_shared_the_workers_cpu():
    from benchmarks.report import _placement

    apart = {"worker_cpus": [1], "f32_1x16": {"client_cpu_samples": [0, 0, 0]}}
    assert _placement(apart) == "Sequential calls: client on CPU(s) [0], worker pinned to [1]."
    shared = {"worker_cpus": [1], "f32_1x16": {"client_cpu_samples": [1, 1, 0, 0]}}
    assert "in 2 of 4 samples" in _placement(shared)
    assert _placement({"f32_1x16": {"p50_us": 1.0}}) is None  # older JSON: nothing to say

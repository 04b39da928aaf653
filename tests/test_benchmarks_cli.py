"""The benchmark suite's CLI runs end to end (floors and baseline only) and writes its JSON.

No timing assertions: speed goals are judged by the suite's table, never by tests (SPEC 11).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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

    apart = {"worker_cpus": [1], "f32_1x16": {"client_cpu_samples": [0, 0, 0], "pinned": None}}
    text = _placement(apart)
    assert text.startswith("Sequential calls: worker pinned to CPU(s) [1];")
    assert "float32[1,16] unpinned {0: 3}" in text and "worker's CPU" not in text
    shared = {
        "worker_cpus": [1],
        "f32_1x16": {"client_cpu_samples": [1, 1, 0, 0], "pinned": None},
        "f32_1x16_pinned": {"client_cpu_samples": [0, 0], "pinned": 0},
    }
    text = _placement(shared)
    assert "float32[1,16] pinned {0: 2}" in text
    assert "in 2 of 4 samples" in text  # the pinned client's samples are not counted
    assert _placement({"f32_1x16": {"p50_us": 1.0}}) is None  # older JSON: nothing to say


def _run_suite(tmp_path, only: str) -> dict:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            "--scale",
            "0.1",
            "--only",
            only,
            "--json",
            str(out),
            "--png",
            "",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text())


def test_new_rows_smoke(tmp_path):
    """floors (busy-poll), sequential (pinned, unpinned, async_run, after idle), shared and the
    peers run and land in the JSON and the table; never a statement about their speed."""
    doc = _run_suite(tmp_path, "floors,sequential,shared,peers")
    assert list(doc["scenarios"]) == ["floors", "sequential", "shared", "bentoml", "ray_serve"]
    for name, scen in doc["scenarios"].items():
        assert scen["ok"], (name, scen.get("error"), scen.get("traceback"))
        assert not scen.get("leaked_shm") and not scen.get("leftover_processes"), name

    floors = doc["scenarios"]["floors"]["results"]
    if len(os.sched_getaffinity(0)) >= 2:
        assert {"p50_us", "p99_us", "n"} <= floors["busy_pingpong_diff_cpu"].keys()
        image = floors["image_copies_diff_cpu"]
        assert {"p50_us", "p99_us", "n"} <= image.keys()
        assert image["bytes"] == 1 * 3 * 224 * 224 * 4

    seq = doc["scenarios"]["sequential"]["results"]
    for key in ("f32_1x16", "f32_1x16_async", "f32_1x16_idle1ms"):
        assert {"p50_us", "p99_us", "n", "client_cpu_samples"} <= seq[key].keys(), key
        assert seq[key]["pinned"] is None
    assert seq["f32_1x16_async"]["loop"] == "uvloop"
    assert seq["f32_1x16_idle1ms"]["pause_s"] == 0.001
    pinned = seq["f32_1x16_pinned"]
    if "skipped" not in pinned:
        assert pinned["pinned"] not in seq["worker_cpus"]
        assert set(pinned["client_cpu_samples"]) == {pinned["pinned"]}

    import runnerlib

    shared = doc["scenarios"]["shared"]["results"]
    if getattr(runnerlib, "shared_array", None) is None:
        assert shared == {"skipped": "runnerlib.shared_array not available"}
    else:
        for case in ("in", "in_out", "method_writes"):
            assert shared[case]["p50_us"] > 0, (case, shared[case])

    for peer, module in (("bentoml", "bentoml"), ("ray_serve", "ray")):
        res = doc["scenarios"][peer]["results"]
        if importlib.util.find_spec(module) is None:
            assert "not installed" in res["skipped"]
        else:
            assert res["f32_1x16"]["p50_us"] > 0, res

    rows = {row["key"]: row for row in doc["table"]}
    for key in (
        "sequential.f32_1x16",
        "sequential.f32_1x16_pinned",
        "sequential.f32_1x16_async",
        "sequential.f32_1x16_idle1ms",
        "shared.in",
        "shared.in_out",
        "shared.method_writes",
        "floors.busy_pingpong_diff_cpu",
        "floors.image_copies_diff_cpu",
    ):
        assert key in rows, key
    assert any(k.startswith("peers.bentoml") for k in rows)
    assert any(k.startswith("peers.ray_serve") for k in rows)
    if "skipped" in shared:
        assert rows["shared.in"]["runnerlib"] == "skipped: runnerlib.shared_array not available"
        assert rows["shared.in"]["verdict"] == "—"


def _doc(**scenarios) -> dict:
    return {"scenarios": {k: {"ok": True, "results": v} for k, v in scenarios.items()}}


def test_verdicts_follow_the_targets():
    """The report's arithmetic on made-up figures: PASS, MISS, skipped and peer ratios."""
    from benchmarks import report

    def fig(p50, p99=None):
        return {"p50_us": p50, "p99_us": p99 or 2 * p50, "n": 10}

    doc = _doc(
        floors={"copyto_64MiB": {**fig(10_000.0), "gb_s": 6.7}},
        sequential={
            "f32_1x16": fig(report.TARGET_SMALL_P50_US - 1),
            "f32_1x16_pinned": {"skipped": "client not pinned: no CPU apart from it"},
            "f32_1x16_async": fig(report.TARGET_ASYNC_P50_US + 1),
            "f32_1x3x224x224": fig(50.0),
            "f32_64MiB": fig(17_000.0),
        },
        shared={"skipped": "runnerlib.shared_array not available"},
        concurrency={"batched": {**fig(900.0, 4_000.0), "req_s": 61_000.0, "errors": 0}},
        idle={"total_pct_core": 0.6, "workers_pct_core": 0.1},
        bentoml={
            "version": "1.4.39",
            "f32_1x16": fig(1_600.0),
            "batched": {**fig(50_000.0), "req_s": 1_000.0, "errors": 3},
        },
        ray_serve={"skipped": "ray[serve] not installed (pip install -e '.[peers]')"},
    )
    rows = {r["key"]: r for r in report.build_rows(doc)}
    assert rows["sequential.f32_1x16"]["verdict"] == "PASS"
    assert rows["sequential.f32_1x16_pinned"]["verdict"] == "—"
    assert rows["sequential.f32_1x16_pinned"]["runnerlib"].startswith("skipped: client not")
    assert rows["sequential.f32_1x16_async"]["verdict"] == "MISS"
    assert rows["sequential.f32_1x3x224x224"]["verdict"] == "PASS"
    assert rows["sequential.f32_64MiB"]["verdict"] == "PASS"  # 17 ms <= 1.7 x 10 ms
    assert rows["shared.method_writes"]["verdict"] == "—"
    assert rows["concurrency.batched.req_s"]["verdict"] == "PASS"
    assert rows["concurrency.batched.p99_us"]["verdict"] == "PASS"
    assert rows["idle.total_pct_core"]["verdict"] == "MISS"
    # BentoML's small call against runnerlib's async_run: 1600 / 21
    small = rows["peers.bentoml.f32_1x16"]
    assert small["ratio"] == 1_600.0 / (report.TARGET_ASYNC_P50_US + 1)
    assert "peer/runnerlib p50 76x" in small["runnerlib"]
    assert rows["peers.bentoml.batched"]["ratio"] == 61.0
    assert "not installed" in rows["peers.ray_serve"]["reference"]
    assert report.render({"machine": _MACHINE, "plan": _PLAN, **doc}, list(rows.values()))


_MACHINE = {
    k: "x"
    for k in (
        "date",
        "cpu_model",
        "cores_usable",
        "cores",
        "python",
        "numpy",
        "pyarrow",
        "runnerlib",
    )
}
_PLAN = {
    "quick": True,
    "seq_iters": {"f32_1x16": 1, "f32_1x3x224x224": 1, "f32_64MiB": 1},
    "load_duration": 1.0,
    "scale_duration": 1.0,
}


def test_run_script_is_valid_bash():
    """benchmarks/run (the README's main command) parses; running it installs, so not here."""
    script = REPO / "benchmarks" / "run"
    assert os.access(script, os.X_OK)
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


def _instructions(*args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if path is not None:
        env["PATH"] = path
    return subprocess.run([sys.executable, "-m", "benchmarks.instructions", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env=env)


def test_instruction_count_without_valgrind_says_what_to_install(tmp_path):
    proc = _instructions("--side", "worker", path=str(tmp_path))  # an empty PATH: no valgrind
    assert proc.returncode == 2
    assert "needs valgrind" in proc.stderr and "apt install valgrind" in proc.stderr


@pytest.mark.skipif(shutil.which("callgrind_control") is None, reason="valgrind not installed")
def test_instruction_count_of_a_real_worker():
    # the worker really runs under callgrind, answering real calls over shared memory
    proc = _instructions("--side", "worker", "--calls", "50")
    assert proc.returncode == 0, proc.stderr
    count = int(proc.stdout.split(":")[-1].replace(",", ""))
    assert 10_000 < count < 10_000_000  # a sane count, not a figure to hold the code to

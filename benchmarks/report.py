"""Turn scenario results into the table, the JSON document and the optional chart.

Every runnerlib figure sits in one row beside its same-run baseline and floor, the target it
is judged against (SPEC 11 / the issue) and BentoML's figure from FIGURES.md as a reference.
"""

from __future__ import annotations

import json
import os

from .measure import MIB64, PAYLOAD_LABELS, PAYLOADS

# BentoML 1.4 legacy runner hop, FIGURES.md (p50, p99 in us)
BENTOML_SEQ = {
    "f32_1x16": (1570.0, 2300.0),
    "f32_1x3x224x224": (2440.0, 3280.0),
    "f32_64MiB": (395_000.0, 667_000.0),
}
BENTOML_ASYNC_P50_US = 1660.0  # FIGURES.md, side by side (2026-12-01)
RUNNERLIB_IDLE1MS_P50_US = 108.0  # FIGURES.md, runnerlib main on 2026-12-01
BENTOML_RPS = 1200.0
# targets of issue 16 (the README's Performance section says which rows they judge)
TARGET_SMALL_P50_US = 15.0
TARGET_ASYNC_P50_US = 20.0
TARGET_IMAGE_P50_US = 60.0
TARGET_BIG_COPIES = 1.7  # plain numpy 64 MiB in, the method returns it: p50 <= 1.7 x copyto
TARGET_SHARED_P50_US = 1000.0  # shared_array in; in and out
TARGET_SHARED_WRITE_COPIES = 1.2  # the method writes 2*x into a shared_array it makes
TARGET_RPS = 60_000.0
TARGET_P99_US = 5_000.0
TARGET_IDLE_PCT = 0.5
PEERS = {"bentoml": "BentoML {v} runner hop", "ray_serve": "Ray Serve {v} handle"}
COLUMNS = ("figure", "runnerlib", "baseline", "floor", "target", "reference", "verdict")
HEADERS = (
    "figure",
    "runnerlib",
    "mp.Pool(1) baseline",
    "floor (this run)",
    "target",
    "reference: FIGURES.md; peers: this run",
    "verdict",
)


class Missing(Exception):
    """A figure that is not there; the message is what its cell shows."""


def _get(doc: dict, scen: str, *path):
    s = doc["scenarios"].get(scen)
    if s is None:
        raise Missing("not run")
    if not s["ok"]:
        raise Missing(f"ERROR {s['error']}")
    v = s["results"]
    for p in path:
        if isinstance(v, dict) and v.get("skipped"):
            raise Missing(f"skipped: {v['skipped']}")
        if isinstance(v, dict) and p not in v and v.get("error"):
            raise Missing(f"ERROR {v['error']}")
        if not isinstance(v, dict) or v.get(p) is None:
            raise Missing("n/a")
        v = v[p]
    if isinstance(v, dict) and v.get("skipped"):
        raise Missing(f"skipped: {v['skipped']}")
    if isinstance(v, dict) and v.get("error"):
        raise Missing(f"ERROR {v['error']}")
    return v


def _try(fn):
    try:
        return fn(), None
    except Missing as e:
        msg = str(e)
        if msg.startswith("ERROR "):  # the type here, the message under the table
            return None, f"ERROR {msg[6:].split(':', 1)[0][:40]} (see below)"
        return None, msg


def fmt_us(us: float) -> str:
    if us < 100:
        return f"{us:.1f} us"
    if us < 1000:
        return f"{us:.0f} us"
    if us < 1e6:
        return f"{us / 1e3:.3g} ms" if us < 1e5 else f"{us / 1e3:.0f} ms"
    return f"{us / 1e6:.2f} s"


def _pair(d: dict) -> str:
    return f"{fmt_us(d['p50_us'])} / {fmt_us(d['p99_us'])}"


def _verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("PASS" if ok else "MISS")


def _cell(fn, render) -> tuple[object, str]:
    v, err = _try(fn)
    return v, (err if err is not None else render(v))


def _ratio(peer_us: float, rl_us: float) -> str:
    r = peer_us / rl_us
    return f"{r:,.0f}x" if r >= 10 else f"{r:.1f}x"


def build_rows(doc: dict) -> list[dict]:
    """One dict per table row: the COLUMNS as strings plus the raw numbers behind them."""
    rows: list[dict] = []

    def add(**kw):
        row = {c: kw.get(c, "—") for c in COLUMNS}
        row.update({k: v for k, v in kw.items() if k not in COLUMNS})
        rows.append(row)

    ping, ping_s = _cell(lambda: _get(doc, "floors", "sem_pingpong_diff_cpu"), _pair)
    busy, busy_s = _cell(lambda: _get(doc, "floors", "busy_pingpong_diff_cpu"), _pair)
    copy, _ = _cell(lambda: _get(doc, "floors", "copyto_64MiB"), lambda d: "")
    pyloop = _opt(lambda: _get(doc, "floors", "python_loop"))
    small_floor = "; ".join(
        f"{label} {fmt_us(d['p50_us'])}"
        for label, d in (("busy-poll", busy), ("sem", ping), ("Python loop", pyloop)) if d
    ) or (busy_s if busy_s == ping_s else f"{busy_s}; {ping_s}")

    def seq_row(
        figure, path, *, target, limit_us=None, floor="—", reference="—", baseline=None, **extra
    ):
        rl, rl_s = _cell(lambda: _get(doc, "sequential", *path), _pair)
        base, base_s = (None, "—")
        if baseline:
            base, base_s = _cell(lambda: _get(doc, "baseline", "sequential", baseline), _pair)
        ok = None if (rl is None or limit_us is None) else rl["p50_us"] <= limit_us
        add(
            figure=figure,
            runnerlib=rl_s,
            baseline=base_s,
            floor=floor,
            target=target,
            reference=reference,
            verdict=_verdict(ok),
            key="sequential." + ".".join(path),
            value_us=rl and rl["p50_us"],
            target_us=limit_us,
            baseline_us=base and base["p50_us"],
            speedup_vs_baseline=(base["p50_us"] / rl["p50_us"]) if rl and base else None,
            **extra,
        )
        return rl

    ref = BENTOML_SEQ["f32_1x16"]
    ref_small = f"BentoML {fmt_us(ref[0])} / {fmt_us(ref[1])}"
    small_target = f"p50 <= {fmt_us(TARGET_SMALL_P50_US)}"
    seq_row(
        "float32[1,16] run(), client unpinned, p50 / p99",
        ("f32_1x16",),
        target=small_target,
        limit_us=TARGET_SMALL_P50_US,
        floor=small_floor,
        reference=ref_small,
        baseline="f32_1x16",
    )
    pinned = _opt(lambda: _get(doc, "sequential", "f32_1x16_pinned"))
    where = f"client pinned to CPU {pinned['pinned']}" if pinned else "client pinned"
    seq_row(
        f"float32[1,16] run(), {where}, p50 / p99",
        ("f32_1x16_pinned",),
        target=small_target,
        limit_us=TARGET_SMALL_P50_US,
        floor=small_floor,
        reference=ref_small,
    )
    seq_row(
        "float32[1,16] async_run(), uvloop, p50 / p99",
        ("f32_1x16_async",),
        target=f"p50 <= {fmt_us(TARGET_ASYNC_P50_US)}",
        limit_us=TARGET_ASYNC_P50_US,
        floor=small_floor,
        reference=f"BentoML {fmt_us(BENTOML_ASYNC_P50_US)}",
    )
    seq_row(
        "float32[1,16] run(), first call after 1 ms idle, p50 / p99",
        ("f32_1x16_idle1ms",),
        target="—",
        floor=f"sem {fmt_us(ping['p50_us'])} (a wake-up)" if ping else ping_s,
        reference=f"runnerlib {fmt_us(RUNNERLIB_IDLE1MS_P50_US)} (12-01)",
    )
    ref = BENTOML_SEQ["f32_1x3x224x224"]
    image_copies = _opt(lambda: _get(doc, "floors", "image_copies_diff_cpu"))
    seq_row(
        "float32[1,3,224,224] run() p50 / p99",
        ("f32_1x3x224x224",),
        target=f"p50 <= {fmt_us(TARGET_IMAGE_P50_US)}",
        limit_us=TARGET_IMAGE_P50_US,
        floor=(f"its two copies between CPUs {fmt_us(image_copies['p50_us'])}"
               if image_copies else "—"),
        reference=f"BentoML {fmt_us(ref[0])} / {fmt_us(ref[1])}",
        baseline="f32_1x3x224x224",
    )
    ref = BENTOML_SEQ["f32_64MiB"]
    big_limit = TARGET_BIG_COPIES * copy["p50_us"] if copy else None
    seq_row(
        "64 MiB float32, plain numpy, method returns it: run() p50 / p99",
        ("f32_64MiB",),
        target=(
            f"p50 <= {TARGET_BIG_COPIES:g} x copyto = {fmt_us(big_limit)}"
            if big_limit
            else f"p50 <= {TARGET_BIG_COPIES:g} x numpy.copyto"
        ),
        limit_us=big_limit,
        floor=f"copyto {fmt_us(copy['p50_us'])}" if copy else "—",
        reference=f"BentoML {fmt_us(ref[0])} / {fmt_us(ref[1])}",
        baseline="f32_64MiB",
    )

    # 64 MiB as bandwidth
    rl, rl_s = _cell(
        lambda: _get(doc, "sequential", "f32_64MiB"),
        lambda d: f"{MIB64 / d['p50_us'] / 1e3:.2f} GB/s",
    )
    base, base_s = _cell(
        lambda: _get(doc, "baseline", "sequential", "f32_64MiB"),
        lambda d: f"{MIB64 / d['p50_us'] / 1e3:.2f} GB/s",
    )
    add(
        figure="64 MiB effective GB/s (bytes / p50)",
        runnerlib=rl_s,
        baseline=base_s,
        floor=f"copyto {copy['gb_s']:.1f} GB/s" if copy else "—",
        target=(
            f">= {copy['gb_s'] / TARGET_BIG_COPIES:.1f} GB/s (copyto / {TARGET_BIG_COPIES:g})"
            if copy
            else f">= copyto / {TARGET_BIG_COPIES:g}"
        ),
        reference=f"BentoML {MIB64 / BENTOML_SEQ['f32_64MiB'][0] / 1e3:.2f} GB/s",
        verdict=_verdict(rl["p50_us"] <= big_limit if rl and big_limit else None),
        key="sequential.f32_64MiB.gb_s",
        value=rl and MIB64 / rl["p50_us"] / 1e3,
    )

    # 64 MiB through runnerlib.shared_array
    from .runner_scenarios import SHARED_CASES

    for case, (_method, what) in SHARED_CASES.items():
        r, r_s = _cell(lambda c=case: _get(doc, "shared", c), _pair)
        if case == "method_writes":
            limit = TARGET_SHARED_WRITE_COPIES * copy["p50_us"] if copy else None
            target = (
                f"p50 <= {TARGET_SHARED_WRITE_COPIES:g} x copyto = {fmt_us(limit)}"
                if limit
                else f"p50 <= {TARGET_SHARED_WRITE_COPIES:g} x numpy.copyto"
            )
            double = _opt(lambda: _get(doc, "floors", "double_64MiB"))
            floor = "; ".join(
                ([f"copyto {fmt_us(copy['p50_us'])}"] if copy else [])
                + ([f"the method's pass alone {fmt_us(double['p50_us'])}"] if double else [])
            ) or "—"
        else:
            limit, floor = TARGET_SHARED_P50_US, "—"
            target = f"p50 <= {fmt_us(TARGET_SHARED_P50_US)}"
        add(
            figure=f"64 MiB shared_array, {what}: p50 / p99",
            runnerlib=r_s,
            floor=floor,
            target=target,
            verdict=_verdict(r["p50_us"] <= limit if r and limit else None),
            key=f"shared.{case}",
            value_us=r and r["p50_us"],
            target_us=limit,
            gb_s=r and MIB64 / r["p50_us"] / 1e3,
        )

    # 64 concurrent callers
    pool, pool_rps = _cell(
        lambda: _get(doc, "baseline", "throughput"),
        lambda d: f"{d['req_s']:,.0f} req/s ({d['callers']} in flight)",
    )
    _, pool_lat = _cell(lambda: _get(doc, "baseline", "throughput"), _pair)
    for label, on in (("batched", True), ("unbatched", False)):
        what = "64 callers, batching " + ("on" if on else "off")
        r, r_s = _cell(
            lambda lb=label: _get(doc, "concurrency", lb), lambda d: f"{d['req_s']:,.0f} req/s"
        )
        add(
            figure=f"{what}: throughput",
            runnerlib=r_s,
            baseline=pool_rps,
            target=f">= {TARGET_RPS:,.0f} req/s" if on else "—",
            reference=f"BentoML ~{BENTOML_RPS:,.0f} req/s" if on else "—",
            verdict=_verdict(r["req_s"] >= TARGET_RPS if (r and on) else None),
            key=f"concurrency.{label}.req_s",
            value=r and r["req_s"],
        )
        add(
            figure=f"{what}: p50 / p99",
            runnerlib=_pair(r) if r else r_s,
            baseline=pool_lat,
            target=f"p99 <= {fmt_us(TARGET_P99_US)}" if on else "—",
            reference="BentoML p99 ~220 ms" if on else "—",
            verdict=_verdict(r["p99_us"] <= TARGET_P99_US if (r and on) else None),
            key=f"concurrency.{label}.p99_us",
            value=r and r["p99_us"],
        )
        if r:
            mb = r.get("mean_batch_size")
            r_s = f"{r['errors']} errors" + (f", mean batch {mb:.1f}" if mb else "")
        add(
            figure=f"{what}: errors, mean batch",
            runnerlib=r_s,
            baseline=f"{pool['errors']} errors" if pool else "—",
            target="0 errors" if on else "—",
            reference="BentoML: 503 rejections, mean batch 5" if on else "—",
            verdict=_verdict(r["errors"] == 0 if (r and on) else None),
            key=f"concurrency.{label}.errors",
            value=r and r["errors"],
        )

    # scaling
    for w in (1, 2):
        for c in (1, 2, 4):
            r, r_s = _cell(
                lambda w=w, c=c: _get(doc, "scaling", f"workers_{w}", f"clients_{c}"),
                lambda d: (
                    f"{d['req_s']:,.0f} req/s" + (f", {d['errors']} errors" if d["errors"] else "")
                ),
            )
            add(
                figure=f"scaling: {c} client proc x 16, {w} worker(s)",
                runnerlib=r_s,
                key=f"scaling.workers_{w}.clients_{c}",
                value=r and r["req_s"],
                workers=w,
                clients=c,
            )

    # idle
    r, r_s = _cell(
        lambda: _get(doc, "idle"),
        lambda d: f"{d['total_pct_core']:.2f} % (workers {d['workers_pct_core']:.2f})",
    )
    add(
        figure="idle server CPU, % of one core",
        runnerlib=r_s,
        target=f"< {TARGET_IDLE_PCT:g} %",
        reference="~0 (prototype)",
        verdict=_verdict(r["total_pct_core"] < TARGET_IDLE_PCT if r else None),
        key="idle.total_pct_core",
        value=r and r["total_pct_core"],
    )

    _peer_rows(doc, add)

    # floors on their own
    add(
        figure="floor: busy-poll ping-pong, different CPUs",
        floor=busy_s,
        reference="0.3-0.51 us",
        key="floors.busy_pingpong_diff_cpu",
        value=busy and busy["p50_us"],
    )
    add(
        figure="floor: sem ping-pong, different CPUs",
        floor=ping_s,
        reference="47 / 63 us",
        key="floors.sem_pingpong_diff_cpu",
        value=ping and ping["p50_us"],
    )
    image, image_s = _cell(lambda: _get(doc, "floors", "image_copies_diff_cpu"), _pair)
    add(
        figure="floor: the image's two copies between CPUs (copy in, the other CPU copies it)",
        floor=image_s,
        key="floors.image_copies_diff_cpu",
        value=image and image["p50_us"],
    )
    same, same_s = _cell(lambda: _get(doc, "floors", "sem_pingpong_same_cpu"), _pair)
    add(
        figure="floor: sem ping-pong, same CPU",
        floor=same_s,
        reference="4.3 us",
        key="floors.sem_pingpong_same_cpu",
        value=same and same["p50_us"],
    )
    _, copy_s = _cell(
        lambda: _get(doc, "floors", "copyto_64MiB"),
        lambda d: f"{fmt_us(d['p50_us'])} ({d['gb_s']:.1f} GB/s)",
    )
    add(
        figure="floor: numpy.copyto 64 MiB, warm",
        floor=copy_s,
        reference="3.1-3.9 ms (17-22 GB/s)",
        key="floors.copyto_64MiB",
        value=copy and copy["p50_us"],
    )
    double, double_s = _cell(
        lambda: _get(doc, "floors", "double_64MiB"),
        lambda d: f"{fmt_us(d['p50_us'])}"
        + (f" ({d['p50_us'] / copy['p50_us']:.2f} x copyto)" if copy else ""),
    )
    py, py_s = _cell(lambda: _get(doc, "floors", "python_loop"), _pair)
    add(
        figure="floor: Python speed, sum(range(1000)) in one process",
        floor=py_s,
        key="floors.python_loop",
        value=py and py["p50_us"],
    )
    add(
        figure="floor: numpy.multiply(x, 2, out=y) 64 MiB, warm, one process",
        floor=double_s,
        key="floors.double_64MiB",
        value=double and double["p50_us"],
    )
    return rows


# The runnerlib figure each peer figure is set against: the same call, as users make it.
_PEER_PAIRS = {
    # peer -> payload -> (runnerlib scenario path, what runnerlib's figure is)
    "bentoml": {
        "f32_1x16": (("sequential", "f32_1x16_async"), "async_run()"),
        "f32_1x3x224x224": (("sequential", "f32_1x3x224x224"), "run()"),
        "f32_64MiB": (("sequential", "f32_64MiB"), "run()"),
    },
    "ray_serve": {
        "f32_1x16": (("sequential", "f32_1x16"), "run(), client unpinned"),
        "f32_1x3x224x224": (("sequential", "f32_1x3x224x224"), "run()"),
        "f32_64MiB": (("sequential", "f32_64MiB"), "run()"),
    },
}


def _peer_rows(doc: dict, add) -> None:
    """Each peer measured in this run, beside runnerlib's same row and the ratio."""
    for peer, title in PEERS.items():
        s = doc["scenarios"].get(peer)
        res = (s or {}).get("results") or {}
        name = title.format(v=res.get("version") or "").replace("  ", " ")
        if s is None or not s["ok"] or res.get("skipped"):
            _, why = _try(lambda p=peer: _get(doc, p))
            add(figure=f"peer: {name}", reference=why, key=f"peers.{peer}")
            continue
        for payload, (path, what) in _PEER_PAIRS[peer].items():
            pv, pv_s = _cell(lambda p=peer, n=payload: _get(doc, p, n), _pair)
            rl, rl_s = _cell(lambda p=path: _get(doc, *p), _pair)
            ratio = pv["p50_us"] / rl["p50_us"] if pv and rl else None
            add(
                figure=f"peer: {name}, {PAYLOAD_LABELS[payload]} p50 / p99",
                runnerlib=f"{rl_s} ({what}; peer/runnerlib p50 "
                f"{_ratio(pv['p50_us'], rl['p50_us'])})"
                if ratio
                else rl_s,
                reference=pv_s,
                key=f"peers.{peer}.{payload}",
                value_us=pv and pv["p50_us"],
                runnerlib_us=rl and rl["p50_us"],
                ratio=ratio,
            )
        pv, pv_s = _cell(
            lambda p=peer: _get(doc, p, "batched"),
            lambda d: (
                f"{d['req_s']:,.0f} ok req/s, p99 {fmt_us(d['p99_us'])}, {d['errors']:,} errors"
                + (f" ({d['first_error'].split(':')[0][:30]})" if d.get("first_error") else "")
            ),
        )
        rl, rl_s = _cell(
            lambda: _get(doc, "concurrency", "batched"),
            lambda d: f"{d['req_s']:,.0f} req/s, p99 {fmt_us(d['p99_us'])}",
        )
        ratio = rl["req_s"] / pv["req_s"] if pv and rl and pv["req_s"] else None
        add(
            figure=f"peer: {name}, 64 callers, batching (64 rows, 10 ms)",
            runnerlib=f"{rl_s} (runnerlib/peer req/s {_ratio(rl['req_s'], pv['req_s'])})"
            if ratio
            else rl_s,
            reference=pv_s,
            key=f"peers.{peer}.batched",
            value=pv and pv["req_s"],
            runnerlib_req_s=rl and rl["req_s"],
            ratio=ratio,
        )


def render(doc: dict, rows: list[dict]) -> str:
    """A Markdown table (pasteable into an issue) with a header and the errors under it."""
    m = doc["machine"]
    plan = doc["plan"]
    it = plan["seq_iters"]
    lines = [
        f"runnerlib benchmarks{' (quick)' if plan['quick'] else ''} — {m['date']}",
        f"{m['cpu_model']}, {m['cores_usable']}/{m['cores']} CPUs, Python {m['python']}, "
        f"numpy {m['numpy']}, pyarrow {m['pyarrow']}, runnerlib {m['runnerlib']}",
        f"p50 / p99 (medians quoted) of {it['f32_1x16']} / {it['f32_1x3x224x224']} / "
        f"{it['f32_64MiB']} sequential calls ({it.get('f32_1x16_idle1ms', '-')} after idle, "
        f"{it.get('shared_64MiB', '-')} shared_array); load runs {plan['load_duration']:g} s, "
        f"scaling {plan['scale_duration']:g} s each; floors and peers measured in this run.",
        "",
    ]
    table = [HEADERS] + [tuple(str(r[c]) for c in COLUMNS) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    lines.append(line(table[0]))
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += [line(r) for r in table[1:]]
    seq = doc["scenarios"].get("sequential", {})
    placement = _placement(seq.get("results", {})) if seq.get("ok") else None
    if placement:
        lines += ["", placement]
    notes = []
    for name, s in doc["scenarios"].items():
        if not s["ok"]:
            notes.append(f"- {name}: {s['error'].splitlines()[0]}")
        else:
            notes += [f"- {name}.{path}: {err}" for path, err in case_errors(s["results"])]
        if s.get("leftover_processes"):
            notes.append(f"- {name}: processes left running, killed: {s['leftover_processes']}")
        if s.get("leaked_shm"):
            notes.append(f"- {name}: stale shared memory left, swept: {s['leaked_shm']}")
    if notes:
        lines += ["", "Problems (full tracebacks in the JSON):", *notes]
    return "\n".join(lines)


_PLACED = {
    "f32_1x16": "float32[1,16] unpinned",
    "f32_1x16_pinned": "float32[1,16] pinned",
    "f32_1x16_async": "async_run",
    "f32_1x16_idle1ms": "after 1 ms idle",
    "f32_1x3x224x224": "float32[1,3,224,224]",
    "f32_64MiB": "64 MiB",
}


def _placement(res: dict) -> str | None:
    """Where the sequential calls ran: a client sharing its CPU with the worker pays for
    every round trip with two context switches, which shows as a slow, noisy run."""
    workers = res.get("worker_cpus")
    if not workers:
        return None
    per_row = []
    unpinned: list[int] = []
    for key, v in res.items():
        if not isinstance(v, dict) or not v.get("client_cpu_samples"):
            continue
        samples = v["client_cpu_samples"]
        counts = ", ".join(f"{c}: {samples.count(c)}" for c in sorted(set(samples)))
        per_row.append(f"{_PLACED.get(key, key)} {{{counts}}}")
        if v.get("pinned") is None:
            unpinned += samples
    if not per_row:
        return None
    text = (
        f"Sequential calls: worker pinned to CPU(s) {workers}; client CPU (CPU: samples, one "
        f"every 64 calls, 8 after idle): {'; '.join(per_row)}."
    )
    shared = sum(c in workers for c in unpinned)
    if shared:
        text += (
            f" The unpinned client ran on a worker's CPU in {shared} of {len(unpinned)} "
            "samples: those calls pay for context switches (a slow or noisy run)."
        )
    return text


def case_errors(results, prefix: str = "") -> list[tuple[str, str]]:
    """(path, first line of the error) of every failed case nested in a scenario's results."""
    out = []
    if isinstance(results, dict):
        for k, v in results.items():
            if isinstance(v, dict) and v.get("error"):
                out.append((f"{prefix}{k}", v["error"].splitlines()[0]))
            elif isinstance(v, dict):
                out += case_errors(v, f"{prefix}{k}.")
    return out


def write_json(doc: dict, path: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=2, default=str)
        f.write("\n")


def write_png(doc: dict, path: str) -> str:
    """The chart, or a note saying why there is none; matplotlib is optional."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "skipped, matplotlib is not installed (pip install matplotlib)"

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(17, 5.2))
    _plot_latency(doc, ax1)
    _plot_throughput(doc, ax2)
    _plot_bandwidth(doc, ax3)
    m = doc["machine"]
    fig.suptitle(
        f"runnerlib benchmarks — {m['cpu_model']}, {m['cores_usable']} CPUs, "
        f"Python {m['python']}, {m['date']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"written to {path}"


def _opt(fn):
    try:
        return fn()
    except Missing:
        return None


# chart categories: (label, runnerlib path, baseline payload, {peer: payload}); each peer's
# figure sits with the call it makes (BentoML's small call is an async_run)
_LAT_CATS = (
    ("[1,16]\nunpinned", ("sequential", "f32_1x16"), "f32_1x16", {"ray_serve": "f32_1x16"}),
    ("[1,16]\npinned", ("sequential", "f32_1x16_pinned"), None, {}),
    ("[1,16]\nasync_run", ("sequential", "f32_1x16_async"), None, {"bentoml": "f32_1x16"}),
    ("[1,16] after\n1 ms idle", ("sequential", "f32_1x16_idle1ms"), None, {}),
    (
        "[1,3,224,224]",
        ("sequential", "f32_1x3x224x224"),
        "f32_1x3x224x224",
        dict.fromkeys(PEERS, "f32_1x3x224x224"),
    ),
    ("64 MiB", ("sequential", "f32_64MiB"), "f32_64MiB", dict.fromkeys(PEERS, "f32_64MiB")),
)


def _plot_latency(doc, ax) -> None:
    """p50 bars (p99 as a thin tick) per call kind: runnerlib, mp.Pool and the peers."""
    # (label, which field of the category names the figure, how to get it)
    series = [
        ("runnerlib", 1, lambda v: _get(doc, *v)),
        ("mp.Pool(1)", 2, lambda v: _get(doc, "baseline", "sequential", v)),
    ]
    for peer, title in PEERS.items():
        res = (doc["scenarios"].get(peer) or {}).get("results") or {}
        label = title.format(v=res.get("version") or "").replace("  ", " ")
        series.append((label, peer, lambda v, p=peer: _get(doc, p, v)))
    width = 0.8 / len(series)
    xs0 = range(len(_LAT_CATS))
    for i, (label, field, get) in enumerate(series):
        pts = []
        for k, cat in zip(xs0, _LAT_CATS, strict=True):
            what = cat[field] if isinstance(field, int) else cat[3].get(field)
            r = _opt(lambda g=get, v=what: g(v)) if what else None
            if r:
                pts.append((k + (i - (len(series) - 1) / 2) * width, r["p50_us"], r["p99_us"]))
        if not pts:
            continue
        xs, p50, p99 = zip(*pts, strict=True)
        ax.bar(xs, p50, width, color=f"C{i}", label=f"{label} p50")
        ax.scatter(xs, p99, marker="_", s=60, color=f"C{i}", alpha=0.6)
    ax.scatter(
        [k + 0.45 for k in (0, 4, 5)],
        [BENTOML_SEQ[n][0] for n in PAYLOADS],
        marker="_",
        s=120,
        color="k",
        label="BentoML p50, FIGURES.md",
    )
    for key, style, label in (
        ("sem_pingpong_diff_cpu", ":", "floor: sem ping-pong"),
        ("busy_pingpong_diff_cpu", "--", "floor: busy-poll ping-pong"),
    ):
        f = _opt(lambda k=key: _get(doc, "floors", k))
        if f:
            ax.axhline(f["p50_us"], color="grey", ls=style, lw=1, label=label)
    ax.axhline(TARGET_SMALL_P50_US, color="C2", ls="-.", lw=1, label="target, [1,16] run()")
    ax.set_yscale("log")
    ax.set_xticks(list(xs0), [c[0] for c in _LAT_CATS], fontsize=7)
    ax.set_ylabel("round trip, us (log); ticks: p99")
    ax.set_title("sequential calls, float32 payloads")
    ax.legend(fontsize=6)


def _plot_throughput(doc, ax) -> None:
    for w in (1, 2):
        pts = [
            (16 * c, _opt(lambda c=c, w=w: _get(doc, "scaling", f"workers_{w}", f"clients_{c}")))
            for c in (1, 2, 4)
        ]
        pts = [(x, r["req_s"]) for x, r in pts if r]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=f"runnerlib, {w} worker(s)")
    for label, marker, color in (("batched", "*", "C2"), ("unbatched", "x", "C5")):
        r = _opt(lambda lb=label: _get(doc, "concurrency", lb))
        if r:
            ax.scatter(
                [64],
                [r["req_s"]],
                marker=marker,
                s=90,
                zorder=3,
                color=color,
                label=f"runnerlib 64 callers, {label}",
            )
    for i, (peer, title) in enumerate(PEERS.items()):
        r = _opt(lambda p=peer: _get(doc, p, "batched"))
        if r:
            name = title.format(v=doc["scenarios"][peer]["results"].get("version") or "")
            ax.scatter(
                [64],
                [max(r["req_s"], 1.0)],
                marker="v",
                s=70,
                zorder=3,
                color=f"C{6 + i}",
                label=f"{name}, batching ({r['errors']} errors)",
            )
    pool = _opt(lambda: _get(doc, "baseline", "throughput"))
    if pool:
        ax.axhline(pool["req_s"], color="C4", ls="--", label="mp.Pool(1), 64 in flight")
    ax.axhline(BENTOML_RPS, color="C3", ls="--", label="BentoML (FIGURES.md)")
    ax.axhline(TARGET_RPS, color="grey", ls=":", label="target")
    ax.set_yscale("log")
    ax.set_xticks([16, 32, 64])
    ax.set_xlabel("concurrent callers (16 per client process)")
    ax.set_ylabel("requests/s (log)")
    ax.set_title("throughput vs concurrency, float32[1,16]")
    ax.legend(fontsize=7)


def _plot_bandwidth(doc, ax) -> None:
    bars = []
    for label, get in (
        ("runnerlib\nnumpy", lambda: _get(doc, "sequential", "f32_64MiB")),
        ("shared_array\nin", lambda: _get(doc, "shared", "in")),
        ("shared_array\nin+out", lambda: _get(doc, "shared", "in_out")),
        ("shared_array\nwrites", lambda: _get(doc, "shared", "method_writes")),
        ("mp.Pool(1)", lambda: _get(doc, "baseline", "sequential", "f32_64MiB")),
        ("BentoML\n(this run)", lambda: _get(doc, "bentoml", "f32_64MiB")),
        ("Ray Serve\n(this run)", lambda: _get(doc, "ray_serve", "f32_64MiB")),
    ):
        r = _opt(get)
        if r:
            bars.append((label, MIB64 / r["p50_us"] / 1e3))
    copy = _opt(lambda: _get(doc, "floors", "copyto_64MiB"))
    if copy:
        bars.append(("numpy.copyto", copy["gb_s"]))
    if not any(b[0].startswith("BentoML") for b in bars):
        bars.append(("BentoML\n(FIGURES.md)", MIB64 / BENTOML_SEQ["f32_64MiB"][0] / 1e3))
    ax.bar([b[0] for b in bars], [b[1] for b in bars], color=[f"C{i}" for i in range(len(bars))])
    ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.tick_params(axis="x", labelsize=7)
    ax.set_ylabel("GB/s (64 MiB / round-trip p50, log)")
    ax.set_title("64 MiB effective bandwidth")

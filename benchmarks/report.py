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
BENTOML_RPS = 1200.0
TARGET_IMAGE_P50_US = 150.0
TARGET_BIG_COPIES = 3.0
TARGET_RPS = 20_000.0
TARGET_P99_US = 20_000.0
TARGET_IDLE_PCT = 2.0
COLUMNS = ("figure", "runnerlib", "baseline", "floor", "target", "reference", "verdict")
HEADERS = (
    "figure",
    "runnerlib",
    "mp.Pool(1) baseline",
    "floor (this run)",
    "target",
    "BentoML 1.4 / FIGURES.md",
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
        if isinstance(v, dict) and p not in v and v.get("error"):
            raise Missing(f"ERROR {v['error']}")
        if not isinstance(v, dict) or v.get(p) is None:
            raise Missing("n/a")
        v = v[p]
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


def build_rows(doc: dict) -> list[dict]:
    """One dict per table row: the COLUMNS as strings plus the raw numbers behind them."""
    rows: list[dict] = []

    def add(**kw):
        row = {c: kw.get(c, "—") for c in COLUMNS}
        row.update({k: v for k, v in kw.items() if k not in COLUMNS})
        rows.append(row)

    ping, ping_s = _cell(lambda: _get(doc, "floors", "sem_pingpong_diff_cpu"), _pair)
    copy, _ = _cell(lambda: _get(doc, "floors", "copyto_64MiB"), lambda d: "")

    # sequential round trips
    for name in PAYLOADS:
        rl, rl_s = _cell(lambda n=name: _get(doc, "sequential", n), _pair)
        base, base_s = _cell(lambda n=name: _get(doc, "baseline", "sequential", n), _pair)
        ref = BENTOML_SEQ[name]
        floor_s, target_s, ok = "—", "—", None
        if name == "f32_1x16":
            floor_s = f"sem ping-pong {fmt_us(ping['p50_us'])}" if ping else ping_s
            target_s = (
                f"p50 <= {fmt_us(ping['p50_us'])} (ping-pong)" if ping else "p50 <= sem ping-pong"
            )
            if rl and ping:
                ok = rl["p50_us"] <= ping["p50_us"]
        elif name == "f32_1x3x224x224":
            target_s = f"p50 < {fmt_us(TARGET_IMAGE_P50_US)}"
            if rl:
                ok = rl["p50_us"] < TARGET_IMAGE_P50_US
        else:
            if copy:
                floor_s = f"copyto {fmt_us(copy['p50_us'])}"
                target_s = f"p50 <= 3 x copyto = {fmt_us(TARGET_BIG_COPIES * copy['p50_us'])}"
                if rl:
                    ok = rl["p50_us"] <= TARGET_BIG_COPIES * copy["p50_us"]
            else:
                target_s = "p50 <= 3 x numpy.copyto"
        add(
            figure=f"{PAYLOAD_LABELS[name]} run() p50 / p99",
            runnerlib=rl_s,
            baseline=base_s,
            floor=floor_s,
            target=target_s,
            reference=f"{fmt_us(ref[0])} / {fmt_us(ref[1])}",
            verdict=_verdict(ok),
            key=f"sequential.{name}",
            value_us=rl and rl["p50_us"],
            baseline_us=base and base["p50_us"],
            speedup_vs_baseline=(base["p50_us"] / rl["p50_us"]) if rl and base else None,
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
    ok = None
    if rl and copy:
        ok = rl["p50_us"] <= TARGET_BIG_COPIES * copy["p50_us"]
    add(
        figure="64 MiB effective GB/s (bytes / p50)",
        runnerlib=rl_s,
        baseline=base_s,
        floor=f"copyto {copy['gb_s']:.1f} GB/s" if copy else "—",
        target=(
            f">= {copy['gb_s'] / TARGET_BIG_COPIES:.1f} GB/s (copyto / 3)"
            if copy
            else ">= copyto / 3"
        ),
        reference=f"{MIB64 / BENTOML_SEQ['f32_64MiB'][0] / 1e3:.2f} GB/s",
        verdict=_verdict(ok),
        key="sequential.f32_64MiB.gb_s",
        value=rl and MIB64 / rl["p50_us"] / 1e3,
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
            reference=f"~{BENTOML_RPS:,.0f} req/s" if on else "—",
            verdict=_verdict(r["req_s"] >= TARGET_RPS if (r and on) else None),
            key=f"concurrency.{label}.req_s",
            value=r and r["req_s"],
        )
        add(
            figure=f"{what}: p50 / p99",
            runnerlib=_pair(r) if r else r_s,
            baseline=pool_lat,
            target=f"p99 < {fmt_us(TARGET_P99_US)}" if on else "—",
            reference="p99 ~220 ms" if on else "—",
            verdict=_verdict(r["p99_us"] < TARGET_P99_US if (r and on) else None),
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
            reference="503 rejections, mean batch 5" if on else "—",
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

    # floors on their own
    add(
        figure="floor: sem ping-pong, different CPUs",
        floor=ping_s,
        reference="47 / 63 us",
        key="floors.sem_pingpong_diff_cpu",
        value=ping and ping["p50_us"],
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
    return rows


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
        f"{it['f32_64MiB']} sequential calls; load runs {plan['load_duration']:g} s, "
        f"scaling {plan['scale_duration']:g} s each; floors measured in this run.",
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


def _placement(res: dict) -> str | None:
    """Where the sequential calls ran: a client sharing its CPU with the worker pays for
    every round trip with two context switches, which shows as a slow, noisy run."""
    workers = res.get("worker_cpus")
    if not workers:
        return None
    samples = [c for v in res.values() if isinstance(v, dict)
               for c in v.get("client_cpu_samples", [])]
    if not samples:
        return None
    shared = sum(c in workers for c in samples)
    text = (f"Sequential calls: client on CPU(s) {sorted(set(samples))}, worker pinned to "
            f"{workers}.")
    if shared:
        text += (f" The client ran on a worker's CPU in {shared} of {len(samples)} samples: "
                 "those calls pay for context switches (a slow or noisy run).")
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


def _plot_latency(doc, ax) -> None:
    series = [
        ("runnerlib", lambda n: _get(doc, "sequential", n)),
        ("mp.Pool(1)", lambda n: _get(doc, "baseline", "sequential", n)),
    ]
    names = list(PAYLOADS)
    width = 0.2
    for i, (label, get) in enumerate(series):
        for j, (pct, alpha) in enumerate((("p50_us", 1.0), ("p99_us", 0.45))):
            vals = [(_opt(lambda n=n, g=get: g(n)) or {}).get(pct, 0) for n in names]
            xs = [k + (2 * i + j - 1.5) * width for k in range(len(names))]
            ax.bar(
                xs, vals, width, alpha=alpha, color=f"C{i}", label=f"{label} {pct.split('_')[0]}"
            )
    xs = [k + 2.5 * width for k in range(len(names))]
    ax.scatter(
        xs,
        [BENTOML_SEQ[n][0] for n in names],
        marker="_",
        s=300,
        color="C3",
        label="BentoML p50 (FIGURES.md)",
    )
    ping = _opt(lambda: _get(doc, "floors", "sem_pingpong_diff_cpu"))
    if ping:
        ax.axhline(ping["p50_us"], color="grey", ls=":", label="sem ping-pong floor")
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)), [PAYLOAD_LABELS[n] for n in names], fontsize=8)
    ax.set_ylabel("round trip, us (log)")
    ax.set_title("sequential run() latency")
    ax.legend(fontsize=7)


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
        ("runnerlib", lambda: _get(doc, "sequential", "f32_64MiB")),
        ("mp.Pool(1)", lambda: _get(doc, "baseline", "sequential", "f32_64MiB")),
    ):
        r = _opt(get)
        if r:
            bars.append((label, MIB64 / r["p50_us"] / 1e3))
    copy = _opt(lambda: _get(doc, "floors", "copyto_64MiB"))
    if copy:
        bars.append(("numpy.copyto", copy["gb_s"]))
    bars.append(("BentoML", MIB64 / BENTOML_SEQ["f32_64MiB"][0] / 1e3))
    ax.bar([b[0] for b in bars], [b[1] for b in bars], color=[f"C{i}" for i in range(len(bars))])
    ax.set_ylabel("GB/s (64 MiB / round-trip p50)")
    ax.set_title("64 MiB effective bandwidth")

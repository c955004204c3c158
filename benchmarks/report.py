"""The benchmark report: report.md with PNG plots (time and peak memory against size, one line per provider) from
the JSON that the scripts wrote. ``python benchmarks/run.py`` runs the scripts, then this.

Sizes: on a CPU the quick sizes of each script (the field at (32, 256, 3072), (128, 1024, 3072) and STF's
(64, 1024, 3072); the draws at (128, 3072) and (1000, 3072); the solvers' quick workloads), a few minutes on 2
cores; ``full=True`` runs every size. On CUDA every size (each script skips what would not fit in memory).
Each script writes its own JSON and log next to the report; the report quotes the scripts' goals (PASS / FAIL).
"""
from __future__ import annotations

import json
from pathlib import Path

from _common import fmt_bytes, fmt_num

# ---------------------------------------------------------------------------------------------------- report


def _rows(path: Path) -> tuple[dict, list[dict]]:
    if not path.is_file():
        return {}, []
    data = json.loads(path.read_text())
    if isinstance(data, list):  # bench_ode_step writes bare rows
        return {}, data
    return data, data.get("rows", [])


def _get(key: str):
    return lambda r: str(r.get(key, "-"))


def _table(rows: list[dict], columns) -> list[str]:
    """Markdown table lines: columns is a list of (header, row -> cell text)."""
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(fn(r) for _, fn in columns) + " |" for r in rows]


def _lines(ax, rows, xkey, ykey, xlabel, ylabel, title):
    """One line per provider: ykey against xkey (log-log), skipped rows left out."""
    provs = sorted({r["provider"] for r in rows})
    drawn = False
    for p in provs:
        pts = sorted((r[xkey], r[ykey]) for r in rows
                     if r["provider"] == p and not r.get("skipped") and r.get(xkey) and r.get(ykey))
        if pts:
            ax.plot([a for a, _ in pts], [b for _, b in pts], marker="o", label=p)
            drawn = True
    ax.set_xscale("log")
    if drawn:
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)


def _bars(ax, rows, group_key, ykey, ylabel, title):
    """Grouped bars: one group per value of group_key, one bar per provider."""
    groups = list(dict.fromkeys(r[group_key] for r in rows if not r.get("skipped")))
    provs = list(dict.fromkeys(r["provider"] for r in rows if not r.get("skipped")))
    w = 0.8 / max(1, len(provs))
    for k, p in enumerate(provs):
        ys = [next((r[ykey] for r in rows if r[group_key] == g and r["provider"] == p and not r.get("skipped")
                    and r.get(ykey) is not None), 0.0) for g in groups]
        ax.bar([i + k * w for i in range(len(groups))], ys, width=w, label=p)
    ax.set_xticks([i + 0.4 - w / 2 for i in range(len(groups))], groups, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(True, axis="y", which="both", alpha=0.3)


def _savefig(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name


def write_report(out: str | Path) -> Path:
    """report.md (and PNGs) from the JSON files the scripts left in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    md = ["# fastflow benchmark report", ""]
    device_line = None
    sections = []
    goals = []

    note = ("note", lambda r: (r.get("reason") or r.get("note") or "")[:80])
    for name, xkey, xlabel, what, title, columns in (
        ("field", "useful_flop", "useful FLOP (4 B R d)", "PFGM target",
         "The field engine: PFGM's training target (bench_field.py)",
         [("size (B, R, d)", lambda r: f"{r['size']} ({r['B']}, {r['R']}, {r['d']})"), ("provider", _get("provider")),
          ("median ms", lambda r: fmt_num(r.get("median_ms"), ".4g")), ("IQR ms", lambda r: fmt_num(r.get("iqr_ms"), ".4g")),
          ("peak memory", lambda r: fmt_bytes(r.get("peak_mem_bytes"))),
          ("× official", lambda r: fmt_num(r.get("speedup_vs_official"), unit="×")), note]),
        ("prior", "bytes_written", "bytes written", "prior draws", "Prior and perturbation draws (bench_prior.py)",
         [("size", _get("size")), ("provider", _get("provider")), ("median ms", lambda r: fmt_num(r.get("median_ms"), ".4g")),
          ("GB/s", lambda r: fmt_num(r.get("gbs"))), ("peak memory", lambda r: fmt_bytes(r.get("peak_mem_bytes"))),
          note])):
        meta, rows = _rows(out / f"{name}.json")
        if not rows:
            continue
        device_line = device_line or _device(rows[0])
        fig, ax = plt.subplots(1, 2, figsize=(11, 4))
        plotted = [r for r in rows if r["provider"] != "sgemm"]
        _lines(ax[0], plotted, xkey, "median_ms", xlabel, "median ms", f"{what}: time")
        _lines(ax[1], plotted, xkey, "peak_mem_bytes", xlabel, "peak extra bytes", f"{what}: peak memory")
        sections.append((title, _savefig(fig, out / f"{name}.png"), _table(rows, columns)))
        goals += meta.get("goals", [])

    meta, rows = _rows(out / "ode_step.json")
    if rows:
        device_line = device_line or _device(rows[0])
        fig, ax = plt.subplots(figsize=(7, 4))
        _bars(ax, rows, "call", "median_ms", "median ms", f"ODE step updates, ({rows[0]['B']}, {rows[0]['d']})")
        png = _savefig(fig, out / "ode_step.png")
        table = _table(rows, [("call", _get("call")), ("provider", _get("provider")), ("dtype", _get("dtype")),
                              ("median ms", lambda r: fmt_num(r.get("median_ms"), ".4g")),
                              ("GB/s", lambda r: fmt_num(r.get("gb_per_s")))])
        sections.append(("The fused ODE step updates (bench_ode_step.py)", png, table))

    meta, rows = _rows(out / "solvers.json")
    if rows:
        device_line = device_line or _device(rows[0])
        fig, ax = plt.subplots(1, 2, figsize=(11, 4))
        _bars(ax[0], rows, "workload", "overhead_per_call_ms", "ms per evaluation of f", "solver overhead")
        _bars(ax[1], rows, "workload", "median_ms", "ms", "end to end")
        png = _savefig(fig, out / "solvers.png")
        table = _table(rows, [("workload (B, d)", lambda r: f"{r['workload']} ({r['B']}, {r['d']})"),
                              ("provider", _get("provider")), ("end to end ms", lambda r: fmt_num(r.get("median_ms"), ".4g")),
                              ("overhead ms / call", lambda r: fmt_num(r.get("overhead_per_call_ms"), ".4g")),
                              ("calls", _get("calls")), ("sample-evals", _get("sample_evals")), note])
        sections.append(("ODE solvers (bench_solvers.py)", png, table))
        quick = any(r.get("quick") for r in rows)
        goals += [dict(g, status=f"{g['status']} at quick sizes (stated for the full sizes)") if quick and g["status"]
                  else g for g in meta.get("goals", [])]

    meta, rows = _rows(out / "construction.json")
    if rows:
        device_line = device_line or _device(rows[0])
        fig, ax = plt.subplots(figsize=(8, 4))
        _bars(ax, rows, "size", "median_ms", "median ms", "velocity of a user psi against the closed form")
        png = _savefig(fig, out / "construction.png")
        table = _table(rows, [("size (B, R, d)", lambda r: f"{r['size']} ({r['B']}, {r['R']}, {r['d']})"),
                              ("provider", _get("provider")),
                              ("median ms", lambda r: fmt_num(r.get("median_ms"), ".4g")),
                              ("× builtin_tanh", lambda r: fmt_num(r.get("ratio_to_builtin"), ".3g", "×")),
                              ("fp32 vs fp64", lambda r: fmt_num(r.get("rel_err_fp32"), ".1e"))])
        sections.append(("User-built constructions: a radial CDF as a callable (bench_construction.py)", png, table))
        goals += meta.get("goals", [])

    meta, rows = _rows(out / "ot.json")
    if rows:
        device_line = device_line or _device(rows[0])
        sk = [dict(r, eps_label=f"eps {r['eps_frac']} x mean") for r in rows if r["kind"] == "sinkhorn"]
        fig, ax = plt.subplots(1, 2, figsize=(11, 4))
        _bars(ax[0], sk, "eps_label", "median_ms", "ms (cost matrix included)", "Sinkhorn to an L1 error of 1e-6")
        _bars(ax[1], sk, "eps_label", "ms_per_iteration", "ms per iteration", "per iteration")
        png = _savefig(fig, out / "ot.png")
        table = _table(rows, [("kind", _get("kind")), ("eps / mean cost", _get("eps_frac")),
                              ("provider", _get("provider")), ("median ms", lambda r: fmt_num(r.get("median_ms"), ".4g")),
                              ("iterations", _get("iterations")), ("peak memory", lambda r: fmt_bytes(r.get("peak_bytes"))),
                              ("marginal L1", lambda r: fmt_num(r.get("marginal_l1"), ".1e")),
                              ("× POT", lambda r: fmt_num(r.get("speedup_vs_pot"), ".3g", "×"))])
        sections.append((f"Minibatch OT, B = R = {rows[0]['B']}, d = {rows[0]['d']} (bench_ot.py)", png, table))
        goals += meta.get("goals", [])

    if not sections:
        raise FileNotFoundError(f"no benchmark JSON (field / prior / ode_step / solvers / construction / ot .json) in "
                                f"{out}")
    md += [f"Device: {device_line}. Medians over repeated calls; peak memory is the extra memory of one call "
           "(see each script's log for the method). Generated by `python benchmarks/run.py`.", ""]
    if goals:
        md += ["## Goals", ""]
        md += [f"- **{g['status'] or 'N/A'}** {g.get('scope', '')}: {g['goal']} — {g.get('detail', '')}"
               for g in goals]
        md.append("")
    for title, png, table in sections:
        md += [f"## {title}", "", f"![{title}]({png})", "", *table, ""]
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path


def _device(row: dict) -> str:
    name = row.get("device_name") or row.get("device")
    extra = f", {row['num_threads']} threads" if row.get("num_threads") else ""
    return f"{name} ({row.get('device')}{extra}), torch {row.get('torch', '?')}"

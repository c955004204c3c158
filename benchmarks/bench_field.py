"""Benchmark of PFGM's training target, the empirical Poisson field (docs/math.md-§5), provider by provider.

Every provider computes the same (B, d+1) tensor, ``fastflow.pfgm.target(x, z, ref, gamma=5)``:

- ``official``: the faithful port of the official PFGM code (``fastflow.testing.pfgm_target_official``), which
  materialises [B, R, d+1] tensors (6.4 GB each at the CIFAR size).
- ``torch_dense``: plain PyTorch, GEMM + softmax + GEMM, materialising B x R (written below).
- ``fastflow_torch``, ``fastflow_triton``: fastflow's streaming backends. ``triton`` runs on CUDA only; on the CPU it
  needs Triton's interpreter, which is for tests and far too slow to benchmark. (The ``reference`` backend is the
  float64 direct-difference version for tests, not a contender.)

Each provider's output is checked once per size against fastflow's torch backend (max over rows of
||out_i - ref_i|| / ||ref_i||), and fastflow's torch backend itself against its float64 run where affordable.

Useful work is 4*B*R*d FLOP (two B x R x d products). The ceiling is the machine's own fp32 GEMM, measured in the
same run at the same shapes: one bare (B, d) x (d, R) sgemm, and the pair (B, d) x (d, R) + (B, R) x (R, d).

Data (seeded, identical on every device): ref ~ U(-1, 1)^d like CIFAR pixels; z log-uniform in [0.05, 40] (PFGM
draws z = |N(0, s^2)| (1+tau)^m with m uniform, i.e. roughly log-uniform, and z_max = 40 on CIFAR-10); and
x = ref[:B] + z * eps with eps ~ N(0, I_d), so ||x - x0|| ~ z sqrt(d) as in PFGM's perturbation (its scalar
|N(0, 1)| factor set to 1). Small z gives a field dominated by x's own source, large z a near-uniform softmax.

Usage::

    python benchmarks/bench_field.py --quick                 # two small sizes, well under a minute on 2 CPU cores
    python benchmarks/bench_field.py --sizes cpu_goal stf celeba
    python benchmarks/bench_field.py                         # every size (on CUDA: the GPU goals)
    python benchmarks/bench_field.py --sizes cpu_goal --divergence-only   # Family.divergence against velocity

``--divergence`` (or ``--divergence-only``, without the providers above) also times ``Family.divergence`` (the exact
trace of the velocity's Jacobian, one streaming pass) against ``Family.velocity`` for Poisson(D=1) on the same data,
interleaved call by call, and reports the median of the paired ratios (rows ``family.velocity`` /
``family.divergence``; goal on the CPU: at most 2x at (128, 1024, 3072)).

Rows are merged into ``--out`` (default ``benchmarks/results/field_<device>.json``): a row replaces an earlier row
of the same device, size and provider; ``--fresh`` discards the earlier rows.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import zlib
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

import fastflow
import fastflow._core.dispatch
from fastflow.testing import pfgm_target_official

#: name -> (B, R, d). The CPU goal size is the one the CPU goals are judged at.
SIZES = {
    "small": (32, 256, 3072),
    "cpu_goal": (128, 1024, 3072),
    "stf": (64, 1024, 3072),  # STF: a reference batch of ~1024 CIFAR images
    "cifar": (128, 4096, 3072),  # PFGM's CIFAR-10 recipe: the first 128 of a 4096 batch
    "celeba": (128, 512, 12288),  # 64 x 64 x 3
    "lsun": (32, 32, 196608),  # 256 x 256 x 3
    "scaleout": (512, 65536, 3072),  # fastflow alone: the materialising providers would need ~1.2 TB
}
QUICK_SIZES = ("small", "cpu_goal")
FASTFLOW_ONLY = {"scaleout"}
PROVIDERS = ("official", "torch_dense", "fastflow_torch", "fastflow_triton", "fastflow_triton:tf32",
             "fastflow_triton:bf16")
GAMMA = 5.0
Z_RANGE = (0.05, 40.0)
#: share of the available memory a provider may plan to use (allocator slack, fragmentation, other processes)
SAFETY = 0.7
#: float64 check of fastflow's torch backend up to this many FLOP on the CPU (fp64 GEMMs are ~2x slower there)
FP64_CHECK_FLOP_CPU = 2e10


# ------------------------------------------------------------------------------------------------- providers


def torch_dense(x: torch.Tensor, z: torch.Tensor, ref: torch.Tensor, gamma: float = GAMMA) -> torch.Tensor:
    """PFGM's target in plain PyTorch: GEMM + softmax + GEMM, materialising B x R (no centring, no streaming).

    r^2 = ||x||^2 + ||y||^2 - 2 x.y (clamped at 0), log w = -(d+1)/2 log(z^2 + r^2), xbar = softmax(log w) @ ref,
    E = (xbar - x, -z), target = sqrt(d) E / (||E|| + gamma).
    """
    B, R = x.shape[0], ref.shape[0]
    x2, y2 = x.reshape(B, -1), ref.reshape(R, -1)
    d = x2.shape[1]
    xn, yn = (x2 * x2).sum(dim=1), (y2 * y2).sum(dim=1)
    r2 = torch.addmm(xn[:, None] + yn[None, :], x2, y2.t(), alpha=-2.0).clamp_min_(0.0)  # (B, R)
    logw = r2.add_((z * z)[:, None]).log_().mul_(-(d + 1) / 2.0)
    xbar = torch.softmax(logw, dim=1) @ y2  # (B, d)
    E = torch.cat([xbar - x2, -z[:, None].to(x2.dtype)], dim=1)
    return math.sqrt(d) * E / (torch.linalg.vector_norm(E, dim=1, keepdim=True) + gamma)


def _backend(provider: str) -> str:
    """fastflow_<backend>[:<precision>] -> backend."""
    return provider.removeprefix("fastflow_").partition(":")[0]


def make_fn(provider: str, x, z, ref):
    if provider == "official":
        return lambda: pfgm_target_official(x, z, ref, GAMMA)
    if provider == "torch_dense":
        return lambda: torch_dense(x, z, ref, GAMMA)
    # "fastflow_triton:tf32" -> the opt-in precision; its rel err column (vs fastflow_torch, IEEE fp32) measures it
    backend, _, precision = provider.removeprefix("fastflow_").partition(":")
    return lambda: fastflow.pfgm.target(x, z, ref, gamma=GAMMA, backend=backend, precision=precision or "ieee")


def memory_estimate(provider: str, B: int, R: int, d: int, itemsize: int) -> int:
    """Bytes a provider's temporaries need (its inputs already exist), to skip what would not fit."""
    out = B * (d + 1) * itemsize
    if provider == "official":
        # (y - y0) and its square, then diff = -(y - y0) and coeff * diff: two [B, R, d+1] live at a time (the
        # measured CPU peak at (128, 1024, 3072) is 2.0x); 3x leaves room for the allocator and other processes.
        return 3 * B * R * (d + 1) * itemsize + 4 * out
    if provider == "torch_dense":
        return 4 * B * R * itemsize + 4 * out
    if provider == "fastflow_torch":
        from fastflow.field.torch_backend import chunk_rows

        Cr = min(R, chunk_rows(B, d, itemsize))
        # the chunk's budget, plus as much again for validation and centring temporaries (measured: ~1.7x)
        return 2 * Cr * (d + 3 * B) * itemsize + 6 * out
    # fastflow_triton: the (B, N) log-weight buffer (N = min(R, 16384)) and a few (B, d)
    return B * min(R, 16384) * itemsize + 6 * out


def make_data(name: str, B: int, R: int, d: int, seed: int, device: torch.device):
    """ref ~ U(-1, 1), z log-uniform in Z_RANGE, x = ref[:B] + z * N(0, I); seeded by (seed, size name)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    ref = torch.rand(R, d, generator=g).mul_(2.0).sub_(1.0)
    lo, hi = math.log(Z_RANGE[0]), math.log(Z_RANGE[1])
    z = torch.rand(B, generator=g).mul_(hi - lo).add_(lo).exp_()
    x = ref[:B] + z[:, None] * torch.randn(B, d, generator=g)
    return x.to(device), z.to(device), ref.to(device)


def max_rel_err(out: torch.Tensor, ref_out: torch.Tensor) -> float:
    """max_i ||out_i - ref_i|| / ||ref_i|| in float64 (a single broken row shows)."""
    a, b = out.double().reshape(len(out), -1), ref_out.double().reshape(len(ref_out), -1)
    num = torch.linalg.vector_norm(a - b, dim=1)
    den = torch.linalg.vector_norm(b, dim=1).clamp_min(torch.finfo(torch.float64).tiny)
    return float((num / den).max())


# ---------------------------------------------------------------------------------------------------- runner


def n_repeats(provider: str, first_call_s: float, args) -> int:
    """Repeats for a provider: ``--repeats``, fewer for the slow official, capped by ``--budget-s`` (>= 3)."""
    n = args.repeats
    if provider == "official":
        n = min(n, 2 if args.quick else 3)
    if first_call_s > 0:
        n = min(n, max(3 if provider != "official" else 1, math.ceil(args.budget_s / first_call_s)))
    return max(1, n)


def global_warmup(device: torch.device, providers, ff_backends) -> None:
    """One call of every provider on a tiny problem: lazy imports, the extension, JIT compilation, thread pools."""
    x, z, ref = make_data("warmup", 4, 8, 16, 0, device)
    for p in providers:
        if p.startswith("fastflow_") and _backend(p) not in ff_backends:
            continue
        make_fn(p, x, z, ref)()
    C.synchronize(device)


def bench_size(name, device, providers, ff_backends, args, meta) -> list[dict]:
    B, R, d = SIZES[name]
    flop = 4.0 * B * R * d
    base = dict(meta, size=name, B=B, R=R, d=d, dtype="float32", useful_flop=flop, timestamp=C.utc_now())
    t_setup = time.perf_counter()
    x, z, ref = make_data(name, B, R, d, args.seed, device)
    print(f"\n== {name}: B={B} R={R} d={d}  ({flop / 1e9:.3g} GFLOP of useful work; data "
          f"{time.perf_counter() - t_setup:.1f} s)", flush=True)
    rows = []

    # The machine's own ceiling at these shapes: one sgemm, and the two sgemms of the computation.
    xa, ya = x.reshape(B, -1), ref.reshape(R, -1)
    w = torch.rand(B, R, device=device)

    def sgemm():
        return torch.mm(xa, ya.t())

    def two_sgemm():
        return torch.mm(xa, ya.t()), torch.mm(w, ya)

    first = C.time_fn(two_sgemm, device, repeats=1, warmup=1).median * 1e-3
    n = n_repeats("sgemm", first, args)
    sg1 = C.time_fn(sgemm, device, repeats=n, warmup=1)
    sg2 = C.time_fn(two_sgemm, device, repeats=n)
    ceiling = 2.0 * B * R * d / (sg1.median * 1e-3) / 1e9
    two_ms = sg2.median
    for prov, tm, fl, shape in (("sgemm", sg1, flop / 2, "(B,d)x(d,R)"),
                                ("two_sgemm", sg2, flop, "(B,d)x(d,R) + (B,R)x(R,d)")):
        rows.append(dict(base, provider=prov, **tm.as_dict(), gflops=fl / (tm.median * 1e-3) / 1e9,
                         ceiling_gflops=ceiling, two_sgemm_ms=two_ms, skipped=False, reason=None,
                         cpu_pressure_avg10=C.cpu_pressure() if device.type == "cpu" else None,
                         note=f"bare fp32 {shape}"))
    print(f"   ceiling: sgemm (B,d)x(d,R) {sg1.median:.3g} ms = {ceiling:.4g} GFLOP/s; "
          f"two sgemms {two_ms:.3g} ms", flush=True)

    # fastflow's torch backend is the yardstick of correctness for the others.
    ref_out = fastflow.pfgm.target(x, z, ref, gamma=GAMMA, backend="torch")
    fp64_err = None
    if device.type == "cuda" or flop <= FP64_CHECK_FLOP_CPU:
        out64 = fastflow.pfgm.target(x.double(), z.double(), ref.double(), gamma=GAMMA, backend="torch")
        fp64_err = max_rel_err(ref_out, out64)
        del out64

    avail, avail_src = C.available_memory(device)
    for prov in providers:
        row = dict(base, provider=prov, skipped=False, reason=None, note=None, ceiling_gflops=ceiling,
                   two_sgemm_ms=two_ms, two_sgemm_paired=False)
        est = memory_estimate(prov, B, R, d, 4)
        row["mem_estimate_bytes"] = est
        reason = None
        if prov.startswith("fastflow_") and _backend(prov) not in ff_backends:
            reason = ff_backends_missing(prov, device)
        elif name in FASTFLOW_ONLY and not prov.startswith("fastflow_"):
            reason = f"fastflow-only size (would need ~{C.fmt_bytes(memory_estimate(prov, B, R, d, 4))})"
        elif est > SAFETY * avail:
            reason = (f"would not fit: needs ~{C.fmt_bytes(est)}, {SAFETY:.0%} of available "
                      f"{C.fmt_bytes(avail)} ({avail_src}) is {C.fmt_bytes(SAFETY * avail)}")
        if reason is not None:
            rows.append(dict(row, skipped=True, reason=reason))
            print(f"   {prov:15s} skipped: {reason}", flush=True)
            continue

        fn = make_fn(prov, x, z, ref)
        # First call: warm-up at this size, correctness check and peak memory (everything process-wide was
        # already warmed up on a tiny problem, so this call's extra memory is the provider's own).
        if prov == "official":
            print(f"   {prov:15s} first call (~{C.fmt_bytes(est)} of [B,R,d+1] temporaries) ...", end="",
                  flush=True)
        t0 = time.perf_counter()
        out, peak = C.peak_memory(fn, device)
        C.synchronize(device)
        first_s = time.perf_counter() - t0
        if prov == "official":
            print(f" {first_s:.1f} s", flush=True)
        row["rel_err"] = max_rel_err(out, ref_out)
        row["rel_err_ref"] = "fastflow_torch"
        if prov == "fastflow_torch":
            row["rel_err"], row["rel_err_ref"] = fp64_err, "fastflow_torch float64" if fp64_err is not None else None
            if fp64_err is None:
                row["note"] = f"float64 check skipped on the CPU above {FP64_CHECK_FLOP_CPU:.0e} FLOP"
        elif prov == "official":
            row["note"] = "materialises [B, R, d+1]"
        del out
        row["peak_mem_bytes"] = peak
        n = n_repeats(prov, first_s, args)
        desc = f"   {name}/{prov} ({n} timed calls)" if first_s * n > 3.0 else None
        if prov == "official":
            tm = C.time_fn(fn, device, repeats=n, progress_desc=desc)
        else:
            # Interleaved with the two bare sgemms, so that their ratio compares calls made under the same load.
            tm, pair = C.time_interleaved([fn, two_sgemm], device, repeats=n, progress_desc=desc)
            row["two_sgemm_ms"] = pair.median
            row["two_sgemm_paired"] = True
        row.update(tm.as_dict())
        row["gflops"] = flop / (tm.median * 1e-3) / 1e9
        # The ceiling is the best GEMM rate measured at these shapes: the bare sgemm, or the two sgemms (alone or
        # interleaved with this provider), so that a burst of load during one of them does not lower it.
        row["ceiling_gflops"] = max(ceiling, flop / (sg2.median * 1e-3) / 1e9,
                                    flop / (row["two_sgemm_ms"] * 1e-3) / 1e9)
        row["fraction_of_ceiling"] = row["gflops"] / row["ceiling_gflops"]
        row["ratio_vs_two_sgemm"] = tm.median / row["two_sgemm_ms"]
        row["cpu_pressure_avg10"] = C.cpu_pressure() if device.type == "cpu" else None
        rows.append(row)
        print(f"   {prov:15s} {tm.median:10.4g} ms  (IQR {tm.as_dict()['iqr_ms']:.3g} ms, n={n})  "
              f"peak +{C.fmt_bytes(peak)}  rel err {C.fmt_num(row['rel_err'], '.1e')}  "
              f"{row['ratio_vs_two_sgemm']:.3g}x two sgemms", flush=True)

    off = next((r for r in rows if r["provider"] == "official" and not r["skipped"]), None)
    for r in rows:
        r["speedup_vs_official"] = (off["median_ms"] / r["median_ms"]
                                    if off is not None and r.get("median_ms") and r["provider"] in PROVIDERS
                                    else None)
        r["mem_vs_official"] = (r["peak_mem_bytes"] / off["peak_mem_bytes"]
                                if off is not None and r.get("peak_mem_bytes") is not None
                                and off.get("peak_mem_bytes") and r["provider"] in PROVIDERS else None)
    del x, z, ref, ref_out, xa, ya, w
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def bench_divergence(name, device, args, meta) -> list[dict]:
    """``Family.divergence`` against ``Family.velocity`` (Poisson(D=1) at t = z, the default backend) on this size's
    data, timed interleaved; the divergence is checked against its float64 run where affordable."""
    B, R, d = SIZES[name]
    x, z, ref = make_data(name, B, R, d, args.seed, device)
    fam = fastflow.Poisson(D=1)

    def velocity():
        return fam.velocity(x, z, ref)

    def divergence():
        return fam.divergence(x, z, ref)

    base = dict(meta, size=name, B=B, R=R, d=d, dtype="float32", timestamp=C.utc_now(), skipped=False, reason=None)
    out, peak_d = C.peak_memory(divergence, device)
    _, peak_v = C.peak_memory(velocity, device)
    rel_err = None
    if device.type == "cuda" or 4.0 * B * R * d <= FP64_CHECK_FLOP_CPU:
        want = fam.divergence(x.double(), z.double(), ref.double())
        rel_err = float(((out.double() - want).abs() / want.abs()).max())
    n = max(3, args.repeats)
    desc = f"   {name}/divergence ({n} rounds)" if n > 5 else None
    tv, td = C.time_interleaved([velocity, divergence], device, repeats=n, progress_desc=desc)
    ratios = [b / a for a, b in zip(tv.times_ms, td.times_ms)]
    ratio = statistics.median(ratios)
    rows = [dict(base, provider="family.velocity", **tv.as_dict(), peak_mem_bytes=peak_v,
                 note="Poisson(D=1).velocity"),
            dict(base, provider="family.divergence", **td.as_dict(), peak_mem_bytes=peak_d, rel_err=rel_err,
                 rel_err_ref="family.divergence float64" if rel_err is not None else None,
                 ratio_vs_velocity=ratio, ratio_vs_velocity_of_medians=td.median / tv.median,
                 note=f"Poisson(D=1).divergence: {ratio:.3g}x velocity (median of {n} paired ratios)")]
    print(f"   divergence vs velocity: {td.median:.4g} ms / {tv.median:.4g} ms, median paired ratio {ratio:.3g}x "
          f"(IQR of the ratios {C.fmt_num(_iqr(ratios), '.2g')}); peak +{C.fmt_bytes(peak_d)} vs "
          f"+{C.fmt_bytes(peak_v)}; fp32 rel err {C.fmt_num(rel_err, '.1e')}", flush=True)
    return rows


def _iqr(v: list[float]) -> float | None:
    if len(v) < 2:
        return None
    q = statistics.quantiles(v, n=4)
    return q[2] - q[0]


def ff_backends_missing(prov: str, device: torch.device) -> str:
    if _backend(prov) == "triton" and device.type == "cpu":
        return ("triton runs on the CPU only under Triton's interpreter (TRITON_INTERPRET=1, for tests), "
                "far too slow to benchmark")
    info = fastflow.backends()
    return f"fastflow backend unavailable here (triton: {info['triton_error'] or 'ok'}, cuda: {info['cuda']})"


def machine_ceiling(device: torch.device, repeats: int) -> dict:
    """The best fp32 GEMM rate of the device: a square n^3 sgemm (n = 2048 on CPU, 8192 on CUDA)."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.rand(n, n, device=device), torch.rand(n, n, device=device)
    tm = C.time_fn(lambda: torch.mm(a, b), device, repeats=max(3, min(repeats, 10)), warmup=2)
    return {"n": n, "median_ms": tm.median, "gflops": 2.0 * n**3 / (tm.median * 1e-3) / 1e9}


# ----------------------------------------------------------------------------------------------------- goals


def _find(rows, size, provider):
    return next((r for r in rows if r["size"] == size and r["provider"] == provider and not r.get("skipped")), None)


def evaluate_goals(rows: list[dict], device: torch.device, default_backend: str) -> list[dict]:
    """The issue's performance goals, judged on the rows (PASS / FAIL / N/A); reported, never asserted."""
    goals = []

    def add(scope, text, value, ok, detail):
        status = "N/A" if ok is None else ("PASS" if ok else "FAIL")
        goals.append({"scope": scope, "goal": text, "status": status, "value": value, "detail": detail})

    on_cpu = device.type == "cpu"
    ffs = ["fastflow_torch"] if on_cpu else [f"fastflow_{default_backend}"] + [
        p for p in ("fastflow_triton", "fastflow_torch") if p != f"fastflow_{default_backend}"]
    for scope, active in (("CPU", on_cpu), ("GPU", not on_cpu)):
        for ff in (ffs if active else ["fastflow"]):
            tag = f"{ff}{' (default)' if active and not on_cpu and ff == ffs[0] else ''}"
            if scope == "CPU":
                specs = [("cpu_goal", "speedup", 100.0, ">= 100x faster than official at (128, 1024, 3072)"),
                         ("cpu_goal", "two_sgemm", 1.5, "within 1.5x of two bare sgemms at (128, 1024, 3072)")]
            else:
                specs = [("cifar", "speedup", 200.0, ">= 200x faster than official at CIFAR (128, 4096, 3072)"),
                         ("cifar", "memory", 0.01, "<= 1% of official's peak memory at CIFAR"),
                         ("scaleout", "roofline", 0.5, ">= 50% of the fp32 roofline at (512, 65536, 3072)")]
            for size, kind, thr, text in specs:
                text = f"{tag}: {text}"
                if not active:
                    add(scope, text, None, None, f"not a {device.type} run")
                    continue
                r = _find(rows, size, ff)
                if r is None:
                    add(scope, text, None, None, f"no {ff} row at size {size!r} (run --sizes {size})")
                    continue
                if kind == "speedup":
                    v = r.get("speedup_vs_official")
                    off = next((q for q in rows if q["size"] == size and q["provider"] == "official"), None)
                    why = off.get("reason") if off else "not run"
                    add(scope, text, v, None if v is None else v >= thr,
                        f"{v:.3g}x" if v is not None else f"official not measured ({why})")
                elif kind == "two_sgemm":
                    v = r.get("ratio_vs_two_sgemm")
                    add(scope, text, v, v <= thr, f"{r['median_ms']:.3g} ms / {r['two_sgemm_ms']:.3g} ms = {v:.3g}x")
                elif kind == "memory":
                    v = r.get("mem_vs_official")
                    add(scope, text, v, None if v is None else v <= thr,
                        f"{v:.3%}" if v is not None else "official's peak memory not measured")
                else:  # roofline: against the best measured fp32 GEMM rate (this shape's or the square one)
                    peak = max(r["ceiling_gflops"], r.get("machine_sgemm_gflops") or 0.0)
                    v = r["gflops"] / peak
                    add(scope, text, v, v >= thr, f"{r['gflops']:.4g} / {peak:.4g} GFLOP/s = {v:.1%}")
    r = _find(rows, "cpu_goal", "family.divergence")
    text = "Family.divergence within 2x Family.velocity at (128, 1024, 3072)"
    if not on_cpu:
        add("CPU", text, None, None, f"not a {device.type} run")
    elif r is None:
        add("CPU", text, None, None, "no divergence row at size 'cpu_goal' (run --sizes cpu_goal --divergence)")
    else:
        v = r["ratio_vs_velocity"]
        add("CPU", text, v, v <= 2.0, f"median paired ratio {v:.3g}x")
    return goals


# ------------------------------------------------------------------------------------------------------ main

COLUMNS = [
    ("size", lambda r: r["size"]),
    ("B", lambda r: r["B"]),
    ("R", lambda r: r["R"]),
    ("d", lambda r: r["d"]),
    ("provider", lambda r: r["provider"]),
    ("median ms", lambda r: C.fmt_num(r.get("median_ms"), ".4g")),
    ("IQR ms", lambda r: C.fmt_num(r.get("iqr_ms"), ".2g")),
    ("n", lambda r: r.get("n_repeats", "-")),
    ("peak mem", lambda r: C.fmt_bytes(r.get("peak_mem_bytes"))),
    ("GFLOP/s", lambda r: C.fmt_num(r.get("gflops"), ".4g")),
    ("% ceil", lambda r: C.fmt_num(100 * r["fraction_of_ceiling"], ".3g") + "%"
     if r.get("fraction_of_ceiling") is not None else "-"),
    ("x official", lambda r: C.fmt_num(r.get("speedup_vs_official"), ".3g") + "x"
     if r.get("speedup_vs_official") is not None else "-"),
    ("/ 2 sgemm", lambda r: C.fmt_num(r.get("ratio_vs_two_sgemm"), ".3g") + "x"
     if r.get("ratio_vs_two_sgemm") is not None else "-"),
    ("max rel err", lambda r: C.fmt_num(r.get("rel_err"), ".1e")),
    ("note", lambda r: ("SKIPPED: " + r["reason"]) if r.get("skipped") else (r.get("note") or "")),
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="sizes: " + ", ".join(f"{k}={v}" for k, v in SIZES.items()))
    p.add_argument("--sizes", nargs="+", choices=list(SIZES) + ["all"], default=None,
                   help="size names (default: all but small; with --quick: " + " ".join(QUICK_SIZES) + ")")
    p.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(PROVIDERS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="small sizes only, fewer repeats (the README's job)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per provider (default 10, quick 5)")
    p.add_argument("--budget-s", type=float, default=15.0,
                   help="cap on the timed seconds per provider and size (at least 3 calls; official: fewer)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="JSON file (default benchmarks/results/field_<device>.json)")
    p.add_argument("--fresh", action="store_true", help="do not keep the earlier rows of --out")
    p.add_argument("--divergence", action="store_true",
                   help="also time Family.divergence against Family.velocity at each size")
    p.add_argument("--divergence-only", action="store_true", help="--divergence, and none of the providers")
    args = p.parse_args(argv)
    if args.divergence_only:
        args.divergence = True
        args.providers = []
    if args.repeats is None:
        args.repeats = 5 if args.quick else 10
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.sizes is None:
        args.sizes = list(QUICK_SIZES) if args.quick else [s for s in SIZES if s != "small"]
    elif "all" in args.sizes:
        args.sizes = list(SIZES)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = C.start_run(args)
    torch.set_float32_matmul_precision("highest")  # true fp32 GEMMs everywhere (docs/math.md: tf32 is opt-in)

    info = fastflow.backends()
    ff_backends = [b for b in ("torch", "triton") if b in info["field_backends"]]
    if device.type == "cpu":
        ff_backends = [b for b in ff_backends if b != "triton"]  # interpreter only: not benchmarked
    default_backend = fastflow._core.dispatch.select_backend(device)
    run_ts = C.utc_now()
    meta = dict(benchmark="bench_field", timestamp=run_ts, **C.device_info(device), **C.versions(),
                fastflow_C=info["C"], fastflow_C_cuda=info["C_cuda"], matmul_precision="ieee",
                cpu_pressure_avg10=C.cpu_pressure() if device.type == "cpu" else None,
                mem_method=C.memory_method(device), gamma=GAMMA, z_range=list(Z_RANGE), seed=args.seed)
    out_path = args.out or C.RESULTS_DIR / f"field_{C.device_kind(device)}.json"

    print(f"bench_field: {meta['device_name']} ({device.type}, {meta['num_threads']} threads), torch {meta['torch']}, "
          f"triton {meta['triton']}, python {meta['python']}, fastflow {meta['fastflow']} (C ext: {info['C']})")
    print(f"providers: {', '.join(args.providers)}; fastflow backends benchmarked here: {', '.join(ff_backends)}")
    print(f"peak memory: {meta['mem_method']}")
    C.start_notes(meta)

    t_start = time.perf_counter()
    with C.fp32_ieee_matmul():
        global_warmup(device, args.providers, ff_backends)
        mc = machine_ceiling(device, args.repeats)
        print(f"machine fp32 ceiling: square {mc['n']}^3 sgemm {mc['median_ms']:.3g} ms = {mc['gflops']:.4g} GFLOP/s")
        rows = []
        for name in args.sizes:
            for r in (bench_size(name, device, args.providers, ff_backends, args, meta) if args.providers else []):
                r["machine_sgemm_gflops"] = mc["gflops"]
                rows.append(C.json_safe(r))
            if args.divergence:
                if not args.providers:
                    print(f"\n== {name}: B={SIZES[name][0]} R={SIZES[name][1]} d={SIZES[name][2]}", flush=True)
                rows.extend(C.json_safe(r) for r in bench_divergence(name, device, args, meta))
    elapsed = time.perf_counter() - t_start

    print(f"\nresults ({elapsed:.0f} s). median: over n timed calls after a warm-up call; peak mem: extra memory of "
          "one call;\nGFLOP/s: 4BRd / median; % ceil: against the best bare fp32 GEMM rate at these shapes; / 2 sgemm: "
          "median / median\nof the two bare sgemms (timed interleaved with the provider, except official); max rel err:"
          " vs fastflow_torch (fastflow_torch: vs its float64 run)\n")
    C.print_table(rows, COLUMNS)

    old = [] if args.fresh else C.load_rows(out_path)
    merged, kept = C.merge_rows(old, rows, key=("device", "device_name", "size", "provider"))
    order = {s: i for i, s in enumerate(SIZES)}
    prov_order = {p: i for i, p in enumerate(("sgemm", "two_sgemm") + PROVIDERS)}
    merged.sort(key=lambda r: (r.get("device", ""), r.get("device_name", ""), order.get(r["size"], 99),
                               prov_order.get(r["provider"], 99)))
    same_dev = [r for r in merged if r.get("device") == device.type and r.get("device_name") == meta["device_name"]]
    goals = evaluate_goals(same_dev, device, default_backend)
    print("\ngoals (reported, not asserted)" + (f"; judged on this run's rows plus {kept} kept from earlier runs in "
                                                 f"{out_path.name}" if kept else ""))
    for g in goals:
        print(f"  [{g['status']:4s}] {g['scope']}: {g['goal']} -- {g['detail']}")

    C.pressure_note(rows, device, "Each parallel region of a multi-threaded op can then stall for a scheduler "
                    "tick (~4 ms), which hurts providers made of many small ops most")

    C.write_results(out_path, benchmark="bench_field",
                    description="PFGM target fastflow.pfgm.target(x, z, ref): providers side by side (see bench_field.py)",
                    run_ts=run_ts, device=device, meta=meta, elapsed=elapsed, goals=goals, merged=merged,
                    n_new=len(rows), kept=kept, machine_sgemm=mc)
    return 0


if __name__ == "__main__":
    sys.exit(main())

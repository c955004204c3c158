"""Benchmark of the prior draws x_T = T g / ||h|| of PFGM (D = 1) and PFGM++ (D > 1), provider by provider.

docs/math.md: the prior radius satisfies (||x_T|| / T)^2 ~ BetaPrime(d/2, D/2); the exact draw is
x_T = T g / ||h|| with g ~ N(0, I_d) and h ~ N(0, I_D) (D = 1: T g / |s|, PFGM's multivariate Cauchy).

Providers (every one draws n = B points of dimension d, float32 unless stated):

- ``official`` (D = 1 only): PFGM's ``Poisson.prior_sampling`` (github.com/Newbeeer/Poisson_flow, methods.py), ported
  line by line: float64 ``np.random.beta(d/2, 1/2)`` on the host, r = z_max sqrt(u / (1 - u)), the official clip
  ``np.clip(r, 1, upper_norm)``, a direction from ``torch.randn`` normalised, moved to the device; the (n, d)
  product is float64 (a float64 (n, 1) radius times the float32 direction) and is rounded by ``.float()``.
  Its law is the *clipped* law, not the exact prior: see the KS columns.
- ``pfgmpp_loop``: PFGM++'s ``StackedRandomGenerator.rand_beta_prime`` (github.com/Newbeeer/pfgmpp, generate.py),
  ported line by line: per sample, ``torch.manual_seed(seed)``, a float32 ``Beta(d/2, D/2)`` draw, r = T sqrt(u/(1-u))
  in float64, a ``torch.randn(d)`` direction normalised; the rows are concatenated. Its output is float64 (the
  float64 radius promotes the product), so it writes 8 bytes per element. Two changes that leave its law alone:
  T = sigma_max sqrt(D) is an argument (the original fixes sigma_max = 80 and raises NotImplementedError for
  d >= 256*256*3, i.e. at d = 196608), and at D = 1 it is run too (PFGM's law through PFGM++'s code). Its float32
  Beta never returns 1.0: torch's sampler clamps it to 1 - 2^-24, so instead of an infinite radius the loop puts an
  atom at r = sqrt(2^24 - 1) T ~ 4096 T and quantises the radii near it. With D = 1 that cap holds 1.3% of the draws at
  d = 3072 and 10.5% at d = 196608 (200,000 draws each, torch 2.13); the ``at cap`` column counts them per row.
- ``torch_vectorised``: plain vectorised PyTorch for the exact law: g = randn(n, d), h = randn(n, D),
  g.mul_(T / ||h||) (one (n, d) allocation, in place).
- ``fastflow``: ``fastflow.Poisson(D).prior(n, d, T=T)``, whichever path is active: the fused C++ sampler
  (``torch.ops.fastflow.draw_``) when the extension is loaded, else the pure-torch path. Each row records which ran:
  the ``fastflow::`` ops that the call dispatched (``path``), ``fastflow.backends()["C"]`` and FASTFLOW_DISABLE_C.
- ``fastflow_pfgm`` (D = 1 only): ``fastflow.pfgm.prior(n, d, z_max=T)``, exact (no clip).
- ``fastflow_pfgm_clip`` (D = 1 only): ``fastflow.pfgm.prior(..., upper_norm=U)``, the official clipped law, for a
  like-for-like comparison with ``official``.
- ``fastflow_torchpath``: ``fastflow.Poisson(D).prior`` with the pure-torch path forced (FASTFLOW_DISABLE_C=1 and
  ``fastflow._core.loader.reprobe()`` around the measurement, restored after). Skipped, with a note, when the
  extension is not loaded (``fastflow`` then already measures the torch path).

T and U: for D = 1 the official PFGM sampling configs, z_max / upper_norm = 40 / 3000 at d = 3072 (docs/math.md),
60 / 6000 at d = 12288 (configs/poisson/celeba64_ddpmpp.py), 50 / 20000 at d = 196608 (bedroom_ddpmpp.py). For D > 1,
PFGM++'s T = sigma_max sqrt(D) with sigma_max = 80 (generate.py).

Measurements per size (B, d, D):

- time: median and inter-quartile range over the timed calls (after one untimed call), each provider interleaved
  call by call with ``torch.randn(B, d)`` (the yardstick of the CPU goal), so that the two see the same load;
- GB/s: bytes of the output (B d itemsize) / median, against the write ceiling of this size measured in the same run:
  ``buf.fill_(1.0)`` into a preallocated, already-touched float32 buffer of B d elements, its *fastest* call (a
  ceiling: load from other processes only lowers it; pure store bandwidth, at small sizes cache bandwidth). Also listed as yardstick rows: ``write_fresh`` = ``torch.empty(B*d).fill_(1.0)``
  (allocation and first-touch page faults included, which every provider returning a new tensor pays) and
  ``torch_randn``;
- peak memory of one call (``_common.peak_memory``);
- KS: the radius r = ||x_i|| of each output row (float64) as q = (r / T)^2 against the exact CDF, BetaPrime(d/2, D/2),
  written as betaincc(D/2, d/2, 1/(1+q)) (exact in both tails). One KS test per (size, provider) on the timed
  provider's own first output, so its power is that of n = B points (128 or 1000). For the clipped providers this
  p-value is ~0 by design (the clip moves every radius above U onto the sphere r = U: ~54% of them at d = 3072),
  so they also get an exact test of the clipped law: a KS of the radii strictly inside (1, U) against the
  truncated CDF, and a binomial test of the count on r = U against 1 - F(U); ``p clip law`` is their Bonferroni
  combination, min(1, 2 min(p_interior, p_atom)).

Usage::

    python benchmarks/bench_prior.py --quick          # two small sizes, well under a minute
    python benchmarks/bench_prior.py                  # all 18 sizes (B x d x D)
    python benchmarks/bench_prior.py --B 1000 --d 196608 --D 1 128

Rows are merged into ``--out`` (default ``benchmarks/results/prior_<device>.json``): a row replaces an earlier row
of the same device, size and provider; ``--fresh`` discards the earlier rows.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import special, stats
from torch.distributions import Beta

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

import fastflow

SIZES_B = (128, 1000)
SIZES_d = (3072, 12288, 196608)
SIZES_D = (1, 128, 2048)
QUICK_SIZES = ((128, 3072, 1), (1000, 3072, 128))
#: PFGM's official sampling configs: d -> (z_max, upper_norm) (docs/math.md; celeba64_ddpmpp.py; bedroom_ddpmpp.py)
PFGM_CONFIG = {3072: (40.0, 3000.0), 12288: (60.0, 6000.0), 196608: (50.0, 20000.0)}
#: PFGM++'s generate.py: sigma_max = 80 (for N < 256*256*3), T = sigma_max sqrt(D)
PFGMPP_SIGMA_MAX = 80.0
PROVIDERS = ("official", "pfgmpp_loop", "torch_vectorised", "fastflow", "fastflow_pfgm", "fastflow_pfgm_clip",
             "fastflow_torchpath")
PFGM_ONLY = {"official", "fastflow_pfgm", "fastflow_pfgm_clip"}
CLIPPED = {"official", "fastflow_pfgm_clip"}
FASTFLOW = {"fastflow", "fastflow_pfgm", "fastflow_pfgm_clip", "fastflow_torchpath"}
#: relative tolerance for "on the clip sphere": the float32 output's norm differs from U by ~1e-7 relative
CLIP_RTOL = 1e-5
#: the largest radius / T of PFGM++'s loop: torch's float32 Beta sample is at most 1 - 2^-24, sqrt(u / (1 - u))
BETA32_CAP = math.sqrt(2.0**24 - 1)
#: share of the available memory a provider may plan to use
SAFETY = 0.7
#: the GPU goal is judged at sizes with at least this much output (smaller ones are launch-bound)
GPU_GOAL_MIN_BYTES = 64 * 2**20


# ------------------------------------------------------------------------------------------------- providers


def official_prior(n: int, d: int, z_max: float, upper_norm: float, device: torch.device) -> torch.Tensor:
    """PFGM's official ``Poisson.prior_sampling`` (Newbeeer/Poisson_flow, methods.py), ported line by line.

    Changes: ``.cuda()`` is ``.to(device)``; the output stays (n, d) instead of the image shape; N = d + 1 as there.
    """
    N = d + 1
    # Sampling form inverse-beta distribution
    samples_norm = np.random.beta(a=N / 2. - 0.5, b=0.5, size=n)
    inverse_beta = samples_norm / (1 - samples_norm)
    # Sampling from p_radius(R) by change-of-variable
    samples_norm = np.sqrt(z_max ** 2 * inverse_beta)
    # clip the sample norm (radius)
    samples_norm = np.clip(samples_norm, 1, upper_norm)
    samples_norm = torch.from_numpy(samples_norm).to(device).view(len(samples_norm), -1)
    # Uniformly sample the angle direction
    gaussian = torch.randn(n, N - 1).to(device)
    unit_gaussian = gaussian / torch.norm(gaussian, p=2, dim=1, keepdim=True)
    # Radius times the angle direction
    init_samples = unit_gaussian * samples_norm
    return init_samples.float()


def pfgmpp_loop_prior(n: int, d: int, D: int, sigma_max: float, device: torch.device, seeds) -> torch.Tensor:
    """PFGM++'s ``StackedRandomGenerator.rand_beta_prime`` (Newbeeer/pfgmpp, generate.py), ported line by line.

    Changes: sigma_max is an argument (the original sets 80 and raises NotImplementedError for N >= 256*256*3);
    the output is (n, d) instead of the image shape. Output dtype float64, as there.
    """
    N = d
    latent_list = []
    beta_gen = Beta(torch.FloatTensor([N / 2.]), torch.FloatTensor([D / 2.]))
    for seed in seeds:
        torch.manual_seed(seed)
        sample_norm = beta_gen.sample().to(device).double()
        # inverse beta distribution
        inverse_beta = sample_norm / (1 - sample_norm)
        sample_norm = torch.sqrt(inverse_beta) * sigma_max * np.sqrt(D)
        gaussian = torch.randn(N).to(sample_norm.device)
        unit_gaussian = gaussian / torch.norm(gaussian, p=2)
        init_sample = unit_gaussian * sample_norm
        latent_list.append(init_sample.reshape((1, d)))
    latent = torch.cat(latent_list, dim=0)
    return latent


def torch_vectorised_prior(n: int, d: int, D: int, T: float, generator, device) -> torch.Tensor:
    """The exact prior in plain PyTorch: T g / ||h||, g ~ N(0, I_d), h ~ N(0, I_D) per row (docs/math.md)."""
    g = torch.randn(n, d, generator=generator, device=device)
    h = torch.randn(n, D, generator=generator, device=device)
    return g.mul_((T / torch.linalg.vector_norm(h, dim=1))[:, None])


@contextlib.contextmanager
def forced_torch_path():
    """fastflow with its pure-torch path: FASTFLOW_DISABLE_C=1 and the loader's cache cleared; restored after."""
    old = os.environ.get("FASTFLOW_DISABLE_C")
    os.environ["FASTFLOW_DISABLE_C"] = "1"
    fastflow._core.loader.reprobe()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("FASTFLOW_DISABLE_C", None)
        else:
            os.environ["FASTFLOW_DISABLE_C"] = old
        fastflow._core.loader.reprobe()


def torchpath_problem() -> str | None:
    """Why ``fastflow_torchpath`` cannot run cleanly here (None: it can)."""
    before = fastflow.backends()
    if not before["C"]:
        return (f"the C extension is not loaded ({before['C_error']}): the `fastflow` rows already measure the "
                "pure-torch path")
    with forced_torch_path():
        inside = fastflow.backends()["C"]
        _, names = C.ops_called(lambda: fastflow.Poisson(2).prior(2, 8, T=1.0))
    after = fastflow.backends()["C"]
    if inside or any(x.startswith("fastflow::") for x in names):
        return "FASTFLOW_DISABLE_C=1 plus _loader.reprobe() did not switch fastflow to its torch path"
    if not after:
        return "the C extension did not come back after FASTFLOW_DISABLE_C was restored"
    return None


class Skip(Exception):
    pass


def size_params(d: int, D: int) -> tuple[float, float | None, str]:
    """(T, U, law): U is the official clip (D = 1 only)."""
    if D == 1:
        z_max, upper = PFGM_CONFIG.get(d, PFGM_CONFIG[3072])
        return z_max, upper, "PFGM"
    return PFGMPP_SIGMA_MAX * math.sqrt(D), None, "PFGM++"


def make_fn(provider: str, B: int, d: int, D: int, device: torch.device, seed: int):
    T, U, _ = size_params(d, D)
    gen = torch.Generator(device=device).manual_seed(seed)
    if provider in PFGM_ONLY and D != 1:
        raise Skip("PFGM's route: D = 1 only")
    if provider == "official":
        return lambda: official_prior(B, d, T, U, device)
    if provider == "pfgmpp_loop":
        seeds = list(range(seed * 100_000, seed * 100_000 + B))  # generate.py: one seed per image
        return lambda: pfgmpp_loop_prior(B, d, D, T / math.sqrt(D), device, seeds)
    if provider == "torch_vectorised":
        return lambda: torch_vectorised_prior(B, d, D, T, gen, device)
    if provider in ("fastflow", "fastflow_torchpath"):
        fam = fastflow.Poisson(D)
        return lambda: fam.prior(B, d, T=T, generator=gen, device=device)
    if provider == "fastflow_pfgm":
        return lambda: fastflow.pfgm.prior(B, d, z_max=T, generator=gen, device=device)
    if provider == "fastflow_pfgm_clip":
        return lambda: fastflow.pfgm.prior(B, d, z_max=T, upper_norm=U, generator=gen, device=device)
    raise ValueError(provider)


def memory_estimate(provider: str, B: int, d: int) -> int:
    """Bytes a provider's call needs at its peak (measured ratios, rounded up), to skip what would not fit."""
    out = B * d * 4
    if provider == "official":
        return 6 * out  # gaussian, unit direction, the float64 product (2x), the float32 copy
    if provider == "pfgmpp_loop":
        return 5 * out  # the float64 rows and their float64 concatenation
    return 3 * out


# -------------------------------------------------------------------------------------------------- the laws


def betaprime_cdf(q, d: float, D: float):
    """CDF of BetaPrime(d/2, D/2) at q: I_{q/(1+q)}(d/2, D/2) = 1 - I_{1/(1+q)}(D/2, d/2), accurate in both tails."""
    return special.betaincc(D / 2.0, d / 2.0, 1.0 / (1.0 + np.asarray(q, dtype=np.float64)))


def betaprime_sf(q, d: float, D: float):
    return special.betainc(D / 2.0, d / 2.0, 1.0 / (1.0 + np.asarray(q, dtype=np.float64)))


def row_norms(out: torch.Tensor, chunk: int = 64) -> np.ndarray:
    """||x_i|| of every row, in float64 (chunked: a float64 copy of a 786 MB output would need 1.6 GB)."""
    flat = out.reshape(out.shape[0], -1)
    parts = [torch.linalg.vector_norm(flat[i:i + chunk].double(), dim=1) for i in range(0, flat.shape[0], chunk)]
    return (torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)).cpu().numpy()


def law_tests(r: np.ndarray, T: float, d: int, D: int, U: float | None, clipped: bool) -> dict:
    """KS of q = (r/T)^2 against BetaPrime(d/2, D/2); for clipped providers also the exact test of the clipped law."""
    r = np.where(np.isnan(r), np.inf, r)  # a 0 * inf direction entry; counted with the infinite radii
    res = {"ks_n": int(r.size), "n_nonfinite": int((~np.isfinite(r)).sum())}
    ks = stats.kstest((r / T) ** 2, lambda q: betaprime_cdf(q, d, D))
    res.update(ks_stat=float(ks.statistic), ks_p=float(ks.pvalue))
    if not clipped:
        return res
    lo, hi = 1.0 * (1 + CLIP_RTOL), U * (1 - CLIP_RTOL)
    F_lo, F_hi = float(betaprime_cdf((lo / T) ** 2, d, D)), float(betaprime_cdf((hi / T) ** 2, d, D))
    inside = r[(r > lo) & (r < hi)]
    p_in = (float(stats.kstest(inside, lambda x: (betaprime_cdf((x / T) ** 2, d, D) - F_lo) / (F_hi - F_lo)).pvalue)
            if inside.size else 1.0)
    n_top, n_bot = int((r >= hi).sum()), int((r <= lo).sum())
    p_top = float(betaprime_sf((hi / T) ** 2, d, D))
    p_atom = float(stats.binomtest(n_top, r.size, p_top).pvalue)
    res.update(ks_p_clip_interior=p_in, clip_atom_p=p_atom, ks_p_clip_law=min(1.0, 2 * min(p_in, p_atom)),
               clip_fraction=n_top / r.size, clip_fraction_expected=p_top, clip_low_count=n_bot,
               clip_low_expected=F_lo * r.size)
    return res


# ---------------------------------------------------------------------------------------------------- runner


def n_repeats(first_call_s: float, args, minimum: int = 3) -> int:
    """``--repeats``, capped by ``--budget-s`` of timed seconds (paired calls included), at least ``minimum``."""
    n = args.repeats
    if first_call_s > 0:
        n = min(n, max(minimum, math.ceil(args.budget_s / first_call_s)))
    return max(1, n)


def write_ceiling(B: int, d: int, device: torch.device, args) -> dict:
    """Store bandwidth at B*d float32 elements: fill_ of a touched buffer, and of a fresh one; and torch.randn."""
    numel, nbytes = B * d, B * d * 4
    buf = torch.zeros(numel, device=device)  # touched: its pages exist
    gen = torch.Generator(device=device).manual_seed(args.seed + 7)
    fns = {"write_fill": lambda: buf.fill_(1.0),
           "write_fresh": lambda: torch.empty(numel, device=device).fill_(1.0),
           "torch_randn": lambda: torch.randn(B, d, generator=gen, device=device)}
    first = C.time_fn(fns["torch_randn"], device, repeats=1, warmup=1).median * 1e-3
    n = n_repeats(3 * first, args)
    out = {name: C.time_fn(fn, device, repeats=n, warmup=1) for name, fn in fns.items()}
    del buf
    return {k: (tm, nbytes / (tm.median * 1e-3) / 1e9, nbytes / (min(tm.times_ms) * 1e-3) / 1e9)
            for k, tm in out.items()}


def fastflow_state() -> dict:
    return {"fastflow_C": fastflow.backends()["C"], "FASTFLOW_DISABLE_C": os.environ.get("FASTFLOW_DISABLE_C")}


def bench_size(B: int, d: int, D: int, device, providers, args, meta, ceil, torchpath_skip) -> list[dict]:
    T, U, law = size_params(d, D)
    name = f"B{B}-d{d}-D{D}"
    fill_tm, _, ceiling_gbs = ceil["write_fill"]
    base = dict(meta, size=name, B=B, d=d, D=D, law=law, T=T, upper_norm=U, timestamp=C.utc_now(),
                write_ceiling_gbs=ceiling_gbs, write_ceiling_method="buf.fill_(1.0), preallocated touched float32 "
                f"buffer of B*d elements, fastest of {fill_tm.n} calls ({min(fill_tm.times_ms):.4g} ms)")
    print(f"\n== {name}: {law}, T={T:.4g}" + (f", official clip U={U:g}" if U else "") +
          f"; output {C.fmt_bytes(B * d * 4)} (float32); write ceiling {ceiling_gbs:.3g} GB/s", flush=True)
    avail, _ = C.available_memory(device)
    gen_y = torch.Generator(device=device).manual_seed(args.seed + 11)

    def randn_fn():
        return torch.randn(B, d, generator=gen_y, device=device)

    rows = []
    for i, prov in enumerate(providers):
        row = dict(base, provider=prov, skipped=False, reason=None, note=None, path=None)
        try:
            if prov == "fastflow_torchpath" and torchpath_skip:
                raise Skip(torchpath_skip)
            fn = make_fn(prov, B, d, D, device, args.seed * 1000 + i)
            need = memory_estimate(prov, B, d)
            if need > SAFETY * avail:
                raise Skip(f"needs ~{C.fmt_bytes(need)}, {C.fmt_bytes(avail)} available")
        except Skip as e:
            row.update(skipped=True, reason=str(e))
            rows.append(row)
            print(f"   {prov:19s} SKIPPED: {e}", flush=True)
            continue
        ctx = forced_torch_path() if prov == "fastflow_torchpath" else contextlib.nullcontext()
        with ctx:
            row.update(fastflow_state())
            t0 = time.perf_counter()
            (out, names), peak = C.peak_memory(lambda: C.ops_called(fn), device)
            C.synchronize(device)
            first_s = time.perf_counter() - t0
            ff_ops = sorted(x for x in names if x.startswith("fastflow::"))
            if prov in FASTFLOW:
                row["path"] = ("C fused (" + ", ".join(ff_ops) + ")") if ff_ops else "pure torch"
            row["fastflow_ops"] = ff_ops
            row["out_dtype"] = str(out.dtype).removeprefix("torch.")
            row["bytes_written"] = out.numel() * out.element_size()
            r = row_norms(out)
            row.update(law_tests(r, T, d, D, U, prov in CLIPPED))
            if prov == "pfgmpp_loop":  # radii on the float32 Beta's cap u = 1 - 2^-24 (see the module docstring)
                row["beta_cap_count"] = int((r >= BETA32_CAP * T * (1 - CLIP_RTOL)).sum())
            del out
            row["peak_mem_bytes"] = peak
            n = n_repeats(first_s + ceil["torch_randn"][0].median * 1e-3, args,
                          minimum=2 if prov in ("official", "pfgmpp_loop") else 3)
            desc = f"   {name}/{prov} ({n} timed calls)" if first_s * n > 5.0 else None
            tm, pair = C.time_interleaved([fn, randn_fn], device, repeats=n, progress_desc=desc)
        row.update(tm.as_dict())
        row["randn_ms"] = pair.median
        row["ratio_vs_randn"] = tm.median / pair.median
        row["gbs"] = row["bytes_written"] / (tm.median * 1e-3) / 1e9
        row["fraction_of_ceiling"] = row["gbs"] / ceiling_gbs
        row["cpu_pressure_avg10"] = C.cpu_pressure() if device.type == "cpu" else None
        notes = []
        if prov == "official":
            notes.append("clipped law")
        if prov == "fastflow_pfgm_clip":
            notes.append("clipped law (upper_norm)")
        if prov == "pfgmpp_loop":
            notes.append("float64 output")
        if row.get("beta_cap_count"):
            notes.append(f"{row['beta_cap_count']} radii on the float32 Beta cap ~4096 T")
        if row["n_nonfinite"]:
            notes.append(f"{row['n_nonfinite']} infinite radii")
        row["note"] = "; ".join(notes) or None
        rows.append(row)
        print(f"   {prov:19s} {tm.median:10.4g} ms  (IQR {row['iqr_ms']:.3g}, n={n})  {row['gbs']:7.3g} GB/s  "
              f"{row['ratio_vs_randn']:.3g}x randn  KS p {row['ks_p']:.3g}"
              + (f" (clip law p {row['ks_p_clip_law']:.3g})" if "ks_p_clip_law" in row else "")
              + (f"  [{row['path']}]" if row["path"] else ""), flush=True)

    for ref_prov, key in (("official", "speedup_vs_official"), ("pfgmpp_loop", "speedup_vs_loop")):
        ref = next((r for r in rows if r["provider"] == ref_prov and not r["skipped"]), None)
        for r in rows:
            r[key] = ref["median_ms"] / r["median_ms"] if ref is not None and r.get("median_ms") else None
    return rows


def yardstick_rows(B, d, ceil, meta) -> list[dict]:
    rows = []
    notes = {"write_fill": "buf.fill_(1.0), preallocated touched buffer: the write ceiling",
             "write_fresh": "torch.empty(B*d).fill_(1.0): allocation and first touch included",
             "torch_randn": "torch.randn(B, d), fresh output: the CPU goal's yardstick"}
    for prov, (tm, gbs, best_gbs) in ceil.items():
        rows.append(dict(meta, size=f"B{B}-d{d}", B=B, d=d, D=None, provider=prov, skipped=False, reason=None,
                         path=None, **tm.as_dict(), bytes_written=B * d * 4, gbs=gbs, best_gbs=best_gbs,
                         write_ceiling_gbs=ceil["write_fill"][2], fraction_of_ceiling=gbs / ceil["write_fill"][2],
                         timestamp=C.utc_now(), note=notes[prov],
                         cpu_pressure_avg10=C.cpu_pressure() if meta["device"] == "cpu" else None))
    return rows


# ----------------------------------------------------------------------------------------------------- goals


def evaluate_goals(rows: list[dict], device: torch.device) -> list[dict]:
    """The issue's performance goals, judged on the rows (PASS / FAIL / N/A); reported, never asserted."""
    goals = []

    def add(scope, text, value, ok, detail):
        status = "N/A" if ok is None else ("PASS" if ok else "FAIL")
        goals.append({"scope": scope, "goal": text, "status": status, "value": value, "detail": detail})

    on_cpu = device.type == "cpu"
    Ds = sorted({r["D"] for r in rows if r.get("D") is not None})
    for scope, active in (("CPU", on_cpu), ("GPU", not on_cpu)):
        for prov in ("fastflow", "fastflow_pfgm"):
            for D in Ds:
                if prov == "fastflow_pfgm" and D != 1:
                    continue
                if scope == "CPU":
                    text = f"{prov} (D={D}) costs no more than torch.randn of the same number of elements, every size"
                else:
                    text = (f"{prov} (D={D}) writes at >= 50% of the memory write ceiling, at every size with >= "
                            f"{C.fmt_bytes(GPU_GOAL_MIN_BYTES)} of output")
                if not active:
                    add(scope, text, None, None, f"not a {'cuda' if scope == 'GPU' else 'cpu'} run")
                    continue
                sel = [r for r in rows if r["provider"] == prov and r.get("D") == D and not r.get("skipped")]
                if scope == "GPU":
                    sel = [r for r in sel if r["bytes_written"] >= GPU_GOAL_MIN_BYTES]
                if not sel:
                    add(scope, text, None, None, "no rows measured")
                    continue
                paths = sorted({r["path"] for r in sel})
                if scope == "CPU":
                    worst = max(sel, key=lambda r: r["ratio_vs_randn"])
                    v = worst["ratio_vs_randn"]
                    detail = (f"worst {v:.3g}x randn at {worst['size']}; "
                              + ", ".join(f"{r['size']}: {r['ratio_vs_randn']:.2f}x" for r in sel))
                    ok = all(r["ratio_vs_randn"] <= 1.0 for r in sel)
                else:
                    worst = min(sel, key=lambda r: r["fraction_of_ceiling"])
                    v = worst["fraction_of_ceiling"]
                    detail = (f"worst {v:.1%} at {worst['size']}; "
                              + ", ".join(f"{r['size']}: {r['fraction_of_ceiling']:.0%}" for r in sel))
                    ok = all(r["fraction_of_ceiling"] >= 0.5 for r in sel)
                add(scope, text, v, ok, f"path: {' / '.join(paths)}; {detail}")
    return goals


# ------------------------------------------------------------------------------------------------------ main


def _f(v, spec):
    return C.fmt_num(v, spec)


COLUMNS = [
    ("size", lambda r: r["size"]),
    ("provider", lambda r: r["provider"]),
    ("path", lambda r: ("C fused" if r["path"].startswith("C") else "torch") if r.get("path") else "-"),
    ("median ms", lambda r: _f(r.get("median_ms"), ".4g")),
    ("IQR ms", lambda r: _f(r.get("iqr_ms"), ".2g")),
    ("n", lambda r: r.get("n_repeats", "-")),
    ("GB/s", lambda r: _f(r.get("gbs"), ".3g")),
    ("% ceil", lambda r: _f(100 * r["fraction_of_ceiling"], ".3g") + "%" if r.get("fraction_of_ceiling") else "-"),
    ("/ randn", lambda r: _f(r.get("ratio_vs_randn"), ".3g") + "x" if r.get("ratio_vs_randn") else "-"),
    ("x official", lambda r: _f(r.get("speedup_vs_official"), ".3g") + "x" if r.get("speedup_vs_official") else "-"),
    ("x loop", lambda r: _f(r.get("speedup_vs_loop"), ".3g") + "x" if r.get("speedup_vs_loop") else "-"),
    ("peak mem", lambda r: C.fmt_bytes(r.get("peak_mem_bytes"))),
    ("KS p", lambda r: _f(r.get("ks_p"), ".2g")),
    ("p clip law", lambda r: _f(r.get("ks_p_clip_law"), ".2g")),
    ("clip %", lambda r: (f"{100 * r['clip_fraction']:.0f}/{100 * r['clip_fraction_expected']:.0f}"
                          if r.get("clip_fraction") is not None else "-")),
    ("inf", lambda r: r.get("n_nonfinite", "-")),
    ("at cap", lambda r: r.get("beta_cap_count", "-")),
    ("note", lambda r: ("SKIPPED: " + r["reason"]) if r.get("skipped") else (r.get("note") or "")),
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--B", nargs="+", type=int, default=None, help=f"batch sizes (default {SIZES_B})")
    p.add_argument("--d", nargs="+", type=int, default=None, help=f"data dimensions (default {SIZES_d})")
    p.add_argument("--D", nargs="+", type=int, default=None, help=f"augmented dimensions (default {SIZES_D})")
    p.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(PROVIDERS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true",
                   help="sizes " + ", ".join(f"(B={b}, d={d}, D={D})" for b, d, D in QUICK_SIZES) + "; fewer repeats")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per provider (default 10, quick 5)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="cap on the timed seconds per provider and size, paired randn calls included (default 6, "
                        "quick 2); at least 3 calls (official and pfgmpp_loop: 2)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="JSON file (default benchmarks/results/prior_<device>.json)")
    p.add_argument("--fresh", action="store_true", help="do not keep the earlier rows of --out")
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 5 if args.quick else 10
    if args.budget_s is None:
        args.budget_s = 2.0 if args.quick else 6.0
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.quick and not (args.B or args.d or args.D):
        args.sizes = list(QUICK_SIZES)
    else:
        args.sizes = [(b, d, D) for b in (args.B or SIZES_B) for d in (args.d or SIZES_d) for D in (args.D or SIZES_D)]
    if any(v < 1 for s in args.sizes for v in s):
        p.error("B, d and D must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = C.start_run(args)

    info = fastflow.backends()
    run_ts = C.utc_now()
    meta = dict(benchmark="bench_prior", timestamp=run_ts, **C.device_info(device), **C.versions(),
                scipy=__import__("scipy").__version__, fastflow_C_cuda=info["C_cuda"], fastflow_C_error=info["C_error"],
                cpu_pressure_avg10=C.cpu_pressure() if device.type == "cpu" else None,
                mem_method=C.memory_method(device), seed=args.seed, dtype="float32")
    out_path = args.out or C.RESULTS_DIR / f"prior_{C.device_kind(device)}.json"
    torchpath_skip = torchpath_problem() if "fastflow_torchpath" in args.providers else None

    print(f"bench_prior: {meta['device_name']} ({device.type}, {meta['num_threads']} threads), torch {meta['torch']}, "
          f"numpy {meta['numpy']}, scipy {meta['scipy']}, fastflow {meta['fastflow']} (C ext: {info['C']}"
          + (f", {info['C_error']}" if info["C_error"] else "") + f"; FASTFLOW_DISABLE_C="
          f"{os.environ.get('FASTFLOW_DISABLE_C')})")
    print(f"providers: {', '.join(args.providers)}")
    if torchpath_skip:
        print(f"note: fastflow_torchpath skipped: {torchpath_skip}")
    print(f"peak memory: {meta['mem_method']}")
    if (meta["cpu_pressure_avg10"] or 0) > 10:
        print(f"note: CPU pressure (PSI some avg10) is {meta['cpu_pressure_avg10']:.0f}%: the cores are shared, "
              "CPU timings will be noisy")

    t_start = time.perf_counter()
    # warm-up: lazy imports, the extension, thread pools, scipy's special functions
    for prov in args.providers:
        with contextlib.suppress(Skip):
            if prov == "fastflow_torchpath" and torchpath_skip:
                continue
            with (forced_torch_path() if prov == "fastflow_torchpath" else contextlib.nullcontext()):
                make_fn(prov, 4, 64, 1, device, 0)()
    rows, ceilings = [], {}
    for B, d, D in args.sizes:
        if (B, d) not in ceilings:
            ceilings[B, d] = write_ceiling(B, d, device, args)
            rows += [C.json_safe(r) for r in yardstick_rows(B, d, ceilings[B, d], meta)]
        rows += [C.json_safe(r) for r in bench_size(B, d, D, device, args.providers, args, meta, ceilings[B, d],
                                                     torchpath_skip)]
        if device.type == "cuda":
            torch.cuda.empty_cache()
    elapsed = time.perf_counter() - t_start

    print(f"\nresults ({elapsed:.0f} s). median over n timed calls after an untimed one; GB/s: output bytes / median "
          "(pfgmpp_loop writes float64); % ceil: against the fastest buf.fill_(1.0) of B*d float32 in a touched "
          "buffer, this size and run;\n/ randn: median / median of torch.randn(B, d) timed interleaved with it; KS p: (r/T)^2 against "
          "BetaPrime(d/2, D/2), n = B; p clip law: clipped providers against their own clipped law (interior KS + "
          "atom binomial, Bonferroni);\nclip %: observed / expected share of radii on the clip sphere r = U; inf: "
          "infinite radii; at cap: pfgmpp_loop radii on its float32 Beta's cap 4096 T\n")
    C.print_table(rows, COLUMNS)

    old = [] if args.fresh else C.load_rows(out_path)
    merged, kept = C.merge_rows(old, rows, key=("device", "device_name", "size", "provider"))
    prov_order = {p: i for i, p in enumerate(("write_fill", "write_fresh", "torch_randn") + PROVIDERS)}
    merged.sort(key=lambda r: (r.get("device", ""), r.get("device_name", ""), r.get("B") or 0, r.get("d") or 0,
                               -1 if r.get("D") is None else r["D"], prov_order.get(r["provider"], 99)))
    same_dev = [r for r in merged if r.get("device") == device.type and r.get("device_name") == meta["device_name"]]
    goals = evaluate_goals(same_dev, device)
    print("\ngoals (reported, not asserted)" + (f"; judged on this run's rows plus {kept} kept from earlier runs in "
                                                 f"{out_path.name}" if kept else ""))
    for g in goals:
        print(f"  [{g['status']:4s}] {g['scope']}: {g['goal']} -- {g['detail']}")

    C.pressure_note(rows, device, "The interleaved randn pairing keeps the '/ randn' ratios comparable")

    C.write_results(out_path, benchmark="bench_prior",
                    description="prior draws x_T = T g / ||h|| (PFGM D=1, PFGM++ D>1): providers side by side "
                                "(see bench_prior.py)",
                    run_ts=run_ts, device=device, meta=meta, elapsed=elapsed, goals=goals, merged=merged,
                    n_new=len(rows), kept=kept, fastflow_C=info["C"],
                    FASTFLOW_DISABLE_C=os.environ.get("FASTFLOW_DISABLE_C"), fastflow_torchpath_skipped=torchpath_skip)
    return 0


if __name__ == "__main__":
    sys.exit(main())

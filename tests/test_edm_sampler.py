"""edm_sample's solvers, churn, sigma grids, model_kwargs and intermediates, against float64 ports of the official
code and against the formulas.

References (ported below in float64, kept to the official order of operations; they live only in this file):

- ``official_edm_sampler``: NVlabs/edm generate.py ``edm_sampler`` (EDM's Algorithm 2, stochastic churn), with
  ``net.round_sigma`` the identity and the grid passed in (the official code builds it with edm_sigmas' formula
  and scales unit latents by t_steps[0]; here x_T is already at sigma_max). PFGM++'s official sampler
  (Newbeeer/pfgmpp generate.py) is the same function with ``pfgmpp=True`` only skipping that scaling: its churn
  noise is the same Gaussian ``randn_like``.
- ``official_ablation_sampler``: the same file's ``ablation_sampler`` on EDM's own choices (discretization "edm",
  schedule "linear", scaling "none", alpha = 1), for solver="euler" and "heun".
- ``kdiff_sample_heun``, ``kdiff_sample_dpmpp_2m``: k-diffusion's ``sampling.sample_heun`` and
  ``sampling.sample_dpmpp_2m`` (any grid, ending in 0 or not).

The denoiser is an exact field, fastflow.stf_target / pfgmpp_target over a small reference batch, in float64, so
sampler and reference see the same function and differ only by rounding.
"""
import math

import numpy as np
import pytest
import torch
from scipy import stats

import fastflow
from fastflow import edm_sample, edm_sigmas

F64 = torch.float64
INF = float("inf")


# ------------------------------------------------------------------------------------------------ the ports


def official_edm_sampler(net, x_T, t_steps, randn_like=torch.randn_like, S_churn=0.0, S_min=0.0, S_max=INF,
                         S_noise=1.0, record=None):
    """NVlabs/edm generate.py edm_sampler; ``net(x, sigma_scalar_tensor)``; t_steps (N + 1,) float64 ending in 0."""
    num_steps = len(t_steps) - 1
    x_next = x_T.to(torch.float64)
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):  # 0, ..., N-1
        x_cur = x_next
        # Increase noise temporarily.
        gamma = min(S_churn / num_steps, np.sqrt(2) - 1) if S_min <= t_cur <= S_max else 0
        t_hat = t_cur + gamma * t_cur  # official: net.round_sigma(...), the identity
        x_hat = x_cur + (t_hat ** 2 - t_cur ** 2).sqrt() * S_noise * randn_like(x_cur)
        # Euler step.
        denoised = net(x_hat, t_hat).to(torch.float64)
        d_cur = (x_hat - denoised) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        # Apply 2nd order correction.
        if i < num_steps - 1:
            denoised = net(x_next, t_next).to(torch.float64)
            d_prime = (x_next - denoised) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
        if record is not None:
            record.append(x_next)
    return x_next


def official_t_steps(num_steps, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    step_indices = torch.arange(num_steps, dtype=torch.float64)
    t_steps = (sigma_max ** (1 / rho) + step_indices / (num_steps - 1) * (
        sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([t_steps, torch.zeros_like(t_steps[:1])])  # t_N = 0


def official_ablation_sampler(net, x_T, t_steps, solver, randn_like=torch.randn_like, S_churn=0.0, S_min=0.0,
                              S_max=INF, S_noise=1.0, alpha=1):
    """NVlabs/edm generate.py ablation_sampler with discretization='edm', schedule='linear', scaling='none'."""
    assert solver in ["euler", "heun"]
    sigma = lambda t: t  # noqa: E731 (kept as in the official code)
    sigma_deriv = lambda t: 1  # noqa: E731
    sigma_inv = lambda sigma: sigma  # noqa: E731
    s = lambda t: 1  # noqa: E731
    s_deriv = lambda t: 0  # noqa: E731
    num_steps = len(t_steps) - 1
    t_next = t_steps[0]
    x_next = x_T.to(torch.float64)  # official: latents * (sigma(t_next) * s(t_next))
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):  # 0, ..., N-1
        x_cur = x_next
        gamma = min(S_churn / num_steps, np.sqrt(2) - 1) if S_min <= sigma(t_cur) <= S_max else 0
        t_hat = sigma_inv(sigma(t_cur) + gamma * sigma(t_cur))
        x_hat = s(t_hat) / s(t_cur) * x_cur + (sigma(t_hat) ** 2 - sigma(t_cur) ** 2).clip(min=0).sqrt() * s(
            t_hat) * S_noise * randn_like(x_cur)
        h = t_next - t_hat
        denoised = net(x_hat / s(t_hat), sigma(t_hat)).to(torch.float64)
        d_cur = (sigma_deriv(t_hat) / sigma(t_hat) + s_deriv(t_hat) / s(t_hat)) * x_hat - sigma_deriv(
            t_hat) * s(t_hat) / sigma(t_hat) * denoised
        x_prime = x_hat + alpha * h * d_cur
        t_prime = t_hat + alpha * h
        if solver == "euler" or i == num_steps - 1:
            x_next = x_hat + h * d_cur
        else:
            denoised = net(x_prime / s(t_prime), sigma(t_prime)).to(torch.float64)
            d_prime = (sigma_deriv(t_prime) / sigma(t_prime) + s_deriv(t_prime) / s(t_prime)) * x_prime - sigma_deriv(
                t_prime) * s(t_prime) / sigma(t_prime) * denoised
            x_next = x_hat + h * ((1 - 1 / (2 * alpha)) * d_cur + 1 / (2 * alpha) * d_prime)
    return x_next


def _append_dims(x, target_dims):
    return x[(...,) + (None,) * (target_dims - x.ndim)]


def _to_d(x, sigma, denoised):
    return (x - denoised) / _append_dims(sigma, x.ndim)


def kdiff_sample_heun(model, x, sigmas, s_churn=0.0, s_tmin=0.0, s_tmax=INF, s_noise=1.0, record=None):
    """k-diffusion sampling.sample_heun (Karras et al. Algorithm 2, Heun steps)."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        gamma = min(s_churn / (len(sigmas) - 1), 2 ** 0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.
        eps = torch.randn_like(x) * s_noise
        sigma_hat = sigmas[i] * (gamma + 1)
        if gamma > 0:
            x = x + eps * (sigma_hat ** 2 - sigmas[i] ** 2) ** 0.5
        denoised = model(x, sigma_hat * s_in)
        d = _to_d(x, sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt  # Euler method
        else:
            x_2 = x + d * dt  # Heun's method
            denoised_2 = model(x_2, sigmas[i + 1] * s_in)
            d_2 = _to_d(x_2, sigmas[i + 1], denoised_2)
            d_prime = (d + d_2) / 2
            x = x + d_prime * dt
        if record is not None:
            record.append(x)
    return x


def kdiff_sample_dpmpp_2m(model, x, sigmas, record=None):
    """k-diffusion sampling.sample_dpmpp_2m (DPM-Solver++(2M))."""
    s_in = x.new_ones([x.shape[0]])
    sigma_fn = lambda t: t.neg().exp()  # noqa: E731
    t_fn = lambda sigma: sigma.log().neg()  # noqa: E731
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        t, t_next = t_fn(sigmas[i]), t_fn(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised
        else:
            h_last = t - t_fn(sigmas[i - 1])
            r = h_last / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
        if record is not None:
            record.append(x)
    return x


# ----------------------------------------------------------------------------------------------- fixtures


def problem(B=16, d=8, R=32, D=None, seed=0, sigma_max=80.0):
    """(denoiser(x, sigma (B,)), x_T (B, d) float64 at sigma_max): the exact field over R reference points."""
    g = torch.Generator().manual_seed(seed)
    ref = torch.rand(R, d, generator=g, dtype=F64) * 2 - 1
    if D is None:
        den = lambda x, s: fastflow.stf_target(x, s, ref)  # noqa: E731
        x_T = fastflow.Gaussian().prior(B, (d,), T=sigma_max, generator=g, dtype=F64)
    else:
        den = lambda x, s: fastflow.pfgmpp_target(x, s, ref, D=D)  # noqa: E731
        x_T = fastflow.Poisson(D).prior(B, (d,), T=sigma_max * math.sqrt(D), generator=g, dtype=F64)
    return den, x_T


def as_net(den, B):
    """The official net(x, sigma) with a 0-d sigma, from fastflow's denoiser(x, sigma (B,))."""
    return lambda x, t: den(x, t * torch.ones(B, dtype=F64))


def randn_from(gen):
    """A randn_like drawing as edm_sample does: float32 from ``gen``, cast to x's dtype."""
    return lambda x: torch.randn(x.shape, generator=gen, dtype=torch.float32).to(x.dtype)


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


# ------------------------------------------------------------------------------------- against the ports


@pytest.mark.parametrize("D", [None, 128.0])
def test_default_heun_matches_official_port(D):
    den, x_T = problem(D=D)
    res = edm_sample(den, x_T, D=D)
    t_steps = official_t_steps(18)
    torch.testing.assert_close(edm_sigmas(18), t_steps, rtol=1e-15, atol=0)
    ref = official_edm_sampler(as_net(den, 16), x_T, t_steps)
    err = rel_err(res.x, ref)
    print(f"default heun (D={D}) vs official edm_sampler port: max rel err {err:.2e}")
    assert err < 1e-13
    assert res.nfe.tolist() == [35] * 16 and res.intermediates is None and bool((res.t == 0).all())


@pytest.mark.parametrize("D", [None, 128.0])
def test_churn_without_noise_is_deterministic_and_matches_port(D):
    """S_noise = 0: sigma_hat > sigma but nothing is added; two generators give the same samples."""
    den, x_T = problem(D=D)
    kw = dict(S_churn=40.0, S_min=0.05, S_max=50.0, S_noise=0.0)
    a = edm_sample(den, x_T, D=D, generator=torch.Generator().manual_seed(1), **kw)
    b = edm_sample(den, x_T, D=D, generator=torch.Generator().manual_seed(2), **kw)
    assert torch.equal(a.x, b.x)
    ref = official_edm_sampler(as_net(den, 16), x_T, official_t_steps(18), **kw)
    err = rel_err(a.x, ref)
    print(f"churn S_noise=0 (D={D}) vs official port: max rel err {err:.2e}")
    assert err < 1e-13
    assert rel_err(a.x, edm_sample(den, x_T, D=D).x) > 1e-6  # the churn changed sigma_hat, hence the path


@pytest.mark.parametrize("D", [None, 128.0])
@pytest.mark.parametrize("window", [(0.0, INF), (0.05, 50.0)])
def test_churn_with_noise_matches_port_on_the_same_draws(D, window):
    """The same generator seed and draw order (one eps per step while S_churn > 0, also where gamma = 0): the
    same samples as the official sampler fed the same noise; PFGM++'s churn is the official Gaussian one."""
    den, x_T = problem(D=D)
    kw = dict(S_churn=40.0, S_min=window[0], S_max=window[1], S_noise=1.003)
    res = edm_sample(den, x_T, D=D, generator=torch.Generator().manual_seed(7), **kw)
    ref = official_edm_sampler(as_net(den, 16), x_T, official_t_steps(18),
                               randn_like=randn_from(torch.Generator().manual_seed(7)), **kw)
    err = rel_err(res.x, ref)
    print(f"churn S_noise=1.003 window={window} (D={D}) vs official port: max rel err {err:.2e}")
    assert err < 1e-12
    assert rel_err(res.x, edm_sample(den, x_T, D=D, S_noise=0.0, **{k: v for k, v in kw.items()
                                                                     if k != "S_noise"}).x) > 1e-4


@pytest.mark.parametrize("solver", ["euler", "heun"])
@pytest.mark.parametrize("churn", [0.0, 30.0])
def test_euler_and_heun_match_official_ablation_sampler(solver, churn):
    den, x_T = problem()
    res = edm_sample(den, x_T, steps=12, solver=solver, S_churn=churn, S_min=0.1, S_max=30.0,
                     generator=torch.Generator().manual_seed(3))
    ref = official_ablation_sampler(as_net(den, 16), x_T, official_t_steps(12), solver, S_churn=churn, S_min=0.1,
                                    S_max=30.0, randn_like=randn_from(torch.Generator().manual_seed(3)))
    err = rel_err(res.x, ref)
    print(f"{solver} churn={churn} vs official ablation_sampler port: max rel err {err:.2e}")
    assert err < 1e-12
    assert res.nfe.tolist() == [12 if solver == "euler" else 23] * 16


GRIDS = {
    "edm18": lambda: edm_sigmas(18),
    "edm10-to-0.3": lambda: edm_sigmas(10, 0.3, 80.0)[:-1],  # ends at 0.3, not 0
    "geometric+0": lambda: torch.cat([torch.logspace(math.log10(80), math.log10(0.01), 25, dtype=F64),
                                      torch.zeros(1, dtype=F64)]),
}


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("D", [None, 64.0])
def test_dpmpp_2m_matches_kdiffusion_port(grid, D):
    den, x_T = problem(D=D)
    sig = GRIDS[grid]()
    rec_ff, rec_ref = [], []
    res = edm_sample(den, x_T, D=D, sigmas=sig, solver="dpmpp_2m", return_intermediates=True)
    ref = kdiff_sample_dpmpp_2m(den, x_T.clone(), sig, record=rec_ref)
    rec_ff = res.intermediates
    err = rel_err(res.x, ref)
    err_path = max(rel_err(rec_ff[i + 1], rec_ref[i]) for i in range(len(rec_ref)))
    print(f"dpmpp_2m on {grid} (D={D}) vs k-diffusion sample_dpmpp_2m port: max rel err {err:.2e} "
          f"(path {err_path:.2e})")
    assert err < 1e-12 and err_path < 1e-12
    K = len(sig) - 1
    assert res.nfe.tolist() == [K] * 16 and torch.equal(rec_ff[0], x_T)
    assert res.t.tolist() == [float(sig[-1])] * 16


@pytest.mark.parametrize("grid", list(GRIDS))
def test_heun_on_a_grid_matches_kdiffusion_port(grid):
    """A given grid: Heun on every step except one to 0 (k-diffusion's rule); intermediates follow the port."""
    den, x_T = problem()
    sig = GRIDS[grid]()
    rec = []
    res = edm_sample(den, x_T, sigmas=sig.tolist(), return_intermediates=True)
    ref = kdiff_sample_heun(den, x_T.clone(), sig, record=rec)
    err = rel_err(res.x, ref)
    err_path = max(rel_err(res.intermediates[i + 1], rec[i]) for i in range(len(rec)))
    print(f"heun on {grid} vs k-diffusion sample_heun port: max rel err {err:.2e} (path {err_path:.2e})")
    assert err < 1e-12 and err_path < 1e-12
    K = len(sig) - 1
    assert res.nfe.tolist() == [2 * K - (1 if float(sig[-1]) == 0 else 0)] * 16
    assert res.intermediates.shape == (K + 1, 16, 8) and torch.equal(res.intermediates[-1], res.x)


# ------------------------------------------------------------------------------------- against the formulas


def linear_denoiser(mu, s):
    """E[x0 | x_sigma = x] for x0 ~ N(mu, s^2 I)."""
    def den(x, sigma):
        c = (s * s / (s * s + sigma * sigma)).reshape(-1, *([1] * (x.dim() - 1)))
        return mu + c * (x - mu)
    return den


def test_single_steps_follow_the_formulas():
    x0 = torch.randn(6, 3, dtype=F64, generator=torch.Generator().manual_seed(0)) * 5
    den = linear_denoiser(0.3, 0.7)
    Dx = lambda x, s: den(x, torch.full((6,), s, dtype=F64))  # noqa: E731
    s0, s1, s2 = 5.0, 2.0, 0.5
    d0 = (x0 - Dx(x0, s0)) / s0
    eu = x0 + (s1 - s0) * d0
    torch.testing.assert_close(edm_sample(den, x0, sigmas=[s0, s1], solver="euler").x, eu, rtol=1e-15, atol=0)
    d1 = (eu - Dx(eu, s1)) / s1
    torch.testing.assert_close(edm_sample(den, x0, sigmas=[s0, s1]).x, x0 + (s1 - s0) / 2 * (d0 + d1),
                               rtol=1e-14, atol=0)
    # DPM-Solver++(2M) in sigma ratios: first step x1 = (s1/s0) x0 + (1 - s1/s0) D0; then with
    # r = log(s0/s1) / log(s1/s2): x2 = (s2/s1) x1 + (1 - s2/s1) ((1 + 1/(2r)) D1 - D0 / (2r))
    D0 = Dx(x0, s0)
    x1 = s1 / s0 * x0 + (1 - s1 / s0) * D0
    D1 = Dx(x1, s1)
    r = math.log(s0 / s1) / math.log(s1 / s2)
    x2 = s2 / s1 * x1 + (1 - s2 / s1) * ((1 + 1 / (2 * r)) * D1 - D0 / (2 * r))
    res = edm_sample(den, x0, sigmas=torch.tensor([s0, s1, s2, 0.0], dtype=F64), solver="dpmpp_2m",
                     return_intermediates=True)
    torch.testing.assert_close(res.intermediates[1], x1, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(res.intermediates[2], x2, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(res.x, Dx(x2, s2), rtol=1e-13, atol=1e-15)  # the step to 0 gives D
    # churn: sigma_hat = sigma + gamma sigma, gamma = min(S_churn / K, sqrt(2) - 1) inside [S_min, S_max]
    seen = []
    edm_sample(den, x0, sigmas=[s0, s1, s2, 0.0], S_churn=0.6, S_min=1.0, S_max=10.0, S_noise=0.0,
               callback=seen.append)
    assert [c["sigma_hat"] for c in seen] == [s0 + 0.2 * s0, s1 + 0.2 * s1, s2]
    seen.clear()
    edm_sample(den, x0, sigmas=[s0, s1, s2, 0.0], S_churn=30.0, S_noise=0.0, callback=seen.append)
    assert seen[0]["sigma_hat"] == s0 + (2 ** 0.5 - 1) * s0  # gamma capped at sqrt(2) - 1


@pytest.mark.parametrize("solver,lo,hi", [("euler", 1.6, 2.6), ("dpmpp_2m", 3.0, 6.0), ("heun", 3.0, 5.5)])
def test_orders_on_gaussian_data(solver, lo, hi):
    """Gaussian data: x(sigma) = mu + sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_max^2) (x_T - mu) exactly. Euler is
    first order (each doubling of the steps halves the error), Heun and DPM-Solver++(2M) second (divides by ~4)."""
    mu, s, smax = 0.7, 0.5, 80.0
    x_T = torch.randn(32, 5, dtype=F64, generator=torch.Generator().manual_seed(1)) * smax
    exact = mu + s / math.sqrt(s * s + smax * smax) * (x_T - mu)
    errs = []
    for steps in (18, 36, 72):
        res = edm_sample(linear_denoiser(mu, s), x_T, steps=steps, solver=solver)
        errs.append(float((res.x - exact).abs().max() / (exact - mu).abs().max()))
    ratios = [errs[0] / errs[1], errs[1] / errs[2]]
    print(f"{solver}: relative error at 18, 36, 72 steps " + ", ".join(f"{e:.2e}" for e in errs)
          + "; ratios " + ", ".join(f"{q:.2f}" for q in ratios))
    assert all(lo < q < hi for q in ratios)


# ------------------------------------------------------------------------------------------- the churn law


@pytest.mark.parametrize("D", [None, 128.0])
def test_churn_noise_law_ks(D):
    """x_hat - x_i = sqrt(sigma_hat^2 - sigma_i^2) S_noise eps, eps ~ N(0, I), on the churned steps only; exactly
    0 outside [S_min, S_max]. KS of the scaled increments against N(0, 1) per churned step (p > 1e-3)."""
    B, d = 400, 25
    inputs = []

    def den(x, sigma):
        inputs.append((x.clone(), float(sigma[0])))
        return torch.zeros_like(x)

    sig = [20.0, 8.0, 3.0, 1.0, 0.0]
    S_churn, S_min, S_max, S_noise = 2.0, 2.0, 10.0, 1.2
    x0 = torch.randn(B, d, dtype=F64, generator=torch.Generator().manual_seed(5))
    res = edm_sample(den, x0, D=D, sigmas=sig, solver="euler", S_churn=S_churn, S_min=S_min, S_max=S_max,
                     S_noise=S_noise, generator=torch.Generator().manual_seed(11), return_intermediates=True)
    gamma = min(S_churn / 4, 2 ** 0.5 - 1)
    pvals = []
    for i, s in enumerate(sig[:-1]):
        x_hat, s_hat = inputs[i]
        inc = (x_hat - res.intermediates[i]).flatten()
        if S_min <= s <= S_max:
            assert s_hat == s + gamma * s
            scale = math.sqrt(s_hat ** 2 - s ** 2) * S_noise
            p = stats.kstest((inc / scale).numpy(), "norm").pvalue
            pvals.append(p)
            assert abs(float(inc.std()) / scale - 1) < 0.03
        else:
            assert s_hat == s and bool((inc == 0).all())
    print(f"churn increments (D={D}): KS p-values {', '.join(f'{p:.3f}' for p in pvals)}")
    assert len(pvals) == 2 and min(pvals) > 1e-3


def test_reproducible_with_a_seeded_generator():
    den, x_T = problem()
    kw = dict(S_churn=20.0, S_noise=1.0)
    a = edm_sample(den, x_T, generator=torch.Generator().manual_seed(0), **kw).x
    b = edm_sample(den, x_T, generator=torch.Generator().manual_seed(0), **kw).x
    c = edm_sample(den, x_T, generator=torch.Generator().manual_seed(1), **kw).x
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(3)  # generator=None: the default generator
    e = edm_sample(den, x_T, **kw).x
    torch.manual_seed(3)
    assert torch.equal(e, edm_sample(den, x_T, **kw).x)
    # S_churn = 0 draws nothing: the default generator is not advanced
    torch.manual_seed(4)
    edm_sample(den, x_T, S_noise=1.0)
    after = torch.rand(1)
    torch.manual_seed(4)
    assert torch.equal(after, torch.rand(1))


@pytest.mark.parametrize("solver,churn", [("heun", 0.0), ("heun", 20.0), ("euler", 20.0), ("dpmpp_2m", 0.0)])
def test_float32_agrees_with_float64(solver, churn):
    """One seed gives the same (float32) noise to both runs, so the churned paths agree too."""
    den64, x_T = problem()
    ref = torch.rand(32, 8, generator=torch.Generator().manual_seed(0), dtype=F64) * 2 - 1
    den32 = lambda x, s: fastflow.stf_target(x, s, ref.float())  # noqa: E731
    kw = dict(solver=solver, S_churn=churn, steps=18)
    a = edm_sample(den64, x_T, generator=torch.Generator().manual_seed(2), **kw)
    b = edm_sample(den32, x_T.float(), generator=torch.Generator().manual_seed(2), **kw)
    assert b.x.dtype == torch.float32
    err = rel_err(b.x.double(), a.x)
    print(f"{solver} churn={churn}: float32 vs float64 max rel err {err:.2e}")
    assert err < 1e-4


# ----------------------------------------------------------------------------- model_kwargs, B = 0, dtypes


def test_model_kwargs_reach_every_call():
    B, d = 10, 4
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(B, d, generator=g, dtype=F64)
    x_T = torch.randn(B, d, generator=g, dtype=F64) * 40
    seen = []

    def den(x, sigma, mean, scale=1.0, tag=None):
        seen.append((mean is mu, scale, tag))
        c = (0.25 / (0.25 + sigma * sigma))[:, None]
        return mean + c * (x - mean)

    for solver in ("heun", "euler", "dpmpp_2m"):
        seen.clear()
        res = edm_sample(den, x_T, sigma_max=40.0, steps=8, solver=solver,
                         model_kwargs={"mean": mu, "scale": 2.0, "tag": torch.tensor(3.0)})
        assert len(seen) == int(res.nfe[0]) and all(m and s == 2.0 and float(t) == 3.0 for m, s, t in seen)
        # the same run as a denoiser that holds the per-row means itself
        closed = edm_sample(lambda x, sigma: den(x, sigma, mu), x_T, sigma_max=40.0, steps=8, solver=solver)
        assert torch.equal(res.x, closed.x)
    with pytest.raises(ValueError, match="model_kwargs\\['mean'\\].*first dimension 3"):
        edm_sample(den, x_T, model_kwargs={"mean": mu[:3]})
    with pytest.raises(TypeError, match="model_kwargs must be a dict"):
        edm_sample(den, x_T, model_kwargs=[("mean", mu)])


@pytest.mark.parametrize("solver,churn", [("heun", 0.0), ("heun", 10.0), ("euler", 10.0), ("dpmpp_2m", 0.0)])
def test_empty_batch(solver, churn):
    base = linear_denoiser(0.0, 1.0)
    den = lambda x, sigma, labels: base(x, sigma)  # noqa: E731
    res = edm_sample(den, torch.zeros(0, 3, 2), steps=5, solver=solver, S_churn=churn,
                     generator=torch.Generator().manual_seed(0), return_intermediates=True,
                     model_kwargs={"labels": torch.zeros(0, dtype=torch.long)})
    assert res.x.shape == (0, 3, 2) and res.nfe.shape == (0,) and res.intermediates.shape == (6, 0, 3, 2)


def test_half_precision_with_churn_and_intermediates():
    x = torch.randn(5, 2) * 10
    res = edm_sample(linear_denoiser(0.0, 1.0), x.to(torch.bfloat16), sigma_max=10.0, steps=4, S_churn=10.0,
                     generator=torch.Generator().manual_seed(0), return_intermediates=True)
    assert res.x.dtype == torch.bfloat16 and res.intermediates.dtype == torch.bfloat16
    assert res.intermediates.shape == (5, 5, 2) and torch.isfinite(res.x.float()).all()
    assert torch.equal(res.intermediates[0], x.to(torch.bfloat16))


def test_straightness_of_the_intermediates():
    den, x_T = problem()
    path = edm_sample(den, x_T, return_intermediates=True).intermediates
    st = fastflow.straightness(path)
    assert st.shape == (16,) and bool(((st > 0) & (st <= 1 + 1e-12)).all())


# ------------------------------------------------------------------------------------------------ bad input


def test_bad_input_named_errors():
    den = linear_denoiser(0.0, 1.0)
    x = torch.randn(3, 2)
    cases = [
        (dict(S_churn=-1.0), ValueError, "S_churn"),
        (dict(S_noise=-0.5), ValueError, "S_noise"),
        (dict(S_min=5.0, S_max=1.0), ValueError, "S_min"),
        (dict(S_max=float("nan")), ValueError, "S_max"),
        (dict(S_min=-1.0), ValueError, "S_min"),
        (dict(steps=0), ValueError, "steps"),
        (dict(solver="rk4"), ValueError, "solver"),
        (dict(solver=3), TypeError, "solver"),
        (dict(solver="dpmpp_2m", S_churn=1.0), ValueError, "S_churn must be 0 with solver='dpmpp_2m'"),
        (dict(sigmas=[1.0, 2.0, 0.0]), ValueError, "strictly decreasing.*sigmas\\[0\\] = 1.0 <= sigmas\\[1\\]"),
        (dict(sigmas=[3.0, 3.0]), ValueError, "strictly decreasing"),
        (dict(sigmas=[3.0, 0.0, 0.0]), ValueError, "> 0 except a final 0.*sigmas\\[1\\]"),
        (dict(sigmas=[3.0, 1.0, -1.0]), ValueError, "> 0 except a final 0"),
        (dict(sigmas=[float("nan"), 1.0]), ValueError, "finite"),
        (dict(sigmas=[INF, 1.0]), ValueError, "finite"),
        (dict(sigmas=[1.0]), ValueError, "at least 2"),
        (dict(sigmas=torch.ones(2, 2)), ValueError, "1-D"),
        (dict(sigmas="abc"), TypeError, "sigmas"),
        (dict(sigmas=torch.tensor([True, False])), TypeError, "sigmas"),
        (dict(sigmas=[2.0, 1.0], steps=10), ValueError, "sigmas replaces"),
        (dict(generator=3), TypeError, "generator"),
        (dict(return_intermediates=1), TypeError, "return_intermediates"),
        (dict(model_kwargs={1: 2}), TypeError, "model_kwargs keys"),
    ]
    for kw, exc, pat in cases:
        with pytest.raises(exc, match=pat):
            edm_sample(den, x, **kw)
    # the grid is also accepted as a tensor on any dtype, and a final sigma > 0 is kept as the end time
    res = edm_sample(den, x, sigmas=torch.tensor([4.0, 1.0, 0.5]))
    assert res.t.tolist() == [0.5] * 3 and res.nfe.tolist() == [4] * 3

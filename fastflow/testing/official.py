"""Faithful ports of official algorithms, kept as references of record for tests and benchmarks.

Not for use in training: these materialise [B, R, d+1] tensors exactly as the originals do.
"""
from __future__ import annotations

import numpy as np
import torch


def pfgm_target_official(x: torch.Tensor, z: torch.Tensor, ref: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
    """The training target of PFGM's official code (losses.py, ``config.training.sde == 'poisson'``), ported.

    It works on augmented vectors (x, z) against (ref_j, 0), weights each source by the min-normalised power
    (min_k R_k / (R_j + 1e-7))^(d+1), normalises with a +1e-7 in the denominator, sums the differences, and
    rescales to sqrt(d) * E / (||E|| + gamma). Memory: a [B, R, d+1] difference tensor, as in the original.

    Args:
        x: (B, *shape) perturbed samples.  z: (B,) their augmented coordinate.  ref: (R, *shape) the batch.

    Returns:
        (B, d+1) target in x's dtype.
    """
    B = x.shape[0]
    data_dim = x[0].numel()
    perturbed_samples_vec = torch.cat((x.reshape(B, -1), z.reshape(B, 1).to(x.dtype)), dim=1)
    real_samples_vec = torch.cat(
        (ref.reshape(len(ref), -1), torch.zeros((len(ref), 1), dtype=ref.dtype, device=ref.device)), dim=1)
    gt_distance = torch.sum((perturbed_samples_vec.unsqueeze(1) - real_samples_vec) ** 2, dim=[-1]).sqrt()
    # For numerical stability, the official code divides each row by its minimum distance
    distance = torch.min(gt_distance, dim=1, keepdim=True)[0] / (gt_distance + 1e-7)
    distance = distance ** (data_dim + 1)
    distance = distance[:, :, None]
    coeff = distance / (torch.sum(distance, dim=1, keepdim=True) + 1e-7)
    diff = -(perturbed_samples_vec.unsqueeze(1) - real_samples_vec)
    gt_direction = torch.sum(coeff * diff, dim=1)
    gt_direction = gt_direction.view(gt_direction.size(0), -1)
    gt_norm = gt_direction.norm(p=2, dim=1)
    gt_direction /= gt_norm.view(-1, 1) + gamma
    gt_direction *= np.sqrt(data_dim)
    return gt_direction


def pfgm_perturb_official(x0: torch.Tensor, M: float = 291, tau: float = 0.03, sigma_end: float = 0.01,
                          restrict_M: bool = True, generator: torch.Generator | None = None):
    """PFGM's training perturbation as the official code draws it: a reference of record for two-sample KS tests.

    Ported line by line from github.com/Newbeeer/Poisson_flow: ``m = torch.rand(B) * sde.M`` in losses.py's
    poisson loss, then ``forward_pz`` in models/utils_poisson.py. Random draws come in the official order
    (m; z; the restricted m; the noise whose norm sets the radius; the Gaussian whose direction is used).
    Changes that leave the law alone: every draw takes ``generator`` and x0's device and dtype, z is (B,) rather
    than (B, 1, 1, 1), and ``.squeeze()`` is a reshape (so that B = 1 works).

    Args:
        x0: (B, *shape) data points (the official ``samples_batch``).  M, tau, sigma_end, restrict_M: the official
        config.training.M, config.training.tau, config.model.sigma_end and config.training.restrict_M.

    Returns:
        x: (B, *shape) perturbed points; z: (B,) their augmented coordinate (the official output's last column).
    """
    samples_batch = x0
    dev, dt = x0.device, x0.dtype
    m = torch.rand((samples_batch.shape[0],), device=dev, dtype=dt, generator=generator) * M
    z = torch.randn((len(samples_batch),), device=dev, dtype=dt, generator=generator) * sigma_end
    z = z.abs()
    # Confine the norms of perturbed data (Appendix B.1.1 of the PFGM paper): the test is on |z|
    if restrict_M:
        idx = (z < 0.005).reshape(-1)
        num = int(idx.int().sum())
        restrict_m = int(M * 0.7)
        m[idx] = torch.rand((num,), device=dev, dtype=dt, generator=generator) * restrict_m
    data_dim = samples_batch[0].numel()
    multiplier = (1 + tau) ** m
    noise = torch.randn(samples_batch.shape, device=dev, dtype=dt, generator=generator)
    noise = noise.reshape(len(samples_batch), -1) * sigma_end
    norm_m = torch.norm(noise, p=2, dim=1) * multiplier
    # Perturb z
    perturbed_z = z.reshape(-1) * multiplier
    # Sample uniform angle
    gaussian = torch.randn(len(samples_batch), data_dim, device=dev, dtype=dt, generator=generator)
    unit_gaussian = gaussian / torch.norm(gaussian, p=2, dim=1, keepdim=True)
    # Construct the perturbation for x
    perturbation_x = unit_gaussian * norm_m[:, None]
    perturbation_x = perturbation_x.view_as(samples_batch)
    perturbed_x = samples_batch + perturbation_x
    return perturbed_x, perturbed_z


# ---------------------------------------------------------------------------------------------------------------
# PFGM's fixed-grid ODE samplers: github.com/Newbeeer/Poisson_flow, methods.py (Poisson.ode) and sampling.py
# (ForwardEulerPredictor, ImprovedEulerPredictor, get_ode_sampler), ported with their structure. Changes that leave
# the arithmetic alone: the config is passed as arguments, the prior draw is the caller's x (get_ode_sampler draws
# it inside), tensors stay in x's dtype and device (the original casts to float32 and moves to CUDA), and
# ``net_fn(x, z)`` returns the tuple (x_drift, z_drift) as the official model does.

class _PoissonODEOfficial:
    """methods.Poisson.ode, with the config fields it reads as attributes."""

    def __init__(self, *, N, z_max, z_exp, gamma, shape):
        self.N = N
        self.z_max = z_max
        self.z_exp = z_exp
        self.gamma = gamma
        self.shape = shape  # (C, H, W): config.data.num_channels, image_height, image_width

    def ode(self, net_fn, x, t):
        z = torch.exp(t.mean())  # official: np.exp(t.mean().cpu())
        x_drift, z_drift = net_fn(x, torch.ones((len(x)), dtype=x.dtype, device=x.device) * z)
        x_drift = x_drift.view(len(x_drift), -1)

        # Substitute the predicted z with the ground-truth
        # Please see Appendix B.2.3 in PFGM paper (https://arxiv.org/abs/2209.11178) for details
        z_exp = self.z_exp
        if z < z_exp and self.gamma > 0:
            data_dim = int(np.prod(self.shape))
            sqrt_dim = np.sqrt(data_dim)
            norm_1 = x_drift.norm(p=2, dim=1) / sqrt_dim
            x_norm = self.gamma * norm_1 / (1 - norm_1)
            x_norm = torch.sqrt(x_norm ** 2 + z ** 2)
            z_drift = -sqrt_dim * torch.ones_like(z_drift) * z / (x_norm + self.gamma)

        # Predicted normalized Poisson field
        v = torch.cat([x_drift, z_drift[:, None]], dim=1)

        dt_dz = 1 / (v[:, -1] + 1e-5)
        dx_dt = v[:, :-1].view(len(x), *self.shape)
        dx_dz = dx_dt * dt_dz.view(-1, *([1] * len(x.size()[1:])))

        # dx/dt_prime =  z * dx/dz
        dx_dt_prime = z * dx_dz

        return dx_dt_prime


def _forward_euler_update(sde, net_fn, eps, x, t, t_list=None, idx=None):
    """sampling.ForwardEulerPredictor.update_fn (the poisson branch)."""
    dt = - (np.log(sde.z_max) - np.log(eps)) / sde.N
    drift = sde.ode(net_fn, x, t)
    x = x + drift * dt
    return x


def _improved_euler_update(sde, net_fn, eps, x, t, t_list=None, idx=None):
    """sampling.ImprovedEulerPredictor.update_fn (the poisson branch)."""
    dt = - (np.log(sde.z_max) - np.log(eps)) / sde.N
    drift = sde.ode(net_fn, x, t)
    x_new = x + drift * dt

    if idx == sde.N - 1:
        return x_new
    else:
        idx_new = idx + 1
        t_new = t_list[idx_new]
        t_new = torch.ones(len(t), dtype=t.dtype, device=t.device) * t_new

        drift_new = sde.ode(net_fn, x_new, t_new)

        x = x + (0.5 * drift + 0.5 * drift_new) * dt
        return x


def pfgm_ode_sampler_official(net_fn, x, *, z_max: float, eps: float = 1e-3, N: int = 100,
                              ode_solver: str = "improved_euler", z_exp: float = 1.0, gamma: float = 5.0,
                              inverse_scaler=None):
    """PFGM's official fixed-grid sampler (``get_ode_sampler`` for ``config.training.sde == 'poisson'``), ported.

    Args:
        net_fn: ``net_fn(x, z) -> (x_drift (B, *shape), z_drift (B,))``, the normalised field.
        x: (B, C, H, W) (or (B, *shape)) the prior draw on z = z_max.
        z_max, eps, N, z_exp, gamma: config.sampling.z_max, the sampler's eps (= config.sampling.z_min),
            config.sampling.N, config.sampling.z_exp and config.training.gamma.
        ode_solver: "forward_euler" or "improved_euler" (config.sampling.ode_solver).
        inverse_scaler: the official inverse data scaler (None: the identity).

    Returns:
        (samples, nfe): the official return value, nfe = 2N - 1 for improved Euler, else N.
    """
    update = {"forward_euler": _forward_euler_update, "improved_euler": _improved_euler_update}[ode_solver]
    sde = _PoissonODEOfficial(N=N, z_max=z_max, z_exp=z_exp, gamma=gamma, shape=tuple(x.shape[1:]))
    inverse_scaler = inverse_scaler or (lambda v: v)
    shape = x.shape
    with torch.no_grad():
        timesteps = torch.linspace(np.log(z_max), np.log(eps), sde.N + 1, dtype=x.dtype, device=x.device)
        for i in range(sde.N):
            t = timesteps[i]
            vec_t = torch.ones(shape[0], dtype=x.dtype, device=t.device) * t
            x = update(sde, net_fn, eps, x, vec_t, t_list=timesteps, idx=i)
        return inverse_scaler(x), 2 * sde.N - 1 if ode_solver == 'improved_euler' else sde.N


# ---------------------------------------------------------------------------------------------------------------
# EDM's preconditioning: NVlabs/edm training/networks.py, EDMPrecond.forward; the official PFGM++ code
# (github.com/Newbeeer/pfgmpp, training/networks.py, EDMPrecond.forward) has the same four formulas. Ported with
# its structure; changes: ``model`` is the raw network F(x, c_noise, **kw), and the computation stays in x's dtype
# when that is float64 (the original casts x and sigma to float32), so that float64 tests compare to rounding.

def edm_precond_official(model, x, sigma, sigma_data: float = 0.5, class_labels=None, use_fp16: bool = False,
                         force_fp32: bool = False, **model_kwargs):
    """D_x of the official ``EDMPrecond.forward``: c_skip x + c_out F(c_in x, c_noise), with x (B, C, H, W) and
    sigma (B,) or (B, 1, 1, 1)."""
    fdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    x = x.to(fdt)
    sigma = sigma.to(fdt).reshape(-1, *([1] * (x.dim() - 1)))
    dtype = torch.float16 if (use_fp16 and not force_fp32 and x.device.type == 'cuda') else fdt

    c_skip = sigma_data ** 2 / (sigma ** 2 + sigma_data ** 2)
    c_out = sigma * sigma_data / (sigma ** 2 + sigma_data ** 2).sqrt()
    c_in = 1 / (sigma_data ** 2 + sigma ** 2).sqrt()
    c_noise = sigma.log() / 4

    kw = dict(model_kwargs)
    if class_labels is not None:
        kw["class_labels"] = class_labels
    F_x = model((c_in * x).to(dtype), c_noise.flatten(), **kw)
    assert F_x.dtype == dtype
    D_x = c_skip * x + c_out * F_x.to(fdt)
    return D_x


def pfgmpp_perturb_official(images, sigma, D: float, rng: np.random.Generator, generator=None):
    """The official PFGM++ perturbation (training/loss.py, ``EDMLoss.__call__`` with ``pfgmpp``), ported: the
    radius r sqrt(u / (1 - u)), u ~ Beta(N/2, D/2) clipped to [1e-3, 1 - 1e-3], r = sigma sqrt(D), in a uniform
    direction. ``rng`` replaces the global ``np.random``, ``generator`` torch's; ``sigma`` is (B,). Returns y + n."""
    N = images[0].numel()
    r = sigma.double() * np.sqrt(D).astype(np.float64)
    # Sampling form inverse-beta distribution
    samples_norm = rng.beta(a=N / 2., b=D / 2., size=images.shape[0]).astype(np.double)
    samples_norm = np.clip(samples_norm, 1e-3, 1 - 1e-3)
    inverse_beta = samples_norm / (1 - samples_norm + 1e-8)
    inverse_beta = torch.from_numpy(inverse_beta).to(images.device).double()
    # Sampling from p_r(R) by change-of-variable
    samples_norm = r * torch.sqrt(inverse_beta + 1e-8)
    samples_norm = samples_norm.view(len(samples_norm), -1)
    # Uniformly sample the angle direction
    gaussian = torch.randn(images.shape[0], N, generator=generator).to(samples_norm.device)
    unit_gaussian = gaussian / torch.norm(gaussian, p=2, dim=1, keepdim=True)
    # Construct the perturbation for x
    perturbation_x = unit_gaussian * samples_norm
    perturbation_x = perturbation_x.to(images.dtype)
    n = perturbation_x.view_as(images)
    return images + n


def pfgm_likelihood_official(net_fn, data: torch.Tensor, epsilon: torch.Tensor, *, z_max: float, gamma: float = 5.0,
                             rtol: float = 1e-4, atol: float = 1e-4, eps: float = 1e-3):
    """Poisson_flow's ``get_likelihood_fn_pfgm`` (likelihood.py, be87f70), faithfully: one scipy RK45 over the
    flattened batch in z from eps to z_max, Hutchinson's estimate with the given probes ``epsilon``, the drift
    dx/dz = v_x / (v_z + 1e-5) of the unit-normalised field with the substitution below z = 5 (when gamma > 0), the
    hyperplane prior at z_max and its theta term, and the bits/dim offset 7. Generalised from its hard-coded
    (3, H, W) images to ``data`` of any (B, *shape) and from ``.cuda()`` to data's device; float32 as official.

    Returns:
        (bpd (B,), nfe).
    """
    from scipy import integrate

    shape = tuple(data.shape)
    N = int(np.prod(shape[1:]))
    constant = np.sqrt(N)

    def drift_fn(x, z):
        out = net_fn(x, torch.ones(len(x), device=x.device) * z)
        x_drift, z_drift = out[:, :-1], out[:, -1]
        x_drift = x_drift.reshape(len(x_drift), -1)
        z_exp = 5
        if z < z_exp and gamma > 0:
            x_norm = x_drift.norm(p=2, dim=1) / constant
            v_norm = gamma * x_norm / (1 - x_norm)
            v_norm = torch.sqrt(v_norm ** 2 + z ** 2)
            z_drift = - constant * torch.ones_like(z_drift) * z / (v_norm + gamma)
        v = torch.cat([x_drift, z_drift[:, None]], dim=1)
        v_norm = v.norm(p=2, dim=1, keepdim=True)
        v = v / (v_norm + 1e-7)
        dt_dz = 1 / (v[:, -1] + 1e-5)
        dx_dt = v[:, :-1].view(x.shape)
        return dx_dt * dt_dz.view(-1, *([1] * len(x.size()[1:])))

    def div_fn(x, z, noise):
        with torch.enable_grad():
            x.requires_grad_(True)
            fn_eps = torch.sum(drift_fn(x, z) * noise)
            grad_fn_eps = torch.autograd.grad(fn_eps, x)[0]
        x.requires_grad_(False)
        return torch.sum(grad_fn_eps * noise, dim=tuple(range(1, len(x.shape))))

    def ode_func(z, x):
        sample = torch.from_numpy(x[:-shape[0]].reshape(shape)).to(data.device).type(torch.float32)
        drift = drift_fn(sample, z).detach().cpu().numpy().reshape((-1,))
        logp_grad = div_fn(sample, z, epsilon).detach().cpu().numpy().reshape((-1,))
        return np.concatenate([drift, logp_grad], axis=0)

    init = np.concatenate([data.detach().cpu().numpy().reshape((-1,)), np.zeros((shape[0],))], axis=0)
    solution = integrate.solve_ivp(ode_func, (eps, z_max), init, rtol=rtol, atol=atol, method="RK45")
    zp = solution.y[:, -1]
    x = torch.from_numpy(zp[:-shape[0]].reshape(shape)).to(data.device).type(torch.float32)
    delta_logp = torch.from_numpy(zp[-shape[0]:].reshape((shape[0],))).to(data.device).type(torch.float32)
    x_norm = x.view(len(x), -1).norm(p=2, dim=1)
    prior_logp = - torch.log(x_norm ** 2 + z_max ** 2) * (N + 1) / 2. + np.log(2 * z_max)
    prior_log_theta = np.log(2) + N * 0.5 * np.log(np.pi)
    gamma_N = int(N * 0.5 - 1)
    for i in range(gamma_N, 1, -1):
        prior_log_theta -= np.log(int(i))
    prior_log_theta = - prior_log_theta
    bpd = -(prior_logp + delta_logp + prior_log_theta) / np.log(2)
    bpd = bpd / N
    return bpd + 7., solution.nfev

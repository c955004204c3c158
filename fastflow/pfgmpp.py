"""PFGM++ (Xu et al. 2023) in sigma units throughout: the units of the official code, of EDM and of
:func:`fastflow.edm_sample`.

PFGM++ augments the data with D dimensions; its perturbation kernel at augmented radius r is
p_r(x | x0) ~ 1 / (||x - x0||^2 + r^2)^((d + D) / 2). The official code (github.com/Newbeeer/pfgmpp) trains and
samples in sigma = r / sqrt(D), the per-coordinate noise scale, so that EDM's sigma schedule, sampler,
preconditioning and loss weight apply unchanged; as D -> inf the kernel tends to EDM's N(x0, sigma^2 I).

The trap: :class:`fastflow.Poisson` (D)'s methods take **r** (``Poisson(D).perturb(x0, t)``, ``.prior(..., T=)``,
``.posterior_mean(x, t, ref)``: t = r), while :func:`fastflow.pfgmpp_target` and :func:`fastflow.edm_sample` take
**sigma**. The functions here all take sigma and convert to r = sigma sqrt(D) inside:

- :func:`perturb`: x = x0 + r g / ||h||, g ~ N(0, I_d), h ~ N(0, I_D): the official perturbation's law (the
  official code draws the radius from a Beta(d/2, D/2) and clips the draw to [1e-3, 1 - 1e-3]; this one is exact).
- :func:`prior`: the same at sigma_max (a multivariate Student-t, nu = D, scale sigma_max).
- :func:`target`: the posterior mean over a reference batch (= :func:`fastflow.pfgmpp_target`).
- :func:`sigmas`: EDM's training law sigma = exp(N(P_mean, P_std)) (= ``fastflow.timesteps(n, "lognormal")``).
- :data:`loss_weight`: EDM's weight (= :func:`fastflow.edm_loss_weight`).
- :func:`to_radius` / :func:`to_sigma`: the change of units.

Sample with ``fastflow.edm_sample(denoiser, prior(n, shape, 80.0, D), sigma_max=80.0, D=D)``, precondition the
network with :class:`fastflow.EDMPrecond`.
"""
from __future__ import annotations

import math

import torch

from ._core import nvtx
from ._core import validate as V
from ._core.types import DeviceLike, Shape, Time
from .families import Poisson
from .targets import pfgmpp_target
from .training import edm_loss_weight, timesteps

__all__ = ["perturb", "prior", "target", "sigmas", "loss_weight", "to_radius", "to_sigma"]

#: EDM's loss weight (sigma^2 + sigma_data^2) / (sigma sigma_data)^2: :func:`fastflow.edm_loss_weight` itself.
loss_weight = edm_loss_weight


def _family(D) -> Poisson:
    return Poisson(D)  # TypeError / ValueError naming D for a D that is not a finite number >= 1


def _scale(name: str, sigma, B: int, device: torch.device, D: float):
    """sigma (a float or a (B,) / 0-d tensor, checked under ``name``) times sqrt(D): a float or a (B,) float64
    tensor."""
    s = V.times(name, sigma, B, dtype=torch.float64, device=device)
    return s * math.sqrt(D) if isinstance(sigma, torch.Tensor) else float(sigma) * math.sqrt(D)


@nvtx.annotate("fastflow.pfgmpp.to_radius")
@V.checked
def to_radius(sigma: Time, D: float) -> float | torch.Tensor:
    """r = sigma sqrt(D), Poisson(D)'s time, from the noise scale sigma (a float > 0, or a tensor > 0 of any
    shape, returned in its dtype)."""
    fam = _family(D)
    if isinstance(sigma, torch.Tensor):
        V.times("sigma", sigma.reshape(-1), sigma.numel(), dtype=torch.float64, device=sigma.device)
        return sigma * math.sqrt(fam.D)
    return V.number("sigma", sigma) * math.sqrt(fam.D)


@nvtx.annotate("fastflow.pfgmpp.to_sigma")
@V.checked
def to_sigma(r: Time, D: float) -> float | torch.Tensor:
    """sigma = r / sqrt(D), from Poisson(D)'s augmented radius r (a float > 0, or a tensor > 0 of any shape,
    returned in its dtype)."""
    fam = _family(D)
    if isinstance(r, torch.Tensor):
        V.times("r", r.reshape(-1), r.numel(), dtype=torch.float64, device=r.device)
        return r / math.sqrt(fam.D)
    return V.number("r", r) / math.sqrt(fam.D)


@nvtx.annotate("fastflow.pfgmpp.perturb")
@V.checked
def perturb(x0: torch.Tensor, sigma: Time, D: float, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """PFGM++'s training perturbation at noise scale sigma: x = x0 + sigma sqrt(D) g / ||h||, g ~ N(0, I_d),
    h ~ N(0, I_D) (:meth:`fastflow.Poisson.perturb` at r = sigma sqrt(D)).

    ||x - x0|| / r has the law of sqrt(u / (1 - u)), u ~ Beta(d/2, D/2), in a uniform direction: the official
    code's draw, without its clip of u to [1e-3, 1 - 1e-3].

    Args:
        x0: (B, *shape) data points.  sigma: float or (B,) tensor > 0.  D: the augmented dimensions (>= 1).
        generator: a torch.Generator on x0's device, or None.

    Returns:
        (B, *shape) in x0's dtype.
    """
    fam = _family(D)
    x0 = V.tensor("x0", x0)
    return fam.perturb(x0, _scale("sigma", sigma, x0.shape[0], x0.device, fam.D), generator=generator)


@nvtx.annotate("fastflow.pfgmpp.prior")
@V.checked
def prior(n: int, shape: Shape, sigma_max: Time, D: float, *, generator: torch.Generator | None = None,
          device: DeviceLike = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """n draws of PFGM++'s prior at sigma_max: sigma_max sqrt(D) g / ||h|| (:meth:`fastflow.Poisson.prior` at
    T = sigma_max sqrt(D)): a multivariate Student-t with nu = D and scale sigma_max, the official generate.py's
    draw (radius sigma_max sqrt(D) sqrt(u / (1 - u)), u ~ Beta(d/2, D/2)).

    Args:
        n: number of points (>= 0).  shape: the per-point shape.  sigma_max: float or (n,) tensor > 0 (EDM's 80).
        D: the augmented dimensions (>= 1).  generator, device, dtype: as :meth:`fastflow.Poisson.prior`.

    Returns:
        (n, *shape) tensor of ``dtype``, the start of :func:`fastflow.edm_sample` with the same sigma_max.
    """
    fam = _family(D)
    n = V.count("n", n)
    dev = V.sample_device(device, generator)
    T = _scale("sigma_max", sigma_max, n, dev, fam.D)
    return fam.prior(n, shape, T=T, generator=generator, device=dev, dtype=dtype)


@nvtx.annotate("fastflow.pfgmpp.target")
@V.checked
def target(x: torch.Tensor, sigma: Time, ref: torch.Tensor, D: float, *, backend: str | None = None,
           precision: str = "ieee", chunk_size: int | None = None) -> torch.Tensor:
    """PFGM++'s regression target over a reference batch at noise scale sigma: the posterior mean xbar under the
    Poisson(D) weights at r = sigma sqrt(D) (:func:`fastflow.pfgmpp_target`; the official ``pfgmpp_target`` of
    training/loss.py with ``stf``).

    Args:
        x: (B, *shape) perturbed points.  sigma: float or (B,) tensor > 0.  ref: (R, *shape) the reference batch.
        D: the augmented dimensions (>= 1).  backend, precision, chunk_size: as :meth:`fastflow.Poisson.posterior_mean`.

    Returns:
        (B, *shape) xbar in x's dtype; differentiable in x, sigma and ref.
    """
    _family(D)
    return pfgmpp_target(x, sigma, ref, D=D, backend=backend, precision=precision, chunk_size=chunk_size)


def sigmas(n: int, *, P_mean: float = -1.2, P_std: float = 1.2, generator: torch.Generator | None = None,
           device: DeviceLike = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """n training noise scales of EDM's law, sigma = exp(P_mean + P_std g), g ~ N(0, 1) (the official PFGM++
    ``EDMLoss``; :func:`fastflow.timesteps` with ``kind="lognormal"``). Returns (n,) of ``dtype``, > 0."""
    return timesteps(n, "lognormal", P_mean=P_mean, P_std=P_std, generator=generator, device=device, dtype=dtype)

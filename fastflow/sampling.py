"""Exact draws for the perturbation kernels and the priors (MATH.md §3 and §5): the pure-torch path.

Every family's x_t and prior is a_t * x0 + b * rho * g: a Gaussian g ~ N(0, I_d) per row (normalised to the
unit sphere for the radial-CDF family) times one radius factor rho per row. The functions below draw those
pieces. Each one draws from a ``torch.Generator`` on the target device (None: that device's default generator),
so a seeded generator gives the same output on that device. The fused Philox sampler of issue 3 is to replace
them behind :meth:`fastflow.Family.perturb`, :meth:`fastflow.Family.prior` and :mod:`fastflow.pfgm`.

Per-row factors are drawn in float64: there are only n of them, float64 uniforms have 53 bits (so Psi^{-1}(U) stays
finite and resolves its tail to U = 1 - 2^-53), and the Gamma sampler computes in float64 anyway. The (n, d)
Gaussians are drawn in :func:`draw_dtype`.
"""
from __future__ import annotations

import torch

#: Psi^{-1}(U) of the radial-CDF family, for U in [0, 1): finite there (at most 18.7 for tanh, 36.7 for exp,
#: at U = 1 - 2^-53); both are written to keep full relative precision near U = 0.
INVERSE_CDFS = {
    "tanh": torch.atanh,                    # Psi(s) = tanh s
    "exp": lambda u: -torch.log1p(-u),      # Psi(s) = 1 - exp(-s)
}


def draw_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 is drawn in float64; float32, float16 and bfloat16 in float32 (rounded once at the end)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def normal(n: int, d: int, *, generator, device, dtype) -> torch.Tensor:
    """(n, d) standard Gaussians g ~ N(0, I_d) in ``dtype``."""
    return torch.randn(n, d, generator=generator, device=device, dtype=dtype)


def nonzero_normal(n: int, d: int, *, generator, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """g ~ N(0, I_d) given g != 0, and ||g||: g / ||g|| is uniform on the unit sphere S^{d-1}.

    Returns:
        g: (n, d) in ``dtype``; norm: (n,) its row norms, all > 0.
    """
    g = normal(n, d, generator=generator, device=device, dtype=dtype)
    norm = torch.linalg.vector_norm(g, dim=1)
    # Redraw all-zero rows: torch's Box-Muller returns an exact 0 when its uniform hits 0 (2^-24 per float32
    # entry on the CPU), so at d = 1 about one row in 17 million would otherwise give the direction 0/0.
    # The check is one device sync per call; the fused sampler will not need it.
    bad = norm == 0
    while bool(bad.any()):
        g[bad] = normal(int(bad.sum()), d, generator=generator, device=device, dtype=dtype)
        norm = torch.linalg.vector_norm(g, dim=1)
        bad = norm == 0
    return g, norm


def uniform(n: int, *, generator, device) -> torch.Tensor:
    """(n,) float64 draws of U ~ U[0, 1) (multiples of 2^-53)."""
    return torch.rand(n, generator=generator, device=device, dtype=torch.float64)


def chi(n: int, D: float, *, generator, device) -> torch.Tensor:
    """(n,) float64 draws of ||h||, h ~ N(0, I_D): sqrt(2 G) with G ~ Gamma(D/2, 1); exact for every real D > 0.

    torch's Gamma sampler (Marsaglia-Tsang, boosted by U^(2/D) when D < 2) computes in float64 and returns at
    least the smallest normal float64, so ||h|| > 0 and t / ||h|| is finite. One Gamma draw per row replaces
    D Gaussians: the cost does not grow with D (D = 2048 is as cheap as D = 1).
    """
    alpha = torch.full((n,), D / 2.0, dtype=torch.float64, device=device)
    return torch._standard_gamma(alpha, generator=generator).mul_(2.0).sqrt_()


def inverse_radial_cdf(n: int, name: str, *, generator, device) -> torch.Tensor:
    """(n,) float64 draws of Psi^{-1}(U), U ~ U[0, 1): the radius / t of the radial-CDF family ("tanh" or "exp").

    U = 1 never occurs (it would give inf); U = 0 gives the radius 0, a finite point of measure 2^-53.
    """
    return INVERSE_CDFS[name](uniform(n, generator=generator, device=device))


__all__ = ["draw_dtype", "normal", "nonzero_normal", "uniform", "chi", "inverse_radial_cdf", "INVERSE_CDFS"]

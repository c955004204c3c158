"""Exact draws of the perturbation kernels and the priors (docs/math.md, the families' table; PFGM's recipe).

Every family's x_t and prior is a_t * x0 + b * rho * g: a Gaussian g ~ N(0, I_d) per row (normalised to the
unit sphere for the radial-CDF family) times one radius factor rho per row, whose law a :class:`Radius`
describes. :func:`draw` is the one place that chooses between the fused op and the pure-torch pieces;
:func:`perturb` and :func:`prior` are the families' public draws on top of it. Each piece draws from a
``torch.Generator`` on the target device (None: that device's default generator), so a seeded generator gives
the same output on that device.

:func:`draw_fused` draws the whole a_t * x0 + b * rho * g in one pass with the compiled op
``torch.ops.fastflow.draw_`` (Philox4x32-10, csrc/philox.h), keyed by one 63-bit integer drawn from the
generator into a device tensor (the kernel reads it there: no host read); :func:`draw` uses it where
:func:`can_draw_fused` allows, and the pieces otherwise (the pure-torch path, also forced by
``FASTFLOW_DISABLE_C=1``). The two paths draw the same laws but not the same numbers.

What holds across devices for the fused op: the same seed gives bitwise the same Philox words and uniforms on
the CPU (any number of threads, any x86 SIMD width) and on CUDA; the Gaussians then differ by the last ulp or two
of log/sin/cos (float32: the CPU's vectorised polynomials against libdevice's logf/sincospif; float64: glibc
against libdevice), and the radial-CDF rho by the summation order of ||g||^2 (8 fixed lanes on the CPU, a block
reduction on CUDA): the outputs agree to a few ulp of the output dtype, not bitwise. A seeded torch.Generator
gives the same seed on CPU and CUDA only if the two generators' randint agree, which torch does not promise.

Per-row factors are drawn in float64: there are only n of them, float64 uniforms have 53 bits (so Psi^{-1}(U) stays
finite and resolves its tail to U = 1 - 2^-53), and the Gamma sampler computes in float64 anyway. The (n, d)
Gaussians are drawn in :func:`draw_dtype`.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from ._core import (
    loader,
    ops,  # noqa: F401  (the fused draw's fake implementation, for torch.compile)
)
from ._core import validate as V

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
    # An all-zero row would give the direction 0/0: torch's Box-Muller returns an exact 0 when its uniform hits 0
    # (2^-24 per float32 entry on the CPU), so at d = 1 about one row in 17 million is zero. Without a host read
    # (a loop "while a row is zero" would be one, a stall on a GPU): for d <= 2 such rows take the row of a second
    # draw, an exact redraw; a row zero in both (2^-48 at d = 1), or any zero row for d >= 3 (< 2^-72), is nudged
    # to e_1, which changes the law by less than that probability.
    if d <= 2:
        backup = normal(n, d, generator=generator, device=device, dtype=dtype)
        zero = (norm == 0)[:, None]
        g = torch.where(zero, backup, g)
        norm = torch.where(zero[:, 0], torch.linalg.vector_norm(backup, dim=1), norm)
    zero = (norm == 0).to(g.dtype)
    g[:, 0] += zero
    return g, norm + zero


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


#: radius_kind of ``torch.ops.fastflow.draw_`` (csrc/draw_math.h): rho = 1; 1 / ||h|| with h ~ N(0, I_D) (any
#: real D > 0: D squares for an integer D <= 8, else one Marsaglia-Tsang Gamma draw); Psi^{-1}(U) / ||g|| for
#: Psi = tanh and Psi(s) = 1 - e^-s.
RADIUS_ONE, RADIUS_CHI, RADIUS_TANH, RADIUS_EXP = 0, 1, 2, 3
#: a user's radial CDF (pure torch only): rho g = psi_b^{-1}(U) / b * g / ||g|| by :attr:`Radius.inverse`
RADIUS_USER = 4


def can_draw_fused(device: torch.device, dtype: torch.dtype, radius_kind: int, radius_param: float = 0.0) -> bool:
    """Whether :func:`draw_fused` can draw on ``device`` in ``dtype`` (the draw dtype: float32 or float64).

    Needs the compiled extension (``fastflow._C``; not disabled by FASTFLOW_DISABLE_C=1) with a kernel for the
    device (CPU always, CUDA when built with nvcc), and for RADIUS_CHI a finite D > 0. torch.compile traces it
    too: the op's Philox key is a device tensor drawn in the graph, so a compiled draw gives the eager numbers.
    """
    if dtype not in (torch.float32, torch.float64) or not loader.has_C():
        return False
    if device.type == "cuda":
        if not loader.has_C_cuda():
            return False
    elif device.type != "cpu":
        return False
    if radius_kind == RADIUS_CHI:
        D = float(radius_param)
        return math.isfinite(D) and D > 0
    return radius_kind in (RADIUS_ONE, RADIUS_TANH, RADIUS_EXP)


def philox_seed(generator, device) -> torch.Tensor:
    """One 63-bit key for the Philox op, drawn from ``generator`` (None: ``device``'s default generator), as a (1,)
    int64 tensor on ``device``: the op's kernel reads it there, so the host never waits for it.

    Drawing it advances the generator, so consecutive calls get different keys and a re-seeded generator the same
    ones.
    """
    return torch.randint(0, (1 << 63) - 1, (1,), generator=generator, device=device, dtype=torch.int64)


def draw_fused(x0, a, scale, n: int, d: int, *, radius_kind: int, radius_param: float = 0.0, generator, device,
               dtype) -> torch.Tensor:
    """out_i = a_i x0_i + scale_i rho_i g_i in one pass of ``torch.ops.fastflow.draw_`` (docs/math.md).

    g_i ~ N(0, I_d) from Philox4x32-10, rho_i by ``radius_kind`` (RADIUS_ONE / CHI / TANH / EXP; radius_param
    is D for RADIUS_CHI). Call only where :func:`can_draw_fused` is true.

    Args:
        x0: (n, d) or None (then out_i = scale_i rho_i g_i).  a, scale: (n,) (a ignored without x0).
        n, d: the output shape.  generator: a torch.Generator on ``device``, or None.  dtype: float32 or float64.

    Returns:
        (n, d) tensor of ``dtype`` on ``device``.
    """
    seed = philox_seed(generator, device)
    out = torch.empty(n, d, device=device, dtype=dtype)
    f64 = dict(device=device, dtype=torch.float64)
    scale = scale.to(**f64).contiguous()
    a = scale if a is None or x0 is None else a.to(**f64).contiguous()
    if x0 is not None:
        x0 = x0.to(device=device, dtype=dtype).contiguous()
    torch.ops.fastflow.draw_(out, x0, a, scale, seed, 0, int(radius_kind), float(radius_param))
    return out


# ---------------------------------------------------------------------------------------------------------------
# The radius law of a family, and the one choice between the fused op and the pieces

@dataclass(frozen=True)
class Radius:
    """The law of the per-row radius factor rho of the noise b rho g (a family's draw, in one place).

    Attributes:
        kind: the fused op's radius_kind: :data:`RADIUS_ONE` (rho = 1), :data:`RADIUS_CHI` (rho = 1 / ||h||,
            h ~ N(0, I_D)), :data:`RADIUS_TANH` / :data:`RADIUS_EXP` (rho g = Psi^{-1}(U) g / ||g||); or
            :data:`RADIUS_USER` (rho g = psi_b^{-1}(U) / b * g / ||g||, pure torch).
        param: D for RADIUS_CHI, else 0.
        inverse: for RADIUS_USER, (U, b) -> r with psi_b(r) = U, both (n,) float64.
    """

    kind: int = RADIUS_ONE
    param: float = 0.0
    inverse: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    @property
    def unit_noise(self) -> bool:
        """Whether the noise is rho g / ||g|| (a radius in a uniform direction) rather than rho g."""
        return self.kind in (RADIUS_TANH, RADIUS_EXP, RADIUS_USER)

    def factor(self, n: int, generator, device, b: torch.Tensor | None = None) -> torch.Tensor:
        """(n,) float64 draws of rho by the pure-torch pieces (before the 1 / ||g|| of unit noise); b (n,) the
        noise scale, needed by RADIUS_USER only (its radius psi_b^{-1}(U) is not b times a fixed law)."""
        if self.kind == RADIUS_USER:
            b = b.to(torch.float64)
            return self.inverse(uniform(n, generator=generator, device=device), b) / b
        if self.kind == RADIUS_CHI:
            # rho = 1 / ||h||: ||x - x0||^2 / t^2 = ||g||^2 / ||h||^2 ~ BetaPrime(d/2, D/2)
            return chi(n, self.param, generator=generator, device=device).reciprocal_()
        if self.unit_noise:
            # ||x - x0|| / t = Psi^{-1}(U) has the CDF Psi
            return inverse_radial_cdf(n, "tanh" if self.kind == RADIUS_TANH else "exp", generator=generator,
                                      device=device)
        return torch.ones(n, dtype=torch.float64, device=device)


def draw(x0, a, b, n: int, d: int, radius: Radius, *, generator, device, dtype) -> torch.Tensor:
    """(n, d) rows a * x0 + b * rho * g in the draw dtype of ``dtype``; x0 = None gives b * rho * g.

    The fused op where :func:`can_draw_fused` allows (one Philox pass), else the pure-torch pieces (the same law,
    other numbers). a, b: (n,) float64 (a ignored without x0).  x0: (n, d) or None.
    """
    ddt = draw_dtype(dtype)
    if can_draw_fused(device, ddt, radius.kind, radius.param):
        if x0 is not None and x0.requires_grad and torch.is_grad_enabled():
            # the op has no autograd formula: draw the noise alone (the same Philox words) and add a x0 in torch,
            # so that x_t carries the gradient a with respect to x0 as the pure-torch path does
            noise = draw_fused(None, None, b, n, d, radius_kind=radius.kind, radius_param=radius.param,
                               generator=generator, device=device, dtype=ddt)
            return noise.addcmul(x0.to(ddt), a.to(ddt)[:, None])
        return draw_fused(x0, a, b, n, d, radius_kind=radius.kind, radius_param=radius.param,
                          generator=generator, device=device, dtype=ddt)
    rho = radius.factor(n, generator, device, b)
    if radius.unit_noise:
        g, norm = nonzero_normal(n, d, generator=generator, device=device, dtype=ddt)
        rho = rho / norm
    else:
        g = normal(n, d, generator=generator, device=device, dtype=ddt)
    x = g.mul_((b * rho).to(ddt)[:, None])
    if x0 is not None:
        x.addcmul_(x0.to(ddt), a.to(ddt)[:, None])
    return x


def finish(x: torch.Tensor, dtype: torch.dtype, shape, what: str) -> torch.Tensor:
    """Round once to ``dtype``, refusing inf (heavy tails overflow float16 at 65504), and reshape."""
    out = x.to(dtype)
    V.require_finite(out, lambda: FloatingPointError(
        f"{what}: the draw overflows {dtype} (a heavy-tailed radius beyond its range); draw in float32 or "
        "float64"))
    return out.reshape(shape)


class DrawLaw(Protocol):
    """What :func:`perturb` and :func:`prior` need of a family (:class:`fastflow.Family` implements it)."""

    t_max: float | None
    radius: Radius | None

    def path_scale(self, t: torch.Tensor) -> torch.Tensor: ...

    def noise_scale(self, t: torch.Tensor) -> torch.Tensor: ...

    def prior_scale(self, T: torch.Tensor) -> torch.Tensor: ...


def _radius(law: DrawLaw) -> Radius:
    if law.radius is None:  # a Family subclass that states no law of the noise: refuse rather than draw another
        raise NotImplementedError(f"{law!r} states no radius law (Family.radius, a fastflow.draws.Radius): its "
                                  "perturbation and prior cannot be drawn")
    return law.radius


def perturb(law: DrawLaw, x0, t, *, generator=None) -> torch.Tensor:
    """x_t = a_t x0 + s_t rho g per row of x0 (B, *shape), s_t = noise_scale(t) (t but for affine paths); t a
    float or (B,) tensor. See Family.perturb."""
    radius = _radius(law)
    x0 = V.tensor("x0", x0)
    B, d = x0.shape[0], math.prod(x0.shape[1:])
    if d == 0:
        raise ValueError(f"x0 must have at least one element per point, got shape {tuple(x0.shape)}")
    V.generator("generator", generator, x0.device)
    tt = V.times("t", t, B, dtype=torch.float64, device=x0.device, upper=law.t_max)
    x = draw(x0.reshape(B, d), law.path_scale(tt), law.noise_scale(tt), B, d, radius, generator=generator,
             device=x0.device, dtype=x0.dtype)
    return finish(x, x0.dtype, x0.shape, f"{law!r}.perturb")


def prior(law: DrawLaw, n, shape, *, T, generator=None, device=None, dtype=torch.float32) -> torch.Tensor:
    """n draws of prior_scale(T) rho g, shape (n, *shape). See Family.prior."""
    radius = _radius(law)
    n = V.count("n", n)
    shape = V.point_shape("shape", shape)
    dtype = V.float_dtype("dtype", dtype)
    device = V.sample_device(device, generator)
    V.generator("generator", generator, device)
    TT = V.times("T", T, n, dtype=torch.float64, device=device, upper=law.t_max)
    x = draw(None, None, law.prior_scale(TT), n, math.prod(shape), radius, generator=generator, device=device,
             dtype=dtype)
    return finish(x, dtype, (n,) + shape, f"{law!r}.prior")


__all__ = ["Radius", "draw", "finish", "perturb", "prior", "draw_dtype", "normal", "nonzero_normal", "uniform",
           "chi", "inverse_radial_cdf", "INVERSE_CDFS", "can_draw_fused", "draw_fused", "philox_seed",
           "RADIUS_ONE", "RADIUS_CHI", "RADIUS_TANH", "RADIUS_EXP", "RADIUS_USER"]

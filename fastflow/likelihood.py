"""Exact log-likelihoods of ODE models: :func:`log_likelihood` by the instantaneous change of variables.

For dx/dt = f(x, t) the density along a trajectory obeys d/dt log p_t(x(t)) = -div f(x(t), t) (the continuity
equation of docs/math.md), so with x(t0) = x

    log p_{t0}(x) = log p_{t1}(x(t1)) + int_{t0}^{t1} div f(x(t), t) dt

(Chen et al. 2018, "Neural Ordinary Differential Equations", Thm. 1; Grathwohl et al. 2019, FFJORD). The
augmented state [x, int div f] is integrated with :func:`fastflow.odeint`; the prior's log-density at x(t1)
closes the formula. Typical use: t0 = t_min (near the data), t1 = T (the prior time of the family).

The divergence is taken one of two ways:

- ``"exact"``: tr(df/dx) as d vector-Jacobian products e_k^T (df/dx), one per coordinate (cost ~ d backward
  passes per evaluation of f); the default for d <= :data:`EXACT_MAX_DIM`.
- ``"hutchinson"``: eps^T (df/dx) eps with Rademacher probes eps (E[eps eps^T] = I, so the estimate is unbiased),
  one VJP per probe, averaged over ``n_probes``. Each sample keeps its probes for the whole integration (FFJORD's
  choice): the result is then the exact log-likelihood of the trajectory's divergence estimate, with no
  step-to-step noise for the adaptive solver to chase.

The derivatives come from autograd, or (``derivative="finite_difference"``) from central differences of f, for
an f that autograd cannot go through (compiled kernels without a backward; the empirical field's fast backends
have a streamed one, fastflow/field/autograd.py).
"""
from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ._core import nvtx
from ._core import validate as V
from .ode import odeint

__all__ = ["log_likelihood", "LikelihoodResult", "bpd", "EXACT_MAX_DIM", "DIVERGENCES", "DERIVATIVES"]

#: Largest d for which ``divergence=None`` picks the exact trace: it costs d VJPs per evaluation of f against
#: n_probes for Hutchinson, so beyond ~16 coordinates the estimator is the cheaper of the two.
EXACT_MAX_DIM = 16
DIVERGENCES = ("exact", "hutchinson")
DERIVATIVES = ("auto", "autograd", "finite_difference")


@dataclass
class LikelihoodResult:
    """What :func:`log_likelihood` returns.

    Attributes:
        logp: (B,) log p_{t0}(x) = prior_logp + delta_logp; NaN where ``success`` is False (the integral is
            incomplete there). float64 when x is float64, else float32.
        prior_logp: (B,) log p_{t1}(x_T), the prior's log-density at the end of the trajectory (same dtype as logp).
        delta_logp: (B,) int_{t0}^{t1} div f(x(t), t) dt (the integral so far where ``success`` is False).
        x_T: (B, *shape) x(t1) in x's dtype (where the sample stopped, if ``success`` is False).
        nfe: (B,) int64 evaluations of the augmented right-hand side per sample (each one call of f with its
            divergence: d or n_probes VJPs, or 2d / 2 n_probes extra rows of f with finite differences).
        success: (B,) bool, whether the sample's integration reached t1 (see :class:`fastflow.ODEResult`).
    """

    logp: torch.Tensor
    prior_logp: torch.Tensor
    delta_logp: torch.Tensor
    x_T: torch.Tensor
    nfe: torch.Tensor
    success: torch.Tensor
    #: how the divergence was differentiated: "autograd" or "finite_difference" (what "auto" chose), or "field"
    #: (the closed form of an exact field's ``velocity_and_divergence``, e.g. a :class:`fastflow.Oracle`)
    derivative: str = "autograd"

    def bpd(self, offset: float = 0.0) -> torch.Tensor:
        """(B,) bits per dimension of ``logp`` (see :func:`bpd`), with d the size of one sample of x_T."""
        return bpd(self.logp, math.prod(self.x_T.shape[1:]), offset=offset)


def bpd(logp: torch.Tensor, d: int, offset: float = 0.0) -> torch.Tensor:
    """Bits per dimension: -logp / (d ln 2) + offset.

    Args:
        logp: (B,) log-densities in nats of d-dimensional points.
        d: the number of dimensions of one point.
        offset: bits per dimension added for the data's preprocessing. For 8-bit data dequantised (uniform noise)
            and scaled to [-1, 1], the density of the pixels is p_x (2/256)^d, so offset = log2(128) = 7; for data
            scaled to [0, 1], offset = 8.

    Returns:
        (B,) tensor in logp's dtype.
    """
    if not isinstance(logp, torch.Tensor) or not logp.is_floating_point():
        raise TypeError(f"logp must be a floating-point tensor, got {type(logp).__name__}")
    d = V.count("d", d)
    if d < 1:
        raise ValueError(f"d must be >= 1 (dimensions per point), got {d}")
    offset = V.number("offset", offset, lower=-math.inf)
    return -logp / (d * math.log(2.0)) + offset


# ----------------------------------------------------------------------------------------------------------------
# The divergence of f at a batch of rows

def _fd_step(x2: torch.Tensor, rel: float | None) -> torch.Tensor:
    """(n, 1) central-difference step per row: rel max(1, RMS(x)) in x's dtype. The default rel = eps^(1/3)
    balances truncation O(s^2) against rounding O(eps / s) for f varying on a unit length scale: 6e-6 in float64,
    5e-3 in float32, 0.1 in float16."""
    if rel is None:
        rel = torch.finfo(x2.dtype).eps ** (1.0 / 3.0)
    rms = x2.float().pow(2).mean(dim=1, keepdim=True).sqrt().clamp_min(1.0)
    return (rel * rms).to(x2.dtype)


class _NotDifferentiable(Exception):
    """f cannot be differentiated by autograd (derivative="auto" then takes finite differences)."""


class _Augmented:
    """The augmented right-hand side [f(x, t), div f(x, t)] on flattened rows (n, d + 1), for ``odeint`` with
    ``with_index=True`` (the index picks each row's Hutchinson probes: odeint drops finished rows)."""

    def __init__(self, f, shape, x_dtype, state_dtype, divergence, derivative, probes, fd_step=None, field=None):
        self.f, self.shape, self.x_dtype, self.state_dtype = f, tuple(shape), x_dtype, state_dtype
        self.field = field  # f.velocity_and_divergence of an exact field (a fastflow.Oracle), or None
        self.d = math.prod(shape)
        self.divergence, self.derivative, self.fd_step = divergence, derivative, fd_step
        self.probes = probes  # (B, P, d) Rademacher in x's dtype, or None for the exact trace
        self.kw: dict = {}  # this evaluation's model_kwargs, already sliced to its rows by odeint

    def _call_f(self, x: torch.Tensor, t: torch.Tensor, rep: int = 1) -> torch.Tensor:
        """f on x (rep * n rows: the n rows of this evaluation, rep times over), the per-sample kwargs tiled."""
        kw = {k: (v.repeat(rep, *([1] * (v.dim() - 1))) if isinstance(v, torch.Tensor) and v.dim() >= 1 else v)
              for k, v in self.kw.items()} if rep > 1 else self.kw
        return V.f_output(self.f(x, t, **kw), x.shape)

    def _directions(self, idx: torch.Tensor, n: int) -> torch.Tensor:
        """(n, P, d) the vectors v of the quadratic forms v^T (df/dx) v summed (exact) or averaged (Hutchinson)."""
        if self.probes is not None:
            return self.probes.index_select(0, idx)
        return torch.eye(self.d, dtype=self.x_dtype, device=idx.device).expand(n, self.d, self.d)

    def __call__(self, z: torch.Tensor, t: torch.Tensor, idx: torch.Tensor, **kw) -> torch.Tensor:
        n, d = z.shape[0], self.d
        x2 = z[:, :d].to(self.x_dtype)
        tx = t.to(self.x_dtype)
        self.kw = kw
        if self.field is not None:  # the field's closed-form divergence: exact at any d, one pass per evaluation
            dx, div = self.field(x2.reshape(n, *self.shape), tx, **kw)
            dx = V.f_output(dx, (n, *self.shape), " (f.velocity_and_divergence)")
            return torch.cat((dx.reshape(n, d).to(self.state_dtype), div.reshape(n, 1).to(self.state_dtype)), dim=1)
        v = self._directions(idx, n)  # (n, P, d)
        if self.derivative == "auto":  # the first evaluation decides, once for the whole integration
            try:
                dx, quad = self._autograd(x2, tx, v)
                self.derivative = "autograd"
            except _NotDifferentiable:
                self.derivative = "finite_difference"
                dx, quad = self._finite_difference(x2, tx, v)
        elif self.derivative == "autograd":
            dx, quad = self._autograd(x2, tx, v)
        else:
            dx, quad = self._finite_difference(x2, tx, v)
        div = quad.sum(dim=1) if self.divergence == "exact" else quad.mean(dim=1)
        return torch.cat((dx.reshape(n, d).to(self.state_dtype), div.to(self.state_dtype)[:, None]), dim=1)

    def _autograd(self, x2, t, v):
        """f(x) and (n, P) v_p^T (df/dx) v_p by one VJP per direction (rows of f are assumed independent, so the
        VJP of sum_i v_i . f(x_i) gives each row its own v_i^T df_i/dx_i)."""
        n, P = v.shape[0], v.shape[1]
        with torch.enable_grad():
            xg = x2.detach().requires_grad_(True)
            try:
                out = self._call_f(xg.reshape(n, *self.shape), t)
            except RuntimeError as e:
                if self.derivative == "auto":
                    raise _NotDifferentiable from e
                e.add_note("fastflow.log_likelihood differentiates f with autograd (derivative='autograd'); for an f "
                           "that autograd cannot go through, pass derivative='finite_difference' (or 'auto')")
                raise
            if not out.requires_grad:
                if self.derivative == "auto":
                    raise _NotDifferentiable
                raise ValueError("f's output does not require grad: autograd cannot differentiate it with respect to "
                                 "x (f detaches, or runs a kernel without autograd support). Pass "
                                 "derivative='finite_difference' (or 'auto'), or make f differentiable.")
            out2 = out.reshape(n, self.d)
            cdt = torch.promote_types(x2.dtype, torch.float32)  # float16 rows still sum d products in float32
            quad = x2.new_zeros(n, P, dtype=cdt)
            for p in range(P):
                vp = v[:, p, :]
                (g,) = torch.autograd.grad(out2, xg, grad_outputs=vp.to(out2.dtype), retain_graph=p < P - 1,
                                           allow_unused=True)
                if g is not None:  # None: out depends on x nowhere (a zero Jacobian)
                    quad[:, p] = (g.to(cdt) * vp.to(cdt)).sum(dim=1)
        return out.detach(), quad

    def _finite_difference(self, x2, t, v):
        """f(x) and (n, P) v_p^T (df/dx) v_p ~ |v|^2 u^T (f(x + s u) - f(x - s u)) / (2 s), u = v / |v|, in one
        call of f on (1 + 2P) n rows."""
        n, P, d = v.shape
        vn = torch.linalg.vector_norm(v, dim=2, keepdim=True)  # (n, P, 1)
        u = v / vn
        s = _fd_step(x2, self.fd_step)[:, :, None]  # (n, 1, 1)
        xs = torch.cat((x2[None], (x2[:, None, :] + s * u).transpose(0, 1), (x2[:, None, :] - s * u).transpose(0, 1)))
        ts = t[None].expand(1 + 2 * P, n).reshape(-1)
        with torch.no_grad():
            out = self._call_f(xs.reshape((1 + 2 * P) * n, *self.shape), ts, 1 + 2 * P).reshape(1 + 2 * P, n, d)
        cdt = torch.promote_types(out.dtype, torch.float32)
        diff = (out[1:1 + P] - out[1 + P:]).to(cdt).transpose(0, 1)  # (n, P, d)
        quad = (diff * u.to(cdt)).sum(dim=2) * (vn[:, :, 0].to(cdt) ** 2) / (2 * s[:, :, 0].to(cdt))
        return out[0], quad


# ----------------------------------------------------------------------------------------------------------------
# The public function

def _time_arg(name: str, v, B: int, device: torch.device):
    """Check t0 / t1: a finite real number, or a finite real 0-d or (B,) tensor on x's device."""
    if isinstance(v, torch.Tensor):
        if v.dtype == torch.bool or v.is_complex():
            raise TypeError(f"{name} must be a float or a real (B,) tensor, got {v.dtype}")
        if v.dim() != 0 and tuple(v.shape) != (B,):
            raise ValueError(f"{name} must be a float or a tensor of shape (B,) = ({B},), got {tuple(v.shape)}")
        if v.device != device:
            raise ValueError(f"{name} must be on {device} like x, got {v.device}")
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"{name} contains NaN or inf")
        return v.detach()
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a float or a (B,) tensor, got {type(v).__name__}")
    if not math.isfinite(float(v)):
        raise ValueError(f"{name} must be finite, got {v}")
    return float(v)


@nvtx.annotate("fastflow.log_likelihood")
def log_likelihood(f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                   t0: float | torch.Tensor, t1: float | torch.Tensor,
                   prior_logp: Callable[[torch.Tensor], torch.Tensor], *, divergence: str | None = None,
                   n_probes: int = 1, generator: torch.Generator | None = None, derivative: str = "auto",
                   fd_step: float | None = None,
                   method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5, steps: int | None = None,
                   max_steps: int = 10_000, progress: bool = False,
                   model_kwargs: dict | None = None) -> LikelihoodResult:
    """log p_{t0}(x) = log p_{t1}(x(t1)) + int_{t0}^{t1} div f(x(t), t) dt, with dx/dt = f and x(t0) = x.

    The augmented state [x, int div f] (flattened to (B, d + 1)) is integrated by :func:`fastflow.odeint`, each
    sample with its own clock; then ``prior_logp`` is evaluated at x(t1).

    Args:
        f: the velocity ``f(x, t) -> dx/dt``, x (n, *shape) and t (n,) in x's dtype, n <= B the samples still
            integrating. An exact empirical field, ``fastflow.Oracle(fam, ref)`` (or any f with a method
            ``velocity_and_divergence(x, t) -> (dx/dt, div f (n,))``), brings its own exact divergence
            (:meth:`fastflow.Family.divergence`, one streaming pass per evaluation, at any d): it is used with the
            defaults (``divergence`` None or "exact", ``derivative="auto"``; result ``derivative == "field"``).
            Rows must be independent (row i of f depends only on row i of x: no batch statistics), since one VJP
            serves all rows. With ``derivative="autograd"`` f must be differentiable in x; it is run
            under ``torch.enable_grad()`` even when log_likelihood is called under ``torch.no_grad()``.
        x: (B, *shape) points at time t0, float16/bfloat16/float32/float64, finite.
        t0: float or (B,) tensor, the time of x (e.g. t_min, near the data).
        t1: float or (B,) tensor, the time of the prior (e.g. T); t1 < t0 integrates backward.
        prior_logp: ``prior_logp(x_T) -> (B,)``, the log-density of p_{t1} at x_T (B, *shape) in x's dtype.
        divergence: ``"exact"`` (the trace by d VJPs), ``"hutchinson"`` (Rademacher estimate, unbiased) or None:
            exact when d <= :data:`EXACT_MAX_DIM` (16) or f brings its own divergence, else Hutchinson.
            With probes fixed along the trajectory the
            error of delta_logp is eps^T M eps - tr M averaged over the probes, M = int S dt with S the symmetric
            part of df/dx: its variance is 2 sum_{i != j} M_ij^2 / n_probes (0 for a diagonal Jacobian).
        n_probes: Hutchinson probes per sample (>= 1), drawn once and kept for the whole integration; the
            estimates are averaged. Ignored by the exact trace.
        generator: draws the Hutchinson probes (None: torch's global generator); on x's device type.
        derivative: ``"auto"`` (default): autograd when f can be differentiated (its output requires grad
            and its backward exists), else finite differences, decided at the first evaluation (the fastflow field
            backends are differentiable: autograd). ``"autograd"`` (VJPs), or
            ``"finite_difference"`` (central differences along each direction,
            f called once on (1 + 2P) n rows per evaluation, P = d or n_probes), for an f without autograd support.
            Its error is O(step^2) plus rounding O(eps |f| / step).
        fd_step: finite differences only: the relative step; a row's step is fd_step max(1, RMS(x_i)) along a unit
            direction. Default eps^(1/3) of x's dtype (6e-6 float64, 5e-3 float32), right for f varying on a unit
            length scale. Take it smaller for sharper fields: the empirical field at t = 0.05 on unit-scale data
            (weights switching over t^2 / |x0_j - x0_k|) gives ~5e-2 error in logp at 5e-3 and ~2e-3 at 5e-4.
        method, rtol, atol, steps, max_steps, progress: passed to :func:`fastflow.odeint` (dopri5 by default).
            The error norm is the RMS over all d + 1 components, so the integral's own scaled error can reach
            sqrt(d + 1) times the tolerance.
        model_kwargs: per-sample inputs of f (``f(x, t, **model_kwargs)``; tensors of one or more dimensions have
            first dimension B and follow the rows still integrating), as :func:`fastflow.odeint`.

    Returns:
        :class:`LikelihoodResult`: logp, prior_logp, delta_logp (B,) in float64 when x is float64 and in float32
        otherwise (the state [x, int div f] is integrated in that dtype); x_T (B, *shape) in x's dtype; nfe,
        success (B,). Samples whose integration failed (success False, e.g. ``max_steps`` ran out) get logp NaN
        and a RuntimeWarning.

    Raises:
        TypeError / ValueError: bad arguments (the message names the argument), f or prior_logp returning a wrong
            type or shape, or (autograd) an f whose output does not require grad.
        FloatingPointError: f returned NaN or inf (from :func:`fastflow.odeint`).

    Example:
        >>> fam = fastflow.Gaussian()
        >>> f = lambda x, t: fam.velocity(x, t, ref, backend="reference")  # differentiable reference backend
        >>> prior = lambda y: torch.distributions.Normal(0.0, T).log_prob(y).flatten(1).sum(1)
        >>> res = fastflow.log_likelihood(f, x, 1e-3, T, prior)
        >>> res.bpd(offset=7.0)  # 8-bit data scaled to [-1, 1]
    """
    if not callable(f):
        raise TypeError(f"f must be callable as f(x, t) -> dx/dt, got {type(f).__name__}")
    x = V.tensor("x", x)
    if not callable(prior_logp):
        raise TypeError(f"prior_logp must be callable as prior_logp(x_T) -> (B,) log-density, got "
                        f"{type(prior_logp).__name__}")
    B, shape, device = x.shape[0], tuple(x.shape[1:]), x.device
    d = math.prod(shape)
    if d == 0:
        raise ValueError(f"x must have at least one element per sample, got shape {tuple(x.shape)}")
    t0 = _time_arg("t0", t0, B, device)
    t1 = _time_arg("t1", t1, B, device)
    # an exact field (fastflow.Oracle, or any f with velocity_and_divergence(x, t) -> (dx/dt, div f)) brings its
    # own closed-form divergence: used unless the call asks for Hutchinson or a particular derivative
    field = getattr(f, "velocity_and_divergence", None)
    if not callable(field) or divergence not in (None, "exact") or derivative != "auto":
        field = None
    if divergence is None:
        divergence = "exact" if d <= EXACT_MAX_DIM or field is not None else "hutchinson"
    V.choice("divergence", divergence, DIVERGENCES)
    V.choice("derivative", derivative, DERIVATIVES)
    n_probes = V.count("n_probes", n_probes, minimum=1)
    V.generator("generator", generator, device)
    if fd_step is not None:
        fd_step = V.number("fd_step", fd_step)

    # The state (and so logp) is float64 for float64 x, else float32: half precision cannot hold a sum of
    # hundreds of divergence terms of size ~d (and odeint would integrate it in float32 anyway).
    state_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    # inference_mode(False): under torch.inference_mode() enable_grad alone cannot make tensors that autograd tracks.
    with torch.inference_mode(False):
        x_det = x.detach()
        probes = None
        if divergence == "hutchinson":
            r = torch.randint(0, 2, (B, int(n_probes), d), generator=generator, device=device)
            probes = (2 * r - 1).to(x.dtype)  # Rademacher: E[eps eps^T] = I, and eps^T eps = d exactly
        rhs = _Augmented(f, shape, x.dtype, state_dtype, divergence, "field" if field is not None else derivative,
                         probes, fd_step, field)
        z0 = torch.cat((x_det.reshape(B, d).to(state_dtype), x_det.new_zeros(B, 1, dtype=state_dtype)), dim=1)
        res = odeint(rhs, z0, t0, t1, method=method, rtol=rtol, atol=atol, steps=steps, max_steps=max_steps,
                     progress=progress, with_index=True, model_kwargs=model_kwargs)
        x_T = res.x[:, :d].reshape(B, *shape).to(x.dtype)
        delta = res.x[:, d].clone()
        with torch.no_grad():
            lp = prior_logp(x_T)
    if not isinstance(lp, torch.Tensor):
        raise TypeError(f"prior_logp must return a torch.Tensor of shape (B,) = ({B},), got {type(lp).__name__}")
    if tuple(lp.shape) != (B,):
        raise ValueError(f"prior_logp must return shape (B,) = ({B},) (one log-density per sample), got "
                         f"{tuple(lp.shape)}")
    if not lp.is_floating_point():
        raise TypeError(f"prior_logp must return a floating-point tensor, got {lp.dtype}")
    lp = lp.detach().to(device=device, dtype=state_dtype)
    if bool(torch.isnan(lp).any() | (lp == math.inf).any()):
        raise ValueError("prior_logp returned NaN or +inf (a log-density is finite, or -inf outside the support)")
    logp = lp + delta
    if not bool(res.success.all()):
        n_bad = int((~res.success).sum())
        warnings.warn(f"log_likelihood: {n_bad} of {B} samples did not reach t1 (max_steps ran out or the step "
                      "size underflowed); their logp is NaN", RuntimeWarning, stacklevel=2)
        logp = torch.where(res.success, logp, torch.full_like(logp, math.nan))
    return LikelihoodResult(logp=logp, prior_logp=lp, delta_logp=delta, x_T=x_T, nfe=res.nfe, success=res.success,
                            derivative=rhs.derivative)

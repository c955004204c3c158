"""Minibatch optimal transport on the streaming engine: :func:`sinkhorn` and :func:`couple` (docs/math.md,
section 9, "Couplings: log-domain Sinkhorn").

The cost is C_ij = ||x0_i - x1_j||^2, formed per chunk of x1 by one GEMM on data centred on x1's mean (as the field
engine forms its distances). The entropic plan P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps) is held through its
potentials (f, g); each iteration is two log-sum-exps,

    f_i = -eps LSE_j( log b_j + (g_j - C_ij) / eps ),     g_j = -eps LSE_i( log a_i + (f_i - C_ij) / eps ),

in float64, each one fused pass over the cost on the CPU (the C++ op ``fastflow::sinkhorn_lse``, csrc/sinkhorn.cpp;
its specification is :func:`sinkhorn_lse_reference`, which serves every other device). After the f-update the rows
of P sum to a exactly and the columns to b_j exp((g_j - g_j') / eps), g' the next g: the marginal error comes free
with the g-update. eps-scaling (eps halved from the cost's scale down to the target, a few iterations each) and
over-relaxation of the final stage (:class:`_Relaxation`) reach small eps in far fewer iterations than a plain
fixed-eps Sinkhorn, at the same fixed point.

Memory: the cost chunks are kept between iterations when B R float64 fit the field's memory budget
(FASTFLOW_FIELD_BUDGET_MB, 256 MiB by default); otherwise each iteration recomputes them, and memory is
O((B + R) d + B C) with C columns per chunk.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from ._core import config, dispatch
from ._core import validate as V

__all__ = ["sinkhorn", "couple", "SinkhornResult", "COUPLINGS"]

COUPLINGS = ("exact", "sinkhorn")
_F64 = torch.float64


@dataclass
class SinkhornResult:
    """What :func:`sinkhorn` returns.

    Attributes:
        f: (B,) and g: (R,) float64 potentials: P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps).
        eps: the entropic regularisation reached.  iters: Sinkhorn iterations in all (eps-scaling included;
            also readable as ``iterations``).
        marginal_error: sum_i |sum_j P_ij - a_i| + sum_j |sum_i P_ij - b_j| of the returned plan (the rows are
            exact, and the first sum 0, without over-relaxation).
        converged: marginal_error <= tol (False: max_iters ran out; no exception).
        a, b: (B,), (R,) the marginals used (float64).
    """

    f: torch.Tensor
    g: torch.Tensor
    eps: float
    iters: int
    marginal_error: float
    converged: bool
    a: torch.Tensor
    b: torch.Tensor

    @property
    def iterations(self) -> int:
        """The same as ``iters``."""
        return self.iters

    def plan(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """The dense (B, R) float64 plan P (memory B R; for small problems and tests)."""
        C = _cost(x0.reshape(len(x0), -1), x1.reshape(len(x1), -1))
        return torch.exp((self.f[:, None] + self.g[None, :] - C) / self.eps) * self.a[:, None] * self.b[None, :]


def _cost(x0: torch.Tensor, x1: torch.Tensor, start: int = 0, stop: int | None = None, c=None) -> torch.Tensor:
    """C[:, start:stop] = ||x0_i - x1_j||^2 in float64 by the centred GEMM (clamped at 0)."""
    cdt = _F64 if x0.dtype == _F64 else torch.float32
    c = x1.mean(dim=0, dtype=cdt) if c is None else c
    a = x0.to(cdt) - c
    y = x1[start:stop].to(cdt) - c
    an = torch.linalg.vector_norm(a, dim=1, dtype=_F64).square()
    yn = torch.linalg.vector_norm(y, dim=1, dtype=_F64).square()
    return (an[:, None] + yn[None, :] - 2.0 * torch.mm(a, y.t()).to(_F64)).clamp_min_(0.0)


class _Costs:
    """The cost's column chunks, kept or recomputed (module docstring)."""

    def __init__(self, x0, x1, chunk_size):
        self.x0, self.x1 = x0, x1
        B, R = x0.shape[0], x1.shape[0]
        self.c = x1.mean(dim=0, dtype=_F64 if x0.dtype == _F64 else torch.float32)
        budget = config.field_budget_mb() * 2**20
        C = chunk_size or max(16, int(budget // (8 * max(B, 1) * 3)))
        self.bounds = [(s, min(s + C, R)) for s in range(0, R, C)]
        self.kept = [self._make(s, e) for s, e in self.bounds] if 8 * B * R <= budget else None

    def _make(self, s, e):
        return _cost(self.x0, self.x1, s, e, self.c)

    def __iter__(self):
        for k, (s, e) in enumerate(self.bounds):
            yield s, e, (self.kept[k] if self.kept is not None else self._make(s, e))

    def scale(self) -> float:
        """A typical cost (the mean of the first chunk), for the eps-scaling's start."""
        for _, _, Ck in self:
            return float(Ck.mean())
        return 1.0


def _marginal(name: str, w, n: int, device) -> torch.Tensor:
    if w is None:
        return torch.full((n,), 1.0 / n, dtype=_F64, device=device)
    if not isinstance(w, torch.Tensor) or w.shape != (n,):
        raise ValueError(f"{name} must be a ({n},) tensor of weights, got "
                         f"{tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__}")
    w = w.to(device=device, dtype=_F64)
    if not bool(torch.isfinite(w).all()) or bool((w <= 0).any()):
        raise ValueError(f"{name} must be finite and > 0")
    s = float(w.sum())
    if abs(s - 1.0) > 1e-6:
        raise ValueError(f"{name} must sum to 1 (a probability vector), got {s:.9g}")
    return w


def _points(x0, x1):
    x0, x1 = V.tensor("x0", x0), V.tensor("x1", x1)
    if x0.shape[1:] != x1.shape[1:]:
        raise ValueError(f"x0 and x1 must have the same point shape, got {tuple(x0.shape[1:])} and "
                         f"{tuple(x1.shape[1:])}")
    if x0.dtype != x1.dtype or x0.device != x1.device:
        raise ValueError(f"x0 and x1 must share dtype and device, got {x0.dtype} {x0.device} and {x1.dtype} "
                         f"{x1.device}")
    # a coupling is piecewise constant in the points and the potentials are not differentiated through the
    # iterations: both are computed on detached points (no graph kept over max_iters passes)
    d = math.prod(x0.shape[1:])
    return x0.detach().reshape(len(x0), d), x1.detach().reshape(len(x1), d)


def sinkhorn_lse_reference(C: torch.Tensor, h: torch.Tensor, scale: float, dim: int) -> torch.Tensor:
    """The specification of ``fastflow::sinkhorn_lse`` (csrc/sinkhorn.cpp): dim 1: (B,) LSE_j(h_j - scale C_ij);
    dim 0: (R,) LSE_i(h_i - scale C_ij); float64 (one (B, R) temporary)."""
    hb = h[None, :] if dim == 1 else h[:, None]
    return torch.logsumexp(torch.add(hb, C, alpha=-scale), dim=dim)


def _lse(C: torch.Tensor, h: torch.Tensor, scale: float, dim: int) -> torch.Tensor:
    """The C++ op on the CPU (one fused pass), the torch specification elsewhere."""
    if dispatch.use_ext(C):
        return torch.ops.fastflow.sinkhorn_lse(C, h, scale, dim)
    return sinkhorn_lse_reference(C, h, scale, dim)


def _lse_rows(costs: _Costs, g, lb, e) -> torch.Tensor:
    """(B,) LSE_j(log b_j + (g_j - C_ij) / e), online over the column chunks."""
    out = None
    for c0, c1, Ck in costs:
        z = _lse(Ck, lb[c0:c1] + g[c0:c1] / e, 1.0 / e, 1)
        out = z if out is None else torch.logaddexp(out, z)
    return out


def _lse_cols(costs: _Costs, f, la, e) -> torch.Tensor:
    """(R,) LSE_i(log a_i + (f_i - C_ij) / e); each chunk holds whole columns."""
    h = la + f / e
    return torch.cat([_lse(Ck, h, 1.0 / e, 0) for _, _, Ck in costs])


class _Relaxation:
    """The over-relaxation factor omega of the final stage (docs/math.md, section 9), adapted as in
    adaptive SOR: the error's contraction rate rho per iteration is measured over 4 iterations at the current
    omega; the plain (Gauss-Seidel) rate it implies, r = (rho + omega - 1)^2 / (rho omega^2) (the SOR eigenvalue
    relation; r = rho at omega = 1), gives the optimum omega = 2 / (1 + sqrt(1 - r)), taken when larger (at most
    1.95). Sinkhorn's rate creeps towards its asymptote, so omega is raised as it does. If the relaxed error
    grows 4-fold over its smallest value, omega falls back to 1 and its cap to halfway."""

    def __init__(self, enabled: bool):
        self.enabled, self.omega, self.cap, self.errs, self.best = enabled, 1.0, 1.95, [], math.inf

    def update(self, err: float) -> float:
        if not self.enabled:
            return 1.0
        self.best = min(self.best, err)
        if err > 4.0 * self.best:
            self.cap = 1.0 + (self.omega - 1.0) / 2.0
            self.omega, self.errs, self.best = 1.0, [], err
            return 1.0
        self.errs.append(err)
        if len(self.errs) >= 6:  # the first error after a change is transient
            rho = (self.errs[-1] / self.errs[-5]) ** 0.25
            if 0.0 < rho < 1.0:
                w = self.omega
                r = min((rho + w - 1.0) ** 2 / (rho * w * w), 1.0)
                w_new = min(self.cap, 2.0 / (1.0 + math.sqrt(1.0 - r)))
                if w_new > w + 0.01:
                    self.omega, self.errs = w_new, []
        return self.omega


def sinkhorn(x0: torch.Tensor, x1: torch.Tensor, *, eps: float, a: torch.Tensor | None = None,
             b: torch.Tensor | None = None, max_iters: int = 1000, tol: float = 1e-6, eps_scaling: bool = True,
             overrelax: bool = True, chunk_size: int | None = None) -> SinkhornResult:
    """Entropic optimal transport between the points x0 (B, *shape) and x1 (R, *shape), log-domain and streamed.

    Args:
        x0, x1: point clouds of the same point shape, dtype and device (float32 or float64; the potentials are
            float64).
        eps: the entropic regularisation (> 0), in the cost's units (squared distances).
        a, b: (B,), (R,) marginals (positive, summing to 1); None: uniform.
        max_iters: the most iterations (eps-scaling included).  tol: the target marginal error (L1).
        eps_scaling: start at the cost's scale and halve eps down to ``eps`` (a few iterations each) before
            iterating at ``eps``: far fewer iterations for small eps; the result is the same fixed point.
        overrelax: relax the final stage's updates, f <- f + omega (f' - f) and the same for g, with omega in
            [1, 1.95] adapted to the measured convergence rate (docs/math.md section 9): same fixed point, 4-5x
            fewer iterations at eps = 0.002 x the mean cost.
        chunk_size: columns of the cost per chunk (default from the memory budget).

    Returns:
        :class:`SinkhornResult`; ``converged`` False (not an exception) when max_iters ran out. The potentials
        carry no gradient (the points are detached); B = 0 or R = 0 is a ValueError (no marginal sums to 1).
    """
    x0, x1 = _points(x0, x1)
    if x0.shape[0] == 0 or x1.shape[0] == 0:
        raise ValueError(f"sinkhorn needs points on both sides (marginals summing to 1), got B = {x0.shape[0]}, "
                         f"R = {x1.shape[0]}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0 (the entropic regularisation), got {eps!r}")
    max_iters = V.count("max_iters", max_iters, minimum=1)
    tol = V.number("tol", tol)
    chunk_size = V.chunk_size("chunk_size", chunk_size)
    B, R = x0.shape[0], x1.shape[0]
    dev = x0.device
    a, b = _marginal("a", a, B, dev), _marginal("b", b, R, dev)
    la, lb = torch.log(a), torch.log(b)
    costs = _Costs(x0, x1, chunk_size)
    f = torch.zeros(B, dtype=_F64, device=dev)
    g = torch.zeros(R, dtype=_F64, device=dev)
    schedule = []
    if eps_scaling:  # from at most 16 eps (or the cost's scale) down, halving; each stage until loosely converged
        e = min(costs.scale(), 16.0 * eps)
        while e > eps:
            schedule.append(e)
            e /= 2.0
    it, err, stage, stage_it = 0, math.inf, 0, 0
    relax = _Relaxation(overrelax)
    while it < max_iters:
        final = stage >= len(schedule)
        e = eps if final else schedule[stage]
        w = relax.omega if final else 1.0
        f_hat = -e * _lse_rows(costs, g, lb, e)
        f_new = f_hat if w == 1.0 else torch.lerp(f, f_hat, w)
        g_hat = -e * _lse_cols(costs, f_new, la, e)
        it += 1
        # the plan of (f_new, g): rows sum to a exp((f_new - f_hat) / e) (exactly a when w = 1), columns to
        # b exp((g - g_hat) / e)
        err = float((b * torch.expm1((g - g_hat) / e)).abs().sum())
        if w != 1.0:
            err += float((a * torch.expm1((f_new - f_hat) / e)).abs().sum())
        f = f_new
        if not final:
            g = g_hat
            stage_it += 1
            if err <= 1e-2 or stage_it >= 20:
                stage, stage_it = stage + 1, 0
            continue
        if err <= tol or it >= max_iters or not math.isfinite(err):
            break  # return (f, g): the plan whose marginal error is err
        w = relax.update(err)
        g = g_hat if w == 1.0 else torch.lerp(g, g_hat, w)
    return SinkhornResult(f=f, g=g, eps=float(eps), iters=it, marginal_error=err, converged=err <= tol,
                          a=a, b=b)


def couple(x0: torch.Tensor, x1: torch.Tensor, *, method: str = "exact", eps: float | None = None,
           labels0: torch.Tensor | None = None, labels1: torch.Tensor | None = None,
           generator: torch.Generator | None = None, **sinkhorn_kwargs: object) -> torch.Tensor:
    """A minibatch OT coupling: indices j (B,) int64 such that (x0_i, x1_j) are paired.

    ``method="exact"``: the optimal assignment (a permutation; B must equal R) of the squared-distance cost, by
    scipy's ``linear_sum_assignment`` on the cost from the device GEMM. ``method="sinkhorn"``: for each i a j drawn
    from the entropic plan's row P_i. / a_i (with replacement across rows, as OT-CFM samples pairs), at ``eps``
    (default: 0.05 times the mean cost). ``labels0`` / ``labels1`` ((B,), (R,) integers): pairs only within a class
    (each class coupled on its own; "exact" then needs as many points of each class on both sides).
    Use with ``AffinePath.sample(x0, x1=x1[j])`` for OT-CFM training.

    Returns:
        (B,) int64 indices into x1, on x0's device (empty for B = 0); no gradient flows through a coupling (the
        points are detached), so x0 and x1 may require grad.
    """
    x0, x1 = _points(x0, x1)
    V.choice("method", method, COUPLINGS)
    B, R = x0.shape[0], x1.shape[0]
    if (labels0 is None) != (labels1 is None):
        raise ValueError("labels0 and labels1 go together (one class per point on each side)")
    if labels0 is not None:
        for name, lab, n in (("labels0", labels0, B), ("labels1", labels1, R)):
            if not isinstance(lab, torch.Tensor) or lab.shape != (n,) or lab.dtype.is_floating_point:
                raise ValueError(f"{name} must be an integer tensor of shape ({n},), got "
                                 f"{tuple(lab.shape) if isinstance(lab, torch.Tensor) else type(lab).__name__}")
        out = torch.empty(B, dtype=torch.long, device=x0.device)
        l0, l1 = labels0.to(x0.device), labels1.to(x0.device)
        for c in torch.unique(l0).tolist():
            i = torch.nonzero(l0 == c).squeeze(1)
            j = torch.nonzero(l1 == c).squeeze(1)
            if j.numel() == 0:
                raise ValueError(f"class {c} of labels0 has no point in labels1")
            out[i] = j[couple(x0[i], x1[j], method=method, eps=eps, generator=generator, **sinkhorn_kwargs)]
        return out
    if method == "exact" and B != R:
        raise ValueError(f"the exact coupling is a permutation: x0 and x1 need as many points, got B = {B}, "
                         f"R = {R} (use method='sinkhorn')")
    if B == 0:
        return torch.empty(0, dtype=torch.long, device=x0.device)
    if method == "exact":
        from scipy.optimize import linear_sum_assignment

        C = _cost(x0, x1).cpu().numpy()
        rows, cols = linear_sum_assignment(C)
        perm = torch.empty(B, dtype=torch.long)
        perm[torch.from_numpy(rows)] = torch.from_numpy(cols)
        return perm.to(x0.device)
    if R == 0:
        raise ValueError("method='sinkhorn' needs at least one point in x1 to pair with")
    if eps is None:
        eps = 0.05 * float(_cost(x0[:256], x1[:256]).mean())
    res = sinkhorn(x0, x1, eps=eps, **sinkhorn_kwargs)
    # each row's j drawn from P_i. / a_i by a Gumbel-max over the streamed columns (f_i is a row constant)
    out = torch.zeros(B, dtype=torch.long, device=x0.device)
    best = torch.full((B,), -math.inf, dtype=_F64, device=x0.device)
    for c0, c1, Ck in _Costs(x0, x1, sinkhorn_kwargs.get("chunk_size")):
        logits = (res.g[c0:c1][None, :] - Ck) / res.eps + torch.log(res.b[c0:c1])[None, :]
        u = torch.rand(logits.shape, generator=generator, device=x0.device, dtype=_F64).clamp_min_(1e-300)
        score = logits - torch.log(-torch.log(u))
        m, j = score.max(dim=1)
        take = m > best
        out = torch.where(take, j + c0, out)
        best = torch.where(take, m, best)
    return out

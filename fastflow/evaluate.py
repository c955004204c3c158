"""How far a trained model is from the exact empirical field, and how much of its loss it could still lose:
:func:`field_gap` and :func:`posterior_variance`.

A denoiser D(x, t) trained on the one-sample target x0 (x = x_t drawn from p_t(. | x0), x0 uniform on the
reference set) has the loss E||D - x0||^2 / d = E||D - xbar||^2 / d + E Var[x0 | x_t] / d, xbar = E[x0 | x_t]
the exact posterior mean (:meth:`fastflow.Family.posterior_mean`). The second term, the *loss floor*, does not
depend on the model: it is the best achievable denoising MSE at t. :func:`field_gap` measures both terms per t,
for sources drawn from the reference set (the training data) and, if given, from held-out data: the gap of a
model that memorises is zero on the first and large on the second.

A velocity model v(x, t) (``target="velocity"``) is compared with the exact velocity f = A_t x + B_t xbar
(:meth:`fastflow.Family.velocity_coefficients`: A_t = 1/t, B_t = -1/t for the families whose velocity is
(x - xbar) / t; an affine path's sigma'/sigma and alpha' - sigma' alpha / sigma). Its one-sample target is
A_t x + B_t x0 (rectified flow: eps - x0), so its loss floor is B_t^2 Var[x0 | x_t] / d.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import torch

from ._core import nvtx
from ._core import validate as V
from ._core.types import Time
from .families import Family
from .field.torch_backend import chunk_rows

__all__ = ["field_gap", "posterior_variance", "TARGETS", "METRICS"]

TARGETS = ("posterior_mean", "velocity")
#: the per-t entries of each source's dict in :func:`field_gap`'s result
METRICS = ("rel_error", "rel_error_mean", "mse", "loss_floor", "excess", "excess_stderr", "field_mse")

_F64 = torch.float64


@nvtx.annotate("fastflow.evaluate.posterior_variance")
@V.checked
def posterior_variance(family: Family, x: torch.Tensor, t: Time, ref: torch.Tensor, *,
                       chunk_size: int | None = None) -> torch.Tensor:
    """The exact posterior variance Var[x0 | x_t = x] = sum_j w_j ||ref_j - xbar||^2 (summed over the d
    coordinates) under the empirical distribution of ``ref``, w_j the normalised weights of
    :meth:`fastflow.Family.posterior_mean`.

    One streamed pass in float64 whatever the input dtype: per chunk of C reference rows, the distance GEMM on
    data centred on the reference mean c, the family's log-weights (its ``reference_log_weight``, at the noise
    scale and the path scale a_t), and an online log-sum-exp carrying sum_j w_j (ref_j - c) and
    sum_j w_j ||ref_j - c||^2; Var = the second over the weight sum minus the squared norm of the first. Memory
    O((B + R) d + B C); the absolute error is ~1e-16 E||ref_j - c||^2 (the GEMM's cancellation).

    Args:
        family: a :class:`fastflow.Family`.  x: (B, *shape) points x_t.  t: float or (B,) tensor > 0 (at most
            ``family.t_max``).  ref: (R, *shape) reference points (x's shape, dtype and device).
        chunk_size: reference rows per streaming step (default from the field's memory budget).

    Returns:
        (B,) float64 tensor >= 0, on x's device.
    """
    _check_family(family)
    x2, ref2 = V.points_and_ref(x, ref)
    chunk_size = V.chunk_size("chunk_size", chunk_size)
    B, d = x2.shape
    tt = V.times("t", t, B, dtype=_F64, device=x2.device, upper=family.t_max)
    if B == 0:
        return torch.zeros(0, dtype=_F64, device=x2.device)
    with torch.no_grad():
        a, s = family.path_scale(tt), family.noise_scale(tt)
        log_w = family.reference_log_weight(d)
        c = ref2.mean(dim=0, dtype=_F64)
        xc = x2.to(_F64) - a[:, None] * c
        xn = torch.linalg.vector_norm(xc, dim=1).square_()
        lmax = torch.full((B,), -math.inf, dtype=_F64, device=x2.device)
        L = torch.zeros(B, dtype=_F64, device=x2.device)
        S1 = torch.zeros(B, d, dtype=_F64, device=x2.device)
        S2 = torch.zeros(B, dtype=_F64, device=x2.device)
        C = chunk_size or chunk_rows(B, d, 8)
        for start in range(0, ref2.shape[0], C):
            yc = ref2[start:start + C].to(_F64) - c
            yn = torch.linalg.vector_norm(yc, dim=1).square_()
            # ||x - a y||^2 = ||x - a c||^2 + a^2 ||y - c||^2 - 2 a (x - a c).(y - c)
            r2 = torch.mm(xc, yc.t()).mul_(-2.0 * a[:, None]).add_(xn[:, None]).add_((a * a)[:, None] * yn)
            ell = log_w(r2.clamp_min_(0.0), s[:, None])
            new = torch.maximum(lmax, ell.amax(dim=1))
            scale = torch.exp(lmax - new)  # 0 on the first chunk (lmax = -inf)
            w = torch.exp(ell - new[:, None])
            L.mul_(scale).add_(w.sum(dim=1))
            S1.mul_(scale[:, None]).addmm_(w, yc)
            S2.mul_(scale).add_(w @ yn)
            lmax = new
        mean_c = S1 / L[:, None]
        var = (S2 / L - torch.linalg.vector_norm(mean_c, dim=1).square()).clamp_min_(0.0)
    V.require_finite(var, lambda: FloatingPointError(
        f"{family!r}: the log-weights overflowed in float64 (t too small for the distances in this data)"))
    return var


def _check_family(family) -> None:
    if not isinstance(family, Family):
        raise TypeError(f"family must be a fastflow.Family (Poisson, Gaussian, RadialCDF, RectifiedFlow, "
                        f"AffinePath), got {type(family).__name__}")


def _times(ts, family: Family) -> torch.Tensor:
    """ts as a 1-D float64 CPU tensor of finite times > 0 (<= family.t_max)."""
    if isinstance(ts, torch.Tensor):
        if ts.dim() != 1 or not (ts.is_floating_point() or ts.dtype in (torch.int32, torch.int64)):
            raise ValueError(f"ts must be a 1-D tensor (or a sequence) of times, got {ts.dtype} "
                             f"{tuple(ts.shape)}")
        tv = ts.detach().to("cpu", _F64)
    elif isinstance(ts, Sequence) and not isinstance(ts, str):
        if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in ts):
            raise TypeError("ts must be a 1-D tensor or a sequence of real numbers")
        tv = torch.tensor([float(v) for v in ts], dtype=_F64)
    else:
        raise TypeError(f"ts must be a 1-D tensor or a sequence of times, got {type(ts).__name__}")
    if tv.numel() == 0:
        raise ValueError("ts is empty: give at least one time")
    bad = ~torch.isfinite(tv) | (tv <= 0)
    if family.t_max is not None:
        bad |= tv > family.t_max
    if bool(bad.any()):
        lim = f" and <= {family.t_max}" if family.t_max is not None else ""
        raise ValueError(f"ts must be finite and > 0{lim}; got {tv[bad][:4].tolist()}")
    return tv


def _sources(name: str, data: torch.Tensor, n: int, gen) -> torch.Tensor:
    """n rows of data: without replacement when n <= len(data), else uniform with replacement."""
    N = data.shape[0]
    if n <= N:
        pick = torch.randperm(N, generator=gen, device=data.device)[:n]
    else:
        pick = torch.randint(0, N, (n,), generator=gen, device=data.device)
    return data.index_select(0, pick)


def _call(model, x, t, batch_size: int) -> torch.Tensor:
    outs = []
    for i in range(0, x.shape[0], batch_size):
        xi = x[i:i + batch_size]
        out = model(xi, t[i:i + batch_size])
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"model must return a torch.Tensor, got {type(out).__name__}")
        if tuple(out.shape) != tuple(xi.shape):
            raise ValueError(f"model returned shape {tuple(out.shape)}, expected {tuple(xi.shape)} (the shape of "
                             "the x it was given)")
        V.require_finite(out, lambda i=i, n=xi.shape[0]: FloatingPointError(
            f"model returned NaN or inf at t = {float(t[i]):.6g} (the rows {i}..{i + n - 1} of this call)"))
        outs.append(out.detach())
    return torch.cat(outs)


@nvtx.annotate("fastflow.evaluate.field_gap")
def field_gap(model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], family: Family, ref: torch.Tensor,
              ts: Sequence[float] | torch.Tensor, *, n: int = 256, held_out: torch.Tensor | None = None,
              target: str = "posterior_mean", generator: torch.Generator | None = None,
              batch_size: int | None = None) -> dict:
    """How far ``model`` is from the exact empirical field of ``ref``, and its loss above the floor, per time.

    n sources x0 are drawn from ``ref`` once (and n from ``held_out`` if given; without replacement where n is at
    most the number of rows), and for each t in ``ts``: x = ``family.perturb(x0, t)``, the model's output
    m = ``model(x, t)`` (t a (n,) tensor in x's dtype), the exact target e over ``ref``
    (``family.posterior_mean(x, t, ref)``, or ``family.velocity(x, t, ref)`` with ``target="velocity"``) and the
    one-sample target y (x0, or A_t x + B_t x0 for the velocity; module docstring). The model runs under
    ``torch.no_grad``, in batches of ``batch_size`` rows.

    Args:
        model: (x (b, *shape), t (b,)) -> (b, *shape): a denoiser (posterior-mean model) or a velocity model, in
            the family's time (Poisson(D)'s augmented radius r = sigma sqrt(D): wrap a sigma-model).
        family: a :class:`fastflow.Family`.  ref: (R, *shape) the reference (training) set, floating point.
        ts: a non-empty 1-D sequence or tensor of times > 0 (at most ``family.t_max``).
        n: sources per set (>= 1).  held_out: None, or (N, *shape) data outside ref (ref's shape, dtype, device).
        target: "posterior_mean" (default) or "velocity".
        generator: a torch.Generator on ref's device for the source draws and the perturbations, or None.
        batch_size: rows per model and field call (default n).

    Returns:
        A dict: ``"t"``: (T,) float64 CPU tensor of the times; ``"target"``: the target; ``"n"``: n;
        ``"train"``: the metrics of the sources drawn from ref; ``"held_out"``: those of held_out (None without
        it); and, at the top level too, the train metrics (``result["rel_error"] is result["train"]["rel_error"]``).
        Each metrics dict holds (T,) float64 CPU tensors, one entry per t:

        - ``"rel_error"``: the median over samples of ||m - e|| / ||e|| (per-sample norms over all coordinates);
          ``"rel_error_mean"``: their mean; ``"rel_errors"``: all of them, (T, n).
        - ``"mse"``: mean over samples and coordinates of (m - y)^2: the model's (unweighted) training loss.
        - ``"loss_floor"``: the mean of Var[x0 | x_t] / d (:func:`posterior_variance`), times B_t^2 for the
          velocity: the best achievable value of ``mse`` (attained in expectation by m = e for train sources).
        - ``"excess"`` = mse - loss_floor: what the model could still gain; ``"excess_stderr"``: its standard
          error over the n samples (a noisy estimate; for held-out sources the floor is the posterior variance
          under ref's empirical law, so a memorising model's held-out excess is large).
        - ``"field_mse"``: mean over samples and coordinates of (m - e)^2: the noise-free counterpart of excess
          (equal to it in expectation for train sources).

    Raises:
        TypeError: a model output that is not a tensor, a bad family, ts, n, target or generator type.
        FloatingPointError: a model output with NaN or inf (the message names t).
        ValueError: empty ts, t <= 0 (or > t_max), n < 1, an unknown target, mismatched held_out, a model
            output of the wrong shape.
    """
    _check_family(family)
    if not callable(model):
        raise TypeError(f"model must be callable as model(x, t), got {type(model).__name__}")
    ref = V.tensor("ref", ref)
    if ref.shape[0] == 0:
        raise ValueError("ref is empty: the exact field needs at least one reference point")
    tv = _times(ts, family)
    n = V.count("n", n, minimum=1)
    target = V.choice("target", target, TARGETS)
    batch_size = n if batch_size is None else V.count("batch_size", batch_size, minimum=1)
    gen = V.generator("generator", generator, ref.device)
    sets = {"train": _sources("ref", ref, n, gen)}
    if held_out is not None:
        held_out = V.tensor("held_out", held_out)
        V.points_and_ref(held_out, ref)  # the same per-point shape, dtype and device
        if held_out.shape[0] == 0:
            raise ValueError("held_out is empty")
        sets["held_out"] = _sources("held_out", held_out, n, gen)
    d = math.prod(ref.shape[1:])
    result: dict = {"t": tv, "target": target, "n": n, "train": None, "held_out": None}
    rows: dict[str, dict[str, list]] = {k: {m: [] for m in METRICS + ("rel_errors",)} for k in sets}
    for t in tv.tolist():
        for name, x0 in sets.items():
            tt = torch.full((n,), t, dtype=x0.dtype, device=x0.device)
            x = family.perturb(x0, tt, generator=gen)
            with torch.no_grad():
                m = _call(model, x, tt, batch_size).to(_F64).reshape(n, d)
                field = family.velocity if target == "velocity" else family.posterior_mean
                e = torch.cat([field(x[i:i + batch_size], tt[i:i + batch_size], ref)
                               for i in range(0, n, batch_size)]).to(_F64).reshape(n, d)
                var = torch.cat([posterior_variance(family, x[i:i + batch_size], tt[i:i + batch_size], ref)
                                 for i in range(0, n, batch_size)])
                y = x0.to(_F64).reshape(n, d)
                if target == "velocity":
                    A, Bt = family.velocity_coefficients(tt.to(_F64))
                    y = A[:, None] * x.to(_F64).reshape(n, d) + Bt[:, None] * y
                    var = var * Bt * Bt
            rel = torch.linalg.vector_norm(m - e, dim=1) / torch.linalg.vector_norm(e, dim=1)
            loss_i = (m - y).square().mean(dim=1)
            excess_i = loss_i - var / d
            out = rows[name]
            out["rel_errors"].append(rel.cpu())
            out["rel_error"].append(float(rel.median()))
            out["rel_error_mean"].append(float(rel.mean()))
            out["mse"].append(float(loss_i.mean()))
            out["loss_floor"].append(float(var.mean()) / d)
            out["excess"].append(float(excess_i.mean()))
            out["excess_stderr"].append(float(excess_i.std()) / math.sqrt(n) if n > 1 else math.nan)
            out["field_mse"].append(float((m - e).square().mean()))
    for name, out in rows.items():
        result[name] = {k: (torch.stack(v) if k == "rel_errors" else torch.tensor(v, dtype=_F64))
                        for k, v in out.items()}
    result.update(result["train"])  # the top-level keys "rel_error", "loss_floor", ... are the train set's
    return result

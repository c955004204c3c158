"""The per-step updates of the Runge-Kutta solvers: stage combinations and the scaled error norm.

This module is the contract between the integration loop (fastflow/ode/loop.py) and the fused step kernels: the loop
calls only these two functions, whose signatures stay fixed. Each validates its arguments and dispatches, as the
field engine does (:func:`fastflow._core.dispatch.select_backend`):

- ``triton``: one fused kernel per call (:mod:`fastflow.kernels.ode`, launched by :mod:`fastflow.ode.step_triton`);
  the default for CUDA tensors when Triton is installed.
- ``torch``: the C++ ops ``fastflow::rk_combine_`` / ``rk_error_norm_`` on the CPU when ``fastflow._C`` is built,
  else one batched GEMM over the stages (:mod:`fastflow.ode.step_torch`); the default otherwise.
- ``reference``: plain torch, one stage at a time (:mod:`fastflow.ode.step_reference`).

The environment variable ``FASTFLOW_BACKEND`` forces one of them. Every fast path reads each stage with a nonzero
coefficient once, accumulating in float32 (float64 for float64 states).

Shapes: y, y_new (B, ...) state (any float dtype); K (S, B, ...) stage derivatives of y's dtype, K[j] = f at stage
j, or a list of S tensors of y's shape (the solver passes f's outputs as they are: no copy into one buffer);
h (B,) per-sample step in the *time* dtype (may differ from the state dtype; cast in the kernels; h < 0 for
backward integration).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .._core.dispatch import select_backend, use_ext
from .step_reference import combine_reference, error_norm_reference
from .step_torch import combine_torch, error_norm_torch


def _check(y: torch.Tensor, K, h: torch.Tensor, coeffs: Sequence[float], what: str):
    """Validate the shared arguments; return (B, h as a (B,) tensor, coefficients as a tuple of floats, the stages
    as a list of (B, ...) tensors). K is an (S, B, ...) tensor or a sequence of S tensors of y's shape."""
    if not isinstance(y, torch.Tensor) or y.dim() < 1 or not y.is_floating_point():
        raise ValueError(f"y must be a floating tensor of shape (B, ...); got {getattr(y, 'shape', type(y))}")
    B = y.shape[0]
    if isinstance(K, torch.Tensor):
        if K.dim() != y.dim() + 1 or K.shape[1:] != y.shape:
            raise ValueError(f"K must have shape (S, *y.shape) = (S, {', '.join(map(str, y.shape))}); "
                             f"got {tuple(K.shape)}")
        Ks = list(K.unbind(0))
    elif isinstance(K, (list, tuple)) and all(isinstance(k, torch.Tensor) for k in K):
        Ks = list(K)
        if any(k.shape != y.shape for k in Ks):
            raise ValueError(f"each stage K[j] must have y's shape {tuple(y.shape)}; got "
                             f"{[tuple(k.shape) for k in Ks]}")
    else:
        raise ValueError(f"K must be an (S, *y.shape) tensor or a list of tensors of y's shape; got {type(K)}")
    if any(k.dtype != y.dtype or k.device != y.device for k in Ks):
        raise ValueError(f"K must have y's dtype and device ({y.dtype}, {y.device}); got "
                         f"{sorted({(str(k.dtype), str(k.device)) for k in Ks})}")
    coeffs = tuple(float(c) for c in coeffs)
    if len(coeffs) > len(Ks):
        raise ValueError(f"{len(coeffs)} {what} for K with {len(Ks)} stages")
    if not isinstance(h, torch.Tensor) or not h.is_floating_point() or h.device != y.device:
        raise ValueError(f"h must be a floating tensor on y's device ({y.device}); got {h!r:.80}")
    if h.numel() == 1 and B != 1:
        h = h.reshape(1).expand(B)
    if h.shape != (B,):
        raise ValueError(f"h must have shape ({B},) (one step per sample); got {tuple(h.shape)}")
    return B, h, coeffs, Ks


def _stages(K, Ks: list, n: int, B: int, stacked: bool):
    """The first n stages for a fast path: a list of (B, d) row views (C++ op), or one (n, B, d) tensor (Triton,
    GEMM fallback; a sequence K is stacked, a copy)."""
    if not stacked:
        return [_rows(k, (B,)) for k in Ks[:n]]
    if isinstance(K, torch.Tensor):
        return _rows(K[:n], (n, B))
    return torch.stack([_rows(k, (B,)) for k in Ks[:n]])


def _rows(v: torch.Tensor, lead: tuple[int, ...]) -> torch.Tensor:
    """v as (*lead, n) with contiguous columns: a view when the layout allows, else a contiguous copy."""
    try:
        r = v.view(*lead, -1)
    except RuntimeError:
        return v.reshape(*lead, -1).contiguous()
    return r if r.stride(-1) == 1 else r.contiguous()


def _graph(y: torch.Tensor, K) -> bool:
    """Whether autograd records this call (odeint(grad=True)): grad mode on and y or a stage requires grad."""
    if not torch.is_grad_enabled():
        return False
    if y.requires_grad:
        return True
    return any(k.requires_grad for k in (K if isinstance(K, (list, tuple)) else [K]))


def _uses_op(name: str, y: torch.Tensor) -> bool:
    """Whether the torch backend will call the C++ op (which takes the stages as a list)."""
    return name == "torch" and use_ext(y)


def _out_rows(out: torch.Tensor, B: int) -> torch.Tensor | None:
    """out as a writable (B, n) view with contiguous columns, or None when its layout has none."""
    try:
        r = out.view(B, -1)
    except RuntimeError:
        return None
    return r if r.stride(-1) == 1 else None


def _direct_op(y: torch.Tensor) -> bool:
    """The solver's fast path: a 2-D CPU state served by the C++ op (no FASTFLOW_BACKEND override)."""
    return (y.dim() == 2 and y.device.type == "cpu" and select_backend(y.device, prefer_triton=True) == "torch"
            and use_ext(y))


def _h64(h: torch.Tensor) -> torch.Tensor:
    return h if h.dtype == torch.float64 and h.is_contiguous() else h.to(torch.float64).contiguous()


def combine(y: torch.Tensor, K: torch.Tensor, h: torch.Tensor, coeffs: Sequence[float], *,
            out: torch.Tensor | None = None, check: bool = True) -> torch.Tensor:
    """out = y + h * sum_j coeffs[j] K[j]  (j < len(coeffs); zero coefficients skipped).

    Args:
        y: (B, d).  K: (S, B, d) with S >= len(coeffs).  h: (B,).  coeffs: Python floats.
        out: optional (B, d) buffer of y's dtype (may not alias K; out = y updates y in place).
        check: False skips the argument checks (the solver's inner loop, ~35 us a call at small sizes): then y is
            (B, d) with contiguous rows, K a list of such tensors, h (B,), coeffs a tuple of floats.

    Returns:
        (B, d) in y's dtype.
    """
    if _graph(y, K):  # odeint(grad=True): plain torch ops, which autograd differentiates (the fused ops do not)
        # h is copied: autograd keeps it for the backward, and the step-size control overwrites h in place later
        Ks = list(K.unbind(0)) if isinstance(K, torch.Tensor) else list(K)
        return combine_reference(y, Ks, h.detach().clone(), tuple(float(c) for c in coeffs), out=out)
    if not check and out is None and isinstance(K, list) and _direct_op(y):
        res = torch.empty_like(y)
        torch.ops.fastflow.rk_combine_(res, y, K, _h64(h), coeffs)
        return res
    B, h, coeffs, Ks = _check(y, K, h, coeffs, "coefficients")
    if out is not None and (out.shape != y.shape or out.dtype != y.dtype or out.device != y.device):
        raise ValueError(f"out must have y's shape, dtype and device ({tuple(y.shape)}, {y.dtype}, {y.device}); "
                         f"got {tuple(out.shape)}, {out.dtype}, {out.device}")
    name = select_backend(y.device, prefer_triton=True)
    if name == "reference" or y.numel() == 0 or not any(c != 0.0 for c in coeffs):
        return combine_reference(y, Ks, h, coeffs, out=out)  # nothing to fuse: a copy of y
    y2 = _rows(y, (B,))
    K3 = _stages(K, Ks, len(coeffs), B, stacked=not _uses_op(name, y))
    o2 = _out_rows(out, B) if out is not None else torch.empty_like(y2, memory_format=torch.contiguous_format)
    target = o2 if o2 is not None else torch.empty_like(y2, memory_format=torch.contiguous_format)
    if name == "triton":
        from .step_triton import combine_triton

        combine_triton(y2, K3, h, coeffs, target)
    else:
        combine_torch(y2, K3, h, coeffs, target)
    if out is None:
        return target.view(y.shape)
    if o2 is None:
        out.copy_(target.view(y.shape))
    return out


def error_norm(y: torch.Tensor, y_new: torch.Tensor, K: torch.Tensor, h: torch.Tensor, e_coeffs: Sequence[float],
               rtol: float, atol: float, *, check: bool = True) -> torch.Tensor:
    """Per-sample RMS of the scaled embedded error (Hairer, Norsett & Wanner, Solving ODEs I, II.4 eq. 4.11).

    err = h * sum_j e_coeffs[j] K[j];  sc = atol + rtol * max(|y|, |y_new|);  norm_i = sqrt(mean_d (err / sc)^2).

    Args:
        y, y_new: (B, d).  K: (S, B, d).  h: (B,).  e_coeffs: Python floats (b - b_hat).

        check: False skips the argument checks (as :func:`combine`).

    Returns:
        (B,) in float32 for float32/16 states, float64 for float64 states.
    """
    if _graph(y, K) or (isinstance(y_new, torch.Tensor) and y_new.requires_grad and torch.is_grad_enabled()):
        # odeint(grad=True): the step-size control is not differentiated (the accepted steps are constants)
        with torch.no_grad():
            Kd = K.detach() if isinstance(K, torch.Tensor) else [k.detach() for k in K]
            return error_norm(y.detach(), y_new.detach(), Kd, h.detach(), e_coeffs, rtol, atol, check=check)
    if not check and isinstance(K, list) and _direct_op(y):
        res = torch.empty(y.shape[0], dtype=torch.float64 if y.dtype == torch.float64 else torch.float32)
        torch.ops.fastflow.rk_error_norm_(res, y, y_new, K, _h64(h), e_coeffs, float(rtol), float(atol))
        return res
    B, h, e_coeffs, Ks = _check(y, K, h, e_coeffs, "error coefficients")
    if not isinstance(y_new, torch.Tensor) or y_new.shape != y.shape or y_new.dtype != y.dtype \
            or y_new.device != y.device:
        raise ValueError(f"y_new must have y's shape, dtype and device ({tuple(y.shape)}, {y.dtype}, {y.device}); "
                         f"got {getattr(y_new, 'shape', type(y_new))}")
    name = select_backend(y.device, prefer_triton=True)
    if name == "reference" or y.numel() == 0 or not any(c != 0.0 for c in e_coeffs):
        return error_norm_reference(y, y_new, Ks, h, e_coeffs, rtol, atol)
    y2 = _rows(y, (B,))
    n2 = _rows(y_new, (B,))
    K3 = _stages(K, Ks, len(e_coeffs), B, stacked=not _uses_op(name, y))
    if name == "triton":
        from .step_triton import error_norm_triton

        return error_norm_triton(y2, n2, K3, h, e_coeffs, rtol, atol)
    return error_norm_torch(y2, n2, K3, h, e_coeffs, rtol, atol)

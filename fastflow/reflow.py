"""Reflow (Liu et al. 2022, rectified flow's straightening): the coupling a trained velocity model induces.

``couple(velocity, x1)`` integrates the model from the source draws x1 (t = 1) to the data end (t = 0) with
:func:`fastflow.flow_sample` (per-sample steps; finished samples leave the batch), batch by batch, and returns the
pairs (x0_hat, x1): the next round trains on ``path.sample(x0_hat, x1=x1)``, whose straight interpolations the
model's curved trajectories are replaced by.
"""
from __future__ import annotations

import numbers
from collections.abc import Callable

import torch

from ._core import validate as V
from ._core.progress import bar as progress_bar
from .paths import AffinePath, RectifiedFlow
from .samplers import flow_sample

__all__ = ["couple"]


def couple(velocity: Callable[..., torch.Tensor], x1: torch.Tensor, *, path: AffinePath | None = None,
           t_start: float = 1.0, t_end: float = 0.0,
           method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5, steps: int | None = None,
           batch_size: int | None = None, model_kwargs: dict | None = None,
           progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The reflow coupling of a velocity model: (x0_hat, x1), x0_hat the model's image of each source draw.

    Args:
        velocity: ``v(x, t, **model_kwargs)`` of the path, noise at t = 1 (as :func:`fastflow.flow_sample`).
        x1: (N, *shape) source draws (e.g. ``path.prior(N, shape)``).
        path: the :class:`fastflow.AffinePath` the model was trained on (default None: rectified flow,
            ``fastflow.RectifiedFlow()``); its schedule gives ``method="dpmpp_2m"`` its data prediction, and its
            times bound t_start (at most ``path.t_max`` = 1). The next round trains on ``path.sample(x0_hat, x1=x1)``.
        t_start, t_end, method, rtol, atol, steps: as :func:`fastflow.flow_sample` (t_end = 0 for a model that is
            regular there; a small t_end for an exact empirical field, which is singular at 0).
        batch_size: rows integrated at a time (default: all).
        model_kwargs: per-sample inputs (first dimension N), sliced per batch and to the rows still integrating.
        progress: a bar over the batches.

    Returns:
        (x0_hat (N, *shape) in x1's dtype, x1).
    """
    if not callable(velocity):
        raise TypeError(f"velocity must be callable as v(x, t), got {type(velocity).__name__}")
    if path is None:
        path = RectifiedFlow()
    if not isinstance(path, AffinePath):
        raise TypeError(f"path must be a fastflow.AffinePath (the path the model was trained on; RectifiedFlow is "
                        f"one), got {type(path).__name__}")
    if isinstance(t_start, numbers.Real) and not isinstance(t_start, bool) and t_start > path.t_max:
        raise ValueError(f"t_start must be <= {path.t_max} (the source end of {path!r}), got {t_start}")
    sched = {"scheduler": path.scheduler} if method == "dpmpp_2m" else {}
    x1 = V.tensor("x1", x1)
    N = x1.shape[0]
    batch = N if batch_size is None else V.count("batch_size", batch_size, minimum=1)
    kw = model_kwargs or {}
    if not isinstance(kw, dict):
        raise TypeError(f"model_kwargs must be a dict or None, got {type(kw).__name__}")
    for k, v in kw.items():
        if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] != N:
            raise ValueError(f"model_kwargs[{k!r}] has first dimension {v.shape[0]}, expected N = {N}")
    out = []
    bar = progress_bar(progress, N, "reflow.couple", unit="sample")
    try:
        for s in range(0, max(N, 1), max(batch, 1)):
            rows = slice(s, min(s + batch, N))
            sub = {k: (v[rows] if isinstance(v, torch.Tensor) and v.dim() >= 1 else v) for k, v in kw.items()}
            res = flow_sample(velocity, x1[rows], t_start=t_start, t_end=t_end, method=method, rtol=rtol,
                              atol=atol, steps=steps, model_kwargs=sub, **sched)
            if not bool(res.success.all()):
                raise RuntimeError("reflow.couple: some samples did not reach t_end (max_steps ran out); raise "
                                   "max_steps through a fixed-step method or loosen rtol/atol")
            out.append(res.x)
            if bar is not None:
                bar.update(res.x.shape[0])
    finally:
        if bar is not None:
            bar.close()
    return (torch.cat(out) if out else x1.clone()), x1

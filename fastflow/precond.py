"""Karras et al. (2022)'s preconditioning of a denoiser network (EDM), and the same for PFGM++.

``EDMPrecond(net, sigma_data, D)`` wraps a raw network F(x, c_noise) into the denoiser

    D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma)),
    c_skip = sigma_data^2 / (sigma^2 + sigma_data^2),   c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2),
    c_in = 1 / sqrt(sigma_data^2 + sigma^2),             c_noise = log(sigma) / 4,

exactly the formulas of NVlabs/edm (training/networks.py, ``EDMPrecond.forward``). The official PFGM++ code
(github.com/Newbeeer/pfgmpp, training/networks.py, ``EDMPrecond``) uses the same four formulas in sigma, the
per-coordinate noise scale r / sqrt(D): its ``D`` argument does not enter them. With its loss weight
(:func:`fastflow.edm_loss_weight`) the network's own regression target has unit variance at every sigma.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ._core import validate as V
from .families import Poisson
from .training import edm_loss_weight

__all__ = ["EDMPrecond"]


class EDMPrecond(nn.Module):
    """EDM's preconditioning as a module: ``EDMPrecond(net)(x, sigma) = c_skip x + c_out net(c_in x, c_noise)``.

    Args:
        net: the raw network, called as ``net(c_in * x, c_noise, **model_kwargs)`` with c_in * x (B, *shape) in
            x's dtype and c_noise = log(sigma) / 4 (B,) in x's dtype; returns (B, *shape). An ``nn.Module`` is
            registered as the submodule ``net`` (its parameters are this module's).
        sigma_data: the data's standard deviation (EDM's 0.5 for images in [-1, 1]), > 0.
        D: None for EDM (the Gaussian), or PFGM++'s augmented dimension D >= 1: sigma is then r / sqrt(D), and the
            formulas are the same (as in the official PFGM++ code); D is kept for the record (``self.D``).

    Call: ``forward(x, sigma, **model_kwargs)`` with x (B, *shape) and sigma a float, a 0-d tensor, a (B,) tensor
    or a (B, 1, ..., 1) tensor (the official layout), > 0. The coefficients are computed in float64 for float64 x,
    else float32 (float16/bfloat16 x: the network still gets x's dtype); the result is (B, *shape) in x's dtype.
    """

    def __init__(self, net: nn.Module | Callable[..., torch.Tensor], sigma_data: float = 0.5,
                 D: float | None = None) -> None:
        super().__init__()
        if not callable(net):
            raise TypeError(f"net must be callable as net(x, c_noise), got {type(net).__name__}")
        self.net = net
        self.sigma_data = V.number("sigma_data", sigma_data)
        if D is not None:
            Poisson(D)  # the named TypeError / ValueError for a D that is not a number >= 1
        self.D = D

    def extra_repr(self) -> str:
        return f"sigma_data={self.sigma_data:g}, D={self.D}"

    def coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c_skip, c_out, c_in, c_noise) at ``sigma`` (a tensor > 0, any shape), each shaped like sigma."""
        sd = self.sigma_data
        c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
        c_out = sigma * sd / (sigma ** 2 + sd ** 2).sqrt()
        c_in = 1 / (sd ** 2 + sigma ** 2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise

    @V.checked
    def forward(self, x: torch.Tensor, sigma: float | torch.Tensor, **model_kwargs: object) -> torch.Tensor:
        """D(x, sigma) = c_skip x + c_out net(c_in x, c_noise): x (B, *shape), sigma as in the class docstring;
        returns (B, *shape) in x's dtype."""
        x = V.tensor("x", x)
        B = x.shape[0]
        cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
        if isinstance(sigma, torch.Tensor) and sigma.dim() > 1:
            if sigma.numel() != B or sigma.shape[0] != B or any(n != 1 for n in sigma.shape[1:]):
                raise ValueError(f"sigma must be a float or a tensor of shape (B,) or (B, 1, ..., 1) with B = {B}, "
                                 f"got {tuple(sigma.shape)}")
            sigma = sigma.reshape(B)
        s = V.times("sigma", sigma, B, dtype=cdt, device=x.device).reshape(B, *([1] * (x.dim() - 1)))
        c_skip, c_out, c_in, c_noise = self.coefficients(s)
        F = self.net((c_in * x).to(x.dtype), c_noise.reshape(B).to(x.dtype), **model_kwargs)
        if not isinstance(F, torch.Tensor) or F.shape != x.shape:
            raise ValueError(f"net must return a tensor shaped like x {tuple(x.shape)}, got "
                             f"{getattr(F, 'shape', type(F).__name__)}")
        return (c_skip * x + c_out * F.to(cdt)).to(x.dtype)

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """EDM's loss weight at ``sigma``, :func:`fastflow.edm_loss_weight` with this module's sigma_data."""
        return edm_loss_weight(sigma, self.sigma_data)



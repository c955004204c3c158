"""The demo's networks: a residual MLP with Fourier features of the noise level, and EDM's preconditioning."""
from __future__ import annotations

import torch
from torch import nn

from ...precond import EDMPrecond


class MLP(nn.Module):
    """x (B, d) and a per-sample noise input c (B,) -> (B, out): Fourier features of c, then residual SiLU
    layers."""

    def __init__(self, d: int, out: int, hidden: int = 256, n_freq: int = 32, depth: int = 3):
        super().__init__()
        self.register_buffer("freqs", torch.randn(n_freq, generator=torch.Generator().manual_seed(1234)) * 4.0)
        self.inp = nn.Linear(d + 2 * n_freq, hidden)
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, out)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        ang = c[:, None] * self.freqs[None, :]
        h = nn.functional.silu(self.inp(torch.cat((x, torch.sin(ang), torch.cos(ang)), dim=1)))
        for lin in self.blocks:
            h = h + nn.functional.silu(lin(h))
        return self.out(h)


class EDMDenoiser(EDMPrecond):
    """Karras et al. (2022)'s preconditioning (:class:`fastflow.EDMPrecond`) of the demo's MLP:
    D(x, sigma) = c_skip x + c_out F(c_in x, log(sigma) / 4). For PFGM++ the same with sigma = r / sqrt(D) (the
    perturbation's per-coordinate scale)."""

    def __init__(self, d: int, hidden: int, sigma_data: float):
        super().__init__(MLP(d, d, hidden), sigma_data)

"""The demo's training recipes: each a loss on a batch with its reference batch, and a sampler."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from ... import pfgm as _pfgm
from ...families import Gaussian, Poisson
from ...paths import RectifiedFlow
from ...samplers import edm_sample, flow_sample
from ...targets import pfgmpp_target, stf_target
from .data import SHAPE
from .model import MLP, EDMDenoiser

if TYPE_CHECKING:
    from .main import DemoConfig


class Recipe:
    """One training recipe: ``loss(x0, ref, gen)`` for a batch and its reference batch, and ``sample(n, gen)``."""

    def __init__(self, cfg: DemoConfig, train: torch.Tensor):
        self.cfg, self.d = cfg, train.shape[1]
        self.sigma_data = float(train.std())

    def parameters(self):
        return self.model.parameters()

    def gap_model(self):
        """What :func:`fastflow.evaluate.field_gap` compares, or None: (family, model(x, t) in the family's
        time, target, family times ts, the same times in the recipe's noise level, its name)."""
        return None


class EDMRecipe(Recipe):
    """pfgmpp (Poisson(D), pfgmpp_target) and stf (Gaussian, stf_target): EDM's sigma law, weight and sampler."""

    P_MEAN, P_STD = -1.2, 1.2  # EDM's log-normal training sigmas
    SIGMA_MIN, SIGMA_MAX = 0.002, 80.0

    def __init__(self, cfg, train):
        super().__init__(cfg, train)
        self.D = cfg.D if cfg.method == "pfgmpp" else None
        self.family = Poisson(self.D) if self.D is not None else Gaussian()
        self.model = EDMDenoiser(self.d, cfg.hidden, self.sigma_data).to(train.device)

    def _t(self, sigma):  # the family's time: r = sigma sqrt(D) for Poisson(D), sigma for Gaussian
        return sigma * math.sqrt(self.D) if self.D is not None else sigma

    def loss(self, x0, ref, gen):
        B = x0.shape[0]
        sigma = (torch.randn(B, generator=gen, device=x0.device) * self.P_STD + self.P_MEAN).exp()
        x = self.family.perturb(x0, self._t(sigma), generator=gen)
        with torch.no_grad():
            target = (pfgmpp_target(x, sigma, ref, D=self.D) if self.D is not None else stf_target(x, sigma, ref))
        weight = self.model.loss_weight(sigma)  # EDM's, fastflow.edm_loss_weight
        return (weight[:, None] * (self.model(x, sigma) - target) ** 2).mean()

    def gap_model(self):
        # the denoiser against the posterior mean, at 8 sigmas over EDM's training range; Poisson(D)'s time is r
        sigma = torch.logspace(-2, 1, 8, dtype=torch.float64)
        scale = math.sqrt(self.D) if self.D is not None else 1.0
        return (self.family, lambda x, t: self.model(x, t / scale), "posterior_mean", sigma * scale, sigma,
                "sigma")

    @torch.no_grad()
    def sample(self, n, gen):
        x = self.family.prior(n, SHAPE, T=self._t(self.SIGMA_MAX), generator=gen, device=self.cfg.device)
        res = edm_sample(self.model, x, sigma_min=self.SIGMA_MIN, sigma_max=self.SIGMA_MAX,
                         steps=self.cfg.sample_steps, D=self.D, progress=self.cfg.progress)
        return res.x, res.nfe


class PFGMRecipe(Recipe):
    """PFGM (D = 1): the official perturbation, target and sampler, with the digits' own hyperparameters.

    No field gap (``gap_model`` is None): the network predicts PFGM's normalised (d+1)-dimensional field in the
    augmented space, neither a denoiser nor a velocity of the data dimensions."""

    def __init__(self, cfg, train):
        super().__init__(cfg, train)
        self.hp = _pfgm.hyperparameters(train)
        self.model = MLP(self.d, self.d + 1, cfg.hidden).to(train.device)

    def _net(self, x, z):
        # the perturbed points spread ~z per coordinate: scale the input to O(1), as EDM's c_in does
        c_in = (self.sigma_data ** 2 + z.to(x.dtype) ** 2).rsqrt()[:, None]
        return self.model(c_in * x, z.log() / 4)

    def loss(self, x0, ref, gen):
        x, z = _pfgm.perturb(x0, M=self.hp["M"], generator=gen)
        with torch.no_grad():
            target = _pfgm.target(x, z, ref)
        return ((self._net(x, z) - target) ** 2).sum(dim=1).mean()

    @torch.no_grad()
    def sample(self, n, gen):
        x = _pfgm.prior(n, SHAPE, z_max=self.hp["z_max"], upper_norm=self.hp["upper_norm"], generator=gen,
                        device=self.cfg.device)
        res = _pfgm.sample(self._net, x, z_max=self.hp["z_max"], progress=self.cfg.progress)
        return res.x, res.nfe


class RFRecipe(Recipe):
    """Rectified flow with the exact empirical velocity of the reference batch as the target."""

    T_MIN = 1e-3

    def __init__(self, cfg, train):
        super().__init__(cfg, train)
        self.family = RectifiedFlow()
        self.model = MLP(self.d, self.d, cfg.hidden).to(train.device)

    def loss(self, x0, ref, gen):
        t = torch.rand(x0.shape[0], generator=gen, device=x0.device) * (1 - self.T_MIN) + self.T_MIN
        x = self.family.perturb(x0, t, generator=gen)
        with torch.no_grad():
            target = self.family.velocity(x, t, ref)
        return ((self.model(x, t) - target) ** 2).mean()

    def gap_model(self):
        # the velocity network against the exact velocity, at 8 times over the training range
        t = torch.logspace(-2, math.log10(0.9), 8, dtype=torch.float64)
        return self.family, self.model, "velocity", t, t, "t"

    @torch.no_grad()
    def sample(self, n, gen):
        x = self.family.prior(n, SHAPE, T=1.0, generator=gen, device=self.cfg.device)
        res = flow_sample(self.model, x, t_end=self.T_MIN, rtol=1e-4, atol=1e-4, progress=self.cfg.progress)
        return res.x, res.nfe


RECIPES = {"pfgmpp": EDMRecipe, "stf": EDMRecipe, "pfgm": PFGMRecipe, "rf": RFRecipe}

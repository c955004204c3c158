"""Faithful ports of the official algorithms (PFGM's target, perturbation, fixed-grid samplers and likelihood; EDM's
preconditioning; PFGM++'s perturbation), kept as references of record for the tests and the benchmarks. Not for
training: they materialise [B, R, d+1] tensors as the originals do."""
from .official import (
    edm_precond_official,
    pfgm_likelihood_official,
    pfgm_ode_sampler_official,
    pfgm_perturb_official,
    pfgm_target_official,
    pfgmpp_perturb_official,
)

__all__ = ["pfgm_target_official", "pfgm_perturb_official", "pfgm_ode_sampler_official",
           "edm_precond_official", "pfgmpp_perturb_official", "pfgm_likelihood_official"]

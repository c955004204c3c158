"""Faithful ports of the official algorithms (PFGM's target and perturbation), kept as references of record for
the tests and the benchmarks. Not for training: they materialise [B, R, d+1] tensors as the originals do."""
from .official import pfgm_perturb_official, pfgm_target_official

__all__ = ["pfgm_target_official", "pfgm_perturb_official"]

"""fastflow: compiled kernels for ODE-based generative models (PFGM, PFGM++, EDM/VE, rectified flow).

See README.md for a tour, ../shared/MATH.md for the mathematics and API.md for the contract.
"""
from . import _ops  # noqa: F401  (fake implementations of the compiled ops, when the extension is built)
from . import distributed, pfgm
from ._loader import backends
from .families import Family, Gaussian, Poisson, RadialCDF, RectifiedFlow
from .field import FieldStats
from .likelihood import LikelihoodResult, log_likelihood
from .ode import ODEResult, odeint
from .samplers import Oracle, SampleResult, edm_sample, edm_sigmas, family_sample, flow_sample, straightness
from .targets import pfgmpp_target, stf_target

__version__ = "0.1.0"

__all__ = [
    "Family", "Poisson", "Gaussian", "RadialCDF", "RectifiedFlow", "FieldStats",
    "pfgm", "pfgmpp_target", "stf_target", "backends", "distributed",
    "odeint", "ODEResult",
    "log_likelihood", "LikelihoodResult",
    "edm_sample", "edm_sigmas", "flow_sample", "family_sample", "Oracle", "SampleResult", "straightness",
]

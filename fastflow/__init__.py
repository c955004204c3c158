"""fastflow: compiled kernels for ODE-based generative models (PFGM, PFGM++, EDM/VE, rectified flow).

The public names are below; README.md has a tour and docs/ the mathematics and the API. The package's map:
``field/`` (the empirical-field engine), ``ode/`` (the solvers), ``draws.py`` (exact draws), ``families.py``
(the constructions' laws), ``samplers.py``, ``likelihood.py``, ``pfgm.py``, ``pfgmpp.py``, ``precond.py``,
``targets.py``, ``distributed.py``,
``testing/`` (faithful ports of the official algorithms), ``apps/`` (the command line and the demo), and
``_core/`` (the runtime they share: loader, config, dispatch, validation).
"""
from . import distributed, evaluate, ot, pfgm, pfgmpp, reflow, schedulers
from ._core import ops as _ops  # noqa: F401  (fake implementations of the compiled ops, when the extension is built)
from ._core.loader import backends
from ._core.validate import get_validate_args, set_validate_args
from .families import Family, Gaussian, Poisson, RadialCDF
from .field import FieldStats
from .field.nearest import nearest
from .guidance import guided
from .likelihood import LikelihoodResult, log_likelihood
from .ode import ODEResult, odeint
from .paths import AffinePath, PathSample, RectifiedFlow, StudentT
from .precond import EDMPrecond
from .samplers import Oracle, SampleResult, edm_sample, edm_sigmas, family_sample, flow_sample, straightness
from .targets import pfgmpp_target, stf_target
from .training import edm_loss_weight, logit_normal_weight, timesteps

__version__ = "0.1.0"

__all__ = [
    "Family", "Poisson", "Gaussian", "RadialCDF", "RectifiedFlow", "FieldStats",
    "pfgm", "pfgmpp", "EDMPrecond", "pfgmpp_target", "stf_target", "backends", "distributed", "set_validate_args",
    "get_validate_args", "ot", "reflow",
    "odeint", "ODEResult",
    "log_likelihood", "LikelihoodResult",
    "AffinePath", "PathSample", "StudentT", "schedulers", "timesteps", "edm_loss_weight", "logit_normal_weight",
    "edm_sample", "edm_sigmas", "flow_sample", "family_sample", "Oracle", "SampleResult", "straightness", "guided",
    "nearest", "evaluate",
]

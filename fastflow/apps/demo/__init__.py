"""``fastflow demo``: train on the bundled 8x8 digits with fastflow's targets, sample, and measure.

:mod:`.main` (the configuration and the run), :mod:`.data`, :mod:`.model`, :mod:`.recipes`, :mod:`.metrics`,
:mod:`.plots`.
"""
from .data import load_digits
from .main import METHODS, DemoConfig, run
from .metrics import memorisation, sliced_wasserstein
from .model import MLP, EDMDenoiser
from .recipes import RECIPES

__all__ = ["DemoConfig", "METHODS", "run", "load_digits", "MLP", "EDMDenoiser", "RECIPES", "sliced_wasserstein",
           "memorisation"]

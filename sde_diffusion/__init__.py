"""sde_diffusion: diffusion models as SDEs and probability-flow ODEs, with verified numerical solvers."""

from importlib import metadata as _metadata

from .analytic import AnalyticDistribution, Gaussian, GaussianMixture, PointMass
from .calibration import Calibration, calibrate
from .grids import make_grid, validate_grid
from .models import PREDICTIONS, DynamicThresholding, Model, convert, to_eps, to_x0
from .sample import NonFiniteError, Sampler, SampleResult, clear_caches, sample
from .schedules import (
    EDM,
    NoiseSchedule,
    SubVPLinear,
    VEGeometric,
    VPCosine,
    VPDiscrete,
    VPLinear,
    VPSchedule,
    betas_from_config,
)
from .sdes import ForwardSDE, ProbabilityFlowODE, ReverseSDE
from .solvers import Solver, get_solver, registered_solvers
from .solvers.controllers import DPMSolverStepRule, FixedGrid, PIController

try:  # the version lives in one place: pyproject.toml (read from the installed distribution's metadata)
    __version__ = _metadata.version("sde-diffusion")
except _metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "AnalyticDistribution",
    "DynamicThresholding",
    "EDM",
    "ForwardSDE",
    "Gaussian",
    "GaussianMixture",
    "Model",
    "NoiseSchedule",
    "PREDICTIONS",
    "PointMass",
    "ProbabilityFlowODE",
    "ReverseSDE",
    "SubVPLinear",
    "VEGeometric",
    "VPCosine",
    "VPDiscrete",
    "VPLinear",
    "VPSchedule",
    "betas_from_config",
    "get_solver",
    "make_grid",
    "NonFiniteError",
    "registered_solvers",
    "sample",
    "calibrate",
    "Calibration",
    "clear_caches",
    "FixedGrid",
    "PIController",
    "DPMSolverStepRule",
    "SampleResult",
    "Sampler",
    "Solver",
    "validate_grid",
    "__version__",
    "convert",
    "to_eps",
    "to_x0",
]

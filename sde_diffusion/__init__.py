"""sde_diffusion: diffusion models as SDEs and probability-flow ODEs, with verified numerical solvers."""

from .analytic import AnalyticDistribution, Gaussian, GaussianMixture, PointMass
from .grids import make_grid, validate_grid
from .models import PREDICTIONS, DynamicThresholding, Model, convert, to_eps, to_x0
from .sample import NonFiniteError, Sampler, SampleResult, sample
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

__version__ = "0.1.0"

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
    "SampleResult",
    "Sampler",
    "Solver",
    "validate_grid",
    "convert",
    "to_eps",
    "to_x0",
]

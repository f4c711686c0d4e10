"""sde_diffusion: diffusion models as SDEs and probability-flow ODEs, with verified numerical solvers."""

from .analytic import AnalyticDistribution, Gaussian, GaussianMixture, PointMass
from .models import PREDICTIONS, DynamicThresholding, Model, convert, to_eps, to_x0
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
    "convert",
    "to_eps",
    "to_x0",
]

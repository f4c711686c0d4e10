r"""Built-in test problems: a data distribution with an exact score, a noise schedule and a start distribution.

A [`Problem`][sde_diffusion.studies.problems.Problem] couples an exact oracle from [`analytic`][sde_diffusion.analytic]
with a schedule. Sampling starts from
the **exact** diffused marginal ``p_{t_max}`` (``x_T = alpha(t_max) x_0 + sigma(t_max) eps``), not from the prior
``N(0, sigma(t_max)^2 I)``: the two differ by ``alpha(t_max) x_0`` (``e^{-5.03} ~ 0.0066`` for ``vp-linear``), and
starting from ``p_{t_max}`` makes the exact probability-flow map carry the start samples to ``p_{t_min}`` exactly, so
that distributional errors measure the solver and nothing else. ``start="prior"`` gives the prior instead.

Problems (short names):

| name | data |
|---|---|
| ``point`` | point mass at ``(0.6, -0.4)``; every exponential integrator is exact (a consistency check) |
| ``gauss2d`` | concentrated 2-D Gaussian, mean ``(0.5, -0.3)``, standard deviations ``(0.1, 0.03)`` |
| ``gauss16`` | anisotropic 16-D Gaussian, std geometric from 1 to 0.01 (condition number ``1e4``), mean 0.3 |
| ``ring`` | 2-D mixture of 8 narrow modes (std 0.04) equally spaced on the unit circle |
| ``gmm64`` | 64-D mixture of 10 diagonal Gaussians with random means, scales and weights (fixed seed) |

Schedules: ``vp-linear``, ``vp-cosine``, ``vp-discrete`` (DDPM linear betas, 1000 steps), ``ve`` (geometric,
``sigma`` from 0.01 to 50) and ``edm`` (``sigma`` from 0.002 to 80).

Exact solutions: the Gaussian and the point mass have a closed-form probability-flow map (it keeps the standardised
coordinate ``(x - alpha m)/sqrt(alpha^2 s^2 + sigma^2)`` fixed); mixtures need the torchdiffeq reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..analytic import AnalyticDistribution, Gaussian, GaussianMixture, PointMass
from ..models import Model
from ..schedules import EDM, NoiseSchedule, VEGeometric, VPCosine, VPDiscrete, VPLinear

__all__ = [
    "PROBLEMS",
    "SCHEDULES",
    "Problem",
    "get_problem",
    "get_schedule",
    "problem_names",
    "schedule_names",
    "exact_gaussian_flow",
]


# ---------------------------------------------------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------------------------------------------------


def _vp_discrete() -> VPDiscrete:
    return VPDiscrete.from_config({"num_train_timesteps": 1000, "beta_schedule": "linear"})


SCHEDULES: dict[str, Callable[[], NoiseSchedule]] = {
    "vp-linear": VPLinear,
    "vp-cosine": VPCosine,
    "vp-discrete": _vp_discrete,
    "ve": VEGeometric,
    "edm": EDM,
}


def schedule_names() -> list[str]:
    return list(SCHEDULES)


def get_schedule(name: str | NoiseSchedule) -> NoiseSchedule:
    """A schedule from its short name (or the schedule itself)."""
    if isinstance(name, NoiseSchedule):
        return name
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; valid schedules: {', '.join(SCHEDULES)}")
    return SCHEDULES[name]()


# ---------------------------------------------------------------------------------------------------------------------
# data distributions
# ---------------------------------------------------------------------------------------------------------------------


def _point() -> PointMass:
    return PointMass(torch.tensor([0.6, -0.4], dtype=torch.float64))


def _gauss2d() -> Gaussian:
    return Gaussian(torch.tensor([0.5, -0.3], dtype=torch.float64), torch.tensor([0.1, 0.03], dtype=torch.float64))


def _gauss16() -> Gaussian:
    std = torch.logspace(0.0, -2.0, 16, dtype=torch.float64)  # covariance condition number (1/0.01)^2 = 1e4
    return Gaussian(torch.full((16,), 0.3, dtype=torch.float64), std)


def _ring(modes: int = 8, radius: float = 1.0, std: float = 0.04) -> GaussianMixture:
    ang = torch.arange(modes, dtype=torch.float64) * (2.0 * math.pi / modes)
    means = radius * torch.stack([torch.cos(ang), torch.sin(ang)], dim=-1)
    return GaussianMixture(means, torch.full((modes,), std, dtype=torch.float64))


def _gmm64(components: int = 10, dim: int = 64, seed: int = 64) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(components, dim, generator=g, dtype=torch.float64) / math.sqrt(2.0)
    stds = 0.05 + 0.25 * torch.rand(components, dim, generator=g, dtype=torch.float64)
    weights = 0.5 + torch.rand(components, generator=g, dtype=torch.float64)
    return GaussianMixture(means, stds, weights)


@dataclass(frozen=True)
class _Entry:
    make: Callable[[], AnalyticDistribution]
    description: str


PROBLEMS: dict[str, _Entry] = {
    "point": _Entry(_point, "point mass at (0.6, -0.4) in 2-D"),
    "gauss2d": _Entry(_gauss2d, "concentrated 2-D Gaussian, std (0.1, 0.03)"),
    "gauss16": _Entry(_gauss16, "anisotropic 16-D Gaussian, std 1 .. 0.01 (condition number 1e4)"),
    "ring": _Entry(_ring, "2-D ring of 8 narrow modes (std 0.04) on the unit circle"),
    "gmm64": _Entry(_gmm64, "64-D mixture of 10 random diagonal Gaussians"),
}


def problem_names() -> list[str]:
    return list(PROBLEMS)


# ---------------------------------------------------------------------------------------------------------------------
# the problem object
# ---------------------------------------------------------------------------------------------------------------------


class Problem:
    """A data distribution with an exact score on a schedule, integrated from ``t_max`` to ``t_min``.

    Args:
        name: short name (used in reports).
        data: the exact oracle ([`AnalyticDistribution`][sde_diffusion.analytic.AnalyticDistribution]).
        schedule: a [`NoiseSchedule`][sde_diffusion.schedules.NoiseSchedule] or a short schedule name.
        start: ``"marginal"`` (exact ``p_{t_max}``, the default) or ``"prior"`` (``N(0, sigma(t_max)^2 I)``).
    """

    def __init__(
        self,
        name: str,
        data: AnalyticDistribution,
        schedule: NoiseSchedule | str = "vp-linear",
        *,
        start: str = "marginal",
        description: str = "",
    ):
        if start not in ("marginal", "prior"):
            raise ValueError(f"start must be 'marginal' or 'prior', got {start!r}")
        self.name = name
        self.data = data
        self.schedule_name = schedule if isinstance(schedule, str) else type(schedule).__name__
        self.schedule = get_schedule(schedule)
        self.start_kind = start
        self.description = description

    def __repr__(self) -> str:
        return f"Problem({self.name!r}, schedule={self.schedule_name!r}, start={self.start_kind!r})"

    @property
    def event_shape(self) -> torch.Size:
        return torch.Size(self.data.event_shape)

    @property
    def dim(self) -> int:
        return int(math.prod(self.event_shape))

    @property
    def t_start(self) -> float:
        return float(self.schedule.t_max)

    @property
    def t_end(self) -> float:
        return float(self.schedule.t_min)

    def model(self, prediction: str = "eps", **kwargs) -> Model:
        """The exact oracle network as a [`Model`][sde_diffusion.models.Model] (fresh NFE counter)."""
        return self.data.model(self.schedule, prediction, **kwargs)

    def _alpha_sigma(self, t: float) -> tuple[float, float]:
        tt = torch.tensor(float(t), dtype=torch.float64)
        return float(self.schedule.alpha(tt)), float(self.schedule.sigma(tt))

    def marginal_samples(
        self, n: int, t: float, generator: torch.Generator | None = None, *, dtype=torch.float64, device=None
    ) -> torch.Tensor:
        """``n`` exact samples of the diffused marginal ``p_t`` (``alpha x_0 + sigma eps``)."""
        a, s = self._alpha_sigma(t)
        x0 = self.data.sample(n, generator, dtype=torch.float64)
        eps = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
        return (a * x0 + s * eps).to(dtype=dtype, device=device)

    def start(
        self, n: int, generator: torch.Generator | None = None, *, dtype=torch.float64, device=None
    ) -> torch.Tensor:
        """``n`` start states at ``t_max`` from the start distribution."""
        if self.start_kind == "prior":
            _, s = self._alpha_sigma(self.t_start)
            z = torch.randn((n, *self.event_shape), generator=generator, dtype=torch.float64)
            return (s * z).to(dtype=dtype, device=device)
        return self.marginal_samples(n, self.t_start, generator, dtype=dtype, device=device)

    def target_samples(
        self, n: int, generator: torch.Generator | None = None, *, dtype=torch.float64, device=None
    ) -> torch.Tensor:
        """``n`` exact samples of ``p_{t_min}``: what an exact sampler started from
        [`start`][sde_diffusion.studies.problems.Problem.start] produces (when
        ``start="marginal"``)."""
        return self.marginal_samples(n, self.t_end, generator, dtype=dtype, device=device)

    @property
    def has_exact_flow(self) -> bool:
        return isinstance(self.data, (Gaussian, PointMass))

    def exact_flow(self, x: torch.Tensor, t_from: float | None = None, t_to: float | None = None) -> torch.Tensor:
        """The closed-form probability-flow map (Gaussian or point-mass data only), default ``t_max -> t_min``."""
        t_from = self.t_start if t_from is None else t_from
        t_to = self.t_end if t_to is None else t_to
        return exact_gaussian_flow(self.data, x, t_from, t_to, self.schedule)

    def gaussian_marginal(self, t: float | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(mean, covariance)`` of ``p_t`` (flattened, float64) for Gaussian / point-mass data, else ``None``."""
        t = self.t_end if t is None else t
        a, s = self._alpha_sigma(t)
        d = self.dim
        if isinstance(self.data, PointMass):
            return a * self.data.x0_value.reshape(d).double(), torch.eye(d, dtype=torch.float64) * s * s
        if isinstance(self.data, Gaussian):
            m, sd = self.data.mean.reshape(d).double(), self.data.std.reshape(d).double()
            return a * m, torch.diag(a * a * sd * sd + s * s)
        return None


def exact_gaussian_flow(
    data: AnalyticDistribution, x: torch.Tensor, t_from: float, t_to: float, schedule: NoiseSchedule
) -> torch.Tensor:
    """Closed-form probability-flow map for [`Gaussian`][sde_diffusion.analytic.Gaussian] data (its ``flow``) and for a
    [`PointMass`][sde_diffusion.analytic.PointMass] (the zero-variance limit: ``z = (x - alpha m)/sigma`` is kept)."""
    if isinstance(data, Gaussian):
        return data.flow(x, t_from, t_to, schedule)
    if isinstance(data, PointMass):
        tt = torch.tensor([float(t_from), float(t_to)], dtype=torch.float64)
        (a0, a1), (s0, s1) = schedule.alpha(tt).tolist(), schedule.sigma(tt).tolist()
        m = data.x0_value.to(device=x.device, dtype=x.dtype)
        return a1 * m + (s1 / s0) * (x - a0 * m)
    raise TypeError(f"no closed-form flow for {type(data).__name__}; use the torchdiffeq reference")


def get_problem(
    name: str | Problem = "ring", schedule: str | NoiseSchedule = "vp-linear", *, start: str = "marginal"
) -> Problem:
    """A built-in [`Problem`][sde_diffusion.studies.problems.Problem] from its short name (see
    [`PROBLEMS`][sde_diffusion.studies.problems.PROBLEMS]) on a schedule (see
    [`SCHEDULES`][sde_diffusion.studies.problems.SCHEDULES]).

    A [`Problem`][sde_diffusion.studies.problems.Problem] passed in is returned unchanged.
    """
    if isinstance(name, Problem):
        return name
    if name not in PROBLEMS:
        raise ValueError(f"unknown problem {name!r}; valid problems: {', '.join(PROBLEMS)}")
    entry = PROBLEMS[name]
    return Problem(name, entry.make(), schedule, start=start, description=entry.description)

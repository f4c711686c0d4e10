"""The problems, noise sources and runners that the solver checks and the order measurement share."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from ..analytic import AnalyticDistribution, Gaussian, GaussianMixture, PointMass
from ..models import Model
from ..schedules import NoiseSchedule, VPLinear
from ..solvers.base import NoiseSource, Solver
from .common import F64, CheckReport, NotApplicable


class TableNoise(NoiseSource):
    """Pre-drawn standard normals indexed by (step, draw, sample column): a sample sees the same numbers whether it
    runs alone or in a batch (``cols`` picks the columns of the batch being run)."""

    def __init__(self, steps: int, columns: int, event_shape: tuple, seed: int, extra: int = 4):
        g = torch.Generator().manual_seed(seed)
        self.inc = torch.randn((steps, columns, *event_shape), generator=g, dtype=F64)
        self.extra = torch.randn((steps, extra, columns, *event_shape), generator=g, dtype=F64)
        self.cols: Any = slice(None)

    def select(self, cols) -> TableNoise:
        """The same numbers, restricted to the batch columns ``cols`` (a slice)."""
        view = copy.copy(self)
        view.cols = cols
        return view

    def increment(self, i, ts, x):
        return self.inc[i, self.cols].to(device=x.device, dtype=x.dtype)

    def normal(self, i, k, x):
        if k >= self.extra.shape[1]:
            raise ValueError(
                f"the check provides {self.extra.shape[1]} extra normals per step; the solver asked for draw {k}"
            )
        return self.extra[i, k, self.cols].to(device=x.device, dtype=x.dtype)


class RecordingNoise(NoiseSource):
    """Zero noise that records which draws a run makes, as keys ``(step, -1)`` (increment) and ``(step, k)``."""

    def __init__(self):
        self.keys: list[tuple[int, int]] = []

    def increment(self, i, ts, x):
        self.keys.append((i, -1))
        return torch.zeros_like(x)

    def normal(self, i, k, x):
        self.keys.append((i, k))
        return torch.zeros_like(x)


class ProbeNoise(NoiseSource):
    """Noise given per draw key as a tensor of the batch's shape."""

    def __init__(self, values: dict[tuple[int, int], torch.Tensor]):
        self.values = values

    def _get(self, key, x):
        if key not in self.values:
            raise NotApplicable(f"the solver's noise draws differ between runs (unexpected draw {key})")
        return self.values[key].to(device=x.device, dtype=x.dtype)

    def increment(self, i, ts, x):
        return self._get((i, -1), x)

    def normal(self, i, k, x):
        return self._get((i, k), x)


def solve(solver: Solver, model: Model, x: torch.Tensor, ts: torch.Tensor, noise: NoiseSource | None = None):
    from ..sample import sample

    return sample(model, x, solver=solver, grid=ts, noise=noise, check_finite=False)


def is_forward(solver: Solver) -> bool:
    return solver.direction == "forward"


def oriented(solver: Solver, ts: torch.Tensor) -> torch.Tensor:
    """A decreasing grid, flipped for solvers that integrate forward in time."""
    return ts.flip(0).contiguous() if is_forward(solver) else ts


def marginal_sample(data: AnalyticDistribution, schedule: NoiseSchedule, t: torch.Tensor, n: int, seed: int):
    """``n`` exact samples of ``p_t`` (``t`` scalar or per sample ``(n,)``): ``alpha x0 + sigma z``."""
    g = torch.Generator().manual_seed(seed)
    x0 = data.sample(n, g, dtype=F64)
    z = torch.randn(x0.shape, generator=g, dtype=F64)
    a, s = schedule.alpha_sigma_unchecked(t)
    shape = (-1,) + (1,) * (x0.ndim - 1)
    return a.reshape(shape) * x0 + s.reshape(shape) * z if a.ndim else a * x0 + s * z


def describe_data(data: AnalyticDistribution) -> str:
    if isinstance(data, PointMass):
        return f"PointMass(x0={data.x0_value.tolist()})"
    if isinstance(data, Gaussian):
        return f"Gaussian(mean={data.mean.tolist()}, std={data.std.tolist()})"
    if isinstance(data, GaussianMixture):
        return (
            f"GaussianMixture(means={data.means.tolist()}, stds={data.stds.tolist()}, weights={data.weights.tolist()})"
        )
    return repr(data)


@dataclass
class SolverCase:
    solver: Solver
    order: float
    order_tol: float
    exact: bool | None
    max_examples: int
    nfe: tuple[int, ...]
    report: CheckReport


# the fixed problem of the deterministic properties: a diagonal Gaussian on VPLinear (anisotropic, off-centre)
def gaussian_problem() -> tuple[NoiseSchedule, Gaussian]:
    return VPLinear(), Gaussian(torch.tensor([0.5, -1.0, 2.0], dtype=F64), torch.tensor([0.3, 0.8, 1.5], dtype=F64))


def start_state(solver, schedule, data, n, seed):
    t0 = schedule.t_min if is_forward(solver) else schedule.t_max
    return marginal_sample(data, schedule, torch.tensor(t0, dtype=F64), n, seed)


def skip_adaptive(solver):
    if solver.adaptive:
        raise NotApplicable("adaptive step-size solver: a fixed-grid property")


def skip_coupled(solver, why: str):
    if solver.couples_batch:
        raise NotApplicable(f"the solver couples the samples of a batch (couples_batch = True): {why}")

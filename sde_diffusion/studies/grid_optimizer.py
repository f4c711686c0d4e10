r"""Time-grid optimisation: the grid that minimises a solver's error at a fixed NFE budget.

Given a model, a deterministic solver and an NFE budget (hence ``N = solver.steps_for_nfe(nfe)`` steps), the grid
is parametrised by its interior half-log-SNR knots ``lambda_1 < ... < lambda_{N-1}`` between the fixed end points
``lambda(t_max)`` and ``lambda(t_min)``. The objective is the RMS error at ``t_min`` on a *pilot* batch against its
reference solution (the closed-form flow for Gaussian / point-mass data, else the torchdiffeq reference).

Search: **coordinate descent with shrinking moves** (a derivative-free pattern search), started from the
logSNR-uniform grid. For each interior knot in turn, two moves are tried -- towards the right neighbour by a fraction
``step`` of the gap to it, and towards the left neighbour by the same fraction of that gap -- and the better one is
kept if it lowers the pilot error. Relative moves keep the knots strictly ordered by construction. After a sweep over
all knots without improvement ``step`` is halved; the search stops when ``step < min_step``, after ``max_sweeps``
sweeps or ``max_evals`` solves. Every candidate grid goes through [`validate_grid`][sde_diffusion.grids.validate_grid]
(an invalid one is rejected), so the returned grid is always valid, has exactly ``N + 1`` points and the exact end
points; it plugs into ``sample(..., grid=result.grid)``.

The error is then reported on an independent *held-out* batch for both the optimised and the initial grid: the
pilot error alone would be an optimistic estimate (the grid is fitted to it).

Coordinate descent moves one knot at a time and stops in the first local minimum of that kind: started from
``logsnr`` it can end far from a better family's grid (issue 14). [`calibrate`][sde_diffusion.calibration.calibrate]
therefore uses it only as a final polish, after a global search over grid families and their parameters and a
dynamic programme over a fine candidate grid ([`select_knots`][sde_diffusion.studies.grid_optimizer.select_knots]).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..grids import grid_from_lambdas, make_grid
from ..models import Model
from ..reference import probability_flow_reference
from ..sample import sample
from ..sdes import ForwardSDE
from .convergence import progress_bar
from .metrics import rms_error
from .problems import Problem, get_problem
from .results import SCHEMA_VERSION, document_fields
from .specs import parse_solver_spec

__all__ = ["GridOptResult", "optimise_grid", "grid_from_lambdas", "coordinate_descent", "select_knots"]

_KIND = "sde_diffusion.optimised_grid"


@dataclass
class GridOptResult:
    """An optimised grid and how it does on the pilot and held-out batches (errors are RMS at ``t_min``)."""

    grid: torch.Tensor
    init_grid: torch.Tensor
    solver: str
    nfe: int
    steps: int
    problem: str
    schedule: str
    init: str
    pilot_error: float
    pilot_error_init: float
    heldout_error: float
    heldout_error_init: float
    evaluations: int
    history: list[float] = field(default_factory=list)

    @property
    def improvement(self) -> float:
        """Held-out error of the initial grid divided by that of the optimised grid."""
        return self.heldout_error_init / self.heldout_error

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if not isinstance(v, torch.Tensor)}
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": _KIND,
            **d,
            "grid": self.grid.tolist(),
            "init_grid": self.init_grid.tolist(),
        }

    def to_json(self, **kwargs) -> str:
        kwargs.setdefault("indent", 2)
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GridOptResult:
        d = document_fields(d, _KIND, SCHEMA_VERSION, "optimised grid")
        for k in ("grid", "init_grid"):
            d[k] = torch.tensor(d[k], dtype=torch.float64)
        return cls(**d)


def optimise_grid(
    target: str | Problem | Model = "ring",
    solver: str | Any = "ddim",
    nfe: int = 10,
    *,
    schedule: str = "vp-linear",
    init: str | torch.Tensor = "logsnr",
    pilot: int = 256,
    heldout: int = 1024,
    seed: int = 0,
    reference: str = "auto",
    rtol: float = 1e-10,
    step: float = 0.5,
    min_step: float = 0.02,
    max_sweeps: int = 30,
    max_evals: int = 1500,
    x_shape: tuple[int, ...] | None = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float64",
    progress: bool | None = None,
) -> GridOptResult:
    """Optimise the time grid of ``solver`` at budget ``nfe`` (see the module docstring for the method).

    Args:
        target: a built-in problem name, a [`Problem`][sde_diffusion.studies.problems.Problem], or a
            [`Model`][sde_diffusion.models.Model] (then ``x_shape``, the event shape, is required: start states come
            from the prior ``N(0, sigma(t_max)^2 I)`` and references from torchdiffeq).
        solver: a deterministic solver configuration (``"dpm_solver++:order=2,multistep=true"``, an instance, ...).
        nfe: the NFE budget; the grid has ``solver.steps_for_nfe(nfe)`` steps.
        init: the starting grid: a grid name or an explicit tensor.
        x_shape: the event shape of one sample (required when ``target`` is a Model).
        schedule: schedule name of a built-in problem.
        pilot: pilot batch size (drawn from ``seed``).
        heldout: held-out batch size (an independent draw from ``seed + 1``).
        seed: seed of the two batches.
        reference: ``"auto"``, ``"exact"`` (closed-form problems) or ``"torchdiffeq"``.
        rtol: tolerance of the torchdiffeq reference.
        step: initial relative move of a knot (a fraction of the gap to a neighbour).
        min_step: the search stops when the move has been halved below this.
        max_sweeps: largest number of sweeps over the knots.
        max_evals: largest number of solves.
        device: where the solves run (start states and references are computed in float64 on the CPU, then moved).
        dtype: dtype of the solves.
        progress: tqdm bar over sweeps (``None``: only on a terminal).

    Returns:
        [`GridOptResult`][sde_diffusion.studies.grid_optimizer.GridOptResult]; ``result.grid`` is a validated float64
        tensor for ``sample(grid=...)``.
    """
    spec = parse_solver_spec(solver)
    sol = spec.build()
    if sol.stochastic:
        raise ValueError(f"solver {spec.label!r} is stochastic; the grid optimiser needs a deterministic solver")
    steps = sol.steps_for_nfe(nfe)
    if steps < 1:
        raise ValueError(f"NFE budget {nfe} is too small for solver {spec.label!r}")
    if isinstance(target, Model):
        if x_shape is None:
            raise ValueError("optimise_grid(model) needs x_shape, the event shape of one sample")
        model, shape = target, tuple(x_shape)

        def start(k, g):
            return ForwardSDE(model.schedule).prior_sample((k, *shape), g, dtype=torch.float64)

        name, sch_name, make_model, sch = "model", type(model.schedule).__name__, (lambda: model), model.schedule
        t0, t1, exact = float(sch.t_max), float(sch.t_min), None
    else:
        prob = get_problem(target, schedule)
        name, sch_name, make_model, sch, start = prob.name, prob.schedule_name, prob.model, prob.schedule, prob.start
        t0, t1 = prob.t_start, prob.t_end
        exact = prob.exact_flow if prob.has_exact_flow and reference in ("auto", "exact") else None
    if reference not in ("auto", "exact", "torchdiffeq") or (reference == "exact" and exact is None):
        raise ValueError(
            f"reference must be 'auto', 'exact' (closed-form problems) or 'torchdiffeq', got {reference!r}"
        )

    def batch(k, s):
        x = start(k, torch.Generator().manual_seed(s)).to(torch.float64)
        ts = torch.tensor([t0, t1], dtype=torch.float64)
        ref = (
            exact(x) if exact is not None else probability_flow_reference(make_model(), x, ts, rtol=rtol, atol=rtol)[-1]
        )
        return x, ref

    (xp, rp), (xh, rh) = batch(pilot, seed), batch(heldout, seed + 1)
    dt = dtype if isinstance(dtype, torch.dtype) else getattr(torch, str(dtype))
    xp, xh = xp.to(device=device, dtype=dt), xh.to(device=device, dtype=dt)
    init_grid = make_grid(sch, init, steps if isinstance(init, str) else None, t0, t1)
    if init_grid.ndim != 1 or init_grid.shape[0] != steps + 1:
        raise ValueError(
            f"the initial grid must have {steps + 1} points (steps for NFE {nfe}), got shape {tuple(init_grid.shape)}"
        )

    def error(grid, x, ref):
        return rms_error(sample(make_model(), x, solver=sol, steps=steps, grid=grid).x, ref)

    lams = sch.lambda_(init_grid)
    bar = progress_bar(max_sweeps, progress, f"grid {spec.label} NFE {nfe}")
    try:
        lams, best, init_err, evals, history = coordinate_descent(
            lambda cand: error(grid_from_lambdas(sch, cand, t0, t1), xp, rp),
            lams,
            step=step,
            min_step=min_step,
            max_sweeps=max_sweeps,
            max_evals=max_evals,
            on_sweep=lambda: bar.update(1),
        )
    finally:
        bar.close()
    grid = grid_from_lambdas(sch, lams, t0, t1) if steps > 1 else init_grid
    return GridOptResult(
        grid=grid,
        init_grid=init_grid,
        solver=spec.label,
        nfe=nfe,
        steps=steps,
        problem=name,
        schedule=sch_name,
        init=init if isinstance(init, str) else "custom",
        pilot_error=best,
        pilot_error_init=init_err,
        heldout_error=error(grid, xh, rh),
        heldout_error_init=error(init_grid, xh, rh),
        evaluations=evals,
        history=history,
    )


def coordinate_descent(
    error,
    lams: torch.Tensor,
    *,
    step: float = 0.5,
    min_step: float = 0.02,
    max_sweeps: int = 30,
    max_evals: int = 1500,
    on_sweep=None,
    deadline: float | None = None,
) -> tuple[torch.Tensor, float, float, int, list[float]]:
    """Pattern search over the interior knots of ``lams`` (see the module docstring): ``error(lams) -> float``.

    Returns ``(best_lams, best_error, initial_error, evaluations, history)``; ``history`` holds the best error after
    each sweep. A candidate whose error raises ``ValueError`` (a grid made invalid by round-off) or is not finite is
    skipped. ``deadline`` (a ``time.perf_counter`` value) stops the search early.
    """
    best = init = error(lams)
    evals, history, n = 1, [best], lams.shape[0] - 1
    for _ in range(max_sweeps if n > 1 else 0):
        improved = False
        for i in range(1, n):
            for cand in _moves(lams, i, step):
                try:
                    e = error(cand)
                except ValueError:
                    continue
                evals += 1
                if math.isfinite(e) and e < best:
                    best, lams, improved = e, cand, True
            if evals >= max_evals or (deadline is not None and time.perf_counter() > deadline):
                break
        history.append(best)
        if on_sweep is not None:
            on_sweep()
        if evals >= max_evals or (deadline is not None and time.perf_counter() > deadline):
            break
        if not improved:
            step *= 0.5
            if step < min_step:
                break
    return lams, best, init, evals, history


def _moves(lams: torch.Tensor, i: int, step: float) -> list[torch.Tensor]:
    """Knot ``i`` moved towards its right and its left neighbour by the fraction ``step`` of the gap."""
    out = []
    for gap in (lams[i + 1] - lams[i], lams[i - 1] - lams[i]):
        cand = lams.clone()
        cand[i] = lams[i] + step * gap
        out.append(cand)
    return out


def select_knots(cost: torch.Tensor, steps: int) -> list[int]:
    r"""The ``steps + 1`` indices ``0 = k_0 < k_1 < ... < k_steps = K`` of a fine candidate grid of ``K + 1`` knots
    that minimise ``sum_n cost[k_{n-1}, k_n]``: a dynamic programme in the style of GITS (Chen et al. 2024,
    arXiv:2405.11326), where ``cost[i, j]`` is the local error of one step from knot ``i`` to knot ``j`` (``inf``
    where not computed). ``O(steps K^2)`` additions on the host; exact (the global optimum of the additive model).
    """
    c = torch.as_tensor(cost, dtype=torch.float64)
    k = c.shape[0] - 1
    if c.shape != (k + 1, k + 1) or not 1 <= steps <= k:
        raise ValueError(f"cost must be square (K+1, K+1) with 1 <= steps <= K, got {tuple(c.shape)}, steps={steps}")
    inf = torch.tensor(math.inf, dtype=torch.float64)
    best = torch.full((k + 1,), math.inf, dtype=torch.float64)
    best[0] = 0.0
    back = []
    for _ in range(steps):
        total = best[:, None] + torch.where(torch.triu(torch.ones_like(c, dtype=torch.bool), 1), c, inf)
        best, arg = total.min(dim=0)
        back.append(arg)
    if not math.isfinite(float(best[k])):
        raise ValueError(f"no finite path of {steps} steps through the cost matrix")
    path = [k]
    for arg in reversed(back):
        path.append(int(arg[path[-1]]))
    return path[::-1]

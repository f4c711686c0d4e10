r"""Time-grid optimisation: the grid that minimises a solver's error at a fixed NFE budget.

Given a model, a deterministic solver and an NFE budget (hence ``N = steps_for_nfe(solver, nfe)`` steps), the grid
is parametrised by its interior half-log-SNR knots ``lambda_1 < ... < lambda_{N-1}`` between the fixed end points
``lambda(t_max)`` and ``lambda(t_min)``. The objective is the RMS error at ``t_min`` on a *pilot* batch against its
reference solution (the closed-form flow for Gaussian / point-mass data, else the torchdiffeq reference).

Search: **coordinate descent with shrinking moves** (a derivative-free pattern search), started from the
logSNR-uniform grid. For each interior knot in turn, two moves are tried -- towards the right neighbour by a fraction
``step`` of the gap to it, and towards the left neighbour by the same fraction of that gap -- and the better one is
kept if it lowers the pilot error. Relative moves keep the knots strictly ordered by construction. After a sweep over
all knots without improvement ``step`` is halved; the search stops when ``step < min_step``, after ``max_sweeps``
sweeps or ``max_evals`` solves. Every candidate grid goes through :func:`~sde_diffusion.grids.validate_grid`
(an invalid one is rejected), so the returned grid is always valid, has exactly ``N + 1`` points and the exact end
points; it plugs into ``sample(..., grid=result.grid)``.

The error is then reported on an independent *held-out* batch for both the optimised and the initial grid: the
pilot error alone would be an optimistic estimate (the grid is fitted to it).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..grids import make_grid, validate_grid
from ..models import Model
from ..reference import probability_flow_reference
from ..sample import sample
from ..sdes import ForwardSDE
from .convergence import _progress
from .metrics import rms_error
from .problems import Problem, get_problem
from .results import SCHEMA_VERSION
from .specs import parse_solver_spec, steps_for_nfe

__all__ = ["GridOptResult", "optimise_grid", "grid_from_lambdas"]

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
        if d.get("kind") != _KIND or d.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"not a version-{SCHEMA_VERSION} optimised grid")
        d = {k: v for k, v in d.items() if k not in ("kind", "schema_version")}
        for k in ("grid", "init_grid"):
            d[k] = torch.tensor(d[k], dtype=torch.float64)
        return cls(**d)


def grid_from_lambdas(schedule, lambdas: torch.Tensor, t_start: float, t_end: float) -> torch.Tensor:
    """The decreasing time grid with half-log-SNR knots ``lambdas`` (increasing) and exact end points."""
    ts = schedule.inverse_lambda(lambdas.to(torch.float64)).clone()
    ts[0], ts[-1] = t_start, t_end
    return validate_grid(schedule, ts, decreasing=t_start > t_end)


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
        target: a built-in problem name, a :class:`~sde_diffusion.studies.problems.Problem`, or a
            :class:`~sde_diffusion.models.Model` (then ``x_shape``, the event shape, is required: start states come
            from the prior ``N(0, sigma(t_max)^2 I)`` and references from torchdiffeq).
        solver: a deterministic solver configuration (``"dpm_solver++:order=2,multistep=true"``, an instance, ...).
        nfe: the NFE budget; the grid has ``steps_for_nfe(solver, nfe)`` steps.
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
        :class:`GridOptResult`; ``result.grid`` is a validated float64 tensor for ``sample(grid=...)``.
    """
    spec = parse_solver_spec(solver)
    sol = spec.build()
    if sol.stochastic:
        raise ValueError(f"solver {spec.label!r} is stochastic; the grid optimiser needs a deterministic solver")
    steps = steps_for_nfe(sol, nfe)
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
    best = error(init_grid, xp, rp)
    init_err, evals, history = best, 1, [best]
    bar = _progress(max_sweeps, progress, f"grid {spec.label} NFE {nfe}")
    try:
        for _ in range(max_sweeps):
            improved = False
            for i in range(1, steps):
                for cand in _moves(lams, i, step):
                    try:
                        grid = grid_from_lambdas(sch, cand, t0, t1)
                    except ValueError:
                        continue  # round-off made the candidate invalid: skip it
                    e = error(grid, xp, rp)
                    evals += 1
                    if math.isfinite(e) and e < best:
                        best, lams, improved = e, cand, True
                if evals >= max_evals:
                    break
            history.append(best)
            bar.update(1)
            if evals >= max_evals:
                break
            if not improved:
                step *= 0.5
                if step < min_step:
                    break
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


def _moves(lams: torch.Tensor, i: int, step: float) -> list[torch.Tensor]:
    """Knot ``i`` moved towards its right and its left neighbour by the fraction ``step`` of the gap."""
    out = []
    for gap in (lams[i + 1] - lams[i], lams[i - 1] - lams[i]):
        cand = lams.clone()
        cand[i] = lams[i] + step * gap
        out.append(cand)
    return out

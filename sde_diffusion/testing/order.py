"""Measured convergence order of a solver on Gaussian data (the `prop_order` check and `measure_order`)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ..analytic import Gaussian
from ..grids import make_grid
from ..solvers.base import Solver, get_solver
from .cases import (
    F64,
    NotApplicable,
    ProbeNoise,
    RecordingNoise,
    gaussian_problem,
    oriented,
    skip_adaptive,
    skip_coupled,
    solve,
    start_state,
)

ORDER_NFE = (48, 72, 107, 161, 240)
"""Default model-evaluation counts of the order study (geometric, in the asymptotic range)."""


@dataclass
class OrderMeasurement:
    r"""A convergence study: ``errors[i]`` at ``nfe[i]`` model evaluations and the fitted order.

    ``order`` is ``p`` from the least-squares fit ``log e = c - p log N + d/N``: the error of an order-``p`` method
    is ``e = C N^{-p} (1 + d/N + O(N^{-2}))``, and the ``d/N`` term absorbs the leading pre-asymptotic correction
    that biases a plain slope at moderate NFE (e.g. singlestep DPM-Solver-3 or PNDM look 0.2 too high on
    48--240 NFE). ``slope`` is the plain least-squares slope of ``-log e`` against ``log N``, for reference.
    ``kind`` is ``"global"`` (deterministic: max abs error of the final state against the exact flow) or ``"weak"``
    (stochastic: error of the exact mean plus variance of the output)."""

    order: float
    slope: float
    nfe: list[int]
    errors: list[float]
    kind: str

    def __str__(self) -> str:
        pts = ", ".join(f"{n}: {e:.3g}" for n, e in zip(self.nfe, self.errors))
        return f"{self.kind} order {self.order:.3f} (plain slope {self.slope:.3f}; NFE: error = {pts})"


def fit_order(nfe: list[int], errors: list[float], kind: str) -> OrderMeasurement:
    from ..studies.fitting import fit_line

    if len(nfe) < 4 or len(set(nfe)) != len(nfe):
        raise ValueError(f"an order fit needs at least 4 distinct NFE values, got {nfe}")
    if not all(math.isfinite(e) and e > 0 for e in errors):
        raise AssertionError(f"errors must be positive and finite to fit an order: {dict(zip(nfe, errors))}")
    order = fit_line(nfe, errors, correction=True).order
    slope = fit_line(nfe, errors).order
    return OrderMeasurement(order, slope, list(nfe), list(errors), kind)


def global_errors(solver, schedule, data, nfes) -> tuple[list[int], list[float]]:
    model = data.model(schedule)
    x = start_state(solver, schedule, data, 8, 11)
    out_nfe: list[int] = []
    errors: list[float] = []
    for n in nfes:
        steps = max(1, solver.steps_for_nfe(n))
        ts = oriented(solver, make_grid(schedule, "logsnr", steps))
        res = solve(solver, model, x, ts)
        want = data.flow(x, float(ts[0]), float(ts[-1]), schedule)
        out_nfe.append(res.nfe)
        errors.append(float((res.x - want).abs().max()))
    return out_nfe, errors


def weak_error(solver, schedule, data: Gaussian, ts) -> tuple[int, float]:
    """Exact weak error for Gaussian data. With an affine model, a run is affine in the start and the noise:
    ``out = A x + b + sum_k C_k z_k`` (elementwise). One batched run with probe columns gives ``A``, ``b`` and every
    ``C_k``; a random column verifies the affine form. Then ``E out = A mu_T + b``, ``Var out = A^2 v_T + sum C_k^2``
    are compared with the exact marginal at the end time."""
    event = data.event_shape
    model = data.model(schedule)
    rec = RecordingNoise()
    solve(solver, model, torch.zeros((1, *event), dtype=F64), ts, rec)
    keys = list(dict.fromkeys(rec.keys))
    n = len(keys) + 3  # columns: b, A + b, b + C_k ..., verification
    g = torch.Generator().manual_seed(12)
    x = torch.zeros((n, *event), dtype=F64)
    x[1] = 1.0
    x[-1] = torch.randn(event, generator=g, dtype=F64)
    values = {}
    for j, key in enumerate(keys):
        v = torch.zeros((n, *event), dtype=F64)
        v[2 + j] = 1.0
        v[-1] = torch.randn(event, generator=g, dtype=F64)
        values[key] = v
    res = solve(solver, model, x, ts, ProbeNoise(values))
    out = res.x
    b, A = out[0], out[1] - out[0]
    C = out[2:-1] - b
    pred = A * x[-1] + b + sum(C[j] * values[k][-1] for j, k in enumerate(keys))
    if not bool(torch.allclose(out[-1], pred, rtol=1e-7, atol=1e-9 * max(1.0, float(out.abs().max())))):
        raise NotApplicable(
            "the solver is not affine in its noise on Gaussian data (e.g. a step size that depends on the "
            "state's norm), so the exact-moment weak error does not apply; weak order not measured"
        )
    t0, t1 = torch.tensor(float(ts[0]), dtype=F64), torch.tensor(float(ts[-1]), dtype=F64)
    (a0, s0), (a1, s1) = schedule.alpha_sigma_unchecked(t0), schedule.alpha_sigma_unchecked(t1)
    mu0, v0 = a0 * data.mean, a0**2 * data.std**2 + s0**2
    mu1, v1 = a1 * data.mean, a1**2 * data.std**2 + s1**2
    mean, var = A * mu0 + b, A**2 * v0 + (C**2).sum(0)
    return res.nfe, float(((mean - mu1).abs() + (var - v1).abs()).max())


def measure_order(solver: str | type[Solver] | Solver, *, nfe: Iterable[int] = ORDER_NFE) -> OrderMeasurement:
    """Measure the convergence order of ``solver`` (name, class or instance) on a Gaussian problem.

    The problem: [`VPLinear`][sde_diffusion.schedules.VPLinear] (``beta`` from 0.1 to 20, ``t`` from 1 to 1e-3),
    diagonal Gaussian data
    ``N([0.5, -1, 2], diag([0.3, 0.8, 1.5])^2)``, logSNR-uniform grids with about ``nfe`` model evaluations each.
    Deterministic solvers: the max abs error of the final state against
    [`Gaussian.flow`][sde_diffusion.analytic.Gaussian.flow] (global order).
    Stochastic solvers: the exact weak error ``max |E x - E x_exact| + |Var x - Var x_exact|`` of the output, from
    one batched run with probe columns (on Gaussian data every step is affine in the state and the noise, so the
    moments follow exactly from the response to unit inputs; the affine form is verified on a random column).
    Raises ``ValueError`` saying why when that does not apply (adaptive, not affine in the noise, ``couples_batch``).
    """
    try:
        return measure_order_of(get_solver(solver), list(nfe))
    except NotApplicable as e:
        raise ValueError(str(e)) from None


def measure_order_of(solver: Solver, nfes: list[int]) -> OrderMeasurement:
    skip_adaptive(solver)
    schedule, data = gaussian_problem()
    if not solver.stochastic:
        return fit_order(*global_errors(solver, schedule, data, nfes), "global")
    skip_coupled(solver, "the exact-moment weak error treats the batch columns as independent runs")
    pts = [
        weak_error(
            solver, schedule, data, oriented(solver, make_grid(schedule, "logsnr", max(1, solver.steps_for_nfe(n))))
        )
        for n in nfes
    ]
    return fit_order([p[0] for p in pts], [p[1] for p in pts], "weak")

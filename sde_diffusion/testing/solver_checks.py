"""Conformance properties of solvers (SOLVER_PROPERTIES) and `check_solver`."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from ..grids import make_grid
from ..models import Model
from ..solvers.base import Solver, get_solver
from .cases import (
    SolverCase,
    TableNoise,
    describe_data,
    gaussian_problem,
    is_forward,
    marginal_sample,
    oriented,
    skip_adaptive,
    skip_coupled,
    solve,
    start_state,
)
from .common import (
    CheckReport,
    NotApplicable,
    SolverCheckError,
    hypothesis_modules,
    run_checks,
    run_given,
    select_properties,
)
from .order import ORDER_NFE, measure_order_of
from .strategies import analytic_data, grids, predictions, schedules


def _prop_nfe(case: SolverCase):
    skip_adaptive(case.solver)
    schedule, data = gaussian_problem()
    model = data.model(schedule)
    x = start_state(case.solver, schedule, data, 2, 0)
    for steps in (1, 2, 3, 7):
        ts = oriented(case.solver, make_grid(schedule, "logsnr", steps))
        res = solve(case.solver, model, x, ts, TableNoise(steps, 2, x.shape[1:], 0))
        if res.nfe != case.solver.final_nfe(steps):
            raise AssertionError(
                f"{steps} steps spent {res.nfe} model evaluations; final_nfe({steps}) says "
                f"{case.solver.final_nfe(steps)}"
            )


def run_seeded(solver, model, x, schedule, seed):
    from ..sample import sample

    g = torch.Generator().manual_seed(seed)
    if solver.adaptive:
        return sample(model, x, solver=solver, generator=g, check_finite=False).x
    ts = oriented(solver, make_grid(schedule, "logsnr", 8))
    return sample(model, x, solver=solver, grid=ts, generator=g, check_finite=False).x


def _prop_determinism(case: SolverCase):
    schedule, data = gaussian_problem()
    model = data.model(schedule)
    x = start_state(case.solver, schedule, data, 4, 1)
    first, again = (run_seeded(case.solver, model, x.clone(), schedule, 7) for _ in range(2))
    if not torch.equal(first, again):
        diff = (first - again).abs().max().item()
        raise AssertionError(f"two runs with the same input and seed differ (max |difference| = {diff!r})")
    if case.solver.stochastic:
        other = run_seeded(case.solver, model, x.clone(), schedule, 8)
        if torch.equal(first, other):
            raise AssertionError("the solver says stochastic=True but two different seeds gave the same result")


def _prop_finite_low_precision(case: SolverCase):
    # the state in float32, the network's output in float32 or float16; compared with the float64 run
    schedule, data = gaussian_problem()
    x64 = start_state(case.solver, schedule, data, 8, 2)
    adaptive = case.solver.adaptive
    ts = oriented(case.solver, make_grid(schedule, "logsnr", 12))
    noise = TableNoise(12, 8, x64.shape[1:], 3)

    def run(model, x):
        if adaptive:
            return run_seeded(case.solver, model, x, schedule, 3)
        return solve(case.solver, model, x, ts, noise).x

    oracle = data.model(schedule).fn
    ref = run(data.model(schedule), x64)
    scale = max(1.0, float(ref.abs().max()))
    for out_dtype, tol in ((torch.float32, 1e-3), (torch.float16, 5e-2)):
        x32 = x64.to(torch.float32)
        out = run(Model(lambda x, t, d=out_dtype: oracle(x, t).to(d), schedule, "eps"), x32)
        what = f"float32 state with {str(out_dtype).removeprefix('torch.')} model outputs"
        if out.dtype != torch.float32 or out.shape != x32.shape:
            raise AssertionError(
                f"{what}: the result is {out.dtype} of shape {tuple(out.shape)}; expected "
                f"torch.float32 of shape {tuple(x32.shape)}"
            )
        if not bool(torch.isfinite(out).all()):
            raise AssertionError(f"{what}: non-finite result")
        err = float((out.double() - ref).abs().max())
        if not adaptive and err > tol * scale:
            raise AssertionError(f"{what}: max |x - x_float64| = {err:.3g} > {tol * scale:.3g}")


def _expects_exact(case: SolverCase) -> bool:
    if case.exact is not None:
        return case.exact
    return not case.solver.stochastic and bool(case.solver.exact_for_point_mass)


def _prop_point_mass_exact(case: SolverCase):
    skip_adaptive(case.solver)
    if case.solver.stochastic:
        raise NotApplicable("stochastic solver: point-mass exactness is a property of deterministic solvers")
    if not _expects_exact(case):
        raise NotApplicable("the solver does not claim exact_for_point_mass = True")
    hypothesis, st = hypothesis_modules()
    solver = case.solver

    def body(data):
        schedule = data.draw(schedules(), label="schedule")
        ts = data.draw(grids(schedule, 8, decreasing=not is_forward(solver)), label="grid")
        prediction = data.draw(predictions(), label="prediction")
        m = data.draw(analytic_data((2,), ("point_mass",)), label="point mass")
        hypothesis.note(f"grid = {ts.tolist()}")
        x = marginal_sample(m, schedule, ts[0], 3, data.draw(st.integers(0, 2**16), label="seed"))
        out = solve(solver, m.model(schedule, prediction), x, ts).x
        # exact flow of the point mass: (x - alpha m)/sigma is constant
        a0, s0 = schedule.alpha_sigma_unchecked(ts[0])
        a1, s1 = schedule.alpha_sigma_unchecked(ts[-1])
        want = a1 * m.x0_value + s1 * (x - a0 * m.x0_value) / s0
        scale = max(1.0, float(x.abs().max()), float(want.abs().max()))
        # round-off of a step grows with its length in lambda (a one-step jump across the whole range of a
        # schedule multiplies by sigma_ve ratios of ~1e5; PLMS's four stages over such a jump reach ~4e-9
        # relative): 1e-9 up to steps of 2, growing like (longest/2)^2 beyond; a conversion bug errs by O(1e-2)
        lam = schedule.lambda_unchecked(ts)
        longest = float((lam[1:] - lam[:-1]).abs().max())
        tol = 1e-9 * scale * max(1.0, (longest / 2.0) ** 2)
        err = float((out - want).abs().max())
        if not err <= tol:
            raise AssertionError(
                f"the solver is not exact for point-mass data: max |x - exact| = {err!r} (tolerance {tol:.3g})"
            )

    run_given(body, st.data(), case.max_examples)


def _prop_per_sample_times(case: SolverCase):
    skip_adaptive(case.solver)
    skip_coupled(case.solver, "a sample's result depends on the rest of its batch")
    hypothesis, st = hypothesis_modules()
    solver, batch = case.solver, 3

    def body(data):
        schedule = data.draw(schedules(), label="schedule")
        ts = data.draw(grids(schedule, 6, batch=batch, decreasing=not is_forward(solver)), label="grid")
        dist = data.draw(analytic_data((2,)), label="data")
        hypothesis.note(f"grid = {ts.tolist()}\ndata = {describe_data(dist)}")
        model = dist.model(schedule, data.draw(predictions(), label="prediction"))
        x = marginal_sample(dist, schedule, ts[0], batch, 5)
        noise = TableNoise(ts.shape[0] - 1, batch, x.shape[1:], 6)
        together = solve(solver, model, x, ts, noise.select(slice(None))).x
        for j in range(batch):
            alone = solve(solver, model, x[j : j + 1], ts[:, j].contiguous(), noise.select(slice(j, j + 1))).x
            mine, finite = together[j : j + 1], torch.isfinite(alone)
            if not torch.equal(torch.isfinite(mine), finite):
                raise AssertionError(
                    f"sample {j}: the batched run and the run alone differ in which entries are "
                    f"finite ({mine.tolist()} vs {alone.tolist()})"
                )
            if not bool(finite.any()):
                continue
            scale = max(1.0, float(alone[finite].abs().max()))
            err = float((mine - alone)[finite].abs().max())
            if not err <= 1e-9 * scale:
                raise AssertionError(
                    f"sample {j} of a batch with per-sample grids differs from its run alone on its "
                    f"own grid: max |difference| = {err!r}"
                )

    run_given(body, st.data(), case.max_examples)


def _prop_order(case: SolverCase):
    m = measure_order_of(case.solver, list(case.nfe))
    case.report.measured["order"] = round(m.order, 3)
    low, high = case.order - case.order_tol, case.order + case.order_tol
    if m.kind == "weak" and m.order > high:
        # Gaussian data make the problem linear: a method may converge faster on it than its general weak order
        case.report.measured["order_note"] = f"weak order on Gaussian moments exceeds the declared {case.order}"
        return
    if not low <= m.order <= high:
        raise AssertionError(f"declared order {case.order}, measured {m} -- outside the tolerance +-{case.order_tol}")


SOLVER_PROPERTIES: dict[str, Callable] = {
    "nfe": _prop_nfe,
    "determinism": _prop_determinism,
    "finite_low_precision": _prop_finite_low_precision,
    "point_mass_exact": _prop_point_mass_exact,
    "per_sample_times": _prop_per_sample_times,
    "order": _prop_order,
}
"""Every solver property by name, in the order [`check_solver`][sde_diffusion.testing.solver_checks.check_solver] runs
them."""


def check_solver(
    solver: str | type[Solver] | Solver,
    *,
    order: float | None = None,
    order_tol: float = 0.2,
    exact_for_point_mass: bool | None = None,
    max_examples: int = 10,
    nfe: Iterable[int] = ORDER_NFE,
    properties: Iterable[str] | None = None,
) -> CheckReport:
    r"""Run the solver property suite on a solver (registry name, class or instance -- registered or not).

    Properties ([`SOLVER_PROPERTIES`][sde_diffusion.testing.solver_checks.SOLVER_PROPERTIES], in this order):

    * ``nfe`` -- ``SampleResult.nfe`` equals ``solver.final_nfe(steps)`` for 1, 2, 3 and 7 steps.
    * ``determinism`` -- the same input (and seed) gives bitwise the same output; a stochastic solver gives different
      outputs for different seeds.
    * ``finite_low_precision`` -- a float32 state with float32 or float16 model outputs gives a finite float32 result
      close to the float64 one (relative 1e-3 / 5e-2), 12 logSNR steps.
    * ``point_mass_exact`` -- for deterministic solvers that claim it (``exact_for_point_mass``): on point-mass data
      the result equals the exact flow ``alpha_s m + sigma_s (x - alpha_t m)/sigma_t`` to ``1e-9`` (relative), over
      random schedules, grids, parametrisations and points (Hypothesis).
    * ``per_sample_times`` -- a batch with one grid per sample (shape ``(N+1, B)``) gives, for every sample, what a
      run of that sample alone on its own grid gives (with the same noise), over random schedules, grids, data and
      parametrisations (Hypothesis). Skipped for solvers that declare ``couples_batch = True`` (e.g. a Langevin
      corrector whose step size uses norms averaged over the batch).
    * ``order`` -- the order fitted by [`measure_order`][sde_diffusion.testing.order.measure_order] on its Gaussian
      problem is the declared order within
      ``order_tol``. Deterministic solvers: global error, two-sided. Stochastic solvers: exact-moment weak error,
      one-sided (on Gaussian data the problem is linear and a method may converge faster than its general weak
      order; that is recorded in the report, not failed); skipped with a note when the weak error does not apply
      (not affine in the noise, or ``couples_batch``).

    Conventions a solver may declare (read with ``getattr``, default ``False``): ``exact_for_point_mass``,
    ``couples_batch``, ``adaptive`` (fixed-grid properties are skipped).

    Args:
        solver: the solver under test.
        order: the expected order (default ``solver.order``: global for deterministic, weak for stochastic).
        order_tol: accepted distance between measured and expected order.
        exact_for_point_mass: whether to demand point-mass exactness (default: deterministic and
            ``solver.exact_for_point_mass``).
        max_examples: Hypothesis examples for each randomised property.
        nfe: the model-evaluation counts of the order study.
        properties: subset of [`SOLVER_PROPERTIES`][sde_diffusion.testing.solver_checks.SOLVER_PROPERTIES] (default
            all).

    Returns:
        a [`CheckReport`][sde_diffusion.testing.common.CheckReport] (skipped properties with the reason; the measured
        order).

    Raises:
        SolverCheckError: naming the first failed property, with Hypothesis' shrunk counterexample where one applies.
    """
    solver = get_solver(solver)
    case = SolverCase(
        solver,
        float(solver.order if order is None else order),
        order_tol,
        exact_for_point_mass,
        max_examples,
        tuple(nfe),
        CheckReport(repr(solver)),
    )
    names = select_properties(SOLVER_PROPERTIES, properties, list(SOLVER_PROPERTIES))
    return run_checks(SOLVER_PROPERTIES, names, (case,), SolverCheckError, case.report)

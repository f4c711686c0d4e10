r"""Convergence studies: error, cost and wall time of solver configurations over NFE budgets.

For each solver configuration and each NFE budget,
[`convergence_study`][sde_diffusion.studies.convergence.convergence_study] runs [`sample`][sde_diffusion.sample.sample]
on
one batch of start states ``x_T`` drawn from the problem's start distribution, with
``steps = solver.steps_for_nfe(nfe)`` (the largest step count that fits the budget; the *actual* NFE spent,
``SampleResult.nfe``, is what is reported and fitted) and measures

* ``error`` -- the pathwise RMS error at ``t_min``

  - deterministic solvers: against the exact probability-flow map (Gaussian / point-mass data, closed form) or the
    torchdiffeq reference ([`probability_flow_reference`][sde_diffusion.reference.probability_flow_reference]: float64,
    ``rtol = atol``
    default ``1e-10``, the end point hit exactly);
  - stochastic solvers: the **strong** error against the reverse-SDE reference driven by the *same* Brownian path
    ([`brownian_path`][sde_diffusion.reference.brownian_path],
    [`reverse_sde_reference`][sde_diffusion.reference.reverse_sde_reference],
    integrated in ``K`` logSNR-uniform segments of ``S`` sub-steps each so that the stiff end near ``t_min`` gets
    small steps);

* ``dist_error`` -- a distributional error against the exact ``p_{t_min}``: the exact W2 distance between
  ``N(empirical mean, empirical covariance)`` and the exact Gaussian marginal for Gaussian data, the sliced W2
  distance to as many exact samples for mixtures. Its sampling floor (the RMS of the same metric evaluated on four
  independent sets of exact samples) is reported as ``dist_floor``;
* ``wall_time`` -- seconds for the ``sample`` call (the device is synchronised around it).

The reference's own accuracy is estimated by a sweep: the ODE reference is recomputed at tolerances ``100 x`` and
``10^4 x`` looser, the SDE reference with half the sub-steps; the RMS difference to the reference is reported, and
the difference of the nearest looser setting is used as the (conservative) estimated error of the reference. Order
fits exclude points at or below ``max(estimated reference error, 100 eps(dtype) * scale)`` as well as a trailing
plateau ([`fit_order`][sde_diffusion.studies.fitting.fit_order]).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..grids import make_grid
from ..reference import brownian_path, probability_flow_reference, reverse_sde_reference
from ..sample import sample
from .fitting import fit_order
from .metrics import gaussian_w2, max_error, median_error, rms_error, sliced_w2
from .problems import Problem, get_problem
from .results import Run, StudyResult
from .specs import default_solvers, parse_solver_spec, solver_info

__all__ = ["convergence_study", "ode_reference", "sde_reference", "DEFAULT_NFE"]

DEFAULT_NFE = (5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50)


# ---------------------------------------------------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------------------------------------------------


def ode_reference(
    problem: Problem, x_T: torch.Tensor, *, kind: str = "auto", rtol: float = 1e-10, sweep: bool = True
) -> tuple[torch.Tensor, dict]:
    """The exact (closed form) or torchdiffeq solution at ``t_min`` of the probability-flow ODE from ``x_T`` (float64),
    and a dict describing it: ``kind``, ``rtol``, ``error_estimate`` and the tolerance ``sweep``."""
    x64 = x_T.to(torch.float64)
    if kind not in ("auto", "exact", "torchdiffeq"):
        raise ValueError(f"reference must be 'auto', 'exact', 'torchdiffeq' or 'none', got {kind!r}")
    if kind == "exact" or (kind == "auto" and problem.has_exact_flow):
        if not problem.has_exact_flow:
            raise ValueError(f"problem {problem.name!r} has no closed-form flow; use reference='torchdiffeq'")
        return problem.exact_flow(x64), {"kind": "exact", "rtol": None, "error_estimate": 0.0, "sweep": []}
    ts = torch.tensor([problem.t_start, problem.t_end], dtype=torch.float64)

    def solve(tol):
        return probability_flow_reference(problem.model(), x64, ts, rtol=tol, atol=tol)[-1]

    ref = solve(rtol)
    rows = [{"rtol": rtol * f, "rms_diff": rms_error(solve(rtol * f), ref)} for f in ((1e2, 1e4) if sweep else ())]
    info = {
        "kind": "torchdiffeq",
        "method": "dopri5",
        "rtol": rtol,
        "error_estimate": rows[0]["rms_diff"] if rows else None,
        "sweep": rows,
    }
    return ref, info


def sde_reference(
    problem: Problem, x_T: torch.Tensor, bm, *, segments: int = 16, substeps: int = 50, sweep: bool = True
) -> tuple[torch.Tensor, dict]:
    """The reverse-SDE solution at ``t_min`` on the Brownian path ``bm`` (torchsde SRK, float64), integrated in
    ``segments`` logSNR-uniform pieces of ``substeps`` steps each; and a dict with the sub-step ``sweep``."""
    x64 = x_T.to(torch.float64)
    knots = make_grid(problem.schedule, "logsnr", segments, problem.t_start, problem.t_end)

    def solve(sub):
        y, model = x64, problem.model()
        for a, b in zip(knots[:-1].tolist(), knots[1:].tolist()):
            y = reverse_sde_reference(
                model, y, torch.tensor([a, b], dtype=torch.float64), bm, method="srk", dt=(a - b) / sub
            )[-1]
        return y

    ref = solve(substeps)
    rows = [{"substeps": substeps // 2, "rms_diff": rms_error(solve(substeps // 2), ref)}] if sweep else []
    info = {
        "kind": "torchsde",
        "method": "srk",
        "segments": segments,
        "substeps": substeps,
        "error_estimate": rows[0]["rms_diff"] if rows else None,
        "sweep": rows,
    }
    return ref, info


# ---------------------------------------------------------------------------------------------------------------------
# the study
# ---------------------------------------------------------------------------------------------------------------------


def _dtype(d) -> torch.dtype:
    if isinstance(d, torch.dtype):
        return d
    if d not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {d!r}")
    return getattr(torch, d)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def distribution_metric(problem: Problem, target: torch.Tensor):
    """``(name, fn(x) -> distance)``: exact Gaussian W2 when the marginal is Gaussian, else sliced W2."""
    gm = problem.gaussian_marginal()
    if gm is not None:
        mean, cov = gm
        return "gaussian_w2", lambda x: gaussian_w2(x, mean, cov)
    return "sliced_w2", lambda x: sliced_w2(x, target)


def progress_bar(total: int, progress: bool | None, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=None if progress is None else not progress, leave=False)


def convergence_study(
    problem: str | Problem = "ring",
    solvers: Sequence | None = None,
    nfe: Sequence[int] = DEFAULT_NFE,
    *,
    schedule: str = "vp-linear",
    grid: str = "logsnr",
    reference: str = "auto",
    seed: int = 0,
    n: int = 512,
    dtype: str | torch.dtype = "float64",
    device: str | torch.device = "cpu",
    rtol: float = 1e-10,
    sweep: bool = True,
    sde_segments: int = 16,
    sde_substeps: int = 50,
    distributional: bool = True,
    repeats: int = 1,
    refine: bool = False,
    max_nfe: int | None = None,
    refine_time: float | None = None,
    progress: bool | None = None,
    keep_samples: bool | None = None,
) -> StudyResult:
    """Run every solver configuration at every NFE budget on one batch and measure errors and wall time; with
    ``refine``, extend each solver's budgets by doubling until its asymptotic range is reached.

    Args:
        problem: a [`Problem`][sde_diffusion.studies.problems.Problem] or a built-in name (with ``schedule``).
        solvers: configurations (``"name:k=v,..."``, ``(name, options)``, classes, instances); default
            [`default_solvers`][sde_diffusion.studies.specs.default_solvers].
        nfe: NFE budgets; each becomes ``solver.steps_for_nfe(budget)`` steps (budgets too small are skipped).
        grid: the time grid name (``"logsnr"``, ``"time_uniform"``, ``"time_quadratic"``, ``"karras"``).
        reference: ``"auto"`` (exact when available, else torchdiffeq; torchsde for stochastic solvers),
            ``"exact"``, ``"torchdiffeq"``, or ``"none"`` (distributional errors and Richardson orders only).
        seed: seeds the start states, the exact target samples and the Brownian path.
        n: batch size (the same start states for every run).
        dtype: dtype of the solvers (``"float32"``/``"float64"`` or a torch dtype; references are float64).
        device: where the solvers run.
        rtol: tolerance of the torchdiffeq reference (``atol = rtol``).
        sweep: estimate the references' accuracy by recomputing them at looser settings.
        sde_segments: logSNR-uniform segments of the reverse-SDE reference.
        sde_substeps: SRK steps per segment of the reverse-SDE reference.
        distributional: also measure the distributional error.
        repeats: wall time is the minimum over this many runs.
        refine: after the requested budgets, double each solver's largest budget until its order fit claims an
            asymptotic range ([`fit_order`][sde_diffusion.studies.fitting.fit_order]; the Richardson differences when
            there is no reference), a floor is hit, or a limit below is reached. Refined runs are marked
            ``refined`` and kept out of the practical-range tables.
        max_nfe: largest refined budget (default ``32 x`` the largest requested one).
        refine_time: seconds of sampling that the refinement of all solvers may spend together (``None``: no
            limit); each solver gets an equal share of what is left, and a run predicted to overrun it is not
            started.
        progress: tqdm bar (``None``: only on a terminal).
        keep_samples: keep the final states for scatter plots (default: for problems of dimension 2).

    Returns:
        [`StudyResult`][sde_diffusion.studies.results.StudyResult] with the order fits filled in.
    """
    problem = get_problem(problem, schedule)
    dt, dev = _dtype(dtype), torch.device(device)
    specs = [parse_solver_spec(s) for s in (default_solvers() if solvers is None else solvers)]
    built = [(s, s.build()) for s in specs]
    for s, solver in built:
        if solver.adaptive:
            raise ValueError(f"solver {s.label!r} is adaptive: NFE budgets do not apply to it")
    budgets = sorted({int(b) for b in nfe})
    if not budgets or budgets[0] < 1:
        raise ValueError(f"NFE budgets must be positive ints, got {list(nfe)}")
    max_nfe = 32 * budgets[-1] if max_nfe is None else int(max_nfe)
    keep = problem.dim == 2 if keep_samples is None else keep_samples

    g = torch.Generator().manual_seed(seed)
    x_T = problem.start(n, g)
    target = problem.target_samples(n, g)
    metric_name, metric = distribution_metric(problem, target) if distributional else (None, None)
    dist_floor = None
    if metric is not None:
        draws = [
            metric(problem.target_samples(n, torch.Generator().manual_seed(seed + 7919 * (k + 1)))) for k in range(4)
        ]
        dist_floor = math.sqrt(sum(v * v for v in draws) / len(draws))

    ref_info: dict = {"ode": None, "sde": None}
    refs: dict[bool, torch.Tensor | None] = {False: None, True: None}
    bm = None
    if reference != "none":
        if any(not solver.stochastic for _, solver in built):
            refs[False], ref_info["ode"] = ode_reference(problem, x_T, kind=reference, rtol=rtol, sweep=sweep)
        if any(solver.stochastic for _, solver in built):
            bm = brownian_path(x_T, problem.t_end, problem.t_start, seed=seed)
            refs[True], ref_info["sde"] = sde_reference(
                problem, x_T, bm, segments=sde_segments, substeps=sde_substeps, sweep=sweep
            )
    elif any(solver.stochastic for _, solver in built):
        bm = brownian_path(x_T, problem.t_end, problem.t_start, seed=seed)  # Richardson needs one path too

    result = StudyResult(
        problem=problem.name,
        schedule=problem.schedule_name,
        grid=grid,
        seed=seed,
        n=n,
        dtype=str(dt)[6:],
        device=str(dev),
        reference=ref_info,
        dist_metric=metric_name,
        dist_floor=dist_floor,
        solvers={s.label: solver_info(solver) for s, solver in built},
        runs=[],
        target=target if keep else None,
    )
    result.roundoff = 100.0 * torch.finfo(dt).eps * max(1.0, float(x_T.to(torch.float64).pow(2).mean().sqrt()))
    ctx = _Context(problem, x_T.to(device=dev, dtype=dt), grid, seed, bm, repeats, dev, refs, metric, keep)
    time_left = math.inf if refine_time is None else float(refine_time)
    bar = progress_bar(len(built) * len(budgets), progress, f"{problem.name}/{problem.schedule_name}")
    try:
        for i, (spec, solver) in enumerate(built):
            share = time_left / (len(built) - i)
            spent = _study_solver(ctx, result, spec.label, solver, budgets, bar, refine, max_nfe, share)
            time_left -= spent
    finally:
        bar.close()
    fit_study(result)
    return result


@dataclass
class _Context:
    """What every run of one study shares: the problem, the start states on the solvers' device and dtype, the
    Brownian path, the references (by ``stochastic``), the distributional metric and whether to keep samples."""

    problem: Problem
    x: torch.Tensor
    grid: str
    seed: int
    bm: object
    repeats: int
    dev: torch.device
    refs: dict
    metric: object
    keep: bool


def _doubling_chain(budgets: list[int]) -> list[int]:
    """The trailing chain ``B/2^k, ..., B/2, B`` of the requested budgets (``B`` the largest)."""
    chain = [budgets[-1]]
    while chain[0] % 2 == 0 and chain[0] // 2 in budgets:
        chain.insert(0, chain[0] // 2)
    return chain


def _study_solver(ctx, result, label, solver, budgets, bar, refine, max_nfe, time_share) -> float:
    """Run one solver at the requested budgets, then (``refine``) at doubled ones; record the Richardson chain.
    Returns the seconds spent refining."""
    ref = ctx.refs[bool(solver.stochastic)]
    chain_budgets = _doubling_chain(budgets)
    chain: list[tuple[int, int, int, torch.Tensor]] = []  # (budget, steps, nfe, final state)
    done: dict[int, tuple[Run, torch.Tensor]] = {}

    def run_budget(budget: int, refined: bool) -> Run | None:
        steps = solver.steps_for_nfe(budget)
        if steps == 0:
            return None
        if steps in done:  # two budgets with the same step count: the same run
            run = Run(**{**done[steps][0].__dict__, "nfe_budget": budget, "refined": refined})
            result.runs.append(run)
            if budget in chain_budgets and not (chain and chain[-1][1] == steps):
                chain.append((budget, steps, run.nfe, done[steps][1]))
            return run
        out, wall = _timed_sample(ctx.problem, solver, ctx.x, steps, ctx.grid, ctx.seed, ctx.bm, ctx.repeats, ctx.dev)
        run = Run(
            label,
            budget,
            steps,
            out.nfe,
            error=None if ref is None else rms_error(out.x, ref),
            error_max=None if ref is None else max_error(out.x, ref),
            dist_error=None if ctx.metric is None else ctx.metric(out.x),
            wall_time=wall,
            error_median=None if ref is None else median_error(out.x, ref),
            refined=refined,
        )
        done[steps] = (run, out.x.detach())
        result.runs.append(run)
        if (budget in chain_budgets or refined) and not (chain and chain[-1][1] == steps):
            chain.append((budget, steps, out.nfe, out.x.detach()))
        if ctx.keep and not refined:
            result.samples[(label, budget)] = out.x.detach().to("cpu", torch.float64)
        return run

    for budget in budgets:
        bar.update(1)
        run_budget(budget, False)
    spent, stop = 0.0, None
    if refine:
        while True:
            fit = _refinement_fit(result, label, chain, ref is not None)
            if fit is not None and fit.status != "not_reached":
                stop = "reached" if fit.reached else "floor"
                break
            budget = 2 * max(budgets[-1], max((r.nfe_budget for r in result.runs if r.solver == label), default=0))
            if budget > max_nfe:
                stop = "max_nfe"
                break
            mine = [r for r in result.runs if r.solver == label]
            predicted = mine[-1].wall_time * budget / max(mine[-1].nfe, 1) if mine else 0.0
            if spent + predicted > time_share:
                stop = "time"
                break
            run = run_budget(budget, True)
            if run is None:
                stop = "max_nfe"
                break
            spent += run.wall_time
    result.chains[label] = _chain_record(chain, stop, spent)
    return spent


def _chain_record(chain, stop, spent) -> dict:
    """The doubling chain of one solver: budgets, steps, actual NFE and ``diffs[k] = rms(x_k - x_{k+1})``."""
    return {
        "budgets": [c[0] for c in chain],
        "steps": [c[1] for c in chain],
        "nfe": [c[2] for c in chain],
        "diffs": [rms_error(a[3], b[3]) for a, b in zip(chain[:-1], chain[1:])],
        "refinement_stop": stop,
        "refinement_time": spent,
    }


def _refinement_fit(result: StudyResult, label: str, chain, has_reference: bool):
    """The fit that decides whether to refine further: the pathwise error's, or without a reference the Richardson
    differences' (``None`` while there are too few points)."""
    info = result.solvers[label]
    declared = info["strong_order"] if info["stochastic"] else info["order"]
    if has_reference:
        ns, es = result.series(label, "error")
        return fit_order(ns, es, floor=_error_floor(result, info), declared=declared) if len(ns) >= 2 else None
    rec = _chain_record(chain, None, 0.0)
    if len(rec["diffs"]) < 2:
        return None
    return fit_order(_nominal_nfe(rec, info), rec["diffs"], floor=result.roundoff, declared=declared)


def _timed_sample(problem, solver, x, steps, grid, seed, bm, repeats, dev):
    best, out = math.inf, None
    for _ in range(max(int(repeats), 1)):
        kw = {}
        if solver.stochastic:
            g = torch.Generator(device=dev).manual_seed(seed + 1)
            kw = {"noise": bm, "generator": g} if bm is not None else {"generator": g}
        model = problem.model()
        _sync(dev)
        t0 = time.perf_counter()
        out = sample(model, x, solver=solver, steps=steps, grid=grid, **kw)
        _sync(dev)
        best = min(best, time.perf_counter() - t0)
    return out, best


def _error_floor(result: StudyResult, info: dict) -> float:
    """Round-off or the reference's estimated error, whichever is larger."""
    part = ((result.reference or {}).get("sde" if info["stochastic"] else "ode")) or {}
    return max(result.roundoff, part.get("error_estimate") or 0.0)


def _nominal_nfe(chain: dict, info: dict) -> list[int]:
    """``steps x NFE per step`` of a chain's coarse solves: exact doublings, so that the local orders of the
    differences are the Richardson estimates (the actual NFE can differ by a final step, e.g. Heun's ``2N - 1``)."""
    return [s * max(int(info["nfe_per_step"]), 1) for s in chain["steps"][:-1]]


def fit_study(result: StudyResult) -> StudyResult:
    """Fill ``result.fits``: for each solver, [`fit_order`][sde_diffusion.studies.fitting.fit_order] of

    * ``"error"`` -- the pathwise error at every point (requested and refined), against the declared order (the
      strong order for stochastic solvers), with ``effective`` the plain fit over the requested (practical) range
      and a floor at the reference's estimated error or round-off;
    * ``"dist_error"`` -- the distributional error, against the declared (weak) order, floor twice the sampling
      floor;
    * ``"richardson"`` -- the differences ``rms(x_N - x_2N)`` along the doubling chain against the nominal NFE
      ``steps x nfe_per_step``: their local orders are the reference-free Richardson estimates.
    """
    for label, info in result.solvers.items():
        declared = info["strong_order"] if info["stochastic"] else info["order"]
        practical = [r.nfe for r in result.runs_of(label) if not r.refined]
        span = (min(practical), max(practical)) if practical else None
        fits = {"error": _fit_series(result, label, "error", _error_floor(result, info), declared, span)}
        dist_floor = 2.0 * result.dist_floor if result.dist_floor is not None else 0.0
        fits["dist_error"] = _fit_series(result, label, "dist_error", dist_floor, info["order"], span)
        chain = result.chains.get(label)
        fits["richardson"] = None
        if chain and len(chain["diffs"]) >= 2:
            fits["richardson"] = fit_order(
                _nominal_nfe(chain, info), chain["diffs"], floor=result.roundoff, declared=declared
            )
        result.fits[label] = fits
    return result


def _fit_series(result: StudyResult, label: str, metric: str, floor: float, declared, span):
    ns, es = result.series(label, metric)
    if not ns:
        return None
    return fit_order(ns, es, floor=floor, declared=declared, effective_range=span)

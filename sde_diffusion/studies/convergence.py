r"""Convergence studies: error, cost and wall time of solver configurations over NFE budgets.

For each solver configuration and each NFE budget, :func:`convergence_study` runs :func:`sde_diffusion.sample` on
one batch of start states ``x_T`` drawn from the problem's start distribution, with
``steps = steps_for_nfe(solver, nfe)`` (the largest step count that fits the budget; the *actual* NFE spent,
``SampleResult.nfe``, is what is reported and fitted) and measures

* ``error`` -- the pathwise RMS error at ``t_min``

  - deterministic solvers: against the exact probability-flow map (Gaussian / point-mass data, closed form) or the
    torchdiffeq reference (:func:`~sde_diffusion.reference.probability_flow_reference`: float64, ``rtol = atol``
    default ``1e-10``, the end point hit exactly);
  - stochastic solvers: the **strong** error against the reverse-SDE reference driven by the *same* Brownian path
    (:func:`~sde_diffusion.reference.brownian_path`, :func:`~sde_diffusion.reference.reverse_sde_reference`,
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
plateau (:func:`~sde_diffusion.studies.fitting.fit_order`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch

from ..grids import make_grid
from ..reference import brownian_path, probability_flow_reference, reverse_sde_reference
from ..sample import sample
from .fitting import fit_order
from .metrics import gaussian_w2, max_error, median_error, rms_error, sliced_w2
from .problems import Problem, get_problem
from .results import Run, StudyResult
from .specs import default_solvers, parse_solver_spec, solver_info, steps_for_nfe

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


def _dist_metric(problem: Problem, target: torch.Tensor):
    """``(name, fn(x) -> distance)``: exact Gaussian W2 when the marginal is Gaussian, else sliced W2."""
    gm = problem.gaussian_marginal()
    if gm is not None:
        mean, cov = gm
        return "gaussian_w2", lambda x: gaussian_w2(x, mean, cov)
    return "sliced_w2", lambda x: sliced_w2(x, target)


def _progress(total: int, progress: bool | None, desc: str):
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
    progress: bool | None = None,
    keep_samples: bool | None = None,
) -> StudyResult:
    """Run every solver configuration at every NFE budget on one batch and measure errors and wall time.

    Args:
        problem: a :class:`~sde_diffusion.studies.problems.Problem` or a built-in name (with ``schedule``).
        solvers: configurations (``"name:k=v,..."``, ``(name, options)``, classes, instances); default
            :func:`~sde_diffusion.studies.specs.default_solvers`.
        nfe: NFE budgets; each becomes ``steps_for_nfe(solver, budget)`` steps (budgets too small are skipped).
        grid: the time grid name (``"logsnr"``, ``"time_uniform"``, ``"time_quadratic"``, ``"karras"``).
        reference: ``"auto"`` (exact when available, else torchdiffeq; torchsde for stochastic solvers),
            ``"exact"``, ``"torchdiffeq"``, or ``"none"`` (distributional errors only).
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
        progress: tqdm bar (``None``: only on a terminal).
        keep_samples: keep the final states for scatter plots (default: for problems of dimension 2).

    Returns:
        :class:`~sde_diffusion.studies.results.StudyResult` with the order fits filled in.
    """
    problem = get_problem(problem, schedule)
    dt, dev = _dtype(dtype), torch.device(device)
    specs = [parse_solver_spec(s) for s in (default_solvers() if solvers is None else solvers)]
    built = [(s, s.build()) for s in specs]
    for s, solver in built:
        if getattr(solver, "adaptive", False):
            raise ValueError(f"solver {s.label!r} is adaptive: NFE budgets do not apply to it")
    budgets = sorted({int(b) for b in nfe})
    keep = problem.dim == 2 if keep_samples is None else keep_samples

    g = torch.Generator().manual_seed(seed)
    x_T = problem.start(n, g)
    target = problem.target_samples(n, g)
    metric_name, metric = _dist_metric(problem, target) if distributional else (None, None)
    dist_floor = None
    if metric is not None:
        draws = [
            metric(problem.target_samples(n, torch.Generator().manual_seed(seed + 7919 * (k + 1)))) for k in range(4)
        ]
        dist_floor = math.sqrt(sum(v * v for v in draws) / len(draws))

    ref_info: dict = {"ode": None, "sde": None}
    ode_ref = sde_ref = bm = None
    if reference != "none":
        if any(not solver.stochastic for _, solver in built):
            ode_ref, ref_info["ode"] = ode_reference(problem, x_T, kind=reference, rtol=rtol, sweep=sweep)
        if any(solver.stochastic for _, solver in built):
            bm = brownian_path(x_T, problem.t_end, problem.t_start, seed=seed)
            sde_ref, ref_info["sde"] = sde_reference(
                problem, x_T, bm, segments=sde_segments, substeps=sde_substeps, sweep=sweep
            )

    x_dev = x_T.to(device=dev, dtype=dt)
    runs: list[Run] = []
    samples: dict = {}
    bar = _progress(len(built) * len(budgets), progress, f"{problem.name}/{problem.schedule_name}")
    try:
        for spec, solver in built:
            done: dict[int, Run] = {}
            for budget in budgets:
                bar.update(1)
                steps = steps_for_nfe(solver, budget)
                if steps == 0:
                    continue
                if steps in done:  # two budgets with the same step count: the same run
                    runs.append(Run(**{**done[steps].__dict__, "nfe_budget": budget}))
                    continue
                out, wall = _timed_sample(problem, solver, x_dev, steps, grid, seed, bm, repeats, dev)
                ref = sde_ref if solver.stochastic else ode_ref
                run = Run(
                    spec.label,
                    budget,
                    steps,
                    out.nfe,
                    error=None if ref is None else rms_error(out.x, ref),
                    error_max=None if ref is None else max_error(out.x, ref),
                    dist_error=None if metric is None else metric(out.x),
                    wall_time=wall,
                    error_median=None if ref is None else median_error(out.x, ref),
                )
                done[steps] = run
                runs.append(run)
                if keep:
                    samples[(spec.label, budget)] = out.x.detach().to("cpu", torch.float64)
    finally:
        bar.close()

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
        runs=runs,
        samples=samples,
        target=target if keep else None,
    )
    roundoff = 100.0 * torch.finfo(dt).eps * max(1.0, float(x_T.to(torch.float64).pow(2).mean().sqrt()))
    fit_study(result, roundoff=roundoff)
    return result


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


def fit_study(result: StudyResult, *, roundoff: float = 0.0) -> StudyResult:
    """Fill ``result.fits``: for each solver, :func:`~sde_diffusion.studies.fitting.fit_order` of the pathwise error
    (against the declared order, or the strong order for stochastic solvers) and of the distributional error (against
    the declared weak order), with floors from the references' estimated error, round-off and the sampling floor."""
    ref = result.reference or {}
    for label, info in result.solvers.items():
        stochastic = info["stochastic"]
        ref_part = (ref.get("sde") if stochastic else ref.get("ode")) or {}
        floor = max(roundoff, ref_part.get("error_estimate") or 0.0)
        declared = info["strong_order"] if stochastic else info["order"]
        fits = {"error": _fit_series(result, label, "error", floor, declared)}
        dist_floor = 2.0 * result.dist_floor if result.dist_floor is not None else 0.0
        fits["dist_error"] = _fit_series(result, label, "dist_error", dist_floor, info["order"])
        result.fits[label] = fits
    return result


def _fit_series(result: StudyResult, label: str, metric: str, floor: float, declared):
    ns, es = result.series(label, metric)
    if not ns:
        return None
    return fit_order(ns, es, floor=floor, declared=declared)

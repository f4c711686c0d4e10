"""Our runs: named grids, optimised grids, precision and calibration; the units of work and the orchestration."""

from __future__ import annotations

import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from sde_diffusion.calibration import calibrate
from sde_diffusion.models import Model
from sde_diffusion.sample import sample
from sde_diffusion.solvers.dpm_solver import DPMSolverFast
from sde_diffusion.studies.metrics import median_error, rms_error
from sde_diffusion.studies.problems import Problem
from sde_diffusion.studies.specs import parse_solver_spec

from .configurations import KIND, MODEL_DTYPES, SCHEMA_VERSION, Settings
from .diffusers_adapter import check_vp_table, diffusers_plans, diffusers_version, run_diffusers_one
from .kdiffusion_adapter import kdiffusion_version, run_kdiffusion
from .problems import (
    denoise,
    error_record,
    make_problem,
    reference,
    run_header,
    start_states,
    time_key,
    train_network,
)
from .report import summarise

# ---------------------------------------------------------------------------------------------------------------------
# our runs
# ---------------------------------------------------------------------------------------------------------------------


def our_solve(problem: Problem, spec, grid: str, budget: int, x_T: torch.Tensor, model: Model | None = None):
    """One run of ours at an NFE budget: ``(SampleResult, steps)``, or ``(None, 0)`` if the budget is too small."""
    model = problem.model() if model is None else model
    if spec.name == "dpm_solver_fast":
        try:
            solver = DPMSolverFast(nfe=budget, grid=grid, **spec.options)
        except ValueError:
            return None, 0
        return sample(model, x_T, solver=solver), len(solver.orders)
    solver = spec.build()
    steps = solver.steps_for_nfe(budget)
    if steps == 0:
        return None, 0
    return sample(model, x_T, solver=solver, steps=steps, grid=grid), steps


def targets_of(problem: Problem, ref: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference state at ``t_min`` and its exact data prediction (the ``state`` and ``x0`` targets)."""
    state = ref[time_key(problem.t_end)]
    return state, denoise(problem, state, problem.t_end)


def records_of(
    problem: Problem, base: dict, res, steps: int, budget: int, fail: str | None, targets, want_state, want_x0
) -> list[dict]:
    """The ``state`` record of a run at ``budget`` (if wanted) and its ``x0`` record at ``budget + 1`` (the run,
    then the exact denoising at ``t_min``; if wanted)."""
    out = []
    if budget in want_state:
        rec = {**base, "output": "state", "nfe_budget": budget, "steps": steps}
        rec.update(
            {"nfe": res.nfe, **error_record(res.x, targets[0])}
            if res is not None
            else {"nfe": None, "error": None, "error_median": None, "failed": fail}
        )
        out.append(rec)
    if budget in want_x0:
        rec = {**base, "output": "x0", "nfe_budget": budget + 1, "steps": steps}
        if res is not None and bool(torch.isfinite(res.x).all()):
            rec.update({"nfe": res.nfe + 1, **error_record(denoise(problem, res.x, problem.t_end), targets[1])})
        else:
            rec.update({"nfe": None, "error": None, "error_median": None, "failed": fail or "non-finite output"})
        out.append(rec)
    return out


def our_base(problem: Problem, spec, grid: str) -> dict:
    return run_header(problem, "ours", spec.label, spec.name, grid)


def run_ours(problem: Problem, x_T: torch.Tensor, ref: dict, settings: Settings) -> list[dict]:
    """Every configuration x grid x budget; ``state`` records at each NFE and ``x0`` records (run at NFE - 1, then
    the exact denoising at ``t_min``)."""
    targets = targets_of(problem, ref)
    want_state, want_x0 = set(settings.nfe), {n - 1 for n in settings.nfe}
    out = []
    for text in settings.ours:
        spec = parse_solver_spec(text)
        for grid in settings.grids:
            for budget in settings.budgets():
                try:
                    res, steps = our_solve(problem, spec, grid, budget, x_T)
                except (ValueError, FloatingPointError, RuntimeError) as e:
                    res, steps, fail = None, 0, f"{type(e).__name__}: {e}"
                else:
                    fail = None
                if res is None and fail is None:
                    continue  # the budget is too small for this solver
                out += records_of(
                    problem, our_base(problem, spec, grid), res, steps, budget, fail, targets, want_state, want_x0
                )
    return out


# ---------------------------------------------------------------------------------------------------------------------
# calibrated runs
# ---------------------------------------------------------------------------------------------------------------------


def calibrate_options(problem, settings) -> dict:
    """The benchmark's ``calibrate`` keywords for one problem (besides the model, budget and start states)."""
    return dict(
        solvers=list(settings.cal_solvers),
        grids=tuple(settings.cal_grids),
        refine=settings.cal_refine,
        budget_s=settings.cal_budget_s,
        rtol=settings.cal_rtol,
        t_start=problem.t_start,
        t_end=problem.t_end,
        progress=False,
    )


def run_calibrated(problem: Problem, x_T: torch.Tensor, ref: dict, settings: Settings, nfe: int) -> list[dict]:
    """:func:`sde_diffusion.calibrate` at the budgets ``nfe`` (``state``) and ``nfe - 1`` (``x0``), evaluated on the
    benchmark batch ``x_T`` exactly like the named grids.

    Honest hold-out: calibration sees only start states drawn from ``cal_seed`` (its pilot, then its own held-out
    half), never ``x_T`` (``seed``); its references are its own dopri5 solves. The ``state`` record at NFE ``n``
    uses the calibration for ``n``; the ``x0`` record at ``n`` the one for ``n - 1`` and the exact denoising."""
    targets = targets_of(problem, ref)
    want_state, want_x0 = {nfe}, {nfe - 1}
    starts = start_states(problem, settings.cal_batch, settings.cal_seed)  # half pilot, half held out
    out = []
    for budget in (b for b in (nfe - 1, nfe) if b >= 1):
        t0 = time.perf_counter()
        try:
            cal = calibrate(problem.model(), budget, x_T=starts, **calibrate_options(problem, settings))
        except ValueError as e:  # e.g. no configuration fits the budget
            out.append({"calibration_failed": str(e), "nfe_budget": budget})
            continue
        seconds = time.perf_counter() - t0
        res = sample(problem.model(), x_T, **cal.sample_kwargs())
        base = {
            **our_base(problem, parse_solver_spec(cal.solver), "calibrated"),
            "calibrated_grid": cal.grid,
            "calibration_analytic_first_step": cal.analytic_first_step,
            "calibration_seconds": seconds,
            "calibration_heldout_error": cal.heldout_error,
            "calibration_baseline": cal.baseline,
            "grid_times": cal.times,
        }
        out += records_of(problem, base, res, cal.steps, budget, None, targets, want_state, want_x0)
    return [r for r in out if "calibration_failed" not in r]


def run_precision(problem: Problem, x_T: torch.Tensor, ref: dict, settings: Settings) -> list[dict]:
    """Network output cast to each of :data:`MODEL_DTYPES` and back to float32 (float32 state), against the float64
    run of the same configuration."""
    base = problem.model()  # (its __call__ applies the network's own time input)
    target = ref[time_key(problem.t_end)]
    out = []
    for text in settings.precision_configs:
        spec = parse_solver_spec(text)
        for budget in settings.precision_nfe:
            res64, steps = our_solve(problem, spec, settings.precision_grid, budget, x_T)
            if res64 is None:
                continue
            for name in MODEL_DTYPES:
                dt = getattr(torch, name)

                def fn(x, t, dt=dt):
                    return base(x.double(), t.double()).to(dt).to(torch.float32)

                model = Model(fn, problem.schedule, "eps")
                res = our_solve(problem, spec, settings.precision_grid, budget, x_T.float(), model)[0]
                out.append(
                    dict(
                        problem=problem.name,
                        schedule=problem.schedule_name,
                        config=spec.label,
                        grid=settings.precision_grid,
                        nfe_budget=budget,
                        nfe=res.nfe,
                        model_dtype=name,
                        state_dtype="float32",
                        error_vs_float64=rms_error(res.x, res64.x),
                        median_vs_float64=median_error(res.x, res64.x),
                        solver_error=rms_error(res64.x, target),
                    )
                )
    return out


# ---------------------------------------------------------------------------------------------------------------------
# the units of work (one process each)
# ---------------------------------------------------------------------------------------------------------------------


def setup_worker():
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    try:
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
    except Exception:  # pragma: no cover - optional dependency
        pass


def unit_reference(problem_name: str, schedule: str, settings: Settings) -> dict:
    setup_worker()
    problem = make_problem(problem_name, schedule, settings.net_dir)
    x_T = start_states(problem, settings.n(problem_name), settings.seed)
    times = []
    if settings.diffusers and diffusers_version() is not None:
        plans, _ = diffusers_plans(problem, settings)
        times = [t for p in plans for t in (p.t_start, p.t_out)]
    ref, info = reference(problem, x_T, times, settings.rtol)
    return {"ref": ref, "info": info}


def unit_part(problem_name: str, schedule: str, part: str, ref: dict, settings: Settings) -> dict:
    setup_worker()
    t0 = time.perf_counter()
    problem = make_problem(problem_name, schedule, settings.net_dir)
    x_T = start_states(problem, settings.n(problem_name), settings.seed)
    out: dict = {"runs": [], "precision": [], "skipped": []}
    if part == "ours":
        out["runs"] = run_ours(problem, x_T, ref, settings)
    elif part.startswith("calibrated:"):
        out["runs"] = run_calibrated(problem, x_T, ref, settings, int(part.split(":", 1)[1]))
    elif part == "k-diffusion":
        out["runs"] = run_kdiffusion(problem, x_T, ref, settings)
    elif part == "precision":
        out["precision"] = run_precision(problem, x_T, ref, settings)
    else:
        plans, out["skipped"] = diffusers_plans(problem, settings)
        out["runs"] = [run_diffusers_one(p, problem, ref) for p in plans]
    out["seconds"] = time.perf_counter() - t0
    return out


class _Ready:
    """An already computed result with a future's ``result()`` (the in-process path, ``jobs=1``)."""

    def __init__(self, value):
        self._value = value

    def result(self):
        return self._value


def run_benchmark(settings: Settings, jobs: int = 1, log=print) -> dict:
    """Run everything (``jobs`` worker processes) and return the JSON-ready result."""
    t0 = time.perf_counter()
    version = diffusers_version() if settings.diffusers else None
    kd_version = kdiffusion_version() if settings.kdiffusion else None
    settings = Settings(**{**settings.__dict__, "diffusers": version is not None, "kdiffusion": kd_version is not None})
    units = sorted(settings.units(), key=lambda u: u[0] != "gmm64")  # the slowest first
    for name, sch in settings.learned:
        train_network(name, sch, settings.net_dir, settings.net_steps)
    log(f"networks trained ({time.perf_counter() - t0:.1f} s)")
    parts = (
        [f"calibrated:{n}" for n in sorted(settings.cal_nfe, reverse=True)]
        + ["ours", "precision"]
        + (["diffusers"] if settings.diffusers else [])
        + (["k-diffusion"] if settings.kdiffusion else [])
    )
    pool = ProcessPoolExecutor(jobs) if jobs > 1 else None

    def submit(fn, *args):
        return _Ready(fn(*args)) if pool is None else pool.submit(fn, *args)

    try:
        refs = {u: submit(unit_reference, *u, settings) for u in units}
        refs = {u: f.result() for u, f in refs.items()}
        log(f"references done ({time.perf_counter() - t0:.1f} s)")
        futs = {(u, part): submit(unit_part, *u, part, refs[u]["ref"], settings) for u in units for part in parts}
        done = {k: f.result() for k, f in futs.items()}
    finally:
        if pool is not None:
            pool.shutdown()
    runs, precision, skipped, problems, seconds = [], [], [], [], {}
    for u in units:
        problem = make_problem(*u, settings.net_dir)
        problems.append(
            {
                "problem": u[0],
                "schedule": u[1],
                "description": problem.description,
                "dim": problem.dim,
                "n": settings.n(u[0]),
                "t_start": problem.t_start,
                "t_end": problem.t_end,
                "reference": refs[u]["info"],
            }
        )
        for part in parts:
            r = done[(u, part)]
            runs += r["runs"]
            precision += r["precision"]
            skipped += [{"problem": u[0], "schedule": u[1], **s} for s in r["skipped"]]
            seconds[f"{u[0]}/{u[1]}/{part}"] = r["seconds"]
    result = {
        "schema_version": SCHEMA_VERSION,
        "kind": KIND,
        "settings": {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in settings.__dict__.items()
            if k not in ("ours", "batch")
        }
        | {"batch": dict(settings.batch), "ours": list(settings.ours)},
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "diffusers": version,
            "k-diffusion": kd_version,
            "platform": platform.platform(),
            "jobs": jobs,
            "cpus": os.cpu_count(),
            "vp_table_matches_diffusers": check_vp_table() if version else None,
        },
        "problems": problems,
        "runs": runs,
        "precision": precision,
        "diffusers_skipped": skipped,
    }
    result["summary"] = summarise(result)
    result["timing"] = {"total_s": time.perf_counter() - t0, "parts_s": seconds}
    return result

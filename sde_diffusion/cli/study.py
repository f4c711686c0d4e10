"""``sde-diffusion study``: convergence and order studies on the built-in problems."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

from .common import (
    UsageError,
    add_common,
    add_overwrite,
    check_choice,
    check_grid_solver,
    check_out_dir,
    check_problem,
    flatten,
    int_list,
    new_out_dir,
    positive_int,
    progress,
    setup_torch,
    solver_specs,
)

__all__ = ["HELP", "add_arguments", "run"]

HELP = "convergence and order studies; writes study.json and study.png"


_MAIN_NFE = [5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50]
_ORDER_NFE = [24, 32, 48, 64, 96, 128, 192, 256]
_DISTRIBUTION_NFE = [10, 20, 50]
_STOCHASTIC_NFE = [10, 20, 40, 80, 160]
_REFINE_TIME = 30.0
_QUICK: dict[str, Any] = {"nfe": [5, 10, 20], "order_nfe": [16, 32, 64], "n": 128, "rtol": 1e-8, "max_nfe_factor": 4}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..studies.problems import PROBLEMS

    add_common(p)
    p.add_argument(
        "--solvers",
        nargs="+",
        metavar="SOLVER",
        help="solver configurations, e.g. ddim heun 'dpm_solver++:order=3,multistep=true' "
        "(default: ddim, heun and the registered high-order solvers)",
    )
    p.add_argument("--nfe", type=int_list, nargs="+", help=f"NFE budgets (default {_MAIN_NFE})")
    p.add_argument(
        "--n",
        "--num-samples",
        type=int,
        help="batch size (default 512; 128 with --quick; --num-samples after torchrun)",
    )
    p.add_argument("--reference", default="auto", help="auto | exact | torchdiffeq | none")
    p.add_argument("--rtol", type=float, help="torchdiffeq reference tolerance (default 1e-10; 1e-8 with --quick)")
    p.add_argument(
        "--repeats", type=positive_int, default=1, help="wall time = minimum over this many runs (default 1)"
    )
    p.add_argument(
        "--order-problem",
        default="gauss2d",
        help="problem of the order study in the asymptotic range, or 'none' (default gauss2d)",
    )
    p.add_argument("--order-nfe", type=int_list, nargs="+", help=f"NFE of the order study (default {_ORDER_NFE})")
    p.add_argument(
        "--no-refine",
        dest="refine",
        action="store_false",
        help="do not extend the budgets of the main and order studies past the requested ones (by default each "
        "solver's largest budget is doubled until its asymptotic range is reached, a floor is hit, or a limit)",
    )
    p.add_argument(
        "--max-nfe", type=positive_int, help="largest refined budget (default 32x the largest requested; 4x --quick)"
    )
    p.add_argument(
        "--refine-time",
        type=float,
        default=_REFINE_TIME,
        help="seconds of sampling that the refinement of one study may spend, all solvers together "
        f"(default {_REFINE_TIME:g})",
    )
    p.add_argument(
        "--stochastic",
        action="store_true",
        help="add a study of the stochastic solvers on --order-problem, n=1024 (strong and distributional errors), and "
        "the distribution error per NFE of every solver (and k-diffusion's samplers) on gauss2d and ring; writes "
        "distribution.json",
    )
    p.add_argument("--figures", action="store_true", help="also write one PNG per study, samples and trajectories")
    p.add_argument("--quick", action="store_true", help="a reduced study for CI (a few seconds)")
    p.add_argument(
        "--out",
        help="output folder (default: a new ./study-YYYYmmdd-HHMMSS); refused if it already holds study.json or "
        "study.png, unless --overwrite",
    )
    add_overwrite(p)
    p.epilog = "problems: " + "; ".join(f"{k} ({v.description})" for k, v in PROBLEMS.items())


def _stochastic_solvers() -> list[str]:
    """``ddim:eta=1`` and every registered stochastic solver with default options (predictor-corrector excluded:
    its Langevin corrector is not a discretisation of the reverse SDE)."""
    from ..solvers import registered_solvers

    out = ["ddim:eta=1"]
    for name, cls in sorted(registered_solvers().items()):
        try:
            solver = cls()
        except Exception:
            continue
        if solver.stochastic and name != "pc" and name not in out:
            out.append(name)
    return out


def run(args) -> int:
    """Run the main study (solvers x NFE on --problem), the order study and optionally the stochastic one, each
    refined past its budgets until the asymptotic ranges are found (unless --no-refine); print the error tables,
    effective orders over the requested range, asymptotic verdicts and local orders; write study.json and study.png
    into --out. Under ``torchrun`` the solvers are shared out among the ranks (all cells of a solver on one rank)
    and rank 0 gathers them and writes the outputs (see [`sde_diffusion.distributed`][sde_diffusion.distributed])."""
    from ..distributed import Job

    with Job(args.device) as job:
        args.device = job.device
        return _run(args, job)


def _run(args, job) -> int:
    from ..studies.problems import PROBLEMS, get_schedule
    from ..studies.specs import default_solvers

    check_problem(args)
    if args.order_problem != "none":
        check_choice("problem", args.order_problem, list(PROBLEMS))
    check_choice("reference", args.reference, ["auto", "exact", "torchdiffeq", "none"])
    quick = _QUICK if args.quick else {}
    n = args.n if args.n is not None else quick.get("n", 512)
    rtol = args.rtol if args.rtol is not None else quick.get("rtol", 1e-10)
    if n < 2 or not rtol > 0:
        raise UsageError("--n must be at least 2 and --rtol positive")
    if (args.max_nfe is not None and args.max_nfe < 1) or not args.refine_time >= 0:
        raise UsageError("--max-nfe must be positive and --refine-time non-negative")
    check_out_dir(args.out, outputs=("study.json", "study.png"), overwrite=args.overwrite)
    setup_torch(args)
    specs = solver_specs(args.solvers or default_solvers())
    schedule = get_schedule(args.schedule)
    for spec in specs:  # studies run every solver at NFE budgets on grids they choose
        check_grid_solver(spec.label, spec.build(), schedule, "study")
    nfe = flatten(args.nfe) or quick.get("nfe", _MAIN_NFE)
    order_nfe = flatten(args.order_nfe) or quick.get("order_nfe", _ORDER_NFE)
    out = new_out_dir(args.out, "study") if job.is_main else None
    common = dict(
        job=job,
        grid=args.grid,
        seed=args.seed,
        dtype=args.dtype,
        device=args.device,
        progress=progress(args),
        repeats=max(args.repeats, 1),
    )

    def refinement(budgets):
        if not args.refine:
            return {}
        cap = args.max_nfe or quick.get("max_nfe_factor", 32) * max(budgets)
        return {"refine": True, "max_nfe": cap, "refine_time": args.refine_time}

    t0 = time.perf_counter()
    studies = {
        "main": _run_study(
            args.problem,
            args.schedule,
            specs,
            nfe,
            n=n,
            rtol=rtol,
            reference=args.reference,
            **refinement(nfe),
            **common,
        )
    }
    if args.order_problem != "none":
        studies["order"] = _run_study(
            args.order_problem,
            args.schedule,
            specs,
            order_nfe,
            n=min(n, 256),
            rtol=rtol,
            reference=args.reference,
            **refinement(order_nfe),
            **common,
        )
    if args.stochastic:
        sto_nfe = quick.get("nfe", _STOCHASTIC_NFE)
        studies["stochastic"] = _run_study(
            args.order_problem if args.order_problem != "none" else "gauss2d",
            args.schedule,
            solver_specs(_stochastic_solvers()),
            sto_nfe,
            n=128 if args.quick else 1024,
            rtol=rtol,
            reference=args.reference,
            sde_substeps=20 if args.quick else 50,
            **common,
        )
    distribution = None
    if args.stochastic and job.is_main:
        from ..studies.stochastic import stochastic_study

        # every stochastic and deterministic solver (and k-diffusion's samplers where installed) on one footing:
        # exact W2 on Gaussian data, sliced W2 with its sampling floor on the ring mixture
        distribution = stochastic_study(
            problems=("gauss2d",) if args.quick else ("gauss2d", "ring"),
            nfes=quick.get("nfe", _DISTRIBUTION_NFE),
            samples=1000 if args.quick else 8000,
            seed=args.seed,
            schedule=args.schedule,
            kdiffusion=not args.quick,
        )
    elapsed = time.perf_counter() - t0
    if not job.is_main:
        return 0
    assert out is not None
    for name, res in studies.items():
        print(f"## {name} study\n")
        print(res.to_markdown())
        if name == "stochastic":
            print()
            print(res.to_markdown("dist_error"))
        print()
    if distribution is not None:
        from ..studies.stochastic import study_table

        print("## distribution error per NFE (stochastic and deterministic solvers)\n")
        print(study_table(distribution))
        (out / "distribution.json").write_text(json.dumps(distribution, indent=2))
    _write_study(out, studies, args, elapsed, job.world_size)
    print(f"studies ran in {elapsed:.1f} s; wrote {out / 'study.json'} and {out / 'study.png'}")
    return 0


def _run_study(problem, schedule, specs, nfe, job, **kw):
    """One study; under torchrun this rank's solvers only (a refinement time budget in proportion), merged on rank
    0 (``None`` on the others)."""
    from ..distributed import merge_study_results, shard_items
    from ..studies.convergence import convergence_study

    mine = shard_items(specs, job.rank, job.world_size)
    if kw.get("refine_time") is not None:
        kw["refine_time"] = kw["refine_time"] * len(mine) / len(specs)
    part = convergence_study(problem, mine, nfe, schedule=schedule, **kw) if mine else None
    parts = job.gather(part)
    return merge_study_results(parts) if job.is_main else None


def _write_study(out: Path, studies: dict, args, elapsed: float, world_size: int = 1) -> None:
    from .. import __version__
    from ..studies.plots import (
        new_figure,
        plot_convergence,
        plot_local_orders,
        plot_samples,
        plot_trajectories,
        plot_work_precision,
        save_figure,
        study_figure,
    )
    from ..studies.report import bundle

    meta = {
        "sde_diffusion_version": __version__,
        "command": "sde-diffusion " + " ".join(sys.argv[1:]),
        "created": dt.datetime.now().isoformat(timespec="seconds"),
        "elapsed_s": round(elapsed, 3),
        "world_size": world_size,
    }
    (out / "study.json").write_text(json.dumps(bundle(studies, **meta), indent=2))
    save_figure(study_figure(studies["main"], studies.get("order")), out / "study.png")
    if not args.figures:
        return
    for name, res in studies.items():
        save_figure(plot_convergence(res), out / f"{name}_error.png")
        if res.fits:
            save_figure(plot_local_orders(res), out / f"{name}_local_orders.png")
        if res.dist_metric is not None and name != "main":
            save_figure(plot_convergence(res, metric="dist_error"), out / f"{name}_dist_error.png")
    save_figure(plot_work_precision(studies["main"]), out / "main_work_precision.png")
    main = studies["main"]
    if main.samples:
        budget = 10 if 10 in main.budgets else main.budgets[len(main.budgets) // 2]
        save_figure(plot_samples(main, budget), out / "samples.png")
        errs = {r.solver: r.error for r in main.runs if r.nfe_budget == budget and r.error is not None}
        best = min(errs, key=errs.__getitem__) if errs else main.labels[0]
        pair = [main.labels[0]] + ([best] if best != main.labels[0] else [])
        fig, axes = new_figure(1, len(pair), size=(4.8 * len(pair), 4.4))
        for ax, label in zip(axes.flat, pair):
            plot_trajectories(_problem(args), label, budget, seed=args.seed, grid=args.grid, ax=ax)
        save_figure(fig, out / "trajectories.png")


def _problem(args):
    from ..studies.problems import get_problem

    return get_problem(args.problem, args.schedule)

"""``sde-diffusion optimise-grid``: optimise the time grid of a solver at an NFE budget."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import (
    UsageError,
    add_common,
    add_overwrite,
    check_grid_solver,
    check_out_file,
    check_problem,
    positive_int,
    progress,
    setup_torch,
    solver_specs,
)

__all__ = ["HELP", "add_arguments", "run"]

HELP = "optimise the time grid of a solver at an NFE budget"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--solver", default="ddim", help="deterministic solver configuration")
    p.add_argument("--nfe", type=positive_int, default=10, help="NFE budget (default 10)")
    p.add_argument("--pilot", type=positive_int, default=256, help="pilot batch size (default 256)")
    p.add_argument("--heldout", type=positive_int, default=1024, help="held-out batch size (default 1024)")
    p.add_argument("--max-evals", type=positive_int, default=1500, help="largest number of solves in the search")
    p.add_argument("--quick", action="store_true", help="small batches and few evaluations (for CI)")
    p.add_argument(
        "--out",
        help="write the result as JSON to this file (checked before the optimisation: not an existing folder, and "
        "not an existing file unless --overwrite)",
    )
    add_overwrite(p)


def run(args) -> int:
    """Optimise the time grid of a solver at an NFE budget on a pilot batch; report the held-out error."""
    from ..studies.grid_optimizer import optimise_grid
    from ..studies.problems import get_schedule

    check_problem(args)
    check_out_file(args.out, overwrite=args.overwrite)
    setup_torch(args)
    (spec,) = solver_specs([args.solver])
    solver = spec.build()
    if solver.stochastic:
        raise UsageError(f"solver {spec.label!r} is stochastic; optimise-grid needs a deterministic solver")
    check_grid_solver(spec.label, solver, get_schedule(args.schedule), "optimise-grid")
    if min(args.nfe, args.pilot, args.heldout, args.max_evals) < 1:
        raise UsageError("--nfe, --pilot, --heldout and --max-evals must be positive")
    pilot, heldout, max_evals = (32, 128, 40) if args.quick else (args.pilot, args.heldout, args.max_evals)
    try:
        res = optimise_grid(
            args.problem,
            spec,
            args.nfe,
            schedule=args.schedule,
            init=args.grid,
            pilot=pilot,
            heldout=heldout,
            seed=args.seed,
            max_evals=max_evals,
            rtol=1e-8 if args.quick else 1e-10,
            device=args.device,
            dtype=args.dtype,
            progress=progress(args),
        )
    except ValueError as e:
        if "too small" in str(e):
            raise UsageError(str(e)) from None
        raise
    print(
        f"{res.problem} / {res.schedule}: {res.solver}, NFE budget {res.nfe} ({res.steps} steps), "
        f"{res.evaluations} solves"
    )
    print(f"pilot RMS error     {res.init:<13} {res.pilot_error_init:.3e}  optimised {res.pilot_error:.3e}")
    print(
        f"held-out RMS error  {res.init:<13} {res.heldout_error_init:.3e}  optimised {res.heldout_error:.3e}  "
        f"({res.improvement:.2f}x)"
    )
    print("grid t: " + ", ".join(f"{t:.10g}" for t in res.grid.tolist()))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(res.to_json())
        print(f"wrote {args.out}")
    return 0
